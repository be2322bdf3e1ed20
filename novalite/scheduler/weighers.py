"""Scheduler weighers: raw weights per host, normalised to [0, 1] as Nova does, times a multiplier.

Nova (nova/weights.py): for each weigher, raw weights over all hosts are
min-max normalised (all equal → all 0), multiplied by the weigher's
multiplier and summed; the heaviest host wins. A weigher that returns None
from ``weigh_all`` has nothing to say for this request (e.g. no soft group):
every host gets 0 from it.

The arithmetic is numpy's over arrays of the hosts' values (the same IEEE
operations in the same order as Python's floats would do them, so the same
weights): at 1,000 hosts a Python pass per weigher was most of a decision.
"""

from __future__ import annotations

import numpy as np

from novalite.config import SchedulerConfig
from novalite.scheduler.host_state import HostState, column


class BaseWeigher:
    name = "BaseWeigher"
    multiplier_option = ""

    def weigh(self, host: HostState, spec: dict) -> float:
        """Raw weight of one host (unnormalised)."""
        out = self.weigh_all([host], spec)
        return 0.0 if out is None else float(out[0])

    def weigh_all(self, hosts: list[HostState], spec: dict) -> np.ndarray | None:  # pragma: no cover
        """Raw weights of the hosts, in their order (None: nothing to say for this request)."""
        raise NotImplementedError

    def multiplier(self, cfg: SchedulerConfig) -> float:
        return float(getattr(cfg, self.multiplier_option, 1.0))


class RAMWeigher(BaseWeigher):
    """Spread by default: more free RAM weighs more (negative multiplier: stack)."""

    name = "RAMWeigher"
    multiplier_option = "ram_weight_multiplier"

    def weigh_all(self, hosts, spec):
        return column(hosts, "free_ram_mb")


class CPUWeigher(BaseWeigher):
    name = "CPUWeigher"
    multiplier_option = "cpu_weight_multiplier"

    def weigh_all(self, hosts, spec):
        return column(hosts, "free_vcpus")


class DiskWeigher(BaseWeigher):
    name = "DiskWeigher"
    multiplier_option = "disk_weight_multiplier"

    def weigh_all(self, hosts, spec):
        return column(hosts, "free_disk_gb")


class BuildFailureWeigher(BaseWeigher):
    """Hosts whose recent builds failed sink (Nova: multiplier × -failed_builds, 1e6 by default)."""

    name = "BuildFailureWeigher"
    multiplier_option = "build_failure_weight_multiplier"

    def weigh_all(self, hosts, spec):
        failed = column(hosts, "failed_builds")
        if not failed.any():  # the usual case
            return None
        return -failed


class _SoftGroupWeigher(BaseWeigher):
    policy = ""
    sign = 1.0

    def weigh_all(self, hosts, spec):
        group = spec.get("group")
        if not group or group["policy"] != self.policy or not group["hosts"]:
            return None
        counts = group["hosts"]
        return np.fromiter((self.sign * counts.get(h.host, 0) for h in hosts), float, len(hosts))


class ServerGroupSoftAffinityWeigher(_SoftGroupWeigher):
    """soft-affinity: the more members of the group on a host, the heavier it is."""

    name = "ServerGroupSoftAffinityWeigher"
    multiplier_option = "soft_affinity_weight_multiplier"
    policy = "soft-affinity"


class ServerGroupSoftAntiAffinityWeigher(_SoftGroupWeigher):
    """soft-anti-affinity: the more members of the group on a host, the lighter it is."""

    name = "ServerGroupSoftAntiAffinityWeigher"
    multiplier_option = "soft_anti_affinity_weight_multiplier"
    policy = "soft-anti-affinity"
    sign = -1.0


ALL_WEIGHERS = {
    cls.name: cls
    for cls in (RAMWeigher, CPUWeigher, DiskWeigher, BuildFailureWeigher, ServerGroupSoftAffinityWeigher,
                ServerGroupSoftAntiAffinityWeigher)
}


def normalize(values: list[float]) -> list[float]:
    """Nova's weights.normalize: min-max to [0, 1]; all equal → all 0."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi == lo:
        return [0.0] * len(values)
    span = hi - lo
    return [(v - lo) / span for v in values]


def weigh(
    weighers: list[BaseWeigher], cfg: SchedulerConfig, hosts: list[HostState], spec: dict
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(total weight per host, {weigher: its weighted share per host}) in the hosts' order."""
    totals: np.ndarray | None = None
    parts: dict[str, np.ndarray] = {}
    for weigher in weighers:
        raw = weigher.weigh_all(hosts, spec)
        mult = weigher.multiplier(cfg)
        if raw is None or mult == 0:
            continue
        lo, hi = raw.min(), raw.max()
        if hi == lo:
            continue
        share = (raw - lo) * (mult / (hi - lo))
        parts[weigher.name] = share
        totals = share if totals is None else totals + share
    return (np.zeros(len(hosts)) if totals is None else totals), parts


def weigh_hosts(
    weighers: list[BaseWeigher], cfg: SchedulerConfig, hosts: list[HostState], spec: dict
) -> list[tuple[HostState, float]]:
    """Hosts with their total weight, heaviest first (ties keep the hosts' order, as Nova's sort does)."""
    totals, _ = weigh(weighers, cfg, hosts, spec)
    ranked = list(zip(hosts, totals.tolist(), strict=True))
    ranked.sort(key=lambda hw: hw[1], reverse=True)
    return ranked


def build_weighers(names: list[str]) -> list[BaseWeigher]:
    unknown = [n for n in names if n not in ALL_WEIGHERS]
    if unknown:
        raise ValueError(f"unknown scheduler weighers: {', '.join(unknown)}")
    return [ALL_WEIGHERS[n]() for n in names]
