"""What the start-up log says about the database: which server, which images."""

from __future__ import annotations

import asyncpg


async def server_info(conn: asyncpg.Connection | asyncpg.Pool) -> asyncpg.Record:
    """The database's name, the server's address and port (None on a unix socket) and version."""
    return await conn.fetchrow(
        "SELECT current_database() AS database, inet_server_addr()::text AS address, "
        "inet_server_port() AS port, current_setting('server_version') AS version"
    )


async def images_present(conn: asyncpg.Connection | asyncpg.Pool, limit: int) -> list[asyncpg.Record]:
    """Name and status of the oldest ``limit`` images."""
    return await conn.fetch("SELECT name, status FROM images ORDER BY created_at LIMIT $1", limit)
