"""Test fixtures: one real Postgres per session, a fresh database and a real
HTTP server per test, simulated hosts on libvirt's test driver."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from novalite import db
from novalite.api import keys
from novalite.app import hosts_ready, init_app
from novalite.bootstrap import clouds_yaml, credentials_file
from novalite.config import load_config
from novalite.logs import setup_logging

# Servers the tests start (in process or as `novalite serve`) leave the user's own
# ~/.config/openstack/clouds.yaml alone: their clouds are temporary.
os.environ["NOVALITE_API__USER_CLOUDS_YAML"] = "false"

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"

setup_logging(os.environ.get("NOVALITE_TEST_LOG", "warning"), "console")


# Modules that touch what this machine shares: qemu:///system (bridges, nwfilters, networks with
# fixed CIDRs), network namespaces, iptables, lab libvirtds, the test image's cache. `make test`
# runs on two xdist workers (--dist loadgroup): these go to one of them, one after another; every
# other module is a group of its own, so its module-scoped cloud is made once.
SHARED_MACHINE = {
    "test_configdrive_console", "test_console", "test_crash", "test_dashboard_console_guest", "test_doctor",
    "test_first_start", "test_interfaces", "test_kvm_probe", "test_lab_host", "test_lab_host_guest",
    "test_live_migration_guest", "test_metadata", "test_network_forward", "test_networks",
    "test_nwfilter", "test_security_groups_proxy", "test_tenant_datapath", "test_tenant_metadata",
    "test_testimage", "test_virt_driver",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__
        item.add_marker(pytest.mark.xdist_group("machine" if module in SHARED_MACHINE else module))


@pytest.fixture(scope="session")
async def pg_dsn():
    """One embedded Postgres for the whole session (or $NOVALITE_TEST_DSN)."""
    if os.environ.get("NOVALITE_TEST_DSN"):
        yield os.environ["NOVALITE_TEST_DSN"]
        return
    # In memory when it can be: a database per test makes a cluster of gigabytes and a
    # hundred thousand files, whose writes and final removal crawl on a busy disk.
    shm = Path("/dev/shm")
    tmp = Path(tempfile.mkdtemp(prefix="novalite-pg-", dir=shm if os.access(shm, os.W_OK) else None))
    server = db.EmbeddedPostgres(tmp / "pgdata")
    dsn = await server.start()
    try:
        yield dsn
    finally:
        await server.stop()
        # A database per test: a session's cluster is gigabytes; left behind, runs fill the disk.
        shutil.rmtree(tmp, ignore_errors=True)


async def fresh_database(admin_dsn: str) -> str:
    return await db.create_database(admin_dsn, "t")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cloud:
    """A running novalite on a real port, with its credentials and a client session."""

    url: str
    config: object
    creds: dict
    app: web.Application
    session: aiohttp.ClientSession
    workdir: Path
    tokens: dict = field(default_factory=dict)

    async def token(self, user: str = "demo", project: str | None = None) -> str:
        project = project or ("admin" if user == "admin" else "demo")
        key = (user, project)
        if key not in self.tokens:
            self.tokens[key] = await self.login(user, self.creds[user], project)
        return self.tokens[key]

    async def login(self, user: str, password: str, project: str | None) -> str:
        body: dict = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {"user": {"name": user, "domain": {"name": "Default"}, "password": password}},
                }
            }
        }
        if project:
            body["auth"]["scope"] = {"project": {"name": project, "domain": {"name": "Default"}}}
        async with self.session.post(f"{self.url}/identity/v3/auth/tokens", json=body) as r:
            assert r.status == 201, await r.text()
            return r.headers["X-Subject-Token"]

    async def request(
        self,
        method: str,
        path: str,
        *,
        user: str = "demo",
        project: str | None = None,
        json_body=None,
        version: str | None = None,
        headers: dict | None = None,
        data=None,
    ) -> tuple[int, dict | None, dict]:
        hdrs = {"X-Auth-Token": await self.token(user, project)} if user else {}
        if version:
            hdrs["OpenStack-API-Version"] = f"compute {'latest' if version == '2.latest' else version}"
        hdrs.update(headers or {})
        async with self.session.request(method, f"{self.url}{path}", json=json_body, data=data, headers=hdrs) as r:
            text = await r.text()
            body = json.loads(text) if text else None
            return r.status, body, dict(r.headers)

    async def compute(self, method: str, path: str, **kw):
        return await self.request(method, f"/compute/v2.1{path}", **kw)

    def clouds_yaml(self) -> Path:
        """The cloud's clouds.yaml, written at each call and replaced whole: concurrent CLI runs
        (asyncio.gather in test_clients) read it while another call rewrites it."""
        path = self.workdir / "clouds.yaml"
        fresh = path.with_name(f".clouds-{uuid.uuid4().hex}.yaml")
        fresh.write_text(clouds_yaml(self.config, self.creds))
        fresh.replace(path)
        return path

    async def openstack(self, *args: str, cloud: str = "novalite", check: bool = True) -> tuple[int, str, str]:
        """Run the real `openstack` CLI against this server (off the event loop)."""
        env = dict(os.environ, OS_CLIENT_CONFIG_FILE=str(self.clouds_yaml()), OS_CLOUD=cloud)
        env.pop("OS_AUTH_URL", None)
        proc = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "openstack"),
            *args,
            env=env,
            cwd=self.workdir,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        rc = proc.returncode
        if check and rc != 0:
            raise AssertionError(f"openstack {' '.join(args)} failed ({rc}):\n{err.decode()}\n{out.decode()}")
        return rc, out.decode(), err.decode()

    async def openstack_json(self, *args: str, cloud: str = "novalite"):
        _, out, _ = await self.openstack(*args, "-f", "json", cloud=cloud)
        return cli_json(out)


_PROGRESS = re.compile(r"^(\rProgress: \d+)+")


def cli_json(out: str):
    """The JSON the `openstack` CLI printed. `server create --wait` first writes its polls'
    ``\rProgress: N`` to stdout while the server builds (as users see it), so those go first."""
    return json.loads(_PROGRESS.sub("", out))


def write_config(workdir: Path, dsn: str, extra: str = "", hosts: str | None = None) -> Path:
    if hosts is None:
        hosts = "".join(
            f'[[hosts]]\nname = "sim{i}"\nsimulate = {{ vcpus = 8, memory_mb = 16384, disk_gb = 200 }}\n\n'
            for i in (1, 2)
        )
    port = free_port()
    text = f"""
[api]
listen = "127.0.0.1"
port = {port}

[database]
dsn = "{dsn}"

[state]
dir = "{workdir / 'state'}"

[log]
level = "warning"
format = "console"

[identity]
bcrypt_rounds = 4

[policy]
file = "{workdir / 'policy.yaml'}"

{extra}

{hosts}
"""
    path = workdir / "config.toml"
    path.write_text(text)
    return path


async def start_cloud(
    pg_dsn: str, workdir: Path, extra: str = "", hosts: str | None = None, *, dsn: str | None = None
) -> Cloud:
    """A server on a fresh database of `pg_dsn`, or on an existing database `dsn` (a restart)."""
    dsn = dsn or await fresh_database(pg_dsn)
    config = load_config(write_config(workdir, dsn, extra, hosts))
    app = init_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.api.listen, config.api.port)
    await site.start()
    await hosts_ready(app)  # the tests start from a cloud whose hosts are up and recovered
    creds = json.loads(credentials_file(config).read_text())
    session = aiohttp.ClientSession()
    cloud = Cloud(url=config.public_url, config=config, creds=creds, app=app, session=session, workdir=workdir)
    cloud._runner = runner  # type: ignore[attr-defined]
    return cloud


async def stop_cloud(cloud: Cloud) -> None:
    await cloud.session.close()
    await cloud._runner.cleanup()  # type: ignore[attr-defined]


@pytest.fixture
async def cloud(pg_dsn, tmp_path):
    c = await start_cloud(pg_dsn, tmp_path)
    yield c
    await stop_cloud(c)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


async def add_image(cloud: Cloud, name: str = "cirros", status: str = "active", **props) -> str:
    """An image row as the image API will store it (upload arrives with real guests)."""
    image_id = str(uuid.uuid4())
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute(
            """INSERT INTO images (id, name, owner, status, visibility, disk_format, container_format, size,
                                   min_ram, min_disk, properties)
               VALUES ($1, $2, NULL, $3, 'public', 'qcow2', 'bare', $4, $5, $6, $7)""",
            uuid.UUID(image_id),
            name,
            status,
            props.pop("size", 1024 * 1024),
            props.pop("min_ram", 0),
            props.pop("min_disk", 0),
            props,
        )
    return image_id


async def wait_for_status(cloud: Cloud, server_id: str, statuses, user: str = "demo", timeout: float = 30) -> dict:
    """Poll GET /servers/{id} until its status is one of `statuses` (404 counts as DELETED)."""
    if isinstance(statuses, str):
        statuses = {statuses}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, body, _ = await cloud.compute("GET", f"/servers/{server_id}", user=user, version="2.latest")
        current = "DELETED" if status == 404 else body["server"]["status"]
        if current in statuses:
            return body["server"] if body and "server" in body else {}
        if loop.time() > deadline:
            raise AssertionError(f"server {server_id} stuck in {current}: {body}")
        await asyncio.sleep(0.05)


async def create_user_with_role(cloud: Cloud, name: str, password: str) -> tuple[str, str]:
    """A user with the member role on the demo project: (user id, the grant's path)."""
    status, body, _ = await cloud.request("GET", "/identity/v3/projects?name=demo", user="admin")
    project_id = body["projects"][0]["id"]
    status, body, _ = await cloud.request(
        "POST",
        "/identity/v3/users",
        user="admin",
        json_body={"user": {"name": name, "password": password, "default_project_id": project_id}},
    )
    assert status == 201, body
    user_id = body["user"]["id"]
    status, body, _ = await cloud.request("GET", "/identity/v3/roles?name=member", user="admin")
    role_id = body["roles"][0]["id"]
    status, _, _ = await cloud.request(
        "PUT", f"/identity/v3/projects/{project_id}/users/{user_id}/roles/{role_id}", user="admin"
    )
    assert status == 204
    return user_id, f"/identity/v3/projects/{project_id}/users/{user_id}/roles/{role_id}"


async def tables_containing(cloud: Cloud, needle: str) -> list[str]:
    """Tables of the cloud's database with a row whose text form (every column) contains `needle`."""
    async with cloud.app[keys.DB].acquire() as conn:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        return [
            t["tablename"] for t in tables
            if await conn.fetchval(f'SELECT count(*) FROM "{t["tablename"]}" r WHERE strpos(r::text, $1) > 0', needle)
        ]
