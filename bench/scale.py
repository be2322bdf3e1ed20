#!/usr/bin/env python3
"""A database that has lived: the server's figures on months of history, not on an empty database.

Builds the database a busy lab's novalite has after months (default: 100,000 instances in
10 projects of 10,000, the oldest 80,000 deleted long ago and 20,000 live on 1,000 simulated
hosts, with their create/delete actions and events, block device mappings, ports with fixed
IPs on the /16 network, claims on the hosts, faults of the servers in ERROR and the last week's
notifications), then measures it against a `novalite serve` subprocess (bench/boot_storm.py's
harness: its embedded Postgres, its config on the real path, its login):

- restart: `novalite serve` started on all of it (migrations check, usage re-derived, recovery
  scan, every host's init and NIC repair) until it answers; and the seconds until it is quiet
  (the first power sync pass of every host runs right after);
- lists: GET /servers?limit=100 and /servers/detail?limit=1000 p50/p99, for a member of one
  project and for an admin with all_tenants: from the request until the answer's last byte is
  in (this client's JSON decode of the page, 15-24 ms for 1,000 servers, is timed apart and
  shown in its own column);
- paging: every page of the member's and the admin's list by marker, first pages against last;
- plans: EXPLAIN (ANALYZE, BUFFERS) of the list query with each filter novalite supports, as
  db/server_list.py builds it (a Seq Scan on instances is flagged);
- scheduling: one decision (filters + weighers, db-free, as the scheduler takes it) over the
  hosts' states read from this database, timed in a process of its own while a storm runs;
- the storm: bench/boot_storm.py's run_storm on this database (real path), in the admin project;
- peak RSS of the server over all of the above.

Loading is bulk SQL: one template server is booted through the API (so every row is shaped as
the code writes it) and its rows are cloned with INSERT ... SELECT over generate_series.

Prints a table and ends with one JSON line:
{"bench": "scale", "instances", "list_p99_ms", "detail_p99_ms", "restart_s", "peak_rss_mb",
 "storm_active_per_s"} (list/detail: the worse of member and admin).

Usage: bench/scale.py [--instances 100000] [--projects 10] [--live 20000] [--hosts 1000]
                      [--storm 1000] [-c 50] [--samples 200] [--no-plans] [--show-plans] [--port-groups] [--sql-top K] [--keep]
                      [--state DIR] [--repo CHECKOUT] [--no-storm]

--state DIR keeps the loaded database: the first run loads it, the next ones (same load options)
restart the server on it and measure again. Each storm deletes its servers at its end (their rows
stay, deleted, as a user's would). --repo runs another checkout's server on it (a base to compare).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))  # this checkout's novalite (the timed scheduler, the plans), not the venv's

import boot_storm as storm  # noqa: E402  (the harness: Postgres, config, server, login, the storm)
from scheduler_bench import SPEC  # noqa: E402  (the request spec its decisions are timed with)

from novalite.config import SchedulerConfig  # noqa: E402
from novalite.db import create_database  # noqa: E402
from novalite.db import server_list as sl  # noqa: E402
from novalite.db.security_groups import ensure_default_security_group  # noqa: E402
from novalite.scheduler.host_state import load_host_states  # noqa: E402
from novalite.scheduler.manager import Scheduler  # noqa: E402

API = "compute/v2.1"
HISTORY_DAYS = 60  # instances were created over the last 60 days, oldest first
NOTIFICATION_DAYS = 7  # [retention] notifications_days: older ones were purged


@dataclass
class Figures:
    instances: int = 0
    first_start_s: float = 0.0
    load_s: float = 0.0
    reused: bool = False  # the database --state kept from an earlier run: not loaded by this one
    restart_s: float = 0.0
    ready_s: float = 0.0  # start until every host is up, recovery done, scheduling started (hosts_ready)
    settle_s: float = 0.0
    lists: dict[str, list[float]] = field(default_factory=dict)  # case -> latencies ms (to the last byte)
    decodes: dict[str, list[float]] = field(default_factory=dict)  # case -> this client's decode of each answer, ms
    pages: dict[str, list[float]] = field(default_factory=dict)  # who -> per-page latencies ms
    plans: list[tuple[str, bool, float, str]] = field(default_factory=list)  # filter, seq scan, ms, plan
    decide_ms: list[float] = field(default_factory=list)  # wall time
    decide_cpu_ms: list[float] = field(default_factory=list)  # this thread's CPU time: the decision's own cost
    storm: storm.Result | None = None
    rss_mb: float = 0.0


# -- loading ---------------------------------------------------------------------------------

async def make_projects(conn: asyncpg.Connection, projects: int) -> None:
    """scale-p<i> with a member scale-u<i> each (the admin's password, so the bench can log in) and
    the project's `default` security group."""
    await conn.execute(
        """INSERT INTO projects (id, name) SELECT 'scale-p' || g, 'scale-p' || g FROM generate_series(0, $1 - 1) g;
           INSERT INTO users (id, name, password_hash, default_project_id)
           SELECT 'scale-u' || g, 'scale-u' || g, (SELECT password_hash FROM users WHERE name = 'admin'),
                  'scale-p' || g FROM generate_series(0, $1 - 1) g;
           INSERT INTO role_assignments (user_id, project_id, role_id)
           SELECT 'scale-u' || g, 'scale-p' || g, (SELECT id FROM roles WHERE name = 'member')
             FROM generate_series(0, $1 - 1) g""".replace("$1", str(int(projects))))
    for i in range(projects):
        await ensure_default_security_group(conn, f"scale-p{i}")


# Instance g (0 .. N-1) of project g % P, created HISTORY_DAYS * (N - g) / N days ago: the newest
# `live` are live (g >= N - live), on host g % H; the others were deleted a day after creation.
# Every 10th has tag blue (every 100th red too), every 50th is locked; of the live ones every
# 20th is stopped and every 200th in ERROR (with a fault). Ports join their project's default
# group only with --port-groups ({SG}).
_CLONE = """
CREATE TEMP TABLE g AS
SELECT g, md5('scale-' || g)::uuid AS uuid, 'scale-p' || (g % {P}) AS project_id, 'scale-u' || (g % {P}) AS user_id,
       g >= {N} - {L} AS live, 'sim' || lpad((g % {H})::text, 4, '0') AS host,
       now() - interval '{D} days' * ({N} - g) / {N} AS created_at,
       CASE WHEN g % 200 = 3 THEN 'error' WHEN g % 20 = 1 THEN 'stopped' ELSE 'active' END AS vm_state
  FROM generate_series(0, {N} - 1) g;
ALTER TABLE g ADD PRIMARY KEY (g);

INSERT INTO instances (uuid, project_id, user_id, display_name, display_description, hostname, reservation_id,
    launch_index, vm_state, task_state, power_state, host, node, launched_on, availability_zone, flavor, vcpus,
    memory_mb, root_gb, ephemeral_gb, image_ref, kernel_id, ramdisk_id, key_name, key_data, user_data,
    config_drive, auto_disk_config, access_ip_v4, access_ip_v6, root_device_name, metadata, system_metadata,
    security_groups, tags, injected_files, requested_networks, request_spec, locked, locked_by, locked_reason,
    progress, created_at, updated_at, launched_at, terminated_at, deleted, deleted_at, task_state_since)
SELECT g.uuid, g.project_id, g.user_id, 'vm-' || g.g, t.display_description, 'vm-' || g.g,
       'r-' || lpad(to_hex(g.g), 8, '0'), 0,
       CASE WHEN g.live THEN g.vm_state ELSE 'deleted' END, NULL,
       CASE WHEN g.live AND g.vm_state = 'stopped' THEN 4 ELSE 0 END,
       g.host, g.host, g.host, t.availability_zone, t.flavor, t.vcpus, t.memory_mb, t.root_gb, t.ephemeral_gb,
       t.image_ref, t.kernel_id, t.ramdisk_id, t.key_name, t.key_data, t.user_data, t.config_drive,
       t.auto_disk_config, t.access_ip_v4, t.access_ip_v6, t.root_device_name, t.metadata,
       replace(t.system_metadata::text, '{T}', g.uuid::text)::jsonb, t.security_groups,
       CASE WHEN g.g % 100 = 0 THEN ARRAY['blue', 'red'] WHEN g.g % 10 = 0 THEN ARRAY['blue'] ELSE '{{}}' END,
       t.injected_files, t.requested_networks, replace(t.request_spec::text, '{T}', g.uuid::text)::jsonb,
       g.g % 50 = 0, CASE WHEN g.g % 50 = 0 THEN 'owner' END, NULL, 0,
       g.created_at, CASE WHEN g.live THEN g.created_at + interval '1 minute' ELSE g.created_at + interval '1 day' END,
       g.created_at + interval '30 seconds', CASE WHEN NOT g.live THEN g.created_at + interval '1 day' END,
       NOT g.live, CASE WHEN NOT g.live THEN g.created_at + interval '1 day' END, g.created_at
  FROM g, instances t WHERE t.uuid = '{T}'
 ORDER BY g.g;

INSERT INTO block_device_mappings (instance_uuid, source_type, destination_type, device_name, boot_index, image_id,
    volume_id, snapshot_id, volume_size, device_type, disk_bus, guest_format, delete_on_termination, tag,
    volume_type, deleted)
SELECT g.uuid, b.source_type, b.destination_type, b.device_name, b.boot_index, b.image_id, b.volume_id,
       b.snapshot_id, b.volume_size, b.device_type, b.disk_bus, b.guest_format, b.delete_on_termination, b.tag,
       b.volume_type, NOT g.live
  FROM g, block_device_mappings b WHERE b.instance_uuid = '{T}';

INSERT INTO allocations (instance_uuid, host, vcpus, memory_mb, disk_gb, created_at)
SELECT g.uuid, g.host, a.vcpus, a.memory_mb, a.disk_gb, g.created_at
  FROM g, allocations a WHERE a.instance_uuid = '{T}' AND g.live;

INSERT INTO ports (id, network_id, subnet_id, project_id, name, mac_address, fixed_ip, device_id, device_owner,
    host, status, preserve_on_delete, device_index, created_at, updated_at, port_security_enabled, admin_state_up,
    description)
SELECT md5('scale-port-' || g.g)::uuid, p.network_id, p.subnet_id, g.project_id, p.name,
       'fa:17:' || regexp_replace(lpad(to_hex(g.g), 8, '0'), '(..)(?!$)', '\\1:', 'g'),
       s.pool_start + 1000 + (g.g - ({N} - {L})), g.uuid::text, p.device_owner, g.host, p.status,
       p.preserve_on_delete, p.device_index, g.created_at, g.created_at, p.port_security_enabled,
       p.admin_state_up, p.description
  FROM g, ports p JOIN subnets s ON s.id = p.subnet_id WHERE p.device_id = '{T}' AND g.live;
UPDATE subnets s SET ip_cursor = s.pool_start + 1000 + {L}
  WHERE s.id = (SELECT subnet_id FROM ports WHERE device_id = '{T}');

INSERT INTO port_security_groups (port_id, security_group_id)
SELECT md5('scale-port-' || g.g)::uuid, sg.id
  FROM g JOIN security_groups sg ON sg.project_id = g.project_id AND sg.name = 'default' WHERE g.live AND {SG};

INSERT INTO instance_faults (instance_uuid, code, message, details, host, created_at)
SELECT g.uuid, 500, 'No valid host was found. ', '', g.host, g.created_at + interval '30 seconds'
  FROM g WHERE g.live AND g.vm_state = 'error';

CREATE TEMP TABLE a AS
SELECT g.g, g.uuid, g.project_id, g.user_id, g.created_at, g.live, nextval('instance_actions_id_seq') AS create_id,
       CASE WHEN NOT g.live THEN nextval('instance_actions_id_seq') END AS delete_id
  FROM g ORDER BY g.g;
INSERT INTO instance_actions (id, action, instance_uuid, request_id, user_id, project_id, start_time, finish_time,
    message, updated_at)
SELECT a.create_id, 'create', a.uuid, 'req-' || md5('c' || a.g)::uuid, a.user_id, a.project_id, a.created_at,
       a.created_at + interval '30 seconds', NULL, a.created_at + interval '30 seconds' FROM a
UNION ALL
SELECT a.delete_id, 'delete', a.uuid, 'req-' || md5('d' || a.g)::uuid, a.user_id, a.project_id,
       a.created_at + interval '1 day', a.created_at + interval '1 day 5 seconds', NULL,
       a.created_at + interval '1 day 5 seconds' FROM a WHERE NOT a.live;
INSERT INTO instance_actions_events (action_id, event, start_time, finish_time, result, traceback, host, details)
SELECT a.create_id, e.event, a.created_at + (e.start_time - t.start_time), a.created_at + (e.finish_time - t.start_time),
       e.result, e.traceback, CASE WHEN e.host IS NOT NULL THEN 'sim' || lpad((a.g % {H})::text, 4, '0') END,
       replace(e.details, '{T}', a.uuid::text)
  FROM a, instance_actions t JOIN instance_actions_events e ON e.action_id = t.id
 WHERE t.instance_uuid = '{T}' AND t.action = 'create'
UNION ALL
SELECT a.delete_id, 'compute_terminate_instance', a.created_at + interval '1 day',
       a.created_at + interval '1 day 5 seconds', 'Success', NULL, 'sim' || lpad((a.g % {H})::text, 4, '0'), NULL
  FROM a WHERE NOT a.live;

INSERT INTO notifications (event_type, priority, publisher_id, instance_uuid, request_id, payload, created_at)
SELECT n.event_type, n.priority, n.publisher_id, g.uuid, 'req-' || md5('c' || g.g)::uuid,
       replace(n.payload::text, '{T}', g.uuid::text)::jsonb, g.created_at + (n.created_at - t.created_at)
  FROM g, notifications n, instances t
 WHERE n.instance_uuid = '{T}' AND t.uuid = '{T}' AND g.created_at > now() - interval '{ND} days';
"""


async def load(dsn: str, template: str, instances: int, projects: int, live: int, hosts: int, port_groups: bool
               ) -> None:
    """Clone the template server's rows into the lived database (see _CLONE)."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(_CLONE.format(N=instances, P=projects, L=live, H=hosts, D=HISTORY_DAYS,
                                             ND=NOTIFICATION_DAYS, T=template,
                                             SG="true" if port_groups else "false"))
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def storm_room(dsn: str, n: int) -> None:
    """Room for the storm's ports in the admin project: Neutron's default port quota (500) would
    fail every boot after the 500th at its network step."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """INSERT INTO network_quotas (project_id, resource, hard_limit)
               SELECT id, 'port', $1 FROM projects WHERE name = 'admin'
               ON CONFLICT (project_id, resource) DO UPDATE SET hard_limit = EXCLUDED.hard_limit""", 2 * n + 1000)
    finally:
        await conn.close()


async def login(session: aiohttp.ClientSession, url: str, user: str, project: str, password: str) -> dict:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
    async with session.post(f"{url}/identity/v3/auth/tokens", json=body) as r:
        assert r.status == 201, await r.text()
        return {"X-Auth-Token": r.headers["X-Subject-Token"], "OpenStack-API-Version": "compute latest"}


async def boot_template(session: aiohttp.ClientSession, url: str, headers: dict, image: str) -> str:
    """One server booted through the API on the real path, ACTIVE: the rows every clone copies."""
    body = storm.server_body("template", image, storm.PATHS["real"])
    async with session.post(f"{url}/{API}/servers", json=body, headers=headers) as r:
        assert r.status == 202, await r.text()
        uuid = (await r.json())["server"]["id"]
    for _ in range(600):
        async with session.get(f"{url}/{API}/servers/{uuid}", headers=headers) as r:
            status = (await r.json())["server"]["status"]
        if status == "ACTIVE":
            return uuid
        assert status == "BUILD", status
        await asyncio.sleep(0.1)
    raise RuntimeError("the template server did not become ACTIVE")


# -- measuring -------------------------------------------------------------------------------

async def timed_get(session: aiohttp.ClientSession, url: str, headers: dict) -> tuple[float, dict, float]:
    """(ms from the request until the answer's last byte, its decoded body, ms this client took to decode it)."""
    t0 = time.perf_counter()
    async with session.get(url, headers=headers) as r:
        raw = await r.read()
    t1 = time.perf_counter()
    assert r.status == 200, raw[:500]
    body = json.loads(raw)
    return (t1 - t0) * 1000, body, (time.perf_counter() - t1) * 1000


async def wait_logged(server: storm.Server, event: str, timeout: float = 300) -> None:
    """Until the server's log has `event` (its log is JSON, one event a line)."""
    log = server.config.parent / "server.log"
    deadline = time.monotonic() + timeout
    wanted = (f'"event":"{event}"', f'"event": "{event}"')  # compact (orjson) or json.dumps lines
    while not any(w in log.read_text() for w in wanted):
        assert time.monotonic() < deadline, f"no {event} in {timeout} s: see {log}"
        await asyncio.sleep(0.2)


async def settle(server: storm.Server, quiet_cpu: float = 0.1, timeout: float = 120) -> float:
    """Seconds until the server used less than `quiet_cpu` of a core over one second."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        before = server.cpu_seconds()
        await asyncio.sleep(1)
        if server.cpu_seconds() - before < quiet_cpu:
            break
    return time.perf_counter() - t0


async def measure_lists(session, url: str, member: dict, admin: dict, samples: int, figures: Figures) -> None:
    # As many detail pages as index pages: of 50 (a quarter, until the eleventh round) the p99 was
    # the slowest page, one page's hiccup (bench/README.md).
    cases = {
        "member index limit=100": (member, "servers?limit=100", samples),
        "member detail limit=1000": (member, "servers/detail?limit=1000", samples),
        "admin all_tenants index limit=100": (admin, "servers?all_tenants=1&limit=100", samples),
        "admin all_tenants detail limit=1000": (admin, "servers/detail?all_tenants=1&limit=1000", samples),
    }
    for name, (headers, path, count) in cases.items():
        await timed_get(session, f"{url}/{API}/{path}", headers)  # one unmeasured: statements prepared
        # Each page's body is dropped at once: kept, 200 detail pages (a million objects) made this
        # process's own collector stop it for 1.2-1.4 s inside one page's timing (bench/README.md).
        figures.lists[name], figures.decodes[name] = [], []
        for _ in range(count):
            ms, _, decode = await timed_get(session, f"{url}/{API}/{path}", headers)
            figures.lists[name].append(ms)
            figures.decodes[name].append(decode)


async def measure_paging(session, url: str, member: dict, admin: dict, figures: Figures) -> None:
    """Walk every page (limit=100) by its next link's marker; the latency of each page."""
    for who, headers, query in (("member", member, "limit=100"), ("admin all_tenants", admin, "all_tenants=1&limit=100")):
        times: list[float] = []
        marker = ""
        while True:
            ms, body, _ = await timed_get(session, f"{url}/{API}/servers?{query}{marker}", headers)
            times.append(ms)
            if "servers_links" not in body:
                break
            marker = f"&marker={body['servers'][-1]['id']}"
        figures.pages[who] = times


class ExplainingConnection:
    """Stands in for the connection list_servers is given: its page query is EXPLAINed, not run."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.plan: dict = {}

    async def fetchval(self, sql: str, *args):
        return await self.conn.fetchval(sql, *args)

    async def fetch(self, sql: str, *args) -> list:
        rows = await self.conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
        self.plan = json.loads(rows[0][0])[0]
        return []


async def plan_text(conn: asyncpg.Connection, explaining: ExplainingConnection) -> str:
    """The plan as EXPLAIN prints it (the JSON one only tells what it found)."""
    lines = []

    def walk(node: dict, depth: int) -> None:
        what = node["Node Type"] + (f" using {node['Index Name']}" if "Index Name" in node else "") + (
            f" on {node['Relation Name']}" if "Relation Name" in node else "")
        cond = node.get("Index Cond") or node.get("Filter") or node.get("Recheck Cond") or ""
        lines.append(f"{'  ' * depth}-> {what} rows={node.get('Actual Rows')} "
                     f"time={node.get('Actual Total Time')} ms buffers={node.get('Shared Hit Blocks', 0)}"
                     f"+{node.get('Shared Read Blocks', 0)} {cond[:90]}")
        for child in node.get("Plans", []):
            walk(child, depth + 1)

    walk(explaining.plan["Plan"], 0)
    return "\n".join(lines)


def _seq_scans(node: dict) -> bool:
    if node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "instances":
        return True
    return any(_seq_scans(c) for c in node.get("Plans", []))


def filter_queries(project: str, marker: str) -> dict[str, sl.ServerListQuery]:
    """The list query with each filter Nova documents that novalite supports (db/server_list.py),
    for an admin across projects (the case with no project index to lean on)."""
    since = datetime.now(UTC) - timedelta(days=1)

    def q(**kw) -> sl.ServerListQuery:
        return sl.ServerListQuery(sort=[("created_at", "desc")], limit=100, **kw)

    return {
        "(none) member": q(project_id=project),
        "(none) all_tenants": q(),
        "marker all_tenants": q(marker=marker),
        "deleted=true all_tenants": q(deleted=True),
        "name": q(name="^vm-1999"),
        "status ERROR": q(states=[("error", "*")]),
        "status ACTIVE": q(states=[("active", None)]),
        "host": q(host="sim0007"),
        "node": q(node="sim0007"),
        "flavor": q(flavor="2"),
        "image": q(image="00000000-0000-0000-0000-000000000000"),
        "changes-since": q(changes_since=since),
        "changes-since+before": q(changes_since=since - timedelta(days=30), changes_before=since - timedelta(days=29)),
        "ip": q(ip=r"10\.200\.3\.1"),
        "ip6": q(ip6="fd00::1"),
        "tenant_id/project_id": q(project_id=project),
        "user_id": q(user_id="scale-u3"),
        "reservation_id": q(reservation_id="r-00000010"),
        "availability_zone": q(availability_zone="az-none"),
        "locked": q(locked=True),
        "tags": q(tags=["red"]),
        "tags-any": q(tags_any=["red", "green"]),
        "not-tags": q(not_tags=["blue"]),
        "not-tags-any": q(not_tags_any=["blue"]),
        "sort display_name": sl.ServerListQuery(sort=[("display_name", "asc")], limit=100),
    }


async def measure_plans(dsn: str, live: int, figures: Figures) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        marker = str(await conn.fetchval(
            "SELECT uuid FROM instances WHERE NOT deleted ORDER BY created_at DESC, id DESC OFFSET $1 LIMIT 1", live // 2))
        for name, query in filter_queries("scale-p3", marker).items():
            explaining = ExplainingConnection(conn)
            await sl.list_servers(explaining, query)
            figures.plans.append((name, _seq_scans(explaining.plan["Plan"]), explaining.plan["Execution Time"],
                                  await plan_text(conn, explaining)))
    finally:
        await conn.close()


async def time_decisions(dsn: str, stop: asyncio.Event, figures: Figures) -> None:
    """One scheduling decision over every host's state (read from this database now and then, as
    the scheduler's cache is), every 20 ms until `stop`."""
    cfg = SchedulerConfig(host_subset_size=2)
    scheduler = Scheduler(None, cfg)
    conn = await asyncpg.connect(dsn)
    try:
        hosts = await load_host_states(conn, cfg)
        loaded = time.monotonic()
        while not stop.is_set():
            if time.monotonic() - loaded > cfg.host_state_ttl:
                hosts, loaded = await load_host_states(conn, cfg), time.monotonic()
            t0, c0 = time.perf_counter(), time.thread_time()
            scheduler.choose(hosts, SPEC)
            figures.decide_ms.append((time.perf_counter() - t0) * 1000)
            figures.decide_cpu_ms.append((time.thread_time() - c0) * 1000)
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


DECISIONS_MODE = "--decisions-until-eof"  # this file run as the decisions' own process (below)


async def decisions_until_eof(dsn: str) -> None:
    """The decisions timed in a process of their own until stdin closes, then their times as JSON:
    in the storm client's event loop each 2 ms decision held up the client's POSTs and GETs."""
    stop = asyncio.Event()
    figures = Figures()
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    timing = asyncio.create_task(time_decisions(dsn, stop, figures))
    await reader.read()
    stop.set()
    await timing
    print(json.dumps({"wall": figures.decide_ms, "cpu": figures.decide_cpu_ms}))


# -- the run ---------------------------------------------------------------------------------

LOAD_OPTIONS = ("instances", "projects", "live", "hosts", "port_groups")  # what a kept database was loaded with


async def build(session: aiohttp.ClientSession, server: storm.Server, root: Path, dsn: str, args: argparse.Namespace,
                figures: Figures) -> dict:
    """First start on the empty database, the template server, then the bulk load; what a later
    run needs to measure this database again (written to root/loaded.json when it is kept)."""
    t0 = time.perf_counter()
    await server.start(session)
    figures.first_start_s = time.perf_counter() - t0
    password = json.loads((root / "state" / "credentials.json").read_text())["admin"]
    admin = await login(session, server.url, "admin", "admin", password)
    conn = await asyncpg.connect(dsn)
    await make_projects(conn, args.projects)
    await conn.close()
    member = await login(session, server.url, "scale-u0", "scale-p0", password)
    image = await storm.upload_image(session, server.url, admin)
    template = await boot_template(session, server.url, member, image)
    server.stop()
    t0 = time.perf_counter()
    await load(dsn, template, args.instances, args.projects, args.live, args.hosts, args.port_groups)
    figures.load_s = time.perf_counter() - t0
    return {"database": urlsplit(dsn).path.lstrip("/"), "image": image,
            "first_start_s": figures.first_start_s, "load_s": figures.load_s,
            **{k: getattr(args, k) for k in LOAD_OPTIONS}}


def kept(root: Path, args: argparse.Namespace) -> dict | None:
    """What root/loaded.json says of a database kept by an earlier run (None: there is none);
    refuses one loaded with other options."""
    path = root / "loaded.json"
    if not path.exists():
        return None
    loaded = json.loads(path.read_text())
    differ = [k for k in LOAD_OPTIONS if loaded[k] != getattr(args, k)]
    if differ:
        raise SystemExit(f"{path}: loaded with other {', '.join(differ)}; give the same options or another --state")
    return loaded


async def run(args: argparse.Namespace) -> Figures:
    figures = Figures()
    root = args.state or Path(tempfile.mkdtemp(prefix="novalite-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    loaded = kept(root, args)
    pg, admin_dsn = await storm.start_postgres(root)
    if loaded is None:
        dsn = await create_database(admin_dsn, "scale")
    else:
        dsn = urlunsplit(urlsplit(admin_dsn)._replace(path="/" + loaded["database"]))
    port = storm.free_port()
    real = storm.PATHS["real"]
    config = storm.write_config(root, dsn, args.hosts, port, real, args.storm)
    server = storm.Server(config, port)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=args.c + 8)) as session:
        try:
            if loaded is None:
                loaded = await build(session, server, root, dsn, args, figures)
                if args.state:
                    (root / "loaded.json").write_text(json.dumps(loaded))
            else:
                figures.first_start_s, figures.load_s = loaded["first_start_s"], loaded["load_s"]
                figures.reused = True
            await storm_room(dsn, args.storm)
            figures.instances = await count_instances(dsn)
            password = json.loads((root / "state" / "credentials.json").read_text())["admin"]

            server = storm.Server(config, port)
            t0 = time.perf_counter()
            await server.start(session)
            figures.restart_s = time.perf_counter() - t0
            await wait_logged(server, "hosts_ready")
            figures.ready_s = time.perf_counter() - t0
            figures.settle_s = await settle(server)
            admin = await login(session, server.url, "admin", "admin", password)
            member = await login(session, server.url, "scale-u0", "scale-p0", password)
            await measure_lists(session, server.url, member, admin, args.samples, figures)
            await measure_paging(session, server.url, member, admin, figures)
            if not args.no_plans:
                await measure_plans(dsn, args.live, figures)
            if not args.no_storm:
                await storm_on_top(session, server, admin, loaded["image"], dsn, root, args, figures)
            figures.rss_mb = server.peak_rss_mb()
        finally:
            server.stop()
            await pg.stop()
            if not (args.keep or args.state):
                shutil.rmtree(root, ignore_errors=True)
    return figures


async def count_instances(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM instances")
    finally:
        await conn.close()


async def storm_on_top(session: aiohttp.ClientSession, server: storm.Server, admin: dict, image: str, dsn: str,
                       root: Path, args: argparse.Namespace, figures: Figures) -> None:
    """bench/boot_storm.py's storm in the admin project (its servers deleted at its end), with a
    scheduling decision timed every 20 ms while it runs, in a process of its own."""
    timer = await asyncio.create_subprocess_exec(sys.executable, __file__, DECISIONS_MODE, dsn,
                                                 stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    figures.storm = storm.Result(args.storm, args.hosts, args.c, "single", storm.PATHS["real"].name)
    try:
        await storm.run_storm(session, server, admin, image, dsn, root / "pgdata", figures.storm,
                              storm.PATHS["real"])
    finally:
        out, _ = await timer.communicate(b"")
    times = json.loads(out)
    figures.decide_ms, figures.decide_cpu_ms = times["wall"], times["cpu"]


# -- reporting -------------------------------------------------------------------------------

def pct(values: list[float], p: float) -> float:
    return storm.pct(values, p)


def print_report(f: Figures, args: argparse.Namespace, show_plans: bool) -> None:
    print(f"scale: {f.instances} instances ({args.projects} projects, {args.live} live) on {args.hosts} simulated hosts;"
          f" loaded in {f.load_s:.1f} s" + (f" by an earlier run (kept in {args.state})" if f.reused else ""))
    print(f"restart (start to serving): {f.restart_s:.2f} s, every host up and recovered at {f.ready_s:.2f} s,"
          f" quiet after {f.settle_s:.1f} s more"
          f" (first start on the empty database: {f.first_start_s:.2f} s)")
    print(f"{'list (to the last byte)':<38} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} | client decode p50 ms")
    for name, ms in f.lists.items():
        print(f"{name:<38} {len(ms):>4} {pct(ms, 50):8.1f} {pct(ms, 99):8.1f} {max(ms):8.1f} |"
              f" {pct(f.decodes[name], 50):8.1f}")
    print(f"{'paging by marker (limit=100)':<38} {'pages':>5} {'first 5 ms':>10} {'last 5 ms':>10} {'all p99':>8}")
    for who, ms in f.pages.items():
        k = min(5, len(ms))
        print(f"{who:<38} {len(ms):>5} {statistics.median(ms[:k]):10.1f} {statistics.median(ms[-k:]):10.1f}"
              f" {pct(ms, 99):8.1f}")
    if f.plans:
        print(f"{'filter (EXPLAIN ANALYZE, admin unless said)':<44} {'seq scan':>8} {'exec ms':>8}")
        for name, seq, ms, plan in f.plans:
            print(f"{name:<44} {'YES' if seq else 'no':>8} {ms:8.2f}")
            if show_plans:
                print("    " + plan.replace("\n", "\n    "))
    if f.storm is not None:
        print(f"scheduling decision over {args.hosts} hosts during the storm: n={len(f.decide_ms)}"
              f" p50 {pct(f.decide_ms, 50):.2f} ms, p99 {pct(f.decide_ms, 99):.2f} ms wall;"
              f" CPU p50 {pct(f.decide_cpu_ms, 50):.2f} ms, p99 {pct(f.decide_cpu_ms, 99):.2f} ms")
        storm.print_table([f.storm])
    print(f"server peak RSS: {f.rss_mb:.0f} MB")


def headline(f: Figures) -> str:
    lists = [ms for name, ms in f.lists.items() if "index" in name]
    details = [ms for name, ms in f.lists.items() if "detail" in name]
    s = f.storm
    return json.dumps({
        "bench": "scale", "instances": f.instances,
        "list_p99_ms": round(max(pct(ms, 99) for ms in lists), 1),
        "detail_p99_ms": round(max(pct(ms, 99) for ms in details), 1),
        "restart_s": round(f.restart_s, 2), "peak_rss_mb": round(f.rss_mb),
        "storm_active_per_s": None if s is None else round(s.n / s.storm_s, 1) if s.storm_s else 0,
    })


async def main() -> int:
    if sys.argv[1:2] == [DECISIONS_MODE]:
        await decisions_until_eof(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=100_000, help="instances in all (default 100000)")
    parser.add_argument("--projects", type=int, default=10, help="projects sharing them (default 10)")
    parser.add_argument("--live", type=int, default=20_000, help="of them live, the newest (default 20000)")
    parser.add_argument("--hosts", type=int, default=1000, help="simulated hosts (default 1000)")
    parser.add_argument("--storm", type=int, default=1000, help="servers of the boot storm on top (default 1000)")
    parser.add_argument("-c", type=int, default=50, help="the storm's concurrent POSTs (default 50)")
    parser.add_argument("--samples", type=int, default=200, help="GETs per list case")
    parser.add_argument("--no-plans", action="store_true", help="skip the EXPLAIN of every filter")
    parser.add_argument("--show-plans", action="store_true", help="print each filter's plan")
    parser.add_argument("--port-groups", action="store_true",
                        help="bind every loaded port to its project's default group (the start's firewall sync "
                             "then costs ports x group members: see bench/README.md)")
    parser.add_argument("--sql-top", type=int, default=0,
                        help="list the K statements that cost Postgres the most during the storm")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    parser.add_argument("--state", type=Path,
                        help="keep the loaded database in this directory: the first run loads it there, later runs"
                             " with the same load options only measure (the ~80 s load skipped)")
    parser.add_argument("--repo", type=Path, default=storm.REPO,
                        help="the checkout whose novalite serves (default this one): a base to compare against on"
                             " the same --state")
    parser.add_argument("--no-storm", action="store_true",
                        help="skip the storm on top and the decisions timed during it")
    args = parser.parse_args()
    if args.live > args.instances or args.live > 60000:
        parser.error("--live must be at most --instances and fit the /16 network")
    storm.SQL_TOP = args.sql_top
    storm.REPO = args.repo.resolve()  # the server subprocess runs from there (`python -m novalite.cli`)
    figures = await run(args)
    print_report(figures, args, args.show_plans)
    print(headline(figures))
    s = figures.storm
    return 1 if s is not None and s.errors + s.oversubscribed + s.incomplete_actions else 0


if __name__ == "__main__":
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        sys.exit(runner.run(main()))
