"""Dashboard sessions (novalite.dashboard.sessions): rows by the hash of the cookie's session id.

``expires_at`` is the Keystone token's expiry: a row past it is never answered, and is deleted
when looked up or by :func:`prune` (each login prunes a bounded batch)."""

from __future__ import annotations

import asyncpg

FIELDS = ("token", "user_id", "user_name", "project_id", "project_name", "roles", "projects", "csrf",
          "admin_area", "flash")


def _values(fields: dict) -> list:
    return [list(fields[f]) if f == "roles" else fields[f] for f in FIELDS]  # jsonb: the pool's codec


async def create(conn: asyncpg.Connection, id_hash: str, fields: dict, expires_at: float) -> None:
    """Store a session (``fields`` named as FIELDS) until ``expires_at`` (epoch seconds)."""
    await conn.execute(
        f"""INSERT INTO dashboard_sessions (id_hash, {', '.join(FIELDS)}, expires_at)
            VALUES ($1, {', '.join(f'${i}' for i in range(2, len(FIELDS) + 2))}, to_timestamp(${len(FIELDS) + 2}))""",
        id_hash, *_values(fields), expires_at,
    )


async def update(conn: asyncpg.Connection, id_hash: str, fields: dict, expires_at: float) -> None:
    """Every field anew (a project switch: a new token, project and CSRF secret)."""
    sets = ", ".join(f"{f} = ${i}" for i, f in enumerate(FIELDS, start=2))
    await conn.execute(
        f"UPDATE dashboard_sessions SET {sets}, expires_at = to_timestamp(${len(FIELDS) + 2}) WHERE id_hash = $1",
        id_hash, *_values(fields), expires_at,
    )


async def set_flash(conn: asyncpg.Connection, id_hash: str, flash: str) -> None:
    await conn.execute("UPDATE dashboard_sessions SET flash = $2 WHERE id_hash = $1", id_hash, flash)


async def get(conn: asyncpg.Connection, id_hash: str) -> dict | None:
    """The live session's fields (and ``expires_at`` in epoch seconds); an expired one is deleted."""
    row = await conn.fetchrow(
        f"""SELECT {', '.join(FIELDS)}, extract(epoch FROM expires_at)::float8 AS expires_at,
                   expires_at > now() AS live
            FROM dashboard_sessions WHERE id_hash = $1""", id_hash)
    if row is None:
        return None
    if not row["live"]:
        await delete(conn, id_hash)
        return None
    found = {f: row[f] for f in FIELDS}
    found["roles"] = tuple(row["roles"])
    found["projects"] = [tuple(p) for p in row["projects"]]
    return {**found, "expires_at": row["expires_at"]}


async def delete(conn: asyncpg.Connection, id_hash: str) -> None:
    await conn.execute("DELETE FROM dashboard_sessions WHERE id_hash = $1", id_hash)


async def prune(conn: asyncpg.Connection, limit: int) -> int:
    """Delete up to ``limit`` sessions past their expiry; how many went."""
    done = await conn.execute(
        """DELETE FROM dashboard_sessions WHERE id_hash = ANY(ARRAY(
               SELECT id_hash FROM dashboard_sessions WHERE expires_at <= now() LIMIT $1))""", limit)
    return int(done.split()[-1])
