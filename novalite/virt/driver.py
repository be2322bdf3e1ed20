"""The virt driver contract: what the compute manager may ask of a hypervisor.

Modelled on the idea of Nova's ``nova/virt/driver.py``: the compute layer speaks
only in these verbs and dataclasses, and each hypervisor backend (today only
libvirt, see :mod:`novalite.virt.libvirt.driver`) implements them.  Every verb
is a coroutine; an implementation must never block the event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

# Power states (Nova's numbering) are defined once, in novalite.virt.power_state; re-exported here.
from novalite.virt.power_state import CRASHED, NOSTATE, PAUSED, RUNNING, SHUTDOWN, SUSPENDED
from novalite.virt.power_state import STATE_NAMES as POWER_STATE_NAMES

__all__ = [
    "CRASHED",
    "NOSTATE",
    "PAUSED",
    "POWER_STATE_NAMES",
    "RUNNING",
    "SHUTDOWN",
    "SUSPENDED",
    "ConsoleUnavailable",
    "ConsoleWriter",
    "DiskSpec",
    "DownloadTarget",
    "GuestSpec",
    "HostInfo",
    "HypervisorUnavailable",
    "InstanceExists",
    "InstanceInfo",
    "InstanceNotFound",
    "LifecycleCallback",
    "METADATA_ADDRESS",
    "FilterRule",
    "NetworkSpec",
    "NicSpec",
    "PoolUsage",
    "PortFilterSpec",
    "StoragePoolSpec",
    "UploadSource",
    "VirtDriver",
    "VirtError",
    "VolumeInfo",
]

VirtType = Literal["test", "qemu", "kvm"]
# Where guests find the metadata service (Nova's and EC2's link-local address).
METADATA_ADDRESS = "169.254.169.254"


class VirtError(Exception):
    """Any failure of the hypervisor layer; ``code`` is the backend's error code if known."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class InstanceNotFound(VirtError):
    """The hypervisor has no domain for this instance uuid."""


class InstanceExists(VirtError):
    """A domain with this instance's uuid or name already exists on the hypervisor."""


class HypervisorUnavailable(VirtError):
    """The hypervisor connection could not be opened or was closed."""


class ConsoleUnavailable(VirtError):
    """The domain has no serial console that can be opened (not running, or a driver without one)."""


class ConsoleWriter(Protocol):
    """The writing half of an open serial console; closing it ends the reading half too."""

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the guest's serial port (all of it, or raise VirtError)."""
        ...

    async def close(self) -> None:
        """Close the console stream (idempotent); the reader then sees end of file."""
        ...


@dataclass(frozen=True, slots=True)
class DiskSpec:
    """One block device of a guest, backed by a local file."""

    path: str
    device: Literal["disk", "cdrom"] = "disk"
    bus: str = "virtio"
    target_dev: str = "vda"
    driver_type: Literal["qcow2", "raw"] = "qcow2"


@dataclass(frozen=True, slots=True)
class NicSpec:
    """One virtual NIC; ``network`` is a libvirt network name, None for no host network.

    ``filter`` names the port's packet filter (:class:`PortFilterSpec`), which must be
    set on the host (``set_port_filter``) before the NIC is plugged; None: unfiltered.
    """

    mac: str
    network: str | None = None
    model: str = "virtio"
    filter: str | None = None


@dataclass(frozen=True, slots=True)
class FilterRule:
    """One allowed flow of a port, already resolved from a security group rule.

    ``direction``: "ingress" (to the guest) or "egress" (from it). ``protocol``: None
    (any), "tcp", "udp", "icmp" or another IP protocol name. ``port_min``/``port_max``:
    the destination port range (tcp/udp), or ICMP type/code. ``remotes``: the remote
    addresses as CIDRs (a remote group's members expanded to /32s); None means anywhere,
    an empty tuple means nowhere (a remote group with no members), so the rule allows nothing.
    Stateful: replies to an allowed flow are allowed.
    """

    direction: Literal["ingress", "egress"]
    protocol: str | None = None
    port_min: int | None = None
    port_max: int | None = None
    remotes: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class PortFilterSpec:
    """The packet filter of one port on a host: anti-spoofing plus its security groups' rules.

    ``name`` is unique across clouds sharing a hypervisor (prefix + port id). With
    ``enabled`` (port security on) the guest may send only from ``mac`` and ``ips``, DHCP
    is allowed, and other IPv4 traffic passes only when a rule allows it; with
    ``enabled`` False nothing is filtered.
    """

    name: str
    port_id: str
    mac: str
    ips: tuple[str, ...]
    enabled: bool = True
    rules: tuple[FilterRule, ...] = ()


@dataclass(slots=True)
class GuestSpec:
    """Everything a driver needs to build and boot one instance, already decided upstream.

    ``metadata`` carries Nova-like keys that end up in the domain's nova metadata
    element: display_name, flavor_name, memory_mb, vcpus, root_gb, project_id,
    user_id, creation_time.
    """

    instance_uuid: str
    name: str  # libvirt domain name, e.g. "instance-0000a1b2"
    memory_mb: int
    vcpus: int
    virt_type: VirtType = "qemu"
    disks: list[DiskSpec] = field(default_factory=list)
    nics: list[NicSpec] = field(default_factory=list)
    kernel: str | None = None
    ramdisk: str | None = None
    cmdline: str | None = None
    console_log_path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """A network on a host: by default isolated (no forwarding), a gateway address, DHCP over a range.

    ``forward`` "nat": the same, and guests reach the outside NATed through the host (the gateway
    is their default route); "bridge": guests join the existing host bridge ``host_bridge`` (a
    provider network such as a lab's LAN) and the host holds no address and serves no DHCP there.

    ``name`` is the hypervisor's network name (NicSpec.network of the guests on it).
    ``tenant`` networks (made through the API) have a bridge with no host address, so
    their CIDRs may overlap other networks' on one host; their DHCP server answers from
    ``dhcp_server`` (the network's DHCP port address) in a namespace of its own.
    """

    name: str
    uuid: str
    cidr: str
    gateway: str | None
    dhcp_start: str
    dhcp_end: str
    mtu: int = 1500
    tenant: bool = False
    dhcp_server: str | None = None
    enable_dhcp: bool = True
    dns_nameservers: tuple[str, ...] = ()
    # (destination CIDR, nexthop) pairs handed out as DHCP classless static routes
    host_routes: tuple[tuple[str, str], ...] = ()
    # A configured network on this machine: 169.254.169.254:80 arriving on its bridge goes to
    # novalite's metadata listener on the gateway, this port (novalite.virt.libvirt.metadata).
    metadata_port: int | None = None
    forward: Literal["isolated", "nat", "bridge"] = "isolated"
    host_bridge: str | None = None

    @property
    def netmask(self) -> str:
        return str(ipaddress.ip_network(self.cidr, strict=False).netmask)


@dataclass(frozen=True, slots=True)
class StoragePoolSpec:
    """A storage pool on a host: a directory of qcow2 files, or an LVM volume group of raw volumes."""

    name: str
    type: Literal["dir", "logical"]
    target: str  # the directory, or /dev/<vg> for logical
    source: str | None = None  # the volume group of a logical pool

    @property
    def volume_format(self) -> Literal["qcow2", "raw"]:
        return "qcow2" if self.type == "dir" else "raw"


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """One volume as its host sees it: the path the hypervisor knows it by, its format
    ("qcow2", "raw", ... as the host probed the data), its capacity in bytes, its backing file."""

    path: str
    format: str
    capacity: int
    backing: str | None = None  # the path of a qcow2 overlay's backing file
    physical: int = 0  # bytes a download of the volume gives (a qcow2 file holds less than its capacity)


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """A storage pool's size as its host reports it (virStoragePoolGetInfo), in bytes: what the
    pool's storage holds in all, what is allocated in it, and what is still free for new data."""

    capacity: int
    allocation: int
    available: int


# What a volume upload reads: a local file, or chunks from an async source.
UploadSource = str | os.PathLike[str] | AsyncIterable[bytes]
# Where a volume download goes: a local file, or an async callable taking each chunk.
DownloadTarget = str | os.PathLike[str] | Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """A snapshot of one domain's state as the hypervisor reports it."""

    power_state: int
    max_mem_kb: int
    mem_kb: int
    num_cpu: int


@dataclass(frozen=True, slots=True)
class HostInfo:
    """What a compute host offers, as reported when the driver starts."""

    hostname: str
    vcpus: int
    memory_mb: int
    hypervisor_type: str
    hypervisor_version: int
    cpu_arch: str
    cpu_model: str
    # From the host's capabilities: the CPU's vendor, its features, and sockets/cores/threads/cells.
    cpu_vendor: str = ""
    cpu_features: tuple[str, ...] = ()
    cpu_topology: dict[str, int] = field(default_factory=dict)
    host_ip: str | None = None  # the address the host's URI names; None: this machine
    # Seconds since the host booted as libvirt's node CPU times tell it (their sum over the CPUs,
    # so a little short: steal time is not in them); None where libvirt gives no CPU times.
    uptime_seconds: float | None = None


# Called on the event loop with (instance_uuid, power_state, event name) whenever
# the hypervisor reports that a domain started, stopped, paused, resumed, ...
LifecycleCallback = Callable[[str, int, str], None]


@runtime_checkable
class VirtDriver(Protocol):
    """The verbs the compute manager uses; one driver object per compute host.

    All methods are coroutines and must not block the event loop: blocking
    hypervisor calls belong in worker threads.  Errors are raised as
    :class:`VirtError` subclasses, never as backend exceptions.
    """

    async def init_host(self) -> HostInfo:
        """Connect to the hypervisor and describe the host.

        Before: the driver is constructed and not closed.
        After: the driver holds an open connection that later calls reuse; the
        returned HostInfo reflects the hypervisor's view of the host.
        Raises HypervisorUnavailable if the hypervisor cannot be reached.
        """
        ...

    async def spawn(self, guest: GuestSpec) -> None:
        """Define and start a domain for ``guest``.

        Before: no domain with guest.instance_uuid or guest.name exists
        (otherwise InstanceExists is raised and the existing domain is untouched).
        After success: a persistent domain with that uuid is defined and running.
        If this fails, any partial domain is undefined/destroyed before the
        exception propagates, so the host is left as it was.
        """
        ...

    async def destroy(self, instance_uuid: str) -> None:
        """Power off (if running) and undefine the instance's domain.

        After: no domain with this uuid exists.  Idempotent: a domain that does
        not exist is not an error, so callers may retry freely.
        """
        ...

    async def get_info(self, instance_uuid: str) -> InstanceInfo | None:
        """Return the domain's power state and sizes, or None when there is no such domain.

        Has no side effects; power_state uses Nova's numbering (RUNNING, SHUTDOWN, ...).
        """
        ...

    async def list_instance_uuids(self) -> list[str]:
        """Return the uuids of all domains the hypervisor knows, running or not.

        Has no side effects; the order is unspecified.
        """
        ...

    async def close(self) -> None:
        """Wait for in-flight calls, then release the connection and worker threads.

        After: every other verb raises HypervisorUnavailable.  Calling close twice is fine.
        """
        ...

    # -- power actions (issue 7) ----------------------------------------------
    # Each verb acts on an existing domain (InstanceNotFound otherwise), returns
    # once the domain is in the stated power state, and is safe to repeat: asking
    # for the state the domain is already in is not an error.

    async def power_off(self, instance_uuid: str, timeout: float = 0) -> None:
        """Stop the guest: a clean (ACPI) shutdown waited for up to ``timeout`` seconds, then a hard stop.

        ``timeout`` 0 means a hard stop at once.  After: the domain is defined and SHUTDOWN.
        """
        ...

    async def power_on(self, instance_uuid: str) -> None:
        """Start a defined, stopped domain (restoring a managed save if there is one).

        After: the domain is RUNNING.
        """
        ...

    async def reboot(self, instance_uuid: str, hard: bool, timeout: float = 0) -> bool:
        """Reboot the guest; return True if a soft reboot worked, False if a hard one was done.

        Soft: a clean shutdown waited for up to ``timeout`` seconds, then start;
        when the guest ignores it, fall back to hard.  Hard: stop at once, then
        start (also brings up a stopped, paused or suspended domain).
        After: the domain is RUNNING.
        """
        ...

    async def pause(self, instance_uuid: str) -> None:
        """Freeze the guest's vCPUs in memory.  Before: RUNNING.  After: PAUSED."""
        ...

    async def unpause(self, instance_uuid: str) -> None:
        """Let a paused guest run again.  After: RUNNING."""
        ...

    async def suspend(self, instance_uuid: str) -> None:
        """Save the guest's memory to disk and stop it (resumable).  After: SHUTDOWN, with a saved image."""
        ...

    async def resume(self, instance_uuid: str) -> None:
        """Restore a suspended guest from its saved image.  After: RUNNING."""
        ...

    async def has_saved_state(self, instance_uuid: str) -> bool:
        """True when a stopped domain has a saved image (it was suspended)."""
        ...

    async def list_instance_states(self) -> dict[str, int]:
        """Every domain the hypervisor knows, uuid → power_state, in one call (no side effects)."""
        ...

    async def get_console_output(self, instance_uuid: str, max_bytes: int) -> bytes | None:
        """The last ``max_bytes`` the guest wrote to its serial console log.

        None when there is nothing to read: no such domain, a domain without a
        console log, or a log the guest has not written yet. No side effects.
        """
        ...

    async def open_console(self, instance_uuid: str) -> tuple[asyncio.StreamReader, ConsoleWriter]:
        """Open the running domain's serial console for reading and writing (virDomainOpenConsole).

        Returns the guest's output as a reader (end of file when the console
        closes, the domain stops, or the writer is closed) and a writer for its
        input. An earlier session on the same console is taken over (it sees end
        of file). The serial log keeps being written. Raises InstanceNotFound
        for an unknown domain, ConsoleUnavailable when it is not running or the
        hypervisor has no console to offer (libvirt's test driver).
        """
        ...

    async def watch_lifecycle(self, callback: LifecycleCallback) -> None:
        """Subscribe ``callback`` to lifecycle events of every domain of this host.

        The callback runs on the event loop, must not block, and gets the new
        power state as the event implies it (callers re-read the domain when they
        need certainty: events can arrive late or be coalesced).
        """
        ...

    async def is_alive(self) -> bool:
        """True while the hypervisor connection answers; never raises (a host is "up" only then)."""
        ...

    # -- volumes: disks plugged into a domain ------------------------------------
    # A disk is named by its target device (DiskSpec.target_dev, "vdb"); the data
    # behind it is a storage volume (see below) or any path the hypervisor reads.

    async def attach_disk(self, instance_uuid: str, disk: DiskSpec) -> None:
        """Plug ``disk`` into the domain: live when it runs, and in its persistent definition.

        Before: the domain exists (InstanceNotFound otherwise).  After: the
        persistent definition has the disk at ``disk.target_dev`` (and the running
        guest sees it).  Idempotent: a disk already at that target is not an error.
        """
        ...

    async def detach_disk(self, instance_uuid: str, disk: DiskSpec, timeout: float = 20) -> None:
        """Unplug the disk at ``disk.target_dev`` and wait until the guest let it go.

        After: neither the persistent definition nor the running guest has the
        disk.  A running guest is asked (again once halfway through ``timeout``);
        VirtError when it still holds the disk after ``timeout`` seconds.  A missing
        domain or disk is not an error.
        """
        ...

    async def disk_targets(self, instance_uuid: str) -> set[str]:
        """Target devices ("vda", "sda", ...) in the domain's persistent definition (no side effects).

        Raises InstanceNotFound when there is no such domain.
        """
        ...

    # -- disk snapshots (createImage, createBackup, shelve) -----------------------

    async def copy_disk_live(self, instance_uuid: str, target_dev: str, dest_path: str) -> bool:
        """Copy the disk ``target_dev`` of an active guest into ``dest_path`` without stopping it.

        Before: ``dest_path`` is a qcow2 the caller made over the same backing file as the
        disk, of the disk's virtual size. A shallow block copy mirrors the disk's top layer
        into it; once in sync the job ends without a pivot, so ``dest_path`` holds the disk as
        it was at that instant (crash-consistent) and the guest keeps running on its own disk
        with its persistent definition unchanged. A job left over from an interrupted copy is
        ended first. Returns False, having done nothing, when the domain is not active (no
        one writes the disk: the caller reads the file itself). InstanceNotFound without a domain.
        """
        ...

    async def abort_disk_copy(self, instance_uuid: str, target_dev: str) -> None:
        """End any block job on the disk ``target_dev`` (no pivot); idempotent, no domain is fine."""
        ...

    # -- live migration ------------------------------------------------------------

    async def migrate_live(self, instance_uuid: str, dest: VirtDriver, paths: dict[str, str]) -> None:
        """Move the running (or paused) guest to the host of ``dest`` without stopping it.

        Before: the destination holds the guest's writable disks as volumes of the same sizes
        (an overlay on the destination's copy of the same base image), its read-only ones and
        its console log, and the guest's networks and port filters. ``paths`` maps each path
        prefix of this host (its instance pool) to the destination's. After: the domain runs
        (persistently defined) on the destination and is gone here; the disks' writable layers
        were copied while the guest ran. A failure or an abort (:meth:`abort_migration`) leaves
        the guest running here as before. Hosts of libvirt's test driver cannot migrate: the
        domain is defined and started there and destroyed here, which is the same end state.
        """
        ...

    async def migration_progress(self, instance_uuid: str) -> dict[str, int] | None:
        """The running migration job's bytes (memory_/disk_ total, processed, remaining), None without a job."""
        ...

    async def abort_migration(self, instance_uuid: str) -> bool:
        """Abort the domain's running migration job (virDomainAbortJob); False when none runs."""
        ...

    # -- storage: one pool of volumes per host -----------------------------------
    # Volumes are named within their pool; every verb returning a path returns
    # the path the hypervisor knows the volume by (DiskSpec.path of a guest disk).

    async def ensure_pool(self, pool: StoragePoolSpec) -> None:
        """Define (once), build, start and autostart the pool; idempotent.

        After: the pool is active and its volume list is fresh.
        """
        ...

    async def create_volume(self, pool: str, name: str, size_gb: int, fmt: str) -> str:
        """A new empty volume of ``size_gb`` GiB in format ``fmt`` ("qcow2", "raw"); returns its path.

        A volume of that name left by a crashed attempt is deleted first.
        """
        ...

    async def clone_volume(self, pool: str, source: str, name: str, size_gb: int, fmt: str,
                           source_pool: str | None = None) -> str:
        """A full copy of volume ``source`` named ``name``, grown to ``size_gb`` where the pool can; its path.

        ``source`` is in ``source_pool`` (another pool of the same host) or else in ``pool``; the
        host converts its data to ``fmt``. The source is untouched; a leftover ``name`` is deleted first.
        """
        ...

    async def make_volume(self, pool: str, name: str, capacity: int, fmt: str, backing: str | None = None) -> str:
        """A new volume of ``capacity`` bytes in format ``fmt``; returns its path.

        ``backing`` names a volume of the same pool: the new one is a qcow2 overlay on it, at
        least as large as it. A volume of that name left by a crashed attempt is deleted first.
        """
        ...

    async def grow_volume(self, pool: str, name: str, capacity: int) -> None:
        """Grow the volume to ``capacity`` bytes (the guest sees a larger disk); never shrinks one."""
        ...

    async def volume_info(self, pool: str, name: str) -> VolumeInfo | None:
        """The volume's path, format and capacity; None (not an error) when it does not exist."""
        ...

    async def delete_volume(self, pool: str, name: str) -> bool:
        """Remove the volume and its data; False (not an error) when it does not exist."""
        ...

    async def list_volumes(self, pool: str) -> list[str]:
        """Names of the pool's volumes, after a refresh of the pool."""
        ...

    async def refresh_pool(self, pool: str) -> None:
        """Re-read the pool's volumes (after their data was written behind the pool's back)."""
        ...

    async def pool_usage(self, pool: str) -> PoolUsage:
        """The pool's capacity, allocation and free space as the host measures them now (after a
        refresh): a host's disk facts, wherever the host is."""
        ...

    async def upload_volume(self, pool: str, name: str, source: UploadSource) -> int:
        """Write ``source`` into the volume from offset 0 through a stream (no shared filesystem needed).

        Before: the volume exists and is at least as large as the data.  Returns
        the bytes written.  A path is read on this machine, not on the host.
        """
        ...

    async def download_volume(self, pool: str, name: str, target: DownloadTarget) -> int:
        """Read the whole volume through a stream into ``target``; returns the bytes read.

        A path is written on this machine; an async callable gets each chunk in order.
        """
        ...

    # -- networks: isolated networks and their DHCP host entries -----------------

    async def ensure_network(self, net: NetworkSpec) -> str:
        """Define (if needed), start and autostart the isolated network; return its bridge name.

        An existing network with another subnet (or a forward) is redefined,
        keeping its bridge and the DHCP entries that still fit the subnet.
        """
        ...

    async def add_dhcp_host(self, network: str, mac: str, ip: str) -> None:
        """Add the DHCP host entry mac → ip, live and in the persistent definition.

        An entry with this MAC or this IP is replaced; VirtError if the network does not exist.
        """
        ...

    async def remove_dhcp_host(self, network: str, mac: str) -> bool:
        """Remove the entry for ``mac``; False (not an error) when there was none or no network."""
        ...

    async def sync_dhcp_hosts(self, network: str, wanted: dict[str, str]) -> tuple[int, int]:
        """Make the network's entries exactly ``wanted`` (MAC → IP); returns (added, removed)."""
        ...

    async def dhcp_hosts(self, network: str) -> dict[str, str]:
        """MAC → IP of the network's DHCP host entries; {} when the network does not exist."""
        ...

    async def undefine_network(self, network: str) -> None:
        """Stop and remove the network (a tenant network's DHCP namespace too); a missing one is fine."""
        ...

    async def prune_tenant_networks(self, prefix: str, keep: set[str]) -> list[str]:
        """Remove the tenant networks of the cloud named by ``prefix`` (libvirt networks
        prefix + "n" + 12 hex digits, DHCP namespaces prefix + "dhcp-" + network id) whose
        network name is not in ``keep``; returns the names removed."""
        ...

    async def metadata_socket(self, network: str, port: int = 80) -> socket.socket | None:
        """A listening TCP socket on 169.254.169.254:``port`` inside the DHCP namespace of tenant
        network ``network`` on this machine, for the caller to serve; None where the network has
        no such namespace (no DHCP, a remote or simulated host). The socket is the caller's to
        close, before the network is removed. VirtError when it cannot be bound."""
        ...

    # -- packet filters (security groups) and hot-plugged NICs ------------------

    @property
    def enforces_port_filters(self) -> bool:
        """Whether this host's filters filter anything (a simulated host's do not): where they
        do not, the cloud skips working them out."""
        ...

    async def set_port_filter(self, spec: PortFilterSpec) -> None:
        """Define or replace the port's filter; NICs referencing it follow within seconds, live."""
        ...

    async def remove_port_filter(self, name: str) -> bool:
        """Remove a filter no NIC uses any more; False when there was none."""
        ...

    async def port_filters(self, prefix: str) -> list[str]:
        """Names of the filters on this host that start with ``prefix``."""
        ...

    async def attach_nic(self, instance_uuid: str, nic: NicSpec) -> None:
        """Plug a NIC into the guest, live if it runs and in its persistent definition.

        Before: the domain exists (InstanceNotFound otherwise) and the NIC's network (and
        filter, if named) exist on the host.  After: the persistent definition has a NIC
        with ``nic.mac`` (and the running guest sees it).  Idempotent: a NIC with that MAC
        already there is not an error.
        """
        ...

    async def detach_nic(self, instance_uuid: str, mac: str, timeout: float = 20) -> None:
        """Unplug the NIC with this MAC, live and persistent; a missing one is fine.

        After: neither the persistent definition nor the running guest has the NIC.  A
        running guest is asked (again once halfway through ``timeout``); VirtError when it
        still holds the NIC after ``timeout`` seconds.  A missing domain is not an error.
        """
        ...

    async def nic_macs(self, instance_uuid: str) -> list[str]:
        """MACs (lower case) of the NICs in the domain's persistent definition, in order.

        No side effects; InstanceNotFound when there is no such domain.  The network
        service compares them with the instance's ports to repair a hot-plug a crash cut short.
        """
        ...
