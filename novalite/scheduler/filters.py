"""Scheduler filters: one small class each, Nova's names and semantics.

``host_passes(host, spec)`` returns None when the host passes, or a short
reason why not; the reasons become the explanation a user reads when no host
is left.

Per request, ``prepare(spec)`` does the work that does not depend on the host
once (parse extra specs, look up the group) and returns the per-host check,
or None when the filter has nothing to check for this request (no group, no
hint, no AZ asked for...). ``filter_all`` runs it over every host; the
resource filters override it with a comprehension, since at 10,000 hosts a
Python call per host per filter is what the time goes on.

The spec is the RequestSpec dict the compute API built, plus what the
scheduler resolves per request:
- ``group``: {"uuid", "policy", "rules", "hosts": {host: members there}} of
  the instance group named by the ``group`` hint;
- ``hint_hosts``: {instance uuid: host} for the same_host/different_host hints.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable

import numpy as np

from novalite.scheduler.host_state import HostList, HostState, column

Check = Callable[[HostState], str | None]


def requested_resources(spec: dict) -> tuple[int, int, int]:
    """(vcpus, memory MB, disk GB) one instance of the spec's flavor needs."""
    flavor = spec["flavor"]
    disk = flavor["root_gb"] + flavor["ephemeral_gb"] + (flavor["swap"] + 1023) // 1024
    return flavor["vcpus"], flavor["memory_mb"], disk


class BaseFilter:
    """A host filter: `prepare` once per request, then a check per host."""

    name = "BaseFilter"

    def prepare(self, spec: dict) -> Check | None:  # pragma: no cover - interface
        raise NotImplementedError

    def host_passes(self, host: HostState, spec: dict) -> str | None:
        """None when the host passes, else why not."""
        check = self.prepare(spec)
        return None if check is None else check(host)

    def memo_key(self, spec: dict) -> Callable[[HostState], Hashable] | None:
        """When the verdict depends only on a few host attributes, their getter: one check per distinct value."""
        return None

    def filter_all(self, hosts: list[HostState], spec: dict) -> tuple[list[HostState], list[tuple[HostState, str]]]:
        """(hosts kept, [(host, reason)] removed), order kept."""
        check = self.prepare(spec)
        if check is None:
            return hosts, []
        key = self.memo_key(spec)
        if key is not None:
            keys = list(map(key, hosts))
            verdict = {k: check(h) for k, h in dict(zip(keys, hosts, strict=True)).items()}
            if all(v is None for v in verdict.values()):  # the usual case: no per-host pass at all
                return hosts, []
            kept = [h for h, k in zip(hosts, keys, strict=True) if verdict[k] is None]
            return kept, [(h, verdict[k]) for h, k in zip(hosts, keys, strict=True) if verdict[k] is not None]
        kept: list[HostState] = []
        removed: list[tuple[HostState, str]] = []
        for h in hosts:
            reason = check(h)
            if reason is None:
                kept.append(h)
            else:
                removed.append((h, reason))
        return kept, removed


def _split_where(hosts: list[HostState], bad: np.ndarray, check: Check) -> tuple[list, list]:
    """(kept, [(host, reason)]) from a boolean array of the hosts failing (usually none or few;
    for the resource filters a numpy comparison of a column): a pass in Python only over the
    hosts it names, and a reason asked only of those that fail."""
    if not bad.any():
        return hosts, []
    keep = np.flatnonzero(~bad)
    kept = hosts.at(keep) if isinstance(hosts, HostList) else [hosts[i] for i in keep.tolist()]
    return kept, [(hosts[i], check(hosts[i]) or "rejected") for i in np.flatnonzero(bad).tolist()]


class RetryFilter(BaseFilter):
    """Hosts where this build already failed are not tried again."""

    name = "RetryFilter"

    def prepare(self, spec: dict) -> Check | None:
        tried = set((spec.get("retry") or {}).get("hosts") or [])
        if not tried:
            return None
        return lambda h: "host already tried for this build" if h.host in tried else None

    def filter_all(self, hosts, spec):
        check = self.prepare(spec)
        if check is None:
            return hosts, []
        tried = set(spec["retry"]["hosts"])
        return _split_where(hosts, np.array([h.host in tried for h in hosts], dtype=bool), check)


class AvailabilityZoneFilter(BaseFilter):
    name = "AvailabilityZoneFilter"

    def prepare(self, spec: dict) -> Check | None:
        az = spec.get("availability_zone")
        if not az:
            return None
        return lambda h: None if h.availability_zone == az else f"availability zone {h.availability_zone} != {az}"

    def filter_all(self, hosts, spec):
        check = self.prepare(spec)
        if check is None:
            return hosts, []
        az = spec["availability_zone"]
        return _split_where(hosts, np.array([h.availability_zone != az for h in hosts], dtype=bool), check)


class ComputeFilter(BaseFilter):
    """The host's nova-compute service is enabled and up."""

    name = "ComputeFilter"

    @staticmethod
    def _check(h: HostState) -> str | None:
        if h.disabled:
            return f"service disabled ({h.disabled_reason})" if h.disabled_reason else "service disabled"
        if not h.up:
            return "service down"
        return None

    def prepare(self, spec: dict) -> Check | None:
        return self._check

    def filter_all(self, hosts, spec):
        return _split_where(hosts, ~column(hosts, "usable"), self._check)


class RamFilter(BaseFilter):
    """Free RAM, ram_allocation_ratio and reserved_host_memory_mb applied, fits the flavor."""

    name = "RamFilter"

    def prepare(self, spec: dict) -> Check | None:
        _, ram, _ = requested_resources(spec)
        return lambda h: None if h.free_ram_mb >= ram else f"free RAM {int(h.free_ram_mb)} MB < {ram} MB requested"

    def filter_all(self, hosts, spec):
        _, ram, _ = requested_resources(spec)
        return _split_where(hosts, column(hosts, "free_ram_mb") < ram, self.prepare(spec))


class CoreFilter(BaseFilter):
    """Free vCPUs, cpu_allocation_ratio applied, fit the flavor."""

    name = "CoreFilter"

    def prepare(self, spec: dict) -> Check | None:
        vcpus, _, _ = requested_resources(spec)
        return lambda h: None if h.free_vcpus >= vcpus else f"free vCPUs {h.free_vcpus:g} < {vcpus} requested"

    def filter_all(self, hosts, spec):
        vcpus, _, _ = requested_resources(spec)
        return _split_where(hosts, column(hosts, "free_vcpus") < vcpus, self.prepare(spec))


class DiskFilter(BaseFilter):
    """Free disk, disk_allocation_ratio and reserved_host_disk_mb applied, fits root + ephemeral + swap."""

    name = "DiskFilter"

    def prepare(self, spec: dict) -> Check | None:
        _, _, disk = requested_resources(spec)
        return lambda h: None if h.free_disk_gb >= disk else f"free disk {h.free_disk_gb:g} GB < {disk} GB requested"

    def filter_all(self, hosts, spec):
        _, _, disk = requested_resources(spec)
        return _split_where(hosts, column(hosts, "free_disk_gb") < disk, self.prepare(spec))


# -- image properties ---------------------------------------------------------------

_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "i386": "i686", "x86": "i686", "arm64": "aarch64",
                 "ppc64el": "ppc64le", "ppc": "ppc"}
_HV_ALIASES = {"xapi": "xen"}
_VM_MODE_ALIASES = {"pv": "xen", "hv": "hvm", "baremetal": "hvm"}


def _canonical(value: object, aliases: dict[str, str]) -> str | None:
    if value is None or value == "":
        return None
    low = str(value).lower()
    return aliases.get(low, low)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.strip().split(".") if p.isdigit())


def _version_str(version: int) -> str:
    """Nova's convert_version_to_str: 6002000 → '6.2.0'."""
    parts = []
    while version:
        parts.insert(0, str(version % 1000))
        version //= 1000
    return ".".join(parts) or "0"


_VERSION_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
                "==": operator.eq, "!=": operator.ne}


def _version_satisfies(have: int, requirement: str) -> bool:
    """oslo's VersionPredicate over a comma-separated list such as '>=6.0,<9'."""
    have_t = _version_tuple(_version_str(have))
    for part in requirement.split(","):
        part = part.strip()
        for op in (">=", "<=", "==", "!=", ">", "<"):
            if part.startswith(op):
                if not _VERSION_OPS[op](have_t, _version_tuple(part[len(op):])):
                    return False
                break
    return True


class ImagePropertiesFilter(BaseFilter):
    """hw_architecture, img_hv_type, hw_vm_mode (and img_hv_requested_version) vs what the host runs."""

    name = "ImagePropertiesFilter"

    def __init__(self, default_architecture: str | None = None) -> None:
        self.default_architecture = default_architecture

    def prepare(self, spec: dict) -> Check | None:
        props = ((spec.get("image") or {}).get("properties")) or {}
        wanted = (
            _canonical(props.get("hw_architecture", self.default_architecture), _ARCH_ALIASES),
            _canonical(props.get("img_hv_type"), _HV_ALIASES),
            _canonical(props.get("hw_vm_mode"), _VM_MODE_ALIASES),
        )
        required_version = props.get("img_hv_requested_version")
        if not any(wanted):
            return None
        asked = ", ".join(f"{k}={v}" for k, v in zip(("arch", "hv_type", "vm_mode"), wanted, strict=True) if v)

        def check(h: HostState) -> str | None:
            for triple in h.supported_instances:
                if all(w is None or w in triple for w in wanted):
                    if required_version and h.hypervisor_version and not _version_satisfies(
                        h.hypervisor_version, str(required_version)
                    ):
                        return (f"hypervisor version {_version_str(h.hypervisor_version)} does not satisfy "
                                f"{required_version}")
                    return None
            offered = "; ".join("/".join(t) for t in h.supported_instances) or "nothing"
            return f"image wants {asked}, host runs {offered}"

        return check

    def memo_key(self, spec: dict) -> Callable[[HostState], Hashable] | None:
        return operator.attrgetter("profile")  # exactly what the check reads


# -- flavor extra specs -------------------------------------------------------------

_SPEC_OPS: dict[str, Callable[[str, object], bool]] = {
    "=": lambda x, y: float(x) >= float(y),
    "<in>": lambda x, y: y in x,
    "<all-in>": lambda x, y: all(v in x for v in y),
    "==": lambda x, y: float(x) == float(y),
    "!=": lambda x, y: float(x) != float(y),
    ">=": lambda x, y: float(x) >= float(y),
    "<=": lambda x, y: float(x) <= float(y),
    "s==": operator.eq,
    "s!=": operator.ne,
    "s<": operator.lt,
    "s<=": operator.le,
    "s>": operator.gt,
    "s>=": operator.ge,
}


def extra_spec_matches(value: str | None, req: str) -> bool:
    """Nova's extra_specs_ops.match: `=`, `s==`, `<in>`, `<all-in>`, `<or>`, ... or plain equality."""
    words = req.split()
    op = words.pop(0) if words else None
    method = _SPEC_OPS.get(op) if op else None
    if op != "<or>" and not method:
        return value == req
    if value is None:
        return False
    if op == "<or>":
        return value in words[0::2]
    if not words:
        return False
    try:
        return method(value, words) if op == "<all-in>" else method(value, words[0])
    except ValueError:
        return False


# Host state attributes ComputeCapabilitiesFilter can match, as Nova's HostState names them.
_CAPABILITIES = ("host", "nodename", "hypervisor_type", "hypervisor_version", "cpu_arch", "vcpus", "memory_mb",
                 "local_gb", "vcpus_used", "memory_mb_used", "free_ram_mb", "free_disk_gb", "free_vcpus",
                 "num_instances", "numa_cells", "availability_zone")
_CAP_ALIASES = {"hypervisor_hostname": "nodename", "free_disk_mb": None, "local_gb_used": "disk_gb_used",
                "cpu_info:arch": "cpu_arch"}


class ComputeCapabilitiesFilter(BaseFilter):
    """Flavor extra specs `capabilities:<attr>` (and bare host attribute names) against the host state."""

    name = "ComputeCapabilitiesFilter"

    def _wanted_attrs(self, spec: dict) -> list[str]:
        return [attr for _, attr, _ in self._wanted(spec)]

    def prepare(self, spec: dict) -> Check | None:
        wanted = self._wanted(spec)
        if not wanted:
            return None

        def check(h: HostState) -> str | None:
            for key, attr, req in wanted:
                value = getattr(h, attr, None) if attr in _CAPABILITIES or attr == "disk_gb_used" else None
                if value is None:
                    return f"{key}: host reports no {attr}"
                shown = f"{value:g}" if isinstance(value, float) else str(value)
                if not extra_spec_matches(shown, req):
                    return f"{key}: {shown} does not match '{req}'"
            return None

        return check

    @staticmethod
    def _wanted(spec: dict) -> list[tuple[str, str, str]]:
        wanted: list[tuple[str, str, str]] = []  # (extra spec key, host attribute, requirement)
        for key, req in ((spec.get("flavor") or {}).get("extra_specs") or {}).items():
            scope = key.split(":")
            if len(scope) == 1:
                if key not in _CAPABILITIES:
                    continue
                attr = key
            elif scope[0] != "capabilities":
                continue
            else:
                rest = ":".join(scope[1:])
                attr = _CAP_ALIASES.get(rest, rest)
            wanted.append((key, attr, str(req)))
        return wanted

    def memo_key(self, spec: dict) -> Callable[[HostState], Hashable] | None:
        attrs = sorted({attr for attr in self._wanted_attrs(spec) if attr in _CAPABILITIES or attr == "disk_gb_used"})
        return operator.attrgetter(*attrs) if attrs else (lambda h: None)


AGGREGATE_SCOPE = "aggregate_instance_extra_specs"


class AggregateInstanceExtraSpecsFilter(BaseFilter):
    """Flavor extra specs vs host aggregate metadata. novalite has no host aggregates, so every
    host's aggregate metadata is empty: a flavor asking for aggregate metadata fits no host (as in
    Nova for hosts outside every aggregate); any other flavor passes untouched."""

    name = "AggregateInstanceExtraSpecsFilter"

    def prepare(self, spec: dict) -> Check | None:
        keys = [k for k in ((spec.get("flavor") or {}).get("extra_specs") or {}) if k.startswith(AGGREGATE_SCOPE + ":")]
        if not keys:
            return None
        reason = f"no host aggregates in novalite, so no aggregate metadata matches {keys[0]}"
        return lambda h: reason


class NUMATopologyFilter(BaseFilter):
    """The simple form the flavor allows: hw:numa_nodes cells, each fitting in one host cell."""

    name = "NUMATopologyFilter"

    def prepare(self, spec: dict) -> Check | None:
        flavor = spec.get("flavor") or {}
        specs = flavor.get("extra_specs") or {}
        props = ((spec.get("image") or {}).get("properties")) or {}
        raw = specs.get("hw:numa_nodes", props.get("hw_numa_nodes"))
        if raw is None:
            return None
        nodes = int(raw)
        cell_ram = [int(specs.get(f"hw:numa_mem.{i}", flavor["memory_mb"] // nodes)) for i in range(nodes)]
        cell_cpus = [len(str(specs[f"hw:numa_cpus.{i}"]).split(",")) if f"hw:numa_cpus.{i}" in specs
                     else flavor["vcpus"] // nodes for i in range(nodes)]
        if flavor["vcpus"] < nodes:
            reason = f"{flavor['vcpus']} vCPUs cannot spread over hw:numa_nodes={nodes}"
            return lambda h: reason

        def check(h: HostState) -> str | None:
            if nodes > h.numa_cells:
                return f"hw:numa_nodes={nodes} > {h.numa_cells} host NUMA cell{'s' * (h.numa_cells != 1)}"
            cells = max(h.numa_cells, 1)
            ram_per_cell = h.memory_mb * h.ram_allocation_ratio / cells
            cpus_per_cell = h.vcpus * h.cpu_allocation_ratio / cells
            if max(cell_ram) > ram_per_cell:
                return f"guest NUMA cell of {max(cell_ram)} MB > host cell of {int(ram_per_cell)} MB"
            if max(cell_cpus) > cpus_per_cell:
                return f"guest NUMA cell of {max(cell_cpus)} vCPUs > host cell of {cpus_per_cell:g}"
            return None

        return check

    def memo_key(self, spec: dict) -> Callable[[HostState], Hashable] | None:
        return operator.attrgetter("numa_cells", "memory_mb", "vcpus", "ram_allocation_ratio", "cpu_allocation_ratio")


# -- server groups and hints ----------------------------------------------------------

class ServerGroupAffinityFilter(BaseFilter):
    """Group policy `affinity`: once a member has a host, every member goes there."""

    name = "ServerGroupAffinityFilter"

    def prepare(self, spec: dict) -> Check | None:
        group = spec.get("group")
        if not group or group["policy"] != "affinity" or not group["hosts"]:
            return None
        hosts = group["hosts"]
        where = ", ".join(sorted(hosts))
        return lambda h: None if h.host in hosts else f"server group {group['uuid']} (affinity) is on {where}"


class ServerGroupAntiAffinityFilter(BaseFilter):
    """Group policy `anti-affinity`: fewer than max_server_per_host (default 1) members on the host."""

    name = "ServerGroupAntiAffinityFilter"

    def prepare(self, spec: dict) -> Check | None:
        group = spec.get("group")
        if not group or group["policy"] != "anti-affinity" or not group["hosts"]:
            return None
        hosts = group["hosts"]
        limit = int((group.get("rules") or {}).get("max_server_per_host", 1))

        def check(h: HostState) -> str | None:
            n = hosts.get(h.host, 0)
            if n < limit:
                return None
            return (f"server group {group['uuid']} (anti-affinity) has {n} member{'s' * (n != 1)} here, "
                    f"max_server_per_host {limit}")

        return check


def _hint_uuids(spec: dict, key: str) -> list[str]:
    value = (spec.get("scheduler_hints") or {}).get(key)
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _hint_check(spec: dict, key: str, want_overlap: bool) -> Check | None:
    uuids = _hint_uuids(spec, key)
    if not uuids:
        return None
    resolved = spec.get("hint_hosts")
    if resolved is not None:
        targets = {resolved[u] for u in uuids if resolved.get(u)}

        def overlaps(h: HostState) -> bool:
            return h.host in targets
    else:
        wanted = set(uuids)

        def overlaps(h: HostState) -> bool:
            return not wanted.isdisjoint(h.instance_uuids)

    if want_overlap:
        return lambda h: None if overlaps(h) else f"none of the {key} instances is on this host"
    return lambda h: f"an instance named in {key} is on this host" if overlaps(h) else None


class SameHostFilter(BaseFilter):
    """Scheduler hint same_host: on a host that runs one of these instances."""

    name = "SameHostFilter"

    def prepare(self, spec: dict) -> Check | None:
        return _hint_check(spec, "same_host", True)


class DifferentHostFilter(BaseFilter):
    """Scheduler hint different_host: on no host that runs one of these instances."""

    name = "DifferentHostFilter"

    def prepare(self, spec: dict) -> Check | None:
        return _hint_check(spec, "different_host", False)


ALL_FILTERS: dict[str, type[BaseFilter]] = {
    cls.name: cls
    for cls in (
        RetryFilter,
        AvailabilityZoneFilter,
        ComputeFilter,
        RamFilter,
        CoreFilter,
        DiskFilter,
        ImagePropertiesFilter,
        ComputeCapabilitiesFilter,
        AggregateInstanceExtraSpecsFilter,
        NUMATopologyFilter,
        ServerGroupAffinityFilter,
        ServerGroupAntiAffinityFilter,
        SameHostFilter,
        DifferentHostFilter,
    )
}


def build_filters(names: list[str], default_architecture: str | None = None) -> list[BaseFilter]:
    """The configured filters, in the configured order."""
    unknown = [n for n in names if n not in ALL_FILTERS]
    if unknown:
        raise ValueError(f"unknown scheduler filters: {', '.join(unknown)}")
    out: list[BaseFilter] = []
    for n in names:
        out.append(ImagePropertiesFilter(default_architecture) if n == "ImagePropertiesFilter" else ALL_FILTERS[n]())
    return out
