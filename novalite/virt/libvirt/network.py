"""libvirt networks and their DHCP host entries, on a host's one connection.

A novalite network on a host is by default a libvirt network with NO ``<forward>``
element: libvirt makes a bridge and a dnsmasq for it, and nothing is routed or
NATed off the machine. A configured network may instead be ``nat`` (the same with
``<forward mode='nat'/>``: libvirt NATs guest traffic out through the host) or
``bridge`` (``<forward mode='bridge'/>`` on an existing host bridge: no address,
no DHCP of ours, the LAN's apply). Each port gets a ``<dhcp><host mac= ip=/>`` entry, so the
guest's DHCP lease is the port's fixed IP. The same calls work on libvirt's
test driver (``test:///``), which keeps networks in its connection, so a
simulated host's networks sit beside its domains in one connection.

A tenant network (made through the API) on this machine is a bare bridge: no
host address, so no host route and CIDRs may overlap; its DHCP runs in a
namespace of its own (:mod:`.netns`) whose hostsfile holds the entries. Remote
hosts cannot have one yet; on the test driver it is an ordinary network.

What a network looks like is decided in :func:`design_network`; the XML is
written and read by :mod:`novalite.virt.libvirt.config`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import libvirt
import structlog

from novalite.virt.driver import NetworkSpec, VirtError
from novalite.virt.libvirt import metadata
from novalite.virt.libvirt.config import LibvirtConfigNetwork, LibvirtConfigNetworkDHCPHost
from novalite.virt.libvirt.host import LibvirtHost
from novalite.virt.libvirt.netns import (
    DhcpNamespace,
    list_namespaces,
    tenant_libvirt_name,
    tenant_names,
    tenant_prefix,
)

__all__ = ["BRIDGE_PREFIX", "LibvirtNetworks", "design_network", "host_address", "serves_dhcp"]

log = structlog.get_logger(__name__)

BRIDGE_PREFIX = "virbr-nl"
_UPDATE_FLAGS_CONFIG = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
_UPDATE_FLAGS_LIVE = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE


def host_address(net: NetworkSpec, simulated: bool) -> str | None:
    """The address the network's bridge holds on the host, which is where libvirt serves its DHCP.

    A configured network: its gateway. A tenant network: none on a real host (no host
    route, so CIDRs may overlap; DHCP runs in a namespace, :mod:`.netns`); on the test
    driver, which routes nothing, its DHCP server address so its DHCP entries live in libvirt.
    """
    if net.forward == "bridge":
        return None
    if not net.tenant:
        return net.gateway
    return net.dhcp_server if simulated and serves_dhcp(net) else None


def serves_dhcp(net: NetworkSpec) -> bool:
    """Whether the network has a DHCP server: a DHCP-enabled subnet with a DHCP port address."""
    return net.enable_dhcp and bool(net.dhcp_server)


def _dnsmasq_options(net: NetworkSpec, address: str | None) -> list[str]:
    """libvirt's dnsmasq gives no router on an isolated network: the subnet's host routes (the
    metadata address via the gateway) go out as a DHCP classless static route. On a NAT network,
    where the gateway is the router, the route list starts with the default route as Neutron's
    does: a client given classless routes ignores the router option (RFC 3442)."""
    if not address or not net.host_routes:
        return []
    routes = ([("0.0.0.0/0", address)] if net.forward == "nat" else []) + list(net.host_routes)
    return ["dhcp-option=option:classless-static-route," + ",".join(f"{d},{h}" for d, h in routes)]


def _forward_mode(net: NetworkSpec) -> str | None:
    """libvirt's ``<forward mode>`` of the network: none for an isolated one."""
    return None if net.forward == "isolated" else net.forward


def design_network(net: NetworkSpec, bridge: str, hosts: list[tuple[str, str]] = (),
                   simulated: bool = False) -> LibvirtConfigNetwork:
    """The network on ``bridge`` and, when it holds a host address, libvirt's DHCP over the
    range with its host entries and host routes; without one a bare bridge. Isolated: no
    forward mode, guests reach only each other (and the host's dnsmasq); NAT: the same, NATed
    out through the host. Bridge: only the existing host bridge (libvirt neither makes it nor
    sets its STP, delay or MTU)."""
    if net.forward == "bridge":
        return LibvirtConfigNetwork(name=net.name, uuid=net.uuid, forward_mode="bridge", bridge=net.host_bridge)
    address = host_address(net, simulated)
    return LibvirtConfigNetwork(
        name=net.name,
        uuid=net.uuid,
        forward_mode=_forward_mode(net),
        bridge=bridge,
        bridge_stp=True,
        bridge_delay=0,
        mtu=net.mtu,
        ip_address=address,
        ip_netmask=net.netmask if address else None,
        dhcp_start=net.dhcp_start if address else None,
        dhcp_end=net.dhcp_end if address else None,
        dhcp_hosts=[LibvirtConfigNetworkDHCPHost(mac=mac, ip=ip) for mac, ip in hosts] if address else [],
        dnsmasq_options=_dnsmasq_options(net, address),
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


def _shares_interfaces(host: LibvirtHost) -> bool:
    """Whether the host's bridges are among this machine's interfaces: a local host, or a daemon on
    this machine reached over loopback (a `scripts/lab-host.sh` host), whose bridges must not take
    a name another daemon's bridge has."""
    return _is_local(host) or urlsplit(host.uri).hostname in ("127.0.0.1", "localhost", "::1")


class LibvirtNetworks:
    """The networks of one host; blocking methods (``*_sync``) run in the host's workers.

    ``state_dir`` holds the DHCP servers of tenant networks on this machine (:mod:`.netns`).
    """

    def __init__(self, host: LibvirtHost, state_dir: Path | None = None) -> None:
        self.host = host
        self.state_dir = state_dir
        self._lock = threading.Lock()
        # One lock per libvirt network: a DHCP update is read-modify-write for the ADD fallback.
        self._net_locks: dict[str, threading.Lock] = {}
        # libvirt name → the DHCP namespace of a tenant network ensured on this machine
        self._namespaces: dict[str, DhcpNamespace] = {}

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
            try:
                xml = net.XMLDesc(0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                    continue  # removed since the list (another client of this libvirt): its bridge is free
                raise
            bridge = LibvirtConfigNetwork.from_xml(xml).bridge
            if bridge:
                used.add(bridge)
        if _shares_interfaces(self.host) and os.path.isdir("/sys/class/net"):
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

    # -- tenant networks: a bridge per network, DHCP in a namespace ---------------
    def _namespace_of(self, name: str, network_id: str) -> DhcpNamespace | None:
        """The DHCP namespace of tenant network ``name`` when it can have one here (this machine's qemu)."""
        prefix = tenant_prefix(name, network_id)
        if prefix is None or not _is_local(self.host):
            return None
        if self.state_dir is None:
            raise VirtError(f"tenant network {name}: the driver has no state directory for its DHCP server")
        return DhcpNamespace.of(prefix, network_id, self.state_dir)

    def _tenant_bridge(self, net: NetworkSpec) -> str:
        """The tenant network's own bridge; VirtError where no namespace can serve its DHCP."""
        prefix = tenant_prefix(net.name, net.uuid)
        if prefix is None:
            raise VirtError(f"tenant network {net.name} is not named prefix + 'n' + 12 hex digits of {net.uuid}")
        if not self.host.in_process and not _is_local(self.host):
            raise VirtError(f"tenant network {net.name} cannot be made on {self.host.uri}: its DHCP server "
                            "needs a network namespace on this machine, and remote hosts have none yet")
        return tenant_names(prefix, net.uuid).bridge

    def ensure_sync(self, net: NetworkSpec) -> str:
        bridge = self._tenant_bridge(net) if net.tenant else net.host_bridge
        with self._net_lock(net.name):
            bridge = self._ensure_libvirt(net, bridge)
            if not net.tenant and _is_local(self.host):
                if net.metadata_port and net.gateway:
                    metadata.ensure_redirect(net.name, bridge, net.gateway, net.metadata_port)
                else:
                    metadata.remove_redirect(net.name)
            namespace = self._namespace_of(net.name, net.uuid) if net.tenant else None
            if namespace is not None:
                if serves_dhcp(net):
                    namespace.ensure(net)
                    self._namespaces[net.name] = namespace
                else:
                    namespace.remove()
                    self._namespaces.pop(net.name, None)
            return bridge

    def _ensure_libvirt(self, net: NetworkSpec, bridge: str | None) -> str:
        """Define (or redefine when its address, bridge, routes or forward mode changed), start and
        autostart the network."""
        uri, simulated = self.host.uri, self.host.in_process
        existing = self._lookup(net.name)
        try:
            if existing is not None:
                cfg = _persistent_config(existing)
                address = host_address(net, simulated)
                # A network that was in bridge mode leaves the host's bridge to the host.
                own_bridge = cfg.bridge if cfg.forward_mode != "bridge" else None
                wanted = (address, net.netmask if address else None, bridge or own_bridge,
                          _dnsmasq_options(net, address), _forward_mode(net))
                if (cfg.ip_address, cfg.ip_netmask, cfg.bridge, cfg.dnsmasq_options, cfg.forward_mode) == wanted:
                    if not existing.isActive():
                        existing.create()
                    self._autostart(existing)
                    return cfg.bridge or ""
                # The subnet, its routes or the forward mode changed: redefine it, keeping its own bridge.
                log.warning("libvirt_network_redefined", network=net.name, uri=uri,
                            forward=net.forward, was=cfg.forward_mode or "isolated")
                hosts = list(_dhcp_hosts(cfg).items())
                if existing.isActive():
                    existing.destroy()
                existing.undefine()
                bridge = bridge or own_bridge or self._pick_bridge()
                in_subnet = ipaddress.ip_network(net.cidr, strict=False) if net.cidr else None
                hosts = [(m, a) for m, a in hosts if a and in_subnet and ipaddress.ip_address(a) in in_subnet]
            else:
                bridge, hosts = bridge or self._pick_bridge(), []
            xml = design_network(net, bridge, hosts, simulated).to_xml()
            created = self.host.connection().networkDefineXML(xml)
            created.create()
            self._autostart(created)
            log.info("libvirt_network_started", network=net.name, bridge=bridge, uri=uri)
            return bridge
        except libvirt.libvirtError as exc:
            raise VirtError(f"cannot set up network {net.name} on {uri}: {exc.get_error_message()}",
                            exc.get_error_code()) from exc

    def prune_tenant_sync(self, prefix: str, keep: set[str]) -> list[str]:
        """Remove this cloud's tenant networks (libvirt network, namespace, dnsmasq) not in ``keep``,
        and the metadata redirects of its networks no longer in libvirt.

        Tenant networks are found by name: libvirt networks ``prefix`` + "n" + 12 hex digits,
        namespaces ``prefix`` + "dhcp-" + network id and their DHCP state directories.
        Returns the libvirt names removed.
        """
        pattern = re.compile(re.escape(prefix) + r"n[0-9a-f]{12}")
        removed = [net.name() for net in self.host.connection().listAllNetworks(0)
                   if pattern.fullmatch(net.name()) and net.name() not in keep]
        for name in removed:
            self.undefine_sync(name)
        if _is_local(self.host) and self.state_dir is not None:
            ns_prefix = f"{prefix}dhcp-"
            dhcp_dir = self.state_dir / "dhcp"
            leftovers = set(list_namespaces()) | set(os.listdir(dhcp_dir) if dhcp_dir.is_dir() else ())
            for ns in sorted(n for n in leftovers if n.startswith(ns_prefix)):
                network_id = ns.removeprefix(ns_prefix)
                name = tenant_libvirt_name(prefix, network_id)
                if name not in keep:
                    DhcpNamespace.of(prefix, network_id, self.state_dir).remove()
                    self._namespaces.pop(name, None)
                    if name not in removed:
                        removed.append(name)
        if _is_local(self.host):
            metadata.prune_redirects(prefix, {net.name() for net in self.host.connection().listAllNetworks(0)})
        return removed

    @staticmethod
    def _update(net: libvirt.virNetwork, command: int, xml: str) -> None:
        flags = _UPDATE_FLAGS_CONFIG | (_UPDATE_FLAGS_LIVE if net.isActive() else 0)
        net.update(command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, xml, flags)

    def add_host_sync(self, name: str, mac: str, ip: str) -> None:
        with self._net_lock(name):
            if (namespace := self._namespaces.get(name)) is not None:
                hosts = {m: a for m, a in namespace.hosts().items() if m != mac.lower() and a != ip}
                namespace.write_hosts({**hosts, mac.lower(): ip})
                return
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
            if (namespace := self._namespaces.get(name)) is not None:
                hosts = namespace.hosts()
                if hosts.pop(mac.lower(), None) is None:
                    return False
                namespace.write_hosts(hosts)
                return True
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
        if (namespace := self._namespaces.get(name)) is not None:
            return namespace.hosts()
        net = self._lookup(name)
        if net is None:
            return {}
        try:
            return _dhcp_hosts(_persistent_config(net))
        except libvirt.libvirtError as exc:
            raise VirtError(f"cannot read network {name}: {exc.get_error_message()}", exc.get_error_code()) from exc

    def metadata_socket_sync(self, name: str, port: int) -> socket.socket | None:
        """The metadata socket of tenant network ``name``'s DHCP namespace on this machine; None
        where the network has none here (no DHCP, a remote or simulated host)."""
        with self._net_lock(name):
            namespace = self._namespaces.get(name)
            return namespace.metadata_socket(port) if namespace is not None else None

    def xml_sync(self, name: str) -> str | None:
        net = self._lookup(name)
        return None if net is None else net.XMLDesc(0)

    def undefine_sync(self, name: str) -> None:
        """Stop and remove the network, with a tenant network's namespace, veth and dnsmasq."""
        with self._net_lock(name):
            net = self._lookup(name)
            if net is None:
                return
            namespace = self._namespace_of(name, net.UUIDString())
            if namespace is not None:
                namespace.remove()
                self._namespaces.pop(name, None)
            elif _is_local(self.host):
                metadata.remove_redirect(name)
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
        if (namespace := self._namespaces.get(name)) is not None:
            if current != wanted:
                namespace.write_hosts(wanted)  # one rewrite, one SIGHUP
            return (sum(current.get(m) != ip for m, ip in wanted.items()),
                    sum(wanted.get(m) != ip for m, ip in current.items()))
        removed = added = 0
        for mac, ip in current.items():
            if wanted.get(mac) != ip:
                removed += self.remove_host_sync(name, mac)
        for mac, ip in wanted.items():
            if current.get(mac) != ip:
                self.add_host_sync(name, mac, ip)
                added += 1
        return added, removed
