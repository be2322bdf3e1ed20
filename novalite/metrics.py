"""Prometheus metrics: the objects every layer records into, and the text a scrape reads.

Counters and histograms are module objects in novalite's own registry (``REGISTRY``,
never prometheus_client's global one, so nothing else in the process collides with
them); the recording helpers below are all the hot path does (an ``inc`` or an
``observe``, skipped when ``[metrics] enabled`` is off). Values that are read rather
than counted -- queue depths, pool use, host usage, instances by state -- come from a
:class:`ScrapeSources` the wiring (app.py) builds per app: its callbacks run only when
someone scrapes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Summary,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MIB = 1024 * 1024
GIB = 1024 * MIB

REGISTRY = CollectorRegistry(auto_describe=True)
# No `_created` series: a line per labelled child that PromQL rarely needs, and a scrape's
# cost is per line (prometheus_client's exposition is pure Python).
disable_created_metrics()

# Outcomes of a boot: where it ended (active, error, deleted while building) or that a
# host's attempt failed and was handed back for another host (rescheduled).
BOOT_OUTCOMES = ("active", "error", "deleted", "rescheduled")
BUILD_STEPS = ("scheduling", "networking", "block_device_mapping", "spawning")

BOOTS = Counter("novalite_boots", "Boots by outcome (rescheduled: an attempt handed to another host).",
                ["outcome"], registry=REGISTRY)
BUILD_STEP_SECONDS = Histogram(
    "novalite_build_step_duration_seconds", "Time one instance's build spent in each step.", ["step"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=REGISTRY)
SCHEDULER_DECISIONS = Counter("novalite_scheduler_decisions", "Scheduling decisions per instance, by result.",
                              ["result"], registry=REGISTRY)
NO_VALID_HOST = Counter("novalite_scheduler_no_valid_host",
                        "NoValidHost answers, by the filter that removed the last hosts.", ["filter"],
                        registry=REGISTRY)
API_REQUEST_SECONDS = Histogram(
    "novalite_api_request_duration_seconds", "API requests by method, route pattern and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10), registry=REGISTRY)
# A summary (count and sum: rate and mean latency), not a histogram: hosts x calls is the
# largest label set here, and buckets would multiply a scrape's lines by twelve.
LIBVIRT_CALL_SECONDS = Summary(
    "novalite_libvirt_call_duration_seconds", "Blocking libvirt calls by host and call (time in the worker).",
    ["host", "call"], registry=REGISTRY)
TOKEN_CACHE = Counter("novalite_token_cache", "Token validations answered from the cache (hit) or Postgres (miss).",
                      ["result"], registry=REGISTRY)

_BOOTS = {o: BOOTS.labels(o) for o in BOOT_OUTCOMES}
_STEPS = {s: BUILD_STEP_SECONDS.labels(s) for s in BUILD_STEPS}
_SCHEDULED = SCHEDULER_DECISIONS.labels("scheduled")
_REFUSED = SCHEDULER_DECISIONS.labels("no_valid_host")
_TOKEN_HIT, _TOKEN_MISS = TOKEN_CACHE.labels("hit"), TOKEN_CACHE.labels("miss")


class _Switch:
    on = True


_switch = _Switch()


def set_recording(on: bool) -> None:
    """``[metrics] enabled``: off, the helpers below record nothing (the process holds one setting)."""
    _switch.on = on


def boot_finished(outcome: str) -> None:
    """A boot ended (active, error, deleted) or an attempt was rescheduled."""
    if _switch.on:
        _BOOTS[outcome].inc()


def step_took(step: str, seconds: float) -> None:
    """One instance spent ``seconds`` in build step ``step`` (one of BUILD_STEPS)."""
    if _switch.on:
        _STEPS[step].observe(seconds)


def scheduled(emptied_by: str | None) -> None:
    """One instance's scheduling decision: a host (None) or NoValidHost after filter ``emptied_by``."""
    if not _switch.on:
        return
    if emptied_by is None:
        _SCHEDULED.inc()
    else:
        _REFUSED.inc()
        NO_VALID_HOST.labels(emptied_by).inc()


def api_request(method: str, route: str, status: int, seconds: float) -> None:
    if _switch.on:
        API_REQUEST_SECONDS.labels(method, route, str(status)).observe(seconds)


def libvirt_call(host: str, call: str, seconds: float) -> None:
    if _switch.on:
        LIBVIRT_CALL_SECONDS.labels(host, call).observe(seconds)


def token_lookup(hit: bool) -> None:
    if _switch.on:
        (_TOKEN_HIT if hit else _TOKEN_MISS).inc()


def recording() -> bool:
    """Whether metrics are recorded (callers skip their timing when not)."""
    return _switch.on


# -- read at scrape ------------------------------------------------------------------


class HostUsage(Protocol):
    """What a scrape reads of a host (the scheduler's host state has these attributes)."""

    host: str
    up: bool
    disabled: bool
    vcpus: int
    vcpus_used: int
    memory_mb: int
    memory_mb_used: int
    local_gb: int
    disk_gb_used: int
    num_instances: int


class Pool(Protocol):
    """asyncpg's pool, as far as a scrape reads it."""

    def get_size(self) -> int: ...
    def get_idle_size(self) -> int: ...
    def get_max_size(self) -> int: ...


@dataclass
class ScrapeSources:
    """Per app: the callbacks a scrape reads (the wiring gives them; none runs otherwise)."""

    queues: Callable[[], dict[str, int]]  # work waiting per service: conductor, scheduler
    host_builds: Callable[[], dict[str, int]]  # builds queued or running per host
    pools: Callable[[], dict[str, Pool]]
    hosts: Callable[[], Awaitable[Iterable[HostUsage]]]
    instances: Callable[[], Awaitable[Iterable[tuple[str, str, int]]]]  # vm_state, task_state, count

    async def render(self) -> bytes:
        """The Prometheus text of the counters and of what the sources say now (read on the
        event loop; the text is made in a thread, so requests are served meanwhile)."""
        families = _Families(_gauges(self.queues(), self.host_builds(), self.pools(),
                                     list(await self.hosts()), list(await self.instances())))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(families)
        return await asyncio.to_thread(lambda: generate_latest(REGISTRY) + generate_latest(registry))


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _gauge(name: str, doc: str, labels: list[str], rows: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in rows:
        family.add_metric(list(values), value)
    return family


def _gauges(queues: dict[str, int], builds: dict[str, int], pools: dict[str, Pool], hosts: list[HostUsage],
            instances: list[tuple[str, str, int]]) -> list[Metric]:
    host_rows: list[tuple[str, str, Callable[[HostUsage], float]]] = [
        ("novalite_host_up", "1 when the host's heartbeat is recent and it is not forced down.",
         lambda h: float(h.up)),
        ("novalite_host_disabled", "1 when the host's compute service is disabled.", lambda h: float(h.disabled)),
        ("novalite_host_vcpus", "Physical vCPUs of the host.", lambda h: h.vcpus),
        ("novalite_host_vcpus_used", "vCPUs claimed by instances on the host.", lambda h: h.vcpus_used),
        ("novalite_host_memory_bytes", "Memory of the host.", lambda h: h.memory_mb * MIB),
        ("novalite_host_memory_used_bytes", "Memory claimed by instances on the host.",
         lambda h: h.memory_mb_used * MIB),
        ("novalite_host_disk_bytes", "Local disk of the host.", lambda h: h.local_gb * GIB),
        ("novalite_host_disk_used_bytes", "Local disk claimed by instances on the host.",
         lambda h: h.disk_gb_used * GIB),
        ("novalite_host_instances", "Instances claimed on the host.", lambda h: h.num_instances),
    ]
    return [
        _gauge("novalite_queue_depth", "Requests accepted and not yet done, per service.", ["service"],
               (((k,), v) for k, v in queues.items())),
        _gauge("novalite_host_builds", "Builds queued or running on each host.", ["host"],
               (((k,), v) for k, v in builds.items())),
        _gauge("novalite_db_pool_connections", "Open Postgres connections per pool.", ["pool"],
               (((k,), p.get_size()) for k, p in pools.items())),
        _gauge("novalite_db_pool_idle_connections", "Open Postgres connections not in use, per pool.", ["pool"],
               (((k,), p.get_idle_size()) for k, p in pools.items())),
        _gauge("novalite_db_pool_max_connections", "The most connections each pool opens.", ["pool"],
               (((k,), p.get_max_size()) for k, p in pools.items())),
        *(_gauge(name, doc, ["host"], (((h.host,), read(h)) for h in hosts)) for name, doc, read in host_rows),
        _gauge("novalite_instances", "Instances (not deleted) by vm_state and task_state.",
               ["vm_state", "task_state"], (((vm, task), n) for vm, task, n in instances)),
    ]
