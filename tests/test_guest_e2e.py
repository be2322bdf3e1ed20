"""End to end: a real TCG guest under qemu:///system, booted through the API.

The guest (novalite's test image: a distribution kernel and a busybox
initramfs) proves from inside, on its serial console, that the config drive,
user_data, injected files, the admin password (as a hash) and the DHCP lease
arrived. Nothing sends traffic
from the host to the guest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import libvirt
import pycdlib
import pytest
from conftest import start_cloud, stop_cloud, tables_containing

from novalite.api import keys
from novalite.image import testimage
from novalite.virt.libvirt.metadata import prune_redirects
from novalite.virt.libvirt.storage import purge_pools

CACHE = Path(os.environ.get("NOVALITE_TEST_IMAGE_CACHE", "/var/tmp/novalite-testimage-cache"))

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def test_image() -> testimage.TestImage:
    try:
        return testimage.build(CACHE)
    except testimage.BuildError as exc:
        pytest.skip(f"cannot build the test image here: {exc}")


@contextlib.asynccontextmanager
async def qemu_cloud(pg_dsn, test_image, prefix: str = "nle2e", compute: str = "", network: str = "",
                     more_hosts: str = ""):
    """A cloud managing this machine's qemu:///system as host ``local``, the test image uploaded.

    Its domains, networks and pools carry a prefix of their own (other clouds, other test sessions
    may share qemu:///system) and are removed afterwards; ``compute`` adds ``[compute]`` settings,
    ``network`` keys of its network ``lab`` (e.g. ``forward = "nat"``), ``more_hosts`` further
    ``[[hosts]]`` entries (a lab host)."""
    # qemu runs as its own user: the state directory must be traversable (pytest's tmp dirs are 0700).
    workdir = Path(tempfile.mkdtemp(prefix="novalite-e2e-", dir="/var/tmp"))
    workdir.chmod(0o755)
    tag = f"{prefix}{uuid.uuid4().hex[:6]}"
    # A /24 no route of this machine uses yet (other clouds' networks, the host's own).
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    net = next(n for i in range(100) if f"10.{(n := 100 + (int(tag[-6:], 16) + i) % 100)}.7.0/24" not in routes)
    extra = f"""
[compute]
virt_type = "qemu"
# The test guest ignores ACPI: a clean shutdown (a rescue's, a shelve's) would wait out the whole timeout.
shutdown_timeout = 5
instance_name_template = "{tag}-%08x"
{compute}

[networking]
libvirt_prefix = "{tag}-"
default_network = "lab"

[[networks]]
name = "lab"
cidr = "10.{net}.7.0/24"
{network}
"""
    hosts = '[[hosts]]\nname = "local"\nuri = "qemu:///system"\n' + more_hosts
    cloud = await start_cloud(pg_dsn, workdir, extra=extra, hosts=hosts)
    try:
        cloud.image_ids = await testimage.upload(test_image, cloud.url, "admin", cloud.creds["admin"])
        yield cloud
    finally:
        await stop_cloud(cloud)
        conn = libvirt.open("qemu:///system")
        try:
            for dom in conn.listAllDomains():  # what a failed test left running
                if dom.name().startswith(f"{tag}-"):
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()
            for name in conn.listNetworks() + conn.listDefinedNetworks():
                if name.startswith(f"{tag}-"):
                    net_obj = conn.networkLookupByName(name)
                    if net_obj.isActive():
                        net_obj.destroy()
                    net_obj.undefine()
            purge_pools(conn, f"{tag}-")  # the instance and volume pools share the prefix
        finally:
            conn.close()
        prune_redirects(f"{tag}-", set())  # the networks' metadata redirects went with them
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def guest_cloud(pg_dsn, test_image):
    async with qemu_cloud(pg_dsn, test_image) as cloud:
        yield cloud


def libvirt_xml(xml: str):
    from lxml import etree

    return etree.fromstring(xml.encode())


async def console(cloud, server_id: str) -> str:
    status, body, _ = await cloud.compute(
        "POST", f"/servers/{server_id}/action", json_body={"os-getConsoleOutput": {"length": -1}}
    )
    return body["output"] if status == 200 else ""


async def wait_console(cloud, server_id: str, needle: str, timeout: float = 120) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        text = await console(cloud, server_id)
        if needle in text:
            return text
        if loop.time() > deadline:
            raise AssertionError(f"guest never printed {needle!r}; console:\n{text[-3000:]}")
        await asyncio.sleep(1)


async def test_guest_proves_config_drive_user_data_files_and_lease(guest_cloud):
    cloud = guest_cloud
    from conftest import wait_for_status

    status, kp, _ = await cloud.compute("POST", "/os-keypairs", json_body={"keypair": {"name": "k1"}})
    assert status == 200, kp
    user_data = "hello from user data"
    motd = "injected by personality"
    status, body, _ = await cloud.compute(
        "POST",
        "/servers",
        version="2.56",
        json_body={
            "server": {
                "name": "guest-one",
                "imageRef": cloud.image_ids["ami"],
                "flavorRef": "1",
                "key_name": "k1",
                "user_data": base64.b64encode(user_data.encode()).decode(),
                "metadata": {"lab": "e2e"},
                "personality": [{"path": "/etc/motd", "contents": base64.b64encode(motd.encode()).decode()}],
                "config_drive": True,
                "networks": "auto",
            }
        },
    )
    assert status == 202, body
    server_id = body["server"]["id"]
    admin_pass = body["server"]["adminPass"]
    server = await wait_for_status(cloud, server_id, {"ACTIVE", "ERROR"}, timeout=180)
    assert server["status"] == "ACTIVE", server.get("fault")
    (addr,) = server["addresses"]["lab"]
    text = await wait_console(cloud, server_id, "NOVALITE-GUEST: init done")
    # The password the answer showed is the one the guest read from its config drive.
    assert f"NOVALITE-GUEST: admin_pass_sha256={hashlib.sha256(admin_pass.encode()).hexdigest()}" in text
    assert admin_pass not in text
    assert await tables_containing(cloud, admin_pass) == []
    assert f"NOVALITE-GUEST: uuid={server_id}" in text
    assert "NOVALITE-GUEST: hostname=guest-one" in text
    assert f"NOVALITE-GUEST: user_data={user_data}" in text
    assert f"NOVALITE-GUEST: file /etc/motd={motd}" in text
    assert '"k1"' in text  # public_keys from the config drive
    lease = re.search(r"NOVALITE-GUEST: lease ip=(\S+) mac=(\S+)", text)
    assert lease, text[-2000:]
    assert lease.group(1) == addr["addr"]
    assert lease.group(2).lower() == addr["OS-EXT-IPS-MAC:mac_addr"]
    _, tail, _ = await cloud.compute(
        "POST", f"/servers/{server_id}/action", json_body={"os-getConsoleOutput": {"length": 3}}
    )
    assert len(tail["output"].splitlines()) <= 3

    # Everything of the guest is a volume of the host's instance pool; its domain names no path of
    # novalite's state directory (the same code serves a host on another machine).
    store = cloud.app[keys.HOSTS]["local"].store
    xml = await store.driver.domain_xml(server_id)
    assert str(cloud.config.state_dir) not in xml and str(cloud.config.state_dir.resolve()) not in xml
    conn = libvirt.open("qemu:///system")
    try:
        pool = conn.storagePoolLookupByName(store.pool.name)
        pool.refresh(0)
        volumes = {v.path(): v.name() for v in pool.listAllVolumes(0)}
        dom = libvirt_xml(xml)
        sources = [d.get("file") for d in dom.findall("devices/disk/source")]
        assert sources and all(src in volumes for src in sources), (sources, volumes)
        assert dom.find("devices/serial/log").get("file") in volumes  # the console log too
        assert {f"{server_id}_disk", f"{server_id}_disk.config", f"{server_id}_console.log"} <= set(volumes.values())
    finally:
        conn.close()
    config_drive = Path(tempfile.mkdtemp()) / "disk.config"
    await store.driver.download_volume(store.pool.name, store.volume(server_id, "disk.config"), config_drive)
    iso = pycdlib.PyCdlib()
    iso.open(str(config_drive))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path="/openstack/latest/meta_data.json")
    finally:
        iso.close()
        shutil.rmtree(config_drive.parent)
    assert json.loads(out.getvalue())["admin_pass"] == admin_pass
    network_api = cloud.app[keys.NETWORK_API]
    status, _, _ = await cloud.compute("DELETE", f"/servers/{server_id}")
    assert status == 204
    await wait_for_status(cloud, server_id, "DELETED", timeout=60)
    assert server_id not in await cloud.app[keys.COMPUTES]["local"].driver.list_instance_uuids()
    assert await store.names(server_id) == []  # delete leaves no volume behind
    assert await network_api.ports_for_instance(server_id) == []
    conn = libvirt.open("qemu:///system")
    try:
        xml = conn.networkLookupByName(f"{cloud.config.networking.libvirt_prefix}lab").XMLDesc()
    finally:
        conn.close()
    assert addr["OS-EXT-IPS-MAC:mac_addr"] not in xml


async def test_rebuild_gives_the_guest_a_new_config_drive_and_keeps_its_port(guest_cloud):
    """A real guest rebuilt (2.57 user_data): it boots again and prints the new user data; same lease."""
    cloud = guest_cloud
    from conftest import wait_for_status

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    status, body, _ = await cloud.compute("POST", "/servers", version="2.57", json_body={"server": {
        "name": "rebuilt", "imageRef": cloud.image_ids["ami"], "flavorRef": "1", "config_drive": True,
        "user_data": b64("before rebuild"), "networks": "auto"}})
    assert status == 202, body
    server_id = body["server"]["id"]
    try:
        server = await wait_for_status(cloud, server_id, {"ACTIVE", "ERROR"}, timeout=180)
        assert server["status"] == "ACTIVE", server.get("fault")
        await wait_console(cloud, server_id, "NOVALITE-GUEST: user_data=before rebuild")
        (addr,) = server["addresses"]["lab"]
        status, body, _ = await cloud.compute("POST", f"/servers/{server_id}/action", version="2.57", json_body={
            "rebuild": {"imageRef": cloud.image_ids["ami"], "name": "rebuilt-2", "user_data": b64("after rebuild")}})
        assert status == 202, body
        new_password = body["server"]["adminPass"]
        server = await wait_for_status(cloud, server_id, {"ACTIVE", "ERROR"}, timeout=180)
        assert server["status"] == "ACTIVE", server.get("fault")
        await wait_console(cloud, server_id, "NOVALITE-GUEST: user_data=after rebuild")
        text = await wait_console(cloud, server_id, "NOVALITE-GUEST: init done")
        for _ in range(60):  # the log may still hold the first boot's lines: wait for the second boot's end
            text = text[text.index("NOVALITE-GUEST: user_data=after rebuild"):]
            if "NOVALITE-GUEST: init done" in text:
                break
            await asyncio.sleep(1)
            text = await console(cloud, server_id)
        lease = re.findall(r"NOVALITE-GUEST: lease ip=(\S+) mac=(\S+)", text)
        assert lease and lease[-1][0] == addr["addr"] and lease[-1][1].lower() == addr["OS-EXT-IPS-MAC:mac_addr"]
        assert server["addresses"]["lab"] == [addr]
        # The rebuild's new admin password is the one on the new config drive, and in no table.
        full = await console(cloud, server_id)  # the first boot had another password: its hash differs
        assert f"admin_pass_sha256={hashlib.sha256(new_password.encode()).hexdigest()}" in full
        assert await tables_containing(cloud, new_password) == []
    finally:
        status, _, _ = await cloud.compute("DELETE", f"/servers/{server_id}")
        assert status == 204
        await wait_for_status(cloud, server_id, "DELETED", timeout=60)


async def test_rescue_boots_the_rescue_disk_with_the_own_disk_second_and_unrescue_boots_the_own_disk(guest_cloud):
    """A real guest rescued: it boots again from a fresh rescue disk (vda, the image's 1 MiB) with its own
    root disk as vdb and the rescue password on the rescue config drive; unrescued, it boots its own disk."""
    cloud = guest_cloud
    from conftest import wait_for_status

    status, body, _ = await cloud.compute("POST", "/servers", version="2.79", json_body={"server": {
        "name": "rescued", "imageRef": cloud.image_ids["ami"], "flavorRef": "1", "config_drive": True,
        "networks": "auto"}})
    assert status == 202, body
    server_id = body["server"]["id"]
    store = cloud.app[keys.HOSTS]["local"].store  # the host's instance pool

    async def rescue_volumes() -> list[str]:
        return sorted(n for n in await store.names(server_id) if n.endswith(".rescue"))

    root_bytes = 1024**3  # flavor 1's root disk
    try:
        server = await wait_for_status(cloud, server_id, {"ACTIVE", "ERROR"}, timeout=180)
        assert server["status"] == "ACTIVE", server.get("fault")
        text = await wait_console(cloud, server_id, "NOVALITE-GUEST: init done")
        assert f"disk vda size={root_bytes}" in text and "disk vdb" not in text
        status, body, _ = await cloud.compute("POST", f"/servers/{server_id}/action", version="2.79",
                                              json_body={"rescue": {"adminPass": "Rescue-Pass-42"}})
        assert status == 200 and body == {"adminPass": "Rescue-Pass-42"}, body
        server = await wait_for_status(cloud, server_id, {"RESCUE", "ERROR"}, timeout=180)
        assert server["status"] == "RESCUE", server.get("fault")
        # The rescue domain truncated the console log when it started: what follows is the rescue boot.
        text = await wait_console(cloud, server_id, "NOVALITE-GUEST: init done")
        assert "disk vda size=1048576" in text and f"disk vdb size={root_bytes}" in text, text
        assert f"admin_pass_sha256={hashlib.sha256(b'Rescue-Pass-42').hexdigest()}" in text
        assert await rescue_volumes() == ["disk.config.rescue", "disk.rescue"]  # kernel, ramdisk: the cached images
        assert await tables_containing(cloud, "Rescue-Pass-42") == []
        status, _, _ = await cloud.compute("POST", f"/servers/{server_id}/action", json_body={"unrescue": None})
        assert status == 202
        server = await wait_for_status(cloud, server_id, {"ACTIVE", "ERROR"}, timeout=180)
        assert server["status"] == "ACTIVE", server.get("fault")
        text = await wait_console(cloud, server_id, "NOVALITE-GUEST: init done")
        assert f"disk vda size={root_bytes}" in text and "disk vdb" not in text, text
        assert "admin_pass_sha256=" + hashlib.sha256(b"Rescue-Pass-42").hexdigest() not in text
        assert await rescue_volumes() == []
    finally:
        status, _, _ = await cloud.compute("DELETE", f"/servers/{server_id}")
        assert status == 204
        await wait_for_status(cloud, server_id, "DELETED", timeout=60)
    assert await store.names(server_id) == []
