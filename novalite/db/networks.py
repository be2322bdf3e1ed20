"""Queries behind networks, subnets and ports (the Neutron subset).

Plain SQL on asyncpg; addresses come back as text. MAC and IP allocation are
race-free: an IP is picked while the network row is locked (``FOR UPDATE``, the
lock subnet and network writes take first too), and
the unique constraints on ``ports (mac_address)`` and ``ports (network_id,
fixed_ip)`` back that up, so two concurrent allocations can never share an
address even across processes.
"""

from __future__ import annotations

import ipaddress
import secrets
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg

MAC_PREFIX = "fa:16:3e"  # OpenStack's MAC prefix, as Neutron's base_mac
_MAC_TRIES = 16

NETWORK_COLUMNS = """n.id::text AS id, n.name, n.project_id, n.shared, n.is_default, n.libvirt_name, n.mtu,
    n.status, n.config_name, n.external, n.port_security_enabled, n.admin_state_up, n.description,
    n.created_at, n.updated_at"""
SUBNET_COLUMNS = """s.id::text AS id, s.network_id::text AS network_id, s.name, s.project_id, s.cidr::text AS cidr,
    host(s.gateway_ip) AS gateway_ip, host(s.pool_start) AS pool_start, host(s.pool_end) AS pool_end,
    s.enable_dhcp, s.dns_nameservers, s.ip_version, s.allocation_pools, s.host_routes, s.description,
    s.created_at, s.updated_at,
    (SELECT sn.external FROM networks sn WHERE sn.id = s.network_id) AS external"""
PORT_COLUMNS = """p.id::text AS id, p.network_id::text AS network_id, p.subnet_id::text AS subnet_id, p.project_id,
    p.name, p.mac_address, host(p.fixed_ip) AS fixed_ip, p.device_id, p.device_owner, p.host, p.status,
    p.preserve_on_delete, p.device_index, p.port_security_enabled, p.admin_state_up, p.description,
    p.created_at, p.updated_at"""
DHCP_OWNER = "network:dhcp"  # the port Neutron's DHCP agent makes on each network with a DHCP subnet


class AddressInUse(Exception):
    """The requested fixed IP already belongs to a port (``device_id`` says whose) on ``subnet_id``."""

    def __init__(self, address: str, device_id: str, subnet_id: str = "") -> None:
        super().__init__(address)
        self.address = address
        self.device_id = device_id
        self.subnet_id = subnet_id


class MacInUse(Exception):
    """The requested MAC address already belongs to a port."""


class NoMoreAddresses(Exception):
    """Every address of the subnet's allocation pool is taken."""


def _uuid(text: str) -> uuidlib.UUID | None:
    """The id in a URL as a UUID, or None for text that is not one (so: not found)."""
    try:
        return uuidlib.UUID(text)
    except ValueError:
        return None


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
    enable_dhcp: bool = True,
) -> dict:
    """The network's one subnet, created or updated to match the config."""
    existing = await conn.fetchval("SELECT id FROM subnets WHERE network_id = $1 ORDER BY created_at LIMIT 1",
                                   uuidlib.UUID(network_id))
    if existing is None:
        row = await conn.fetchrow(
            f"""INSERT INTO subnets AS s (id, network_id, name, project_id, cidr, gateway_ip, pool_start, pool_end,
                                          dns_nameservers, allocation_pools, enable_dhcp)
                VALUES ($1, $2, $3, $4, $5::cidr, $6::inet, $7::inet, $8::inet, $9, $10, $11)
                RETURNING {SUBNET_COLUMNS}""",
            uuidlib.uuid4(), uuidlib.UUID(network_id), name, project_id, cidr, gateway_ip, pool_start, pool_end,
            dns_nameservers, [{"start": pool_start, "end": pool_end}], enable_dhcp,
        )
    else:
        row = await conn.fetchrow(
            f"""UPDATE subnets AS s SET name = $2, project_id = $3, cidr = $4::cidr, gateway_ip = $5::inet,
                       pool_start = $6::inet, pool_end = $7::inet, dns_nameservers = $8, allocation_pools = $9,
                       enable_dhcp = $10,
                       updated_at = CASE WHEN (s.cidr, s.gateway_ip, s.pool_start, s.pool_end, s.dns_nameservers,
                                               s.enable_dhcp)
                           IS DISTINCT FROM ($4::cidr, $5::inet, $6::inet, $7::inet, $8::text[], $10)
                           THEN now() ELSE s.updated_at END
                WHERE id = $1 RETURNING {SUBNET_COLUMNS}""",
            existing, name, project_id, cidr, gateway_ip, pool_start, pool_end, dns_nameservers,
            [{"start": pool_start, "end": pool_end}], enable_dhcp,
        )
    return dict(row)


def _visible_networks(project_arg: str, is_admin: bool) -> str:
    return "true" if is_admin else f"(n.shared OR n.external OR n.project_id = {project_arg})"


async def list_networks(conn: asyncpg.Connection, *, project_id: str, is_admin: bool) -> list[dict]:
    """Networks the caller may see: its own, the shared and the external ones (all of them for admins)."""
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
    key = _uuid(network_id)
    if key is None:
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
    key = _uuid(subnet_id)
    if key is None:
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
    """How many addresses of the subnet's allocation pools no port holds yet (nor the gateway)."""
    return await conn.fetchval(f"SELECT ({_FREE})::bigint FROM subnets s WHERE s.id = $1", uuidlib.UUID(subnet_id))


# The subnet's allocation pools as rows (lo, hi), for the subnet ``s`` of the enclosing query.
_POOLS = """SELECT (e->>'start')::inet AS lo, (e->>'end')::inet AS hi
            FROM jsonb_array_elements(s.allocation_pools) e"""
# The free pool addresses of the subnet ``s`` of the enclosing query: its pools' sizes less the
# ports holding one of their addresses (``pool_used``, kept by the triggers of migration 0011; a
# count of the ports was 10 ms a create with 20,000 ports on a /16, and every create asks) and
# the gateway when it lies in a pool.
_FREE = f"""(SELECT coalesce(sum(pl.hi - pl.lo + 1), 0) - s.pool_used
                    - count(*) FILTER (WHERE s.gateway_ip BETWEEN pl.lo AND pl.hi)
             FROM ({_POOLS}) pl)"""


def _network_free_sql(network_id: str) -> str:
    """An SQL expression: the free pool addresses of the network ``network_id`` (an SQL uuid)
    over all of its subnets."""
    return f"(SELECT coalesce(sum({_FREE}), 0)::bigint FROM subnets s WHERE s.network_id = {network_id})"


def free_addresses_sql(network_ids: str) -> str:
    """An SQL expression: the free pool addresses of each network of ``network_ids`` (an SQL
    uuid[]), as a JSON object {network id: count}."""
    return f"""(SELECT coalesce(jsonb_object_agg(net.id::text, {_network_free_sql('net.id')}), '{{}}')
        FROM unnest({network_ids}) AS net(id))"""


def auto_candidates_sql(project_arg: str) -> str:
    """An SQL expression: the networks an ``auto`` request of the project ``project_arg`` (an SQL
    text) chooses from -- those its members see, in list_networks' order -- each with its free pool
    addresses, as a JSON list of {id, project_id, shared, is_default, free}."""
    return f"""(SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'id', n.id::text, 'project_id', n.project_id, 'shared', n.shared, 'is_default', n.is_default,
                    'free', {_network_free_sql('n.id')})
                  ORDER BY n.created_at, n.name), '[]')
        FROM networks n WHERE {project_arg}::text IS NOT NULL AND {_visible_networks(project_arg, False)})"""


async def subnets_of_network(conn: asyncpg.Connection, network_id: str) -> list[dict]:
    """The network's subnets, oldest first."""
    rows = await conn.fetch(
        f"SELECT {SUBNET_COLUMNS} FROM subnets s WHERE s.network_id = $1 ORDER BY s.created_at, s.id",
        uuidlib.UUID(network_id),
    )
    return [dict(r) for r in rows]


async def lock_network(conn: asyncpg.Connection, network_id: str) -> dict | None:
    """Lock the network row for the caller's transaction (subnet and delete checks); None if gone."""
    key = _uuid(network_id)
    if key is None:
        return None
    found = await conn.fetchval("SELECT id FROM networks WHERE id = $1 FOR UPDATE", key)
    return await get_network(conn, network_id) if found else None


async def create_network(conn: asyncpg.Connection, *, network_id: str, libvirt_name: str, **attrs) -> dict:
    """A network made through the API (``config_name`` NULL); ``attrs`` are its columns."""
    names = ["id", "libvirt_name", *attrs]
    values = [uuidlib.UUID(network_id), libvirt_name, *attrs.values()]
    await conn.execute(
        f"INSERT INTO networks ({', '.join(names)}) VALUES ({', '.join(f'${i + 1}' for i in range(len(names)))})",
        *values,
    )
    return await get_network(conn, network_id)


async def _update(conn: asyncpg.Connection, table: str, row_id: str, changes: dict, casts: dict[str, str]) -> None:
    if not changes:
        return
    sets = ", ".join(f"{col} = ${i + 2}{casts.get(col, '')}" for i, col in enumerate(changes))
    await conn.execute(f"UPDATE {table} SET {sets}, updated_at = now() WHERE id = $1",
                       uuidlib.UUID(row_id), *changes.values())


async def update_network(conn: asyncpg.Connection, network_id: str, changes: dict) -> dict | None:
    """Set the given columns of a network; its row afterwards."""
    await _update(conn, "networks", network_id, changes, {})
    return await get_network(conn, network_id)


async def delete_network(conn: asyncpg.Connection, network_id: str) -> None:
    """Delete the network; its subnets and ports go with it (foreign keys cascade)."""
    await conn.execute("DELETE FROM networks WHERE id = $1", uuidlib.UUID(network_id))


async def ports_in_use(conn: asyncpg.Connection, *, network_id: str | None = None,
                       subnet_id: str | None = None) -> int:
    """Ports of the network (or holding addresses of the subnet) other than its DHCP port."""
    column, key = ("network_id", network_id) if subnet_id is None else ("subnet_id", subnet_id)
    return await conn.fetchval(
        f"SELECT count(*) FROM ports WHERE {column} = $1 AND device_owner <> $2",
        uuidlib.UUID(key), DHCP_OWNER,
    )


def _pool_bounds(pools: list[dict]) -> tuple[str | None, str | None]:
    if not pools:
        return None, None
    starts = [ipaddress.IPv4Address(p["start"]) for p in pools]
    ends = [ipaddress.IPv4Address(p["end"]) for p in pools]
    return str(min(starts)), str(max(ends))


async def create_subnet(
    conn: asyncpg.Connection, *, network_id: str, project_id: str, cidr: str, gateway_ip: str | None,
    allocation_pools: list[dict], name: str = "", description: str = "", enable_dhcp: bool = True,
    dns_nameservers: list[str] | None = None, host_routes: list[dict] | None = None,
) -> dict:
    """A subnet made through the API; ``pool_start``/``pool_end`` are its pools' lowest start and highest end."""
    subnet_id = uuidlib.uuid4()
    start, end = _pool_bounds(allocation_pools)
    await conn.execute(
        """INSERT INTO subnets (id, network_id, name, description, project_id, cidr, gateway_ip, pool_start,
                                pool_end, allocation_pools, enable_dhcp, dns_nameservers, host_routes)
           VALUES ($1, $2, $3, $4, $5, $6::cidr, $7::inet, $8::inet, $9::inet, $10, $11, $12, $13)""",
        subnet_id, uuidlib.UUID(network_id), name, description, project_id, cidr, gateway_ip, start, end,
        allocation_pools, enable_dhcp, dns_nameservers or [], host_routes or [],
    )
    return await get_subnet(conn, str(subnet_id))


async def update_subnet(conn: asyncpg.Connection, subnet_id: str, changes: dict) -> dict | None:
    """Set the given columns of a subnet (pool bounds follow ``allocation_pools``); its row afterwards."""
    changes = dict(changes)
    if "allocation_pools" in changes:
        changes["pool_start"], changes["pool_end"] = _pool_bounds(changes["allocation_pools"])
    await _update(conn, "subnets", subnet_id, changes,
                  {"gateway_ip": "::inet", "pool_start": "::inet", "pool_end": "::inet"})
    return await get_subnet(conn, subnet_id)


async def delete_subnet(conn: asyncpg.Connection, subnet_id: str) -> None:
    """Delete the subnet; ports holding its addresses (its DHCP port) go with it."""
    await conn.execute("DELETE FROM subnets WHERE id = $1", uuidlib.UUID(subnet_id))


async def sync_dhcp_port(conn: asyncpg.Connection, network: dict) -> None:
    """Neutron's DHCP agent's port: on an API-made network, one ``network:dhcp`` port with an
    address of the network's first DHCP subnet, or none when it has no such subnet.

    Run in the transaction that changed the network's subnets, after the change. Configured
    networks get none: libvirt serves their DHCP from the gateway.
    """
    wanted = None
    if network["config_name"] is None:
        wanted = await conn.fetchval(
            "SELECT id::text FROM subnets WHERE network_id = $1 AND enable_dhcp ORDER BY created_at, id LIMIT 1",
            uuidlib.UUID(network["id"]),
        )
    current = await conn.fetchrow(
        "SELECT id, subnet_id::text AS subnet_id FROM ports WHERE network_id = $1 AND device_owner = $2",
        uuidlib.UUID(network["id"]), DHCP_OWNER,
    )
    if current is not None and current["subnet_id"] != wanted:
        await conn.execute("DELETE FROM ports WHERE id = $1", current["id"])
        current = None
    if current is None and wanted is not None:
        try:
            await create_port(
                conn, network_id=network["id"], project_id=network["project_id"], subnet_id=wanted,
                device_id="dhcp-" + network["id"], device_owner=DHCP_OWNER, security_groups=[],
                port_security_enabled=False,
            )
        except NoMoreAddresses:
            pass  # a pool with no free address: no DHCP port until a DHCP subnet has one


async def dhcp_port(conn: asyncpg.Connection, network_id: str) -> dict | None:
    """The network's ``network:dhcp`` port (its address is the DHCP server's), if it has one."""
    row = await conn.fetchrow(
        f"SELECT {PORT_COLUMNS} FROM ports p WHERE p.network_id = $1 AND p.device_owner = $2",
        uuidlib.UUID(network_id), DHCP_OWNER,
    )
    return dict(row) if row else None


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
    key = _uuid(port_id)
    if key is None:
        return None
    row = await conn.fetchrow(f"SELECT {PORT_COLUMNS} FROM ports p WHERE p.id = $1", key)
    return dict(row) if row else None


async def port_with_address(conn: asyncpg.Connection, network_id: str, address: str) -> dict | None:
    row = await conn.fetchrow(
        f"SELECT {PORT_COLUMNS} FROM ports p WHERE p.network_id = $1 AND p.fixed_ip = $2::inet",
        uuidlib.UUID(network_id), address,
    )
    return dict(row) if row else None


def bound_to(devices: str, alias: str = "p") -> str:
    """An SQL condition: the port ``alias`` is bound to one of ``devices`` (an SQL text array, or
    one text with ``= ``). Spelled with ``device_id <> ''``, the predicate of the partial index
    ports_device, so that a generic plan (a parameter) or a correlated one (another table's
    column) can prove the index applies: without it they scanned every port, 2.4 ms a server's
    show at 20,000 ports."""
    return f"{alias}.device_id {devices} AND {alias}.device_id <> ''"


# Ports with a fixed IP, each with its network's names and its subnet: what a NIC and its lease need.
_PORTS_WITH_SUBNET = f"""SELECT {PORT_COLUMNS}, n.name AS network_name, n.libvirt_name, n.mtu,
        s.cidr::text AS cidr, host(s.gateway_ip) AS gateway_ip, s.enable_dhcp, s.dns_nameservers
    FROM ports p JOIN networks n ON n.id = p.network_id JOIN subnets s ON s.id = p.subnet_id"""


async def ports_for_device(conn: asyncpg.Connection, device_id: str) -> list[dict]:
    """Ports bound to the instance, in NIC order, each with its network's names and subnet.

    One device, ``= $1``: Postgres' generic plan of ``= ANY($1)`` is costed for an array of
    several and was never taken, so every call planned anew (a fifth of a delete's time there)."""
    rows = await conn.fetch(
        f"""{_PORTS_WITH_SUBNET} WHERE {bound_to("= $1")}
            ORDER BY p.device_index, p.created_at""",
        device_id,
    )
    return [dict(r) for r in rows]


async def addresses_of_devices(conn: asyncpg.Connection, device_ids: Iterable[str]) -> list[asyncpg.Record]:
    """(device_id, network_name, fixed_ip, mac_address) of the ports ports_for_device gives, in
    its order: all a server document's ``addresses`` shows, for a page of a thousand servers."""
    return await conn.fetch(
        f"""SELECT p.device_id, n.name AS network_name, host(p.fixed_ip) AS fixed_ip, p.mac_address
             FROM ports p JOIN networks n ON n.id = p.network_id
            WHERE {bound_to("= ANY($1::text[])")} AND p.subnet_id IS NOT NULL
            ORDER BY p.device_id, p.device_index, p.created_at""",
        list(device_ids),
    )


def device_addresses_sql(device_arg: str) -> str:
    """An SQL expression: [network name, fixed IP, MAC] of each port of the device ``device_arg``
    (an SQL text) that has a fixed IP, in addresses_of_devices' order, as a JSON list."""
    return f"""(SELECT coalesce(jsonb_agg(jsonb_build_array(n.name, host(p.fixed_ip), p.mac_address)
                                          ORDER BY p.device_index, p.created_at), '[]')
                  FROM ports p JOIN networks n ON n.id = p.network_id
                 WHERE {bound_to(f"= {device_arg}")} AND p.subnet_id IS NOT NULL)"""


async def ports_by_ids(conn: asyncpg.Connection, port_ids: Iterable[str]) -> list[dict]:
    """These ports (those with a fixed IP) with their network's names and subnet, as
    ports_for_device gives them."""
    rows = await conn.fetch(
        f"{_PORTS_WITH_SUBNET} WHERE p.id = ANY($1::uuid[])", [uuidlib.UUID(p) for p in port_ids],
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
    subnet_id: str | None = None,
    with_ip: bool = True,
    mac_address: str | None = None,
    security_groups: list[str] | None = None,
    port_security_enabled: bool | None = None,
    admin_state_up: bool = True,
    description: str = "",
) -> dict:
    """Create a port with a fresh unique MAC (or ``mac_address``) and, unless ``with_ip`` is
    false, the requested ``fixed_ip`` or the next free pool address of ``subnet_id`` (default:
    the first of the network's subnets with one).

    ``port_security_enabled`` defaults to the network's. ``security_groups`` are the group ids
    the port joins (a port without port security or address joins none; Nova's ports join their
    instance's groups through the security group queries after this).
    Runs in its own transaction (or the caller's) holding the network row locked, so
    concurrent allocations never share an address. Raises AddressInUse for a taken
    ``fixed_ip``, NoMoreAddresses when no pool has a free address (or the network no subnet),
    MacInUse for a taken ``mac_address``.
    """
    async with conn.transaction():
        subnet, address = (None, None)
        if with_ip:
            subnet, address = await _allocate(conn, network_id, subnet_id, fixed_ip)
        net_security = await conn.fetchval("SELECT port_security_enabled FROM networks WHERE id = $1",
                                           uuidlib.UUID(network_id))
        security = net_security if port_security_enabled is None else port_security_enabled
        row = await _insert_port(conn, (
            uuidlib.UUID(network_id), subnet, project_id, name, mac_address, address, device_id, device_owner,
            host, "ACTIVE" if device_id else "DOWN", preserve_on_delete, device_index, security,
            admin_state_up, description,
        ))
        if security and address is not None and security_groups:
            await set_port_groups(conn, row["id"], security_groups)
        return row


class PortQuotaExceeded(Exception):
    """The project's Neutron port quota has no room for another port."""


@dataclass(frozen=True)
class NovaPort:
    """A port a build wants for its server on a network, on the next free address."""

    network_id: str
    project_id: str
    device_id: str
    device_owner: str
    host: str | None
    device_index: int
    port_limit: int  # the project's port quota unless it has its own

    def record(self, index: int) -> dict:
        return {"i": index, "net": self.network_id, "project": self.project_id, "device": self.device_id,
                "owner": self.device_owner, "bound_host": self.host, "idx": self.device_index,
                "default_limit": self.port_limit}


# Servers' ports (novalite_nova_ports, migration 0014) with what a NIC and its lease need, as
# ports_for_device gives them; the networks and subnets are read in the same round trip.
_NOVA_PORTS = """SELECT np.i, np.error, np.port_id::text AS id, np.existed, np.group_ids::text[] AS groups,
        n.id::text AS network_id, np.sub::text AS subnet_id, np.mac AS mac_address, host(np.address) AS fixed_ip,
        n.name AS network_name, n.libvirt_name, n.mtu, s.cidr::text AS cidr, host(s.gateway_ip) AS gateway_ip,
        s.enable_dhcp, s.dns_nameservers
    FROM novalite_nova_ports($1::jsonb) np
    LEFT JOIN networks n ON n.id = np.net LEFT JOIN subnets s ON s.id = np.sub"""


async def create_nova_ports(conn: asyncpg.Connection, wanted: list[NovaPort]) -> list[dict | Exception]:
    """Servers' ports, each on its network's next free address, in one statement (schema:
    novalite_nova_ports): the port quota checked on the project's usage row, the address picked
    as :func:`create_port` picks it, the port made a member of its instance's security groups.
    Per port, in order: the port as ports_for_device gives it, with ``groups`` (ids of the groups
    it joined) and ``existed`` (true: the instance had a port at that index already, a retried
    build, and it is returned untouched); or PortQuotaExceeded / NoMoreAddresses for that port."""
    rows = await conn.fetch(_NOVA_PORTS, [w.record(i) for i, w in enumerate(wanted)])
    out: list[dict | Exception] = [RuntimeError("no answer")] * len(wanted)
    for row in rows:
        w = wanted[row["i"]]
        if row["error"] == "NLQ01":
            out[row["i"]] = PortQuotaExceeded()
        elif row["error"] == "NLA01":
            out[row["i"]] = NoMoreAddresses(f"no more addresses on network {w.network_id}")
        else:
            out[row["i"]] = dict(row, host=w.host, groups=sorted(row["groups"]))
    return out


async def _insert_port(conn: asyncpg.Connection, values: tuple) -> dict:
    """INSERT the port, drawing random MACs until one is free (values[4] None) or the given one."""
    wanted_mac = values[4]
    for _ in range(1 if wanted_mac else _MAC_TRIES):
        row = await conn.fetchrow(
            f"""INSERT INTO ports AS p (id, network_id, subnet_id, project_id, name, mac_address, fixed_ip,
                                        device_id, device_owner, host, status, preserve_on_delete, device_index,
                                        port_security_enabled, admin_state_up, description)
                VALUES ($1, $2, $3, $4, $5, $6, $7::inet, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                ON CONFLICT (mac_address) DO NOTHING
                RETURNING {PORT_COLUMNS}""",
            uuidlib.uuid4(), *values[:4], wanted_mac or random_mac(), *values[5:],
        )
        if row is not None:
            return dict(row)
    if wanted_mac:
        raise MacInUse(wanted_mac)
    raise RuntimeError("could not find a free MAC address")  # 2**24 space: practically unreachable


async def _allocate(
    conn: asyncpg.Connection, network_id: str, subnet_id: str | None, fixed_ip: str | None
) -> tuple[uuidlib.UUID, str]:
    """(subnet, address) for a port of the network: ``fixed_ip`` if free, else the next free
    pool address of ``subnet_id`` or of the first subnet with one. Locks the network row, as
    subnet and network changes do first, so allocations on a network are serialised and no
    two lock orders meet."""
    await conn.execute("SELECT 1 FROM networks WHERE id = $1 FOR UPDATE", uuidlib.UUID(network_id))
    subnets = await subnets_of_network(conn, network_id)
    if subnet_id is not None:
        subnets = [s for s in subnets if s["id"] == subnet_id]
    if fixed_ip is not None:
        ip = ipaddress.IPv4Address(fixed_ip)
        subnets = [s for s in subnets if ip in ipaddress.IPv4Network(s["cidr"])]
    if not subnets:
        raise NoMoreAddresses(f"network {network_id} has no subnet")
    if fixed_ip is not None:
        holder = await conn.fetchval(
            "SELECT device_id FROM ports WHERE network_id = $1 AND fixed_ip = $2::inet",
            uuidlib.UUID(network_id), fixed_ip,
        )
        if holder is not None:
            raise AddressInUse(fixed_ip, holder, subnets[0]["id"])
        return uuidlib.UUID(subnets[0]["id"]), fixed_ip
    for subnet in subnets:
        address = await _next_free(conn, subnet["id"])
        if address is not None:
            return uuidlib.UUID(subnet["id"]), address
    raise NoMoreAddresses(f"no more addresses on network {network_id}")


async def _next_free(conn: asyncpg.Connection, subnet_id: str) -> str | None:
    """The next free pool address of the subnet from its cursor on (wrapping around the pools;
    never the gateway), the cursor moved past it. The cost follows the held addresses the
    cursor meets, not the size of the pools nor the number of ports (schema: novalite_next_ip)."""
    return await conn.fetchval("SELECT host(novalite_next_ip($1))", uuidlib.UUID(subnet_id))


async def readdress_port(
    conn: asyncpg.Connection, port: dict, *, with_ip: bool, subnet_id: str | None, fixed_ip: str | None
) -> None:
    """Give the port another address on its network (``with_ip`` false: none). In the caller's
    transaction; raises as :func:`create_port` does."""
    await conn.execute("UPDATE ports SET subnet_id = NULL, fixed_ip = NULL WHERE id = $1",
                       uuidlib.UUID(port["id"]))
    subnet, address = (None, None)
    if with_ip:
        subnet, address = await _allocate(conn, port["network_id"], subnet_id, fixed_ip)
    await conn.execute("UPDATE ports SET subnet_id = $2, fixed_ip = $3::inet, updated_at = now() WHERE id = $1",
                       uuidlib.UUID(port["id"]), subnet, address)


async def update_port(conn: asyncpg.Connection, port_id: str, changes: dict) -> dict | None:
    """Set the given columns of a port; its row afterwards."""
    await _update(conn, "ports", port_id, changes, {})
    return await get_port(conn, port_id)


async def set_port_groups(conn: asyncpg.Connection, port_id: str, group_ids: Iterable[str]) -> None:
    """Make the port's security groups exactly ``group_ids``."""
    key = uuidlib.UUID(port_id)
    await conn.execute("DELETE FROM port_security_groups WHERE port_id = $1", key)
    await conn.executemany(
        "INSERT INTO port_security_groups (port_id, security_group_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        [(key, uuidlib.UUID(g)) for g in group_ids],
    )


async def project_group_ids(conn: asyncpg.Connection, project_id: str, group_ids: Iterable[str]) -> set[str]:
    """Which of ``group_ids`` are security groups of the project."""
    rows = await conn.fetch(
        "SELECT id::text AS id FROM security_groups WHERE project_id = $1 AND id::text = ANY($2::text[])",
        project_id, list(group_ids),
    )
    return {r["id"] for r in rows}


async def delete_port(conn: asyncpg.Connection, port_id: str) -> dict | None:
    """Delete the port; its row as it was, or None if it was already gone."""
    row = await conn.fetchrow(
        f"DELETE FROM ports p WHERE p.id = $1 RETURNING {PORT_COLUMNS}", uuidlib.UUID(port_id))
    return dict(row) if row else None


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


async def release_ports(conn: asyncpg.Connection, batches: Sequence[Sequence[dict]]) -> list[None]:
    """Delete the ports made for instances and unbind those the user created, of many instances
    in ONE statement: deleting ports takes their project's port counter row (a trigger) until
    the commit, so one commit for many deletes instead of one each. One None per batch (for
    db.batch.BatchWriter)."""
    ports = [p for batch in batches for p in batch]
    await conn.execute(
        """WITH gone AS (DELETE FROM ports WHERE id = ANY($1::uuid[]))
           UPDATE ports SET device_id = '', device_owner = '', host = NULL, status = 'DOWN', updated_at = now()
            WHERE id = ANY($2::uuid[])""",
        [p["id"] for p in ports if not p["preserve_on_delete"]], [p["id"] for p in ports if p["preserve_on_delete"]],
    )
    return [None] * len(batches)


async def project_id_by_name(conn: asyncpg.Connection, name: str) -> str | None:
    return await conn.fetchval("SELECT id FROM projects WHERE name = $1 AND domain_id = 'default'", name)


async def security_groups(conn: asyncpg.Connection, *, project_id: str, is_admin: bool) -> list[dict]:
    rows = await conn.fetch(
        f"""SELECT id::text AS id, project_id, name, description FROM security_groups
            WHERE $1::text IS NOT NULL AND ({'true' if is_admin else 'project_id = $1'}) ORDER BY project_id, name""",
        project_id,
    )
    return [dict(r) for r in rows]
