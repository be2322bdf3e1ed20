"""The heartbeats of every host this process runs, written together.

Nova's compute services each write their own service row every ``report_interval``. Here one
process runs every host: 1,000 simulated hosts beating every 10 s each sent their own UPDATE,
and their own look for instances evacuated away from them, 200 round trips a second that a boot
storm on those hosts paid for (1.3 statements a boot, ~8 % of the server's CPU). A beat now waits
up to a tenth of the interval (at most 1 s) for the other hosts' beats and they are written in one
statement, which also says, per host, whether an evacuation left something there to clean up.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import asyncpg

from novalite.db import migration_records

# The rows are locked in host order first: a move's claim locks its two hosts' rows in that order too.
_BEAT_SQL = f"""
WITH locked AS (SELECT host FROM compute_nodes WHERE host = ANY($1::text[]) ORDER BY host FOR UPDATE),
     beat AS (UPDATE compute_nodes n SET heartbeat_at = now() FROM locked WHERE n.host = locked.host
              RETURNING n.host, n.forced_down)
SELECT b.host, b.forced_down,
       EXISTS (SELECT 1 FROM {migration_records.evacuated_away_sql('b.host')}) AS evacuated
  FROM beat b"""

MAX_WINDOW = 1.0  # seconds a beat may wait for others


@dataclass(frozen=True, slots=True)
class Beat:
    """What a host's beat read back: whether it is forced down, and whether instances evacuated
    away from it wait for their cleanup here (compute.evacuate's destroy_evacuated)."""

    forced_down: bool
    evacuated: bool


class Heartbeats:
    """Writes the beats that arrive within ``window`` seconds of each other in one statement."""

    def __init__(self, pool: asyncpg.Pool, report_interval: float) -> None:
        self.pool = pool
        self.window = min(MAX_WINDOW, report_interval / 10)
        self._waiting: list[tuple[str, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def beat(self, host: str) -> Beat | None:
        """Write the host's heartbeat (with the others waiting); None when the host has no row."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((host, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        batch: list[tuple[str, asyncio.Future]] = []
        try:
            await asyncio.sleep(self.window)
            batch, self._waiting, self._writer = self._waiting, [], None
            await self._send([(host, future) for host, future in batch if not future.done()])
        finally:
            if self._writer is asyncio.current_task():  # cancelled while waiting: a stopping process
                batch, self._waiting, self._writer = self._waiting, [], None
            for _, future in batch:
                if not future.done():
                    future.cancel()

    async def _send(self, batch: list[tuple[str, asyncio.Future]]) -> None:
        if not batch:  # every beat's caller was cancelled
            return
        try:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(_BEAT_SQL, sorted({host for host, _ in batch}))
        except Exception as exc:  # every host of the batch missed this beat; each logs it, the next one retries
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        beats = {r["host"]: Beat(r["forced_down"], r["evacuated"]) for r in rows}
        for host, future in batch:
            if not future.done():
                future.set_result(beats.get(host))

    async def close(self) -> None:
        """Stop the beats still waiting (a stopping process): they are not written."""
        writer = self._writer
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
