"""os-server-groups and server-group scheduling through the API on test-driver hosts."""

from __future__ import annotations

import pytest
from conftest import add_image, start_cloud, stop_cloud, wait_for_status

from novalite.api import keys


def four_hosts(memory_mb: int = 16384) -> str:
    return "".join(
        f'[[hosts]]\nname = "sim{i}"\nsimulate = {{ vcpus = 8, memory_mb = {memory_mb}, disk_gb = 200 }}\n\n'
        for i in range(1, 5)
    )


@pytest.fixture
async def cloud4(pg_dsn, tmp_path):
    c = await start_cloud(pg_dsn, tmp_path, hosts=four_hosts())
    yield c
    await stop_cloud(c)


async def make_group(cloud, policy: str, version: str = "2.64", user: str = "demo", **rules) -> dict:
    body: dict = {"name": f"g-{policy}", "policy": policy}
    if rules:
        body["rules"] = rules
    status, out, _ = await cloud.compute("POST", "/os-server-groups", json_body={"server_group": body},
                                         version=version, user=user)
    assert status == 200, out
    return out["server_group"]


async def boot(cloud, image: str, group: str | None, count: int = 1, **extra) -> list[str]:
    body: dict = {"server": {"name": "vm", "imageRef": image, "flavorRef": "1", "networks": "none",
                             "min_count": count, "return_reservation_id": True, **extra}}
    if group:
        body["os:scheduler_hints"] = {"group": group}
    status, out, _ = await cloud.compute("POST", "/servers", json_body=body, version="2.latest")
    assert status == 202, out
    _, listing, _ = await cloud.compute("GET", f"/servers?reservation_id={out['reservation_id']}", version="2.latest")
    return [s["id"] for s in listing["servers"]]


async def hosts_of(cloud, uuids: list[str], status: str = "ACTIVE") -> list[str]:
    out = []
    for u in uuids:
        server = await wait_for_status(cloud, u, status, user="admin")
        out.append(server["OS-EXT-SRV-ATTR:host"])
    return out


# -- the API ------------------------------------------------------------------------------

async def test_create_show_list_delete_at_2_64(cloud):
    g = await make_group(cloud, "anti-affinity", max_server_per_host=2)
    assert set(g) == {"id", "name", "policy", "rules", "members", "project_id", "user_id"}
    assert g["policy"] == "anti-affinity" and g["rules"] == {"max_server_per_host": 2} and g["members"] == []
    status, shown, _ = await cloud.compute("GET", f"/os-server-groups/{g['id']}", version="2.64")
    assert status == 200 and shown["server_group"] == g
    _, listing, _ = await cloud.compute("GET", "/os-server-groups", version="2.64")
    assert [x["id"] for x in listing["server_groups"]] == [g["id"]]
    status, _, _ = await cloud.compute("DELETE", f"/os-server-groups/{g['id']}", version="2.64")
    assert status == 204
    status, err, _ = await cloud.compute("GET", f"/os-server-groups/{g['id']}", version="2.64")
    assert status == 404
    assert err["itemNotFound"]["message"] == f"Instance group {g['id']} could not be found."


async def test_views_follow_the_microversion(cloud):
    status, out, _ = await cloud.compute(
        "POST", "/os-server-groups", json_body={"server_group": {"name": "old", "policies": ["affinity"]}},
        version="2.1")
    assert status == 200, out
    g = out["server_group"]
    assert set(g) == {"id", "name", "policies", "members", "metadata"}
    assert g["policies"] == ["affinity"] and g["metadata"] == {}
    _, shown, _ = await cloud.compute("GET", f"/os-server-groups/{g['id']}", version="2.13")
    assert set(shown["server_group"]) == {"id", "name", "policies", "members", "metadata", "project_id", "user_id"}
    _, shown, _ = await cloud.compute("GET", f"/os-server-groups/{g['id']}", version="2.64")
    assert shown["server_group"]["policy"] == "affinity" and shown["server_group"]["rules"] == {}


@pytest.mark.parametrize(
    "version, body, message",
    [
        ("2.1", {"name": "x", "policies": ["soft-affinity"]}, "is not one of"),
        ("2.15", {"name": "x", "policies": []}, "should be non-empty"),
        ("2.15", {"name": "x", "policies": ["affinity", "affinity"]}, "has non-unique elements"),
        ("2.15", {"name": "x", "policy": "affinity"}, "'policies' is a required property"),
        ("2.64", {"name": "x", "policies": ["affinity"]}, "'policy' is a required property"),
        ("2.64", {"name": "x", "policy": "affinity", "rules": {"max_server_per_host": 2}},
         "Only anti-affinity policy supports rules."),
        ("2.64", {"name": "x", "policy": "anti-affinity", "rules": {"max_server_per_host": 0}},
         "less than the minimum of 1"),
        ("2.64", {"name": "x", "policy": "anti-affinity", "rules": {"other": 1}}, "Additional properties"),
        ("2.64", {"name": " x", "policy": "affinity"}, "An invalid 'name' value was provided"),
    ],
)
async def test_create_rejects_bad_bodies(cloud, version, body, message):
    status, err, _ = await cloud.compute("POST", "/os-server-groups", json_body={"server_group": body},
                                         version=version)
    assert status == 400, err
    assert message in err["badRequest"]["message"]


async def test_server_group_quota(cloud):
    async with cloud.app[keys.DB].acquire() as conn:
        project = await conn.fetchval("SELECT id FROM projects WHERE name = 'demo'")
    status, _, _ = await cloud.compute("PUT", f"/os-quota-sets/{project}", user="admin",
                                       json_body={"quota_set": {"server_groups": 2}})
    assert status == 200
    await make_group(cloud, "affinity")
    await make_group(cloud, "affinity")
    status, err, _ = await cloud.compute("POST", "/os-server-groups", version="2.64",
                                         json_body={"server_group": {"name": "x", "policy": "affinity"}})
    assert status == 403
    assert err["forbidden"]["message"] == "Quota exceeded, too many server groups."


async def test_list_all_projects_and_paging(cloud):
    mine = [await make_group(cloud, "affinity") for _ in range(3)]
    theirs = await make_group(cloud, "anti-affinity", user="admin")
    _, listing, _ = await cloud.compute("GET", "/os-server-groups?all_projects=True", version="2.64")
    assert theirs["id"] not in [g["id"] for g in listing["server_groups"]]  # not admin: own only
    _, listing, _ = await cloud.compute("GET", "/os-server-groups?all_projects=True", version="2.64", user="admin")
    assert {g["id"] for g in listing["server_groups"]} == {g["id"] for g in mine} | {theirs["id"]}
    _, page, _ = await cloud.compute("GET", "/os-server-groups?limit=1&offset=1", version="2.64")
    assert [g["id"] for g in page["server_groups"]] == [mine[1]["id"]]
    status, err, _ = await cloud.compute("GET", "/os-server-groups?bogus=1", version="2.75")
    assert status == 400
    status, _, _ = await cloud.compute("GET", f"/os-server-groups/{theirs['id']}", version="2.64")
    assert status == 403


async def test_group_hint_must_name_a_group(cloud):
    image = await add_image(cloud)
    body = {"server": {"name": "vm", "imageRef": image, "flavorRef": "1", "networks": "none"},
            "os:scheduler_hints": {"group": "6b2f0d36-0000-4000-8000-00000000000f"}}
    status, err, _ = await cloud.compute("POST", "/servers", json_body=body, version="2.latest")
    assert status == 400
    assert "could not be found" in err["badRequest"]["message"]


async def test_members_are_recorded_and_removed_with_the_server(cloud):
    image = await add_image(cloud)
    g = await make_group(cloud, "soft-anti-affinity")
    uuids = await boot(cloud, image, g["id"], count=2)
    await hosts_of(cloud, uuids)
    _, shown, _ = await cloud.compute("GET", f"/os-server-groups/{g['id']}", version="2.64")
    assert sorted(shown["server_group"]["members"]) == sorted(uuids)
    await cloud.compute("DELETE", f"/servers/{uuids[0]}")
    await wait_for_status(cloud, uuids[0], "DELETED")
    _, shown, _ = await cloud.compute("GET", f"/os-server-groups/{g['id']}", version="2.64")
    assert shown["server_group"]["members"] == [uuids[1]]


async def test_server_group_members_quota(cloud):
    async with cloud.app[keys.DB].acquire() as conn:
        project = await conn.fetchval("SELECT id FROM projects WHERE name = 'demo'")
    await cloud.compute("PUT", f"/os-quota-sets/{project}", user="admin",
                        json_body={"quota_set": {"server_group_members": 2}})
    image = await add_image(cloud)
    g = await make_group(cloud, "soft-affinity")
    await boot(cloud, image, g["id"], count=2)
    body = {"server": {"name": "vm", "imageRef": image, "flavorRef": "1", "networks": "none"},
            "os:scheduler_hints": {"group": g["id"]}}
    status, err, _ = await cloud.compute("POST", "/servers", json_body=body, version="2.latest")
    assert status == 403
    assert err["forbidden"]["message"] == "Quota exceeded, too many servers in group"


# -- scheduling with groups on four hosts ------------------------------------------------------

async def test_affinity_group_lands_on_one_host(cloud4):
    image = await add_image(cloud4)
    g = await make_group(cloud4, "affinity")
    first = await boot(cloud4, image, g["id"])
    rest = await boot(cloud4, image, g["id"], count=3)
    hosts = await hosts_of(cloud4, first + rest)
    assert len(set(hosts)) == 1, hosts


async def test_anti_affinity_group_spreads_then_runs_out_of_hosts(cloud4):
    image = await add_image(cloud4)
    g = await make_group(cloud4, "anti-affinity")
    uuids = await boot(cloud4, image, g["id"], count=4)
    hosts = await hosts_of(cloud4, uuids)
    assert sorted(hosts) == ["sim1", "sim2", "sim3", "sim4"]
    (fifth,) = await boot(cloud4, image, g["id"])
    server = await wait_for_status(cloud4, fifth, "ERROR", user="admin")
    message = server["fault"]["message"]
    assert message.startswith("No valid host was found. 4 hosts; ServerGroupAntiAffinityFilter removed 4 (")
    assert "max_server_per_host 1" in message


async def test_anti_affinity_max_server_per_host(cloud4):
    image = await add_image(cloud4)
    g = await make_group(cloud4, "anti-affinity", max_server_per_host=2)
    uuids = await boot(cloud4, image, g["id"], count=8)
    hosts = await hosts_of(cloud4, uuids)
    assert sorted(hosts) == sorted(["sim1", "sim2", "sim3", "sim4"] * 2)
    (ninth,) = await boot(cloud4, image, g["id"])
    server = await wait_for_status(cloud4, ninth, "ERROR", user="admin")
    assert "ServerGroupAntiAffinityFilter removed 4" in server["fault"]["message"]


async def test_soft_policies_weigh_instead_of_filtering(pg_dsn, tmp_path):
    extra = "[scheduler]\nsoft_affinity_weight_multiplier = 10.0\nsoft_anti_affinity_weight_multiplier = 10.0\n"
    cloud = await start_cloud(pg_dsn, tmp_path, extra=extra, hosts=four_hosts())
    try:
        image = await add_image(cloud)
        soft = await make_group(cloud, "soft-affinity")
        together = [(await boot(cloud, image, soft["id"]))[0] for _ in range(3)]
        hosts = await hosts_of(cloud, together)
        assert len(set(hosts)) == 1, hosts
        anti = await make_group(cloud, "soft-anti-affinity")
        apart = await boot(cloud, image, anti["id"], count=6)
        hosts = await hosts_of(cloud, apart)
        assert len(set(hosts)) == 4  # six members on four hosts: spread, none refused
    finally:
        await stop_cloud(cloud)
