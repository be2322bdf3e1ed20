"""Logs an operator greps: `novalite serve` in a subprocess, its stderr read as JSON lines."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
from conftest import REPO, fresh_database, write_config

from novalite.bootstrap import credentials_file
from novalite.config import load_config


class Served:
    """A `novalite serve` subprocess with JSON logs at a given level, and its log lines."""

    def __init__(self, config_path: Path) -> None:
        self.config = load_config(config_path)
        self.url = self.config.public_url
        self.log_path = config_path.parent / "server.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "novalite.cli", "--config", str(config_path), "serve", "--no-test-image",
             "--clouds-yaml", str(config_path.parent / "clouds.yaml")],
            cwd=config_path.parent, env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.DEVNULL, stderr=self.log_path.open("w"),
        )
        self.session = aiohttp.ClientSession()

    async def wait_serving(self, timeout: float = 60) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                async with self.session.get(f"{self.url}/compute/") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"not serving:\n{self.log_path.read_text()}")

    async def token(self, user: str) -> str:
        password = json.loads(credentials_file(self.config).read_text())[user]
        body = {"auth": {
            "identity": {"methods": ["password"],
                         "password": {"user": {"name": user, "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": "admin" if user == "admin" else "demo", "domain": {"name": "Default"}}}}}
        async with self.session.post(f"{self.url}/identity/v3/auth/tokens", json=body) as r:
            assert r.status == 201
            return r.headers["X-Subject-Token"]

    def lines(self) -> list[dict]:
        """Every log line so far (the "serving on ... try:" announcement of cli.py is plain text)."""
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]

    async def lines_where(self, **match) -> list[dict]:
        """The log lines with these key/values, waiting a moment for them to be written."""
        for _ in range(50):
            found = [line for line in self.lines() if all(line.get(k) == v for k, v in match.items())]
            if found:
                return found
            await asyncio.sleep(0.1)
        return []

    async def stop(self) -> None:
        await self.session.close()
        self.proc.terminate()
        self.proc.wait(30)


async def serve(pg_dsn: str, workdir: Path, level: str) -> Served:
    path = write_config(workdir, await fresh_database(pg_dsn))
    path.write_text(path.read_text().replace('level = "warning"\nformat = "console"',
                                             f'level = "{level}"\nformat = "json"'))
    served = Served(path)
    await served.wait_serving()
    return served


async def test_access_line_and_request_id_at_info(pg_dsn, tmp_path):
    served = await serve(pg_dsn, tmp_path, "info")
    try:
        token = await served.token("demo")
        missing = str(uuid.uuid4())
        async with served.session.get(f"{served.url}/compute/v2.1/servers/{missing}",
                                      headers={"X-Auth-Token": token}) as r:
            assert r.status == 404
            request_id = r.headers["X-OpenStack-Request-ID"]
        [access] = await served.lines_where(event="request", request_id=request_id)
        assert access["route"] == "/compute/v2.1/servers/{server_id}"
        assert access["path"] == f"/compute/v2.1/servers/{missing}"
        assert access["method"] == "GET" and access["status"] == 404 and access["level"] == "info"
        assert access["remote"] == "127.0.0.1" and access["duration_ms"] >= 0
        assert access["user_id"] and access["project_id"]

        # A well-formed incoming id is the request's id; a malformed one is replaced.
        mine = f"req-{uuid.uuid4()}"
        async with served.session.get(f"{served.url}/compute/v2.1/flavors",
                                      headers={"X-Auth-Token": token, "X-OpenStack-Request-ID": mine}) as r:
            assert r.status == 200
            assert r.headers["X-OpenStack-Request-ID"] == mine == r.headers["X-Compute-Request-ID"]
        [access] = await served.lines_where(event="request", request_id=mine)
        assert access["route"] == "/compute/v2.1/flavors" and access["status"] == 200
        async with served.session.get(f"{served.url}/compute/v2.1/flavors",
                                      headers={"X-Auth-Token": token, "X-OpenStack-Request-ID": "req-1; rm -rf"}) as r:
            assert r.headers["X-OpenStack-Request-ID"].startswith("req-")
            assert r.headers["X-OpenStack-Request-ID"] != "req-1; rm -rf"

        # An unmatched path: no route, the path kept; no token: no user.
        async with served.session.get(f"{served.url}/nowhere/at/all") as r:
            request_id = r.headers["X-OpenStack-Request-ID"]
        [access] = await served.lines_where(event="request", request_id=request_id)
        assert access["route"] is None and access["path"] == "/nowhere/at/all" and "user_id" not in access

        # Start-up said what it did, as log lines.
        lines = served.lines()
        [pg] = [line for line in lines if line["event"] == "postgres"]
        assert pg["embedded"] is False and pg["database"].startswith("t") and pg["server_version"]
        hosts = {line["host"]: line for line in lines if line["event"] == "virt_type_chosen"}
        assert set(hosts) == {"sim1", "sim2"} and hosts["sim1"]["uri"].startswith("test://")
        assert [line["network"] for line in lines if line["event"] == "network_ready"] == ["novalite-private"]
        assert any(line["event"] == "images" and line["images"] == [] for line in lines)
        assert not [line for line in lines if line["level"] == "debug"]  # info means info
    finally:
        await served.stop()


async def test_debug_level_shows_stdlib_records_with_the_request_id(pg_dsn, tmp_path):
    served = await serve(pg_dsn, tmp_path, "debug")
    try:
        # A stdlib record emitted inside a request (the policy engine's denial) carries its request id.
        token = await served.token("demo")
        async with served.session.get(f"{served.url}/compute/v2.1/os-services", headers={"X-Auth-Token": token}) as r:
            assert r.status == 403
            request_id = r.headers["X-OpenStack-Request-ID"]
        [denied] = await served.lines_where(logger="novalite.policy", request_id=request_id)
        assert denied["level"] == "debug" and "os_compute_api:os-services:list" in denied["event"]
        [access] = await served.lines_where(event="request", request_id=request_id)
        assert access["status"] == 403

        # aiohttp's own record of a connection that spoke no HTTP, as a JSON line at debug.
        _, writer = await asyncio.open_connection("127.0.0.1", served.config.api.port)
        writer.write(b"\x16\x03\x01 not http\r\n\r\n")
        await writer.drain()
        writer.close()
        [garbage] = await served.lines_where(logger="aiohttp.server", level="debug")
        assert garbage["event"].startswith("Error handling request from 127.0.0.1")

        # libvirt's own error messages (a first start looks its network up before making it): debug lines.
        missing = await served.lines_where(event="libvirt_error", level="debug")
        assert any("novalite-private" in line["message"] for line in missing)
    finally:
        await served.stop()
