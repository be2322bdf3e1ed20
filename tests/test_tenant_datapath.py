"""Tenant networks on the hosts: a bridge each, DHCP in a namespace, made on first use.

On this machine's qemu:///system two tenant networks of two projects share one CIDR:
each gets its own bridge (no host address, so libvirt does not refuse the overlap)
and a namespace whose dnsmasq serves the port's fixed lease; all of it goes with the
last port. A new network service (a restart) adopts the running dnsmasq and removes
a stale namespace. The same lifecycle on a simulated host (test driver).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import uuid
from pathlib import Path

import libvirt
import pytest
from conftest import fresh_database
from lxml import etree
from test_networks import _qemu_system_available

from novalite.config import Config, NetworkConfig
from novalite.network import NetworkAPI
from novalite.virt.libvirt import LibvirtDriver
from novalite.virt.libvirt.metadata import prune_redirects
from novalite.virt.testnode import write_test_node

CIDR = "10.0.0.0/24"
DHCP_ADDRESS = "10.0.0.2"


def _sh(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


@pytest.fixture
async def pool(pg_dsn):
    from novalite import db

    pool = await db.create_pool(await fresh_database(pg_dsn), 2, 20)
    await db.upgrade(pool)
    await pool.execute("INSERT INTO projects (id, name) VALUES ('p-admin', 'admin'), ('p-a', 'alpha'), "
                       "('p-b', 'beta')")
    yield pool
    await pool.close()


@pytest.fixture
def prefix():
    """A prefix of this test's own; everything named with it is removed afterwards, failed or not."""
    prefix = f"nlt{secrets.token_hex(3)}-"
    yield prefix
    conn = libvirt.open("qemu:///system") if _qemu_system_available() else None
    if conn is not None:
        for net in conn.listAllNetworks(0):
            if net.name().startswith(prefix):
                if net.isActive():
                    net.destroy()
                net.undefine()
        conn.close()
    prune_redirects(prefix, set())
    for ns in _sh("ip", "netns", "list").split("\n"):
        name = ns.split(" ")[0]
        if name.startswith(prefix):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True,
                                  check=False).stdout.split()
            for pid in pids:
                subprocess.run(["kill", pid], check=False)
            subprocess.run(["ip", "netns", "del", name], check=False)


def _config(tmp_path: Path, prefix: str) -> Config:
    cfg = Config.model_validate({"state": {"dir": str(tmp_path / "state")}})
    # One configured network on a CIDR of its own (it is made on every host at start).
    cfg.networks = [NetworkConfig(name="cfg", cidr=f"10.252.{secrets.randbelow(250)}.0/29")]
    cfg.networking.libvirt_prefix = prefix
    return cfg


async def _tenant_network(pool, prefix: str, project: str, *, dhcp: bool = True) -> str:
    """A tenant network as the network API makes it: rows with config_name NULL, a subnet, a DHCP port."""
    net_id, subnet_id = uuid.uuid4(), uuid.uuid4()
    await pool.execute(
        """INSERT INTO networks (id, name, config_name, project_id, shared, libvirt_name)
           VALUES ($1, 'lab', NULL, $2, false, $3)""",
        net_id, project, f"{prefix}n{net_id.hex[:12]}",
    )
    await pool.execute(
        """INSERT INTO subnets (id, network_id, project_id, cidr, gateway_ip, pool_start, pool_end, enable_dhcp,
                                dns_nameservers, host_routes, allocation_pools)
           VALUES ($1, $2, $3, $4, '10.0.0.1', '10.0.0.2', '10.0.0.254', $5, '{10.0.0.53}',
                   '[{"destination": "192.168.50.0/24", "nexthop": "10.0.0.9"}]',
                   '[{"start": "10.0.0.2", "end": "10.0.0.254"}]')""",
        subnet_id, net_id, project, CIDR, dhcp,
    )
    if dhcp:
        await pool.execute(
            """INSERT INTO ports (id, network_id, subnet_id, project_id, mac_address, fixed_ip, device_id,
                                  device_owner, status)
               VALUES ($1, $2, $3, $4, $5, $6, $7, 'network:dhcp', 'ACTIVE')""",
            uuid.uuid4(), net_id, subnet_id, project, "fa:16:3e:" + ":".join(f"{b:02x}" for b in
                                                                          secrets.token_bytes(3)),
            DHCP_ADDRESS, f"dhcp-{net_id}",
        )
    return str(net_id)


def _net_xml(name: str) -> etree._Element | None:
    proc = subprocess.run(["virsh", "-c", "qemu:///system", "net-dumpxml", name], capture_output=True, text=True,
                          check=False)
    return etree.fromstring(proc.stdout.encode()) if proc.returncode == 0 else None


def _active_networks() -> set[str]:
    return set(_sh("virsh", "-c", "qemu:///system", "net-list", "--name").split())


def _namespaces() -> set[str]:
    return {line.split(" ")[0] for line in _sh("ip", "netns", "list").splitlines() if line}


def _dnsmasq_of(namespace: str) -> tuple[int, list[str]] | None:
    """The dnsmasq process running in ``namespace`` and its command line, as `ps` would show it."""
    for pid in subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True,
                              check=False).stdout.split():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        if Path(cmdline[0]).name == "dnsmasq":
            return int(pid), cmdline
    return None


def _hostsfile(cmdline: list[str]) -> str:
    [path] = [a.split("=", 1)[1] for a in cmdline if a.startswith("--dhcp-hostsfile=")]
    return Path(path).read_text()


@pytest.mark.skipif(not _qemu_system_available() or shutil.which("dnsmasq") is None,
                    reason="needs libvirtd (qemu:///system) and dnsmasq")
async def test_overlapping_tenant_networks_get_own_bridges_and_dhcp_namespaces(pool, tmp_path, prefix):
    cfg = _config(tmp_path, prefix)
    driver = LibvirtDriver("qemu:///system", "qemu", state_dir=tmp_path / "state")
    api = NetworkAPI(pool, cfg, {"local": driver})
    try:
        await api.ensure_networks()
        nets = [await _tenant_network(pool, prefix, "p-a"), await _tenant_network(pool, prefix, "p-b")]
        instances = [str(uuid.uuid4()), str(uuid.uuid4())]
        ports = [
            (await api.allocate_for_instance(instances[i], project, [{"uuid": nets[i]}], "local"))[0]
            for i, project in enumerate(("p-a", "p-b"))
        ]
        names = [p.network_name for p in ports]
        assert set(names) <= _active_networks()
        xmls = [_net_xml(n) for n in names]
        bridges = {x.find("bridge").get("name") for x in xmls}
        assert len(bridges) == 2 and all(len(b) <= 15 for b in bridges)
        assert all(x.find("ip") is None and x.find("forward") is None for x in xmls)  # no host route
        for net_id, port in zip(nets, ports, strict=True):
            namespace = f"{prefix}dhcp-{net_id}"
            assert namespace in _namespaces()
            addrs = _sh("ip", "netns", "exec", namespace, "ip", "-4", "addr")
            assert f"inet {DHCP_ADDRESS}/24" in addrs
            pid, cmdline = _dnsmasq_of(namespace)
            assert "--port=0" in cmdline
            assert "--dhcp-option=option:router,10.0.0.1" in cmdline
            assert "--dhcp-option=option:dns-server,10.0.0.53" in cmdline
            # The subnet's route, the metadata service in the namespace, then the default route.
            routes = "192.168.50.0/24,10.0.0.9,169.254.169.254/32,10.0.0.2,0.0.0.0/0,10.0.0.1"
            assert f"--dhcp-option=option:classless-static-route,{routes}" in cmdline
            assert f"--dhcp-option=249,{routes}" in cmdline
            assert f"{port.mac},{port.ip}" in _hostsfile(cmdline).splitlines()
        assert ports[0].ip == ports[1].ip == "10.0.0.3"  # the same address in both projects

        # A second port on the first network: the same bridge and dnsmasq, one more lease.
        extra = str(uuid.uuid4())
        [second] = await api.allocate_for_instance(extra, "p-a", [{"uuid": nets[0]}], "local")
        pid, cmdline = _dnsmasq_of(f"{prefix}dhcp-{nets[0]}")
        assert f"{second.mac},{second.ip}" in _hostsfile(cmdline).splitlines()
        await api.deallocate_for_instance(extra)
        assert names[0] in _active_networks()
        assert f"{second.mac}" not in _hostsfile(cmdline)

        for instance in instances:
            await api.deallocate_for_instance(instance)
        assert not set(names) & set(_sh("virsh", "-c", "qemu:///system", "net-list", "--all", "--name").split())
        assert not {f"{prefix}dhcp-{n}" for n in nets} & _namespaces()
        assert not Path(f"/proc/{pid}").exists()
    finally:
        await driver.close()


@pytest.mark.skipif(not _qemu_system_available() or shutil.which("dnsmasq") is None,
                    reason="needs libvirtd (qemu:///system) and dnsmasq")
async def test_restart_adopts_dnsmasq_and_removes_stale_namespace(pool, tmp_path, prefix):
    cfg = _config(tmp_path, prefix)
    driver = LibvirtDriver("qemu:///system", "qemu", state_dir=tmp_path / "state")
    again = LibvirtDriver("qemu:///system", "qemu", state_dir=tmp_path / "state")
    try:
        api = NetworkAPI(pool, cfg, {"local": driver})
        await api.ensure_networks()
        net = await _tenant_network(pool, prefix, "p-a")
        [port] = await api.allocate_for_instance(str(uuid.uuid4()), "p-a", [{"uuid": net}], "local")
        namespace = f"{prefix}dhcp-{net}"
        pid, _ = _dnsmasq_of(namespace)
        stale = f"{prefix}dhcp-{uuid.uuid4()}"
        _sh("ip", "netns", "add", stale)

        restarted = NetworkAPI(pool, cfg, {"local": again})
        await restarted.ensure_networks()
        assert stale not in _namespaces()
        assert namespace in _namespaces() and port.network_name in _active_networks()
        adopted, cmdline = _dnsmasq_of(namespace)
        assert adopted == pid
        assert _hostsfile(cmdline).splitlines() == [f"{port.mac},{port.ip}"]
        assert await again.dhcp_hosts(port.network_name) == {port.mac: port.ip}

        # The subnet's DNS servers change: dnsmasq follows, the lease stays.
        await pool.execute("UPDATE subnets SET dns_nameservers = '{10.0.0.54}' WHERE network_id = $1",
                           uuid.UUID(net))
        await restarted.network_changed(net)
        _, cmdline = _dnsmasq_of(namespace)
        assert "--dhcp-option=option:dns-server,10.0.0.54" in cmdline
        assert _hostsfile(cmdline).splitlines() == [f"{port.mac},{port.ip}"]
    finally:
        await driver.close()
        await again.close()


@pytest.mark.skipif(not _qemu_system_available(), reason="needs libvirtd (qemu:///system)")
async def test_tenant_network_without_dhcp_is_a_bare_bridge(pool, tmp_path, prefix):
    cfg = _config(tmp_path, prefix)
    driver = LibvirtDriver("qemu:///system", "qemu", state_dir=tmp_path / "state")
    api = NetworkAPI(pool, cfg, {"local": driver})
    try:
        net = await _tenant_network(pool, prefix, "p-a", dhcp=False)
        instance = str(uuid.uuid4())
        [port] = await api.allocate_for_instance(instance, "p-a", [{"uuid": net}], "local")
        assert port.network_name in _active_networks()
        assert f"{prefix}dhcp-{net}" not in _namespaces()
        await api.deallocate_for_instance(instance)
        assert port.network_name not in _active_networks()
    finally:
        await driver.close()


async def test_remote_host_refuses_tenant_network(pool, tmp_path, prefix):
    driver = LibvirtDriver("qemu+ssh://nowhere.invalid/system", "qemu", state_dir=tmp_path)
    api = NetworkAPI(pool, _config(tmp_path, prefix), {"far": driver})
    net = await _tenant_network(pool, prefix, "p-a")
    instance = str(uuid.uuid4())
    with pytest.raises(Exception, match="remote hosts have none yet"):
        await api.allocate_for_instance(instance, "p-a", [{"uuid": net}], "far")
    assert await pool.fetchval("SELECT count(*) FROM ports WHERE device_id = $1", instance) == 0
    await driver.close()


async def test_simulated_host_keeps_tenant_networks_in_its_connection(pool, tmp_path, prefix):
    uri = write_test_node(tmp_path / "sim1.xml", "sim1", 4, 8192)
    cfg = _config(tmp_path, prefix)
    driver = LibvirtDriver(uri, "test", state_dir=tmp_path / "state")
    try:
        api = NetworkAPI(pool, cfg, {"sim1": driver})
        await api.ensure_networks()
        nets = [await _tenant_network(pool, prefix, "p-a"), await _tenant_network(pool, prefix, "p-b")]
        instances = [str(uuid.uuid4()), str(uuid.uuid4())]
        ports = await asyncio.gather(*(
            api.allocate_for_instance(instances[i], project, [{"uuid": nets[i]}], "sim1")
            for i, project in enumerate(("p-a", "p-b"))
        ))
        names = [p[0].network_name for p in ports]
        xmls = [etree.fromstring((await driver.network_xml(n)).encode()) for n in names]
        assert len({x.find("bridge").get("name") for x in xmls}) == 2
        for [port], name in zip(ports, names, strict=True):
            assert await driver.dhcp_hosts(name) == {port.mac: port.ip}
        assert not {f"{prefix}dhcp-{n}" for n in nets} & _namespaces()  # no namespace for a simulated host

        # A restart: the bound network stays with its entries, a tenant network with no port goes.
        stale = f"{prefix}n{uuid.uuid4().hex[:12]}"
        await driver.host.call(lambda: driver.host.connection().networkCreateXML(
            f"<network><name>{stale}</name><bridge name='nlbstale{secrets.token_hex(2)}'/></network>"))
        await api.deallocate_for_instance(instances[1])
        assert await driver.network_xml(names[1]) is None
        restarted = NetworkAPI(pool, cfg, {"sim1": driver})
        await restarted.ensure_networks()
        assert await driver.network_xml(stale) is None
        assert await driver.dhcp_hosts(names[0]) == {ports[0][0].mac: ports[0][0].ip}
        await restarted.deallocate_for_instance(instances[0])
        assert await driver.network_xml(names[0]) is None
    finally:
        await driver.close()


async def test_concurrent_boots_and_deletes_on_one_tenant_network(pool, tmp_path, prefix):
    """Ports come and go concurrently: the network is on the host exactly while one is bound there."""
    uri = write_test_node(tmp_path / "sim1.xml", "sim1", 4, 8192)
    driver = LibvirtDriver(uri, "test", state_dir=tmp_path / "state")
    try:
        api = NetworkAPI(pool, _config(tmp_path, prefix), {"sim1": driver})
        net = await _tenant_network(pool, prefix, "p-a")
        first = [str(uuid.uuid4()) for _ in range(6)]
        second = [str(uuid.uuid4()) for _ in range(6)]
        await asyncio.gather(*(api.allocate_for_instance(u, "p-a", [{"uuid": net}], "sim1") for u in first))
        results = await asyncio.gather(
            *(api.deallocate_for_instance(u) for u in first),
            *(api.allocate_for_instance(u, "p-a", [{"uuid": net}], "sim1") for u in second),
        )
        name = f"{prefix}n{uuid.UUID(net).hex[:12]}"
        ports = [p for r in results[len(first):] for p in r]
        assert await driver.dhcp_hosts(name) == {p.mac: p.ip for p in ports}
        await asyncio.gather(*(api.deallocate_for_instance(u) for u in second))
        assert await driver.network_xml(name) is None
    finally:
        await driver.close()
