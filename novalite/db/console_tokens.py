"""Console tokens (Nova's console_auth_tokens): the token of a remote console URL, by its hash.

A token is created for one instance and one console type and is good once,
until it expires: :func:`consume` deletes it whatever it answers, so a second
connect with the same token finds nothing. Expired rows that nobody used are
deleted by the retention pass (:func:`novalite.db.retention.purge_console_tokens`).
"""

from __future__ import annotations

import asyncpg


async def create(conn: asyncpg.Connection, token_hash: str, console_type: str, instance_uuid: str,
                 host: str, ttl: float) -> None:
    """Store a token (its hash) for ``instance_uuid`` on ``host``, good for ``ttl`` seconds."""
    await conn.execute(
        """INSERT INTO console_auth_tokens (token_hash, console_type, instance_uuid, host, expires_at)
           VALUES ($1, $2, $3, $4, now() + $5 * interval '1 second')""",
        token_hash, console_type, instance_uuid, host, ttl,
    )


async def consume(conn: asyncpg.Connection, token_hash: str, console_type: str) -> asyncpg.Record | None:
    """Delete the token and return its (instance_uuid, host) if it was still good, else None."""
    row = await conn.fetchrow(
        """DELETE FROM console_auth_tokens WHERE token_hash = $1
           RETURNING instance_uuid::text, host, console_type, expires_at > now() AS valid""",
        token_hash,
    )
    if row is None or not row["valid"] or row["console_type"] != console_type:
        return None
    return row
