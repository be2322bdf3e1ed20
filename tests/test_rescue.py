"""Rescue and unrescue (Nova's actions) on simulated hosts: states, the rescue guest's disks, refusals, recovery."""

from __future__ import annotations

import asyncio

from conftest import add_image, start_cloud, stop_cloud, wait_for_status
from test_image_visibility import images_of_other
from test_rebuild import boot
from test_server_actions import _events, _force, _recover
from test_volumes import EXTRA as VOLUME_EXTRA
from test_volumes import boot as boot_with_bdms

from novalite.api import keys
from novalite.virt.libvirt.config import LibvirtConfigGuestDisk


async def act(cloud, server_id: str, body: dict, version: str = "2.79", user: str = "demo"):
    return await cloud.compute("POST", f"/servers/{server_id}/action", json_body=body, version=version, user=user)


async def disks(cloud, server_id: str) -> list[tuple[str, str, str]]:
    """The domain's disks in XML order: (target, device, name) -- the instance's volumes of its host's
    pool are ``<uuid>_<name>``."""
    async with cloud.app[keys.DB].acquire() as conn:
        host = await conn.fetchval("SELECT host FROM instances WHERE uuid = $1::uuid", server_id)
    cfg = await cloud.app[keys.COMPUTES][host].driver.get_domain_config(server_id)
    return [(d.target_dev, d.source_device, d.source_path.rsplit("/", 1)[-1].removeprefix(f"{server_id}_"))
            for d in cfg.devices if isinstance(d, LibvirtConfigGuestDisk)]


async def notifications(cloud, server_id: str, pattern: str) -> list[str]:
    async with cloud.app[keys.DB].acquire() as conn:
        return [r["event_type"] for r in await conn.fetch(
            "SELECT event_type FROM notifications WHERE instance_uuid = $1::uuid AND event_type LIKE $2 ORDER BY id",
            server_id, pattern)]


async def last_action_events(cloud, server_id: str) -> tuple[str, dict[str, str]]:
    _, actions, _ = await cloud.compute("GET", f"/servers/{server_id}/os-instance-actions", version="2.79")
    latest = actions["instanceActions"][0]
    _, action, _ = await cloud.compute("GET", f"/servers/{server_id}/os-instance-actions/{latest['request_id']}",
                                       version="2.79", user="admin")
    return latest["action"], {e["event"]: e["result"] for e in action["instanceAction"]["events"]}


async def settled(cloud, server_id: str, timeout: float = 10) -> dict:
    """The server once no task is under way (a rollback shows ACTIVE while still at work)."""
    for _ in range(int(timeout / 0.05)):
        _, body, _ = await cloud.compute("GET", f"/servers/{server_id}", version="2.79", user="admin")
        if body["server"]["OS-EXT-STS:task_state"] is None:
            return body["server"]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{server_id} never settled: {body}")


async def test_rescue_boots_the_rescue_disk_first_and_the_own_disk_second_then_unrescue_restores(cloud):
    image = await add_image(cloud)
    server = await boot(cloud, image, config_drive=True)
    sid = server["id"]
    before = await disks(cloud, sid)
    assert before == [("vda", "disk", "disk"), ("sda", "cdrom", "disk.config")]
    status, body, _ = await act(cloud, sid, {"rescue": {"adminPass": "rescue-me-1"}})
    assert status == 200 and body == {"adminPass": "rescue-me-1"}, body
    rescued = await wait_for_status(cloud, sid, "RESCUE")
    assert rescued["OS-EXT-STS:vm_state"] == "rescued" and rescued["OS-EXT-STS:task_state"] is None
    assert rescued["OS-EXT-STS:power_state"] == 1 and rescued["addresses"] == server["addresses"]
    # Nova's legacy rescue layout: the rescue disk boots as vda, the server's own disk is vdb,
    # and a new config drive (with the rescue password) replaces the server's.
    assert await disks(cloud, sid) == [("vda", "disk", "disk.rescue"), ("vdb", "disk", "disk"),
                                       ("sda", "cdrom", "disk.config.rescue")]
    assert await last_action_events(cloud, sid) == ("rescue", {"compute_rescue_instance": "Success"})
    assert await notifications(cloud, sid, "instance.rescue.%") == ["instance.rescue.start", "instance.rescue.end"]
    # What a rescued server may not do (Nova's state lists).
    for action, message in (({"reboot": {"type": "HARD"}}, "reboot"), ({"os-stop": None}, "stop"),
                            ({"rescue": None}, "rescue"), ({"rebuild": {"imageRef": image}}, "rebuild")):
        status, resp, _ = await act(cloud, sid, action)
        assert status == 409 and resp["conflictingRequest"]["message"] == (
            f"Cannot '{message}' instance {sid} while it is in vm_state rescued"), resp
    status, body, _ = await act(cloud, sid, {"unrescue": None})
    assert status == 202, body
    done = await wait_for_status(cloud, sid, "ACTIVE")
    assert done["OS-EXT-STS:task_state"] is None and done["OS-EXT-STS:power_state"] == 1
    assert await disks(cloud, sid) == before
    assert await last_action_events(cloud, sid) == ("unrescue", {"compute_unrescue_instance": "Success"})
    assert await notifications(cloud, sid, "instance.unrescue.%") == [
        "instance.unrescue.start", "instance.unrescue.end"]


async def test_rescue_of_a_stopped_server_boots_the_rescue_guest_and_unrescue_leaves_it_active(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    status, _, _ = await act(cloud, sid, {"os-stop": None})
    assert status == 202
    await wait_for_status(cloud, sid, "SHUTOFF")
    status, body, _ = await act(cloud, sid, {"rescue": None})
    assert status == 200 and len(body["adminPass"]) >= 8
    rescued = await wait_for_status(cloud, sid, "RESCUE")
    assert rescued["OS-EXT-STS:power_state"] == 1
    assert [d[2] for d in await disks(cloud, sid)] == ["disk.rescue", "disk"]
    await act(cloud, sid, {"unrescue": None})
    done = await wait_for_status(cloud, sid, "ACTIVE")  # Nova's unrescue: ACTIVE, whatever came before
    assert done["OS-EXT-STS:power_state"] == 1


async def test_rescue_image_must_be_one_the_project_may_see(cloud):
    mine = await add_image(cloud)
    images = await images_of_other(cloud)
    sid = (await boot(cloud, mine))["id"]
    for missing in (images["private"], "7d5f0a43-0000-4000-8000-00000000dead"):
        status, body, _ = await act(cloud, sid, {"rescue": {"rescue_image_ref": missing}})
        assert status == 400 and body["badRequest"]["message"] == (
            f"Requested rescue image '{missing}' is not supported"), body
    _, server, _ = await cloud.compute("GET", f"/servers/{sid}", version="2.79")
    assert server["server"]["status"] == "ACTIVE" and server["server"]["OS-EXT-STS:task_state"] is None
    for kind in ("public", "community"):
        status, body, _ = await act(cloud, sid, {"rescue": {"rescue_image_ref": images[kind]}})
        assert status == 200, (kind, body)
        await wait_for_status(cloud, sid, "RESCUE")
        async with cloud.app[keys.DB].acquire() as conn:
            payload = await conn.fetchval(
                """SELECT payload FROM notifications WHERE instance_uuid = $1::uuid
                   AND event_type = 'instance.rescue.end' ORDER BY id DESC LIMIT 1""", sid)
        assert payload["rescue_image_ref"] == images[kind]
        await act(cloud, sid, {"unrescue": None})
        await wait_for_status(cloud, sid, "ACTIVE")
    # The admin may rescue with any image.
    status, body, _ = await act(cloud, sid, {"rescue": {"rescue_image_ref": images["private"]}}, user="admin")
    assert status == 200, body
    await wait_for_status(cloud, sid, "RESCUE")


async def test_rescue_refusals_are_novas(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    bad_bodies = [
        ({"rescue": {"rescue_image_ref": "nope"}},
         "Invalid input for field/attribute rescue_image_ref. Value: nope. 'nope' is not a 'uuid'"),
        ({"rescue": {"bogus": 1}}, "Additional properties are not allowed ('bogus' was unexpected)"),
        ({"rescue": {"adminPass": 5}}, "Invalid input for field/attribute adminPass. Value: 5. 5 is not of type 'string'"),
    ]
    for body, message in bad_bodies:
        status, resp, _ = await act(cloud, sid, body)
        assert status == 400 and resp["badRequest"]["message"] == message, (body, resp)
    status, resp, _ = await act(cloud, sid, {"unrescue": None})
    assert status == 409 and resp["conflictingRequest"]["message"] == (
        f"Cannot 'unrescue' instance {sid} while it is in vm_state active")
    status, resp, _ = await act(cloud, "7d5f0a43-0000-4000-8000-00000000dead", {"rescue": None})
    assert status == 404
    await act(cloud, sid, {"pause": None})
    await wait_for_status(cloud, sid, "PAUSED")
    status, resp, _ = await act(cloud, sid, {"rescue": None})
    assert status == 409 and resp["conflictingRequest"]["message"] == (
        f"Cannot 'rescue' instance {sid} while it is in vm_state paused")
    await act(cloud, sid, {"unpause": None})
    await wait_for_status(cloud, sid, "ACTIVE")
    status, _, _ = await act(cloud, sid, {"lock": None}, user="admin")
    assert status == 202
    status, resp, _ = await act(cloud, sid, {"rescue": None})
    assert status == 409 and resp["conflictingRequest"]["message"] == f"Instance {sid} is locked"
    status, resp, _ = await act(cloud, sid, {"rescue": None}, user="admin")  # the admin passes a lock
    assert status == 200
    await wait_for_status(cloud, sid, "RESCUE")
    status, resp, _ = await act(cloud, sid, {"unrescue": None})
    assert status == 409 and resp["conflictingRequest"]["message"] == f"Instance {sid} is locked"


async def test_enable_instance_password_off_answers_an_empty_body(pg_dsn, tmp_path, monkeypatch):
    monkeypatch.setenv("NOVALITE_API__ENABLE_INSTANCE_PASSWORD", "false")
    cloud = await start_cloud(pg_dsn, tmp_path)
    try:
        sid = (await boot(cloud, await add_image(cloud)))["id"]
        status, body, _ = await act(cloud, sid, {"rescue": {"adminPass": "not-shown-1"}})
        assert status == 200 and body == {}
        await wait_for_status(cloud, sid, "RESCUE")
    finally:
        await stop_cloud(cloud)


async def test_a_volume_backed_server_cannot_be_rescued(pg_dsn, tmp_path):
    cloud = await start_cloud(pg_dsn, tmp_path, extra=VOLUME_EXTRA)
    try:
        image = await add_image(cloud, kernel_id="", ramdisk_id="")
        stable = await add_image(cloud, "stable", hw_rescue_bus="virtio", hw_rescue_device="disk")
        status, body, _ = await boot_with_bdms(cloud, [{
            "boot_index": 0, "uuid": image, "source_type": "image", "destination_type": "volume", "volume_size": 1,
            "delete_on_termination": True}])
        assert status == 202, body
        sid = body["server"]["id"]
        await wait_for_status(cloud, sid, "ACTIVE")
        for version, ref, reason in (
            ("2.86", None, "Cannot rescue a volume-backed instance"),
            ("2.87", None, "Cannot rescue a volume-backed instance"),
            # Stable device rescue (2.87): novalite's hosts lack Nova's COMPUTE_RESCUE_BFV trait.
            ("2.87", stable, "Host unable to rescue a volume-backed instance"),
        ):
            status, resp, _ = await act(cloud, sid, {"rescue": {"rescue_image_ref": ref} if ref else None},
                                        version=version)
            assert status == 400 and resp["badRequest"]["message"] == (
                f"Instance {sid} cannot be rescued: {reason}"), resp
        _, server, _ = await cloud.compute("GET", f"/servers/{sid}", version="2.79")
        assert server["server"]["status"] == "ACTIVE" and server["server"]["OS-EXT-STS:task_state"] is None
    finally:
        await stop_cloud(cloud)


async def test_power_sync_leaves_a_rescued_server_alone(cloud):
    sid = (await boot(cloud, await add_image(cloud)))["id"]
    await act(cloud, sid, {"rescue": None})
    await wait_for_status(cloud, sid, "RESCUE")
    manager = cloud.app[keys.COMPUTES][(await settled(cloud, sid))["OS-EXT-SRV-ATTR:host"]]
    await manager.driver.power_off(sid, 0)  # the rescue guest went down by itself
    await manager.power.sync_power_states()
    await asyncio.sleep(0.2)
    server = await wait_for_status(cloud, sid, "RESCUE")
    assert server["OS-EXT-STS:power_state"] == 4 and server["OS-EXT-STS:task_state"] is None
    action, _ = await last_action_events(cloud, sid)
    assert action == "rescue"  # no stop on the sync's behalf, as Nova ignores RESCUED


async def test_delete_of_a_rescued_server_removes_its_domain(cloud):
    sid = (await boot(cloud, await add_image(cloud)))["id"]
    await act(cloud, sid, {"rescue": None})
    await wait_for_status(cloud, sid, "RESCUE")
    status, _, _ = await cloud.compute("DELETE", f"/servers/{sid}")
    assert status == 204
    await wait_for_status(cloud, sid, "DELETED")
    for manager in cloud.app[keys.COMPUTES].values():
        assert sid not in await manager.driver.list_instance_uuids()


async def test_restart_while_rescuing_rolls_back_and_while_unrescuing_finishes(cloud):
    image = await add_image(cloud)
    first = (await boot(cloud, image, config_drive=True))["id"]
    second = (await boot(cloud, image, config_drive=True))["id"]
    own = await disks(cloud, first)
    # first: cut off after the rescue guest started (its domain is the rescue one, task rescuing).
    await act(cloud, first, {"rescue": None})
    await wait_for_status(cloud, first, "RESCUE")
    await _force(cloud, first, vm_state="active", task_state="rescuing")
    # second: cut off while unrescuing.
    await act(cloud, second, {"rescue": None})
    await wait_for_status(cloud, second, "RESCUE")
    await _force(cloud, second, task_state="unrescuing")
    done = await _recover(cloud)
    assert done == {"rescue_rolled_back": 1, "unrescue_resumed": 1}
    for sid in (first, second):
        server = await settled(cloud, sid)
        assert server["status"] == "ACTIVE" and server["OS-EXT-STS:task_state"] is None and server["OS-EXT-STS:power_state"] == 1
        assert await disks(cloud, sid) == own
    events = await _events(cloud, first)
    assert events[-1][0] == "compute_recover_instance" and "rolled back" in events[-1][2]
    assert [e[0] for e in await _events(cloud, second)][-2:] == ["compute_recover_instance",
                                                                 "compute_unrescue_instance"]


async def test_openstack_cli_rescues_and_unrescues(cloud):
    first, second = await add_image(cloud, "first"), await add_image(cloud, "rescue-image")
    sid = (await boot(cloud, first))["id"]
    await cloud.openstack("server", "rescue", "--image", second, "--password", "cli-rescue-1", sid)
    server = await wait_for_status(cloud, sid, "RESCUE")
    assert server["image"]["id"] == first  # the server keeps its image; only the rescue boot used the other
    await cloud.openstack("server", "unrescue", sid)
    await wait_for_status(cloud, sid, "ACTIVE")
