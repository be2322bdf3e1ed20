"""Queries behind the compute catalog APIs: flavors, key pairs, compute nodes, quotas.

Plain SQL on asyncpg; rows come back as dicts. Visibility rules (private
flavors, per-user key pairs) are applied here so every handler gets them the
same way.
"""

from __future__ import annotations

import asyncpg

# Rows of quota class <name> (os-quota-class-sets) live in `quotas` under this key; project ids
# are hex uuids, so they cannot collide. Class `default` overrides the config defaults.
CLASS_PREFIX = "quota_class:"

# Nova's flavor sort keys mapped to columns; `id` (Nova's autoincrement) is
# creation order, which novalite keeps as (created_at, flavorid).
FLAVOR_SORT_COLUMNS = {
    "created_at": "created_at",
    "description": "description",
    "disabled": "disabled",
    "ephemeral_gb": "ephemeral_gb",
    "flavorid": "flavorid",
    "id": "created_at",
    "is_public": "is_public",
    "memory_mb": "memory_mb",
    "name": "name",
    "root_gb": "root_gb",
    "rxtx_factor": "rxtx_factor",
    "swap": "swap",
    "updated_at": "created_at",
    "vcpu_weight": "created_at",
    "vcpus": "vcpus",
}


class FlavorConflict(Exception):
    """A flavor with this name (field="name") or id (field="id") exists."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


class Duplicate(Exception):
    """A row with this key already exists."""


# Flavors ----------------------------------------------------------------------


def _visible(is_admin: bool, project_arg: str) -> str:
    """SQL condition: the flavor is visible to the caller (Nova's _flavor_get_query)."""
    if is_admin:
        return f"({project_arg}::text IS NULL OR true)"
    return (
        "(f.is_public OR EXISTS (SELECT 1 FROM flavor_projects p "
        f"WHERE p.flavorid = f.flavorid AND p.project_id = {project_arg}))"
    )


async def list_flavors(
    conn: asyncpg.Connection,
    *,
    project_id: str,
    is_admin: bool,
    is_public: bool | None,
    min_ram: int | None = None,
    min_disk: int | None = None,
    only_enabled: bool = False,
) -> list[dict]:
    """Flavors the caller may see, filtered as Nova's FlavorList.get_all does."""
    where = [_visible(is_admin, "$1")]
    args: list = [project_id]
    if is_public is not None:
        if is_public:
            where.append(
                "(f.is_public OR EXISTS (SELECT 1 FROM flavor_projects p "
                "WHERE p.flavorid = f.flavorid AND p.project_id = $1))"
            )
        else:
            where.append("NOT f.is_public")
    if only_enabled:
        where.append("NOT f.disabled")
    if min_ram is not None:
        args.append(min_ram)
        where.append(f"f.memory_mb >= ${len(args)}")
    if min_disk is not None:
        args.append(min_disk)
        where.append(f"f.root_gb >= ${len(args)}")
    rows = await conn.fetch(f"SELECT f.* FROM flavors f WHERE {' AND '.join(where)}", *args)
    return [dict(r) for r in rows]


async def get_flavor(
    conn: asyncpg.Connection, flavorid: str, *, project_id: str | None = None, is_admin: bool = True
) -> dict | None:
    """One flavor by its flavorid, or None when missing or invisible to the caller."""
    row = await conn.fetchrow(
        f"SELECT f.* FROM flavors f WHERE f.flavorid = $2 AND {_visible(is_admin, '$1')}",
        project_id or "",
        flavorid,
    )
    return dict(row) if row else None


async def create_flavor(conn: asyncpg.Connection, values: dict) -> dict:
    """Insert a flavor; FlavorConflict when its name or id is taken."""
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM flavors WHERE name = $1", values["name"]):
            raise FlavorConflict("name")
        if await conn.fetchval("SELECT 1 FROM flavors WHERE flavorid = $1", values["flavorid"]):
            raise FlavorConflict("id")
        try:
            row = await conn.fetchrow(
                """INSERT INTO flavors (flavorid, name, memory_mb, vcpus, root_gb, ephemeral_gb,
                                        swap, rxtx_factor, is_public, description)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING *""",
                values["flavorid"],
                values["name"],
                values["memory_mb"],
                values["vcpus"],
                values["root_gb"],
                values["ephemeral_gb"],
                values["swap"],
                values["rxtx_factor"],
                values["is_public"],
                values["description"],
            )
        except asyncpg.UniqueViolationError as exc:
            raise FlavorConflict("id" if "pkey" in (exc.constraint_name or "") else "name") from None
    return dict(row)


async def delete_flavor(conn: asyncpg.Connection, flavorid: str) -> bool:
    return await conn.fetchval("DELETE FROM flavors WHERE flavorid = $1 RETURNING true", flavorid) is not None


async def update_flavor_description(conn: asyncpg.Connection, flavorid: str, description: str | None) -> dict | None:
    row = await conn.fetchrow(
        "UPDATE flavors SET description = $2 WHERE flavorid = $1 RETURNING *", flavorid, description
    )
    return dict(row) if row else None


async def merge_extra_specs(conn: asyncpg.Connection, flavorid: str, specs: dict[str, str]) -> bool:
    """Add or replace extra specs; False when the flavor is gone."""
    row = await conn.fetchval(
        "UPDATE flavors SET extra_specs = extra_specs || $2::jsonb WHERE flavorid = $1 RETURNING true",
        flavorid,
        specs,
    )
    return row is not None


async def delete_extra_spec(conn: asyncpg.Connection, flavorid: str, key: str) -> bool:
    """Remove one extra spec; False when the flavor or key does not exist."""
    row = await conn.fetchval(
        """UPDATE flavors SET extra_specs = extra_specs - $2
           WHERE flavorid = $1 AND extra_specs ? $2 RETURNING true""",
        flavorid,
        key,
    )
    return row is not None


async def flavor_projects(conn: asyncpg.Connection, flavorid: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT project_id FROM flavor_projects WHERE flavorid = $1 ORDER BY project_id", flavorid
    )
    return [r["project_id"] for r in rows]


async def add_flavor_access(conn: asyncpg.Connection, flavorid: str, project_id: str) -> None:
    """Grant a project access to a private flavor; Duplicate when it already has it."""
    done = await conn.fetchval(
        """INSERT INTO flavor_projects (flavorid, project_id) VALUES ($1, $2)
           ON CONFLICT DO NOTHING RETURNING true""",
        flavorid,
        project_id,
    )
    if not done:
        raise Duplicate(project_id)


async def remove_flavor_access(conn: asyncpg.Connection, flavorid: str, project_id: str) -> bool:
    row = await conn.fetchval(
        "DELETE FROM flavor_projects WHERE flavorid = $1 AND project_id = $2 RETURNING true",
        flavorid,
        project_id,
    )
    return row is not None


async def project_exists(conn: asyncpg.Connection, project_id: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM projects WHERE id = $1", project_id))


# Key pairs --------------------------------------------------------------------

# key_pairs has no integer id column; Nova shows one, so derive a stable one.
_KEYPAIR_COLUMNS = "*, (hashtext(user_id || '/' || name) & 2147483647) AS id"


async def list_keypairs(conn: asyncpg.Connection, user_id: str) -> list[dict]:
    rows = await conn.fetch(
        f"SELECT {_KEYPAIR_COLUMNS} FROM key_pairs WHERE user_id = $1 ORDER BY name", user_id
    )
    return [dict(r) for r in rows]


async def get_keypair(conn: asyncpg.Connection, user_id: str, name: str) -> dict | None:
    row = await conn.fetchrow(
        f"SELECT {_KEYPAIR_COLUMNS} FROM key_pairs WHERE user_id = $1 AND name = $2", user_id, name
    )
    return dict(row) if row else None


async def count_keypairs(conn: asyncpg.Connection, user_id: str) -> int:
    return await conn.fetchval("SELECT count(*) FROM key_pairs WHERE user_id = $1", user_id)


async def create_keypair(
    conn: asyncpg.Connection, user_id: str, name: str, fingerprint: str, public_key: str, key_type: str
) -> dict:
    """Insert a key pair; Duplicate when the user already has one with this name."""
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO key_pairs (user_id, name, fingerprint, public_key, type)
                VALUES ($1, $2, $3, $4, $5) RETURNING {_KEYPAIR_COLUMNS}""",
            user_id,
            name,
            fingerprint,
            public_key,
            key_type,
        )
    except asyncpg.UniqueViolationError:
        raise Duplicate(name) from None
    return dict(row)


async def delete_keypair(conn: asyncpg.Connection, user_id: str, name: str) -> bool:
    row = await conn.fetchval(
        "DELETE FROM key_pairs WHERE user_id = $1 AND name = $2 RETURNING true", user_id, name
    )
    return row is not None


# Compute nodes (hypervisors and their nova-compute services) ------------------

_NODE_QUERY = """
    SELECT n.*,
           n.memory_mb_used AS alloc_memory_mb,
           n.disk_gb_used AS alloc_disk_gb,
           n.instances_used AS running_vms,
           (SELECT count(*) FROM instances i
             WHERE i.host = n.host AND NOT i.deleted AND i.task_state IS NOT NULL) AS current_workload,
           (n.heartbeat_at IS NOT NULL AND NOT n.forced_down
            AND n.heartbeat_at >= now() - make_interval(secs => $1)) AS alive
      FROM compute_nodes n
"""


async def list_compute_nodes(
    conn: asyncpg.Connection, service_down_time: int, hostname_pattern: str | None = None
) -> list[dict]:
    """Every compute node with usage summed from allocations and its up/down state."""
    if hostname_pattern is None:
        rows = await conn.fetch(_NODE_QUERY + " ORDER BY n.id", float(service_down_time))
    else:
        rows = await conn.fetch(
            _NODE_QUERY + " WHERE n.hypervisor_hostname LIKE $2 ORDER BY n.id",
            float(service_down_time),
            f"%{hostname_pattern}%",
        )
    return [dict(r) for r in rows]


async def get_compute_node(conn: asyncpg.Connection, service_down_time: int, *, node_id: int | None = None,
                           node_uuid: str | None = None, service_uuid: str | None = None,
                           host: str | None = None) -> dict | None:
    """One compute node by integer id, node uuid, service uuid or host."""
    if node_id is not None:
        cond, arg = "n.id = $2", node_id
    elif node_uuid is not None:
        cond, arg = "n.uuid = $2::uuid", node_uuid
    elif service_uuid is not None:
        cond, arg = "n.service_uuid = $2::uuid", service_uuid
    else:
        cond, arg = "n.host = $2", host
    row = await conn.fetchrow(_NODE_QUERY + f" WHERE {cond}", float(service_down_time), arg)
    return dict(row) if row else None


def host_status_sql(node: str, service_down_time_arg: str) -> str:
    """Nova's get_instance_host_status of the compute node row ``node`` (an SQL alias), as an SQL
    expression: DOWN (forced down), MAINTENANCE (disabled), UP (heartbeat fresh) or UNKNOWN
    (heartbeat stale); ``service_down_time_arg`` is the seconds (an SQL float8)."""
    return f"""CASE WHEN {node}.forced_down THEN 'DOWN' WHEN {node}.disabled THEN 'MAINTENANCE'
                    WHEN {node}.heartbeat_at IS NOT NULL
                         AND {node}.heartbeat_at >= now() - make_interval(secs => {service_down_time_arg}) THEN 'UP'
                    ELSE 'UNKNOWN' END"""


async def host_statuses(conn: asyncpg.Connection, service_down_time: int, hosts: list[str]) -> dict[str, str]:
    """host_status_sql per host; a host without a service row is left out (the caller shows "")."""
    rows = await conn.fetch(
        f"SELECT host, {host_status_sql('n', '$1')} AS status FROM compute_nodes n WHERE host = ANY($2::text[])",
        float(service_down_time), hosts,
    )
    return {r["host"]: r["status"] for r in rows}


async def update_service(conn: asyncpg.Connection, node_id: int, values: dict) -> None:
    """Set disabled / disabled_reason / forced_down of a host's nova-compute service."""
    allowed = {"disabled", "disabled_reason", "forced_down"}
    sets = []
    args: list = [node_id]
    for key, value in values.items():
        if key not in allowed:
            raise ValueError(key)
        args.append(value)
        sets.append(f"{key} = ${len(args)}")
    await conn.execute(
        f"UPDATE compute_nodes SET {', '.join(sets)}, updated_at = now() WHERE id = $1", *args
    )


# Quotas -----------------------------------------------------------------------


async def stored_limits(conn: asyncpg.Connection, project_id: str) -> dict[str, int]:
    """Every per-project limit row, including the legacy network resources."""
    rows = await conn.fetch("SELECT resource, hard_limit FROM quotas WHERE project_id = $1", project_id)
    return {r["resource"]: r["hard_limit"] for r in rows}


async def delete_compute_node(conn: asyncpg.Connection, host: str) -> None:
    """Forget a host taken out of the configuration: its node and service row (Nova's service delete)."""
    await conn.execute("DELETE FROM compute_nodes WHERE host = $1", host)
