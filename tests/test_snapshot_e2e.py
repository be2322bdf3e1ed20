"""Snapshot with a real TCG guest: what the guest wrote to its disk is in the image, and a server
booted from the image sees it.

The test guest writes a marker at the start of its root disk when user_data asks
("write-disk-marker <word>") and prints any marker it finds there at boot
(novalite/image/testimage.py).
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import uuid
from pathlib import Path

import libvirt
import pytest
from conftest import wait_for_status
from test_guest_e2e import guest_cloud, test_image, wait_console  # noqa: F401, F811  (fixtures)
from test_snapshot import wait_image, wait_task_done

from novalite.api import keys

pytestmark = pytest.mark.qemu


def image_head(path, nbytes: int = 80) -> bytes:
    """The first bytes of a qcow2 image's guest-visible contents."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "head"
        subprocess.run(["qemu-img", "dd", "-f", "qcow2", "-O", "raw", f"if={path}", f"of={out}", "bs=512",
                        "count=1"], capture_output=True, check=True)
        return out.read_bytes()[:nbytes]


def disk_chain(path) -> list[str]:
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(path)],
                                     capture_output=True, check=True).stdout)
    return [i["filename"] for i in info]


async def test_snapshot_of_a_running_guest_boots_with_its_disk_contents(guest_cloud):  # noqa: F811
    cloud = guest_cloud
    made: list[str] = []
    try:
        marker = f"snap-{uuid.uuid4().hex[:8]}"
        user_data = base64.b64encode(f"write-disk-marker {marker}\n".encode()).decode()
        status, body, _ = await cloud.compute("POST", "/servers", version="2.37", json_body={"server": {
            "name": "source", "imageRef": cloud.image_ids["qcow2"], "flavorRef": "1", "config_drive": True,
            "user_data": user_data, "networks": "none"}})
        assert status == 202, body
        sid = body["server"]["id"]
        made.append(sid)
        server = await wait_for_status(cloud, sid, {"ACTIVE", "ERROR"}, timeout=180)
        assert server["status"] == "ACTIVE", server.get("fault")
        await wait_console(cloud, sid, f"NOVALITE-GUEST: disk_marker_written={marker}")
        disk = Path(cloud.app[keys.HOSTS]["local"].store.path(sid, "disk"))  # this machine's host: a local file
        chain_before = disk_chain(disk)

        # Live: the guest keeps running while its disk is copied.
        status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action", version="2.45",
                                              json_body={"createImage": {"name": "live-snap"}})
        assert status == 202, body
        image = await wait_image(cloud, body["image_id"], timeout=180)
        assert image["disk_format"] == "qcow2" and image["size"] > 0 and image["virtual_size"] >= 64 << 20
        done = await wait_task_done(cloud, sid)
        assert done["status"] == "ACTIVE" and done["OS-EXT-STS:power_state"] == 1
        conn = libvirt.open("qemu:///system")
        try:
            dom = conn.lookupByUUIDString(sid)
            assert dom.isActive() and dom.blockJobInfo("vda", 0) == {}
            assert "snapshot-" not in dom.XMLDesc(0) and "snapshot-" not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        finally:
            conn.close()
        assert disk_chain(disk) == chain_before  # the guest is on its own disk, chain as it was
        assert not list(disk.parent.glob("snapshot-*"))  # no work files left
        store = cloud.config.state_dir / "images" / image["id"]
        assert image_head(store).startswith(f"NOVALITE-MARKER:{marker}\n".encode())
        assert disk_chain(store) == [str(store)]  # one standalone qcow2

        # A new server from the snapshot sees the marker the first guest wrote.
        status, body, _ = await cloud.compute("POST", "/servers", version="2.37", json_body={"server": {
            "name": "copy", "imageRef": image["id"], "flavorRef": "1", "networks": "none"}})
        assert status == 202, body
        made.append(body["server"]["id"])
        copy = await wait_for_status(cloud, body["server"]["id"], {"ACTIVE", "ERROR"}, timeout=180)
        assert copy["status"] == "ACTIVE", copy.get("fault")
        await wait_console(cloud, copy["id"], f"NOVALITE-GUEST: disk_marker={marker}")

        # Stopped: the disk is read directly.
        status, _, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body={"os-stop": None})
        assert status == 202
        await wait_for_status(cloud, sid, "SHUTOFF", timeout=240)  # busybox ignores ACPI: the clean-shutdown wait runs out
        status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action", version="2.45",
                                              json_body={"createImage": {"name": "cold-snap"}})
        assert status == 202, body
        cold = await wait_image(cloud, body["image_id"], timeout=120)
        assert (await wait_task_done(cloud, sid))["status"] == "SHUTOFF"
        assert image_head(cloud.config.state_dir / "images" / cold["id"]).startswith(
            f"NOVALITE-MARKER:{marker}\n".encode())
    finally:
        for server_id in made:
            await cloud.compute("DELETE", f"/servers/{server_id}")
        for server_id in made:
            await wait_for_status(cloud, server_id, "DELETED", timeout=60)
