"""The first start talks: the test image is listed at once (queued/saving → active) while it is
built, and the "ready: try ..." line comes only when it is active, with a command that runs."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time

import aiohttp
from conftest import fresh_database, write_config
from serve_process import ServeProcess, admin_token
from test_shutdown import SIMS

from novalite.api import keys
from novalite.image import testimage
from novalite.image.testimage import NAMES

CACHE = "/var/tmp/novalite-testimage-cache"  # the test image cache other tests build into


async def test_first_start_lists_the_test_image_coming_and_then_says_ready(pg_dsn, tmp_path):
    config = write_config(tmp_path, await fresh_database(pg_dsn), hosts=SIMS)
    port = int(config.read_text().split("port = ")[1].split()[0])
    url = f"http://127.0.0.1:{port}"
    (tmp_path / "state" / "cache").mkdir(parents=True)
    (tmp_path / "state" / "cache" / "testimage").symlink_to(CACHE)
    serve = ServeProcess(config, "--clouds-yaml", str(tmp_path / "clouds.yaml"))
    seen: list[tuple[str, str]] = []  # (status, ready line printed yet?) of the test image, as polled
    try:
        serve.start()
        await serve.wait_listening(port)
        password = json.loads((tmp_path / "state" / "credentials.json").read_text())["admin"]
        async with aiohttp.ClientSession() as session:
            headers = {"X-Auth-Token": await admin_token(session, url, password)}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                async with session.get(f"{url}/image/v2/images", params={"name": NAMES["ami"]},
                                       headers=headers) as r:
                    images = (await r.json())["images"]
                ready = "ready: try" in serve.log.read_text()
                if images:
                    seen.append((images[0]["status"], ready))
                    if images[0]["status"] == "active":
                        break
                await asyncio.sleep(0.02)
        statuses = [s for s, _ in seen]
        assert statuses[-1] == "active", statuses
        assert set(statuses[:-1]) & {"queued", "saving"}, "listed before its data was in"
        assert not any(r for s, r in seen if s != "active"), "no ready line before the image is active"
        for _ in range(100):
            text = serve.log.read_text()
            if "ready: try" in text:
                break
            await asyncio.sleep(0.05)
        steps = [e["event"] for e in map(json.loads, filter(lambda t: t.startswith("{"), text.splitlines()))]
        assert steps.index("test_image_registered") < steps.index("test_image_building") \
            < steps.index("image_uploading") < steps.index("test_image_active")
        command = re.search(r"^ready: try  (.*server list)$", text, re.MULTILINE).group(1)
        assert f"OS_CLIENT_CONFIG_FILE={tmp_path / 'clouds.yaml'} OS_CLOUD=novalite /" in command
        assert "server create --image novalite-test --flavor m1.tiny --wait demo" in text
        run = subprocess.run(command.replace("server list", "image list -f value -c Name -c Status"),
                             shell=True, capture_output=True, text=True, timeout=120, cwd="/")
        assert run.returncode == 0, run.stderr
        assert f"{NAMES['ami']} active" in run.stdout
    finally:
        serve.stop()


async def test_a_first_start_cut_short_is_redone_at_the_next_start(cloud, tmp_path):
    """The test set a stop left queued (registered, never uploaded) does not count as images:
    the next start removes it and builds the test guest again."""
    cache = cloud.config.state_dir / "cache" / "testimage"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.symlink_to(CACHE)
    status, body, _ = await cloud.request("POST", "/image/v2/images", user="admin",
                                       json_body={"name": NAMES["ami"], "disk_format": "ami",
                                                  "container_format": "ami"})
    assert status == 201 and body["status"] == "queued", body
    ids = await testimage.ensure_uploaded(cloud.config, cloud.app[keys.DB])
    assert ids is not None and body["id"] not in ids.values()
    status, listed, _ = await cloud.request("GET", "/image/v2/images", user="admin")
    by_name = {i["name"]: i["status"] for i in listed["images"]}
    assert by_name[NAMES["ami"]] == "active" and body["id"] not in {i["id"] for i in listed["images"]}
    assert await testimage.ensure_uploaded(cloud.config, cloud.app[keys.DB]) is None  # images now exist
