"""Recovery on start: work that was in flight when the process died is finished or redone.

Queues live in memory, state lives in Postgres: before serving, every
instance whose task_state says work was under way is picked up again, so a
kill -9 never leaves an instance in BUILD or DELETING forever.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog

from novalite.compute import states
from novalite.compute.api import BuildRequest, ComputeAPI
from novalite.conductor import Conductor
from novalite.db import instances as db

log = structlog.get_logger(__name__)


async def recover(pool: asyncpg.Pool, compute_api: ComputeAPI, conductor: Conductor, computes: dict[str, Any]) -> None:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT * FROM instances WHERE NOT deleted AND task_state IS NOT NULL ORDER BY id"
        )
    for inst in rows:
        uuid = str(inst["uuid"])
        async with pool.acquire() as conn:
            action = await conn.fetchrow(
                "SELECT request_id FROM instance_actions WHERE instance_uuid = $1 ORDER BY id DESC LIMIT 1", uuid
            )
        request_id = action["request_id"] if action else "req-recovery"
        if inst["task_state"] == states.DELETING:
            log.info("recover_delete", instance_uuid=uuid)
            compute_api.start_delete(uuid, request_id)
        elif inst["vm_state"] == states.BUILDING:
            # Whatever a host had started is undone; the build starts again from scheduling.
            if inst["host"] in computes:
                await computes[inst["host"]].driver.destroy(uuid)
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM allocations WHERE instance_uuid = $1", uuid)
                await db.compare_and_set(
                    conn, uuid, expect_vm_state=states.BUILDING, task_state=states.SCHEDULING, host=None, node=None
                )
                await db.event_finish(conn, uuid, request_id, "compute_build_and_run_instance", "Error",
                                      details="interrupted by a restart of novalite")
            log.info("recover_build", instance_uuid=uuid)
            conductor.build_instances(BuildRequest([uuid], inst["request_spec"], request_id))
