"""Queries for identity: projects, users, roles, assignments and tokens."""

from __future__ import annotations

from datetime import datetime

import asyncpg

IMPLIED_ROLES = {"admin": ("member", "reader"), "member": ("reader",)}


async def get_user_by_name(conn: asyncpg.Connection, name: str, domain_id: str = "default") -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM users WHERE name = $1 AND domain_id = $2", name, domain_id)


async def get_user(conn: asyncpg.Connection, user_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM users WHERE id = $1", user_id)


async def get_project(conn: asyncpg.Connection, project_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM projects WHERE id = $1", project_id)


async def get_project_by_name(conn: asyncpg.Connection, name: str, domain_id: str = "default") -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM projects WHERE name = $1 AND domain_id = $2", name, domain_id)


async def role_names(conn: asyncpg.Connection, user_id: str, project_id: str) -> list[asyncpg.Record]:
    """Roles assigned to a user on a project, without implied roles."""
    return await conn.fetch(
        """SELECT r.id, r.name FROM role_assignments a JOIN roles r ON r.id = a.role_id
           WHERE a.user_id = $1 AND a.project_id = $2 ORDER BY r.name""",
        user_id,
        project_id,
    )


async def user_projects(conn: asyncpg.Connection, user_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT DISTINCT p.* FROM projects p JOIN role_assignments a ON a.project_id = p.id
           WHERE a.user_id = $1 ORDER BY p.name""",
        user_id,
    )


async def all_roles(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT id, name FROM roles ORDER BY name")


async def insert_token(
    conn: asyncpg.Connection,
    token_id: str,
    user_id: str,
    project_id: str | None,
    methods: list[str],
    issued_at: datetime,
    expires_at: datetime,
) -> None:
    await conn.execute(
        """INSERT INTO tokens (id, user_id, project_id, methods, issued_at, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        token_id,
        user_id,
        project_id,
        methods,
        issued_at,
        expires_at,
    )


async def get_token(conn: asyncpg.Connection, token_id: str) -> asyncpg.Record | None:
    """A token that is valid now, joined with its user and project."""
    return await conn.fetchrow(
        """SELECT t.*, u.name AS user_name, u.enabled AS user_enabled,
                  p.name AS project_name, p.enabled AS project_enabled
           FROM tokens t JOIN users u ON u.id = t.user_id
           LEFT JOIN projects p ON p.id = t.project_id
           WHERE t.id = $1 AND NOT t.revoked AND t.expires_at > now()""",
        token_id,
    )


async def revoke_token(conn: asyncpg.Connection, token_id: str) -> bool:
    status = await conn.execute(
        "UPDATE tokens SET revoked = true WHERE id = $1 AND NOT revoked AND expires_at > now()", token_id
    )
    return status.endswith(" 1")


async def purge_expired_tokens(conn: asyncpg.Connection) -> None:
    await conn.execute("DELETE FROM tokens WHERE expires_at < now() - interval '1 day'")
