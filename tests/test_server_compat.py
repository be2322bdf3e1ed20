"""Server view fields as Nova fills them: the zone taken from the host, progress, host_status (2.16)."""

from __future__ import annotations

import asyncio

from conftest import add_image, start_cloud, stop_cloud, wait_for_status

from novalite.api import keys

ZONED_HOSTS = "".join(
    f'[[hosts]]\nname = "{name}"\navailability_zone = "{zone}"\n'
    f'simulate = {{ vcpus = 8, memory_mb = 16384, disk_gb = 200 }}\n\n'
    for name, zone in (("sim1", "zone-a"), ("sim2", "zone-b"))
)


async def create(cloud, image: str, **server) -> str:
    body = {"name": "vm", "imageRef": image, "flavorRef": "1", "networks": "none", **server}
    status, resp, _ = await cloud.compute("POST", "/servers", json_body={"server": body}, version="2.79")
    assert status == 202, resp
    return resp["server"]["id"]


async def show(cloud, sid: str, version: str = "2.79", user: str = "admin") -> dict:
    status, body, _ = await cloud.compute("GET", f"/servers/{sid}", version=version, user=user)
    assert status == 200, body
    return body["server"]


async def disable_all(cloud, verb: str = "disable") -> None:
    """Every host's nova-compute service disabled (or enabled) through os-services, as an operator does."""
    for host in ("sim1", "sim2"):
        status, body, _ = await cloud.compute("PUT", f"/os-services/{verb}", user="admin",
                                              json_body={"host": host, "binary": "nova-compute"})
        assert status == 200, body


async def test_a_server_booted_without_a_zone_shows_its_hosts_zone_once_scheduled(pg_dsn, tmp_path):
    cloud = await start_cloud(pg_dsn, tmp_path, hosts=ZONED_HOSTS)
    try:
        image = await add_image(cloud)
        # No host can take it: never scheduled, so no zone ("" as Nova shows a None zone).
        await disable_all(cloud)
        unplaced = await create(cloud, image)
        server = await wait_for_status(cloud, unplaced, "ERROR", user="admin")
        assert server["OS-EXT-AZ:availability_zone"] == "" and server["OS-EXT-SRV-ATTR:host"] is None
        await disable_all(cloud, "enable")
        placed = [await create(cloud, image) for _ in range(4)]
        for sid in placed:
            server = await wait_for_status(cloud, sid, "ACTIVE", user="admin")
            zone = {"sim1": "zone-a", "sim2": "zone-b"}[server["OS-EXT-SRV-ATTR:host"]]
            assert server["OS-EXT-AZ:availability_zone"] == zone
        _, listed, _ = await cloud.compute("GET", "/servers/detail?all_tenants=1&availability_zone=zone-b", user="admin")
        assert {s["OS-EXT-SRV-ATTR:host"] for s in listed["servers"]} <= {"sim2"}
        # A requested zone is kept.
        asked = await create(cloud, image, availability_zone="zone-b")
        server = await wait_for_status(cloud, asked, "ACTIVE", user="admin")
        assert server["OS-EXT-AZ:availability_zone"] == "zone-b" and server["OS-EXT-SRV-ATTR:host"] == "sim2"
    finally:
        await stop_cloud(cloud)


async def test_progress_moves_with_the_build_steps(pg_dsn, tmp_path):
    """BUILD shows how far the build is (a quarter per step done: networking, block devices, spawn),
    ACTIVE shows 100; it never goes back. (Nova's libvirt driver leaves it at 0: this is the
    issue's ask, computed from the steps the build really passed.)"""
    cloud = await start_cloud(pg_dsn, tmp_path, extra="[compute]\ndrill_stage_delays = { spawning = 1.0 }\n")
    try:
        sid = await create(cloud, await add_image(cloud))
        seen: list[int] = []
        for _ in range(300):
            server = await show(cloud, sid)
            seen.append(server["progress"])
            if server["status"] == "ACTIVE":
                break
            assert server["status"] == "BUILD"
            await asyncio.sleep(0.02)
        assert seen == sorted(seen) and seen[-1] == 100, seen
        assert 75 in seen  # held in spawning by the drill delay
    finally:
        await stop_cloud(cloud)


async def test_host_status_comes_from_the_hosts_service(cloud):
    image = await add_image(cloud)
    sid = await create(cloud, image)
    host = (await wait_for_status(cloud, sid, "ACTIVE", user="admin"))["OS-EXT-SRV-ATTR:host"]
    db = cloud.app[keys.DB]

    async def status(version: str = "2.16", user: str = "admin") -> str | None:
        return (await show(cloud, sid, version, user)).get("host_status")

    assert await status() == "UP"
    assert await status("2.15") is None
    assert await status(user="demo") is None  # admin-only by default
    await db.execute("UPDATE compute_nodes SET heartbeat_at = now() - interval '1 hour' WHERE host = $1", host)
    assert await status() == "UNKNOWN"
    await db.execute("UPDATE compute_nodes SET heartbeat_at = now(), disabled = true WHERE host = $1", host)
    assert await status() == "MAINTENANCE"
    await db.execute("UPDATE compute_nodes SET forced_down = true WHERE host = $1", host)
    assert await status() == "DOWN"  # forced down before disabled, as Nova
    _, listed, _ = await cloud.compute("GET", "/servers/detail?all_tenants=1", version="2.16", user="admin")
    assert [s["host_status"] for s in listed["servers"] if s["id"] == sid] == ["DOWN"]
    # A server never placed on a host: "".
    await db.execute("UPDATE compute_nodes SET forced_down = false")
    await disable_all(cloud)
    unplaced = await create(cloud, image)
    await wait_for_status(cloud, unplaced, "ERROR")
    assert (await show(cloud, unplaced, "2.16")).get("host_status") == ""


async def test_host_status_unknown_only_policy_shows_only_unknown(pg_dsn, tmp_path):
    (tmp_path / "policy.yaml").write_text(
        '"os_compute_api:servers:show:host_status:unknown-only": "role:member"\n')
    cloud = await start_cloud(pg_dsn, tmp_path)
    try:
        sid = await create(cloud, await add_image(cloud))
        host = (await wait_for_status(cloud, sid, "ACTIVE", user="admin"))["OS-EXT-SRV-ATTR:host"]
        assert "host_status" not in await show(cloud, sid, "2.16", user="demo")  # UP is not for this caller
        await cloud.app[keys.DB].execute(
            "UPDATE compute_nodes SET heartbeat_at = now() - interval '1 hour' WHERE host = $1", host)
        assert (await show(cloud, sid, "2.16", user="demo"))["host_status"] == "UNKNOWN"
        _, listed, _ = await cloud.compute("GET", "/servers/detail", version="2.16")
        assert [s["host_status"] for s in listed["servers"]] == ["UNKNOWN"]
    finally:
        await stop_cloud(cloud)
