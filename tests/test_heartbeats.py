"""db.heartbeats: the beats of the hosts one process runs, written together."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from conftest import fresh_database

from novalite import db
from novalite.db.heartbeats import Beat, Heartbeats


@pytest.fixture
async def pool(pg_dsn):
    p = await db.create_pool(await fresh_database(pg_dsn), 2, 2)
    await db.upgrade(p)
    async with p.acquire() as conn:
        await conn.executemany(
            """INSERT INTO compute_nodes (host, hypervisor_hostname, uuid, service_uuid, uri, availability_zone,
                                          forced_down)
               VALUES ($1, $1, $2, $3, 'test:///', 'nova', $4)""",
            [(f"h{i}", uuid.uuid4(), uuid.uuid4(), i == 2) for i in range(4)],
        )
    yield p
    await p.close()


async def test_beats_arriving_together_are_one_write_each_host_answered(pool):
    beats = Heartbeats(pool, report_interval=1.0)  # beats within 0.1 s of each other go together
    answers = await asyncio.gather(*(beats.beat(h) for h in ("h0", "h1", "h2", "nowhere")))
    assert answers == [Beat(False, False), Beat(False, False), Beat(True, False), None]
    async with pool.acquire() as conn:
        written = dict(await conn.fetch("SELECT host, heartbeat_at FROM compute_nodes WHERE heartbeat_at IS NOT NULL"))
    assert set(written) == {"h0", "h1", "h2"}
    assert len(set(written.values())) == 1  # now() of one transaction: one statement wrote them
    await beats.close()


async def test_beats_further_apart_than_the_window_are_written_apart(pool):
    beats = Heartbeats(pool, report_interval=0.2)
    await beats.beat("h0")
    await beats.beat("h1")
    async with pool.acquire() as conn:
        times = await conn.fetch("SELECT heartbeat_at FROM compute_nodes WHERE host = ANY($1) ORDER BY host",
                                 ["h0", "h1"])
    assert times[0]["heartbeat_at"] < times[1]["heartbeat_at"]
    await beats.close()


async def test_a_beat_waiting_when_the_process_stops_is_not_written(pool):
    beats = Heartbeats(pool, report_interval=10.0)
    waiting = asyncio.create_task(beats.beat("h3"))
    await asyncio.sleep(0.05)
    await beats.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT heartbeat_at FROM compute_nodes WHERE host = 'h3'") is None
