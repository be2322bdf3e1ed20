"""Many concurrent callers' writes in one statement.

During a boot storm hundreds of builds each want a short write at about the same
time (a build step, a port). Sent one by one, each is a round trip and a commit,
and writes that touch the same hot row (a project's port counter, a network's
address cursor) wait for each other's commit. A ``BatchWriter`` sends whatever
accumulated while its previous statement was in flight as one statement: one round
trip and one commit for many, and a lone write still goes out at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import asyncpg
import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Writes a batch on a connection; one result per item, in order: a value, or an Exception
# that only that item's caller gets.
RunBatch = Callable[[asyncpg.Connection, list[T]], Awaitable[list[Any]]]


class BatchWriter(Generic[T]):
    """Sends the items of concurrent callers together (at most ``max_batch`` per statement, one
    statement in flight) and answers each caller as if its item had been sent alone.

    Items with the same ``key`` go in different statements, in the order they came. A batch
    that fails as a whole (a deadlock, one bad item) is retried item by item, so only the bad
    item's caller sees the error."""

    def __init__(self, pool: asyncpg.Pool, run: RunBatch, max_batch: int, name: str,
                 key: Callable[[T], Hashable] | None = None) -> None:
        self.pool = pool
        self.run = run
        self.max_batch = max_batch
        self.name = name  # in the log line of a failed batch
        self.key = key
        self._pending: deque[tuple[T, asyncio.Future]] = deque()
        self._writer: asyncio.Task | None = None

    async def submit(self, item: T) -> Any:
        """Write the item (with whatever else is waiting); its result, or its exception."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await future

    def _next_batch(self) -> list[tuple[T, asyncio.Future]]:
        """Up to max_batch waiting items from the front, one per key; the others stay in order."""
        batch: list[tuple[T, asyncio.Future]] = []
        later: list[tuple[T, asyncio.Future]] = []
        seen: set[Hashable] = set()
        while self._pending and len(batch) < self.max_batch:
            item, future = entry = self._pending.popleft()
            if future.done():  # its caller was cancelled before the item was sent
                continue
            key = self.key(item) if self.key is not None else None
            if key is not None and key in seen:
                later.append(entry)
            else:
                seen.add(key)
                batch.append(entry)
        self._pending.extendleft(reversed(later))
        return batch

    async def _write(self) -> None:
        batch: list[tuple[T, asyncio.Future]] = []
        try:
            while self._pending:
                batch = self._next_batch()
                if batch:
                    await self._send(batch)
                batch = []
        except asyncio.CancelledError:  # shutting down: nobody waits forever for its item
            for _, future in batch + list(self._pending):
                future.cancel()
            self._pending.clear()
            raise
        finally:
            self._writer = None

    async def _send(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        try:
            async with self.pool.acquire() as conn:
                results = await self.run(conn, [item for item, _ in batch])
        except Exception as exc:
            if len(batch) > 1:
                log.warning("batch_failed", writer=self.name, items=len(batch), error=str(exc))
                for entry in batch:
                    await self._send([entry])
                return
            if not batch[0][1].done():
                batch[0][1].set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
