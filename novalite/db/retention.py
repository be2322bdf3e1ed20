"""Queries that delete what is past its keeping, one small batch per statement.

Each function deletes at most `limit` rows in one statement (its own short
transaction) and returns how many went; the caller loops until a batch comes
back short, so no purge holds locks or a connection long enough to hold up a
boot. The ids are gathered into an array first (``id = ANY(ARRAY(...))``), so
the rows are deleted through the primary key: with ``id IN (SELECT ...)`` the
planner hash-joined the batch against a scan of the whole table, every batch.
"""

from __future__ import annotations

import asyncpg


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def purge_tokens(conn: asyncpg.Connection, limit: int) -> int:
    """Delete up to `limit` expired or revoked tokens: a token gone is unknown, so still refused."""
    return _count(await conn.execute(
        """DELETE FROM tokens WHERE id = ANY(ARRAY(
               (SELECT id FROM tokens WHERE expires_at <= now() LIMIT $1)
               UNION ALL (SELECT id FROM tokens WHERE revoked LIMIT $1)
               LIMIT $1))""",
        limit,
    ))


# Tables whose rows are kept a number of days after their created_at (each has an index on it).
KEPT_BY_AGE = ("notifications", "scheduling_verdicts")


async def purge_older_than(conn: asyncpg.Connection, table: str, days: float, limit: int) -> int:
    """Delete up to `limit` rows of `table` (one of KEPT_BY_AGE) created more than `days` ago."""
    if table not in KEPT_BY_AGE:
        raise ValueError(f"{table} is not kept by age")
    return _count(await conn.execute(
        f"""DELETE FROM {table} WHERE id = ANY(ARRAY(
                SELECT id FROM {table} WHERE created_at < now() - $1 * interval '1 day' LIMIT $2))""",
        days,
        limit,
    ))


async def purge_console_tokens(conn: asyncpg.Connection, limit: int) -> int:
    """Delete up to `limit` console tokens past their expiry (used ones are gone already)."""
    return _count(await conn.execute(
        """DELETE FROM console_auth_tokens WHERE token_hash = ANY(ARRAY(
               SELECT token_hash FROM console_auth_tokens WHERE expires_at <= now() LIMIT $1))""",
        limit,
    ))
