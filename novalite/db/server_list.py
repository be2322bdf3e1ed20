"""The server list (GET /servers and /servers/detail): Nova's
instance_get_all_by_filters_sort as one query on ``instances``.

The API layer validates the query string and fills a :class:`ServerListQuery`;
this module turns it into SQL. It knows nothing of HTTP, microversions or
policy: what a caller may filter or sort by is decided before the query gets here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from novalite.db.catalog import host_status_sql
from novalite.db.instances import get_with
from novalite.db.networks import device_addresses_sql


@dataclass(slots=True)
class ServerListQuery:
    """One list request, already validated. ``None`` (an empty list for ``states``) leaves a filter out."""

    # (column, "asc" | "desc"), most significant first; the id (descending) always breaks ties.
    sort: list[tuple[str, str]]
    limit: int
    marker: str | None = None  # uuid of the last server of the previous page
    detail: bool = False  # the detail view's columns (DETAIL_COLUMNS) or the index view's id, uuid and name
    project_id: str | None = None  # None: every project (all_tenants)
    changes_since: datetime | None = None  # updated_at at or after; with changes_before, deleted rows count too
    changes_before: datetime | None = None
    deleted: bool = False  # deleted rows instead of live ones (when neither changes-* filter is given)
    # (vm_state, task_state) pairs, any one of which matches; task_state "*" matches every task
    # state and vm_state "deleted" matches deleted rows.
    states: list[tuple[str, str | None]] = field(default_factory=list)
    name: str | None = None  # POSIX regex on display_name
    ip: str | None = None  # regex matched at the start of one of the instance's IPv4 fixed IPs
    ip6: str | None = None  # the same for IPv6
    reservation_id: str | None = None
    flavor: str | None = None  # flavorid
    image: str | None = None  # image id
    host: str | None = None
    node: str | None = None
    user_id: str | None = None
    availability_zone: str | None = None
    tags: list[str] | None = None  # has all of them
    tags_any: list[str] | None = None  # has one of them at least
    not_tags: list[str] | None = None  # lacks one of them at least
    not_tags_any: list[str] | None = None  # has none of them
    locked: bool | None = None


# A uuid as Postgres prints it (lower case, dashed): only such device ids name an instance.
_UUID_TEXT = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def _is_shown_uuid(value: str) -> bool:
    """Whether `value` is a uuid written as the API writes them (what ``uuid::text`` gives)."""
    return re.fullmatch(_UUID_TEXT, value) is not None


# What the detail view shows of a server: every column but the build's inputs (system metadata,
# injected files, requested networks, the key pair's public key), and of the request spec only its
# pinned availability zone -- the request spec is the largest JSON a row holds, and a page decodes
# a thousand of them.
DETAIL_COLUMNS = (
    "id, uuid, project_id, user_id, display_name, display_description, hostname, reservation_id, launch_index, "
    "vm_state, task_state, power_state, host, node, availability_zone, flavor, image_ref, kernel_id, ramdisk_id, "
    "key_name, user_data, config_drive, auto_disk_config, access_ip_v4, access_ip_v6, root_device_name, metadata, "
    "security_groups, tags, locked, locked_reason, progress, created_at, updated_at, launched_at, terminated_at, "
    "deleted, jsonb_build_object('availability_zone', request_spec->'availability_zone') AS request_spec"
)


class MarkerNotFound(Exception):
    """The marker names no instance."""


async def list_servers(conn: asyncpg.Connection, q: ServerListQuery) -> list[asyncpg.Record]:
    """One page of the instances that pass every filter of `q`, in its sort order.

    Sorted by created_at alone (the default), the page after the marker is a keyset
    condition on (created_at, id) in SQL. Sorted otherwise, every matching row is read
    and the page is cut after the marker's row here (from the start when the marker
    is not among the rows). Raises :class:`MarkerNotFound` for an unknown marker.
    """
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where: list[str] = []
    if q.project_id is not None:
        where.append(f"project_id = {arg(q.project_id)}")
    if q.changes_since:
        where.append(f"updated_at >= {arg(q.changes_since)}")
    if q.changes_before:
        where.append(f"updated_at <= {arg(q.changes_before)}")
    if not (q.changes_since or q.changes_before):
        where.append("deleted = " + ("true" if q.deleted else "false"))
    if q.states:
        ors = []
        for vm, task in q.states:
            if vm == "deleted":
                ors.append("deleted")
            elif task == "*":
                ors.append(f"vm_state = {arg(vm)}")
            else:
                ors.append(f"(vm_state = {arg(vm)} AND task_state = {arg(task)})")
        where.append("(" + " OR ".join(ors) + ")")
    if q.name is not None:
        where.append(f"display_name ~ {arg(q.name)}")
    for pattern, family in ((q.ip, 4), (q.ip6, 6)):
        if pattern is not None:
            # Nova matches the regex at the start of each fixed IP of the instance.
            # The ports are few next to the instances (deleted ones have none): the matching
            # ports' device ids, as uuids, probe the instances' primary key.
            where.append(
                f"uuid IN (SELECT CASE WHEN device_id ~ '{_UUID_TEXT}' THEN device_id::uuid END FROM ports "
                f"WHERE family(fixed_ip) = {family} AND host(fixed_ip) ~ ('^(?:' || {arg(pattern)} || ')'))"
            )
    for column, value in (
        ("reservation_id", q.reservation_id), ("flavor->>'flavorid'", q.flavor), ("image_ref", q.image),
        ("host", q.host), ("node", q.node), ("user_id", q.user_id), ("availability_zone", q.availability_zone),
    ):
        if value is not None:
            where.append(f"{column} = {arg(value)}")
    for tags, condition in (
        (q.tags, "tags @> {}::text[]"), (q.tags_any, "tags && {}::text[]"),
        (q.not_tags, "NOT (tags @> {}::text[])"), (q.not_tags_any, "NOT (tags && {}::text[])"),
    ):
        if tags is not None:
            where.append(condition.format(arg(tags)))
    if q.locked is not None:
        where.append("locked" if q.locked else "NOT locked")  # a constant, so the partial index on locked matches
    order = [f"{column} {direction.upper()}" for column, direction in q.sort]
    order.append("id DESC")
    keyset = [column for column, _ in q.sort] == ["created_at"]
    marker_id = None
    if q.marker is not None:
        # Compared as a uuid (the primary key), for markers in the form the API shows them only.
        marker_id = await conn.fetchval("SELECT id FROM instances WHERE uuid = $1::uuid", q.marker) if (
            _is_shown_uuid(q.marker)) else None
        if marker_id is None:
            raise MarkerNotFound(q.marker)
        if keyset:
            cmp = "<" if q.sort[0][1] == "desc" else ">"
            where.append(f"(created_at, id) {cmp} (SELECT created_at, id FROM instances WHERE id = {arg(marker_id)})")
    columns = DETAIL_COLUMNS if q.detail else "id, uuid, display_name"  # the index view needs no JSON columns
    sql = f"SELECT {columns} FROM instances WHERE {' AND '.join(where) or 'true'} ORDER BY {', '.join(order)}"
    if marker_id is None or keyset:
        sql += f" LIMIT {arg(q.limit)}"
    rows = await conn.fetch(sql, *args)
    if marker_id is not None and not keyset:
        ids = [r["id"] for r in rows]
        rows = rows[ids.index(marker_id) + 1 :][: q.limit] if marker_id in ids else rows[: q.limit]
    return rows


async def attached_volumes(conn: asyncpg.Connection, uuids: list[str]) -> dict[str, list[asyncpg.Record]]:
    """The volumes attached to each of the servers (a list's ``os-extended-volumes:volumes_attached``):
    volume_id and delete_on_termination of their mappings that have a volume, in boot order. Only
    those two columns, and only those rows: a page of 1,000 servers has 1,000 image mappings and
    decoding them whole was half of its mappings' and faults' round trips."""
    rows = await conn.fetch(
        """SELECT instance_uuid::text AS uuid, volume_id, delete_on_termination FROM block_device_mappings
           WHERE instance_uuid = ANY($1::uuid[]) AND NOT deleted AND volume_id IS NOT NULL
           ORDER BY instance_uuid, boot_index NULLS LAST, id""",
        uuids,
    )
    out: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        out.setdefault(r["uuid"], []).append(r)
    return out


def _extras(uuid: str, host: str, service_down_time: str, *, addresses: bool, groups: bool) -> dict[str, str]:
    """server_extras' columns as SQL expressions, of the server ``uuid`` (an SQL uuid) on ``host`` (SQL text)."""
    return {
        # JSON, not rows of the tables' types: asyncpg looks a composite type up on each connection's
        # first use of it (8 ms a time, in the first GET on every pooled connection)
        "fault": f"""(SELECT jsonb_build_object('code', f.code, 'message', f.message, 'details', f.details,
                                                'created_at', f.created_at)
                      FROM instance_faults f WHERE f.instance_uuid = {uuid} ORDER BY f.id DESC LIMIT 1)""",
        "bdms": f"""coalesce((SELECT jsonb_agg(jsonb_build_object('volume_id', b.volume_id,
                                                                 'delete_on_termination', b.delete_on_termination)
                                               ORDER BY b.boot_index NULLS LAST, b.id)
                             FROM block_device_mappings b WHERE b.instance_uuid = {uuid} AND NOT b.deleted), '[]')""",
        "addresses": device_addresses_sql(f"{uuid}::text") if addresses else "NULL::jsonb",
        "groups": (f"ARRAY(SELECT group_uuid::text FROM instance_group_members WHERE instance_uuid = {uuid})"
                   if groups else "NULL::text[]"),
        "host_status": f"(SELECT {host_status_sql('n', service_down_time)} FROM compute_nodes n WHERE n.host = {host})",
    }


async def server_extras(
    conn: asyncpg.Connection, uuid: str, *, addresses: bool, groups: bool, host: str | None,
    service_down_time: float = 0,
) -> asyncpg.Record:
    """What one server's document shows besides its row, in ONE round trip (it was five): ``fault``
    (its latest: code, message, details and created_at of a row of instance_faults, or None),
    ``bdms`` (volume_id and delete_on_termination of its block device mappings, in boot order),
    ``addresses`` ([network name, fixed IP, MAC] of its ports, when asked), ``groups`` (its server
    groups' uuids, when asked) and ``host_status`` (of ``host``'s service: see
    catalog.host_status_sql; None without a host or a service row)."""
    return await conn.fetchrow(
        "SELECT " + ", ".join(f"{sql} AS {name}" for name, sql in _extras(
            "$1::uuid", "$2", "$3", addresses=addresses, groups=groups).items()),
        uuid, host, float(service_down_time),
    )


async def server_shown(
    conn: asyncpg.Connection, uuid: str, *, addresses: bool, groups: bool, service_down_time: float = 0,
) -> asyncpg.Record | None:
    """A live server's row (db.instances.get's columns) and, in the same row and round trip, what
    server_extras reads of it (the host status of its own host); None when no live server has the
    uuid. GET /servers/{id} reads the server once instead of twice."""
    return await get_with(conn, uuid, _extras("i.uuid", "i.host", "$2", addresses=addresses, groups=groups),
                          float(service_down_time))
