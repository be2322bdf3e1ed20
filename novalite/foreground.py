"""API first: requests someone is waiting on go before background work.

API handlers and the build pipeline share one event loop. When fifty creates
arrive at once, the conductor used to start scheduling each of them at once as
well, and every answer waited behind that work. While API requests are in
flight the conductor now starts the next scheduling request at most once per
`interval`; as soon as the API is quiet it runs at full speed again. Background
work is slowed during a burst, never stopped (at 0.05 s: still 20 scheduling
requests a second, each possibly a multi-create, under continuous API load). The
terminations of deleted servers take the same turns (ComputeAPI.start_delete).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator


class Foreground:
    """Counts API requests in flight; background work asks for its turn."""

    def __init__(self, interval: float) -> None:
        self.interval = interval  # 0: no priority, background work never waits
        self.in_flight = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._last_turn = 0.0

    def begin(self) -> None:
        """An API request started."""
        self.in_flight += 1
        self._quiet.clear()

    def end(self) -> None:
        """An API request was answered (or failed)."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self._quiet.set()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Inside a request that only waits for a long time (a console session): it does not
        count as in flight meanwhile, so it does not slow background work for its whole life."""
        self.end()
        try:
            yield
        finally:
            self.begin()

    async def background_turn(self) -> None:
        """Return when background work may start its next unit: at once while the API is
        quiet, else `interval` after the previous turn or when the API falls quiet."""
        while self.in_flight and self.interval > 0:
            wait = self._last_turn + self.interval - time.monotonic()
            if wait <= 0:
                break
            try:
                await asyncio.wait_for(self._quiet.wait(), wait)
            except TimeoutError:
                pass
        self._last_turn = time.monotonic()
