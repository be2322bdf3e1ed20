"""The conductor: takes build requests off its queue, asks the scheduler for
claimed hosts, and casts each instance to its host's compute queue, keeping
the alternates for a reschedule. No host → ERROR with a fault that says why.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import structlog

from novalite import metrics
from novalite.compute import states
from novalite.compute.api import BuildRequest
from novalite.compute.evacuate import CONDUCTOR_EVENT as EVACUATE_EVENT
from novalite.compute.evacuate import evacuate_request_spec
from novalite.compute.failures import Failure, Notification, fail_instance
from novalite.compute.rebuild import REBUILDING
from novalite.compute.resize import CONDUCTOR_EVENT, RESIZE_PREP, resize_request_spec
from novalite.config import SchedulerConfig
from novalite.db import instances as db
from novalite.db import migration_records
from novalite.db.batch import BatchWriter
from novalite.foreground import Foreground
from novalite.network import NetworkAPI
from novalite.scheduler.filters import requested_resources
from novalite.scheduler.manager import NoValidHost, Scheduler, Selection, claim

log = structlog.get_logger(__name__)

EVENT = "conductor_schedule_and_build_instances"


# Cast a build to a host's compute manager: (host, uuid, request_id, alternates, attempts,
# admin_password — in memory only, for the config drive).
CastBuild = Callable[[str, str, str, list[str], list[tuple[str, str]], str | None], None]
# Cast one resize stage to a host's compute manager: (host, stage, uuid, request_id, migration id).
CastResize = Callable[[str, str, str, str, int], None]
# Cast an unshelve to a host's compute manager: (host, uuid, request_id).
CastUnshelve = Callable[[str, str, str], None]
# Cast an evacuation's rebuild to its destination: (host, uuid, request_id, migration id, admin_password).
CastEvacuate = Callable[[str, str, str, int, str | None], None]
UNSHELVE_EVENT = "schedule_instances"  # Nova's conductor EventReporter for an unshelve


async def set_error(
    pool: asyncpg.Pool, uuid: str, request_id: str, message: str, details: str = "", *, event: str, host: str | None = None,
    event_details: str | None = None,
) -> None:
    """Move a building instance to ERROR with a fault, unless it is being deleted."""
    failure = Failure(message, details, host, event_details=event_details, traceback=message)
    notification = Notification("instance.create.error", {"fault": {"message": message}},
                                f"nova-compute:{host}" if host else "nova-conductor")
    async with pool.acquire() as conn, conn.transaction():
        if not await fail_instance(
            conn, uuid, request_id, failure,
            expect={"expect_vm_state": states.BUILDING, "expect_task_state": db.Not(states.DELETING)},
            release_claim=True, events=[event], notification=notification,
        ):
            log.info("error_skipped_instance_moved_on", instance_uuid=uuid)
            metrics.boot_finished("deleted")  # the delete that moved it on ends the boot
            return
    metrics.boot_finished("error")


class Conductor:
    """Schedules and casts builds; reschedules failed builds to alternates."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        scheduler: Scheduler,
        cfg: SchedulerConfig,
        *,
        cast_build: CastBuild,
        network_api: NetworkAPI | None = None,
        foreground: Foreground | None = None,
        cast_resize: CastResize | None = None,
        cast_unshelve: CastUnshelve | None = None,
        cast_evacuate: CastEvacuate | None = None,
    ) -> None:
        """``cast_build`` hands a claimed instance to its host's compute manager (the conductor
        never holds the managers); ``foreground`` is the API's, so scheduling yields to requests."""
        self.pool = pool
        self.scheduler = scheduler
        self.cfg = cfg
        self.cast_build = cast_build
        self.cast_resize = cast_resize
        self.cast_unshelve = cast_unshelve
        self.cast_evacuate = cast_evacuate
        self.network_api = network_api
        self.foreground = foreground or Foreground(0)
        self.queue: asyncio.Queue[BuildRequest] = asyncio.Queue()
        # The records of concurrent schedulings go to Postgres together (a round trip each was a
        # fifth of a boot's statements in a storm).
        self._records = BatchWriter(pool, db.record_schedules, 20, "schedule_records")
        self._worker: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        self._worker = asyncio.create_task(self._serve(), name="conductor")

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
        for t in list(self._tasks):
            t.cancel()

    def pending(self) -> int:
        """Build requests queued or being scheduled (what a clean shutdown waits for)."""
        return self.queue.qsize() + len(self._tasks)

    def build_instances(self, request: BuildRequest) -> None:
        """Cast: queue the request and return at once."""
        self.queue.put_nowait(request)

    def spawn_task(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self) -> None:
        while True:
            request = await self.queue.get()
            await self.foreground.background_turn()
            self.spawn_task(self.schedule_and_build_instances(request))

    async def schedule_and_build_instances(self, request: BuildRequest) -> None:
        uuids = request.instance_uuids
        structlog.contextvars.bind_contextvars(request_id=request.request_id)
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        record: dict | None = None
        try:
            selections, record = await self.scheduler.select_destinations(
                request.request_spec, uuids, request.request_id
            )
        except Exception as exc:  # scheduler crashed: every instance gets a fault
            log.exception("select_destinations_failed")
            selections = [exc] * len(uuids)
        took = time.perf_counter() - started
        for _ in uuids:
            metrics.step_took("scheduling", took)
        scheduled = [(u, sel) for u, sel in zip(uuids, selections, strict=True) if isinstance(sel, Selection)]
        if record is not None:
            await self._records.submit(db.ScheduleRecord(
                uuids, request.request_id, record, EVENT, started_at,
                # the per-host table is stored once, in scheduling_verdicts
                [(u, json.dumps({"host": sel.host, "alternates": sel.alternates,
                                 "verdicts": f"/servers/{u}/os-scheduling"})) for u, sel in scheduled],
            ))
        for u, sel in scheduled:
            self.cast_build(sel.host, u, request.request_id, sel.alternates, [], request.admin_password)
        for uuid, sel in zip(uuids, selections, strict=True):
            if isinstance(sel, Selection):
                continue
            elif isinstance(sel, NoValidHost):
                await set_error(
                    self.pool, uuid, request.request_id, str(sel), sel.details(uuid), event=EVENT,
                    event_details=json.dumps(sel.verdicts.table()),
                )
            else:
                await set_error(self.pool, uuid, request.request_id, f"Scheduling failed: {sel}", event=EVENT)

    # -- unshelve -------------------------------------------------------------
    def unshelve_instance(self, uuid: str, request_id: str) -> None:
        """Cast: carry out an unshelve the compute API accepted (the instance is in ``unshelving``)."""
        self.spawn_task(self.unshelve(uuid, request_id))

    async def unshelve(self, uuid: str, request_id: str) -> None:
        """Nova's conductor unshelve_instance: a SHELVED server is powered on where it is; a
        SHELVED_OFFLOADED one is scheduled anew (its flavor, the spec's zone, the requested host)
        and cast to the chosen host. No host: it stays SHELVED_OFFLOADED, the event says why."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id)
        async with self.pool.acquire() as conn:
            inst = await db.get(conn, uuid)
        if inst is None or inst["task_state"] != "unshelving" or self.cast_unshelve is None:
            return
        if inst["vm_state"] == states.SHELVED:
            async with self.pool.acquire() as conn:
                try:
                    await db.compare_and_set(conn, uuid, expect_task_state="unshelving", task_state="powering-on")
                except db.StateConflict:
                    return
            self.cast_unshelve(inst["host"], uuid, request_id)
            return
        if not await self._unshelve_image_exists(inst, request_id):
            return
        spec, why_not = await self._unshelve_spec(inst)
        started_at = datetime.now(UTC)
        selection: Selection | Exception
        record = None
        if why_not:
            selection = RuntimeError(why_not)
        else:
            try:
                selections, record = await self.scheduler.select_destinations(spec, [uuid], request_id)
                selection = selections[0]
            except Exception as exc:
                log.exception("select_destinations_failed")
                selection = exc
        async with self.pool.acquire() as conn, conn.transaction():
            if record is not None:
                scheduled = [(uuid, json.dumps({"host": selection.host, "verdicts": f"/servers/{uuid}/os-scheduling"}))
                             ] if isinstance(selection, Selection) else []
                await db.record_schedule(conn, [uuid], request_id, record, event=UNSHELVE_EVENT,
                                         event_started_at=started_at, scheduled=scheduled)
            if isinstance(selection, Selection):
                az = await conn.fetchval("SELECT availability_zone FROM compute_nodes WHERE host = $1", selection.host)
                try:  # Nova: the instance takes the zone of the host it lands on
                    await db.compare_and_set(conn, uuid, expect_task_state="unshelving", availability_zone=az)
                except db.StateConflict:
                    return  # deleted meanwhile: the delete frees the claim
            else:
                details = (json.dumps(selection.verdicts.table()) if isinstance(selection, NoValidHost)
                           else str(selection))
                try:
                    await db.compare_and_set(conn, uuid, expect_task_state="unshelving", task_state=None)
                except db.StateConflict:
                    return
                await db.event_finish(conn, uuid, request_id, UNSHELVE_EVENT, "Error", traceback=str(selection),
                                      details=details)
                await db.finish_action(conn, uuid, request_id)
        if isinstance(selection, Selection):
            log.info("unshelve_scheduled", host=selection.host)
            self.cast_unshelve(selection.host, uuid, request_id)
        else:
            log.warning("unshelve_no_valid_host", reason=str(selection))

    async def _unshelve_image_exists(self, inst: asyncpg.Record, request_id: str) -> bool:
        """Nova: an offloaded server whose shelved image is gone goes to ERROR with a fault."""
        uuid = str(inst["uuid"])
        image_id = (inst["system_metadata"] or {}).get("shelved_image_id")
        if not image_id:
            return True  # volume-backed: nothing to look up
        async with self.pool.acquire() as conn:
            await db.event_start(conn, uuid, request_id, "get_image_info", None)
            image = await conn.fetchrow("SELECT status FROM images WHERE id::text = $1", str(image_id))
            if image is not None and image["status"] == "active":
                await db.event_finish(conn, uuid, request_id, "get_image_info")
                return True
        message = f"Unshelve attempted but the image {image_id} cannot be found."
        async with self.pool.acquire() as conn, conn.transaction():
            await fail_instance(conn, uuid, request_id, Failure(message, message, traceback=message),
                                expect={"expect_task_state": "unshelving"}, events=["get_image_info"])
        log.warning("unshelve_image_missing", image_id=image_id)
        return False

    async def _unshelve_spec(self, inst: asyncpg.Record) -> tuple[dict, str | None]:
        """The spec of one unshelve: its flavor, no forced host but the requested one, its claim from
        (shelved_offloaded, unshelving). A server's volumes live in one host's pool: it goes there."""
        spec = dict(inst["request_spec"] or {})
        wanted = (spec.get("requested_destination") or {}).get("host")
        spec.update(flavor=inst["flavor"], num_instances=1, retry={"num_attempts": 0, "hosts": []},
                    claim_from=["shelved_offloaded", "unshelving"], force_hosts=[wanted] if wanted else [])
        async with self.pool.acquire() as conn:
            vol_hosts = {r["host"] for r in await conn.fetch(
                "SELECT DISTINCT host FROM volumes WHERE instance_uuid = $1 AND NOT deleted AND host IS NOT NULL",
                inst["uuid"])}
        if vol_hosts:
            if len(vol_hosts) > 1 or (wanted and wanted not in vol_hosts):
                return spec, (f"The volumes of instance {inst['uuid']} live on {', '.join(sorted(vol_hosts))}: "
                              "it can be unshelved only there")
            spec["force_hosts"] = sorted(vol_hosts)
        return spec, None

    async def reschedule(
        self, uuid: str, request_id: str, alternates: list[str], attempts: list[tuple[str, str]],
        admin_password: str | None = None,
    ) -> None:
        """A build failed on a host: claim the next alternate and cast (with the build's admin
        password), else ERROR listing every attempt."""
        tried = {h for h, _ in attempts}
        self.scheduler.invalidate_host_states()  # a failed build released its claim and counts on its host
        async with self.pool.acquire() as conn:
            inst = await db.get(conn, uuid)
            if inst is None or inst["task_state"] != states.SCHEDULING:
                return
            flavor = inst["flavor"]
            vcpus, memory_mb, disk = requested_resources({"flavor": flavor})
            hosts = {h.host: h for h in await self.scheduler.host_states(conn)}
            remaining = [h for h in alternates if h not in tried]
            while remaining and len(attempts) < self.cfg.max_attempts:
                host = remaining.pop(0)
                state = hosts.get(host)
                if state is None:
                    continue
                await db.event_start(conn, uuid, request_id, EVENT, None)
                if await claim(conn, state, uuid, vcpus, memory_mb, disk):
                    state.consume(vcpus, memory_mb, disk, uuid)
                    await db.event_finish(
                        conn, uuid, request_id, EVENT, "Success",
                        details=json.dumps({"host": host, "rescheduled_after": [h for h, _ in attempts]}),
                    )
                    self.cast_build(host, uuid, request_id, remaining, attempts, admin_password)
                    metrics.boot_finished("rescheduled")
                    return
                await db.event_finish(conn, uuid, request_id, EVENT, "Error", details=f"claim on {host} failed")
        summary = "; ".join(f"{h}: {r}" for h, r in attempts)
        if len(attempts) > 1:
            message = (
                "Exceeded maximum number of retries. Exhausted all hosts available for retrying build "
                f"failures for instance {uuid}. Attempts: {summary}"
            )
        else:
            message = f"Build of instance {uuid} aborted: {attempts[-1][1]}"
        await set_error(self.pool, uuid, request_id, message, details=summary, event=EVENT, host=attempts[-1][0])
        if self.network_api is not None:
            await self.network_api.deallocate_for_instance(uuid)

    # -- resize and cold migration (Nova's migrate_server / MigrationTask) ----------------
    def migrate_server(self, uuid: str, request_id: str, allow_same_host: bool) -> None:
        """Cast: schedule a resize or cold migration accepted by the compute API (``resize_prep``,
        migration ``pre-migrating``)."""
        self.spawn_task(self._migrate_server(uuid, request_id, allow_same_host))

    async def _migrate_server(self, uuid: str, request_id: str, allow_same_host: bool) -> None:
        """The new flavor through the scheduler; the claim moves the source's allocation to the migration
        and claims the destination; then prep_resize on the destination. No host: back as it was, with a fault."""
        structlog.contextvars.bind_contextvars(request_id=request_id, instance_uuid=uuid)
        async with self.pool.acquire() as conn:
            inst = await db.get(conn, uuid)
            migration = await migration_records.latest(conn, uuid, [migration_records.PRE_MIGRATING])
        if inst is None or migration is None or inst["task_state"] != RESIZE_PREP:
            return
        spec = resize_request_spec(inst, migration, allow_same_host)
        host = await self._schedule_move(uuid, request_id, migration, spec, CONDUCTOR_EVENT, RESIZE_PREP)
        if host is not None and self.cast_resize is not None:
            self.cast_resize(host, "prep_resize", uuid, request_id, migration["id"])

    async def _schedule_move(self, uuid: str, request_id: str, migration: asyncpg.Record, spec: dict, event: str,
                             task_state: str) -> str | None:
        """Schedule a move (its claim made as a move's) and record it under ``event``; the chosen host,
        or None after putting the instance back as it was (task cleared, migration ``error``, a fault)."""
        selection = await self.scheduler.select_move(spec, uuid, request_id, migration["id"], event)
        if isinstance(selection, Selection):
            return selection.host
        message = str(selection) if isinstance(selection, NoValidHost) else f"Scheduling failed: {selection}"
        details = selection.details(uuid) if isinstance(selection, NoValidHost) else ""
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await db.compare_and_set(conn, uuid, expect_task_state=task_state, task_state=None)
            except db.StateConflict:
                return None
            await conn.execute("UPDATE migrations SET status = 'error', updated_at = now() WHERE id = $1",
                               migration["id"])
            await fail_instance(conn, uuid, request_id, Failure(message, details, None, traceback=message),
                                events=[event])
        return None

    # -- evacuation (Nova's rebuild_instance with recreate) ------------------------------
    def evacuate_server(self, uuid: str, request_id: str, admin_password: str | None) -> None:
        """Cast: schedule an evacuation accepted by the compute API (``rebuilding``, migration ``accepted``)."""
        self.spawn_task(self._evacuate_server(uuid, request_id, admin_password))

    async def _evacuate_server(self, uuid: str, request_id: str, admin_password: str | None) -> None:
        """``pre-migrating``, a host other than the down one (the old claim held by the migration, the new
        one made), then the rebuild there. No host: back as it was, with a fault."""
        structlog.contextvars.bind_contextvars(request_id=request_id, instance_uuid=uuid)
        async with self.pool.acquire() as conn:
            inst = await db.get(conn, uuid)
            migration = await migration_records.latest(conn, uuid, [migration_records.ACCEPTED])
            if inst is None or migration is None or inst["task_state"] != REBUILDING:
                return
            migration = await migration_records.set_status(conn, migration["id"], migration_records.ACCEPTED,
                                                           migration_records.PRE_MIGRATING)
        spec = evacuate_request_spec(inst, migration)
        host = await self._schedule_move(uuid, request_id, migration, spec, EVACUATE_EVENT, REBUILDING)
        if host is not None and self.cast_evacuate is not None:
            self.cast_evacuate(host, uuid, request_id, migration["id"], admin_password)
