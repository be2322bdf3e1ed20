"""Queries behind networks, subnets and ports (the Neutron subset).

Plain SQL on asyncpg; addresses come back as text. MAC and IP allocation are
race-free: an IP is picked while the subnet row is locked (``FOR UPDATE``), and
the unique constraints on ``ports (mac_address)`` and ``ports (network_id,
fixed_ip)`` back that up, so two concurrent allocations can never share an
address even across processes.
"""

from __future__ import annotations

import secrets
import uuid as uuidlib
from collections.abc import Iterable

import asyncpg

MAC_PREFIX = "fa:16:3e"  # OpenStack's MAC prefix, as Neutron's base_mac
_MAC_TRIES = 16

NETWORK_COLUMNS = """n.id::text AS id, n.name, n.project_id, n.shared, n.is_default, n.libvirt_name, n.mtu,
    n.status, n.created_at, n.updated_at"""
SUBNET_COLUMNS = """s.id::text AS id, s.network_id::text AS network_id, s.name, s.project_id, s.cidr::text AS cidr,
    host(s.gateway_ip) AS gateway_ip, host(s.pool_start) AS pool_start, host(s.pool_end) AS pool_end,
    s.enable_dhcp, s.dns_nameservers, s.created_at, s.updated_at"""
PORT_COLUMNS = """p.id::text AS id, p.network_id::text AS network_id, p.subnet_id::text AS subnet_id, p.project_id,
    p.name, p.mac_address, host(p.fixed_ip) AS fixed_ip, p.device_id, p.device_owner, p.host, p.status,
    p.preserve_on_delete, p.device_index, p.created_at, p.updated_at"""


class AddressInUse(Exception):
    """The requested fixed IP already belongs to a port (``device_id`` says whose)."""

    def __init__(self, address: str, device_id: str) -> None:
        super().__init__(address)
        self.address = address
        self.device_id = device_id


class NoMoreAddresses(Exception):
    """Every address of the subnet's allocation pool is taken."""


def random_mac() -> str:
    return MAC_PREFIX + "".join(f":{b:02x}" for b in secrets.token_bytes(3))


# Networks and subnets -------------------------------------------------------------


async def upsert_network(
    conn: asyncpg.Connection,
    *,
    name: str,
    project_id: str,
    shared: bool,
    is_default: bool,
    libvirt_name: str,
    mtu: int,
) -> dict:
    """Create the configured network ``name`` ([[networks]]) or bring it in line (its id is kept)."""
    row = await conn.fetchrow(
        f"""INSERT INTO networks AS n (id, name, config_name, project_id, shared, is_default, libvirt_name, mtu)
            VALUES ($1, $2, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (config_name) DO UPDATE SET project_id = EXCLUDED.project_id, shared = EXCLUDED.shared,
                is_default = EXCLUDED.is_default, libvirt_name = EXCLUDED.libvirt_name, mtu = EXCLUDED.mtu,
                updated_at = CASE WHEN (n.project_id, n.shared, n.is_default, n.libvirt_name, n.mtu)
                                  IS DISTINCT FROM (EXCLUDED.project_id, EXCLUDED.shared, EXCLUDED.is_default,
                                                    EXCLUDED.libvirt_name, EXCLUDED.mtu)
                                  THEN now() ELSE n.updated_at END
            RETURNING {NETWORK_COLUMNS}""",
        uuidlib.uuid4(), name, project_id, shared, is_default, libvirt_name, mtu,
    )
    return dict(row)


async def upsert_subnet(
    conn: asyncpg.Connection,
    *,
    network_id: str,
    name: str,
    project_id: str,
    cidr: str,
    gateway_ip: str | None,
    pool_start: str,
    pool_end: str,
    dns_nameservers: list[str],
) -> dict:
    """The network's one subnet, created or updated to match the config."""
    existing = await conn.fetchval("SELECT id FROM subnets WHERE network_id = $1 ORDER BY created_at LIMIT 1",
                                   uuidlib.UUID(network_id))
    if existing is None:
        row = await conn.fetchrow(
            f"""INSERT INTO subnets AS s (id, network_id, name, project_id, cidr, gateway_ip, pool_start, pool_end,
                                          dns_nameservers)
                VALUES ($1, $2, $3, $4, $5::cidr, $6::inet, $7::inet, $8::inet, $9)
                RETURNING {SUBNET_COLUMNS}""",
            uuidlib.uuid4(), uuidlib.UUID(network_id), name, project_id, cidr, gateway_ip, pool_start, pool_end,
            dns_nameservers,
        )
    else:
        row = await conn.fetchrow(
            f"""UPDATE subnets AS s SET name = $2, project_id = $3, cidr = $4::cidr, gateway_ip = $5::inet,
                       pool_start = $6::inet, pool_end = $7::inet, dns_nameservers = $8,
                       updated_at = CASE WHEN (s.cidr, s.gateway_ip, s.pool_start, s.pool_end, s.dns_nameservers)
                           IS DISTINCT FROM ($4::cidr, $5::inet, $6::inet, $7::inet, $8::text[])
                           THEN now() ELSE s.updated_at END
                WHERE id = $1 RETURNING {SUBNET_COLUMNS}""",
            existing, name, project_id, cidr, gateway_ip, pool_start, pool_end, dns_nameservers,
        )
    return dict(row)


def _visible_networks(project_arg: str, is_admin: bool) -> str:
    return "true" if is_admin else f"(n.shared OR n.project_id = {project_arg})"


async def list_networks(conn: asyncpg.Connection, *, project_id: str, is_admin: bool) -> list[dict]:
    """Networks the caller may see: its own and the shared ones (all of them for admins)."""
    rows = await conn.fetch(
        f"""SELECT {NETWORK_COLUMNS}, coalesce(array_agg(s.id::text ORDER BY s.created_at)
                                    FILTER (WHERE s.id IS NOT NULL), '{{}}') AS subnets
            FROM networks n LEFT JOIN subnets s ON s.network_id = n.id
            WHERE $1::text IS NOT NULL AND {_visible_networks('$1', is_admin)}
            GROUP BY n.id ORDER BY n.created_at, n.name""",
        project_id,
    )
    return [dict(r) for r in rows]


async def get_network(conn: asyncpg.Connection, network_id: str) -> dict | None:
    try:
        key = uuidlib.UUID(network_id)
    except ValueError:
        return None
    row = await conn.fetchrow(
        f"""SELECT {NETWORK_COLUMNS}, coalesce(array_agg(s.id::text ORDER BY s.created_at)
                                    FILTER (WHERE s.id IS NOT NULL), '{{}}') AS subnets
            FROM networks n LEFT JOIN subnets s ON s.network_id = n.id WHERE n.id = $1 GROUP BY n.id""",
        key,
    )
    return dict(row) if row else None


async def network_by_name(conn: asyncpg.Connection, name: str) -> dict | None:
    """The configured network ``name`` ([[networks]])."""
    row = await conn.fetchval("SELECT id::text FROM networks WHERE config_name = $1", name)
    return await get_network(conn, row) if row else None


async def list_subnets(conn: asyncpg.Connection, *, project_id: str, is_admin: bool) -> list[dict]:
    rows = await conn.fetch(
        f"""SELECT {SUBNET_COLUMNS} FROM subnets s JOIN networks n ON n.id = s.network_id
            WHERE $1::text IS NOT NULL AND {_visible_networks('$1', is_admin)}
            ORDER BY s.created_at, s.name""",
        project_id,
    )
    return [dict(r) for r in rows]


async def get_subnet(conn: asyncpg.Connection, subnet_id: str) -> dict | None:
    try:
        key = uuidlib.UUID(subnet_id)
    except ValueError:
        return None
    row = await conn.fetchrow(f"SELECT {SUBNET_COLUMNS} FROM subnets s WHERE s.id = $1", key)
    return dict(row) if row else None


async def subnet_of_network(conn: asyncpg.Connection, network_id: str) -> dict | None:
    row = await conn.fetchrow(
        f"SELECT {SUBNET_COLUMNS} FROM subnets s WHERE s.network_id = $1 ORDER BY s.created_at LIMIT 1",
        uuidlib.UUID(network_id),
    )
    return dict(row) if row else None


async def free_addresses(conn: asyncpg.Connection, subnet_id: str) -> int:
    """How many addresses of the subnet's pool no port holds yet."""
    return await conn.fetchval(
        """SELECT (s.pool_end - s.pool_start + 1)
                  - CASE WHEN s.gateway_ip BETWEEN s.pool_start AND s.pool_end THEN 1 ELSE 0 END
                  - (SELECT count(*) FROM ports p WHERE p.subnet_id = s.id
                     AND p.fixed_ip BETWEEN s.pool_start AND s.pool_end)
           FROM subnets s WHERE s.id = $1""",
        uuidlib.UUID(subnet_id),
    )


# Ports ----------------------------------------------------------------------------


async def list_ports(conn: asyncpg.Connection, *, project_id: str, is_admin: bool) -> list[dict]:
    rows = await conn.fetch(
        f"""SELECT {PORT_COLUMNS} FROM ports p
            WHERE $1::text IS NOT NULL AND ({'true' if is_admin else 'p.project_id = $1'})
            ORDER BY p.created_at, p.device_index""",
        project_id,
    )
    return [dict(r) for r in rows]


async def get_port(conn: asyncpg.Connection, port_id: str) -> dict | None:
    try:
        key = uuidlib.UUID(port_id)
    except ValueError:
        return None
    row = await conn.fetchrow(f"SELECT {PORT_COLUMNS} FROM ports p WHERE p.id = $1", key)
    return dict(row) if row else None


async def port_with_address(conn: asyncpg.Connection, network_id: str, address: str) -> dict | None:
    row = await conn.fetchrow(
        f"SELECT {PORT_COLUMNS} FROM ports p WHERE p.network_id = $1 AND p.fixed_ip = $2::inet",
        uuidlib.UUID(network_id), address,
    )
    return dict(row) if row else None


async def ports_for_devices(conn: asyncpg.Connection, device_ids: Iterable[str]) -> list[dict]:
    """Ports bound to these instances, in NIC order, each with its network's names and subnet."""
    rows = await conn.fetch(
        f"""SELECT {PORT_COLUMNS}, n.name AS network_name, n.libvirt_name, n.mtu,
                   s.cidr::text AS cidr, host(s.gateway_ip) AS gateway_ip, s.enable_dhcp, s.dns_nameservers
            FROM ports p JOIN networks n ON n.id = p.network_id JOIN subnets s ON s.id = p.subnet_id
            WHERE p.device_id = ANY($1::text[])
            ORDER BY p.device_id, p.device_index, p.created_at""",
        list(device_ids),
    )
    return [dict(r) for r in rows]


async def ports_on_host(conn: asyncpg.Connection, host: str) -> list[dict]:
    """Bound ports whose DHCP entry lives on ``host``, with their libvirt network name."""
    rows = await conn.fetch(
        f"""SELECT {PORT_COLUMNS}, n.libvirt_name FROM ports p JOIN networks n ON n.id = p.network_id
            WHERE p.host = $1 AND p.device_id <> ''""",
        host,
    )
    return [dict(r) for r in rows]


async def create_port(
    conn: asyncpg.Connection,
    *,
    network_id: str,
    project_id: str,
    device_id: str = "",
    device_owner: str = "",
    host: str | None = None,
    fixed_ip: str | None = None,
    device_index: int = 0,
    preserve_on_delete: bool = False,
    name: str = "",
) -> dict:
    """Create a port with a fresh unique MAC and the requested or the lowest free IP of the pool.

    Runs in its own transaction (or the caller's) holding the subnet row lock, so
    concurrent allocations on one subnet are serialised and never share an address.
    Raises AddressInUse for a taken ``fixed_ip``, NoMoreAddresses when the pool is full.
    """
    async with conn.transaction():
        subnet = await conn.fetchrow(
            """SELECT id, network_id FROM subnets WHERE network_id = $1 ORDER BY created_at LIMIT 1 FOR UPDATE""",
            uuidlib.UUID(network_id),
        )
        if subnet is None:
            raise NoMoreAddresses(f"network {network_id} has no subnet")
        if fixed_ip is not None:
            holder = await conn.fetchval(
                "SELECT device_id FROM ports WHERE network_id = $1 AND fixed_ip = $2::inet",
                subnet["network_id"], fixed_ip,
            )
            if holder is not None:
                raise AddressInUse(fixed_ip, holder)
            address = fixed_ip
        else:
            address = await conn.fetchval(
                """SELECT host(s.pool_start + g) FROM subnets s, generate_series(0, s.pool_end - s.pool_start) g
                   WHERE s.id = $1 AND (s.gateway_ip IS NULL OR s.pool_start + g <> s.gateway_ip)
                     AND NOT EXISTS (SELECT 1 FROM ports p WHERE p.network_id = s.network_id
                                     AND p.fixed_ip = s.pool_start + g)
                   ORDER BY g LIMIT 1""",
                subnet["id"],
            )
            if address is None:
                raise NoMoreAddresses(f"no more addresses on network {network_id}")
        for _ in range(_MAC_TRIES):
            row = await conn.fetchrow(
                f"""INSERT INTO ports AS p (id, network_id, subnet_id, project_id, name, mac_address, fixed_ip,
                                            device_id, device_owner, host, status, preserve_on_delete, device_index)
                    VALUES ($1, $2, $3, $4, $5, $6, $7::inet, $8, $9, $10, $11, $12, $13)
                    ON CONFLICT (mac_address) DO NOTHING
                    RETURNING {PORT_COLUMNS}""",
                uuidlib.uuid4(), subnet["network_id"], subnet["id"], project_id, name, random_mac(), address,
                device_id, device_owner, host, "ACTIVE" if device_id else "DOWN", preserve_on_delete,
                device_index,
            )
            if row is not None:
                return dict(row)
        raise RuntimeError("could not find a free MAC address")  # 2**24 space: practically unreachable


async def bind_port(
    conn: asyncpg.Connection, port_id: str, *, device_id: str, host: str | None, device_index: int
) -> dict | None:
    """Claim an unbound port (or re-bind one already ours) for an instance; None if another holds it."""
    row = await conn.fetchrow(
        f"""UPDATE ports AS p SET device_id = $2, device_owner = 'compute:nova', host = $3, status = 'ACTIVE',
                   device_index = $4, updated_at = now()
            WHERE p.id = $1 AND (p.device_id = '' OR p.device_id = $2)
            RETURNING {PORT_COLUMNS}""",
        uuidlib.UUID(port_id), device_id, host, device_index,
    )
    return dict(row) if row else None


async def set_port_host(conn: asyncpg.Connection, port_id: str, host: str | None) -> None:
    await conn.execute("UPDATE ports SET host = $2, updated_at = now() WHERE id = $1", uuidlib.UUID(port_id), host)


async def release_port(conn: asyncpg.Connection, port: dict) -> None:
    """Delete a port made for an instance, or unbind one the user created."""
    if port["preserve_on_delete"]:
        await conn.execute(
            """UPDATE ports SET device_id = '', device_owner = '', host = NULL, status = 'DOWN', updated_at = now()
               WHERE id = $1""",
            uuidlib.UUID(port["id"]),
        )
    else:
        await conn.execute("DELETE FROM ports WHERE id = $1", uuidlib.UUID(port["id"]))


async def project_id_by_name(conn: asyncpg.Connection, name: str) -> str | None:
    return await conn.fetchval("SELECT id FROM projects WHERE name = $1 AND domain_id = 'default'", name)


async def security_groups(conn: asyncpg.Connection, *, project_id: str, is_admin: bool) -> list[dict]:
    rows = await conn.fetch(
        f"""SELECT id::text AS id, project_id, name, description FROM security_groups
            WHERE $1::text IS NOT NULL AND ({'true' if is_admin else 'project_id = $1'}) ORDER BY project_id, name""",
        project_id,
    )
    return [dict(r) for r in rows]
