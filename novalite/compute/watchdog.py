"""Deadlines per task state: overdue work goes to ERROR with a fault naming the step.

Nova's build timeout is off by default and nothing bounds the other task
states; here every in-flight state has a deadline (``[deadlines]`` in the
config) counted from ``instances.task_state_since``. Moves that copy disks
(live and cold migration, resize, an evacuation moving volumes) have their
own, generous one (``migrating``), so a large copy is not cut by the build's;
a live migration past it is first aborted, as Nova's completion timeout does
(the guest stays on its source, ACTIVE), and failed only if that does not
end it.  The watchdog moves an
overdue instance to ERROR by compare-and-set on the exact state it saw, so
work that moved on meanwhile is left alone, and work still running in this
process fails its next compare-and-set and cleans up after itself.  A build
that times out gives up its claim (as every failed build does) and its
domain, if one was made.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog

from novalite.compute import states
from novalite.compute.failures import Failure, Notification, fail_instance
from novalite.compute.live_migration import MIGRATING
from novalite.compute.power import POWER_TASK_STATES
from novalite.compute.rebuild import REBUILD_BLOCK_DEVICE_MAPPING
from novalite.compute.resize import RESIZE_TASK_STATES
from novalite.config import Config
from novalite.periodic import Periodic

log = structlog.get_logger(__name__)

# The task states of moves that copy disks or volumes between hosts (an evacuation moves its
# volumes in rebuild_block_device_mapping): ``[deadlines] migrating`` bounds them.
MOVE_TASK_STATES = (MIGRATING, *RESIZE_TASK_STATES, REBUILD_BLOCK_DEVICE_MAPPING)


class Watchdog:
    """Periodically moves instances stuck past their task state's deadline to ERROR."""

    def __init__(self, pool: asyncpg.Pool, config: Config, computes: dict[str, Any]) -> None:
        self.pool = pool
        self.config = config
        self.computes = computes
        self._periodic = Periodic("watchdog", config.deadlines.watchdog_interval, self.check_once)

    def deadline_for(self, vm_state: str, task_state: str | None, host: str | None = None) -> float:
        d = self.config.deadlines
        if task_state == states.SCHEDULING:
            # Claimed on a host, waiting for its build semaphore: that is building time.
            return d.building if host else d.scheduling
        if task_state == states.DELETING:
            return d.deleting
        if task_state in POWER_TASK_STATES:
            return d.power_action
        if task_state in MOVE_TASK_STATES:
            return d.migrating
        return d.building

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def check_once(self) -> list[str]:
        """One pass; returns the uuids moved to ERROR."""
        d = self.config.deadlines
        shortest = min(d.scheduling, d.building, d.deleting, d.power_action, d.migrating)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT *, extract(epoch FROM clock_timestamp() - task_state_since) AS age FROM instances
                   WHERE NOT deleted AND (task_state IS NOT NULL OR vm_state = 'building')
                     AND task_state_since < clock_timestamp() - make_interval(secs => $1)""",
                shortest,
            )
        expired = []
        for inst in rows:
            deadline = self.deadline_for(inst["vm_state"], inst["task_state"], inst["host"])
            if inst["age"] > deadline and not await self._abort_live(inst) and await self._expire(inst, deadline):
                expired.append(str(inst["uuid"]))
        return expired

    async def _abort_live(self, inst: asyncpg.Record) -> bool:
        """An overdue live migration still running here is aborted (it rolls back by itself); True then."""
        compute = self.computes.get(inst["host"]) if inst["host"] else None
        if inst["task_state"] != MIGRATING or compute is None:
            return False
        return await compute.live.abort_overdue(str(inst["uuid"]))

    async def _expire(self, inst: asyncpg.Record, deadline: float) -> bool:
        uuid = str(inst["uuid"])
        task = inst["task_state"]
        building = inst["vm_state"] == states.BUILDING
        async with self.pool.acquire() as conn, conn.transaction():
            action = await conn.fetchrow(
                "SELECT id, request_id FROM instance_actions WHERE instance_uuid = $1 ORDER BY id DESC LIMIT 1", uuid
            )
            step = None
            if action is not None:
                step = await conn.fetchval(
                    """SELECT event FROM instance_actions_events WHERE action_id = $1 AND finish_time IS NULL
                       ORDER BY id DESC LIMIT 1""",
                    action["id"],
                )
            message = (
                f"Timed out after {deadline:g} s in task_state {task or 'none'}"
                f" (step {step or task or 'none'}) of instance {uuid}"
            )
            request_id = action["request_id"] if action else None
            failure = Failure(message, f"deadline {deadline:g} s", inst["host"])
            if not await fail_instance(
                conn, uuid, request_id, failure,
                expect={"expect_vm_state": inst["vm_state"], "expect_task_state": task},
                release_claim=building, interrupt_open=True,
                notification=Notification("instance.update", {"state": states.ERROR, "fault": message}, "nova-compute"),
            ):
                return False  # it moved on meanwhile
        log.warning("task_state_deadline_expired", instance_uuid=uuid, task_state=task, step=step, deadline=deadline)
        compute = self.computes.get(inst["host"]) if inst["host"] else None
        if building and compute is not None:
            # The build's own next step fails and cleans up too; this covers a build no longer running.
            compute.cast_clean_partial_build(uuid)
        return True
