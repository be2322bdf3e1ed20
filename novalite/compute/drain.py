"""Clean shutdown: wait, within a bound, for the work already accepted to finish.

After SIGTERM the API listener is closed and aiohttp has let the requests in flight
finish; what they started -- schedulings, builds, deletes -- still runs in the
background. Stopping the services under it would cut builds off half-way and leave
them to recovery at the next start; waiting for them (bounded by ``[api]
shutdown_timeout``) leaves nothing to redo.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


async def drain(pending: dict[str, Callable[[], int]], timeout: float, interval: float = 0.05) -> dict[str, int]:
    """Wait until every ``pending[name]()`` is 0 or ``timeout`` seconds pass, logging what it waits
    for about once a second; returns what was still pending (empty when all finished)."""
    started = time.monotonic()
    said = 0.0
    while True:
        left = {name: n for name, count in pending.items() if (n := count())}
        waited = time.monotonic() - started
        if not left:
            log.info("shutdown_drained", waited_s=round(waited, 2))
            return left
        if waited >= timeout:
            log.warning("shutdown_timeout_reached", timeout_s=timeout, still_running=left,
                        note="what is cut off is finished or redone by recovery at the next start")
            return left
        if waited - said >= 1 or said == 0:
            log.info("shutdown_waiting", waited_s=round(waited, 2), **left)
            said = waited or interval
        await asyncio.sleep(interval)
