"""Security groups, their rules and their member ports in Postgres (Neutron's securitygroups_db).

Groups and rules are read with their rules embedded (one statement per list);
writes are single statements the API layer wraps in a transaction with the
quota check. The firewall reads what a port's filter depends on with
:func:`filter_inputs` and which ports depend on groups with :func:`dependent_ports`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import asyncpg

from novalite.db import is_uuid

DEFAULT_NAME = "default"

# Neutron's rules of a project's `default` group: all egress; ingress only from the group itself.
_MAKE_DEFAULT = """
WITH g AS (
    INSERT INTO security_groups (id, project_id, name, description)
    VALUES ($1, $2, 'default', 'Default security group') ON CONFLICT DO NOTHING RETURNING id
)
INSERT INTO security_group_rules (id, security_group_id, project_id, direction, ethertype, remote_group_id)
SELECT gen_random_uuid(), g.id, $2, r.direction, r.ethertype, CASE WHEN r.own THEN g.id END
FROM g, (VALUES ('egress', 'IPv4', false), ('egress', 'IPv6', false),
                ('ingress', 'IPv4', true), ('ingress', 'IPv6', true)) AS r(direction, ethertype, own)
"""

_RULE_COLUMNS = """r.id::text AS id, r.security_group_id::text AS security_group_id, r.project_id,
    r.direction, r.ethertype, r.protocol, r.port_range_min, r.port_range_max,
    text(r.remote_ip_prefix) AS remote_ip_prefix, text(network(r.remote_ip_prefix)) AS normalized_cidr,
    r.remote_group_id::text AS remote_group_id, r.description, r.created_at, r.updated_at,
    (SELECT rg.name FROM security_groups rg WHERE rg.id = r.remote_group_id) AS remote_group_name,
    (SELECT rg.project_id FROM security_groups rg WHERE rg.id = r.remote_group_id) AS remote_group_project"""

_GROUPS = f"""SELECT g.id::text AS id, g.project_id, g.name, g.description, g.stateful,
    g.created_at, g.updated_at, g.revision_number,
    coalesce((SELECT jsonb_agg(to_jsonb(x) ORDER BY x.created_at, x.id)
              FROM (SELECT {_RULE_COLUMNS} FROM security_group_rules r
                    WHERE r.security_group_id = g.id) x), '[]') AS rules
FROM security_groups g"""


async def ensure_default_security_group(conn: asyncpg.Connection, project_id: str) -> None:
    """The project's `default` group with Neutron's default rules, made on first use.

    One statement: the rules are inserted only when the group is (a second call is
    one no-op insert), so the boot path pays one round trip."""
    await conn.execute(_MAKE_DEFAULT, uuid.uuid4(), project_id)


async def default_group_id(conn: asyncpg.Connection, project_id: str) -> str:
    """The id of the project's `default` group, made (with its rules) on first use."""
    await ensure_default_security_group(conn, project_id)
    return await conn.fetchval(
        "SELECT id::text FROM security_groups WHERE project_id = $1 AND name = 'default'", project_id)


async def list_groups(conn: asyncpg.Connection, *, project_id: str, is_admin: bool) -> list[dict]:
    """The project's groups (every project's for an admin), rules embedded."""
    where = "true" if is_admin else "g.project_id = $1"
    rows = await conn.fetch(f"{_GROUPS} WHERE $1::text IS NOT NULL AND {where} ORDER BY g.project_id, g.name",
                            project_id)
    return [dict(r) for r in rows]


async def get_group(conn: asyncpg.Connection, group_id: str) -> dict | None:
    """One group with its rules, None when there is none with this id."""
    if not is_uuid(group_id):
        return None
    row = await conn.fetchrow(f"{_GROUPS} WHERE g.id = $1::uuid", group_id)
    return dict(row) if row else None


async def create_group(conn: asyncpg.Connection, project_id: str, name: str, description: str) -> str:
    """A new group without rules (Neutron adds its egress rules: see :func:`add_default_egress`); its id."""
    group_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO security_groups (id, project_id, name, description) VALUES ($1, $2, $3, $4)",
        group_id, project_id, name, description,
    )
    return str(group_id)


async def add_default_egress(conn: asyncpg.Connection, group_id: str, project_id: str) -> None:
    """Neutron's rules of every new group: egress IPv4 and IPv6 to anywhere."""
    await conn.execute(
        """INSERT INTO security_group_rules (id, security_group_id, project_id, direction, ethertype)
           SELECT gen_random_uuid(), $1::uuid, $2, 'egress', e FROM unnest(ARRAY['IPv4', 'IPv6']) AS e""",
        group_id, project_id,
    )


async def update_group(conn: asyncpg.Connection, group_id: str, changes: dict[str, str]) -> None:
    """Set name and/or description (keys of ``changes``) and bump the revision."""
    await conn.execute(
        """UPDATE security_groups SET name = coalesce($2, name), description = coalesce($3, description),
                  updated_at = now(), revision_number = revision_number + 1 WHERE id = $1::uuid""",
        group_id, changes.get("name"), changes.get("description"),
    )


async def group_in_use(conn: asyncpg.Connection, group_id: str) -> bool:
    """Whether a port is a member of the group."""
    return await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM port_security_groups WHERE security_group_id = $1::uuid)", group_id)


async def delete_group(conn: asyncpg.Connection, group_id: str) -> None:
    """Delete the group; its rules, and other groups' rules naming it as remote, go with it."""
    await conn.execute("DELETE FROM security_groups WHERE id = $1::uuid", group_id)


async def list_rules(conn: asyncpg.Connection, *, project_id: str, is_admin: bool) -> list[dict]:
    """Rules of the project's groups (every rule for an admin), with their group's owner."""
    where = "true" if is_admin else "g.project_id = $1"
    rows = await conn.fetch(
        f"""SELECT {_RULE_COLUMNS}, g.project_id AS group_project_id FROM security_group_rules r
            JOIN security_groups g ON g.id = r.security_group_id
            WHERE $1::text IS NOT NULL AND {where} ORDER BY r.created_at, r.id""",
        project_id,
    )
    return [dict(r) for r in rows]


async def get_rule(conn: asyncpg.Connection, rule_id: str) -> dict | None:
    """One rule with its group's owner, None when there is none with this id."""
    if not is_uuid(rule_id):
        return None
    row = await conn.fetchrow(
        f"""SELECT {_RULE_COLUMNS}, g.project_id AS group_project_id FROM security_group_rules r
            JOIN security_groups g ON g.id = r.security_group_id WHERE r.id = $1::uuid""",
        rule_id,
    )
    return dict(row) if row else None


async def insert_rule(conn: asyncpg.Connection, rule: dict) -> str:
    """Store a validated rule (keys as the table's columns); its id."""
    rule_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO security_group_rules (id, security_group_id, project_id, direction, ethertype, protocol,
                port_range_min, port_range_max, remote_ip_prefix, remote_group_id, description)
           VALUES ($1, $2::uuid, $3, $4, $5, $6, $7, $8, $9::inet, $10::uuid, $11)""",
        rule_id, rule["security_group_id"], rule["project_id"], rule["direction"], rule["ethertype"],
        rule["protocol"], rule["port_range_min"], rule["port_range_max"], rule["remote_ip_prefix"],
        rule["remote_group_id"], rule["description"],
    )
    return str(rule_id)


async def delete_rule(conn: asyncpg.Connection, rule_id: str) -> None:
    await conn.execute("DELETE FROM security_group_rules WHERE id = $1::uuid", rule_id)


async def port_group_ids(conn: asyncpg.Connection, port_ids: Iterable[str]) -> dict[str, list[str]]:
    """Port id → the ids of its security groups (ports without any are absent)."""
    rows = await conn.fetch(
        """SELECT port_id::text AS port_id, array_agg(security_group_id::text ORDER BY security_group_id) AS ids
           FROM port_security_groups WHERE port_id = ANY($1::uuid[]) GROUP BY port_id""",
        [str(p) for p in port_ids],
    )
    return {r["port_id"]: list(r["ids"]) for r in rows}


# -- what the firewall reads -------------------------------------------------------------

async def filter_inputs(conn: asyncpg.Connection, port_ids: Iterable[str], hosts: list[str]) -> list[dict]:
    """For each existing port bound to one of ``hosts``: its MAC, IP, host, port security and the IPv4 rules of its groups,
    each remote group already expanded to the fixed IPs of that group's member ports. One statement."""
    rows = await conn.fetch(
        """SELECT p.id::text AS port_id, p.mac_address, host(p.fixed_ip) AS fixed_ip, p.host,
                  p.port_security_enabled,
                  coalesce((SELECT jsonb_agg(jsonb_build_object(
                        'direction', r.direction, 'protocol', r.protocol,
                        'port_range_min', r.port_range_min, 'port_range_max', r.port_range_max,
                        'remote_ip_prefix', text(network(r.remote_ip_prefix)),
                        'remote_group_id', r.remote_group_id,
                        'members', (SELECT coalesce(jsonb_agg(DISTINCT host(mp.fixed_ip)), '[]')
                                    FROM port_security_groups m JOIN ports mp ON mp.id = m.port_id
                                    WHERE m.security_group_id = r.remote_group_id AND mp.fixed_ip IS NOT NULL))
                        ORDER BY r.created_at, r.id)
                     FROM security_group_rules r JOIN port_security_groups ps
                       ON ps.security_group_id = r.security_group_id
                     WHERE ps.port_id = p.id AND r.ethertype = 'IPv4'), '[]') AS rules
           FROM ports p WHERE p.id = ANY($1::uuid[]) AND p.host = ANY($2::text[])""",
        [str(p) for p in port_ids], hosts,
    )
    return [dict(r) for r in rows]


async def dependent_ports(conn: asyncpg.Connection, group_ids: Iterable[str]) -> list[str]:
    """Ports whose filter depends on the groups: their members, and members of groups that have
    a rule naming one of them as remote group."""
    rows = await conn.fetch(
        """SELECT DISTINCT ps.port_id::text AS id FROM port_security_groups ps
           WHERE ps.security_group_id = ANY($1::uuid[])
              OR ps.security_group_id IN (SELECT r.security_group_id FROM security_group_rules r
                                          WHERE r.remote_group_id = ANY($1::uuid[]))""",
        [g for g in group_ids if is_uuid(g)],
    )
    return [r["id"] for r in rows]


async def bound_ports(conn: asyncpg.Connection, host: str) -> list[str]:
    """Ids of the ports bound to ``host``."""
    return [r["id"] for r in await conn.fetch("SELECT id::text AS id FROM ports WHERE host = $1", host)]


async def join_instance_groups(conn: asyncpg.Connection, instance_uuid: str, port_ids: list[str]) -> list[str]:
    """Make the ports (made by Nova for the instance) members of the instance's groups, by
    (project, name), those with port security on; one statement. The groups' ids."""
    if not port_ids:
        return []
    rows = await conn.fetch(
        """INSERT INTO port_security_groups (port_id, security_group_id)
           SELECT p.id, g.id FROM instances i
             JOIN security_groups g ON g.project_id = i.project_id AND g.name = ANY(i.security_groups)
             JOIN ports p ON p.id = ANY($2::uuid[]) AND p.port_security_enabled
           WHERE i.uuid = $1::uuid
           ON CONFLICT DO NOTHING RETURNING security_group_id::text AS id""",
        instance_uuid, port_ids,
    )
    return sorted({r["id"] for r in rows})


# Membership of ports in groups, as the server actions and os-interface change it.

async def find_groups(conn: asyncpg.Connection, project_id: str, name_or_id: str) -> list[dict]:
    """The project's security groups with this id, else with this name (Neutron's find by name or id)."""
    cols = "id::text AS id, project_id, name, description"
    try:
        by_id = await conn.fetch(f"SELECT {cols} FROM security_groups WHERE id = $1 AND project_id = $2",
                                 uuid.UUID(name_or_id), project_id)
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
        [uuid.UUID(p) for p in port_ids], uuid.UUID(group_id),
    )
    return {r["port_id"] for r in rows}


async def join_group(conn: asyncpg.Connection, port_ids: Iterable[str], group_id: str) -> None:
    await conn.execute(
        """INSERT INTO port_security_groups (port_id, security_group_id)
           SELECT p, $2 FROM unnest($1::uuid[]) AS p ON CONFLICT DO NOTHING""",
        [uuid.UUID(p) for p in port_ids], uuid.UUID(group_id),
    )


async def leave_group(conn: asyncpg.Connection, port_ids: Iterable[str], group_id: str) -> None:
    await conn.execute(
        "DELETE FROM port_security_groups WHERE port_id = ANY($1::uuid[]) AND security_group_id = $2",
        [uuid.UUID(p) for p in port_ids], uuid.UUID(group_id),
    )


async def lock_instance_groups(conn: asyncpg.Connection, instance_uuid: str) -> list[str]:
    """The server's group names, its row locked until the transaction ends."""
    names = await conn.fetchval("SELECT security_groups FROM instances WHERE uuid = $1 FOR UPDATE",
                                uuid.UUID(instance_uuid))
    return list(names or [])
