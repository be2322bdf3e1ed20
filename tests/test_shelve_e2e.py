"""Shelve with a real TCG guest: what the guest wrote to its disk comes back after an offload and an unshelve.

The test guest writes a marker at the start of its root disk when user_data asks
("write-disk-marker <word>") and prints any marker it finds there at boot, before
it looks at user_data (novalite/image/testimage.py): after the unshelve, the
marker printed at boot can only come from the shelved image.
"""

from __future__ import annotations

import base64
import uuid

import libvirt
import pytest
from conftest import wait_for_status
from test_guest_e2e import guest_cloud, test_image, wait_console  # noqa: F401, F811  (fixtures)
from test_snapshot import wait_image
from test_snapshot_e2e import image_head

from novalite.api import keys

pytestmark = pytest.mark.qemu


async def test_shelve_offload_and_unshelve_keep_the_guests_disk(guest_cloud):  # noqa: F811
    cloud = guest_cloud
    sid = None
    try:
        marker = f"shelf-{uuid.uuid4().hex[:8]}"
        user_data = base64.b64encode(f"write-disk-marker {marker}\n".encode()).decode()
        status, body, _ = await cloud.compute("POST", "/servers", version="2.37", json_body={"server": {
            "name": "shelf", "imageRef": cloud.image_ids["qcow2"], "flavorRef": "1", "config_drive": True,
            "user_data": user_data, "networks": "none"}})
        assert status == 202, body
        sid = body["server"]["id"]
        server = await wait_for_status(cloud, sid, {"ACTIVE", "ERROR"}, timeout=180)
        assert server["status"] == "ACTIVE", server.get("fault")
        await wait_console(cloud, sid, f"NOVALITE-GUEST: disk_marker_written={marker}")

        status, _, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body={"shelve": None})
        assert status == 202
        offloaded = await wait_for_status(cloud, sid, {"SHELVED_OFFLOADED", "ERROR"}, user="admin", timeout=240)
        assert offloaded["status"] == "SHELVED_OFFLOADED", offloaded.get("fault")
        assert offloaded["OS-EXT-SRV-ATTR:host"] is None
        conn = libvirt.open("qemu:///system")
        try:
            with pytest.raises(libvirt.libvirtError):
                conn.lookupByUUIDString(sid)  # the domain is gone from the host
        finally:
            conn.close()
        assert await cloud.app[keys.HOSTS]["local"].store.names(sid) == []  # no volume left on the host
        _, images, _ = await cloud.request("GET", "/image/v2/images?name=shelf-shelved")
        [image] = images["images"]
        assert image["disk_format"] == "qcow2" and image["size"] > 0
        assert image_head(cloud.config.state_dir / "images" / image["id"]).startswith(
            f"NOVALITE-MARKER:{marker}\n".encode())

        status, _, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body={"unshelve": None})
        assert status == 202
        back = await wait_for_status(cloud, sid, {"ACTIVE", "ERROR"}, user="admin", timeout=180)
        assert back["status"] == "ACTIVE", back.get("fault")
        assert back["OS-EXT-SRV-ATTR:host"] == "local"
        await wait_console(cloud, sid, f"NOVALITE-GUEST: disk_marker={marker}")
        await wait_image(cloud, image["id"], status="deleted")
    finally:
        if sid is not None:
            await cloud.compute("DELETE", f"/servers/{sid}")
            await wait_for_status(cloud, sid, "DELETED", timeout=60)
