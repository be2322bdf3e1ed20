"""Queries behind volumes and snapshots (the Cinder subset) and their attachments.

Every status change is a compare-and-set: ``UPDATE ... WHERE status = ANY(expected)``
with the new values, returning the row or raising :class:`VolumeStateConflict`.
Two requests that race for one volume (two boots, a boot and an attach) both try
``available → reserved``; Postgres row locking lets exactly one see ``available``.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

# Cinder's statuses, as the volume state machine uses them.
CREATING = "creating"
AVAILABLE = "available"
RESERVED = "reserved"
ATTACHING = "attaching"
IN_USE = "in-use"
DETACHING = "detaching"
DELETING = "deleting"
ERROR = "error"
ERROR_DELETING = "error_deleting"


class VolumeStateConflict(Exception):
    """The volume was not in an expected status (``actual`` is the row as it is, or None)."""

    def __init__(self, volume_id: str, actual: asyncpg.Record | None) -> None:
        super().__init__(volume_id)
        self.volume_id = volume_id
        self.actual = actual


async def get(conn: asyncpg.Connection, volume_id: str, include_deleted: bool = False) -> asyncpg.Record | None:
    try:
        vid = uuidlib.UUID(str(volume_id))
    except ValueError:
        return None
    sql = "SELECT * FROM volumes WHERE id = $1" + ("" if include_deleted else " AND NOT deleted")
    return await conn.fetchrow(sql, vid)


async def list_volumes(
    conn: asyncpg.Connection, project_id: str | None, filters: dict[str, Any], limit: int | None = None,
    marker: str | None = None,
) -> list[asyncpg.Record]:
    """Live volumes of a project (every project when None), newest first, with Cinder's filters."""
    where, args = ["NOT deleted"], []
    if project_id is not None:
        args.append(project_id)
        where.append(f"project_id = ${len(args)}")
    for key in ("name", "status", "bootable", "availability_zone"):
        if key in filters:
            value = filters[key]
            if key == "bootable":
                value = str(value).lower() in ("true", "1", "yes")
            args.append(value)
            where.append(f"{key} = ${len(args)}")
    if filters.get("metadata"):
        args.append(filters["metadata"])
        where.append(f"metadata @> ${len(args)}::jsonb")
    if marker:
        args.append(marker)
        where.append(f"created_at < (SELECT created_at FROM volumes WHERE id::text = ${len(args)})")
    sql = f"SELECT * FROM volumes WHERE {' AND '.join(where)} ORDER BY created_at DESC, id"
    if limit is not None:
        args.append(limit)
        sql += f" LIMIT ${len(args)}"
    return await conn.fetch(sql, *args)


async def insert(conn: asyncpg.Connection, **values: Any) -> asyncpg.Record:
    cols = list(values)
    placeholders = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    return await conn.fetchrow(
        f"INSERT INTO volumes ({', '.join(cols)}) VALUES ({placeholders}) RETURNING *", *values.values()
    )


async def compare_and_set(
    conn: asyncpg.Connection,
    volume_id: str,
    expect: str | Sequence[str],
    *,
    expect_instance: str | None = None,
    **updates: Any,
) -> asyncpg.Record:
    """Move a volume from one of ``expect`` to ``updates`` in one statement, or raise VolumeStateConflict."""
    expected = [expect] if isinstance(expect, str) else list(expect)
    args: list[Any] = [uuidlib.UUID(str(volume_id)), expected]
    sets = ["updated_at = now()"]
    for col, value in updates.items():
        args.append(value)
        sets.append(f"{col} = ${len(args)}")
    where = "id = $1 AND status = ANY($2::text[]) AND NOT deleted"
    if expect_instance is not None:
        args.append(uuidlib.UUID(str(expect_instance)))
        where += f" AND instance_uuid = ${len(args)}"
    row = await conn.fetchrow(f"UPDATE volumes SET {', '.join(sets)} WHERE {where} RETURNING *", *args)
    if row is None:
        raise VolumeStateConflict(str(volume_id), await get(conn, volume_id))
    return row


async def update_fields(conn: asyncpg.Connection, volume_id: str, **updates: Any) -> asyncpg.Record | None:
    """Change descriptive fields (name, description, metadata): no status involved."""
    args: list[Any] = [uuidlib.UUID(str(volume_id))]
    sets = ["updated_at = now()"]
    for col, value in updates.items():
        args.append(value)
        sets.append(f"{col} = ${len(args)}")
    return await conn.fetchrow(
        f"UPDATE volumes SET {', '.join(sets)} WHERE id = $1 AND NOT deleted RETURNING *", *args
    )


async def mark_deleted(conn: asyncpg.Connection, volume_id: str) -> None:
    await conn.execute(
        "UPDATE volumes SET deleted = true, deleted_at = now(), status = 'deleted', instance_uuid = NULL, "
        "updated_at = now() WHERE id = $1",
        uuidlib.UUID(str(volume_id)),
    )


def held_sql(instance_uuid: str) -> str:
    """An SQL expression: whether the instance ``instance_uuid`` (an SQL uuid) holds a volume (one
    attached or reserved for it, or named by one of its BDMs)."""
    return f"""(EXISTS (SELECT 1 FROM volumes v WHERE v.instance_uuid = {instance_uuid} AND NOT v.deleted)
                OR EXISTS (SELECT 1 FROM block_device_mappings b WHERE b.instance_uuid = {instance_uuid}
                                                                  AND b.volume_id IS NOT NULL AND NOT b.deleted))"""


async def for_instance(conn: asyncpg.Connection, instance_uuid: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM volumes WHERE instance_uuid = $1 AND NOT deleted ORDER BY mountpoint NULLS LAST",
        uuidlib.UUID(str(instance_uuid)),
    )


async def has_snapshots(conn: asyncpg.Connection, volume_id: str) -> bool:
    return bool(await conn.fetchval(
        "SELECT 1 FROM volume_snapshots WHERE volume_id = $1 AND NOT deleted LIMIT 1", uuidlib.UUID(str(volume_id))
    ))


# -- quota -------------------------------------------------------------------------

async def usage(conn: asyncpg.Connection, project_id: str) -> dict[str, int]:
    """volumes, gigabytes (volumes + snapshots, as Cinder counts) and snapshots in use."""
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM volumes WHERE project_id = $1 AND NOT deleted) AS volumes,
                  (SELECT coalesce(sum(size), 0) FROM volumes WHERE project_id = $1 AND NOT deleted) AS vol_gb,
                  (SELECT count(*) FROM volume_snapshots WHERE project_id = $1 AND NOT deleted) AS snapshots,
                  (SELECT coalesce(sum(size), 0) FROM volume_snapshots WHERE project_id = $1 AND NOT deleted)
                      AS snap_gb""",
        project_id,
    )
    return {"volumes": row["volumes"], "gigabytes": row["vol_gb"] + row["snap_gb"], "snapshots": row["snapshots"]}


# -- snapshots ----------------------------------------------------------------------

async def get_snapshot(conn: asyncpg.Connection, snapshot_id: str) -> asyncpg.Record | None:
    try:
        sid = uuidlib.UUID(str(snapshot_id))
    except ValueError:
        return None
    return await conn.fetchrow("SELECT * FROM volume_snapshots WHERE id = $1 AND NOT deleted", sid)


async def list_snapshots(conn: asyncpg.Connection, project_id: str | None, filters: dict[str, Any]) -> list[asyncpg.Record]:
    where, args = ["NOT deleted"], []
    if project_id is not None:
        args.append(project_id)
        where.append(f"project_id = ${len(args)}")
    for key in ("name", "status"):
        if key in filters:
            args.append(filters[key])
            where.append(f"{key} = ${len(args)}")
    if "volume_id" in filters:
        args.append(str(filters["volume_id"]))
        where.append(f"volume_id::text = ${len(args)}")
    return await conn.fetch(
        f"SELECT * FROM volume_snapshots WHERE {' AND '.join(where)} ORDER BY created_at DESC, id", *args
    )


async def insert_snapshot(conn: asyncpg.Connection, **values: Any) -> asyncpg.Record:
    cols = list(values)
    placeholders = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    return await conn.fetchrow(
        f"INSERT INTO volume_snapshots ({', '.join(cols)}) VALUES ({placeholders}) RETURNING *", *values.values()
    )


async def snapshot_compare_and_set(
    conn: asyncpg.Connection, snapshot_id: str, expect: str | Sequence[str], **updates: Any
) -> asyncpg.Record:
    expected = [expect] if isinstance(expect, str) else list(expect)
    args: list[Any] = [uuidlib.UUID(str(snapshot_id)), expected]
    sets = ["updated_at = now()"]
    for col, value in updates.items():
        args.append(value)
        sets.append(f"{col} = ${len(args)}")
    row = await conn.fetchrow(
        f"UPDATE volume_snapshots SET {', '.join(sets)} WHERE id = $1 AND status = ANY($2::text[]) "
        "AND NOT deleted RETURNING *",
        *args,
    )
    if row is None:
        raise VolumeStateConflict(str(snapshot_id), await get_snapshot(conn, snapshot_id))
    return row


async def mark_snapshot_deleted(conn: asyncpg.Connection, snapshot_id: str) -> None:
    await conn.execute(
        "UPDATE volume_snapshots SET deleted = true, deleted_at = now(), status = 'deleted', updated_at = now() "
        "WHERE id = $1",
        uuidlib.UUID(str(snapshot_id)),
    )


# -- block device mappings of volumes ------------------------------------------------

async def volume_bdms(conn: asyncpg.Connection, instance_uuid: str) -> list[asyncpg.Record]:
    """The live BDMs of an instance that end in a volume, in boot order."""
    return await conn.fetch(
        """SELECT * FROM block_device_mappings
           WHERE instance_uuid = $1 AND NOT deleted AND destination_type = 'volume'
           ORDER BY boot_index NULLS LAST, id""",
        uuidlib.UUID(str(instance_uuid)),
    )


async def bdm_for_volume(conn: asyncpg.Connection, instance_uuid: str, volume_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM block_device_mappings WHERE instance_uuid = $1 AND volume_id = $2 AND NOT deleted",
        uuidlib.UUID(str(instance_uuid)), str(volume_id),
    )


async def device_names(conn: asyncpg.Connection, instance_uuid: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT device_name FROM block_device_mappings WHERE instance_uuid = $1 AND NOT deleted "
        "AND device_name IS NOT NULL",
        uuidlib.UUID(str(instance_uuid)),
    )
    return {r["device_name"] for r in rows}


async def set_bdm(conn: asyncpg.Connection, bdm_id: int, **updates: Any) -> None:
    args: list[Any] = [bdm_id]
    sets = []
    for col, value in updates.items():
        args.append(value)
        sets.append(f"{col} = ${len(args)}")
    await conn.execute(f"UPDATE block_device_mappings SET {', '.join(sets)} WHERE id = $1", *args)


async def delete_bdms_of_volumes(conn: asyncpg.Connection, volume_ids: Iterable[str]) -> None:
    await conn.execute(
        "UPDATE block_device_mappings SET deleted = true WHERE volume_id = ANY($1::text[]) AND NOT deleted",
        [str(v) for v in volume_ids],
    )
