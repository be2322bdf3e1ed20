"""Per-instance locks: a build holds its instance's lock; a delete waits for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class InstanceLocks:
    """asyncio locks keyed by instance uuid, dropped when nobody holds or waits."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def lock(self, uuid: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(uuid, (asyncio.Lock(), 0))
        self._locks[uuid] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[uuid]
            if users <= 1:
                del self._locks[uuid]
            else:
                self._locks[uuid] = (lock, users - 1)

    def held(self, uuid: str) -> bool:
        entry = self._locks.get(uuid)
        return entry is not None and entry[0].locked()
