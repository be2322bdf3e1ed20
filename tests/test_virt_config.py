"""libvirt config objects: XML out, XML back in, nothing lost."""

from __future__ import annotations

import pytest
from lxml import etree

from novalite.virt.driver import NetworkSpec, StoragePoolSpec
from novalite.virt.libvirt.config import (
    NOVA_NS,
    LibvirtConfigGuest,
    LibvirtConfigGuestConsole,
    LibvirtConfigGuestDisk,
    LibvirtConfigGuestInterface,
    LibvirtConfigGuestMetaNovaInstance,
    LibvirtConfigGuestSerial,
    LibvirtConfigGuestSysinfo,
    LibvirtConfigNetwork,
    LibvirtConfigNetworkDHCPHost,
    LibvirtConfigStoragePool,
    LibvirtConfigStorageVolume,
)
from novalite.virt.libvirt.network import design_network
from novalite.virt.libvirt.storage import design_pool, design_volume

UUID = "0b8a2a3e-7f5c-4a43-9f0e-3d5a9d0c1e22"


def _meta() -> LibvirtConfigGuestMetaNovaInstance:
    return LibvirtConfigGuestMetaNovaInstance(
        uuid=UUID,
        name="web-1",
        creation_time="2024-05-01 12:00:00",
        flavor_name="m1.small",
        flavor_memory_mb=2048,
        flavor_vcpus=1,
        flavor_disk_gb=20,
        owner_user_id="u-1",
        owner_user_name="alice",
        owner_project_id="p-1",
        owner_project_name="demo",
    )


def _guest() -> LibvirtConfigGuest:
    return LibvirtConfigGuest(
        virt_type="qemu",
        name="instance-0b8a2a3e",
        uuid=UUID,
        memory=2048 * 1024,
        vcpus=2,
        metadata=[_meta()],
        os_arch="x86_64",
        os_machine="pc",
        os_kernel="/var/lib/novalite/k",
        os_initrd="/var/lib/novalite/r",
        os_cmdline="console=ttyS0 root=/dev/vda",
        os_smbios="sysinfo",
        sysinfo=LibvirtConfigGuestSysinfo(system_manufacturer="OpenStack Foundation",
                                          system_product="OpenStack Nova", system_uuid=UUID),
        features=["acpi", "apic"],
        cpu_mode="host-model",
        clock_offset="utc",
        on_poweroff="destroy",
        on_reboot="restart",
        on_crash="destroy",
        devices=[
            LibvirtConfigGuestDisk(source_path="/d/disk", driver_name="qemu",
                                   driver_format="qcow2", target_dev="vda", target_bus="virtio"),
            LibvirtConfigGuestDisk(source_device="cdrom", source_path="/d/cfg.iso",
                                   driver_format="raw", target_dev="sda", target_bus="sata",
                                   readonly=True),
            LibvirtConfigGuestInterface(net_type="network", source_network="default",
                                        mac_addr="fa:16:3e:00:00:01", model="virtio"),
            LibvirtConfigGuestInterface(net_type="user", mac_addr="fa:16:3e:00:00:02",
                                        model="e1000"),
            LibvirtConfigGuestSerial(char_type="pty", log_file="/d/console.log",
                                     log_append=False, target_port=0),
            LibvirtConfigGuestConsole(char_type="pty", target_type="serial", target_port=0),
        ],
    )


def _network() -> LibvirtConfigNetwork:
    return LibvirtConfigNetwork(
        name="novalite-private", uuid=UUID, bridge="virbr-nl0", bridge_stp=True, bridge_delay=0, mtu=1450,
        ip_address="10.20.0.1", ip_netmask="255.255.255.0", dhcp_start="10.20.0.2", dhcp_end="10.20.0.254",
        dhcp_hosts=[LibvirtConfigNetworkDHCPHost(mac="fa:16:3e:00:00:01", ip="10.20.0.5"),
                    LibvirtConfigNetworkDHCPHost(mac="fa:16:3e:00:00:02", ip="10.20.0.6", name="vm-2")],
    )


def test_guest_round_trip() -> None:
    guest = _guest()
    xml = guest.to_xml()
    back = LibvirtConfigGuest.from_xml(xml)
    assert back == guest
    assert back.to_xml() == xml


@pytest.mark.parametrize(
    "device",
    [
        LibvirtConfigGuestDisk(source_type="block", source_path="/dev/vg/lv", target_dev="vdb",
                               target_bus="virtio", driver_cache="none", driver_name="qemu"),
        LibvirtConfigGuestInterface(net_type="bridge", source_bridge="br0", target_dev="tap1"),
        LibvirtConfigGuestSerial(char_type="file", source_path="/d/serial.out"),
        LibvirtConfigGuestConsole(char_type="pty"),
        _meta(),
        LibvirtConfigGuestMetaNovaInstance(name="only-a-name"),
        _network(),
        LibvirtConfigNetwork(name="nat", forward_mode="nat", bridge="virbr0"),
        LibvirtConfigNetwork(name="bare"),
        LibvirtConfigNetwork(name="routes", bridge="virbr9", ip_address="10.9.0.1", ip_netmask="255.255.255.0",
                             dnsmasq_options=["dhcp-option=option:classless-static-route,169.254.169.254/32,10.9.0.1"]),
        LibvirtConfigNetworkDHCPHost(mac="fa:16:3e:00:00:01", ip="10.20.0.5"),
        LibvirtConfigNetworkDHCPHost(mac="fa:16:3e:00:00:01"),
        LibvirtConfigStoragePool(pool_type="dir", name="novalite-sim1", target_path="/srv/v", target_mode="0755"),
        LibvirtConfigStoragePool(pool_type="logical", name="novalite-lvm", source_name="vg0", source_format="lvm2",
                                 target_path="/dev/vg0"),
        LibvirtConfigStorageVolume(name="volume-1", capacity=2 * 1024**3, allocation=0, target_format="qcow2",
                                   target_mode="0644"),
        LibvirtConfigStorageVolume(name="raw-1", capacity=1024**3, target_path="/dev/vg0/raw-1"),
    ],
    ids=lambda d: type(d).__name__,
)
def test_device_round_trip(device: object) -> None:
    xml = device.to_xml()  # type: ignore[attr-defined]
    back = type(device).from_xml(xml)  # type: ignore[attr-defined]
    assert back == device
    assert back.to_xml() == xml


def test_guest_xml_shape() -> None:
    root = _guest().format_dom()
    assert root.get("type") == "qemu"
    assert root.findtext("memory") == str(2048 * 1024)
    assert root.find("memory").get("unit") == "KiB"
    assert root.find("os/type").get("arch") == "x86_64"
    assert root.find("os/smbios").get("mode") == "sysinfo"
    assert root.find("sysinfo").get("type") == "smbios"
    assert root.findtext("sysinfo/system/entry[@name='product']") == "OpenStack Nova"
    serial = root.find("devices/serial")
    assert serial.get("type") == "pty"
    assert serial.find("log").attrib == {"file": "/d/console.log", "append": "off"}
    assert root.find("devices/console/target").get("type") == "serial"
    assert root.find("devices/disk[@device='cdrom']/readonly") is not None
    assert root.find("devices/interface[@type='user']/source") is None
    inst = root.find(f"metadata/{{{NOVA_NS}}}instance")
    assert inst is not None and inst.prefix == "nova"
    assert inst.find(f"{{{NOVA_NS}}}flavor").get("name") == "m1.small"
    assert inst.find(f"{{{NOVA_NS}}}owner/{{{NOVA_NS}}}project").get("uuid") == "p-1"


def test_parse_tolerates_libvirt_additions() -> None:
    """XML as libvirt returns it (extra elements, other units) still parses."""
    xml = f"""
    <domain type='qemu' id='3'>
      <name>i-1</name><uuid>{UUID}</uuid>
      <metadata><other:x xmlns:other='urn:other'/></metadata>
      <memory unit='MiB'>512</memory><currentMemory unit='KiB'>524288</currentMemory>
      <vcpu placement='static'>1</vcpu>
      <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>
      <devices>
        <emulator>/usr/bin/qemu-system-x86_64</emulator>
        <disk type='file' device='disk'><source file='/d'/><target dev='vda' bus='virtio'/>
          <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/></disk>
        <controller type='usb' index='0'/>
        <serial type='pty'><source path='/dev/pts/4'/><target type='isa-serial' port='0'/></serial>
      </devices>
    </domain>"""
    guest = LibvirtConfigGuest.from_xml(xml)
    assert guest.memory == 512 * 1024
    assert guest.metadata == []
    assert guest.os_machine == "pc-i440fx-7.2"
    assert guest.os_boot_dev == ["hd"]
    assert [type(d) for d in guest.devices] == [LibvirtConfigGuestDisk, LibvirtConfigGuestSerial]
    assert guest.devices[1].source_path == "/dev/pts/4"


def test_parse_rejects_wrong_root() -> None:
    with pytest.raises(ValueError):
        LibvirtConfigGuestDisk.parse_dom(etree.fromstring("<interface type='user'/>"))


# ------------------------------------------------------------------ networks and storage


def test_designed_network_is_the_isolated_network_libvirt_got_before() -> None:
    """The XML of the raw etree builder this replaced, element for element."""
    net = NetworkSpec(name="nl-private", uuid=UUID, cidr="10.20.0.0/24", gateway="10.20.0.1",
                      dhcp_start="10.20.0.2", dhcp_end="10.20.0.254", mtu=1500)
    xml = design_network(net, "virbr-nl3", [("fa:16:3e:00:00:01", "10.20.0.9")]).to_xml(pretty=False)
    assert xml == (
        f'<network><name>nl-private</name><uuid>{UUID}</uuid>'
        '<bridge name="virbr-nl3" stp="on" delay="0"/><mtu size="1500"/>'
        '<ip address="10.20.0.1" netmask="255.255.255.0"><dhcp><range start="10.20.0.2" end="10.20.0.254"/>'
        '<host mac="fa:16:3e:00:00:01" ip="10.20.0.9"/></dhcp></ip></network>'
    )
    assert LibvirtConfigNetworkDHCPHost(mac="fa:16:3e:00:00:01").to_xml(pretty=False) == \
        '<host mac="fa:16:3e:00:00:01"/>'


def test_designed_pools_and_volumes_are_what_libvirt_got_before() -> None:
    assert design_pool(StoragePoolSpec("p", "dir", "/srv/v")).to_xml(pretty=False) == (
        '<pool type="dir"><name>p</name><target><path>/srv/v</path>'
        '<permissions><mode>0755</mode></permissions></target></pool>'
    )
    assert design_pool(StoragePoolSpec("p", "logical", "/dev/vg0", "vg0")).to_xml(pretty=False) == (
        '<pool type="logical"><name>p</name><source><name>vg0</name><format type="lvm2"/></source>'
        '<target><path>/dev/vg0</path></target></pool>'
    )
    assert design_volume("v", 2, "qcow2").to_xml(pretty=False) == (
        '<volume><name>v</name><capacity unit="bytes">2147483648</capacity>'
        '<allocation unit="bytes">0</allocation><target><format type="qcow2"/>'
        '<permissions><mode>0644</mode></permissions></target></volume>'
    )
    assert design_volume("v", 1, "raw").to_xml(pretty=False) == (
        '<volume><name>v</name><capacity unit="bytes">1073741824</capacity>'
        '<allocation unit="bytes">0</allocation><target/></volume>'
    )


def test_network_and_volume_parse_what_libvirt_returns() -> None:
    net = LibvirtConfigNetwork.from_xml(f"""
    <network connections='2'>
      <name>default</name><uuid>{UUID}</uuid>
      <forward mode='nat'><nat><port start='1024' end='65535'/></nat></forward>
      <bridge name='virbr0' stp='on' delay='0'/>
      <mac address='52:54:00:0a:0b:0c'/>
      <ip address='192.168.122.1' netmask='255.255.255.0'>
        <dhcp><range start='192.168.122.2' end='192.168.122.254'/>
          <host mac='FA:16:3E:00:00:01' ip='192.168.122.7'/></dhcp>
      </ip>
    </network>""")
    assert (net.forward_mode, net.bridge, net.ip_address) == ("nat", "virbr0", "192.168.122.1")
    assert net.dhcp_hosts == [LibvirtConfigNetworkDHCPHost(mac="FA:16:3E:00:00:01", ip="192.168.122.7")]
    vol = LibvirtConfigStorageVolume.from_xml("""
    <volume type='file'>
      <name>v1</name><key>/tmp/p/v1</key>
      <capacity unit='G'>1</capacity><allocation unit='bytes'>196608</allocation>
      <target><path>/tmp/p/v1</path><format type='qcow2'/></target>
    </volume>""")
    assert (vol.capacity, vol.allocation, vol.target_path, vol.target_format) == (
        1024**3, 196608, "/tmp/p/v1", "qcow2")
