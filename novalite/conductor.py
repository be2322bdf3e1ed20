"""The conductor: takes build requests off its queue, asks the scheduler for
claimed hosts, and casts each instance to its host's compute queue, keeping
the alternates for a reschedule. No host → ERROR with a fault that says why.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from novalite.compute import states
from novalite.compute.api import BuildRequest
from novalite.config import SchedulerConfig
from novalite.db import instances as db
from novalite.foreground import Foreground
from novalite.scheduler.manager import NoValidHost, Scheduler, Selection, claim

log = structlog.get_logger(__name__)

EVENT = "conductor_schedule_and_build_instances"


async def set_error(
    pool: asyncpg.Pool, uuid: str, request_id: str, message: str, details: str = "", *, event: str, host: str | None = None,
    event_details: str | None = None,
) -> None:
    """Move a building instance to ERROR with a fault, unless it is being deleted."""
    async with pool.acquire() as conn, conn.transaction():
        try:
            await db.compare_and_set(
                conn,
                uuid,
                expect_vm_state=states.BUILDING,
                expect_task_state=db.Not(states.DELETING),
                vm_state=states.ERROR,
                task_state=None,
            )
        except db.StateConflict:
            log.info("error_skipped_instance_moved_on", instance_uuid=uuid)
            return
        await conn.execute("DELETE FROM allocations WHERE instance_uuid = $1", uuid)
        await db.add_fault(conn, uuid, 500, message, details, host)
        await db.event_finish(conn, uuid, request_id, event, "Error", traceback=message, details=event_details or message)
        await db.finish_action(conn, uuid, request_id)
        await db.notify(
            conn,
            "instance.create.error",
            {"fault": {"message": message}},
            publisher_id=f"nova-compute:{host}" if host else "nova-conductor",
            instance_uuids=[uuid],
            request_id=request_id,
            priority="ERROR",
        )


class Conductor:
    """Schedules and casts builds; reschedules failed builds to alternates."""

    def __init__(self, pool: asyncpg.Pool, scheduler: Scheduler, cfg: SchedulerConfig) -> None:
        self.pool = pool
        self.scheduler = scheduler
        self.cfg = cfg
        self.computes: dict[str, Any] = {}
        self.network_api: Any = None
        self.queue: asyncio.Queue[BuildRequest] = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.foreground = Foreground(0)  # the wiring shares the API's

    def start(self) -> None:
        self._worker = asyncio.create_task(self._serve(), name="conductor")

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
        for t in list(self._tasks):
            t.cancel()

    def build_instances(self, request: BuildRequest) -> None:
        """Cast: queue the request and return at once."""
        self.queue.put_nowait(request)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self) -> None:
        while True:
            request = await self.queue.get()
            await self.foreground.background_turn()
            self._spawn(self.schedule_and_build_instances(request))

    async def schedule_and_build_instances(self, request: BuildRequest) -> None:
        uuids = request.instance_uuids
        structlog.contextvars.bind_contextvars(request_id=request.request_id)
        started_at = datetime.now(UTC)
        record: dict | None = None
        try:
            selections, record = await self.scheduler.select_destinations(
                request.request_spec, uuids, request.request_id
            )
        except Exception as exc:  # scheduler crashed: every instance gets a fault
            log.exception("select_destinations_failed")
            selections = [exc] * len(uuids)
        scheduled = [(u, sel) for u, sel in zip(uuids, selections, strict=True) if isinstance(sel, Selection)]
        if record is not None:
            async with self.pool.acquire() as conn:
                await db.record_schedule(
                    conn, uuids, request.request_id, record, event=EVENT, event_started_at=started_at,
                    # the per-host table is stored once, in scheduling_verdicts
                    scheduled=[(u, json.dumps({"host": sel.host, "alternates": sel.alternates,
                                               "verdicts": f"/servers/{u}/os-scheduling"}))
                               for u, sel in scheduled],
                )
        for u, sel in scheduled:
            self.computes[sel.host].build_and_run_instance(u, request.request_id, sel.alternates)
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

    async def reschedule(
        self, uuid: str, request_id: str, alternates: list[str], attempts: list[tuple[str, str]]
    ) -> None:
        """A build failed on a host: claim the next alternate and cast, else ERROR listing every attempt."""
        tried = {h for h, _ in attempts}
        self.scheduler.invalidate_host_states()  # a failed build released its claim and counts on its host
        async with self.pool.acquire() as conn:
            inst = await db.get(conn, uuid)
            if inst is None or inst["task_state"] != states.SCHEDULING:
                return
            flavor = inst["flavor"]
            disk = flavor["root_gb"] + flavor["ephemeral_gb"] + (flavor["swap"] + 1023) // 1024
            hosts = {h.host: h for h in await self.scheduler.host_states(conn)}
            remaining = [h for h in alternates if h not in tried]
            while remaining and len(attempts) < self.cfg.max_attempts:
                host = remaining.pop(0)
                state = hosts.get(host)
                if state is None:
                    continue
                await db.event_start(conn, uuid, request_id, EVENT, None)
                if await claim(conn, state, uuid, flavor["vcpus"], flavor["memory_mb"], disk):
                    state.consume(flavor["vcpus"], flavor["memory_mb"], disk, uuid)
                    await db.event_finish(
                        conn, uuid, request_id, EVENT, "Success",
                        details=json.dumps({"host": host, "rescheduled_after": [h for h, _ in attempts]}),
                    )
                    self.computes[host].build_and_run_instance(uuid, request_id, remaining, attempts)
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
