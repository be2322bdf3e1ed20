"""A real TCG guest on a second host that shares no filesystem with novalite (#17).

The second host is a ``scripts/lab-host.sh`` libvirtd (its own mount namespace, novalite's state
directory hidden from it, reached over qemu+tcp://127.0.0.1). The cloud manages it alone: a
libvirt network's bridge takes its subnet's route on this machine, so the same network cannot
also start on this machine's qemu:///system (they share one network namespace). One guest,
booted onto it as admin with ``--availability-zone nova:HOST``, serves every check: what it
proves on its console (read through the API), a volume attached and detached, its domain XML,
and a delete that leaves nothing on the lab host nor on qemu:///system. Nothing sends traffic
from this machine to the guest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import libvirt
import pytest
from conftest import start_cloud, stop_cloud, wait_for_status
from test_guest_e2e import test_image  # noqa: F401  (the qemu tests' image fixture)
from test_lab_host import LAB_BASE, lab, virsh
from test_volumes import volume_call, wait_volume

from novalite.image import testimage

pytestmark = pytest.mark.qemu

USER_DATA = "w3lg user data line"


def unused_subnet(seed: int) -> str:
    """A /24 no route of this machine uses (other clouds' networks, the host's own)."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    return next(c for i in range(100) if (c := f"10.{100 + (seed + i) % 100}.17.0/24") not in routes)


@pytest.fixture(scope="module")
async def lab_guest(pg_dsn, test_image):  # noqa: F811
    """The lab host, a cloud managing it as host ``lab``, and one guest booted there (its id)."""
    tag = f"w3lg{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="novalite-labguest-", dir="/var/tmp"))
    workdir.chmod(0o755)
    state = workdir / "state"
    state.mkdir()
    uri = await lab("up", tag, str(state))
    extra = f"""
[compute]
virt_type = "qemu"
shutdown_timeout = 5
instance_name_template = "{tag}-%08x"

[networking]
libvirt_prefix = "{tag}-"
default_network = "lab"

[volume]
detach_timeout = 20

[[networks]]
name = "lab"
cidr = "{unused_subnet(int(tag[-6:], 16))}"
"""
    cloud = await start_cloud(pg_dsn, workdir, extra=extra, hosts=f'[[hosts]]\nname = "lab"\nuri = "{uri}"\n')
    try:
        cloud.image_ids = await testimage.upload(test_image, cloud.url, "admin", cloud.creds["admin"])
        started = time.monotonic()
        status, body, _ = await cloud.compute("POST", "/servers", user="admin", version="2.37", json_body={"server": {
            "name": "on-lab", "imageRef": cloud.image_ids["ami"], "flavorRef": "1", "networks": "auto",
            "availability_zone": "nova:lab", "config_drive": True,
            "user_data": base64.b64encode(USER_DATA.encode()).decode()}})
        assert status == 202, body
        sid = body["server"]["id"]
        server = await wait_for_status(cloud, sid, {"ACTIVE", "ERROR"}, user="admin", timeout=120)
        assert server["status"] == "ACTIVE", server.get("fault")
        text = await wait_console(cloud, sid, "NOVALITE-GUEST: init done", timeout=90)
        print(f"first boot on the lab host (image upload included): {time.monotonic() - started:.1f} s")
        cloud.lab = (tag, uri, state, sid, server, text)
        yield cloud
    finally:
        await stop_cloud(cloud)
        await lab("down", tag)
        shutil.rmtree(workdir, ignore_errors=True)
        _purge_local(tag)


def _purge_local(tag: str) -> None:
    """What a failed run could have left on this machine's qemu:///system (nothing, when it passes)."""
    conn = libvirt.open("qemu:///system")
    try:
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(tag):
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                dom.undefine()
    finally:
        conn.close()


def _admin(cloud, method: str, path: str, **kwargs):
    return cloud.compute(method, path, user="admin", **kwargs)


async def wait_console(cloud, sid: str, needle: str, timeout: float) -> str:
    """The admin's server's console (os-getConsoleOutput) once it shows ``needle``."""
    deadline = time.monotonic() + timeout
    while True:
        status, body, _ = await _admin(cloud, "POST", f"/servers/{sid}/action",
                                       json_body={"os-getConsoleOutput": {"length": -1}})
        text = body["output"] if status == 200 else ""
        if needle in text:
            return text
        assert time.monotonic() < deadline, f"guest never printed {needle!r}; console:\n{text[-3000:]}"
        await asyncio.sleep(0.5)


async def test_guest_on_the_lab_host_shows_config_drive_user_data_and_lease(lab_guest):
    cloud = lab_guest
    _, _, _, sid, server, text = cloud.lab
    assert server["OS-EXT-SRV-ATTR:host"] == "lab"
    assert "NOVALITE-GUEST: config_drive=" in text and "config_drive=none" not in text
    assert f"NOVALITE-GUEST: uuid={sid}" in text
    assert f"NOVALITE-GUEST: user_data={USER_DATA}" in text
    (addr,) = server["addresses"]["lab"]
    assert f"NOVALITE-GUEST: lease ip={addr['addr']} mac={addr['OS-EXT-IPS-MAC:mac_addr']}" in text


async def test_domain_on_the_lab_host_names_no_path_of_novalites_state_dir(lab_guest):
    tag, uri, state, sid, _, _ = lab_guest.lab
    xml = await asyncio.to_thread(virsh, uri, "dumpxml", sid)
    assert "<source file=" in xml and str(state) not in xml and str(LAB_BASE) not in xml


async def test_volume_from_an_image_attaches_to_the_lab_guest_and_detaches(lab_guest):
    """The volume is made from an image on the lab host itself (a copy of its cached image volume)."""
    cloud = lab_guest
    tag, uri, _, sid, _, _ = cloud.lab
    status, body, _ = await volume_call(cloud, "POST", "/volumes", user="admin", json_body={"volume": {
        "size": 1, "imageRef": cloud.image_ids["qcow2"]}})
    assert status == 202, body
    vid = body["volume"]["id"]
    assert (await wait_volume(cloud, vid, {"available", "error"}, user="admin"))["status"] == "available"
    info = await asyncio.to_thread(virsh, uri, "vol-info", "--bytes", f"volume-{vid}", f"{tag}-lab")
    assert "Capacity: 1073741824 bytes" in " ".join(info.split()), info
    status, body, _ = await _admin(cloud, "POST", f"/servers/{sid}/os-volume_attachments",
                                   json_body={"volumeAttachment": {"volumeId": vid}})
    assert status == 200 and body["volumeAttachment"]["device"] == "/dev/vdb", body
    await wait_volume(cloud, vid, "in-use", user="admin")
    assert f"volume-{vid}" in await asyncio.to_thread(virsh, uri, "dumpxml", sid)
    await wait_console(cloud, sid, "NOVALITE-GUEST: disks now: vda vdb", timeout=30)
    status, _, _ = await _admin(cloud, "DELETE", f"/servers/{sid}/os-volume_attachments/{vid}")
    assert status == 202
    await wait_volume(cloud, vid, "available", timeout=40, user="admin")
    assert f"volume-{vid}" not in await asyncio.to_thread(virsh, uri, "dumpxml", sid)
    status, _, _ = await volume_call(cloud, "DELETE", f"/volumes/{vid}", user="admin")
    assert status == 202
    await wait_volume(cloud, vid, "deleted", user="admin")


async def test_delete_leaves_nothing_on_either_host(lab_guest):
    cloud = lab_guest
    tag, uri, _, sid, server, _ = cloud.lab
    (addr,) = server["addresses"]["lab"]
    mac = addr["OS-EXT-IPS-MAC:mac_addr"]
    network = f"{tag}-lab"
    assert mac in await asyncio.to_thread(virsh, uri, "net-dumpxml", network)
    status, _, _ = await _admin(cloud, "DELETE", f"/servers/{sid}")
    assert status == 204
    await wait_for_status(cloud, sid, "DELETED", user="admin", timeout=60)
    # The lab host: no domain, no volume of the server (its cached images stay, a cache), no DHCP entry.
    assert sid not in await asyncio.to_thread(virsh, uri, "list", "--all", "--uuid")
    pools = (await asyncio.to_thread(virsh, uri, "pool-list", "--name")).split()
    assert pools and all(p.startswith(tag) for p in pools)
    for pool in pools:
        volumes = await asyncio.to_thread(virsh, uri, "vol-list", pool)
        assert sid not in volumes and "volume-" not in volumes, volumes
    assert mac not in await asyncio.to_thread(virsh, uri, "net-dumpxml", network)
    # This machine's qemu:///system never had any of it.
    local = await asyncio.to_thread(virsh, "qemu:///system", "list", "--all", "--name")
    assert tag not in local and tag not in await asyncio.to_thread(virsh, "qemu:///system", "pool-list", "--all")
