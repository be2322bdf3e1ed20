"""shelve, shelveOffload and unshelve on two simulated hosts (zones nova and az2).

A simulated host writes no disk files: the shelved image is an empty raw
image (as test_snapshot.py explains); what the disk carries across a shelve is
proven with a real guest in test_shelve_e2e.py.
"""

from __future__ import annotations

import asyncio

import pytest
from conftest import add_image, start_cloud, stop_cloud, wait_for_status
from test_server_actions import _events, _force, _recover
from test_snapshot import action, wait_image

from novalite.api import keys

HOSTS = (
    '[[hosts]]\nname = "sim1"\nsimulate = { vcpus = 8, memory_mb = 16384, disk_gb = 200 }\n\n'
    '[[hosts]]\nname = "sim2"\navailability_zone = "az2"\n'
    'simulate = { vcpus = 8, memory_mb = 16384, disk_gb = 200 }\n\n'
)


async def _cloud(pg_dsn, tmp_path, offload_time: int):
    return await start_cloud(pg_dsn, tmp_path, extra=f"[compute]\nshelved_offload_time = {offload_time}\n",
                             hosts=HOSTS)


@pytest.fixture
async def cloud(pg_dsn, tmp_path):
    c = await _cloud(pg_dsn, tmp_path, 0)
    yield c
    await stop_cloud(c)


@pytest.fixture
async def kept_cloud(pg_dsn, tmp_path):
    """shelved_offload_time = -1: a shelved server stays on its host until shelveOffload."""
    c = await _cloud(pg_dsn, tmp_path, -1)
    yield c
    await stop_cloud(c)


async def boot(cloud, image: str, name: str = "vm", **server) -> dict:
    body = {"name": name, "imageRef": image, "flavorRef": "1", "networks": "auto", **server}
    status, resp, _ = await cloud.compute("POST", "/servers", json_body={"server": body}, version="2.79")
    assert status == 202, resp
    return await wait_for_status(cloud, resp["server"]["id"], "ACTIVE", user="admin")


async def show(cloud, sid: str) -> dict:
    _, body, _ = await cloud.compute("GET", f"/servers/{sid}", user="admin", version="2.latest")
    return body["server"]


async def row(cloud, sid: str):
    async with cloud.app[keys.DB].acquire() as conn:
        return await conn.fetchrow("SELECT * FROM instances WHERE uuid = $1::uuid", sid)


async def allocations(cloud, sid: str) -> list[str]:
    async with cloud.app[keys.DB].acquire() as conn:
        return [r["host"] for r in await conn.fetch("SELECT host FROM allocations WHERE instance_uuid = $1::uuid", sid)]


async def notifications(cloud, sid: str, prefix: str) -> list[str]:
    async with cloud.app[keys.DB].acquire() as conn:
        return [r["event_type"] for r in await conn.fetch(
            "SELECT event_type FROM notifications WHERE instance_uuid = $1::uuid AND event_type LIKE $2 ORDER BY id",
            sid, prefix + "%")]


async def last_action(cloud, sid: str) -> tuple[str, dict[str, str]]:
    _, actions, _ = await cloud.compute("GET", f"/servers/{sid}/os-instance-actions", version="2.79")
    act = actions["instanceActions"][0]
    _, one, _ = await cloud.compute("GET", f"/servers/{sid}/os-instance-actions/{act['request_id']}",
                                    version="2.79", user="admin")
    return act["action"], {e["event"]: e["result"] for e in one["instanceAction"]["events"]}


async def domains(cloud, sid: str) -> list[str]:
    return [h for h, m in cloud.app[keys.COMPUTES].items() if sid in await m.driver.list_instance_uuids()]


async def shelved_images(cloud, name: str) -> list[dict]:
    _, body, _ = await cloud.request("GET", f"/image/v2/images?name={name}-shelved", user="demo")
    return body["images"]


async def test_shelve_offloads_at_once_and_unshelve_boots_from_the_shelved_image(cloud):
    image = await add_image(cloud)
    server = await boot(cloud, image, name="web")
    sid, host = server["id"], server["OS-EXT-SRV-ATTR:host"]
    seen: list[str] = []

    async def record(uuid: str, state: str) -> None:
        seen.append(state)

    cloud.app[keys.COMPUTES][host].shelve.after_state = record
    status, body, _ = await action(cloud, sid, "shelve", None)
    assert status == 202 and body is None
    done = await wait_for_status(cloud, sid, "SHELVED_OFFLOADED", user="admin")
    assert seen == ["shelving_image_pending_upload", "shelving_image_uploading"]
    assert done["OS-EXT-SRV-ATTR:host"] is None and done["OS-EXT-STS:task_state"] is None
    assert done["OS-EXT-STS:power_state"] == 4 and done["addresses"] == server["addresses"]
    [shelved] = await shelved_images(cloud, "web")
    assert shelved["status"] == "active" and shelved["image_type"] == "snapshot"
    assert shelved["instance_uuid"] == sid and shelved["base_image_ref"] == image
    inst = await row(cloud, sid)
    sysmeta = inst["system_metadata"]
    assert sysmeta["shelved_image_id"] == shelved["id"] and sysmeta["shelved_host"] == host
    assert sysmeta["shelved_at"] and "snapshot_image_id" not in sysmeta
    assert inst["node"] is None and await allocations(cloud, sid) == [] and await domains(cloud, sid) == []
    _, hyp, _ = await cloud.compute("GET", "/os-hypervisors/detail", user="admin", version="2.87")
    assert all(h.get("running_vms", 0) == 0 for h in hyp["hypervisors"])
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ports WHERE device_id = $1 AND host IS NOT NULL", sid) == 0
    assert await last_action(cloud, sid) == ("shelve", {"compute_shelve_instance": "Success"})
    assert await notifications(cloud, sid, "instance.shelve") == [
        "instance.shelve.start", "instance.shelve.end", "instance.shelve_offload.start", "instance.shelve_offload.end"]

    status, body, _ = await action(cloud, sid, "unshelve", None)
    assert status == 202 and body is None
    back = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    new_host = back["OS-EXT-SRV-ATTR:host"]
    assert back["OS-EXT-STS:power_state"] == 1 and back["addresses"] == server["addresses"]
    assert back["image"]["id"] == image  # the server keeps its image; the shelved one is gone
    await wait_image(cloud, shelved["id"], status="deleted")
    inst = await row(cloud, sid)
    assert not {"shelved_at", "shelved_image_id", "shelved_host"} & set(inst["system_metadata"])
    assert inst["system_metadata"]["image_base_image_ref"] == image
    assert await allocations(cloud, sid) == [new_host] and await domains(cloud, sid) == [new_host]
    assert back["OS-EXT-AZ:availability_zone"] == ("az2" if new_host == "sim2" else "nova")
    assert await last_action(cloud, sid) == ("unshelve", {
        "get_image_info": "Success", "schedule_instances": "Success", "compute_unshelve_instance": "Success"})
    assert await notifications(cloud, sid, "instance.unshelve") == ["instance.unshelve.start", "instance.unshelve.end"]


async def test_kept_shelved_server_unshelves_in_place_and_offloads_on_request(kept_cloud):
    cloud = kept_cloud
    image = await add_image(cloud)
    server = await boot(cloud, image, name="kept")
    sid, host = server["id"], server["OS-EXT-SRV-ATTR:host"]
    assert (await action(cloud, sid, "shelve", None))[0] == 202
    shelved = await wait_for_status(cloud, sid, "SHELVED", user="admin")
    await asyncio.sleep(0.2)
    shelved = await show(cloud, sid)
    assert shelved["OS-EXT-SRV-ATTR:host"] == host and shelved["OS-EXT-STS:task_state"] is None
    assert shelved["OS-EXT-STS:power_state"] == 4
    assert await allocations(cloud, sid) == [host] and await domains(cloud, sid) == [host]
    # The power sync leaves a shelved server alone, even one whose domain was started behind its back.
    manager = cloud.app[keys.COMPUTES][host]
    await manager.driver.power_on(sid)
    await manager.power.sync_power_states()
    assert (await show(cloud, sid))["status"] == "SHELVED"
    await manager.driver.power_off(sid, 0)
    await manager.power.sync_power_states()
    # A zone or a host is for an offloaded server only.
    status, body, _ = await action(cloud, sid, "unshelve", {"availability_zone": "az2"}, version="2.77")
    assert status == 409 and body["conflictingRequest"]["message"] == (
        f'Specifying an availability zone or a host when unshelving server "{sid}" with status "shelved" is not '
        "supported. The server status must be SHELVED_OFFLOADED.")
    [image_doc] = await shelved_images(cloud, "kept")
    # Unshelve of a SHELVED server: powered on where it is, the image deleted (Nova's start_instance).
    assert (await action(cloud, sid, "unshelve", None))[0] == 202
    back = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert back["OS-EXT-SRV-ATTR:host"] == host and back["OS-EXT-STS:power_state"] == 1
    await wait_image(cloud, image_doc["id"], status="deleted")
    assert await last_action(cloud, sid) == ("unshelve", {"compute_start_instance": "Success"})
    # Shelve again, then shelveOffload (admin by default).
    assert (await action(cloud, sid, "shelve", None))[0] == 202
    await wait_for_status(cloud, sid, "SHELVED", user="admin")
    await asyncio.sleep(0.1)
    status, _, _ = await action(cloud, sid, "shelveOffload", None)
    assert status == 403
    status, body, _ = await action(cloud, sid, "shelveOffload", None, user="admin")
    assert status == 202 and body is None
    done = await wait_for_status(cloud, sid, "SHELVED_OFFLOADED", user="admin")
    assert done["OS-EXT-SRV-ATTR:host"] is None and await allocations(cloud, sid) == []
    assert await last_action(cloud, sid) == ("shelveOffload", {"compute_shelve_offload_instance": "Success"})
    status, body, _ = await action(cloud, sid, "shelveOffload", None, user="admin")
    assert status == 409 and body["conflictingRequest"]["message"] == (
        f"Cannot 'shelveOffload' instance {sid} while it is in vm_state shelved_offloaded")


async def test_periodic_offload_after_shelved_offload_time(pg_dsn, tmp_path):
    cloud = await _cloud(pg_dsn, tmp_path, 1)
    try:
        image = await add_image(cloud)
        sid = (await boot(cloud, image))["id"]
        assert (await action(cloud, sid, "shelve", None))[0] == 202
        server = await wait_for_status(cloud, sid, "SHELVED", user="admin")
        manager = cloud.app[keys.COMPUTES][server["OS-EXT-SRV-ATTR:host"]]
        assert await manager.shelve.offload_expired() == []  # not yet a second
        await asyncio.sleep(1.1)
        assert await manager.shelve.offload_expired() == [sid]
        assert (await show(cloud, sid))["status"] == "SHELVED_OFFLOADED"
        assert await last_action(cloud, sid) == ("shelveOffload", {"compute_shelve_offload_instance": "Success"})
    finally:
        await stop_cloud(cloud)


async def test_unshelve_to_a_zone_and_to_a_host(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image, availability_zone="nova"))["id"]

    async def offload():
        assert (await action(cloud, sid, "shelve", None))[0] == 202
        await wait_for_status(cloud, sid, "SHELVED_OFFLOADED", user="admin")

    await offload()
    # 2.77: another zone.
    status, _, _ = await action(cloud, sid, "unshelve", {"availability_zone": "nowhere"}, version="2.77")
    assert status == 400
    status, _, _ = await action(cloud, sid, "unshelve", {}, version="2.77")
    assert status == 400  # the zone is required from 2.77 to 2.90
    status, _, _ = await action(cloud, sid, "unshelve", {"host": "sim2"}, version="2.90", user="admin")
    assert status == 400  # no host before 2.91
    assert (await action(cloud, sid, "unshelve", {"availability_zone": "az2"}, version="2.77"))[0] == 202
    back = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert back["OS-EXT-SRV-ATTR:host"] == "sim2" and back["OS-EXT-AZ:availability_zone"] == "az2"
    assert (await row(cloud, sid))["request_spec"]["availability_zone"] == "az2"
    # 2.91: a host; the server is pinned to az2 now, so sim1 is refused unless the pin goes.
    await offload()
    status, _, _ = await action(cloud, sid, "unshelve", {"host": "sim1"}, version="2.91")
    assert status == 403  # os-shelve:unshelve_to_host is admin only
    status, body, _ = await action(cloud, sid, "unshelve", {"host": "nohost"}, version="2.91", user="admin")
    assert status == 400 and body["badRequest"]["message"] == "Compute host nohost could not be found."
    status, body, _ = await action(cloud, sid, "unshelve", {"host": "sim1"}, version="2.91", user="admin")
    assert status == 409 and body["conflictingRequest"]["message"] == 'Host "sim1" is not in the availability zone "az2".'
    status, _, _ = await action(cloud, sid, "unshelve", {"host": "sim1", "availability_zone": None}, version="2.91",
                                user="admin")
    assert status == 202
    back = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert back["OS-EXT-SRV-ATTR:host"] == "sim1" and back["OS-EXT-AZ:availability_zone"] == "nova"
    assert (await row(cloud, sid))["request_spec"]["availability_zone"] is None
    assert await allocations(cloud, sid) == ["sim1"]


async def test_unshelve_without_a_valid_host_stays_offloaded(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    assert (await action(cloud, sid, "shelve", None))[0] == 202
    await wait_for_status(cloud, sid, "SHELVED_OFFLOADED", user="admin")
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("UPDATE compute_nodes SET disabled = true")
    cloud.app[keys.SCHEDULER].invalidate_host_states()
    assert (await action(cloud, sid, "unshelve", None))[0] == 202
    for _ in range(100):
        server = await show(cloud, sid)
        if server["OS-EXT-STS:task_state"] is None:
            break
        await asyncio.sleep(0.05)
    assert (server["status"], server["OS-EXT-STS:task_state"], server["OS-EXT-SRV-ATTR:host"]) == (
        "SHELVED_OFFLOADED", None, None)
    assert await last_action(cloud, sid) == ("unshelve", {"get_image_info": "Success", "schedule_instances": "Error"})
    assert await allocations(cloud, sid) == []


async def test_quota_still_counts_an_offloaded_server(cloud):
    """Nova's legacy counting (count_usage_from_placement=False) counts every instance not soft-deleted."""
    image = await add_image(cloud)
    server = await boot(cloud, image)
    sid, project = server["id"], server["tenant_id"]
    _, before, _ = await cloud.compute("GET", f"/os-quota-sets/{project}/detail")
    assert (await action(cloud, sid, "shelve", None))[0] == 202
    await wait_for_status(cloud, sid, "SHELVED_OFFLOADED", user="admin")
    _, after, _ = await cloud.compute("GET", f"/os-quota-sets/{project}/detail")
    for resource in ("instances", "cores", "ram"):
        assert after["quota_set"][resource]["in_use"] == before["quota_set"][resource]["in_use"] > 0
    status, _, _ = await cloud.compute("PUT", f"/os-quota-sets/{project}", user="admin",
                                       json_body={"quota_set": {"instances": 1}})
    assert status == 200
    status, body, _ = await cloud.compute("POST", "/servers", version="2.79", json_body={"server": {
        "name": "second", "imageRef": image, "flavorRef": "1", "networks": "none"}})
    assert status == 403 and "instances" in body["forbidden"]["message"]
    assert (await action(cloud, sid, "unshelve", None))[0] == 202  # no quota check for the unshelve itself
    await wait_for_status(cloud, sid, "ACTIVE", user="admin")


async def test_wrong_states_locks_and_policies(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    status, body, _ = await action(cloud, sid, "unshelve", None)
    assert status == 409 and body["conflictingRequest"]["message"] == (
        f"Cannot 'unshelve' instance {sid} while it is in vm_state active")
    assert (await action(cloud, sid, "lock", None))[0] == 202
    status, body, _ = await action(cloud, sid, "shelve", None)
    assert status == 409 and body["conflictingRequest"]["message"] == f"Instance {sid} is locked"
    assert (await action(cloud, sid, "unlock", None))[0] == 202
    await _force(cloud, sid, task_state="rebooting")
    status, body, _ = await action(cloud, sid, "shelve", None)
    assert status == 409 and body["conflictingRequest"]["message"] == (
        f"Cannot 'shelve' instance {sid} while it is in task_state rebooting")
    await _force(cloud, sid, task_state=None)
    status, _, _ = await action(cloud, sid, "shelveOffload", None, user="admin")
    assert status == 409
    async with cloud.app[keys.DB].acquire() as conn:
        images = await conn.fetchval("SELECT count(*) FROM images")
    assert (await action(cloud, sid, "shelve", None))[0] == 202
    await wait_for_status(cloud, sid, "SHELVED_OFFLOADED", user="admin")
    status, body, _ = await action(cloud, sid, "shelve", None)
    assert status == 409 and body["conflictingRequest"]["message"] == (
        f"Cannot 'shelve' instance {sid} while it is in vm_state shelved_offloaded")
    async with cloud.app[keys.DB].acquire() as conn:  # one image: the refused shelve wrote nothing
        assert await conn.fetchval("SELECT count(*) FROM images") == images + 1
    assert (await action(cloud, sid, "lock", None))[0] == 202
    status, body, _ = await action(cloud, sid, "unshelve", None)
    assert status == 409 and body["conflictingRequest"]["message"] == f"Instance {sid} is locked"
    status, _, _ = await cloud.compute("POST", "/servers/00000000-0000-0000-0000-000000000000/action",
                                       json_body={"shelve": None})
    assert status == 404


async def test_delete_of_shelved_servers_deletes_their_images(kept_cloud):
    cloud = kept_cloud
    image = await add_image(cloud)
    kept = (await boot(cloud, image, name="kept"))["id"]
    gone = (await boot(cloud, image, name="gone"))["id"]
    for sid in (kept, gone):
        assert (await action(cloud, sid, "shelve", None))[0] == 202
        await wait_for_status(cloud, sid, "SHELVED", user="admin")
    await asyncio.sleep(0.1)
    assert (await action(cloud, gone, "shelveOffload", None, user="admin"))[0] == 202
    await wait_for_status(cloud, gone, "SHELVED_OFFLOADED", user="admin")
    image_ids = [(await shelved_images(cloud, n))[0]["id"] for n in ("kept", "gone")]
    for sid in (kept, gone):
        assert (await cloud.compute("DELETE", f"/servers/{sid}"))[0] == 204
        await wait_for_status(cloud, sid, "DELETED", user="admin")
    for image_id in image_ids:
        await wait_image(cloud, image_id, status="deleted")
    for sid in (kept, gone):
        assert await allocations(cloud, sid) == [] and await domains(cloud, sid) == []
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ports WHERE device_id = ANY($1)", [kept, gone]) == 0


async def _cut_off_in(cloud, host: str, state: str, start) -> None:
    """Run ``start`` and stop the host's work as a kill -9 would once it reaches ``state``."""
    manager = cloud.app[keys.COMPUTES][host]
    reached = asyncio.Event()

    async def hold(uuid: str, new: str) -> None:
        if new == state:
            reached.set()
            await asyncio.sleep(3600)

    manager.shelve.after_state = hold
    await start()
    await asyncio.wait_for(reached.wait(), 10)
    for task in list(manager._tasks):
        task.cancel()
    await asyncio.gather(*list(manager._tasks), return_exceptions=True)
    manager.shelve.after_state = None


async def test_recovery_takes_shelve_and_unshelve_up_again(cloud):
    image = await add_image(cloud)
    first = await boot(cloud, image, name="shelving", availability_zone="nova")
    second = await boot(cloud, image, name="unshelving", availability_zone="nova")
    shelving, unshelving = first["id"], second["id"]
    assert first["OS-EXT-SRV-ATTR:host"] == "sim1"
    assert (await action(cloud, unshelving, "shelve", None))[0] == 202
    await wait_for_status(cloud, unshelving, "SHELVED_OFFLOADED", user="admin")

    async def shelve():
        assert (await action(cloud, shelving, "shelve", None))[0] == 202

    async def unshelve():
        assert (await action(cloud, unshelving, "unshelve", None))[0] == 202

    await _cut_off_in(cloud, "sim1", "shelving_image_uploading", shelve)
    await _cut_off_in(cloud, "sim1", "spawning", unshelve)
    assert (await row(cloud, unshelving))["task_state"] == "spawning"
    done = await _recover(cloud)
    assert done == {"shelve_resumed_shelving_again": 1, "shelve_resumed_unshelving_again_on_its_claim": 1}
    await wait_for_status(cloud, shelving, "SHELVED_OFFLOADED", user="admin")
    back = await wait_for_status(cloud, unshelving, "ACTIVE", user="admin")
    assert back["OS-EXT-SRV-ATTR:host"] == "sim1" and await allocations(cloud, unshelving) == ["sim1"]
    [shelved] = await shelved_images(cloud, "shelving")
    assert shelved["status"] == "active"
    assert await shelved_images(cloud, "unshelving") == []
    for sid, note in ((shelving, "shelving again"), (unshelving, "unshelving again")):
        events = await _events(cloud, sid)
        assert any(e == "compute_recover_instance" and note in (d or "") for e, _, d in events), events


async def test_volume_backed_server_is_offloaded_without_an_image_and_comes_back_to_its_volume(cloud):
    from test_volumes import boot as boot_bdms
    from test_volumes import wait_volume

    image = await add_image(cloud, kernel_id="", ramdisk_id="")
    status, body, _ = await boot_bdms(cloud, [
        {"boot_index": 0, "uuid": image, "source_type": "image", "destination_type": "volume", "volume_size": 1,
         "delete_on_termination": True}], name="bfv")
    assert status == 202, body
    sid = body["server"]["id"]
    server = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    [attached] = server["os-extended-volumes:volumes_attached"]
    volume_host = server["OS-EXT-SRV-ATTR:host"]
    assert (await action(cloud, sid, "shelve", None))[0] == 202
    done = await wait_for_status(cloud, sid, "SHELVED_OFFLOADED", user="admin")
    assert done["OS-EXT-SRV-ATTR:host"] is None and await shelved_images(cloud, "bfv") == []
    assert "shelved_image_id" not in (await row(cloud, sid))["system_metadata"]
    assert await last_action(cloud, sid) == ("shelve", {"compute_shelve_offload_instance": "Success"})
    await wait_volume(cloud, attached["id"], "in-use")  # the volume stays the server's
    assert (await action(cloud, sid, "unshelve", None))[0] == 202
    back = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert back["OS-EXT-SRV-ATTR:host"] == volume_host  # its volume lives in that host's pool
    cfg = await cloud.app[keys.COMPUTES][volume_host].driver.get_domain_config(sid)
    disks = {d.target_dev: d.source_path for d in cfg.devices if getattr(d, "target_dev", None)}
    assert disks["vda"].endswith(f"volume-{attached['id']}")
