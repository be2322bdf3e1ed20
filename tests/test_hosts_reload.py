"""SIGHUP re-reads config.toml's [[hosts]] (#17): an added host starts serving, a removed one stops,
unless instances still live on it (refused, with a log line)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import aiohttp
from conftest import REPO, fresh_database, write_config
from serve_process import ServeProcess, admin_token

sys.path.insert(0, str(REPO / "bench"))
from boot_storm import add_image  # noqa: E402  (the benchmarks' image row)


def sims(*names: str) -> str:
    return "".join(f'[[hosts]]\nname = "{n}"\nsimulate = {{ vcpus = 8, memory_mb = 16384, disk_gb = 200 }}\n\n'
                   for n in names)


async def test_sighup_adds_a_host_and_removes_one_only_once_it_is_empty(pg_dsn, tmp_path):
    dsn = await fresh_database(pg_dsn)
    config = write_config(tmp_path, dsn, hosts=sims("sim1"))
    text = config.read_text()
    port = int(text.split("port = ")[1].split()[0])
    url = f"http://127.0.0.1:{port}/compute/v2.1"
    serve = ServeProcess(config, "--no-test-image", "--clouds-yaml", str(tmp_path / "clouds.yaml"))
    try:
        serve.start()
        await serve.wait_listening(port)
        image = await add_image(dsn)  # a row with no data: enough for simulated hosts
        password = json.loads((tmp_path / "state" / "credentials.json").read_text())["admin"]
        async with aiohttp.ClientSession() as session:
            headers = {"X-Auth-Token": await admin_token(session, f"http://127.0.0.1:{port}", password),
                       "OpenStack-API-Version": "compute latest"}

            async def services() -> dict[str, str]:
                async with session.get(f"{url}/os-services", headers=headers) as r:
                    return {s["host"]: s["state"] for s in (await r.json())["services"]}

            async def until(check, what: str, timeout: float = 20) -> None:
                deadline = time.monotonic() + timeout
                while not await check():
                    assert time.monotonic() < deadline, f"{what}:\n{serve.log.read_text()[-3000:]}"
                    await asyncio.sleep(0.1)

            async def server_status(sid: str) -> str:
                async with session.get(f"{url}/servers/{sid}", headers=headers) as r:
                    return "DELETED" if r.status == 404 else (await r.json())["server"]["status"]

            assert await services() == {"sim1": "up"}
            config.write_text(text.replace(sims("sim1"), sims("sim1", "sim2")))
            serve.proc.send_signal(signal.SIGHUP)
            await until(lambda: _has(services, {"sim1": "up", "sim2": "up"}), "sim2 was not added")

            # The new host takes builds (forced there, as an admin may).
            body = {"server": {"name": "on-sim2", "imageRef": image, "flavorRef": "1", "networks": "none",
                               "availability_zone": "nova:sim2"}}
            async with session.post(f"{url}/servers", json=body, headers=headers) as r:
                assert r.status == 202, await r.text()
                sid = (await r.json())["server"]["id"]
            await until(lambda: _is(server_status(sid), "ACTIVE"), "no build on sim2")

            # Removing it while the server lives there is refused, and it keeps serving.
            config.write_text(text)
            serve.proc.send_signal(signal.SIGHUP)
            await until(lambda: _logged(serve, "host_removal_refused"), "no refusal")
            refused = serve.events("host_removal_refused")[0]
            assert refused["host"] == "sim2" and refused["instances"] == 1
            assert await services() == {"sim1": "up", "sim2": "up"}

            async with session.delete(f"{url}/servers/{sid}", headers=headers) as r:
                assert r.status == 204
            await until(lambda: _is(server_status(sid), "DELETED"), "server not deleted")
            serve.proc.send_signal(signal.SIGHUP)
            await until(lambda: _has(services, {"sim1": "up"}), "sim2 was not removed")
            await until(lambda: _logged(serve, "host_removed"), "no host_removed line")  # logged once stopped
            assert [e["host"] for e in serve.events("host_removed")] == ["sim2"]
        rc, _ = await serve.terminate(30)
        assert rc == 0, serve.log.read_text()[-3000:]
    finally:
        serve.stop()


async def _has(services, expected: dict[str, str]) -> bool:
    return await services() == expected


async def _is(status, expected: str) -> bool:
    return await status == expected


async def _logged(serve: ServeProcess, event: str) -> bool:
    return bool(serve.events(event))
