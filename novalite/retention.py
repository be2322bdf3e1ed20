"""Retention: expired and revoked tokens, expired console tokens, old notifications and scheduling verdicts are purged.

Every CLI call leaves a token and every boot a dozen notifications and a
verdict row; nothing else ever deletes them. Every ``[retention]
purge_interval`` seconds one pass deletes the tokens no one can use any more
(expired or revoked: a purged token is unknown, so still refused) and the
notifications and verdicts older than their configured days. It works in
batches of ``batch_size`` rows, one short statement each on the background
pool, taking a connection per batch and yielding to the loop in between, so
a boot's steps slip in between two batches and never wait behind a purge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from novalite.config import RetentionConfig
from novalite.db import retention as q
from novalite.periodic import Periodic

log = structlog.get_logger(__name__)

Batch = Callable[[asyncpg.Connection, int], Awaitable[int]]


class Retention:
    """Periodically purges what is past its keeping, a small batch at a time."""

    def __init__(self, pool: asyncpg.Pool, config: RetentionConfig) -> None:
        self.pool = pool
        self.config = config
        self._periodic = Periodic("retention_purge", config.purge_interval, self.purge_once)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def purge_once(self) -> dict[str, int]:
        """One pass over every table; returns the rows deleted per table."""
        days = {"notifications": self.config.notifications_days,
                "scheduling_verdicts": self.config.scheduling_verdicts_days}
        purged = {"tokens": await self._purge("tokens", q.purge_tokens),
                  "console_auth_tokens": await self._purge("console_auth_tokens", q.purge_console_tokens)}
        for table in q.KEPT_BY_AGE:
            purged[table] = await self._purge(
                table, lambda conn, limit, t=table: q.purge_older_than(conn, t, days[t], limit)
            )
        return purged

    async def _purge(self, table: str, batch: Batch) -> int:
        """Delete batch after batch until one comes back short."""
        size = self.config.batch_size
        total = batches = 0
        while True:
            async with self.pool.acquire() as conn:
                deleted = await batch(conn, size)
            total += deleted
            batches += 1
            if deleted < size:
                break
            await asyncio.sleep(0)  # let the boots on the loop run between two batches
        if total:
            log.info("retention_purged", table=table, rows=total, batches=batches)
        return total
