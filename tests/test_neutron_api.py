"""Neutron's write side over HTTP: networks, subnets, ports, their DHCP port, quotas and policy."""

from __future__ import annotations

import asyncio

import pytest
from conftest import add_image, wait_for_status

from novalite.api import keys

V2 = "/networking/v2.0"


async def _post(cloud, resource: str, body: dict, user: str = "demo", expect: int = 201) -> dict:
    status, doc, _ = await cloud.request("POST", f"{V2}/{resource}s", user=user, json_body={resource: body})
    assert status == expect, doc
    return doc[resource] if status == 201 else doc


async def _network(cloud, cidr: str | None = "10.60.0.0/24", user: str = "demo", **extra) -> tuple[dict, dict | None]:
    net = await _post(cloud, "network", {"name": "net", **extra}, user=user)
    subnet = None
    if cidr:
        subnet = await _post(cloud, "subnet", {"network_id": net["id"], "cidr": cidr, "ip_version": 4},
                             user=user)
    return net, subnet


async def _ports(cloud, network_id: str, user: str = "admin") -> list[dict]:
    status, body, _ = await cloud.request("GET", f"{V2}/ports?network_id={network_id}", user=user)
    assert status == 200, body
    return body["ports"]


def _error(doc: dict) -> tuple[str, str]:
    return doc["NeutronError"]["type"], doc["NeutronError"]["message"]


async def test_member_builds_network_subnet_and_ports(cloud):
    net = await _post(cloud, "network", {"name": "lab", "description": "mine", "mtu": 1400})
    assert (net["shared"], net["router:external"], net["port_security_enabled"], net["admin_state_up"]) == (
        False, False, True, True)
    assert (net["description"], net["mtu"], net["subnets"]) == ("mine", 1400, [])
    row = await cloud.app[keys.DB].fetchrow(
        "SELECT libvirt_name, config_name FROM networks WHERE id = $1::uuid", net["id"])
    prefix = cloud.config.networking.libvirt_prefix
    assert dict(row) == {"libvirt_name": prefix + "n" + net["id"].replace("-", "")[:12], "config_name": None}
    subnet = await _post(cloud, "subnet", {"network_id": net["id"], "cidr": "10.60.0.0/24", "ip_version": 4,
                                           "dns_nameservers": ["10.60.0.1"],
                                           "host_routes": [{"destination": "10.9.0.0/16", "nexthop": "10.60.0.1"}]})
    assert subnet["gateway_ip"] == "10.60.0.1"
    assert subnet["allocation_pools"] == [{"start": "10.60.0.2", "end": "10.60.0.254"}]
    assert subnet["host_routes"] == [{"destination": "10.9.0.0/16", "nexthop": "10.60.0.1"}]
    # Neutron's DHCP agent port took the first pool address.
    [dhcp] = await _ports(cloud, net["id"])
    assert (dhcp["device_owner"], dhcp["device_id"]) == ("network:dhcp", "dhcp-" + net["id"])
    assert dhcp["fixed_ips"] == [{"subnet_id": subnet["id"], "ip_address": "10.60.0.2"}]

    port = await _post(cloud, "port", {"network_id": net["id"], "name": "p1",
                                       "fixed_ips": [{"subnet_id": subnet["id"], "ip_address": "10.60.0.50"}]})
    assert port["fixed_ips"] == [{"subnet_id": subnet["id"], "ip_address": "10.60.0.50"}]
    status, groups, _ = await cloud.request("GET", f"{V2}/security-groups?name=default")
    assert port["security_groups"] == [groups["security_groups"][0]["id"]]
    assert (port["port_security_enabled"], port["status"], port["device_owner"]) == (True, "DOWN", "")
    auto = await _post(cloud, "port", {"network_id": net["id"]})
    assert auto["fixed_ips"][0]["ip_address"] == "10.60.0.3"  # the lowest free address
    bare = await _post(cloud, "port", {"network_id": net["id"], "fixed_ips": []})
    assert (bare["fixed_ips"], bare["security_groups"]) == ([], [])
    status, shown, _ = await cloud.request("GET", f"{V2}/ports/{port['id']}")
    assert shown["port"]["fixed_ips"] == port["fixed_ips"]

    # Updates are stored and shown as they are.
    status, body, _ = await cloud.request("PUT", f"{V2}/networks/{net['id']}",
                                          json_body={"network": {"name": "lab2", "admin_state_up": False}})
    assert status == 200 and (body["network"]["name"], body["network"]["admin_state_up"]) == ("lab2", False)
    status, body, _ = await cloud.request("PUT", f"{V2}/ports/{port['id']}", json_body={"port": {
        "security_groups": [], "port_security_enabled": False, "fixed_ips": [{"ip_address": "10.60.0.60"}],
        "description": "quiet"}})
    assert status == 200, body
    assert (body["port"]["security_groups"], body["port"]["port_security_enabled"]) == ([], False)
    assert body["port"]["fixed_ips"][0]["ip_address"] == "10.60.0.60" and body["port"]["description"] == "quiet"


@pytest.mark.parametrize(("body", "status", "kind", "text"), [
    ({"network": {"nmae": "x"}}, 400, "HTTPBadRequest", "Unrecognized attribute(s) 'nmae'"),
    ({"name": "x"}, 400, "HTTPBadRequest", "Unable to find 'network' in request body"),
    ({"network": {"admin_state_up": "maybe"}}, 400, "HTTPBadRequest", "Invalid input for admin_state_up"),
    ({"network": {"mtu": 9001}}, 400, "HTTPBadRequest", "Invalid input for mtu"),
    ({"network": {"shared": True}}, 403, "PolicyNotAuthorized", "(rule:create_network:shared) is disallowed"),
    ({"network": {"router:external": True}}, 403, "PolicyNotAuthorized", "create_network:router:external"),
])
async def test_network_bodies_and_policy_are_checked_as_neutron(cloud, body, status, kind, text):
    code, doc, _ = await cloud.request("POST", f"{V2}/networks", json_body=body)
    assert code == status, doc
    assert _error(doc)[0] == kind and text in _error(doc)[1]


async def test_admin_makes_shared_and_external_networks_members_see(cloud):
    shared = await _post(cloud, "network", {"name": "pub", "shared": True}, user="admin")
    external = await _post(cloud, "network", {"name": "ext", "router:external": True}, user="admin")
    assert (shared["shared"], external["router:external"], external["shared"]) == (True, True, False)
    await _post(cloud, "subnet", {"network_id": external["id"], "cidr": "10.80.0.0/24", "ip_version": 4},
                user="admin")
    status, body, _ = await cloud.request("GET", f"{V2}/networks/{external['id']}")
    assert status == 200 and body["network"]["router:external"] is True
    status, body, _ = await cloud.request("GET", f"{V2}/subnets?network_id={external['id']}")
    assert [s["cidr"] for s in body["subnets"]] == ["10.80.0.0/24"]
    # Seeing is not changing: 403 for the member.
    status, body, _ = await cloud.request("DELETE", f"{V2}/networks/{shared['id']}")
    assert status == 403 and _error(body) == ("PolicyNotAuthorized",
                                              "(rule:delete_network) is disallowed by policy")


@pytest.mark.parametrize(("extra", "status", "kind", "text"), [
    ({"ip_version": 6, "cidr": "fd00::/64"}, 400, "InvalidInput", "IPv4 subnets only"),
    ({"cidr": "10.61.0.1/24"}, 400, "HTTPBadRequest", "'10.61.0.0/24' is recommended"),
    ({"allocation_pools": [{"start": "10.61.0.20", "end": "10.61.0.10"}]}, 400, "InvalidAllocationPool",
     "10.61.0.20-10.61.0.10"),
    ({"allocation_pools": [{"start": "10.61.0.200", "end": "10.61.1.10"}]}, 400, "OutOfBoundsAllocationPool",
     "spans beyond the subnet cidr 10.61.0.0/24"),
    ({"allocation_pools": [{"start": "10.61.0.1", "end": "10.61.0.10"}]}, 409,
     "GatewayConflictWithAllocationPools", "Gateway ip 10.61.0.1 conflicts"),
    ({"allocation_pools": [{"start": "10.61.0.2", "end": "10.61.0.10"}, {"start": "10.61.0.5", "end": "10.61.0.9"}]},
     409, "OverlappingAllocationPools", "Found overlapping allocation pools"),
    ({"gateway_ip": "10.99.0.1"}, 400, "InvalidInput", "Gateway is not valid"),
])
async def test_subnet_errors(cloud, extra, status, kind, text):
    net, _ = await _network(cloud, cidr=None)
    body = {"network_id": net["id"], "cidr": "10.61.0.0/24", "ip_version": 4, **extra}
    doc = await _post(cloud, "subnet", body, expect=status)
    assert _error(doc)[0] == kind and text in _error(doc)[1], doc


async def test_subnets_pools_overlap_and_dhcp_port_follow_the_dhcp_subnet(cloud):
    net, first = await _network(cloud, cidr="10.62.0.0/24")
    doc = await _post(cloud, "subnet", {"network_id": net["id"], "cidr": "10.62.0.128/25", "ip_version": 4},
                      expect=400)
    assert _error(doc)[0] == "InvalidInput" and "overlaps with another subnet" in _error(doc)[1]
    second = await _post(cloud, "subnet", {
        "network_id": net["id"], "cidr": "10.63.0.0/24", "ip_version": 4, "gateway_ip": "10.63.0.100",
        "enable_dhcp": False})
    assert second["allocation_pools"] == [{"start": "10.63.0.1", "end": "10.63.0.99"},
                                          {"start": "10.63.0.101", "end": "10.63.0.254"}]
    no_gw = await _post(cloud, "subnet", {"network_id": net["id"], "cidr": "10.64.0.0/29", "ip_version": 4,
                                          "gateway_ip": None, "enable_dhcp": False})
    assert no_gw["gateway_ip"] is None and no_gw["allocation_pools"] == [{"start": "10.64.0.1", "end": "10.64.0.6"}]
    # DHCP off on the first subnet: its DHCP port goes; DHCP on for the second: a port there.
    status, body, _ = await cloud.request("PUT", f"{V2}/subnets/{first['id']}",
                                          json_body={"subnet": {"enable_dhcp": False}})
    assert status == 200 and body["subnet"]["enable_dhcp"] is False
    assert await _ports(cloud, net["id"]) == []
    status, body, _ = await cloud.request("PUT", f"{V2}/subnets/{second['id']}",
                                          json_body={"subnet": {"enable_dhcp": True}})
    [dhcp] = await _ports(cloud, net["id"])
    assert dhcp["fixed_ips"] == [{"subnet_id": second["id"], "ip_address": "10.63.0.1"}]
    status, body, _ = await cloud.request("PUT", f"{V2}/subnets/{second['id']}",
                                          json_body={"subnet": {"cidr": "10.65.0.0/24"}})
    assert status == 400 and "Cannot update read-only attribute cidr" in _error(body)[1]
    # A subnet holding a port's address cannot go; the DHCP port does not count.
    port = await _post(cloud, "port", {"network_id": net["id"], "fixed_ips": [{"subnet_id": second["id"]}]})
    status, body, _ = await cloud.request("DELETE", f"{V2}/subnets/{second['id']}")
    assert status == 409 and _error(body)[0] == "SubnetInUse"
    status, _, _ = await cloud.request("DELETE", f"{V2}/ports/{port['id']}")
    assert status == 204
    status, _, _ = await cloud.request("DELETE", f"{V2}/subnets/{second['id']}")
    assert status == 204
    assert await _ports(cloud, net["id"]) == []


async def test_port_errors(cloud):
    net, subnet = await _network(cloud, cidr="10.66.0.0/29")  # pool .2-.6; DHCP takes .2
    taken = await _post(cloud, "port", {"network_id": net["id"], "fixed_ips": [{"ip_address": "10.66.0.5"}]})
    cases = [
        ({"fixed_ips": [{"ip_address": "10.66.0.3"}, {"ip_address": "10.66.0.4"}]}, 400, "InvalidInput",
         "Exceeded maximum amount of fixed ips per port."),
        ({"fixed_ips": [{"ip_address": "10.66.0.5"}]}, 409, "IpAddressAlreadyAllocated",
         f"IP address 10.66.0.5 already allocated in subnet {subnet['id']}"),
        ({"fixed_ips": [{"subnet_id": subnet["id"], "ip_address": "10.70.0.5"}]}, 400, "InvalidIpForSubnet",
         "IP address 10.70.0.5 is not a valid IP for the specified subnet."),
        ({"fixed_ips": [{"ip_address": "10.70.0.5"}]}, 400, "InvalidIpForNetwork", "any of the subnets"),
        ({"mac_address": taken["mac_address"]}, 409, "MacAddressInUse", taken["mac_address"]),
        ({"mac_address": "nonsense"}, 400, "HTTPBadRequest", "not a valid MAC address"),
        ({"port_security_enabled": False, "security_groups": [taken["security_groups"][0]]}, 400,
         "PortSecurityAndIPRequiredForSecurityGroups", "Port security must be enabled"),
        ({"security_groups": ["0b5c5d8e-7a55-4a9d-9d3f-5d2e4a1b2c3d"]}, 404, "SecurityGroupNotFound",
         "Security group 0b5c5d8e-7a55-4a9d-9d3f-5d2e4a1b2c3d does not exist"),
        ({"binding:host_id": "sim1"}, 403, "PolicyNotAuthorized", "create_port:binding:host_id"),
    ]
    for extra, status, kind, text in cases:
        doc = await _post(cloud, "port", {"network_id": net["id"], **extra}, expect=status)
        assert _error(doc)[0] == kind and text in _error(doc)[1], (extra, doc)
    await _post(cloud, "port", {"network_id": net["id"]})  # .3
    await _post(cloud, "port", {"network_id": net["id"]})  # .4
    await _post(cloud, "port", {"network_id": net["id"]})  # .6
    doc = await _post(cloud, "port", {"network_id": net["id"]}, expect=409)
    assert _error(doc) == ("IpAddressGenerationFailure", f"No more IP addresses available on network {net['id']}.")
    # Port security off while groups remain: Neutron's 409; with the groups gone in the same request: fine.
    status, body, _ = await cloud.request("PUT", f"{V2}/ports/{taken['id']}",
                                          json_body={"port": {"port_security_enabled": False}})
    assert status == 409 and _error(body)[0] == "PortSecurityPortHasSecurityGroup"
    # Nothing half-written behind the refusals.
    assert len(await _ports(cloud, net["id"])) == 5


async def test_same_cidr_in_two_projects(cloud):
    mine, my_subnet = await _network(cloud, cidr="10.70.0.0/24")
    theirs, their_subnet = await _network(cloud, cidr="10.70.0.0/24", user="admin")
    a = await _post(cloud, "port", {"network_id": mine["id"], "fixed_ips": [{"ip_address": "10.70.0.9"}]})
    b = await _post(cloud, "port", {"network_id": theirs["id"], "fixed_ips": [{"ip_address": "10.70.0.9"}]},
                    user="admin")
    assert a["fixed_ips"][0]["ip_address"] == b["fixed_ips"][0]["ip_address"]
    # The member does not see the admin project's network: 404, as if it did not exist.
    doc = await _post(cloud, "port", {"network_id": theirs["id"]}, expect=404)
    assert _error(doc)[0] == "NetworkNotFound"
    status, body, _ = await cloud.request("DELETE", f"{V2}/networks/{theirs['id']}")
    assert status == 404 and _error(body)[0] == "NetworkNotFound"


async def test_delete_network_with_port_is_409_then_204_and_dhcp_port_goes(cloud):
    net, _ = await _network(cloud, cidr="10.71.0.0/24")
    port = await _post(cloud, "port", {"network_id": net["id"]})
    status, body, _ = await cloud.request("DELETE", f"{V2}/networks/{net['id']}")
    assert status == 409 and _error(body) == (
        "NetworkInUse", f"Unable to complete operation on network {net['id']}. "
                        "There are one or more ports still in use on the network.")
    status, _, _ = await cloud.request("DELETE", f"{V2}/ports/{port['id']}")
    assert status == 204
    status, _, _ = await cloud.request("DELETE", f"{V2}/networks/{net['id']}")
    assert status == 204
    assert await _ports(cloud, net["id"]) == []
    status, _, _ = await cloud.request("GET", f"{V2}/networks/{net['id']}")
    assert status == 404


async def test_configured_network_cannot_be_deleted_or_readdressed(cloud):
    status, body, _ = await cloud.request("GET", f"{V2}/networks?name=private", user="admin")
    [private] = body["networks"]
    status, body, _ = await cloud.request("DELETE", f"{V2}/networks/{private['id']}", user="admin")
    assert status == 409 and "[[networks]]" in _error(body)[1]
    status, body, _ = await cloud.request("PUT", f"{V2}/subnets/{private['subnets'][0]}", user="admin",
                                          json_body={"subnet": {"gateway_ip": "10.20.0.9"}})
    assert status == 409 and "[[networks]]" in _error(body)[1]
    # A member sees the shared network but may not change it: 403.
    status, body, _ = await cloud.request("PUT", f"{V2}/networks/{private['id']}",
                                          json_body={"network": {"name": "mine"}})
    assert status == 403 and _error(body)[0] == "PolicyNotAuthorized"


async def test_port_quota_limits_api_ports_and_server_creates(cloud):
    status, body, _ = await cloud.request("GET", "/identity/v3/auth/projects")
    project = next(p["id"] for p in body["projects"] if p["name"] == "demo")
    status, body, _ = await cloud.request("PUT", f"{V2}/quotas/{project}",
                                          json_body={"quota": {"port": 2}})
    assert status == 403 and _error(body)[0] == "PolicyNotAuthorized"  # a member may not
    for bad in ({"quota": {"router": 3}}, {"quota": {"port": -2}}, {"quota": {"port": "many"}}):
        status, body, _ = await cloud.request("PUT", f"{V2}/quotas/{project}", user="admin", json_body=bad)
        assert status == 400, (bad, body)
    status, body, _ = await cloud.request("PUT", f"{V2}/quotas/{project}", user="admin",
                                          json_body={"quota": {"port": 2}})
    assert status == 200 and body["quota"] == {"network": 100, "subnet": 100, "port": 2, "security_group": 10,
                                               "security_group_rule": 100}
    status, body, _ = await cloud.request("GET", f"{V2}/quotas", user="admin")
    assert [q["project_id"] for q in body["quotas"]] == [project] and body["quotas"][0]["port"] == 2
    net, _ = await _network(cloud, cidr="10.72.0.0/24")
    await _post(cloud, "port", {"network_id": net["id"]})
    await _post(cloud, "port", {"network_id": net["id"]})
    doc = await _post(cloud, "port", {"network_id": net["id"]}, expect=409)
    assert _error(doc) == ("OverQuota", "Quota exceeded for resources: ['port'].")
    status, body, _ = await cloud.request("GET", f"{V2}/quotas/{project}/details")
    assert body["quota"]["port"] == {"limit": 2, "used": 2, "reserved": 0}
    assert body["quota"]["network"]["used"] == 1 and body["quota"]["subnet"]["used"] == 1

    image = await add_image(cloud)
    status, body, _ = await cloud.compute("POST", "/servers", json_body={"server": {
        "name": "vm", "imageRef": image, "flavorRef": "1", "networks": [{"uuid": net["id"]}]}})
    assert status == 403 and "Maximum number of ports exceeded" in body["forbidden"]["message"]

    status, _, _ = await cloud.request("DELETE", f"{V2}/quotas/{project}", user="admin")
    assert status == 204
    status, body, _ = await cloud.request("GET", f"{V2}/quotas/{project}")
    assert body["quota"]["port"] == 500
    status, body, _ = await cloud.request("GET", f"{V2}/quotas/{project}/default")
    assert set(body["quota"]) == {"network", "subnet", "port", "security_group", "security_group_rule"}


async def test_concurrent_port_creates_admit_exactly_the_quota(cloud):
    status, body, _ = await cloud.request("GET", "/identity/v3/auth/projects")
    project = next(p["id"] for p in body["projects"] if p["name"] == "demo")
    await cloud.request("PUT", f"{V2}/quotas/{project}", user="admin", json_body={"quota": {"port": 10}})
    net, _ = await _network(cloud, cidr="10.73.0.0/24")
    results = await asyncio.gather(*(
        cloud.request("POST", f"{V2}/ports", json_body={"port": {"network_id": net["id"]}}) for _ in range(20)))
    codes = sorted(r[0] for r in results)
    assert codes == [201] * 10 + [409] * 10
    ips = {r[1]["port"]["fixed_ips"][0]["ip_address"] for r in results if r[0] == 201}
    assert len(ips) == 10
    assert len(await _ports(cloud, net["id"])) == 11  # and the DHCP port


async def test_server_boots_with_a_precreated_port(cloud):
    status, body, _ = await cloud.request("GET", f"{V2}/networks?name=private")
    [private] = body["networks"]
    port = await _post(cloud, "port", {"network_id": private["id"], "name": "for-vm"})
    image = await add_image(cloud)
    status, body, _ = await cloud.compute("POST", "/servers", json_body={"server": {
        "name": "vm", "imageRef": image, "flavorRef": "1", "networks": [{"port": port["id"]}]}})
    assert status == 202, body
    server = await wait_for_status(cloud, body["server"]["id"], {"ACTIVE"})
    status, body, _ = await cloud.request("GET", f"{V2}/ports/{port['id']}", user="admin")
    shown = body["port"]
    assert (shown["device_id"], shown["device_owner"]) == (server["id"], "compute:nova")
    status, body, _ = await cloud.compute("GET", f"/servers/{server['id']}", user="admin")
    assert shown["binding:host_id"] == body["server"]["OS-EXT-SRV-ATTR:host"] != ""
    assert server["addresses"]["private"][0]["addr"] == port["fixed_ips"][0]["ip_address"]
    # A port with no address cannot boot a server (Nova's PortRequiresFixedIP).
    bare = await _post(cloud, "port", {"network_id": private["id"], "fixed_ips": []})
    status, body, _ = await cloud.compute("POST", "/servers", json_body={"server": {
        "name": "vm2", "imageRef": image, "flavorRef": "1", "networks": [{"port": bare["id"]}]}})
    assert status == 400 and "requires a FixedIP" in body["badRequest"]["message"]


async def test_openstack_cli_creates_network_subnet_and_port(cloud):
    net = await cloud.openstack_json("network", "create", "cli-net", "--description", "from the CLI")
    assert net["name"] == "cli-net" and net["description"] == "from the CLI"
    subnet = await cloud.openstack_json("subnet", "create", "cli-subnet", "--network", "cli-net",
                                        "--subnet-range", "10.74.0.0/24", "--dns-nameserver", "10.74.0.1")
    assert subnet["cidr"] == "10.74.0.0/24" and subnet["gateway_ip"] == "10.74.0.1"
    port = await cloud.openstack_json("port", "create", "cli-port", "--network", "cli-net",
                                      "--fixed-ip", "subnet=cli-subnet,ip-address=10.74.0.20")
    assert port["fixed_ips"] == [{"subnet_id": subnet["id"], "ip_address": "10.74.0.20"}] or \
        "10.74.0.20" in str(port["fixed_ips"])
    await cloud.openstack("port", "set", "--no-security-group", "--disable-port-security", "cli-port")
    shown = await cloud.openstack_json("port", "show", "cli-port")
    assert shown["port_security_enabled"] is False
    await cloud.openstack("port", "delete", "cli-port")
    await cloud.openstack("network", "delete", "cli-net")
    assert [n["Name"] for n in await cloud.openstack_json("network", "list")] == ["private"]


async def test_bulk_create_makes_all_or_none(cloud):
    status, body, _ = await cloud.request("POST", f"{V2}/networks", json_body={"networks": [
        {"name": "a"}, {"name": "b"}]})
    assert status == 201 and [n["name"] for n in body["networks"]] == ["a", "b"]
    net_id = body["networks"][0]["id"]
    await _post(cloud, "subnet", {"network_id": net_id, "cidr": "10.75.0.0/24", "ip_version": 4})
    status, body, _ = await cloud.request("POST", f"{V2}/ports", json_body={"ports": [
        {"network_id": net_id, "fixed_ips": [{"ip_address": "10.75.0.10"}]},
        {"network_id": net_id, "fixed_ips": [{"ip_address": "10.75.0.10"}]}]})
    assert status == 409 and _error(body)[0] == "IpAddressAlreadyAllocated"
    assert [p["device_owner"] for p in await _ports(cloud, net_id)] == ["network:dhcp"]


async def test_subnet_and_port_writes_on_one_network_at_once_never_deadlock(cloud):
    net, subnet = await _network(cloud, cidr="10.76.0.0/24")
    writes = [cloud.request("POST", f"{V2}/ports", json_body={"port": {"network_id": net["id"]}})
              for _ in range(12)]
    writes += [cloud.request("POST", f"{V2}/subnets", json_body={"subnet": {
        "network_id": net["id"], "cidr": f"10.77.{i}.0/24", "ip_version": 4}}) for i in range(3)]
    writes += [cloud.request("PUT", f"{V2}/subnets/{subnet['id']}", json_body={"subnet": {"enable_dhcp": flag}})
               for flag in (False, True, False)]
    results = await asyncio.gather(*writes)
    assert all(status in (200, 201) for status, _, _ in results), [r[:2] for r in results if r[0] >= 300]
    ports = await _ports(cloud, net["id"])
    addresses = [p["fixed_ips"][0]["ip_address"] for p in ports]
    assert len(addresses) == len(set(addresses)) and len(ports) >= 12


async def test_bulk_ports_on_two_networks_in_opposite_orders_all_get_made(cloud):
    """Two bulks naming the same networks in opposite orders may deadlock in Postgres: the one
    rolled back is made again, so both answer 201 and nothing is half made."""
    (a, _), (b, _) = await _network(cloud, cidr="10.78.0.0/24"), await _network(cloud, cidr="10.79.0.0/24")

    def bulk(first: dict, second: dict):
        return cloud.request("POST", f"{V2}/ports", json_body={"ports": [
            {"network_id": first["id"]}, {"network_id": second["id"]}]})

    results = await asyncio.gather(*(bulk(a, b) if i % 2 else bulk(b, a) for i in range(10)))
    assert [status for status, _, _ in results] == [201] * 10, [r[:2] for r in results if r[0] != 201]
    assert len(await _ports(cloud, a["id"])) == len(await _ports(cloud, b["id"])) == 11  # + the DHCP port


async def test_member_sees_the_same_port_attributes_on_create_update_and_show(cloud):
    """Neutron strips the admin-only attributes (binding:host_id, ...) from every answer a member
    gets, not only from GETs; an admin sees them on create."""
    net, _ = await _network(cloud, cidr="10.67.0.0/29")
    port = await _post(cloud, "port", {"network_id": net["id"], "name": "mine"})
    status, shown, _ = await cloud.request("GET", f"{V2}/ports/{port['id']}")
    assert status == 200 and set(port) == set(shown["port"])
    status, updated, _ = await cloud.request("PUT", f"{V2}/ports/{port['id']}", json_body={"port": {"name": "m2"}})
    assert status == 200 and set(updated["port"]) == set(shown["port"])
    assert not {"binding:host_id", "binding:vif_type", "binding:profile", "binding:vif_details"} & set(port)
    assert "binding:vnic_type" in port
    status, net_shown, _ = await cloud.request("GET", f"{V2}/networks/{net['id']}")
    assert set(net) == set(net_shown["network"]) and "provider:network_type" not in net
    admin_port = await _post(cloud, "port", {"network_id": net["id"], "project_id": port["project_id"]},
                             user="admin")
    assert admin_port["binding:vif_type"] == "unbound" and admin_port["binding:host_id"] == ""


async def test_subnets_say_whether_their_network_is_external(cloud):
    """subnet-external-network: members see an external network's subnets (rule:external_network),
    each subnet carries ``router:external``, and the extension says so, as Neutron 2024.1+ does."""
    external = await _post(cloud, "network", {"name": "ext", "router:external": True}, user="admin")
    await _post(cloud, "subnet", {"network_id": external["id"], "cidr": "10.81.0.0/24", "ip_version": 4},
                user="admin")
    _, own = await _network(cloud, cidr="10.82.0.0/24")
    assert own["router:external"] is False
    status, body, _ = await cloud.request("GET", f"{V2}/subnets?router:external=true")
    assert status == 200 and [(s["cidr"], s["router:external"]) for s in body["subnets"]] == [("10.81.0.0/24", True)]
    status, body, _ = await cloud.request("GET", f"{V2}/extensions/subnet-external-network")
    assert status == 200 and body["extension"]["alias"] == "subnet-external-network"


async def test_ports_filter_by_part_of_their_address(cloud):
    """ip-substring-filtering: ``fixed_ips=ip_address_substr=...`` lists the ports whose address
    contains the text; an exact ``ip_address`` filter still needs the whole address."""
    net, subnet = await _network(cloud, cidr="10.68.0.0/24")
    near = await _post(cloud, "port", {"network_id": net["id"], "fixed_ips": [{"ip_address": "10.68.0.19"}]})
    far = await _post(cloud, "port", {"network_id": net["id"], "fixed_ips": [{"ip_address": "10.68.0.20"}]})

    async def listed(query: str) -> set[str]:
        status, body, _ = await cloud.request("GET", f"{V2}/ports?network_id={net['id']}&{query}")
        assert status == 200, body
        return {p["id"] for p in body["ports"]}

    assert await listed("fixed_ips=ip_address_substr=10.68.0.1") == {near["id"]}
    assert await listed("fixed_ips=ip_address_substr=0.68.0.") >= {near["id"], far["id"]}
    assert await listed("fixed_ips=ip_address=10.68.0.1") == set()  # the gateway: no port
    status, body, _ = await cloud.request("GET", f"{V2}/extensions/ip-substring-filtering")
    assert status == 200


async def test_auto_network_is_chosen_as_nova_chooses(cloud):
    """networks=auto (the create's check reads the choice and its free addresses in one round trip):
    the default shared network while the project has none of its own, 403 when its own has no
    address to give, its own network, 409 when it has several."""
    image = await add_image(cloud)

    async def create() -> tuple[int, dict]:
        status, body, _ = await cloud.compute("POST", "/servers", json_body={"server": {
            "name": "vm", "imageRef": image, "flavorRef": "1", "networks": "auto"}}, version="2.37")
        return status, body

    status, body = await create()
    assert status == 202, body
    shared = await wait_for_status(cloud, body["server"]["id"], "ACTIVE")
    assert list(shared["addresses"]) == ["private"]  # [[networks]]' shared default
    own, _ = await _network(cloud, cidr=None)  # the project's only network, without a subnet yet
    status, body = await create()
    assert status == 403 and "Maximum number of ports exceeded" in body["forbidden"]["message"]
    await _post(cloud, "subnet", {"network_id": own["id"], "cidr": "10.73.0.0/24", "ip_version": 4})
    status, body = await create()
    assert status == 202, body
    server = await wait_for_status(cloud, body["server"]["id"], "ACTIVE")
    assert [a["addr"].startswith("10.73.0.") for a in server["addresses"][own["name"]]] == [True]
    await _network(cloud, cidr="10.74.0.0/24")
    status, body = await create()
    assert status == 409 and "Multiple possible networks found" in body["conflictingRequest"]["message"]
    status, body, _ = await cloud.compute("GET", "/servers")
    assert {s["id"] for s in body["servers"]} == {shared["id"], server["id"]}  # nothing left of the refused
