"""Nova's security-group proxy (os-security-groups, os-security-group-rules) over HTTP, as Nova
answers it up to 2.35 and 404 from 2.36: the same groups and rules Neutron's API shows."""

from __future__ import annotations

import secrets
import uuid

import libvirt
import pytest
from conftest import start_cloud, stop_cloud
from test_nwfilter import _dumpxml, _rules, needs_libvirtd

from novalite.api import keys
from novalite.network.firewall import filter_name
from novalite.virt.libvirt.metadata import prune_redirects
from novalite.virt.libvirt.storage import purge_pools

SG = "/os-security-groups"
RULES = "/os-security-group-rules"
NEUTRON_SG = "/networking/v2.0/security-groups"
NEUTRON_RULES = "/networking/v2.0/security-group-rules"


async def _group(cloud, name: str = "web", user: str = "demo", version: str = "2.1") -> dict:
    status, body, _ = await cloud.compute("POST", SG, user=user, version=version,
                                          json_body={"security_group": {"name": name, "description": "d"}})
    assert status == 200, body
    return body["security_group"]


async def _rule(cloud, expect: int = 200, user: str = "demo", **attrs) -> dict:
    status, body, _ = await cloud.compute("POST", RULES, user=user, json_body={"security_group_rule": attrs})
    assert status == expect, body
    return body


async def _message(cloud, method: str, path: str, expect: int, **kw) -> str:
    status, body, _ = await cloud.compute(method, path, **kw)
    assert status == expect, body
    [(_, fault)] = body.items()
    return fault["message"]


@pytest.mark.parametrize("version", ["2.1", "2.35"])
async def test_group_crud_up_to_2_35(cloud, version):
    group = await _group(cloud, " web 1 ", version=version)
    assert group["name"] == " web 1 " and group["description"] == "d" and group["rules"] == []
    assert set(group) == {"id", "name", "description", "tenant_id", "rules"}
    status, body, _ = await cloud.compute("GET", f"{SG}/{group['id']}", version=version)
    assert status == 200 and body["security_group"] == group
    status, body, _ = await cloud.compute("GET", SG, version=version)
    assert [g["name"] for g in body["security_groups"]] == [" web 1 ", "default"]  # sorted by (tenant, name)
    assert group in body["security_groups"]
    default = next(g for g in body["security_groups"] if g["name"] == "default")
    assert len(default["rules"]) == 2  # its ingress rules; egress has no Nova form
    assert all((r["ip_protocol"], r["from_port"], r["to_port"], r["ip_range"], r["group"]["name"])
               == (None, None, None, {}, "default") for r in default["rules"])
    status, body, _ = await cloud.compute("PUT", f"{SG}/{group['id']}", version=version,
                                          json_body={"security_group": {"name": "web2", "description": "x"}})
    assert status == 200 and (body["security_group"]["name"], body["security_group"]["description"]) == ("web2", "x")
    status, body, _ = await cloud.compute("DELETE", f"{SG}/{group['id']}", version=version)
    assert status == 202 and body is None
    status, body, _ = await cloud.compute("GET", f"{SG}/{group['id']}", version=version)
    assert status == 404 and body["itemNotFound"]["message"] == f"Security group {group['id']} not found."


async def test_every_route_is_gone_from_2_36(cloud):
    group = await _group(cloud)
    rule = (await _rule(cloud, parent_group_id=group["id"], ip_protocol="tcp", from_port=22, to_port=22))
    rule_id = rule["security_group_rule"]["id"]
    for method, path, body in (("GET", SG, None), ("POST", SG, {"security_group": {"name": "x", "description": ""}}),
                               ("GET", f"{SG}/{group['id']}", None),
                               ("PUT", f"{SG}/{group['id']}", {"security_group": {"name": "x", "description": ""}}),
                               ("DELETE", f"{SG}/{group['id']}", None),
                               ("POST", RULES, {"security_group_rule": {"parent_group_id": group["id"]}}),
                               ("DELETE", f"{RULES}/{rule_id}", None)):
        status, answer, _ = await cloud.compute(method, path, version="2.36", json_body=body)
        assert status == 404 and "itemNotFound" in answer, (method, path, answer)
    status, body, _ = await cloud.compute("GET", f"{SG}/{group['id']}", version="2.35")
    assert status == 200 and body["security_group"]["name"] == "web"  # nothing changed at 2.36


async def test_rules_made_through_either_api_show_in_both(cloud):
    web, clients = await _group(cloud, "web"), await _group(cloud, "clients")
    ssh = (await _rule(cloud, parent_group_id=web["id"], ip_protocol="tcp", from_port=22, to_port=22,
                       cidr="10.2.3.124/24"))["security_group_rule"]
    assert ssh == {"id": ssh["id"], "parent_group_id": web["id"], "ip_protocol": "tcp", "from_port": 22,
                   "to_port": 22, "ip_range": {"cidr": "10.2.3.124/24"}, "group": {}}
    ping = (await _rule(cloud, parent_group_id=web["id"], ip_protocol="icmp", from_port=-1, to_port=-1))
    from_group = (await _rule(cloud, parent_group_id=web["id"], ip_protocol="udp", group_id=clients["id"]))
    assert from_group["security_group_rule"]["group"] == {"name": "clients", "tenant_id": web["tenant_id"]}
    assert (from_group["security_group_rule"]["from_port"], from_group["security_group_rule"]["to_port"]) == (1, 65535)

    # Neutron shows them as ingress rules with its own fields.
    status, body, _ = await cloud.request("GET", f"{NEUTRON_RULES}?security_group_id={web['id']}&direction=ingress")
    by_id = {r["id"]: r for r in body["security_group_rules"]}
    assert (by_id[ssh["id"]]["protocol"], by_id[ssh["id"]]["port_range_min"], by_id[ssh["id"]]["port_range_max"],
            by_id[ssh["id"]]["remote_ip_prefix"], by_id[ssh["id"]]["ethertype"]) == (
        "tcp", 22, 22, "10.2.3.124/24", "IPv4")
    icmp = by_id[ping["security_group_rule"]["id"]]
    assert (icmp["protocol"], icmp["port_range_min"], icmp["port_range_max"], icmp["remote_ip_prefix"]) == (
        "icmp", None, None, "0.0.0.0/0")
    assert by_id[from_group["security_group_rule"]["id"]]["remote_group_id"] == clients["id"]

    # A Neutron rule shows in Nova's view; its egress rules do not.
    status, body, _ = await cloud.request("POST", NEUTRON_RULES, json_body={"security_group_rule": {
        "security_group_id": web["id"], "direction": "ingress", "protocol": "tcp", "port_range_min": 80,
        "port_range_max": 443}})
    assert status == 201, body
    neutron_rule = body["security_group_rule"]["id"]
    status, body, _ = await cloud.compute("GET", f"{SG}/{web['id']}")
    shown = {r["id"]: r for r in body["security_group"]["rules"]}
    assert set(shown) == {ssh["id"], ping["security_group_rule"]["id"], from_group["security_group_rule"]["id"],
                          neutron_rule}
    assert shown[neutron_rule] == {"id": neutron_rule, "parent_group_id": web["id"], "ip_protocol": "tcp",
                                   "from_port": 80, "to_port": 443, "ip_range": {"cidr": "0.0.0.0/0"}, "group": {}}
    assert shown[ping["security_group_rule"]["id"]]["from_port"] == -1

    # A delete through either API is seen by the other.
    status, _, _ = await cloud.compute("DELETE", f"{RULES}/{neutron_rule}")
    assert status == 202
    status, _, _ = await cloud.request("GET", f"{NEUTRON_RULES}/{neutron_rule}")
    assert status == 404
    status, _, _ = await cloud.request("DELETE", f"{NEUTRON_RULES}/{ssh['id']}")
    assert status == 204
    message = await _message(cloud, "DELETE", f"{RULES}/{ssh['id']}", 404)
    assert message == f"Security group rule {ssh['id']} not found."

    # Deleting a group removes the rules naming it, as Neutron does.
    status, _, _ = await cloud.compute("DELETE", f"{SG}/{clients['id']}")
    assert status == 202
    status, body, _ = await cloud.compute("GET", f"{SG}/{web['id']}")
    assert [r["id"] for r in body["security_group"]["rules"]] == [ping["security_group_rule"]["id"]]


@pytest.mark.parametrize("attrs,message", [
    ({"ip_protocol": "tcp", "from_port": 22, "to_port": 21},
     "Invalid port range 22:21. Former value cannot be greater than the later"),
    ({"ip_protocol": "tcp", "from_port": 22, "to_port": 65536},
     "Invalid port range 22:65536. Valid TCP ports should be between 1-65535"),
    ({"ip_protocol": "udp", "from_port": 0, "to_port": 5},
     "Invalid port range 0:5. Valid UDP ports should be between 1-65535"),
    ({"ip_protocol": "icmp", "from_port": 256, "to_port": 0},
     "Invalid port range 256:0. For ICMP, the type:code must be valid"),
    ({"ip_protocol": "tcp", "from_port": "a", "to_port": 22},
     "Invalid input received: To and From ports must be integers"),
    ({"ip_protocol": "icmp", "from_port": "a", "to_port": 0},
     "Invalid input received: Type and Code must be integers for ICMP protocol type"),
    ({"ip_protocol": "gre999", "from_port": 22, "to_port": 22}, "Invalid IP protocol gre999."),
    ({"ip_protocol": "tcp"}, "Not enough parameters to build a valid rule."),
    ({"ip_protocol": "tcp", "from_port": 22, "to_port": 22, "cidr": "10.0.0.300/24"},
     "10.0.0.300/24 is not a valid IP network."),
    ({"ip_protocol": "tcp", "from_port": 22, "to_port": 22, "cidr": "10.0.0.0"}, "10.0.0.0 is not a valid IP network."),
    ({"ip_protocol": "tcp", "from_port": 22, "to_port": 22, "cidr": "10.0.0.0/0"},
     "Bad prefix for network in cidr 10.0.0.0/0"),
    ({"ip_protocol": "icmp", "from_port": -1, "to_port": 3},
     "Invalid input for operation: ICMP code (port-range-max) 3 is provided but ICMP type (port-range-min) is missing."),
])
async def test_bad_rules_are_400_with_novas_messages(cloud, attrs, message):
    group = await _group(cloud)
    body = await _rule(cloud, 400, parent_group_id=group["id"], **attrs)
    assert body == {"badRequest": {"code": 400, "message": message}}
    status, shown, _ = await cloud.compute("GET", f"{SG}/{group['id']}")
    assert shown["security_group"]["rules"] == []  # nothing half-written


async def test_rule_lookups_and_duplicates(cloud):
    group = await _group(cloud)
    missing = str(uuid.uuid4())
    body = await _rule(cloud, 404, parent_group_id=missing, ip_protocol="tcp", from_port=22, to_port=22)
    assert body["itemNotFound"]["message"] == f"Security group {missing} not found."
    body = await _rule(cloud, 404, parent_group_id=group["id"], group_id=missing)
    assert body["itemNotFound"]["message"] == f"Security group {missing} not found."
    body = await _rule(cloud, 400, parent_group_id="not-a-uuid", ip_protocol="tcp", from_port=22, to_port=22)
    assert body["badRequest"]["message"] == ("Invalid input for field/attribute parent_group_id. "
                                             "Value: not-a-uuid. 'not-a-uuid' is not a 'uuid'")
    body = await _rule(cloud, 400, ip_protocol="tcp")
    assert "'parent_group_id' is a required property" in body["badRequest"]["message"]
    await _rule(cloud, parent_group_id=group["id"], ip_protocol="tcp", from_port=22, to_port=22)
    body = await _rule(cloud, 400, parent_group_id=group["id"], ip_protocol="TCP", from_port="22", to_port=22)
    assert body["badRequest"]["message"] == f"This rule already exists in group {group['id']}"
    message = await _message(cloud, "DELETE", f"{RULES}/{missing}", 404)
    assert message == f"Security group rule {missing} not found."
    message = await _message(cloud, "DELETE", f"{RULES}/123", 400)
    assert message == "Security group id should be uuid"


async def test_group_errors(cloud):
    group = await _group(cloud)
    for method in ("GET", "DELETE"):
        assert await _message(cloud, method, f"{SG}/123", 400) == "Security group id should be uuid"
    message = await _message(cloud, "PUT", f"{SG}/{group['id']}", 400,
                             json_body={"security_group": {"name": "x"}})
    assert "'description' is a required property" in message
    message = await _message(cloud, "POST", SG, 400, json_body={"security_group": {"name": "x" * 256,
                                                                                    "description": ""}})
    assert message.startswith("Invalid input for field/attribute name.")
    # Neutron's 409s as Nova's proxy passes them: 403 on create, 400 on update and delete.
    message = await _message(cloud, "POST", SG, 403, json_body={"security_group": {"name": "Default",
                                                                                    "description": ""}})
    assert message == "Default security group already exists."
    status, body, _ = await cloud.compute("GET", SG)
    default = next(g for g in body["security_groups"] if g["name"] == "default")
    message = await _message(cloud, "PUT", f"{SG}/{default['id']}", 400,
                             json_body={"security_group": {"name": "other", "description": ""}})
    assert message == "Updating default security group not allowed."
    message = await _message(cloud, "DELETE", f"{SG}/{default['id']}", 400)
    assert message == "Insufficient rights for removing default security group."


async def test_group_in_use_is_400(cloud):
    group = await _group(cloud)
    async with cloud.app[keys.DB].acquire() as conn:
        port = await conn.fetchval(
            """INSERT INTO ports (id, network_id, project_id, mac_address)
               SELECT gen_random_uuid(), id, 'p', 'fa:16:3e:00:00:0a' FROM networks LIMIT 1 RETURNING id""")
        await conn.execute("INSERT INTO port_security_groups VALUES ($1, $2::uuid)", port, group["id"])
    message = await _message(cloud, "DELETE", f"{SG}/{group['id']}", 400)
    assert message == f"Security Group {group['id']} in use."
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("DELETE FROM ports WHERE id = $1", port)
    status, _, _ = await cloud.compute("DELETE", f"{SG}/{group['id']}")
    assert status == 202


async def test_neutrons_quota_is_novas_403(cloud):
    await cloud.compute("GET", SG)  # the default group exists: 1 of 2
    async with cloud.app[keys.DB].acquire() as conn:
        project_id = await conn.fetchval("SELECT id FROM projects WHERE name = 'demo'")
        await conn.execute(
            "INSERT INTO network_quotas VALUES ($1, 'security_group', 2), ($1, 'security_group_rule', 7)",
            project_id)
    group = await _group(cloud)  # 2 of 2; rules: 4 default + 2 egress = 6 of 7
    message = await _message(cloud, "POST", SG, 403, json_body={"security_group": {"name": "x", "description": ""}})
    assert message == "Quota exceeded, too many security groups."
    await _rule(cloud, parent_group_id=group["id"], ip_protocol="tcp", from_port=22, to_port=22)
    body = await _rule(cloud, 403, parent_group_id=group["id"], ip_protocol="udp", from_port=53, to_port=53)
    assert body == {"forbidden": {"code": 403, "message": "Quota exceeded, too many security group rules."}}
    status, body, _ = await cloud.compute("GET", SG)
    assert len(body["security_groups"]) == 2


async def test_another_projects_group_is_404_and_all_tenants_is_for_admins(cloud):
    theirs = await _group(cloud, "admins", user="admin")
    mine = await _group(cloud, "mine")
    not_found = f"Security group {theirs['id']} not found."
    assert await _message(cloud, "GET", f"{SG}/{theirs['id']}", 404) == not_found
    assert await _message(cloud, "PUT", f"{SG}/{theirs['id']}", 404,
                          json_body={"security_group": {"name": "x", "description": ""}}) == not_found
    assert await _message(cloud, "DELETE", f"{SG}/{theirs['id']}", 404) == not_found
    body = await _rule(cloud, 404, parent_group_id=theirs["id"], ip_protocol="tcp", from_port=1, to_port=2)
    assert body["itemNotFound"]["message"] == not_found
    body = await _rule(cloud, 404, parent_group_id=mine["id"], group_id=theirs["id"])
    assert body["itemNotFound"]["message"] == not_found
    their_rule = (await _rule(cloud, user="admin", parent_group_id=theirs["id"], ip_protocol="tcp", from_port=1,
                              to_port=2))["security_group_rule"]["id"]
    assert await _message(cloud, "DELETE", f"{RULES}/{their_rule}", 404) == \
        f"Security group rule {their_rule} not found."

    status, body, _ = await cloud.compute("GET", f"{SG}?all_tenants=1")
    assert theirs["id"] not in {g["id"] for g in body["security_groups"]}
    status, body, _ = await cloud.compute("GET", SG, user="admin")
    assert mine["id"] not in {g["id"] for g in body["security_groups"]}
    status, body, _ = await cloud.compute("GET", f"{SG}?all_tenants=1", user="admin")
    assert {theirs["id"], mine["id"]} <= {g["id"] for g in body["security_groups"]}
    status, body, _ = await cloud.compute("GET", f"{SG}?all_tenants=1&limit=1&offset=1", user="admin")
    assert len(body["security_groups"]) == 1
    # The admin may read and change another project's group, as through Neutron.
    status, body, _ = await cloud.compute("GET", f"{SG}/{mine['id']}", user="admin")
    assert status == 200 and body["security_group"]["tenant_id"] == mine["tenant_id"]


async def test_a_reader_may_list_but_not_change(cloud):
    group = await _group(cloud)
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute(
            """UPDATE role_assignments SET role_id = (SELECT id FROM roles WHERE name = 'reader')
               WHERE user_id = (SELECT id FROM users WHERE name = 'demo')""")
    cloud.tokens.clear()  # a new token carries the new role
    status, body, _ = await cloud.compute("GET", f"{SG}/{group['id']}")
    assert status == 200
    status, body, _ = await cloud.compute("POST", SG, json_body={"security_group": {"name": "x", "description": ""}})
    assert status == 403 and "forbidden" in body
    body = await _rule(cloud, 403, parent_group_id=group["id"], ip_protocol="tcp", from_port=1, to_port=2)
    assert "os_compute_api:os-security-groups:rule:create" in body["forbidden"]["message"]


@needs_libvirtd
async def test_a_proxy_rule_reaches_the_ports_filter_on_the_host(pg_dsn, tmp_path):
    """A rule made and deleted through the proxy changes the member port's nwfilter on qemu:///system."""
    prefix = f"nlpx{secrets.token_hex(3)}-"
    # Its own network range, so its bridge does not collide with other clouds' on this libvirtd.
    extra = (f'[networking]\nlibvirt_prefix = "{prefix}"\ndefault_network = "lab"\n\n'
             f'[[networks]]\nname = "lab"\ncidr = "10.{secrets.randbelow(100) + 150}.{secrets.randbelow(250)}.0/24"\n')
    try:
        cloud = await start_cloud(pg_dsn, tmp_path, extra=extra,
                                  hosts='[[hosts]]\nname = "local"\nuri = "qemu:///system"\n')
    except Exception:
        _remove_libvirt_objects(prefix)
        raise
    try:
        group = await _group(cloud)
        async with cloud.app[keys.DB].acquire() as conn:
            port = await conn.fetchval(
                """INSERT INTO ports (id, network_id, project_id, mac_address, fixed_ip, host, device_id)
                   SELECT gen_random_uuid(), id, 'p', 'fa:16:3e:00:00:0b', '10.9.0.5', 'local', 'd'
                   FROM networks LIMIT 1 RETURNING id::text""")
            await conn.execute("INSERT INTO port_security_groups VALUES ($1::uuid, $2::uuid)", port, group["id"])
        name = filter_name(prefix, port)

        def web_rules() -> list[dict]:
            return [attrs for _, direction, proto, attrs in _rules(_dumpxml(name))
                    if direction == "in" and proto == "tcp"]

        rule = (await _rule(cloud, parent_group_id=group["id"], ip_protocol="tcp", from_port=8080, to_port=8080,
                            cidr="10.9.0.0/24"))["security_group_rule"]
        assert web_rules() == [{"srcipaddr": "10.9.0.0", "srcipmask": "24", "dstportstart": "8080",
                                "dstportend": "8080"}]
        status, _, _ = await cloud.compute("DELETE", f"{RULES}/{rule['id']}")
        assert status == 202
        assert web_rules() == []
    finally:
        await stop_cloud(cloud)
        _remove_libvirt_objects(prefix)


def _remove_libvirt_objects(prefix: str) -> None:
    """Whatever the test's cloud left on qemu:///system under its prefix: filters, networks, pools."""
    conn = libvirt.open("qemu:///system")
    try:
        for f in conn.listAllNWFilters():
            if f.name().startswith(prefix):
                f.undefine()
        purge_pools(conn, prefix)
        for obj in conn.listAllNetworks():
            if obj.name().startswith(prefix):
                if obj.isActive():
                    obj.destroy()
                obj.undefine()
    finally:
        conn.close()
    prune_redirects(prefix, set())
