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
import math
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
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


class _CallTimes:
    """Blocking libvirt calls per (host, call): how many and their seconds in all, a Prometheus
    summary without quantiles (rate and mean latency). Hosts x calls is the largest label set
    here (~20,000 lines with 1,000 hosts): kept in a dict and written out directly, as the hosts'
    gauges are, not through prometheus_client's exposition (pure Python, ~10 us a line; a scrape
    of 1,000 hosts took ~270 ms of the process's CPU and GIL). Recorded from the workers' threads."""

    NAME = "novalite_libvirt_call_duration_seconds"
    HELP = "Blocking libvirt calls by host and call (time in the worker)."

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by: dict[tuple[str, str], list] = {}  # (host, call) -> [count, seconds]

    def observe(self, host: str, call: str, seconds: float) -> None:
        with self._lock:
            total = self._by.get((host, call))
            if total is None:
                self._by[(host, call)] = [1, seconds]
            else:
                total[0] += 1
                total[1] += seconds

    def text(self) -> str:
        with self._lock:
            rows = [(host, call, n, s) for (host, call), (n, s) in self._by.items()]
        name = self.NAME
        lines = [f"# HELP {name} {_help(self.HELP)}", f"# TYPE {name} summary"]
        for host, call, n, seconds in rows:
            labels = f'{{host="{_label(host)}",call="{_label(call)}"}}'
            lines.append(f"{name}_count{labels} {n}")
            lines.append(f"{name}_sum{labels} {_number(seconds)}")
        return "\n".join(lines) + "\n"


_CALL_TIMES = _CallTimes()


def libvirt_call(host: str, call: str, seconds: float) -> None:
    if _switch.on:
        _CALL_TIMES.observe(host, call, seconds)


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
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(_gauges(self.queues(), self.pools(), list(await self.instances()))))
        # The hosts' values are read here, on the loop: the scheduler changes its host states there.
        states = list(await self.hosts())
        names = [h.host for h in states]
        values = [tuple(read(h) for _, _, read in _HOST_GAUGES) for h in states]
        builds = self.host_builds()
        return await asyncio.to_thread(
            lambda: generate_latest(REGISTRY) + generate_latest(registry)
            + (_host_text(names, values, builds) + _CALL_TIMES.text()).encode())


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


def _gauges(queues: dict[str, int], pools: dict[str, Pool], instances: list[tuple[str, str, int]]) -> list[Metric]:
    return [
        _gauge("novalite_queue_depth", "Requests accepted and not yet done, per service.", ["service"],
               (((k,), v) for k, v in queues.items())),
        _gauge("novalite_db_pool_connections", "Open Postgres connections per pool.", ["pool"],
               (((k,), p.get_size()) for k, p in pools.items())),
        _gauge("novalite_db_pool_idle_connections", "Open Postgres connections not in use, per pool.", ["pool"],
               (((k,), p.get_idle_size()) for k, p in pools.items())),
        _gauge("novalite_db_pool_max_connections", "The most connections each pool opens.", ["pool"],
               (((k,), p.get_max_size()) for k, p in pools.items())),
        _gauge("novalite_instances", "Instances (not deleted) by vm_state and task_state.",
               ["vm_state", "task_state"], (((vm, task), n) for vm, task, n in instances)),
    ]


# -- per host, written directly (a line per host and family: most of a large cloud's scrape) ---

_HOST_GAUGES: list[tuple[str, str, Callable[[HostUsage], float]]] = [
    ("novalite_host_up", "1 when the host's heartbeat is recent and it is not forced down.", lambda h: int(h.up)),
    ("novalite_host_disabled", "1 when the host's compute service is disabled.", lambda h: int(h.disabled)),
    ("novalite_host_vcpus", "Physical vCPUs of the host.", lambda h: h.vcpus),
    ("novalite_host_vcpus_used", "vCPUs claimed by instances on the host.", lambda h: h.vcpus_used),
    ("novalite_host_memory_bytes", "Memory of the host.", lambda h: h.memory_mb * MIB),
    ("novalite_host_memory_used_bytes", "Memory claimed by instances on the host.", lambda h: h.memory_mb_used * MIB),
    ("novalite_host_disk_bytes", "Local disk of the host.", lambda h: h.local_gb * GIB),
    ("novalite_host_disk_used_bytes", "Local disk claimed by instances on the host.", lambda h: h.disk_gb_used * GIB),
    ("novalite_host_instances", "Instances claimed on the host.", lambda h: h.num_instances),
]
_HOST_BUILDS = ("novalite_host_builds", "Builds queued or running on each host.")


def _label(value: str) -> str:
    """A label value as the text format escapes it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help(doc: str) -> str:
    return doc.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _family(name: str, doc: str, rows: Iterable[tuple[str, float]]) -> list[str]:
    return [f"# HELP {name} {_help(doc)}", f"# TYPE {name} gauge",
            *(f'{name}{{host="{host}"}} {_number(value)}' for host, value in rows)]


def _host_text(names: list[str], values: list[tuple[float, ...]], builds: dict[str, int]) -> str:
    """The per-host gauges (``values``: each host's, in _HOST_GAUGES order) and builds in flight."""
    labels = [_label(n) for n in names]
    lines = _family(*_HOST_BUILDS, ((_label(host), n) for host, n in builds.items()))
    for i, (name, doc, _) in enumerate(_HOST_GAUGES):
        lines += _family(name, doc, ((label, row[i]) for label, row in zip(labels, values, strict=True)))
    return "\n".join(lines) + "\n"
