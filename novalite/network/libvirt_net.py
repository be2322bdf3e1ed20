"""Isolated libvirt networks and their DHCP host entries, on one libvirt connection per URI.

A novalite network on a host is a libvirt network with NO ``<forward>``
element: libvirt makes a bridge and a dnsmasq for it, and nothing is routed or
NATed off the machine. Each port gets a ``<dhcp><host mac= ip=/>`` entry, so the
guest's DHCP lease is the port's fixed IP. The same calls work on libvirt's
test driver (``test:///``), which keeps networks in its connection, so
simulated hosts show the same networks and entries as real ones.

Every libvirt call runs in this object's worker threads, never on the loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ipaddress
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import libvirt
import structlog
from lxml import etree

from novalite.virt.libvirt.driver import silence_libvirt_stderr

log = structlog.get_logger(__name__)

T = TypeVar("T")

BRIDGE_PREFIX = "virbr-nl"
_UPDATE_FLAGS_CONFIG = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
_UPDATE_FLAGS_LIVE = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE


class NetworkBackendError(Exception):
    """A libvirt network call failed."""


@dataclass(frozen=True, slots=True)
class LibvirtNetworkDef:
    """What a novalite network looks like on a host: name, uuid, subnet, gateway, DHCP range."""

    name: str  # libvirt network name
    uuid: str
    cidr: str
    gateway: str
    dhcp_start: str
    dhcp_end: str
    mtu: int = 1500

    @property
    def netmask(self) -> str:
        return str(ipaddress.ip_network(self.cidr, strict=False).netmask)


def network_xml(net: LibvirtNetworkDef, bridge: str, hosts: list[tuple[str, str]] = ()) -> str:
    """The libvirt XML of an isolated network: bridge, gateway address, DHCP range and host entries."""
    root = etree.Element("network")
    etree.SubElement(root, "name").text = net.name
    etree.SubElement(root, "uuid").text = net.uuid
    # No <forward>: an isolated network; guests reach only each other and the host's dnsmasq.
    etree.SubElement(root, "bridge", name=bridge, stp="on", delay="0")
    etree.SubElement(root, "mtu", size=str(net.mtu))
    ip = etree.SubElement(root, "ip", address=net.gateway, netmask=net.netmask)
    dhcp = etree.SubElement(ip, "dhcp")
    etree.SubElement(dhcp, "range", start=net.dhcp_start, end=net.dhcp_end)
    for mac, addr in hosts:
        etree.SubElement(dhcp, "host", mac=mac, ip=addr)
    return etree.tostring(root, encoding="unicode")


def dhcp_host_xml(mac: str, ip: str | None = None) -> str:
    el = etree.Element("host", mac=mac)
    if ip is not None:
        el.set("ip", ip)
    return etree.tostring(el, encoding="unicode")


def parse_dhcp_hosts(xml: str) -> dict[str, str]:
    """MAC → IP of the DHCP host entries in a network's XML."""
    root = etree.fromstring(xml.encode())
    return {h.get("mac").lower(): h.get("ip") for h in root.iterfind("ip/dhcp/host") if h.get("mac")}


def _bridge_of(xml: str) -> str | None:
    el = etree.fromstring(xml.encode()).find("bridge")
    return el.get("name") if el is not None else None


def _ip_of(xml: str) -> tuple[str | None, str | None]:
    el = etree.fromstring(xml.encode()).find("ip")
    return (el.get("address"), el.get("netmask")) if el is not None else (None, None)


def _persistent_xml(net: libvirt.virNetwork) -> str:
    """The network's persistent XML (the live one where the driver has no such flag: test:///)."""
    try:
        return net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        return net.XMLDesc(0)


def _is_local(uri: str) -> bool:
    parts = urlsplit(uri)
    return not parts.hostname and not parts.scheme.startswith("test")


class LibvirtNetworkHost:
    """The networks of one libvirt URI, all calls made in worker threads.

    ``connect`` lets the caller share an existing connection (a test:/// host's
    domains and networks only meet inside one connection); by default this
    object opens its own, lazily, and closes it in :meth:`close`.
    """

    def __init__(self, uri: str, connect: Callable[[], libvirt.virConnect] | None = None,
                 max_threads: int = 4) -> None:
        self.uri = uri
        self._connect = connect
        self._own_conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        # One lock per libvirt network: a DHCP update is read-modify-write for the ADD fallback.
        self._net_locks: dict[str, threading.Lock] = {}
        self._executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="libvirt-net")
        self._closed = False
        silence_libvirt_stderr()

    # -- plumbing ------------------------------------------------------------------
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise NetworkBackendError(f"network backend for {self.uri} is closed")
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(ctx.run, fn, *args))

    def _conn(self) -> libvirt.virConnect:
        if self._connect is not None:
            return self._connect()
        with self._lock:
            if self._own_conn is None:
                try:
                    self._own_conn = libvirt.open(self.uri)
                except libvirt.libvirtError as exc:
                    raise NetworkBackendError(f"cannot connect to {self.uri}: {exc.get_error_message()}") from exc
            return self._own_conn

    def _net_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._net_locks.setdefault(name, threading.Lock())

    def _lookup(self, name: str) -> libvirt.virNetwork | None:
        try:
            return self._conn().networkLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                return None
            raise NetworkBackendError(f"cannot look up network {name}: {exc.get_error_message()}") from exc

    # -- blocking parts ------------------------------------------------------------
    def _used_bridges(self) -> set[str]:
        used: set[str] = set()
        for net in self._conn().listAllNetworks(0):
            bridge = _bridge_of(net.XMLDesc(0))
            if bridge:
                used.add(bridge)
        if _is_local(self.uri) and os.path.isdir("/sys/class/net"):
            used |= set(os.listdir("/sys/class/net"))
        return used

    def _ensure_sync(self, net: LibvirtNetworkDef) -> str:
        with self._net_lock(net.name):
            existing = self._lookup(net.name)
            try:
                if existing is not None:
                    xml = _persistent_xml(existing)
                    if _ip_of(xml) == (net.gateway, net.netmask) and "<forward" not in xml:
                        bridge = _bridge_of(xml) or ""
                        if not existing.isActive():
                            existing.create()
                        self._autostart(existing)
                        return bridge
                    # The subnet changed (or someone added a forward): redefine it, keeping the bridge.
                    log.warning("libvirt_network_redefined", network=net.name, uri=self.uri)
                    bridge = _bridge_of(xml) or self._pick_bridge()
                    hosts = list(parse_dhcp_hosts(xml).items())
                    if existing.isActive():
                        existing.destroy()
                    existing.undefine()
                    in_subnet = ipaddress.ip_network(net.cidr, strict=False)
                    hosts = [(m, a) for m, a in hosts if a and ipaddress.ip_address(a) in in_subnet]
                else:
                    bridge, hosts = self._pick_bridge(), []
                created = self._conn().networkDefineXML(network_xml(net, bridge, hosts))
                created.create()
                self._autostart(created)
                log.info("libvirt_network_started", network=net.name, bridge=bridge, uri=self.uri)
                return bridge
            except libvirt.libvirtError as exc:
                raise NetworkBackendError(
                    f"cannot set up network {net.name} on {self.uri}: {exc.get_error_message()}"
                ) from exc

    @staticmethod
    def _autostart(net: libvirt.virNetwork) -> None:
        try:
            if not net.autostart():
                net.setAutostart(1)
        except libvirt.libvirtError:
            log.warning("libvirt_network_autostart_failed", network=net.name())

    def _pick_bridge(self) -> str:
        used = self._used_bridges()
        n = 0
        while f"{BRIDGE_PREFIX}{n}" in used:
            n += 1
        return f"{BRIDGE_PREFIX}{n}"

    def _update(self, net: libvirt.virNetwork, command: int, xml: str) -> None:
        flags = _UPDATE_FLAGS_CONFIG | (_UPDATE_FLAGS_LIVE if net.isActive() else 0)
        net.update(command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, xml, flags)

    def _add_host_sync(self, name: str, mac: str, ip: str) -> None:
        with self._net_lock(name):
            net = self._lookup(name)
            if net is None:
                raise NetworkBackendError(f"no network {name} on {self.uri}")
            try:
                self._update(net, libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, dhcp_host_xml(mac, ip))
                return
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise NetworkBackendError(f"cannot add DHCP host {mac} to {name}: {exc.get_error_message()}") \
                        from exc
            # An entry with this MAC or IP exists already (a retried build, a stale entry): replace it.
            try:
                current = parse_dhcp_hosts(_persistent_xml(net))
                if current.get(mac.lower()) == ip:
                    return
                for old_mac, old_ip in current.items():
                    if old_mac == mac.lower() or old_ip == ip:
                        self._update(net, libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, dhcp_host_xml(old_mac))
                self._update(net, libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, dhcp_host_xml(mac, ip))
            except libvirt.libvirtError as exc:
                raise NetworkBackendError(f"cannot add DHCP host {mac} to {name}: {exc.get_error_message()}") from exc

    def _remove_host_sync(self, name: str, mac: str) -> bool:
        with self._net_lock(name):
            net = self._lookup(name)
            if net is None:
                return False
            try:
                self._update(net, libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, dhcp_host_xml(mac))
                return True
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                    return False  # no such entry: already gone
                raise NetworkBackendError(
                    f"cannot remove DHCP host {mac} from {name}: {exc.get_error_message()}"
                ) from exc

    def _hosts_sync(self, name: str) -> dict[str, str]:
        net = self._lookup(name)
        if net is None:
            return {}
        try:
            return parse_dhcp_hosts(_persistent_xml(net))
        except libvirt.libvirtError as exc:
            raise NetworkBackendError(f"cannot read network {name}: {exc.get_error_message()}") from exc

    def _xml_sync(self, name: str) -> str | None:
        net = self._lookup(name)
        return None if net is None else net.XMLDesc(0)

    def _undefine_sync(self, name: str) -> None:
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
                    raise NetworkBackendError(f"cannot remove network {name}: {exc.get_error_message()}") from exc

    def _sync_hosts_sync(self, name: str, wanted: dict[str, str]) -> tuple[int, int]:
        current = self._hosts_sync(name)
        wanted = {m.lower(): ip for m, ip in wanted.items()}
        removed = added = 0
        for mac, ip in current.items():
            if wanted.get(mac) != ip:
                removed += self._remove_host_sync(name, mac)
        for mac, ip in wanted.items():
            if current.get(mac) != ip:
                self._add_host_sync(name, mac, ip)
                added += 1
        return added, removed

    def _close_sync(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            conn, self._own_conn = self._own_conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                log.warning("libvirt_close_failed", uri=self.uri)

    # -- the async API -------------------------------------------------------------
    async def ensure(self, net: LibvirtNetworkDef) -> str:
        """Define (if needed), start and autostart the isolated network; return its bridge name."""
        return await self._call(self._ensure_sync, net)

    async def add_dhcp_host(self, name: str, mac: str, ip: str) -> None:
        """Add (or replace) the DHCP host entry mac → ip, live and in the persistent config."""
        await self._call(self._add_host_sync, name, mac, ip)

    async def remove_dhcp_host(self, name: str, mac: str) -> bool:
        """Remove the entry for ``mac``; False (not an error) when there was none."""
        return await self._call(self._remove_host_sync, name, mac)

    async def dhcp_hosts(self, name: str) -> dict[str, str]:
        """MAC → IP of the network's DHCP host entries ({} when the network does not exist)."""
        return await self._call(self._hosts_sync, name)

    async def sync_dhcp_hosts(self, name: str, wanted: dict[str, str]) -> tuple[int, int]:
        """Make the entries exactly ``wanted`` (MAC → IP); returns (added, removed)."""
        return await self._call(self._sync_hosts_sync, name, wanted)

    async def network_xml(self, name: str) -> str | None:
        """The live XML of the network, None when it does not exist."""
        return await self._call(self._xml_sync, name)

    async def undefine(self, name: str) -> None:
        """Stop and remove the network; a missing one is fine."""
        await self._call(self._undefine_sync, name)

    async def close(self) -> None:
        """Wait for in-flight calls and close the connection this object opened; idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._close_sync)
