#!/usr/bin/env python3
"""Boot storm: N servers on H simulated hosts with C concurrent POSTs, then delete them all.

Starts the real server (`novalite serve`) as a subprocess on an embedded
Postgres with pg_stat_statements loaded, drives it from this process over
loopback HTTP only, and prints one table row per scenario:

    N, H, C, mode | POST p50/p95/p99/max ms | GET p99 ms | first POST → last ACTIVE s, ACTIVE/s |
    delete/s | server CPU s | peak RSS MB | SQL statements per boot | errors, oversubscribed hosts

Usage: bench/boot_storm.py [-n 1000] [--hosts 100] [-c 50] [--batch 50] [--no-small]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from novalite.db import EmbeddedPostgres, create_database  # noqa: E402

POLL_INTERVAL = 0.2
SQL_TOP = 0  # --sql-top: print the most frequent statements per boot


@dataclass
class Result:
    n: int
    hosts: int
    concurrency: int
    mode: str
    post_ms: list[float] = field(default_factory=list)
    get_ms: list[float] = field(default_factory=list)
    storm_s: float = 0.0
    delete_s: float = 0.0
    cpu_s: float = 0.0
    rss_mb: float = 0.0
    statements: float = 0.0
    errors: int = 0
    oversubscribed: int = 0
    incomplete_actions: int = 0


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_postgres(root: Path) -> tuple[EmbeddedPostgres, str]:
    """An embedded Postgres with pg_stat_statements preloaded (set, then restart)."""
    pg = EmbeddedPostgres(root / "pgdata")
    dsn = await pg.start()
    conn = await asyncpg.connect(dsn)
    if os.environ.get("BENCH_SYNC_COMMIT"):
        await conn.execute(f"ALTER SYSTEM SET synchronous_commit = '{os.environ['BENCH_SYNC_COMMIT']}'")
        await conn.execute("SELECT pg_reload_conf()")
    loaded = await conn.fetchval("SHOW shared_preload_libraries")
    if "pg_stat_statements" not in loaded:
        await conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        await conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
        await conn.close()
        await pg.stop()
        pg = EmbeddedPostgres(root / "pgdata")
        dsn = await pg.start()
    else:
        await conn.close()
    return pg, dsn


def write_config(root: Path, dsn: str, hosts: int, port: int) -> Path:
    lines = [
        f'[api]\nlisten = "127.0.0.1"\nport = {port}\n',
        f'[database]\ndsn = "{dsn}"\n',
        f'[state]\ndir = "{root / "state"}"\n',
        '[log]\nlevel = "warning"\nformat = "json"\n',
        "[identity]\nbcrypt_rounds = 4\n",
        "[quota]\ninstances = -1\ncores = -1\nram = -1\n",
        "[scheduler]\nhost_subset_size = 2\n",
    ]
    for i in range(hosts):
        lines.append(
            f'[[hosts]]\nname = "sim{i:04d}"\nmax_concurrent_builds = 20\n'
            "simulate = { vcpus = 64, memory_mb = 262144, disk_gb = 4000 }\n"
        )
    path = root / "config.toml"
    path.write_text("\n".join(lines))
    return path


async def wait_serving(
    session: aiohttp.ClientSession, url: str, proc: subprocess.Popen, log: Path, timeout: float = 120
) -> None:
    """Wait until a `novalite serve` subprocess answers its compute root; fail if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: see {log}")
        try:
            async with session.get(f"{url}/compute/") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("server did not start")


class Server:
    """`novalite serve` as a subprocess, and what /proc says about it."""

    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "novalite.cli", "--config", str(self.config), "serve", "--no-test-image", "--clouds-yaml",
             str(self.config.parent / "clouds.yaml")],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=open(self.config.parent / "server.log", "w"),  # noqa: SIM115
        )
        await wait_serving(session, self.url, self.proc, self.config.parent / "server.log")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def token(session: aiohttp.ClientSession, url: str, password: str) -> str:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
    async with session.post(f"{url}/identity/v3/auth/tokens", json=body) as r:
        assert r.status == 201, await r.text()
        return r.headers["X-Subject-Token"]


async def add_image(dsn: str) -> str:
    image_id = str(uuid.uuid4())
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """INSERT INTO images (id, name, status, visibility, disk_format, container_format, size)
               VALUES ($1, 'bench', 'active', 'public', 'qcow2', 'bare', 1048576)""",
            uuid.UUID(image_id),
        )
    finally:
        await conn.close()
    return image_id


async def count_active(session, url, headers) -> tuple[int, int]:
    async with session.get(f"{url}/compute/v2.1/servers?status=ACTIVE&limit=100000", headers=headers) as r:
        active = len((await r.json())["servers"])
    async with session.get(f"{url}/compute/v2.1/servers?status=ERROR&limit=100000", headers=headers) as r:
        errors = len((await r.json())["servers"])
    return active, errors


async def storm(n: int, hosts: int, concurrency: int, batch: int, keep: bool) -> Result:
    mode = f"batch {batch}" if batch > 1 else "single"
    result = Result(n, hosts, concurrency, mode)
    root = Path(tempfile.mkdtemp(prefix="novalite-storm-"))
    pg, admin_dsn = await start_postgres(root)
    dsn = await create_database(admin_dsn, "storm")
    port = free_port()
    server = Server(write_config(root, dsn, hosts, port), port)
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        try:
            await server.start(session)
            creds = json.loads((root / "state" / "credentials.json").read_text())
            headers = {"X-Auth-Token": await token(session, server.url, creds["admin"]),
                       "OpenStack-API-Version": "compute 2.latest".replace("2.latest", "latest")}
            image = await add_image(dsn)
            db = await asyncpg.connect(dsn)
            await db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await db.execute("SELECT pg_stat_statements_reset()")
            cpu0 = server.cpu_seconds()
            ids: list[str] = []
            sem = asyncio.Semaphore(concurrency)
            done_posting = asyncio.Event()

            async def post(i: int, count: int) -> None:
                body = {"server": {"name": f"storm{i}", "imageRef": image, "flavorRef": "1", "networks": "none"}}
                if count > 1:
                    body["server"].update(min_count=count, max_count=count, return_reservation_id=True)
                async with sem:
                    t0 = time.perf_counter()
                    async with session.post(f"{server.url}/compute/v2.1/servers", json=body, headers=headers) as r:
                        payload = await r.json()
                        result.post_ms.append((time.perf_counter() - t0) * 1000)
                        if r.status != 202:
                            result.errors += count
                            print(f"POST failed {r.status}: {payload}", file=sys.stderr)
                        elif count == 1:
                            ids.append(payload["server"]["id"])

            async def prober() -> None:
                while not done_posting.is_set():
                    if ids:
                        t0 = time.perf_counter()
                        async with session.get(f"{server.url}/compute/v2.1/servers/{ids[-1]}", headers=headers) as r:
                            await r.read()
                        result.get_ms.append((time.perf_counter() - t0) * 1000)
                    await asyncio.sleep(0.02)

            t_start = time.perf_counter()
            probe = asyncio.create_task(prober())
            if batch > 1:
                await asyncio.gather(*(post(i, min(batch, n - i)) for i in range(0, n, batch)))
            else:
                await asyncio.gather(*(post(i, 1) for i in range(n)))
            while True:
                active, errored = await count_active(session, server.url, headers)
                if active + errored >= n - result.errors:
                    break
                await asyncio.sleep(POLL_INTERVAL)
            result.storm_s = time.perf_counter() - t_start
            done_posting.set()
            await probe
            result.errors += errored
            result.statements = (await db.fetchval(
                # top-level statements only: what the server sends, not FK checks or trigger bodies
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE toplevel"
                " AND query NOT ILIKE '%pg_stat_statements%'"
            )) / max(1, n)
            if SQL_TOP:
                rows = await db.fetch(
                    """SELECT calls, total_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 100) AS q
                       FROM pg_stat_statements WHERE toplevel ORDER BY total_exec_time DESC LIMIT $1""", SQL_TOP)
                for r in rows:
                    print(f"{r['calls'] / n:6.2f}/boot {r['total_exec_time'] / r['calls']:6.3f} ms  {r['q']}",
                          file=sys.stderr)
            result.oversubscribed = await db.fetchval(
                """SELECT count(*) FROM compute_nodes n JOIN (SELECT host, sum(vcpus) v, sum(memory_mb) m
                   FROM allocations GROUP BY host) a ON a.host = n.host
                   WHERE a.v > n.vcpus * 16.0 OR a.m > n.memory_mb * 1.5 - 512"""
            )
            result.incomplete_actions = await db.fetchval(
                """SELECT count(*) FROM instance_actions a WHERE a.action = 'create' AND (a.finish_time IS NULL
                   OR EXISTS (SELECT 1 FROM instance_actions_events e WHERE e.action_id = a.id AND e.finish_time IS NULL))"""
            )
            # delete everything
            async with session.get(f"{server.url}/compute/v2.1/servers?limit=100000", headers=headers) as r:
                all_ids = [s["id"] for s in (await r.json())["servers"]]
            t_del = time.perf_counter()

            async def delete(sid: str) -> None:
                async with sem, session.delete(f"{server.url}/compute/v2.1/servers/{sid}", headers=headers) as r:
                    if r.status != 204:
                        result.errors += 1

            await asyncio.gather(*(delete(s) for s in all_ids))
            while True:
                async with session.get(f"{server.url}/compute/v2.1/servers?limit=100000", headers=headers) as r:
                    if not (await r.json())["servers"]:
                        break
                await asyncio.sleep(POLL_INTERVAL)
            result.delete_s = time.perf_counter() - t_del
            result.cpu_s = server.cpu_seconds() - cpu0
            result.rss_mb = server.peak_rss_mb()
            await db.close()
        finally:
            server.stop()
            await pg.stop()
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
    return result


def print_table(rows: list[Result]) -> None:
    header = (f"{'N':>5} {'H':>4} {'C':>3} {'mode':>9} | {'POST p50':>8} {'p95':>7} {'p99':>7} {'max':>7} ms | "
              f"{'GET p99':>7} ms | {'storm s':>7} {'ACTIVE/s':>8} | {'del/s':>7} | {'CPU s':>6} {'RSS MB':>6} | "
              f"{'SQL/boot':>8} | {'errors':>6} {'oversub':>7} {'open act':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.n:>5} {r.hosts:>4} {r.concurrency:>3} {r.mode:>9} | {pct(r.post_ms, 50):8.1f} "
              f"{pct(r.post_ms, 95):7.1f} {pct(r.post_ms, 99):7.1f} {max(r.post_ms or [0]):7.1f} ms | "
              f"{pct(r.get_ms, 99):7.1f} ms | {r.storm_s:7.2f} {r.n / r.storm_s if r.storm_s else 0:8.1f} | "
              f"{r.n / r.delete_s if r.delete_s else 0:7.1f} | {r.cpu_s:6.1f} {r.rss_mb:6.0f} | "
              f"{r.statements:8.1f} | {r.errors:>6} {r.oversubscribed:>7} {r.incomplete_actions:>8}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000, help="servers to boot (default 1000)")
    parser.add_argument("--hosts", type=int, default=100, help="simulated hosts (default 100)")
    parser.add_argument("-c", type=int, default=50, help="concurrent POSTs (default 50)")
    parser.add_argument("--batch", type=int, default=50, help="multi-create batch size for the batch run")
    parser.add_argument("--no-small", action="store_true", help="skip the N=200, H=10 row")
    parser.add_argument("--no-batch", action="store_true", help="skip the multi-create run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    parser.add_argument("--sql-top", type=int, default=0, help="print the K most frequent SQL statements")
    args = parser.parse_args()
    global SQL_TOP
    SQL_TOP = args.sql_top
    rows = [await storm(args.n, args.hosts, args.c, 1, args.keep)]
    if not args.no_batch:
        rows.append(await storm(args.n, args.hosts, args.c, args.batch, args.keep))
    if not args.no_small:
        rows.append(await storm(200, 10, args.c, 1, args.keep))
    print_table(rows)
    bad = sum(r.errors + r.oversubscribed + r.incomplete_actions for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
