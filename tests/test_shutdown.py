"""SIGTERM: the listener closes, accepted builds finish within [api] shutdown_timeout, libvirt and
Postgres close, exit 0; the next start has nothing to recover. systemd hears READY=1 and STOPPING=1."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

import aiohttp
import asyncpg
from conftest import fresh_database, write_config
from serve_process import ServeProcess, admin_token

from novalite import sdnotify

SIMS = "".join(f'[[hosts]]\nname = "sim{i}"\nsimulate = {{ vcpus = 8, memory_mb = 16384, disk_gb = 200 }}\n\n'
               for i in (1, 2))
EXTRA = """
[compute]
drill_stage_delays = { networking = 0.5, spawning = 1.5 }
max_concurrent_builds = 3
"""
SHUTDOWN_TIMEOUT = 20
BURST = 8


async def test_sigterm_during_a_burst_finishes_the_builds_and_leaves_nothing_to_recover(pg_dsn, tmp_path):
    dsn = await fresh_database(pg_dsn)
    config = write_config(tmp_path, dsn, EXTRA, SIMS)
    port = int(config.read_text().split("port = ")[1].split()[0])
    url = f"http://127.0.0.1:{port}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = f"@novalite-test-{uuid.uuid4().hex[:8]}"
    notify.bind("\0" + address[1:])
    notify.setblocking(False)
    serve = ServeProcess(config, "--no-test-image", "--clouds-yaml", str(tmp_path / "clouds.yaml"),
                         NOTIFY_SOCKET=address, NOVALITE_API__SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT))
    loop = asyncio.get_running_loop()
    try:
        serve.start()
        ready = (await asyncio.wait_for(loop.sock_recv(notify, 4096), 60)).decode()
        assert ready.splitlines() == ["READY=1", f"STATUS=serving on {url}"]
        image = str(uuid.uuid4())
        conn = await asyncpg.connect(dsn)
        await conn.execute(
            """INSERT INTO images (id, name, owner, status, visibility, disk_format, container_format, size,
                                   min_ram, min_disk, properties)
               VALUES ($1, 'shutdown-image', NULL, 'active', 'public', 'qcow2', 'bare', 1048576, 0, 0, '{}')""",
            uuid.UUID(image))
        await conn.close()
        password = json.loads((tmp_path / "state" / "credentials.json").read_text())["admin"]
        async with aiohttp.ClientSession() as session:
            headers = {"X-Auth-Token": await admin_token(session, url, password),
                       "OpenStack-API-Version": "compute latest"}
            body = {"server": {"name": "burst", "imageRef": image, "flavorRef": "1", "networks": "none",
                               "min_count": BURST, "return_reservation_id": True}}
            async with session.post(f"{url}/compute/v2.1/servers", json=body, headers=headers) as r:
                assert r.status == 202, await r.text()
                reservation = (await r.json())["reservation_id"]
            async with session.get(f"{url}/compute/v2.1/servers/detail",
                                   params={"reservation_id": reservation}, headers=headers) as r:
                told = {s["id"] for s in (await r.json())["servers"]}
            assert len(told) == BURST
            # Some building, some still waiting for a build slot, when the signal comes.
            while True:
                async with session.get(f"{url}/compute/v2.1/servers/detail", headers=headers) as r:
                    tasks = [s["OS-EXT-STS:task_state"] for s in (await r.json())["servers"]]
                if "spawning" in tasks:
                    break
                await asyncio.sleep(0.05)
            assert "scheduling" in tasks or None in tasks or "networking" in tasks

            rc, took = await serve.terminate(SHUTDOWN_TIMEOUT + 15)
            stopping = (await asyncio.wait_for(loop.sock_recv(notify, 4096), 5)).decode()
            assert stopping.splitlines()[0] == "STOPPING=1"
            assert rc == 0, serve.log.read_text()[-3000:]
            assert took < SHUTDOWN_TIMEOUT + 10
            assert serve.events("shutdown_waiting"), "it says what it waits for"
            assert serve.events("shutdown_drained")
            assert serve.events("libvirt_closed") and serve.events("postgres_closed")

            serve.start()
            await serve.wait_listening(port)
            await serve.wait_event("hosts_ready", 2)  # recovery runs while the API already serves
            assert [e["to_redo"] for e in serve.events("recovery_done")] == [0, 0]
            headers["X-Auth-Token"] = await admin_token(session, url, password)
            async with session.get(f"{url}/compute/v2.1/servers/detail", headers=headers) as r:
                servers = {s["id"]: s for s in (await r.json())["servers"]}
            assert set(servers) == told, "none lost, none extra"
            assert {s["status"] for s in servers.values()} == {"ACTIVE"}
            assert {s["OS-EXT-STS:task_state"] for s in servers.values()} == {None}
            rc, _ = await serve.terminate(SHUTDOWN_TIMEOUT + 15)
            assert rc == 0
    finally:
        serve.stop()
        notify.close()


def test_notify_reaches_a_path_socket_and_is_silent_without_one(tmp_path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert sdnotify.notify("READY=1", "STATUS=two\nlines", environ={"NOTIFY_SOCKET": str(path)})
        assert sock.recv(4096) == b"READY=1\nSTATUS=two lines"
    assert not sdnotify.notify("READY=1", environ={})
    assert not sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
