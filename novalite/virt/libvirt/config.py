"""libvirt domain, network and storage XML as Python objects, and back.

In the spirit of Nova's ``nova/virt/libvirt/config.py``: every class here only
turns attributes into an lxml element (``format_dom``) and an element back into
attributes (``parse_dom``).  No defaults are chosen on the caller's behalf and no
policy lives here; deciding *what* a guest looks like is the designer's job
(:func:`novalite.virt.libvirt.driver.design_guest`), and what a network or a
pool looks like is decided in :mod:`novalite.virt.libvirt.network` and
:mod:`novalite.virt.libvirt.storage`.

Parsing is tolerant: elements a class does not model (for instance the
controllers and addresses libvirt adds to a live domain) are ignored, so
``parse_dom`` also reads XML that libvirt returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Self

from lxml import etree

__all__ = [
    "NOVA_NS",
    "LibvirtConfigGuest",
    "LibvirtConfigGuestCharBase",
    "LibvirtConfigGuestConsole",
    "LibvirtConfigGuestDevice",
    "LibvirtConfigGuestDisk",
    "LibvirtConfigGuestInterface",
    "LibvirtConfigGuestMetaNovaInstance",
    "LibvirtConfigGuestSerial",
    "LibvirtConfigGuestSysinfo",
    "LibvirtConfigNetwork",
    "LibvirtConfigNetworkDHCPHost",
    "LibvirtConfigObject",
    "LibvirtConfigStoragePool",
    "LibvirtConfigStorageVolume",
]

NOVA_NS = "http://openstack.org/xmlns/libvirt/nova/1.1"
NOVA_PREFIX = "nova"
DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"

# Never resolve entities or touch the network while reading XML.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)

_UNIT_TO_KIB = {
    "b": 1 / 1024, "bytes": 1 / 1024,
    "k": 1, "kib": 1,
    "kb": 1000 / 1024,
    "m": 1024, "mib": 1024,
    "mb": 1000**2 / 1024,
    "g": 1024**2, "gib": 1024**2,
    "gb": 1000**3 / 1024,
    "t": 1024**3, "tib": 1024**3,
}


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    """Append a child element with string attributes (None-valued ones left out)."""
    child = etree.SubElement(parent, tag, {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        child.text = text
    return child


def _text(el: etree._Element | None) -> str | None:
    """The stripped text of ``el``, or None when the element is absent or empty."""
    if el is None or el.text is None:
        return None
    return el.text.strip() or None


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _str(value: int | None) -> str | None:
    return None if value is None else str(value)


def _bytes(el: etree._Element | None) -> int | None:
    """A size element (``<capacity unit='G'>1</capacity>``) in bytes."""
    text = _text(el)
    if el is None or text is None:
        return None
    unit = el.get("unit", "bytes").lower()
    return int(text) if unit in ("b", "bytes") else int(int(text) * _UNIT_TO_KIB[unit] * 1024)


def _nova(tag: str) -> str:
    return f"{{{NOVA_NS}}}{tag}"


class LibvirtConfigObject:
    """Base of every config class: XML string conversion on top of format_dom/parse_dom."""

    root_name: ClassVar[str] = ""

    def format_dom(self) -> etree._Element:
        """Build the lxml element for this object."""
        raise NotImplementedError

    @classmethod
    def parse_dom(cls, el: etree._Element) -> Self:
        """Build an object from an lxml element of this class's kind."""
        raise NotImplementedError

    def to_xml(self, pretty: bool = True) -> str:
        """Serialise to an XML string (no XML declaration), indented by default."""
        return etree.tostring(self.format_dom(), pretty_print=pretty, encoding="unicode")

    @classmethod
    def from_xml(cls, xml: str) -> Self:
        """Parse an XML string into an object of this class."""
        return cls.parse_dom(etree.fromstring(xml.encode(), _PARSER))

    @classmethod
    def _check_root(cls, el: etree._Element) -> None:
        if el.tag != cls.root_name:
            raise ValueError(f"expected <{cls.root_name}>, got <{el.tag}>")


class LibvirtConfigGuestDevice(LibvirtConfigObject):
    """Marker base for things that live under ``<devices>``."""


@dataclass(eq=True)
class LibvirtConfigGuestDisk(LibvirtConfigGuestDevice):
    """``<disk>``: a block device backed by a file (or a block device node)."""

    root_name: ClassVar[str] = "disk"

    source_type: str = "file"          # file | block
    source_device: str = "disk"        # disk | cdrom
    source_path: str | None = None
    driver_name: str | None = None     # e.g. "qemu"
    driver_format: str | None = None   # qcow2 | raw
    driver_cache: str | None = None
    target_dev: str | None = None      # vda, sda, ...
    target_bus: str | None = None      # virtio, sata, ...
    readonly: bool = False

    def format_dom(self) -> etree._Element:
        dev = etree.Element("disk", type=self.source_type, device=self.source_device)
        if self.driver_name or self.driver_format or self.driver_cache:
            _sub(dev, "driver", name=self.driver_name, type=self.driver_format,
                 cache=self.driver_cache)
        if self.source_path is not None:
            attr = "dev" if self.source_type == "block" else "file"
            _sub(dev, "source", **{attr: self.source_path})
        if self.target_dev is not None or self.target_bus is not None:
            _sub(dev, "target", dev=self.target_dev, bus=self.target_bus)
        if self.readonly:
            _sub(dev, "readonly")
        return dev

    @classmethod
    def parse_dom(cls, el: etree._Element) -> Self:
        cls._check_root(el)
        obj = cls(source_type=el.get("type", "file"), source_device=el.get("device", "disk"))
        driver = el.find("driver")
        if driver is not None:
            obj.driver_name = driver.get("name")
            obj.driver_format = driver.get("type")
            obj.driver_cache = driver.get("cache")
        source = el.find("source")
        if source is not None:
            obj.source_path = source.get("file") or source.get("dev")
        target = el.find("target")
        if target is not None:
            obj.target_dev = target.get("dev")
            obj.target_bus = target.get("bus")
        obj.readonly = el.find("readonly") is not None
        return obj


@dataclass(eq=True)
class LibvirtConfigGuestInterface(LibvirtConfigGuestDevice):
    """``<interface>``: a virtual NIC attached to a libvirt network, a bridge, or nothing."""

    root_name: ClassVar[str] = "interface"

    net_type: str = "network"          # network | bridge | user | ethernet
    mac_addr: str | None = None
    source_network: str | None = None  # for net_type "network"
    source_bridge: str | None = None   # for net_type "bridge"
    model: str | None = None           # virtio, e1000, ...
    target_dev: str | None = None      # host-side tap name
    filter_name: str | None = None     # the nwfilter applied to the NIC's traffic

    def format_dom(self) -> etree._Element:
        dev = etree.Element("interface", type=self.net_type)
        if self.mac_addr is not None:
            _sub(dev, "mac", address=self.mac_addr)
        if self.source_network is not None or self.source_bridge is not None:
            _sub(dev, "source", network=self.source_network, bridge=self.source_bridge)
        if self.model is not None:
            _sub(dev, "model", type=self.model)
        if self.target_dev is not None:
            _sub(dev, "target", dev=self.target_dev)
        if self.filter_name is not None:
            _sub(dev, "filterref", filter=self.filter_name)
        return dev

    @classmethod
    def parse_dom(cls, el: etree._Element) -> Self:
        cls._check_root(el)
        obj = cls(net_type=el.get("type", "network"))
        if (mac := el.find("mac")) is not None:
            obj.mac_addr = mac.get("address")
        if (source := el.find("source")) is not None:
            obj.source_network = source.get("network")
            obj.source_bridge = source.get("bridge")
        if (model := el.find("model")) is not None:
            obj.model = model.get("type")
        if (target := el.find("target")) is not None:
            obj.target_dev = target.get("dev")
        if (ref := el.find("filterref")) is not None:
            obj.filter_name = ref.get("filter")
        return obj


@dataclass(eq=True)
class LibvirtConfigGuestCharBase(LibvirtConfigGuestDevice):
    """Common shape of ``<serial>`` and ``<console>``: a char device with optional log file."""

    root_name: ClassVar[str] = ""

    char_type: str = "pty"             # pty | file
    source_path: str | None = None     # required for "file"; libvirt fills it in for "pty"
    log_file: str | None = None
    log_append: bool | None = None
    target_type: str | None = None     # e.g. "serial" for a console
    target_port: int | None = None

    def format_dom(self) -> etree._Element:
        dev = etree.Element(self.root_name, type=self.char_type)
        if self.source_path is not None:
            _sub(dev, "source", path=self.source_path)
        if self.log_file is not None:
            append = None if self.log_append is None else ("on" if self.log_append else "off")
            _sub(dev, "log", file=self.log_file, append=append)
        if self.target_type is not None or self.target_port is not None:
            port = None if self.target_port is None else str(self.target_port)
            _sub(dev, "target", type=self.target_type, port=port)
        return dev

    @classmethod
    def parse_dom(cls, el: etree._Element) -> Self:
        cls._check_root(el)
        obj = cls(char_type=el.get("type", "pty"))
        if (source := el.find("source")) is not None:
            obj.source_path = source.get("path")
        if (log := el.find("log")) is not None:
            obj.log_file = log.get("file")
            append = log.get("append")
            obj.log_append = None if append is None else append == "on"
        if (target := el.find("target")) is not None:
            obj.target_type = target.get("type")
            obj.target_port = _int(target.get("port"))
        return obj


@dataclass(eq=True)
class LibvirtConfigGuestSerial(LibvirtConfigGuestCharBase):
    """``<serial>``: the guest's serial port, optionally logged to a file."""

    root_name: ClassVar[str] = "serial"


@dataclass(eq=True)
class LibvirtConfigGuestConsole(LibvirtConfigGuestCharBase):
    """``<console>``: the interactive console, usually bound to the first serial port."""

    root_name: ClassVar[str] = "console"


@dataclass(eq=True)
class LibvirtConfigGuestMetaNovaInstance(LibvirtConfigObject):
    """``<nova:instance>`` in the domain's ``<metadata>``: who owns this guest and why it exists.

    Follows Nova's 1.1 metadata namespace; ``uuid`` is a novalite addition so the
    instance uuid can be read from the metadata alone.
    """

    root_name: ClassVar[str] = _nova("instance")

    uuid: str | None = None
    name: str | None = None            # the display name
    creation_time: str | None = None   # "YYYY-MM-DD HH:MM:SS", as Nova writes it
    flavor_name: str | None = None
    flavor_memory_mb: int | None = None
    flavor_vcpus: int | None = None
    flavor_disk_gb: int | None = None
    owner_user_id: str | None = None
    owner_user_name: str | None = None
    owner_project_id: str | None = None
    owner_project_name: str | None = None

    def format_dom(self) -> etree._Element:
        inst = etree.Element(_nova("instance"), nsmap={NOVA_PREFIX: NOVA_NS})
        if self.uuid is not None:
            _sub(inst, _nova("uuid"), self.uuid)
        if self.name is not None:
            _sub(inst, _nova("name"), self.name)
        if self.creation_time is not None:
            _sub(inst, _nova("creationTime"), self.creation_time)
        flavor_values = (self.flavor_memory_mb, self.flavor_disk_gb, self.flavor_vcpus)
        if self.flavor_name is not None or any(v is not None for v in flavor_values):
            flavor = _sub(inst, _nova("flavor"), name=self.flavor_name)
            for tag, value in zip(("memory", "disk", "vcpus"), flavor_values, strict=True):
                if value is not None:
                    _sub(flavor, _nova(tag), str(value))
        if self.owner_user_id is not None or self.owner_project_id is not None:
            owner = _sub(inst, _nova("owner"))
            if self.owner_user_id is not None:
                _sub(owner, _nova("user"), self.owner_user_name, uuid=self.owner_user_id)
            if self.owner_project_id is not None:
                _sub(owner, _nova("project"), self.owner_project_name,
                     uuid=self.owner_project_id)
        return inst

    @classmethod
    def parse_dom(cls, el: etree._Element) -> Self:
        cls._check_root(el)
        obj = cls(
            uuid=_text(el.find(_nova("uuid"))),
            name=_text(el.find(_nova("name"))),
            creation_time=_text(el.find(_nova("creationTime"))),
        )
        if (flavor := el.find(_nova("flavor"))) is not None:
            obj.flavor_name = flavor.get("name")
            obj.flavor_memory_mb = _int(_text(flavor.find(_nova("memory"))))
            obj.flavor_disk_gb = _int(_text(flavor.find(_nova("disk"))))
            obj.flavor_vcpus = _int(_text(flavor.find(_nova("vcpus"))))
        if (owner := el.find(_nova("owner"))) is not None:
            if (user := owner.find(_nova("user"))) is not None:
                obj.owner_user_id = user.get("uuid")
                obj.owner_user_name = _text(user)
            if (project := owner.find(_nova("project"))) is not None:
                obj.owner_project_id = project.get("uuid")
                obj.owner_project_name = _text(project)
        return obj


@dataclass(eq=True)
class LibvirtConfigGuestSysinfo(LibvirtConfigObject):
    """``<sysinfo type='smbios'>``: the SMBIOS system table the guest reads (dmidecode,
    /sys/class/dmi/id); only its ``<system>`` entries, as Nova writes them."""

    root_name: ClassVar[str] = "sysinfo"

    system_manufacturer: str | None = None
    system_product: str | None = None
    system_version: str | None = None
    system_serial: str | None = None
    system_uuid: str | None = None
    system_family: str | None = None

    _ENTRIES: ClassVar[tuple[str, ...]] = ("manufacturer", "product", "version", "serial", "uuid", "family")

    def format_dom(self) -> etree._Element:
        root = etree.Element("sysinfo", type="smbios")
        system = _sub(root, "system")
        for name in self._ENTRIES:
            if (value := getattr(self, f"system_{name}")) is not None:
                _sub(system, "entry", value, name=name)
        return root

    @classmethod
    def parse_dom(cls, el: etree._Element) -> Self:
        cls._check_root(el)
        obj = cls()
        for entry in el.iterfind("system/entry"):
            if entry.get("name") in cls._ENTRIES:
                setattr(obj, f"system_{entry.get('name')}", _text(entry))
        return obj


_DEVICE_CLASSES: dict[str, type[LibvirtConfigGuestDevice]] = {
    cls.root_name: cls
    for cls in (
        LibvirtConfigGuestDisk,
        LibvirtConfigGuestInterface,
        LibvirtConfigGuestSerial,
        LibvirtConfigGuestConsole,
    )
}


@dataclass(eq=True)
class LibvirtConfigGuest(LibvirtConfigObject):
    """``<domain>``: the whole guest definition handed to ``defineXML``."""

    root_name: ClassVar[str] = "domain"

    virt_type: str = "qemu"            # domain type: test | qemu | kvm
    name: str = ""
    uuid: str | None = None
    memory: int = 0                    # KiB
    vcpus: int = 1
    metadata: list[LibvirtConfigGuestMetaNovaInstance] = field(default_factory=list)
    os_type: str = "hvm"
    os_arch: str | None = None
    os_machine: str | None = None
    os_kernel: str | None = None
    os_initrd: str | None = None
    os_cmdline: str | None = None
    os_boot_dev: list[str] = field(default_factory=list)
    os_smbios: str | None = None       # <smbios mode=...>: "sysinfo" shows ``sysinfo`` to the guest
    sysinfo: LibvirtConfigGuestSysinfo | None = None
    features: list[str] = field(default_factory=list)   # flag features: acpi, apic, pae
    cpu_mode: str | None = None        # host-model | host-passthrough | custom
    clock_offset: str | None = None    # utc | localtime
    on_poweroff: str | None = None
    on_reboot: str | None = None
    on_crash: str | None = None
    devices: list[LibvirtConfigGuestDevice] = field(default_factory=list)

    def format_dom(self) -> etree._Element:
        root = etree.Element("domain", type=self.virt_type)
        _sub(root, "name", self.name)
        if self.uuid is not None:
            _sub(root, "uuid", self.uuid)
        if self.metadata:
            meta = _sub(root, "metadata")
            for item in self.metadata:
                meta.append(item.format_dom())
        _sub(root, "memory", str(self.memory), unit="KiB")
        _sub(root, "vcpu", str(self.vcpus))
        if self.sysinfo is not None:
            root.append(self.sysinfo.format_dom())

        os_el = _sub(root, "os")
        _sub(os_el, "type", self.os_type, arch=self.os_arch, machine=self.os_machine)
        for tag, value in (("kernel", self.os_kernel), ("initrd", self.os_initrd),
                           ("cmdline", self.os_cmdline)):
            if value is not None:
                _sub(os_el, tag, value)
        for boot_dev in self.os_boot_dev:
            _sub(os_el, "boot", dev=boot_dev)
        if self.os_smbios is not None:
            _sub(os_el, "smbios", mode=self.os_smbios)

        if self.features:
            features = _sub(root, "features")
            for feature in self.features:
                _sub(features, feature)
        if self.cpu_mode is not None:
            _sub(root, "cpu", mode=self.cpu_mode)
        if self.clock_offset is not None:
            _sub(root, "clock", offset=self.clock_offset)
        for tag in ("on_poweroff", "on_reboot", "on_crash"):
            if (value := getattr(self, tag)) is not None:
                _sub(root, tag, value)

        devices = _sub(root, "devices")
        for device in self.devices:
            devices.append(device.format_dom())
        return root

    @classmethod
    def parse_dom(cls, el: etree._Element) -> Self:
        cls._check_root(el)
        obj = cls(virt_type=el.get("type", ""), name=_text(el.find("name")) or "",
                  uuid=_text(el.find("uuid")))
        if (memory := el.find("memory")) is not None:
            unit = memory.get("unit", "KiB").lower()
            obj.memory = int(int(_text(memory) or 0) * _UNIT_TO_KIB[unit])
        if (vcpu := el.find("vcpu")) is not None:
            obj.vcpus = int(_text(vcpu) or 1)
        for meta in el.iterfind(f"metadata/{_nova('instance')}"):
            obj.metadata.append(LibvirtConfigGuestMetaNovaInstance.parse_dom(meta))

        if (os_el := el.find("os")) is not None:
            if (os_type := os_el.find("type")) is not None:
                obj.os_type = _text(os_type) or "hvm"
                obj.os_arch = os_type.get("arch")
                obj.os_machine = os_type.get("machine")
            obj.os_kernel = _text(os_el.find("kernel"))
            obj.os_initrd = _text(os_el.find("initrd"))
            obj.os_cmdline = _text(os_el.find("cmdline"))
            obj.os_boot_dev = [b.get("dev") for b in os_el.iterfind("boot") if b.get("dev")]
            if (smbios := os_el.find("smbios")) is not None:
                obj.os_smbios = smbios.get("mode")
        if (sysinfo := el.find("sysinfo[@type='smbios']")) is not None:
            obj.sysinfo = LibvirtConfigGuestSysinfo.parse_dom(sysinfo)

        if (features := el.find("features")) is not None:
            obj.features = [f.tag for f in features if isinstance(f.tag, str)]
        if (cpu := el.find("cpu")) is not None:
            obj.cpu_mode = cpu.get("mode")
        if (clock := el.find("clock")) is not None:
            obj.clock_offset = clock.get("offset")
        obj.on_poweroff = _text(el.find("on_poweroff"))
        obj.on_reboot = _text(el.find("on_reboot"))
        obj.on_crash = _text(el.find("on_crash"))

        if (devices := el.find("devices")) is not None:
            for dev in devices:
                dev_cls = _DEVICE_CLASSES.get(dev.tag) if isinstance(dev.tag, str) else None
                if dev_cls is not None:
                    obj.devices.append(dev_cls.parse_dom(dev))
        return obj


# ----------------------------------------------------------------------------- networks


@dataclass(eq=True)
class LibvirtConfigNetworkDHCPHost(LibvirtConfigObject):
    """``<host mac= ip=/>`` of a network's ``<dhcp>``: a fixed lease (also the body of a DHCP update)."""

    root_name: ClassVar[str] = "host"

    mac: str | None = None
    ip: str | None = None
    name: str | None = None

    def format_dom(self) -> etree._Element:
        return etree.Element("host", {k: v for k, v in (("mac", self.mac), ("name", self.name), ("ip", self.ip))
                                      if v is not None})

    @classmethod
    def parse_dom(cls, el: etree._Element) -> Self:
        cls._check_root(el)
        return cls(mac=el.get("mac"), ip=el.get("ip"), name=el.get("name"))


@dataclass(eq=True)
class LibvirtConfigNetwork(LibvirtConfigObject):
    """``<network>``: a virtual network with a bridge, one IPv4 address and its DHCP service.

    ``forward_mode`` None means no ``<forward>``: an isolated network.
    """

    root_name: ClassVar[str] = "network"

    name: str = ""
    uuid: str | None = None
    forward_mode: str | None = None    # nat | route | bridge | ...
    bridge: str | None = None
    bridge_stp: bool | None = None
    bridge_delay: int | None = None
    mtu: int | None = None
    ip_address: str | None = None
    ip_netmask: str | None = None
    dhcp_start: str | None = None
    dhcp_end: str | None = None
    dhcp_hosts: list[LibvirtConfigNetworkDHCPHost] = field(default_factory=list)
    # extra dnsmasq options (``<dnsmasq:options>``), e.g. a DHCP classless static route
    dnsmasq_options: list[str] = field(default_factory=list)

    def format_dom(self) -> etree._Element:
        root = etree.Element("network", nsmap={"dnsmasq": DNSMASQ_NS} if self.dnsmasq_options else None)
        _sub(root, "name", self.name)
        if self.uuid is not None:
            _sub(root, "uuid", self.uuid)
        if self.forward_mode is not None:
            _sub(root, "forward", mode=self.forward_mode)
        if self.bridge is not None:
            stp = None if self.bridge_stp is None else ("on" if self.bridge_stp else "off")
            _sub(root, "bridge", name=self.bridge, stp=stp, delay=_str(self.bridge_delay))
        if self.mtu is not None:
            _sub(root, "mtu", size=str(self.mtu))
        if self.ip_address is not None:
            ip = _sub(root, "ip", address=self.ip_address, netmask=self.ip_netmask)
            if self.dhcp_start is not None or self.dhcp_hosts:
                dhcp = _sub(ip, "dhcp")
                if self.dhcp_start is not None:
                    _sub(dhcp, "range", start=self.dhcp_start, end=self.dhcp_end)
                for host in self.dhcp_hosts:
                    dhcp.append(host.format_dom())
        if self.dnsmasq_options:
            options = _sub(root, f"{{{DNSMASQ_NS}}}options")
            for value in self.dnsmasq_options:
                _sub(options, f"{{{DNSMASQ_NS}}}option", value=value)
        return root

    @classmethod
    def parse_dom(cls, el: etree._Element) -> Self:
        cls._check_root(el)
        obj = cls(name=_text(el.find("name")) or "", uuid=_text(el.find("uuid")))
        if (forward := el.find("forward")) is not None:
            obj.forward_mode = forward.get("mode", "nat")  # libvirt's default mode
        if (bridge := el.find("bridge")) is not None:
            obj.bridge = bridge.get("name")
            stp = bridge.get("stp")
            obj.bridge_stp = None if stp is None else stp == "on"
            obj.bridge_delay = _int(bridge.get("delay"))
        if (mtu := el.find("mtu")) is not None:
            obj.mtu = _int(mtu.get("size"))
        if (ip := el.find("ip")) is not None:
            obj.ip_address = ip.get("address")
            obj.ip_netmask = ip.get("netmask")
            if (dhcp_range := ip.find("dhcp/range")) is not None:
                obj.dhcp_start = dhcp_range.get("start")
                obj.dhcp_end = dhcp_range.get("end")
            obj.dhcp_hosts = [LibvirtConfigNetworkDHCPHost.parse_dom(h) for h in ip.iterfind("dhcp/host")]
        obj.dnsmasq_options = [o.get("value") for o in el.iterfind(f"{{{DNSMASQ_NS}}}options/{{{DNSMASQ_NS}}}option")]
        return obj


# ------------------------------------------------------------------------------ storage


@dataclass(eq=True)
class LibvirtConfigStoragePool(LibvirtConfigObject):
    """``<pool>``: a storage pool -- a directory (``dir``) or an LVM volume group (``logical``)."""

    root_name: ClassVar[str] = "pool"

    pool_type: str = "dir"             # dir | logical | ...
    name: str = ""
    uuid: str | None = None
    source_name: str | None = None     # the volume group of a logical pool
    source_format: str | None = None   # e.g. lvm2
    target_path: str | None = None
    target_mode: str | None = None     # octal permissions of the target directory

    def format_dom(self) -> etree._Element:
        root = etree.Element("pool", type=self.pool_type)
        _sub(root, "name", self.name)
        if self.uuid is not None:
            _sub(root, "uuid", self.uuid)
        if self.source_name is not None or self.source_format is not None:
            source = _sub(root, "source")
            if self.source_name is not None:
                _sub(source, "name", self.source_name)
            if self.source_format is not None:
                _sub(source, "format", type=self.source_format)
        if self.target_path is not None or self.target_mode is not None:
            target = _sub(root, "target")
            if self.target_path is not None:
                _sub(target, "path", self.target_path)
            if self.target_mode is not None:
                _sub(_sub(target, "permissions"), "mode", self.target_mode)
        return root

    @classmethod
    def parse_dom(cls, el: etree._Element) -> Self:
        cls._check_root(el)
        obj = cls(pool_type=el.get("type", "dir"), name=_text(el.find("name")) or "",
                  uuid=_text(el.find("uuid")))
        obj.source_name = _text(el.find("source/name"))
        if (fmt := el.find("source/format")) is not None:
            obj.source_format = fmt.get("type")
        obj.target_path = _text(el.find("target/path"))
        obj.target_mode = _text(el.find("target/permissions/mode"))
        return obj


@dataclass(eq=True)
class LibvirtConfigStorageVolume(LibvirtConfigObject):
    """``<volume>``: one volume of a pool; sizes in bytes."""

    root_name: ClassVar[str] = "volume"

    name: str = ""
    capacity: int = 0
    allocation: int | None = None
    target_path: str | None = None     # set by libvirt; ignored when creating
    target_format: str | None = None   # qcow2 | raw
    target_mode: str | None = None     # octal permissions of the volume's file
    backing_path: str | None = None    # a qcow2 overlay's backing file (a volume of the same pool)
    backing_format: str | None = None
    physical: int | None = None        # set by libvirt: the bytes of the volume's file

    def format_dom(self) -> etree._Element:
        root = etree.Element("volume")
        _sub(root, "name", self.name)
        _sub(root, "capacity", str(self.capacity), unit="bytes")
        if self.allocation is not None:
            _sub(root, "allocation", str(self.allocation), unit="bytes")
        target = _sub(root, "target")
        if self.target_path is not None:
            _sub(target, "path", self.target_path)
        if self.target_format is not None:
            _sub(target, "format", type=self.target_format)
        if self.target_mode is not None:
            _sub(_sub(target, "permissions"), "mode", self.target_mode)
        if self.backing_path is not None:
            backing = _sub(root, "backingStore")
            _sub(backing, "path", self.backing_path)
            if self.backing_format is not None:
                _sub(backing, "format", type=self.backing_format)
        return root

    @classmethod
    def parse_dom(cls, el: etree._Element) -> Self:
        cls._check_root(el)
        obj = cls(name=_text(el.find("name")) or "", capacity=_bytes(el.find("capacity")) or 0,
                  allocation=_bytes(el.find("allocation")))
        obj.target_path = _text(el.find("target/path"))
        if (fmt := el.find("target/format")) is not None:
            obj.target_format = fmt.get("type")
        obj.target_mode = _text(el.find("target/permissions/mode"))
        obj.physical = _bytes(el.find("physical"))
        obj.backing_path = _text(el.find("backingStore/path"))
        if (fmt := el.find("backingStore/format")) is not None:
            obj.backing_format = fmt.get("type")
        return obj
