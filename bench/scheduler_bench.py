"""How long one scheduling decision takes with 1 .. 10,000 hosts.

For each size, a scratch database gets that many compute_nodes rows (and an
allocation on every third host, so usage sums are real), then we time:

- decide: filtering + weighing + the random pick among the best, on host
  states already in memory (what the scheduler does per instance; no DB);
- load:   reading every host state from Postgres (one query per request);
- total:  load + decide, one request end to end without the claim.

    .venv/bin/python bench/scheduler_bench.py [--hosts 1,100,1000,10000] [--repeat 30] [--dsn DSN]

Without --dsn (or $NOVALITE_TEST_DSN) an embedded Postgres is started in a
temporary directory. Times are milliseconds: median and 95th percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from novalite import db  # noqa: E402
from novalite.config import SchedulerConfig  # noqa: E402
from novalite.scheduler.host_state import load_host_states  # noqa: E402
from novalite.scheduler.manager import Scheduler  # noqa: E402

SPEC = {
    "project_id": "bench",
    "flavor": {"name": "m1.small", "vcpus": 2, "memory_mb": 2048, "root_gb": 20, "ephemeral_gb": 0, "swap": 0,
               "extra_specs": {"capabilities:hypervisor_type": "s== QEMU"}},
    "image": {"properties": {"hw_architecture": "x86_64"}},
    "availability_zone": "nova",
    "scheduler_hints": {},
    "instance_group": None,
    "group": None,
    "retry": {"num_attempts": 0, "hosts": ["h00001"]},
}


async def _scratch_database(admin_dsn: str) -> tuple[str, str]:
    dsn = await db.create_database(admin_dsn, "bench")
    return urlsplit(dsn).path.lstrip("/"), dsn


async def _drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _fill(pool: asyncpg.Pool, n: int) -> None:
    rnd = random.Random(n)
    nodes = []
    for i in range(n):
        host = f"h{i:05d}"
        nodes.append((host, host, uuid.uuid4(), uuid.uuid4(), "test:///", "az2" if i % 10 == 9 else "nova",
                      "QEMU", 8002000, "x86_64", rnd.choice((16, 32, 64)), rnd.choice((65536, 131072, 262144)),
                      rnd.choice((500, 1000, 2000)), i % 97 == 96, rnd.randint(0, 2) if i % 13 == 12 else 0))
    allocations = [(uuid.uuid4(), f"h{i:05d}", 4, 8192, 40) for i in range(0, n, 3)]
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE compute_nodes, allocations")
        await conn.copy_records_to_table(
            "compute_nodes", records=nodes,
            columns=["host", "hypervisor_hostname", "uuid", "service_uuid", "uri", "availability_zone",
                     "hypervisor_type", "hypervisor_version", "cpu_arch", "vcpus", "memory_mb", "local_gb",
                     "disabled", "failed_builds"],
        )
        await conn.execute("UPDATE compute_nodes SET heartbeat_at = now()")
        await conn.copy_records_to_table(
            "allocations", records=allocations, columns=["instance_uuid", "host", "vcpus", "memory_mb", "disk_gb"]
        )
        await conn.execute("ANALYZE compute_nodes; ANALYZE allocations")


def _stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return statistics.median(ordered), p95


async def run_bench(admin_dsn: str, sizes: list[int], repeat: int) -> list[dict]:
    """Time the decision, the load and both, per size; one scratch database for all sizes."""
    name, dsn = await _scratch_database(admin_dsn)
    pool = await db.create_pool(dsn, 1, 2)
    cfg = SchedulerConfig(host_subset_size=2)
    scheduler = Scheduler(pool, cfg)
    results = []
    try:
        await db.upgrade(pool)
        for n in sizes:
            await _fill(pool, n)
            decide, load, total = [], [], []
            passed = 0
            async with pool.acquire() as conn:
                hosts = await load_host_states(conn, cfg)
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    _, ranked, verdicts = scheduler.choose(hosts, SPEC)
                    if ranked:
                        random.choice(ranked[: cfg.host_subset_size])
                    decide.append((time.perf_counter() - t0) * 1000)
                    passed = verdicts.num_passed
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    fresh = await load_host_states(conn, cfg)
                    t1 = time.perf_counter()
                    _, ranked, _ = scheduler.choose(fresh, SPEC)
                    if ranked:
                        random.choice(ranked[: cfg.host_subset_size])
                    t2 = time.perf_counter()
                    load.append((t1 - t0) * 1000)
                    total.append((t2 - t0) * 1000)
            results.append({"hosts": n, "passed": passed, "decide": _stats(decide), "load": _stats(load),
                            "total": _stats(total)})
    finally:
        await pool.close()
        await _drop_database(admin_dsn, name)
    return results


def format_table(results: list[dict]) -> str:
    lines = [f"{'hosts':>7} {'passed':>7} | {'decide ms (p50/p95)':>20} | {'load ms (p50/p95)':>18} | "
             f"{'load+decide ms (p50/p95)':>25}"]
    for r in results:
        d, lo, t = r["decide"], r["load"], r["total"]
        lines.append(f"{r['hosts']:>7} {r['passed']:>7} | {d[0]:>9.3f} / {d[1]:>8.3f} | {lo[0]:>8.3f} / {lo[1]:>7.3f} | "
                     f"{t[0]:>12.3f} / {t[1]:>10.3f}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="1,100,1000,10000", help="comma-separated host counts")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--dsn", default=os.environ.get("NOVALITE_TEST_DSN", ""))
    args = parser.parse_args()
    sizes = [int(x) for x in args.hosts.split(",")]
    embedded = None
    dsn = args.dsn
    if not dsn:
        embedded = db.EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="novalite-bench-")) / "pgdata")
        dsn = await embedded.start()
    try:
        print(format_table(await run_bench(dsn, sizes, args.repeat)))
    finally:
        if embedded is not None:
            await embedded.stop()


if __name__ == "__main__":
    asyncio.run(main())
