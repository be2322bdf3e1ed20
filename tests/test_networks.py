"""Networks: isolated libvirt networks, ports, IPAM and DHCP host entries; the Neutron API."""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import uuid

import libvirt
import pytest
from conftest import fresh_database
from lxml import etree

from novalite.api import errors, keys
from novalite.config import Config, NetworkConfig
from novalite.network import NetworkAPI, network_data
from novalite.virt.libvirt import LibvirtDriver
from novalite.virt.testnode import write_test_node


def _qemu_system_available() -> bool:
    try:
        libvirt.open("qemu:///system").close()
        return True
    except libvirt.libvirtError:
        return False


@pytest.fixture
async def pool(pg_dsn):
    from novalite import db

    pool = await db.create_pool(await fresh_database(pg_dsn), 2, 20)
    await db.upgrade(pool)
    await pool.execute("INSERT INTO projects (id, name) VALUES ('p-admin', 'admin'), ('p-demo', 'demo')")
    yield pool
    await pool.close()


def _config(tmp_path, networks: list[NetworkConfig], prefix: str | None = None) -> Config:
    cfg = Config.model_validate({"state": {"dir": str(tmp_path / "state")}})
    cfg.networks = networks
    cfg.networking.libvirt_prefix = prefix or f"nlt{secrets.token_hex(3)}-"
    return cfg


async def test_ports_get_distinct_macs_ips_and_dhcp_entries_under_concurrency(pool, tmp_path):
    cfg = _config(tmp_path, [])  # no [[networks]]: the default shared `private` network
    driver = LibvirtDriver("test:///default", "test")
    api = NetworkAPI(pool, cfg, {"sim1": driver})
    await api.ensure_networks()
    try:
        uuids = [str(uuid.uuid4()) for _ in range(50)]
        results = await asyncio.gather(
            *(api.allocate_for_instance(u, "p-demo", "auto", "sim1") for u in uuids)
        )
        ports = [p for r in results for p in r]
        assert len(ports) == 50
        assert len({p.mac for p in ports}) == 50
        assert len({p.ip for p in ports}) == 50
        assert all(p.mac.startswith("fa:16:3e:") for p in ports)
        subnet = ipaddress.ip_network("10.20.0.0/24")
        assert all(ipaddress.ip_address(p.ip) in subnet and p.ip != "10.20.0.1" for p in ports)
        assert {p.network_label for p in ports} == {"private"}
        backend = api.hosts["sim1"]
        hosts = await backend.dhcp_hosts(ports[0].network_name)
        assert hosts == {p.mac: p.ip for p in ports}
        xml = etree.fromstring((await backend.network_xml(ports[0].network_name)).encode())
        assert xml.find("forward") is None

        # Allocation is idempotent per instance (a retried build gets the same port).
        again = await api.allocate_for_instance(uuids[0], "p-demo", "auto", "sim1")
        assert [p.port_id for p in again] == [p.port_id for p in results[0]]

        await asyncio.gather(*(api.deallocate_for_instance(u) for u in uuids))
        await api.deallocate_for_instance(uuids[0])  # idempotent
        assert await backend.dhcp_hosts(ports[0].network_name) == {}
        assert await pool.fetchval("SELECT count(*) FROM ports") == 0
    finally:
        await driver.close()


async def test_a_rescheduled_build_moves_its_port_to_the_new_host(pool, tmp_path):
    """The build takes the networks the create resolved; a retry on another host (a reschedule)
    gets the port made on the first one, moved with its DHCP entry, not a second port."""
    cfg = _config(tmp_path, [])
    sim1, sim2 = (LibvirtDriver(write_test_node(tmp_path / f"{name}.xml", name, 4, 4096), "test")
                  for name in ("sim1", "sim2"))  # two hosts, each with its own networks
    api = NetworkAPI(pool, cfg, {"sim1": sim1, "sim2": sim2})
    await api.ensure_networks()
    try:
        plan = await api.validate_requested_networks("p-demo", "auto", 1)
        assert plan.fits == 1 and len(plan.networks) == 1
        server = str(uuid.uuid4())
        first = await api.allocate_for_instance(server, "p-demo", "auto", "sim1", resolved=plan.networks)
        moved = await api.allocate_for_instance(server, "p-demo", "auto", "sim2", resolved=plan.networks)
        assert [(p.port_id, p.mac, p.ip) for p in moved] == [(p.port_id, p.mac, p.ip) for p in first]
        assert [p.host for p in moved] == ["sim2"]
        assert await pool.fetchval("SELECT count(*) FROM ports WHERE device_id = $1", server) == 1
        assert await pool.fetchval("SELECT host FROM ports WHERE device_id = $1", server) == "sim2"
        assert await sim2.dhcp_hosts(moved[0].network_name) == {moved[0].mac: moved[0].ip}
        assert await sim1.dhcp_hosts(first[0].network_name) == {}
        await api.deallocate_for_instance(server)
        assert await pool.fetchval("SELECT count(*) FROM ports") == 0
    finally:
        await sim1.close()
        await sim2.close()


async def test_requested_networks_are_validated_with_novas_messages(pool, tmp_path):
    cfg = _config(tmp_path, [
        NetworkConfig(name="private", cidr="10.20.0.0/24"),
        NetworkConfig(name="lab", cidr="10.21.0.0/28", shared=False, project="demo"),
    ])
    api = NetworkAPI(pool, cfg)
    await api.ensure_networks()
    nets = {r["name"]: str(r["id"]) for r in await pool.fetch("SELECT id, name FROM networks")}
    missing = str(uuid.uuid4())

    with pytest.raises(errors.BadRequest, match=f"Network {missing} could not be found."):
        await api.validate_requested_networks("p-demo", [{"uuid": missing}], 1)
    with pytest.raises(errors.BadRequest, match=f"Network {nets['lab']} could not be found."):
        await api.validate_requested_networks("p-admin", [{"uuid": nets["lab"]}], 1)  # private to demo
    with pytest.raises(errors.BadRequest, match=f"Port id {missing} could not be found."):
        await api.validate_requested_networks("p-demo", [{"port": missing}], 1)
    with pytest.raises(errors.BadRequest, match="not a valid address"):
        await api.validate_requested_networks("p-demo", [{"uuid": nets["lab"], "fixed_ip": "10.99.0.5"}], 1)
    assert (await api.validate_requested_networks("p-demo", "none", 3)).fits == 3
    # A /28 pool holds 13 addresses: no more instances than that fit.
    plan = await api.validate_requested_networks("p-demo", [{"uuid": nets["lab"]}], 20)
    assert plan.fits == 13 and plan.networks == [{"id": nets["lab"], "tag": None}]

    # auto: the project's own network wins over the shared default.
    first = await api.allocate_for_instance("00000000-0000-0000-0000-000000000001", "p-demo", "auto", None)
    assert [p.network_label for p in first] == ["lab"]
    assert await api.allocate_for_instance(str(uuid.uuid4()), "p-demo", "none", None) == []
    fixed = await api.allocate_for_instance(
        "00000000-0000-0000-0000-000000000002", "p-demo",
        [{"uuid": nets["private"], "fixed_ip": "10.20.0.77", "tag": "eth0"}, {"uuid": nets["lab"]}], None,
    )
    assert [(p.network_label, p.tag) for p in fixed] == [("private", "eth0"), ("lab", None)]
    assert fixed[0].ip == "10.20.0.77"
    with pytest.raises(errors.BadRequest, match="10.20.0.77 is already in use on instance "
                                                 "00000000-0000-0000-0000-000000000002"):
        await api.validate_requested_networks("p-demo", [{"uuid": nets["private"], "fixed_ip": "10.20.0.77"}], 1)
    with pytest.raises(errors.Conflict, match=f"Port {fixed[1].port_id} is still in use."):
        await api.validate_requested_networks("p-demo", [{"port": fixed[1].port_id}], 1)

    addresses = await api.addresses_for(["00000000-0000-0000-0000-000000000002", str(uuid.uuid4())])
    assert addresses == {"00000000-0000-0000-0000-000000000002": {
        "private": [{"addr": "10.20.0.77", "version": 4, "OS-EXT-IPS:type": "fixed",
                     "OS-EXT-IPS-MAC:mac_addr": fixed[0].mac}],
        "lab": [{"addr": fixed[1].ip, "version": 4, "OS-EXT-IPS:type": "fixed",
                 "OS-EXT-IPS-MAC:mac_addr": fixed[1].mac}],
    }}
    nd = network_data(fixed)
    assert [link["ethernet_mac_address"] for link in nd["links"]] == [fixed[0].mac, fixed[1].mac]
    assert nd["networks"][0] == {"id": "network0", "type": "ipv4_dhcp", "link": "tap" + fixed[0].port_id[:11],
                                 "network_id": nets["private"]}


@pytest.mark.skipif(not _qemu_system_available(), reason="needs libvirtd (qemu:///system)")
async def test_isolated_network_with_dhcp_hosts_on_qemu_system(pool, tmp_path):
    """A real isolated libvirt network (bridge + dnsmasq) with DHCP host entries, then removed."""
    octet = 100 + secrets.randbelow(100)
    cfg = _config(tmp_path, [NetworkConfig(name="e2e", cidr=f"10.254.{octet}.0/24")])
    driver = LibvirtDriver("qemu:///system", "qemu")
    api = NetworkAPI(pool, cfg, {"local": driver})
    name = cfg.networking.libvirt_prefix + "e2e"
    try:
        await api.ensure_networks()
        backend = api.hosts["local"]
        instance = str(uuid.uuid4())
        ports = await api.allocate_for_instance(instance, "p-demo", "auto", "local")
        xml = etree.fromstring((await backend.network_xml(name)).encode())
        assert xml.find("forward") is None  # isolated: nothing leaves the machine
        assert xml.find("bridge").get("name").startswith("virbr-nl")
        assert xml.find("ip").get("address") == f"10.254.{octet}.1"
        entries = {h.get("mac"): h.get("ip") for h in xml.iterfind("ip/dhcp/host")}
        assert entries == {ports[0].mac: ports[0].ip}
        await api.deallocate_for_instance(instance)
        assert await backend.dhcp_hosts(name) == {}
    finally:
        await driver.undefine_network(name)
        await driver.close()


# -- Neutron API -----------------------------------------------------------------------


async def _demo_port(cloud) -> tuple[str, list]:
    project = await cloud.app[keys.DB].fetchval("SELECT id FROM projects WHERE name = 'demo'")
    instance = str(uuid.uuid4())
    ports = await cloud.app[keys.NETWORK_API].allocate_for_instance(instance, project, "auto", "sim1")
    return instance, ports


async def test_neutron_reads_over_http(cloud):
    instance, ports = await _demo_port(cloud)
    status, body, _ = await cloud.request("GET", "/networking/", user="")
    assert status == 200 and body["versions"][0]["id"] == "v2.0"
    status, body, _ = await cloud.request("GET", "/networking/v2.0/networks")
    assert status == 200
    [net] = body["networks"]
    assert net["name"] == "private" and net["shared"] and net["status"] == "ACTIVE"
    assert net["router:external"] is False and len(net["subnets"]) == 1
    status, body, _ = await cloud.request("GET", "/networking/v2.0/networks?router:external=True")
    assert body["networks"] == []
    status, body, _ = await cloud.request("GET", f"/networking/v2.0/subnets/{net['subnets'][0]}")
    assert body["subnet"]["cidr"] == "10.20.0.0/24" and body["subnet"]["gateway_ip"] == "10.20.0.1"
    status, body, _ = await cloud.request("GET", f"/networking/v2.0/ports?device_id={instance}")
    [port] = body["ports"]
    assert port["mac_address"] == ports[0].mac
    assert port["fixed_ips"] == [{"subnet_id": net["subnets"][0], "ip_address": ports[0].ip}]
    status, body, _ = await cloud.request("GET", f"/networking/v2.0/ports?fixed_ips=ip_address%3D{ports[0].ip}")
    assert [p["id"] for p in body["ports"]] == [ports[0].port_id]
    status, body, _ = await cloud.request("GET", f"/networking/v2.0/networks/{uuid.uuid4()}")
    assert status == 404 and body["NeutronError"]["type"] == "NetworkNotFound"


async def test_openstack_cli_lists_networks_subnets_and_ports(cloud):
    instance, ports = await _demo_port(cloud)
    nets = await cloud.openstack_json("network", "list")
    assert [n["Name"] for n in nets] == ["private"]
    subnets = await cloud.openstack_json("subnet", "list")
    assert [s["Subnet"] for s in subnets] == ["10.20.0.0/24"]
    listed = await cloud.openstack_json("port", "list", "--device-id", instance)
    assert [(p["MAC Address"], p["Fixed IP Addresses"][0]["ip_address"]) for p in listed] == [
        (ports[0].mac, ports[0].ip)
    ]
    # Every service in the catalog must answer these.
    await cloud.openstack("quota", "show")
    await cloud.openstack("availability", "zone", "list")
