"""The real `openstack` CLI drives the boot spine on simulated hosts."""

from __future__ import annotations

from conftest import add_image


async def test_openstack_server_lifecycle(cloud):
    await add_image(cloud, name="cirros")
    created = await cloud.openstack_json(
        "server", "create", "--image", "cirros", "--flavor", "m1.tiny", "--nic", "none",
        "--property", "role=web", "--wait", "cli-vm",
    )
    assert created["status"] == "ACTIVE"
    assert created["name"] == "cli-vm"
    listed = await cloud.openstack_json("server", "list")
    assert [(s["Name"], s["Status"]) for s in listed] == [("cli-vm", "ACTIVE")]
    shown = await cloud.openstack_json("server", "show", "cli-vm")
    assert shown["properties"] == {"role": "web"} or shown["properties"] == "role='web'"
    events = await cloud.openstack_json("server", "event", "list", "cli-vm")
    assert [e["Action"] for e in events] == ["create"]
    request_id = events[0]["Request ID"]
    event = await cloud.openstack_json(
        "--os-compute-api-version", "2.84", "server", "event", "show", "cli-vm", request_id, cloud="novalite"
    )
    names = [e["event"] for e in event["events"]]
    assert "compute_spawn" in names and "conductor_schedule_and_build_instances" in names
    await cloud.openstack("server", "delete", "--wait", "cli-vm")
    assert await cloud.openstack_json("server", "list") == []


async def test_openstack_multi_create_at_latest_microversion(cloud):
    await add_image(cloud, name="cirros")
    await cloud.openstack(
        "--os-compute-api-version", "2.latest", "server", "create", "--image", "cirros", "--flavor", "m1.tiny",
        "--nic", "none", "--min", "2", "--max", "2", "--wait", "pair",
    )
    listed = await cloud.openstack_json("--os-compute-api-version", "2.latest", "server", "list", "--long")
    assert sorted(s["Name"] for s in listed) == ["pair-1", "pair-2"]
    assert {s["Status"] for s in listed} == {"ACTIVE"}
