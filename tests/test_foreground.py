"""API first: background work takes turns while API requests are in flight, never stops."""

from __future__ import annotations

import asyncio
import time

from conftest import add_image, start_cloud, stop_cloud, wait_for_status
from test_scheduler_api import boot

from novalite.api import keys
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


async def test_deletes_answer_first_and_their_terminations_follow(pg_dsn, tmp_path):
    """While API requests are in flight, a DELETE is answered at once and its server's termination
    waits for a background turn (one each 5 s here); when the API falls quiet the rest start at once."""
    cloud = await start_cloud(pg_dsn, tmp_path)
    try:
        image = await add_image(cloud)
        uuids = [await boot(cloud, image) for _ in range(3)]
        for uuid in uuids:
            await wait_for_status(cloud, uuid, "ACTIVE")
        fg, compute_api = cloud.app[keys.FOREGROUND], cloud.app[keys.COMPUTE_API]
        fg.interval = 5.0  # ([api] busy_background_interval): no second turn comes while the test looks
        fg.begin()  # a long request in flight (a console, a slow client)
        try:
            for uuid in uuids:
                status, _, _ = await cloud.compute("DELETE", f"/servers/{uuid}")
                assert status == 204
            await asyncio.sleep(0.3)  # long enough for simulated hosts to terminate all three
            assert compute_api.pending() >= 2  # queued: at most one turn has come
            waiting = [s for s in await listed(cloud, uuids) if s["OS-EXT-STS:task_state"] == "deleting"]
            assert len(waiting) >= 2
        finally:
            fg.end()
        deadline = time.monotonic() + 15
        while await listed(cloud, uuids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await listed(cloud, uuids) == [] and compute_api.pending() == 0
    finally:
        await stop_cloud(cloud)


async def listed(cloud, uuids: list[str]) -> list[dict]:
    _, body, _ = await cloud.compute("GET", "/servers/detail")
    return [s for s in body["servers"] if s["id"] in uuids]
