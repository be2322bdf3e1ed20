"""Live migration: a running guest moves to another host and keeps running (Nova's os-migrateLive).

Mirrors Nova's compute API ``live_migrate`` / ``live_migrate_force_complete`` /
``live_migrate_abort``, the conductor's LiveMigrationTask and the compute manager's
``check_can_live_migrate_destination`` → ``pre_live_migration`` → ``live_migration`` →
``post_live_migration_at_destination`` (or ``rollback_live_migration``):

- API (:class:`LiveMigrationCheck`): ACTIVE or PAUSED, no task; the named host must exist;
  one transaction moves task_state None → ``migrating``, writes an ``accepted``
  ``live-migration`` record and starts the ``live-migration`` action.
- Conductor (:class:`LiveMigrationTask`): the scheduler picks the destination (never the
  current host; a named one is checked by the filters) and claims it while the source's claim
  is carried by the migration (:func:`scheduler.manager.claim_move`), so nothing overcommits.
- Source (:class:`LiveMigrationManager`): ``queued`` → ``preparing``: the destination gets
  the disks (an overlay on its own copy of the base image, the same sizes; the read-only config
  drive uploaded; an empty console log), empty copies of its Cinder volumes (same size and
  format, filled in full by the same block migration), the networks, DHCP entries and port filters →
  ``running``: libvirt migrates the guest (live, block: the hosts share no storage) in a worker
  thread while its job info is written into the migration record → ``completed``: ports bound
  to the destination, host/node, power state, the volume rows and the claims moved in one
  transaction, the source's disks and volume copies removed. A failure or an abort leaves the
  guest running on the source: the destination's leftovers (volume copies too) go, migration
  ``error`` (``cancelled`` after an abort), ACTIVE with the event failed.
- A delete meanwhile aborts it first, as Nova's does, then removes what it made on both hosts
  (:meth:`LiveMigrationManager.cleanup_for_delete`).
- ``force`` (2.30–2.67) with a host: the scheduler's filters are skipped for it; the claim is made.

Hosts of libvirt's test driver cannot migrate; there the driver defines and starts the domain
on the destination and destroys it on the source (:meth:`VirtDriver.migrate_live`), so the API
and the state machine run the same way in the fast tests. A kill -9 mid-way is settled at
start (:func:`recover_live_migration`): finished if the guest runs on the destination, rolled
back if it still runs on the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from novalite import exception
from novalite.compute import states
from novalite.compute.failures import Failure, fail_instance, finish_superseded, moved_on
from novalite.context import RequestContext
from novalite.db import instances as db
from novalite.db import migration_records as migrations
from novalite.db import volumes as volumes_db
from novalite.scheduler.manager import NoValidHost, Scheduler, Selection
from novalite.virt import power_state

if TYPE_CHECKING:
    from novalite.compute.manager import ComputeManager

log = structlog.get_logger(__name__)

MIGRATING = "migrating"  # Nova's task state
LIVE_VM_STATES = (states.ACTIVE, states.PAUSED)
ACTION = "live-migration"
# action events, as Nova's wrap_instance_event names them
CONDUCTOR_EVENT = "conductor_live_migrate_instance"
CHECK_EVENT = "compute_check_can_live_migrate_destination"
PRE_EVENT = "compute_pre_live_migration"
MIGRATE_EVENT = "compute_live_migration"
POST_EVENT = "compute_post_live_migration_at_destination"
ROLLBACK_EVENT = "compute_rollback_live_migration_at_destination"
RECOVER_EVENT = "compute_recover_instance"
PROGRESS_INTERVAL = 1.0  # seconds between two reads of the migration job's progress

# Cast a live migration to its source host's manager: (source host, uuid, request_id, migration id).
CastLive = Callable[[str, str, str, int], None]


# -- API side ---------------------------------------------------------------------


class LiveMigrationCheck:
    """The checks and state changes of os-migrateLive, force_complete and the abort (Nova's compute API)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def accept(self, ctx: RequestContext, inst: asyncpg.Record, host: str | None) -> asyncpg.Record:
        """``migrating`` with an ``accepted`` migration record and the action; the caller checked the
        lock and the state and casts to the conductor. 400 for a host that is not a compute host."""
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn, conn.transaction():
            if host is not None and not await conn.fetchval("SELECT 1 FROM compute_nodes WHERE host = $1", host):
                raise exception.Invalid(f"Compute host {host} could not be found.")
            try:
                row = await db.compare_and_set(conn, uuid, expect_vm_state=list(LIVE_VM_STATES),
                                               expect_task_state=None, task_state=MIGRATING)
            except db.StateConflict as conflict:
                actual = conflict.actual
                if actual is None or actual["deleted"]:
                    raise exception.NotFound(f"Instance {uuid} could not be found.") from None
                what = ("task_state", actual["task_state"]) if actual["task_state"] else ("vm_state",
                                                                                           actual["vm_state"])
                raise exception.Conflict(f"Cannot 'os-migrateLive' instance {uuid} while it is in "
                                         f"{what[0]} {what[1]}") from None
            migration = await migrations.create_live(conn, row, host, ctx.request_id)
            await db.start_actions(conn, [uuid], ACTION, ctx.request_id, ctx.user_id, ctx.project_id)
        log.info("live_migration_accepted", instance_uuid=uuid, host=host, migration_id=migration["id"])
        return migration

    async def in_progress(self, inst: asyncpg.Record, migration_id: int, method: str, allowed: tuple[str, ...]
                          ) -> asyncpg.Record:
        """The instance's live migration ``migration_id`` when its status is one of ``allowed``:
        404 when it is not this instance's, 400 (Nova's InvalidMigrationState) in another status."""
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn:
            row = await migrations.get(conn, migration_id)
        if row is None or str(row["instance_uuid"]) != uuid or row["deleted"]:
            raise exception.NotFound(f"Migration {migration_id} not found for instance {uuid}")
        if row["status"] not in allowed:
            raise exception.Invalid(f"Migration {migration_id} state of instance {uuid} is {row['status']}. "
                                    f"Cannot {method} while the migration is in this state.")
        return row

    async def record(self, ctx: RequestContext, uuid: str, action: str) -> None:
        """The action of a force-complete or an abort (Nova's live_migration_force_complete/_cancel)."""
        async with self.pool.acquire() as conn:
            await db.start_actions(conn, [uuid], action, ctx.request_id, ctx.user_id, ctx.project_id)
            await db.finish_action(conn, uuid, ctx.request_id)


# -- conductor side -----------------------------------------------------------------


def live_request_spec(inst: asyncpg.Record, migration: asyncpg.Record, force: bool = False) -> dict:
    """The scheduling request of a live migration: the same flavor, never the current host; the
    named host only, its filters run unless ``force`` (Nova's 2.30–2.67 ``force``: the filters are
    skipped, the claim is still made). Volumes are no pin: they are copied with the disks."""
    spec = dict(inst["request_spec"] or {})
    spec["flavor"] = dict(inst["flavor"])
    spec["migration"] = {"id": migration["id"], "uuid": str(migration["uuid"]),
                         "source_compute": migration["source_compute"], "task_state": MIGRATING,
                         "status": migrations.ACCEPTED}
    spec["ignore_hosts"] = [inst["host"]]
    spec["force_hosts"] = [migration["dest_compute"]] if migration["dest_compute"] else []
    spec["skip_filters"] = bool(force and migration["dest_compute"])
    spec.pop("scheduler_hints", None)
    spec.pop("retry", None)
    return spec


class LiveMigrationTask:
    """The conductor's part (Nova's conductor/tasks/live_migrate.py): choose and claim the destination."""

    def __init__(self, pool: asyncpg.Pool, scheduler: Scheduler, cast_live: CastLive,
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        """``spawn`` runs the task as one of the conductor's (so a shutdown waits for it)."""
        self.pool = pool
        self.scheduler = scheduler
        self.cast_live = cast_live
        self.spawn = spawn

    def live_migrate(self, uuid: str, request_id: str, force: bool = False) -> None:
        """Cast: schedule a live migration the compute API accepted (``force``: to its named host
        without the filters)."""
        self.spawn(self._live_migrate(uuid, request_id, force))

    async def _live_migrate(self, uuid: str, request_id: str, force: bool) -> None:
        structlog.contextvars.bind_contextvars(request_id=request_id, instance_uuid=uuid)
        async with self.pool.acquire() as conn:
            inst = await db.get(conn, uuid)
            migration = await migrations.latest(conn, uuid, [migrations.ACCEPTED])
        if inst is None or migration is None or inst["task_state"] != MIGRATING:
            return
        selection = await self.scheduler.select_move(live_request_spec(inst, migration, force), uuid,
                                                     request_id, migration["id"], CONDUCTOR_EVENT)
        if isinstance(selection, Selection):
            self.cast_live(inst["host"], uuid, request_id, migration["id"])
            return
        message = str(selection) if isinstance(selection, NoValidHost) else f"Scheduling failed: {selection}"
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await db.compare_and_set(conn, uuid, expect_task_state=MIGRATING, task_state=None)
            except db.StateConflict:
                return
            await migrations.set_status(conn, migration["id"], [migrations.ACCEPTED], migrations.ERROR)
            await fail_instance(conn, uuid, request_id, Failure(message, "", None, traceback=message),
                                events=[CONDUCTOR_EVENT])


# -- host side ----------------------------------------------------------------------

Peers = Callable[[str], "ComputeManager | None"]


class MigrationAborted(Exception):
    """The migration was aborted (DELETE /servers/{id}/migrations/{id}) before the guest moved."""


class LiveMigrationManager:
    """The host side of live migration on one host (held as ``ComputeManager.live``)."""

    def __init__(self, manager: ComputeManager, peers: Peers) -> None:
        self.manager = manager
        self.host = manager.host
        self.pool = manager.pool
        self.driver = manager.driver
        self.peers = peers
        self.pub = f"nova-compute:{self.host}"
        self._aborts: set[int] = set()  # migrations asked to abort while queued or preparing
        self._running: dict[int, asyncio.Task] = {}  # the runs of this (source) host, by migration id
        # Fault injection for tests and drills (as ComputeManager.fail_spawn): awaited once the
        # migration is ``running``, before the guest moves.
        self.before_move: Callable[[str, int], Coroutine[Any, Any, None]] | None = None

    def cast(self, uuid: str, request_id: str, migration_id: int) -> None:
        """Cast: run the live migration from this (the source) host as one of its tracked tasks."""
        task = self.manager.spawn_task(self.live_migration(uuid, request_id, migration_id))
        self._running[migration_id] = task
        task.add_done_callback(lambda _task: self._running.pop(migration_id, None))

    def _peer(self, host: str | None) -> ComputeManager:
        peer = self.peers(host) if host else None
        if peer is None:
            raise RuntimeError(f"host {host} is not managed by this novalite")
        return peer

    async def _event(self, uuid: str, request_id: str, event: str, host: str) -> None:
        async with self.pool.acquire() as conn:
            await db.event_start(conn, uuid, request_id, event, host)

    async def _enter(self, uuid: str, request_id: str, migration_id: int, event: str, host: str | None,
                     expect: tuple[str, ...], status: str) -> asyncpg.Record:
        """One stage begins: the migration moves from ``expect`` to ``status`` with the stage's event
        started (MigrationAborted first when an abort came in meanwhile)."""
        self._check_abort(migration_id)
        async with self.pool.acquire() as conn, conn.transaction():
            migration = await migrations.set_status(conn, migration_id, list(expect), status)
            await db.event_start(conn, uuid, request_id, event, host)
        return migration

    async def _done(self, uuid: str, request_id: str, event: str) -> None:
        async with self.pool.acquire() as conn:
            await db.event_finish(conn, uuid, request_id, event)

    # -- the source's run ------------------------------------------------------------
    async def live_migration(self, uuid: str, request_id: str, migration_id: int) -> None:
        """Source: check the destination, prepare it, migrate the guest, then post or roll back."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        async with self.pool.acquire() as conn:
            migration = await migrations.get(conn, migration_id)
            inst = await db.get(conn, uuid)
        if migration is None or inst is None or inst["task_state"] != MIGRATING:
            return
        dest: ComputeManager | None = None
        event = CHECK_EVENT
        try:
            migration = await self._enter(uuid, request_id, migration_id, CHECK_EVENT, migration["dest_compute"],
                                          (migrations.ACCEPTED, migrations.QUEUED), migrations.QUEUED)
            dest = self._peer(migration["dest_compute"])
            await self.check_destination(dest)
            await self._done(uuid, request_id, CHECK_EVENT)
            event = PRE_EVENT
            await self._enter(uuid, request_id, migration_id, PRE_EVENT, dest.host, (migrations.QUEUED,),
                              migrations.PREPARING)
            volume_paths = await dest.live.pre_live_migration(inst, self.manager)
            await self._done(uuid, request_id, PRE_EVENT)
            event = MIGRATE_EVENT
            await self._enter(uuid, request_id, migration_id, MIGRATE_EVENT, self.host, (migrations.PREPARING,),
                              migrations.RUNNING)
            if self.before_move is not None:
                await self.before_move(uuid, migration_id)
            self._check_abort(migration_id)
            await self._migrate(uuid, migration_id, dest, volume_paths)
        except Exception as exc:
            aborted = isinstance(exc, MigrationAborted) or migration_id in self._aborts
            self._aborts.discard(migration_id)
            log.warning("live_migration_failed", error=str(exc), aborted=aborted)
            await self.rollback(inst, migration_id, request_id, dest, event, exc, aborted)
            return
        await self._done(uuid, request_id, MIGRATE_EVENT)
        await dest.live.post_live_migration(inst, migration_id, request_id)

    async def check_destination(self, dest: ComputeManager) -> None:
        """Nova's check_can_live_migrate_destination: another host, answering, of the same kind."""
        if dest.host == self.host:
            raise RuntimeError(f"Unable to migrate to the current host ({self.host}).")
        if not await dest.driver.is_alive():
            raise RuntimeError(f"Compute service of {dest.host} is unavailable at this time.")
        if dest.simulated != self.manager.simulated:
            raise RuntimeError("a simulated host and a real one cannot migrate to each other")

    def _check_abort(self, migration_id: int) -> None:
        if migration_id in self._aborts:
            raise MigrationAborted("Migration was aborted")

    async def _migrate(self, uuid: str, migration_id: int, dest: ComputeManager, volume_paths: dict[str, str]
                       ) -> None:
        """libvirt's migration in a worker; meanwhile its job info goes into the migration record.
        ``volume_paths``: each Cinder volume's path here → its empty copy's on the destination."""
        paths = {**volume_paths, f"{self.manager.store.pool.target}/": f"{dest.store.pool.target}/"}
        move = asyncio.ensure_future(self.driver.migrate_live(uuid, dest.driver, paths))
        while not move.done():
            await asyncio.wait({move}, timeout=PROGRESS_INTERVAL)
            if move.done():
                break
            progress = await self.driver.migration_progress(uuid)
            if progress:
                async with self.pool.acquire() as conn:
                    await migrations.set_progress(conn, migration_id, progress)
        move.result()

    # -- abort and force-complete (asked through the API) ----------------------------------
    async def abort(self, uuid: str, migration_id: int) -> None:
        """Nova's live_migration_abort: a queued/preparing one stops before it moves; a running
        one has its libvirt job aborted (the guest stays here)."""
        self._aborts.add(migration_id)
        with contextlib.suppress(Exception):
            await self.driver.abort_migration(uuid)

    async def force_complete(self, uuid: str) -> None:
        """Nova's libvirt live_migration_force_complete: pause the guest so its memory stops
        changing and the copy converges; it runs again on the destination (post)."""
        await self.driver.pause(uuid)

    async def abort_overdue(self, uuid: str) -> bool:
        """The watchdog's first answer to a live migration past its deadline (Nova's
        live_migration_completion_timeout with its default action, abort): the run from this host
        is aborted and rolls back, so the guest stays here, ACTIVE, with the migration
        ``cancelled``. False when no run of it goes on here or it was aborted already: then the
        watchdog fails the instance (and a guest that still moves takes the row along, see post)."""
        async with self.pool.acquire() as conn:
            rows = await migrations.live_of_instance(conn, uuid, migrations.LIVE_OPEN)
        fresh = [m["id"] for m in rows if m["id"] in self._running and m["id"] not in self._aborts]
        for migration_id in fresh:
            log.warning("live_migration_overdue_aborted", instance_uuid=uuid, migration_id=migration_id)
            await self.abort(uuid, migration_id)
        return bool(fresh)

    async def stop(self, uuid: str, migration_id: int) -> None:
        """Abort the migration and wait until its run from this host has ended (rolled back, or,
        when the guest had already moved, finished or superseded)."""
        await self.abort(uuid, migration_id)
        task = self._running.get(migration_id)
        if task is not None:
            await asyncio.wait({task})
        self._aborts.discard(migration_id)

    # -- destination: pre_live_migration -----------------------------------------------
    async def pre_live_migration(self, inst: asyncpg.Record, source: ComputeManager) -> dict[str, str]:
        """Destination: the guest's volumes made here (same names and sizes; a root overlay on this
        host's copy of the base image, so only the top layer is copied), the config drive uploaded
        (libvirt copies no read-only disk), the kernel and ramdisk cached; its networks, DHCP
        entries and port filters here too. The console log is started anew by this host's virtlogd.
        Its Cinder volumes get empty copies of the same size and format in this host's volume pool,
        which the block migration fills in full (a volume has no backing chain: its top layer, all
        libvirt's incremental copy takes, is all of it); returns their paths there → here."""
        uuid = str(inst["uuid"])
        m = self.manager
        volume_paths = await self._volume_copies(uuid, source.host)
        if not m.simulated:
            await m.store.remove(uuid)  # re-runnable: what an interrupted attempt left
            for name in await source.store.names(uuid):
                info = await source.driver.volume_info(source.store.pool.name, source.store.volume(uuid, name))
                if info is None:
                    continue
                if name == "disk.config":
                    await source.store.copy(uuid, [(name, name)], m.store)
                elif info.backing:
                    image_id = info.backing.rsplit("/", 1)[-1].removeprefix("_base_")
                    await m.store.overlay(uuid, name, image_id, info.capacity)
                else:
                    fmt = "qcow2" if info.format == "qcow2" else "raw"
                    await m.driver.make_volume(m.store.pool.name, m.store.volume(uuid, name), info.capacity, fmt)
            for ref in (inst["kernel_id"], inst["ramdisk_id"]):  # a direct boot's kernel and ramdisk
                if ref:
                    await m.store.image(ref)
        if m.network_api is not None:
            await m.network_api.prepare_host(uuid, self.host)
        return volume_paths

    async def _volume_copies(self, uuid: str, source: str) -> dict[str, str]:
        """Empty copies here of the instance's Cinder volumes on ``source``: their source path → this host's."""
        volume_api = self.manager.volume_api
        if volume_api is None:
            return {}
        async with self.pool.acquire() as conn:
            vols = [v for v in await volumes_db.for_instance(conn, uuid) if v["host"] == source]
        return {v["path"]: await volume_api.copy_to(v, self.host, empty=True) for v in vols}

    # -- destination: post_live_migration_at_destination --------------------------------
    async def post_live_migration(self, inst: asyncpg.Record, migration_id: int, request_id: str) -> None:
        """Destination: the guest runs here. Ports bound here; host, node, power state, the volume
        rows, the migration ``completed`` and the source's claim dropped in one transaction; the
        source's disks and volume copies removed. Re-runnable (recovery calls it when the guest was
        found here). An instance failed meanwhile by the watchdog still follows its guest here
        (migration ``error``); one being deleted is left to the delete, which removes it here."""
        uuid = str(inst["uuid"])
        await self._event(uuid, request_id, POST_EVENT, self.host)
        async with self.pool.acquire() as conn:
            migration = await migrations.get(conn, migration_id)
        info = await self.driver.get_info(uuid)
        if inst["vm_state"] == states.ACTIVE and info is not None and info.power_state == power_state.PAUSED:
            await self.driver.unpause(uuid)  # paused by a force-complete: it runs again here
            info = await self.driver.get_info(uuid)
        if self.manager.network_api is not None:
            await self.manager.network_api.bind_ports_to_host(uuid, self.host)
        power = info.power_state if info else power_state.NOSTATE
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await self._take_over(conn, uuid, migration, power, {"expect_task_state": MIGRATING},
                                      migrations.COMPLETED)
                await db.event_finish(conn, uuid, request_id, POST_EVENT)
                await db.finish_action(conn, uuid, request_id)
                await db.notify(conn, "instance.live_migration_post.end", {"host": self.host},
                                publisher_id=self.pub, instance_uuids=[uuid], request_id=request_id)
        except db.StateConflict as conflict:
            actual = conflict.actual
            failed = actual is not None and not actual["deleted"] and actual["vm_state"] == states.ERROR \
                and actual["task_state"] is None
            async with self.pool.acquire() as conn, conn.transaction():
                if failed:  # by the watchdog: ERROR, but where the guest really runs
                    await self._take_over(conn, uuid, migration, power,
                                          {"expect_vm_state": states.ERROR, "expect_task_state": None},
                                          migrations.ERROR)
                await finish_superseded(conn, uuid, request_id, POST_EVENT, moved_on(conflict))
            if not failed:
                return
        source = self.peers(migration["source_compute"])
        if source is not None:
            await source.store.remove(uuid)
        if self.manager.volume_api is not None:
            await self.manager.volume_api.drop_copies(uuid, migration["source_compute"])
        log.info("live_migrated", instance_uuid=uuid, source=migration["source_compute"], dest=self.host)

    async def _take_over(self, conn: asyncpg.Connection, uuid: str, migration: asyncpg.Record, power: int,
                         expect: dict[str, Any], status: str) -> None:
        """In the caller's transaction: the instance's row (from ``expect``), its volume rows and
        the claims follow the guest, which runs here; the migration ends in ``status``."""
        await db.compare_and_set(conn, uuid, task_state=None, host=self.host, node=migration["dest_node"],
                                 power_state=power, **expect)
        if self.manager.volume_api is not None:  # the attachments name this host's copies now
            await self.manager.volume_api.follow(conn, uuid, self.host)
        await migrations.set_status(conn, migration["id"], list(migrations.LIVE_OPEN), status)
        await migrations.drop_source_allocation(conn, str(migration["uuid"]))

    # -- source: rollback_live_migration --------------------------------------------------
    async def rollback(self, inst: asyncpg.Record, migration_id: int, request_id: str, dest: ComputeManager | None,
                       event: str, exc: BaseException, aborted: bool) -> None:
        """The guest still runs here: the destination's leftovers go (domain, volumes, network
        entries), the claim comes back to the instance, the migration ``error`` (``cancelled``
        after an abort), the instance as it was with the event failed."""
        uuid = str(inst["uuid"])
        if dest is not None and dest.host != self.host:
            await dest.live.rollback_at_destination(uuid)
        async with self.pool.acquire() as conn:
            migration = await migrations.get(conn, migration_id)
        status = migrations.CANCELLED if aborted else migrations.ERROR
        reason = "Migration was aborted" if aborted else f"{type(exc).__name__}: {exc}"
        tb = "" if aborted else traceback.format_exc(limit=5)
        async with self.pool.acquire() as conn, conn.transaction():
            with contextlib.suppress(db.StateConflict):
                await db.compare_and_set(conn, uuid, expect_task_state=MIGRATING, task_state=None)
            await migrations.revert_allocation(conn, uuid, str(migration["uuid"]))
            await conn.execute("UPDATE migrations SET status = $2, updated_at = now() WHERE id = $1",
                               migration_id, status)
            await fail_instance(conn, uuid, request_id, Failure(reason, tb, self.host, traceback=tb or None),
                                events=[event])
        log.warning("live_migration_rolled_back", instance_uuid=uuid, status=status, reason=reason)

    async def rollback_at_destination(self, uuid: str) -> None:
        """Destination: what pre_live_migration (or a cut-off migration) left here goes, the
        empty or half-filled copies of the Cinder volumes (their rows name the source) too."""
        await self.driver.destroy(uuid)
        await self.manager.store.remove(uuid)
        if self.manager.network_api is not None:
            await self.manager.network_api.unprepare_host(uuid, self.host)
        if self.manager.volume_api is not None:
            await self.manager.volume_api.drop_copies(uuid, self.host)

    # -- a delete in the middle ------------------------------------------------------------
    async def cleanup_for_delete(self, uuid: str) -> None:
        """The instance is being deleted (its host is this one): as Nova does, an open live
        migration is aborted first and its run waited for; then what it made on the other host
        goes (domain, disks, volume copies, DHCP entries and port filters), the claim it held is
        freed and it ends ``cancelled``. The caller removes what is here."""
        async with self.pool.acquire() as conn:
            rows = await migrations.live_of_instance(conn, uuid, migrations.LIVE_OPEN)
        for m in rows:
            source = self.peers(m["source_compute"]) if m["source_compute"] else None
            if source is not None:
                await source.live.stop(uuid, m["id"])
            for host in {m["source_compute"], m["dest_compute"]} - {None, self.host}:
                peer = self.peers(host)
                if peer is not None:
                    await peer.live.rollback_at_destination(uuid)
            async with self.pool.acquire() as conn, conn.transaction():
                await migrations.drop_source_allocation(conn, str(m["uuid"]))
                with contextlib.suppress(migrations.MigrationConflict):
                    await migrations.set_status(conn, m["id"], list(migrations.LIVE_OPEN), migrations.CANCELLED)
            log.info("live_migration_cancelled_by_delete", instance_uuid=uuid, migration_id=m["id"])


# -- recovery after a crash -----------------------------------------------------------


async def recover_live_migration(pool: asyncpg.Pool, computes: dict[str, Any], inst: asyncpg.Record,
                                 request_id: str) -> str:
    """A live migration cut off by a restart: if the guest runs on the destination the post
    finishes; otherwise (it still runs on the source, or never left) it is rolled back."""
    uuid = str(inst["uuid"])
    async with pool.acquire() as conn:
        open_ = await migrations.live_of_instance(conn, uuid, migrations.LIVE_OPEN)
    migration = open_[-1] if open_ else None
    request_id = (migration["request_id"] if migration is not None else None) or request_id
    source = computes.get(inst["host"]) if inst["host"] else None
    dest = computes.get(migration["dest_compute"]) if migration is not None and migration["dest_compute"] else None
    moved = (migration is not None and dest is not None and dest is not source
             and await dest.driver.get_info(uuid) is not None
             and (source is None or await source.driver.get_info(uuid) is None))
    note = ("interrupted by a restart; the guest runs on the destination: finishing the live migration" if moved
            else "interrupted by a restart; the guest is still on the source: live migration rolled back")
    async with pool.acquire() as conn, conn.transaction():
        await db.interrupt_open_events(conn, uuid, request_id, "interrupted by a restart of novalite")
        await db.event_finish(conn, uuid, request_id, RECOVER_EVENT, details=note)
    if moved:
        await dest.live.post_live_migration(inst, migration["id"], request_id)
        return "live_migration_finished"
    if migration is None or source is None:
        async with pool.acquire() as conn, conn.transaction():
            with contextlib.suppress(db.StateConflict):
                await db.compare_and_set(conn, uuid, expect_task_state=MIGRATING, task_state=None)
            if migration is not None:
                await conn.execute("UPDATE migrations SET status = 'error', updated_at = now() WHERE id = $1",
                                   migration["id"])
            await db.finish_action(conn, uuid, request_id)
        return "live_migration_cleared"
    await source.live.rollback(inst, migration["id"], request_id, dest, MIGRATE_EVENT,
                               RuntimeError("interrupted by a restart of novalite"), False)
    return "live_migration_rolled_back"
