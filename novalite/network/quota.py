"""Neutron's quotas: per-project limits on networks, subnets, ports, security groups and rules.

Limits are Neutron's defaults (``[quota]`` of neutron.conf) overlaid by rows of
``network_quotas`` (PUT /networking/v2.0/quotas/{project}). Usage is counted from
the live rows inside the transaction that adds new ones, under a per-project
advisory lock of its own (not the compute quota's lock, so Neutron creates never
wait for a project's server creates), so concurrent creates at the limit admit
exactly what fits. Ports are the exception: their count is kept by triggers and
their creates hold the project's counter row instead (a server's port is made in one
statement that checks the quota on that row, without the advisory lock).
"""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg

# Neutron's defaults for the resources novalite has (neutron/conf/quota.py).
DEFAULTS: dict[str, int] = {
    "network": 100,
    "subnet": 100,
    "port": 500,
    "security_group": 10,
    "security_group_rule": 100,
}
UNLIMITED = -1

# How each resource's usage is counted, for one project ({p}: an SQL text). Ports include the
# ones Nova makes for servers, as in Neutron; DHCP ports are the cloud's, not the project's.
# Ports are counted by triggers into network_usage (migration 0005), read in constant time.
_USAGE = {
    "network": "SELECT count(*) FROM networks WHERE project_id = {p}",
    "subnet": "SELECT count(*) FROM subnets WHERE project_id = {p}",
    "port": "SELECT coalesce((SELECT ports FROM network_usage WHERE project_id = {p}), 0)",
    "security_group": "SELECT count(*) FROM security_groups WHERE project_id = {p}",
    "security_group_rule": "SELECT count(*) FROM security_group_rules WHERE project_id = {p}",
}


# Holds the project's port usage row to the end of the transaction (made if missing).
_HOLD_PORTS = """INSERT INTO network_usage AS u (project_id) VALUES ($1)
                 ON CONFLICT (project_id) DO UPDATE SET ports = u.ports"""


class OverQuota(Exception):
    """Neutron's OverQuota (409): ``Quota exceeded for resources: ['port'].``"""

    def __init__(self, resources: list[str]) -> None:
        super().__init__(f"Quota exceeded for resources: {resources}.")
        self.resources = resources


def _lock_key(project_id: str) -> int:
    digest = hashlib.blake2b(f"neutron-quota:{project_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def limits(conn: asyncpg.Connection, project_id: str) -> dict[str, int]:
    """The project's effective limits (-1: unlimited)."""
    rows = await conn.fetch("SELECT resource, hard_limit FROM network_quotas WHERE project_id = $1", project_id)
    out = dict(DEFAULTS)
    out.update({r["resource"]: r["hard_limit"] for r in rows if r["resource"] in out})
    return out


async def usage(conn: asyncpg.Connection, project_id: str) -> dict[str, int]:
    """How many of each resource the project has now."""
    parts = ", ".join(f"({sql.format(p='$1')}) AS {name}" for name, sql in _USAGE.items())
    row = await conn.fetchrow(f"SELECT {parts}", project_id)
    return dict(row)


async def reserve(conn: asyncpg.Connection, project_id: str, wanted: dict[str, int]) -> None:
    """Check that ``wanted`` more of each resource fit, holding the project's lock to the end
    of the caller's transaction (so the caller's inserts are counted by the next check).

    Must run inside a transaction, before the inserts. Raises :class:`OverQuota`.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)", _lock_key(project_id))
    lim = await limits(conn, project_id)
    checked = {r: n for r, n in wanted.items() if n > 0 and lim.get(r, UNLIMITED) != UNLIMITED}
    if not checked:
        return
    if "port" in checked:
        # The builds' port creates (db.networks.create_nova_port) hold this row, not the lock above.
        await conn.execute(_HOLD_PORTS, project_id)
    parts = ", ".join(f"({_USAGE[r].format(p='$1')}) AS {r}" for r in checked)
    used = await conn.fetchrow(f"SELECT {parts}", project_id)
    over = sorted(r for r, n in checked.items() if used[r] + n > lim[r])
    if over:
        raise OverQuota(over)


async def set_limits(conn: asyncpg.Connection, project_id: str, new: dict[str, int]) -> None:
    """Store the project's limits that differ from Neutron's defaults (known resources only)."""
    for resource, limit in new.items():
        await conn.execute(
            """INSERT INTO network_quotas (project_id, resource, hard_limit) VALUES ($1, $2, $3)
               ON CONFLICT (project_id, resource) DO UPDATE SET hard_limit = EXCLUDED.hard_limit""",
            project_id, resource, limit,
        )


async def reset(conn: asyncpg.Connection, project_id: str) -> None:
    """Back to the defaults (DELETE /quotas/{project})."""
    await conn.execute("DELETE FROM network_quotas WHERE project_id = $1", project_id)


async def projects_with_limits(conn: asyncpg.Connection) -> list[str]:
    """Projects that have limits of their own (GET /quotas)."""
    return [r["project_id"] for r in await conn.fetch(
        "SELECT DISTINCT project_id FROM network_quotas ORDER BY project_id")]


def room_sql(project_arg: str, resource: str) -> str:
    """An SQL expression: how many more of ``resource`` the project ``project_arg`` (an SQL text)
    may make now, NULL when it is unlimited."""
    return f"""(SELECT CASE WHEN q.lim = {UNLIMITED} THEN NULL ELSE greatest(0, q.lim - q.used) END
        FROM (SELECT coalesce((SELECT hard_limit FROM network_quotas
                                WHERE project_id = {project_arg} AND resource = '{resource}'), {DEFAULTS[resource]})
                     AS lim, ({_USAGE[resource].format(p=project_arg)}) AS used) AS q)"""


async def headroom(conn: asyncpg.Connection, project_id: str, resource: str, *, also: str = "NULL",
                   also_args: tuple = ()) -> tuple[int | None, Any]:
    """How many more of ``resource`` the project may make now (None: unlimited), and the value of
    the SQL expression ``also`` (its parameters from $2: ``also_args``) read in the same round trip."""
    row = await conn.fetchrow(f"SELECT {room_sql('$1', resource)} AS room, {also} AS also", project_id, *also_args)
    return row["room"], row["also"]
