"""Evacuation (Nova's ``evacuate`` action) on two simulated hosts: a host forced down through os-services
(2.11), its server rebuilt on the other host with its port and volume, the old host's leftovers
removed when it is back; refusals, microversions, and the real ``openstack server evacuate`` CLI."""

from __future__ import annotations

import pytest
from conftest import add_image, start_cloud, stop_cloud, wait_for_status
from test_migrate import force_down, wait_migration
from test_resize import events_of, host_usage, migration_of
from test_volumes import boot, make_volume, pool_volumes, wait_volume

from novalite.api import keys

# Heartbeats often, so a host un-forced-down cleans up at once.
EXTRA = """
[compute]
report_interval = 0.2
"""


@pytest.fixture
async def ecloud(pg_dsn, tmp_path):
    c = await start_cloud(pg_dsn, tmp_path, extra=EXTRA)
    yield c
    await stop_cloud(c)


async def evacuate(cloud, sid: str, body: dict, version: str = "2.14", user: str = "admin"):
    return await cloud.compute("POST", f"/servers/{sid}/action", json_body={"evacuate": body}, version=version,
                               user=user)


async def boot_on_sim1(cloud, image: str, bdms: list[dict] | None = None) -> str:
    """A server on sim1 (a volume of sim1's pool pins it there; otherwise the zone names the host)."""
    extra = {} if bdms else {"availability_zone": "nova:sim1"}
    status, body, _ = await boot(cloud, bdms or [], image=image, networks="auto",
                                 user="demo" if bdms else "admin", **extra)
    assert status == 202, body
    sid = body["server"]["id"]
    server = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert server["OS-EXT-SRV-ATTR:host"] == "sim1"
    return sid


async def test_evacuate_rebuilds_elsewhere_with_port_and_volume_then_the_old_host_is_cleaned(ecloud):
    image = await add_image(ecloud)
    vid = await make_volume(ecloud, 1)
    sid = await boot_on_sim1(ecloud, image, [{"source_type": "volume", "destination_type": "volume",
                                               "uuid": vid, "boot_index": -1}])
    await wait_volume(ecloud, vid, "in-use")
    # The host is up: Nova refuses (400) and nothing is written.
    status, body, _ = await evacuate(ecloud, sid, {})
    assert status == 400 and body["badRequest"]["message"] == "Compute service of sim1 is still in use.", body
    assert await migration_of(ecloud, sid) == {}

    await force_down(ecloud, "sim1", True)
    status, body, _ = await evacuate(ecloud, sid, {})
    assert status == 200 and body is None, body
    server = await wait_for_status(ecloud, sid, "ACTIVE", user="admin")
    assert server["OS-EXT-SRV-ATTR:host"] == "sim2" and server["OS-EXT-STS:task_state"] is None
    sim2 = ecloud.app[keys.COMPUTES]["sim2"].driver
    assert f"volume-{vid}" in await sim2.domain_xml(sid, inactive=True)
    assert f"volume-{vid}" in await pool_volumes(ecloud, "sim2")
    assert f"volume-{vid}" not in await pool_volumes(ecloud, "sim1")
    status, body, _ = await ecloud.compute("GET", f"/servers/{sid}/os-volume_attachments", version="2.89")
    assert [a["volumeId"] for a in body["volumeAttachments"]] == [vid]
    assert (await wait_volume(ecloud, vid, "in-use"))["attachments"][0]["server_id"] == sid
    status, body, _ = await ecloud.request("GET", f"/networking/v2.0/ports?device_id={sid}", user="admin")
    assert status == 200 and [p["binding:host_id"] for p in body["ports"]] == ["sim2"], body
    migration = await migration_of(ecloud, sid)
    assert migration["migration_type"] == "evacuation" and migration["status"] == "done"
    assert migration["source_compute"] == "sim1" and migration["dest_compute"] == "sim2"
    assert await events_of(ecloud, sid, "evacuate") == {"conductor_rebuild_server": "Success",
                                                        "compute_rebuild_instance": "Success"}
    # While sim1 is down its leftovers and the claim the migration holds stay.
    assert await ecloud.app[keys.COMPUTES]["sim1"].driver.get_info(sid) is not None
    assert await host_usage(ecloud) == {"sim1": (1, 512), "sim2": (1, 512)}

    await force_down(ecloud, "sim1", False)
    await wait_migration(ecloud, sid, "completed")
    assert await ecloud.app[keys.COMPUTES]["sim1"].driver.get_info(sid) is None
    assert await host_usage(ecloud) == {"sim1": (0, 0), "sim2": (1, 512)}
    status, body, _ = await ecloud.compute("GET", "/os-migrations?migration_type=evacuation", version="2.23",
                                           user="admin")
    assert [(m["instance_uuid"], m["status"]) for m in body["migrations"]] == [(sid, "completed")]


async def test_evacuate_refusals_microversions_and_no_valid_host(ecloud):
    image = await add_image(ecloud)
    sid = await boot_on_sim1(ecloud, image)
    await force_down(ecloud, "sim1", True)
    cases = [
        ({}, "2.13", 400, "'onSharedStorage' is a required property"),
        ({"onSharedStorage": True}, "2.13", 400, "onSharedStorage is not supported"),
        ({"host": "sim2", "onSharedStorage": False}, "2.14", 400, "Additional properties are not allowed"),
        ({"host": "sim1"}, "2.14", 400, "The target host can't be the same one."),
        ({"force": True}, "2.29", 400, "Can't force to a non-provided destination"),
        ({"host": "sim2", "force": True}, "2.68", 400, "Additional properties are not allowed"),
    ]
    for body, version, code, message in cases:
        status, resp, _ = await evacuate(ecloud, sid, body, version=version)
        assert status == code and message in resp["badRequest"]["message"], (body, resp)
    status, resp, _ = await evacuate(ecloud, sid, {"host": "nowhere"})
    assert status == 404 and resp["itemNotFound"]["message"] == "Compute host nowhere not found.", resp
    status, resp, _ = await boot(ecloud, [], image=image, networks="none")  # the demo project's own server
    mine = resp["server"]["id"]
    await wait_for_status(ecloud, mine, "ACTIVE")
    status, resp, _ = await evacuate(ecloud, mine, {}, user="demo")
    assert status == 403 and "os_compute_api:os-evacuate" in resp["forbidden"]["message"], resp
    assert await migration_of(ecloud, sid) == {}

    # No other host can take it: back as it was (ACTIVE on sim1), the migration in error.
    await force_down(ecloud, "sim2", True)
    status, resp, _ = await evacuate(ecloud, sid, {"host": "sim2"})
    assert status == 200, resp
    assert (await wait_migration(ecloud, sid, "error"))["migration_type"] == "evacuation"
    server = await wait_for_status(ecloud, sid, "ACTIVE", user="admin")
    assert server["OS-EXT-SRV-ATTR:host"] == "sim1" and server["OS-EXT-STS:task_state"] is None
    assert await events_of(ecloud, sid, "evacuate", user="admin") == {"conductor_rebuild_server": "Error"}
    await force_down(ecloud, "sim2", False)

    # Before 2.14 the admin password comes back (enable_instance_password); from 2.95 it ends STOPPED.
    status, resp, _ = await evacuate(ecloud, sid, {"onSharedStorage": False, "adminPass": "s3cret"},
                                     version="2.13")
    assert status == 200 and resp == {"adminPass": "s3cret"}, resp
    server = await wait_for_status(ecloud, sid, "ACTIVE", user="admin")
    assert server["OS-EXT-SRV-ATTR:host"] == "sim2"
    await force_down(ecloud, "sim1", False)
    await wait_migration(ecloud, sid, "completed")
    await force_down(ecloud, "sim2", True)
    status, resp, _ = await evacuate(ecloud, sid, {}, version="2.95")
    assert status == 200, resp
    server = await wait_for_status(ecloud, sid, "SHUTOFF", user="admin")
    assert server["OS-EXT-SRV-ATTR:host"] == "sim1" and server["OS-EXT-STS:vm_state"] == "stopped"


async def test_openstack_cli_evacuates_a_stopped_server_which_stays_stopped(ecloud):
    image = await add_image(ecloud)
    sid = await boot_on_sim1(ecloud, image)
    status, _, _ = await ecloud.compute("POST", f"/servers/{sid}/action", json_body={"os-stop": None},
                                        user="admin")
    assert status == 202
    await wait_for_status(ecloud, sid, "SHUTOFF", user="admin")
    await force_down(ecloud, "sim1", True)
    await ecloud.openstack("--os-compute-api-version", "2.29", "server", "evacuate", "--host", "sim2", sid,
                           cloud="novalite-admin")
    await wait_migration(ecloud, sid, "done")
    server = await wait_for_status(ecloud, sid, "SHUTOFF", user="admin")
    assert server["OS-EXT-SRV-ATTR:host"] == "sim2" and server["OS-EXT-STS:task_state"] is None
    await force_down(ecloud, "sim1", False)
    await wait_migration(ecloud, sid, "completed")
