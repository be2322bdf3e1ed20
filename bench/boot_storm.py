#!/usr/bin/env python3
"""Boot storm: N servers on H simulated hosts with C concurrent POSTs, then delete them all.

Starts the real server (`novalite serve`) as a subprocess on an embedded
Postgres with pg_stat_statements loaded, drives it from this process over
loopback HTTP only, and prints one table row per scenario:

    N, H, C, mode | POST p50/p95/p99/max ms | GET p99 ms | first → last POST answered s,
    first POST → last ACTIVE s, ACTIVE/s | delete/s | server CPU s (creates and deletes) |
    peak RSS MB | SQL statements per boot | errors, oversubscribed hosts, open actions |
    CPU seconds of the server, Postgres and this client during the creates (and until the last POST was answered)

Before each scenario 2×C servers are booted and deleted (the storm meets a warm server;
`--no-warmup` storms a freshly started one).

Two paths (`--path real|minimal|both`, default real; every row says which):
- real: the path a user's cloud takes. Finite compute and Neutron port quotas big enough for the storm (so the
  per-project check runs), `networks: auto` on one isolated network of `--cidr` (default a /16:
  a port, a fixed IP and a DHCP host entry per server on the simulated hosts), the `default`
  security group, an image uploaded through Glance with data, info-level JSON logs with
  the access log on (its default), and whatever REAL_EXTRA_CONFIG adds.
- minimal: the old scenario. Unlimited quotas, `networks: none`, an image row with no data,
  warning-level logs.

Ends with one JSON line per path of its single-POST row (the real path's last).

Usage: bench/boot_storm.py [-n 1000] [--hosts 100] [-c 50] [--path real|minimal|both] [--cidr 10.200.0.0/16]
                           [--batch 50] [--no-small] [--no-batch] [--no-warmup]
Environment: BENCH_TRACE=1 prints every POST and probe GET (start offset, latency) to stderr;
BENCH_SYNC_COMMIT=off|local|on sets Postgres' synchronous_commit; BENCH_AUTO_EXPLAIN_MS=M logs
the plans of statements slower than M ms (with --keep: the state directory's pgdata/log);
BENCH_API_CONFIG / BENCH_DATABASE_CONFIG / BENCH_COMPUTE_CONFIG add lines (";"-separated) to the
server's [api] / [database] / [compute] sections, e.g. BENCH_DATABASE_CONFIG="worker_pool_max = 8" (a row then covers that too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
CIDR = "10.200.0.0/16"  # --cidr: the real path's network
IMAGE_BYTES = 1024 * 1024  # the real path's uploaded image

# The real path's extra config: anything a lab turns on beyond the defaults (the access
# log and metrics are on by default; --metrics off turns metrics off on both paths).
REAL_EXTRA_CONFIG: list[str] = []


@dataclass(frozen=True)
class Scenario:
    """What a scenario exercises (see the module docstring)."""

    name: str  # "real" or "minimal"
    quota: bool  # finite instance/core/RAM quotas
    networks: str  # the create's `networks`
    upload: bool  # the image uploaded through Glance, with data
    log_level: str

    def settings(self) -> str:
        quota = "quota finite" if self.quota else "quota unlimited"
        image = "uploaded image" if self.upload else "image row, no data"
        net = f"networks {self.networks}" + (f" ({CIDR})" if self.networks == "auto" else "")
        return f"{self.name}: {quota}, {net}, {image}, {self.log_level} JSON logs"


PATHS = {
    "real": Scenario("real", quota=True, networks="auto", upload=True, log_level="info"),
    "minimal": Scenario("minimal", quota=False, networks="none", upload=False, log_level="warning"),
}
METRICS = True  # --metrics on|off: [metrics] enabled, and on: /metrics scraped every 5 s during the storm


@dataclass
class Result:
    n: int
    hosts: int
    concurrency: int
    mode: str
    path: str = "real"
    post_ms: list[float] = field(default_factory=list)
    get_ms: list[float] = field(default_factory=list)
    storm_s: float = 0.0
    posts_s: float = 0.0  # first POST → last POST answered
    delete_s: float = 0.0
    cpu_s: float = 0.0
    storm_cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)  # server, Postgres, this client, during the creates
    posts_cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)  # the same until the last POST was answered
    pace_ms: float = 0.0  # the machine's pace just before the storm (machine_pace_ms)
    steal_s: float = 0.0  # CPU time the hypervisor gave others during the creates (both CPUs)
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
    explain_ms = os.environ.get("BENCH_AUTO_EXPLAIN_MS")
    if explain_ms:  # plans (with their triggers' statements) of statements slower than this, in pgdata/log
        for setting, value in (("auto_explain.log_min_duration", explain_ms), ("auto_explain.log_analyze", "on"),
                               ("auto_explain.log_nested_statements", "on"), ("auto_explain.log_triggers", "on"),
                               ("auto_explain.log_buffers", "on")):
            await conn.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
    wanted = ["pg_stat_statements", "auto_explain"] if explain_ms else ["pg_stat_statements"]
    loaded = await conn.fetchval("SHOW shared_preload_libraries")
    if [name.strip() for name in loaded.split(",")] != wanted:
        await conn.execute("ALTER SYSTEM SET shared_preload_libraries = " + ", ".join(f"'{w}'" for w in wanted))
        await conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'top'")  # what the server sends
        await conn.close()
        await pg.stop()
        pg = EmbeddedPostgres(root / "pgdata")
        dsn = await pg.start()
    else:
        await conn.close()
    return pg, dsn


def quota_room(n: int) -> int:
    """The real path's quotas: the storm and its warm-up, with room to spare; finite, never reached."""
    return 2 * n + 1000


def env_lines(name: str) -> str:
    """The lines (";"-separated) environment variable ``name`` adds to a section of the server's config."""
    return os.environ.get(name, "").replace(";", "\n") + "\n"


def write_config(root: Path, dsn: str, hosts: int, port: int, path: Scenario, n: int) -> Path:
    room = quota_room(n)
    quota = (f"[quota]\ninstances = {room}\ncores = {room}\nram = {room * 512}\n" if path.quota
             else "[quota]\ninstances = -1\ncores = -1\nram = -1\n")
    lines = [
        f'[api]\nlisten = "127.0.0.1"\nport = {port}\nuser_clouds_yaml = false\n' + env_lines("BENCH_API_CONFIG"),
        f'[database]\ndsn = "{dsn}"\n' + env_lines("BENCH_DATABASE_CONFIG"),
        f'[state]\ndir = "{root / "state"}"\n',
        f'[log]\nlevel = "{path.log_level}"\nformat = "json"\n',
        "[identity]\nbcrypt_rounds = 4\n",
        "[compute]\n" + env_lines("BENCH_COMPUTE_CONFIG"),
        quota,
        "[scheduler]\nhost_subset_size = 2\n",
        f"[metrics]\nenabled = {'true' if METRICS else 'false'}\n",
    ]
    if path.networks == "auto":
        lines.append(f'[[networks]]\nname = "private"\ncidr = "{CIDR}"\n')
        lines.extend(REAL_EXTRA_CONFIG)
    for i in range(hosts):
        lines.append(
            f'[[hosts]]\nname = "sim{i:04d}"\nmax_concurrent_builds = 20\n'
            "simulate = { vcpus = 64, memory_mb = 262144, disk_gb = 4000 }\n"
        )
    config = root / "config.toml"
    config.write_text("\n".join(lines))
    return config


async def wait_serving(
    session: aiohttp.ClientSession, url: str, proc: subprocess.Popen, log: Path, timeout: float = 120,
    interval: float = 0.2,
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
        await asyncio.sleep(interval)
    raise RuntimeError(f"server did not start in {timeout:.0f} s: see {log}")


def proc_cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """utime + stime of a process from /proc (and of its waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    used = int(fields[11]) + int(fields[12])
    if reaped_children:
        used += int(fields[13]) + int(fields[14])
    return used / os.sysconf("SC_CLK_TCK")


def machine_pace_ms() -> float:
    """CPU milliseconds this process takes for a fixed pure-Python loop: the machine's pace. On
    these virtual machines the same instructions take more or less CPU time from one minute to
    the next, and a storm's CPU per boot follows; each row says at which pace it started."""
    t0 = time.process_time()
    total = 0
    for i in range(4_000_000):
        total += i * i
    return (time.process_time() - t0) * 1000


def steal_seconds() -> float:
    """The machine's steal time so far (/proc/stat: CPU the hypervisor ran something else on)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(pgdata: Path) -> float:
    """CPU of the whole Postgres server: the postmaster, its live backends and the exited ones."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    total = proc_cpu_seconds(postmaster, reaped_children=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == postmaster:
                total += proc_cpu_seconds(int(entry.name))
        except (OSError, ValueError):
            continue  # exited meanwhile
    return total


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
        return proc_cpu_seconds(self.proc.pid)

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


async def token(session: aiohttp.ClientSession, url: str, password: str, user: str = "admin") -> str:
    """A token of ``user`` (admin or demo) scoped to the project of the same name."""
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": user, "domain": {"id": "default"}}}}}
    async with session.post(f"{url}/identity/v3/auth/tokens", json=body) as r:
        assert r.status == 201, await r.text()
        return r.headers["X-Subject-Token"]


async def add_image(dsn: str) -> str:
    """The minimal path's image: a row with no data."""
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


async def upload_image(session: aiohttp.ClientSession, url: str, headers: dict) -> str:
    """The real path's image: created and uploaded through Glance, with data."""
    body = {"name": "bench", "disk_format": "raw", "container_format": "bare", "visibility": "public"}
    async with session.post(f"{url}/image/v2/images", json=body, headers=headers) as r:
        assert r.status == 201, await r.text()
        image_id = (await r.json())["id"]
    data = os.urandom(IMAGE_BYTES)
    put_headers = {**headers, "Content-Type": "application/octet-stream"}
    async with session.put(f"{url}/image/v2/images/{image_id}/file", data=data, headers=put_headers) as r:
        assert r.status == 204, await r.text()
    return image_id


async def raise_port_quota(session: aiohttp.ClientSession, url: str, headers: dict, ports: int) -> None:
    """The real path's Neutron port quota (default 500): finite, large enough for the storm."""
    async with session.get(f"{url}/identity/v3/auth/tokens",
                           headers={**headers, "X-Subject-Token": headers["X-Auth-Token"]}) as r:
        assert r.status == 200, await r.text()
        project_id = (await r.json())["token"]["project"]["id"]
    body = {"quota": {"port": ports}}
    async with session.put(f"{url}/networking/v2.0/quotas/{project_id}", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()


def server_body(name: str, image: str, path: Scenario) -> dict:
    server = {"name": name, "imageRef": image, "flavorRef": "1", "networks": path.networks}
    if path.networks != "none":
        server["security_groups"] = [{"name": "default"}]
    return {"server": server}


async def any_building(session, url, headers) -> bool:
    """Whether any server is still in BUILD: the waiter's one cheap poll."""
    async with session.get(f"{url}/compute/v2.1/servers?status=BUILD&limit=1", headers=headers) as r:
        return bool((await r.json())["servers"])


async def list_ids(session, url, headers, query: str = "") -> list[str]:
    """The ids of every server the list shows (with `query`, e.g. "status=ACTIVE&"), page by page:
    a page holds at most the API's max_limit (1000)."""
    ids: list[str] = []
    marker = ""
    while True:
        async with session.get(f"{url}/compute/v2.1/servers?{query}limit=1000{marker}", headers=headers) as r:
            page = [s["id"] for s in (await r.json())["servers"]]
        ids += page
        if len(page) < 1000:
            return ids
        marker = f"&marker={page[-1]}"


async def count_status(session, url, headers, status: str) -> int:
    return len(await list_ids(session, url, headers, f"status={status}&"))


async def warm_up(session: aiohttp.ClientSession, url: str, headers: dict, image: str, concurrency: int,
                  path: Scenario) -> None:
    """Boot and delete 2×C servers first, so the storm meets a server that has run before
    (code paths loaded, statements prepared on its connections), as a lab's server has."""
    sem = asyncio.Semaphore(concurrency)

    async def boot(i: int) -> None:
        body = server_body(f"warmup{i}", image, path)
        async with sem, session.post(f"{url}/compute/v2.1/servers", json=body, headers=headers) as r:
            assert r.status == 202, await r.text()

    await asyncio.gather(*(boot(i) for i in range(2 * concurrency)))
    while await any_building(session, url, headers):
        await asyncio.sleep(POLL_INTERVAL)
    if await delete_all(session, url, headers, concurrency):
        raise RuntimeError("warm-up: a DELETE failed")


async def delete_all(session: aiohttp.ClientSession, url: str, headers: dict, concurrency: int) -> int:
    """DELETE every server with C concurrent requests and wait until none is listed; the failures."""
    ids = await list_ids(session, url, headers)
    sem = asyncio.Semaphore(concurrency)
    failed = 0

    async def delete(sid: str) -> None:
        nonlocal failed
        async with sem, session.delete(f"{url}/compute/v2.1/servers/{sid}", headers=headers) as r:
            failed += r.status != 204

    await asyncio.gather(*(delete(s) for s in ids))
    while True:
        async with session.get(f"{url}/compute/v2.1/servers?limit=1", headers=headers) as r:
            if not (await r.json())["servers"]:
                return failed
        await asyncio.sleep(POLL_INTERVAL)


async def storm(n: int, hosts: int, concurrency: int, batch: int, keep: bool, path: Scenario, warmup: bool = True
                ) -> Result:
    mode = f"batch {batch}" if batch > 1 else "single"
    result = Result(n, hosts, concurrency, mode, path.name)
    root = Path(tempfile.mkdtemp(prefix="novalite-storm-"))
    pg, admin_dsn = await start_postgres(root)
    dsn = await create_database(admin_dsn, "storm")
    port = free_port()
    server = Server(write_config(root, dsn, hosts, port, path, n), port)
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        try:
            await server.start(session)
            creds = json.loads((root / "state" / "credentials.json").read_text())
            headers = {"X-Auth-Token": await token(session, server.url, creds["admin"]),
                       "OpenStack-API-Version": "compute 2.latest".replace("2.latest", "latest")}
            image = await upload_image(session, server.url, headers) if path.upload else await add_image(dsn)
            await run_storm(session, server, headers, image, dsn, root / "pgdata", result, path, batch, warmup)
        finally:
            server.stop()
            await pg.stop()
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
    return result


def cpu_since(start: tuple[float, float, float], server: Server, pgdata: Path) -> tuple[float, float, float]:
    """CPU seconds of the server, its Postgres and this client since ``start`` (read the same way)."""
    now = (server.cpu_seconds(), postgres_cpu_seconds(pgdata), time.process_time())
    return tuple(b - a for a, b in zip(start, now, strict=True))


async def run_storm(session: aiohttp.ClientSession, server: Server, headers: dict, image: str, dsn: str,
                    pgdata: Path, result: Result, path: Scenario, batch: int = 1, warmup: bool = True) -> None:
    """The storm itself on a running server: result.n servers booted with result.concurrency POSTs
    at a time (batches of `batch` when > 1) in the token's project, waited for, checked, deleted;
    the figures go into `result`. The project must have no servers before."""
    n, concurrency = result.n, result.concurrency
    if path.quota and path.networks != "none":
        await raise_port_quota(session, server.url, headers, quota_room(n))
    if warmup:
        await warm_up(session, server.url, headers, image, concurrency, path)
    result.pace_ms = machine_pace_ms()
    db = await asyncpg.connect(dsn)
    await db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    mark = await reset_sql_stats(db)
    cpu0 = server.cpu_seconds()
    storm_cpu0 = (cpu0, postgres_cpu_seconds(pgdata), time.process_time())
    steal0 = steal_seconds()
    ids: list[str] = []
    sem = asyncio.Semaphore(concurrency)
    done_posting = asyncio.Event()

    async def post(i: int, count: int) -> None:
        body = server_body(f"storm{i}", image, path)
        if count > 1:
            body["server"].update(min_count=count, max_count=count, return_reservation_id=True)
        async with sem:
            t0 = time.perf_counter()
            async with session.post(f"{server.url}/compute/v2.1/servers", json=body, headers=headers) as r:
                payload = await r.json()
                result.post_ms.append((time.perf_counter() - t0) * 1000)
                if os.environ.get("BENCH_TRACE"):
                    print(f"POST at {t0 - t_start:.3f}s {result.post_ms[-1]:.1f} ms", file=sys.stderr)
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
                if os.environ.get("BENCH_TRACE"):
                    print(f"GET at {t0 - t_start:.3f}s {result.get_ms[-1]:.1f} ms", file=sys.stderr)
            await asyncio.sleep(0.02)

    async def scraper() -> None:  # a Prometheus scraping every 5 s (a usual interval is 15 s)
        while METRICS and not done_posting.is_set():
            async with session.get(f"{server.url}/metrics", headers=headers) as r:
                await r.read()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done_posting.wait(), 5)

    t_start = time.perf_counter()
    if os.environ.get("BENCH_TRACE"):
        print(f"STORM START {time.time():.3f}", file=sys.stderr)
    probe = asyncio.create_task(prober())
    scrapes = asyncio.create_task(scraper())
    if batch > 1:
        await asyncio.gather(*(post(i, min(batch, n - i)) for i in range(0, n, batch)))
    else:
        await asyncio.gather(*(post(i, 1) for i in range(n)))
    result.posts_s = time.perf_counter() - t_start
    result.posts_cpu = cpu_since(storm_cpu0, server, pgdata)
    # every POST has returned, so each of its servers is listed: BUILD until it is ACTIVE or ERROR
    while await any_building(session, server.url, headers):
        await asyncio.sleep(POLL_INTERVAL)
    result.storm_s = time.perf_counter() - t_start
    result.storm_cpu = cpu_since(storm_cpu0, server, pgdata)
    result.steal_s = steal_seconds() - steal0
    done_posting.set()
    await probe
    await scrapes
    created = n - result.errors  # servers whose POST was accepted
    errored = await count_status(session, server.url, headers, "ERROR")
    if await count_status(session, server.url, headers, "ACTIVE") + errored != created:
        raise RuntimeError("servers went missing: ACTIVE + ERROR != accepted")
    result.errors += errored
    result.statements = (await db.fetchval(
        # top-level statements only: what the server sends, not FK checks or trigger bodies
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE toplevel"
        " AND query NOT ILIKE '%pg_stat_statements%'"
    )) / max(1, n)
    if SQL_TOP:
        await print_sql_top(db, n, f"{path.name}, creates", mark)
    result.oversubscribed = await db.fetchval(
        """SELECT count(*) FROM compute_nodes n JOIN (SELECT host, sum(vcpus) v, sum(memory_mb) m
           FROM allocations GROUP BY host) a ON a.host = n.host
           WHERE a.v > n.vcpus * 16.0 OR a.m > n.memory_mb * 1.5 - 512"""
    )
    result.incomplete_actions = await db.fetchval(
        """SELECT count(*) FROM instance_actions a WHERE a.action = 'create' AND (a.finish_time IS NULL
           OR EXISTS (SELECT 1 FROM instance_actions_events e WHERE e.action_id = a.id AND e.finish_time IS NULL))"""
    )
    if SQL_TOP:
        mark = await reset_sql_stats(db)
    t_del = time.perf_counter()  # delete everything (listing the ids included)
    result.errors += await delete_all(session, server.url, headers, concurrency)
    result.delete_s = time.perf_counter() - t_del
    if SQL_TOP:
        await print_sql_top(db, n, f"{path.name}, deletes", mark)
    result.cpu_s = server.cpu_seconds() - cpu0
    result.rss_mb = server.peak_rss_mb()
    await db.close()


_WAL_MARK = "SELECT pg_current_wal_lsn(), pg_snapshot_xmax(pg_current_snapshot())::text::bigint"


async def reset_sql_stats(db: asyncpg.Connection) -> tuple:
    """Statement counters from zero, and where the WAL and the transaction ids are: the mark
    the next phase's cost is measured from."""
    await db.execute("SELECT pg_stat_statements_reset()")
    return tuple(await db.fetchrow(_WAL_MARK))


async def print_sql_top(db: asyncpg.Connection, n: int, phase: str, mark: tuple) -> None:
    """The SQL_TOP statements that cost Postgres the most time in a phase, per boot (or delete):
    calls, mean and total execution time, rows per call, WAL bytes per call; then the writing
    transactions (each a commit waiting for a WAL flush) and the WAL bytes per boot."""
    lsn, xid = await db.fetchrow(_WAL_MARK)
    wal = await db.fetchval("SELECT pg_wal_lsn_diff($1, $2)", lsn, mark[0])
    print(f"-- {phase}: {(xid - mark[1]) / n:.2f} writing transactions, {float(wal) / n:.0f} WAL bytes per boot",
          file=sys.stderr)
    rows = await db.fetch(
        """SELECT calls, total_exec_time, rows, wal_bytes, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) AS q
           FROM pg_stat_statements WHERE toplevel AND query NOT ILIKE '%pg_stat_statements%'
           ORDER BY total_exec_time DESC LIMIT $1""", SQL_TOP)
    print(f"-- SQL top {SQL_TOP} ({phase}): calls/boot, mean ms, total ms, rows/call, WAL bytes/call", file=sys.stderr)
    for r in rows:
        print(f"{r['calls'] / n:6.2f} {r['total_exec_time'] / r['calls']:7.3f} {r['total_exec_time']:8.0f} "
              f"{r['rows'] / r['calls']:6.1f} {int(r['wal_bytes']) / r['calls']:7.0f}  {r['q']}", file=sys.stderr)


def print_table(rows: list[Result]) -> None:
    header = (f"{'path':>7} {'N':>5} {'H':>4} {'C':>3} {'mode':>9} | {'POST p50':>8} {'p95':>7} {'p99':>7} {'max':>7} ms | "
              f"{'GET p99':>7} ms | {'POSTs s':>7} {'storm s':>7} {'ACTIVE/s':>8} | {'del/s':>7} | {'CPU s':>6} {'RSS MB':>6} | "
              f"{'SQL/boot':>8} | {'errors':>6} {'oversub':>7} {'open act':>8} | storm CPU s: server/PG/client (until the last POST)")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.path:>7} {r.n:>5} {r.hosts:>4} {r.concurrency:>3} {r.mode:>9} | {pct(r.post_ms, 50):8.1f} "
              f"{pct(r.post_ms, 95):7.1f} {pct(r.post_ms, 99):7.1f} {max(r.post_ms or [0]):7.1f} ms | "
              f"{pct(r.get_ms, 99):7.1f} ms | {r.posts_s:7.2f} {r.storm_s:7.2f} {r.n / r.storm_s if r.storm_s else 0:8.1f} | "
              f"{r.n / r.delete_s if r.delete_s else 0:7.1f} | {r.cpu_s:6.1f} {r.rss_mb:6.0f} | "
              f"{r.statements:8.1f} | {r.errors:>6} {r.oversubscribed:>7} {r.incomplete_actions:>8} | "
              + "/".join(f"{c:.1f}" for c in r.storm_cpu) + " (" + "/".join(f"{c:.1f}" for c in r.posts_cpu) + ")")
    for name in dict.fromkeys(r.path for r in rows):
        print(f"  {PATHS[name].settings()}")
    for r in rows:
        print(f"  {r.path}, {r.mode}, N={r.n}: machine pace {r.pace_ms:.0f} ms (a fixed Python loop's CPU just before),"
              f" steal {r.steal_s:.2f} s during the creates")


def headline(r: Result) -> str:
    """The issue's JSON line of one path's single-POST row."""
    return json.dumps({
        "bench": "boot_storm", "path": r.path, "n": r.n, "hosts": r.hosts,
        "active_per_s": round(r.n / r.storm_s, 1) if r.storm_s else 0, "post_p99_ms": round(pct(r.post_ms, 99), 1),
        "get_p99_ms": round(pct(r.get_ms, 99), 1), "delete_per_s": round(r.n / r.delete_s, 1) if r.delete_s else 0,
        "sql_per_boot": round(float(r.statements), 2), "peak_rss_mb": round(r.rss_mb), "errors": r.errors,
    })


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000, help="servers to boot (default 1000)")
    parser.add_argument("--hosts", type=int, default=100, help="simulated hosts (default 100)")
    parser.add_argument("-c", type=int, default=50, help="concurrent POSTs (default 50)")
    parser.add_argument("--path", choices=("real", "minimal", "both"), default="real",
                        help="the user's path (default), the old minimal one, or both side by side")
    parser.add_argument("--cidr", default="10.200.0.0/16", help="the real path's network (default a /16)")
    parser.add_argument("--batch", type=int, default=50, help="multi-create batch size for the batch run")
    parser.add_argument("--no-small", action="store_true", help="skip the N=200, H=10 row")
    parser.add_argument("--no-batch", action="store_true", help="skip the multi-create run")
    parser.add_argument("--no-warmup", action="store_true", help="storm a freshly started server (no 2×C warm-up)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    parser.add_argument("--sql-top", type=int, default=0, help="print the K most frequent SQL statements")
    parser.add_argument("--metrics", choices=("on", "off"), default="on",
                        help="[metrics] enabled; on: /metrics is scraped every 5 s during the storm")
    args = parser.parse_args()
    global SQL_TOP, CIDR, METRICS
    SQL_TOP = args.sql_top
    CIDR = args.cidr
    METRICS = args.metrics == "on"
    warm = not args.no_warmup
    paths = [PATHS["minimal"], PATHS["real"]] if args.path == "both" else [PATHS[args.path]]
    rows: list[Result] = []
    heads: list[Result] = []
    for path in paths:  # side by side: each scenario of one path, then the next path
        heads.append(await storm(args.n, args.hosts, args.c, 1, args.keep, path, warm))
        rows.append(heads[-1])
        if not args.no_batch:
            rows.append(await storm(args.n, args.hosts, args.c, args.batch, args.keep, path, warm))
        if not args.no_small:
            rows.append(await storm(200, 10, args.c, 1, args.keep, path, warm))
    print_table(rows)
    for r in heads:
        print(headline(r))
    bad = sum(r.errors + r.oversubscribed + r.incomplete_actions for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    import uvloop  # the client's own loop should cost as little as the server's

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        sys.exit(runner.run(main()))
