"""Hot-plugged interfaces (os-interface, addFixedIp/removeFixedIp) and server security group
actions, through HTTP on simulated hosts; one real NIC hot-plug into a TCG guest."""

from __future__ import annotations

import uuid as uuidlib

import pytest
from conftest import add_image, start_cloud, stop_cloud, wait_for_status
from lxml import etree

from novalite.api import keys
from novalite.db import networks as q

NETWORKS = """
[networking]
default_network = "private"

[[networks]]
name = "private"
cidr = "10.20.0.0/24"

[[networks]]
name = "second"
cidr = "10.21.0.0/24"
"""


@pytest.fixture
async def cloud(pg_dsn, tmp_path):
    c = await start_cloud(pg_dsn, tmp_path, extra=NETWORKS)
    yield c
    await stop_cloud(c)


async def boot(cloud, name: str = "vm") -> dict:
    image = await add_image(cloud)
    status, body, _ = await cloud.compute(
        "POST", "/servers", version="2.latest",
        json_body={"server": {"name": name, "imageRef": image, "flavorRef": "1", "networks": "auto"}})
    assert status == 202, body
    return await wait_for_status(cloud, body["server"]["id"], "ACTIVE", user="admin")  # with its host


async def network_id(cloud, name: str) -> str:
    _, body, _ = await cloud.request("GET", f"/networking/v2.0/networks?name={name}")
    return body["networks"][0]["id"]


async def interfaces(cloud, sid: str, version: str = "2.latest") -> list[dict]:
    status, body, _ = await cloud.compute("GET", f"/servers/{sid}/os-interface", version=version)
    assert status == 200, body
    return body["interfaceAttachments"]


async def attach(cloud, sid: str, version: str = "2.latest", user: str = "demo", **att):
    return await cloud.compute("POST", f"/servers/{sid}/os-interface", version=version, user=user,
                               json_body={"interfaceAttachment": att})


async def guest_macs(cloud, server: dict) -> list[str]:
    """The NICs' MACs in the domain's persistent XML on its host (what `virsh domiflist` lists)."""
    driver = cloud.app[keys.HOSTS][server["OS-EXT-SRV-ATTR:host"]].driver
    xml = etree.fromstring((await driver.domain_xml(server["id"], inactive=True)).encode())
    return [m.get("address") for m in xml.findall("./devices/interface/mac")]


async def user_port(cloud, net: str) -> str:
    """A port the demo user made (kept when detached), as `openstack port create` leaves it."""
    project = (await cloud.request("GET", "/identity/v3/auth/projects"))[1]["projects"]
    demo = next(p["id"] for p in project if p["name"] == "demo")
    async with cloud.app[keys.DB].acquire() as conn:
        row = await q.create_port(conn, network_id=net, project_id=demo, preserve_on_delete=True, name="mine")
    return row["id"]


async def action_names(cloud, sid: str) -> list[str]:
    _, body, _ = await cloud.compute("GET", f"/servers/{sid}/os-instance-actions")
    return [a["action"] for a in body["instanceActions"]]


async def test_attach_by_network_shows_everywhere_and_detach_deletes_the_port(cloud):
    server = await boot(cloud)
    sid, second = server["id"], await network_id(cloud, "second")
    status, body, _ = await attach(cloud, sid, net_id=second)
    assert status == 200, body
    att = body["interfaceAttachment"]
    assert set(att) == {"net_id", "port_id", "mac_addr", "port_state", "fixed_ips", "tag"}
    assert att["net_id"] == second and att["port_state"] == "ACTIVE" and att["tag"] is None
    ip = att["fixed_ips"][0]["ip_address"]
    assert ip.startswith("10.21.0.")
    assert [i["port_id"] for i in await interfaces(cloud, sid)][-1] == att["port_id"]
    assert "tag" not in (await interfaces(cloud, sid, version="2.69"))[0]
    shown = await wait_for_status(cloud, sid, "ACTIVE")
    assert [a["addr"] for a in shown["addresses"]["second"]] == [ip]
    status, port, _ = await cloud.request("GET", f"/networking/v2.0/ports/{att['port_id']}", user="admin")
    assert status == 200, port
    port = port["port"]
    assert (port["device_id"], port["device_owner"], port["binding:host_id"]) == (
        sid, "compute:nova", server["OS-EXT-SRV-ATTR:host"])
    macs = await guest_macs(cloud, server)
    assert len(macs) == 2 and macs[1] == att["mac_addr"]
    status, one, _ = await cloud.compute("GET", f"/servers/{sid}/os-interface/{att['port_id']}")
    assert status == 200 and one["interfaceAttachment"]["mac_addr"] == att["mac_addr"]

    status, body, _ = await cloud.compute("DELETE", f"/servers/{sid}/os-interface/{att['port_id']}")
    assert status == 202, body
    assert len(await interfaces(cloud, sid)) == 1
    assert att["mac_addr"] not in await guest_macs(cloud, server)
    status, _, _ = await cloud.request("GET", f"/networking/v2.0/ports/{att['port_id']}", user="admin")
    assert status == 404
    assert "second" not in (await wait_for_status(cloud, sid, "ACTIVE"))["addresses"]
    assert {"attach_interface", "detach_interface"} <= set(await action_names(cloud, sid))
    status, body, _ = await cloud.compute("DELETE", f"/servers/{sid}/os-interface/{att['port_id']}")
    assert status == 404, body


async def test_attach_users_port_with_tag_and_detach_leaves_it_unbound(cloud):
    server = await boot(cloud)
    other = await boot(cloud, "other")
    sid = server["id"]
    port_id = await user_port(cloud, await network_id(cloud, "second"))
    status, body, _ = await attach(cloud, sid, port_id=port_id, tag="data")
    assert status == 200, body
    assert body["interfaceAttachment"]["port_id"] == port_id
    assert body["interfaceAttachment"]["tag"] == "data"
    # Already in use: 409 for another server.
    status, body, _ = await attach(cloud, other["id"], port_id=port_id)
    assert status == 409, body
    assert body["conflictingRequest"]["message"] == f"Port {port_id} is still in use."
    status, _, _ = await cloud.compute("DELETE", f"/servers/{sid}/os-interface/{port_id}")
    assert status == 202
    status, port, _ = await cloud.request("GET", f"/networking/v2.0/ports/{port_id}", user="admin")
    assert status == 200, port
    assert (port["port"]["device_id"], port["port"]["binding:host_id"]) == ("", "")
    assert len(await guest_macs(cloud, server)) == 1
    # Free again: the other server can take it (and gets no stale tag).
    status, body, _ = await attach(cloud, other["id"], port_id=port_id)
    assert status == 200 and body["interfaceAttachment"]["tag"] is None, body


async def test_attach_errors_are_novas(cloud):
    server = await boot(cloud)
    sid, second = server["id"], await network_id(cloud, "second")
    missing = str(uuidlib.uuid4())
    cases = [
        ({"net_id": second, "port_id": missing}, 400, "Must not input both network_id and port_id"),
        ({"port_id": missing}, 404, f"Port id {missing} could not be found."),
        ({"net_id": missing}, 404, f"Network {missing} could not be found."),
        ({"fixed_ips": [{"ip_address": "10.21.0.9"}]}, 400, "Must input network_id when request IP address"),
        ({"net_id": "nope"}, 400, None),
        ({"net_id": second, "bogus": 1}, 400, None),
    ]
    for body_in, code, message in cases:
        status, body, _ = await attach(cloud, sid, **body_in)
        assert status == code, (body_in, body)
        if message:
            assert next(iter(body.values()))["message"] == message
    status, body, _ = await attach(cloud, sid, version="2.48", net_id=second, tag="x")
    assert status == 400, body
    # A fixed IP someone holds: 409.
    status, body, _ = await attach(cloud, sid, net_id=second, fixed_ips=[{"ip_address": "10.21.0.9"}])
    assert status == 200, body
    status, body, _ = await attach(cloud, sid, net_id=second, fixed_ips=[{"ip_address": "10.21.0.9"}])
    assert status == 409, body
    assert len(await interfaces(cloud, sid)) == 2  # nothing half-made behind the refusals

    # Locked by the admin: 409 for the owner.
    assert (await cloud.compute("POST", f"/servers/{sid}/action", json_body={"lock": None}, user="admin"))[0] == 202
    status, body, _ = await attach(cloud, sid, net_id=second)
    assert status == 409 and body["conflictingRequest"]["message"] == f"Instance {sid} is locked", body
    assert (await cloud.compute("POST", f"/servers/{sid}/action", json_body={"unlock": None},
                                user="admin"))[0] == 202
    # ERROR: 409 with Nova's message, for attach and detach.
    assert (await cloud.compute("POST", f"/servers/{sid}/action", json_body={"os-resetState": {"state": "error"}},
                                user="admin"))[0] == 202
    status, body, _ = await attach(cloud, sid, net_id=second)
    assert status == 409, body
    assert body["conflictingRequest"]["message"] == (
        f"Cannot 'attach_interface' instance {sid} while it is in vm_state error")
    port_id = (await interfaces(cloud, sid))[0]["port_id"]
    status, body, _ = await cloud.compute("DELETE", f"/servers/{sid}/os-interface/{port_id}")
    assert status == 409 and "detach_interface" in body["conflictingRequest"]["message"], body


async def test_shelved_offloaded_server_refuses_attach(cloud):
    server = await boot(cloud)
    sid = server["id"]
    status, body, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body={"shelve": None})
    assert status == 202, body
    await wait_for_status(cloud, sid, "SHELVED_OFFLOADED")
    status, body, _ = await attach(cloud, sid, net_id=await network_id(cloud, "second"))
    assert status == 409, body
    assert body["conflictingRequest"]["message"] == (
        f"Cannot 'attach_interface' instance {sid} while it is in vm_state shelved_offloaded")


async def test_add_and_remove_fixed_ip_until_2_43(cloud):
    server = await boot(cloud)
    sid, second = server["id"], await network_id(cloud, "second")

    async def act(body: dict, version: str = "2.43"):
        status, resp, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body=body, version=version)
        return status, resp

    assert (await act({"addFixedIp": {"networkId": second}}))[0] == 202
    (addr,) = (await wait_for_status(cloud, sid, "ACTIVE"))["addresses"]["second"]
    assert len(await guest_macs(cloud, server)) == 2
    status, body = await act({"removeFixedIp": {"address": "10.99.0.1"}})
    assert status == 400 and body["badRequest"]["message"] == f"Instance {sid} doesn't have fixed IP '10.99.0.1'."
    assert (await act({"removeFixedIp": {"address": addr["addr"]}}))[0] == 202
    assert "second" not in (await wait_for_status(cloud, sid, "ACTIVE"))["addresses"]
    assert len(await guest_macs(cloud, server)) == 1
    assert (await act({"addFixedIp": {}}))[0] == 400
    assert (await act({"addFixedIp": {"networkId": second}}, version="2.44"))[0] == 404
    assert (await act({"removeFixedIp": {"address": "10.21.0.2"}}, version="2.44"))[0] == 404


async def _group(cloud, name: str, *rules: tuple) -> str:
    """A security group of the demo project with ingress rules (protocol, min, max, cidr)."""
    project = (await cloud.request("GET", "/identity/v3/auth/projects"))[1]["projects"]
    demo = next(p["id"] for p in project if p["name"] == "demo")
    gid = uuidlib.uuid4()
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("INSERT INTO security_groups (id, project_id, name, description) VALUES ($1, $2, $3, 'w')",
                           gid, demo, name)
        for proto, low, high, cidr in rules:
            await conn.execute(
                """INSERT INTO security_group_rules (id, security_group_id, project_id, direction, protocol,
                       port_range_min, port_range_max, remote_ip_prefix) VALUES ($1, $2, $3, 'ingress', $4, $5, $6, $7)""",
                uuidlib.uuid4(), gid, demo, proto, low, high, cidr)
    return str(gid)


async def port_groups(cloud, sid: str) -> dict[str, set[str]]:
    # The Neutron port view reads these rows once the ports work (issue 16) is merged.
    async with cloud.app[keys.DB].acquire() as conn:
        rows = await conn.fetch(
            """SELECT p.id::text AS port, array_remove(array_agg(g.security_group_id::text), NULL) AS groups
               FROM ports p LEFT JOIN port_security_groups g ON g.port_id = p.id
               WHERE p.device_id = $1 GROUP BY p.id""", sid)
    return {r["port"]: set(r["groups"]) for r in rows}


async def test_add_and_remove_security_group(cloud):
    server = await boot(cloud)
    sid = server["id"]
    web = await _group(cloud, "web", ("tcp", 80, 80, "10.0.0.0/8"), ("udp", None, None, None))

    async def act(body: dict):
        status, resp, _ = await cloud.compute("POST", f"/servers/{sid}/action", json_body=body)
        return status, resp

    status, body = await act({"addSecurityGroup": {"name": "web"}})
    assert status == 202, body
    shown = await wait_for_status(cloud, sid, "ACTIVE")
    assert {g["name"] for g in shown["security_groups"]} == {"default", "web"}
    assert all(web in groups for groups in (await port_groups(cloud, sid)).values())
    status, body, _ = await cloud.compute("GET", f"/servers/{sid}/os-security-groups")
    assert status == 200, body
    by_name = {g["name"]: g for g in body["security_groups"]}
    assert set(by_name) == {"default", "web"}
    rules = sorted(by_name["web"]["rules"], key=lambda r: r["ip_protocol"])
    assert [(r["ip_protocol"], r["from_port"], r["to_port"], r["ip_range"], r["group"], r["parent_group_id"])
            for r in rules] == [("tcp", 80, 80, {"cidr": "10.0.0.0/8"}, {}, web),
                                ("udp", 1, 65535, {"cidr": "0.0.0.0/0"}, {}, web)]
    # A NIC attached later joins the project's default group, as Neutron's port create does.
    status, body, _ = await attach(cloud, sid, net_id=await network_id(cloud, "second"))
    assert status == 200, body

    status, body = await act({"addSecurityGroup": {"name": "web"}})
    assert status == 400, body
    status, body = await act({"addSecurityGroup": {"name": "nosuch"}})
    assert status == 404, body
    assert body["itemNotFound"]["message"].startswith("Security group nosuch is not found for project")
    assert (await act({"addSecurityGroup": {"name": " "}}))[0] == 400
    assert (await act({"addSecurityGroup": "web"}))[0] == 400

    status, body = await act({"removeSecurityGroup": {"name": web}})  # by id too
    assert status == 202, body
    shown = await wait_for_status(cloud, sid, "ACTIVE")
    assert [g["name"] for g in shown["security_groups"]] == ["default"]
    assert all(web not in groups for groups in (await port_groups(cloud, sid)).values())
    status, body = await act({"removeSecurityGroup": {"name": "web"}})
    assert status == 404 and "not associated with the instance" in body["itemNotFound"]["message"], body

    # A port without port security cannot take groups: Nova's SecurityGroupCannotBeApplied.
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("UPDATE ports SET port_security_enabled = false WHERE device_id = $1", sid)
    status, body = await act({"addSecurityGroup": {"name": "web"}})
    assert status == 400, body
    assert body["badRequest"]["message"] == (
        "Network requires port_security_enabled and subnet associated in order to apply security groups.")
    assert [g["name"] for g in (await wait_for_status(cloud, sid, "ACTIVE"))["security_groups"]] == ["default"]


async def test_policy_rule_guards_attach(pg_dsn, tmp_path):
    (tmp_path / "policy.yaml").write_text('"os_compute_api:os-attach-interfaces:create": "role:admin"\n')
    c = await start_cloud(pg_dsn, tmp_path, extra=NETWORKS)
    try:
        server = await boot(c)
        status, body, _ = await attach(c, server["id"], net_id=await network_id(c, "second"))
        assert status == 403, body
        assert "os_compute_api:os-attach-interfaces:create" in body["forbidden"]["message"]
        assert len(await interfaces(c, server["id"])) == 1  # listing is another rule
        status, body, _ = await attach(c, server["id"], user="admin", net_id=await network_id(c, "second"))
        assert status == 200, body
    finally:
        await stop_cloud(c)


async def test_a_port_attached_but_never_plugged_is_plugged_at_start(cloud):
    """The crash window of an attach: the port row is there, the guest has no NIC yet."""
    server = await boot(cloud)
    sid, host = server["id"], server["OS-EXT-SRV-ATTR:host"]
    port = await cloud.app[keys.NETWORK_API].attach_port(
        sid, server["tenant_id"], host, availability_zone="nova", network_id=await network_id(cloud, "second"))
    assert port.mac not in await guest_macs(cloud, server)
    assert await cloud.app[keys.INTERFACES].repair_nics(host) == 1
    assert (await guest_macs(cloud, server))[-1] == port.mac
    assert await cloud.app[keys.INTERFACES].repair_nics(host) == 0


# -- a real guest ------------------------------------------------------------------------

@pytest.mark.qemu
async def test_nic_hot_plugged_into_running_tcg_guest(pg_dsn):
    from test_guest_e2e import CACHE, qemu_cloud

    from novalite.image import testimage

    try:
        image = testimage.build(CACHE)
    except testimage.BuildError as exc:
        pytest.skip(f"cannot build the test image here: {exc}")
    async with qemu_cloud(pg_dsn, image, prefix="nlif") as cloud:
        status, body, _ = await cloud.compute("POST", "/servers", json_body={"server": {
            "name": "hotplug", "imageRef": cloud.image_ids["ami"], "flavorRef": "1", "networks": "auto"}},
            version="2.latest")
        assert status == 202, body
        sid = body["server"]["id"]
        server = await wait_for_status(cloud, sid, {"ACTIVE", "ERROR"}, timeout=90)
        assert server["status"] == "ACTIVE", server.get("fault")
        _, nets, _ = await cloud.request("GET", "/networking/v2.0/networks?name=lab")
        status, body, _ = await attach(cloud, sid, net_id=nets["networks"][0]["id"])
        assert status == 200, body
        mac = body["interfaceAttachment"]["mac_addr"]
        driver = cloud.app[keys.HOSTS]["local"].driver
        live = etree.fromstring((await driver.domain_xml(sid)).encode())
        assert mac in [m.get("address") for m in live.findall("./devices/interface/mac")]
        assert len(await interfaces(cloud, sid)) == 2
        status, _, _ = await cloud.compute("DELETE", f"/servers/{sid}/os-interface/{body['interfaceAttachment']['port_id']}")
        assert status == 202
        live = etree.fromstring((await driver.domain_xml(sid)).encode())
        assert mac not in [m.get("address") for m in live.findall("./devices/interface/mac")]


async def test_openstack_cli_server_ports_fixed_ips_and_security_groups(cloud):
    """The commands a lab member types: `server add/remove port`, `server add fixed ip`,
    `security group (rule) create`, `server add/remove security group`."""
    server = await boot(cloud)
    sid = server["id"]
    await cloud.openstack("security", "group", "create", "web")
    rule = await cloud.openstack_json("security", "group", "rule", "create", "--protocol", "tcp",
                                      "--dst-port", "8080", "--remote-group", "default", "web")
    assert (rule["port_range_min"], rule["port_range_max"], rule["direction"]) == (8080, 8080, "ingress")
    await cloud.openstack("server", "add", "security", "group", sid, "web")
    shown = await cloud.openstack_json("server", "show", sid)
    assert "web" in str(shown["security_groups"]) and "default" in str(shown["security_groups"])
    port = await cloud.openstack_json("port", "create", "--network", "second", "cli-port")
    await cloud.openstack("server", "add", "port", sid, "cli-port")
    await cloud.openstack("server", "add", "fixed", "ip", sid, "second")
    attached = [i["port_id"] for i in await interfaces(cloud, sid)]
    assert len(attached) == 3 and port["id"] in attached
    await cloud.openstack("server", "remove", "port", sid, "cli-port")
    await cloud.openstack("server", "remove", "security", "group", sid, "web")
    assert port["id"] not in [i["port_id"] for i in await interfaces(cloud, sid)]
    kept = await cloud.openstack_json("port", "show", "cli-port")
    assert kept["device_id"] == "" and kept["status"] == "DOWN"
    assert "web" not in str((await cloud.openstack_json("server", "show", sid))["security_groups"])
