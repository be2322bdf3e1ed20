"""Rebuild (Nova's ``rebuild`` action) on simulated hosts: states, image rules, what stays and what changes."""

from __future__ import annotations

import asyncio
import base64
import json

from conftest import add_image, wait_for_status
from test_image_visibility import images_of_other

from novalite.api import keys


async def boot(cloud, image: str, **server) -> dict:
    body = {"name": "vm", "imageRef": image, "flavorRef": "1", "networks": "auto", **server}
    status, resp, _ = await cloud.compute("POST", "/servers", json_body={"server": body}, version="2.79")
    assert status == 202, resp
    return await wait_for_status(cloud, resp["server"]["id"], "ACTIVE", user="admin")


async def rebuild(cloud, server_id: str, body: dict, version: str = "2.79", user: str = "demo"):
    return await cloud.compute("POST", f"/servers/{server_id}/action", json_body={"rebuild": body},
                               version=version, user=user)


async def test_rebuild_with_another_image_keeps_id_ports_and_host(cloud):
    first, second = await add_image(cloud, "first"), await add_image(cloud, "second")
    server = await boot(cloud, first, metadata={"a": "1"})
    sid, host = server["id"], server["OS-EXT-SRV-ATTR:host"]
    driver = cloud.app[keys.HOSTS][host].driver
    before = await driver.get_domain_config(sid)
    macs_before = sorted(i.mac for i in before.devices if getattr(i, "mac", None))
    user_data = base64.b64encode(b"#!/bin/sh\necho rebuilt\n").decode()
    status, body, _ = await rebuild(cloud, sid, {"imageRef": second, "name": "renamed", "metadata": {"b": "2"},
                                                 "user_data": user_data, "adminPass": "s3cret-pass"})
    assert status == 202, body
    doc = body["server"]
    assert doc["id"] == sid and doc["adminPass"] == "s3cret-pass" and doc["user_data"] == user_data
    assert doc["status"] == "REBUILD" and doc["OS-EXT-STS:task_state"] == "rebuilding" and doc["progress"] == 0
    assert doc["image"]["id"] == second and doc["name"] == "renamed" and doc["metadata"] == {"b": "2"}
    done = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert done["OS-EXT-SRV-ATTR:host"] == host and done["image"]["id"] == second
    assert done["OS-EXT-STS:task_state"] is None and done["OS-EXT-STS:power_state"] == 1 and done["progress"] == 100
    assert done["addresses"] == server["addresses"]
    after = await driver.get_domain_config(sid)
    assert sorted(i.mac for i in after.devices if getattr(i, "mac", None)) == macs_before
    # The action log and the notifications, as Nova records a rebuild.
    _, actions, _ = await cloud.compute("GET", f"/servers/{sid}/os-instance-actions", version="2.79")
    assert actions["instanceActions"][0]["action"] == "rebuild"
    req = actions["instanceActions"][0]["request_id"]
    _, action, _ = await cloud.compute("GET", f"/servers/{sid}/os-instance-actions/{req}", version="2.79",
                                       user="admin")
    events = {e["event"]: e["result"] for e in action["instanceAction"]["events"]}
    assert events == {"compute_rebuild_instance": "Success"}
    async with cloud.app[keys.DB].acquire() as conn:
        kinds = [r["event_type"] for r in await conn.fetch(
            "SELECT event_type FROM notifications WHERE instance_uuid = $1::uuid AND event_type LIKE "
            "'instance.rebuild.%' ORDER BY id", sid)]
    assert kinds == ["instance.rebuild.start", "instance.rebuild.end"]


async def test_rebuild_of_a_stopped_server_leaves_it_stopped(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    status, _, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body={"os-stop": None})
    assert status == 202
    await wait_for_status(cloud, sid, "SHUTOFF")
    status, body, _ = await rebuild(cloud, sid, {"imageRef": image})
    assert status == 202, body
    done = await wait_for_status(cloud, sid, "SHUTOFF")
    assert done["OS-EXT-STS:task_state"] is None and done["OS-EXT-STS:power_state"] == 4


async def test_rebuild_sees_only_images_the_project_may_see(cloud):
    """Another project's private image is answered as one that does not exist; shared, public, community work."""
    mine = await add_image(cloud)
    images = await images_of_other(cloud)
    sid = (await boot(cloud, mine))["id"]
    for missing in (images["private"], "7d5f0a43-0000-4000-8000-00000000dead"):
        status, body, _ = await rebuild(cloud, sid, {"imageRef": missing})
        assert status == 400 and body["badRequest"]["message"] == "Cannot find image for rebuild", body
    _, server, _ = await cloud.compute("GET", f"/servers/{sid}", version="2.79")
    assert server["server"]["image"]["id"] == mine and server["server"]["status"] == "ACTIVE"
    for kind in ("shared", "public", "community"):
        status, body, _ = await rebuild(cloud, sid, {"imageRef": images[kind]})
        assert status == 202, (kind, body)
        done = await wait_for_status(cloud, sid, "ACTIVE")
        assert done["image"]["id"] == images[kind]
    # A kernel the caller may not see makes the image unusable too.
    with_kernel = await add_image(cloud, "with-kernel", kernel_id=images["private"])
    status, body, _ = await rebuild(cloud, sid, {"imageRef": with_kernel})
    assert status == 400 and body["badRequest"]["message"] == "Cannot find image for rebuild"
    # The admin may rebuild with any image.
    status, body, _ = await rebuild(cloud, sid, {"imageRef": images["private"]}, user="admin")
    assert status == 202, body
    await wait_for_status(cloud, sid, "ACTIVE")


async def test_rebuild_refusals_are_novas(cloud):
    image = await add_image(cloud)
    queued = await add_image(cloud, "queued", status="queued")
    big = await add_image(cloud, "big", min_ram=999_999)
    sid = (await boot(cloud, image))["id"]
    cases = [
        ({"imageRef": queued}, 400, f"Image {queued} is not active."),
        ({"imageRef": big}, 400, "Flavor's memory is too small for requested image."),
        ({"imageRef": image, "key_name": "nope"}, 400, "Invalid key_name provided."),
        ({"imageRef": image, "bogus": 1}, 400, "Additional properties are not allowed ('bogus' was unexpected)"),
        ({}, 400, "'imageRef' is a required property"),
    ]
    for body, code, message in cases:
        status, resp, _ = await rebuild(cloud, sid, body)
        assert status == code and resp["badRequest"]["message"] == message, (body, resp)
    status, resp, _ = await rebuild(cloud, sid, {"imageRef": image, "user_data": "aGk="}, version="2.56")
    assert status == 400 and "'user_data' was unexpected" in resp["badRequest"]["message"]
    status, resp, _ = await rebuild(cloud, sid, {"imageRef": image, "metadata": {str(i): "x" for i in range(200)}})
    assert status == 403 and "metadata items" in resp["forbidden"]["message"]
    # Wrong states: a paused server, a server locked by the admin.
    status, _, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body={"pause": None})
    await wait_for_status(cloud, sid, "PAUSED")
    status, resp, _ = await rebuild(cloud, sid, {"imageRef": image})
    assert status == 409 and resp["conflictingRequest"]["message"] == (
        f"Cannot 'rebuild' instance {sid} while it is in vm_state paused")
    await cloud.compute("POST", f"/servers/{sid}/action", json_body={"unpause": None})
    await wait_for_status(cloud, sid, "ACTIVE")
    status, _, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body={"lock": None}, user="admin")
    assert status == 202
    status, resp, _ = await rebuild(cloud, sid, {"imageRef": image})
    assert status == 409 and resp["conflictingRequest"]["message"] == f"Instance {sid} is locked"
    _, server, _ = await cloud.compute("GET", f"/servers/{sid}", version="2.79")
    assert server["server"]["image"]["id"] == image and server["server"]["OS-EXT-STS:task_state"] is None


async def test_rebuild_and_delete_race_ends_deleted(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    status, _, _ = await rebuild(cloud, sid, {"imageRef": image})
    assert status == 202
    status, _, _ = await cloud.compute("DELETE", f"/servers/{sid}")
    assert status == 204
    await wait_for_status(cloud, sid, "DELETED")
    await asyncio.sleep(0.2)
    async with cloud.app[keys.DB].acquire() as conn:
        row = await conn.fetchrow("SELECT deleted, task_state FROM instances WHERE uuid = $1::uuid", sid)
    assert row["deleted"]


async def test_openstack_cli_rebuilds(cloud):
    first, second = await add_image(cloud, "first"), await add_image(cloud, "second")
    sid = (await boot(cloud, first))["id"]
    _, text, _ = await cloud.openstack("server", "rebuild", "--image", second, "--wait", sid, "-f", "json")
    out = json.loads(text[text.index("{"):])  # --wait prints its progress before the document
    assert out["id"] == sid and out["adminPass"]
    _, server, _ = await cloud.compute("GET", f"/servers/{sid}", version="2.79")
    assert server["server"]["status"] == "ACTIVE" and server["server"]["image"]["id"] == second


async def test_rebuild_disks_keep_the_ephemeral_disk_only_when_asked(tmp_path):
    """preserve_ephemeral: the root is made anew from the image, the ephemeral volume's data stays."""
    import uuid as uuidlib

    from novalite.compute.disks import InstanceStore, prepare_local_disks, qemu_img
    from novalite.virt.driver import StoragePoolSpec
    from novalite.virt.libvirt.driver import LibvirtDriver

    store_dir = tmp_path / "images"
    store_dir.mkdir()
    image = "00000000-0000-4000-8000-000000000003"
    await qemu_img("create", "-q", "-f", "raw", str(store_dir / image), "1M")
    pool = StoragePoolSpec(name=f"rbt{uuidlib.uuid4().hex[:8]}-instances", type="dir", target=str(tmp_path / "pool"))
    uuid = str(uuidlib.uuid4())
    flavor = {"root_gb": 1, "ephemeral_gb": 1, "swap": 0}
    async with LibvirtDriver("qemu:///system", "qemu") as driver:
        store = InstanceStore(driver, pool, False, store_dir, None, tmp_path / "scratch")
        await store.ensure_pool()
        try:
            async def disks(keep: bool) -> None:
                await store.remove(uuid, ["disk"] if keep else ["disk", "disk.eph0"])  # what a rebuild removes
                await prepare_local_disks(store=store, uuid=uuid, image={"id": image, "disk_format": "raw"},
                                          kernel_id="", ramdisk_id="", flavor=flavor, write_files=True,
                                          keep_ephemeral=keep)

            eph = tmp_path / "pool" / f"{uuid}_disk.eph0"
            await disks(keep=False)
            with eph.open("ab") as f:  # data the guest wrote on its ephemeral disk
                f.write(b"guest data")
            await disks(keep=True)
            assert eph.read_bytes().endswith(b"guest data")
            await disks(keep=False)
            assert not eph.read_bytes().endswith(b"guest data")
        finally:
            await store.remove(uuid)
            for name in await driver.list_volumes(pool.name):
                await driver.delete_volume(pool.name, name)
            conn = driver.host.connection()
            sp = conn.storagePoolLookupByName(pool.name)
            sp.destroy()
            sp.undefine()
