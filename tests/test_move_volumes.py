"""Moving servers that have Cinder volumes, on two simulated hosts: cold migration (revert, confirm)
and live migration carry the volumes into the destination's pool; a failed live migration and a
delete in the middle of one leave nothing behind on either host; ``force`` skips the filters; the
watchdog's deadline of moves aborts an overdue live migration and never leaves the row where the
guest is not.

libvirt's test driver has no streams, so a volume's copy on a simulated host is a blank volume of
the same size (tests/test_live_migration_guest.py moves real data).
"""

from __future__ import annotations

import asyncio

from conftest import add_image, start_cloud, stop_cloud, wait_for_status
from test_live_migration import live, settled
from test_migrate import action, force_down, wait_migration
from test_resize import events_of, host_usage, migration_of
from test_volumes import boot, make_volume, pool_volumes, wait_volume

from novalite.api import keys


async def server_with_volume(cloud, image: str) -> tuple[str, str]:
    """A demo server on sim1 with a volume of sim1's pool attached as its second disk."""
    vid = await make_volume(cloud, 1)
    status, body, _ = await boot(cloud, [{"source_type": "volume", "destination_type": "volume", "uuid": vid,
                                          "boot_index": -1}], image=image, networks="auto")
    assert status == 202, body
    sid = body["server"]["id"]
    server = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert server["OS-EXT-SRV-ATTR:host"] == "sim1"
    await wait_volume(cloud, vid, "in-use")
    return sid, vid


async def where(cloud, vid: str) -> tuple[str, list[str]]:
    """The host the volume's row names, and the hosts whose pools hold a volume of its name."""
    async with cloud.app[keys.DB].acquire() as conn:
        host = await conn.fetchval("SELECT host FROM volumes WHERE id = $1::uuid", vid)
    return host, [h for h in ("sim1", "sim2") if f"volume-{vid}" in await pool_volumes(cloud, h)]


async def attached_at(cloud, sid: str, vid: str, host: str) -> None:
    """The server's domain on ``host`` plugs the volume from ``host``'s pool, as the API shows it attached."""
    _, pool = cloud.app[keys.VOLUME_API].storage(host)
    xml = await cloud.app[keys.HOSTS][host].driver.domain_xml(sid, inactive=True)
    assert f"{pool.target}/volume-{vid}" in xml, xml
    status, body, _ = await cloud.compute("GET", f"/servers/{sid}/os-volume_attachments", version="2.89")
    assert status == 200 and [a["volumeId"] for a in body["volumeAttachments"]] == [vid], body
    assert (await wait_volume(cloud, vid, "in-use"))["attachments"][0]["server_id"] == sid


async def dhcp_macs(cloud, host: str) -> set[str]:
    """The MACs of every DHCP host entry the cloud's networks have on ``host``."""
    async with cloud.app[keys.DB].acquire() as conn:
        names = [r["libvirt_name"] for r in await conn.fetch("SELECT libvirt_name FROM networks")]
    driver = cloud.app[keys.HOSTS][host].driver
    return {mac for name in names for mac in await driver.dhcp_hosts(name)}


async def test_cold_migration_carries_the_volume_revert_keeps_the_original_confirm_drops_it(cloud):
    image = await add_image(cloud)
    sid, vid = await server_with_volume(cloud, image)
    status, body, _ = await action(cloud, sid, {"migrate": None})  # no pin any more: the scheduler picks sim2
    assert status == 202, body
    moved = await wait_for_status(cloud, sid, "VERIFY_RESIZE", user="admin")
    assert moved["OS-EXT-SRV-ATTR:host"] == "sim2"
    assert await where(cloud, vid) == ("sim2", ["sim1", "sim2"])  # the original stays until confirm/revert
    await attached_at(cloud, sid, vid, "sim2")

    status, body, _ = await action(cloud, sid, {"revertResize": None})
    assert status == 202, body
    back = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert back["OS-EXT-SRV-ATTR:host"] == "sim1"
    await wait_migration(cloud, sid, "reverted")
    assert await where(cloud, vid) == ("sim1", ["sim1"])
    await attached_at(cloud, sid, vid, "sim1")

    status, body, _ = await action(cloud, sid, {"migrate": {"host": "sim2"}})
    assert status == 202, body
    await wait_for_status(cloud, sid, "VERIFY_RESIZE", user="admin")
    status, body, _ = await action(cloud, sid, {"confirmResize": None})
    assert status == 204, body
    await wait_migration(cloud, sid, "confirmed")
    assert (await wait_for_status(cloud, sid, "ACTIVE", user="admin"))["OS-EXT-SRV-ATTR:host"] == "sim2"
    assert await where(cloud, vid) == ("sim2", ["sim2"])
    await attached_at(cloud, sid, vid, "sim2")
    assert await host_usage(cloud) == {"sim1": (0, 0), "sim2": (1, 512)}

    # The volume keeps working where it is now: detached, it is available in sim2's pool.
    status, _, _ = await cloud.compute("DELETE", f"/servers/{sid}/os-volume_attachments/{vid}", version="2.89")
    assert status == 202
    await wait_volume(cloud, vid, "available")
    assert await where(cloud, vid) == ("sim2", ["sim2"])


async def test_live_migration_carries_the_volume_and_a_failed_one_leaves_no_copy(cloud):
    image = await add_image(cloud)
    sid, vid = await server_with_volume(cloud, image)
    source = cloud.app[keys.COMPUTES]["sim1"]

    async def fail(_uuid: str, _mid: int) -> None:
        raise RuntimeError("the copy broke off")

    source.live.before_move = fail  # after the destination was prepared, volume copy included
    status, body, _ = await live(cloud, sid)
    assert status == 202, body
    assert (await settled(cloud, sid))["status"] == "error"
    assert (await wait_for_status(cloud, sid, "ACTIVE", user="admin"))["OS-EXT-SRV-ATTR:host"] == "sim1"
    assert await where(cloud, vid) == ("sim1", ["sim1"])
    assert await cloud.app[keys.HOSTS]["sim2"].driver.get_info(sid) is None

    source.live.before_move = None
    status, body, _ = await live(cloud, sid)
    assert status == 202, body
    assert (await settled(cloud, sid))["status"] == "completed"
    moved = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert moved["OS-EXT-SRV-ATTR:host"] == "sim2"
    assert await where(cloud, vid) == ("sim2", ["sim2"])  # the source's copy went with the guest
    status, body, _ = await cloud.compute("GET", f"/servers/{sid}/os-volume_attachments", version="2.89")
    assert [a["volumeId"] for a in body["volumeAttachments"]] == [vid]
    assert await host_usage(cloud) == {"sim1": (0, 0), "sim2": (1, 512)}
    await cloud.openstack("server", "migrate", "--live-migration", "--host", "sim1", sid, cloud="novalite-admin")
    assert (await settled(cloud, sid))["status"] == "completed"
    shown = await cloud.openstack_json("server", "show", sid, cloud="novalite-admin")
    assert shown["OS-EXT-SRV-ATTR:host"] == "sim1" and shown["status"] == "ACTIVE"
    assert await where(cloud, vid) == ("sim1", ["sim1"])


async def test_delete_during_a_live_migration_aborts_it_and_leaves_nothing_on_either_host(cloud):
    image = await add_image(cloud)
    sid, vid = await server_with_volume(cloud, image)
    source = cloud.app[keys.COMPUTES]["sim1"]
    running, release = asyncio.Event(), asyncio.Event()

    async def hold(_uuid: str, _mid: int) -> None:  # prepared on sim2, held before the guest moves
        running.set()
        await release.wait()

    source.live.before_move = hold
    status, body, _ = await live(cloud, sid)
    assert status == 202, body
    await asyncio.wait_for(running.wait(), 10)
    _, ports, _ = await cloud.request("GET", f"/networking/v2.0/ports?device_id={sid}", user="admin")
    [mac] = [p["mac_address"] for p in ports["ports"]]
    assert mac in await dhcp_macs(cloud, "sim2")  # the destination was prepared: DHCP entry, volume copy
    assert sorted((await where(cloud, vid))[1]) == ["sim1", "sim2"]

    status, _, _ = await cloud.compute("DELETE", f"/servers/{sid}")
    assert status == 204
    release.set()
    await wait_for_status(cloud, sid, "DELETED", user="admin")
    assert (await migration_of(cloud, sid))["status"] == "cancelled"
    for host in ("sim1", "sim2"):
        assert await cloud.app[keys.HOSTS][host].driver.get_info(sid) is None
        assert mac not in await dhcp_macs(cloud, host)
    assert await where(cloud, vid) == ("sim1", ["sim1"])  # kept (not delete_on_termination), and available
    await wait_volume(cloud, vid, "available")
    assert await host_usage(cloud) == {"sim1": (0, 0), "sim2": (0, 0)}
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM allocations") == 0


async def test_force_skips_the_filters_for_the_named_host_but_still_claims(cloud):
    image = await add_image(cloud)
    _, body, _ = await cloud.compute("POST", "/servers", version="2.79", user="admin", json_body={"server": {
        "name": "f", "imageRef": image, "flavorRef": "1", "networks": "none", "availability_zone": "nova:sim1"}})
    sid = body["server"]["id"]
    await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    status, body, _ = await cloud.compute("PUT", "/os-services/disable", version="2.1", user="admin",
                                          json_body={"host": "sim2", "binary": "nova-compute"})
    assert status == 200, body
    # Not forced: the ComputeFilter judges the named host and refuses a disabled one.
    status, body, _ = await live(cloud, sid, "sim2", version="2.30", force=False)
    assert status == 202, body
    assert (await settled(cloud, sid))["status"] == "error"
    assert await events_of(cloud, sid, "live-migration", user="admin") == {"conductor_live_migrate_instance": "Error"}
    # Forced (2.30–2.67): no filters, as in Nova; the claim is still made on sim2.
    status, body, _ = await live(cloud, sid, "sim2", version="2.30", force=True)
    assert status == 202, body
    assert (await settled(cloud, sid))["status"] == "completed"
    assert (await wait_for_status(cloud, sid, "ACTIVE", user="admin"))["OS-EXT-SRV-ATTR:host"] == "sim2"
    assert await host_usage(cloud) == {"sim1": (0, 0), "sim2": (1, 512)}

    # Evacuation (2.29–2.67) the same way: sim2 down, sim1 disabled; only a forced host takes it.
    await cloud.compute("PUT", "/os-services/enable", version="2.1", user="admin",
                        json_body={"host": "sim2", "binary": "nova-compute"})
    await cloud.compute("PUT", "/os-services/disable", version="2.1", user="admin",
                        json_body={"host": "sim1", "binary": "nova-compute"})
    await force_down(cloud, "sim2", True)
    evac = {"evacuate": {"host": "sim1"}}
    status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body=evac, version="2.29",
                                          user="admin")
    assert status == 200, body
    assert (await wait_migration(cloud, sid, "error"))["migration_type"] == "evacuation"
    evac["evacuate"]["force"] = True
    status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body=evac, version="2.29",
                                          user="admin")
    assert status == 200, body
    server = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert server["OS-EXT-SRV-ATTR:host"] == "sim1"
    assert (await migration_of(cloud, sid))["status"] == "done"


async def test_watchdog_aborts_an_overdue_live_migration_and_a_guest_that_moved_anyway_keeps_its_row(
        pg_dsn, tmp_path):
    extra = """
[deadlines]
migrating = 1.0
watchdog_interval = 0.2
"""
    cloud = await start_cloud(pg_dsn, tmp_path, extra=extra)
    try:
        watchdog = cloud.app[keys.WATCHDOG]
        assert watchdog.deadline_for("active", "migrating") == 1.0
        assert watchdog.deadline_for("active", "resize_migrating") == 1.0
        assert watchdog.deadline_for("building", "spawning") == 600
        image = await add_image(cloud)
        sid, vid = await server_with_volume(cloud, image)
        source = cloud.app[keys.COMPUTES]["sim1"]

        async def long_copy(_uuid: str, mid: int) -> None:  # a copy that ends only when aborted
            while mid not in source.live._aborts:
                await asyncio.sleep(0.05)

        source.live.before_move = long_copy
        status, _, _ = await live(cloud, sid)
        assert status == 202
        assert (await settled(cloud, sid))["status"] == "cancelled"
        stayed = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
        assert stayed["OS-EXT-SRV-ATTR:host"] == "sim1"
        assert await where(cloud, vid) == ("sim1", ["sim1"])

        async def finishes_anyway(_uuid: str, mid: int) -> None:  # libvirt completed the move despite the abort
            while mid not in source.live._aborts:
                await asyncio.sleep(0.05)
            for _ in range(100):  # the watchdog's second pass fails the instance meanwhile
                async with cloud.app[keys.DB].acquire() as conn:
                    if await conn.fetchval("SELECT vm_state FROM instances WHERE uuid = $1::uuid", sid) == "error":
                        break
                await asyncio.sleep(0.05)
            source.live._aborts.discard(mid)

        source.live.before_move = finishes_anyway
        status, _, _ = await live(cloud, sid)
        assert status == 202
        assert (await settled(cloud, sid))["status"] == "error"
        failed = await wait_for_status(cloud, sid, "ERROR", user="admin")
        assert "Timed out" in failed["fault"]["message"]
        assert failed["OS-EXT-SRV-ATTR:host"] == "sim2"  # where the guest runs
        assert await cloud.app[keys.HOSTS]["sim2"].driver.get_info(sid) is not None
        assert await where(cloud, vid) == ("sim2", ["sim2"])
        assert await host_usage(cloud) == {"sim1": (0, 0), "sim2": (1, 512)}
    finally:
        await stop_cloud(cloud)
