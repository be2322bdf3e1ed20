"""Queries for identity: projects, users, roles, assignments and tokens."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

IMPLIED_ROLES = {"admin": ("member", "reader"), "member": ("reader",)}


async def get_user_by_name(conn: asyncpg.Connection, name: str, domain_id: str = "default") -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM users WHERE name = $1 AND domain_id = $2", name, domain_id)


async def get_user(conn: asyncpg.Connection, user_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM users WHERE id = $1", user_id)


async def record_failed_auth(conn: asyncpg.Connection, user_id: str, now: datetime, window: float) -> int:
    """Count one failed password check; a failure more than `window` seconds after the last
    one starts the count again. Returns the new count."""
    return await conn.fetchval(
        """UPDATE users SET failed_auth_count = CASE
               WHEN failed_auth_at > $3 THEN failed_auth_count + 1 ELSE 1 END,
               failed_auth_at = $2
           WHERE id = $1 RETURNING failed_auth_count""",
        user_id,
        now,
        now - timedelta(seconds=window),
    )


async def reset_failed_auth(conn: asyncpg.Connection, user_id: str) -> None:
    await conn.execute(
        "UPDATE users SET failed_auth_count = 0, failed_auth_at = NULL WHERE id = $1 AND failed_auth_count > 0",
        user_id,
    )


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


# -- admin: projects ------------------------------------------------------
PROJECT_COLUMNS = ("name", "description", "enabled")
USER_COLUMNS = ("name", "password_hash", "enabled", "default_project_id", "email", "description")


def _where(filters: dict[str, object]) -> tuple[str, list[object]]:
    """A WHERE clause for equality filters whose value is not None."""
    parts, args = [], []
    for column, value in filters.items():
        if value is not None:
            args.append(value)
            parts.append(f"{column} = ${len(args)}")
    return (" WHERE " + " AND ".join(parts) if parts else ""), args


async def list_projects(
    conn: asyncpg.Connection, *, name: str | None = None, enabled: bool | None = None, domain_id: str | None = None
) -> list[asyncpg.Record]:
    where, args = _where({"name": name, "enabled": enabled, "domain_id": domain_id})
    return await conn.fetch(f"SELECT * FROM projects{where} ORDER BY name", *args)


async def insert_project(
    conn: asyncpg.Connection, project_id: str, name: str, description: str, enabled: bool, domain_id: str = "default"
) -> asyncpg.Record:
    """Insert a project; raises asyncpg.UniqueViolationError on a duplicate name."""
    return await conn.fetchrow(
        """INSERT INTO projects (id, name, description, enabled, domain_id)
           VALUES ($1, $2, $3, $4, $5) RETURNING *""",
        project_id,
        name,
        description,
        enabled,
        domain_id,
    )


async def _update(
    conn: asyncpg.Connection, table: str, allowed: tuple[str, ...], row_id: str, changes: dict[str, object]
) -> asyncpg.Record | None:
    cols = [c for c in changes if c in allowed]
    if not cols:
        return await conn.fetchrow(f"SELECT * FROM {table} WHERE id = $1", row_id)
    sets = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(cols))
    return await conn.fetchrow(
        f"UPDATE {table} SET {sets} WHERE id = $1 RETURNING *", row_id, *(changes[c] for c in cols)
    )


async def update_project(conn: asyncpg.Connection, project_id: str, changes: dict[str, object]) -> asyncpg.Record | None:
    """Apply name/description/enabled changes; None if the project does not exist."""
    return await _update(conn, "projects", PROJECT_COLUMNS, project_id, changes)


async def delete_project(conn: asyncpg.Connection, project_id: str) -> bool:
    """Delete a project; its assignments and tokens go with it (ON DELETE CASCADE)."""
    return (await conn.execute("DELETE FROM projects WHERE id = $1", project_id)).endswith(" 1")


# -- admin: users ---------------------------------------------------------
async def list_users(
    conn: asyncpg.Connection, *, name: str | None = None, enabled: bool | None = None, domain_id: str | None = None
) -> list[asyncpg.Record]:
    where, args = _where({"name": name, "enabled": enabled, "domain_id": domain_id})
    return await conn.fetch(f"SELECT * FROM users{where} ORDER BY name", *args)


async def insert_user(conn: asyncpg.Connection, user_id: str, fields: dict[str, object]) -> asyncpg.Record:
    """Insert a user; raises asyncpg.UniqueViolationError on a duplicate name."""
    cols = [c for c in USER_COLUMNS if c in fields]
    placeholders = ", ".join(f"${i + 2}" for i in range(len(cols)))
    return await conn.fetchrow(
        f"INSERT INTO users (id, {', '.join(cols)}) VALUES ($1, {placeholders}) RETURNING *",
        user_id,
        *(fields[c] for c in cols),
    )


async def update_user(conn: asyncpg.Connection, user_id: str, changes: dict[str, object]) -> asyncpg.Record | None:
    """Apply changes to a user; None if the user does not exist."""
    return await _update(conn, "users", USER_COLUMNS, user_id, changes)


async def delete_user(conn: asyncpg.Connection, user_id: str) -> bool:
    """Delete a user; assignments and tokens go with it (ON DELETE CASCADE)."""
    return (await conn.execute("DELETE FROM users WHERE id = $1", user_id)).endswith(" 1")


async def revoke_user_tokens(conn: asyncpg.Connection, user_id: str) -> None:
    await conn.execute("UPDATE tokens SET revoked = true WHERE user_id = $1 AND NOT revoked", user_id)


# -- admin: roles and assignments -------------------------------------------
async def list_roles(conn: asyncpg.Connection, *, name: str | None = None) -> list[asyncpg.Record]:
    where, args = _where({"name": name})
    return await conn.fetch(f"SELECT id, name FROM roles{where} ORDER BY name", *args)


async def get_role(conn: asyncpg.Connection, role_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, name FROM roles WHERE id = $1", role_id)


async def add_assignment(conn: asyncpg.Connection, user_id: str, project_id: str, role_id: str) -> None:
    await conn.execute(
        "INSERT INTO role_assignments (user_id, project_id, role_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        user_id,
        project_id,
        role_id,
    )


async def has_assignment(conn: asyncpg.Connection, user_id: str, project_id: str, role_id: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM role_assignments WHERE user_id = $1 AND project_id = $2 AND role_id = $3",
            user_id,
            project_id,
            role_id,
        )
    )


async def remove_assignment(conn: asyncpg.Connection, user_id: str, project_id: str, role_id: str) -> bool:
    status = await conn.execute(
        "DELETE FROM role_assignments WHERE user_id = $1 AND project_id = $2 AND role_id = $3",
        user_id,
        project_id,
        role_id,
    )
    return status.endswith(" 1")


async def list_assignments(
    conn: asyncpg.Connection, *, user_id: str | None = None, project_id: str | None = None
) -> list[asyncpg.Record]:
    """Direct assignments with user, project and role names, optionally filtered."""
    where, args = _where({"a.user_id": user_id, "a.project_id": project_id})
    return await conn.fetch(
        f"""SELECT a.user_id, u.name AS user_name, u.domain_id AS user_domain_id,
                   a.project_id, p.name AS project_name, p.domain_id AS project_domain_id,
                   a.role_id, r.name AS role_name
            FROM role_assignments a JOIN users u ON u.id = a.user_id
            JOIN projects p ON p.id = a.project_id JOIN roles r ON r.id = a.role_id{where}
            ORDER BY u.name, p.name, r.name""",
        *args,
    )
