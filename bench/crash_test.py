"""Crash drill: SIGKILL the real server in every boot stage, restart, and check nothing is lost.

    .venv/bin/python bench/crash_test.py --kills 20 --seed 1 [--servers 4] [--dsn postgresql://...]
        [--stages migrating evacuating]

Hosts are persistent simulated hosts (:mod:`novalite.virt.simhost`): libvirt's
test driver served by a private libvirtd per host, kept alive by this
harness's own connection, so they outlive every novalite process we kill.
The server runs as a subprocess (``python -m novalite.cli --config X serve``)
with ``compute.drill_stage_delays`` holding each instance a moment in every
stage, so a kill can land inside the stage we aim at (seen through the DB).

After each restart the harness waits for every instance to settle and checks:
no instance lost; none in a task state (none stuck past its deadline);
libvirt domains == database per host; quota in_use (API) == live instances;
allocations == live instances with a host (and the flavor's sizes); every
instance the kill interrupted has a ``compute_recover_instance`` event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import libvirt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from boot_storm import wait_serving  # noqa: E402

from novalite import db as novadb  # noqa: E402
from novalite.image import testimage  # noqa: E402
from novalite.virt.libvirt.metadata import prune_redirects  # noqa: E402
from novalite.virt.libvirt.storage import purge_pools  # noqa: E402
from novalite.virt.simhost import PersistentTestHost  # noqa: E402

STAGES = ["before_scheduling", "scheduling", "networking", "block_device_mapping", "spawning", "deleting",
          "rebuild_spawning", "image_uploading", "resize_finish", "rescuing", "unrescuing",
          "shelving_image_uploading", "unshelve_spawning", "migrating", "evacuating",
          "live_migrating"]
# The task state a stage's kill aims at, when the stage is named after the action.
SEEN = {"unshelve_spawning": "spawning", "migrating": "resize_finish", "evacuating": "rebuild_spawning",
        "live_migrating": "migrating"}
DELAYS = {"scheduling": 0.8, "networking": 0.6, "block_device_mapping": 0.6, "spawning": 0.8,
          "deleting": 0.8, "image_pending_upload": 0.6, "image_uploading": 0.8, "shelving_image_uploading": 0.8,
          "unshelve_spawning": 0.8, "live_migrating": 0.8}
# States in which an instance has a domain and a claim on its host.
LIVE_STATES = ("active", "stopped", "paused", "suspended", "resized", "rescued", "shelved")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QemuHost:
    """This machine's qemu:///system as a host of the drill: its domains outlive any novalite
    process by nature (libvirtd keeps them). Only the drill's own instances are compared, since
    other clouds may run guests on the same libvirtd."""

    name = "local"
    uri = "qemu:///system"

    def __init__(self, created: set[str]) -> None:
        self.created = created

    def domains(self) -> list[str]:
        conn = libvirt.open(self.uri)
        try:
            return [d.UUIDString() for d in conn.listAllDomains() if d.UUIDString() in self.created]
        finally:
            conn.close()

    def cleanup(self, prefix: str) -> None:
        conn = libvirt.open(self.uri)
        try:
            for d in conn.listAllDomains():
                if d.UUIDString() in self.created:
                    if d.isActive():
                        d.destroy()
                    d.undefine()
            for name in conn.listNetworks() + conn.listDefinedNetworks():
                if name.startswith(prefix):
                    net = conn.networkLookupByName(name)
                    if net.isActive():
                        net.destroy()
                    net.undefine()
            purge_pools(conn, prefix)
        finally:
            conn.close()
        prune_redirects(prefix, set())  # the metadata redirects of the networks just removed


class Harness:
    def __init__(self, workdir: Path, dsn: str, hosts: list[PersistentTestHost], servers: int, log) -> None:
        self.workdir = workdir
        self.dsn = dsn
        self.hosts = hosts
        self.servers = servers
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.token: str | None = None
        self.project_id: str | None = None
        self.session: aiohttp.ClientSession | None = None
        self.requested_deletes: set[str] = set()
        self.created: set[str] = set()
        self.counts: Counter = Counter()
        self.failures: list[str] = []
        self.qemu: QemuHost | None = None
        self.prefix = f"nlcrash{uuid.uuid4().hex[:6]}-"
        self.qemu_image: str | None = None
        self.snapshots: list[str] = []  # images of createImage requests this round
        self.down = ""  # the host an evacuating round forced down

    def write_config(self) -> Path:
        hosts = "".join(
            f'[[hosts]]\nname = "{h.name}"\nuri = "{h.uri}"\ndisk_gb = 200\n\n' for h in self.hosts
        )
        if self.qemu is not None:
            net = 100 + int(self.prefix[7:13], 16) % 100  # a subnet of its own beside other clouds
            hosts += (f'[networking]\nlibvirt_prefix = "{self.prefix}"\ndefault_network = "drill"\n\n'
                      f'[[networks]]\nname = "drill"\ncidr = "10.{net}.9.0/24"\n\n'
                      f'[volume]\npool_prefix = "{self.prefix}"\n\n'
                      f'[[hosts]]\nname = "{self.qemu.name}"\nuri = "{self.qemu.uri}"\ndisk_gb = 20\n\n')
        delays = ", ".join(f"{k} = {v}" for k, v in DELAYS.items())
        text = f"""
[api]
listen = "127.0.0.1"
port = {self.port}
user_clouds_yaml = false
[database]
dsn = "{self.dsn}"
pool_max = 40
[state]
dir = "{self.workdir / 'state'}"
[log]
level = "info"
format = "json"
[identity]
bcrypt_rounds = 4
[policy]
file = "{self.workdir / 'policy.yaml'}"
[quota]
instances = 100
cores = 200
ram = 512000
[scheduler]
reserved_host_memory_mb = 0
[compute]
virt_type = "qemu"
power_sync_interval = 5
report_interval = 2
drill_stage_delays = {{ {delays} }}
[deadlines]
scheduling = 60
building = 60
deleting = 60
power_action = 60
watchdog_interval = 2

{hosts}
"""
        path = self.workdir / "config.toml"
        path.write_text(text)
        return path

    # -- the server process --------------------------------------------------------
    async def start_server(self) -> float:
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "novalite.cli", "--config", str(self.workdir / "config.toml"), "serve", "--no-test-image",
             "--clouds-yaml", str(self.workdir / "clouds.yaml")],
            cwd=self.workdir, stdout=self.log, stderr=self.log, env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        # polled often: the restart time is one of the drill's figures
        await wait_serving(self.session, self.url, self.proc, Path(self.log.name), timeout=60, interval=0.05)
        if self.token is None:
            await self.login()
        return time.monotonic() - t0

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop_server(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
            self.proc = None

    async def login(self) -> None:
        creds = json.loads((self.workdir / "state" / "credentials.json").read_text())
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"name": "Default"}, "password": creds["admin"]}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}
        async with self.session.post(f"{self.url}/identity/v3/auth/tokens", json=body) as r:
            assert r.status == 201, await r.text()
            self.token = r.headers["X-Subject-Token"]
            self.project_id = (await r.json())["token"]["project"]["id"]

    async def api(self, method: str, path: str, body=None) -> tuple[int, dict | None]:
        headers = {"X-Auth-Token": self.token, "OpenStack-API-Version": "compute latest"}
        async with self.session.request(method, f"{self.url}/compute/v2.1{path}", json=body, headers=headers) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)

    # -- one round --------------------------------------------------------------------
    async def create_batch(self, image_id: str) -> list[str]:
        status, body = await self.api("POST", "/servers", {"server": {
            "name": "crash", "imageRef": image_id, "flavorRef": "1", "networks": "none",
            "min_count": self.servers, "return_reservation_id": True}})
        assert status == 202, body
        async with self.db.acquire() as conn:
            rows = await conn.fetch("SELECT uuid FROM instances WHERE reservation_id = $1", body["reservation_id"])
        uuids = [str(r["uuid"]) for r in rows]
        if self.qemu is not None:  # plus one real guest on this machine's qemu
            status, body = await self.api("POST", "/servers", {"server": {
                "name": "crash-qemu", "imageRef": self.qemu_image, "flavorRef": "1", "networks": "none",
                "availability_zone": f"nova:{self.qemu.name}"}})
            assert status == 202, body
            uuids.append(body["server"]["id"])
        self.created.update(uuids)
        return uuids

    async def wait_stage(self, uuids: list[str], stage: str, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with self.db.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT task_state, host FROM instances WHERE uuid = ANY($1::uuid[]) AND NOT deleted", uuids)
            if stage == "scheduling":
                if any(r["task_state"] == "scheduling" and r["host"] for r in rows):
                    return True
            elif any(r["task_state"] == stage for r in rows):
                return True
            await asyncio.sleep(0.01)
        return False

    async def in_flight(self) -> dict[str, str]:
        async with self.db.acquire() as conn:
            rows = await conn.fetch(
                """SELECT uuid, task_state, vm_state FROM instances
                   WHERE NOT deleted AND (task_state IS NOT NULL OR vm_state = 'building')""")
        return {str(r["uuid"]): r["task_state"] or r["vm_state"] for r in rows}

    async def settle(self, timeout: float = 45) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not await self.in_flight():
                return True
            await asyncio.sleep(0.1)
        return False

    async def round(self, rng: random.Random, stage: str, image_id: str) -> None:
        if stage == "deleting":
            uuids = await self.create_batch(image_id)
            if not await self.settle():
                self.failures.append(f"{stage}: batch never settled before the delete")
            for u in uuids:
                self.requested_deletes.add(u)
                await self.api("DELETE", f"/servers/{u}")
        elif stage.startswith("rebuild"):
            uuids = await self.create_batch(image_id)
            if not await self.settle():
                self.failures.append(f"{stage}: batch never settled before the rebuild")
            async with self.db.acquire() as conn:
                images = {str(r["uuid"]): r["image_ref"] for r in await conn.fetch(
                    "SELECT uuid, image_ref FROM instances WHERE uuid = ANY($1::uuid[])", uuids)}
            for u in uuids:
                status, body = await self.api("POST", f"/servers/{u}/action", {"rebuild": {"imageRef": images[u]}})
                if status != 202:
                    self.failures.append(f"{stage}: rebuild of {u} answered {status}: {body}")
        elif stage.startswith("image_"):
            uuids = await self.create_batch(image_id)
            if not await self.settle():
                self.failures.append(f"{stage}: batch never settled before the snapshot")
            for u in uuids:
                status, body = await self.api("POST", f"/servers/{u}/action", {"createImage": {"name": f"s-{u}"}})
                if status != 202:
                    self.failures.append(f"{stage}: createImage of {u} answered {status}: {body}")
                else:
                    self.snapshots.append(body["image_id"])
        elif stage.startswith("resize"):  # needs two hosts: the current one is not a destination
            uuids = await self.create_batch(image_id)
            if not await self.settle():
                self.failures.append(f"{stage}: batch never settled before the resize")
            for u in uuids:
                status, body = await self.api("POST", f"/servers/{u}/action", {"resize": {"flavorRef": "2"}})
                if status != 202:
                    self.failures.append(f"{stage}: resize of {u} answered {status}: {body}")
        elif stage == "migrating":  # a cold migration: resize's stages with the same flavor
            uuids = await self.create_batch(image_id)
            if not await self.settle():
                self.failures.append(f"{stage}: batch never settled before the migration")
            for u in uuids:
                status, body = await self.api("POST", f"/servers/{u}/action", {"migrate": None})
                if status != 202:
                    self.failures.append(f"{stage}: migrate of {u} answered {status}: {body}")
        elif stage == "live_migrating":  # needs two hosts: the scheduler never picks the current one
            uuids = await self.create_batch(image_id)
            if not await self.settle():
                self.failures.append(f"{stage}: batch never settled before the live migration")
            for u in uuids:
                status, body = await self.api("POST", f"/servers/{u}/action",
                                              {"os-migrateLive": {"host": None, "block_migration": "auto"}})
                if status != 202:
                    self.failures.append(f"{stage}: live migration of {u} answered {status}: {body}")
        elif stage == "evacuating":
            uuids = await self.evacuate_batch(image_id)
        elif stage in ("rescuing", "unrescuing"):
            uuids = await self.create_batch(image_id)
            if not await self.settle():
                self.failures.append(f"{stage}: batch never settled before the rescue")
            for action in ("rescue", "unrescue")[: 1 if stage == "rescuing" else 2]:
                if action == "unrescue" and not await self.settle():
                    self.failures.append(f"{stage}: rescues never finished")
                for u in uuids:
                    status, body = await self.api("POST", f"/servers/{u}/action", {action: None})
                    if status not in (200, 202):
                        self.failures.append(f"{stage}: {action} of {u} answered {status}: {body}")
        elif stage in ("shelving_image_uploading", "unshelve_spawning"):
            uuids = await self.create_batch(image_id)
            if not await self.settle():
                self.failures.append(f"{stage}: batch never settled before the shelve")
            for u in uuids:
                status, body = await self.api("POST", f"/servers/{u}/action", {"shelve": None})
                if status != 202:
                    self.failures.append(f"{stage}: shelve of {u} answered {status}: {body}")
            if stage == "unshelve_spawning":
                if not await self.settle(timeout=90):
                    self.failures.append(f"{stage}: shelves never settled before the unshelve")
                for u in uuids:
                    status, body = await self.api("POST", f"/servers/{u}/action", {"unshelve": None})
                    if status != 202:
                        self.failures.append(f"{stage}: unshelve of {u} answered {status}: {body}")
        else:
            uuids = await self.create_batch(image_id)
        seen = SEEN.get(stage, stage)
        if stage != "before_scheduling" and not await self.wait_stage(uuids, seen):
            self.failures.append(f"{stage}: never saw the stage")
        await asyncio.sleep(rng.uniform(0, 0.15))
        self.kill()
        interrupted = await self.in_flight()
        self.counts[f"killed_in_{stage}"] += 1
        self.counts["instances_interrupted"] += len(interrupted)
        restart = await self.start_server()
        self.counts["restart_seconds_x10"] += int(restart * 10)
        if not await self.settle():
            stuck = await self.in_flight()
            self.failures.append(f"{stage}: stuck after restart: {stuck}")
        if stage == "evacuating":  # the host comes back: its leftovers of the evacuated go first
            await self.host_back()
        await self.check(stage, interrupted)
        if self.snapshots:  # every accepted snapshot ends as an active image, crash or not
            async with self.db.acquire() as conn:
                statuses = {str(r["id"]): r["status"] for r in await conn.fetch(
                    "SELECT id, status FROM images WHERE id = ANY($1::uuid[])", self.snapshots)}
            for image in self.snapshots:
                if statuses.get(image) != "active":
                    self.failures.append(f"{stage}: snapshot {image} is {statuses.get(image, 'gone')}")
            self.snapshots.clear()
        # Make room for the next round: delete everything and let it finish.
        async with self.db.acquire() as conn:
            live = [str(r["uuid"]) for r in await conn.fetch("SELECT uuid FROM instances WHERE NOT deleted")]
        for u in live:
            self.requested_deletes.add(u)
            await self.api("DELETE", f"/servers/{u}")
        if not await self.settle():
            self.failures.append(f"{stage}: cleanup deletes never finished")
        await self.check(f"{stage}/cleanup", {})

    async def force_down(self, host: str, down: bool) -> None:
        """The operator's fence: PUT /os-services/{id} forced_down (2.53)."""
        status, body = await self.api("GET", f"/os-services?host={host}")
        service = body["services"][0]["id"]
        status, body = await self.api("PUT", f"/os-services/{service}", {"forced_down": down})
        if status != 200:
            self.failures.append(f"evacuating: force-down {host}={down} answered {status}: {body}")

    async def evacuate_batch(self, image_id: str) -> list[str]:
        """A batch, then the first host forced down and its servers evacuated to the other."""
        uuids = await self.create_batch(image_id)
        if not await self.settle():
            self.failures.append("evacuating: batch never settled before the evacuation")
        self.down = self.hosts[0].name
        async with self.db.acquire() as conn:
            mine = [str(r["uuid"]) for r in await conn.fetch(
                "SELECT uuid FROM instances WHERE uuid = ANY($1::uuid[]) AND host = $2", uuids, self.down)]
        await self.force_down(self.down, True)
        for u in mine:
            status, body = await self.api("POST", f"/servers/{u}/action", {"evacuate": {}})
            if status != 200:
                self.failures.append(f"evacuating: evacuate of {u} answered {status}: {body}")
        return mine or uuids

    async def host_back(self, timeout: float = 20) -> None:
        """Un-force the evacuated host and wait until its leftovers are gone (migrations completed)."""
        await self.force_down(self.down, False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with self.db.acquire() as conn:
                left = await conn.fetchval("SELECT count(*) FROM migrations WHERE migration_type = 'evacuation' "
                                           "AND status = 'done'")
            if not left:
                return
            await asyncio.sleep(0.2)
        self.failures.append(f"evacuating: {self.down} back, but its evacuated leftovers stay")

    async def check(self, stage: str, interrupted: dict[str, str]) -> None:
        fail = self.failures.append
        async with self.db.acquire() as conn:
            rows = {str(r["uuid"]): r for r in await conn.fetch("SELECT * FROM instances")}
            allocs = {str(r["instance_uuid"]): r for r in await conn.fetch("SELECT * FROM allocations")}
            # A resize waiting for confirm: its migration holds the source's claim (Nova's consumer swap).
            held = {str(r["uuid"]): r for r in await conn.fetch(
                """SELECT m.uuid, m.source_compute, m.old_flavor FROM migrations m JOIN instances i
                   ON i.uuid = m.instance_uuid WHERE NOT i.deleted
                   AND m.status NOT IN ('confirmed', 'reverted', 'error')""")}
            recover_rows = await conn.fetch(
                """SELECT a.instance_uuid, e.details FROM instance_actions a
                   JOIN instance_actions_events e ON e.action_id = a.id WHERE e.event = 'compute_recover_instance'""")
            recovered = {str(r["instance_uuid"]) for r in recover_rows}
            shelved_images = {str(r["id"]) for r in await conn.fetch(
                "SELECT id FROM images WHERE status = 'active' AND name LIKE '%-shelved'")}
        # no instance lost
        for u in self.created:
            r = rows.get(u)
            if r is None:
                fail(f"{stage}: instance {u} vanished from the database")
            elif r["deleted"] and u not in self.requested_deletes:
                fail(f"{stage}: instance {u} deleted without a delete request")
            elif not r["deleted"] and r["vm_state"] not in (*LIVE_STATES, "shelved_offloaded", "error"):
                fail(f"{stage}: instance {u} in {r['vm_state']}/{r['task_state']}")
            elif not r["deleted"] and r["vm_state"] == "shelved_offloaded" and (r["host"] or u in allocs):
                fail(f"{stage}: offloaded instance {u} still on {r['host']} (allocation: {u in allocs})")
            if r is not None and not r["deleted"] and r["vm_state"] in ("shelved", "shelved_offloaded"):
                sysmeta = r["system_metadata"]
                sysmeta = json.loads(sysmeta) if isinstance(sysmeta, str) else (sysmeta or {})
                shelved_image = sysmeta.get("shelved_image_id")
                if shelved_image not in shelved_images:
                    fail(f"{stage}: shelved instance {u} has no active shelved image ({shelved_image})")
            if not r["deleted"] and r["vm_state"] == "error":
                self.counts["ended_in_error"] += 1
        # domains == database, per host
        for h in [*self.hosts, *([self.qemu] if self.qemu else [])]:
            domains = set(h.domains())
            on_host = {u for u, r in rows.items() if not r["deleted"] and r["host"] == h.name}
            must = {u for u in on_host if rows[u]["vm_state"] in LIVE_STATES}
            if not domains <= on_host:
                fail(f"{stage}: {h.name} has domains the database does not: {sorted(domains - on_host)}")
            if not must <= domains:
                fail(f"{stage}: {h.name} lacks domains of live instances: {sorted(must - domains)}")
        # allocations == live instances with a host
        for u, a in allocs.items():
            if u in held:
                m = held[u]
                if a["host"] != m["source_compute"] or a["memory_mb"] != json.loads(m["old_flavor"])["memory_mb"]:
                    fail(f"{stage}: allocation held by migration {u} is not its source's old flavor")
                continue
            r = rows.get(u)
            if r is None or r["deleted"] or r["host"] != a["host"]:
                fail(f"{stage}: allocation of {u} on {a['host']} matches no live instance there")
            elif (a["vcpus"], a["memory_mb"]) != (r["vcpus"], r["memory_mb"]):
                fail(f"{stage}: allocation of {u} has the wrong size")
        for u, r in rows.items():
            if not r["deleted"] and r["host"] and r["vm_state"] in LIVE_STATES and u not in allocs:
                fail(f"{stage}: live instance {u} on {r['host']} has no allocation")
        # quota usage (as the API reports it) == live instances
        status, body = await self.api("GET", f"/os-quota-sets/{self.project_id}/detail")
        live = [r for r in rows.values() if not r["deleted"] and r["project_id"] == self.project_id]
        if status == 200:
            qs = body["quota_set"]
            want = (len(live), sum(r["vcpus"] for r in live), sum(r["memory_mb"] for r in live))
            got = (qs["instances"]["in_use"], qs["cores"]["in_use"], qs["ram"]["in_use"])
            if want != got:
                fail(f"{stage}: quota in_use {got} != live instances {want}")
        else:
            fail(f"{stage}: quota API answered {status}")
        # every interrupted instance's action log shows the interruption
        outcome = {str(r["instance_uuid"]): r["details"] or "" for r in recover_rows}
        for u in interrupted:
            detail = outcome.get(u, "")
            for key, label in (("build finished", "recovered_build_finished"),
                               ("scheduling again", "recovered_build_rescheduled"),
                               ("finishing the delete", "recovered_delete_finished"),
                               ("rebuilding again", "recovered_rebuild_resumed"),
                               ("taking the snapshot again", "recovered_snapshot_resumed"),
                               ("resuming the resize", "recovered_resize_resumed"),
                               ("resuming the evacuation", "recovered_evacuation_resumed"),
                               ("rolled back to the server's own guest", "recovered_rescue_rolled_back"),
                               ("finishing the unrescue", "recovered_unrescue_finished"),
                               ("shelving again", "recovered_shelve_resumed"),
                               ("unshelving again", "recovered_unshelve_resumed"),
                               ("finishing the live migration", "recovered_live_migration_finished"),
                               ("live migration rolled back", "recovered_live_migration_rolled_back")):
                if key in detail:
                    self.counts[label] += 1
            if u not in recovered:
                fail(f"{stage}: interrupted instance {u} ({interrupted[u]}) has no compute_recover_instance event")
        self.counts["checks"] += 1

    async def add_image(self) -> str:
        image_id = str(uuid.uuid4())
        async with self.db.acquire() as conn:
            await conn.execute(
                """INSERT INTO images (id, name, owner, status, visibility, disk_format, container_format, size,
                                       min_ram, min_disk, properties)
                   VALUES ($1, 'crash-image', NULL, 'active', 'public', 'qcow2', 'bare', 1048576, 0, 0, '{}')""",
                uuid.UUID(image_id))
        return image_id


async def fresh_database(admin_dsn: str) -> str:
    return await novadb.create_database(admin_dsn, "crash")


async def run(kills: int, seed: int, servers: int, admin_dsn: str | None, hosts: int = 2,
              workdir: Path | None = None, verbose: bool = True, qemu: bool = False) -> tuple[Counter, list[str]]:
    """Run the drill; return (counts, failures). With `qemu`, each batch adds a real guest."""
    rng = random.Random(seed)
    if workdir is None and qemu:  # qemu runs as its own user: the state dir must be reachable
        workdir = Path(tempfile.mkdtemp(prefix="novalite-crash-", dir="/var/tmp"))
        workdir.chmod(0o755)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="novalite-crash-"))
    embedded = None
    if admin_dsn is None:
        embedded = novadb.EmbeddedPostgres(workdir / "pgdata")
        admin_dsn = await embedded.start()
    dsn = await fresh_database(admin_dsn)
    # Each daemon gets its own directory under /tmp: it runs unprivileged and must reach it.
    sim_hosts = [PersistentTestHost(f"p{i + 1}") for i in range(hosts)]
    log = open(workdir / "server.log", "ab")  # noqa: SIM115
    h = Harness(workdir, dsn, sim_hosts, servers, log)
    if qemu:
        h.qemu = QemuHost(h.created)
    try:
        for s in sim_hosts:
            await asyncio.to_thread(s.start)
        h.write_config()
        h.session = aiohttp.ClientSession()
        h.db = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        await h.start_server()
        image_id = await h.add_image()
        if h.qemu is not None:
            creds = json.loads((workdir / "state" / "credentials.json").read_text())
            built = await asyncio.to_thread(testimage.build, Path("/var/tmp/novalite-testimage-cache"))
            h.qemu_image = (await testimage.upload(built, h.url, "admin", creds["admin"]))["ami"]
        for i in range(kills):
            stage = STAGES[i % len(STAGES)] if i < len(STAGES) else rng.choice(STAGES)
            before = len(h.failures)
            await h.round(rng, stage, image_id)
            if verbose:
                ok = "ok" if len(h.failures) == before else "FAIL " + "; ".join(h.failures[before:])
                print(f"kill {i + 1:3d}  stage={stage:22s} {ok}", flush=True)
        h.stop_server()
    finally:
        if h.proc is not None:
            h.kill()
        if h.session is not None:
            await h.session.close()
        if getattr(h, "db", None) is not None:
            await h.db.close()
        for s in sim_hosts:
            s.stop()
        if h.qemu is not None:
            await asyncio.to_thread(h.qemu.cleanup, h.prefix)
        log.close()
        if embedded is not None:
            await embedded.stop()
    return h.counts, h.failures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--servers", type=int, default=4, help="servers per batch")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--dsn", default=os.environ.get("NOVALITE_TEST_DSN"), help="admin DSN (default: embedded)")
    p.add_argument("--qemu", action="store_true", help="add a real guest on qemu:///system to every batch")
    p.add_argument("--stages", nargs="+", choices=STAGES, help="only these stages (default: all, in turn)")
    args = p.parse_args()
    if args.stages:
        STAGES[:] = args.stages
    t0 = time.monotonic()
    counts, failures = asyncio.run(run(args.kills, args.seed, args.servers, args.dsn, args.hosts, qemu=args.qemu))
    print(f"\n{args.kills} kills, seed {args.seed}, {time.monotonic() - t0:.1f} s")
    restarts = counts.pop("restart_seconds_x10", 0)
    for k in sorted(counts):
        print(f"  {k:30s} {counts[k]}")
    print(f"  {'mean restart seconds':30s} {restarts / 10 / max(1, args.kills):.2f}")
    print(f"  {'failures':30s} {len(failures)}")
    for f in failures:
        print("   -", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
