"""Evacuation: a server of a down host is rebuilt from its image on another host.

Mirrors Nova's ``evacuate`` (compute/api.py ``evacuate``, the conductor's ``rebuild_instance``
with ``recreate``, compute/manager.py ``rebuild_instance`` on the destination and
``_destroy_evacuated_instances`` on the old host when it returns):

- API (:class:`EvacuateCheck`): the server's host service must be down as os-services shows it
  (forced down, or no heartbeat for ``service_down_time``) — otherwise Nova's 400 "Compute service
  of HOST is still in use."; a named host must exist and differ from the current one. One
  transaction: task_state None → ``rebuilding``, an ``evacuation`` migration record
  (``accepted``), the ``evacuate`` action.
- Conductor (``Conductor.evacuate_server``): ``pre-migrating``; the flavor through the
  scheduler with the old host ignored (a named host still passes the filters); the claim is
  made on the destination while the old host's claim is held by the migration.
- Destination (:meth:`EvacuateManager.rebuild`): the row names this host, its ports bound here,
  its volumes moved into this host's pool (possible only while the old host's libvirt answers,
  e.g. a host forced down to fence it), local disks made anew from the image (the old ones are
  out of reach), the config drive written, the guest started: ``rebuild_block_device_mapping``
  → ``rebuild_spawning`` → ACTIVE (STOPPED if it was, or always from microversion 2.95);
  migration ``done``.
- Old host back (its heartbeat written again — its libvirt answers — and not forced down; so
  also at the first heartbeat after a restart): :meth:`EvacuateManager.destroy_evacuated`
  removes its leftovers (domain, pool volumes) and the claim the migration held; ``done`` →
  ``completed``. A ``failed`` evacuation keeps both, for the operator, as in Nova.

Each stage is re-runnable: a kill -9 in the middle resumes it (:func:`recover_evacuation`).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from novalite import exception
from novalite.compute import states
from novalite.compute.failures import Failure, fail_instance, finish_superseded, moved_on
from novalite.compute.rebuild import (
    REBUILD_BLOCK_DEVICE_MAPPING,
    REBUILD_EVENT,
    REBUILD_SPAWNING,
    REBUILDING,
)
from novalite.compute.resize import named_host, start_move
from novalite.config import Config
from novalite.context import RequestContext
from novalite.db import catalog
from novalite.db import instances as db
from novalite.db import migration_records as migrations
from novalite.db import volumes as volumes_db

if TYPE_CHECKING:
    from novalite.compute.manager import ComputeManager

log = structlog.get_logger(__name__)

EVACUATE_VM_STATES = (states.ACTIVE, states.STOPPED, states.ERROR)
CONDUCTOR_EVENT = "conductor_rebuild_server"  # Nova's conductor event of a rebuild with recreate
STOP_KEY = "evacuate_stopped"  # request_spec flag: end STOPPED (microversion 2.95)


# -- API side ---------------------------------------------------------------------


class EvacuateCheck:
    """The checks and the state change of one accepted evacuation (Nova's compute API ``evacuate``)."""

    def __init__(self, pool: asyncpg.Pool, config: Config) -> None:
        self.pool = pool
        self.config = config

    async def accept(self, ctx: RequestContext, inst: asyncpg.Record, host: str | None, stop: bool,
                     force: bool = False) -> asyncpg.Record:
        """Validate, move the instance to ``rebuilding`` with an ``accepted`` evacuation record; return it.
        ``force`` (2.29–2.67, with a host): the scheduler's filters are skipped for that host.

        The caller has checked the instance's state and casts to the conductor afterwards."""
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn:
            host = await named_host(conn, host, exception.NotFound(f"Compute host {host} not found."))
            if host == inst["host"]:
                raise exception.Invalid("The target host can't be the same one.")
            source = await catalog.get_compute_node(conn, self.config.scheduler.service_down_time,
                                                    host=inst["host"])
            if source is not None and source["alive"]:
                log.error("evacuate_source_up", instance_uuid=uuid, host=inst["host"])
                raise exception.Invalid(f"Compute service of {inst['host']} is still in use.")
        spec = dict(inst["request_spec"] or {})
        spec["requested_destination"] = {"host": host, "force": force} if host else None
        spec[STOP_KEY] = stop
        async with self.pool.acquire() as conn, conn.transaction():
            migration = await start_move(conn, ctx, inst, "evacuate", vm_states=EVACUATE_VM_STATES,
                                         task_state=REBUILDING, migration_type=migrations.EVACUATION,
                                         status=migrations.ACCEPTED, request_spec=spec)
        log.info("evacuate_accepted", instance_uuid=uuid, source=inst["host"], host=host,
                 migration_id=migration["id"])
        return migration


# -- conductor side -----------------------------------------------------------------


def evacuate_request_spec(inst: asyncpg.Record, migration: asyncpg.Record) -> dict:
    """The scheduling request of an evacuation: the instance's flavor, its down host ignored, a named
    host forced (its filters still run unless the request said ``force``), the claim made as a
    move's (the old host's held)."""
    spec = dict(inst["request_spec"] or {})
    requested = spec.pop("requested_destination", None) or {}
    wanted = requested.get("host")
    spec["skip_filters"] = bool(wanted and requested.get("force"))
    spec.pop(STOP_KEY, None)
    spec["flavor"] = inst["flavor"]
    spec["migration"] = {"id": migration["id"], "uuid": str(migration["uuid"]),
                         "source_compute": migration["source_compute"], "task_state": REBUILDING}
    spec["ignore_hosts"] = [migration["source_compute"]]
    spec["force_hosts"] = [wanted] if wanted else []
    spec.pop("scheduler_hints", None)
    spec.pop("retry", None)
    return spec


# -- host side ----------------------------------------------------------------------

Peers = Callable[[str], "ComputeManager | None"]


class EvacuateManager:
    """Both ends of an evacuation on one host (held as ``ComputeManager.evacuate``): the rebuild
    when it is the destination, the removal of leftovers when it is the old host coming back."""

    def __init__(self, manager: ComputeManager, peers: Peers) -> None:
        self.manager = manager
        self.host = manager.host
        self.pool = manager.pool
        self.peers = peers
        self.pub = f"nova-compute:{self.host}"

    def cast(self, uuid: str, request_id: str, migration_id: int, admin_password: str | None) -> None:
        """Cast: rebuild the evacuated instance here, as one of this host's tracked tasks."""
        self.manager.spawn_task(self.rebuild(uuid, request_id, migration_id, admin_password))

    async def rebuild(self, uuid: str, request_id: str, migration_id: int, admin_password: str | None) -> None:
        """Destination: the instance moves here and is rebuilt from its image (re-runnable)."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        m = self.manager
        expect = [REBUILDING, REBUILD_BLOCK_DEVICE_MAPPING, REBUILD_SPAWNING]
        async with m.locks.lock(uuid):
            async with self.pool.acquire() as conn:
                migration = await migrations.get(conn, migration_id)
                await db.event_start(conn, uuid, request_id, REBUILD_EVENT, self.host)
                await db.notify(conn, "instance.rebuild.start", {"host": self.host}, publisher_id=self.pub,
                                instance_uuids=[uuid], request_id=request_id)
            try:
                async with self.pool.acquire() as conn:
                    inst = await db.compare_and_set(conn, uuid, expect_task_state=expect,
                                                    task_state=REBUILD_BLOCK_DEVICE_MAPPING, progress=33,
                                                    host=self.host, node=migration["dest_node"] or self.host)
                stop = bool((inst["request_spec"] or {}).get(STOP_KEY)) or \
                    migration["old_vm_state"] == states.STOPPED
                await m.driver.destroy(uuid)  # a domain from a cut-off attempt goes
                ports = []
                if m.network_api is not None and inst["requested_networks"] != "none":
                    ports = await m.network_api.allocate_for_instance(
                        uuid, inst["project_id"], inst["requested_networks"], self.host)
                await self._adopt_volumes(uuid)
                prepared = await m.rebuild_disks(inst, preserve_ephemeral=False)
                async with self.pool.acquire() as conn:
                    inst = await db.compare_and_set(conn, uuid, expect_task_state=[REBUILD_BLOCK_DEVICE_MAPPING,
                                                                                   REBUILD_SPAWNING],
                                                    task_state=REBUILD_SPAWNING, progress=66)
                vm_state, power = await m.spawn_rebuilt(inst, ports, prepared, admin_password, stop)
                spec = {k: v for k, v in (inst["request_spec"] or {}).items()
                        if k not in ("requested_destination", STOP_KEY)}
                async with self.pool.acquire() as conn, conn.transaction():
                    await db.compare_and_set(
                        conn, uuid, expect_task_state=REBUILD_SPAWNING, task_state=None, vm_state=vm_state,
                        power_state=power, launched_at=datetime.now(UTC), progress=100, request_spec=spec,
                    )
                    await migrations.set_status(conn, migration_id, [migrations.PRE_MIGRATING, migrations.DONE],
                                                migrations.DONE)
                    await db.event_finish(conn, uuid, request_id, REBUILD_EVENT)
                    await db.finish_action(conn, uuid, request_id)
                    await db.notify(conn, "instance.rebuild.end", {"host": self.host, "state": vm_state},
                                    publisher_id=self.pub, instance_uuids=[uuid], request_id=request_id)
                log.info("instance_evacuated", source=migration["source_compute"], vm_state=vm_state)
            except db.StateConflict as conflict:
                async with self.pool.acquire() as conn:
                    await finish_superseded(conn, uuid, request_id, REBUILD_EVENT, moved_on(conflict))
            except Exception as exc:
                await self._failed(uuid, request_id, migration_id, exc, expect)

    async def _adopt_volumes(self, uuid: str) -> None:
        """The instance's volumes in another host's pool move into this host's (re-runnable: a
        volume already here stays)."""
        volume_api = self.manager.volume_api
        if volume_api is None:
            return
        async with self.pool.acquire() as conn:
            vols = [v for v in await volumes_db.for_instance(conn, uuid) if v["host"] != self.host]
        for vol in vols:
            await volume_api.move(vol, self.host)

    async def _failed(self, uuid: str, request_id: str, migration_id: int, exc: Exception, expect: list[str]
                      ) -> None:
        """Nova: the evacuated instance goes to ERROR (here, where its row now points), migration ``failed``."""
        log.warning("evacuate_failed", error=str(exc))
        reason = f"{type(exc).__name__}: {exc}"
        tb = traceback.format_exc(limit=5)
        async with self.pool.acquire() as conn, conn.transaction():
            await fail_instance(conn, uuid, request_id, Failure(reason, tb, self.host, traceback=tb),
                                events=[REBUILD_EVENT], expect={"expect_task_state": expect})
            await conn.execute("UPDATE migrations SET status = $2, updated_at = now() WHERE id = $1",
                               migration_id, migrations.FAILED)

    # -- the old host, back ------------------------------------------------------------
    async def destroy_evacuated(self) -> int:
        """Nova's _destroy_evacuated_instances: what this host still has of instances evacuated away
        from it (domain, pool volumes) goes, with the claim their migration held; ``done`` →
        ``completed`` (a ``failed`` one is left for the operator, as in Nova). Called at every
        heartbeat of the host while it answers and is not forced down."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(f"SELECT m.* FROM {migrations.evacuated_away_sql('$1')}", self.host)
        for m in rows:
            uuid = str(m["instance_uuid"])
            await self.manager.driver.destroy(uuid)
            await self.manager.store.remove(uuid)
            async with self.pool.acquire() as conn, conn.transaction():
                await migrations.drop_source_allocation(conn, str(m["uuid"]))
                await migrations.set_status(conn, m["id"], migrations.DONE, migrations.COMPLETED)
            log.info("evacuated_instance_destroyed", instance_uuid=uuid, migration_id=m["id"])
        return len(rows)


# -- recovery after a crash -----------------------------------------------------------


async def recover_evacuation(pool: asyncpg.Pool, computes: dict[str, Any], inst: asyncpg.Record,
                             schedule: Callable[[str, str], None]) -> str | None:
    """Resume an evacuation cut off by a restart (an instance in a rebuild task state with an open
    evacuation record; None when it is a plain rebuild): not yet scheduled → scheduled again
    (a claim it made is released first); scheduled → the rebuild on the destination runs again
    (its admin password, which travelled only in memory, is gone)."""
    uuid = str(inst["uuid"])
    async with pool.acquire() as conn:
        migration = await migrations.latest(conn, uuid, [migrations.ACCEPTED, migrations.PRE_MIGRATING])
    if migration is None or migration["migration_type"] != migrations.EVACUATION:
        return None
    request_id = migration["request_id"]
    async with pool.acquire() as conn, conn.transaction():
        await db.interrupt_open_events(conn, uuid, request_id, "interrupted by a restart of novalite")
        await db.event_finish(conn, uuid, request_id, "compute_recover_instance",
                              details=f"interrupted in task_state {inst['task_state']}; resuming the evacuation")
    dest = computes.get(migration["dest_compute"]) if migration["dest_compute"] else None
    if migration["status"] == migrations.PRE_MIGRATING and dest is not None:  # claimed there: rebuild again
        dest.evacuate.cast(uuid, request_id, migration["id"], None)
        return "evacuate_resumed"
    async with pool.acquire() as conn, conn.transaction():
        await migrations.revert_allocation(conn, uuid, str(migration["uuid"]))
        await conn.execute("UPDATE migrations SET status = $2, dest_compute = NULL, dest_node = NULL, "
                           "updated_at = now() WHERE id = $1", migration["id"], migrations.ACCEPTED)
    schedule(uuid, request_id)
    return "evacuate_rescheduled"
