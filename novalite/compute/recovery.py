"""Recovery on start: work that was in flight when the process died is finished or redone.

Queues live in memory, state lives in Postgres: before serving, every
instance whose state says work was under way is picked up again, so a kill -9
never leaves an instance in BUILD, DELETING or a power task state forever:

- scheduling never finished → its claim (if any) is released and it is
  scheduled again;
- a host was building → that host's libvirt is asked what exists: a running
  domain after the spawn step finishes the build; anything else is cleaned up
  (domain, instance directory, claim) and the instance is scheduled again;
- deleting → the delete is finished;
- a power action (powering-off, rebooting, ...) → the state is set from the
  domain's real power state;
- a resize → the stage it was in runs again (each is re-runnable; a resize not yet
  scheduled is scheduled again); a confirm cut off is run again;
- an evacuation → scheduled again if it had no destination yet, else its rebuild there runs
  again (compute/evacuate.py ``recover_evacuation``);
- a rebuild → redone from its first step (the row already names the new image;
  the ephemeral disk is kept, as losing data is worse than keeping it, and the
  admin password, which only travelled in memory, is not on the new config drive);
- a snapshot or backup → a left-over block copy is ended, the image goes back to
  queued and the snapshot is taken again from its first task state;
- a rescue → rolled back: the server's own guest restored as it was (its rescue
  password is gone with the process); an unrescue → finished;
- a shelve, offload or unshelve → taken up again (compute/shelve_host.py
  ``ShelveManager.resume``); an unshelve that had no host yet is scheduled again,
  with any claim it held released;
- a live migration → finished if the guest runs on the destination, rolled back
  (the destination's leftovers removed, migration ``error``) if it still runs on the source.

Each instance recovered gets a ``compute_recover_instance`` event on its open
action saying what was found and done, and the events the crash cut off are
finished as errors, so the action log shows the interruption.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from novalite.compute import states
from novalite.compute.api import BuildRequest, ComputeAPI
from novalite.compute.evacuate import recover_evacuation
from novalite.compute.failures import Failure, fail_instance
from novalite.compute.image_actions import SNAPSHOT_TASK_STATES
from novalite.compute.live_migration import MIGRATING, recover_live_migration
from novalite.compute.manager import BUILD_EVENT
from novalite.compute.power import POWER_TASK_STATES, RECOVER_EVENT
from novalite.compute.rebuild import REBUILD_TASK_STATES, REBUILDING
from novalite.compute.rescue import RESCUING, UNRESCUING
from novalite.compute.resize import RESIZE_TASK_STATES, recover_resize, resume_confirms
from novalite.compute.shelve import SHELVE_TASK_STATES, SHELVED_VM_STATES, UNSHELVING
from novalite.conductor import Conductor
from novalite.db import instances as db
from novalite.virt import power_state

log = structlog.get_logger(__name__)


async def _request_id(conn: asyncpg.Connection, uuid: str) -> str:
    action = await conn.fetchrow(
        "SELECT request_id FROM instance_actions WHERE instance_uuid = $1 ORDER BY id DESC LIMIT 1", uuid
    )
    return action["request_id"] if action else "req-recovery"


async def interrupted(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """The instances whose state says work was under way: read before the API serves, so what
    the API starts after it is never taken for work a crash cut off."""
    async with pool.acquire() as conn:
        return await conn.fetch(
            """SELECT * FROM instances WHERE NOT deleted AND (task_state IS NOT NULL OR vm_state = 'building')
               ORDER BY id"""
        )


async def recover(
    pool: asyncpg.Pool, compute_api: ComputeAPI, conductor: Conductor, computes: dict[str, Any],
    rows: list[asyncpg.Record] | None = None, on_host: Callable[[str | None], bool] = lambda _host: True,
) -> Counter:
    """Resume or finish every instance's interrupted work (``rows``, from :func:`interrupted`;
    read now when not given); return what was done, by kind. ``on_host``: only the instances
    whose host (None: on none) it accepts, for a start where some hosts do not answer yet (each
    recovered when it does)."""
    done: Counter = Counter()
    if rows is None:
        rows = await interrupted(pool)
    rows = [r for r in rows if on_host(r["host"])]
    for inst in rows:
        uuid = str(inst["uuid"])
        structlog.contextvars.bind_contextvars(instance_uuid=uuid)
        async with pool.acquire() as conn:
            request_id = await _request_id(conn, uuid)
        try:
            kind = await _recover_one(pool, compute_api, conductor, computes, inst, request_id)
        except Exception:
            log.exception("recover_failed")
            kind = "failed"
        done[kind] += 1
        log.info("recovered", how=kind, task_state=inst["task_state"], vm_state=inst["vm_state"])
    structlog.contextvars.unbind_contextvars("instance_uuid")
    confirms = await resume_confirms(pool, {n: c for n, c in computes.items() if on_host(n)})  # confirms cut off (no task state during a confirm)
    if confirms:
        done["resize_confirm_resumed"] += confirms
    # After a clean stop there is nothing to redo: the count says so (0) at every start.
    log.info("recovery_done", to_redo=len(rows), **done)
    return done


async def _recover_one(
    pool: asyncpg.Pool, compute_api: ComputeAPI, conductor: Conductor, computes: dict[str, Any],
    inst: asyncpg.Record, request_id: str,
) -> str:
    uuid = str(inst["uuid"])
    task = inst["task_state"]
    compute = computes.get(inst["host"]) if inst["host"] else None
    if task == states.DELETING:
        async with pool.acquire() as conn:
            await db.interrupt_open_events(conn, uuid, request_id, "interrupted by a restart of novalite")
            await db.event_finish(conn, uuid, request_id, RECOVER_EVENT,
                                  details="interrupted by a restart while deleting; finishing the delete")
        compute_api.start_delete(uuid, request_id)
        return "delete_finished"
    if inst["vm_state"] == states.BUILDING:
        return await _recover_build(pool, conductor, compute, inst, request_id)
    if task in SHELVE_TASK_STATES or inst["vm_state"] in SHELVED_VM_STATES:
        return await _recover_shelve(pool, conductor, compute, inst, request_id)
    if task in POWER_TASK_STATES:
        if compute is None:
            await _to_error(pool, inst, request_id, f"Host {inst['host']} of instance {uuid} is not managed here; "
                            f"cannot reconcile the interrupted {task}")
            return "power_error"
        vm_state = await compute.power.reconcile_power_action(inst, request_id)
        return "power_settled_meanwhile" if vm_state is None else f"power_reconciled_{vm_state}"
    if task in REBUILD_TASK_STATES:
        resumed = await recover_evacuation(pool, computes, inst,
                                           lambda u, rid: conductor.evacuate_server(u, rid, None))
        if resumed is not None:
            return resumed
        if compute is None:
            await _to_error(pool, inst, request_id, f"Host {inst['host']} of instance {uuid} is not managed here; "
                            f"cannot finish the interrupted rebuild")
            return "rebuild_error"
        note = f"interrupted by a restart in task_state {task}; rebuilding again"
        async with pool.acquire() as conn, conn.transaction():
            await db.compare_and_set(conn, uuid, expect_task_state=task, task_state=REBUILDING)
            await db.interrupt_open_events(conn, uuid, request_id, "interrupted by a restart of novalite")
            await db.event_finish(conn, uuid, request_id, RECOVER_EVENT, details=note)
        compute.cast_rebuild(uuid, request_id, None, True)
        return "rebuild_resumed"
    if task in SNAPSHOT_TASK_STATES:
        if compute is None:
            await _to_error(pool, inst, request_id, f"Host {inst['host']} of instance {uuid} is not managed here; "
                            f"cannot finish the interrupted snapshot")
            return "snapshot_error"
        await compute.snapshot.resume(inst, request_id, f"interrupted by a restart in task_state {task}; "
                                      "taking the snapshot again")
        return "snapshot_resumed"
    if task in RESIZE_TASK_STATES:
        async def schedule(u: str, rid: str) -> None:
            allow = any(c.config.compute.allow_resize_to_same_host for c in computes.values())
            conductor.migrate_server(u, rid, allow)

        return await recover_resize(pool, computes, inst, request_id, schedule)
    if task == MIGRATING:
        return await recover_live_migration(pool, computes, inst, request_id)
    if task in (RESCUING, UNRESCUING):
        if compute is None:
            await _to_error(pool, inst, request_id, f"Host {inst['host']} of instance {uuid} is not managed here; "
                            f"cannot finish the interrupted {task}")
            return "rescue_error"
        if task == RESCUING:
            compute.rescue.cast_roll_back_rescue(uuid, request_id)  # the rescue password is gone with the process
            return "rescue_rolled_back"
        note = "interrupted by a restart while unrescuing; finishing the unrescue"
        async with pool.acquire() as conn, conn.transaction():
            await db.interrupt_open_events(conn, uuid, request_id, "interrupted by a restart of novalite")
            await db.event_finish(conn, uuid, request_id, RECOVER_EVENT, details=note)
        compute.rescue.cast_unrescue(uuid, request_id)
        return "unrescue_resumed"
    # A task state novalite does not drive (e.g. set by an older version): clear it.
    async with pool.acquire() as conn, conn.transaction():
        await db.compare_and_set(conn, uuid, expect_task_state=task, task_state=None)
        await db.event_finish(conn, uuid, request_id, RECOVER_EVENT, "Error",
                              details=f"interrupted in unknown task_state {task}; cleared")
    return "task_cleared"


async def _recover_shelve(
    pool: asyncpg.Pool, conductor: Conductor, compute: Any, inst: asyncpg.Record, request_id: str
) -> str:
    uuid = str(inst["uuid"])
    task = inst["task_state"]
    if task == UNSHELVING and inst["vm_state"] == states.SHELVED_OFFLOADED and compute is None:
        # Not yet cast to a host (a claim may have been made): release it and schedule again.
        note = "interrupted by a restart in task_state unshelving (no host yet); scheduling again"
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM allocations WHERE instance_uuid = $1", uuid)
            await db.compare_and_set(conn, uuid, expect_task_state=task, host=None, node=None)
            await db.interrupt_open_events(conn, uuid, request_id, "interrupted by a restart of novalite")
            await db.event_finish(conn, uuid, request_id, RECOVER_EVENT, details=note)
        conductor.unshelve_instance(uuid, request_id)
        return "unshelve_rescheduled"
    if task == UNSHELVING and inst["vm_state"] == states.SHELVED:
        # The conductor had not yet sent it to its host: send it again.
        note = "interrupted by a restart in task_state unshelving; unshelving again"
        async with pool.acquire() as conn, conn.transaction():
            await db.interrupt_open_events(conn, uuid, request_id, "interrupted by a restart of novalite")
            await db.event_finish(conn, uuid, request_id, RECOVER_EVENT, details=note)
        conductor.unshelve_instance(uuid, request_id)
        return "unshelve_resumed"
    if compute is None:
        await _to_error(pool, inst, request_id, f"Host {inst['host']} of instance {uuid} is not managed here; "
                        f"cannot finish the interrupted {task}")
        return "shelve_error"
    how = await compute.shelve.resume(inst, request_id)
    return "shelve_resumed_" + how.replace(" ", "_")


async def _recover_build(
    pool: asyncpg.Pool, conductor: Conductor, compute: Any, inst: asyncpg.Record, request_id: str
) -> str:
    uuid = str(inst["uuid"])
    task = inst["task_state"]
    if compute is not None and task != states.SCHEDULING:
        info = await compute.driver.get_info(uuid)
        if task == states.SPAWNING and info is not None and info.power_state == power_state.RUNNING:
            await _finish_build(pool, compute, uuid, request_id)
            return "build_finished"
        await compute.clean_partial_build(uuid)
        found = "no domain" if info is None else f"a domain in power state {info.power_state}"
    else:
        found = "no host yet" if inst["host"] is None else "a claim, not yet built"
    # The admin password travelled with the cast only (compute/api.py BuildRequest): this
    # build's config drive will be without it.
    note = (f"interrupted by a restart in task_state {task} ({found}); scheduling again "
            "(the admin password is not kept across a restart)")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM allocations WHERE instance_uuid = $1", uuid)
        await db.compare_and_set(conn, uuid, expect_vm_state=states.BUILDING, expect_task_state=task,
                                 task_state=states.SCHEDULING, host=None, node=None)
        if inst["host"] is not None:
            # The build-outcome trigger counts host → NULL as a failed build on that host;
            # a crash of novalite is not the host's fault.
            await conn.execute(
                "UPDATE compute_nodes SET failed_builds = greatest(failed_builds - 1, 0) WHERE host = $1",
                inst["host"],
            )
        await db.interrupt_open_events(conn, uuid, request_id, "interrupted by a restart of novalite")
        await db.event_finish(conn, uuid, request_id, RECOVER_EVENT, details=note)
    conductor.build_instances(BuildRequest([uuid], inst["request_spec"], request_id))
    return "build_rescheduled"


async def _finish_build(pool: asyncpg.Pool, compute: Any, uuid: str, request_id: str) -> None:
    """The spawn had finished when the process died: complete the last step."""
    async with pool.acquire() as conn, conn.transaction():
        await db.compare_and_set(
            conn, uuid, expect_vm_state=states.BUILDING, expect_task_state=states.SPAWNING, task_state=None,
            vm_state=states.ACTIVE, power_state=power_state.RUNNING, launched_at=datetime.now(UTC),
        )
        note = "interrupted by a restart after the domain started; build finished"
        await db.event_finish(conn, uuid, request_id, "compute_spawn", details=note)
        await db.event_finish(conn, uuid, request_id, BUILD_EVENT, details=note)
        await db.interrupt_open_events(conn, uuid, request_id, "interrupted by a restart of novalite")
        await db.event_finish(conn, uuid, request_id, RECOVER_EVENT, details=note)
        await db.finish_action(conn, uuid, request_id)
        await db.notify(conn, "instance.create.end", {"host": compute.host, "state": states.ACTIVE},
                        publisher_id=f"nova-compute:{compute.host}", instance_uuids=[uuid], request_id=request_id)


async def _to_error(pool: asyncpg.Pool, inst: asyncpg.Record, request_id: str, message: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await fail_instance(conn, str(inst["uuid"]), request_id, Failure(message, "", inst["host"]),
                            expect={"expect_task_state": inst["task_state"]}, interrupt_open=True,
                            events=[RECOVER_EVENT])
