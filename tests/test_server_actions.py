"""Server actions, power-state sync, recovery and the watchdog on libvirt test-driver hosts."""

from __future__ import annotations

import asyncio

import pytest
from conftest import add_image, start_cloud, stop_cloud, wait_for_status

from novalite.api import keys
from novalite.compute.recovery import interrupted, recover


async def boot(cloud, name: str = "vm") -> str:
    image = await add_image(cloud)
    status, body, _ = await cloud.compute(
        "POST", "/servers", version="2.latest",
        json_body={"server": {"name": name, "imageRef": image, "flavorRef": "1", "networks": "none"}},
    )
    assert status == 202, body
    uuid = body["server"]["id"]
    await wait_for_status(cloud, uuid, "ACTIVE")
    return uuid


async def act(cloud, uuid: str, body: dict, user: str = "demo", version: str = "2.latest"):
    status, resp, _ = await cloud.compute("POST", f"/servers/{uuid}/action", json_body=body, user=user,
                                          version=version)
    return status, resp


async def show(cloud, uuid: str) -> dict:
    _, body, _ = await cloud.compute("GET", f"/servers/{uuid}", version="2.latest", user="admin")
    return body["server"]


def manager_of(cloud, server: dict):
    return cloud.app[keys.COMPUTES][server["OS-EXT-SRV-ATTR:host"]]


async def test_every_power_action_through_the_api(cloud):
    uuid = await boot(cloud)
    steps = [
        ({"os-stop": None}, "SHUTOFF", "stopped", 4),
        ({"os-start": None}, "ACTIVE", "active", 1),
        ({"reboot": {"type": "SOFT"}}, "ACTIVE", "active", 1),
        ({"reboot": {"type": "HARD"}}, "ACTIVE", "active", 1),
        ({"pause": None}, "PAUSED", "paused", 3),
        ({"unpause": None}, "ACTIVE", "active", 1),
        ({"suspend": None}, "SUSPENDED", "suspended", 4),
        ({"resume": None}, "ACTIVE", "active", 1),
    ]
    for body, status_name, vm_state, power in steps:
        status, resp = await act(cloud, uuid, body)
        assert (status, resp) == (202, None), (body, resp)
        server = await wait_for_status(cloud, uuid, status_name)
        await asyncio.sleep(0.05)
        server = await show(cloud, uuid)
        assert server["OS-EXT-STS:vm_state"] == vm_state and server["OS-EXT-STS:task_state"] is None
        assert server["OS-EXT-STS:power_state"] == power, body
    info = await manager_of(cloud, server).driver.get_info(uuid)
    assert info.power_state == 1
    _, actions, _ = await cloud.compute("GET", f"/servers/{uuid}/os-instance-actions", version="2.latest")
    assert [a["action"] for a in actions["instanceActions"]][::-1] == [
        "create", "stop", "start", "reboot", "reboot", "pause", "unpause", "suspend", "resume"]
    stop = actions["instanceActions"][-2]
    _, detail, _ = await cloud.compute("GET", f"/servers/{uuid}/os-instance-actions/{stop['request_id']}",
                                       version="2.latest", user="admin")
    (event,) = detail["instanceAction"]["events"]
    assert event["event"] == "compute_stop_instance" and event["result"] == "Success"
    async with cloud.app[keys.DB].acquire() as conn:
        kinds = [r["event_type"] for r in await conn.fetch(
            "SELECT event_type FROM notifications WHERE instance_uuid = $1 AND event_type LIKE 'instance.p%' "
            "ORDER BY id", uuid)]
    assert kinds == ["instance.power_off.start", "instance.power_off.end", "instance.power_on.start",
                     "instance.power_on.end", "instance.pause.start", "instance.pause.end"]


@pytest.mark.parametrize(
    "setup, body, message",
    [
        ([], {"os-start": None}, "Cannot 'start' instance {u} while it is in vm_state active"),
        ([{"os-stop": None}], {"os-stop": None}, "Cannot 'stop' instance {u} while it is in vm_state stopped"),
        ([{"os-stop": None}], {"reboot": {"type": "SOFT"}}, "Cannot 'reboot' instance {u} while it is in vm_state stopped"),
        ([], {"unpause": None}, "Cannot 'unpause' instance {u} while it is in vm_state active"),
        ([{"pause": None}], {"suspend": None}, "Cannot 'suspend' instance {u} while it is in vm_state paused"),
        ([], {"resume": None}, "Cannot 'resume' instance {u} while it is in vm_state active"),
    ],
)
async def test_wrong_state_is_409_with_novas_message(cloud, setup, body, message):
    uuid = await boot(cloud)
    for step in setup:
        assert (await act(cloud, uuid, step))[0] == 202
        await wait_for_status(cloud, uuid, {"SHUTOFF", "PAUSED"})
    status, resp = await act(cloud, uuid, body)
    assert status == 409
    assert resp == {"conflictingRequest": {"code": 409, "message": message.format(u=uuid)}}


async def test_hard_reboot_brings_up_a_stopped_server_and_bad_type_is_400(cloud):
    uuid = await boot(cloud)
    await act(cloud, uuid, {"os-stop": None})
    await wait_for_status(cloud, uuid, "SHUTOFF")
    assert (await act(cloud, uuid, {"reboot": {"type": "FIRM"}}))[0] == 400
    assert (await act(cloud, uuid, {"reboot": {"type": "hard"}}))[0] == 202
    await wait_for_status(cloud, uuid, "ACTIVE")


async def test_lock_rules_owner_admin_and_reason(cloud):
    uuid = await boot(cloud)
    status, _ = await act(cloud, uuid, {"lock": {"locked_reason": "maintenance"}}, version="2.73")
    assert status == 202
    server = await show(cloud, uuid)
    assert server["locked"] is True and server["locked_reason"] == "maintenance"
    status, resp = await act(cloud, uuid, {"os-stop": None})
    assert (status, resp["conflictingRequest"]["message"]) == (409, f"Instance {uuid} is locked")
    status, _, _ = await cloud.compute("DELETE", f"/servers/{uuid}")
    assert status == 409
    # An admin is not held by the lock.
    assert (await act(cloud, uuid, {"os-stop": None}, user="admin"))[0] == 202
    await wait_for_status(cloud, uuid, "SHUTOFF")
    # The owner unlocks its own lock; a lock by an admin needs unlock_override (admin only).
    assert (await act(cloud, uuid, {"unlock": None}))[0] == 202
    assert (await act(cloud, uuid, {"lock": None}, user="admin"))[0] == 202
    assert (await show(cloud, uuid))["locked"] is True
    status, resp = await act(cloud, uuid, {"unlock": None})
    assert status == 403 and "unlock_override" in resp["forbidden"]["message"]
    assert (await act(cloud, uuid, {"unlock": None}, user="admin"))[0] == 202
    assert (await show(cloud, uuid))["locked"] is False
    _, actions, _ = await cloud.compute("GET", f"/servers/{uuid}/os-instance-actions", version="2.latest")
    assert [a["action"] for a in actions["instanceActions"]][:4] == ["unlock", "lock", "unlock", "stop"]


async def test_reset_state_is_admin_only(cloud):
    uuid = await boot(cloud)
    status, resp = await act(cloud, uuid, {"os-resetState": {"state": "error"}})
    assert status == 403
    assert (await act(cloud, uuid, {"os-resetState": {"state": "error"}}, user="admin"))[0] == 202
    assert (await show(cloud, uuid))["status"] == "ERROR"
    assert (await act(cloud, uuid, {"os-resetState": {"state": "active"}}, user="admin"))[0] == 202
    assert (await show(cloud, uuid))["status"] == "ACTIVE"
    assert (await act(cloud, uuid, {"os-resetState": {"state": "bogus"}}, user="admin"))[0] == 400


async def test_openstack_cli_drives_the_actions(cloud):
    await boot(cloud, "cli-vm")
    await cloud.openstack("server", "stop", "cli-vm")
    uuid = (await cloud.openstack_json("server", "show", "cli-vm"))["id"]
    await wait_for_status(cloud, uuid, "SHUTOFF")
    await cloud.openstack("server", "start", "cli-vm")
    await wait_for_status(cloud, uuid, "ACTIVE")
    await cloud.openstack("server", "reboot", "--hard", "--wait", "cli-vm")
    await cloud.openstack("server", "reboot", "--soft", "--wait", "cli-vm")
    await cloud.openstack("server", "pause", "cli-vm")
    await wait_for_status(cloud, uuid, "PAUSED")
    await cloud.openstack("server", "unpause", "cli-vm")
    await wait_for_status(cloud, uuid, "ACTIVE")
    await cloud.openstack("server", "suspend", "cli-vm")
    await wait_for_status(cloud, uuid, "SUSPENDED")
    await cloud.openstack("server", "resume", "cli-vm")
    await wait_for_status(cloud, uuid, "ACTIVE")
    await cloud.openstack("server", "lock", "cli-vm")
    assert (await cloud.openstack_json("server", "show", "cli-vm"))["status"] == "ACTIVE"
    rc, _, err = await cloud.openstack("server", "stop", "cli-vm", check=False)
    assert rc != 0 and "is locked" in err
    await cloud.openstack("server", "unlock", "cli-vm")
    await cloud.openstack("server", "stop", "cli-vm")
    await wait_for_status(cloud, uuid, "SHUTOFF")


async def _shutdown_behind_our_back(manager, uuid: str, how: str) -> None:
    def act_on_domain() -> None:
        getattr(manager.driver.host.connection().lookupByUUIDString(uuid), how)()

    await asyncio.get_running_loop().run_in_executor(None, act_on_domain)


@pytest.fixture
async def slow_sync_cloud(pg_dsn, tmp_path):
    """The periodic sync runs once at start and then not for an hour: only events can act."""
    c = await start_cloud(pg_dsn, tmp_path, extra="[compute]\npower_sync_interval = 3600\n")
    yield c
    await stop_cloud(c)


async def test_guest_shutting_itself_down_becomes_shutoff_through_events(slow_sync_cloud):
    cloud = slow_sync_cloud
    uuid = await boot(cloud)
    manager = manager_of(cloud, await show(cloud, uuid))
    await _shutdown_behind_our_back(manager, uuid, "shutdown")
    server = await wait_for_status(cloud, uuid, "SHUTOFF", timeout=5)
    assert server["OS-EXT-STS:power_state"] == 4
    _, actions, _ = await cloud.compute("GET", f"/servers/{uuid}/os-instance-actions", version="2.latest")
    assert actions["instanceActions"][0]["action"] == "stop"
    # Started behind our back while STOPPED: Nova's sync stops it again.
    await _shutdown_behind_our_back(manager, uuid, "create")
    await asyncio.sleep(0.5)
    assert (await manager.driver.get_info(uuid)).power_state == 4
    assert (await show(cloud, uuid))["status"] == "SHUTOFF"


async def test_unknown_domains_are_reported_never_adopted_and_reaped_by_config(pg_dsn, tmp_path):
    from novalite.virt.driver import GuestSpec

    cloud = await start_cloud(pg_dsn, tmp_path, extra='[compute]\nunknown_domain_action = "reap"\n')
    try:
        manager = cloud.app[keys.COMPUTES]["sim1"]
        stray = "0b0e0f00-0000-4000-8000-00000000beef"
        await manager.driver.spawn(GuestSpec(instance_uuid=stray, name="stray", memory_mb=64, vcpus=1,
                                             virt_type="test"))
        await manager.power.sync_power_states()
        assert stray not in await manager.driver.list_instance_uuids()
        async with cloud.app[keys.DB].acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM instances WHERE uuid = $1", stray) == 0
    finally:
        await stop_cloud(cloud)


# -- recovery: states a crash leaves behind, then recover() as on start -----------

async def _recover(cloud) -> dict:
    app = cloud.app
    done = await recover(app[keys.DB], app[keys.COMPUTE_API], app[keys.CONDUCTOR], app[keys.COMPUTES])
    await app[keys.COMPUTE_API].wait_idle()
    return dict(done)


async def _force(cloud, uuid: str, **cols) -> None:
    sets = ", ".join(f"{k} = ${i + 2}" for i, k in enumerate(cols))
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute(f"UPDATE instances SET {sets} WHERE uuid = $1", uuid, *cols.values())


async def _events(cloud, uuid: str) -> list[tuple[str, str]]:
    async with cloud.app[keys.DB].acquire() as conn:
        rows = await conn.fetch(
            """SELECT e.event, e.result, e.details FROM instance_actions_events e
               JOIN instance_actions a ON a.id = e.action_id WHERE a.instance_uuid = $1 ORDER BY e.id""", uuid)
    return [(r["event"], r["result"], r["details"]) for r in rows]


async def test_recovery_finishes_a_build_whose_domain_runs(cloud):
    uuid = await boot(cloud)
    await _force(cloud, uuid, vm_state="building", task_state="spawning", launched_at=None)
    assert await _recover(cloud) == {"build_finished": 1}
    server = await show(cloud, uuid)
    assert server["status"] == "ACTIVE" and server["OS-SRV-USG:launched_at"]
    assert any(e == "compute_recover_instance" and "build finished" in d for e, _, d in await _events(cloud, uuid))


async def test_recovery_cleans_a_half_build_and_schedules_again(cloud):
    uuid = await boot(cloud)
    manager = manager_of(cloud, await show(cloud, uuid))
    await _force(cloud, uuid, vm_state="building", task_state="networking")
    assert await _recover(cloud) == {"build_rescheduled": 1}
    await wait_for_status(cloud, uuid, "ACTIVE")
    server = await show(cloud, uuid)
    async with cloud.app[keys.DB].acquire() as conn:
        allocs = await conn.fetch("SELECT host FROM allocations WHERE instance_uuid = $1", uuid)
    assert [a["host"] for a in allocs] == [server["OS-EXT-SRV-ATTR:host"]]
    domains = {name: await m.driver.list_instance_uuids() for name, m in cloud.app[keys.COMPUTES].items()}
    assert [h for h, uuids in domains.items() if uuid in uuids] == [server["OS-EXT-SRV-ATTR:host"]]
    events = await _events(cloud, uuid)
    assert any(e == "compute_recover_instance" and "scheduling again" in d for e, _, d in events)
    assert manager is not None


async def test_recovery_finishes_a_delete_and_reconciles_power_actions(cloud):
    doomed = await boot(cloud, "doomed")
    stopped = await boot(cloud, "stopping")
    await _force(cloud, doomed, task_state="deleting")
    manager = manager_of(cloud, await show(cloud, stopped))
    # A stop sets its task state, then reaches the hypervisor: its lifecycle event leaves the
    # instance to the stop (a sync from it first, then the task state, would have settled it).
    await _force(cloud, stopped, task_state="powering-off")
    await manager.driver.power_off(stopped)
    assert await _recover(cloud) == {"delete_finished": 1, "power_reconciled_stopped": 1}
    await wait_for_status(cloud, doomed, "DELETED")
    server = await show(cloud, stopped)
    assert (server["status"], server["OS-EXT-STS:task_state"]) == ("SHUTOFF", None)
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM allocations WHERE instance_uuid = $1", doomed) == 0


async def test_recovery_leaves_a_power_action_settled_meanwhile_as_it_is(cloud):
    uuid = await boot(cloud)
    manager = manager_of(cloud, await show(cloud, uuid))
    await _force(cloud, uuid, task_state="powering-off")
    await manager.driver.power_off(uuid)
    app = cloud.app
    rows = await interrupted(app[keys.DB])  # read before the API serves; then a sync settles it
    await _force(cloud, uuid, task_state=None, vm_state="stopped", power_state=4)
    done = await recover(app[keys.DB], app[keys.COMPUTE_API], app[keys.CONDUCTOR], app[keys.COMPUTES], rows)
    assert dict(done) == {"power_settled_meanwhile": 1}
    server = await show(cloud, uuid)
    assert (server["status"], server["OS-EXT-STS:task_state"]) == ("SHUTOFF", None)
    assert not any(e == "compute_recover_instance" for e, _, _ in await _events(cloud, uuid))


async def test_watchdog_moves_overdue_build_to_error_naming_the_step(pg_dsn, tmp_path):
    extra = """
[compute]
drill_stage_delays = { networking = 3 }
[deadlines]
building = 0.5
watchdog_interval = 0.2
"""
    cloud = await start_cloud(pg_dsn, tmp_path, extra=extra)
    try:
        image = await add_image(cloud)
        _, body, _ = await cloud.compute("POST", "/servers", version="2.latest", json_body={
            "server": {"name": "slow", "imageRef": image, "flavorRef": "1", "networks": "none"}})
        uuid = body["server"]["id"]
        server = await wait_for_status(cloud, uuid, "ERROR", timeout=10)
        assert "task_state networking" in server["fault"]["message"]
        assert "(step compute_allocate_network)" in server["fault"]["message"]  # the open event of the stuck step
        async with cloud.app[keys.DB].acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM allocations WHERE instance_uuid = $1", uuid) == 0
        status, _, _ = await cloud.compute("DELETE", f"/servers/{uuid}")
        assert status == 204
    finally:
        for m in cloud.app[keys.COMPUTES].values():
            m.before_step = None
        await stop_cloud(cloud)
