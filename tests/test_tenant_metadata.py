"""The metadata service of a tenant network, served inside its DHCP namespace.

Without a guest: a tenant network gets a port on this machine's qemu:///system, so its DHCP
namespace is made; the metadata service then listens on 169.254.169.254:80 inside that
namespace (not on the host), and a request made from inside the namespace (its own traffic on
its own veth) from the DHCP port's address gets 404, that address being no instance's. A
restart serves it again; the last port's removal closes it with the namespace. The guest's own
reading is tests/test_metadata_e2e.py's tenant case.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid

import pytest
from test_networks import _qemu_system_available
from test_tenant_datapath import (  # noqa: F401 (fixtures)
    DHCP_ADDRESS,
    _config,
    _dnsmasq_of,
    _namespaces,
    _sh,
    _tenant_network,
    pool,
    prefix,
)

from novalite.api.metadata import MetadataListeners
from novalite.compute.metadata import MetadataService
from novalite.network import NetworkAPI
from novalite.virt.libvirt import LibvirtDriver

pytestmark = pytest.mark.skipif(not _qemu_system_available() or shutil.which("dnsmasq") is None,
                                reason="needs libvirtd (qemu:///system) and dnsmasq")

# From inside the namespace: GET meta_data.json from a given source address; prints the status.
ASK = """
import http.client, sys
c = http.client.HTTPConnection("169.254.169.254", 80, timeout=5, source_address=(sys.argv[1], 0))
c.request("GET", "/openstack/latest/meta_data.json")
print(c.getresponse().status)
"""


async def ask_from_namespace(namespace: str, source: str) -> str:
    """The status the metadata service answers a request made inside ``namespace`` from ``source``
    (the event loop serving it keeps running meanwhile)."""
    proc = await asyncio.create_subprocess_exec("ip", "netns", "exec", namespace, "python3", "-c", ASK, source,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return out.decode().strip() or err.decode().strip().splitlines()[-1]


def listening(namespace: str | None) -> list[str]:
    """``ss``'s listening TCP sockets on port 80, in a namespace or on the host, with their inodes."""
    cmd = ["ss", "-Hltne", "sport", "= :80"]
    return _sh(*(["ip", "netns", "exec", namespace, *cmd] if namespace else cmd)).splitlines()


def held_sockets() -> set[str]:
    """The socket inodes this process holds open."""
    links = (os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
             if os.path.exists(f"/proc/self/fd/{fd}"))
    return {link[len("socket:["):-1] for link in links if link.startswith("socket:[")}


async def serving(pool, cfg, driver) -> tuple[NetworkAPI, MetadataListeners]:  # noqa: F811
    """The network service and the metadata listeners as ``novalite serve`` wires them."""
    api = NetworkAPI(pool, cfg, {"local": driver})
    await api.ensure_networks()
    listeners = MetadataListeners(MetadataService(pool, cfg, api))
    await api.watch_tenant_metadata(listeners.serve_socket)
    return api, listeners


async def test_tenant_network_serves_metadata_in_its_dhcp_namespace(pool, tmp_path, prefix):  # noqa: F811
    cfg = _config(tmp_path, prefix)
    driver = LibvirtDriver("qemu:///system", "qemu", state_dir=tmp_path / "state")
    listeners = restarted = None
    try:
        api, listeners = await serving(pool, cfg, driver)
        net = await _tenant_network(pool, prefix, "p-a")
        namespace = f"{prefix}dhcp-{net}"
        instance = str(uuid.uuid4())
        [port] = await api.allocate_for_instance(instance, "p-a", [{"uuid": net}], "local")

        # The guests' DHCP route to it, via the DHCP port's address (option 121 and 249).
        _, cmdline = _dnsmasq_of(namespace)
        assert f"--dhcp-option=option:classless-static-route,192.168.50.0/24,10.0.0.9,169.254.169.254/32," \
               f"{DHCP_ADDRESS},0.0.0.0/0,10.0.0.1" in cmdline
        assert any(a.startswith("--dhcp-option=249,") and f"169.254.169.254/32,{DHCP_ADDRESS}" in a
                   for a in cmdline)
        # The listener lives in the namespace, on the metadata address there; none on the host.
        assert "inet 169.254.169.254/32" in _sh("ip", "netns", "exec", namespace, "ip", "-4", "addr", "show", "lo")
        [sock] = listening(namespace)
        assert "169.254.169.254:80" in sock
        assert not any("169.254.169.254:80" in line for line in listening(None))
        assert await ask_from_namespace(namespace, DHCP_ADDRESS) == "404"  # the namespace's own address
        assert await ask_from_namespace(namespace, "169.254.169.254") == "404"
        inode = sock.split("ino:")[1].split()[0]
        assert inode in held_sockets()

        # A restart: the namespace and its dnsmasq are adopted, the service listens again.
        await listeners.close()
        assert listening(namespace) == []
        restarted, listeners = await serving(pool, cfg, driver)
        assert await ask_from_namespace(namespace, DHCP_ADDRESS) == "404"
        # The subnet changes (DNS servers): the network is made again, the service with it.
        await pool.execute("UPDATE subnets SET dns_nameservers = '{10.0.0.54}' WHERE network_id = $1",
                           uuid.UUID(net))
        await restarted.network_changed(net)
        assert await ask_from_namespace(namespace, DHCP_ADDRESS) == "404"
        [sock] = listening(namespace)
        inode = sock.split("ino:")[1].split()[0]

        # The last port goes: the namespace goes, and the socket that kept it is closed.
        await restarted.deallocate_for_instance(instance)
        assert namespace not in _namespaces()
        assert inode not in held_sockets()
        assert port.network_name not in _sh("virsh", "-c", "qemu:///system", "net-list", "--all", "--name")
    finally:
        if listeners is not None:
            await listeners.close()
        await driver.close()
