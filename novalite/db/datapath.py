"""Queries behind tenant networks on the hosts: what a host's bridge and DHCP server need.

A tenant network (``networks.config_name IS NULL``) exists on a host only while a
port of it is bound there; these queries tell the network service which ones
those are and how their DHCP server is set up (subnet options and the address of
the network's DHCP port, device_owner ``network:dhcp``).
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable

import asyncpg

from novalite.db.networks import DHCP_OWNER


async def tenant_networks(conn: asyncpg.Connection, network_ids: Iterable[str]) -> list[dict]:
    """The tenant networks among ``network_ids``, each with its DHCP subnet (the first DHCP-enabled
    one, else the first; NULL columns without a subnet) and its DHCP port's address."""
    rows = await conn.fetch(
        """SELECT n.id::text AS id, n.libvirt_name, n.mtu, s.cidr::text AS cidr, host(s.gateway_ip) AS gateway_ip,
                  host(s.pool_start) AS pool_start, host(s.pool_end) AS pool_end,
                  coalesce(s.enable_dhcp, false) AS enable_dhcp, s.dns_nameservers, s.host_routes,
                  (SELECT host(d.fixed_ip) FROM ports d WHERE d.network_id = n.id AND d.device_owner = $2
                     AND (s.id IS NULL OR d.subnet_id = s.id) ORDER BY d.created_at LIMIT 1) AS dhcp_server
           FROM networks n
           LEFT JOIN LATERAL (SELECT * FROM subnets WHERE network_id = n.id
                              ORDER BY enable_dhcp DESC, created_at LIMIT 1) s ON true
           WHERE n.id = ANY($1::uuid[]) AND n.config_name IS NULL""",
        [uuidlib.UUID(i) for i in set(network_ids)], DHCP_OWNER,
    )
    return [dict(r) for r in rows]


async def tenant_ports_on_host(conn: asyncpg.Connection, network_id: str, host: str) -> int | None:
    """How many ports of tenant network ``network_id`` are bound to ``host`` (its DHCP port aside);
    None when the network is a configured one, 0 when it is gone."""
    row = await conn.fetchrow(
        """SELECT n.config_name IS NULL AS tenant,
                  (SELECT count(*) FROM ports p WHERE p.network_id = n.id AND p.host = $2
                     AND p.device_owner <> $3) AS bound
           FROM networks n WHERE n.id = $1""",
        uuidlib.UUID(network_id), host, DHCP_OWNER,
    )
    if row is None:
        return 0
    return row["bound"] if row["tenant"] else None
