"""Security groups in the datapath: a port's filter as XML, as libvirt keeps it on
qemu:///system (virsh nwfilter-dumpxml), and as the Firewall derives it from Postgres.

No guest is started and no traffic is sent: the filters are checked as libvirt shows them.
Every filter a test makes carries the test's own prefix and is removed afterwards.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import uuid

import pytest
from conftest import fresh_database
from lxml import etree
from test_networks import _qemu_system_available

from novalite.config import Config, NetworkConfig
from novalite.db.security_groups import ensure_default_security_group
from novalite.network import NetworkAPI
from novalite.network.firewall import Firewall, filter_name
from novalite.virt.driver import FilterRule, GuestSpec, NicSpec, PortFilterSpec
from novalite.virt.libvirt import LibvirtDriver
from novalite.virt.libvirt.config import LibvirtConfigGuestInterface
from novalite.virt.libvirt.driver import design_guest
from novalite.virt.libvirt.nwfilter import design_port_filter

needs_libvirtd = pytest.mark.skipif(not _qemu_system_available(), reason="needs libvirtd (qemu:///system)")


def _rules(root: etree._Element) -> list[tuple[str, str, str, dict]]:
    """(action, direction, protocol element, its attributes) of each rule, in order."""
    return [(r.get("action"), r.get("direction"), r[0].tag, dict(r[0].attrib)) for r in root.iterfind("rule")]


def _spec(name: str, rules: tuple[FilterRule, ...] = (), enabled: bool = True) -> PortFilterSpec:
    return PortFilterSpec(name=name, port_id="p1", mac="fa:16:3e:00:00:01", ips=("10.9.0.5",),
                          enabled=enabled, rules=rules)


WEB = FilterRule("ingress", "tcp", 8080, 8080, ("10.9.0.7/32", "10.9.0.8/32"))


def test_an_enabled_filter_is_anti_spoofing_dhcp_rules_then_drop():
    xml = design_port_filter(_spec("f", (WEB, FilterRule("egress"), FilterRule("ingress", "icmp", 8, None))),
                             "0b1e5a3c-1111-4222-8333-944455556666").to_xml()
    root = etree.fromstring(xml)
    assert root.get("chain") == "root" and root.findtext("uuid") == "0b1e5a3c-1111-4222-8333-944455556666"
    [ref] = root.iterfind("filterref")
    assert ref.get("filter") == "clean-traffic"
    assert [(p.get("name"), p.get("value")) for p in ref] == [("IP", "10.9.0.5")]
    assert _rules(root) == [
        ("accept", "out", "udp", {"srcportstart": "68", "dstportstart": "67"}),
        ("accept", "in", "udp", {"srcportstart": "67", "dstportstart": "68"}),
        ("accept", "in", "tcp", {"srcipaddr": "10.9.0.7", "srcipmask": "32",
                                 "dstportstart": "8080", "dstportend": "8080"}),
        ("accept", "in", "tcp", {"srcipaddr": "10.9.0.8", "srcipmask": "32",
                                 "dstportstart": "8080", "dstportend": "8080"}),
        ("accept", "out", "all", {}),
        ("accept", "in", "icmp", {"type": "8"}),
        ("drop", "inout", "all", {}),
    ]
    assert root.findall("rule")[-1].get("priority") == "1000"


def test_a_remote_group_without_members_allows_nothing_and_disabled_filters_nothing():
    root = etree.fromstring(design_port_filter(_spec("f", (FilterRule("ingress", remotes=()),)), "u").to_xml())
    assert [r[2] for r in _rules(root)] == ["udp", "udp", "all"]  # DHCP, DHCP, drop
    root = etree.fromstring(design_port_filter(_spec("f", (WEB,), enabled=False), "u").to_xml())
    assert root.find("filterref") is None and root.find("rule") is None


def test_the_nic_references_its_filter_except_on_the_test_driver():
    iface = LibvirtConfigGuestInterface(source_network="n", mac_addr="fa:16:3e:00:00:01", filter_name="f1")
    parsed = LibvirtConfigGuestInterface.from_xml(iface.to_xml())
    assert parsed == iface
    spec = GuestSpec(instance_uuid=str(uuid.uuid4()), name="instance-1", memory_mb=64, vcpus=1,
                     nics=[NicSpec(mac="fa:16:3e:00:00:01", network="n", filter="f1")])
    real = etree.fromstring(design_guest(spec, "qemu", "x86_64").to_xml())
    assert real.find("devices/interface/filterref").get("filter") == "f1"
    simulated = etree.fromstring(design_guest(spec, "test").to_xml())
    assert simulated.find("devices/interface/filterref") is None


def _dumpxml(name: str) -> etree._Element:
    out = subprocess.run(["virsh", "-c", "qemu:///system", "nwfilter-dumpxml", name],
                         check=True, capture_output=True, text=True).stdout
    return etree.fromstring(out.encode())


@pytest.fixture
async def qemu_driver():
    prefix = f"nlt{secrets.token_hex(3)}-"
    driver = LibvirtDriver("qemu:///system", "qemu")
    try:
        yield driver, prefix
    finally:
        for name in await driver.port_filters(prefix):
            await driver.remove_port_filter(name)
        await driver.close()


@needs_libvirtd
async def test_port_filters_on_qemu_system(qemu_driver):
    driver, prefix = qemu_driver
    name = filter_name(prefix, "p1")
    await driver.set_port_filter(_spec(name, (WEB,)))
    root = _dumpxml(name)
    ref = root.find("filterref")
    assert ref.get("filter") == "clean-traffic"
    assert [(p.get("name"), p.get("value")) for p in ref] == [("IP", "10.9.0.5")]
    rules = _rules(root)
    assert ("accept", "in", "tcp", {"srcipaddr": "10.9.0.7", "srcipmask": "32",
                                    "dstportstart": "8080", "dstportend": "8080"}) in rules
    assert rules[-1] == ("drop", "inout", "all", {})
    first_uuid = root.findtext("uuid")

    # Redefined with one more rule: libvirt shows it, under the same uuid.
    await driver.set_port_filter(_spec(name, (WEB, FilterRule("egress", "udp", 53, 53, ("10.9.0.1/32",)))))
    root = _dumpxml(name)
    assert ("accept", "out", "udp", {"dstipaddr": "10.9.0.1", "dstipmask": "32",
                                     "dstportstart": "53", "dstportend": "53"}) in _rules(root)
    assert root.findtext("uuid") == first_uuid

    other = filter_name(prefix, "p2")
    await driver.set_port_filter(_spec(other, enabled=False))
    assert await driver.port_filters(prefix) == sorted([name, other])
    assert _dumpxml(other).find("rule") is None

    assert await driver.remove_port_filter(name) is True
    assert await driver.remove_port_filter(name) is False
    assert await driver.port_filters(prefix) == [other]


async def test_the_test_driver_has_no_filters():
    driver = LibvirtDriver("test:///default", "test")
    try:
        await driver.set_port_filter(_spec("nlt-x"))
        assert await driver.port_filters("nlt") == []
        assert await driver.remove_port_filter("nlt-x") is False
    finally:
        await driver.close()


# -- the Firewall: filters derived from Postgres -------------------------------------------


@pytest.fixture
async def pool(pg_dsn):
    from novalite import db

    pool = await db.create_pool(await fresh_database(pg_dsn), 2, 10)
    await db.upgrade(pool)
    yield pool
    await pool.close()


async def _port(conn, network_id: uuid.UUID, n: int, group: str, host: str | None = "local") -> str:
    port_id = await conn.fetchval(
        """INSERT INTO ports (id, network_id, project_id, mac_address, fixed_ip, host)
           VALUES (gen_random_uuid(), $1, 'p', $2, $3::inet, $4) RETURNING id::text""",
        network_id, f"fa:16:3e:00:01:{n:02x}", f"10.9.0.{n}", host,
    )
    await conn.execute("INSERT INTO port_security_groups VALUES ($1::uuid, $2::uuid)", port_id, group)
    return port_id


@needs_libvirtd
async def test_firewall_follows_remote_group_members(pool, qemu_driver, tmp_path):
    driver, prefix = qemu_driver
    cfg = Config.model_validate({"state": {"dir": str(tmp_path / "state")}})
    cfg.networking.libvirt_prefix = prefix
    firewall = Firewall(pool, cfg, {"local": driver})
    async with pool.acquire() as conn:
        network_id = await conn.fetchval(
            """INSERT INTO networks (id, name, project_id, libvirt_name) VALUES (gen_random_uuid(), 'n', 'p', $1)
               RETURNING id""", prefix + "n")
        web, clients = str(uuid.uuid4()), str(uuid.uuid4())
        await conn.execute("INSERT INTO security_groups (id, project_id, name) VALUES ($1, 'p', 'web'), "
                           "($2, 'p', 'clients')", uuid.UUID(web), uuid.UUID(clients))
        # web allows tcp 8080 from members of clients
        await conn.execute(
            """INSERT INTO security_group_rules (id, security_group_id, project_id, direction, protocol,
                      port_range_min, port_range_max, remote_group_id)
               VALUES (gen_random_uuid(), $1, 'p', 'ingress', 'tcp', 8080, 8080, $2)""",
            uuid.UUID(web), uuid.UUID(clients))
        server = await _port(conn, network_id, 5, web)
        client = await _port(conn, network_id, 6, clients)
    await firewall.sync_host("local", driver)
    name = filter_name(prefix, server)
    assert await driver.port_filters(prefix) == sorted([name, filter_name(prefix, client)])

    def allowed_sources() -> set[str]:
        return {attrs.get("srcipaddr") for _, direction, proto, attrs in _rules(_dumpxml(name))
                if proto == "tcp" and direction == "in"}

    assert allowed_sources() == {"10.9.0.6"}
    async with pool.acquire() as conn:
        await _port(conn, network_id, 7, clients, host=None)  # a new member, bound nowhere
    await firewall.refresh_groups([clients])
    assert allowed_sources() == {"10.9.0.6", "10.9.0.7"}

    # Port security off: the filter stays, empty.
    async with pool.acquire() as conn:
        await conn.execute("UPDATE ports SET port_security_enabled = false WHERE id = $1::uuid", server)
    await firewall.refresh_ports([server])
    assert _dumpxml(name).find("rule") is None

    # A start after the client port went: its filter is removed, the server's kept.
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM ports WHERE id = $1::uuid", client)
    await firewall.sync_host("local", driver)
    assert await driver.port_filters(prefix) == [name]


# -- the build path: NetworkAPI sets a port's filter before its NIC is plugged ---------------


async def _instance(conn, project_id: str, groups: list[str]) -> str:
    return await conn.fetchval(
        """INSERT INTO instances (uuid, project_id, user_id, display_name, hostname, reservation_id, vm_state,
                                  flavor, vcpus, memory_mb, root_gb, ephemeral_gb, security_groups)
           VALUES (gen_random_uuid(), $1, 'u', 's', 's', 'r-1', 'building', '{}', 1, 64, 1, 0, $2)
           RETURNING uuid::text""",
        project_id, groups,
    )


@needs_libvirtd
async def test_a_build_sets_the_ports_filter_and_its_group_mates_follow(pool, tmp_path):
    prefix = f"nlt{secrets.token_hex(3)}-"
    cfg = Config.model_validate({"state": {"dir": str(tmp_path / "state")}})
    cfg.networks = [NetworkConfig(name="sg", cidr=f"10.253.{100 + secrets.randbelow(100)}.0/24")]
    cfg.networking.libvirt_prefix = prefix
    driver = LibvirtDriver("qemu:///system", "qemu")
    api = NetworkAPI(pool, cfg, {"local": driver})
    await pool.execute("INSERT INTO projects (id, name) VALUES ('p-admin', 'admin'), ('p-demo', 'demo')")
    try:
        await api.ensure_networks()
        async with pool.acquire() as conn:
            await ensure_default_security_group(conn, "p-demo")
            first = await _instance(conn, "p-demo", ["default"])
            second = await _instance(conn, "p-demo", ["default"])
        [a] = await api.allocate_for_instance(first, "p-demo", "auto", "local")
        assert a.nic().filter == filter_name(prefix, a.port_id)
        # Default group: ingress from its members only; the only member so far is the port itself.
        sources = {attrs.get("srcipaddr") for _, d, _, attrs in _rules(_dumpxml(a.filter)) if d == "in"}
        assert sources == {None, a.ip}  # DHCP from anywhere, the rest from the group's members
        [b] = await api.allocate_for_instance(second, "p-demo", "auto", "local")
        assert b.ip in {attrs.get("srcipaddr") for *_, attrs in _rules(_dumpxml(b.filter))}

        async def a_allows_b() -> bool:
            return b.ip in {attrs.get("srcipaddr") for *_, attrs in _rules(_dumpxml(a.filter))}

        for _ in range(50):  # the group mate's filter follows within moments
            if await a_allows_b():
                break
            await asyncio.sleep(0.1)
        assert await a_allows_b()
        await api.deallocate_for_instance(second)
        await api.firewall.close()
        assert await driver.port_filters(prefix) == [a.filter]
        assert not await a_allows_b()
        await api.deallocate_for_instance(first)
        assert await driver.port_filters(prefix) == []
    finally:
        await api.firewall.close()
        for name in await driver.port_filters(prefix):
            await driver.remove_port_filter(name)
        await driver.undefine_network(prefix + "sg")
        await driver.close()
