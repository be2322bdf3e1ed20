"""Image rows (Glance v2 subset): visibility rules, listing, compare-and-set status."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

# Columns a client may sort by (Glance's allowed sort keys that we store).
SORT_KEYS = {
    "name", "status", "container_format", "disk_format", "size", "virtual_size", "id",
    "created_at", "updated_at", "min_disk", "min_ram", "visibility", "owner", "protected", "os_hidden",
}
# Base attributes that are real columns; everything else lives in `properties`.
COLUMNS = {
    "name", "owner", "status", "visibility", "disk_format", "container_format", "min_disk", "min_ram",
    "size", "checksum", "protected", "os_hidden", "os_hash_algo", "os_hash_value", "virtual_size", "tags",
}


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def visible(image: str, project: str, is_admin: str) -> str:
    """Glance's is_image_visible as a SQL condition on the image row ``image``, with ``project`` and
    ``is_admin`` the placeholders of the caller's project and admin flag: admin, no owner, public,
    community, the owner, or a member of a shared image whatever the member's status (Glance's
    ``_image_get`` asks with status None; only its list wants accepted members)."""
    return (f"({is_admin} OR {image}.owner IS NULL OR {image}.visibility IN ('public', 'community')"
            f" OR {image}.owner = {project} OR ({image}.visibility = 'shared' AND EXISTS"
            f" (SELECT 1 FROM image_members m WHERE m.image_id = {image}.id AND m.member = {project})))")


async def get(conn: asyncpg.Connection, image_id: str) -> asyncpg.Record | None:
    """An image by id, whoever owns it (a caller's reads go through :func:`get_visible`)."""
    iid = _uuid(image_id)
    return None if iid is None else await conn.fetchrow("SELECT * FROM images WHERE id = $1", iid)


async def get_visible(
    conn: asyncpg.Connection, image_id: str, project_id: str, is_admin: bool
) -> asyncpg.Record | None:
    """An image by id if the project may see it (:func:`visible`), else None, as if it did not exist."""
    iid = _uuid(image_id)
    if iid is None:
        return None
    return await conn.fetchrow(
        f"SELECT * FROM images WHERE id = $1 AND {visible('images', '$2', '$3')}", iid, project_id, is_admin
    )


async def member(conn: asyncpg.Connection, image_id: Any, project_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM image_members WHERE image_id = $1 AND member = $2", image_id, project_id
    )


async def create(conn: asyncpg.Connection, values: dict[str, Any], properties: dict[str, str]) -> asyncpg.Record:
    values = {"id": uuid.uuid4(), **values, "properties": properties}
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    return await conn.fetchrow(
        f"INSERT INTO images ({', '.join(values)}) VALUES ({placeholders}) RETURNING *", *values.values()
    )


async def update(
    conn: asyncpg.Connection, image_id: Any, values: dict[str, Any], properties: dict[str, str] | None
) -> asyncpg.Record:
    """Set base attributes and (when given) replace the whole properties object."""
    sets, args = ["updated_at = now()"], [image_id]
    for key, value in values.items():
        if key not in COLUMNS:
            raise ValueError(key)
        args.append(value)
        sets.append(f"{key} = ${len(args)}")
    if properties is not None:
        args.append(properties)
        sets.append(f"properties = ${len(args)}")
    return await conn.fetchrow(f"UPDATE images SET {', '.join(sets)} WHERE id = $1 RETURNING *", *args)


async def compare_and_set_status(
    conn: asyncpg.Connection, image_id: Any, expected: tuple[str, ...], status: str, **values: Any
) -> asyncpg.Record | None:
    """Move an image to ``status`` only if it is in one of ``expected``; None when it was not."""
    sets, args = ["status = $3", "updated_at = now()"], [image_id, list(expected), status]
    for key, value in values.items():
        if key not in COLUMNS:
            raise ValueError(key)
        args.append(value)
        sets.append(f"{key} = ${len(args)}")
    return await conn.fetchrow(
        f"UPDATE images SET {', '.join(sets)} WHERE id = $1 AND status = ANY($2::text[]) RETURNING *", *args
    )


async def delete(conn: asyncpg.Connection, image_id: Any) -> bool:
    return await conn.fetchval("DELETE FROM images WHERE id = $1 RETURNING true", image_id) is not None


@dataclass
class ImageQuery:
    """A list request, already validated by the API layer."""

    project_id: str
    is_admin: bool
    visibility: str | None = None       # public | private | shared | community | all | None
    member_status: str = "accepted"
    ids: list[uuid.UUID] | None = None
    equals: dict[str, Any] = field(default_factory=dict)       # column = value
    properties: dict[str, str] = field(default_factory=dict)   # properties->>key = value
    tag: list[str] = field(default_factory=list)
    size_min: int | None = None
    size_max: int | None = None
    os_hidden: bool | None = False
    sort: list[tuple[str, str]] = field(default_factory=lambda: [("created_at", "desc")])
    limit: int = 25
    marker: str | None = None


class MarkerNotFound(Exception):
    pass


async def list_images(conn: asyncpg.Connection, q: ImageQuery) -> list[asyncpg.Record]:
    """Glance's image list: visibility rules, filters, stable keyset pagination by ``sort`` + id."""
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    refs: dict[str, str] = {}

    def pid() -> str:  # bound only when used: asyncpg rejects unused parameters
        if "pid" not in refs:
            refs["pid"] = arg(q.project_id)
        return refs["pid"]

    def is_member() -> str:
        status = "" if q.member_status == "all" else f" AND m.status = {arg(q.member_status)}"
        return f"EXISTS (SELECT 1 FROM image_members m WHERE m.image_id = images.id AND m.member = {pid()}{status})"

    where: list[str] = []
    vis = q.visibility
    if vis == "public":
        where.append("visibility = 'public'")
    elif vis == "community":
        where.append("visibility = 'community'")
    elif vis == "private":
        where.append("visibility = 'private'" + ("" if q.is_admin else f" AND owner = {pid()}"))
    elif vis == "shared":
        where.append("visibility = 'shared'" + ("" if q.is_admin else f" AND (owner = {pid()} OR {is_member()})"))
    elif vis == "all":
        if not q.is_admin:
            where.append(f"(visibility IN ('public', 'community') OR owner = {pid()} OR {is_member()})")
    elif not q.is_admin:
        # default listing: community images only when owned
        where.append(f"(visibility = 'public' OR owner = {pid()} OR (visibility = 'shared' AND {is_member()}))")
    if q.ids is not None:
        where.append(f"id = ANY({arg(q.ids)}::uuid[])")
    for col, value in q.equals.items():
        if isinstance(value, list):
            where.append(f"{col} = ANY({arg(value)})")
        else:
            where.append(f"{col} = {arg(value)}")
    for key, value in q.properties.items():
        where.append(f"properties ->> {arg(key)} = {arg(value)}")
    for tag in q.tag:
        where.append(f"{arg(tag)} = ANY(tags)")
    if q.size_min is not None:
        where.append(f"size >= {arg(q.size_min)}")
    if q.size_max is not None:
        where.append(f"size <= {arg(q.size_max)}")
    if q.os_hidden is not None:
        where.append(f"os_hidden = {arg(q.os_hidden)}")

    sort = list(q.sort)
    if not any(k == "id" for k, _ in sort):
        sort.append(("id", sort[-1][1] if sort else "desc"))
    if q.marker is not None:
        marker = await get(conn, q.marker)
        if marker is None:
            raise MarkerNotFound(q.marker)
        # keyset condition: (k1, k2, ...) strictly after the marker in the sort order
        ors = []
        for i, (key, direction) in enumerate(sort):
            eqs = [f"{k} IS NOT DISTINCT FROM {arg(marker[k])}" for k, _ in sort[:i]]
            op = ">" if direction == "asc" else "<"
            ors.append("(" + " AND ".join([*eqs, f"{key} {op} {arg(marker[key])}"]) + ")")
        where.append("(" + " OR ".join(ors) + ")")
    order = ", ".join(f"{k} {d.upper()} NULLS {'FIRST' if d == 'asc' else 'LAST'}" for k, d in sort)
    sql = (f"SELECT * FROM images {'WHERE ' + ' AND '.join(where) if where else ''} "
           f"ORDER BY {order} LIMIT {arg(q.limit)}")
    return await conn.fetch(sql, *args)


async def list_members(conn: asyncpg.Connection, image_id: Any) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM image_members WHERE image_id = $1 ORDER BY created_at", image_id)


async def add_member(conn: asyncpg.Connection, image_id: Any, member_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """INSERT INTO image_members (image_id, member) VALUES ($1, $2)
           ON CONFLICT DO NOTHING RETURNING *""", image_id, member_id)


async def set_member_status(conn: asyncpg.Connection, image_id: Any, member_id: str, status: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        """UPDATE image_members SET status = $3, updated_at = now()
           WHERE image_id = $1 AND member = $2 RETURNING *""", image_id, member_id, status)


async def delete_member(conn: asyncpg.Connection, image_id: Any, member_id: str) -> bool:
    return await conn.fetchval(
        "DELETE FROM image_members WHERE image_id = $1 AND member = $2 RETURNING true", image_id, member_id
    ) is not None


async def storage_usage(conn: asyncpg.Connection, owner: str, excluding: Any = None) -> int:
    """Bytes of image data a project holds against image_size_total: its active and saving images."""
    return await conn.fetchval(
        "SELECT coalesce(sum(size), 0) FROM images WHERE owner = $1 AND status IN ('active', 'saving') "
        "AND id IS DISTINCT FROM $2",
        owner, excluding)
