"""The scheduler: filters, weighers, a random pick among the best, and an atomic claim.

It serves requests from an asyncio queue (request/reply, as nova-scheduler
serves RPC calls). Host states come from one query per request; the claim is
a transaction that locks the host row and re-checks capacity against the
allocations committed so far, so concurrent schedules never oversubscribe.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
import structlog

from novalite.config import SchedulerConfig
from novalite.db import instances as db
from novalite.scheduler.filters import BaseFilter, build_filters
from novalite.scheduler.host_state import HostState, load_host_states
from novalite.scheduler.weighers import build_weighers, weigh_hosts

log = structlog.get_logger(__name__)


@dataclass
class Selection:
    """Where one instance goes, and where it may go next if the build fails there."""

    host: str
    nodename: str
    alternates: list[str] = field(default_factory=list)


@dataclass
class Verdicts:
    """Why each host was kept or removed, for the user-facing explanation."""

    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # host, filter, reason
    weights: list[tuple[str, float]] = field(default_factory=list)
    num_hosts: int = 0

    def explain(self) -> str:
        if not self.num_hosts:
            return "There are no compute hosts."
        counts = Counter(f for _, f, _ in self.rejected)
        parts = []
        for flt, n in counts.items():
            reasons = sorted({r for _, f, r in self.rejected if f == flt})
            sample = "; ".join(reasons[:2]) + ("; ..." if len(reasons) > 2 else "")
            parts.append(f"{flt} removed {n} ({sample})")
        return f"{self.num_hosts} hosts; " + "; ".join(parts)

    def table(self) -> list[dict]:
        rows = [{"host": h, "filter": f, "result": "rejected", "reason": r} for h, f, r in self.rejected]
        rows += [{"host": h, "result": "passed", "weight": round(w, 4)} for h, w in self.weights]
        return rows


class NoValidHost(Exception):
    def __init__(self, verdicts: Verdicts) -> None:
        self.verdicts = verdicts
        super().__init__(f"No valid host was found. {verdicts.explain()}")


async def claim(
    conn: asyncpg.Connection, host: HostState, instance_uuid: str, vcpus: int, memory_mb: int, disk_gb: int
) -> bool:
    """Claim resources on a host for a still-scheduling instance; False when they no longer fit."""
    async with conn.transaction():
        node = await conn.fetchrow(
            "SELECT vcpus, memory_mb, local_gb, hypervisor_hostname FROM compute_nodes WHERE host = $1 FOR UPDATE",
            host.host,
        )
        if node is None:
            return False
        vcpu_limit = node["vcpus"] * host.cpu_allocation_ratio
        ram_limit = node["memory_mb"] * host.ram_allocation_ratio - host.reserved_host_memory_mb
        disk_limit = node["local_gb"] * host.disk_allocation_ratio - host.reserved_host_disk_mb / 1024
        ok = await conn.fetchval(
            """WITH used AS (SELECT coalesce(sum(vcpus), 0) AS v, coalesce(sum(memory_mb), 0) AS m,
                                    coalesce(sum(disk_gb), 0) AS d FROM allocations WHERE host = $1),
                    inst AS (UPDATE instances SET host = $1, node = $6, launched_on = $1, updated_at = now()
                             WHERE uuid = $2 AND NOT deleted AND vm_state = 'building'
                               AND task_state = 'scheduling'
                               AND (SELECT v + $3 <= $7::float8 AND m + $4 <= $8::float8 AND d + $5 <= $9::float8
                                    FROM used)
                             RETURNING uuid)
               INSERT INTO allocations (instance_uuid, host, vcpus, memory_mb, disk_gb)
               SELECT uuid, $1, $3, $4, $5 FROM inst
               ON CONFLICT (instance_uuid) DO UPDATE SET host = EXCLUDED.host, vcpus = EXCLUDED.vcpus,
                   memory_mb = EXCLUDED.memory_mb, disk_gb = EXCLUDED.disk_gb
               RETURNING true""",
            host.host,
            instance_uuid,
            vcpus,
            memory_mb,
            disk_gb,
            node["hypervisor_hostname"],
            vcpu_limit,
            ram_limit,
            disk_limit,
        )
        return bool(ok)


class Scheduler:
    """select_destinations over a request/reply queue."""

    def __init__(self, pool: asyncpg.Pool, cfg: SchedulerConfig) -> None:
        self.pool = pool
        self.cfg = cfg
        self.filters: list[BaseFilter] = build_filters(cfg.filters)
        self.weighers = build_weighers(cfg.weighers)
        self.queue: asyncio.Queue = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.last_verdicts: dict[str, Verdicts] = {}

    def start(self) -> None:
        self._worker = asyncio.create_task(self._serve(), name="scheduler")

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
        for t in list(self._tasks):
            t.cancel()

    async def _serve(self) -> None:
        while True:
            spec, uuids, request_id, reply = await self.queue.get()
            task = asyncio.create_task(self._answer(spec, uuids, request_id, reply))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, spec: dict, uuids: list[str], request_id: str, reply: asyncio.Future) -> None:
        try:
            result = await self._select(spec, uuids, request_id)
        except Exception as exc:  # handed back to the caller, who decides
            if not reply.done():
                reply.set_exception(exc)
            return
        if not reply.done():
            reply.set_result(result)

    async def select_destinations(
        self, spec: dict, instance_uuids: list[str], request_id: str
    ) -> list[Selection | NoValidHost]:
        """Ask the scheduler (over its queue) for a claimed host per instance."""
        reply: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((spec, instance_uuids, request_id, reply))
        return await reply

    async def _select(self, spec: dict, uuids: list[str], request_id: str) -> list[Selection | NoValidHost]:
        flavor = spec["flavor"]
        vcpus, ram = flavor["vcpus"], flavor["memory_mb"]
        disk = flavor["root_gb"] + flavor["ephemeral_gb"] + (flavor["swap"] + 1023) // 1024
        async with self.pool.acquire() as conn:
            await db.notify(
                conn,
                "scheduler.select_destinations.start",
                {"request_spec": {"num_instances": len(uuids), "flavor": flavor["name"]}},
                publisher_id="nova-scheduler",
                instance_uuids=uuids,
                request_id=request_id,
            )
            hosts = await load_host_states(conn, self.cfg)
            results: list[Selection | NoValidHost] = []
            for uuid in uuids:
                results.append(await self._select_one(conn, hosts, spec, uuid, vcpus, ram, disk))
            await db.notify(
                conn,
                "scheduler.select_destinations.end",
                {"selected": [r.host if isinstance(r, Selection) else None for r in results]},
                publisher_id="nova-scheduler",
                instance_uuids=uuids,
                request_id=request_id,
            )
        return results

    def filter_hosts(self, hosts: list[HostState], spec: dict) -> tuple[list[HostState], Verdicts]:
        verdicts = Verdicts(num_hosts=len(hosts))
        forced = set(spec.get("force_hosts") or [])
        remaining = [h for h in hosts if not forced or h.host in forced or h.nodename in forced]
        for h in hosts:
            if h not in remaining:
                verdicts.rejected.append((h.host, "force_hosts", f"not the requested host {','.join(forced)}"))
        for flt in self.filters:
            kept = []
            for h in remaining:
                reason = flt.host_passes(h, spec)
                if reason is None:
                    kept.append(h)
                else:
                    verdicts.rejected.append((h.host, flt.name, reason))
            remaining = kept
        return remaining, verdicts

    async def _select_one(
        self, conn: asyncpg.Connection, hosts: list[HostState], spec: dict, uuid: str, vcpus: int, ram: int, disk: int
    ) -> Selection | NoValidHost:
        passed, verdicts = self.filter_hosts(hosts, spec)
        ranked = weigh_hosts(self.weighers, self.cfg, passed, spec)
        verdicts.weights = [(h.host, w) for h, w in ranked]
        self.last_verdicts[uuid] = verdicts
        candidates = [h for h, _ in ranked]
        while candidates:
            subset = candidates[: self.cfg.host_subset_size]
            chosen = random.choice(subset)
            if await claim(conn, chosen, uuid, vcpus, ram, disk):
                chosen.consume(vcpus, ram, disk, uuid)
                alternates = [h.host for h in candidates if h is not chosen][: self.cfg.max_attempts - 1]
                log.info("scheduled", instance_uuid=uuid, host=chosen.host, alternates=alternates)
                return Selection(host=chosen.host, nodename=chosen.nodename, alternates=alternates)
            candidates.remove(chosen)
            verdicts.rejected.append((chosen.host, "claim", "resources taken by a concurrent request"))
        return NoValidHost(verdicts)
