"""Compute API for server actions: state and lock checks, the task-state change, the cast.

Mirrors Nova's compute/api.py: ``check_instance_lock`` (a locked instance only
yields to admins), ``check_instance_state`` (allowed vm_states and task_states,
launched at least once), then one compare-and-set to the action's task state
in the same transaction as the instance action row, then a cast to the
instance's host (:mod:`novalite.compute.power`).  Lock, unlock and
os-resetState change only the database and finish at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from novalite import exception
from novalite.compute import power, states
from novalite.compute.evacuate import EVACUATE_VM_STATES, EvacuateCheck
from novalite.compute.image_actions import (
    IMAGE_BACKUP,
    IMAGE_SNAPSHOT_PENDING,
    SNAPSHOT_VM_STATES,
    ImageActionCheck,
    ImageRequest,
    is_volume_backed,
)
from novalite.compute.live_migration import LIVE_VM_STATES, MIGRATING, LiveMigrationCheck
from novalite.compute.rebuild import REBUILD_VM_STATES, REBUILDING, RebuildCheck, RebuildRequest
from novalite.compute.rescue import RESCUE_VM_STATES, RESCUING, UNRESCUING, RescueCheck
from novalite.compute.resize import (
    RESIZE_PREP,
    RESIZE_REVERTING,
    RESIZE_VM_STATES,
    RESIZED,
    ResizeCheck,
)
from novalite.compute.shelve import (
    SHELVE_VM_STATES,
    SHELVED_VM_STATES,
    SHELVING,
    SHELVING_OFFLOADING,
    UNSET,
    UNSHELVING,
    ShelveCheck,
)
from novalite.compute.volume_snapshot import ImageWriter, VolumeBackedSnapshot
from novalite.config import Config
from novalite.context import RequestContext
from novalite.db import instances as db
from novalite.db import migration_records as migrations
from novalite.volume.api import VolumeAPI

log = structlog.get_logger(__name__)

_LAUNCHED = object()


@dataclass(frozen=True)
class ActionSpec:
    """Which states an action starts from (Nova's check_instance_state) and where it goes."""

    name: str  # as Nova's messages name it: 'stop', 'reboot', ...
    action: str  # instance_actions.action
    vm_states: tuple[str, ...]
    task_states: tuple[str | None, ...]
    task_state: str
    must_have_launched: bool = True


SPECS: dict[str, ActionSpec] = {
    "stop": ActionSpec("stop", "stop", (states.ACTIVE, states.ERROR), (None,), power.POWERING_OFF),
    "start": ActionSpec("start", "start", (states.STOPPED,), (None,), power.POWERING_ON),
    "reboot_soft": ActionSpec("reboot", "reboot", (states.ACTIVE,), (None,), power.REBOOTING),
    "reboot_hard": ActionSpec(
        "reboot", "reboot", (states.ACTIVE, states.STOPPED, states.PAUSED, states.SUSPENDED, states.ERROR),
        power.ALLOW_REBOOT, power.REBOOTING_HARD,
    ),
    "pause": ActionSpec("pause", "pause", (states.ACTIVE,), (None,), power.PAUSING),
    "unpause": ActionSpec("unpause", "unpause", (states.PAUSED,), (None,), power.UNPAUSING),
    "suspend": ActionSpec("suspend", "suspend", (states.ACTIVE,), (None,), power.SUSPENDING),
    "resume": ActionSpec("resume", "resume", (states.SUSPENDED,), (None,), power.RESUMING),
    "rebuild": ActionSpec("rebuild", "rebuild", REBUILD_VM_STATES, (None,), REBUILDING),
    "createImage": ActionSpec("createImage", "createImage", SNAPSHOT_VM_STATES, (None,), IMAGE_SNAPSHOT_PENDING),
    "createBackup": ActionSpec("createBackup", "createBackup", SNAPSHOT_VM_STATES, (None,), IMAGE_BACKUP),
    "resize": ActionSpec("resize", "resize", RESIZE_VM_STATES, (None,), RESIZE_PREP),
    "migrate": ActionSpec("migrate", "migrate", RESIZE_VM_STATES, (None,), RESIZE_PREP),
    "evacuate": ActionSpec("evacuate", "evacuate", EVACUATE_VM_STATES, (None,), REBUILDING),
    "confirmResize": ActionSpec("confirmResize", "confirmResize", (RESIZED,), (None,), ""),
    "revertResize": ActionSpec("revertResize", "revertResize", (RESIZED,), (None,), RESIZE_REVERTING),
    "rescue": ActionSpec("rescue", "rescue", RESCUE_VM_STATES, (None,), RESCUING),
    "unrescue": ActionSpec("unrescue", "unrescue", (states.RESCUED,), (None,), UNRESCUING),
    "shelve": ActionSpec("shelve", "shelve", SHELVE_VM_STATES, (None,), SHELVING),
    "shelveOffload": ActionSpec("shelveOffload", "shelveOffload", (states.SHELVED,), (None,), SHELVING_OFFLOADING),
    "unshelve": ActionSpec("unshelve", "unshelve", SHELVED_VM_STATES, (None,), UNSHELVING),
    "live-migration": ActionSpec("os-migrateLive", "live-migration", LIVE_VM_STATES, (None,), MIGRATING),
    "force_complete": ActionSpec("force_complete", "live-migration-force-complete", (states.ACTIVE,), (MIGRATING,),
                                 ""),
    "abort": ActionSpec("abort live migration", "live-migration-cancel", LIVE_VM_STATES, (MIGRATING,), ""),
}


class InstanceInvalidState(exception.Conflict):
    """Nova's raise_http_conflict_for_instance_invalid_state message."""

    def __init__(self, action: str, uuid: str, attr: str, state: Any) -> None:
        if state is None:
            message = f"Instance {uuid} is in an invalid state for '{action}'"
        else:
            message = f"Cannot '{action}' instance {uuid} while it is in {attr} {state}"
        super().__init__(message)


def check_instance_lock(ctx: RequestContext, inst: asyncpg.Record) -> None:
    if inst["locked"] and not ctx.is_admin:
        raise exception.Conflict(f"Instance {inst['uuid']} is locked")


def check_instance_state(spec: ActionSpec, inst: asyncpg.Record) -> None:
    uuid = str(inst["uuid"])
    if inst["vm_state"] not in spec.vm_states:
        raise InstanceInvalidState(spec.name, uuid, "vm_state", inst["vm_state"])
    if inst["task_state"] not in spec.task_states:
        raise InstanceInvalidState(spec.name, uuid, "task_state", inst["task_state"])
    if spec.must_have_launched and not inst["launched_at"]:
        raise InstanceInvalidState(spec.name, uuid, "launched_at", None)


class ServerActions:
    """Power actions, rebuild, lock/unlock and reset-state for the API handlers."""

    def __init__(self, pool: asyncpg.Pool, computes: dict[str, Any], config: Config,
                 migrate_server: Callable[[str, str, bool], None] | None = None,
                 unshelve_instance: Callable[[str, str], None] | None = None,
                 volumes: VolumeAPI | None = None, images: ImageWriter | None = None,
                 evacuate_server: Callable[[str, str, str | None], None] | None = None,
                 live_migrate: Callable[[str, str, bool], None] | None = None) -> None:
        """``migrate_server`` is the conductor's resize cast (uuid, request_id, allow_same_host);
        ``evacuate_server`` its evacuation cast (uuid, request_id, admin_password);
        ``unshelve_instance`` casts an accepted unshelve to the conductor (it schedules offloaded servers);
        ``volumes`` and ``images`` (the image store) make volume-backed snapshots; ``live_migrate``
        casts an accepted live migration to the conductor's task (uuid, request_id, force)."""
        self.pool = pool
        self.computes = computes
        self.config = config
        self.rebuilds = RebuildCheck(pool, config)
        self.image_actions = ImageActionCheck(pool)
        self.resizes = ResizeCheck(pool, config)
        self.migrate_server = migrate_server
        self.evacuations = EvacuateCheck(pool, config)
        self.evacuate_server = evacuate_server
        self.rescues = RescueCheck(pool)
        self.shelves = ShelveCheck(pool)
        self.unshelve_instance = unshelve_instance
        self.lives = LiveMigrationCheck(pool)
        self.live_migrate_instance = live_migrate
        self.volume_snapshots = VolumeBackedSnapshot(pool, volumes, images) if volumes is not None else None

    def _host_of(self, ctx: RequestContext, inst: asyncpg.Record, spec: ActionSpec) -> Any:
        """The lock and state checks every host action makes first; the instance's compute manager."""
        check_instance_lock(ctx, inst)
        check_instance_state(spec, inst)
        compute = self.computes.get(inst["host"]) if inst["host"] else None
        if compute is None:
            raise exception.Conflict(f"Instance {inst['uuid']} is not ready")
        return compute

    async def rebuild(self, ctx: RequestContext, inst: asyncpg.Record, req: RebuildRequest) -> asyncpg.Record:
        """Check lock and state, accept the rebuild (image, flavor fit, quotas) and cast it to the host."""
        compute = self._host_of(ctx, inst, SPECS["rebuild"])
        row = await self.rebuilds.accept(ctx, inst, req)
        compute.cast_rebuild(str(inst["uuid"]), ctx.request_id, req.admin_password, req.preserve_ephemeral)
        return row

    async def create_image(self, ctx: RequestContext, inst: asyncpg.Record, req: ImageRequest) -> asyncpg.Record:
        """createImage/createBackup: state check (a lock does not stop them, as in Nova), the queued
        image and the task state, then the cast; returns the image row."""
        spec = SPECS["createBackup" if req.is_backup else "createImage"]
        check_instance_state(spec, inst)
        if not req.is_backup and self.volume_snapshots is not None:
            async with self.pool.acquire() as conn:
                volume_backed = await is_volume_backed(conn, inst)
            if volume_backed:  # Nova's snapshot_volume_backed: all in the API, no task state, no host
                return await self.volume_snapshots.snapshot(ctx, inst, req)
        compute = self.computes.get(inst["host"]) if inst["host"] else None
        if compute is None:
            raise exception.Conflict(f"Instance {inst['uuid']} is not ready")
        image = await self.image_actions.accept(ctx, inst, req)
        compute.snapshot.cast_snapshot(str(inst["uuid"]), ctx.request_id)
        return image

    async def resize(self, ctx: RequestContext, inst: asyncpg.Record, flavor_id: str,
                     auto_disk_config: bool | None) -> None:
        """Check lock and state, accept the resize (flavor, disk, quota) and cast it to the conductor."""
        self._host_of(ctx, inst, SPECS["resize"])
        if self.migrate_server is None:
            raise exception.Conflict(f"Instance {inst['uuid']} is not ready")
        await self.resizes.accept(ctx, inst, flavor_id, auto_disk_config)
        self.migrate_server(str(inst["uuid"]), ctx.request_id, self.config.compute.allow_resize_to_same_host)

    async def migrate(self, ctx: RequestContext, inst: asyncpg.Record, host: str | None) -> None:
        """Nova's cold migration (resize with the same flavor): checked like a resize, then the conductor
        schedules it away from its host (to ``host`` if named); VERIFY_RESIZE, confirm/revert as a resize."""
        self._host_of(ctx, inst, SPECS["migrate"])
        if self.migrate_server is None:
            raise exception.Conflict(f"Instance {inst['uuid']} is not ready")
        await self.resizes.accept_migrate(ctx, inst, host)
        self.migrate_server(str(inst["uuid"]), ctx.request_id, False)

    async def evacuate(self, ctx: RequestContext, inst: asyncpg.Record, host: str | None,
                       admin_password: str | None, stop: bool, force: bool = False) -> None:
        """Nova's evacuate (no lock check, as in Nova): the instance's host must be down; the conductor
        picks another host (or checks ``host``; ``force``: takes it without the filters) and the
        instance is rebuilt there from its image."""
        check_instance_state(SPECS["evacuate"], inst)
        if self.evacuate_server is None:
            raise exception.Conflict(f"Instance {inst['uuid']} is not ready")
        await self.evacuations.accept(ctx, inst, host, stop, force)
        self.evacuate_server(str(inst["uuid"]), ctx.request_id, admin_password)

    async def confirm_resize(self, ctx: RequestContext, inst: asyncpg.Record) -> None:
        """Nova's confirm_resize: the source host cleans up; the instance answers 204 at once."""
        check_instance_lock(ctx, inst)
        check_instance_state(SPECS["confirmResize"], inst)
        migration = await self.resizes.confirm(ctx, inst)
        source = self.computes.get(migration["source_compute"])
        if source is None:
            raise exception.Conflict(f"Instance {inst['uuid']} is not ready")
        source.resize.cast("confirm_resize", str(inst["uuid"]), ctx.request_id, migration["id"])

    async def revert_resize(self, ctx: RequestContext, inst: asyncpg.Record) -> None:
        """Nova's revert_resize: ``resize_reverting``, the destination undoes, the source restarts the guest."""
        check_instance_lock(ctx, inst)
        check_instance_state(SPECS["revertResize"], inst)
        migration = await self.resizes.revert(ctx, inst)
        dest = self.computes.get(migration["dest_compute"])
        if dest is None:
            raise exception.Conflict(f"Instance {inst['uuid']} is not ready")
        dest.resize.cast("revert_resize", str(inst["uuid"]), ctx.request_id, migration["id"])

    async def rescue(self, ctx: RequestContext, inst: asyncpg.Record, password: str | None,
                     rescue_image_ref: str | None, allow_bfv_rescue: bool) -> None:
        """Check lock and state, accept the rescue (image, volume-backed refusal) and cast it to the host."""
        compute = self._host_of(ctx, inst, SPECS["rescue"])
        image_id = await self.rescues.accept_rescue(ctx, inst, rescue_image_ref, allow_bfv_rescue)
        compute.rescue.cast_rescue(str(inst["uuid"]), ctx.request_id, password, image_id)

    async def unrescue(self, ctx: RequestContext, inst: asyncpg.Record) -> None:
        compute = self._host_of(ctx, inst, SPECS["unrescue"])
        await self.rescues.accept_unrescue(ctx, inst)
        compute.rescue.cast_unrescue(str(inst["uuid"]), ctx.request_id)

    async def shelve(self, ctx: RequestContext, inst: asyncpg.Record) -> None:
        """Nova's shelve: lock and state, the ``<name>-shelved`` image, ``shelving``, the cast."""
        compute = self._host_of(ctx, inst, SPECS["shelve"])
        await self.shelves.accept_shelve(ctx, inst)
        compute.shelve.cast_shelve(str(inst["uuid"]), ctx.request_id)

    async def shelve_offload(self, ctx: RequestContext, inst: asyncpg.Record) -> None:
        compute = self._host_of(ctx, inst, SPECS["shelveOffload"])
        await self.shelves.accept_offload(ctx, inst)
        compute.shelve.cast_offload(str(inst["uuid"]), ctx.request_id)

    async def unshelve(self, ctx: RequestContext, inst: asyncpg.Record, new_az: Any = UNSET,
                       host: str | None = None, authorize_host: Callable[[], None] | None = None) -> None:
        """Nova's unshelve: lock and state, zone and host checks, ``unshelving``, the cast to the conductor."""
        check_instance_lock(ctx, inst)
        check_instance_state(SPECS["unshelve"], inst)
        if self.unshelve_instance is None:
            raise exception.Conflict(f"Instance {inst['uuid']} is not ready")
        await self.shelves.accept_unshelve(ctx, inst, new_az, host, authorize_host)
        self.unshelve_instance(str(inst["uuid"]), ctx.request_id)

    async def live_migrate(self, ctx: RequestContext, inst: asyncpg.Record, host: str | None,
                           force: bool = False) -> None:
        """Nova's live_migrate: lock and state (ACTIVE or PAUSED, no task), the host known,
        ``migrating`` with an accepted migration, the cast to the conductor (``force`` with a
        host: the scheduler's filters are skipped for it, its claim is still made)."""
        self._host_of(ctx, inst, SPECS["live-migration"])
        if self.live_migrate_instance is None:
            raise exception.Conflict(f"Instance {inst['uuid']} is not ready")
        await self.lives.accept(ctx, inst, host)
        self.live_migrate_instance(str(inst["uuid"]), ctx.request_id, bool(force and host))

    async def live_migrate_force_complete(self, ctx: RequestContext, inst: asyncpg.Record, migration_id: int) -> None:
        """Nova's live_migrate_force_complete: ACTIVE and migrating, the migration running; the source pauses it."""
        compute = self._host_of(ctx, inst, SPECS["force_complete"])
        await self.lives.in_progress(inst, migration_id, "force complete", (migrations.RUNNING,))
        await self.lives.record(ctx, str(inst["uuid"]), SPECS["force_complete"].action)
        await compute.live.force_complete(str(inst["uuid"]))

    async def live_migrate_abort(self, ctx: RequestContext, inst: asyncpg.Record, migration_id: int,
                                 abort_queued: bool) -> None:
        """Nova's live_migrate_abort: migrating; a running migration (2.65+: a queued or preparing one too)."""
        check_instance_lock(ctx, inst)
        if inst["task_state"] != MIGRATING:
            raise InstanceInvalidState("abort live migration", str(inst["uuid"]), "task_state", inst["task_state"])
        allowed = (migrations.RUNNING, migrations.QUEUED, migrations.PREPARING) if abort_queued \
            else (migrations.RUNNING,)
        await self.lives.in_progress(inst, migration_id, "abort live migration", allowed)
        compute = self.computes.get(inst["host"]) if inst["host"] else None
        if compute is None:
            raise exception.Conflict(f"Instance {inst['uuid']} is not ready")
        await self.lives.record(ctx, str(inst["uuid"]), SPECS["abort"].action)
        await compute.live.abort(str(inst["uuid"]), migration_id)

    async def power_action(self, ctx: RequestContext, inst: asyncpg.Record, kind: str) -> None:
        """stop/start/reboot_soft/reboot_hard/pause/unpause/suspend/resume: check, set task state, cast."""
        spec = SPECS[kind]
        uuid = str(inst["uuid"])
        compute = self._host_of(ctx, inst, spec)
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await db.compare_and_set(conn, uuid, expect_vm_state=list(spec.vm_states),
                                         expect_task_state=list(spec.task_states), task_state=spec.task_state)
            except db.StateConflict as conflict:
                # Someone moved it between our read and the update: answer from the fresh row.
                actual = conflict.actual
                if actual is None or actual["deleted"]:
                    raise exception.NotFound(f"Instance {uuid} could not be found.") from None
                check_instance_state(spec, actual)
                raise InstanceInvalidState(spec.name, uuid, "task_state", actual["task_state"]) from None
            await db.start_actions(conn, [uuid], spec.action, ctx.request_id, ctx.user_id, ctx.project_id)
        log.info("server_action_accepted", instance_uuid=uuid, action=kind, host=inst["host"])
        compute.power.cast_power_action(uuid, kind, ctx.request_id)

    async def lock(self, ctx: RequestContext, inst: asyncpg.Record, reason: str | None) -> None:
        """Nova's lock: owner or admin; an owner re-locking a locked server is a no-op."""
        uuid = str(inst["uuid"])
        is_owner = inst["project_id"] == ctx.project_id
        if inst["locked"] and is_owner:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await db.start_actions(conn, [uuid], "lock", ctx.request_id, ctx.user_id, ctx.project_id)
            await db.event_start(conn, uuid, ctx.request_id, "api_lock", None)
            await db.compare_and_set(conn, uuid, locked=True, locked_by="owner" if is_owner else "admin",
                                     locked_reason=reason)
            await db.event_finish(conn, uuid, ctx.request_id, "api_lock")
            await db.finish_action(conn, uuid, ctx.request_id)
            await db.notify(conn, "instance.lock", {"locked": True, "locked_reason": reason},
                            publisher_id="nova-api", instance_uuids=[uuid], request_id=ctx.request_id)

    @staticmethod
    def is_expected_locked_by(ctx: RequestContext, inst: asyncpg.Record) -> bool:
        expect = "owner" if inst["project_id"] == ctx.project_id else "admin"
        return not inst["locked_by"] or inst["locked_by"] == expect

    async def unlock(self, ctx: RequestContext, inst: asyncpg.Record) -> None:
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn, conn.transaction():
            await db.start_actions(conn, [uuid], "unlock", ctx.request_id, ctx.user_id, ctx.project_id)
            await db.event_start(conn, uuid, ctx.request_id, "api_unlock", None)
            await db.compare_and_set(conn, uuid, locked=False, locked_by=None, locked_reason=None)
            await db.event_finish(conn, uuid, ctx.request_id, "api_unlock")
            await db.finish_action(conn, uuid, ctx.request_id)
            await db.notify(conn, "instance.unlock", {"locked": False}, publisher_id="nova-api",
                            instance_uuids=[uuid], request_id=ctx.request_id)

    async def reset_state(self, ctx: RequestContext, inst: asyncpg.Record, vm_state: str) -> None:
        """os-resetState: an admin forces vm_state active|error and clears task_state."""
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn, conn.transaction():
            await db.start_actions(conn, [uuid], "resetState", ctx.request_id, ctx.user_id, ctx.project_id)
            await db.compare_and_set(conn, uuid, vm_state=vm_state, task_state=None)
            await db.finish_action(conn, uuid, ctx.request_id)
        log.info("instance_state_reset", instance_uuid=uuid, vm_state=vm_state)
