"""Keystone v3 admin subset: projects, users, roles and grants, through the real CLI and SDK."""

from __future__ import annotations

import asyncio

import openstack
from conftest import create_user_with_role

ADMIN = "novalite-admin"


async def test_cli_token_catalog_and_versions(cloud):
    token = await cloud.openstack_json("token", "issue", cloud=ADMIN)
    assert token["id"] and token["project_id"] and token["user_id"]
    catalog = await cloud.openstack_json("catalog", "list", cloud=ADMIN)
    types = {entry["Type"]: entry for entry in catalog}
    assert {"identity", "compute", "image"} <= set(types)
    assert f"{cloud.url}/compute/v2.1" in str(types["compute"]["Endpoints"])
    # `versions show` walks every catalog endpoint's version document; the identity
    # and compute entries come from this server's discovery documents.
    versions = await cloud.openstack_json("versions", "show", cloud=ADMIN)
    by_service = {(v["Service Type"], v["Version"]): v for v in versions}
    identity = by_service[("identity", "3.14")]
    assert identity["Status"] == "CURRENT" and identity["Endpoint"] == f"{cloud.url}/identity/v3/"
    compute = by_service[("compute", "2.1")]
    assert compute["Status"] == "CURRENT" and compute["Min Microversion"] == "2.1"


async def test_cli_project_user_role_lifecycle(cloud):
    project = await cloud.openstack_json(
        "project", "create", "--description", "Team A", "team-a", cloud=ADMIN
    )
    assert project["name"] == "team-a" and project["domain_id"] == "default" and project["enabled"] is True
    listed = await cloud.openstack_json("project", "list", cloud=ADMIN)
    assert {"admin", "demo", "team-a"} <= {p["Name"] for p in listed}
    shown = await cloud.openstack_json("project", "show", "team-a", cloud=ADMIN)
    assert shown["id"] == project["id"] and shown["description"] == "Team A"

    user = await cloud.openstack_json(
        "user", "create", "--project", "team-a", "--password", "s3cret-pw", "alice", cloud=ADMIN
    )
    assert user["name"] == "alice" and user["default_project_id"] == project["id"]
    assert not any("password" in key for key in user if key != "password_expires_at")
    await cloud.openstack("role", "add", "--project", "team-a", "--user", "alice", "member", cloud=ADMIN)
    assignments = await cloud.openstack_json(
        "role", "assignment", "list", "--user", "alice", "--project", "team-a", "--names", cloud=ADMIN
    )
    assert [(a["Role"], a["User"], a["Project"]) for a in assignments] == [
        ("member", "alice@Default", "team-a@Default")
    ]

    token = await cloud.login("alice", "s3cret-pw", "team-a")
    async with cloud.session.get(
        f"{cloud.url}/identity/v3/auth/tokens", headers={"X-Auth-Token": token, "X-Subject-Token": token}
    ) as r:
        assert r.status == 200
        body = (await r.json())["token"]
    assert body["project"]["id"] == project["id"]
    assert {role["name"] for role in body["roles"]} == {"member", "reader"}

    await cloud.openstack("user", "delete", "alice", cloud=ADMIN)
    await cloud.openstack("project", "delete", "team-a", cloud=ADMIN)
    rc, _, err = await cloud.openstack("project", "show", "team-a", cloud=ADMIN, check=False)
    assert rc != 0 and "No Project found for team-a" in err


async def test_sdk_authorizes_and_finds_compute_endpoint(cloud):
    conn = openstack.connect(
        auth_url=f"{cloud.url}/identity",
        username="admin",
        password=cloud.creds["admin"],
        project_name="admin",
        user_domain_name="Default",
        project_domain_name="Default",
        region_name=cloud.config.identity.region,
        identity_api_version="3",
    )
    try:
        token = await asyncio.to_thread(conn.authorize)
        assert token
        endpoint = await asyncio.to_thread(conn.compute.get_endpoint)
        assert endpoint == f"{cloud.url}/compute/v2.1"
        names = await asyncio.to_thread(lambda: {p.name for p in conn.identity.projects()})
        assert {"admin", "demo"} <= names
    finally:
        await asyncio.to_thread(conn.close)


async def test_member_cannot_create_project(cloud):
    status, body, _ = await cloud.request(
        "POST", "/identity/v3/projects", user="demo", json_body={"project": {"name": "sneaky"}}
    )
    assert status == 403
    assert body == {
        "error": {
            "code": 403,
            "message": "You are not authorized to perform the requested action: identity:create_project.",
            "title": "Forbidden",
        }
    }


async def test_member_reads_only_itself(cloud):
    token = await cloud.token("demo")
    async with cloud.session.get(
        f"{cloud.url}/identity/v3/auth/tokens", headers={"X-Auth-Token": token, "X-Subject-Token": token}
    ) as r:
        me = (await r.json())["token"]["user"]["id"]
    status, body, _ = await cloud.request("GET", f"/identity/v3/users/{me}")
    assert status == 200 and body["user"]["name"] == "demo"
    assert "password_hash" not in body["user"] and "password" not in body["user"]
    status, body, _ = await cloud.request("GET", f"/identity/v3/users/{me}/projects")
    assert status == 200 and [p["name"] for p in body["projects"]] == ["demo"]
    status, body, _ = await cloud.request("GET", "/identity/v3/users")
    assert status == 403
    assert body["error"]["message"].endswith("identity:list_users.")


async def test_duplicate_project_is_409(cloud):
    status, _, _ = await cloud.request("POST", "/identity/v3/projects", user="admin", json_body={"project": {"name": "twin"}})
    assert status == 201
    status, body, _ = await cloud.request("POST", "/identity/v3/projects", user="admin", json_body={"project": {"name": "twin"}})
    assert status == 409
    assert body["error"]["code"] == 409 and body["error"]["title"] == "Conflict"
    assert body["error"]["message"].startswith("Conflict occurred attempting to store project - ")
    assert "twin" in body["error"]["message"]


async def test_unknown_project_is_404(cloud):
    status, body, _ = await cloud.request("GET", "/identity/v3/projects/nope", user="admin")
    assert status == 404
    assert body == {"error": {"code": 404, "message": "Could not find project: nope.", "title": "Not Found"}}


async def test_lists_carry_links_and_filters(cloud):
    status, body, _ = await cloud.request("GET", "/identity/v3/projects?name=demo", user="admin")
    assert status == 200
    assert body["links"] == {"self": f"{cloud.url}/identity/v3/projects?name=demo", "previous": None, "next": None}
    assert [p["name"] for p in body["projects"]] == ["demo"]
    assert body["projects"][0]["links"]["self"] == f"{cloud.url}/identity/v3/projects/{body['projects'][0]['id']}"
    status, body, _ = await cloud.request("GET", "/identity/v3/domains?name=Default", user="admin")
    assert status == 200 and [d["id"] for d in body["domains"]] == ["default"]
    status, body, _ = await cloud.request("GET", "/identity/v3/roles?name=member", user="admin")
    assert status == 200 and [r["name"] for r in body["roles"]] == ["member"]


async def test_deleted_users_token_is_401_at_once(cloud):
    user_id, _ = await create_user_with_role(cloud, "bob", "bob-pw")
    token = await cloud.login("bob", "bob-pw", "demo")
    hdrs = {"X-Auth-Token": token}
    async with cloud.session.get(f"{cloud.url}/compute/v2.1/flavors", headers=hdrs) as r:
        assert r.status != 401
    status, _, _ = await cloud.request("DELETE", f"/identity/v3/users/{user_id}", user="admin")
    assert status == 204
    async with cloud.session.get(f"{cloud.url}/compute/v2.1/flavors", headers=hdrs) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == 401


async def test_removed_role_drops_token_at_once(cloud):
    _, grant = await create_user_with_role(cloud, "carol", "carol-pw")
    token = await cloud.login("carol", "carol-pw", "demo")
    hdrs = {"X-Auth-Token": token}
    async with cloud.session.get(f"{cloud.url}/compute/v2.1/flavors", headers=hdrs) as r:
        assert r.status != 401
    status, _, _ = await cloud.request("HEAD", grant, user="admin")
    assert status == 204
    status, _, _ = await cloud.request("DELETE", grant, user="admin")
    assert status == 204
    status, body, _ = await cloud.request("HEAD", grant, user="admin")
    assert status == 404
    async with cloud.session.get(f"{cloud.url}/compute/v2.1/flavors", headers=hdrs) as r:
        assert r.status == 401


async def test_effective_assignments_include_implied_roles(cloud):
    user_id, _ = await create_user_with_role(cloud, "dave", "dave-pw")
    status, body, _ = await cloud.request(
        "GET", f"/identity/v3/role_assignments?user.id={user_id}&effective&include_names", user="admin"
    )
    assert status == 200
    roles = sorted(a["role"]["name"] for a in body["role_assignments"])
    assert roles == ["member", "reader"]
    implied = [a for a in body["role_assignments"] if a["role"]["name"] == "reader"][0]
    assert "prior_role" in implied["links"]


async def test_cli_member_is_refused_with_keystone_message(cloud):
    rc, _, err = await cloud.openstack("project", "create", "sneaky", check=False)
    assert rc != 0
    assert "You are not authorized to perform the requested action: identity:create_project." in err
    assert "ForbiddenException: 403" in err


async def test_cli_disabling_project_and_changing_password_end_tokens(cloud):
    await cloud.openstack("project", "create", "team-b", cloud=ADMIN)
    await cloud.openstack(
        "user", "create", "--project", "team-b", "--password", "first-pw", "erin", cloud=ADMIN
    )
    await cloud.openstack("role", "add", "--project", "team-b", "--user", "erin", "member", cloud=ADMIN)
    users = await cloud.openstack_json("user", "list", cloud=ADMIN)
    assert "erin" in {u["Name"] for u in users}
    roles = await cloud.openstack_json("role", "list", cloud=ADMIN)
    assert {"admin", "member", "reader"} <= {r["Name"] for r in roles}

    token = await cloud.login("erin", "first-pw", "team-b")
    await cloud.openstack("user", "set", "--password", "second-pw", "erin", cloud=ADMIN)
    async with cloud.session.get(f"{cloud.url}/compute/v2.1/flavors", headers={"X-Auth-Token": token}) as r:
        assert r.status == 401
    token = await cloud.login("erin", "second-pw", "team-b")

    await cloud.openstack("project", "set", "--disable", "--description", "frozen", "team-b", cloud=ADMIN)
    shown = await cloud.openstack_json("project", "show", "team-b", cloud=ADMIN)
    assert shown["enabled"] is False and shown["description"] == "frozen"
    async with cloud.session.get(f"{cloud.url}/compute/v2.1/flavors", headers={"X-Auth-Token": token}) as r:
        assert r.status == 401


async def test_duplicate_user_is_409(cloud):
    await create_user_with_role(cloud, "frank", "pw")
    status, body, _ = await cloud.request(
        "POST", "/identity/v3/users", user="admin", json_body={"user": {"name": "frank", "password": "x"}}
    )
    assert status == 409
    assert body["error"]["message"] == (
        "Conflict occurred attempting to store user - Duplicate entry found with name frank at domain ID default."
    )
