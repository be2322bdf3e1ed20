"""Response shapes that Tempest's schemas pinned down: server documents of PUT before and after
2.75, server_groups from 2.71, /servers/{id}/ips, the ip filter, os-simple-tenant-usage,
os-quota-class-sets, the v2.0 version document, a simulated host's console."""

from __future__ import annotations

from conftest import add_image, wait_for_status

from novalite.api import keys


async def _boot(cloud, name: str = "vm", **extra) -> dict:
    image_id = await add_image(cloud, name="cirros")
    body = {"server": {"name": name, "imageRef": image_id, "flavorRef": "1", "networks": "auto", **extra}}
    status, created, _ = await cloud.compute("POST", "/servers", json_body=body, version="2.latest")
    assert status == 202, created
    return await wait_for_status(cloud, created["server"]["id"], "ACTIVE")


async def test_update_answers_the_short_document_before_2_75_and_the_full_one_after(cloud):
    server = await _boot(cloud)
    sid = server["id"]
    _, old, _ = await cloud.compute("PUT", f"/servers/{sid}", version="2.74", json_body={"server": {"name": "a"}})
    doc = old["server"]
    assert doc["name"] == "a"
    for key in ("OS-EXT-AZ:availability_zone", "OS-EXT-STS:vm_state", "key_name", "config_drive",
                "OS-SRV-USG:launched_at", "security_groups", "os-extended-volumes:volumes_attached",
                "pinned_availability_zone"):
        assert key not in doc, key
    assert doc["server_groups"] == []
    (addr,) = doc["addresses"]["private"]
    assert set(addr) == {"addr", "version"}
    _, new, _ = await cloud.compute("PUT", f"/servers/{sid}", version="2.75", json_body={"server": {"name": "b"}})
    assert new["server"]["OS-EXT-STS:vm_state"] == "active" and "OS-EXT-IPS-MAC:mac_addr" in str(new)
    _, shown, _ = await cloud.compute("GET", f"/servers/{sid}", version="2.70")
    assert "server_groups" not in shown["server"]


async def test_show_lists_the_servers_group_from_2_71_but_detail_never(cloud):
    _, group, _ = await cloud.compute(
        "POST", "/os-server-groups", version="2.64", json_body={"server_group": {"name": "g", "policy": "affinity"}}
    )
    gid = group["server_group"]["id"]
    server = await _boot(cloud, **{})
    image_id = server["image"]["id"]
    body = {"server": {"name": "member", "imageRef": image_id, "flavorRef": "1", "networks": "none"},
            "os:scheduler_hints": {"group": gid}}
    _, created, _ = await cloud.compute("POST", "/servers", json_body=body, version="2.latest")
    member = await wait_for_status(cloud, created["server"]["id"], "ACTIVE")
    assert member["server_groups"] == [gid]
    _, listed, _ = await cloud.compute("GET", "/servers/detail", version="2.latest")
    assert all("server_groups" not in s for s in listed["servers"])


async def test_ips_and_the_ip_filter(cloud):
    server = await _boot(cloud)
    sid = server["id"]
    ip = server["addresses"]["private"][0]["addr"]
    _, ips, _ = await cloud.compute("GET", f"/servers/{sid}/ips")
    assert ips == {"addresses": {"private": [{"addr": ip, "version": 4}]}}
    _, one, _ = await cloud.compute("GET", f"/servers/{sid}/ips/private")
    assert one == {"private": [{"addr": ip, "version": 4}]}
    status, _, _ = await cloud.compute("GET", f"/servers/{sid}/ips/elsewhere")
    assert status == 404
    _, hit, _ = await cloud.compute("GET", f"/servers?ip={ip.replace('.', '[.]')}")
    _, miss, _ = await cloud.compute("GET", "/servers?ip=192[.]168")
    assert [s["id"] for s in hit["servers"]] == [sid] and miss["servers"] == []


async def test_simple_tenant_usage(cloud):
    server = await _boot(cloud)
    demo = await cloud.app[keys.DB].fetchval("SELECT id FROM projects WHERE name = 'demo'")
    status, _, _ = await cloud.compute("GET", "/os-simple-tenant-usage")
    assert status == 403
    status, listed, _ = await cloud.compute("GET", "/os-simple-tenant-usage?detailed=1&start=2000-01-01T00:00:00", user="admin")
    assert status == 200, listed
    (usage,) = listed["tenant_usages"]
    assert usage["tenant_id"] == demo and usage["server_usages"][0]["instance_id"] == server["id"]
    assert usage["server_usages"][0]["state"] == "active" and usage["total_hours"] > 0, usage
    _, shown, _ = await cloud.compute("GET", f"/os-simple-tenant-usage/{demo}")
    assert shown["tenant_usage"]["server_usages"][0]["flavor"] == "m1.tiny"
    status, body, _ = await cloud.compute("GET", f"/os-simple-tenant-usage/{demo}?start=yesterday")
    assert status == 400, body
    _, paged, _ = await cloud.compute("GET", f"/os-simple-tenant-usage/{demo}?limit=1", version="2.40")
    assert "marker=" in paged["tenant_usage_links"][0]["href"]


async def test_quota_class_default_sets_every_projects_defaults(cloud):
    status, _, _ = await cloud.compute("GET", "/os-quota-class-sets/default")
    assert status == 403
    _, shown, _ = await cloud.compute("GET", "/os-quota-class-sets/default", user="admin", version="2.1")
    assert shown["quota_class_set"]["id"] == "default" and "server_groups" not in shown["quota_class_set"]
    _, updated, _ = await cloud.compute(
        "PUT", "/os-quota-class-sets/default", user="admin", version="2.57",
        json_body={"quota_class_set": {"instances": 3, "cores": 30}},
    )
    assert "id" not in updated["quota_class_set"] and updated["quota_class_set"]["instances"] == 3
    assert "injected_files" not in updated["quota_class_set"]
    demo = await cloud.app[keys.DB].fetchval("SELECT id FROM projects WHERE name = 'demo'")
    _, quota, _ = await cloud.compute("GET", f"/os-quota-sets/{demo}")
    _, defaults, _ = await cloud.compute("GET", f"/os-quota-sets/{demo}/defaults")
    assert quota["quota_set"]["instances"] == defaults["quota_set"]["instances"] == 3


async def test_version_documents_and_simulated_console(cloud):
    async with cloud.session.get(f"{cloud.url}/compute/v2/") as r:
        assert r.status == 200
        assert (await r.json())["version"]["id"] == "v2.0"
    server = await _boot(cloud)
    _, out, _ = await cloud.compute(
        "POST", f"/servers/{server['id']}/action", json_body={"os-getConsoleOutput": {"length": 3}}
    )
    lines = out["output"].split("\n")
    assert len(lines) == 3 and lines[-1].endswith("login: ")
    _, full, _ = await cloud.compute("POST", f"/servers/{server['id']}/action", json_body={"os-getConsoleOutput": {}})
    assert full["output"].startswith("novalite: simulated console")


async def test_admin_may_delete_a_projects_default_security_group(cloud):
    status, body, _ = await cloud.request("GET", "/networking/v2.0/security-groups?name=default")
    (group,) = body["security_groups"]
    status, _, _ = await cloud.request("DELETE", f"/networking/v2.0/security-groups/{group['id']}")
    assert status == 409
    status, _, _ = await cloud.request("DELETE", f"/networking/v2.0/security-groups/{group['id']}", user="admin")
    assert status == 204
    _, body, _ = await cloud.request("GET", "/networking/v2.0/security-groups?name=default")
    assert [g["name"] for g in body["security_groups"]] == ["default"]  # made again on demand
