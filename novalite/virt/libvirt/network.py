"""Isolated libvirt networks and their DHCP host entries, on a host's one connection.

A novalite network on a host is a libvirt network with NO ``<forward>``
element: libvirt makes a bridge and a dnsmasq for it, and nothing is routed or
NATed off the machine. Each port gets a ``<dhcp><host mac= ip=/>`` entry, so the
guest's DHCP lease is the port's fixed IP. The same calls work on libvirt's
test driver (``test:///``), which keeps networks in its connection, so a
simulated host's networks sit beside its domains in one connection.

What a network looks like is decided in :func:`design_network`; the XML is
written and read by :mod:`novalite.virt.libvirt.config`.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from urllib.parse import urlsplit

import libvirt
import structlog

from novalite.virt.driver import NetworkSpec, VirtError
from novalite.virt.libvirt.config import LibvirtConfigNetwork, LibvirtConfigNetworkDHCPHost
from novalite.virt.libvirt.host import LibvirtHost

__all__ = ["BRIDGE_PREFIX", "LibvirtNetworks", "design_network"]

log = structlog.get_logger(__name__)

BRIDGE_PREFIX = "virbr-nl"
_UPDATE_FLAGS_CONFIG = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
_UPDATE_FLAGS_LIVE = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE


def design_network(net: NetworkSpec, bridge: str, hosts: list[tuple[str, str]] = ()) -> LibvirtConfigNetwork:
    """An isolated network: the bridge, the gateway address, the DHCP range and host entries."""
    return LibvirtConfigNetwork(
        name=net.name,
        uuid=net.uuid,
        # No forward mode: guests reach only each other and the host's dnsmasq.
        bridge=bridge,
        bridge_stp=True,
        bridge_delay=0,
        mtu=net.mtu,
        ip_address=net.gateway,
        ip_netmask=net.netmask,
        dhcp_start=net.dhcp_start,
        dhcp_end=net.dhcp_end,
        dhcp_hosts=[LibvirtConfigNetworkDHCPHost(mac=mac, ip=ip) for mac, ip in hosts],
    )


def _dhcp_host_xml(mac: str, ip: str | None = None) -> str:
    return LibvirtConfigNetworkDHCPHost(mac=mac, ip=ip).to_xml(pretty=False)


def _dhcp_hosts(cfg: LibvirtConfigNetwork) -> dict[str, str]:
    """MAC → IP of a network's DHCP host entries (MACs lower-cased)."""
    return {h.mac.lower(): h.ip for h in cfg.dhcp_hosts if h.mac}


def _persistent_config(net: libvirt.virNetwork) -> LibvirtConfigNetwork:
    """The network's persistent definition (the live one where the driver has no such flag: test:///)."""
    try:
        xml = net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        xml = net.XMLDesc(0)
    return LibvirtConfigNetwork.from_xml(xml)


def _is_local(host: LibvirtHost) -> bool:
    """Whether the host's bridges are this machine's network interfaces."""
    parts = urlsplit(host.uri)
    return not parts.hostname and not parts.scheme.startswith("test")


class LibvirtNetworks:
    """The networks of one host; blocking methods (``*_sync``) run in the host's workers."""

    def __init__(self, host: LibvirtHost) -> None:
        self.host = host
        self._lock = threading.Lock()
        # One lock per libvirt network: a DHCP update is read-modify-write for the ADD fallback.
        self._net_locks: dict[str, threading.Lock] = {}

    def _net_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._net_locks.setdefault(name, threading.Lock())

    def _lookup(self, name: str) -> libvirt.virNetwork | None:
        try:
            return self.host.connection().networkLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                return None
            raise VirtError(f"cannot look up network {name}: {exc.get_error_message()}",
                            exc.get_error_code()) from exc

    def _used_bridges(self) -> set[str]:
        used: set[str] = set()
        for net in self.host.connection().listAllNetworks(0):
            bridge = LibvirtConfigNetwork.from_xml(net.XMLDesc(0)).bridge
            if bridge:
                used.add(bridge)
        if _is_local(self.host) and os.path.isdir("/sys/class/net"):
            used |= set(os.listdir("/sys/class/net"))
        return used

    def _pick_bridge(self) -> str:
        used = self._used_bridges()
        n = 0
        while f"{BRIDGE_PREFIX}{n}" in used:
            n += 1
        return f"{BRIDGE_PREFIX}{n}"

    @staticmethod
    def _autostart(net: libvirt.virNetwork) -> None:
        try:
            if not net.autostart():
                net.setAutostart(1)
        except libvirt.libvirtError:
            log.warning("libvirt_network_autostart_failed", network=net.name())

    def ensure_sync(self, net: NetworkSpec) -> str:
        uri = self.host.uri
        with self._net_lock(net.name):
            existing = self._lookup(net.name)
            try:
                if existing is not None:
                    cfg = _persistent_config(existing)
                    if (cfg.ip_address, cfg.ip_netmask) == (net.gateway, net.netmask) and cfg.forward_mode is None:
                        if not existing.isActive():
                            existing.create()
                        self._autostart(existing)
                        return cfg.bridge or ""
                    # The subnet changed (or someone added a forward): redefine it, keeping the bridge.
                    log.warning("libvirt_network_redefined", network=net.name, uri=uri)
                    bridge = cfg.bridge or self._pick_bridge()
                    hosts = list(_dhcp_hosts(cfg).items())
                    if existing.isActive():
                        existing.destroy()
                    existing.undefine()
                    in_subnet = ipaddress.ip_network(net.cidr, strict=False)
                    hosts = [(m, a) for m, a in hosts if a and ipaddress.ip_address(a) in in_subnet]
                else:
                    bridge, hosts = self._pick_bridge(), []
                created = self.host.connection().networkDefineXML(design_network(net, bridge, hosts).to_xml())
                created.create()
                self._autostart(created)
                log.info("libvirt_network_started", network=net.name, bridge=bridge, uri=uri)
                return bridge
            except libvirt.libvirtError as exc:
                raise VirtError(f"cannot set up network {net.name} on {uri}: {exc.get_error_message()}",
                                exc.get_error_code()) from exc

    @staticmethod
    def _update(net: libvirt.virNetwork, command: int, xml: str) -> None:
        flags = _UPDATE_FLAGS_CONFIG | (_UPDATE_FLAGS_LIVE if net.isActive() else 0)
        net.update(command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, xml, flags)

    def add_host_sync(self, name: str, mac: str, ip: str) -> None:
        with self._net_lock(name):
            net = self._lookup(name)
            if net is None:
                raise VirtError(f"no network {name} on {self.host.uri}")
            try:
                self._update(net, libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, _dhcp_host_xml(mac, ip))
                return
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise VirtError(f"cannot add DHCP host {mac} to {name}: {exc.get_error_message()}",
                                    exc.get_error_code()) from exc
            # An entry with this MAC or IP exists already (a retried build, a stale entry): replace it.
            try:
                current = _dhcp_hosts(_persistent_config(net))
                if current.get(mac.lower()) == ip:
                    return
                for old_mac, old_ip in current.items():
                    if old_mac == mac.lower() or old_ip == ip:
                        self._update(net, libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, _dhcp_host_xml(old_mac))
                self._update(net, libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, _dhcp_host_xml(mac, ip))
            except libvirt.libvirtError as exc:
                raise VirtError(f"cannot add DHCP host {mac} to {name}: {exc.get_error_message()}",
                                exc.get_error_code()) from exc

    def remove_host_sync(self, name: str, mac: str) -> bool:
        with self._net_lock(name):
            net = self._lookup(name)
            if net is None:
                return False
            try:
                self._update(net, libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, _dhcp_host_xml(mac))
                return True
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                    return False  # no such entry: already gone
                raise VirtError(f"cannot remove DHCP host {mac} from {name}: {exc.get_error_message()}",
                                exc.get_error_code()) from exc

    def hosts_sync(self, name: str) -> dict[str, str]:
        net = self._lookup(name)
        if net is None:
            return {}
        try:
            return _dhcp_hosts(_persistent_config(net))
        except libvirt.libvirtError as exc:
            raise VirtError(f"cannot read network {name}: {exc.get_error_message()}", exc.get_error_code()) from exc

    def xml_sync(self, name: str) -> str | None:
        net = self._lookup(name)
        return None if net is None else net.XMLDesc(0)

    def undefine_sync(self, name: str) -> None:
        with self._net_lock(name):
            net = self._lookup(name)
            if net is None:
                return
            try:
                if net.isActive():
                    net.destroy()
                net.undefine()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise VirtError(f"cannot remove network {name}: {exc.get_error_message()}",
                                    exc.get_error_code()) from exc

    def sync_hosts_sync(self, name: str, wanted: dict[str, str]) -> tuple[int, int]:
        current = self.hosts_sync(name)
        wanted = {m.lower(): ip for m, ip in wanted.items()}
        removed = added = 0
        for mac, ip in current.items():
            if wanted.get(mac) != ip:
                removed += self.remove_host_sync(name, mac)
        for mac, ip in wanted.items():
            if current.get(mac) != ip:
                self.add_host_sync(name, mac, ip)
                added += 1
        return added, removed
