"""The boot spine through the API on libvirt test-driver hosts."""

from __future__ import annotations

import asyncio
import base64

import asyncpg
import pytest
from conftest import add_image, start_cloud, stop_cloud, wait_for_status

from novalite.api import keys


def server_body(image_id: str, **extra) -> dict:
    server = {"name": "vm", "imageRef": image_id, "flavorRef": "1", "networks": "none"}
    server.update(extra)
    return {"server": server}


async def create(cloud, image_id, version="2.latest", user="demo", **extra):
    return await cloud.compute("POST", "/servers", json_body=server_body(image_id, **extra), version=version, user=user)


async def domains(cloud) -> dict[str, list[str]]:
    return {name: await m.driver.list_instance_uuids() for name, m in cloud.app[keys.COMPUTES].items()}


async def test_boot_single_server_to_active(cloud):
    image = await add_image(cloud)
    status, body, headers = await create(cloud, image)
    assert status == 202, body
    server = body["server"]
    assert server["adminPass"] and server["OS-DCF:diskConfig"] == "MANUAL"
    assert server["security_groups"] == [{"name": "default"}]
    active = await wait_for_status(cloud, server["id"], "ACTIVE")
    assert active["OS-EXT-STS:vm_state"] == "active"
    assert active["OS-EXT-STS:power_state"] == 1
    assert active["OS-EXT-STS:task_state"] is None
    assert active["flavor"]["original_name"] == "m1.tiny"
    assert active["hostId"]
    assert any(server["id"] in uuids for uuids in (await domains(cloud)).values())


async def test_every_build_step_is_a_state_an_event_and_a_notification(cloud):
    image = await add_image(cloud)
    _, body, headers = await create(cloud, image)
    uuid = body["server"]["id"]
    await wait_for_status(cloud, uuid, "ACTIVE")
    status, actions, _ = await cloud.compute("GET", f"/servers/{uuid}/os-instance-actions", version="2.latest")
    assert status == 200
    (action,) = actions["instanceActions"]
    assert action["action"] == "create"
    assert action["request_id"] == headers["x-openstack-request-id"]
    status, detail, _ = await cloud.compute(
        "GET", f"/servers/{uuid}/os-instance-actions/{action['request_id']}", version="2.latest", user="admin"
    )
    events = [e["event"] for e in detail["instanceAction"]["events"]]
    assert events == [
        "conductor_schedule_and_build_instances",
        "compute_build_and_run_instance",
        "compute_allocate_network",
        "compute_prep_block_device",
        "compute_spawn",
    ]
    assert all(e["result"] == "Success" and e["finish_time"] for e in detail["instanceAction"]["events"])
    async with cloud.app[keys.DB].acquire() as conn:
        kinds = [r["event_type"] for r in await conn.fetch(
            "SELECT event_type FROM notifications WHERE instance_uuid = $1 ORDER BY id", uuid)]
    assert kinds == [
        "instance.update",
        "scheduler.select_destinations.start",
        "scheduler.select_destinations.end",
        "instance.create.start",
        "instance.create.end",
    ]


async def test_multi_create_names_and_reservation(cloud):
    image = await add_image(cloud)
    status, body, _ = await create(cloud, image, min_count=5, return_reservation_id=True)
    assert status == 202
    rid = body["reservation_id"]
    assert rid.startswith("r-")
    status, listing, _ = await cloud.compute("GET", f"/servers/detail?reservation_id={rid}", version="2.latest")
    servers = listing["servers"]
    assert sorted(s["name"] for s in servers) == [f"vm-{i}" for i in range(1, 6)]
    for s in servers:
        await wait_for_status(cloud, s["id"], "ACTIVE")
    _, listing, _ = await cloud.compute("GET", f"/servers/detail?reservation_id={rid}", version="2.latest", user="admin")
    assert listing["servers"] == []  # admin's own project has none
    _, listing, _ = await cloud.compute(
        "GET", f"/servers/detail?reservation_id={rid}&all_tenants=1", version="2.latest", user="admin")
    assert sorted(s["OS-EXT-SRV-ATTR:launch_index"] for s in listing["servers"]) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "extra, status, message",
    [
        ({"flavorRef": "999"}, 400, "Flavor 999 could not be found."),
        ({"imageRef": "6b2f0d36-0000-4000-8000-000000000000"}, 400, "Can not find requested image"),
        ({"availability_zone": "nowhere"}, 400, "The requested availability zone is not available"),
        ({"user_data": "not base64!"}, 400, "base64"),
        ({"key_name": "missing"}, 400, "Invalid key_name provided."),
        ({"security_groups": [{"name": "nope"}]}, 400, "Security group nope not found"),
        ({"min_count": 3, "max_count": 2}, 400, "min_count must be <= max_count"),
        ({"max_count": 2, "networks": [{"fixed_ip": "10.0.0.5"}]}, 400, "fixed_ip"),
        ({"max_count": 2, "networks": [{"port": "6b2f0d36-0000-4000-8000-000000000001"}]}, 400, "port"),
        ({"metadata": {f"k{i}": "v" for i in range(129)}}, 403, "Maximum number of metadata items exceeds 128"),
        ({"config_drive": "maybe"}, 400, "config_drive"),
        ({"bogus": 1}, 400, "Additional properties are not allowed ('bogus' was unexpected)"),
        ({"availability_zone": "nova:sim1"}, 403, "os_compute_api:servers:create:forced_host"),
        ({"block_device_mapping_v2": [
            {"source_type": "blank", "destination_type": "local", "boot_index": 0, "volume_size": 1},
            {"source_type": "blank", "destination_type": "local", "boot_index": 0, "volume_size": 1}]},
         400, "Boot sequence"),
        ({"block_device_mapping_v2": [{"source_type": "volume", "uuid": "6b2f0d36-0000-4000-8000-000000000002",
                                       "destination_type": "volume", "boot_index": 1}]},
         400, "Volume 6b2f0d36-0000-4000-8000-000000000002 could not be found."),
        ({"block_device_mapping_v2": [{"source_type": "blank", "destination_type": "local",
                                       "volume_size": 5, "boot_index": -1}]},
         400, "Ephemeral disks requested are larger than the instance type allows"),
        ({"block_device_mapping_v2": [{"source_type": "image", "uuid": "IMAGE", "destination_type": "local",
                                       "boot_index": 0, "device_name": "/dev/$$"}]}, 400, "device_name"),
    ],
)
async def test_create_validation_errors(cloud, extra, status, message):
    image = await add_image(cloud)
    for bdm in extra.get("block_device_mapping_v2", []):
        if bdm.get("uuid") == "IMAGE":
            bdm["uuid"] = image
    code, body, _ = await create(cloud, image, **extra)
    assert code == status, body
    kind = next(iter(body))
    assert kind == {400: "badRequest", 403: "forbidden"}[status]
    assert message in body[kind]["message"]
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM instances") == 0  # nothing half-written


async def test_create_reports_the_first_error_in_validation_order(pg_dsn, tmp_path):
    """A body wrong in every way is refused for its first fault in Nova's validation
    order; mending each fault in turn reveals the next one, then the server is made."""
    cloud = await start_cloud(pg_dsn, tmp_path, extra="[compute]\nmax_user_data_bytes = 4\n")
    try:
        await _mend_create_errors_one_by_one(cloud)
    finally:
        await stop_cloud(cloud)


async def _mend_create_errors_one_by_one(cloud) -> None:
    image = await add_image(cloud)
    missing = "6b2f0d36-0000-4000-8000-00000000000f"
    kernel_gone = await add_image(cloud, name="kernel-gone", kernel_id=missing)
    queued = await add_image(cloud, name="queued", status="queued")
    big = await add_image(cloud, name="big", min_ram=4096)
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("""INSERT INTO flavors (flavorid, name, memory_mb, vcpus, root_gb, extra_specs)
                              VALUES ('numa', 'numa', 512, 2, 1, '{"hw:numa_nodes": "two"}')""")
    two_roots = [{"source_type": "blank", "destination_type": "local", "boot_index": 0, "volume_size": 1}] * 2
    too_much_ephemeral = [{"source_type": "blank", "destination_type": "local", "volume_size": 5, "boot_index": -1}]
    server = {
        "name": "vm", "flavorRef": "999", "imageRef": missing, "max_count": 2,
        "networks": [{"uuid": missing, "fixed_ip": "10.0.0.5"}], "block_device_mapping_v2": two_roots,
        "availability_zone": "nowhere", "user_data": base64.b64encode(b"12345").decode(),
        "metadata": {f"k{i}": "v" for i in range(129)},
        "personality": [{"path": f"/etc/f{i}", "contents": "aGk="} for i in range(6)],
        "security_groups": [{"name": "nope"}], "key_name": "missing",
    }
    hints = {"group": "not-a-group"}

    def root_named_vda(image_id: str) -> list[dict]:
        return [{"source_type": "image", "uuid": image_id, "destination_type": "local", "boot_index": 0,
                 "device_name": "vda"}]

    steps = [
        ("fixed_ip is specified", lambda: server.update(networks="none")),
        ("Boot sequence", lambda: server.update(block_device_mapping_v2=too_much_ephemeral)),
        ("Flavor 999 could not be found.", lambda: server.update(flavorRef="numa")),
        ("Invalid flavor extra spec hw:numa_nodes=two", lambda: server.update(flavorRef="1")),
        ("Can not find requested image", lambda: server.update(imageRef=queued)),
        (f"Image {queued} is not active.", lambda: server.update(imageRef=big)),
        ("Flavor's memory is too small for requested image.", lambda: server.update(imageRef=kernel_gone)),
        ("Ephemeral disks requested are larger", lambda: server.update(block_device_mapping_v2=root_named_vda(kernel_gone))),
        ("The requested availability zone is not available", lambda: server.pop("availability_zone")),
        ("User data too large.", lambda: server.pop("user_data")),
        ("Maximum number of metadata items exceeds 128", lambda: server.pop("metadata")),
        ("Personality file limit exceeded", lambda: server.pop("personality")),
        ("Security group nope not found", lambda: server.pop("security_groups")),
        (f"Image {missing} could not be found.",
         lambda: server.update(imageRef=image, block_device_mapping_v2=root_named_vda(image))),
        ("Invalid key_name provided.", lambda: server.pop("key_name")),
        ("The supplied device path (vda) is invalid.", lambda: server.pop("block_device_mapping_v2")),
        ("Instance group not-a-group could not be found.", lambda: hints.clear()),
    ]
    for message, mend in steps:
        code, body, _ = await cloud.compute(
            "POST", "/servers", json_body={"server": server, "os:scheduler_hints": hints}, version="2.56"
        )
        assert code in (400, 403), (message, body)
        assert message in next(iter(body.values()))["message"], (message, body)
        mend()
    code, body, _ = await cloud.compute("POST", "/servers", json_body={"server": server}, version="2.56")
    assert code == 202, body


async def test_validation_against_image_and_flavor_rules(cloud):
    queued = await add_image(cloud, name="queued", status="queued")
    code, body, _ = await create(cloud, queued)
    assert code == 400 and body["badRequest"]["message"] == f"Image {queued} is not active."
    big = await add_image(cloud, name="big", min_ram=4096)
    code, body, _ = await create(cloud, big)
    assert code == 400 and "memory is too small" in body["badRequest"]["message"]
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("""INSERT INTO flavors (flavorid, name, memory_mb, vcpus, root_gb, extra_specs)
                              VALUES ('numa', 'numa', 512, 2, 1, '{"hw:numa_nodes": "two"}')""")
        await conn.execute("""INSERT INTO flavors (flavorid, name, memory_mb, vcpus, root_gb, extra_specs)
                              VALUES ('pci', 'pci', 512, 2, 1, '{"pci_passthrough:alias": "gpu"}')""")
    image = await add_image(cloud)
    code, body, _ = await create(cloud, image, flavorRef="numa")
    assert code == 400 and "hw:numa_nodes" in body["badRequest"]["message"]
    code, body, _ = await create(cloud, image, flavorRef="pci")
    assert code == 400 and "PCI alias" in body["badRequest"]["message"]


async def test_injected_files_quotas(cloud):
    image = await add_image(cloud)
    content = base64.b64encode(b"hello").decode()
    too_many = [{"path": f"/etc/f{i}", "contents": content} for i in range(6)]
    code, body, _ = await create(cloud, image, version="2.56", personality=too_many)
    assert code == 403 and body["forbidden"]["message"] == "Personality file limit exceeded"
    code, body, _ = await create(cloud, image, version="2.56", personality=[{"path": "/" + "a" * 255, "contents": content}])
    assert code == 403 and "path exceeds maximum 255" in body["forbidden"]["message"]
    big = base64.b64encode(b"x" * 10241).decode()
    code, body, _ = await create(cloud, image, version="2.56", personality=[{"path": "/etc/big", "contents": big}])
    assert code == 403 and "content exceeds maximum 10240" in body["forbidden"]["message"]
    code, body, _ = await create(cloud, image, version="2.57", personality=[{"path": "/etc/x", "contents": content}])
    assert code == 400 and "'personality' was unexpected" in body["badRequest"]["message"]
    code, body, _ = await create(cloud, image, version="2.56", personality=[{"path": "/etc/x", "contents": content}])
    assert code == 202


async def test_quota_race_admits_exactly_the_limit(cloud):
    image = await add_image(cloud)
    status, _, _ = await cloud.compute(
        "PUT", "/os-quota-sets/" + (await project_id(cloud, "demo")), user="admin",
        json_body={"quota_set": {"instances": 10, "cores": 100, "ram": 100000}})
    assert status == 200
    results = await asyncio.gather(*(create(cloud, image, name=f"race{i}") for i in range(50)))
    codes = [r[0] for r in results]
    assert codes.count(202) == 10
    assert codes.count(403) == 40
    msgs = {r[1]["forbidden"]["message"] for r in results if r[0] == 403}
    assert msgs == {"Quota exceeded for instances: Requested 1, but already used 10 of 10 instances"}
    for r in results:
        if r[0] == 202:
            await wait_for_status(cloud, r[1]["server"]["id"], "ACTIVE")


async def test_creates_beyond_the_concurrency_limit_wait_their_turn(pg_dsn, tmp_path, monkeypatch):
    monkeypatch.setenv("NOVALITE_API__MAX_CONCURRENT_CREATES", "2")
    cloud = await start_cloud(pg_dsn, tmp_path)
    api = cloud.app[keys.COMPUTE_API]
    inside = peak = 0
    validate_networks = api._validate_networks

    async def slow_and_counted(*args):  # a step inside the limited section, made slow enough to overlap
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        try:
            await asyncio.sleep(0.05)
            return await validate_networks(*args)
        finally:
            inside -= 1

    monkeypatch.setattr(api, "_validate_networks", slow_and_counted)
    try:
        image = await add_image(cloud)
        results = await asyncio.gather(*(create(cloud, image, name=f"burst{i}") for i in range(8)))
        assert [r[0] for r in results] == [202] * 8, results  # queued, never refused
        assert peak == 2
        for _, body, _ in results:
            await wait_for_status(cloud, body["server"]["id"], "ACTIVE")
        # a create that fails validation gives its turn back
        status, _, _ = await create(cloud, image, flavorRef="no-such-flavor")
        assert status == 400
        status, _, _ = await create(cloud, image, name="after")
        assert status == 202
    finally:
        await stop_cloud(cloud)


async def project_id(cloud, name: str) -> str:
    async with cloud.app[keys.DB].acquire() as conn:
        return await conn.fetchval("SELECT id FROM projects WHERE name = $1", name)


async def test_no_valid_host_fault_explains_why(cloud):
    image = await add_image(cloud)
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("""INSERT INTO flavors (flavorid, name, memory_mb, vcpus, root_gb)
                              VALUES ('huge', 'huge', 512, 1, 100000)""")
    code, body, _ = await create(cloud, image, flavorRef="huge")
    assert code == 202
    server = await wait_for_status(cloud, body["server"]["id"], "ERROR")
    assert server["fault"]["code"] == 500
    msg = server["fault"]["message"]
    assert msg.startswith("No valid host was found.")
    assert "DiskFilter removed 2" in msg
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM allocations") == 0


async def test_spawn_failure_reschedules_to_alternate(cloud):
    image = await add_image(cloud)
    cloud.app[keys.COMPUTES]["sim1"].fail_spawn = "disk on fire"
    cloud.app[keys.COMPUTES]["sim2"].fail_spawn = None
    # Force sim1 first by filling sim2's weight: pin with a bigger free RAM on sim1.
    ids = []
    for i in range(4):
        _, body, _ = await create(cloud, image, name=f"r{i}")
        ids.append(body["server"]["id"])
    for uuid in ids:
        server = await wait_for_status(cloud, uuid, {"ACTIVE", "ERROR"}, user="admin")
        assert server["status"] == "ACTIVE"
        assert server["OS-EXT-SRV-ATTR:host"] == "sim2"
    assert await cloud.app[keys.COMPUTES]["sim1"].driver.list_instance_uuids() == []


async def test_spawn_failure_everywhere_is_error_with_attempts(cloud):
    image = await add_image(cloud)
    for m in cloud.app[keys.COMPUTES].values():
        m.fail_spawn = "no space left"
    _, body, _ = await create(cloud, image)
    server = await wait_for_status(cloud, body["server"]["id"], "ERROR", user="admin")
    assert "Exceeded maximum number of retries" in server["fault"]["message"]
    assert "sim1" in server["fault"]["details"] and "sim2" in server["fault"]["details"]
    assert (await domains(cloud)) == {"sim1": [], "sim2": []}
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM allocations") == 0


@pytest.mark.parametrize("stage", ["networking", "block_device_mapping", "spawning", "active"])
async def test_delete_during_build_stage_leaves_no_domain(cloud, stage):
    image = await add_image(cloud)
    reached = asyncio.Event()
    release = asyncio.Event()

    async def pause(uuid, step):
        if step == stage:
            reached.set()
            await release.wait()

    for m in cloud.app[keys.COMPUTES].values():
        m.before_step = pause
    _, body, _ = await create(cloud, image)
    uuid = body["server"]["id"]
    await asyncio.wait_for(reached.wait(), 10)
    status, _, _ = await cloud.compute("DELETE", f"/servers/{uuid}")
    assert status == 204
    status, body, _ = await cloud.compute("GET", f"/servers/{uuid}", version="2.latest")
    assert body["server"]["OS-EXT-STS:task_state"] == "deleting"
    release.set()
    await wait_for_status(cloud, uuid, "DELETED")
    assert all(uuid not in d for d in (await domains(cloud)).values())
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM allocations") == 0
        usage = await conn.fetchval("SELECT count(*) FROM instances WHERE NOT deleted")
    assert usage == 0
    _, limits, _ = await cloud.compute("GET", "/limits")
    assert limits["limits"]["absolute"]["totalInstancesUsed"] == 0


async def test_delete_while_scheduling(cloud):
    image = await add_image(cloud)
    scheduler = cloud.app[keys.SCHEDULER]
    scheduler._worker.cancel()  # hold requests in the scheduler queue
    try:
        _, body, _ = await create(cloud, image)
        uuid = body["server"]["id"]
        status, _, _ = await cloud.compute("DELETE", f"/servers/{uuid}")
        assert status == 204
        await wait_for_status(cloud, uuid, "DELETED")
    finally:
        scheduler.start()
    await asyncio.sleep(0.2)
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM allocations") == 0


async def test_list_filters_and_paging(cloud):
    image = await add_image(cloud)
    ids = []
    for name in ("web-1", "web-2", "db-1"):
        _, body, _ = await create(cloud, image, name=name)
        ids.append(body["server"]["id"])
    for uuid in ids:
        await wait_for_status(cloud, uuid, "ACTIVE")
    _, body, _ = await cloud.compute("GET", "/servers?name=^web&deleted=False")
    assert sorted(s["name"] for s in body["servers"]) == ["web-1", "web-2"]
    assert set(body["servers"][0]) == {"id", "name", "links"}
    _, body, _ = await cloud.compute("GET", "/servers/detail?status=ACTIVE&flavor=1", version="2.latest")
    assert len(body["servers"]) == 3
    _, page1, _ = await cloud.compute("GET", "/servers?limit=2")
    assert len(page1["servers"]) == 2 and page1["servers_links"][0]["rel"] == "next"
    _, page2, _ = await cloud.compute("GET", f"/servers?limit=2&marker={page1['servers'][-1]['id']}")
    assert len(page2["servers"]) == 1
    assert {s["id"] for s in page1["servers"] + page2["servers"]} == set(ids)
    status, body, _ = await cloud.compute("GET", "/servers?marker=nope")
    assert status == 400 and body["badRequest"]["message"] == "marker [nope] not found"
    status, body, _ = await cloud.compute("GET", "/servers/detail?status=BOGUS", version="2.latest")
    assert status == 400
    _, body, _ = await cloud.compute("GET", "/servers/detail?host=sim1", version="2.latest")
    assert len(body["servers"]) == 3  # host filter is admin-only: ignored for members


async def test_list_sorts_filters_and_pages_by_any_key(cloud):
    image = await add_image(cloud)
    ids = {}
    for name, tags in (("c", []), ("a", ["x", "y"]), ("b", ["x"])):
        _, body, _ = await create(cloud, image, name=name, tags=tags)
        ids[name] = body["server"]["id"]
    await asyncio.gather(*(wait_for_status(cloud, uuid, "ACTIVE") for uuid in ids.values()))

    async def names(query: str, version: str = "2.latest", user: str = "demo") -> list[str]:
        status, body, _ = await cloud.compute("GET", f"/servers?{query}", version=version, user=user)
        assert status == 200, (query, body)
        return [s["name"] for s in body["servers"]]

    async def refused(query: str, version: str = "2.latest", user: str = "demo") -> tuple[int, str]:
        status, body, _ = await cloud.compute("GET", f"/servers/detail?{query}", version=version, user=user)
        return status, next(iter(body.values()))["message"]

    assert await names("sort_key=display_name&sort_dir=asc") == ["a", "b", "c"]
    assert await names("sort_key=name&sort_dir=desc") == ["c", "b", "a"]
    _, page, _ = await cloud.compute("GET", "/servers?sort_key=name&sort_dir=asc&limit=2")
    assert [s["name"] for s in page["servers"]] == ["a", "b"]
    assert f"marker={ids['b']}" in page["servers_links"][0]["href"]
    assert await names(f"sort_key=name&sort_dir=asc&limit=2&marker={ids['b']}") == ["c"]
    assert sorted(await names("tags=x")) == ["a", "b"]
    assert await names("tags=x,y") == ["a"]
    assert await names("tags-any=y") == ["a"]
    assert await names("not-tags=x") == ["c"]
    assert await names("not-tags-any=x,y") == ["c"]
    assert sorted(await names("tags=y", version="2.25")) == ["a", "b", "c"]  # tag filters begin at 2.26
    status, _, _ = await cloud.compute("POST", f"/servers/{ids['a']}/action", json_body={"lock": None},
                                       version="2.73")
    assert status == 202
    assert await names("locked=true", version="2.73") == ["a"]
    assert sorted(await names("locked=false", version="2.73")) == ["b", "c"]
    assert await names("changes-since=2999-01-01T00:00:00Z") == []
    assert sorted(await names("changes-before=2999-01-01T00:00:00Z")) == ["a", "b", "c"]
    assert await names("status=BOGUS", version="2.37") == []
    demo = await project_id(cloud, "demo")
    assert await names("sort_key=name", user="admin") == []
    assert await names(f"all_tenants=1&project_id={demo}&sort_key=name&sort_dir=asc", user="admin") == ["a", "b", "c"]
    hosts = [await names(f"all_tenants=1&host={h}", user="admin") for h in ("sim1", "sim2")]
    assert sorted(hosts[0] + hosts[1]) == ["a", "b", "c"]
    assert len(await names("all_tenants=1&sort_key=host&sort_key=name", user="admin")) == 3
    assert len(await names("sort_key=host")) == 3  # admin-only sort keys are ignored for members
    # Nova's messages, and which one wins when a query is wrong in two ways
    assert await refused("locked=maybe", version="2.73") == (400, "Invalid value 'maybe' for locked.")
    assert await refused("changes-since=bogus&sort_key=bogus") == (400, "Invalid filter field: changes-since.")
    assert await refused("changes-since=2020-01-02T00:00:00Z&changes-before=2020-01-01T00:00:00Z") == (
        400, "The value of changes-since must be less than or equal to changes-before.")
    assert await refused("status=DELETED&name=(") == (403, "Only administrators may list deleted instances")
    assert await refused("name=(&ip=(") == (400, "Invalid regex in name filter: (")
    assert await refused("ip6=(&sort_key=bogus") == (400, "Invalid regex in ip6 filter: (")
    assert await refused("sort_key=bogus&limit=x") == (400, "Invalid sort_key: bogus")
    assert await refused("sort_dir=up&limit=x") == (400, "Invalid sort direction: up")
    assert await refused("limit=x&marker=nope") == (400, "limit param must be an integer")


async def test_server_document_fields_follow_microversion(cloud):
    image = await add_image(cloud)
    _, body, _ = await create(cloud, image, description="d", tags=["a"])
    uuid = body["server"]["id"]
    await wait_for_status(cloud, uuid, "ACTIVE")
    _, old, _ = await cloud.compute("GET", f"/servers/{uuid}", version="2.1")
    s = old["server"]
    assert "description" not in s and "locked" not in s and "tags" not in s
    assert s["flavor"] == {"id": "1", "links": [{"rel": "bookmark", "href": f"{cloud.url}/compute/flavors/1"}]}
    assert "OS-EXT-SRV-ATTR:host" not in s
    _, new, _ = await cloud.compute("GET", f"/servers/{uuid}", version="2.96")
    s = new["server"]
    assert s["description"] == "d" and s["tags"] == ["a"] and s["locked"] is False
    assert s["pinned_availability_zone"] is None and s["OS-EXT-SRV-ATTR:hostname"] == "vm"
    _, admin, _ = await cloud.compute("GET", f"/servers/{uuid}", version="2.96", user="admin")
    assert admin["server"]["OS-EXT-SRV-ATTR:host"] in ("sim1", "sim2")
    assert admin["server"]["OS-EXT-SRV-ATTR:instance_name"].startswith("instance-")


async def test_other_projects_server_is_404(cloud):
    image = await add_image(cloud)
    _, body, _ = await create(cloud, image, user="admin")
    status, body2, _ = await cloud.compute("GET", f"/servers/{body['server']['id']}")
    assert status == 404 and body2["itemNotFound"]["code"] == 404
    status, _, _ = await cloud.compute("DELETE", f"/servers/{body['server']['id']}")
    assert status == 404


async def test_server_metadata_api(cloud):
    image = await add_image(cloud)
    _, body, _ = await create(cloud, image, metadata={"a": "1"})
    uuid = body["server"]["id"]
    status, meta, _ = await cloud.compute("POST", f"/servers/{uuid}/metadata", json_body={"metadata": {"b": "2"}})
    assert status == 200 and meta["metadata"] == {"a": "1", "b": "2"}
    status, item, _ = await cloud.compute("GET", f"/servers/{uuid}/metadata/b")
    assert item == {"meta": {"b": "2"}}
    status, _, _ = await cloud.compute("DELETE", f"/servers/{uuid}/metadata/a")
    assert status == 204
    status, meta, _ = await cloud.compute("GET", f"/servers/{uuid}/metadata")
    assert meta["metadata"] == {"b": "2"}
    status, _, _ = await cloud.compute("GET", f"/servers/{uuid}/metadata/a")
    assert status == 404


async def test_restart_finishes_interrupted_work(pg_dsn, tmp_path):
    """State is in Postgres: a new process finishes deletes and builds the old one left."""
    c1 = await start_cloud(pg_dsn, tmp_path)
    image = await add_image(c1)
    gate = asyncio.Event()

    async def hang(uuid, step):
        if step == "spawning":
            await gate.wait()

    for m in c1.app[keys.COMPUTES].values():
        m.before_step = hang
    _, body, _ = await create(c1, image)
    building = body["server"]["id"]
    async with c1.app[keys.DB].acquire() as conn:
        for _ in range(200):
            if await conn.fetchval("SELECT task_state FROM instances WHERE uuid = $1", building) == "block_device_mapping":
                break
            await asyncio.sleep(0.02)
    dsn = c1.app[keys.DSN]
    # Simulate a crash: the database keeps the half-done build; the process goes away.
    gate.set()
    await stop_cloud(c1)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE instances SET vm_state='building', task_state='spawning', power_state=0 WHERE uuid = $1", building)
    finally:
        await conn.close()
    c2 = await start_cloud(pg_dsn, tmp_path, dsn=dsn)
    try:
        server = await wait_for_status(c2, building, "ACTIVE")
        assert server["OS-EXT-STS:task_state"] is None
    finally:
        await stop_cloud(c2)
