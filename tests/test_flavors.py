"""Flavors, extra specs and flavor access over real HTTP, plus the real CLI."""

from __future__ import annotations

from novalite.api import keys


async def create(cloud, **flavor):
    body = {"name": "f1", "ram": 512, "vcpus": 1, "disk": 1} | flavor
    return await cloud.compute("POST", "/flavors", user="admin", json_body={"flavor": body})


async def test_list_shows_devstack_flavors_in_brief(cloud):
    status, body, headers = await cloud.compute("GET", "/flavors")
    assert status == 200
    names = [f["name"] for f in body["flavors"]]
    assert "m1.tiny" in names and "m1.small" in names
    first = body["flavors"][0]
    assert set(first) == {"id", "name", "links"}
    assert first["links"][0]["rel"] == "self"
    assert first["links"][0]["href"].endswith(f"/compute/v2.1/flavors/{first['id']}")
    assert first["links"][1]["href"].endswith(f"/compute/flavors/{first['id']}")


async def test_detail_fields_change_with_microversion(cloud):
    _, old, _ = await cloud.compute("GET", "/flavors/detail")
    f = old["flavors"][0]
    assert set(f) == {
        "id", "name", "ram", "disk", "swap", "OS-FLV-EXT-DATA:ephemeral", "OS-FLV-DISABLED:disabled",
        "vcpus", "os-flavor-access:is_public", "rxtx_factor", "links",
    }
    assert f["swap"] == ""
    _, new, _ = await cloud.compute("GET", "/flavors/detail", user="admin", version="2.75")
    g = new["flavors"][0]
    assert g["swap"] == 0 and g["description"] is None and g["extra_specs"] == {}
    _, brief, _ = await cloud.compute("GET", "/flavors", version="2.55")
    assert set(brief["flavors"][0]) == {"id", "name", "links", "description"}


async def test_show_missing_flavor_is_404(cloud):
    status, body, _ = await cloud.compute("GET", "/flavors/nope")
    assert status == 404
    assert body == {"itemNotFound": {"code": 404, "message": "Flavor nope could not be found."}}


async def test_filters_sort_and_paging(cloud):
    _, body, _ = await cloud.compute("GET", "/flavors/detail?minRam=2048&sort_key=memory_mb&sort_dir=desc")
    rams = [f["ram"] for f in body["flavors"]]
    assert rams == sorted(rams, reverse=True) and min(rams) >= 2048
    status, body, _ = await cloud.compute("GET", "/flavors?minRam=abc")
    assert status == 400 and body["badRequest"]["message"] == "Invalid minRam filter [abc]"
    _, page, _ = await cloud.compute("GET", "/flavors?limit=2")
    assert len(page["flavors"]) == 2
    nxt = page["flavors_links"][0]
    assert nxt["rel"] == "next" and f"marker={page['flavors'][1]['id']}" in nxt["href"]
    _, page2, _ = await cloud.compute("GET", f"/flavors?limit=2&marker={page['flavors'][1]['id']}")
    assert page2["flavors"][0]["id"] not in {f["id"] for f in page["flavors"]}
    status, body, _ = await cloud.compute("GET", "/flavors?marker=nope")
    assert status == 400 and body["badRequest"]["message"] == "marker [nope] not found"
    status, body, _ = await cloud.compute("GET", "/flavors?sort_key=bogus")
    assert status == 400
    assert body["badRequest"]["message"].startswith(
        "Invalid input for query parameters sort_key. Value: bogus. 'bogus' is not one of ['created_at'"
    )


async def test_create_validates_like_nova(cloud):
    status, body, _ = await create(cloud, ram=0)
    assert status == 400
    assert body["badRequest"]["message"] == (
        "Invalid input for field/attribute ram. Value: 0. 0 is less than the minimum of 1"
    )
    status, body, _ = await cloud.compute(
        "POST", "/flavors", user="admin", json_body={"flavor": {"name": "x", "ram": 1, "vcpus": 1}}
    )
    assert status == 400 and body["badRequest"]["message"].endswith("'disk' is a required property")
    status, body, _ = await create(cloud, name=" lead")
    assert status == 400
    assert body["badRequest"]["message"] == (
        "An invalid 'name' value was provided. The name must be: "
        "printable characters. Can not start or end with whitespace."
    )
    status, body, _ = await create(cloud, description="d")
    assert status == 400
    assert "Additional properties are not allowed ('description' was unexpected)" in body["badRequest"]["message"]
    status, _, _ = await cloud.compute(
        "POST", "/flavors", json_body={"flavor": {"name": "x", "ram": 1, "vcpus": 1, "disk": 0}}
    )
    assert status == 403


async def test_create_conflicts_update_and_delete(cloud):
    status, body, _ = await create(cloud, id="f-1", swap=128, description="small", **{"OS-FLV-EXT-DATA:ephemeral": 2})
    assert status == 400  # description needs 2.55
    status, body, _ = await cloud.compute(
        "POST", "/flavors", user="admin", version="2.61",
        json_body={"flavor": {"name": "f1", "id": "f-1", "ram": 512, "vcpus": 1, "disk": 1, "swap": 128,
                              "description": "small"}},
    )
    assert status == 200
    assert body["flavor"]["swap"] == 128 and body["flavor"]["extra_specs"] == {}
    assert body["flavor"]["description"] == "small"
    status, body, _ = await create(cloud)
    assert status == 409 and body["conflictingRequest"]["message"] == "Flavor with name f1 already exists."
    status, body, _ = await create(cloud, name="f2", id="f-1")
    assert status == 409 and body["conflictingRequest"]["message"] == "Flavor with ID f-1 already exists."
    status, _, _ = await cloud.compute("PUT", "/flavors/f-1", user="admin", json_body={"flavor": {"description": "x"}})
    assert status == 404  # before 2.55 the route does not exist
    status, body, _ = await cloud.compute(
        "PUT", "/flavors/f-1", user="admin", version="2.55", json_body={"flavor": {"description": "new"}}
    )
    assert status == 200 and body["flavor"]["description"] == "new"
    status, body, _ = await cloud.compute("DELETE", "/flavors/f-1", user="admin")
    assert status == 202 and body is None
    status, _, _ = await cloud.compute("DELETE", "/flavors/f-1", user="admin")
    assert status == 404


async def test_extra_specs_crud(cloud):
    status, body, _ = await cloud.compute(
        "POST", "/flavors/1/os-extra_specs", user="admin", json_body={"extra_specs": {"hw:cpu_policy": "shared", "n": 2}}
    )
    assert status == 200 and body == {"extra_specs": {"hw:cpu_policy": "shared", "n": 2}}
    _, body, _ = await cloud.compute("GET", "/flavors/1/os-extra_specs")
    assert body == {"extra_specs": {"hw:cpu_policy": "shared", "n": "2"}}
    status, body, _ = await cloud.compute(
        "PUT", "/flavors/1/os-extra_specs/n", user="admin", json_body={"other": "3"}
    )
    assert status == 400 and body["badRequest"]["message"] == "Request body and URI mismatch"
    status, body, _ = await cloud.compute("PUT", "/flavors/1/os-extra_specs/n", user="admin", json_body={"n": "3"})
    assert status == 200 and body == {"n": "3"}
    _, body, _ = await cloud.compute("GET", "/flavors/1/os-extra_specs/n")
    assert body == {"n": "3"}
    status, body, _ = await cloud.compute("DELETE", "/flavors/1/os-extra_specs/n", user="admin")
    assert status == 200 and body is None
    status, body, _ = await cloud.compute("GET", "/flavors/1/os-extra_specs/n")
    assert status == 404 and body["itemNotFound"]["message"] == "Flavor 1 has no extra specs with key n."
    status, _, _ = await cloud.compute("POST", "/flavors/1/os-extra_specs", json_body={"extra_specs": {"a": "b"}})
    assert status == 403
    status, body, _ = await cloud.compute(
        "POST", "/flavors/1/os-extra_specs", user="admin", json_body={"extra_specs": {"bad/key": "b"}}
    )
    assert status == 400 and "does not match any of the regexes" in body["badRequest"]["message"]


async def test_private_flavor_visible_only_with_access(cloud):
    await cloud.compute(
        "POST", "/flavors", user="admin",
        json_body={"flavor": {"name": "priv", "id": "p1", "ram": 64, "vcpus": 1, "disk": 0,
                              "os-flavor-access:is_public": False}},
    )
    status, _, _ = await cloud.compute("GET", "/flavors/p1")
    assert status == 404
    _, body, _ = await cloud.compute("GET", "/flavors")
    assert "p1" not in [f["id"] for f in body["flavors"]]
    _, body, _ = await cloud.compute("GET", "/flavors?is_public=false", user="admin")
    assert [f["id"] for f in body["flavors"]] == ["p1"]

    demo_project = await cloud.app[keys.DB].fetchval("SELECT id FROM projects WHERE name = 'demo'")
    status, body, _ = await cloud.compute(
        "POST", "/flavors/p1/action", user="admin", json_body={"addTenantAccess": {"tenant": demo_project}}
    )
    assert status == 200 and body == {"flavor_access": [{"flavor_id": "p1", "tenant_id": demo_project}]}
    status, body, _ = await cloud.compute(
        "POST", "/flavors/p1/action", user="admin", json_body={"addTenantAccess": {"tenant": demo_project}}
    )
    assert status == 409
    status, body, _ = await cloud.compute(
        "POST", "/flavors/p1/action", user="admin", json_body={"addTenantAccess": {"tenant": "nope"}}
    )
    assert status == 400 and body["badRequest"]["message"] == "Project ID nope is not a valid project."
    status, body, _ = await cloud.compute("GET", "/flavors/p1")
    assert status == 200 and body["flavor"]["os-flavor-access:is_public"] is False
    _, body, _ = await cloud.compute("GET", "/flavors/p1/os-flavor-access", user="admin")
    assert body["flavor_access"][0]["tenant_id"] == demo_project
    status, body, _ = await cloud.compute("GET", "/flavors/1/os-flavor-access", user="admin")
    assert status == 404 and body["itemNotFound"]["message"] == "Access list not available for public flavors."
    status, body, _ = await cloud.compute(
        "POST", "/flavors/1/action", user="admin", version="2.7", json_body={"addTenantAccess": {"tenant": demo_project}}
    )
    assert status == 409 and body["conflictingRequest"]["message"] == "Can not add access to a public flavor."
    status, body, _ = await cloud.compute(
        "POST", "/flavors/p1/action", user="admin", json_body={"removeTenantAccess": {"tenant": demo_project}}
    )
    assert status == 200 and body == {"flavor_access": []}
    status, _, _ = await cloud.compute("GET", "/flavors/p1")
    assert status == 404


async def test_cli_flavor_lifecycle(cloud):
    rows = await cloud.openstack_json("flavor", "list")
    assert "m1.tiny" in [r["Name"] for r in rows]
    shown = await cloud.openstack_json("flavor", "show", "m1.tiny")
    assert shown["ram"] == 512
    made = await cloud.openstack_json(
        "flavor", "create", "--ram", "256", "--vcpus", "1", "--disk", "1", "--id", "cli1",
        "--property", "hw:mem_page_size=small", "cli.flavor", cloud="novalite-admin",
    )
    assert made["id"] == "cli1" and made["name"] == "cli.flavor"
    _, body, _ = await cloud.compute("GET", "/flavors/cli1/os-extra_specs")
    assert body["extra_specs"] == {"hw:mem_page_size": "small"}
    await cloud.openstack("flavor", "delete", "cli1", cloud="novalite-admin")
    status, _, _ = await cloud.compute("GET", "/flavors/cli1")
    assert status == 404
