"""Queries behind a server's interfaces: hot-plug binding, device indexes and NIC tags.

The ports themselves are :mod:`novalite.db.networks`'; this module adds what
os-interface needs on top of them; group membership is :mod:`novalite.db.security_groups`'.
"""

from __future__ import annotations

import uuid as uuidlib

import asyncpg

from novalite.db.networks import PORT_COLUMNS, bound_to


async def next_device_index(conn: asyncpg.Connection, instance_uuid: str) -> int:
    """The NIC position after the instance's last port (0 when it has none)."""
    return await conn.fetchval(
        f"SELECT coalesce(max(device_index) + 1, 0) FROM ports p WHERE {bound_to('= $1')}", instance_uuid)


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
            WHERE {bound_to("= $1")} ORDER BY p.device_index, p.created_at""",
        instance_uuid,
    )
    return [dict(r) for r in rows]
