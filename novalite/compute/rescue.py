"""Rescue and unrescue (Nova's ``rescue``/``unrescue`` actions), API side and host side.

API side (:class:`RescueCheck`), as Nova's ``compute/api.py`` ``rescue``: a
rescue image named in the request must be one the caller may see (any other,
or a volume-snapshot image, is "Requested rescue image '...' is not
supported"); a volume-backed server cannot be rescued (before 2.87; from 2.87
Nova's stable device rescue needs a host with the COMPUTE_RESCUE_BFV trait,
which novalite's hosts do not offer). Then one transaction moves task_state
None → ``rescuing`` and starts the ``rescue`` action. ``unrescue`` moves a
RESCUED server to ``unrescuing``.

Host side (:class:`RescueManager`, held by each ComputeManager as
``manager.rescue``), Nova's libvirt legacy rescue layout: the guest is shut
down (cleanly, as Nova's ``_power_off_instance``), its domain is replaced by
one that boots a fresh ``disk.rescue`` made from the rescue image (vda, not
resized), with the server's own root disk as vdb and, when the server has a
config drive, a new ``disk.config.rescue`` holding the rescue password; the
kernel and ramdisk are the server's own (the host's cached image volumes),
as Nova's rescue uses ``instance.kernel_id``. vm_state RESCUED, status RESCUE.
Unrescue destroys the rescue domain, defines and starts the server's own
guest again (disks, volumes, config drive, ports, all read from the database
as at the build) and removes the ``*.rescue`` volumes; vm_state ACTIVE.

The rescue password travels only in the cast, never through Postgres.
After a crash (:mod:`novalite.compute.recovery`): ``rescuing`` is rolled back
(the server's own guest restored, its vm_state unchanged: the rescue password
is lost, so a rescue redone without it would be of no use), ``unrescuing`` is
finished.
"""

from __future__ import annotations

import traceback
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from novalite import exception
from novalite.compute import states
from novalite.compute.disks import PreparedDisks, prepare_local_disks
from novalite.compute.failures import (
    Failure,
    Notification,
    fail_instance,
    finish_superseded,
    moved_on,
)
from novalite.context import RequestContext
from novalite.db import images as images_db
from novalite.db import instances as db
from novalite.db import volumes as volumes_db
from novalite.virt import power_state
from novalite.virt.driver import DiskSpec

if TYPE_CHECKING:
    from novalite.compute.manager import ComputeManager

log = structlog.get_logger(__name__)

# task_state, as Nova names them (nova/compute/task_states.py)
RESCUING = "rescuing"
UNRESCUING = "unrescuing"
RESCUE_TASK_STATES = (RESCUING, UNRESCUING)

RESCUE_VM_STATES = (states.ACTIVE, states.STOPPED, states.ERROR)  # Nova's check_instance_state for rescue

RESCUE_EVENT = "compute_rescue_instance"
UNRESCUE_EVENT = "compute_unrescue_instance"
RECOVER_EVENT = "compute_recover_instance"

RESCUE_SUFFIX = ".rescue"


class RescueCheck:
    """The checks and the state change of an accepted rescue or unrescue (Nova's compute API)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def accept_rescue(
        self, ctx: RequestContext, inst: asyncpg.Record, rescue_image_ref: str | None, allow_bfv_rescue: bool
    ) -> str:
        """Validate, move the instance to ``rescuing`` and start the action; return the rescue image id.

        The caller has checked the lock and the instance's state, and casts to the host afterwards.
        """
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn:
            props: dict[str, Any] = {}
            if rescue_image_ref:
                image = await images_db.get_visible(conn, rescue_image_ref, ctx.project_id, ctx.is_admin)
                if image is None:
                    log.warning("rescue_image_not_found", instance_uuid=uuid, image_id=rescue_image_ref)
                    raise exception.Invalid(f"Requested rescue image '{rescue_image_ref}' is not supported")
                props = dict(image["properties"] or {})
                if props.get("img_block_device_mapping"):
                    raise exception.Invalid(f"Requested rescue image '{rescue_image_ref}' is not supported")
                image_id = str(image["id"])
            else:
                props = dict(((inst["request_spec"] or {}).get("image") or {}).get("properties") or {})
                image_id = inst["image_ref"] or ""
            # Nova's is_volume_backed_instance: no image, or a root BDM that is a volume.
            volume_root = any(b["boot_index"] == 0 for b in await volumes_db.volume_bdms(conn, uuid))
            if not inst["image_ref"] or volume_root:
                if allow_bfv_rescue and "hw_rescue_bus" in props and "hw_rescue_device" in props:
                    reason = "Host unable to rescue a volume-backed instance"
                else:
                    reason = "Cannot rescue a volume-backed instance"
                raise exception.Invalid(f"Instance {uuid} cannot be rescued: {reason}")
        await self._to_task(ctx, inst, "rescue", RESCUE_VM_STATES, RESCUING)
        log.info("rescue_accepted", instance_uuid=uuid, image_id=image_id, host=inst["host"])
        return image_id

    async def accept_unrescue(self, ctx: RequestContext, inst: asyncpg.Record) -> None:
        await self._to_task(ctx, inst, "unrescue", (states.RESCUED,), UNRESCUING)
        log.info("unrescue_accepted", instance_uuid=str(inst["uuid"]), host=inst["host"])

    async def _to_task(
        self, ctx: RequestContext, inst: asyncpg.Record, action: str, vm_states: tuple[str, ...], task: str
    ) -> None:
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await db.compare_and_set(conn, uuid, expect_vm_state=list(vm_states), expect_task_state=None,
                                         task_state=task)
            except db.StateConflict as conflict:
                actual = conflict.actual
                if actual is None or actual["deleted"]:
                    raise exception.NotFound(f"Instance {uuid} could not be found.") from None
                attr, value = (("vm_state", actual["vm_state"]) if actual["vm_state"] not in vm_states
                               else ("task_state", actual["task_state"]))
                raise exception.Conflict(f"Cannot '{action}' instance {uuid} while it is in {attr} {value}") from None
            await db.start_actions(conn, [uuid], action, ctx.request_id, ctx.user_id, ctx.project_id)


class RescueManager:
    """Host side of rescue and unrescue on one compute host."""

    def __init__(self, manager: ComputeManager) -> None:
        """``manager`` is the host's ComputeManager: its driver, pool, locks, disks and guest design."""
        self.manager = manager
        self.host = manager.host
        self.driver = manager.driver
        self.pool = manager.pool
        self.locks = manager.locks
        self.config = manager.config
        self.publisher = f"nova-compute:{manager.host}"

    # -- casts from the compute API ---------------------------------------------------
    def cast_rescue(self, uuid: str, request_id: str, password: str | None, image_id: str) -> None:
        """Cast: rescue an instance the compute API moved to ``rescuing`` (the password only travels here)."""
        self.manager.spawn_task(self.rescue_instance(uuid, request_id, password, image_id))

    def cast_unrescue(self, uuid: str, request_id: str) -> None:
        """Cast: unrescue an instance in ``unrescuing`` (also how recovery finishes one)."""
        self.manager.spawn_task(self.unrescue_instance(uuid, request_id))

    def cast_roll_back_rescue(self, uuid: str, request_id: str) -> None:
        """Cast: a rescue cut off by a restart goes back to the server's own guest (recovery)."""
        self.manager.spawn_task(self.roll_back_rescue(uuid, request_id))

    # -- rescue ---------------------------------------------------------------------------
    async def rescue_instance(self, uuid: str, request_id: str, password: str | None, image_id: str) -> None:
        """Nova's rescue_instance: power off, the rescue guest in place of the server's own, RESCUED."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        async with self.locks.lock(uuid):
            async with self.pool.acquire() as conn:
                await db.event_start(conn, uuid, request_id, RESCUE_EVENT, self.host)
                await db.notify(conn, "instance.rescue.start", {"host": self.host, "rescue_image_ref": image_id},
                                publisher_id=self.publisher, instance_uuids=[uuid], request_id=request_id)
            try:
                async with self.pool.acquire() as conn:
                    inst = await db.compare_and_set(conn, uuid, expect_task_state=RESCUING)  # still ours?
                info = await self.driver.get_info(uuid)
                if info is not None and info.power_state == power_state.RUNNING:
                    await self.driver.power_off(uuid, self.config.compute.shutdown_timeout)
                prepared = await self._rescue_disks(inst, image_id, password)
                await self.driver.destroy(uuid)
                await self.driver.spawn(self.manager.guest_spec(inst, await self._nics(uuid), prepared))
                info = await self.driver.get_info(uuid)
                async with self.pool.acquire() as conn, conn.transaction():
                    await db.compare_and_set(
                        conn, uuid, expect_task_state=RESCUING, task_state=None, vm_state=states.RESCUED,
                        power_state=info.power_state if info else power_state.NOSTATE, launched_at=datetime.now(UTC),
                    )
                    await db.event_finish(conn, uuid, request_id, RESCUE_EVENT)
                    await db.finish_action(conn, uuid, request_id)
                    await db.notify(conn, "instance.rescue.end",
                                    {"host": self.host, "state": states.RESCUED, "rescue_image_ref": image_id},
                                    publisher_id=self.publisher, instance_uuids=[uuid], request_id=request_id)
                log.info("instance_rescued", rescue_image=image_id)
            except db.StateConflict as conflict:
                await self._superseded(uuid, request_id, RESCUE_EVENT, conflict)
            except Exception as exc:
                log.warning("rescue_failed", error=str(exc))
                tb = traceback.format_exc(limit=5)
                # Nova: InstanceNotRescuable "Driver Error", vm_state ERROR. The server's own guest is put
                # back first, so that nothing of the rescue stays on the host.
                await self._restore_quietly(uuid)
                reason = f"Instance {uuid} cannot be rescued: Driver Error: {exc}"
                async with self.pool.acquire() as conn, conn.transaction():
                    await fail_instance(
                        conn, uuid, request_id, Failure(reason, tb, self.host, traceback=tb), events=[RESCUE_EVENT],
                        expect={"expect_task_state": RESCUING},
                        notification=Notification("instance.rescue.error", {"host": self.host, "fault": reason},
                                                  self.publisher),
                    )

    async def _rescue_disks(self, inst: asyncpg.Record, image_id: str, password: str | None) -> PreparedDisks:
        """disk.rescue (vda) from the rescue image, the server's own root disk (vdb), the rescue config drive."""
        m = self.manager
        uuid = str(inst["uuid"])
        own = await prepare_local_disks(
            store=m.store, uuid=uuid, image={"id": inst["image_ref"] or ""},
            kernel_id=inst["kernel_id"], ramdisk_id=inst["ramdisk_id"], flavor=inst["flavor"], write_files=False,
        )
        out = PreparedDisks(disks=[DiskSpec(path=m.store.path(uuid, f"disk{RESCUE_SUFFIX}"), target_dev="vda"),
                                   DiskSpec(path=own.disks[0].path, target_dev="vdb")])
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT disk_format, properties FROM images WHERE id::text = $1", image_id)
        props = dict(row["properties"] or {}) if row else {}
        own_props = ((inst["request_spec"] or {}).get("image") or {}).get("properties") or {}
        if inst["kernel_id"]:
            out.kernel = own.kernel  # the server's kernel and ramdisk: the host's cached image volumes
            out.cmdline = str(props.get("os_command_line") or own_props.get("os_command_line") or "console=ttyS0")
            out.ramdisk = own.ramdisk
        if not m.simulated:
            await _remove_rescue_volumes(m, uuid)
            # Not resized to the flavor: Nova's rescue disk keeps the image's size.
            await m.store.overlay(uuid, f"disk{RESCUE_SUFFIX}", image_id, 0)
            for ref in (inst["kernel_id"], inst["ramdisk_id"]):
                if ref:
                    await m.store.image(ref)
        ports = await m.network_api.ports_for_instance(uuid) if m.network_api is not None else []
        await m.write_config_drive(inst, ports, out, password, name=f"disk.config{RESCUE_SUFFIX}", files=False)
        return out

    # -- unrescue -----------------------------------------------------------------------
    async def unrescue_instance(self, uuid: str, request_id: str) -> None:
        """Nova's unrescue_instance: the server's own guest again, rescue files gone, ACTIVE."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        async with self.locks.lock(uuid):
            async with self.pool.acquire() as conn:
                await db.event_start(conn, uuid, request_id, UNRESCUE_EVENT, self.host)
                await db.notify(conn, "instance.unrescue.start", {"host": self.host}, publisher_id=self.publisher,
                                instance_uuids=[uuid], request_id=request_id)
            try:
                async with self.pool.acquire() as conn:
                    inst = await db.compare_and_set(conn, uuid, expect_task_state=UNRESCUING)
                await self._restore(inst, running=True)
                info = await self.driver.get_info(uuid)
                async with self.pool.acquire() as conn, conn.transaction():
                    await db.compare_and_set(
                        conn, uuid, expect_task_state=UNRESCUING, task_state=None, vm_state=states.ACTIVE,
                        power_state=info.power_state if info else power_state.NOSTATE,
                    )
                    await db.event_finish(conn, uuid, request_id, UNRESCUE_EVENT)
                    await db.finish_action(conn, uuid, request_id)
                    await db.notify(conn, "instance.unrescue.end", {"host": self.host, "state": states.ACTIVE},
                                    publisher_id=self.publisher, instance_uuids=[uuid], request_id=request_id)
                log.info("instance_unrescued")
            except db.StateConflict as conflict:
                await self._superseded(uuid, request_id, UNRESCUE_EVENT, conflict)
            except Exception as exc:
                log.warning("unrescue_failed", error=str(exc))
                tb = traceback.format_exc(limit=5)
                reason = f"{type(exc).__name__}: {exc}"
                async with self.pool.acquire() as conn, conn.transaction():
                    await fail_instance(
                        conn, uuid, request_id, Failure(reason, tb, self.host, traceback=tb), events=[UNRESCUE_EVENT],
                        expect={"expect_task_state": UNRESCUING},
                        notification=Notification("instance.unrescue.error", {"host": self.host, "fault": reason},
                                                  self.publisher),
                    )

    async def _restore(self, inst: asyncpg.Record, running: bool) -> None:
        """Replace whatever domain there is by the server's own guest; remove the rescue files.

        The guest is designed from the database as the build made it: local disks (their files are
        kept), the volumes in use, the config drive the build wrote, the same ports.
        """
        m = self.manager
        uuid = str(inst["uuid"])
        image = dict((inst["request_spec"] or {}).get("image") or {}, id=inst["image_ref"] or "")
        prepared = await prepare_local_disks(
            store=m.store, uuid=uuid, image=image, kernel_id=inst["kernel_id"],
            ramdisk_id=inst["ramdisk_id"], flavor=inst["flavor"], write_files=False,
        )
        if m.volume_build is not None:
            await m.volume_build.attached_disks(uuid, prepared)
        if m.wants_config_drive(inst) and (m.simulated or await m.store.exists(uuid, "disk.config")):
            prepared.add_config_drive(m.store.path(uuid, "disk.config"))
        await self.driver.destroy(uuid)
        await self.driver.spawn(m.guest_spec(inst, await self._nics(uuid), prepared))
        if not running:
            await self.driver.power_off(uuid, 0)
        await _remove_rescue_volumes(m, uuid)

    async def _restore_quietly(self, uuid: str) -> None:
        try:
            async with self.pool.acquire() as conn:
                inst = await db.get(conn, uuid)
            if inst is not None:
                await self._restore(inst, running=inst["power_state"] == power_state.RUNNING)
        except Exception:
            log.exception("rescue_restore_failed")

    async def _nics(self, uuid: str) -> list:
        m = self.manager
        ports = await m.network_api.ports_for_instance(uuid) if m.network_api is not None else []
        return [p.nic() for p in ports]

    async def _superseded(self, uuid: str, request_id: str, event: str, conflict: db.StateConflict) -> None:
        what = moved_on(conflict)
        log.info("rescue_superseded", action_event=event, now=what)
        async with self.pool.acquire() as conn:
            await finish_superseded(conn, uuid, request_id, event, what)

    # -- recovery ---------------------------------------------------------------------------
    async def roll_back_rescue(self, uuid: str, request_id: str) -> None:
        """A restart cut a rescue off: the server's own guest back as it was (power included), task None."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        note = "interrupted by a restart while rescuing; rolled back to the server's own guest"
        async with self.locks.lock(uuid):
            try:
                async with self.pool.acquire() as conn:
                    inst = await db.compare_and_set(conn, uuid, expect_task_state=RESCUING)
                await self._restore(inst, running=inst["power_state"] == power_state.RUNNING)
                info = await self.driver.get_info(uuid)
                async with self.pool.acquire() as conn, conn.transaction():
                    await db.compare_and_set(conn, uuid, expect_task_state=RESCUING, task_state=None,
                                             power_state=info.power_state if info else power_state.NOSTATE)
                    await db.interrupt_open_events(conn, uuid, request_id, note)  # the rescue's event
                    await db.event_finish(conn, uuid, request_id, RECOVER_EVENT, details=note)
                    await db.finish_action(conn, uuid, request_id)
                log.info("rescue_rolled_back")
            except db.StateConflict as conflict:
                await self._superseded(uuid, request_id, RECOVER_EVENT, conflict)
            except Exception as exc:
                tb = traceback.format_exc(limit=5)
                reason = f"Rolling back the interrupted rescue of {uuid} failed: {type(exc).__name__}: {exc}"
                async with self.pool.acquire() as conn, conn.transaction():
                    await fail_instance(conn, uuid, request_id, Failure(reason, tb, self.host, traceback=tb),
                                        expect={"expect_task_state": RESCUING}, interrupt_open=True,
                                        events=[RECOVER_EVENT])


async def _remove_rescue_volumes(m: ComputeManager, uuid: str) -> None:
    """Every ``*.rescue`` volume of an instance (Nova's unrescue globs the same files)."""
    await m.store.remove(uuid, [f"{name}{RESCUE_SUFFIX}" for name in ("disk", "disk.config")])
