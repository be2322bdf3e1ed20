"""Availability zones, hypervisors and services over real HTTP and the real CLI."""

from __future__ import annotations

import uuid

from conftest import start_cloud, stop_cloud

from novalite.api import keys


async def register_hosts(cloud, zones: dict[str, str] | None = None) -> dict[str, dict]:
    """Make sure sim1/sim2 have compute_nodes rows with a fresh heartbeat (as the compute manager does)."""
    zones = zones or {"sim1": "nova", "sim2": "nova"}
    rows = {}
    for host, zone in zones.items():
        row = await cloud.app[keys.DB].fetchrow(
            """INSERT INTO compute_nodes (host, hypervisor_hostname, uuid, service_uuid, uri, availability_zone,
                                          hypervisor_version, vcpus, memory_mb, local_gb, heartbeat_at)
               VALUES ($1, $1, $2, $3, 'test:///default', $4, 9000000, 8, 16384, 200, now())
               ON CONFLICT (host) DO UPDATE SET availability_zone = EXCLUDED.availability_zone,
                   heartbeat_at = now()
               RETURNING *""",
            host,
            uuid.uuid5(uuid.NAMESPACE_DNS, f"node.{host}.novalite"),
            uuid.uuid5(uuid.NAMESPACE_DNS, f"service.{host}.novalite"),
            zone,
        )
        rows[host] = dict(row)
    return rows


async def allocate(cloud, host: str, vcpus: int, memory_mb: int, disk_gb: int) -> None:
    await cloud.app[keys.DB].execute(
        "INSERT INTO allocations (instance_uuid, host, vcpus, memory_mb, disk_gb) VALUES ($1, $2, $3, $4, $5)",
        uuid.uuid4(), host, vcpus, memory_mb, disk_gb,
    )


async def test_availability_zones(cloud):
    await register_hosts(cloud, {"sim1": "nova", "sim2": "az2"})
    status, body, _ = await cloud.compute("GET", "/os-availability-zone")
    assert status == 200  # zones in the order their hosts came up (concurrently at start)
    assert sorted(body["availabilityZoneInfo"], key=lambda z: z["zoneName"]) == [
        {"zoneName": "az2", "zoneState": {"available": True}, "hosts": None},
        {"zoneName": "nova", "zoneState": {"available": True}, "hosts": None},
    ]
    status, _, _ = await cloud.compute("GET", "/os-availability-zone/detail")
    assert status == 403
    _, detail, _ = await cloud.compute("GET", "/os-availability-zone/detail", user="admin")
    nova = next(z for z in detail["availabilityZoneInfo"] if z["zoneName"] == "nova")
    svc = nova["hosts"]["sim1"]["nova-compute"]
    assert svc["available"] is True and svc["active"] is True and svc["updated_at"]
    await cloud.app[keys.DB].execute("UPDATE compute_nodes SET disabled = true WHERE host = 'sim2'")
    _, body, _ = await cloud.compute("GET", "/os-availability-zone")
    assert {"zoneName": "az2", "zoneState": {"available": False}, "hosts": None} in body["availabilityZoneInfo"]


async def test_hypervisors_usage_and_microversions(cloud):
    nodes = await register_hosts(cloud)
    await allocate(cloud, "sim1", 2, 2048, 20)
    await allocate(cloud, "sim1", 1, 512, 1)
    status, body, _ = await cloud.compute("GET", "/os-hypervisors")
    assert status == 403
    _, body, _ = await cloud.compute("GET", "/os-hypervisors", user="admin")
    assert {"id": nodes["sim1"]["id"], "hypervisor_hostname": "sim1", "state": "up",
            "status": "enabled"} in body["hypervisors"]
    _, body, _ = await cloud.compute("GET", f"/os-hypervisors/{nodes['sim1']['id']}", user="admin")
    h = body["hypervisor"]
    assert (h["vcpus_used"], h["running_vms"], h["local_gb_used"]) == (3, 2, 21)
    assert h["memory_mb_used"] == 2560 + 512  # allocations plus reserved host memory
    assert h["free_ram_mb"] == 16384 - h["memory_mb_used"]
    assert isinstance(h["cpu_info"], str)
    assert h["service"] == {"id": nodes["sim1"]["id"], "host": "sim1", "disabled_reason": None}

    _, body, _ = await cloud.compute("GET", "/os-hypervisors/detail", user="admin", version="2.88")
    h = next(h for h in body["hypervisors"] if h["hypervisor_hostname"] == "sim1")
    assert h["id"] == str(nodes["sim1"]["uuid"]) and "vcpus" not in h and "cpu_info" not in h
    assert h["uptime"] and h["service"]["id"] == str(nodes["sim1"]["service_uuid"])
    status, _, _ = await cloud.compute("GET", "/os-hypervisors/statistics", user="admin", version="2.88")
    assert status == 404
    _, body, _ = await cloud.compute("GET", "/os-hypervisors/statistics", user="admin")
    assert body["hypervisor_statistics"]["count"] == 2 and body["hypervisor_statistics"]["running_vms"] == 2

    _, body, _ = await cloud.compute(
        "GET", "/os-hypervisors?hypervisor_hostname_pattern=sim2", user="admin", version="2.53"
    )
    assert [h["hypervisor_hostname"] for h in body["hypervisors"]] == ["sim2"]
    status, body, _ = await cloud.compute(
        "GET", "/os-hypervisors?hypervisor_hostname_pattern=zzz", user="admin", version="2.53"
    )
    assert status == 404 and body["itemNotFound"]["message"] == "No hypervisor matching 'zzz' could be found."
    status, body, _ = await cloud.compute("GET", "/os-hypervisors/42", user="admin", version="2.53")
    assert status == 400 and body["badRequest"]["message"] == "Invalid uuid 42"
    status, body, _ = await cloud.compute("GET", "/os-hypervisors/999", user="admin")
    assert status == 404 and body["itemNotFound"]["message"] == "Hypervisor with ID '999' could not be found."
    _, body, _ = await cloud.compute(
        "GET", f"/os-hypervisors/{nodes['sim1']['id']}/uptime", user="admin"
    )
    assert " up " in body["hypervisor"]["uptime"]


async def test_stale_heartbeat_means_down(cloud):
    await register_hosts(cloud)
    await cloud.app[keys.DB].execute(
        "UPDATE compute_nodes SET heartbeat_at = now() - interval '1 hour' WHERE host = 'sim2'"
    )
    _, body, _ = await cloud.compute("GET", "/os-services", user="admin")
    states = {s["host"]: s["state"] for s in body["services"]}
    assert states == {"sim1": "up", "sim2": "down"}


async def test_services_list_and_update(cloud):
    nodes = await register_hosts(cloud)
    _, body, _ = await cloud.compute("GET", "/os-services", user="admin")
    svc = next(s for s in body["services"] if s["host"] == "sim1")  # hosts come up concurrently
    assert set(svc) == {"binary", "host", "id", "zone", "status", "state", "updated_at", "disabled_reason"}
    assert svc["binary"] == "nova-compute" and svc["id"] == nodes["sim1"]["id"]
    _, body, _ = await cloud.compute("GET", "/os-services?host=sim2", user="admin", version="2.11")
    assert [s["host"] for s in body["services"]] == ["sim2"] and body["services"][0]["forced_down"] is False

    status, body, _ = await cloud.compute(
        "PUT", "/os-services/disable-log-reason", user="admin",
        json_body={"host": "sim1", "binary": "nova-compute", "disabled_reason": "maint"},
    )
    assert status == 200
    assert body == {"service": {"host": "sim1", "binary": "nova-compute", "status": "disabled",
                                "disabled_reason": "maint"}}
    status, body, _ = await cloud.compute(
        "PUT", "/os-services/enable", user="admin", json_body={"host": "nope", "binary": "nova-compute"}
    )
    assert status == 404 and body["itemNotFound"]["message"] == "Could not find binary nova-compute on host nope."

    sid = str(nodes["sim1"]["service_uuid"])
    status, body, _ = await cloud.compute(
        "PUT", f"/os-services/{sid}", user="admin", version="2.53", json_body={"status": "enabled"}
    )
    assert status == 200
    assert body["service"]["id"] == sid and body["service"]["status"] == "enabled"
    assert body["service"]["disabled_reason"] is None and body["service"]["forced_down"] is False
    status, body, _ = await cloud.compute(
        "PUT", f"/os-services/{sid}", user="admin", version="2.53",
        json_body={"status": "enabled", "disabled_reason": "x"},
    )
    assert status == 400
    status, body, _ = await cloud.compute("PUT", f"/os-services/{sid}", user="admin", version="2.53", json_body={})
    assert status == 400 and body["badRequest"]["message"].startswith("No updates were requested.")
    status, body, _ = await cloud.compute(
        "PUT", f"/os-services/{sid}", user="admin", version="2.53", json_body={"forced_down": True}
    )
    assert body["service"]["forced_down"] is True and body["service"]["state"] == "down"
    status, _, _ = await cloud.compute(
        "PUT", f"/os-services/{uuid.uuid4()}", user="admin", version="2.53", json_body={"status": "enabled"}
    )
    assert status == 404
    status, _, _ = await cloud.compute("GET", "/os-services")
    assert status == 403


async def test_cli_hosts(cloud):
    await register_hosts(cloud)
    zones = await cloud.openstack_json("availability", "zone", "list")
    assert {"Zone Name": "nova", "Zone Status": "available"}.items() <= zones[0].items()
    hypervisors = await cloud.openstack_json("hypervisor", "list", cloud="novalite-admin")
    assert sorted(h["Hypervisor Hostname"] for h in hypervisors) == ["sim1", "sim2"]
    shown = await cloud.openstack_json("hypervisor", "show", "sim1", cloud="novalite-admin")
    assert shown["hypervisor_hostname"] == "sim1" and shown["state"] == "up"
    services = await cloud.openstack_json("compute", "service", "list", cloud="novalite-admin")
    assert sorted(s["Host"] for s in services) == ["sim1", "sim2"]
    await cloud.openstack(
        "compute", "service", "set", "--disable", "--disable-reason", "r", "sim1", "nova-compute",
        cloud="novalite-admin",
    )
    row = await cloud.app[keys.DB].fetchrow("SELECT disabled, disabled_reason FROM compute_nodes WHERE host = 'sim1'")
    assert row["disabled"] is True and row["disabled_reason"] == "r"


async def test_disk_facts_are_the_instance_pools(pg_dsn, tmp_path):
    """os-hypervisors shows a host's disk as its instance pool reports it (a test:/// host: libvirt's
    test driver's 100 GiB, all free), read again by the periodic resource update; a simulated host's
    configured disk_gb stays the operator's word."""
    hosts = ('[[hosts]]\nname = "pooled"\nuri = "test:///default"\n\n'
             '[[hosts]]\nname = "sim1"\nsimulate = { vcpus = 8, memory_mb = 16384, disk_gb = 200 }\n')
    cloud = await start_cloud(pg_dsn, tmp_path, hosts=hosts)
    try:
        await allocate(cloud, "pooled", 1, 512, 10)

        async def shown(host: str) -> dict:
            _, body, _ = await cloud.compute("GET", f"/os-hypervisors/detail?hypervisor_hostname_pattern={host}",
                                             user="admin", version="2.53")
            h = body["hypervisors"][0]
            return {k: h[k] for k in ("local_gb", "local_gb_used", "free_disk_gb", "disk_available_least")}

        assert await shown("pooled") == {"local_gb": 100, "local_gb_used": 10, "free_disk_gb": 90,
                                         "disk_available_least": 100}
        assert await shown("sim1") == {"local_gb": 200, "local_gb_used": 0, "free_disk_gb": 200,
                                       "disk_available_least": 200}
        await cloud.app[keys.DB].execute("UPDATE compute_nodes SET local_gb = 1 WHERE host = 'pooled'")
        await cloud.app[keys.COMPUTES]["pooled"].update_resources()
        assert (await shown("pooled"))["local_gb"] == 100
    finally:
        await stop_cloud(cloud)
