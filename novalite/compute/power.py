"""Power actions and power-state sync on a compute host: the PowerManager each ComputeManager holds.

Actions (stop, start, reboot, pause, unpause, suspend, resume) arrive from
:mod:`novalite.compute.actions` with the instance already moved to its task
state (powering-off, rebooting, ...) by compare-and-set.  The host takes the
instance lock, moves through Nova's intermediate task states (reboot_pending,
reboot_started), calls the virt driver, and finishes with one compare-and-set
to the resulting vm_state; a delete that arrived meanwhile makes that fail and
the action simply ends.  Each is an action event (``compute_stop_instance``...)
and a pair of notifications (``instance.power_off.start``/``.end``...).

Power-state sync follows Nova's ``_sync_instance_power_state``: libvirt
lifecycle events trigger a sync of that one instance (it re-reads the domain,
so late or coalesced events are harmless); a periodic pass over the host's
domains (one libvirt call) is the safety net and reports domains nobody owns.
"""

from __future__ import annotations

import asyncio
import traceback
import uuid as uuidlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from novalite.compute import states
from novalite.compute.failures import (
    Failure,
    Notification,
    fail_instance,
    finish_superseded,
    moved_on,
)
from novalite.compute.locks import InstanceLocks
from novalite.config import Config
from novalite.db import instances as db
from novalite.periodic import staggered
from novalite.virt import power_state
from novalite.virt.driver import InstanceNotFound, VirtDriver

log = structlog.get_logger(__name__)

# task_state, as Nova names them (nova/compute/task_states.py)
POWERING_OFF = "powering-off"
POWERING_ON = "powering-on"
REBOOTING = "rebooting"
REBOOT_PENDING = "reboot_pending"
REBOOT_STARTED = "reboot_started"
REBOOTING_HARD = "rebooting_hard"
REBOOT_PENDING_HARD = "reboot_pending_hard"
REBOOT_STARTED_HARD = "reboot_started_hard"
PAUSING = "pausing"
UNPAUSING = "unpausing"
SUSPENDING = "suspending"
RESUMING = "resuming"

POWER_TASK_STATES = (
    POWERING_OFF, POWERING_ON, REBOOTING, REBOOT_PENDING, REBOOT_STARTED, REBOOTING_HARD,
    REBOOT_PENDING_HARD, REBOOT_STARTED_HARD, PAUSING, UNPAUSING, SUSPENDING, RESUMING,
)
# Hard reboot may interrupt these (Nova's task_states.ALLOW_REBOOT).
ALLOW_REBOOT = (None, REBOOTING, REBOOT_PENDING, REBOOT_STARTED, RESUMING, REBOOTING_HARD,
                UNPAUSING, PAUSING, SUSPENDING)

RECOVER_EVENT = "compute_recover_instance"


@dataclass(frozen=True)
class PowerFlow:
    """How the host carries out one power action."""

    event: str  # the action event, Nova's compute manager method name
    notification: str  # instance.<notification>.start / .end
    steps: tuple[str, ...]  # task states: the API's, then the host's intermediate ones
    vm_state: str  # vm_state once the driver call worked


FLOWS: dict[str, PowerFlow] = {
    "stop": PowerFlow("compute_stop_instance", "power_off", (POWERING_OFF,), states.STOPPED),
    "start": PowerFlow("compute_start_instance", "power_on", (POWERING_ON,), states.ACTIVE),
    "reboot_soft": PowerFlow("compute_reboot_instance", "reboot", (REBOOTING, REBOOT_PENDING, REBOOT_STARTED),
                             states.ACTIVE),
    "reboot_hard": PowerFlow("compute_reboot_instance", "reboot",
                             (REBOOTING_HARD, REBOOT_PENDING_HARD, REBOOT_STARTED_HARD), states.ACTIVE),
    "pause": PowerFlow("compute_pause_instance", "pause", (PAUSING,), states.PAUSED),
    "unpause": PowerFlow("compute_unpause_instance", "unpause", (UNPAUSING,), states.ACTIVE),
    "suspend": PowerFlow("compute_suspend_instance", "suspend", (SUSPENDING,), states.SUSPENDED),
    "resume": PowerFlow("compute_resume_instance", "resume", (RESUMING,), states.ACTIVE),
}


def vm_state_for(power: int | None, saved: bool = False) -> str:
    """The vm_state a domain's real power state stands for (None: no domain → error)."""
    if power is None:
        return states.ERROR
    if power == power_state.RUNNING:
        return states.ACTIVE
    if power == power_state.PAUSED:
        return states.PAUSED
    if saved:
        return states.SUSPENDED
    return states.STOPPED


class PowerManager:
    """Host side of power actions, lifecycle events and the periodic power sync of one host."""

    def __init__(
        self,
        host: str,
        driver: VirtDriver,
        pool: asyncpg.Pool,
        locks: InstanceLocks,
        config: Config,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        """``spawn`` runs a coroutine as one of the host's tracked tasks (waited for at stop)."""
        self.host = host
        self.driver = driver
        self.pool = pool
        self.locks = locks
        self.config = config
        self.spawn_task = spawn
        self._sync_pending: set[str] = set()

    # -- casts from the compute API -------------------------------------------------
    def cast_power_action(self, uuid: str, action: str, request_id: str) -> None:
        """Cast: run a power action on this host (the instance is already in its task state)."""
        self.spawn_task(self._power_action(uuid, action, request_id))

    async def _power_action(self, uuid: str, action: str, request_id: str) -> None:
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        flow = FLOWS[action]
        pub = f"nova-compute:{self.host}"
        async with self.locks.lock(uuid):
            async with self.pool.acquire() as conn:
                await db.event_start(conn, uuid, request_id, flow.event, self.host)
                await db.notify(conn, f"instance.{flow.notification}.start", {"host": self.host},
                                publisher_id=pub, instance_uuids=[uuid], request_id=request_id)
                try:
                    await db.compare_and_set(conn, uuid, expect_task_state=flow.steps[0])  # still ours?
                    for expect, new in zip(flow.steps, flow.steps[1:], strict=False):
                        await db.compare_and_set(conn, uuid, expect_task_state=expect, task_state=new)
                except db.StateConflict as conflict:
                    await self._power_action_superseded(conn, uuid, request_id, flow, conflict)
                    return
            last = flow.steps[-1]
            try:
                await self._drive(uuid, action)
                info = await self.driver.get_info(uuid)
            except Exception as exc:
                log.warning("power_action_failed", action=action, error=str(exc))
                await self._power_action_failed(uuid, request_id, flow, exc)
                return
            async with self.pool.acquire() as conn, conn.transaction():
                try:
                    await db.compare_and_set(
                        conn, uuid, expect_task_state=last, task_state=None, vm_state=flow.vm_state,
                        power_state=info.power_state if info else power_state.NOSTATE,
                    )
                except db.StateConflict as conflict:
                    await self._power_action_superseded(conn, uuid, request_id, flow, conflict)
                    return
                await db.event_finish(conn, uuid, request_id, flow.event)
                await db.finish_action(conn, uuid, request_id)
                await db.notify(conn, f"instance.{flow.notification}.end", {"host": self.host, "state": flow.vm_state},
                                publisher_id=pub, instance_uuids=[uuid], request_id=request_id)
            log.info("power_action_done", action=action, vm_state=flow.vm_state)

    async def _drive(self, uuid: str, action: str, force: bool = False) -> None:
        cfg = self.config.compute
        if action == "stop":
            await self.driver.power_off(uuid, 0 if force else cfg.shutdown_timeout)
        elif action == "start":
            await self.driver.power_on(uuid)
        elif action in ("reboot_soft", "reboot_hard"):
            await self.driver.reboot(uuid, hard=action == "reboot_hard", timeout=cfg.soft_reboot_timeout)
        else:
            await getattr(self.driver, action)(uuid)

    async def _power_action_superseded(
        self, conn: asyncpg.Connection, uuid: str, request_id: str, flow: PowerFlow, conflict: db.StateConflict
    ) -> None:
        what = moved_on(conflict)
        log.info("power_action_superseded", action_event=flow.event, now=what)
        await finish_superseded(conn, uuid, request_id, flow.event, what)

    async def _power_action_failed(
        self, uuid: str, request_id: str, flow: PowerFlow, exc: Exception
    ) -> None:
        """Like Nova's reverts_task_state + wrap_instance_fault: fault, task_state back to None, real power state."""
        reason = f"{type(exc).__name__}: {exc}"
        try:
            info = await self.driver.get_info(uuid)
        except Exception:
            info = None
        tb = traceback.format_exc(limit=5)
        async with self.pool.acquire() as conn, conn.transaction():
            await fail_instance(
                conn, uuid, request_id, Failure(reason, tb, self.host, traceback=tb), events=[flow.event],
                notification=Notification(f"instance.{flow.notification}.error", {"host": self.host, "fault": reason},
                                          f"nova-compute:{self.host}"),
            )
            try:
                await db.compare_and_set(conn, uuid, expect_task_state=list(flow.steps), task_state=None,
                                         power_state=info.power_state if info else power_state.NOSTATE)
            except db.StateConflict:
                pass

    # -- power-state sync ---------------------------------------------------------------
    def start(self) -> asyncio.Task:
        """Subscribe to lifecycle events and start the periodic sync; the caller cancels the task at stop."""
        return asyncio.create_task(self._power_sync_loop(), name=f"power-sync-{self.host}")

    async def _power_sync_loop(self) -> None:
        try:
            await self.driver.watch_lifecycle(self._on_lifecycle_event)
        except Exception:
            log.exception("lifecycle_subscribe_failed", host=self.host)
        wait = staggered(self.config.compute.power_sync_interval)  # at once, then spread over the hosts
        while True:
            try:
                await self.sync_power_states()
            except Exception:
                log.exception("power_sync_failed", host=self.host)
            await asyncio.sleep(wait)
            wait = self.config.compute.power_sync_interval

    def _on_lifecycle_event(self, uuid: str, power: int, event: str) -> None:
        log.debug("lifecycle_event", host=self.host, instance_uuid=uuid, lifecycle=event, power_state=power)
        if uuid in self._sync_pending:
            return  # a sync of this instance is queued and will read the latest state
        if self.locks.held(uuid):
            return  # our own build or action caused it and sets the state itself (as the periodic sync does)
        self._sync_pending.add(uuid)
        self.spawn_task(self._sync_from_event(uuid, event))

    async def _sync_from_event(self, uuid: str, event: str) -> None:
        try:
            async with self.locks.lock(uuid):
                self._sync_pending.discard(uuid)
                async with self.pool.acquire() as conn:
                    inst = await db.get(conn, uuid)
                if inst is None or inst["host"] != self.host:
                    return
                info = await self.driver.get_info(uuid)
                await self._sync_instance_power_state(inst, info.power_state if info else power_state.NOSTATE,
                                                      source=f"lifecycle event {event}")
        except Exception:
            self._sync_pending.discard(uuid)
            log.exception("lifecycle_sync_failed", instance_uuid=uuid)

    async def sync_power_states(self) -> dict[str, int]:
        """One pass over this host: every instance against its domain; unknown domains reported."""
        domains = await self.driver.list_instance_states()
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT uuid FROM instances WHERE host = $1 AND NOT deleted", self.host)
        known = {str(r["uuid"]) for r in rows}
        for uuid in known:
            if self.locks.held(uuid):
                continue  # an action or build is at work; it sets the state itself
            async with self.locks.lock(uuid):
                async with self.pool.acquire() as conn:
                    inst = await db.get(conn, uuid)
                if inst is None or inst["host"] != self.host:
                    continue
                await self._sync_instance_power_state(inst, domains.get(uuid, power_state.NOSTATE), source="periodic sync")
        unknown = sorted(set(domains) - known)
        if unknown:
            await self._handle_unknown_domains(unknown)
        return domains

    async def _handle_unknown_domains(self, uuids: list[str]) -> None:
        # Re-check against the database: a build may have claimed this host meanwhile.
        async with self.pool.acquire() as conn:
            owned = {str(r["uuid"]) for r in await conn.fetch(
                "SELECT uuid FROM instances WHERE uuid = ANY($1::uuid[]) AND host = $2 AND NOT deleted",
                uuids, self.host)}
        for uuid in uuids:
            if uuid in owned:
                continue
            action = self.config.compute.unknown_domain_action
            log.warning("unknown_domain", host=self.host, domain_uuid=uuid, action=action,
                        detail="a domain no live instance owns; never adopted")
            if action == "reap":
                await self.driver.destroy(uuid)

    async def _sync_instance_power_state(self, inst: asyncpg.Record, vm_power: int, source: str) -> None:
        """Nova's _sync_instance_power_state: trust the hypervisor, stop what stopped behind our back."""
        uuid = str(inst["uuid"])
        if inst["task_state"] is not None:
            return  # work in flight owns the state
        vm_state = inst["vm_state"]
        if inst["power_state"] != vm_power:
            async with self.pool.acquire() as conn:
                try:
                    inst = await db.compare_and_set(conn, uuid, expect_vm_state=vm_state, expect_task_state=None,
                                                    power_state=vm_power)
                except db.StateConflict:
                    return
        if vm_state in (states.BUILDING, states.SUSPENDED, states.ERROR, "rescued", "resized"):
            return
        off = vm_power in (power_state.SHUTDOWN, power_state.CRASHED)
        if vm_state == states.ACTIVE:
            if off or vm_power == power_state.SUSPENDED:
                log.warning("instance_shutdown_by_itself", source=source, instance_uuid=uuid,
                            detail="Instance shutdown by itself. Calling the stop API.")
                await self._stop_by_sync(inst, force=False, source=source)
            elif vm_power == power_state.PAUSED:
                log.warning("instance_paused_unexpectedly", instance_uuid=uuid)
            elif vm_power == power_state.NOSTATE:
                log.warning("instance_unexpectedly_not_found", instance_uuid=uuid, source=source)
        elif vm_state == states.STOPPED:
            if vm_power not in (power_state.NOSTATE, power_state.SHUTDOWN, power_state.CRASHED):
                log.warning("instance_not_stopped", instance_uuid=uuid, source=source,
                            detail="Instance is not stopped. Calling the stop API.")
                await self._stop_by_sync(inst, force=True, source=source)
        elif vm_state == states.PAUSED and off:
            log.warning("paused_instance_shutdown_by_itself", instance_uuid=uuid, source=source)
            await self._stop_by_sync(inst, force=True, source=source)

    async def _stop_by_sync(self, inst: asyncpg.Record, force: bool, source: str) -> None:
        """The stop API on the sync's behalf: an instance action 'stop' whose event says why."""
        uuid = str(inst["uuid"])
        request_id = f"req-{uuidlib.uuid4()}"
        flow = FLOWS["stop"]
        pub = f"nova-compute:{self.host}"
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await db.compare_and_set(conn, uuid, expect_vm_state=inst["vm_state"], expect_task_state=None,
                                         task_state=POWERING_OFF)
            except db.StateConflict:
                return
            await db.start_actions(conn, [uuid], "stop", request_id, inst["user_id"], inst["project_id"])
            await db.event_start(conn, uuid, request_id, flow.event, self.host)
            await db.notify(conn, "instance.power_off.start", {"host": self.host, "reason": source},
                            publisher_id=pub, instance_uuids=[uuid], request_id=request_id)
        try:
            await self.driver.power_off(uuid, 0 if force else self.config.compute.shutdown_timeout)
        except InstanceNotFound:
            pass
        except Exception as exc:
            await self._power_action_failed(uuid, request_id, flow, exc)
            return
        info = await self.driver.get_info(uuid)
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await db.compare_and_set(conn, uuid, expect_task_state=POWERING_OFF, task_state=None,
                                         vm_state=states.STOPPED,
                                         power_state=info.power_state if info else power_state.NOSTATE)
            except db.StateConflict as conflict:
                await self._power_action_superseded(conn, uuid, request_id, flow, conflict)
                return
            await db.event_finish(conn, uuid, request_id, flow.event, details=f"power state sync ({source})")
            await db.finish_action(conn, uuid, request_id)
            await db.notify(conn, "instance.power_off.end", {"host": self.host, "state": states.STOPPED},
                            publisher_id=pub, instance_uuids=[uuid], request_id=request_id)
        log.info("instance_stopped_by_sync", instance_uuid=uuid, source=source)

    # -- recovery helpers -------------------------------------------------------------
    async def reconcile_power_action(self, inst: asyncpg.Record, request_id: str) -> str | None:
        """A power action was cut off by a restart: set the state the domain really is in. Under
        the instance's lock, as a power sync takes it: None, and nothing written, when the row
        read before recovery is no longer in that task state (whoever changed it settled it)."""
        uuid = str(inst["uuid"])
        task = inst["task_state"]
        async with self.locks.lock(uuid):
            async with self.pool.acquire() as conn:
                now = await db.get(conn, uuid)
            if now is None or now["task_state"] != task:
                log.info("power_action_settled_meanwhile", instance_uuid=uuid, task_state=task,
                         now_vm_state=now and now["vm_state"], now_task_state=now and now["task_state"])
                return None
            info = await self.driver.get_info(uuid)
            saved = bool(info) and info.power_state == power_state.SHUTDOWN and await self.driver.has_saved_state(uuid)
            vm_state = vm_state_for(info.power_state if info else None, saved)
            power = info.power_state if info else power_state.NOSTATE
            note = f"interrupted by a restart in task_state {task}; domain is {'missing' if info is None else power}"
            async with self.pool.acquire() as conn, conn.transaction():
                await db.compare_and_set(conn, uuid, expect_task_state=task, task_state=None, vm_state=vm_state,
                                         power_state=power)
                if info is None:
                    await db.add_fault(conn, uuid, 500, f"Domain of instance {uuid} not found on {self.host}", note,
                                       self.host)
                for e in {f.event for f in FLOWS.values() if task in f.steps}:
                    await db.event_finish(conn, uuid, request_id, e, "Error", details=note)
                await db.event_finish(conn, uuid, request_id, RECOVER_EVENT, details=f"{note}; now {vm_state}")
                await db.finish_action(conn, uuid, request_id)
        return vm_state
