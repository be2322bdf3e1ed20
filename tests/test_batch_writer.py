"""db.batch.BatchWriter: concurrent callers' items in shared statements, each caller answered alone."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from conftest import fresh_database

from novalite import db
from novalite.db.batch import BatchWriter


@pytest.fixture
async def pool(pg_dsn):
    p = await db.create_pool(await fresh_database(pg_dsn), 3, 3)
    yield p
    await p.close()


class Statements:
    """A batch run that takes 50 ms of Postgres and records what each statement carried and how
    many statements were in flight at once."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.in_flight = 0
        self.most = 0

    async def __call__(self, conn: asyncpg.Connection, items: list[str]) -> list[str]:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await conn.execute("SELECT pg_sleep(0.05)")
        finally:
            self.in_flight -= 1
        self.batches.append(list(items))
        return [f"done {item}" for item in items]


async def test_waiting_items_go_together_at_most_max_batch_a_statement(pool):
    run = Statements()
    writer = BatchWriter(pool, run, 10, "test")
    items = [f"i{n}" for n in range(12)]
    answers = await asyncio.gather(*(writer.submit(item) for item in items))
    assert answers == [f"done {item}" for item in items]  # each caller its own answer
    assert run.most == 1 and run.batches == [items[:10], items[10:]]  # at most 10 a statement, in order


async def test_items_of_one_key_go_in_different_statements_in_their_order(pool):
    run = Statements()
    writer = BatchWriter(pool, run, 10, "test", key=lambda item: item.split(".")[0])
    items = ["a.1", "b.1", "a.2", "a.3", "c.1", "b.2"]
    await asyncio.gather(*(writer.submit(item) for item in items))
    for key in "abc":
        mine = [n for n, batch in enumerate(run.batches) for item in batch if item.startswith(key)]
        assert mine == sorted(set(mine))  # one statement each, one after the other
        assert [item for batch in run.batches for item in batch if item.startswith(key)] == sorted(
            item for item in items if item.startswith(key))


async def test_an_item_submitted_as_the_last_statement_ends_is_still_written(pool):
    """A caller answered by the writer's last statement submits again in the same turn of the
    loop, before the writer's task has ended: the item must not wait for a writer that is gone."""
    run = Statements()
    writer = BatchWriter(pool, run, 10, "test")

    async def twice() -> str:
        await writer.submit("first")
        return await writer.submit("second")

    assert await asyncio.wait_for(twice(), 5) == "done second"
