"""Resize of a real TCG guest on qemu:///system (one host, ``allow_resize_to_same_host``).

The test guest prints its memory (``mem_total_kb``) and its disks' sizes on the serial
console at every boot: after the resize it sees the new flavor's memory and root disk.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from conftest import wait_for_status
from test_guest_e2e import console, qemu_cloud, test_image, wait_console  # noqa: F401  (test_image is a fixture)

from novalite.api import keys

pytestmark = pytest.mark.qemu

BIG = {"name": "resize-big", "ram": 768, "vcpus": 1, "disk": 2, "id": "resize-big"}


@pytest.fixture
async def resize_cloud(pg_dsn, test_image):  # noqa: F811
    async with qemu_cloud(pg_dsn, test_image, "nlrsz", "allow_resize_to_same_host = true") as cloud:
        status, body, _ = await cloud.compute("POST", "/flavors", json_body={"flavor": BIG}, user="admin")
        assert status == 200, body
        yield cloud


def facts(text: str) -> tuple[int, int]:
    """(MemTotal kB, root disk bytes) of the last boot the console shows."""
    last = text[text.rindex("NOVALITE-GUEST: boot kernel="):]
    mem = int(re.search(r"mem_total_kb=(\d+)", last).group(1))
    disk = int(re.search(r"disk vda size=(\d+)", last).group(1))
    return mem, disk


async def boot_count(cloud, sid: str, n: int) -> str:
    """The console once the guest finished its n-th boot (init done printed n times)."""
    for _ in range(180):
        text = await console(cloud, sid)
        if text.count("NOVALITE-GUEST: init done") >= n:
            return text
        await asyncio.sleep(1)
    raise AssertionError(f"guest never finished boot {n}: {text[-3000:]}")


async def boot_tiny(cloud) -> str:
    status, body, _ = await cloud.compute("POST", "/servers", json_body={"server": {
        "name": "resized", "imageRef": cloud.image_ids["ami"], "flavorRef": "1", "networks": "auto"}}, version="2.37")
    assert status == 202, body
    sid = body["server"]["id"]
    server = await wait_for_status(cloud, sid, {"ACTIVE", "ERROR"}, timeout=180)
    assert server["status"] == "ACTIVE", server.get("fault")
    await wait_console(cloud, sid, "NOVALITE-GUEST: init done")
    return sid


async def test_resize_gives_the_guest_more_memory_and_a_bigger_disk(resize_cloud):
    cloud = resize_cloud
    sid = await boot_tiny(cloud)
    try:
        mem_before, disk_before = facts(await console(cloud, sid))
        assert mem_before < 512 * 1024 and disk_before == 1024**3
        status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action",
                                              json_body={"resize": {"flavorRef": BIG["id"]}})
        assert status == 202, body
        server = await wait_for_status(cloud, sid, {"VERIFY_RESIZE", "ERROR", "ACTIVE"}, timeout=180)
        assert server["status"] == "VERIFY_RESIZE", server.get("fault")
        text = await boot_count(cloud, sid, 1)  # the resized guest's console log starts anew
        mem, disk = facts(text)
        assert 512 * 1024 < mem <= 768 * 1024 and disk == 2 * 1024**3
        store = cloud.app[keys.HOSTS]["local"].store
        assert "disk_resize" in await store.names(sid)  # the original kept for a revert until the confirm
        status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body={"confirmResize": None})
        assert status == 204, body
        server = await wait_for_status(cloud, sid, "ACTIVE", timeout=60)
        assert server["flavor"]["original_name"] == "resize-big"
        for _ in range(50):
            if "disk_resize" not in await store.names(sid):
                break
            await asyncio.sleep(0.2)
        names = await store.names(sid)
        assert "disk" in names and not [n for n in names if n.endswith("_resize")], names
    finally:
        await cloud.compute("DELETE", f"/servers/{sid}")
        await wait_for_status(cloud, sid, "DELETED", timeout=60)


async def test_revert_brings_back_the_old_guest(resize_cloud):
    cloud = resize_cloud
    sid = await boot_tiny(cloud)
    try:
        status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action",
                                              json_body={"resize": {"flavorRef": BIG["id"]}})
        assert status == 202, body
        server = await wait_for_status(cloud, sid, {"VERIFY_RESIZE", "ERROR", "ACTIVE"}, timeout=180)
        assert server["status"] == "VERIFY_RESIZE", server.get("fault")
        await boot_count(cloud, sid, 1)
        status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body={"revertResize": None})
        assert status == 202, body
        server = await wait_for_status(cloud, sid, {"ACTIVE", "ERROR"}, timeout=180)
        assert server["status"] == "ACTIVE", server.get("fault")
        assert server["flavor"]["original_name"] == "m1.tiny"
        text = await boot_count(cloud, sid, 1)  # the guest's log starts anew when its domain starts
        mem, disk = facts(text)
        assert mem < 512 * 1024 and disk == 1024**3
        names = await cloud.app[keys.HOSTS]["local"].store.names(sid)
        assert not [n for n in names if n.endswith("_resize")], names
    finally:
        await cloud.compute("DELETE", f"/servers/{sid}")
        await wait_for_status(cloud, sid, "DELETED", timeout=60)
