"""Cold migration (Nova's ``migrate`` action, a host from 2.56) on two simulated hosts: VERIFY_RESIZE on
the other host, confirm and revert as a resize's, errors, and the real ``openstack server migrate`` CLI."""

from __future__ import annotations

import asyncio

from conftest import add_image, wait_for_status
from test_resize import boot, events_of, host_usage, in_use, migration_of

from novalite.api import keys


async def action(cloud, sid: str, body: dict, version: str = "2.56", user: str = "admin"):
    return await cloud.compute("POST", f"/servers/{sid}/action", json_body=body, version=version, user=user)


async def wait_migration(cloud, sid: str, status: str) -> dict:
    for _ in range(200):
        migration = await migration_of(cloud, sid)
        if migration.get("status") == status:
            return migration
        await asyncio.sleep(0.05)
    raise AssertionError(f"migration of {sid} not {status}: {await migration_of(cloud, sid)}")


async def force_down(cloud, host: str, down: bool) -> None:
    status, body, _ = await cloud.compute("PUT", "/os-services/force-down", user="admin", version="2.11",
                                          json_body={"host": host, "binary": "nova-compute", "forced_down": down})
    assert status == 200, body


async def test_migrate_goes_to_the_other_host_then_confirm(cloud):
    image = await add_image(cloud)
    server = await boot(cloud, image)
    sid, source = server["id"], server["OS-EXT-SRV-ATTR:host"]
    status, body, _ = await action(cloud, sid, {"migrate": None})
    assert status == 202, body
    moved = await wait_for_status(cloud, sid, "VERIFY_RESIZE", user="admin")
    dest = moved["OS-EXT-SRV-ATTR:host"]
    assert dest != source and moved["flavor"]["original_name"] == "m1.tiny"
    assert await cloud.app[keys.HOSTS][dest].driver.get_info(sid) is not None
    assert await cloud.app[keys.HOSTS][source].driver.get_info(sid) is None
    migration = await migration_of(cloud, sid)
    assert migration["migration_type"] == "migration" and migration["status"] == "finished"
    assert migration["old_flavor"]["flavorid"] == migration["new_flavor"]["flavorid"] == "1"
    assert await events_of(cloud, sid, "migrate") == {
        "conductor_migrate_server": "Success", "compute_prep_resize": "Success",
        "compute_resize_instance": "Success", "compute_finish_resize": "Success"}
    # Both hosts hold the flavor until the confirm; quota counts it once.
    assert await host_usage(cloud) == {source: (1, 512), dest: (1, 512)}
    assert await in_use(cloud) == {"instances": 1, "cores": 1, "ram": 512}

    status, body, _ = await action(cloud, sid, {"confirmResize": None})
    assert status == 204, body
    active = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert active["OS-EXT-SRV-ATTR:host"] == dest
    await wait_migration(cloud, sid, "confirmed")
    assert await host_usage(cloud) == {source: (0, 0), dest: (1, 512)}
    status, body, _ = await cloud.compute("GET", "/os-migrations?migration_type=migration", version="2.23",
                                          user="admin")
    assert status == 200 and [m["instance_uuid"] for m in body["migrations"]] == [sid]


async def test_migrate_to_a_named_host_then_revert(cloud):
    image = await add_image(cloud)
    server = await boot(cloud, image)
    sid, source = server["id"], server["OS-EXT-SRV-ATTR:host"]
    other = "sim2" if source == "sim1" else "sim1"
    status, body, _ = await action(cloud, sid, {"migrate": {"host": other}})
    assert status == 202, body
    moved = await wait_for_status(cloud, sid, "VERIFY_RESIZE", user="admin")
    assert moved["OS-EXT-SRV-ATTR:host"] == other
    status, body, _ = await action(cloud, sid, {"revertResize": None})
    assert status == 202, body
    back = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert back["OS-EXT-SRV-ATTR:host"] == source
    assert await cloud.app[keys.HOSTS][source].driver.get_info(sid) is not None
    assert await cloud.app[keys.HOSTS][other].driver.get_info(sid) is None
    assert (await wait_migration(cloud, sid, "reverted"))["migration_type"] == "migration"
    assert await host_usage(cloud) == {source: (1, 512), other: (0, 0)}
    # The named host is not kept for a later move: a resize schedules freely again.
    async with cloud.app[keys.DB].acquire() as conn:
        spec = await conn.fetchval("SELECT request_spec FROM instances WHERE uuid = $1::uuid", sid)
    assert "requested_destination" not in spec


async def test_migrate_errors_and_microversion_gating(cloud):
    image = await add_image(cloud)
    server = await boot(cloud, image)
    sid, source = server["id"], server["OS-EXT-SRV-ATTR:host"]
    other = "sim2" if source == "sim1" else "sim1"
    cases = [
        ({"migrate": {"host": "nowhere"}}, "2.56", 400, "Compute host nowhere could not be found."),
        ({"migrate": {"host": source}}, "2.56", 400, "Cannot migrate to the host where the server exists."),
        ({"migrate": {"hots": other}}, "2.56", 400, "Additional properties are not allowed"),
        ({"migrate": {"host": ""}}, "2.56", 400, "Invalid input"),
    ]
    for body, version, code, message in cases:
        status, resp, _ = await action(cloud, sid, body, version=version)
        assert status == code, (body, resp)
        assert message in resp["badRequest"]["message"], resp
    # The project's member may not migrate (Nova's default: project manager or admin), nor name a host.
    status, resp, _ = await action(cloud, sid, {"migrate": None}, user="demo")
    assert status == 403, resp
    status, resp, _ = await action(cloud, sid, {"migrate": {"host": other}}, user="demo")
    assert status == 403 and "os-migrate-server:migrate:host" in resp["forbidden"]["message"], resp
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM migrations") == 0
    # Before 2.56 the body's host is not read: the scheduler picks (the only other host here).
    status, resp, _ = await action(cloud, sid, {"migrate": {"host": "nowhere"}}, version="2.55")
    assert status == 202, resp
    await wait_for_status(cloud, sid, "VERIFY_RESIZE", user="admin")
    status, resp, _ = await action(cloud, sid, {"migrate": None})
    assert status == 409 and "vm_state resized" in resp["conflictingRequest"]["message"], resp
    status, _, _ = await action(cloud, sid, {"confirmResize": None})
    assert status == 204
    await wait_for_status(cloud, sid, "ACTIVE", user="admin")


async def test_no_valid_host_puts_the_server_back_active(cloud):
    image = await add_image(cloud)
    server = await boot(cloud, image)
    sid, source = server["id"], server["OS-EXT-SRV-ATTR:host"]
    other = "sim2" if source == "sim1" else "sim1"
    await force_down(cloud, other, True)
    status, body, _ = await action(cloud, sid, {"migrate": {"host": other}})
    assert status == 202, body
    migration = await wait_migration(cloud, sid, "error")
    back = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert back["OS-EXT-SRV-ATTR:host"] == source and back["OS-EXT-STS:task_state"] is None
    assert "fault" not in back and migration["dest_compute"] is None
    assert await events_of(cloud, sid, "migrate") == {"conductor_migrate_server": "Error"}
    assert await host_usage(cloud) == {source: (1, 512), other: (0, 0)}


async def test_openstack_cli_migrates_confirms_and_reverts(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    await cloud.openstack("server", "migrate", sid, cloud="novalite-admin")
    server = await wait_for_status(cloud, sid, "VERIFY_RESIZE", user="admin")
    first = server["OS-EXT-SRV-ATTR:host"]
    await cloud.openstack("server", "migrate", "confirm", sid)
    await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    await wait_migration(cloud, sid, "confirmed")
    back = "sim2" if first == "sim1" else "sim1"
    await cloud.openstack("--os-compute-api-version", "2.56", "server", "migrate", "--host", back, sid,
                          cloud="novalite-admin")
    server = await wait_for_status(cloud, sid, "VERIFY_RESIZE", user="admin")
    assert server["OS-EXT-SRV-ATTR:host"] == back
    await cloud.openstack("server", "migrate", "revert", sid)
    server = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert server["OS-EXT-SRV-ATTR:host"] == first
    assert (await wait_migration(cloud, sid, "reverted"))["migration_type"] == "migration"
