"""The scheduler benchmark runs (small numbers), so it cannot rot."""

from __future__ import annotations

import importlib.util

from conftest import REPO


def load_bench():
    spec = importlib.util.spec_from_file_location("scheduler_bench", REPO / "bench" / "scheduler_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_scheduler_bench_smoke(pg_dsn):
    bench = load_bench()
    results = await bench.run_bench(pg_dsn, [1, 50], repeat=2)
    assert [r["hosts"] for r in results] == [1, 50]
    assert results[0]["passed"] == 1 and 0 < results[1]["passed"] < 50  # az2 and disabled hosts drop out
    table = bench.format_table(results)
    assert table.splitlines()[0].split()[0] == "hosts" and len(table.splitlines()) == 3
