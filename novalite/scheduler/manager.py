"""The scheduler: filters, weighers, a random pick among the best, and an atomic claim.

It serves requests from an asyncio queue (request/reply, as nova-scheduler
serves RPC calls). Host states come from one query per request; the claim is
a statement that locks the host row and re-checks capacity against the
allocations committed so far, so concurrent schedules never oversubscribe.
Concurrent schedulings' claims on different hosts go in one statement (db.batch).

Every scheduling keeps its verdicts (each filter's verdict on each host, the
weights of the hosts that passed) and stores them in one row of
``scheduling_verdicts``: the explanation behind "No valid host was found",
and what an admin reads at GET /servers/{id}/os-scheduling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import numpy as np
import structlog

from novalite import metrics
from novalite.config import SchedulerConfig
from novalite.db import instances as db
from novalite.db.batch import BatchWriter
from novalite.scheduler.filters import BaseFilter, build_filters, requested_resources
from novalite.scheduler.host_state import HostList, HostState, load_host_states
from novalite.scheduler.weighers import build_weighers, weigh

log = structlog.get_logger(__name__)

# Nova's instance_faults.message is 255 characters; the rest goes to the fault details.
FAULT_MESSAGE_MAX = 255
# Rows kept per kind in a stored table: a lab has a handful of hosts, a big cloud need not store 10,000.
TABLE_MAX_REJECTED = 500
TABLE_MAX_WEIGHED = 20  # heaviest hosts listed with their weight (a row each)
CLAIM_BATCH = 50  # claims in one statement at most


@dataclass
class Verdicts:
    """Why each host was kept or removed, and how the survivors weighed."""

    num_hosts: int = 0
    filters: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # host, filter, reason
    weights: list[tuple[str, float, dict[str, float]]] = field(default_factory=list)  # heaviest first
    num_passed: int = 0
    chosen: str | None = None
    alternates: list[str] = field(default_factory=list)

    def _parts(self, samples: bool) -> list[str]:
        by_filter: dict[str, Counter] = {}
        for _, flt, reason in self.rejected:
            by_filter.setdefault(flt, Counter())[reason] += 1
        parts = []
        for flt, reasons in by_filter.items():
            n = sum(reasons.values())
            if samples:
                top = reasons.most_common(1)[0][0]
                parts.append(f"{flt} removed {n} ({top}{', ...' if len(reasons) > 1 else ''})")
            else:
                parts.append(f"{flt} removed {n}")
        return parts

    def explain(self, max_len: int | None = None) -> str:
        """'3 hosts; AvailabilityZoneFilter removed 1 (...); RamFilter removed 2 (...)', shortened to max_len."""
        if not self.num_hosts:
            return "There are no compute hosts."
        head = f"{self.num_hosts} host{'s' * (self.num_hosts != 1)}"
        full = "; ".join([head, *self._parts(True)])
        if max_len is None or len(full) <= max_len:
            return full
        # Keep the reason of the filter that removed the last hosts; count the others.
        short_parts = self._parts(False)
        if short_parts:
            short_parts[-1] = self._parts(True)[-1]
        text = "; ".join([head, *short_parts])
        if len(text) <= max_len:
            return text
        return "; ".join([head, *self._parts(False)])[:max_len]

    def table(self) -> list[dict]:
        """One row per host: rejected (by which filter, why) or passed (weight, shares per weigher)."""
        rows: list[dict] = [
            {"host": h, "result": "rejected", "filter": f, "reason": r}
            for h, f, r in self.rejected[:TABLE_MAX_REJECTED]
        ]
        if len(self.rejected) > TABLE_MAX_REJECTED:
            rows.append({"host": "...", "result": "rejected", "filter": "",
                         "reason": f"{len(self.rejected) - TABLE_MAX_REJECTED} more rejections not listed"})
        detailed = {self.chosen, *(self.alternates or [])}
        for host, total, shares in self.weights:
            row = {"host": host, "result": "chosen" if host == self.chosen else "passed", "weight": round(total, 4)}
            if shares and (host in detailed or self.chosen is None):
                # per-weigher shares for the chosen host and its alternates (what explains the pick)
                row["weighers"] = {k: round(v, 4) for k, v in shares.items()}
            rows.append(row)
        if self.num_passed > len(self.weights):
            rows.append({"host": "...", "result": "passed",
                         "reason": f"{self.num_passed - len(self.weights)} lighter hosts not listed"})
        return rows

    def emptied_by(self) -> str:
        """The filter that removed the last hosts (``claim``: every claim lost a race), as metrics name it."""
        return self.rejected[-1][1] if self.rejected else "no_hosts"

    def summary(self) -> str:
        if self.chosen:
            return f"Scheduled to {self.chosen} (alternates: {', '.join(self.alternates) or 'none'}). {self.explain()}"
        return f"No valid host was found. {self.explain()}"

    def to_dict(self) -> dict:
        return {
            "summary": self.summary(),
            "hosts": self.num_hosts,
            "passed": self.num_passed,
            "filters": self.filters,
            "chosen": self.chosen,
            "alternates": self.alternates,
            "table": self.table(),
        }


@dataclass
class Selection:
    """Where one instance goes, and where it may go next if the build fails there."""

    host: str
    nodename: str
    alternates: list[str] = field(default_factory=list)
    verdicts: Verdicts | None = None


class NoValidHost(Exception):
    """No host is left for an instance; the message says which filters removed which hosts."""

    def __init__(self, verdicts: Verdicts) -> None:
        self.verdicts = verdicts
        prefix = "No valid host was found. "
        super().__init__(prefix + verdicts.explain(FAULT_MESSAGE_MAX - len(prefix)))

    def details(self, instance_uuid: str) -> str:
        """The fault details (admins): the full explanation and where the per-host table is."""
        return (
            f"No valid host was found. {self.verdicts.explain()}\n"
            f"Per-host verdicts: GET /compute/v2.1/servers/{instance_uuid}/os-scheduling (admin), or the "
            "'conductor_schedule_and_build_instances' event of the create action "
            "(openstack --os-compute-api-version 2.84 server event show <server> <request-id>)."
        )


# Claims, one per host (a batch never holds two of one host's), in one statement: the hosts' rows
# locked in host order (as a move's claim and the heartbeats lock theirs), each checked against
# the usage counters, the instances placed, the allocations recorded.
_CLAIMS = f"""WITH r AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS r(
                     i integer, host text, uuid uuid, vcpus integer, memory_mb integer, disk_gb integer,
                     vcpu_limit float8, ram_limit float8, disk_limit float8, vm_state text, task_state text)),
        locked AS MATERIALIZED (SELECT host FROM compute_nodes WHERE {db.among("r", "host", "host")}
                                ORDER BY host FOR UPDATE),
        node AS (UPDATE compute_nodes n SET updated_at = now() FROM r, locked
                 WHERE n.host = locked.host AND r.host = locked.host AND n.vcpus_used + r.vcpus <= r.vcpu_limit
                   AND n.memory_mb_used + r.memory_mb <= r.ram_limit AND n.disk_gb_used + r.disk_gb <= r.disk_limit
                 RETURNING r.i, n.host, n.hypervisor_hostname, n.availability_zone),
        inst AS (UPDATE instances i SET host = node.host, node = node.hypervisor_hostname,
                        availability_zone = node.availability_zone, launched_on = node.host, updated_at = now()
                 FROM node JOIN r ON r.i = node.i
                 WHERE i.uuid = r.uuid AND {db.among("r")}
                   AND {db.by_uuid("NOT i.deleted AND i.vm_state = r.vm_state AND i.task_state = r.task_state")}
                 RETURNING node.i)
   INSERT INTO allocations (instance_uuid, host, vcpus, memory_mb, disk_gb, created_at)
   SELECT r.uuid, r.host, r.vcpus, r.memory_mb, r.disk_gb, clock_timestamp() FROM inst JOIN r ON r.i = inst.i
   ON CONFLICT (instance_uuid) DO UPDATE SET host = EXCLUDED.host, vcpus = EXCLUDED.vcpus,
       memory_mb = EXCLUDED.memory_mb, disk_gb = EXCLUDED.disk_gb, created_at = EXCLUDED.created_at
   RETURNING instance_uuid::text"""


@dataclass(frozen=True, slots=True)
class Claim:
    """One instance's claim on a host: what it takes and the (vm_state, task_state) it must still be in."""

    host: HostState
    instance_uuid: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    from_state: tuple[str, str] = ("building", "scheduling")


async def claim_many(conn: asyncpg.Connection, claims: list[Claim]) -> list[bool]:
    """Claims on different hosts in ONE statement; per claim whether it was made (False when
    the resources no longer fit or the instance left the state it was claimed from).

    Each host's row UPDATE checks the usage counters (kept from allocations by a trigger) and
    locks the row until commit; a concurrent claim on the host waits and re-checks the
    committed counts, so no host is ever oversubscribed. An allocation's created_at is the
    clock time after that lock, so claims on one host are ordered as they happened (the late
    group policy check relies on that order). The instance takes the host's availability zone,
    as Nova's conductor sets it from the selected host."""
    rows = []
    for i, c in enumerate(claims):
        vcpu_limit, ram_limit, disk_limit = c.host.limits()
        rows.append({
            "i": i, "host": c.host.host, "uuid": c.instance_uuid, "vcpus": c.vcpus, "memory_mb": c.memory_mb,
            "disk_gb": c.disk_gb, "vcpu_limit": vcpu_limit, "ram_limit": ram_limit, "disk_limit": disk_limit,
            "vm_state": c.from_state[0], "task_state": c.from_state[1],
        })
    made = {r["instance_uuid"] for r in await conn.fetch(_CLAIMS, rows)}
    return [str(uuidlib.UUID(c.instance_uuid)) in made for c in claims]  # as Postgres writes a uuid


async def claim(
    conn: asyncpg.Connection, host: HostState, instance_uuid: str, vcpus: int, memory_mb: int, disk_gb: int,
    from_state: tuple[str, str] = ("building", "scheduling"),
) -> bool:
    """Claim resources on a host for a still-scheduling instance (:func:`claim_many` of one);
    False when they no longer fit (or the instance left scheduling).

    ``from_state`` is the (vm_state, task_state) the instance must still be in: a build's
    (building, scheduling) by default, an unshelve's (shelved_offloaded, unshelving)."""
    return (await claim_many(conn, [Claim(host, instance_uuid, vcpus, memory_mb, disk_gb, from_state)]))[0]


async def claim_move(
    conn: asyncpg.Connection, host: HostState, instance_uuid: str, migration: dict, vcpus: int, memory_mb: int,
    disk_gb: int,
) -> bool:
    """Claim a resize's destination: the new flavor on ``host`` for the instance, while its source claim
    becomes the migration's (Nova moves it to the migration as consumer), in one transaction.

    The host row is checked and locked as in :func:`claim` (a same-host resize counts both flavors,
    as Nova does until the confirm); False when it no longer fits or the move has left its task
    state or its migration its status (``migration["task_state"]``/``["status"]``: a live
    migration's ``migrating``/``accepted``; a resize's ``resize_prep``/``pre-migrating`` by default).
    """
    vcpu_limit, ram_limit, disk_limit = host.limits()
    async with conn.transaction():
        # Both hosts' rows are locked in one order first: two moves crossing between the same hosts
        # (A: p1 → p2, B: p2 → p1) would otherwise each hold one row and wait for the other's.
        await conn.execute("SELECT 1 FROM compute_nodes WHERE host = ANY($1::text[]) ORDER BY host FOR UPDATE",
                           [host.host, migration["source_compute"]])
        node = await conn.fetchval(
            """UPDATE compute_nodes SET updated_at = now()
               WHERE host = $1 AND vcpus_used + $2 <= $5::float8 AND memory_mb_used + $3 <= $6::float8
                 AND disk_gb_used + $4 <= $7::float8
               RETURNING hypervisor_hostname""",
            host.host, vcpus, memory_mb, disk_gb, vcpu_limit, ram_limit, disk_limit,
        )
        moving = await conn.fetchval(
            """SELECT 1 FROM instances i JOIN migrations m ON m.instance_uuid = i.uuid
               WHERE i.uuid = $1::uuid AND NOT i.deleted AND i.task_state = $3
                 AND m.id = $2 AND m.status = $4""",
            instance_uuid, migration["id"], migration.get("task_state", "resize_prep"),
            migration.get("status", "pre-migrating"),
        )
        if node is None or not moving:
            return False
        await conn.execute(
            "UPDATE allocations SET instance_uuid = $2::uuid WHERE instance_uuid = $1::uuid AND host = $3",
            instance_uuid, migration["uuid"], migration["source_compute"],
        )
        await conn.execute(
            """INSERT INTO allocations (instance_uuid, host, vcpus, memory_mb, disk_gb, created_at)
               VALUES ($1::uuid, $2, $3, $4, $5, clock_timestamp())""",
            instance_uuid, host.host, vcpus, memory_mb, disk_gb,
        )
        await conn.execute(
            "UPDATE migrations SET dest_compute = $2, dest_node = $3, dest_host = $2, updated_at = now() WHERE id = $1",
            migration["id"], host.host, node,
        )
    return True


async def resolve_request(conn: asyncpg.Connection, spec: dict, uuids: list[str]) -> dict:
    """A per-request copy of the spec with the group's member hosts and the hinted instances' hosts."""
    spec = dict(spec)
    spec["group"] = None
    group_uuid = spec.get("instance_group")
    if group_uuid:
        row = await conn.fetchrow("SELECT uuid, policy, rules FROM instance_groups WHERE uuid = $1::uuid", group_uuid)
        if row is not None:
            counts = await conn.fetch(
                """SELECT i.host, count(*)::int AS n FROM instance_group_members m
                   JOIN instances i ON i.uuid = m.instance_uuid
                   WHERE m.group_uuid = $1 AND NOT i.deleted AND i.host IS NOT NULL
                     AND i.uuid <> ALL($2::uuid[])
                   GROUP BY i.host""",
                row["uuid"],
                uuids,
            )
            spec["group"] = {
                "uuid": str(row["uuid"]),
                "policy": row["policy"],
                "rules": row["rules"] or {},
                "hosts": {r["host"]: r["n"] for r in counts},
            }
    hints = spec.get("scheduler_hints") or {}
    wanted = []
    for key in ("same_host", "different_host"):
        value = hints.get(key) or []
        wanted += [value] if isinstance(value, str) else list(value)
    valid = []
    for u in wanted:
        try:
            valid.append(str(uuidlib.UUID(str(u))))
        except ValueError:
            continue
    if wanted:
        rows = await conn.fetch(
            "SELECT uuid::text AS uuid, host FROM instances WHERE uuid = ANY($1::uuid[]) AND NOT deleted", valid
        )
        spec["hint_hosts"] = {r["uuid"]: r["host"] for r in rows}
    return spec


def heaviest(totals: np.ndarray, k: int) -> list[int]:
    """Indexes of the k largest totals, largest first, ties in index order (what
    ``sorted(range(n), key=totals.__getitem__, reverse=True)[:k]`` gives): the k-th largest
    found by a partition, then only the few at or above it ordered (a stable sort)."""
    n = len(totals)
    if 0 < k < n:
        cut = np.partition(totals, n - k)[n - k]
        candidates = np.flatnonzero(totals >= cut)
    else:
        candidates = np.arange(n)
    return candidates[np.argsort(-totals[candidates], kind="stable")][:k].tolist()


class Scheduler:
    """select_destinations over a request/reply queue."""

    def __init__(self, pool: asyncpg.Pool, cfg: SchedulerConfig) -> None:
        self.pool = pool
        self.cfg = cfg
        self.filters: list[BaseFilter] = build_filters(cfg.filters, cfg.image_properties_default_architecture)
        self.weighers = build_weighers(cfg.weighers)
        self.queue: asyncio.Queue = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._hosts: list[HostState] | None = None
        self._hosts_loaded = 0.0
        self._group_locks: dict[str, asyncio.Lock] = {}
        # The claims of concurrent schedulings, one per host in each statement (db.batch): a storm's
        # thousand claims were a thousand round trips and commits on the workers' few connections.
        self._claims = BatchWriter(pool, claim_many, CLAIM_BATCH, "claims", key=lambda c: c.host.host)

    async def host_states(self, conn: asyncpg.Connection) -> list[HostState]:
        """Host states from Postgres, reused for `host_state_ttl` seconds. Claims made here
        are applied to them at once (consume), so only other changes (deletes, a disabled
        service) wait for the refresh; the claim itself always re-checks in Postgres."""
        now = time.monotonic()
        if self._hosts is None or now - self._hosts_loaded > self.cfg.host_state_ttl:
            self._hosts = await load_host_states(conn, self.cfg)
            self._hosts_loaded = now
        return self._hosts

    def queue_depth(self) -> int:
        """Scheduling requests queued or being answered (read at scrape)."""
        return self.queue.qsize() + len(self._tasks)

    def cached_host_states(self) -> list[HostState] | None:
        """The host states in memory, as the last request left them (None when none are loaded)."""
        return self._hosts

    def invalidate_host_states(self) -> None:
        self._hosts = None

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
    ) -> tuple[list[Selection | NoValidHost], dict]:
        """Ask the scheduler (over its queue) for a claimed host per instance; also returns what the
        scheduling has to record (notifications, verdicts), which the conductor writes."""
        reply: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((spec, instance_uuids, request_id, reply))
        return await reply

    async def select_move(self, spec: dict, uuid: str, request_id: str, migration_id: int, event: str
                          ) -> Selection | Exception:
        """One destination for a moving instance (a resize, a live migration: ``spec["migration"]``,
        claimed by :func:`claim_move`), the scheduling recorded with the conductor's ``event``
        (finished when a host was found). Returns the Selection, or what stopped it (NoValidHost
        or the error)."""
        started_at = datetime.now(UTC)
        record: dict | None = None
        try:
            selections, record = await self.select_destinations(spec, [uuid], request_id)
            selection: Selection | Exception = selections[0]
        except Exception as exc:
            log.exception("select_destinations_failed")
            selection = exc
        if record is not None:
            async with self.pool.acquire() as conn:
                await db.record_schedule(
                    conn, [uuid], request_id, record, event=event, event_started_at=started_at,
                    scheduled=[(uuid, json.dumps({"host": selection.host, "migration_id": migration_id,
                                                  "verdicts": f"/servers/{uuid}/os-scheduling"}))]
                    if isinstance(selection, Selection) else [],
                )
        return selection

    async def _select(
        self, spec: dict, uuids: list[str], request_id: str
    ) -> tuple[list[Selection | NoValidHost], dict]:
        vcpus, ram, disk = requested_resources(spec)
        started = time.monotonic()
        started_at = datetime.now(UTC)
        group = spec.get("instance_group")
        # Requests of one server group are scheduled one at a time: each sees the others' claims
        # as members, so concurrent creates cannot split an affinity group (or crowd an anti-affinity one).
        group_lock = self._group_locks.setdefault(group, asyncio.Lock()) if group else contextlib.nullcontext()
        async with group_lock:
            # No connection is held while the claims wait for their writer (it needs one of the same pool).
            async with self.pool.acquire() as conn:
                hosts = await self.host_states(conn)
                spec = await resolve_request(conn, spec, uuids)
            results: list[Selection | NoValidHost] = []
            for uuid in uuids:
                result = await self._select_one(hosts, spec, uuid, vcpus, ram, disk)
                if isinstance(result, NoValidHost) and self._hosts_loaded < started:
                    # The cached view may be stale (e.g. servers deleted since): decide again on fresh states.
                    self.invalidate_host_states()
                    async with self.pool.acquire() as conn:
                        hosts = await self.host_states(conn)
                    result = await self._select_one(hosts, spec, uuid, vcpus, ram, disk)
                if isinstance(result, Selection) and spec["group"] is not None:
                    # Later instances of this request see this one as a member on its host.
                    group_hosts = spec["group"]["hosts"]
                    group_hosts[result.host] = group_hosts.get(result.host, 0) + 1
                metrics.scheduled(None if isinstance(result, Selection) else result.verdicts.emptied_by())
                results.append(result)
        # The conductor writes the record together with its own event, in one statement.
        return results, scheduling_record(uuids, results, spec, started_at)

    def filter_hosts(self, hosts: list[HostState], spec: dict) -> tuple[list[HostState], Verdicts]:
        """Run the configured filters in order; every removal is recorded with its reason. A move
        forced to its named host (``skip_filters``, Nova's ``force``) skips them: only the host
        restrictions apply, and the claim still decides."""
        verdicts = Verdicts(num_hosts=len(hosts), filters=[f.name for f in self.filters])
        rejected = verdicts.rejected
        remaining = hosts
        forced = set(spec.get("force_hosts") or [])
        if forced:
            remaining = [h for h in hosts if h.host in forced or h.nodename in forced]
            wanted = ",".join(sorted(forced))
            rejected += [(h.host, "force_hosts", f"not the requested host {wanted}")
                         for h in hosts if not (h.host in forced or h.nodename in forced)]
        ignored = set(spec.get("ignore_hosts") or [])  # a resize's source, unless same-host is allowed
        if ignored:
            rejected += [(h.host, "ignore_hosts", "the instance's current host") for h in remaining
                         if h.host in ignored]
            remaining = [h for h in remaining if h.host not in ignored]
        if isinstance(hosts, HostList) and remaining is not hosts:
            remaining = hosts.some(remaining)
        for flt in self.filters:
            if not remaining or spec.get("skip_filters"):  # a move forced to its named host (Nova's force)
                break
            survivors, removed = flt.filter_all(remaining, spec)
            if isinstance(remaining, HostList) and not isinstance(survivors, HostList):
                survivors = remaining.some(survivors)  # the load's columns follow a filter's own list
            remaining = survivors
            name = flt.name
            rejected += [(h.host, name, reason) for h, reason in removed]
        verdicts.num_passed = len(remaining)
        return remaining, verdicts

    def rank(self, passed: list[HostState], spec: dict, verdicts: Verdicts, k: int | None = None) -> list[HostState]:
        """The k heaviest hosts, heaviest first (ties keep host order, as Nova's stable sort does):
        by default enough for the random pick, the alternates and the table, not a sort of 10,000."""
        totals, shares = weigh(self.weighers, self.cfg, passed, spec)
        if k is None:
            k = max(TABLE_MAX_WEIGHED, self.cfg.host_subset_size + self.cfg.max_attempts)
        order = heaviest(totals, k)
        verdicts.weights = [
            (passed[i].host, float(totals[i]), {name: float(share[i]) for name, share in shares.items()})
            for i in order[:TABLE_MAX_WEIGHED]
        ]
        return [passed[i] for i in order]

    def choose(self, hosts: list[HostState], spec: dict) -> tuple[list[HostState], list[HostState], Verdicts]:
        """One scheduling decision without the claim: filter, weigh, rank (what the benchmark times).
        Returns (hosts that passed, the heaviest of them in order, verdicts)."""
        passed, verdicts = self.filter_hosts(hosts, spec)
        return passed, (self.rank(passed, spec, verdicts) if passed else []), verdicts

    async def _select_one(
        self, hosts: list[HostState], spec: dict, uuid: str, vcpus: int, ram: int, disk: int
    ) -> Selection | NoValidHost:
        passed, candidates, verdicts = self.choose(hosts, spec)
        failed: set[int] = set()
        while candidates or len(failed) < len(passed):
            if not candidates:
                # Every top host's claim failed under concurrency: rank the rest, in full.
                shown = verdicts.weights
                candidates = [h for h in self.rank(passed, spec, verdicts, len(passed)) if id(h) not in failed]
                verdicts.weights = shown
                if not candidates:
                    break
            subset = candidates[: self.cfg.host_subset_size]
            chosen = random.choice(subset)
            # Count the claim in the shared host states before the round trip, so concurrent
            # requests decide around it instead of queueing on the same host row.
            chosen.consume(vcpus, ram, disk, uuid)
            try:
                migration = spec.get("migration")  # a resize: the destination claim, the source held
                if migration is not None:
                    async with self.pool.acquire() as conn:
                        claimed = await claim_move(conn, chosen, uuid, migration, vcpus, ram, disk)
                else:
                    # A spec may name the state the instance is scheduled from (an unshelve's).
                    claimed = await self._claims.submit(Claim(
                        chosen, uuid, vcpus, ram, disk, tuple(spec.get("claim_from") or ("building", "scheduling"))))
            except BaseException:
                chosen.unconsume(vcpus, ram, disk, uuid)
                raise
            if claimed:
                alternates = [h.host for h in candidates if h is not chosen][: self.cfg.max_attempts - 1]
                verdicts.chosen, verdicts.alternates = chosen.host, alternates
                log.info("scheduled", instance_uuid=uuid, host=chosen.host, alternates=alternates)
                return Selection(host=chosen.host, nodename=chosen.nodename, alternates=alternates, verdicts=verdicts)
            chosen.unconsume(vcpus, ram, disk, uuid)
            candidates.remove(chosen)
            failed.add(id(chosen))
            self.invalidate_host_states()  # our view of that host was stale
            verdicts.rejected.append((chosen.host, "claim", "resources taken by a concurrent request"))
        log.info("no_valid_host", instance_uuid=uuid, why=verdicts.explain())
        return NoValidHost(verdicts)


def scheduling_record(
    uuids: list[str], results: list[Selection | NoValidHost], spec: dict, started_at: datetime
) -> dict:
    """What a scheduling leaves behind: its start/end notifications and one verdict row per
    instance (the summary and the per-host table)."""
    return {
        "started_at": started_at,
        "start_payload": {"request_spec": {"num_instances": len(uuids), "flavor": spec["flavor"]["name"]}},
        "end_payload": {"selected": [r.host if isinstance(r, Selection) else None for r in results]},
        "verdicts": [
            {"instance_uuid": u, "host": r.verdicts.chosen, "summary": r.verdicts.summary(),
             "verdicts": r.verdicts.to_dict()}
            for u, r in zip(uuids, results, strict=True)
            if r.verdicts is not None
        ],
    }
