"""Resize (Nova's ``resize``/``confirmResize``/``revertResize``) on two simulated hosts."""

from __future__ import annotations

import asyncio

from conftest import add_image, start_cloud, stop_cloud, wait_for_status

from novalite.api import keys


async def boot(cloud, image: str, flavor: str = "1", **server) -> dict:
    body = {"name": "vm", "imageRef": image, "flavorRef": flavor, "networks": "auto", **server}
    status, resp, _ = await cloud.compute("POST", "/servers", json_body={"server": body}, version="2.79")
    assert status == 202, resp
    return await wait_for_status(cloud, resp["server"]["id"], "ACTIVE", user="admin")


async def action(cloud, sid: str, body: dict, user: str = "demo"):
    return await cloud.compute("POST", f"/servers/{sid}/action", json_body=body, version="2.79", user=user)


async def show(cloud, sid: str) -> dict:
    _, body, _ = await cloud.compute("GET", f"/servers/{sid}", version="2.79", user="admin")
    return body["server"]


async def demo_project(cloud) -> str:
    async with cloud.app[keys.DB].acquire() as conn:
        return await conn.fetchval("SELECT id FROM projects WHERE name = 'demo'")


async def in_use(cloud) -> dict:
    _, body, _ = await cloud.compute("GET", f"/os-quota-sets/{await demo_project(cloud)}/detail",
                                     version="2.79")
    qs = body["quota_set"]
    return {"instances": qs["instances"]["in_use"], "cores": qs["cores"]["in_use"], "ram": qs["ram"]["in_use"]}


async def host_usage(cloud) -> dict[str, tuple[int, int]]:
    async with cloud.app[keys.DB].acquire() as conn:
        rows = await conn.fetch("SELECT host, vcpus_used, memory_mb_used FROM compute_nodes ORDER BY host")
    return {r["host"]: (r["vcpus_used"], r["memory_mb_used"]) for r in rows}


async def migration_of(cloud, sid: str) -> dict:
    async with cloud.app[keys.DB].acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM migrations WHERE instance_uuid = $1::uuid ORDER BY id DESC LIMIT 1",
                                  sid)
    return dict(row) if row else {}


async def last_fault(cloud, sid: str) -> str | None:
    """The newest fault (Nova shows it in the server only in ERROR; an action rolled back keeps it here)."""
    async with cloud.app[keys.DB].acquire() as conn:
        return await conn.fetchval(
            "SELECT message FROM instance_faults WHERE instance_uuid = $1::uuid ORDER BY id DESC LIMIT 1", sid)


async def notifications(cloud, sid: str, like: str) -> list[str]:
    async with cloud.app[keys.DB].acquire() as conn:
        return [r["event_type"] for r in await conn.fetch(
            "SELECT event_type FROM notifications WHERE instance_uuid = $1::uuid AND event_type LIKE $2 ORDER BY id",
            sid, like)]


async def events_of(cloud, sid: str, action_name: str, user: str = "demo") -> dict[str, str]:
    _, actions, _ = await cloud.compute("GET", f"/servers/{sid}/os-instance-actions", version="2.79", user=user)
    req = next(a["request_id"] for a in actions["instanceActions"] if a["action"] == action_name)
    _, act, _ = await cloud.compute("GET", f"/servers/{sid}/os-instance-actions/{req}", version="2.79", user="admin")
    return {e["event"]: e["result"] for e in act["instanceAction"]["events"]}


async def test_resize_to_the_other_host_then_confirm(cloud):
    image = await add_image(cloud)
    server = await boot(cloud, image)
    sid, source = server["id"], server["OS-EXT-SRV-ATTR:host"]
    assert await in_use(cloud) == {"instances": 1, "cores": 1, "ram": 512}
    status, body, _ = await action(cloud, sid, {"resize": {"flavorRef": "2"}})
    assert status == 202, body
    done = await wait_for_status(cloud, sid, "VERIFY_RESIZE", user="admin")
    dest = done["OS-EXT-SRV-ATTR:host"]
    assert dest != source and done["flavor"]["original_name"] == "m1.small"
    assert done["OS-EXT-STS:vm_state"] == "resized" and done["OS-EXT-STS:power_state"] == 1
    # The guest on the destination has the new flavor; the source has no domain left.
    info = await cloud.app[keys.HOSTS][dest].driver.get_info(sid)
    assert info is not None and info.num_cpu == 1 and info.max_mem_kb == 2048 * 1024
    assert await cloud.app[keys.HOSTS][source].driver.get_info(sid) is None
    # Quota counts the new flavor from resize_finish on; both hosts hold a claim until the confirm.
    assert await in_use(cloud) == {"instances": 1, "cores": 1, "ram": 2048}
    usage = await host_usage(cloud)
    assert usage[source] == (1, 512) and usage[dest] == (1, 2048)
    migration = await migration_of(cloud, sid)
    assert migration["status"] == "finished" and migration["source_compute"] == source
    assert migration["dest_compute"] == dest and migration["migration_type"] == "resize"
    assert await events_of(cloud, sid, "resize") == {
        "conductor_migrate_server": "Success", "compute_prep_resize": "Success",
        "compute_resize_instance": "Success", "compute_finish_resize": "Success"}

    status, body, _ = await action(cloud, sid, {"confirmResize": None})
    assert status == 204, body
    active = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert active["OS-EXT-SRV-ATTR:host"] == dest and active["flavor"]["original_name"] == "m1.small"
    for _ in range(100):
        if (await migration_of(cloud, sid))["status"] == "confirmed":
            break
        await asyncio.sleep(0.05)
    assert (await migration_of(cloud, sid))["status"] == "confirmed"
    usage = await host_usage(cloud)
    assert usage[source] == (0, 0) and usage[dest] == (1, 2048)
    assert await in_use(cloud) == {"instances": 1, "cores": 1, "ram": 2048}
    assert await events_of(cloud, sid, "confirmResize") == {"compute_confirm_resize": "Success"}
    assert await notifications(cloud, sid, "instance.resize%") == [
        "instance.resize_prep.start", "instance.resize_prep.end", "instance.resize.start", "instance.resize.end",
        "instance.resize_finish.start", "instance.resize_finish.end", "instance.resize_confirm.start",
        "instance.resize_confirm.end"]
    # GET /os-migrations (admin) shows the record as Nova does.
    status, body, _ = await cloud.compute("GET", "/os-migrations", version="2.23", user="admin")
    assert status == 200, body
    mig = body["migrations"][0]
    assert mig["instance_uuid"] == sid and mig["status"] == "confirmed" and mig["migration_type"] == "resize"
    assert mig["source_compute"] == source and mig["dest_compute"] == dest
    assert isinstance(mig["old_instance_type_id"], int) and isinstance(mig["new_instance_type_id"], int)


async def test_revert_goes_back_to_the_source_with_the_old_flavor(cloud):
    image = await add_image(cloud)
    server = await boot(cloud, image)
    sid, source = server["id"], server["OS-EXT-SRV-ATTR:host"]
    status, _, _ = await action(cloud, sid, {"resize": {"flavorRef": "3"}})
    assert status == 202
    resized = await wait_for_status(cloud, sid, "VERIFY_RESIZE", user="admin")
    dest = resized["OS-EXT-SRV-ATTR:host"]
    assert await in_use(cloud) == {"instances": 1, "cores": 2, "ram": 4096}
    status, body, _ = await action(cloud, sid, {"revertResize": None})
    assert status == 202, body
    back = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
    assert back["OS-EXT-SRV-ATTR:host"] == source and back["flavor"]["original_name"] == "m1.tiny"
    info = await cloud.app[keys.HOSTS][source].driver.get_info(sid)
    assert info is not None and info.num_cpu == 1 and info.max_mem_kb == 512 * 1024
    assert await cloud.app[keys.HOSTS][dest].driver.get_info(sid) is None
    assert await in_use(cloud) == {"instances": 1, "cores": 1, "ram": 512}
    usage = await host_usage(cloud)
    assert usage[source] == (1, 512) and usage[dest] == (0, 0)
    assert (await migration_of(cloud, sid))["status"] == "reverted"
    assert await events_of(cloud, sid, "revertResize") == {
        "compute_revert_resize": "Success", "compute_finish_revert_resize": "Success"}
    assert await notifications(cloud, sid, "instance.resize_revert%") == [
        "instance.resize_revert.start", "instance.resize_revert.end"]


async def test_a_stopped_server_stays_stopped(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    status, _, _ = await action(cloud, sid, {"os-stop": None})
    assert status == 202
    await wait_for_status(cloud, sid, "SHUTOFF")
    status, _, _ = await action(cloud, sid, {"resize": {"flavorRef": "2"}})
    assert status == 202
    resized = await wait_for_status(cloud, sid, "VERIFY_RESIZE", user="admin")
    assert resized["OS-EXT-STS:power_state"] == 4
    status, _, _ = await action(cloud, sid, {"confirmResize": None})
    assert status == 204
    done = await wait_for_status(cloud, sid, "SHUTOFF", user="admin")
    assert done["OS-EXT-STS:power_state"] == 4 and done["flavor"]["original_name"] == "m1.small"


async def test_same_host_is_refused_unless_allowed(pg_dsn, tmp_path):
    one_host = '[[hosts]]\nname = "solo"\nsimulate = { vcpus = 8, memory_mb = 16384, disk_gb = 200 }\n'
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cloud = await start_cloud(pg_dsn, tmp_path / "a", hosts=one_host)
    try:
        image = await add_image(cloud)
        sid = (await boot(cloud, image))["id"]
        status, _, _ = await action(cloud, sid, {"resize": {"flavorRef": "2"}})
        assert status == 202
        for _ in range(100):
            if (await migration_of(cloud, sid))["status"] == "error":
                break
            await asyncio.sleep(0.05)
        back = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
        assert back["flavor"]["original_name"] == "m1.tiny"
        assert "No valid host was found" in await last_fault(cloud, sid)
        assert (await migration_of(cloud, sid))["status"] == "error"
        assert await in_use(cloud) == {"instances": 1, "cores": 1, "ram": 512}
        assert (await host_usage(cloud))["solo"] == (1, 512)
    finally:
        await stop_cloud(cloud)
    cloud = await start_cloud(pg_dsn, tmp_path / "b", hosts=one_host,
                              extra="[compute]\nallow_resize_to_same_host = true\n")
    try:
        image = await add_image(cloud)
        sid = (await boot(cloud, image))["id"]
        status, _, _ = await action(cloud, sid, {"resize": {"flavorRef": "2"}})
        assert status == 202
        resized = await wait_for_status(cloud, sid, "VERIFY_RESIZE", user="admin")
        assert resized["OS-EXT-SRV-ATTR:host"] == "solo"
        assert (await host_usage(cloud))["solo"] == (2, 2560)  # both flavors held until the confirm, as in Nova
        status, _, _ = await action(cloud, sid, {"confirmResize": None})
        assert status == 204
        await wait_for_status(cloud, sid, "ACTIVE", user="admin")
        for _ in range(100):
            if (await host_usage(cloud))["solo"] == (1, 2048):
                break
            await asyncio.sleep(0.05)
        assert (await host_usage(cloud))["solo"] == (1, 2048)
        info = await cloud.app[keys.HOSTS]["solo"].driver.get_info(sid)
        assert info is not None and info.max_mem_kb == 2048 * 1024
    finally:
        await stop_cloud(cloud)


async def test_errors_as_nova_answers_them(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image, flavor="2"))["id"]
    status, body, _ = await action(cloud, sid, {"resize": {"flavorRef": "2"}})
    assert status == 400 and body["badRequest"]["message"] == "When resizing, instances must change flavor!"
    status, body, _ = await action(cloud, sid, {"resize": {"flavorRef": "nope"}})
    assert status == 400 and body["badRequest"]["message"] == "Flavor nope could not be found."
    status, body, _ = await action(cloud, sid, {"resize": {"flavorRef": ""}})
    assert status == 400
    status, body, _ = await action(cloud, sid, {"resize": {}})
    assert status == 400
    status, body, _ = await action(cloud, sid, {"confirmResize": None})
    assert status == 409 and body["conflictingRequest"]["message"] == (
        f"Cannot 'confirmResize' instance {sid} while it is in vm_state active")
    status, body, _ = await action(cloud, sid, {"revertResize": None})
    assert status == 409
    status, body, _ = await cloud.compute("POST", "/servers/00000000-0000-4000-8000-000000000000/action",
                                          json_body={"resize": {"flavorRef": "3"}})
    assert status == 404
    # Quota on the deltas: cores 1 → 8 passes a limit of 4.
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("INSERT INTO quotas VALUES ($1, 'cores', 4)", await demo_project(cloud))
    status, body, _ = await action(cloud, sid, {"resize": {"flavorRef": "5"}})
    assert status == 403, body
    assert body["forbidden"]["message"] == "Quota exceeded for cores: Requested 7, but already used 1 of 4 cores"
    # Locked → 409 for the owner.
    status, _, _ = await action(cloud, sid, {"lock": None}, user="admin")
    assert status == 202
    status, body, _ = await action(cloud, sid, {"resize": {"flavorRef": "3"}})
    assert status == 409 and "locked" in body["conflictingRequest"]["message"]
    status, _, _ = await action(cloud, sid, {"unlock": None}, user="admin")
    # A smaller root disk: accepted, then rolled back on the source with Nova's fault (as its libvirt driver does).
    status, body, _ = await action(cloud, sid, {"resize": {"flavorRef": "1"}})
    assert status == 202, body
    for _ in range(200):
        if (await migration_of(cloud, sid))["status"] == "error":
            break
        await asyncio.sleep(0.05)
    doc = await show(cloud, sid)
    assert doc["status"] == "ACTIVE"
    assert await last_fault(cloud, sid) == "Resize error: Unable to resize disk down."
    assert doc["flavor"]["original_name"] == "m1.small" and doc["OS-EXT-STS:task_state"] is None
    assert (await migration_of(cloud, sid))["status"] == "error"
    usage = await host_usage(cloud)
    assert sorted(usage.values()) == [(0, 0), (1, 2048)]
    assert await events_of(cloud, sid, "resize") == {
        "conductor_migrate_server": "Success", "compute_prep_resize": "Success", "compute_resize_instance": "Error"}


async def test_delete_while_waiting_for_confirm_frees_both_hosts(cloud):
    image = await add_image(cloud)
    sid = (await boot(cloud, image))["id"]
    status, _, _ = await action(cloud, sid, {"resize": {"flavorRef": "2"}})
    assert status == 202
    await wait_for_status(cloud, sid, "VERIFY_RESIZE", user="admin")
    status, _, _ = await cloud.compute("DELETE", f"/servers/{sid}")
    assert status == 204
    await wait_for_status(cloud, sid, "DELETED")
    for _ in range(100):
        if all(v == (0, 0) for v in (await host_usage(cloud)).values()):
            break
        await asyncio.sleep(0.05)
    assert all(v == (0, 0) for v in (await host_usage(cloud)).values())
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM allocations") == 0


async def test_automatic_confirm_after_the_window(pg_dsn, tmp_path):
    cloud = await start_cloud(pg_dsn, tmp_path, extra="[compute]\nresize_confirm_window = 1\n")
    try:
        image = await add_image(cloud)
        sid = (await boot(cloud, image))["id"]
        status, _, _ = await action(cloud, sid, {"resize": {"flavorRef": "2"}})
        assert status == 202
        await wait_for_status(cloud, sid, "VERIFY_RESIZE", user="admin")
        done = await wait_for_status(cloud, sid, "ACTIVE", user="admin", timeout=20)
        assert done["flavor"]["original_name"] == "m1.small"
        for _ in range(100):
            if (await migration_of(cloud, sid))["status"] == "confirmed":
                break
            await asyncio.sleep(0.05)
        assert (await migration_of(cloud, sid))["status"] == "confirmed"
    finally:
        await stop_cloud(cloud)
