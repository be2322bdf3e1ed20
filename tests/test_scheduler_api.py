"""The scheduler through the API: explained NoValidHost, verdicts, reschedules, the late
group check, build-failure tracking, disabled services and concurrent claims."""

from __future__ import annotations

import asyncio
import json
import re

from conftest import add_image, start_cloud, stop_cloud, wait_for_status

from novalite.api import keys

EVENT = "conductor_schedule_and_build_instances"


def host_block(name: str, az: str = "nova", memory_mb: int = 16384, vcpus: int = 8) -> str:
    return (f'[[hosts]]\nname = "{name}"\navailability_zone = "{az}"\n'
            f'simulate = {{ vcpus = {vcpus}, memory_mb = {memory_mb}, disk_gb = 200 }}\n\n')


async def boot(cloud, image: str, flavor: str = "1", user: str = "demo", **extra) -> str:
    body = {"server": {"name": "vm", "imageRef": image, "flavorRef": flavor, "networks": "none", **extra}}
    status, out, _ = await cloud.compute("POST", "/servers", json_body=body, version="2.latest", user=user)
    assert status == 202, out
    return out["server"]["id"]


async def create_events(cloud, uuid: str) -> list[dict]:
    _, actions, _ = await cloud.compute("GET", f"/servers/{uuid}/os-instance-actions", version="2.84", user="admin")
    (action,) = actions["instanceActions"]
    _, detail, _ = await cloud.compute(
        "GET", f"/servers/{uuid}/os-instance-actions/{action['request_id']}", version="2.84", user="admin")
    return detail["instanceAction"]["events"]


async def test_no_valid_host_fault_names_filters_and_counts(pg_dsn, tmp_path):
    hosts = host_block("sim1", "az1", 2048) + host_block("sim2", "az1", 2048) + host_block("sim3", "az2")
    extra = "[scheduler]\nram_allocation_ratio = 1.0\nreserved_host_memory_mb = 0\n"
    cloud = await start_cloud(pg_dsn, tmp_path, extra=extra, hosts=hosts)
    try:
        image = await add_image(cloud)
        uuid = await boot(cloud, image, flavor="3", availability_zone="az1")
        server = await wait_for_status(cloud, uuid, "ERROR", user="admin")
        fault = server["fault"]
        assert fault["code"] == 500
        assert fault["message"] == (
            "No valid host was found. 3 hosts; AvailabilityZoneFilter removed 1 (availability zone az2 != az1); "
            "RamFilter removed 2 (free RAM 2048 MB < 4096 MB requested)"
        )
        assert f"/servers/{uuid}/os-scheduling" in fault["details"]
        # The detail list shows the fault as the show does (each reads it its own way), to the second.
        _, listed, _ = await cloud.compute("GET", "/servers/detail?all_tenants=1", user="admin")
        (item,) = [s for s in listed["servers"] if s["id"] == uuid]
        assert item["fault"] == fault and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fault["created"])
        # The owner sees the message, not the admin details.
        owner_view = await wait_for_status(cloud, uuid, "ERROR")
        assert owner_view["fault"]["message"] == fault["message"] and "details" not in owner_view["fault"]

        # The create action's scheduling event carries the per-host table (2.84, admin).
        (event,) = [e for e in await create_events(cloud, uuid) if e["event"] == EVENT]
        assert event["result"] == "Error"
        table = json.loads(event["details"])
        assert {(r["host"], r["filter"]) for r in table} == {
            ("sim3", "AvailabilityZoneFilter"), ("sim1", "RamFilter"), ("sim2", "RamFilter")}

        # ... and so does the admin-only os-scheduling view, from Postgres.
        status, body, _ = await cloud.compute("GET", f"/servers/{uuid}/os-scheduling", user="admin")
        assert status == 200
        sched = body["scheduling"]
        assert sched["hosts"] == 3 and sched["passed"] == 0 and sched["chosen"] is None
        assert sched["summary"] == fault["message"]
        assert sched["table"] == table
        status, _, _ = await cloud.compute("GET", f"/servers/{uuid}/os-scheduling")
        assert status == 403
    finally:
        await stop_cloud(cloud)


async def test_verdicts_of_a_success_show_weights_and_the_choice(cloud):
    image = await add_image(cloud)
    uuid = await boot(cloud, image)
    server = await wait_for_status(cloud, uuid, "ACTIVE", user="admin")
    status, body, _ = await cloud.compute("GET", f"/servers/{uuid}/os-scheduling", user="admin")
    assert status == 200
    sched = body["scheduling"]
    assert sched["chosen"] == server["OS-EXT-SRV-ATTR:host"]
    assert sched["alternates"] == [h for h in ("sim1", "sim2") if h != sched["chosen"]]
    rows = {r["host"]: r for r in sched["table"]}
    assert rows[sched["chosen"]]["result"] == "chosen" and "weight" in rows[sched["chosen"]]
    (event,) = [e for e in await create_events(cloud, uuid) if e["event"] == EVENT]
    # A success's event points at the table rather than copying it (stored once per scheduling).
    assert json.loads(event["details"])["verdicts"] == f"/servers/{uuid}/os-scheduling"


async def test_concurrent_schedulings_each_keep_their_own_record(cloud):
    """The records of concurrent schedulings go to Postgres in one statement (a multi-create's
    among them): each server still has its own verdicts, its own finished scheduling event and its
    scheduler notifications, under its own request."""
    image = await add_image(cloud)
    body = {"server": {"name": "multi", "imageRef": image, "flavorRef": "1", "networks": "none",
                       "min_count": 3, "max_count": 3}}
    status, _, _ = await cloud.compute("POST", "/servers", json_body=body, version="2.latest")
    assert status == 202
    singles = await asyncio.gather(*(boot(cloud, image) for _ in range(6)))  # 9: the quota is 10
    _, listed, _ = await cloud.compute("GET", "/servers?name=multi", version="2.latest")
    uuids = [s["id"] for s in listed["servers"]] + list(singles)
    assert len(uuids) == 9
    for uuid in uuids:
        server = await wait_for_status(cloud, uuid, "ACTIVE", user="admin")
        status, body, _ = await cloud.compute("GET", f"/servers/{uuid}/os-scheduling", user="admin")
        assert status == 200 and body["scheduling"]["chosen"] == server["OS-EXT-SRV-ATTR:host"]
        (event,) = [e for e in await create_events(cloud, uuid) if e["event"] == EVENT]
        assert event["result"] == "Success" and json.loads(event["details"])["host"] == server["OS-EXT-SRV-ATTR:host"]
    rows = await cloud.app[keys.DB].fetch(
        """SELECT n.instance_uuid::text AS uuid, n.event_type, n.request_id = a.request_id AS own
             FROM notifications n JOIN instance_actions a ON a.instance_uuid = n.instance_uuid AND a.action = 'create'
            WHERE n.event_type LIKE 'scheduler.select_destinations.%' AND n.instance_uuid = ANY($1::uuid[])""", uuids)
    assert sorted((r["uuid"], r["event_type"], r["own"]) for r in rows) == sorted(
        (u, f"scheduler.select_destinations.{end}", True) for u in uuids for end in ("start", "end"))


async def test_disabled_service_is_filtered_out_with_its_reason(cloud):
    image = await add_image(cloud)
    status, _, _ = await cloud.compute(
        "PUT", "/os-services/disable-log-reason", user="admin", version="2.1",
        json_body={"host": "sim1", "binary": "nova-compute", "disabled_reason": "maintenance"})
    assert status == 200
    uuid = await boot(cloud, image)
    server = await wait_for_status(cloud, uuid, "ACTIVE", user="admin")
    assert server["OS-EXT-SRV-ATTR:host"] == "sim2"
    _, body, _ = await cloud.compute("GET", f"/servers/{uuid}/os-scheduling", user="admin")
    assert {"host": "sim1", "result": "rejected", "filter": "ComputeFilter",
            "reason": "service disabled (maintenance)"} in body["scheduling"]["table"]


async def test_spawn_failure_reschedules_to_an_alternate_and_counts_against_the_host(cloud):
    image = await add_image(cloud)
    computes = cloud.app[keys.COMPUTES]
    # Equal hosts: the first build goes to sim1 (stable order), fails, and is rescheduled to sim2.
    computes["sim1"].fail_spawn = "disk on fire"
    uuid = await boot(cloud, image)
    server = await wait_for_status(cloud, uuid, "ACTIVE", user="admin")
    assert server["OS-EXT-SRV-ATTR:host"] == "sim2"
    events = await create_events(cloud, uuid)
    builds = [(e["host"], e["result"]) for e in events if e["event"] == "compute_build_and_run_instance"]
    assert builds == [("sim1", "Error"), ("sim2", "Success")]
    assert [e["result"] for e in events if e["event"] == EVENT] == ["Success", "Success"]
    async with cloud.app[keys.DB].acquire() as conn:
        failed = dict(await conn.fetch("SELECT host, failed_builds FROM compute_nodes"))
        assert failed == {"sim1": 1, "sim2": 0}
        assert await conn.fetchval("SELECT count(*) FROM allocations WHERE host = 'sim1'") == 0
    # BuildFailureWeigher: sim1 now weighs less, though it is the emptier host.
    computes["sim1"].fail_spawn = None
    second = await boot(cloud, image)
    assert (await wait_for_status(cloud, second, "ACTIVE", user="admin"))["OS-EXT-SRV-ATTR:host"] == "sim2"
    # A success on sim1 resets its count.
    third = await boot(cloud, image, user="admin", availability_zone="nova:sim1")
    assert (await wait_for_status(cloud, third, "ACTIVE", user="admin"))["OS-EXT-SRV-ATTR:host"] == "sim1"
    async with cloud.app[keys.DB].acquire() as conn:
        assert await conn.fetchval("SELECT failed_builds FROM compute_nodes WHERE host = 'sim1'") == 0


async def test_exhausted_attempts_list_every_attempt(cloud):
    image = await add_image(cloud)
    for m in cloud.app[keys.COMPUTES].values():
        m.fail_spawn = f"no luck on {m.host}"
    uuid = await boot(cloud, image)
    server = await wait_for_status(cloud, uuid, "ERROR", user="admin")
    message = server["fault"]["message"]
    assert message.startswith("Exceeded maximum number of retries.")
    assert "sim1: RuntimeError: no luck on sim1" in message and "sim2: RuntimeError: no luck on sim2" in message


async def test_late_group_check_reschedules_a_build_that_breaks_anti_affinity(pg_dsn, tmp_path):
    # Without the anti-affinity filter and with stacking weights the scheduler puts the second
    # member beside the first, as a racing request would: the host refuses it before spawning.
    extra = ('[scheduler]\nfilters = ["RetryFilter", "ComputeFilter", "RamFilter"]\n'
             'weighers = ["RAMWeigher"]\nram_weight_multiplier = -1.0\n')
    hosts = host_block("sim1") + host_block("sim2") + host_block("sim3")
    cloud = await start_cloud(pg_dsn, tmp_path, extra=extra, hosts=hosts)
    try:
        image = await add_image(cloud)
        _, out, _ = await cloud.compute("POST", "/os-server-groups", version="2.64",
                                        json_body={"server_group": {"name": "g", "policy": "anti-affinity"}})
        group = out["server_group"]["id"]
        body = {"server": {"name": "a", "imageRef": image, "flavorRef": "1", "networks": "none"},
                "os:scheduler_hints": {"group": group}}
        _, a, _ = await cloud.compute("POST", "/servers", json_body=body, version="2.latest")
        a_host = (await wait_for_status(cloud, a["server"]["id"], "ACTIVE", user="admin"))["OS-EXT-SRV-ATTR:host"]
        _, b, _ = await cloud.compute("POST", "/servers", json_body=body, version="2.latest")
        b_id = b["server"]["id"]
        b_host = (await wait_for_status(cloud, b_id, "ACTIVE", user="admin"))["OS-EXT-SRV-ATTR:host"]
        assert a_host != b_host
        events = await create_events(cloud, b_id)
        failed = [e for e in events if e["event"] == "compute_build_and_run_instance" and e["result"] == "Error"]
        assert [e["host"] for e in failed] == [a_host]
        assert "Anti-affinity instance group policy was violated" in failed[0]["traceback"]
    finally:
        await stop_cloud(cloud)


async def test_hundred_concurrent_creates_fill_exactly_the_room(pg_dsn, tmp_path):
    # Four hosts with room for 15 m1.tiny (512 MB) each: 60 fit, 40 must fail, explained.
    extra = "[scheduler]\nram_allocation_ratio = 1.0\nreserved_host_memory_mb = 0\n"
    hosts = "".join(host_block(f"sim{i}", memory_mb=15 * 512) for i in range(1, 5))
    cloud = await start_cloud(pg_dsn, tmp_path, extra=extra, hosts=hosts)
    try:
        async with cloud.app[keys.DB].acquire() as conn:
            project = await conn.fetchval("SELECT id FROM projects WHERE name = 'demo'")
        status, _, _ = await cloud.compute("PUT", f"/os-quota-sets/{project}", user="admin", json_body={
            "quota_set": {"instances": 200, "cores": 200, "ram": 200 * 512}})
        assert status == 200
        image = await add_image(cloud)
        uuids = await asyncio.gather(*(boot(cloud, image) for _ in range(100)))
        final = await asyncio.gather(*(wait_for_status(cloud, u, {"ACTIVE", "ERROR"}, user="admin", timeout=120)
                                       for u in uuids))
        active = [s for s in final if s["status"] == "ACTIVE"]
        errors = [s for s in final if s["status"] == "ERROR"]
        assert len(active) == 60 and len(errors) == 40
        for s in errors:
            message = s["fault"]["message"]
            assert message.startswith("No valid host was found. 4 hosts; "), message
            assert "RamFilter removed" in message or "claim removed" in message, message
        async with cloud.app[keys.DB].acquire() as conn:
            used = dict(await conn.fetch("SELECT host, sum(memory_mb) FROM allocations GROUP BY host"))
        assert used == {f"sim{i}": 15 * 512 for i in range(1, 5)}
        per_host = {f"sim{i}": 0 for i in range(1, 5)}
        for s in active:
            per_host[s["OS-EXT-SRV-ATTR:host"]] += 1
        assert per_host == {f"sim{i}": 15 for i in range(1, 5)}
    finally:
        await stop_cloud(cloud)
