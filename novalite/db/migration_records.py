"""Nova's migration records (table ``migrations``): one per resize, cold migration, evacuation or
live migration, with its status and both hosts (and, for a live migration, its progress in bytes).

Every status change is a compare-and-set on ``status`` (as every instance state change is), so
two confirms, or a confirm racing a revert, cannot both win.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Sequence
from typing import Any

import asyncpg

# Nova's migration statuses (objects/migration.py) as a resize moves through them.
PRE_MIGRATING = "pre-migrating"
MIGRATING = "migrating"
POST_MIGRATING = "post-migrating"
FINISHED = "finished"
CONFIRMING = "confirming"
CONFIRMED = "confirmed"
REVERTING = "reverting"
REVERTED = "reverted"
ERROR = "error"
# An evacuation's own (Nova's rebuild with recreate): accepted → pre-migrating → done; completed once
# the old host removed its leftovers; failed when the rebuild elsewhere failed.
ACCEPTED = "accepted"
DONE = "done"
COMPLETED = "completed"
FAILED = "failed"
# migration_type, as Nova names them
RESIZE = "resize"
MIGRATION = "migration"
EVACUATION = "evacuation"
OPEN = (PRE_MIGRATING, MIGRATING, POST_MIGRATING, FINISHED, CONFIRMING, REVERTING)
# A live migration's (Nova's compute manager and libvirt driver): accepted by the API, queued on
# the source, preparing the destination, running in libvirt, then completed; failed before it
# started, error after, cancelled by an abort.
QUEUED = "queued"
PREPARING = "preparing"
RUNNING = "running"
CANCELLED = "cancelled"
LIVE_IN_PROGRESS = (QUEUED, PREPARING, RUNNING, POST_MIGRATING)  # what GET /servers/{id}/migrations lists
LIVE_OPEN = (ACCEPTED, *LIVE_IN_PROGRESS)
LIVE = "live-migration"
PROGRESS = ("memory_total", "memory_processed", "memory_remaining", "disk_total", "disk_processed",
            "disk_remaining")

_UPDATABLE = {"status", "dest_compute", "dest_node", "dest_host"}


def evacuated_away_sql(host: str) -> str:
    """``FROM ... WHERE`` of the done evacuations away from ``host`` (an SQL text expression) whose
    instance now lives elsewhere or is deleted, as ``m`` (the migration) and ``i`` (its instance):
    what that host still has of them to clean up (compute.evacuate's destroy_evacuated)."""
    return (f"migrations m LEFT JOIN instances i ON i.uuid = m.instance_uuid"
            f" WHERE m.source_compute = {host} AND m.migration_type = '{EVACUATION}' AND m.status = '{DONE}'"
            f" AND (i.host IS DISTINCT FROM {host} OR i.deleted)")


class MigrationConflict(Exception):
    """The migration is not in the expected status (the row as it is, or None)."""

    def __init__(self, actual: asyncpg.Record | None) -> None:
        super().__init__(f"migration is {actual['status'] if actual else 'gone'}")
        self.actual = actual


async def create(
    conn: asyncpg.Connection, inst: asyncpg.Record, old_flavor: dict, new_flavor: dict, request_id: str,
    migration_type: str = RESIZE, status: str = PRE_MIGRATING,
) -> asyncpg.Record:
    """A record of the instance's move (a resize by default, ``pre-migrating``), from its host to a
    host not yet chosen."""
    return await conn.fetchrow(
        """INSERT INTO migrations (uuid, instance_uuid, project_id, user_id, migration_type, status,
                                   source_compute, source_node, old_instance_type_id, new_instance_type_id,
                                   old_flavor, new_flavor, old_vm_state, request_id)
           VALUES ($1, $2, $3, $4, $14, $5, $6, $7,
                   (SELECT internal_id FROM flavors WHERE flavorid = $8),
                   (SELECT internal_id FROM flavors WHERE flavorid = $9), $10, $11, $12, $13)
           RETURNING *""",
        uuidlib.uuid4(), inst["uuid"], inst["project_id"], inst["user_id"], status, inst["host"],
        inst["node"], old_flavor["flavorid"], new_flavor["flavorid"], old_flavor, new_flavor, inst["vm_state"],
        request_id, migration_type,
    )


async def create_live(conn: asyncpg.Connection, inst: asyncpg.Record, dest: str | None, request_id: str
                      ) -> asyncpg.Record:
    """An ``accepted`` live-migration record of the instance from its host (to ``dest`` when named;
    the scheduler fills it in otherwise). The flavor does not change: old and new are the same."""
    flavor = dict(inst["flavor"])
    return await conn.fetchrow(
        """INSERT INTO migrations (uuid, instance_uuid, project_id, user_id, migration_type, status,
                                   source_compute, source_node, dest_compute, dest_host, old_instance_type_id,
                                   new_instance_type_id, old_flavor, new_flavor, old_vm_state, request_id)
           VALUES ($1, $2, $3, $4, 'live-migration', $5, $6, $7, $8, $8,
                   (SELECT internal_id FROM flavors WHERE flavorid = $9),
                   (SELECT internal_id FROM flavors WHERE flavorid = $9), $10, $10, $11, $12)
           RETURNING *""",
        uuidlib.uuid4(), inst["uuid"], inst["project_id"], inst["user_id"], ACCEPTED, inst["host"], inst["node"],
        dest, flavor.get("flavorid"), flavor, inst["vm_state"], request_id,
    )


async def set_progress(conn: asyncpg.Connection, migration_id: int, progress: dict[str, int]) -> None:
    """A running live migration's bytes (libvirt's job info), as GET /servers/{id}/migrations shows them."""
    values = [progress.get(k) for k in PROGRESS]
    await conn.execute(
        f"UPDATE migrations SET {', '.join(f'{k} = ${i + 2}' for i, k in enumerate(PROGRESS))}, updated_at = now() "
        "WHERE id = $1", migration_id, *values)


def open_sql(instance_uuid: str) -> str:
    """An SQL expression: whether the instance ``instance_uuid`` (an SQL uuid) has a migration a
    delete must end first (a resize's, a cold migration's or an evacuation's open statuses, a
    live migration's)."""
    statuses = ", ".join(f"'{s}'" for s in dict.fromkeys((*OPEN, *LIVE_OPEN)))
    return f"EXISTS (SELECT 1 FROM migrations m WHERE m.instance_uuid = {instance_uuid} AND m.status IN ({statuses}))"


async def live_of_instance(conn: asyncpg.Connection, instance_uuid: str, statuses: Sequence[str] = LIVE_IN_PROGRESS
                           ) -> list[asyncpg.Record]:
    """The instance's live migrations in one of ``statuses``, oldest first."""
    return await conn.fetch(
        """SELECT * FROM migrations WHERE instance_uuid = $1::uuid AND migration_type = 'live-migration'
             AND status = ANY($2::text[]) AND NOT deleted ORDER BY id""",
        instance_uuid, list(statuses))


async def set_status(
    conn: asyncpg.Connection, migration_id: int, expect: str | Sequence[str], status: str, **updates: Any
) -> asyncpg.Record:
    """Move a migration from one of ``expect`` to ``status``; MigrationConflict otherwise."""
    bad = set(updates) - _UPDATABLE
    if bad:
        raise ValueError(f"not updatable: {bad}")
    expected = [expect] if isinstance(expect, str) else list(expect)
    args: list[Any] = [migration_id, expected, status]
    sets = ["status = $3", "updated_at = now()"]
    for key, value in updates.items():
        args.append(value)
        sets.append(f"{key} = ${len(args)}")
    row = await conn.fetchrow(
        f"UPDATE migrations SET {', '.join(sets)} WHERE id = $1 AND status = ANY($2::text[]) RETURNING *", *args
    )
    if row is None:
        raise MigrationConflict(await conn.fetchrow("SELECT * FROM migrations WHERE id = $1", migration_id))
    return row


async def latest(conn: asyncpg.Connection, instance_uuid: str, statuses: Sequence[str] = OPEN
                 ) -> asyncpg.Record | None:
    """The instance's newest migration in one of ``statuses``."""
    return await conn.fetchrow(
        """SELECT * FROM migrations WHERE instance_uuid = $1::uuid AND status = ANY($2::text[])
           ORDER BY id DESC LIMIT 1""",
        instance_uuid, list(statuses),
    )


async def get(conn: asyncpg.Connection, migration_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM migrations WHERE id = $1", migration_id)


async def in_status(conn: asyncpg.Connection, statuses: Sequence[str]) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM migrations WHERE status = ANY($1::text[]) ORDER BY id", list(statuses)
    )


async def unconfirmed_older_than(conn: asyncpg.Connection, seconds: float) -> list[asyncpg.Record]:
    """Finished resizes waiting for a confirm longer than ``seconds`` (Nova's _poll_unconfirmed_resizes)."""
    return await conn.fetch(
        """SELECT m.* FROM migrations m JOIN instances i ON i.uuid = m.instance_uuid
           WHERE m.status = 'finished' AND NOT i.deleted AND i.vm_state = 'resized' AND i.task_state IS NULL
             AND m.updated_at < clock_timestamp() - make_interval(secs => $1)
           ORDER BY m.id""",
        seconds,
    )


async def hold_source_allocation(conn: asyncpg.Connection, instance_uuid: str, migration_uuid: str) -> None:
    """The instance's claim on its source host becomes the migration's (Nova's
    replace_allocation_with_migration): the host's usage stays as it was."""
    await conn.execute(
        "UPDATE allocations SET instance_uuid = $2::uuid WHERE instance_uuid = $1::uuid",
        instance_uuid, migration_uuid,
    )


async def revert_allocation(conn: asyncpg.Connection, instance_uuid: str, migration_uuid: str) -> None:
    """Back to the source: the destination claim goes, the migration's claim is the instance's again."""
    held = await conn.fetchval("SELECT 1 FROM allocations WHERE instance_uuid = $1::uuid", migration_uuid)
    if held:
        await conn.execute("DELETE FROM allocations WHERE instance_uuid = $1::uuid", instance_uuid)
        await conn.execute("UPDATE allocations SET instance_uuid = $1::uuid WHERE instance_uuid = $2::uuid",
                           instance_uuid, migration_uuid)


async def drop_source_allocation(conn: asyncpg.Connection, migration_uuid: str) -> None:
    """The move is done (confirmed, or the instance lives on the destination now): free the source."""
    await conn.execute("DELETE FROM allocations WHERE instance_uuid = $1::uuid", migration_uuid)


async def list_for_api(conn: asyncpg.Connection, filters: dict[str, Any], limit: int) -> list[asyncpg.Record]:
    """GET /os-migrations: newest first, filtered by host, status, instance, type, project, user."""
    where = ["NOT deleted"]
    args: list[Any] = []
    for key, column in (("status", "status"), ("migration_type", "migration_type"),
                        ("instance_uuid", "instance_uuid::text"), ("project_id", "project_id"),
                        ("user_id", "user_id"), ("source_compute", "source_compute")):
        if filters.get(key) is not None:
            args.append(str(filters[key]))
            where.append(f"{column} = ${len(args)}")
    if filters.get("host") is not None:
        args.append(filters["host"])
        where.append(f"(source_compute = ${len(args)} OR dest_compute = ${len(args)})")
    args.append(limit)
    return await conn.fetch(
        f"SELECT * FROM migrations WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
        *args,
    )
