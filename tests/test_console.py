"""The interactive serial console (issue #18): Nova's remote-consoles API, the console token,
the websocket that relays the domain's serial port, and what the test guest offers there.

The fast tests run on simulated hosts (libvirt's test driver has no console to open); the
qemu test types into a real TCG guest's shell through the websocket, on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import sys
import termios
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from conftest import add_image, tables_containing, wait_for_status
from test_guest_e2e import qemu_cloud, test_image, wait_console  # noqa: F401  (fixtures)
from test_image_visibility import other_project

from novalite.api import keys
from novalite.config import Config
from novalite.db import console_tokens

SERIAL = {"remote_console": {"protocol": "serial", "type": "serial"}}


async def boot(cloud, name: str = "vm", image: str | None = None) -> str:
    image = image or await add_image(cloud)
    status, body, _ = await cloud.compute("POST", "/servers", version="2.latest", json_body={
        "server": {"name": name, "imageRef": image, "flavorRef": "1", "networks": "auto"}})
    assert status == 202, body
    return body["server"]["id"]


async def console_url(cloud, server_id: str, user: str = "demo", project: str | None = None,
                      version: str = "2.6", body: dict | None = None):
    return await cloud.compute("POST", f"/servers/{server_id}/remote-consoles", user=user, project=project,
                               version=version, json_body=body or SERIAL)


async def ws_status(cloud, url: str) -> int:
    """The HTTP status a websocket connect to ``url`` is refused with (101 when it is accepted)."""
    try:
        async with cloud.session.ws_connect(url, protocols=("binary",)) as ws:
            await ws.close()
            return 101
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


def test_console_token_ttl_defaults_to_novas():
    assert Config().console.token_ttl == 600


async def test_remote_consoles_answers_like_nova_on_a_simulated_host(cloud):
    server = await boot(cloud)
    await wait_for_status(cloud, server, "ACTIVE")
    # The test driver has no console to open: Nova's ConsoleTypeUnavailable.
    status, body, _ = await console_url(cloud, server)
    assert status == 400, body
    assert body["badRequest"]["message"] == "Unavailable console type serial."
    status, body, _ = await console_url(cloud, server, body={"remote_console": {"protocol": "vnc", "type": "novnc"}})
    assert (status, body["badRequest"]["message"]) == (400, "Unavailable console type novnc.")
    status, body, _ = await console_url(cloud, server, body={"remote_console": {"protocol": "serial"}})
    assert status == 400 and "'type' is a required property" in body["badRequest"]["message"]
    status, body, _ = await console_url(cloud, server, body={"remote_console": {"protocol": "mks", "type": "webmks"}})
    assert status == 400 and "is not one of" in body["badRequest"]["message"]  # mks from 2.8
    # Before 2.6 there is no such resource; the action is its form there, and only there.
    status, _, _ = await console_url(cloud, server, version="2.5")
    assert status == 404
    status, body, _ = await cloud.compute("POST", f"/servers/{server}/action", version="2.5",
                                          json_body={"os-getSerialConsole": {"type": "serial"}})
    assert (status, body["badRequest"]["message"]) == (400, "Unavailable console type serial.")
    status, body, _ = await cloud.compute("POST", f"/servers/{server}/action", version="2.5",
                                          json_body={"os-getSerialConsole": {"type": "novnc"}})
    assert status == 400, body
    status, _, _ = await cloud.compute("POST", f"/servers/{server}/action", version="2.6",
                                       json_body={"os-getSerialConsole": {"type": "serial"}})
    assert status == 404
    status, body, _ = await console_url(cloud, "00000000-0000-0000-0000-000000000000")
    assert status == 404, body
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM console_auth_tokens") == 0


async def test_another_projects_member_gets_404_for_the_console(cloud):
    server = await boot(cloud)
    await other_project(cloud)  # olga, a member of project other
    status, body, _ = await console_url(cloud, server, user="olga", project="other")
    assert status == 404, body
    assert body["itemNotFound"]["message"] == f"Instance {server} could not be found."


async def test_the_websocket_refuses_unknown_used_and_expired_tokens(cloud):
    base = f"ws://127.0.0.1:{cloud.config.api.port}/console/serial"
    assert await ws_status(cloud, f"{base}?token=nope") == 401
    assert await ws_status(cloud, base) == 401
    async with cloud.session.get(f"{cloud.url}/console/serial?token=nope") as r:  # no upgrade asked
        assert r.status == 400
    server = await boot(cloud)
    await wait_for_status(cloud, server, "ACTIVE")
    async with cloud.app[keys.DB].acquire() as conn:
        await console_tokens.create(conn, hashlib.sha256(b"expired").hexdigest(), "serial", server, "sim1", -1)
        await console_tokens.create(conn, hashlib.sha256(b"fresh").hexdigest(), "serial", server, "sim1", 600)
    assert await ws_status(cloud, f"{base}?token=expired") == 401
    # A good token on a host with no console: consumed, and the console is not there (409).
    assert await ws_status(cloud, f"{base}?token=fresh") == 409
    assert await ws_status(cloud, f"{base}?token=fresh") == 401
    async with cloud.app[keys.DB].acquire() as conn:
        await console_tokens.create(conn, hashlib.sha256(b"stale").hexdigest(), "serial", server, "sim1", -1)
    purged = await cloud.app[keys.RETENTION].purge_once()
    assert purged["console_auth_tokens"] == 1


# --------------------------------------------------------------------------- a real guest

def pty_read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"never read {needle!r}; got {seen[-500:]!r}")
        seen += os.read(fd, 4096)
    return seen


async def novalite_console_session(cloud, server_name: str) -> None:
    """`novalite console NAME` on a terminal (a pty): raw mode, typing, Ctrl-] leaves, terminal restored."""
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    env = dict(os.environ, OS_CLIENT_CONFIG_FILE=str(cloud.clouds_yaml()), OS_CLOUD="novalite",
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))  # this checkout's novalite
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "novalite.cli", "--config", str(cloud.workdir / "config.toml"), "console", server_name,
        stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cloud.workdir)
    try:
        await asyncio.to_thread(pty_read_until, master, b"Ctrl-] leaves", 30)
        assert termios.tcgetattr(slave)[3] & termios.ECHO == 0  # raw: the guest echoes, not the terminal
        os.write(master, b"\r")
        await asyncio.to_thread(pty_read_until, master, b"# ", 20)
        os.write(master, b"echo $((6*7))\r")
        await asyncio.to_thread(pty_read_until, master, b"\n42\r", 20)
        os.write(master, b"\x1d")
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)
        os.close(slave)


async def read_until(ws, needle: bytes, timeout: float) -> bytes:
    seen = b""
    async with asyncio.timeout(timeout):
        while needle not in seen:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.BINARY, (msg, seen[-500:])
            seen += msg.data
    return seen


@pytest.mark.qemu
async def test_typing_into_the_guests_shell_through_the_console_url(pg_dsn, test_image):  # noqa: F811
    async with qemu_cloud(pg_dsn, test_image, prefix="nlcon") as cloud:
        server = await boot(cloud, "console-guest", cloud.image_ids["ami"])
        assert (await wait_for_status(cloud, server, {"ACTIVE", "ERROR"}, timeout=120))["status"] == "ACTIVE"
        await wait_console(cloud, server, "NOVALITE-GUEST: console shell: press Enter", timeout=90)
        await other_project(cloud)  # olga, a member of project other
        status, _, _ = await console_url(cloud, server, user="olga", project="other")
        assert status == 404

        status, body, _ = await console_url(cloud, server)
        assert status == 200, body
        answer = body["remote_console"]
        assert (answer["protocol"], answer["type"]) == ("serial", "serial")
        url = answer["url"]
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc, parts.path) == ("ws", f"127.0.0.1:{cloud.config.api.port}",
                                                           "/console/serial")
        token = parse_qs(parts.query)["token"][0]
        assert await tables_containing(cloud, token) == []  # only its hash is stored

        async with cloud.session.ws_connect(url, protocols=("binary",)) as ws:
            assert ws.protocol == "binary"
            await ws.send_bytes(b"\r")
            await read_until(ws, b"# ", timeout=20)  # the shell's prompt
            await ws.send_bytes(b"echo $((6*7))\r")
            out = await read_until(ws, b"\n42\r", timeout=20)
            assert b"echo $((6*7))" in out
        # Single use: the same URL is refused now.
        assert await ws_status(cloud, url) == 401
        # The serial log kept being written beside the session.
        await wait_console(cloud, server, "42", timeout=10)

        await novalite_console_session(cloud, "console-guest")
        # The openstack CLI gets a URL through the same API (the 2.1 action or remote-consoles).
        rc, out, err = await cloud.openstack("console", "url", "show", "--serial", server, "-f", "value",
                                             "-c", "url")
        assert out.strip().startswith(f"ws://127.0.0.1:{cloud.config.api.port}/console/serial?token="), err
        # An expired token is refused even for a real console.
        status, body, _ = await console_url(cloud, server)
        token = parse_qs(urlsplit(body["remote_console"]["url"]).query)["token"][0]
        async with cloud.app[keys.DB].acquire() as conn:
            await conn.execute("UPDATE console_auth_tokens SET expires_at = now() - interval '1 second' "
                               "WHERE token_hash = $1", hashlib.sha256(token.encode()).hexdigest())
        assert await ws_status(cloud, body["remote_console"]["url"]) == 401
        status, _, _ = await cloud.compute("DELETE", f"/servers/{server}")
        assert status == 204
        await wait_for_status(cloud, server, "DELETED", timeout=60)

