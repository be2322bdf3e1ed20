"""Resize: a server moves to another flavor, on its host or another, and waits in VERIFY_RESIZE.

Mirrors Nova's resize (compute/api.py ``resize``/``confirm_resize``/``revert_resize``, the
conductor's MigrationTask, compute/manager.py ``prep_resize`` → ``resize_instance`` →
``finish_resize``, ``confirm_resize``, ``revert_resize`` → ``finish_revert_resize``):

- API (:class:`ResizeCheck`): flavor found and different, no resize to a zero root disk,
  the image still fits, quota for the upsize deltas; then one transaction moves task_state
  None → ``resize_prep``, writes a ``pre-migrating`` migration record and starts the
  ``resize`` action; the conductor schedules the new flavor (the current host ignored
  unless ``[compute] allow_resize_to_same_host``) and claims the destination while the
  source's claim is carried over to the migration (:func:`scheduler.manager.claim_move`),
  so neither host is overcommitted in between.
- Destination ``prep_resize`` (notifications only: the claim is made) → source
  ``resize_instance``: ``resize_migrating``, the disk-down check (Nova's
  "Unable to resize disk down." rolls back to the source), the guest stopped and its domain
  removed, its volumes copied to the destination's pool, its Cinder volumes too (the originals
  stay on the source); ``resize_migrated`` with the host moved and the volume rows (hence the
  attachments) naming the destination's copies, in one transaction → destination ``finish_resize``:
  ``resize_finish`` with the new flavor on the row (so quota, counted from the
  instances table as Nova's legacy counting does, moves exactly here), disks grown, the
  guest defined with the new vCPUs and memory (started unless it was STOPPED) →
  vm_state ``resized`` (VERIFY_RESIZE), migration ``finished``.
- confirm: the source's leftovers (domain, ``<uuid>_resize``, its Cinder volume copies) and its
  claim go; ACTIVE (or STOPPED). revert (``resize_reverting``): the destination's guest and copy
  go, the source volumes are used again (the volume rows name them again, with the host, in one
  transaction; then the destination's copies go), the old flavor and host come back, the claim
  moves back. Keeping the originals until confirm/revert (as for the disks) is what makes every
  step re-runnable: a copy is never the only one until a row names it.

Disks move as volumes through libvirt streams (:meth:`InstanceStore.copy`: an overlay is
flattened by its host, downloaded and uploaded into the destination's pool), so the hosts
share nothing. Each stage is re-runnable, so recovery after a kill -9 resumes
the stage the instance was in (:func:`recover_resize`).
"""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from novalite import exception, quota
from novalite.compute import states
from novalite.compute.disks import GiB, PreparedDisks, prepare_local_disks
from novalite.compute.failures import Failure, fail_instance, finish_superseded
from novalite.config import Config
from novalite.context import RequestContext
from novalite.db import boot as lookups
from novalite.db import catalog
from novalite.db import instances as db
from novalite.db import migration_records as migrations
from novalite.db import volumes as volumes_db
from novalite.periodic import Periodic
from novalite.virt import power_state

if TYPE_CHECKING:
    from novalite.compute.manager import ComputeManager

log = structlog.get_logger(__name__)

# vm_state and task_states, as Nova names them
RESIZED = "resized"
RESIZE_PREP = "resize_prep"
RESIZE_MIGRATING = "resize_migrating"
RESIZE_MIGRATED = "resize_migrated"
RESIZE_FINISH = "resize_finish"
RESIZE_REVERTING = "resize_reverting"
RESIZE_TASK_STATES = (RESIZE_PREP, RESIZE_MIGRATING, RESIZE_MIGRATED, RESIZE_FINISH, RESIZE_REVERTING)
RESIZE_VM_STATES = (states.ACTIVE, states.STOPPED)

# action events (Nova's wrap_instance_event names)
CONDUCTOR_EVENT = "conductor_migrate_server"
PREP_EVENT = "compute_prep_resize"
RESIZE_EVENT = "compute_resize_instance"
FINISH_EVENT = "compute_finish_resize"
CONFIRM_EVENT = "compute_confirm_resize"
REVERT_EVENT = "compute_revert_resize"
FINISH_REVERT_EVENT = "compute_finish_revert_resize"
RECOVER_EVENT = "compute_recover_instance"

RESIZE_SUFFIX = "_resize"  # a same-host resize keeps the originals as <name>_resize until confirm/revert
MOVED = ("disk", "disk.eph0", "disk.swap", "disk.config")  # the volumes a resize takes along

FLAVOR_COLUMNS = ("vcpus", "memory_mb", "root_gb", "ephemeral_gb")


class ResizeError(Exception):
    """Nova's ResizeError raised inside InstanceFaultRollback: the instance goes back as it was."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Resize error: {reason}")


def flavor_columns(flavor: dict) -> dict[str, Any]:
    """The instance columns that follow its flavor (Nova's _set_instance_info)."""
    return {"flavor": flavor, **{c: flavor[c] for c in FLAVOR_COLUMNS}}


def _spec_with_flavor(inst: asyncpg.Record, flavor: dict) -> dict:
    """The instance's request spec with ``flavor``; a host named for one move is not kept for the next."""
    spec = dict(inst["request_spec"] or {})
    spec["flavor"] = flavor
    spec.pop("requested_destination", None)
    return spec


def upsize_deltas(new: dict, old: dict) -> dict[str, int]:
    """Nova's upsize_quota_delta: only what grows counts."""
    out = {}
    if new["vcpus"] > old["vcpus"]:
        out["cores"] = new["vcpus"] - old["vcpus"]
    if new["memory_mb"] > old["memory_mb"]:
        out["ram"] = new["memory_mb"] - old["memory_mb"]
    return out


async def check_upsize_quota(conn: asyncpg.Connection, config: Config, project_id: str, deltas: dict[str, int]
                             ) -> None:
    """Nova's _check_quota_for_upsize (legacy counting): 403 when the deltas pass a limit.
    Holds the project's usage row to the end of the caller's transaction, as a create does."""
    if not deltas:
        return
    limits = await quota.get_limits(conn, config.quota, project_id)
    used = await db.lock_usage(conn, project_id)
    overs = [r for r in ("cores", "ram") if r in deltas and limits[r] != quota.UNLIMITED
             and used[r] + deltas[r] > limits[r]]
    if overs:
        names = ", ".join(overs)
        raise exception.QuotaExceeded(
            f"Quota exceeded for {names}: Requested {', '.join(str(deltas[r]) for r in overs)}, but already used "
            f"{', '.join(str(used[r]) for r in overs)} of {', '.join(str(limits[r]) for r in overs)} {names}"
        )


def _conflict(action: str, uuid: str, actual: asyncpg.Record | None) -> exception.NovaliteException:
    if actual is None or actual["deleted"]:
        return exception.NotFound(f"Instance {uuid} could not be found.")
    if actual["task_state"] is not None:
        return exception.Conflict(f"Cannot '{action}' instance {uuid} while it is in task_state "
                                  f"{actual['task_state']}")
    return exception.Conflict(f"Cannot '{action}' instance {uuid} while it is in vm_state {actual['vm_state']}")


async def named_host(conn: asyncpg.Connection, host: str | None, missing: exception.NovaliteException
                     ) -> str | None:
    """The compute host a move names (by host or hypervisor hostname; None when none is named);
    ``missing`` is raised when there is no such host (each API answers it its own way)."""
    if host is None:
        return None
    node = await lookups.compute_node(conn, host)
    if node is None:
        raise missing
    return node["host"]


async def start_move(conn: asyncpg.Connection, ctx: RequestContext, inst: asyncpg.Record, action: str, *,
                     vm_states: tuple[str, ...], task_state: str, migration_type: str,
                     status: str = migrations.PRE_MIGRATING, new_flavor: dict | None = None, **updates: Any
                     ) -> asyncpg.Record:
    """The accepted move's state change, in the caller's transaction: task_state None → ``task_state``
    (from one of ``vm_states``), its migration record, its instance action; return the migration."""
    uuid = str(inst["uuid"])
    try:
        row = await db.compare_and_set(conn, uuid, expect_vm_state=list(vm_states), expect_task_state=None,
                                       task_state=task_state, progress=0, **updates)
    except db.StateConflict as conflict:
        raise _conflict(action, uuid, conflict.actual) from None
    flavor = dict(inst["flavor"])
    migration = await migrations.create(conn, row, flavor, new_flavor or flavor, ctx.request_id,
                                        migration_type=migration_type, status=status)
    await db.start_actions(conn, [uuid], action, ctx.request_id, ctx.user_id, ctx.project_id)
    return migration


# -- API side ---------------------------------------------------------------------


class ResizeCheck:
    """The checks and the state changes of resize, confirmResize and revertResize (Nova's compute API)."""

    def __init__(self, pool: asyncpg.Pool, config: Config) -> None:
        self.pool = pool
        self.config = config

    async def accept(
        self, ctx: RequestContext, inst: asyncpg.Record, flavor_id: str, auto_disk_config: bool | None
    ) -> asyncpg.Record:
        """Validate a resize, move the instance to ``resize_prep`` with a migration record; return the migration.

        The caller has checked the lock and the state (ACTIVE or STOPPED, no task) and casts to the conductor.
        """
        uuid = str(inst["uuid"])
        current = dict(inst["flavor"])
        spec_image = dict((inst["request_spec"] or {}).get("image") or {})
        props = dict(spec_image.get("properties") or {})
        if auto_disk_config and str(props.get("auto_disk_config", "")).lower() == "disabled":
            raise exception.Invalid(f"Requested image {inst['image_ref']} has automatic disk resize disabled.")
        volume_backed = not inst["image_ref"]
        async with self.pool.acquire() as conn:
            new = await catalog.get_flavor(conn, flavor_id, project_id=ctx.project_id, is_admin=ctx.is_admin)
        if new is None:
            raise exception.Invalid(f"Flavor {flavor_id} could not be found.")
        new = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in new.items()}
        if new["root_gb"] == 0 and current.get("root_gb") and not volume_backed:
            raise exception.Invalid("Server disk was unable to be resized because: "
                                    "Resize to zero disk flavor is not allowed.")
        same = new["flavorid"] == current.get("flavorid")
        if not same and new["disabled"]:
            raise exception.Invalid(f"Flavor {flavor_id} could not be found.")
        if same:
            raise exception.Invalid("When resizing, instances must change flavor!")
        self._check_image_fits(spec_image, new, volume_backed)
        spec = _spec_with_flavor(inst, inst["flavor"])
        async with self.pool.acquire() as conn, conn.transaction():
            await check_upsize_quota(conn, self.config, inst["project_id"], upsize_deltas(new, current))
            migration = await start_move(conn, ctx, inst, "resize", vm_states=RESIZE_VM_STATES,
                                         task_state=RESIZE_PREP, migration_type=migrations.RESIZE, new_flavor=new,
                                         auto_disk_config=bool(auto_disk_config), request_spec=spec)
        log.info("resize_accepted", instance_uuid=uuid, flavor=new["flavorid"], migration_id=migration["id"])
        return migration

    async def accept_migrate(self, ctx: RequestContext, inst: asyncpg.Record, host: str | None) -> asyncpg.Record:
        """Validate a cold migration (Nova's resize without a flavor): the named host exists and is not
        the current one; ``resize_prep`` with a ``migration`` record and the ``migrate`` action; the
        named host goes to the scheduler (its filters still run) through the request spec."""
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn:
            host = await named_host(conn, host, exception.Invalid(f"Compute host {host} could not be found."))
            if host is not None and host == inst["host"]:
                raise exception.Invalid("Cannot migrate to the host where the server exists.")
        spec = _spec_with_flavor(inst, inst["flavor"])
        if host is not None:
            spec["requested_destination"] = {"host": host}
        async with self.pool.acquire() as conn, conn.transaction():
            migration = await start_move(conn, ctx, inst, "migrate", vm_states=RESIZE_VM_STATES,
                                         task_state=RESIZE_PREP, migration_type=migrations.MIGRATION,
                                         request_spec=spec)
        log.info("migrate_accepted", instance_uuid=uuid, host=host, migration_id=migration["id"])
        return migration

    @staticmethod
    def _check_image_fits(image: dict, flavor: dict, volume_backed: bool) -> None:
        """Nova's _validate_flavor_image_nostatus for the new flavor (memory; the root disk if local)."""
        min_ram = int(image.get("min_ram") or 0)
        if min_ram and flavor["memory_mb"] < min_ram:
            raise exception.Invalid("Flavor's memory is too small for requested image.")
        if volume_backed or not flavor["root_gb"]:
            return
        disk = flavor["root_gb"] * 1024**3
        min_disk = int(image.get("min_disk") or 0)
        if min_disk and flavor["root_gb"] < min_disk:
            raise exception.Invalid(
                f"Flavor's disk is too small for requested image. Flavor disk is {disk} bytes, "
                f"minimum required by image is {min_disk * 1024**3} bytes."
            )

    async def confirm(self, ctx: RequestContext, inst: asyncpg.Record) -> asyncpg.Record:
        """finished → confirming and the ``confirmResize`` action; return the migration (cast to its source)."""
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn, conn.transaction():
            migration = await migrations.latest(conn, uuid, [migrations.FINISHED])
            if migration is None:
                raise exception.Invalid("Instance has not been resized.")
            try:
                migration = await migrations.set_status(conn, migration["id"], migrations.FINISHED,
                                                        migrations.CONFIRMING)
            except migrations.MigrationConflict:
                raise exception.Invalid("Instance has not been resized.") from None
            await db.start_actions(conn, [uuid], "confirmResize", ctx.request_id, ctx.user_id, ctx.project_id)
        return migration

    async def revert(self, ctx: RequestContext, inst: asyncpg.Record) -> asyncpg.Record:
        """Quota for a revert that grows, ``resize_reverting``, finished → reverting, the ``revertResize`` action."""
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn, conn.transaction():
            migration = await migrations.latest(conn, uuid, [migrations.FINISHED])
            if migration is None:
                raise exception.Invalid("Instance has not been resized.")
            await check_upsize_quota(conn, self.config, inst["project_id"],
                                     upsize_deltas(migration["old_flavor"], dict(inst["flavor"])))
            try:
                await db.compare_and_set(conn, uuid, expect_vm_state=RESIZED, expect_task_state=None,
                                         task_state=RESIZE_REVERTING)
            except db.StateConflict as conflict:
                raise _conflict("revertResize", uuid, conflict.actual) from None
            try:
                migration = await migrations.set_status(conn, migration["id"], migrations.FINISHED,
                                                        migrations.REVERTING)
            except migrations.MigrationConflict:
                raise exception.Invalid("Instance has not been resized.") from None
            await db.start_actions(conn, [uuid], "revertResize", ctx.request_id, ctx.user_id, ctx.project_id)
        return migration


# -- conductor side -----------------------------------------------------------------


def resize_request_spec(inst: asyncpg.Record, migration: asyncpg.Record, allow_same_host: bool) -> dict:
    """The scheduling request of a resize or cold migration: the new flavor, the source ignored unless
    same-host is allowed, the host a cold migration named (the filters still judge it). Volumes
    are no pin: they move with the disks."""
    spec = dict(inst["request_spec"] or {})
    wanted = (spec.pop("requested_destination", None) or {}).get("host")
    spec["flavor"] = migration["new_flavor"]
    spec["migration"] = {"id": migration["id"], "uuid": str(migration["uuid"]),
                         "source_compute": migration["source_compute"]}
    spec["ignore_hosts"] = [] if allow_same_host else [inst["host"]]
    spec["force_hosts"] = [wanted] if wanted else []
    spec.pop("scheduler_hints", None)  # same_host/different_host were for the boot
    spec.pop("retry", None)
    return spec


# -- host side ----------------------------------------------------------------------

Peers = Callable[[str], "ComputeManager | None"]


@dataclass(frozen=True, slots=True)
class _Stage:
    """One host-side stage: its event, the task states it starts from, and the one it moves to."""

    event: str
    expect: tuple[str, ...]
    task_state: str


class ResizeManager:
    """The host side of resize on one host (held as ``ComputeManager.resize``)."""

    def __init__(self, manager: ComputeManager, peers: Peers) -> None:
        """``peers`` finds another host's manager by name (the other end of a move)."""
        self.manager = manager
        self.host = manager.host
        self.pool = manager.pool
        self.locks = manager.locks
        self.config = manager.config
        self.driver = manager.driver
        self.peers = peers
        self.pub = f"nova-compute:{self.host}"
        self._confirmer: Periodic | None = None

    # -- casts -------------------------------------------------------------------
    def cast(self, method: str, uuid: str, request_id: str, migration_id: int) -> None:
        """Cast: run one stage (prep_resize, resize_instance, finish_resize, confirm_resize,
        revert_resize, finish_revert_resize) on this host as one of its tracked tasks."""
        self.manager.spawn_task(getattr(self, method)(uuid, request_id, migration_id))

    def _peer(self, host: str | None) -> ComputeManager:
        peer = self.peers(host) if host else None
        if peer is None:
            raise RuntimeError(f"host {host} is not managed by this novalite")
        return peer

    # -- helpers -----------------------------------------------------------------
    async def _event(self, uuid: str, request_id: str, event: str, note: str, payload: dict | None = None) -> None:
        async with self.pool.acquire() as conn:
            await db.event_start(conn, uuid, request_id, event, self.host)
            if note:
                await db.notify(conn, note, payload or {"host": self.host}, publisher_id=self.pub,
                                instance_uuids=[uuid], request_id=request_id)

    async def _migration(self, migration_id: int) -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            row = await migrations.get(conn, migration_id)
        if row is None:
            raise RuntimeError(f"migration {migration_id} is gone")
        return row

    async def _superseded(self, uuid: str, request_id: str, event: str, what: str) -> None:
        log.info("resize_superseded", instance_uuid=uuid, now=what)
        async with self.pool.acquire() as conn:
            await finish_superseded(conn, uuid, request_id, event, what)

    async def _rollback(self, uuid: str, request_id: str, migration: asyncpg.Record, event: str, exc: Exception,
                        expect: tuple[str, ...]) -> None:
        """Nova's InstanceFaultRollback: back on the source as it was (vm_state, flavor, claim), with a fault."""
        reason = str(exc) if isinstance(exc, ResizeError) else f"{type(exc).__name__}: {exc}"
        tb = traceback.format_exc(limit=5)
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await db.compare_and_set(
                    conn, uuid, expect_task_state=list(expect), task_state=None,
                    vm_state=migration["old_vm_state"], host=migration["source_compute"],
                    node=migration["source_node"], **flavor_columns(migration["old_flavor"]),
                )
            except db.StateConflict:
                pass
            await migrations.revert_allocation(conn, uuid, str(migration["uuid"]))
            await conn.execute("UPDATE migrations SET status = 'error', updated_at = now() WHERE id = $1",
                               migration["id"])
            await fail_instance(conn, uuid, request_id, Failure(reason, tb, self.host, traceback=tb), events=[event])
        log.warning("resize_rolled_back", instance_uuid=uuid, reason=reason)

    async def _fail(self, uuid: str, request_id: str, migration: asyncpg.Record, event: str, exc: Exception,
                    expect: tuple[str, ...]) -> None:
        """A failure after the guest left the source: ERROR where the row says it is (Nova's finish failure)."""
        reason = f"{type(exc).__name__}: {exc}"
        tb = traceback.format_exc(limit=5)
        async with self.pool.acquire() as conn, conn.transaction():
            await fail_instance(conn, uuid, request_id, Failure(reason, tb, self.host, traceback=tb), events=[event],
                                expect={"expect_task_state": list(expect)})
            await conn.execute("UPDATE migrations SET status = 'error', updated_at = now() WHERE id = $1",
                               migration["id"])
        log.warning("resize_failed", instance_uuid=uuid, reason=reason)

    # -- destination: prep_resize ------------------------------------------------------
    async def prep_resize(self, uuid: str, request_id: str, migration_id: int) -> None:
        """Destination: the claim is already made by the conductor; announce it and hand over to the source."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        migration = await self._migration(migration_id)
        payload = {"host": self.host, "new_flavor": migration["new_flavor"]["name"]}
        async with self.locks.lock(uuid):
            await self._event(uuid, request_id, PREP_EVENT, "instance.resize_prep.start", payload)
            async with self.pool.acquire() as conn, conn.transaction():
                inst = await db.get(conn, uuid)
                if inst is None or inst["task_state"] != RESIZE_PREP:
                    await self._superseded(uuid, request_id, PREP_EVENT,
                                           "deleted" if inst is None else str(inst["task_state"]))
                    return
                await db.event_finish(conn, uuid, request_id, PREP_EVENT)
                await db.notify(conn, "instance.resize_prep.end", payload, publisher_id=self.pub,
                                instance_uuids=[uuid], request_id=request_id)
        self._peer(migration["source_compute"]).resize.cast("resize_instance", uuid, request_id, migration_id)

    # -- source: resize_instance ------------------------------------------------------
    async def resize_instance(self, uuid: str, request_id: str, migration_id: int) -> None:
        """Source: stop the guest, copy its volumes to the destination (the originals are kept)."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        migration = await self._migration(migration_id)
        dest = migration["dest_compute"]
        async with self.locks.lock(uuid):
            await self._event(uuid, request_id, RESIZE_EVENT, "")
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    inst = await db.compare_and_set(conn, uuid, expect_task_state=[RESIZE_PREP, RESIZE_MIGRATING],
                                                    task_state=RESIZE_MIGRATING)
                    migration = await migrations.set_status(
                        conn, migration_id, [migrations.PRE_MIGRATING, migrations.MIGRATING], migrations.MIGRATING)
                    await db.notify(conn, "instance.resize.start", {"host": self.host}, publisher_id=self.pub,
                                    instance_uuids=[uuid], request_id=request_id)
            except (db.StateConflict, migrations.MigrationConflict) as conflict:
                await self._superseded(uuid, request_id, RESIZE_EVENT, str(conflict))
                return
            try:
                old, new = migration["old_flavor"], migration["new_flavor"]
                volume_backed = not inst["image_ref"]
                if (new["root_gb"] < old["root_gb"] and not volume_backed) or new["ephemeral_gb"] < old["ephemeral_gb"]:
                    raise ResizeError("Unable to resize disk down.")
                dest_manager = self._peer(dest)
            except Exception as exc:
                await self._rollback(uuid, request_id, migration, RESIZE_EVENT, exc, (RESIZE_MIGRATING,))
                return
            try:
                await self.migrate_disk_and_power_off(inst, dest_manager)
            except Exception as exc:
                log.warning("migrate_disk_failed", error=str(exc))
                await self._undo_migrate_disk(inst, dest_manager, migration)
                await self._rollback(uuid, request_id, migration, RESIZE_EVENT, exc, (RESIZE_MIGRATING,))
                return
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    await migrations.set_status(conn, migration_id, migrations.MIGRATING, migrations.POST_MIGRATING)
                    await db.compare_and_set(conn, uuid, expect_task_state=RESIZE_MIGRATING,
                                             task_state=RESIZE_MIGRATED, host=dest, node=migration["dest_node"])
                    if self.manager.volume_api is not None and dest != self.host:
                        await self.manager.volume_api.follow(conn, uuid, dest)  # the attachments follow
                    await db.event_finish(conn, uuid, request_id, RESIZE_EVENT)
                    await db.notify(conn, "instance.resize.end", {"host": self.host}, publisher_id=self.pub,
                                    instance_uuids=[uuid], request_id=request_id)
            except (db.StateConflict, migrations.MigrationConflict) as conflict:
                await self._superseded(uuid, request_id, RESIZE_EVENT, str(conflict))
                return
        dest_manager.resize.cast("finish_resize", uuid, request_id, migration_id)

    async def migrate_disk_and_power_off(self, inst: asyncpg.Record, dest: ComputeManager) -> None:
        """Stop the guest (cleanly, within shutdown_timeout), remove its domain here, and copy its
        volumes to the destination's pool, its Cinder volumes too (to another host); the originals
        stay here (as ``<name>_resize`` when the destination is this host) until confirm/revert, and
        the volume rows name the copies only once the instance's host moves. Re-runnable: a cut-off
        copy is made again."""
        uuid = str(inst["uuid"])
        info = await self.driver.get_info(uuid)
        if info is not None and info.power_state == power_state.RUNNING:
            await self.driver.power_off(uuid, self.config.compute.shutdown_timeout)
        await self.driver.destroy(uuid)
        volume_api = self.manager.volume_api
        if volume_api is not None and dest.host != self.host:
            async with self.pool.acquire() as conn:
                vols = [v for v in await volumes_db.for_instance(conn, uuid) if v["host"] == self.host]
            for vol in vols:
                await volume_api.copy_to(vol, dest.host)
        if self.manager.simulated or dest.simulated:
            return
        store = self.manager.store
        names = [n for n in await store.names(uuid) if n in MOVED]
        if dest.store is store:  # the same host: the originals are kept as <name>_resize for a revert
            await store.copy(uuid, [(n, n + RESIZE_SUFFIX) for n in names], store)
        else:  # another host: the originals stay here as they are until confirm/revert
            await store.copy(uuid, [(n, n) for n in names], dest.store)

    async def _undo_migrate_disk(self, inst: asyncpg.Record, dest: ComputeManager, migration: asyncpg.Record
                                 ) -> None:
        """A failed move: the destination's copy goes, the source's volumes and guest come back."""
        await self.restore_source(inst, migration, dest)

    # -- destination: finish_resize -----------------------------------------------------
    async def finish_resize(self, uuid: str, request_id: str, migration_id: int) -> None:
        """Destination: the new flavor on the row, disks grown, the guest defined (and started) → VERIFY_RESIZE."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        migration = await self._migration(migration_id)
        new = migration["new_flavor"]
        async with self.locks.lock(uuid):
            await self._event(uuid, request_id, FINISH_EVENT, "")
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    inst = await db.get(conn, uuid)
                    inst = await db.compare_and_set(
                        conn, uuid, expect_task_state=[RESIZE_MIGRATED, RESIZE_FINISH], task_state=RESIZE_FINISH,
                        request_spec=_spec_with_flavor(inst, new) if inst is not None else {},
                        **flavor_columns(new),
                    )
                    await db.notify(conn, "instance.resize_finish.start", {"host": self.host},
                                    publisher_id=self.pub, instance_uuids=[uuid], request_id=request_id)
            except db.StateConflict as conflict:
                await self._superseded(uuid, request_id, FINISH_EVENT, str(conflict))
                return
            try:
                stopped = migration["old_vm_state"] == states.STOPPED
                await self.spawn_here(inst, new, stopped)
                info = await self.driver.get_info(uuid)
                async with self.pool.acquire() as conn, conn.transaction():
                    await db.compare_and_set(
                        conn, uuid, expect_task_state=RESIZE_FINISH, task_state=None, vm_state=RESIZED,
                        power_state=info.power_state if info else power_state.NOSTATE,
                        launched_at=datetime.now(UTC), progress=100,
                    )
                    await migrations.set_status(conn, migration_id, [migrations.POST_MIGRATING, migrations.FINISHED],
                                                migrations.FINISHED)
                    await db.event_finish(conn, uuid, request_id, FINISH_EVENT)
                    await db.finish_action(conn, uuid, request_id)
                    await db.notify(conn, "instance.resize_finish.end", {"host": self.host, "state": RESIZED},
                                    publisher_id=self.pub, instance_uuids=[uuid], request_id=request_id)
                log.info("instance_resized", flavor=new["name"])
            except db.StateConflict as conflict:
                await self._superseded(uuid, request_id, FINISH_EVENT, str(conflict))
            except Exception as exc:
                # Nova: the instance stays on the destination in ERROR (a hard reboot may recover it);
                # the source's claim goes, the destination's stays.
                await self._fail(uuid, request_id, migration, FINISH_EVENT, exc, (RESIZE_FINISH,))
                async with self.pool.acquire() as conn:
                    await migrations.drop_source_allocation(conn, str(migration["uuid"]))

    async def spawn_here(self, inst: asyncpg.Record, flavor: dict, stopped: bool) -> None:
        """Define and start the guest on this host with ``flavor`` from the disks in its pool
        (grown to the flavor), its ports bound here and its volumes; stopped again if it was stopped."""
        uuid = str(inst["uuid"])
        m = self.manager
        await self.driver.destroy(uuid)  # re-runnable: a domain from a cut-off attempt goes
        ports = []
        if m.network_api is not None and inst["requested_networks"] != "none":
            ports = await m.network_api.allocate_for_instance(uuid, inst["project_id"], inst["requested_networks"],
                                                              self.host)
        prepared = await self._local_disks(inst, flavor)
        if m.volume_build is not None:
            await m.volume_build.attached_disks(uuid, prepared)
        guest = m.guest_spec(inst, [p.nic() for p in ports], prepared)
        guest.memory_mb, guest.vcpus = flavor["memory_mb"], flavor["vcpus"]
        guest.metadata.update(flavor_name=flavor["name"], memory_mb=flavor["memory_mb"], vcpus=flavor["vcpus"],
                              root_gb=flavor["root_gb"])
        await self.driver.spawn(guest)
        if stopped:
            await self.driver.power_off(uuid, 0)

    async def _local_disks(self, inst: asyncpg.Record, flavor: dict) -> PreparedDisks:
        """The disks already in this host's pool, described for ``flavor`` and grown to it: root and
        ephemeral grown (never shrunk), swap made at the flavor's size, the config drive kept."""
        m = self.manager
        uuid = str(inst["uuid"])
        image = dict((inst["request_spec"] or {}).get("image") or {}, id=inst["image_ref"] or "")
        prepared = await prepare_local_disks(
            store=m.store, uuid=uuid, image=image, kernel_id=inst["kernel_id"],
            ramdisk_id=inst["ramdisk_id"], flavor=flavor, write_files=False,
        )
        if m.wants_config_drive(inst):
            prepared.add_config_drive(m.store.path(uuid, "disk.config"))
        if m.simulated:
            return prepared
        have = set(await m.store.names(uuid))
        if "disk" in have:
            await m.store.grow(uuid, "disk", (flavor.get("root_gb") or 0) * GiB)
        if flavor.get("ephemeral_gb"):
            if "disk.eph0" in have:
                await m.store.grow(uuid, "disk.eph0", flavor["ephemeral_gb"] * GiB)
            else:
                await m.store.blank(uuid, "disk.eph0", flavor["ephemeral_gb"] * GiB)
        await m.store.remove(uuid, ["disk.swap"])
        if flavor.get("swap"):
            await m.store.blank(uuid, "disk.swap", flavor["swap"] * 1024**2)
        if m.wants_config_drive(inst) and "disk.config" not in have:
            ports = await m.network_api.ports_for_instance(uuid) if m.network_api is not None else []
            prepared.disks.pop()  # write_config_drive adds it again, and writes it
            await m.write_config_drive(inst, ports, prepared, None)
        return prepared

    # -- source: confirm_resize ----------------------------------------------------------
    async def confirm_resize(self, uuid: str, request_id: str, migration_id: int) -> None:
        """Source: the old guest's leftovers and the source claim go; ACTIVE (or STOPPED if powered off)."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        migration = await self._migration(migration_id)
        async with self.locks.lock(uuid):
            await self._event(uuid, request_id, CONFIRM_EVENT, "instance.resize_confirm.start")
            try:
                await self.clean_source(uuid, migration)
            except Exception:
                log.exception("confirm_cleanup_failed")  # the claim goes regardless (Nova), the files stay
            async with self.pool.acquire() as conn, conn.transaction():
                await migrations.drop_source_allocation(conn, str(migration["uuid"]))
                try:
                    await migrations.set_status(conn, migration_id, [migrations.CONFIRMING], migrations.CONFIRMED)
                except migrations.MigrationConflict:
                    pass
                inst = await db.get(conn, uuid)
                vm_state = (states.STOPPED if inst is not None and inst["power_state"] == power_state.SHUTDOWN
                            else states.ACTIVE)
                try:
                    await db.compare_and_set(conn, uuid, expect_vm_state=RESIZED,
                                             expect_task_state=[None, states.DELETING], vm_state=vm_state)
                except db.StateConflict:
                    pass
                await db.event_finish(conn, uuid, request_id, CONFIRM_EVENT)
                await db.finish_action(conn, uuid, request_id)
                await db.notify(conn, "instance.resize_confirm.end", {"host": self.host, "state": vm_state},
                                publisher_id=self.pub, instance_uuids=[uuid], request_id=request_id)
        log.info("resize_confirmed", vm_state=vm_state)

    async def clean_source(self, uuid: str, migration: asyncpg.Record) -> None:
        """Remove what the source kept for a revert: its domain (unless the guest now runs here),
        ``<uuid>_resize``, its copies of the Cinder volumes that moved."""
        if migration["dest_compute"] != self.host:
            await self.driver.destroy(uuid)
            await self.manager.store.remove(uuid)
            if self.manager.volume_api is not None:
                await self.manager.volume_api.drop_copies(uuid, self.host)
        else:
            await self.manager.store.remove(uuid, [n + RESIZE_SUFFIX for n in MOVED])

    # -- destination: revert_resize -----------------------------------------------------
    async def revert_resize(self, uuid: str, request_id: str, migration_id: int) -> None:
        """Destination: the resized guest and its copy of the disks go; the source finishes the revert."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        migration = await self._migration(migration_id)
        async with self.locks.lock(uuid):
            await self._event(uuid, request_id, REVERT_EVENT, "")
            try:
                source = self._peer(migration["source_compute"])
                await self.driver.destroy(uuid)
                if migration["source_compute"] != self.host:  # the same host's are put back by the source
                    await self.manager.store.remove(uuid)
                async with self.pool.acquire() as conn:
                    await db.event_finish(conn, uuid, request_id, REVERT_EVENT)
            except Exception as exc:
                await self._fail(uuid, request_id, migration, REVERT_EVENT, exc, (RESIZE_REVERTING,))
                return
        source.resize.cast("finish_revert_resize", uuid, request_id, migration_id)

    # -- source: finish_revert_resize ---------------------------------------------------
    async def finish_revert_resize(self, uuid: str, request_id: str, migration_id: int) -> None:
        """Source: the kept volumes back, the old flavor, host and claim back, the guest defined again."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        migration = await self._migration(migration_id)
        old = migration["old_flavor"]
        async with self.locks.lock(uuid):
            await self._event(uuid, request_id, FINISH_REVERT_EVENT, "instance.resize_revert.start")
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    inst = await db.get(conn, uuid)
                    inst = await db.compare_and_set(
                        conn, uuid, expect_task_state=RESIZE_REVERTING, host=self.host,
                        node=migration["source_node"], request_spec=_spec_with_flavor(inst, old),
                        **flavor_columns(old),
                    )
                    await migrations.revert_allocation(conn, uuid, str(migration["uuid"]))
                    if self.manager.volume_api is not None:  # the originals kept here are used again
                        await self.manager.volume_api.follow(conn, uuid, self.host)
            except db.StateConflict as conflict:
                await self._superseded(uuid, request_id, FINISH_REVERT_EVENT, str(conflict))
                return
            try:
                if self.manager.volume_api is not None and migration["dest_compute"] != self.host:
                    await self.manager.volume_api.drop_copies(uuid, migration["dest_compute"])
                await self._restore_dir(uuid)
                stopped = migration["old_vm_state"] == states.STOPPED
                await self.spawn_here(inst, old, stopped)
                info = await self.driver.get_info(uuid)
                async with self.pool.acquire() as conn, conn.transaction():
                    await db.compare_and_set(
                        conn, uuid, expect_task_state=RESIZE_REVERTING, task_state=None,
                        vm_state=states.STOPPED if stopped else states.ACTIVE,
                        power_state=info.power_state if info else power_state.NOSTATE, launched_at=datetime.now(UTC),
                    )
                    await migrations.set_status(conn, migration_id, [migrations.REVERTING], migrations.REVERTED)
                    await db.event_finish(conn, uuid, request_id, FINISH_REVERT_EVENT)
                    await db.finish_action(conn, uuid, request_id)
                    await db.notify(conn, "instance.resize_revert.end", {"host": self.host},
                                    publisher_id=self.pub, instance_uuids=[uuid], request_id=request_id)
                log.info("resize_reverted")
            except db.StateConflict as conflict:
                await self._superseded(uuid, request_id, FINISH_REVERT_EVENT, str(conflict))
            except Exception as exc:
                await self._fail(uuid, request_id, migration, FINISH_REVERT_EVENT, exc, (RESIZE_REVERTING,))

    async def _restore_dir(self, uuid: str) -> None:
        """A same-host resize's kept originals back in place (another host's originals never moved)."""
        store = self.manager.store
        kept = [n[:-len(RESIZE_SUFFIX)] for n in await store.names(uuid) if n.endswith(RESIZE_SUFFIX)]
        if not kept:
            return
        await store.remove(uuid, kept)
        await store.copy(uuid, [(n + RESIZE_SUFFIX, n) for n in kept], store)
        await store.remove(uuid, [n + RESIZE_SUFFIX for n in kept])

    async def restore_source(self, inst: asyncpg.Record, migration: asyncpg.Record, dest: ComputeManager | None
                             ) -> None:
        """Undo a move cut off before the guest reached the destination: the copy there goes, the
        kept volumes come back, the guest runs here again as before (stopped if it was)."""
        uuid = str(inst["uuid"])
        if dest is not None and dest.host != self.host:
            await dest.driver.destroy(uuid)
            await dest.store.remove(uuid)
            if self.manager.volume_api is not None:  # the volume rows still name this host's
                await self.manager.volume_api.drop_copies(uuid, dest.host)
        await self._restore_dir(uuid)
        old = migration["old_flavor"]
        await self.spawn_here(inst, old, migration["old_vm_state"] == states.STOPPED)

    # -- delete of an instance in the middle of a resize ----------------------------------
    async def cleanup_for_delete(self, uuid: str) -> None:
        """The instance is being deleted: whatever its open migration left on either host goes, with
        the migration's claim (the caller removes the instance's own domain, files and claim)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM migrations WHERE instance_uuid = $1::uuid AND status = ANY($2::text[])",
                uuid, list(migrations.OPEN))
        for m in rows:
            for host in {m["source_compute"], m["dest_compute"]} - {None}:
                peer = self.peers(host)
                if peer is None:
                    continue
                if host != self.host:  # this host's volumes, kept ones too, go with the instance
                    await peer.driver.destroy(uuid)
                    await peer.store.remove(uuid)
                if self.manager.volume_api is not None:  # the copies the rows do not name
                    await self.manager.volume_api.drop_copies(uuid, host)
            async with self.pool.acquire() as conn, conn.transaction():
                await migrations.drop_source_allocation(conn, str(m["uuid"]))
                status = migrations.CONFIRMED if m["status"] in (migrations.FINISHED, migrations.CONFIRMING) \
                    else migrations.ERROR
                await conn.execute("UPDATE migrations SET status = $2, updated_at = now() WHERE id = $1",
                                   m["id"], status)

    # -- the automatic confirm window ----------------------------------------------------
    def start(self) -> Periodic | None:
        """Nova's _poll_unconfirmed_resizes when ``[compute] resize_confirm_window`` > 0 (0: off)."""
        window = self.config.compute.resize_confirm_window
        if window <= 0:
            return None
        self._confirmer = Periodic(f"resize-confirm-{self.host}", min(60.0, max(1.0, window / 2)),
                                   self.confirm_expired, stagger=True)
        self._confirmer.start()
        return self._confirmer

    async def confirm_expired(self) -> int:
        """Confirm, as Nova's periodic task does, finished resizes to this host older than the window."""
        window = self.config.compute.resize_confirm_window
        done = 0
        async with self.pool.acquire() as conn:
            rows = [r for r in await migrations.unconfirmed_older_than(conn, window) if r["dest_compute"] == self.host]
        for m in rows:
            uuid = str(m["instance_uuid"])
            request_id = f"req-auto-confirm-{m['id']}"
            async with self.pool.acquire() as conn, conn.transaction():
                try:
                    await migrations.set_status(conn, m["id"], migrations.FINISHED, migrations.CONFIRMING)
                except migrations.MigrationConflict:
                    continue
                await db.start_actions(conn, [uuid], "confirmResize", request_id, None, m["project_id"])
            log.info("resize_auto_confirm", instance_uuid=uuid, migration_id=m["id"])
            await self._peer(m["source_compute"]).resize.confirm_resize(uuid, request_id, m["id"])
            done += 1
        return done


# -- recovery after a crash -----------------------------------------------------------


async def recover_resize(pool: asyncpg.Pool, computes: dict[str, Any], inst: asyncpg.Record, request_id: str,
                         schedule: Callable[[str, str], Awaitable[None]]) -> str:
    """Resume a resize cut off in a resize task state: every stage is re-runnable, so the stage the
    instance was in runs again (prep without a destination yet: scheduled again)."""
    uuid = str(inst["uuid"])
    task = inst["task_state"]
    async with pool.acquire() as conn:
        migration = await migrations.latest(conn, uuid)
    note = f"interrupted by a restart in task_state {task}; resuming the resize"
    if migration is None:
        async with pool.acquire() as conn, conn.transaction():
            await db.compare_and_set(conn, uuid, expect_task_state=task, task_state=None)
            await db.interrupt_open_events(conn, uuid, request_id, "interrupted by a restart of novalite")
            await db.event_finish(conn, uuid, request_id, RECOVER_EVENT, "Error",
                                  details=f"interrupted in {task} with no migration record; task cleared")
            await db.finish_action(conn, uuid, request_id)
        return "resize_cleared"
    request_id = migration["request_id"] or request_id
    if task == RESIZE_REVERTING:
        request_id = await _latest_request(pool, uuid, request_id)
        stage, host = "revert_resize", migration["dest_compute"]
    elif task == RESIZE_PREP:
        stage, host = ("prep_resize", migration["dest_compute"]) if migration["dest_compute"] else ("", None)
    elif task == RESIZE_MIGRATING:
        stage, host = "resize_instance", migration["source_compute"]
    else:  # resize_migrated, resize_finish
        stage, host = "finish_resize", migration["dest_compute"]
    async with pool.acquire() as conn, conn.transaction():
        await db.interrupt_open_events(conn, uuid, request_id, "interrupted by a restart of novalite")
        await db.event_finish(conn, uuid, request_id, RECOVER_EVENT, details=note)
    if not stage:
        await schedule(uuid, request_id)
        return "resize_rescheduled"
    compute = computes.get(host) if host else None
    if compute is None:
        async with pool.acquire() as conn, conn.transaction():
            await fail_instance(conn, uuid, request_id,
                                Failure(f"Host {host} of the resize of {uuid} is not managed here", "", host),
                                expect={"expect_task_state": task})
        return "resize_error"
    compute.resize.cast(stage, uuid, request_id, migration["id"])
    return f"resize_resumed_{stage}"


async def _latest_request(pool: asyncpg.Pool, uuid: str, default: str) -> str:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT request_id FROM instance_actions WHERE instance_uuid = $1 ORDER BY id DESC LIMIT 1", uuid)
    return row["request_id"] if row else default


async def resume_confirms(pool: asyncpg.Pool, computes: dict[str, Any]) -> int:
    """Confirms cut off by a restart (migration ``confirming``, no task state): run them again."""
    async with pool.acquire() as conn:
        rows = await migrations.in_status(conn, [migrations.CONFIRMING])
    n = 0
    for m in rows:
        compute = computes.get(m["source_compute"])
        if compute is None:
            continue
        uuid = str(m["instance_uuid"])
        compute.resize.cast("confirm_resize", uuid, await _latest_request(pool, uuid, "req-recovery"), m["id"])
        n += 1
    return n
