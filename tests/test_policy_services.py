"""One policy engine for all five services: each reads its own override file, and every
route's rule is a registered upstream default."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import start_cloud, stop_cloud, write_config

from novalite.api import identity, identity_admin, networking, security_groups, volume
from novalite.api.compute import interfaces, remote_consoles, security_groups_proxy
from novalite.api.image import images
from novalite.app import init_app
from novalite.config import load_config
from novalite.policy import SERVICES, Enforcer


async def cloud_with(pg_dsn: str, workdir: Path, file: str, rules: dict[str, str]):
    (workdir / file).write_text(yaml.safe_dump(rules))
    return await start_cloud(pg_dsn, workdir)


async def demo_project(cloud) -> str:
    status, body, _ = await cloud.request("GET", "/identity/v3/auth/projects")
    assert status == 200, body
    return next(p["id"] for p in body["projects"] if p["name"] == "demo")


async def test_glance_override_denies_listing_images(pg_dsn, tmp_path):
    cloud = await cloud_with(pg_dsn, tmp_path, "glance-policy.yaml", {"get_images": "role:admin"})
    try:
        status, body, _ = await cloud.request("GET", "/image/v2/images")
        assert status == 403, body
        assert body == {"code": 403, "title": "Forbidden",
                        "message": "You are not authorized to complete get_images action."}
        status, body, _ = await cloud.request("GET", "/image/v2/images", user="admin")
        assert status == 200, body
    finally:
        await stop_cloud(cloud)


async def test_neutron_override_hides_networks(pg_dsn, tmp_path):
    cloud = await cloud_with(pg_dsn, tmp_path, "neutron-policy.yaml", {"get_network": "rule:admin_only"})
    try:
        status, body, _ = await cloud.request("GET", "/networking/v2.0/networks", user="admin")
        assert status == 200 and body["networks"], body
        net_id = body["networks"][0]["id"]
        # The shared network a member saw by default is now left out, and its GET is 404.
        status, body, _ = await cloud.request("GET", "/networking/v2.0/networks")
        assert (status, body) == (200, {"networks": []})
        status, body, _ = await cloud.request("GET", f"/networking/v2.0/networks/{net_id}")
        assert status == 404, body
        assert body["NeutronError"]["type"] == "NetworkNotFound"
    finally:
        await stop_cloud(cloud)


async def test_cinder_override_denies_volume_create(pg_dsn, tmp_path):
    cloud = await cloud_with(pg_dsn, tmp_path, "cinder-policy.yaml", {"volume:create": "role:admin"})
    try:
        project = await demo_project(cloud)
        status, body, _ = await cloud.request(
            "POST", f"/volume/v3/{project}/volumes", json_body={"volume": {"size": 1}})
        assert status == 403, body
        assert body == {"forbidden": {"code": 403,
                                      "message": "Policy doesn't allow volume:create to be performed."}}
        # Reading is untouched.
        status, body, _ = await cloud.request("GET", f"/volume/v3/{project}/volumes")
        assert status == 200, body
    finally:
        await stop_cloud(cloud)


async def test_keystone_override_denies_reading_own_user(pg_dsn, tmp_path):
    cloud = await cloud_with(pg_dsn, tmp_path, "keystone-policy.yaml", {"identity:get_user": "rule:admin_required"})
    try:
        status, body, _ = await cloud.request("GET", "/identity/v3/users?name=demo", user="admin")
        user_id = body["users"][0]["id"]
        status, body, _ = await cloud.request("GET", f"/identity/v3/users/{user_id}")
        assert status == 403, body
        assert body["error"]["message"] == (
            "You are not authorized to perform the requested action: identity:get_user.")
        status, body, _ = await cloud.request("GET", f"/identity/v3/users/{user_id}", user="admin")
        assert status == 200, body
    finally:
        await stop_cloud(cloud)


async def test_keystone_defaults_let_a_user_read_itself(cloud):
    status, body, _ = await cloud.request("GET", "/identity/v3/users?name=demo", user="admin")
    user_id = body["users"][0]["id"]
    status, body, _ = await cloud.request("GET", f"/identity/v3/users/{user_id}")
    assert status == 200, body
    status, body, _ = await cloud.request("GET", "/identity/v3/users")
    assert status == 403, body


# --- the tables --------------------------------------------------------------------------

@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_default_parses_and_references_resolve(service: str) -> None:
    _, rules = SERVICES[service]
    assert len({r.name for r in rules}) == len(rules), "duplicate rule names"
    enforcer = Enforcer(None, defaults=rules)  # parses every check string
    for name, rule in enforcer.rules.items():
        for ref in rule.rule_refs():
            assert ref in enforcer.rules, (service, name, ref)


HANDLER_TABLES = {
    "/image/": ("glance", images.HANDLER_RULES),
    "/networking": ("neutron", {**networking.HANDLER_RULES, **security_groups.HANDLER_RULES}),
    "/volume": ("cinder", volume.HANDLER_RULES),
    "/identity": ("keystone", {**identity.HANDLER_RULES, **identity_admin.HANDLER_RULES}),
    "/compute/v2.1/servers/{server_id}/os-interface": ("nova", interfaces.HANDLER_RULES),
    "/compute/v2.1/servers/{server_id}/os-security-groups": ("nova", interfaces.HANDLER_RULES),
    "/compute/v2.1/os-security-group": ("nova", security_groups_proxy.HANDLER_RULES),
    "/compute/v2.1/servers/{server_id}/remote-consoles": ("nova", remote_consoles.HANDLER_RULES),
}


def test_every_route_names_registered_rules(tmp_path: Path) -> None:
    app = init_app(load_config(write_config(tmp_path, "postgresql://unused/unused")))
    seen: set[str] = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        prefix = next((p for p in HANDLER_TABLES if path.startswith(p) or path + "/" == p), None)
        if prefix is None:
            continue
        service, table = HANDLER_TABLES[prefix]
        name = route.handler.__name__
        assert name in table, f"{route.method} {path}: {name} has no entry in its HANDLER_RULES"
        registered = {r.name for r in SERVICES[service][1]}
        for rule in table[name]:
            assert rule in registered, (service, name, rule)
        seen.add(prefix)
    assert seen == set(HANDLER_TABLES)


def test_each_service_reads_its_own_file(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "postgresql://unused/unused"))
    files = {s: config.policy.service_file(s) for s in SERVICES}
    assert files["nova"] == tmp_path / "policy.yaml"
    assert files["glance"] == tmp_path / "glance-policy.yaml"
    assert len(set(files.values())) == len(files)
    # Base rule names collide across services with different defaults.
    admin_or_owner = {s: {r.name: r.check_str for r in SERVICES[s][1]}.get("admin_or_owner")
                      for s in ("nova", "neutron", "cinder", "keystone")}
    assert len(set(admin_or_owner.values())) == 4


def test_neutron_field_and_keystone_is_admin_checks() -> None:
    neutron = Enforcer(None, defaults=SERVICES["neutron"][1])
    member = {"user_id": "u", "project_id": "A", "roles": ["member"]}
    shared = {"project_id": "admin", "shared": True, "router:external": False}
    assert neutron.check("get_network", member, shared)
    assert not neutron.check("get_network", member, {**shared, "shared": False})
    assert not neutron.check("get_network:provider:network_type", member, shared)
    keystone = Enforcer(None, defaults=SERVICES["keystone"][1])
    creds = {**member, "is_admin": False, "domain_id": None, "system_scope": None}
    assert not keystone.check("admin_required", creds, {})
    assert keystone.check("admin_required", {**creds, "roles": ["admin"], "is_admin": True}, {})
    # A project manager is no domain manager: list_roles stays admin-only.
    assert not keystone.check("identity:list_roles", {**creds, "roles": ["manager"]}, {})
