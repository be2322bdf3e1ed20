"""Queries of the os-server-groups API: instance groups and their live members."""

from __future__ import annotations

import json
import uuid as uuidlib

import asyncpg

from novalite.db import is_uuid

_GROUP_WITH_MEMBERS = """
    SELECT g.uuid, g.project_id, g.user_id, g.name, g.policy, g.rules, g.created_at,
           coalesce((SELECT array_agg(m.instance_uuid::text ORDER BY i.id)
                       FROM instance_group_members m JOIN instances i ON i.uuid = m.instance_uuid
                      WHERE m.group_uuid = g.uuid AND NOT i.deleted), '{}') AS members
      FROM instance_groups g"""


async def get(conn: asyncpg.Connection, group_uuid: str) -> asyncpg.Record | None:
    """One group with its not-deleted members, or None."""
    if not is_uuid(group_uuid):
        return None
    return await conn.fetchrow(_GROUP_WITH_MEMBERS + " WHERE g.uuid = $1::uuid", group_uuid)


async def list_groups(
    conn: asyncpg.Connection, project_id: str | None, offset: int, limit: int
) -> list[asyncpg.Record]:
    """Groups of a project (all projects when project_id is None), oldest first, one page."""
    where = "" if project_id is None else " WHERE g.project_id = $3"
    args: list = [offset, limit] + ([] if project_id is None else [project_id])
    return await conn.fetch(
        _GROUP_WITH_MEMBERS + where + " ORDER BY g.created_at, g.uuid OFFSET $1 LIMIT $2", *args
    )


async def count(conn: asyncpg.Connection, project_id: str) -> int:
    return await conn.fetchval("SELECT count(*) FROM instance_groups WHERE project_id = $1", project_id)


async def create(
    conn: asyncpg.Connection, project_id: str, user_id: str, name: str, policy: str, rules: dict
) -> asyncpg.Record:
    group_uuid = uuidlib.uuid4()
    await conn.execute(
        """INSERT INTO instance_groups (uuid, project_id, user_id, name, policy, rules)
           VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)""",
        group_uuid,
        project_id,
        user_id,
        name,
        policy,
        json.dumps(rules),
    )
    return await get(conn, str(group_uuid))


async def delete(conn: asyncpg.Connection, group_uuid: str) -> bool:
    """Delete a group (members go with it; instances keep running, ungrouped)."""
    return await conn.fetchval("DELETE FROM instance_groups WHERE uuid = $1::uuid RETURNING true", group_uuid) is True


