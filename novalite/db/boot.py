"""Lookups the create path needs: flavor, image, keypair, security groups, zones, hosts, groups."""

from __future__ import annotations

import uuid

import asyncpg

from novalite.db import is_uuid
from novalite.db.catalog import CLASS_PREFIX
from novalite.db.images import visible

# The create path's `default` group lives with the other group queries; callers reach it here too.
from novalite.db.security_groups import (
    ensure_default_security_group as ensure_default_security_group,
)

QUOTA_CLASS_DEFAULT = CLASS_PREFIX + "default"


async def visible_image_ids(
    conn: asyncpg.Connection, image_ids: list[str], project_id: str, is_admin: bool
) -> set[str]:
    """Those of ``image_ids`` (as given) that exist and the project may see."""
    ids = {str(uuid.UUID(i)): i for i in image_ids if is_uuid(i)}
    if not ids:
        return set()
    rows = await conn.fetch(
        f"SELECT i.id::text AS id FROM images i WHERE i.id = ANY($1::uuid[]) AND {visible('i', '$2', '$3')}",
        list(ids), project_id, is_admin,
    )
    return {ids[r["id"]] for r in rows}


async def compute_node(conn: asyncpg.Connection, host: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM compute_nodes WHERE host = $1 OR hypervisor_hostname = $1", host)


async def instance_group(conn: asyncpg.Connection, group_uuid: str) -> asyncpg.Record | None:
    if not is_uuid(group_uuid):
        return None
    return await conn.fetchrow("SELECT * FROM instance_groups WHERE uuid = $1::uuid", group_uuid)


# One statement for every lookup of a create: the image only when the project may see it.
_SNAPSHOT = f"""SELECT
         (SELECT to_jsonb(f) FROM flavors f WHERE f.flavorid = $1
            AND (f.is_public OR $4 OR EXISTS (SELECT 1 FROM flavor_projects p
                                              WHERE p.flavorid = f.flavorid AND p.project_id = $3))) AS flavor,
         (SELECT to_jsonb(i) FROM images i WHERE i.id = $2::uuid AND {visible('i', '$3', '$4')}) AS image,
         CASE WHEN $8 THEN (SELECT coalesce(array_agg(DISTINCT availability_zone), '{{}}')
                            FROM compute_nodes) END AS zones,
         (SELECT coalesce(jsonb_object_agg(resource, hard_limit ORDER BY project_id = $3), '{{}}')
            FROM quotas WHERE project_id IN ($3, $7)) AS quota_overrides,
         (SELECT coalesce(array_agg(name) || array_agg(id::text), '{{}}') FROM security_groups
           WHERE project_id = $3) AS security_groups,
         (SELECT public_key FROM key_pairs WHERE user_id = $5 AND name = $6) AS key_data,
         (SELECT jsonb_build_object('instances', instances, 'cores', cores, 'ram', ram) FROM project_usage
           WHERE project_id = $3) AS usage"""


async def snapshot(
    conn: asyncpg.Connection,
    *,
    flavorid: str,
    image_id: str,
    project_id: str,
    user_id: str,
    is_admin: bool,
    key_name: str | None,
    zones: bool = True,
    also: str | None = None,
) -> dict:
    """Everything the create path looks up, in ONE round trip: flavor, image (None when the
    project may not see it, as if it did not exist), zones (only when asked for: it reads
    every compute node), quota overrides (class `default`, then the project's own, which
    win), security group names, the key pair's public key and the project's instance usage
    (None before its first instance; read without a lock: provisioning re-checks it); and as
    ``also`` the value of the SQL expression ``also`` (of the project, ``$3``) when given: what
    another service's check of the create reads, in the same round trip."""
    try:
        image_uuid = str(uuid.UUID(image_id)) if image_id else None
    except ValueError:
        image_uuid = None
    row = await conn.fetchrow(
        _SNAPSHOT if also is None else f"{_SNAPSHOT}, {also} AS also",
        flavorid,
        image_uuid,
        project_id,
        is_admin,
        user_id,
        key_name,
        QUOTA_CLASS_DEFAULT,
        zones,
    )
    return dict(row)
