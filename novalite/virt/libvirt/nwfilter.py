"""A port's packet filter as a libvirt nwfilter, on a host's one connection.

:func:`design_port_filter` decides what the filter of a :class:`PortFilterSpec`
holds; :class:`LibvirtConfigNWFilter` only writes it as XML; :class:`LibvirtFilters`
defines, lists and removes filters through the host's connection.

A port with port security gets, in one filter of chain ``root``:

- ``clean-traffic`` (libvirt's own filter) with the port's IPs as ``IP``
  parameters: the guest may send only from its MAC and those IPs (no MAC, IP or
  ARP spoofing, no other L2 traffic);
- DHCP client traffic (udp 68 → 67 out, 67 → 68 in);
- one accept rule per allowed flow and remote (egress → ``out`` with the remote
  as destination, ingress → ``in`` with the remote as source);
- a final drop of all other IP traffic both ways.

libvirt matches connection state by default, so the replies of an allowed flow
pass: the groups are stateful as Neutron's are. A port without port security
gets a filter with no rules. Redefining a filter under the same name changes it
live on every running guest that references it.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass, field

import libvirt
import structlog
from lxml import etree

from novalite.virt.driver import FilterRule, PortFilterSpec, VirtError
from novalite.virt.libvirt.host import LibvirtHost

__all__ = ["LibvirtConfigNWFilter", "LibvirtConfigNWFilterRule", "LibvirtFilters", "design_port_filter"]

log = structlog.get_logger(__name__)

ANTI_SPOOFING = "clean-traffic"
RULE_PRIORITY = 500
DHCP_PRIORITY = 100
DROP_PRIORITY = 1000
# nwfilter protocols whose elements take destination ports.
_PORT_PROTOCOLS = {"tcp", "udp", "sctp"}
_DIRECTIONS = {"egress": "out", "ingress": "in"}
# Filters of a port are named after it; the uuid follows from the name when libvirt has none yet.
_UUID_NAMESPACE = uuid.UUID("2f0b9c8e-5d1a-4f4e-9a47-0c6f4f1c7d51")


@dataclass(eq=True)
class LibvirtConfigNWFilterRule:
    """``<rule action direction priority><protocol attr=.../></rule>``."""

    action: str
    direction: str
    priority: int
    protocol: str = "all"
    attrs: dict[str, str] = field(default_factory=dict)

    def format_dom(self) -> etree._Element:
        rule = etree.Element("rule", action=self.action, direction=self.direction, priority=str(self.priority))
        etree.SubElement(rule, self.protocol, **self.attrs)
        return rule


@dataclass(eq=True)
class LibvirtConfigNWFilter:
    """``<filter name chain>``: a uuid, references to other filters with parameters, rules."""

    name: str
    uuid: str
    chain: str = "root"
    # (filter name, [(parameter, value), ...])
    refs: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    rules: list[LibvirtConfigNWFilterRule] = field(default_factory=list)

    def format_dom(self) -> etree._Element:
        root = etree.Element("filter", name=self.name, chain=self.chain)
        etree.SubElement(root, "uuid").text = self.uuid
        for ref, params in self.refs:
            el = etree.SubElement(root, "filterref", filter=ref)
            for key, value in params:
                etree.SubElement(el, "parameter", name=key, value=value)
        for rule in self.rules:
            root.append(rule.format_dom())
        return root

    def to_xml(self) -> str:
        return etree.tostring(self.format_dom(), pretty_print=True, encoding="unicode")


def _remote_attrs(side: str, cidr: str) -> dict[str, str]:
    net = ipaddress.ip_network(cidr, strict=False)
    return {f"{side}ipaddr": str(net.network_address), f"{side}ipmask": str(net.prefixlen)}


def _match_attrs(rule: FilterRule) -> dict[str, str]:
    """The protocol element's port or ICMP attributes of a rule."""
    attrs: dict[str, str] = {}
    if rule.protocol in _PORT_PROTOCOLS and rule.port_min is not None:
        attrs["dstportstart"] = str(rule.port_min)
        attrs["dstportend"] = str(rule.port_max if rule.port_max is not None else rule.port_min)
    elif rule.protocol == "icmp":
        if rule.port_min is not None:
            attrs["type"] = str(rule.port_min)
        if rule.port_max is not None:
            attrs["code"] = str(rule.port_max)
    return attrs


def _accept_rules(rule: FilterRule) -> list[LibvirtConfigNWFilterRule]:
    """One accept rule per remote of an allowed flow (none for a remote group without members)."""
    direction = _DIRECTIONS[rule.direction]
    side = "dst" if rule.direction == "egress" else "src"
    protocol = rule.protocol or "all"
    base = _match_attrs(rule)
    remotes: tuple[str | None, ...] = (None,) if rule.remotes is None else rule.remotes
    return [
        LibvirtConfigNWFilterRule("accept", direction, RULE_PRIORITY, protocol,
                                  {**(_remote_attrs(side, r) if r else {}), **base})
        for r in remotes
    ]


def design_port_filter(spec: PortFilterSpec, filter_uuid: str) -> LibvirtConfigNWFilter:
    """The nwfilter of a port: anti-spoofing, DHCP, its allowed flows, then drop (see module doc)."""
    nwfilter = LibvirtConfigNWFilter(name=spec.name, uuid=filter_uuid)
    if not spec.enabled:
        return nwfilter
    nwfilter.refs.append((ANTI_SPOOFING, [("IP", ip) for ip in spec.ips]))
    nwfilter.rules += [
        LibvirtConfigNWFilterRule("accept", "out", DHCP_PRIORITY, "udp", {"srcportstart": "68", "dstportstart": "67"}),
        LibvirtConfigNWFilterRule("accept", "in", DHCP_PRIORITY, "udp", {"srcportstart": "67", "dstportstart": "68"}),
    ]
    for rule in spec.rules:
        nwfilter.rules += _accept_rules(rule)
    nwfilter.rules.append(LibvirtConfigNWFilterRule("drop", "inout", DROP_PRIORITY))
    return nwfilter


class LibvirtFilters:
    """The port filters of one host; blocking methods (``*_sync``) run in the host's workers."""

    def __init__(self, host: LibvirtHost) -> None:
        self.host = host

    def _lookup(self, name: str) -> libvirt.virNWFilter | None:
        try:
            return self.host.connection().nwfilterLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_NWFILTER:
                return None
            raise VirtError(f"cannot look up filter {name}: {exc.get_error_message()}", exc.get_error_code()) from exc

    def set_sync(self, spec: PortFilterSpec) -> None:
        """Define or redefine the filter, keeping the uuid libvirt knows it by."""
        existing = self._lookup(spec.name)
        filter_uuid = existing.UUIDString() if existing is not None else str(uuid.uuid5(_UUID_NAMESPACE, spec.name))
        try:
            self.host.connection().nwfilterDefineXML(design_port_filter(spec, filter_uuid).to_xml())
        except libvirt.libvirtError as exc:
            raise VirtError(f"cannot define filter {spec.name} on {self.host.uri}: {exc.get_error_message()}",
                            exc.get_error_code()) from exc

    def remove_sync(self, name: str) -> bool:
        """Undefine the filter; False when there is none or a NIC still uses it (logged)."""
        existing = self._lookup(name)
        if existing is None:
            return False
        try:
            existing.undefine()
            return True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_NWFILTER:
                return False
            log.warning("port_filter_in_use", filter=name, uri=self.host.uri, error=exc.get_error_message())
            return False

    def names_sync(self, prefix: str) -> list[str]:
        return sorted(n for n in self.host.connection().listNWFilters() if n.startswith(prefix))

    def xml_sync(self, name: str) -> str | None:
        existing = self._lookup(name)
        return None if existing is None else existing.XMLDesc(0)
