"""Security groups and rules over HTTP, as Neutron answers them: CRUD, the `default` group's
rules, validation errors, duplicates, quotas and who may see or change what."""

from __future__ import annotations

import uuid

import pytest

from novalite.api import keys

SG = "/networking/v2.0/security-groups"
RULES = "/networking/v2.0/security-group-rules"


async def _group(cloud, name: str = "web", user: str = "demo") -> dict:
    status, body, _ = await cloud.request("POST", SG, user=user,
                                          json_body={"security_group": {"name": name, "description": "d"}})
    assert status == 201, body
    return body["security_group"]


async def _rule(cloud, expect: int = 201, user: str = "demo", **attrs) -> dict:
    status, body, _ = await cloud.request("POST", RULES, user=user, json_body={"security_group_rule": attrs})
    assert status == expect, body
    return body


async def test_default_group_has_neutrons_default_rules(cloud):
    status, body, _ = await cloud.request("GET", f"{SG}?name=default")
    assert status == 200
    [group] = body["security_groups"]
    rules = {(r["direction"], r["ethertype"], r["remote_group_id"]) for r in group["security_group_rules"]}
    assert rules == {("egress", "IPv4", None), ("egress", "IPv6", None),
                     ("ingress", "IPv4", group["id"]), ("ingress", "IPv6", group["id"])}
    # Asking again makes nothing new.
    status, again, _ = await cloud.request("GET", SG)
    assert [g["id"] for g in again["security_groups"]] == [group["id"]]
    status, listed, _ = await cloud.request("GET", f"{RULES}?security_group_id={group['id']}&direction=ingress")
    assert {r["ethertype"] for r in listed["security_group_rules"]} == {"IPv4", "IPv6"}


async def test_group_crud(cloud):
    group = await _group(cloud)
    assert {(r["direction"], r["ethertype"]) for r in group["security_group_rules"]} == {
        ("egress", "IPv4"), ("egress", "IPv6")}
    assert group["description"] == "d" and group["stateful"] is True
    status, body, _ = await cloud.request("PUT", f"{SG}/{group['id']}",
                                          json_body={"security_group": {"name": "web2", "description": "x"}})
    assert status == 200 and body["security_group"]["name"] == "web2"
    assert body["security_group"]["revision_number"] == group["revision_number"] + 1
    status, body, _ = await cloud.request("GET", f"{SG}/{group['id']}?fields=name")
    assert body == {"security_group": {"name": "web2"}}
    status, body, _ = await cloud.request("POST", SG, json_body={"security_group": {"name": "s", "stateful": False}})
    assert status == 400 and "stateful" in body["NeutronError"]["message"]
    status, body, _ = await cloud.request("PUT", f"{SG}/{group['id']}", json_body={"security_group": {"foo": 1}})
    assert status == 400 and "Unrecognized attribute" in body["NeutronError"]["message"]
    status, _, _ = await cloud.request("DELETE", f"{SG}/{group['id']}")
    assert status == 204
    status, body, _ = await cloud.request("GET", f"{SG}/{group['id']}")
    assert status == 404 and body["NeutronError"]["type"] == "SecurityGroupNotFound"


async def test_default_group_keeps_its_name_and_only_admin_deletes_it(cloud):
    status, body, _ = await cloud.request("GET", f"{SG}?name=default")
    default = body["security_groups"][0]
    status, body, _ = await cloud.request("PUT", f"{SG}/{default['id']}",
                                          json_body={"security_group": {"name": "other"}})
    assert status == 409 and body["NeutronError"]["type"] == "SecurityGroupCannotUpdateDefault"
    status, body, _ = await cloud.request("PUT", f"{SG}/{default['id']}",
                                          json_body={"security_group": {"description": "mine"}})
    assert status == 200 and body["security_group"]["description"] == "mine"
    status, body, _ = await cloud.request("POST", SG, json_body={"security_group": {"name": "default"}})
    assert status == 409 and body["NeutronError"]["type"] == "SecurityGroupDefaultAlreadyExists"
    status, body, _ = await cloud.request("DELETE", f"{SG}/{default['id']}")
    assert status == 409 and body["NeutronError"]["type"] == "SecurityGroupCannotRemoveDefault"
    status, _, _ = await cloud.request("DELETE", f"{SG}/{default['id']}", user="admin")
    assert status == 204


async def test_rule_crud_and_normalisation(cloud):
    group = await _group(cloud)
    body = await _rule(cloud, security_group_id=group["id"], direction="ingress", protocol="TCP",
                       port_range_min=8080, port_range_max=8081, remote_ip_prefix="10.1.2.3/24",
                       description="web")
    rule = body["security_group_rule"]
    assert rule["protocol"] == "tcp" and rule["ethertype"] == "IPv4"
    assert (rule["port_range_min"], rule["port_range_max"]) == (8080, 8081)
    assert rule["remote_ip_prefix"] == "10.1.2.3/24" and rule["normalized_cidr"] == "10.1.2.0/24"
    status, shown, _ = await cloud.request("GET", f"{RULES}/{rule['id']}")
    assert status == 200 and shown["security_group_rule"] == rule
    status, g, _ = await cloud.request("GET", f"{SG}/{group['id']}")
    assert rule["id"] in {r["id"] for r in g["security_group"]["security_group_rules"]}
    # The same rule again, written differently: 409 naming the existing one.
    body = await _rule(cloud, 409, security_group_id=group["id"], direction="ingress", protocol="6",
                       port_range_min=8080, port_range_max=8081, remote_ip_prefix="10.1.2.3/24")
    assert body["NeutronError"]["type"] == "SecurityGroupRuleExists"
    assert rule["id"] in body["NeutronError"]["message"]
    # A single address gets its mask; the whole tcp range is stored as no range.
    body = await _rule(cloud, security_group_id=group["id"], direction="egress", protocol="tcp",
                       port_range_min=1, port_range_max=65535, remote_ip_prefix="192.0.2.7")
    assert body["security_group_rule"]["remote_ip_prefix"] == "192.0.2.7/32"
    assert body["security_group_rule"]["port_range_min"] is None
    body = await _rule(cloud, security_group_id=group["id"], direction="ingress", protocol="icmp",
                       port_range_min=8, port_range_max=0, remote_group_id=group["id"])
    assert body["security_group_rule"]["remote_group_id"] == group["id"]
    status, _, _ = await cloud.request("DELETE", f"{RULES}/{rule['id']}")
    assert status == 204
    status, body, _ = await cloud.request("DELETE", f"{RULES}/{rule['id']}")
    assert status == 404 and body["NeutronError"]["type"] == "SecurityGroupRuleNotFound"


@pytest.mark.parametrize(("attrs", "kind"), [
    ({"direction": "sideways"}, "HTTPBadRequest"),
    ({"ethertype": "IPv5"}, "SecurityGroupRuleInvalidEtherType"),
    ({"protocol": "bogus"}, "SecurityGroupRuleInvalidProtocol"),
    ({"protocol": "gre"}, "SecurityGroupRuleInvalidProtocol"),
    ({"protocol": 300}, "SecurityGroupRuleInvalidProtocol"),
    ({"protocol": "ipv6-icmp"}, "SecurityGroupEthertypeConflictWithProtocol"),
    ({"port_range_min": 22, "port_range_max": 22}, "SecurityGroupProtocolRequiredWithPorts"),
    ({"protocol": "tcp", "port_range_min": 23, "port_range_max": 22}, "SecurityGroupInvalidPortRange"),
    ({"protocol": "tcp", "port_range_min": 0, "port_range_max": 22}, "SecurityGroupInvalidPortValue"),
    ({"protocol": "udp", "port_range_min": 1, "port_range_max": 70000}, "SecurityGroupInvalidPortValue"),
    ({"protocol": "icmp", "port_range_min": 256}, "SecurityGroupInvalidIcmpValue"),
    ({"protocol": "icmp", "port_range_max": 3}, "SecurityGroupMissingIcmpType"),
    ({"protocol": "esp", "port_range_min": 1, "port_range_max": 2}, "SecurityGroupInvalidProtocolForPort"),
    ({"remote_ip_prefix": "not-an-ip"}, "InvalidCIDR"),
    ({"remote_ip_prefix": "2001:db8::/64"}, "SecurityGroupRuleParameterConflict"),
    ({"remote_ip_prefix": "10.0.0.0/8", "remote_group_id": "SELF"}, "SecurityGroupMultipleRemoteEntites"),
    ({"bogus": 1}, "HTTPBadRequest"),
])
async def test_bad_rules_are_refused_as_neutron_does(cloud, attrs, kind):
    group = await _group(cloud)
    attrs = {k: group["id"] if v == "SELF" else v for k, v in attrs.items()}
    body = await _rule(cloud, 400, **{"security_group_id": group["id"], "direction": "ingress", **attrs})
    assert body["NeutronError"]["type"] == kind, body
    status, g, _ = await cloud.request("GET", f"{SG}/{group['id']}")
    assert len(g["security_group"]["security_group_rules"]) == 2  # nothing half-written


async def test_missing_groups_are_404(cloud):
    group = await _group(cloud)
    missing = str(uuid.uuid4())
    body = await _rule(cloud, 404, security_group_id=missing, direction="ingress")
    assert body["NeutronError"]["type"] == "SecurityGroupNotFound"
    body = await _rule(cloud, 404, security_group_id=group["id"], direction="ingress", remote_group_id=missing)
    assert body["NeutronError"]["type"] == "SecurityGroupNotFound"
    status, _, _ = await cloud.request("GET", f"{SG}/not-a-uuid")
    assert status == 404


async def test_group_in_use_by_a_port_cannot_be_deleted(cloud):
    group = await _group(cloud)
    async with cloud.app[keys.DB].acquire() as conn:
        port = await conn.fetchrow(
            """INSERT INTO ports (id, network_id, project_id, mac_address)
               SELECT gen_random_uuid(), id, 'p', 'fa:16:3e:00:00:09' FROM networks LIMIT 1 RETURNING id""")
        await conn.execute("INSERT INTO port_security_groups VALUES ($1, $2::uuid)", port["id"], group["id"])
    status, body, _ = await cloud.request("DELETE", f"{SG}/{group['id']}")
    assert status == 409 and body["NeutronError"]["type"] == "SecurityGroupInUse"
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("DELETE FROM ports WHERE id = $1", port["id"])
    status, _, _ = await cloud.request("DELETE", f"{SG}/{group['id']}")
    assert status == 204


async def test_quotas_for_groups_and_rules(cloud):
    await cloud.request("GET", SG)  # the default group exists: 1 of 2
    async with cloud.app[keys.DB].acquire() as conn:
        project_id = await conn.fetchval("SELECT id FROM projects WHERE name = 'demo'")
        await conn.execute(
            """INSERT INTO network_quotas VALUES ($1, 'security_group', 2), ($1, 'security_group_rule', 7)""",
            project_id)
    group = await _group(cloud)  # 2 of 2; rules: 4 default + 2 egress = 6 of 7
    status, body, _ = await cloud.request("POST", SG, json_body={"security_group": {"name": "third"}})
    assert status == 409 and body["NeutronError"]["type"] == "OverQuota"
    assert "security_group" in body["NeutronError"]["message"]
    await _rule(cloud, security_group_id=group["id"], direction="ingress", protocol="tcp",
                port_range_min=22, port_range_max=22)
    body = await _rule(cloud, 409, security_group_id=group["id"], direction="ingress", protocol="udp")
    assert body["NeutronError"]["type"] == "OverQuota"
    status, listed, _ = await cloud.request("GET", SG)
    assert len(listed["security_groups"]) == 2


async def test_a_member_cannot_see_or_change_another_projects_group(cloud):
    theirs = await _group(cloud, "admins", user="admin")
    status, listed, _ = await cloud.request("GET", SG)
    assert theirs["id"] not in {g["id"] for g in listed["security_groups"]}
    status, rules, _ = await cloud.request("GET", RULES)
    assert theirs["id"] not in {r["security_group_id"] for r in rules["security_group_rules"]}
    status, body, _ = await cloud.request("GET", f"{SG}/{theirs['id']}")
    assert status == 404
    status, body, _ = await cloud.request("PUT", f"{SG}/{theirs['id']}", json_body={"security_group": {"name": "x"}})
    assert status == 404
    status, body, _ = await cloud.request("DELETE", f"{SG}/{theirs['id']}")
    assert status == 404
    body = await _rule(cloud, 404, security_group_id=theirs["id"], direction="ingress")
    assert body["NeutronError"]["type"] == "SecurityGroupNotFound"
    their_rule = theirs["security_group_rules"][0]["id"]
    status, _, _ = await cloud.request("GET", f"{RULES}/{their_rule}")
    assert status == 404
    status, _, _ = await cloud.request("DELETE", f"{RULES}/{their_rule}")
    assert status == 404
    # The admin sees both projects' groups.
    status, listed, _ = await cloud.request("GET", SG, user="admin")
    assert theirs["id"] in {g["id"] for g in listed["security_groups"]}


async def test_a_reader_cannot_change_groups(cloud):
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute(
            """UPDATE role_assignments SET role_id = (SELECT id FROM roles WHERE name = 'reader')
               WHERE user_id = (SELECT id FROM users WHERE name = 'demo')""")
    status, body, _ = await cloud.request("POST", SG, json_body={"security_group": {"name": "x"}})
    assert status == 403 and body["NeutronError"]["type"] == "PolicyNotAuthorized"


async def test_servers_ports_join_the_servers_groups(cloud):
    from conftest import add_image, wait_for_status
    image = await add_image(cloud)
    group = await _group(cloud)
    status, body, _ = await cloud.compute("POST", "/servers", json_body={"server": {
        "name": "s", "imageRef": image, "flavorRef": "1", "networks": "auto",
        "security_groups": [{"name": "web"}, {"name": "default"}]}}, version="2.latest")
    assert status == 202, body
    server_id = body["server"]["id"]
    await wait_for_status(cloud, server_id, "ACTIVE")
    status, body, _ = await cloud.request("GET", f"/networking/v2.0/ports?device_id={server_id}")
    [port] = body["ports"]
    status, listed, _ = await cloud.request("GET", f"{SG}?name=default")
    assert sorted(port["security_groups"]) == sorted([group["id"], listed["security_groups"][0]["id"]])
    status, body, _ = await cloud.request("DELETE", f"{SG}/{group['id']}")
    assert status == 409
