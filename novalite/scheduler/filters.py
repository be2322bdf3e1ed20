"""Scheduler filters: one small class each, Nova's names.

``host_passes`` returns None when the host passes, or a short reason why not;
the reasons become the explanation a user reads when no host is left.
"""

from __future__ import annotations

from novalite.scheduler.host_state import HostState


class BaseFilter:
    """A filter; `run_filter_once_per_request` filters need not re-run per instance."""

    name = "BaseFilter"

    def host_passes(self, host: HostState, spec: dict) -> str | None:  # pragma: no cover - interface
        raise NotImplementedError


def _resources(spec: dict) -> tuple[int, int, int]:
    flavor = spec["flavor"]
    disk = flavor["root_gb"] + flavor["ephemeral_gb"] + (flavor["swap"] + 1023) // 1024
    return flavor["vcpus"], flavor["memory_mb"], disk


class RetryFilter(BaseFilter):
    name = "RetryFilter"

    def host_passes(self, host: HostState, spec: dict) -> str | None:
        if host.host in spec.get("retry", {}).get("hosts", []):
            return "host already tried for this build"
        return None


class AvailabilityZoneFilter(BaseFilter):
    name = "AvailabilityZoneFilter"

    def host_passes(self, host: HostState, spec: dict) -> str | None:
        az = spec.get("availability_zone")
        if az and host.availability_zone != az:
            return f"availability zone {host.availability_zone} != {az}"
        return None


class ComputeFilter(BaseFilter):
    name = "ComputeFilter"

    def host_passes(self, host: HostState, spec: dict) -> str | None:
        if host.disabled:
            return f"service disabled ({host.disabled_reason})" if host.disabled_reason else "service disabled"
        if not host.up:
            return "service down"
        return None


class RamFilter(BaseFilter):
    name = "RamFilter"

    def host_passes(self, host: HostState, spec: dict) -> str | None:
        _, ram, _ = _resources(spec)
        if host.free_ram_mb < ram:
            return f"free RAM {int(host.free_ram_mb)} MB < {ram} MB requested"
        return None


class CoreFilter(BaseFilter):
    name = "CoreFilter"

    def host_passes(self, host: HostState, spec: dict) -> str | None:
        vcpus, _, _ = _resources(spec)
        if host.free_vcpus < vcpus:
            return f"free vCPUs {host.free_vcpus:g} < {vcpus} requested"
        return None


class DiskFilter(BaseFilter):
    name = "DiskFilter"

    def host_passes(self, host: HostState, spec: dict) -> str | None:
        _, _, disk = _resources(spec)
        if host.free_disk_gb < disk:
            return f"free disk {host.free_disk_gb:g} GB < {disk} GB requested"
        return None


ALL_FILTERS: dict[str, type[BaseFilter]] = {
    cls.name: cls
    for cls in (RetryFilter, AvailabilityZoneFilter, ComputeFilter, RamFilter, CoreFilter, DiskFilter)
}


def build_filters(names: list[str]) -> list[BaseFilter]:
    unknown = [n for n in names if n not in ALL_FILTERS]
    if unknown:
        raise ValueError(f"unknown scheduler filters: {', '.join(unknown)}")
    return [ALL_FILTERS[n]() for n in names]
