"""Host states: every compute node with its usage, read from Postgres in one query.

Free resources are plain attributes computed once at load (and updated by
``consume``), not properties: filters and weighers read them for every host
of every request, and at 10,000 hosts each attribute access counts. A load's
hosts also keep them in arrays (:class:`HostColumns`): the resource filters and
the weighers read 1,000 hosts' values as one numpy operation.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import numpy as np

from novalite.config import SchedulerConfig

# Hypervisor types a libvirt host can run guests of, by the type it reports.
_HV_TYPES = {"QEMU": ("qemu", "kvm"), "KVM": ("kvm", "qemu")}


@dataclass(frozen=True, slots=True, eq=False)
class HostProfile:
    """What a host runs (architecture, hypervisor type and version): one shared object per
    distinct profile, hashed by identity, so a filter that reads only these checks each profile
    once per request and groups 1,000 hosts without building a tuple per host."""

    cpu_arch: str
    hypervisor_type: str
    hypervisor_version: int


_PROFILES: dict[tuple[str, str, int], HostProfile] = {}


def host_profile(cpu_arch: str, hypervisor_type: str, hypervisor_version: int) -> HostProfile:
    """The one HostProfile of these values."""
    key = (cpu_arch, hypervisor_type, hypervisor_version)
    profile = _PROFILES.get(key)
    if profile is None:
        profile = _PROFILES[key] = HostProfile(*key)
    return profile


@dataclass(slots=True)
class HostState:
    """What the filters and weighers know about one host for one scheduling request."""

    host: str
    nodename: str
    availability_zone: str
    vcpus: int
    memory_mb: int
    local_gb: int
    vcpus_used: int
    memory_mb_used: int
    disk_gb_used: int
    disabled: bool
    disabled_reason: str | None
    up: bool
    hypervisor_type: str
    cpu_arch: str
    cpu_allocation_ratio: float
    ram_allocation_ratio: float
    disk_allocation_ratio: float
    reserved_host_memory_mb: int
    reserved_host_disk_mb: int
    num_instances: int = 0
    instance_uuids: set[str] = field(default_factory=set)
    hypervisor_version: int = 0
    numa_cells: int = 1
    failed_builds: int = 0
    # Derived (allocation ratios and reservations applied); kept current by consume().
    free_ram_mb: float = field(init=False, default=0.0)
    free_vcpus: float = field(init=False, default=0.0)
    free_disk_gb: float = field(init=False, default=0.0)
    profile: HostProfile = field(init=False)  # of cpu_arch, hypervisor_type and hypervisor_version
    # The load's arrays this host is row ``index`` of (None: a host state on its own).
    columns: HostColumns | None = field(init=False, default=None, repr=False, compare=False)
    index: int = field(init=False, default=-1, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.profile = host_profile(self.cpu_arch, self.hypervisor_type, self.hypervisor_version)
        self._refresh()

    def limits(self) -> tuple[float, float, float]:
        """What the host's instances may use in all: (vCPUs, RAM MB, disk GB), allocation ratios and
        reservations applied (what the filters and a claim check usage against)."""
        return (self.vcpus * self.cpu_allocation_ratio,
                self.memory_mb * self.ram_allocation_ratio - self.reserved_host_memory_mb,
                self.local_gb * self.disk_allocation_ratio - self.reserved_host_disk_mb / 1024)

    def _refresh(self) -> None:
        vcpus, ram, disk = self.limits()
        self.free_vcpus = vcpus - self.vcpus_used
        self.free_ram_mb = ram - self.memory_mb_used
        self.free_disk_gb = disk - self.disk_gb_used
        if self.columns is not None:
            self.columns.update(self)

    @property
    def supported_instances(self) -> list[tuple[str, str, str]]:
        """(architecture, hypervisor type, vm mode) triples this host can run, as Nova's libvirt driver reports."""
        hv_types = _HV_TYPES.get(self.hypervisor_type.upper(), (self.hypervisor_type.lower(),))
        return [(self.cpu_arch, hv, "hvm") for hv in hv_types]

    def consume(self, vcpus: int, memory_mb: int, disk_gb: int, instance_uuid: str) -> None:
        """Account an instance just claimed here, for the rest of this request."""
        self.vcpus_used += vcpus
        self.memory_mb_used += memory_mb
        self.disk_gb_used += disk_gb
        self.num_instances += 1
        self.instance_uuids.add(instance_uuid)
        self._refresh()


    def unconsume(self, vcpus: int, memory_mb: int, disk_gb: int, instance_uuid: str) -> None:
        """Undo `consume` (a claim that was counted here before Postgres refused it)."""
        self.vcpus_used -= vcpus
        self.memory_mb_used -= memory_mb
        self.disk_gb_used -= disk_gb
        self.num_instances -= 1
        self.instance_uuids.discard(instance_uuid)
        self._refresh()


class HostColumns:
    """One load's host states as columns: each host's free resources (kept current by its
    consume/unconsume), whether its service is usable, and its failed builds, row i being
    ``hosts[i]``. Read through :func:`column` (of a :class:`HostList`) by the filters and weighers.
    It holds no reference to the hosts (they hold one to it): a load replaced is freed at once,
    not left to the cyclic collector."""

    __slots__ = ("free_ram_mb", "free_vcpus", "free_disk_gb", "usable", "failed_builds")

    def __init__(self, hosts: list[HostState]) -> None:
        for name in self.__slots__:
            setattr(self, name, _read(hosts, name))
        for i, h in enumerate(hosts):
            h.columns, h.index = self, i

    def update(self, h: HostState) -> None:
        self.free_ram_mb[h.index] = h.free_ram_mb
        self.free_vcpus[h.index] = h.free_vcpus
        self.free_disk_gb[h.index] = h.free_disk_gb


def _read(hosts: list[HostState], name: str) -> np.ndarray:
    """Column ``name`` of :class:`HostColumns` read from each host."""
    if name == "usable":
        return np.fromiter((h.up and not h.disabled for h in hosts), bool, len(hosts))
    return np.fromiter(map(operator.attrgetter(name), hosts), float, len(hosts))


class HostList(list):
    """Host states of one load, or some of them in its order, with the rows of its
    :class:`HostColumns` they are (``rows`` None: all of them, in order). What the scheduler
    filters and weighs; not changed once made (a filter's survivors are a new one)."""

    __slots__ = ("columns", "rows", "_objects")

    def __init__(self, hosts: list[HostState], columns: HostColumns, rows: np.ndarray | None = None,
                 objects: np.ndarray | None = None) -> None:
        super().__init__(hosts)
        self.columns = columns
        self.rows = rows
        if objects is None:
            objects = np.empty(len(hosts), object)
            objects[:] = hosts
        self._objects = objects  # the same hosts, to take a part of them at C speed

    def at(self, positions: np.ndarray) -> HostList:
        """The hosts at these positions of this list (ascending), as a HostList."""
        objects = self._objects[positions]
        rows = positions if self.rows is None else self.rows[positions]
        return HostList(objects.tolist(), self.columns, rows, objects)

    def some(self, hosts: list[HostState]) -> HostList:
        """``hosts`` (some of this list's, in its order) as a HostList."""
        return HostList(hosts, self.columns, np.fromiter(map(_INDEX, hosts), np.intp, len(hosts)))


def column(hosts: list[HostState], name: str) -> np.ndarray:
    """Attribute ``name`` (a :class:`HostColumns` column) of each host, in the hosts' order, as an
    array: read from the load's columns for a :class:`HostList`, from each host otherwise. The
    caller must not write to it."""
    if isinstance(hosts, HostList):
        values = getattr(hosts.columns, name)
        return values if hosts.rows is None else values[hosts.rows]
    return _read(hosts, name)


_INDEX = operator.attrgetter("index")


HOST_STATES_QUERY = """
    SELECT host, hypervisor_hostname, availability_zone, vcpus, memory_mb, local_gb,
           disabled, disabled_reason, forced_down, heartbeat_at, hypervisor_type,
           hypervisor_version, cpu_arch, numa_cells, failed_builds,
           vcpus_used, memory_mb_used, disk_gb_used, instances_used AS num_instances
      FROM compute_nodes
     ORDER BY host"""


async def load_host_states(conn: asyncpg.Connection, cfg: SchedulerConfig) -> HostList:
    """All hosts with their usage counters (kept from allocations by a trigger): one round trip."""
    rows = await conn.fetch(HOST_STATES_QUERY)
    now = datetime.now(UTC)
    down_after = cfg.service_down_time
    cpu_r, ram_r, disk_r = cfg.cpu_allocation_ratio, cfg.ram_allocation_ratio, cfg.disk_allocation_ratio
    res_mem, res_disk = cfg.reserved_host_memory_mb, cfg.reserved_host_disk_mb
    out = []
    append = out.append
    for r in rows:
        beat = r["heartbeat_at"]
        up = not r["forced_down"] and beat is not None and (now - beat).total_seconds() <= down_after
        append(
            HostState(
                r["host"], r["hypervisor_hostname"], r["availability_zone"], r["vcpus"], r["memory_mb"],
                r["local_gb"], r["vcpus_used"], r["memory_mb_used"], r["disk_gb_used"], r["disabled"],
                r["disabled_reason"], up, r["hypervisor_type"], r["cpu_arch"], cpu_r, ram_r, disk_r,
                res_mem, res_disk, r["num_instances"], set(), r["hypervisor_version"], r["numa_cells"],
                r["failed_builds"],
            )
        )
    return HostList(out, HostColumns(out))
