"""``[[networks]] forward``: isolated, NAT and bridged networks; the config drive forced on remote hosts.

The network XML of each mode, unit and as libvirt keeps it (test:/// and qemu:///system with this
file's own prefix and a /24 no route uses); a real guest on a NAT network gets its lease with the
gateway as router and default route (it prints them on its console: no traffic leaves the machine
and none goes from the host to the guest). Bridge mode is XML only: no test touches a host bridge.
"""

from __future__ import annotations

import dataclasses
import subprocess
import uuid

import libvirt
import pytest
from conftest import add_image, start_cloud, stop_cloud, wait_for_status
from lxml import etree
from pydantic import ValidationError
from test_guest_e2e import qemu_cloud, test_image, wait_console  # noqa: F401 (test_image: a fixture)

from novalite.api import keys
from novalite.config import ComputeConfig, HostConfig, NetworkConfig
from novalite.virt.driver import NetworkSpec
from novalite.virt.libvirt.driver import LibvirtDriver
from novalite.virt.libvirt.network import design_network
from novalite.virt.testnode import write_test_node

UUID = "0b8a2a3e-7f5c-4a43-9f0e-3d5a9d0c1e22"
META = ("169.254.169.254/32", "10.20.0.1")


def spec(**overrides: object) -> NetworkSpec:
    fields: dict = dict(name="nl-fwd", uuid=UUID, cidr="10.20.0.0/24", gateway="10.20.0.1",
                        dhcp_start="10.20.0.2", dhcp_end="10.20.0.254", host_routes=(META,))
    return NetworkSpec(**{**fields, **overrides})


def forward_of(xml: str) -> tuple[str | None, str | None, str | None]:
    """(forward mode, bridge name, host address) of a libvirt network XML."""
    root = etree.fromstring(xml.encode())
    forward, bridge, ip = root.find("forward"), root.find("bridge"), root.find("ip")
    return (None if forward is None else forward.get("mode"), None if bridge is None else bridge.get("name"),
            None if ip is None else ip.get("address"))


# ------------------------------------------------------------------ unit: config and XML

def test_forward_config_defaults_to_isolated_and_bridge_needs_its_host_bridge() -> None:
    assert NetworkConfig(name="lab").forward == "isolated"
    assert NetworkConfig(name="lab", forward="nat").bridge is None
    assert NetworkConfig(name="lan", forward="bridge", bridge="br0").bridge == "br0"
    with pytest.raises(ValidationError, match="bridge"):
        NetworkConfig(name="lan", forward="bridge")
    with pytest.raises(ValidationError, match="bridge"):
        NetworkConfig(name="lab", bridge="br0")
    with pytest.raises(ValidationError):
        NetworkConfig(name="lab", forward="route")


def test_network_xml_of_each_forward_mode() -> None:
    isolated = design_network(spec(), "virbr-nl3").to_xml(pretty=False)
    assert forward_of(isolated) == (None, "virbr-nl3", "10.20.0.1")
    assert 'value="dhcp-option=option:classless-static-route,169.254.169.254/32,10.20.0.1"' in isolated

    nat = design_network(spec(forward="nat"), "virbr-nl3").to_xml(pretty=False)
    assert forward_of(nat) == ("nat", "virbr-nl3", "10.20.0.1")
    assert '<range start="10.20.0.2" end="10.20.0.254"/>' in nat
    # the default route first: a client given classless routes ignores the router option
    assert 'classless-static-route,0.0.0.0/0,10.20.0.1,169.254.169.254/32,10.20.0.1"' in nat

    bridged = design_network(spec(forward="bridge", host_bridge="br-lan", enable_dhcp=False, host_routes=()),
                             "unused").to_xml(pretty=False)
    assert bridged == (f'<network><name>nl-fwd</name><uuid>{UUID}</uuid>'
                       '<forward mode="bridge"/><bridge name="br-lan"/></network>')


# ------------------------------------------------------------------ config drive on remote hosts

@pytest.mark.parametrize(("uri", "forced"), [
    ("qemu+ssh://lab2/system", True),
    ("qemu+tcp://10.0.0.7/system", True),
    ("qemu:///system", False),
    ("test:///default", False),
])
def test_a_remote_host_gets_the_config_drive_forced(uri: str, forced: bool) -> None:
    """Decided from the URI alone: nothing connects to lab2."""
    host = HostConfig(name="h", uri=uri)
    assert ComputeConfig().forces_config_drive(host) is forced
    assert ComputeConfig(force_config_drive_remote=False).forces_config_drive(host) is False
    assert ComputeConfig(force_config_drive=True, force_config_drive_remote=False).forces_config_drive(host)


# ------------------------------------------------------------------ libvirt keeps what was designed

@pytest.mark.asyncio
async def test_a_forward_change_redefines_the_network_on_the_test_driver(tmp_path) -> None:
    uri = write_test_node(tmp_path / "fwd.xml", "fwd", vcpus=2, memory_mb=2048)
    async with LibvirtDriver(uri, "qemu") as drv:
        isolated = spec(name="nl-fwd-t", host_routes=())
        bridge = await drv.ensure_network(isolated)
        assert forward_of(await drv.network_xml(isolated.name)) == (None, bridge, "10.20.0.1")
        assert await drv.ensure_network(dataclasses.replace(isolated, forward="nat")) == bridge
        assert forward_of(await drv.network_xml(isolated.name)) == ("nat", bridge, "10.20.0.1")
        lan = dataclasses.replace(isolated, forward="bridge", host_bridge="nlfwd-br0", enable_dhcp=False)
        assert await drv.ensure_network(lan) == "nlfwd-br0"
        assert forward_of(await drv.network_xml(isolated.name)) == ("bridge", "nlfwd-br0", None)
        # back to isolated: a bridge of its own again, never the host's
        own = await drv.ensure_network(isolated)
        assert own != "nlfwd-br0" and forward_of(await drv.network_xml(isolated.name)) == (None, own, "10.20.0.1")
        await drv.undefine_network(isolated.name)


def free_slash24() -> str:
    """A 10.x.43.0/24 that no route of this machine uses (other clouds' networks, the host's own)."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    return next(c for n in range(200, 250) if (c := f"10.{n}.43.0/24") not in routes)


@pytest.mark.qemu
@pytest.mark.asyncio
async def test_nat_and_bridge_networks_on_qemu_system(tmp_path) -> None:
    """The NAT network runs on qemu:///system with its DHCP; the bridge one is only defined
    (on a bridge name of this test's that does not exist: starting it would need a host bridge)."""
    tag = f"nlfwd{uuid.uuid4().hex[:6]}"
    cidr = free_slash24()
    base = cidr.rsplit(".", 1)[0]
    nat = spec(name=f"{tag}-nat", uuid=str(uuid.uuid4()), cidr=cidr, gateway=f"{base}.1",
               dhcp_start=f"{base}.2", dhcp_end=f"{base}.254", forward="nat", host_routes=())
    async with LibvirtDriver("qemu:///system", "qemu", state_dir=tmp_path) as drv:
        if not await drv.is_alive():
            pytest.skip("qemu:///system is not reachable")
        conn = libvirt.open("qemu:///system")
        try:
            bridge = await drv.ensure_network(nat)
            assert conn.networkLookupByName(nat.name).isActive()
            assert forward_of(conn.networkLookupByName(nat.name).XMLDesc(0)) == ("nat", bridge, f"{base}.1")
            assert f"{cidr} dev {bridge}" in subprocess.run(["ip", "-4", "route"], capture_output=True,
                                                           text=True, check=True).stdout
            lan_xml = design_network(spec(name=f"{tag}-lan", uuid=str(uuid.uuid4()), forward="bridge",
                                          host_bridge=f"{tag}-br", enable_dhcp=False), "").to_xml()
            lan = conn.networkDefineXML(lan_xml)
            try:
                assert forward_of(lan.XMLDesc(0)) == ("bridge", f"{tag}-br", None)
            finally:
                lan.undefine()
        finally:
            await drv.undefine_network(nat.name)
            conn.close()


# ------------------------------------------------------------------ a real guest on a NAT network

@pytest.mark.qemu
async def test_a_guest_on_a_nat_network_gets_its_lease_and_default_route(pg_dsn, test_image):  # noqa: F811
    async with qemu_cloud(pg_dsn, test_image, prefix="nlnat", network='forward = "nat"') as cloud:
        prefix = cloud.config.networking.libvirt_prefix
        conn = libvirt.open("qemu:///system")
        try:
            net_xml = conn.networkLookupByName(f"{prefix}lab").XMLDesc(0)
        finally:
            conn.close()
        mode, _, gateway = forward_of(net_xml)
        assert mode == "nat"
        status, body, _ = await cloud.compute("POST", "/servers", version="2.37", json_body={"server": {
            "name": "nat-guest", "imageRef": cloud.image_ids["ami"], "flavorRef": "1", "networks": "auto",
        }})
        assert status == 202, body
        server_id = body["server"]["id"]
        server = await wait_for_status(cloud, server_id, {"ACTIVE", "ERROR"}, timeout=120)
        assert server["status"] == "ACTIVE", server.get("fault")
        (fixed,) = [a["addr"] for addrs in server["addresses"].values() for a in addrs]
        text = await wait_console(cloud, server_id, "NOVALITE-GUEST: lease ", timeout=120)
        (lease,) = [line for line in text.splitlines() if "NOVALITE-GUEST: lease " in line]
        assert f"ip={fixed} " in lease and f"router={gateway} " in lease, lease
        assert f"routes=0.0.0.0/0 {gateway} 169.254.169.254/32 {gateway}" in lease, lease
        status, _, _ = await cloud.compute("DELETE", f"/servers/{server_id}")
        assert status == 204
        await wait_for_status(cloud, server_id, "DELETED", timeout=60)


# ------------------------------------------------------------------ a cloud with a bridged network

async def test_a_bridge_network_is_a_dhcp_less_provider_network(pg_dsn, tmp_path):
    """Its subnet says DHCP is off (Neutron's provider subnet made with --no-dhcp), its port still
    gets a fixed IP from the configured pool, and no DHCP entry of ours goes to the host."""
    extra = """
[networking]
default_network = "lan"

[[networks]]
name = "lan"
cidr = "10.77.0.0/24"
dhcp_start = "10.77.0.200"
dhcp_end = "10.77.0.220"
forward = "bridge"
bridge = "nlfwd-lan0"
"""
    cloud = await start_cloud(pg_dsn, tmp_path, extra=extra)
    try:
        status, body, _ = await cloud.request("GET", "/networking/v2.0/subnets", user="admin")
        assert status == 200, body
        (subnet,) = [s for s in body["subnets"] if s["cidr"] == "10.77.0.0/24"]
        assert subnet["enable_dhcp"] is False
        status, body, _ = await cloud.compute("POST", "/servers", version="2.37", json_body={"server": {
            "name": "lan-guest", "imageRef": await add_image(cloud), "flavorRef": "1", "networks": "auto",
            "availability_zone": "nova:sim1",
        }}, user="admin")
        assert status == 202, body
        server = await wait_for_status(cloud, body["server"]["id"], {"ACTIVE", "ERROR"}, user="admin")
        assert server["status"] == "ACTIVE", server.get("fault")
        (fixed,) = [a["addr"] for addrs in server["addresses"].values() for a in addrs]
        assert fixed.startswith("10.77.0.2")
        backend = cloud.app[keys.NETWORK_API].hosts["sim1"]
        name = f"{cloud.config.networking.libvirt_prefix}lan"
        assert forward_of(await backend.network_xml(name)) == ("bridge", "nlfwd-lan0", None)
        assert await backend.dhcp_hosts(name) == {}
    finally:
        await stop_cloud(cloud)
