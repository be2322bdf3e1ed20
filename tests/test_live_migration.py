"""Live migration (Nova's os-migrateLive, /servers/{id}/migrations) on two simulated hosts.

libvirt's test driver cannot migrate, so there the driver moves the domain (defined and started
on the destination, destroyed on the source): the API, the scheduling and claims, the migration
record and the instance action run as they do for real guests (tests/test_live_migration_guest.py).
"""

from __future__ import annotations

import asyncio

from conftest import add_image, wait_for_status

from novalite.api import keys


async def boot(cloud, image: str) -> dict:
    body = {"name": "lm", "imageRef": image, "flavorRef": "1", "networks": "auto"}
    status, resp, _ = await cloud.compute("POST", "/servers", json_body={"server": body}, version="2.79")
    assert status == 202, resp
    return await wait_for_status(cloud, resp["server"]["id"], "ACTIVE", user="admin")


async def live(cloud, sid: str, host: str | None = None, version: str = "2.79", user: str = "admin", **extra):
    body = {"os-migrateLive": {"host": host, "block_migration": "auto", **extra}}
    return await cloud.compute("POST", f"/servers/{sid}/action", json_body=body, version=version, user=user)


async def migration_of(cloud, sid: str) -> dict:
    async with cloud.app[keys.DB].acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM migrations WHERE instance_uuid = $1::uuid ORDER BY id DESC LIMIT 1",
                                  sid)
    return dict(row) if row else {}


async def settled(cloud, sid: str) -> dict:
    """The migration once it left its in-progress statuses, and the server then."""
    for _ in range(200):
        m = await migration_of(cloud, sid)
        if m and m["status"] in ("completed", "error", "cancelled", "failed"):
            _, body, _ = await cloud.compute("GET", f"/servers/{sid}", version="2.79", user="admin")
            if body["server"]["status"] != "MIGRATING":
                return m
        await asyncio.sleep(0.05)
    raise AssertionError(f"migration of {sid} never settled: {await migration_of(cloud, sid)}")


async def events_of(cloud, sid: str, action_name: str) -> dict[str, str]:
    _, actions, _ = await cloud.compute("GET", f"/servers/{sid}/os-instance-actions", version="2.79", user="admin")
    req = next(a["request_id"] for a in actions["instanceActions"] if a["action"] == action_name)
    _, act, _ = await cloud.compute("GET", f"/servers/{sid}/os-instance-actions/{req}", version="2.79", user="admin")
    return {e["event"]: e["result"] for e in act["instanceAction"]["events"]}


async def host_usage(cloud) -> dict[str, tuple[int, int]]:
    async with cloud.app[keys.DB].acquire() as conn:
        rows = await conn.fetch("SELECT host, vcpus_used, memory_mb_used FROM compute_nodes ORDER BY host")
    return {r["host"]: (r["vcpus_used"], r["memory_mb_used"]) for r in rows}


async def test_live_migrate_to_the_other_host_and_back_by_name(cloud):
    image = await add_image(cloud)
    server = await boot(cloud, image)
    sid, source = server["id"], server["OS-EXT-SRV-ATTR:host"]
    status, body, _ = await live(cloud, sid)
    assert status == 202, body
    m = await settled(cloud, sid)
    shown = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    dest = shown["OS-EXT-SRV-ATTR:host"]
    assert dest != source and m["status"] == "completed" and m["migration_type"] == "live-migration"
    assert m["source_compute"] == source and m["dest_compute"] == dest
    assert shown["OS-EXT-STS:power_state"] == 1
    hosts = cloud.app[keys.HOSTS]
    assert (await hosts[dest].driver.get_info(sid)).power_state == 1
    assert await hosts[source].driver.get_info(sid) is None
    usage = await host_usage(cloud)  # the claim moved with the guest
    assert usage[source] == (0, 0) and usage[dest] == (1, 512)
    assert await events_of(cloud, sid, "live-migration") == {
        "conductor_live_migrate_instance": "Success", "compute_check_can_live_migrate_destination": "Success",
        "compute_pre_live_migration": "Success", "compute_live_migration": "Success",
        "compute_post_live_migration_at_destination": "Success"}
    _, ports, _ = await cloud.request("GET", f"/networking/v2.0/ports?device_id={sid}", user="admin")
    assert [p["binding:host_id"] for p in ports["ports"]] == [dest]

    # Back, naming the host (2.30: the scheduler's filters check it), as GET /os-migrations shows.
    status, body, _ = await live(cloud, sid, source, version="2.30", force=False)
    assert status == 202, body
    assert (await settled(cloud, sid))["status"] == "completed"
    back = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert back["OS-EXT-SRV-ATTR:host"] == source
    status, body, _ = await cloud.compute("GET", "/os-migrations?migration_type=live-migration", version="2.23",
                                          user="admin")
    assert status == 200 and [(x["source_compute"], x["dest_compute"], x["status"]) for x in body["migrations"]] \
        == [(dest, source, "completed"), (source, dest, "completed")]


async def test_refusals(cloud):
    image = await add_image(cloud)
    server = await boot(cloud, image)
    sid, source = server["id"], server["OS-EXT-SRV-ATTR:host"]
    status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body={"os-migrateLive": {
        "block_migration": "auto"}}, version="2.79", user="admin")
    assert status == 400 and "'host' is a required property" in body["badRequest"]["message"]
    status, body, _ = await live(cloud, sid, version="2.1")  # before 2.25: no "auto", disk_over_commit needed
    assert status == 400, body
    status, body, _ = await live(cloud, sid, "nosuchhost")
    assert status == 400 and body["badRequest"]["message"] == "Compute host nosuchhost could not be found."
    status, body, _ = await live(cloud, sid, None, version="2.30", force=True)
    assert status == 400 and body["badRequest"]["message"] == "Can't force to a non-provided destination"
    status, body, _ = await live(cloud, sid, source, version="2.30")
    assert status == 400 and "to current host" in body["badRequest"]["message"]
    status, body, _ = await live(cloud, sid, user="demo")  # admin (or project manager) only
    assert status == 403, body
    status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body={"os-stop": None})
    assert status == 202
    await wait_for_status(cloud, sid, "SHUTOFF", user="admin")
    status, body, _ = await live(cloud, sid)
    assert status == 409 and "while it is in vm_state stopped" in body["conflictingRequest"]["message"]
    status, _, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body={"os-start": None})
    await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    # 2.34+ answers at once; its own host then fails in the background: error, still ACTIVE there.
    status, body, _ = await live(cloud, sid, source, version="2.34")
    assert status == 202, body
    assert (await settled(cloud, sid))["status"] == "error"
    shown = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert shown["OS-EXT-SRV-ATTR:host"] == source
    assert await events_of(cloud, sid, "live-migration") == {"conductor_live_migrate_instance": "Error"}
    assert await host_usage(cloud) == {source: (1, 512), next(h for h in cloud.app[keys.HOSTS] if h != source):
                                       (0, 0)}


async def test_migrations_of_a_server_force_complete_and_abort(cloud):
    image = await add_image(cloud)
    server = await boot(cloud, image)
    sid, source = server["id"], server["OS-EXT-SRV-ATTR:host"]
    manager = cloud.app[keys.COMPUTES][source]
    release = asyncio.Event()
    running = asyncio.Event()

    async def hold(_uuid: str, _mid: int) -> None:  # the migration stays ``running`` until released
        running.set()
        await release.wait()

    manager.live.before_move = hold
    status, _, _ = await live(cloud, sid)
    assert status == 202
    await asyncio.wait_for(running.wait(), 10)
    shown = await wait_for_status(cloud, sid, "MIGRATING", user="admin")
    assert shown["OS-EXT-STS:task_state"] == "migrating"
    status, body, _ = await cloud.compute("GET", f"/servers/{sid}/migrations", version="2.80", user="admin")
    assert status == 200, body
    [m] = body["migrations"]
    assert m["status"] == "running" and m["server_uuid"] == sid and m["source_compute"] == source
    assert {"memory_total_bytes", "disk_processed_bytes", "uuid", "project_id"} <= set(m)
    mid = m["id"]
    status, body, _ = await cloud.compute("GET", f"/servers/{sid}/migrations/{mid}", version="2.23", user="admin")
    assert status == 200 and body["migration"]["id"] == mid
    status, body, _ = await cloud.compute("GET", f"/servers/{sid}/migrations/{mid}", version="2.22", user="admin")
    assert status == 404
    # force_complete pauses the guest here; it runs again on the destination.
    status, body, _ = await cloud.compute("POST", f"/servers/{sid}/migrations/{mid}/action",
                                          json_body={"force_complete": None}, version="2.22", user="admin")
    assert status == 202, body
    assert (await manager.driver.get_info(sid)).power_state == 3  # paused
    release.set()
    assert (await settled(cloud, sid))["status"] == "completed"
    moved = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    dest = moved["OS-EXT-SRV-ATTR:host"]
    assert moved["OS-EXT-STS:power_state"] == 1
    status, body, _ = await cloud.compute("GET", f"/servers/{sid}/migrations/{mid}", version="2.23", user="admin")
    assert status == 404 and "is not in progress" in body["itemNotFound"]["message"]
    status, body, _ = await cloud.compute("POST", f"/servers/{sid}/migrations/{mid}/action",
                                          json_body={"force_complete": None}, version="2.22", user="admin")
    assert status == 409, body  # no longer migrating

    # An abort while it runs: the guest stays where it was, the migration is cancelled.
    back = cloud.app[keys.COMPUTES][dest]
    release.clear()
    running.clear()
    back.live.before_move = hold
    status, _, _ = await live(cloud, sid)
    assert status == 202
    await asyncio.wait_for(running.wait(), 10)
    mid2 = (await migration_of(cloud, sid))["id"]
    status, body, _ = await cloud.compute("DELETE", f"/servers/{sid}/migrations/{mid2}", version="2.23",
                                          user="admin")
    assert status == 404  # abort is 2.24+
    status, body, _ = await cloud.compute("DELETE", f"/servers/{sid}/migrations/{mid}", version="2.24",
                                          user="admin")
    assert status == 400 and "Cannot abort live migration" in body["badRequest"]["message"]
    status, body, _ = await cloud.compute("DELETE", f"/servers/{sid}/migrations/{mid2}", version="2.24",
                                          user="admin")
    assert status == 202, body
    release.set()
    assert (await settled(cloud, sid))["status"] == "cancelled"
    stayed = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert stayed["OS-EXT-SRV-ATTR:host"] == dest
    assert (await back.driver.get_info(sid)).power_state == 1
    assert await cloud.app[keys.COMPUTES][source].driver.get_info(sid) is None  # nothing left there
    usage = await host_usage(cloud)
    assert usage[dest] == (1, 512) and usage[source] == (0, 0)


async def test_openstack_server_migrate_live_migration(cloud):
    image = await add_image(cloud)
    server = await boot(cloud, image)
    sid, source = server["id"], server["OS-EXT-SRV-ATTR:host"]
    other = next(h for h in cloud.app[keys.HOSTS] if h != source)
    await cloud.openstack("server", "migrate", "--live-migration", "--host", other, sid, cloud="novalite-admin")
    await settled(cloud, sid)
    shown = await cloud.openstack_json("server", "show", sid, cloud="novalite-admin")
    assert shown["OS-EXT-SRV-ATTR:host"] == other and shown["status"] == "ACTIVE"
    await cloud.openstack("server", "migrate", "--live-migration", sid, cloud="novalite-admin")
    await settled(cloud, sid)
    listed = await cloud.openstack_json("--os-compute-api-version", "2.80", "server", "migration", "list",
                                        "--server", sid, "--type", "live-migration", cloud="novalite-admin")
    assert [(x["Source Compute"], x["Dest Compute"], x["Status"]) for x in listed] == [
        (other, source, "completed"), (source, other, "completed")]
