"""A real TCG guest with no config drive reads its metadata from 169.254.169.254.

On a configured network the request goes guest → the network's gateway (a DHCP classless static
route) → the DNAT rule of the bridge → novalite's listener on the gateway. On a tenant network
(made through the Neutron API) it goes guest → the DHCP port's address (the same kind of route)
→ the socket novalite opened inside the network's DHCP namespace on 169.254.169.254:80, with no
rule on the host. No traffic from the host to the guest, nothing off the machine. The 404 of an
unknown source address is tests/test_metadata.py's.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess

import libvirt
import pytest
from conftest import wait_for_status
from test_guest_e2e import qemu_cloud, test_image, wait_console  # noqa: F401 (test_image: a fixture)
from test_security_groups_e2e import neutron, remove_leftovers, tenant_network
from test_tenant_metadata import ask_from_namespace

pytestmark = pytest.mark.qemu

SCRIPT = "#!/bin/sh\necho script-from-metadata\n"


def metadata_rules(prefix: str) -> list[str]:
    out = subprocess.run(["iptables", "-w", "-t", "nat", "-S", "PREROUTING"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if f'"{prefix}' in line and ' metadata"' in line]


async def boot_without_config_drive(cloud, name: str, **server) -> str:
    """A test guest with keypair ``mk``, the script as user_data and no config drive; its id, ACTIVE."""
    status, kp, _ = await cloud.compute("POST", "/os-keypairs", json_body={"keypair": {"name": "mk"}})
    assert status == 200, kp
    status, body, _ = await cloud.compute("POST", "/servers", version="2.56", json_body={"server": {
        "name": name, "imageRef": cloud.image_ids["ami"], "flavorRef": "1", "key_name": "mk",
        "user_data": base64.b64encode(SCRIPT.encode()).decode(), "config_drive": False, **server,
    }})
    assert status == 202, body
    server_id = body["server"]["id"]
    server = await wait_for_status(cloud, server_id, {"ACTIVE", "ERROR"}, timeout=120)
    assert server["status"] == "ACTIVE", server.get("fault")
    return server_id


async def proves_metadata_read(cloud, server_id: str, name: str) -> None:
    """The guest's console shows the metadata service's documents, as from a config drive."""
    text = await wait_console(cloud, server_id, "NOVALITE-GUEST: script_exit=", timeout=120)
    assert "NOVALITE-GUEST: config_drive=none" in text
    assert "NOVALITE-GUEST: metadata_service=169.254.169.254" in text
    assert f"NOVALITE-GUEST: uuid={server_id}" in text
    assert f"NOVALITE-GUEST: hostname={name}" in text
    assert "NOVALITE-GUEST: user_data=#!/bin/sh" in text
    assert '"mk"' in text  # public_keys
    assert "NOVALITE-GUEST: script: script-from-metadata" in text
    assert "NOVALITE-GUEST: script_exit=0" in text


async def test_guest_without_config_drive_reads_the_metadata_service(pg_dsn, test_image):  # noqa: F811
    async with qemu_cloud(pg_dsn, test_image, prefix="nlmeta") as cloud:
        prefix = cloud.config.networking.libvirt_prefix
        assert not cloud.config.compute.force_config_drive
        (rule,) = metadata_rules(prefix)
        assert "169.254.169.254/32" in rule and "--dport 80" in rule and ":8775" in rule
        server_id = await boot_without_config_drive(cloud, "meta-guest", networks="auto")
        await proves_metadata_read(cloud, server_id, "meta-guest")
        text = await wait_console(cloud, server_id, "NOVALITE-GUEST: script_exit=")
        # Nova's SMBIOS, seen from inside and in the domain
        assert "NOVALITE-GUEST: smbios product=OpenStack Nova" in text
        conn = libvirt.open("qemu:///system")
        try:
            xml = conn.lookupByUUIDString(server_id).XMLDesc(0)
            net_xml = conn.networkLookupByName(f"{prefix}lab").XMLDesc(0)
        finally:
            conn.close()
        assert "<entry name='product'>OpenStack Nova</entry>" in xml and "<smbios mode='sysinfo'/>" in xml
        assert "classless-static-route,169.254.169.254/32," in net_xml
        status, _, _ = await cloud.compute("DELETE", f"/servers/{server_id}")
        assert status == 204
        await wait_for_status(cloud, server_id, "DELETED", timeout=60)
    assert metadata_rules(prefix) == []


async def test_guest_on_a_tenant_network_reads_the_metadata_service_in_its_dhcp_namespace(
        pg_dsn, test_image):  # noqa: F811
    async with qemu_cloud(pg_dsn, test_image, prefix="nltmeta") as cloud:
        prefix = cloud.config.networking.libvirt_prefix
        try:
            net_id = await tenant_network(cloud)
            namespace = f"{prefix}dhcp-{net_id}"
            server_id = await boot_without_config_drive(cloud, "tenant-meta", networks=[{"uuid": net_id}])
            await proves_metadata_read(cloud, server_id, "tenant-meta")
            # Served in the namespace, not through a rule on the host: only the configured network has one.
            assert [r for r in metadata_rules(prefix) if "lab metadata" not in r] == []
            (dhcp,) = (await neutron(cloud, "GET", f"/ports?network_id={net_id}&device_owner=network:dhcp"))["ports"]
            dhcp_ip = dhcp["fixed_ips"][0]["ip_address"]
            assert await ask_from_namespace(namespace, dhcp_ip) == "404"  # the namespace's own address
            status, _, _ = await cloud.compute("DELETE", f"/servers/{server_id}")
            assert status == 204
            await wait_for_status(cloud, server_id, "DELETED", timeout=60)
            names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
            assert namespace not in names  # gone with the network's last port on the host
        finally:
            await asyncio.to_thread(remove_leftovers, prefix)
