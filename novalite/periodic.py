"""Periodic background work: one task that runs a pass every interval until stopped."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


def staggered(interval: float) -> float:
    """The wait before the first pass of one host's periodic work: between half an interval and
    one, at random (as Nova's ``periodic_fuzzy_delay`` spreads its services' periodic tasks). The
    hosts of a process start together; without it, a thousand hosts' heartbeats or passes fall in
    the same moment every interval, and that burst holds up every request in flight."""
    return interval * random.uniform(0.5, 1.0)


class Periodic:
    """Calls `work` every `interval` seconds (the first time one interval after start, or
    :func:`staggered` when ``stagger``); a failed pass is logged as ``<name>_failed`` and the next one
    tries again."""

    def __init__(self, name: str, interval: float, work: Callable[[], Awaitable[object]],
                 stagger: bool = False) -> None:
        self.name = name
        self.interval = interval
        self.work = work
        self.stagger = stagger
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        wait = staggered(self.interval) if self.stagger else self.interval
        while True:
            await asyncio.sleep(wait)
            wait = self.interval
            try:
                await self.work()
            except Exception:
                log.exception(f"{self.name}_failed")
