"""Nova's security-group proxy: /os-security-groups and /os-security-group-rules, 2.1 to 2.35.

Nova answers these by calling Neutron with the caller's token
(nova/network/security_group_api.py); here the same happens in process: Nova's
policy and body checks, Nova's translation of a rule into a Neutron ingress rule,
then Neutron's own validation, queries, quota and datapath follow-up from
``novalite.api.security_groups`` on the same tables. Answers are Nova's format
(only ingress rules have one). Neutron's errors keep their text and take the status
Nova gives them (its 409s become 400, or 403 on create). From 2.36 every route is 404.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from novalite.api import errors, keys
from novalite.api import security_groups as neutron
from novalite.api.compute.common import authorize, proxy_only
from novalite.api.compute.validation import (
    NON_NEGATIVE_INT,
    offset_and_limit,
    validate_body,
    validate_query,
)
from novalite.api.middleware import read_json
from novalite.api.neutron_attrs import NeutronError
from novalite.api.policy import context
from novalite.db import is_uuid
from novalite.db import security_groups as q
from novalite.network import quota

POLICY = "os_compute_api:os-security-groups:%s"

_TEXT = {"type": "string", "minLength": 0, "maxLength": 255}
GROUP_BODY = {"type": "object", "properties": {"security_group": {
    "type": "object", "properties": {"name": _TEXT, "description": _TEXT},
    "required": ["name", "description"]}}, "required": ["security_group"]}
RULE_BODY = {"type": "object", "properties": {"security_group_rule": {
    "type": "object", "properties": {"group_id": {"type": ["string", "null"], "format": "uuid"},
                                     "parent_group_id": {"type": "string", "format": "uuid"}},
    "required": ["parent_group_id"]}}, "required": ["security_group_rule"]}
INDEX_QUERY = {"limit": NON_NEGATIVE_INT, "offset": NON_NEGATIVE_INT, "all_tenants": {"type": "string"}}


# -- Nova's views ------------------------------------------------------------------------


def rule_view(rule: dict, group_id: str) -> dict:
    """A rule in Nova's format (security_group_api's conversion, then the controller's view):
    a protocol without ports shows the whole range (tcp/udp 1-65535, others -1)."""
    protocol = rule["protocol"]
    low, high = rule["port_range_min"], rule["port_range_max"]
    if protocol and low is None and high is None:
        low, high = (1, 65535) if protocol.upper() in ("TCP", "UDP") else (-1, -1)
    doc = {"id": rule["id"], "parent_group_id": group_id, "ip_protocol": protocol, "from_port": low,
           "to_port": high, "group": {}, "ip_range": {}}
    if rule["remote_group_name"] is not None:
        doc["group"] = {"name": rule["remote_group_name"], "tenant_id": rule["remote_group_project"]}
    else:
        doc["ip_range"] = {"cidr": rule["remote_ip_prefix"] or "0.0.0.0/0"}
    return doc


def security_group_view(group: dict) -> dict:
    """Nova's security group document; only ingress rules have a Nova form."""
    return {"id": group["id"], "name": group["name"], "description": group["description"],
            "tenant_id": group["project_id"],
            "rules": [rule_view(r, group["id"]) for r in group["rules"] if r["direction"] == "ingress"]}


# -- lookups and errors ------------------------------------------------------------------


def _checked_id(value: str) -> str:
    if not is_uuid(value):
        raise errors.BadRequest("Security group id should be uuid")
    return value


def _group_not_found(group_id: str) -> errors.NotFound:
    return errors.NotFound(f"Security group {group_id} not found.")


async def _group(request: web.Request, group_id: str) -> dict:
    """The group if Neutron would show it to the caller, else Nova's 404."""
    async with request.app[keys.DB].acquire() as conn:
        g = await q.get_group(conn, group_id)
    if not neutron.readable(request, g):
        raise _group_not_found(group_id)
    return g


def _as_nova(exc: NeutronError, conflict_status: int) -> errors.ApiError:
    """Neutron's error as Nova's proxy passes it on: the same text; a 409 takes ``conflict_status``."""
    return errors.ApiError(exc.message, code=conflict_status) if exc.code == 409 else exc


def _policy(request: web.Request, action: str) -> None:
    authorize(request, POLICY % action, {"project_id": context(request).project_id})


# -- groups ------------------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    """The project's groups (every project's for an admin asking ``all_tenants``), sorted by
    (tenant_id, name) after Nova's offset/limit."""
    proxy_only(request)
    _policy(request, "get")
    validate_query(request, INDEX_QUERY)
    ctx = context(request)
    every_project = ctx.is_admin and "all_tenants" in request.query
    offset, limit = offset_and_limit(request)
    async with request.app[keys.DB].acquire() as conn:
        await q.ensure_default_security_group(conn, ctx.project_id)
        rows = await q.list_groups(conn, project_id=ctx.project_id, is_admin=every_project)
    docs = [security_group_view(g) for g in rows[offset:offset + limit]]
    return web.json_response({"security_groups": sorted(docs, key=lambda g: (g["tenant_id"], g["name"]))})


async def show(request: web.Request) -> web.Response:
    proxy_only(request)
    _policy(request, "show")
    g = await _group(request, _checked_id(request.match_info["group_id"]))
    return web.json_response({"security_group": security_group_view(g)})


async def _group_body(request: web.Request) -> dict:
    body = await read_json(request)
    validate_body(GROUP_BODY, body)
    return body["security_group"]


async def create(request: web.Request) -> web.Response:
    """A new group in the caller's project, with Neutron's egress rules (not shown: egress)."""
    proxy_only(request)
    item = await _group_body(request)
    _policy(request, "create")
    try:
        neutron.check_new_name(item["name"])
        g = await neutron.create_group(request, context(request).project_id, item["name"], item["description"])
    except quota.OverQuota:
        raise errors.QuotaExceeded("Quota exceeded, too many security groups.") from None
    except NeutronError as exc:
        raise _as_nova(exc, 403) from None
    return web.json_response({"security_group": security_group_view(g)})


async def update(request: web.Request) -> web.Response:
    """Name and description, both required as Nova's schema says."""
    proxy_only(request)
    item = await _group_body(request)
    _policy(request, "update")
    group_id = _checked_id(request.match_info["group_id"])
    g = await _group(request, group_id)
    try:
        async with request.app[keys.DB].acquire() as conn:
            g = await neutron.update_group(conn, g, {"name": item["name"], "description": item["description"]})
    except NeutronError as exc:
        raise _as_nova(exc, 400) from None
    return web.json_response({"security_group": security_group_view(g)})


async def delete(request: web.Request) -> web.Response:
    """202; a group in use or the `default` group (for a non-admin) is 400, as Nova maps Neutron's 409."""
    proxy_only(request)
    _policy(request, "delete")
    g = await _group(request, _checked_id(request.match_info["group_id"]))
    try:
        await neutron.delete_group(request, g)
    except NeutronError as exc:
        raise _as_nova(exc, 400) from None
    return web.Response(status=202)


# -- rules -------------------------------------------------------------------------------


def _cidr(value: Any) -> str:
    """Nova's parse_cidr: absent is anywhere; else a network written with its prefix length."""
    if not value:
        return "0.0.0.0/0"
    text = unquote(value) if isinstance(value, str) else value
    try:
        if "/" not in text or not text.split("/", 1)[1]:
            raise ValueError(text)
        net = ipaddress.ip_interface(text)
    except (TypeError, ValueError):
        raise errors.BadRequest(f"{value} is not a valid IP network.") from None
    if net.network.prefixlen == 0 and not net.ip.is_unspecified:
        raise errors.BadRequest(f"Bad prefix for network in cidr {text}")
    return text


def _ports(protocol: str, low: Any, high: Any) -> tuple[int, int]:
    """Nova's checks of from_port/to_port for tcp/udp (1-65535, ordered) and icmp (type:code, -1-255)."""
    kind = protocol.upper()
    try:
        low, high = int(low), int(high)
    except (TypeError, ValueError):
        reason = "Type and Code must be integers for ICMP protocol type" if kind == "ICMP" \
            else "To and From ports must be integers"
        raise errors.BadRequest(f"Invalid input received: {reason}") from None
    if kind not in ("TCP", "UDP", "ICMP"):
        raise errors.BadRequest(f"Invalid IP protocol {protocol}.")
    if kind == "ICMP":
        if not (-1 <= low <= 255 and -1 <= high <= 255):
            raise errors.BadRequest(f"Invalid port range {low}:{high}. For ICMP, the type:code must be valid")
    elif low > high:
        raise errors.BadRequest(f"Invalid port range {low}:{high}. Former value cannot be greater than the later")
    elif low < 1 or high > 65535:
        raise errors.BadRequest(f"Invalid port range {low}:{high}. Valid {kind} ports should be between 1-65535")
    return low, high


def neutron_rule(item: dict, parent_id: str) -> dict:
    """Nova's new ingress rule (``_new_ingress_rule``) as the Neutron rule body Nova sends.

    A rule from a group without ports opens the protocol's whole range (any protocol when
    none or no ports apply); a rule from a CIDR needs protocol and both ports. -1 is "no
    port" to Neutron. Self-referencing and group rules are IPv4, as in Nova."""
    protocol, low, high, group_id = item.get("ip_protocol"), item.get("from_port"), item.get("to_port"), \
        item.get("group_id")
    cidr = None
    if group_id:
        kind = str(protocol).upper() if protocol else ""
        if low is None and high is None and kind in ("ICMP", "TCP", "UDP"):
            low, high = (-1, -1) if kind == "ICMP" else (1, 65535)
    else:
        cidr = _cidr(item.get("cidr"))
    if protocol and low is not None and high is not None:
        protocol = str(protocol)
        low, high = _ports(protocol, low, high)
    elif cidr:
        raise errors.BadRequest("Not enough parameters to build a valid rule.")
    else:
        protocol = low = high = None
    version = ipaddress.ip_interface(cidr).version if cidr else 4
    return {"security_group_id": parent_id, "direction": "ingress", "ethertype": f"IPv{version}",
            "protocol": protocol, "remote_ip_prefix": cidr, "remote_group_id": group_id,
            "port_range_min": None if low in (None, -1) else low,
            "port_range_max": None if high in (None, -1) else high}


async def create_rule(request: web.Request) -> web.Response:
    """An ingress rule in the parent group, checked by Nova and then by Neutron; enforced at once."""
    proxy_only(request)
    body = await read_json(request)
    validate_body(RULE_BODY, body)
    _policy(request, "rule:create")
    item = body["security_group_rule"]
    parent = await _group(request, item["parent_group_id"])
    if item.get("group_id") is not None:
        await _group(request, item["group_id"])
    rule = neutron.validate_rule(neutron_rule(item, parent["id"]))
    try:
        row = await neutron.add_rule(request, parent, rule)
    except quota.OverQuota:
        raise errors.QuotaExceeded("Quota exceeded, too many security group rules.") from None
    except NeutronError as exc:
        if exc.kind == "SecurityGroupRuleExists":
            raise errors.BadRequest(f"This rule already exists in group {parent['id']}") from None
        raise _as_nova(exc, 403) from None
    return web.json_response({"security_group_rule": rule_view(row, parent["id"])})


async def delete_rule(request: web.Request) -> web.Response:
    """202; a rule of a group the caller cannot see is 404 as one that does not exist."""
    proxy_only(request)
    _policy(request, "rule:delete")
    rule_id = _checked_id(request.match_info["rule_id"])
    async with request.app[keys.DB].acquire() as conn:
        r = await q.get_rule(conn, rule_id)
        g = await q.get_group(conn, r["security_group_id"]) if r else None
    if not neutron.readable(request, g):
        raise errors.NotFound(f"Security group rule {rule_id} not found.")
    await neutron.delete_rule(request, r)
    return web.Response(status=202)


# handler → the Nova rules it checks (tests/test_policy_services.py reads these tables); the groups
# themselves are then read as Neutron would show them to the caller (get_security_group).
HANDLER_RULES: dict[str, tuple[str, ...]] = {
    "index": (POLICY % "get",),
    "show": (POLICY % "show",),
    "create": (POLICY % "create",),
    "update": (POLICY % "update",),
    "delete": (POLICY % "delete",),
    "create_rule": (POLICY % "rule:create",),
    "delete_rule": (POLICY % "rule:delete",),
}


def add_routes(app: web.Application) -> None:
    r = app.router
    base = "/compute/v2.1"
    r.add_get(base + "/os-security-groups", index)
    r.add_post(base + "/os-security-groups", create)
    r.add_get(base + "/os-security-groups/{group_id}", show)
    r.add_put(base + "/os-security-groups/{group_id}", update)
    r.add_delete(base + "/os-security-groups/{group_id}", delete)
    r.add_post(base + "/os-security-group-rules", create_rule)
    r.add_delete(base + "/os-security-group-rules/{rule_id}", delete_rule)
