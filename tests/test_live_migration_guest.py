"""Live migration of one real TCG guest between qemu:///system and a lab host (scripts/lab-host.sh).

The hosts share no storage: the migration is a block migration (the root overlay's top layer,
over a base image each host caches itself, copied by libvirt while the guest runs). The guest
prints its uptime every second on its serial console (a user_data script): read through the
API, it keeps counting across both moves, and it never boots again. A small Cinder volume is
attached first: the guest writes a marker on it once and, every second, reads it back from the
disk (page cache dropped); the marker still read on each destination proves the block migration
copied the volume in full (a volume has no backing chain) and the attachment followed it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import uuid

import pytest
from conftest import wait_for_status
from test_guest_e2e import qemu_cloud, test_image  # noqa: F401  (test_image is a fixture)
from test_lab_host import LAB_BASE, lab, virsh
from test_volumes import volume_call, wait_volume

from novalite.api import keys

pytestmark = pytest.mark.qemu

TICKS = """#!/bin/sh
while true; do
  v=""
  if [ -b /dev/vdb ]; then
    [ -e /tmp/marked ] || { printf VOLMARK42 > /dev/vdb; sync; touch /tmp/marked; }
    sync; echo 3 > /proc/sys/vm/drop_caches
    v=" vol=$(head -c 9 /dev/vdb | tr -cd A-Z0-9)"
  fi
  echo tick $(cut -d' ' -f1 /proc/uptime)$v
  sleep 1
done
"""
TICK = re.compile(r"NOVALITE-GUEST: script: tick (\d+\.\d+)")
MARKED = re.compile(r"NOVALITE-GUEST: script: tick (\d+\.\d+) vol=VOLMARK42")


@pytest.fixture(scope="module")
async def two_hosts(pg_dsn, test_image):  # noqa: F811
    """A cloud on qemu:///system (``local``) and a lab host (``lab``) started for this module.

    Both daemons' bridges are this machine's, so one isolated subnet cannot be on both (their
    DHCP servers would hold the same gateway address): the network is a bridge network on a bare
    bridge of this test's own (the guest needs none; nothing holds an address there)."""
    name = f"w3lm{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True, timeout=30)
    uri = await lab("up", name)
    try:
        async with qemu_cloud(pg_dsn, test_image, "w3lm", network=f'forward = "bridge"\nbridge = "{name}"',
                              more_hosts=f'\n[[hosts]]\nname = "lab"\nuri = "{uri}"\n') as cloud:
            cloud.lab_uri = uri
            cloud.lab_dir = LAB_BASE / name
            yield cloud
    finally:
        await lab("down", name)
        subprocess.run(["ip", "link", "del", name], check=False, timeout=30)


async def boot_ticking(cloud, name: str) -> str:
    """A guest booted onto ``local`` that prints its uptime every second (TICKS); its id."""
    status, body, _ = await cloud.compute("POST", "/servers", user="admin", version="2.37", json_body={"server": {
        "name": name, "imageRef": cloud.image_ids["ami"], "flavorRef": "1", "networks": "none",
        "availability_zone": "nova:local", "config_drive": True,
        "user_data": base64.b64encode(TICKS.encode()).decode()}})
    assert status == 202, body
    return body["server"]["id"]


async def console(cloud, sid: str) -> str:
    """The guest's serial console log through the API (as the admin who booted it onto a host)."""
    status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action", user="admin",
                                          json_body={"os-getConsoleOutput": {"length": -1}})
    return body["output"] if status == 200 else ""


def ticks(text: str) -> list[float]:
    return [float(t) for t in TICK.findall(text)]


async def ticking_past(cloud, sid: str, since: float, wait: int = 30) -> list[float]:
    """The guest's uptime ticks once it printed one later than ``since`` (on its current host's log)."""
    for _ in range(wait):
        seen = ticks(await console(cloud, sid))
        if seen and seen[-1] > since:
            return seen
        await asyncio.sleep(1)
    raise AssertionError(f"the guest stopped ticking after {since}: {(await console(cloud, sid))[-2000:]}\n"
                         f"{await whereabouts(cloud, sid)}")


async def whereabouts(cloud, sid: str) -> str:
    """What a failed wait saw besides the console: the server as the API shows it, the console
    call's answer, the domain's state on each host and the tail of the lab host's qemu logs."""
    _, server, _ = await cloud.compute("GET", f"/servers/{sid}", user="admin")
    status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action", user="admin",
                                          json_body={"os-getConsoleOutput": {"length": 5}})
    server = server.get("server", server)
    shown = {k: v for k, v in server.items() if k.startswith(("OS-", "status")) or k == "fault"}
    lines = [f"server: {json.dumps(shown)}", f"console call: {status} {json.dumps(body)[:300]}"]
    for uri in ("qemu:///system", cloud.lab_uri):
        state = subprocess.run(["virsh", "-q", "-c", uri, "domstate", "--reason", sid], capture_output=True,
                               text=True, timeout=30)
        lines.append(f"{uri}: {(state.stdout or state.stderr).strip()}")
    for log_file in sorted((cloud.lab_dir / "log" / "qemu").glob("*.log")):
        lines.append(f"{log_file.name}: {log_file.read_text(errors='replace')[-1500:]}")
    return "\n".join(lines)


async def migrate(cloud, sid: str, host: str | None, until: frozenset[str] = frozenset({"ACTIVE", "ERROR"})) -> dict:
    status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action", version="2.30", user="admin", json_body={
        "os-migrateLive": {"host": host, "block_migration": "auto"}})
    assert status == 202, body
    for _ in range(240):
        async with cloud.app[keys.DB].acquire() as conn:
            m = await conn.fetchrow("SELECT * FROM migrations WHERE instance_uuid = $1::uuid ORDER BY id DESC LIMIT 1",
                                    uuid.UUID(sid))
        if m["status"] in ("completed", "error", "cancelled"):
            break
        await asyncio.sleep(0.5)
    server = await wait_for_status(cloud, sid, set(until), user="admin", timeout=30)
    assert m["status"] == "completed", (m["status"], server.get("fault"))
    return server


async def marked_past(cloud, sid: str, since: float) -> None:
    """The guest read its volume's marker from the disk at an uptime later than ``since``."""
    for _ in range(30):
        if any(float(t) > since for t in MARKED.findall(await console(cloud, sid))):
            return
        await asyncio.sleep(1)
    raise AssertionError(f"no volume marker read after {since}: {(await console(cloud, sid))[-2000:]}")


async def volume_host(cloud, vid: str) -> str:
    return (await wait_volume(cloud, vid, "in-use", user="admin"))["os-vol-host-attr:host"].split("@")[0]


async def test_a_running_guest_moves_to_the_lab_host_and_back(two_hosts):
    cloud = two_hosts
    sid = await boot_ticking(cloud, "w3lm")
    status, body, _ = await volume_call(cloud, "POST", "/volumes", user="admin", json_body={"volume": {"size": 1}})
    assert status == 202, body
    vid = body["volume"]["id"]
    try:
        server = await wait_for_status(cloud, sid, {"ACTIVE", "ERROR"}, user="admin", timeout=180)
        assert server["status"] == "ACTIVE", server.get("fault")
        await ticking_past(cloud, sid, 0.0, 120)
        await wait_volume(cloud, vid, "available", user="admin")
        status, body, _ = await cloud.compute("POST", f"/servers/{sid}/os-volume_attachments", user="admin",
                                              json_body={"volumeAttachment": {"volumeId": vid}})
        assert status == 200, body
        await marked_past(cloud, sid, 0.0)
        before = (await ticking_past(cloud, sid, 0.0))[-1]

        server = await migrate(cloud, sid, "lab")
        assert server["OS-EXT-SRV-ATTR:host"] == "lab"
        after = await ticking_past(cloud, sid, before)
        await marked_past(cloud, sid, before)  # read from the lab host's copy
        assert await volume_host(cloud, vid) == "lab"
        text = await console(cloud, sid)
        assert "boot kernel=" not in text, text[-2000:]  # the same guest, not a new boot
        assert after[0] > before  # the log there starts with the guest already up
        xml = virsh(cloud.lab_uri, "dumpxml", sid)
        assert str(cloud.config.state_dir) not in xml and "/var/lib/libvirt/images/" in xml
        assert f"volume-{vid}" in xml
        assert subprocess.run(["virsh", "-c", "qemu:///system", "domstate", sid], capture_output=True,
                              timeout=30).returncode != 0  # gone from the source

        server = await migrate(cloud, sid, None)  # the scheduler's only other host
        assert server["OS-EXT-SRV-ATTR:host"] == "local"
        back = await ticking_past(cloud, sid, after[-1])
        assert "boot kernel=" not in await console(cloud, sid) and back[-1] > after[-1]
        await marked_past(cloud, sid, after[-1])
        assert await volume_host(cloud, vid) == "local"
    finally:
        await cloud.compute("DELETE", f"/servers/{sid}", user="admin")
        await wait_for_status(cloud, sid, "DELETED", user="admin", timeout=60)
        await wait_volume(cloud, vid, "available", user="admin")
        await volume_call(cloud, "DELETE", f"/volumes/{vid}", user="admin")
        await wait_volume(cloud, vid, "deleted", user="admin")
    for host in ("local", "lab"):
        manager = cloud.app[keys.COMPUTES][host]
        assert await manager.driver.get_info(sid) is None
        assert await manager.store.names(sid) == []


async def test_a_paused_guest_moves_there_and_back_and_runs_on_when_unpaused(two_hosts):
    """A guest that arrives paused keeps its disks inactive until it first runs, and qemu 7.2
    aborted when such a guest migrated again (the guest was lost: Tempest's paused
    back-and-forth test). It moves there and back paused, then runs on where it was."""
    cloud = two_hosts
    sid = await boot_ticking(cloud, "w5pause")
    paused = frozenset({"PAUSED", "ERROR"})
    try:
        server = await wait_for_status(cloud, sid, {"ACTIVE", "ERROR"}, user="admin", timeout=180)
        assert server["status"] == "ACTIVE", server.get("fault")
        before = (await ticking_past(cloud, sid, 0.0, 120))[-1]
        status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action", user="admin",
                                              json_body={"pause": None})
        assert status == 202, body
        await wait_for_status(cloud, sid, "PAUSED", user="admin", timeout=60)

        server = await migrate(cloud, sid, "lab", paused)
        assert (server["status"], server["OS-EXT-SRV-ATTR:host"]) == ("PAUSED", "lab")
        server = await migrate(cloud, sid, "local", paused)
        assert (server["status"], server["OS-EXT-SRV-ATTR:host"]) == ("PAUSED", "local")

        status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action", user="admin",
                                              json_body={"unpause": None})
        assert status == 202, body
        await wait_for_status(cloud, sid, "ACTIVE", user="admin", timeout=60)
        await ticking_past(cloud, sid, before)
        assert "boot kernel=" not in await console(cloud, sid)  # the same guest, not a new boot
    finally:
        await cloud.compute("DELETE", f"/servers/{sid}", user="admin")
        await wait_for_status(cloud, sid, "DELETED", user="admin", timeout=60)
