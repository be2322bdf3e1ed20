"""Power actions and power-state sync on a compute host (mixed into ComputeManager).

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
import shutil
import traceback
import uuid as uuidlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from novalite.compute import states
from novalite.db import instances as db
from novalite.virt.driver import InstanceNotFound

if TYPE_CHECKING:
    from novalite.compute.manager import ComputeManager

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


def vm_state_for(power_state: int | None, saved: bool = False) -> str:
    """The vm_state a domain's real power state stands for (None: no domain → error)."""
    if power_state is None:
        return states.ERROR
    if power_state == states.RUNNING:
        return states.ACTIVE
    if power_state == states.PAUSED_POWER:
        return states.PAUSED
    if saved:
        return states.SUSPENDED
    return states.STOPPED


class PowerActionsMixin:
    """Host side of power actions, lifecycle events and the periodic power sync."""

    # -- casts from the compute API -------------------------------------------------
    def cast_power_action(self: ComputeManager, uuid: str, action: str, request_id: str) -> None:
        """Cast: run a power action on this host (the instance is already in its task state)."""
        self._spawn(self._power_action(uuid, action, request_id))

    async def _power_action(self: ComputeManager, uuid: str, action: str, request_id: str) -> None:
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
                        power_state=info.power_state if info else states.NOSTATE,
                    )
                except db.StateConflict as conflict:
                    await self._power_action_superseded(conn, uuid, request_id, flow, conflict)
                    return
                await db.event_finish(conn, uuid, request_id, flow.event)
                await db.finish_action(conn, uuid, request_id)
                await db.notify(conn, f"instance.{flow.notification}.end", {"host": self.host, "state": flow.vm_state},
                                publisher_id=pub, instance_uuids=[uuid], request_id=request_id)
            log.info("power_action_done", action=action, vm_state=flow.vm_state)

    async def _drive(self: ComputeManager, uuid: str, action: str, force: bool = False) -> None:
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
        actual = conflict.actual
        what = "deleted" if actual is None or actual["deleted"] else f"{actual['vm_state']}/{actual['task_state']}"
        log.info("power_action_superseded", action_event=flow.event, now=what)
        await db.event_finish(conn, uuid, request_id, flow.event, "Error", details=f"instance moved on: {what}")
        await db.finish_action(conn, uuid, request_id)

    async def _power_action_failed(
        self: ComputeManager, uuid: str, request_id: str, flow: PowerFlow, exc: Exception
    ) -> None:
        """Like Nova's reverts_task_state + wrap_instance_fault: fault, task_state back to None, real power state."""
        reason = f"{type(exc).__name__}: {exc}"
        try:
            info = await self.driver.get_info(uuid)
        except Exception:
            info = None
        async with self.pool.acquire() as conn, conn.transaction():
            await db.add_fault(conn, uuid, 500, reason, traceback.format_exc(limit=5), self.host)
            await db.event_finish(conn, uuid, request_id, flow.event, "Error", traceback=traceback.format_exc(limit=5),
                                  details=reason)
            await db.finish_action(conn, uuid, request_id)
            try:
                await db.compare_and_set(conn, uuid, expect_task_state=list(flow.steps), task_state=None,
                                         power_state=info.power_state if info else states.NOSTATE)
            except db.StateConflict:
                pass
            await db.notify(conn, f"instance.{flow.notification}.error", {"host": self.host, "fault": reason},
                            publisher_id=f"nova-compute:{self.host}", instance_uuids=[uuid], request_id=request_id,
                            priority="ERROR")

    # -- power-state sync ---------------------------------------------------------------
    def start_power_sync(self: ComputeManager) -> None:
        """Subscribe to lifecycle events and start the periodic sync (called from start())."""
        self._sync_pending: set[str] = set()
        self._workers.append(asyncio.create_task(self._power_sync_loop(), name=f"power-sync-{self.host}"))

    async def _power_sync_loop(self: ComputeManager) -> None:
        try:
            await self.driver.watch_lifecycle(self._on_lifecycle_event)
        except Exception:
            log.exception("lifecycle_subscribe_failed", host=self.host)
        while True:
            try:
                await self.sync_power_states()
            except Exception:
                log.exception("power_sync_failed", host=self.host)
            await asyncio.sleep(self.config.compute.power_sync_interval)

    def _on_lifecycle_event(self: ComputeManager, uuid: str, power_state: int, event: str) -> None:
        log.debug("lifecycle_event", host=self.host, instance_uuid=uuid, lifecycle=event, power_state=power_state)
        if uuid in self._sync_pending:
            return  # a sync of this instance is queued and will read the latest state
        if self.locks.held(uuid):
            return  # our own build or action caused it and sets the state itself (as the periodic sync does)
        self._sync_pending.add(uuid)
        self._spawn(self._sync_from_event(uuid, event))

    async def _sync_from_event(self: ComputeManager, uuid: str, event: str) -> None:
        try:
            async with self.locks.lock(uuid):
                self._sync_pending.discard(uuid)
                async with self.pool.acquire() as conn:
                    inst = await db.get(conn, uuid)
                if inst is None or inst["host"] != self.host:
                    return
                info = await self.driver.get_info(uuid)
                await self._sync_instance_power_state(inst, info.power_state if info else states.NOSTATE,
                                                      source=f"lifecycle event {event}")
        except Exception:
            self._sync_pending.discard(uuid)
            log.exception("lifecycle_sync_failed", instance_uuid=uuid)

    async def sync_power_states(self: ComputeManager) -> dict[str, int]:
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
                await self._sync_instance_power_state(inst, domains.get(uuid, states.NOSTATE), source="periodic sync")
        unknown = sorted(set(domains) - known)
        if unknown:
            await self._handle_unknown_domains(unknown)
        return domains

    async def _handle_unknown_domains(self: ComputeManager, uuids: list[str]) -> None:
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

    async def _sync_instance_power_state(self: ComputeManager, inst: asyncpg.Record, vm_power: int, source: str) -> None:
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
        off = vm_power in (states.SHUTDOWN, states.CRASHED)
        if vm_state == states.ACTIVE:
            if off or vm_power == states.SUSPENDED_POWER:
                log.warning("instance_shutdown_by_itself", source=source, instance_uuid=uuid,
                            detail="Instance shutdown by itself. Calling the stop API.")
                await self._stop_by_sync(inst, force=False, source=source)
            elif vm_power == states.PAUSED_POWER:
                log.warning("instance_paused_unexpectedly", instance_uuid=uuid)
            elif vm_power == states.NOSTATE:
                log.warning("instance_unexpectedly_not_found", instance_uuid=uuid, source=source)
        elif vm_state == states.STOPPED:
            if vm_power not in (states.NOSTATE, states.SHUTDOWN, states.CRASHED):
                log.warning("instance_not_stopped", instance_uuid=uuid, source=source,
                            detail="Instance is not stopped. Calling the stop API.")
                await self._stop_by_sync(inst, force=True, source=source)
        elif vm_state == states.PAUSED and off:
            log.warning("paused_instance_shutdown_by_itself", instance_uuid=uuid, source=source)
            await self._stop_by_sync(inst, force=True, source=source)

    async def _stop_by_sync(self: ComputeManager, inst: asyncpg.Record, force: bool, source: str) -> None:
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
                                         power_state=info.power_state if info else states.NOSTATE)
            except db.StateConflict as conflict:
                await self._power_action_superseded(conn, uuid, request_id, flow, conflict)
                return
            await db.event_finish(conn, uuid, request_id, flow.event, details=f"power state sync ({source})")
            await db.finish_action(conn, uuid, request_id)
            await db.notify(conn, "instance.power_off.end", {"host": self.host, "state": states.STOPPED},
                            publisher_id=pub, instance_uuids=[uuid], request_id=request_id)
        log.info("instance_stopped_by_sync", instance_uuid=uuid, source=source)

    # -- recovery helpers -------------------------------------------------------------
    async def reconcile_power_action(self: ComputeManager, inst: asyncpg.Record, request_id: str) -> str:
        """A power action was cut off by a restart: set the state the domain really is in."""
        uuid = str(inst["uuid"])
        info = await self.driver.get_info(uuid)
        saved = bool(info) and info.power_state == states.SHUTDOWN and await self.driver.has_saved_state(uuid)
        vm_state = vm_state_for(info.power_state if info else None, saved)
        power = info.power_state if info else states.NOSTATE
        task = inst["task_state"]
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

    async def clean_partial_build(self: ComputeManager, uuid: str) -> None:
        """Remove whatever a cut-off build left on this host: the domain and the instance directory."""
        undo = getattr(self, "_undo_build", None)
        if undo is not None:
            await undo(uuid)  # the build's own cleanup: domain and files (ports move with the instance)
            return
        await self.driver.destroy(uuid)
        path = self.instances_dir / uuid
        if path.exists():
            await asyncio.to_thread(shutil.rmtree, path, True)

    def install_drill_delays(self: ComputeManager) -> None:
        """Crash drills: hold instances in the configured stages (compute.drill_stage_delays)."""
        delays: dict[str, float] = dict(self.config.compute.drill_stage_delays)
        if not delays:
            return
        # before_step(uuid, next) runs before the step that LEAVES a stage.
        leaving = {None: "scheduling", states.NETWORKING: "none", states.BLOCK_DEVICE_MAPPING: "networking",
                   states.SPAWNING: "block_device_mapping"}

        async def before_step(uuid: str, new: str | None) -> None:
            stage = leaving.get(new)
            if stage in delays:
                await asyncio.sleep(delays[stage])

        self.before_step = before_step
        if "spawning" in delays:
            # Held after the domain started, before the build records ACTIVE.
            spawn = self.driver.spawn

            async def slow_spawn(guest: Any, _spawn: Any = spawn) -> None:
                await _spawn(guest)
                await asyncio.sleep(delays["spawning"])

            self.driver.spawn = slow_spawn  # type: ignore[method-assign]
        if "deleting" in delays:
            destroy = self.driver.destroy

            async def slow_destroy(uuid: str, _destroy: Any = destroy) -> None:
                await asyncio.sleep(delays["deleting"])
                await _destroy(uuid)

            self.driver.destroy = slow_destroy  # type: ignore[method-assign]
        log.warning("drill_delays_installed", host=self.host, delays=delays)
