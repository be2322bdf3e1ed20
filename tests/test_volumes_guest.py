"""Volumes with a real TCG guest under qemu:///system: a dir pool of qcow2 files.

One guest boots from a volume filled from the test image (vda), with a blank data
volume and a volume made from a snapshot, and lists its disks on the console;
then a volume is hot-plugged and unplugged while it runs, and the delete honours
delete_on_termination. The pool and the network carry a per-test prefix and are
removed at the end.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path

import libvirt
import pytest
from conftest import start_cloud, stop_cloud, wait_for_status
from test_guest_e2e import CACHE, wait_console
from test_volumes import volume_call, wait_volume

from novalite.api import keys
from novalite.image import testimage
from novalite.virt.libvirt.config import LibvirtConfigGuestDisk
from novalite.virt.libvirt.metadata import prune_redirects
from novalite.virt.libvirt.storage import purge_pools

pytestmark = pytest.mark.qemu
GiB = 1024**3


@pytest.fixture(scope="module")
def test_image() -> testimage.TestImage:
    try:
        return testimage.build(CACHE)
    except testimage.BuildError as exc:
        pytest.skip(f"cannot build the test image here: {exc}")


def _cleanup_libvirt(prefix: str, domains: list[str]) -> None:
    conn = libvirt.open("qemu:///system")
    try:
        for dom in conn.listAllDomains(0):
            if dom.UUIDString() in domains:  # a failed test's server
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        purge_pools(conn, prefix)
        for net in conn.listAllNetworks(0):
            if net.name().startswith(prefix):
                if net.isActive():
                    net.destroy()
                net.undefine()
    finally:
        conn.close()


@pytest.fixture
async def volume_guest_cloud(pg_dsn, test_image):
    workdir = Path(tempfile.mkdtemp(prefix="novalite-vol-", dir="/var/tmp"))
    workdir.chmod(0o755)  # qemu runs as its own user
    tag = uuid.uuid4().hex[:6]
    prefix = f"nlvol{tag}-"
    net = 100 + int(tag, 16) % 100
    extra = f"""
[compute]
virt_type = "qemu"

[networking]
libvirt_prefix = "{prefix}"
default_network = "lab"

[volume]
pool_prefix = "{prefix}"
reap_interval = 0.5
detach_timeout = 20

[[networks]]
name = "lab"
cidr = "10.{net}.9.0/24"
"""
    hosts = '[[hosts]]\nname = "local"\nuri = "qemu:///system"\n'
    cloud = await start_cloud(pg_dsn, workdir, extra=extra, hosts=hosts)
    cloud.image_ids = await testimage.upload(test_image, cloud.url, "admin", cloud.creds["admin"])
    try:
        yield cloud
    finally:
        async with cloud.app[keys.DB].acquire() as conn:
            domains = [str(r["uuid"]) for r in await conn.fetch("SELECT uuid FROM instances")]
        await stop_cloud(cloud)
        await asyncio.to_thread(_cleanup_libvirt, prefix, domains)
        # The network's metadata redirect names its bridge, which the next network may reuse.
        prune_redirects(prefix, set())


async def test_guest_runs_from_a_volume_lists_its_volumes_and_takes_hotplug(volume_guest_cloud):
    cloud = volume_guest_cloud
    # a 1 GiB volume and a snapshot of it, for a 3 GiB volume made from the snapshot at boot
    status, body, _ = await volume_call(cloud, "POST", "/volumes", json_body={"volume": {"size": 1}})
    assert status == 202, body
    source = body["volume"]["id"]
    await wait_volume(cloud, source, "available")
    status, body, _ = await volume_call(cloud, "POST", "/snapshots", json_body={"snapshot": {"volume_id": source}})
    snap = body["snapshot"]["id"]
    for _ in range(100):
        _, body, _ = await volume_call(cloud, "GET", f"/snapshots/{snap}")
        if body["snapshot"]["status"] == "available":
            break
        await asyncio.sleep(0.1)
    assert body["snapshot"]["status"] == "available", body

    ami = cloud.image_ids["ami"]
    status, body, _ = await cloud.compute("POST", "/servers", version="2.79", json_body={"server": {
        "name": "vol-guest", "imageRef": ami, "flavorRef": "1", "networks": "auto",
        "block_device_mapping_v2": [
            {"boot_index": 0, "uuid": ami, "source_type": "image", "destination_type": "volume",
             "volume_size": 1, "delete_on_termination": True},
            {"source_type": "blank", "destination_type": "volume", "volume_size": 2, "delete_on_termination": True},
            {"uuid": snap, "source_type": "snapshot", "destination_type": "volume", "volume_size": 3},
        ],
    }})
    assert status == 202, body
    sid = body["server"]["id"]
    server = await wait_for_status(cloud, sid, {"ACTIVE", "ERROR"}, timeout=180)
    assert server["status"] == "ACTIVE", server.get("fault")
    root_id, blank_id, snap_vol_id = (a["id"] for a in server["os-extended-volumes:volumes_attached"])

    text = await wait_console(cloud, sid, "NOVALITE-GUEST: init done")
    assert f"NOVALITE-GUEST: disk vda size={1 * GiB}" in text
    assert f"NOVALITE-GUEST: disk vdb size={2 * GiB}" in text
    assert f"NOVALITE-GUEST: disk vdc size={3 * GiB}" in text

    driver = cloud.app[keys.COMPUTES]["local"].driver
    root = await wait_volume(cloud, root_id, "in-use")
    assert root["bootable"] == "true"
    cfg = await driver.get_domain_config(sid)
    disks = {d.target_dev: d.source_path for d in cfg.devices if isinstance(d, LibvirtConfigGuestDisk)}
    pool_dir = Path(cloud.app[keys.VOLUME_API].pool_def("local").target)  # on the host, not under the state dir
    assert disks["vda"] == str(pool_dir / f"volume-{root_id}")  # the guest runs from the volume
    assert disks["vdb"] == str(pool_dir / f"volume-{blank_id}")
    assert disks["vdc"] == str(pool_dir / f"volume-{snap_vol_id}")

    # hot-plug a fourth volume into the running guest, then unplug it
    status, body, _ = await volume_call(cloud, "POST", "/volumes", json_body={"volume": {"size": 1}})
    extra = body["volume"]["id"]
    await wait_volume(cloud, extra, "available")
    status, body, _ = await cloud.compute("POST", f"/servers/{sid}/os-volume_attachments",
                                          json_body={"volumeAttachment": {"volumeId": extra}})
    assert status == 200 and body["volumeAttachment"]["device"] == "/dev/vdd", body
    await wait_volume(cloud, extra, "in-use")
    live = await driver.domain_xml(sid)
    assert f"volume-{extra}" in live and "vdd" in live
    assert f"volume-{extra}" in await driver.domain_xml(sid, inactive=True)
    status, _, _ = await cloud.compute("DELETE", f"/servers/{sid}/os-volume_attachments/{extra}")
    assert status == 202
    await wait_volume(cloud, extra, "available", timeout=40)
    assert f"volume-{extra}" not in await driver.domain_xml(sid)
    assert f"volume-{extra}" not in await driver.domain_xml(sid, inactive=True)

    # delete: delete_on_termination volumes go with the server, the snapshot's volume stays
    status, _, _ = await cloud.compute("DELETE", f"/servers/{sid}")
    assert status == 204
    await wait_for_status(cloud, sid, "DELETED", timeout=60)
    await wait_volume(cloud, root_id, "deleted")
    await wait_volume(cloud, blank_id, "deleted")
    await wait_volume(cloud, snap_vol_id, "available")
    assert not (pool_dir / f"volume-{root_id}").exists() and not (pool_dir / f"volume-{blank_id}").exists()
    assert (pool_dir / f"volume-{snap_vol_id}").exists()
