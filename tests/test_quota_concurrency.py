"""Compute quota under concurrency, over HTTP: concurrent creates at a limit admit exactly
what fits (never one over), partial multi-create admission, deletes and resizes free and take
room, and the usage counters are re-derived when the server starts."""

from __future__ import annotations

import asyncio

import pytest

from novalite.api import keys
from tests.conftest import add_image, start_cloud, stop_cloud, wait_for_status


@pytest.fixture
async def demo(cloud) -> str:
    return await cloud.app[keys.DB].fetchval("SELECT id FROM projects WHERE name = 'demo'")


async def set_quota(cloud, project: str, **limits: int) -> None:
    status, body, _ = await cloud.compute(
        "PUT", f"/os-quota-sets/{project}", user="admin", json_body={"quota_set": limits})
    assert status == 200, body


async def create(cloud, image: str, name: str, flavor: str = "1", **extra):
    body = {"server": {"name": name, "imageRef": image, "flavorRef": flavor, "networks": "none", **extra}}
    return await cloud.compute("POST", "/servers", json_body=body, version="2.latest")


async def in_use(cloud, project: str) -> dict[str, int]:
    _, body, _ = await cloud.compute("GET", f"/os-quota-sets/{project}/detail", version="2.57")
    return {r: body["quota_set"][r]["in_use"] for r in ("instances", "cores", "ram")}


async def live_servers(cloud) -> list[dict]:
    _, body, _ = await cloud.compute("GET", "/servers?limit=1000")
    return body["servers"]


async def test_fifty_creates_against_ten_instances_admit_ten(cloud, demo):
    image = await add_image(cloud)
    await set_quota(cloud, demo, instances=10, cores=-1, ram=-1)
    results = await asyncio.gather(*(create(cloud, image, f"i{i}") for i in range(50)))
    codes = [code for code, _, _ in results]
    assert codes.count(202) == 10 and codes.count(403) == 40
    assert {b["forbidden"]["message"] for c, b, _ in results if c == 403} == {
        "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances"}
    assert len(await live_servers(cloud)) == 10
    assert (await in_use(cloud, demo))["instances"] == 10
    # a delete frees exactly one place
    victim = next(b["server"]["id"] for c, b, _ in results if c == 202)
    await wait_for_status(cloud, victim, "ACTIVE")
    status, _, _ = await cloud.compute("DELETE", f"/servers/{victim}")
    assert status == 204
    for _ in range(100):
        if len(await live_servers(cloud)) == 9:
            break
        await asyncio.sleep(0.1)
    again = await asyncio.gather(*(create(cloud, image, f"j{i}") for i in range(10)))
    assert sorted(c for c, _, _ in again) == [202] + [403] * 9


async def test_creates_need_no_more_connections_than_the_pool_has(pg_dsn, tmp_path, monkeypatch):
    """More creates at once than the API pool has connections: each create's checks give their
    connection back before the shared provisioning statement takes one (holding it while waiting
    for that statement left the statement none, and no create ever answered)."""
    monkeypatch.setenv("NOVALITE_API__MAX_CONCURRENT_CREATES", "8")
    monkeypatch.setenv("NOVALITE_DATABASE__POOL_MAX", "3")
    cloud = await start_cloud(pg_dsn, tmp_path)
    try:
        image = await add_image(cloud)
        results = await asyncio.wait_for(asyncio.gather(*(create(cloud, image, f"c{i}") for i in range(10))), 60)
        assert [code for code, _, _ in results] == [202] * 10
        assert len(await live_servers(cloud)) == 10
    finally:
        await stop_cloud(cloud)


async def test_fifty_creates_against_ten_cores_admit_five_medium(cloud, demo):
    image = await add_image(cloud)
    await set_quota(cloud, demo, instances=-1, cores=10, ram=-1)
    results = await asyncio.gather(*(create(cloud, image, f"c{i}", flavor="3") for i in range(50)))
    codes = [code for code, _, _ in results]
    assert codes.count(202) == 5 and codes.count(403) == 45
    assert {b["forbidden"]["message"] for c, b, _ in results if c == 403} == {
        "Quota exceeded for cores: Requested 2, but already used 10 of 10 cores"}
    assert await in_use(cloud, demo) == {"instances": 5, "cores": 10, "ram": 5 * 4096}


async def test_concurrent_multi_creates_share_the_room_exactly(cloud, demo):
    """max_count takes what is left (Nova's partial admission); min_count above it is refused."""
    image = await add_image(cloud)
    await set_quota(cloud, demo, instances=10, cores=-1, ram=-1)
    results = await asyncio.gather(*(
        create(cloud, image, f"m{i}", min_count=1, max_count=4, return_reservation_id=True) for i in range(6)))
    assert [c for c, _, _ in results].count(202) >= 3  # 4 + 4 + 2 at least; the rest 403
    assert len(await live_servers(cloud)) == 10
    code, body, _ = await create(cloud, image, "late", min_count=1, max_count=3)
    assert code == 403
    assert body["forbidden"]["message"] == (
        "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances")


async def test_resize_moves_usage_and_counters_are_rederived_at_start(pg_dsn, tmp_path):
    cloud = await start_cloud(pg_dsn, tmp_path)
    try:
        demo = await cloud.app[keys.DB].fetchval("SELECT id FROM projects WHERE name = 'demo'")
        image = await add_image(cloud)
        await set_quota(cloud, demo, instances=-1, cores=3, ram=-1)
        code, body, _ = await create(cloud, image, "r", flavor="1")
        assert code == 202
        server = body["server"]["id"]
        await wait_for_status(cloud, server, "ACTIVE")
        status, _, _ = await cloud.compute("POST", f"/servers/{server}/action", json_body={"resize": {"flavorRef": "3"}})
        assert status == 202
        await wait_for_status(cloud, server, "VERIFY_RESIZE")
        assert (await in_use(cloud, demo))["cores"] == 2
        code, body, _ = await create(cloud, image, "over", flavor="3")
        assert code == 403 and body["forbidden"]["message"] == (
            "Quota exceeded for cores: Requested 2, but already used 2 of 3 cores")
        code, _, _ = await create(cloud, image, "fits", flavor="1")
        assert code == 202
        dsn = cloud.config.database.dsn
        # counters knocked out of step (as a crash of an older version could have left them)
        await cloud.app[keys.DB].execute("UPDATE project_usage SET cores = 0, instances = 0 WHERE project_id = $1",
                                         demo)
    finally:
        await stop_cloud(cloud)
    cloud = await start_cloud(pg_dsn, tmp_path, dsn=dsn)
    try:
        image = await add_image(cloud)
        code, body, _ = await create(cloud, image, "after-restart", flavor="1")
        assert code == 403 and body["forbidden"]["message"] == (
            "Quota exceeded for cores: Requested 1, but already used 3 of 3 cores")
    finally:
        await stop_cloud(cloud)
