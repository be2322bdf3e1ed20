"""One way to fail an instance's work: ERROR (when asked), a fault, the events, the action, a notification.

Nova spreads this over ``wrap_instance_fault``, ``wrap_instance_event`` and its
notification decorators. Here every path that fails an instance — the
conductor's NoValidHost and exhausted reschedules, a build that failed on its
host, a failed power action, the watchdog's deadlines, recovery — writes the
same rows through :func:`fail_instance`, inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from novalite.compute import states
from novalite.db import instances as db


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong, as the fault and the action events record it."""

    message: str  # the fault's message, what `openstack server show` prints
    details: str = ""  # the fault's details
    host: str | None = None
    event_details: str | None = None  # details of the events finished as errors (default: message)
    traceback: str | None = None  # traceback of those events


@dataclass(frozen=True, slots=True)
class Notification:
    """An error notification (priority ERROR) about the failed instance."""

    event_type: str
    payload: dict[str, Any]
    publisher_id: str


async def fail_instance(
    conn: asyncpg.Connection,
    uuid: str,
    request_id: str | None,
    failure: Failure,
    *,
    expect: dict[str, Any] | None = None,
    release_claim: bool = False,
    interrupt_open: bool = False,
    events: Sequence[str] = (),
    finish_action: bool = True,
    notification: Notification | None = None,
) -> bool:
    """Record ``failure`` on the instance; with ``expect``, first move it to ERROR.

    ``expect`` holds compare-and-set expectations (``expect_vm_state``,
    ``expect_task_state``): the instance goes to vm_state ERROR, task_state None
    only from that state, and when it has moved on nothing is written and False
    is returned. ``release_claim`` frees its resource claim. Then: a fault; every
    event of the request's action still open finished as an error
    (``interrupt_open``), then each of ``events``; the action finished; the
    notification sent. Call it inside a transaction so all of it lands or none.
    """
    if expect is not None:
        try:
            await db.compare_and_set(conn, uuid, vm_state=states.ERROR, task_state=None, **expect)
        except db.StateConflict:
            return False
        if release_claim:
            await conn.execute("DELETE FROM allocations WHERE instance_uuid = $1", uuid)
    await db.add_fault(conn, uuid, 500, failure.message, failure.details, failure.host)
    details = failure.event_details or failure.message
    if request_id is not None:
        if interrupt_open:
            await db.interrupt_open_events(conn, uuid, request_id, details)
        for event in events:
            await db.event_finish(conn, uuid, request_id, event, "Error", traceback=failure.traceback,
                                  details=details)
        if finish_action:
            await db.finish_action(conn, uuid, request_id)
    if notification is not None:
        await db.notify(conn, notification.event_type, notification.payload, publisher_id=notification.publisher_id,
                        instance_uuids=[uuid], request_id=request_id, priority="ERROR")
    return True


def moved_on(conflict: db.StateConflict) -> str:
    """Where the instance went when an action's compare-and-set lost: ``deleted`` or vm_state/task_state."""
    actual = conflict.actual
    return "deleted" if actual is None or actual["deleted"] else f"{actual['vm_state']}/{actual['task_state']}"


async def finish_superseded(conn: asyncpg.Connection, uuid: str, request_id: str, event: str, what: str) -> None:
    """An action whose instance moved on (deleted, or taken by another action) stops: its event
    ends as an error saying where the instance went, and the action is finished."""
    await db.event_finish(conn, uuid, request_id, event, "Error", details=f"instance moved on: {what}")
    await db.finish_action(conn, uuid, request_id)
