"""Neutron's request bodies: attribute maps, their validation, and the plan of a subnet.

Like Neutron's API layer (``neutron_lib.api.attributes``), a body must be
``{"<resource>": {...}}``; an attribute the resource does not have is 400
``Unrecognized attribute(s) 'x'``; a value of the wrong type is 400 ``Invalid input
for <attr>. Reason: ...``; a PUT of an attribute that cannot change is 400 ``Cannot
update read-only attribute <attr>``. Values come back converted (``"true"`` → True).
:func:`plan_subnet` checks a subnet's CIDR, gateway and allocation pools with
Neutron's exception types (InvalidAllocationPool, OutOfBoundsAllocationPool,
OverlappingAllocationPools, GatewayConflictWithAllocationPools).
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from novalite.api import errors

MAX_MTU = 9000
MIN_MTU = 68  # the smallest IPv4 MTU
MAX_QUOTA = 2**31 - 1  # network_quotas.hard_limit is a Postgres integer
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", re.IGNORECASE)


class NeutronError(errors.ApiError):
    """An error with Neutron's exception type name (e.g. NetworkNotFound), rendered by the error middleware."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message, code=status)
        self.kind = kind


def invalid_input(message: str) -> NeutronError:
    """Neutron's InvalidInput (400)."""
    return NeutronError(400, "InvalidInput", f"Invalid input for operation: {message}")


class _Bad(ValueError):
    """A value failed its attribute's validation; the text is Neutron's reason."""


Validator = Callable[[Any], Any]


def string(value: Any, max_len: int = 255) -> str:
    if not isinstance(value, str):
        raise _Bad(f"'{value}' is not a valid string")
    if len(value) > max_len:
        raise _Bad(f"'{value}' exceeds maximum length of {max_len}")
    return value


def boolean(value: Any) -> bool:
    """Neutron's convert_to_boolean: booleans, 0/1 and the strings true/false."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise _Bad(f"'{value}' cannot be converted to boolean")


def integer(value: Any) -> int:
    """Neutron's convert_to_int: integers and their decimal strings."""
    if isinstance(value, bool):
        raise _Bad(f"'{value}' is not an integer")
    try:
        return int(value) if isinstance(value, (int, str)) else int("x")
    except ValueError:
        raise _Bad(f"'{value}' is not an integer") from None


def uuid_text(value: Any) -> str:
    try:
        return str(uuid.UUID(string(value)))
    except ValueError:
        raise _Bad(f"'{value}' is not a valid UUID") from None


def ipv4(value: Any) -> str:
    try:
        return str(ipaddress.IPv4Address(string(value)))
    except ValueError:
        raise _Bad(f"'{value}' is not a valid IP address") from None


def optional_ipv4(value: Any) -> str | None:
    return None if value is None else ipv4(value)


def mac(value: Any) -> str:
    if not isinstance(value, str) or not _MAC.match(value):
        raise _Bad(f"'{value}' is not a valid MAC address")
    return value.lower()


def mtu(value: Any) -> int:
    number = integer(value)
    if not MIN_MTU <= number <= MAX_MTU:
        raise _Bad(f"'{number}' is not in range {MIN_MTU} through {MAX_MTU}")
    return number


def only(*allowed: Any) -> Validator:
    """An attribute novalite accepts only with the values it has (e.g. ``subnetpool_id`` null)."""

    def check(value: Any) -> Any:
        if value not in allowed:
            raise _Bad(f"'{value}' is not supported here; only {', '.join(repr(a) for a in allowed)}")
        return value

    return check


def list_of(item: Validator) -> Validator:
    def check(value: Any) -> list:
        if not isinstance(value, list):
            raise _Bad(f"'{value}' is not a list")
        return [item(v) for v in value]

    return check


def dict_with(required: tuple[str, ...], optional: dict[str, Validator], fields: dict[str, Validator]) -> Validator:
    """A dict holding exactly ``required`` keys (all of ``fields``) or a subset of ``optional``."""

    def check(value: Any) -> dict:
        if not isinstance(value, dict):
            raise _Bad(f"'{value}' is not a dictionary")
        known = {**fields, **optional}
        extra = set(value) - set(known)
        missing = [k for k in required if k not in value]
        if extra or missing:
            raise _Bad(f"'{value}' must hold only {', '.join(sorted(known))}")
        return {k: known[k](v) for k, v in value.items()}

    return check


def non_empty_dict(value: Any) -> dict:
    if not isinstance(value, dict):
        raise _Bad(f"'{value}' is not a dictionary")
    return value


@dataclass(frozen=True)
class Attr:
    """One attribute of a resource: its check, whether a PUT may set it, whether a POST must."""

    check: Validator
    put: bool = True
    required: bool = False


def parse(body: Any, resource: str, attrs: dict[str, Attr], *, create: bool) -> dict:
    """The resource's attributes from ``{"<resource>": {...}}``, converted, or Neutron's 400."""
    if not body:
        raise errors.BadRequest("Resource body required")
    if not isinstance(body, dict) or resource not in body:
        raise errors.BadRequest(f"Unable to find '{resource}' in request body")
    item = body[resource]
    if not isinstance(item, dict):
        raise errors.BadRequest(f"Object '{resource}' contains invalid data")
    extra = [k for k in item if k not in attrs]
    if extra:
        raise errors.BadRequest(f"Unrecognized attribute(s) '{', '.join(extra)}'")
    if create:
        missing = [k for k, a in attrs.items() if a.required and k not in item]
        if missing:
            raise errors.BadRequest(f"Failed to parse request. Required attribute '{missing[0]}' not specified")
    else:
        for k in item:
            if not attrs[k].put:
                raise errors.BadRequest(f"Cannot update read-only attribute {k}")
    out = {}
    for key, value in item.items():
        try:
            out[key] = attrs[key].check(value)
        except _Bad as exc:
            raise errors.BadRequest(f"Invalid input for {key}. Reason: {exc}.") from None
    if "tenant_id" in out and "project_id" in out and out["tenant_id"] != out["project_id"]:
        raise errors.BadRequest("'project_id' and 'tenant_id' do not match")
    return out


def parse_many(body: Any, resource: str, attrs: dict[str, Attr]) -> tuple[list[dict], bool]:
    """The items of a POST: ``{"<resource>": {...}}`` or, in bulk, ``{"<resource>s": [{...}, ...]}``;
    and whether it was a bulk request."""
    collection = f"{resource}s"
    if not isinstance(body, dict) or collection not in body:
        return [parse(body, resource, attrs, create=True)], False
    items = body[collection]
    if not isinstance(items, list) or not items:
        raise errors.BadRequest("Resources required")
    return [parse({resource: item}, resource, attrs, create=True) for item in items], True


def project_of(attrs: dict, default: str) -> str:
    """The project a new resource belongs to: the body's project_id/tenant_id, else the caller's."""
    return attrs.get("project_id") or attrs.get("tenant_id") or default


_PROJECT = {"tenant_id": Attr(string, put=False), "project_id": Attr(string, put=False)}

NETWORK = {
    "name": Attr(string), "description": Attr(string), "admin_state_up": Attr(boolean),
    "shared": Attr(boolean), "router:external": Attr(boolean), "port_security_enabled": Attr(boolean),
    "mtu": Attr(mtu), "availability_zone_hints": Attr(only([]), put=False), **_PROJECT,
}

_POOL = dict_with(("start", "end"), {}, {"start": ipv4, "end": ipv4})
_ROUTE = dict_with(("destination", "nexthop"), {}, {"destination": string, "nexthop": ipv4})
SUBNET = {
    "network_id": Attr(uuid_text, put=False, required=True), "cidr": Attr(string, put=False, required=True),
    "ip_version": Attr(integer, put=False, required=True), "name": Attr(string), "description": Attr(string),
    "gateway_ip": Attr(optional_ipv4), "allocation_pools": Attr(list_of(_POOL)),
    "dns_nameservers": Attr(list_of(ipv4)), "host_routes": Attr(list_of(_ROUTE)), "enable_dhcp": Attr(boolean),
    "subnetpool_id": Attr(only(None), put=False), "use_default_subnetpool": Attr(only(False), put=False),
    "ipv6_ra_mode": Attr(only(None), put=False), "ipv6_address_mode": Attr(only(None), put=False),
    "segment_id": Attr(only(None), put=False), "service_types": Attr(only([])), **_PROJECT,
}

_FIXED_IP = dict_with((), {"subnet_id": uuid_text, "ip_address": ipv4}, {})
PORT = {
    "network_id": Attr(uuid_text, put=False, required=True), "name": Attr(string), "description": Attr(string),
    "admin_state_up": Attr(boolean), "mac_address": Attr(mac, put=False), "fixed_ips": Attr(list_of(_FIXED_IP)),
    "port_security_enabled": Attr(boolean), "security_groups": Attr(list_of(uuid_text)),
    "device_id": Attr(string), "device_owner": Attr(string), "binding:host_id": Attr(string),
    "binding:vnic_type": Attr(only("normal")), "binding:profile": Attr(only({})),
    "allowed_address_pairs": Attr(only([])), **_PROJECT,
}


# -- subnets ----------------------------------------------------------------------------

UNSET = object()


@dataclass(frozen=True)
class SubnetPlan:
    cidr: str
    gateway_ip: str | None
    allocation_pools: list[dict]


def parse_cidr(text: str, ip_version: int) -> ipaddress.IPv4Network:
    """The subnet's CIDR: IPv4, host bits clear (Neutron's 400 otherwise)."""
    if ip_version == 6:
        raise invalid_input("this cloud has IPv4 subnets only; ip_version 6 is not supported.")
    if ip_version != 4:
        raise errors.BadRequest(f"Invalid input for ip_version. Reason: {ip_version} is not in [4, 6].")
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise errors.BadRequest(f"Invalid input for cidr. Reason: '{text}' is not a valid IP subnet.") from None
    if str(net) != text:
        raise errors.BadRequest(
            f"Invalid input for cidr. Reason: '{text}' isn't a recognized IP subnet cidr, '{net}' is recommended.")
    if not 8 <= net.prefixlen <= 30:
        raise invalid_input(f"the prefix length of {net} must be between 8 and 30.")
    return net


def _pool_text(start: ipaddress.IPv4Address, end: ipaddress.IPv4Address) -> str:
    return f"{start}-{end}"


def plan_subnet(net: ipaddress.IPv4Network, gateway: Any = UNSET, pools: list[dict] | None = None) -> SubnetPlan:
    """Gateway (default: the first host address; None: no gateway) and allocation pools (default:
    the other host addresses) of a subnet, checked as Neutron checks them."""
    first, last = net.network_address + 1, net.broadcast_address - 1
    gw = first if gateway is UNSET else (ipaddress.IPv4Address(gateway) if gateway else None)
    if gw is not None and (gw not in net or gw in (net.network_address, net.broadcast_address)):
        raise invalid_input(f"Gateway is not valid on subnet {net}.")
    if pools is None:
        ranges = _default_pools(first, last, gw)
    else:
        ranges = _checked_pools(net, pools)
        for start, end in ranges:
            if gw is not None and start <= gw <= end:
                raise NeutronError(409, "GatewayConflictWithAllocationPools",
                                   f"Gateway ip {gw} conflicts with allocation pool {_pool_text(start, end)}.")
    return SubnetPlan(str(net), str(gw) if gw else None,
                      [{"start": str(s), "end": str(e)} for s, e in ranges])


def _default_pools(first, last, gw) -> list[tuple]:
    if gw is None or not first <= gw <= last:
        return [(first, last)]
    return [(s, e) for s, e in ((first, gw - 1), (gw + 1, last)) if s <= e]


def _checked_pools(net: ipaddress.IPv4Network, pools: list[dict]) -> list[tuple]:
    ranges = []
    for pool in pools:
        start, end = ipaddress.IPv4Address(pool["start"]), ipaddress.IPv4Address(pool["end"])
        if start > end:
            raise NeutronError(400, "InvalidAllocationPool",
                               f"The allocation pool {_pool_text(start, end)} is not valid.")
        if not (net.network_address < start and end < net.broadcast_address):
            raise NeutronError(400, "OutOfBoundsAllocationPool",
                               f"The allocation pool {_pool_text(start, end)} spans beyond the subnet cidr {net}.")
        ranges.append((start, end))
    ranges.sort()
    for (s1, e1), (s2, e2) in zip(ranges, ranges[1:], strict=False):
        if s2 <= e1:
            raise NeutronError(409, "OverlappingAllocationPools",
                               f"Found overlapping allocation pools: {_pool_text(s1, e1)} "
                               f"{_pool_text(s2, e2)} for subnet {net}.")
    return ranges
