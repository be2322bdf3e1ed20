"""createImage and createBackup on simulated hosts: the image, the states, the answers, the rotation.

A simulated host writes no disk files, so the image it makes is an empty raw
disk (size 0): the test checks the metadata, states and bookkeeping; the disk
contents are proven with a real guest in test_guest_e2e.py.
"""

from __future__ import annotations

import asyncio
import hashlib

from conftest import add_image, wait_for_status
from test_image_visibility import other_project

from novalite.api import keys

EMPTY_MD5 = hashlib.md5(b"", usedforsecurity=False).hexdigest()


async def boot(cloud, image: str, user: str = "demo", project: str | None = None, **server) -> dict:
    body = {"name": "vm", "imageRef": image, "flavorRef": "1", "networks": "none", **server}
    status, resp, _ = await cloud.compute("POST", "/servers", json_body={"server": body}, version="2.79",
                                          user=user, project=project)
    assert status == 202, resp
    return await wait_for_status(cloud, resp["server"]["id"], "ACTIVE", user="admin")


async def action(cloud, sid: str, name: str, body, version: str = "2.79", user: str = "demo",
                 project: str | None = None):
    return await cloud.compute("POST", f"/servers/{sid}/action", json_body={name: body}, version=version,
                               user=user, project=project)


async def wait_image(cloud, image_id: str, status: str = "active", user: str = "admin", timeout: float = 30) -> dict:
    for _ in range(int(timeout / 0.1)):
        code, body, _ = await cloud.request("GET", f"/image/v2/images/{image_id}", user=user)
        if code == 200 and body["status"] == status:
            return body
        if code == 404 and status == "deleted":
            return {}
        await asyncio.sleep(0.1)
    raise AssertionError(f"image {image_id} never reached {status}: {code} {body}")


async def wait_task_done(cloud, sid: str) -> dict:
    for _ in range(300):
        _, body, _ = await cloud.compute("GET", f"/servers/{sid}", user="admin", version="2.79")
        if body["server"]["OS-EXT-STS:task_state"] is None:
            return body["server"]
        await asyncio.sleep(0.1)
    raise AssertionError(f"server {sid} still has a task")


async def test_create_image_makes_an_active_snapshot_with_novas_properties(cloud):
    source = await add_image(cloud, "base", min_ram=64, min_disk=0, hw_disk_bus="virtio", img_signature="sig")
    server = await boot(cloud, source, metadata={"k": "v"})
    sid = server["id"]
    status, body, headers = await action(cloud, sid, "createImage", {"name": "snap", "metadata": {"color": "blue"}},
                                         version="2.44")
    assert status == 202 and body is None, body
    image_id = headers["Location"].rsplit("/", 1)[-1]
    assert headers["Location"] == f"{cloud.config.public_url}/image/images/{image_id}"
    image = await wait_image(cloud, image_id, user="demo")
    assert image["name"] == "snap" and image["visibility"] == "private"
    assert image["disk_format"] == "raw" and image["container_format"] == "bare"
    assert image["size"] == 0 and image["virtual_size"] == 0 and image["checksum"] == EMPTY_MD5
    assert image["os_hash_algo"] == "sha512" and image["os_hash_value"] == hashlib.sha512(b"").hexdigest()
    assert image["min_ram"] == 64 and image["min_disk"] == 1  # flavor 1's root disk raises min_disk, as in Nova
    assert image["instance_uuid"] == sid and image["image_type"] == "snapshot"
    assert image["base_image_ref"] == source and image["color"] == "blue" and image["hw_disk_bus"] == "virtio"
    assert image["owner_user_name"] == "demo" and image["owner_project_name"] == "demo"
    assert image["image_location"] == "snapshot" and image["owner_id"] == server["tenant_id"]
    assert "img_signature" not in image  # never inherited
    done = await wait_task_done(cloud, sid)
    assert done["status"] == "ACTIVE"
    # The action, its event and the notifications, as Nova records a snapshot.
    _, actions, _ = await cloud.compute("GET", f"/servers/{sid}/os-instance-actions", version="2.79")
    assert actions["instanceActions"][0]["action"] == "createImage"
    req = actions["instanceActions"][0]["request_id"]
    _, one, _ = await cloud.compute("GET", f"/servers/{sid}/os-instance-actions/{req}", version="2.79", user="admin")
    assert {e["event"]: e["result"] for e in one["instanceAction"]["events"]} == {
        "compute_snapshot_instance": "Success"}
    async with cloud.app[keys.DB].acquire() as conn:
        kinds = [r["event_type"] for r in await conn.fetch(
            "SELECT event_type FROM notifications WHERE instance_uuid = $1::uuid AND event_type LIKE "
            "'instance.snapshot.%' ORDER BY id", sid)]
        sysmeta = await conn.fetchval("SELECT system_metadata FROM instances WHERE uuid = $1::uuid", sid)
    assert kinds == ["instance.snapshot.start", "instance.snapshot.end"]
    assert sysmeta == {}
    # A server boots from the snapshot.
    status, resp, _ = await cloud.compute("POST", "/servers", version="2.79", json_body={"server": {
        "name": "copy", "imageRef": image_id, "flavorRef": "1", "networks": "none"}})
    assert status == 202, resp
    await wait_for_status(cloud, resp["server"]["id"], "ACTIVE")


async def test_task_states_go_through_novas_snapshot_steps(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    host = cloud.app[keys.COMPUTES][(await wait_task_done(cloud, sid))["OS-EXT-SRV-ATTR:host"]]
    seen: list[str] = []

    async def record(uuid: str, state: str) -> None:
        seen.append(state)
        async with cloud.app[keys.DB].acquire() as conn:
            image_status = await conn.fetchval(
                "SELECT status FROM images WHERE properties->>'instance_uuid' = $1", uuid)
        seen.append(image_status)
        async with cloud.app[keys.DB].acquire() as conn:
            progress.append(await conn.fetchval("SELECT progress FROM instances WHERE uuid = $1::uuid", uuid))

    progress: list[int] = []
    host.snapshot.after_state = record
    status, body, _ = await action(cloud, sid, "createImage", {"name": "snap"}, version="2.45")
    assert status == 202 and set(body) == {"image_id"}
    await wait_image(cloud, body["image_id"])
    await wait_task_done(cloud, sid)
    assert seen == ["image_snapshot", "queued", "image_pending_upload", "queued", "image_uploading", "queued"]
    assert progress == [0, 33, 66] and (await wait_task_done(cloud, sid))["progress"] == 100


async def test_create_image_refused_in_wrong_states_but_not_when_locked(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    status, _, _ = await action(cloud, sid, "lock", None)
    assert status == 202
    status, body, _ = await action(cloud, sid, "createImage", {"name": "locked-snap"}, version="2.45")
    assert status == 202, body  # Nova does not check the lock for a snapshot
    await wait_image(cloud, body["image_id"])
    await wait_task_done(cloud, sid)
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("UPDATE instances SET task_state = 'rebooting' WHERE uuid = $1::uuid", sid)
    status, body, _ = await action(cloud, sid, "createImage", {"name": "busy"}, user="admin")
    assert status == 409
    assert body["conflictingRequest"]["message"] == (
        f"Cannot 'createImage' instance {sid} while it is in task_state rebooting")
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("UPDATE instances SET task_state = NULL, vm_state = 'error' WHERE uuid = $1::uuid", sid)
        images = await conn.fetchval("SELECT count(*) FROM images WHERE properties->>'instance_uuid' = $1", sid)
    status, body, _ = await action(cloud, sid, "createImage", {"name": "broken"}, user="admin")
    assert status == 409
    assert body["conflictingRequest"]["message"] == f"Cannot 'createImage' instance {sid} while it is in vm_state error"
    async with cloud.app[keys.DB].acquire() as conn:  # nothing half-written
        assert await conn.fetchval(
            "SELECT count(*) FROM images WHERE properties->>'instance_uuid' = $1", sid) == images


async def test_create_image_bad_bodies_are_400(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    for body in ({}, {"name": ""}, {"name": " lead"}, {"name": "x", "extra": 1}, {"name": "x", "metadata": {"": "v"}},
                 {"name": "x", "metadata": {"k": "v" * 256}}, "str"):
        status, resp, _ = await action(cloud, sid, "createImage", body)
        assert status == 400, (body, resp)
    for body in ({"name": "b", "backup_type": "daily"}, {"name": "b", "backup_type": "daily", "rotation": -1},
                 {"name": "b", "backup_type": "daily", "rotation": "x"}, {"name": "b", "rotation": 1}):
        status, resp, _ = await action(cloud, sid, "createBackup", body)
        assert status == 400, (body, resp)


async def test_admin_snapshot_of_another_projects_server_is_shared_with_it(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    await other_project(cloud)
    # The owner's snapshot belongs to the server's project and another project does not see it.
    status, body, _ = await action(cloud, sid, "createImage", {"name": "mine"}, version="2.45")
    assert status == 202
    mine = await wait_image(cloud, body["image_id"], user="demo")
    assert mine["owner"] == (await wait_task_done(cloud, sid))["tenant_id"] and mine["visibility"] == "private"
    status, _, _ = await cloud.request("GET", f"/image/v2/images/{mine['id']}", user="olga", project="other")
    assert status == 404
    status, _, _ = await action(cloud, sid, "createImage", {"name": "x"}, user="olga", project="other")
    assert status == 404  # another project's server is not found
    # An admin's snapshot is the admin project's image, shared with the server's project (as Nova does).
    status, body, _ = await action(cloud, sid, "createImage", {"name": "admins"}, version="2.45", user="admin")
    assert status == 202, body
    admins = await wait_image(cloud, body["image_id"])
    assert admins["visibility"] == "shared" and admins["instance_owner"] == mine["owner"]
    assert admins["owner"] != mine["owner"]
    status, seen, _ = await cloud.request("GET", f"/image/v2/images/{admins['id']}", user="demo")
    assert status == 200 and seen["id"] == admins["id"]


async def test_backup_rotation_keeps_the_newest(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    made: list[str] = []
    for i in range(3):
        status, body, headers = await action(cloud, sid, "createBackup",
                                             {"name": f"b{i}", "backup_type": "daily", "rotation": 2}, version="2.1")
        assert status == 202 and body is None, body
        made.append(headers["Location"].rsplit("/", 1)[-1])
        assert headers["Location"] == f"{cloud.config.public_url}/compute/v2.1/images/{made[-1]}"
        await wait_image(cloud, made[-1])
        await wait_task_done(cloud, sid)
    # A weekly backup is another series: it rotates alone.
    status, body, headers = await action(cloud, sid, "createBackup",
                                         {"name": "w", "backup_type": "weekly", "rotation": "0"})
    assert status == 202 and "Location" not in headers  # Nova: no Location when rotation is 0
    await wait_task_done(cloud, sid)
    async with cloud.app[keys.DB].acquire() as conn:
        rows = await conn.fetch("SELECT id::text, name, properties FROM images "
                                "WHERE properties->>'instance_uuid' = $1 ORDER BY created_at", sid)
    assert [r["name"] for r in rows] == ["b1", "b2"]  # the oldest daily went; the weekly (rotation 0) too
    assert all(r["properties"]["image_type"] == "backup" and r["properties"]["backup_type"] == "daily"
               for r in rows)
    _, actions, _ = await cloud.compute("GET", f"/servers/{sid}/os-instance-actions", version="2.79")
    assert actions["instanceActions"][0]["action"] == "createBackup"


async def test_backup_answers_image_id_from_245(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    status, body, headers = await action(cloud, sid, "createBackup",
                                         {"name": "b", "backup_type": "daily", "rotation": 1}, version="2.45")
    assert status == 202 and set(body) == {"image_id"} and "Location" not in headers
    backup = await wait_image(cloud, body["image_id"], user="demo")
    assert backup["image_type"] == "backup" and backup["backup_type"] == "daily"


async def test_snapshot_of_a_stopped_server_keeps_it_stopped(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    status, _, _ = await action(cloud, sid, "os-stop", None)
    assert status == 202
    await wait_for_status(cloud, sid, "SHUTOFF")
    status, body, _ = await action(cloud, sid, "createImage", {"name": "cold"}, version="2.45")
    assert status == 202
    await wait_image(cloud, body["image_id"])
    done = await wait_task_done(cloud, sid)
    assert done["status"] == "SHUTOFF"


async def test_failed_upload_deletes_the_image_and_keeps_the_server(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    host = cloud.app[keys.COMPUTES][(await wait_task_done(cloud, sid))["OS-EXT-SRV-ATTR:host"]]

    async def fail(uuid: str, state: str) -> None:
        if state == "image_uploading":
            raise RuntimeError("disk on fire")

    host.snapshot.after_state = fail
    status, body, _ = await action(cloud, sid, "createImage", {"name": "doomed"}, version="2.45")
    assert status == 202
    await wait_image(cloud, body["image_id"], status="deleted")
    done = await wait_task_done(cloud, sid)
    assert done["status"] == "ACTIVE" and "fault" not in done  # Nova shows a fault only in ERROR
    async with cloud.app[keys.DB].acquire() as conn:
        fault = await conn.fetchval("SELECT message FROM instance_faults WHERE instance_uuid = $1::uuid", sid)
        assert fault == "RuntimeError: disk on fire"
        kinds = [r["event_type"] for r in await conn.fetch(
            "SELECT event_type FROM notifications WHERE instance_uuid = $1::uuid AND event_type LIKE "
            "'instance.snapshot.%' ORDER BY id", sid)]
    assert kinds == ["instance.snapshot.start", "instance.snapshot.error"]


async def test_recovery_after_the_image_turned_active_keeps_the_image(cloud):
    """A crash between the image going active and the server's last step: the image stays, the task ends."""
    from novalite.compute.image_actions import SYSMETA_IMAGE
    from novalite.db import instances as db

    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    status, body, _ = await action(cloud, sid, "createImage", {"name": "snap"}, version="2.45")
    assert status == 202
    snap = body["image_id"]
    await wait_image(cloud, snap)
    server = await wait_task_done(cloud, sid)
    async with cloud.app[keys.DB].acquire() as conn:  # the row as the cut-off snapshot left it
        inst = await db.compare_and_set(conn, sid, task_state="image_uploading",
                                        system_metadata={SYSMETA_IMAGE: snap})
        request_id = await conn.fetchval(
            "SELECT request_id FROM instance_actions WHERE instance_uuid = $1::uuid ORDER BY id DESC LIMIT 1", sid)
    host = cloud.app[keys.COMPUTES][server["OS-EXT-SRV-ATTR:host"]]
    await host.snapshot.resume(inst, request_id, "interrupted by a restart in task_state image_uploading")
    server = await wait_task_done(cloud, sid)
    assert server["status"] == "ACTIVE"
    assert (await wait_image(cloud, snap))["status"] == "active"
