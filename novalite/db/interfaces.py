"""Queries behind a server's interfaces: hot-plug binding, NIC tags and security group memberships.

The ports themselves are :mod:`novalite.db.networks`'; this module adds what
os-interface and the server security group actions need on top of them.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable

import asyncpg

from novalite.db.networks import PORT_COLUMNS


async def next_device_index(conn: asyncpg.Connection, instance_uuid: str) -> int:
    """The NIC position after the instance's last port (0 when it has none)."""
    return await conn.fetchval(
        "SELECT coalesce(max(device_index) + 1, 0) FROM ports WHERE device_id = $1", instance_uuid)


async def claim_port(conn: asyncpg.Connection, port_id: str, *, device_id: str, device_owner: str,
                     host: str | None, device_index: int) -> dict | None:
    """Bind an unbound port to an instance (locked, so two attaches cannot both win); None if bound."""
    row = await conn.fetchrow(
        f"""UPDATE ports AS p SET device_id = $2, device_owner = $3, host = $4, status = 'ACTIVE',
                   device_index = $5, updated_at = now()
            WHERE p.id = $1 AND p.device_id = ''
            RETURNING {PORT_COLUMNS}""",
        uuidlib.UUID(port_id), device_id, device_owner, host, device_index,
    )
    return dict(row) if row else None


async def set_tag(conn: asyncpg.Connection, port_id: str, instance_uuid: str, tag: str | None) -> None:
    await conn.execute(
        """INSERT INTO virtual_interfaces (port_id, instance_uuid, tag) VALUES ($1, $2, $3)
           ON CONFLICT (port_id) DO UPDATE SET instance_uuid = EXCLUDED.instance_uuid, tag = EXCLUDED.tag""",
        uuidlib.UUID(port_id), instance_uuid, tag,
    )


async def tags(conn: asyncpg.Connection, instance_uuid: str) -> dict[str, str | None]:
    """port id → tag of the instance's ports attached with one."""
    rows = await conn.fetch(
        "SELECT port_id::text AS port_id, tag FROM virtual_interfaces WHERE instance_uuid = $1", instance_uuid)
    return {r["port_id"]: r["tag"] for r in rows}


async def interface_ports(conn: asyncpg.Connection, instance_uuid: str) -> list[dict]:
    """The instance's ports in NIC order, with port security (for the views and the group actions)."""
    rows = await conn.fetch(
        f"""SELECT {PORT_COLUMNS}, p.port_security_enabled FROM ports p
            WHERE p.device_id = $1 ORDER BY p.device_index, p.created_at""",
        instance_uuid,
    )
    return [dict(r) for r in rows]


async def find_groups(conn: asyncpg.Connection, project_id: str, name_or_id: str) -> list[dict]:
    """The project's security groups with this id, else with this name (Neutron's find by name or id)."""
    cols = "id::text AS id, project_id, name, description"
    try:
        by_id = await conn.fetch(f"SELECT {cols} FROM security_groups WHERE id = $1 AND project_id = $2",
                                 uuidlib.UUID(name_or_id), project_id)
    except ValueError:
        by_id = []
    if by_id:
        return [dict(r) for r in by_id]
    rows = await conn.fetch(f"SELECT {cols} FROM security_groups WHERE name = $1 AND project_id = $2",
                            name_or_id, project_id)
    return [dict(r) for r in rows]


async def groups_by_name(conn: asyncpg.Connection, project_id: str, names: Iterable[str]) -> list[dict]:
    """The project's security groups with these names, with their rules as a JSON list."""
    rows = await conn.fetch(
        """SELECT g.id::text AS id, g.project_id, g.name, g.description,
                  coalesce(jsonb_agg(jsonb_build_object(
                      'id', r.id::text, 'protocol', r.protocol, 'port_range_min', r.port_range_min,
                      'port_range_max', r.port_range_max, 'remote_ip_prefix', r.remote_ip_prefix::text,
                      'remote_group_name', rg.name, 'remote_group_project', rg.project_id,
                      'direction', r.direction, 'ethertype', r.ethertype) ORDER BY r.created_at, r.id)
                      FILTER (WHERE r.id IS NOT NULL), '[]') AS rules
           FROM security_groups g
           LEFT JOIN security_group_rules r ON r.security_group_id = g.id
           LEFT JOIN security_groups rg ON rg.id = r.remote_group_id
           WHERE g.project_id = $1 AND g.name = ANY($2::text[])
           GROUP BY g.id ORDER BY g.project_id, g.name""",
        project_id, list(names),
    )
    return [dict(r) for r in rows]


async def group_members(conn: asyncpg.Connection, port_ids: Iterable[str], group_id: str) -> set[str]:
    """Which of these ports are members of the group."""
    rows = await conn.fetch(
        """SELECT port_id::text AS port_id FROM port_security_groups
           WHERE port_id = ANY($1::uuid[]) AND security_group_id = $2""",
        [uuidlib.UUID(p) for p in port_ids], uuidlib.UUID(group_id),
    )
    return {r["port_id"] for r in rows}


async def join_group(conn: asyncpg.Connection, port_ids: Iterable[str], group_id: str) -> None:
    await conn.execute(
        """INSERT INTO port_security_groups (port_id, security_group_id)
           SELECT p, $2 FROM unnest($1::uuid[]) AS p ON CONFLICT DO NOTHING""",
        [uuidlib.UUID(p) for p in port_ids], uuidlib.UUID(group_id),
    )


async def leave_group(conn: asyncpg.Connection, port_ids: Iterable[str], group_id: str) -> None:
    await conn.execute(
        "DELETE FROM port_security_groups WHERE port_id = ANY($1::uuid[]) AND security_group_id = $2",
        [uuidlib.UUID(p) for p in port_ids], uuidlib.UUID(group_id),
    )


async def lock_instance_groups(conn: asyncpg.Connection, instance_uuid: str) -> list[str]:
    """The server's group names, its row locked until the transaction ends."""
    names = await conn.fetchval("SELECT security_groups FROM instances WHERE uuid = $1 FOR UPDATE",
                                uuidlib.UUID(instance_uuid))
    return list(names or [])
