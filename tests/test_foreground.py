"""API first: background work takes turns while API requests are in flight, never stops."""

from __future__ import annotations

import asyncio
import time

from novalite.foreground import Foreground


async def test_background_runs_at_once_while_the_api_is_quiet():
    fg = Foreground(0.5)
    t0 = time.monotonic()
    for _ in range(5):
        await fg.background_turn()
    assert time.monotonic() - t0 < 0.05


async def test_background_takes_one_turn_per_interval_while_requests_are_in_flight():
    fg = Foreground(0.05)
    await fg.background_turn()
    fg.begin()
    t0 = time.monotonic()
    for _ in range(3):
        await fg.background_turn()
    assert 0.14 <= time.monotonic() - t0 < 0.5  # slowed, not stopped


async def test_the_api_falling_quiet_ends_the_wait():
    fg = Foreground(5)
    await fg.background_turn()
    fg.begin()
    turn = asyncio.create_task(fg.background_turn())
    await asyncio.sleep(0.02)
    assert not turn.done()
    t0 = time.monotonic()
    fg.end()
    await asyncio.wait_for(turn, 1)
    assert time.monotonic() - t0 < 0.1
