"""Scheduler weighers: raw weights per host, normalised to [0, 1] as Nova does, times a multiplier."""

from __future__ import annotations

from novalite.config import SchedulerConfig
from novalite.scheduler.host_state import HostState


class BaseWeigher:
    name = "BaseWeigher"
    multiplier_option = ""

    def weigh(self, host: HostState, spec: dict) -> float:  # pragma: no cover - interface
        raise NotImplementedError


class RAMWeigher(BaseWeigher):
    """Spread by default: more free RAM weighs more."""

    name = "RAMWeigher"
    multiplier_option = "ram_weight_multiplier"

    def weigh(self, host: HostState, spec: dict) -> float:
        return host.free_ram_mb


class CPUWeigher(BaseWeigher):
    name = "CPUWeigher"
    multiplier_option = "cpu_weight_multiplier"

    def weigh(self, host: HostState, spec: dict) -> float:
        return host.free_vcpus


class DiskWeigher(BaseWeigher):
    name = "DiskWeigher"
    multiplier_option = "disk_weight_multiplier"

    def weigh(self, host: HostState, spec: dict) -> float:
        return host.free_disk_gb


ALL_WEIGHERS = {cls.name: cls for cls in (RAMWeigher, CPUWeigher, DiskWeigher)}


def normalize(values: list[float]) -> list[float]:
    """Nova's weights.normalize: min-max to [0, 1]; all equal → all 0."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi == lo:
        return [0.0 for _ in values]
    return [(v - lo) / (hi - lo) for v in values]


def weigh_hosts(
    weighers: list[BaseWeigher], cfg: SchedulerConfig, hosts: list[HostState], spec: dict
) -> list[tuple[HostState, float]]:
    """Hosts with their total weight, heaviest first."""
    totals = [0.0] * len(hosts)
    for weigher in weighers:
        mult = getattr(cfg, weigher.multiplier_option, 1.0)
        for i, w in enumerate(normalize([weigher.weigh(h, spec) for h in hosts])):
            totals[i] += mult * w
    ranked = list(zip(hosts, totals, strict=True))
    ranked.sort(key=lambda hw: hw[1], reverse=True)
    return ranked


def build_weighers(names: list[str]) -> list[BaseWeigher]:
    unknown = [n for n in names if n not in ALL_WEIGHERS]
    if unknown:
        raise ValueError(f"unknown scheduler weighers: {', '.join(unknown)}")
    return [ALL_WEIGHERS[n]() for n in names]
