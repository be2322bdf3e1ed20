"""Quotas: limits from config overlaid by per-project rows, usage counted from live rows.

A project's instance usage (instances, cores, RAM) is kept in ``project_usage`` by
triggers on ``instances`` (migration 0003), so every path that adds, deletes or
resizes an instance moves it in the same transaction, and it is re-derived at every
start. A create checks and inserts in one statement that locks the project's row
(``db.instances.provision``): concurrent creates at the limit admit exactly what fits,
and they wait on each other for that one statement only. Key pairs and server groups
are counted from their rows under a per-project advisory lock.
"""

from __future__ import annotations

import hashlib

import asyncpg

from novalite.config import QuotaConfig
from novalite.db.catalog import CLASS_PREFIX
from novalite.exception import QuotaExceeded

# Nova's quota resource names, in the order os-quota-sets shows them.
RESOURCES = (
    "instances",
    "cores",
    "ram",
    "metadata_items",
    "injected_files",
    "injected_file_content_bytes",
    "injected_file_path_bytes",
    "key_pairs",
    "server_groups",
    "server_group_members",
)
UNLIMITED = -1
NO_USAGE = {"instances": 0, "cores": 0, "ram": 0}




async def get_limits(conn: asyncpg.Connection, defaults: QuotaConfig, project_id: str) -> dict[str, int]:
    """Effective hard limits of a project (-1 = unlimited): config, then class `default`, then the project."""
    rows = await conn.fetch(
        "SELECT resource, hard_limit FROM quotas WHERE project_id IN ($1, $2) ORDER BY project_id = $1",
        project_id,
        CLASS_PREFIX + "default",
    )
    return limits_from(defaults, {r["resource"]: r["hard_limit"] for r in rows})  # the project's rows come last


async def set_limits(conn: asyncpg.Connection, project_id: str, values: dict[str, int]) -> None:
    await conn.executemany(
        """INSERT INTO quotas (project_id, resource, hard_limit) VALUES ($1, $2, $3)
           ON CONFLICT (project_id, resource) DO UPDATE SET hard_limit = EXCLUDED.hard_limit""",
        [(project_id, k, v) for k, v in values.items()],
    )


async def delete_limits(conn: asyncpg.Connection, project_id: str) -> None:
    await conn.execute("DELETE FROM quotas WHERE project_id = $1", project_id)


def lock_key(project_id: str) -> int:
    """The advisory lock id of a project's quota (a stable signed 64-bit hash)."""
    digest = hashlib.blake2b(f"quota:{project_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def lock_project(conn: asyncpg.Connection, project_id: str) -> None:
    """Serialise quota checks of one project until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)", lock_key(project_id))


def limits_from(defaults: QuotaConfig, overrides: dict[str, int]) -> dict[str, int]:
    """Effective limits from the config defaults and a project's override rows."""
    limits = {r: getattr(defaults, r) for r in RESOURCES}
    limits.update({k: v for k, v in overrides.items() if k in limits})
    return limits


async def instance_usage(conn: asyncpg.Connection, project_id: str) -> dict[str, int]:
    row = await conn.fetchrow(
        """SELECT count(*) AS instances, coalesce(sum(vcpus), 0) AS cores, coalesce(sum(memory_mb), 0) AS ram
           FROM instances WHERE project_id = $1 AND NOT deleted""",
        project_id,
    )
    return {"instances": row["instances"], "cores": row["cores"], "ram": row["ram"]}


async def usage(conn: asyncpg.Connection, project_id: str, user_id: str | None = None) -> dict[str, int]:
    """In-use counts for every counted resource (key pairs are per user)."""
    used = await instance_usage(conn, project_id)
    used["server_groups"] = await conn.fetchval(
        "SELECT count(*) FROM instance_groups WHERE project_id = $1", project_id
    )
    used["key_pairs"] = (
        await conn.fetchval("SELECT count(*) FROM key_pairs WHERE user_id = $1", user_id) if user_id else 0
    )
    return used


def admissible_count(limits: dict[str, int], used: dict[str, int], vcpus: int, ram: int, max_count: int) -> int:
    """How many more instances of this size fit in the project's quota, up to max_count."""
    fits = max_count
    for resource, each in (("instances", 1), ("cores", vcpus), ("ram", ram)):
        limit = limits[resource]
        if limit == UNLIMITED or each == 0:
            continue
        fits = min(fits, max(0, (limit - used[resource]) // each))
    return fits


def usage_bounds(limits: dict[str, int], vcpus: int, ram: int, count: int) -> tuple[int | None, ...]:
    """The most instances, cores and RAM the project may already use for ``count`` more
    instances of this size to fit (None: no bound), in the order provisioning checks them."""
    return tuple(
        None if limits[resource] == UNLIMITED or each == 0 else limits[resource] - each * count
        for resource, each in (("instances", 1), ("cores", vcpus), ("ram", ram))
    )


def instances_over_quota(
    limits: dict[str, int], used: dict[str, int], vcpus: int, ram: int, count: int
) -> QuotaExceeded:
    """Nova's TooManyInstances message for a request of `count` instances that does not fit."""
    requested = {"instances": count, "cores": vcpus * count, "ram": ram * count}
    overs = [
        r
        for r in ("cores", "instances", "ram")
        if limits[r] != UNLIMITED and used[r] + requested[r] > limits[r]
    ]
    overs = overs or ["instances"]
    names = ", ".join(overs)
    req = ", ".join(str(requested[r]) for r in overs)
    usedv = ", ".join(str(used[r]) for r in overs)
    allowed = ", ".join(str(limits[r]) for r in overs)
    return QuotaExceeded(
        f"Quota exceeded for {names}: Requested {req}, but already used {usedv} of {allowed} {names}"
    )


async def check_count(
    conn: asyncpg.Connection, defaults: QuotaConfig, project_id: str, resource: str, used: int, adding: int = 1
) -> None:
    """403 when adding `adding` of a simple counted resource would pass its limit."""
    limits = await get_limits(conn, defaults, project_id)
    limit = limits[resource]
    if limit != UNLIMITED and used + adding > limit:
        raise QuotaExceeded(f"Quota exceeded, too many {resource.replace('_', ' ')}.")
