"""createImage of a volume-backed server on simulated hosts (Nova's snapshot_volume_backed).

A snapshot per volume (through the Cinder API's view), an image with no data
whose ``block_device_mapping`` maps to them, and a boot from that image whose
volumes are made from the snapshots. The hosts are libvirt test-driver hosts:
their storage pools and volumes are real libvirt objects kept in memory.
"""

from __future__ import annotations

import hashlib
import json

from conftest import add_image, wait_for_status
from test_image_visibility import other_project
from test_snapshot import action, wait_task_done
from test_volumes import boot as boot_bdms
from test_volumes import project_of, volume_call

from novalite.api import keys

EMPTY_MD5 = hashlib.md5(b"", usedforsecurity=False).hexdigest()


async def volume_backed_server(cloud, name: str = "bfv", **image_props) -> tuple[str, list[dict]]:
    """A server booted from a new root volume (from an image) with a second, blank volume."""
    image = await add_image(cloud, kernel_id="", ramdisk_id="", **image_props)
    status, body, _ = await boot_bdms(cloud, [
        {"boot_index": 0, "uuid": image, "source_type": "image", "destination_type": "volume", "volume_size": 1,
         "delete_on_termination": True},
        {"source_type": "blank", "destination_type": "volume", "volume_size": 2, "disk_bus": "virtio"}],
        name=name)
    assert status == 202, body
    sid = body["server"]["id"]
    server = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    attached = server["os-extended-volumes:volumes_attached"]
    assert len(attached) == 2
    return sid, attached


async def snapshots(cloud, user: str = "demo") -> list[dict]:
    status, body, _ = await volume_call(cloud, "GET", "/snapshots/detail", user=user)
    assert status == 200, body
    return body["snapshots"]


async def last_action(cloud, sid: str) -> tuple[dict, dict]:
    _, actions, _ = await cloud.compute("GET", f"/servers/{sid}/os-instance-actions", version="2.79")
    first = actions["instanceActions"][0]
    _, one, _ = await cloud.compute("GET", f"/servers/{sid}/os-instance-actions/{first['request_id']}",
                                    version="2.79", user="admin")
    return first, {e["event"]: e["result"] for e in one["instanceAction"]["events"]}


async def test_volume_backed_snapshot_maps_each_volume_and_boots_from_them(cloud):
    sid, attached = await volume_backed_server(cloud, hw_disk_bus="virtio", img_signature="sig")
    async with cloud.app[keys.DB].acquire() as conn:
        root_volume = await conn.fetchval(
            "SELECT volume_id FROM block_device_mappings WHERE instance_uuid = $1::uuid AND boot_index = 0", sid)
    status, body, headers = await action(cloud, sid, "createImage", {"name": "bfv-snap", "metadata": {"k": "v"}},
                                         version="2.44")
    assert status == 202 and body is None, body
    image_id = headers["Location"].rsplit("/", 1)[-1]
    assert headers["Location"] == f"{cloud.config.public_url}/image/images/{image_id}"

    # The image: active at once, no data, Nova's formats for an empty upload, the mapping.
    status, image, _ = await cloud.request("GET", f"/image/v2/images/{image_id}")
    assert status == 200, image
    assert image["status"] == "active" and image["visibility"] == "private" and image["name"] == "bfv-snap"
    assert image["size"] == 0 and image["disk_format"] == "raw" and image["container_format"] == "bare"
    assert image["checksum"] == EMPTY_MD5 and image["os_hash_value"] == hashlib.sha512(b"").hexdigest()
    assert image["bdm_v2"] == "True" and image["root_device_name"] == "/dev/vda"
    assert image["k"] == "v" and image["hw_disk_bus"] == "virtio" and "img_signature" not in image
    assert image["owner_project_name"] == "demo" and image["owner_user_name"] == "demo"
    for key in ("instance_uuid", "image_type", "user_id"):  # Nova's create_image adds them, not this path
        assert key not in image
    mapping = json.loads(image["block_device_mapping"])
    assert [m["boot_index"] for m in mapping] == [0, None]
    assert all(m["source_type"] == "snapshot" and m["destination_type"] == "volume" and m["volume_id"] is None
               for m in mapping)
    assert [m["device_name"] for m in mapping] == ["/dev/vda", "/dev/vdb"]
    assert [m["volume_size"] for m in mapping] == [1, 2]
    assert [m["delete_on_termination"] for m in mapping] == [True, False]
    assert mapping[1]["disk_bus"] == "virtio"
    assert {"image_id", "no_device", "tag", "guest_format", "encrypted"} <= set(mapping[0])

    # One snapshot per volume, forced while in use, named as Nova names them.
    snaps = {s["id"]: s for s in await snapshots(cloud)}
    assert set(snaps) == {m["snapshot_id"] for m in mapping}
    assert all(s["status"] == "available" and s["name"] == "snapshot for bfv-snap" for s in snaps.values())
    assert {s["volume_id"] for s in snaps.values()} == {a["id"] for a in attached}
    root_snap = mapping[0]["snapshot_id"]
    assert snaps[root_snap]["volume_id"] == root_volume

    # The server never left its state; the action and Nova's api event.
    done = await wait_task_done(cloud, sid)
    assert done["status"] == "ACTIVE"
    first, events = await last_action(cloud, sid)
    assert first["action"] == "createImage" and events == {"api_snapshot_instance": "Success"}

    # Booting from the image: its volumes are made from the snapshots.
    status, resp, _ = await cloud.compute("POST", "/servers", version="2.79", json_body={"server": {
        "name": "copy", "imageRef": image_id, "flavorRef": "1", "networks": "none"}})
    assert status == 202, resp
    copy = await wait_for_status(cloud, resp["server"]["id"], "ACTIVE")
    assert copy["image"]["id"] == image_id
    vols = {}
    for a in copy["os-extended-volumes:volumes_attached"]:
        _, vb, _ = await volume_call(cloud, "GET", f"/volumes/{a['id']}")
        vols[vb["volume"]["attachments"][0]["device"]] = vb["volume"]
    assert vols["/dev/vda"]["snapshot_id"] == root_snap and vols["/dev/vda"]["size"] == 1
    assert vols["/dev/vdb"]["snapshot_id"] == mapping[1]["snapshot_id"] and vols["/dev/vdb"]["size"] == 2
    async with cloud.app[keys.DB].acquire() as conn:
        rows = await conn.fetch("SELECT source_type, boot_index, delete_on_termination FROM block_device_mappings "
                                "WHERE instance_uuid = $1::uuid ORDER BY boot_index NULLS LAST",
                                copy["id"])
    assert [(r["source_type"], r["boot_index"], r["delete_on_termination"]) for r in rows] == [
        ("snapshot", 0, True), ("snapshot", None, False)]

    # Another project does not see the private image, so cannot boot from it.
    await other_project(cloud)
    status, resp, _ = await cloud.compute("POST", "/servers", version="2.79", user="olga", project="other",
                                          json_body={"server": {"name": "theft", "imageRef": image_id,
                                                                "flavorRef": "1", "networks": "none"}})
    assert status == 400 and resp["badRequest"]["message"] == "Can not find requested image", resp

    # Deleting the image leaves the snapshots (Nova leaves them to Cinder).
    status, _, _ = await cloud.request("DELETE", f"/image/v2/images/{image_id}")
    assert status == 204
    assert {s["id"] for s in await snapshots(cloud)} == set(snaps)


async def test_volume_backed_snapshot_answers_image_id_from_245_and_a_snapshot_of_the_copy(cloud):
    sid, _ = await volume_backed_server(cloud)
    status, body, headers = await action(cloud, sid, "createImage", {"name": "one"}, version="2.45")
    assert status == 202 and set(body) == {"image_id"} and "Location" not in headers
    status, resp, _ = await cloud.compute("POST", "/servers", version="2.79", json_body={"server": {
        "name": "copy", "imageRef": body["image_id"], "flavorRef": "1", "networks": "none"}})
    assert status == 202, resp
    copy = await wait_for_status(cloud, resp["server"]["id"], "ACTIVE")
    # The copy is volume-backed too: its snapshot maps its own volumes, not the first image's mapping.
    status, again, _ = await action(cloud, copy["id"], "createImage", {"name": "two"}, version="2.45")
    assert status == 202, again
    _, image, _ = await cloud.request("GET", f"/image/v2/images/{again['image_id']}")
    mapping = json.loads(image["block_device_mapping"])
    volumes = {a["id"] for a in copy["os-extended-volumes:volumes_attached"]}
    by_id = {s["id"]: s for s in await snapshots(cloud)}
    assert {by_id[m["snapshot_id"]]["volume_id"] for m in mapping} == volumes
    assert len(by_id) == 4


async def test_volume_backed_snapshot_over_the_snapshot_quota_is_403_and_makes_nothing(cloud):
    sid, _ = await volume_backed_server(cloud)
    project = await project_of(cloud)
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("INSERT INTO quotas (project_id, resource, hard_limit) VALUES ($1, 'snapshots', 1)",
                           project)
        images = await conn.fetchval("SELECT count(*) FROM images")
    status, body, _ = await action(cloud, sid, "createImage", {"name": "too-many"}, version="2.45")
    assert status == 403, body
    assert body["forbidden"]["message"] == "Quota exceeded for resources: snapshots"
    assert await snapshots(cloud) == []
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM images") == images
    first, _ = await last_action(cloud, sid)
    assert first["action"] == "create"  # refused before the action starts, as in Nova


async def test_a_failed_volume_snapshot_leaves_no_image_no_snapshot_and_the_server_running(cloud):
    sid, attached = await volume_backed_server(cloud)
    async with cloud.app[keys.DB].acquire() as conn:  # the second volume's data cannot be copied
        blank = await conn.fetchval(
            "SELECT volume_id FROM block_device_mappings WHERE instance_uuid = $1::uuid AND boot_index IS NULL "
            "AND NOT deleted", sid)
        real = await conn.fetchval("SELECT vol_name FROM volumes WHERE id = $1::uuid", blank)
        await conn.execute("UPDATE volumes SET vol_name = 'gone' WHERE id = $1::uuid", blank)
        images = await conn.fetchval("SELECT count(*) FROM images")
    try:
        status, body, _ = await action(cloud, sid, "createImage", {"name": "doomed"}, version="2.45")
    finally:
        async with cloud.app[keys.DB].acquire() as conn:
            await conn.execute("UPDATE volumes SET vol_name = $2 WHERE id = $1::uuid", blank, real)
    assert status == 400, body
    assert body["badRequest"]["message"].startswith(f"Failed to snapshot the volumes of instance {sid}: ")
    await cloud.app[keys.VOLUME_API].wait_idle()
    assert await snapshots(cloud) == []  # the root volume's snapshot, made first, is gone again
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM images") == images
    server = await wait_task_done(cloud, sid)
    assert server["status"] == "ACTIVE"
    first, events = await last_action(cloud, sid)
    assert first["action"] == "createImage" and events == {"api_snapshot_instance": "Error"}


async def test_a_required_quiesce_fails_without_a_guest_agent(cloud):
    sid, _ = await volume_backed_server(cloud, os_require_quiesce="yes")
    status, body, _ = await action(cloud, sid, "createImage", {"name": "frozen"}, version="2.45")
    assert status == 400 and body["badRequest"]["message"] == "QEMU guest agent is not enabled", body
    assert await snapshots(cloud) == []
    # A stopped guest needs no quiesce.
    assert (await action(cloud, sid, "os-stop", None))[0] == 202
    await wait_for_status(cloud, sid, "SHUTOFF", user="admin")
    status, body, _ = await action(cloud, sid, "createImage", {"name": "cold"}, version="2.45")
    assert status == 202, body
    assert len(await snapshots(cloud)) == 2


async def test_openstack_cli_snapshots_a_volume_backed_server_and_boots_from_the_image(cloud):
    await volume_backed_server(cloud, name="bfv-cli")
    image = await cloud.openstack_json("server", "image", "create", "--name", "cli-snap", "--wait", "bfv-cli")
    assert image["name"] == "cli-snap" and image["status"] == "active"
    snaps = await cloud.openstack_json("volume", "snapshot", "list")
    assert sorted(s["Name"] for s in snaps) == ["snapshot for cli-snap"] * 2
    created = await cloud.openstack_json("server", "create", "--image", "cli-snap", "--flavor", "m1.tiny",
                                         "--nic", "none", "--wait", "from-snap")
    assert created["status"] == "ACTIVE"
    shown = await cloud.openstack_json("server", "show", "from-snap")
    assert len(shown["volumes_attached"]) == 2
