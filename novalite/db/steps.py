"""Build steps: the compare-and-set of a build's task_state plus its bookkeeping,
for many instances in ONE statement.

A step finishes the previous step's action events, starts the next ones, may
finish the action and store a notification — all only if the state change
happened. Concurrent builds (hundreds during a boot storm) hand their steps to
one ``StepWriter``, which sends whatever has accumulated while its previous
statement was in flight (db.batch): one round trip and one commit for many steps,
and a lone step still goes out at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import asyncpg

from novalite.db.batch import BatchWriter
from novalite.db.instances import DeleteEnd, StateConflict, among, by_uuid, finish_deletes, get


@dataclass
class BuildStep:
    """One instance's step: move (vm_state, task_state) from `expect_*` to the new values."""

    uuid: str
    request_id: str
    expect_vm_state: str
    expect_task_state: str | None
    task_state: str | None
    host: str  # the host named on the action events this step starts
    vm_state: str | None = None  # None: unchanged
    power_state: int | None = None  # None: unchanged
    launched: bool = False  # set launched_at to now()
    finish_events: list[str] = field(default_factory=list)
    start_events: list[str] = field(default_factory=list)
    event_details: str | None = None  # stored on the events this step finishes
    finish_action: bool = False
    notification: tuple[str, dict, str] | None = None  # (event_type, payload, publisher_id)
    require_claim_on: str | None = None  # the instance must be on this host and hold a resource claim there
    full_row: bool = False  # return the whole instance row, not only its uuid

    def record(self, index: int) -> dict:
        event_type, payload, publisher = self.notification or (None, None, None)
        return {
            "i": index, "uuid": self.uuid, "request_id": self.request_id,
            "expect_vm_state": self.expect_vm_state, "expect_task_state": self.expect_task_state,
            "task_state": self.task_state, "vm_state": self.vm_state, "power_state": self.power_state,
            "launched": self.launched, "host": self.host, "finish_events": self.finish_events,
            "start_events": self.start_events, "details": self.event_details, "finish_action": self.finish_action,
            "note_type": event_type, "note_publisher": publisher, "note_payload": payload,
            "claim_host": self.require_claim_on,
        }


_STEPS_CTE = f"""
x AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(
        i integer, uuid uuid, request_id text, expect_vm_state text, expect_task_state text, task_state text,
        vm_state text, power_state integer, launched boolean, host text, finish_events text[],
        start_events text[], details text, finish_action boolean, note_type text, note_publisher text,
        note_payload jsonb, claim_host text)),
inst AS (
    UPDATE instances i SET updated_at = now(), task_state = x.task_state,
        vm_state = coalesce(x.vm_state, i.vm_state), power_state = coalesce(x.power_state, i.power_state),
        launched_at = CASE WHEN x.launched THEN now() ELSE i.launched_at END,
        progress = CASE WHEN x.vm_state = 'active' THEN 100
                        ELSE coalesce(array_position(ARRAY['networking', 'block_device_mapping', 'spawning'],
                                                     x.task_state) * 25, i.progress) END
    FROM x
    WHERE i.uuid = x.uuid AND {among("x")} AND {by_uuid("NOT i.deleted")}
      AND i.vm_state IS NOT DISTINCT FROM x.expect_vm_state
      AND i.task_state IS NOT DISTINCT FROM x.expect_task_state
      AND (x.claim_host IS NULL OR (i.host = x.claim_host AND EXISTS (
          SELECT 1 FROM allocations a WHERE a.instance_uuid = i.uuid AND a.host = x.claim_host)))
    RETURNING i.*),
act AS (
    SELECT DISTINCT ON (x.uuid) x.*, a.id AS action_id
    FROM x JOIN inst ON inst.uuid = x.uuid
    JOIN instance_actions a ON a.instance_uuid = x.uuid AND a.request_id = x.request_id
    ORDER BY x.uuid, a.id DESC),
fin AS (
    UPDATE instance_actions_events e SET finish_time = now(), result = 'Success',
        details = coalesce(act.details, e.details)
    FROM act
    WHERE e.action_id = act.action_id AND e.event = ANY(act.finish_events) AND e.finish_time IS NULL),
st AS (
    INSERT INTO instance_actions_events (action_id, event, host)
    SELECT act.action_id, e, act.host FROM act, unnest(act.start_events) AS e),
af AS (
    UPDATE instance_actions a SET finish_time = now(), updated_at = now()
    FROM act WHERE a.id = act.action_id AND {among("act", "a.id", "action_id")} AND act.finish_action
      AND a.finish_time IS NULL),
n AS (
    INSERT INTO notifications (event_type, priority, publisher_id, instance_uuid, request_id, payload)
    SELECT x.note_type, 'INFO', x.note_publisher, x.uuid, x.request_id, x.note_payload
    FROM x JOIN inst ON inst.uuid = x.uuid WHERE x.note_type IS NOT NULL)
"""
# Steps that did not happen come back with a NULL uuid.
_STEPS_FULL_SQL = f"WITH {_STEPS_CTE} SELECT x.i AS step_index, inst.* FROM x LEFT JOIN inst ON inst.uuid = x.uuid"
_STEPS_UUID_SQL = f"WITH {_STEPS_CTE} SELECT x.i AS step_index, inst.uuid FROM x LEFT JOIN inst ON inst.uuid = x.uuid"


async def run_steps(conn: asyncpg.Connection, steps: list[BuildStep], full_row: bool) -> list[asyncpg.Record | None]:
    """Apply the steps (at most one per instance) in one statement; per step, the
    instance's row (or only its uuid) if the step happened, else None."""
    rows = await conn.fetch(_STEPS_FULL_SQL if full_row else _STEPS_UUID_SQL,
                            [s.record(i) for i, s in enumerate(steps)])
    result: list[asyncpg.Record | None] = [None] * len(steps)
    for row in rows:
        if row["uuid"] is not None:
            result[row["step_index"]] = row
    return result


class StepWriter:
    """Sends the build steps of concurrent builds together (one statement per return shape in
    flight at a time, at most one step per instance in it) and answers each step as if it had
    been sent alone; the ends of concurrent deletes likewise."""

    MAX_BATCH = 20

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._writers = {
            full_row: BatchWriter(pool, functools.partial(run_steps, full_row=full_row), self.MAX_BATCH,
                                  "build_steps", key=lambda s: s.uuid)
            for full_row in (True, False)
        }
        self._delete_ends = BatchWriter(pool, finish_deletes, self.MAX_BATCH, "delete_ends", key=lambda e: e.uuid)

    async def finish_delete(self, end: DeleteEnd) -> None:
        """The end of a delete (db.instances.finish_deletes), with other hosts' ends in one statement;
        StateConflict when the instance was no longer being deleted."""
        await self._delete_ends.submit(end)

    async def step(self, step: BuildStep) -> asyncpg.Record:
        """Apply one step; its row (or uuid) if it happened, else StateConflict with the actual row."""
        row = await self._writers[step.full_row].submit(step)
        if row is None:
            async with self.pool.acquire() as conn:
                raise StateConflict(step.uuid, await get(conn, step.uuid, include_deleted=True))
        return row

