"""Neutron's security groups and security group rules at /networking/v2.0.

Groups: list/show (rules embedded), create (name, description; quota
``security_group``; Neutron's two egress rules come with it), update (name,
description; the ``default`` group keeps its name), delete (not while a port is
a member; ``default`` only by an admin). Rules: list (Neutron's filters)/show,
create (validated as Neutron does, but only protocols the nwfilter datapath
enforces; quota ``security_group_rule``) and delete. After a rule changes, the
packet filters of the ports it affects are pushed to their hosts through
``NetworkAPI.security_changed``. Errors are Neutron's exception types.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Any

from aiohttp import web

from novalite.api import keys
from novalite.api.middleware import read_json
from novalite.api.networking import NeutronError, allowed, disallowed, filtered, is_admin
from novalite.api.networking import _fields as fields_of
from novalite.api.networking import _ts as neutron_ts
from novalite.api.policy import context
from novalite.db import security_groups as q
from novalite.network import quota
from novalite.network.firewall import ENFORCED_PROTOCOLS, enforced_name

# Neutron's other protocol names (neutron_lib's IP_PROTOCOL_MAP): known, but not enforced here.
OTHER_PROTOCOLS = {"dccp": 33, "egp": 8, "gre": 47, "hopopt": 0, "ip": 0, "ipip": 4, "ipv6-encap": 41,
                   "ipv6-frag": 44, "ipv6-icmp": 58, "icmpv6": 58, "ipv6-nonxt": 59, "ipv6-opts": 60,
                   "ipv6-route": 43, "ospf": 89, "pgm": 113, "rsvp": 46, "vrrp": 112}
# Ports are matched by nwfilter for these (udplite has no port match there, so no ranges).
PORT_PROTOCOLS = ("sctp", "tcp", "udp")
_ICMP = {"icmp", "ipv6-icmp", "58"}
_IPV6_ONLY = {"ipv6-icmp", "icmpv6", "58", *(k for k in OTHER_PROTOCOLS if k.startswith("ipv6-")),
              *(str(OTHER_PROTOCOLS[k]) for k in OTHER_PROTOCOLS if k.startswith("ipv6-"))}
_NEUTRON_PROTOCOLS = [None, *sorted({*ENFORCED_PROTOCOLS, *OTHER_PROTOCOLS})]

_GROUP_ATTRS = {"name", "description", "tenant_id", "project_id", "stateful"}
_RULE_ATTRS = {"security_group_id", "direction", "ethertype", "protocol", "port_range_min", "port_range_max",
               "remote_ip_prefix", "remote_group_id", "description", "tenant_id", "project_id",
               "remote_address_group_id"}


def _ts(value: datetime | str | None) -> str | None:
    # Rules embedded through jsonb carry ISO strings.
    return neutron_ts(datetime.fromisoformat(value) if isinstance(value, str) else value)


def rule_doc(r: dict) -> dict:
    """A rule as Neutron shows it."""
    return {
        "id": r["id"],
        "tenant_id": r["project_id"],
        "project_id": r["project_id"],
        "security_group_id": r["security_group_id"],
        "direction": r["direction"],
        "ethertype": r["ethertype"],
        "protocol": r["protocol"],
        "port_range_min": r["port_range_min"],
        "port_range_max": r["port_range_max"],
        "remote_ip_prefix": r["remote_ip_prefix"],
        "normalized_cidr": r["normalized_cidr"],
        "remote_group_id": r["remote_group_id"],
        "remote_address_group_id": None,
        "description": r["description"],
        "created_at": _ts(r["created_at"]),
        "updated_at": _ts(r["updated_at"]),
        "revision_number": 0,
    }


def security_group_doc(g: dict) -> dict:
    """A group as Neutron shows it, its rules embedded."""
    return {
        "id": g["id"],
        "name": g["name"],
        "tenant_id": g["project_id"],
        "project_id": g["project_id"],
        "description": g["description"],
        "security_group_rules": [rule_doc(r) for r in g["rules"]],
        "stateful": g["stateful"],
        "shared": False,
        "tags": [],
        "created_at": _ts(g["created_at"]),
        "updated_at": _ts(g["updated_at"]),
        "revision_number": g["revision_number"],
    }


# -- errors and checks -------------------------------------------------------------------


def _group_not_found(group_id: str) -> NeutronError:
    return NeutronError(404, "SecurityGroupNotFound", f"Security group {group_id} does not exist")


def _rule_not_found(rule_id: str) -> NeutronError:
    return NeutronError(404, "SecurityGroupRuleNotFound", f"Security group rule {rule_id} does not exist")


def _bad(message: str, kind: str = "HTTPBadRequest") -> NeutronError:
    return NeutronError(400, kind, message)


def _invalid_input(kind: str, message: str) -> NeutronError:
    return _bad(f"Invalid input for operation: {message}", kind)


def _group_target(g: dict) -> dict:
    return {"id": g["id"], "project_id": g["project_id"], "tenant_id": g["project_id"], "name": g["name"],
            "shared": False}


def _rule_target(r: dict, group_project: str) -> dict:
    return {**r, "tenant_id": r["project_id"], "security_group:project_id": group_project,
            "security_group:tenant_id": group_project}


def _authorize(request: web.Request, rule: str, target: dict, read_rule: str, missing: NeutronError) -> None:
    """Neutron's answer to a write: 404 when the caller may not even read the thing, else 403."""
    if not allowed(request, rule, target):
        if allowed(request, read_rule, target):
            raise disallowed(rule)
        raise missing


async def _body(request: web.Request, resource: str, known: set[str]) -> dict:
    """``{resource: {...}}`` of the request, unknown attributes refused as Neutron does."""
    body = await read_json(request)
    item = body.get(resource)
    if not isinstance(item, dict):
        raise _bad(f"Unable to find '{resource}' in request body")
    unknown = sorted(set(item) - known)
    if unknown:
        raise _bad(f"Unrecognized attribute(s) '{', '.join(unknown)}'")
    return item


def _string(item: dict, attr: str, default: str | None = None) -> str | None:
    value = item.get(attr, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"Invalid input for {attr}. Reason: '{value}' is not a valid string.")
    if len(value) > 255:
        raise _bad(f"Invalid input for {attr}. Reason: '{value}' exceeds maximum length of 255.")
    return value


def _owner(request: web.Request, item: dict) -> str:
    """The project a new resource belongs to: the caller's, another only for an admin."""
    ctx = context(request)
    project_id = item.get("project_id") or item.get("tenant_id") or ctx.project_id
    if project_id != ctx.project_id and not is_admin(request):
        raise _bad("Specifying 'project_id' or 'tenant_id' other than the authenticated project "
                   "in request requires admin privileges")
    return str(project_id)


def _over_quota(exc: quota.OverQuota) -> NeutronError:
    return NeutronError(409, "OverQuota", str(exc))


# -- groups ------------------------------------------------------------------------------


def readable(request: web.Request, g: dict | None) -> bool:
    """Whether the group exists and Neutron's policy lets the caller read it."""
    return g is not None and allowed(request, "get_security_group", _group_target(g))


async def _visible_group(request: web.Request, conn: Any, group_id: str) -> dict:
    """The group if the caller may read it (404 otherwise, as if it did not exist)."""
    g = await q.get_group(conn, group_id)
    if not readable(request, g):
        raise _group_not_found(group_id)
    return g


async def security_groups_index(request: web.Request) -> web.Response:
    ctx = context(request)
    async with request.app[keys.DB].acquire() as conn:
        await q.ensure_default_security_group(conn, ctx.project_id)
        rows = await q.list_groups(conn, project_id=ctx.project_id, is_admin=is_admin(request))
    docs = [security_group_doc(g) for g in rows if allowed(request, "get_security_group", _group_target(g))]
    return web.json_response({"security_groups": filtered(request, docs)})


async def security_groups_show(request: web.Request) -> web.Response:
    ctx = context(request)
    async with request.app[keys.DB].acquire() as conn:
        await q.ensure_default_security_group(conn, ctx.project_id)
        g = await _visible_group(request, conn, request.match_info["group_id"])
    return web.json_response({"security_group": fields_of(request, security_group_doc(g))})


async def security_groups_create(request: web.Request) -> web.Response:
    """POST /security-groups: a new group with Neutron's egress rules, within the project's quota."""
    item = await _body(request, "security_group", _GROUP_ATTRS)
    name = _string(item, "name", "") or ""
    description = _string(item, "description", "") or ""
    check_new_name(name)
    if item.get("stateful", True) is not True:
        raise _bad("Invalid input for stateful. Reason: this cloud's packet filter is stateful only.")
    project_id = _owner(request, item)
    if not allowed(request, "create_security_group", {"project_id": project_id, "tenant_id": project_id}):
        raise disallowed("create_security_group")
    try:
        g = await create_group(request, project_id, name, description)
    except quota.OverQuota as exc:
        raise _over_quota(exc) from None
    return web.json_response({"security_group": security_group_doc(g)}, status=201)


def check_new_name(name: str) -> None:
    """A group may not be named `default` (case-insensitive): each project has its own already (409)."""
    if name.lower() == q.DEFAULT_NAME:
        raise NeutronError(409, "SecurityGroupDefaultAlreadyExists", "Default security group already exists.")


async def create_group(request: web.Request, project_id: str, name: str, description: str) -> dict:
    """A new group with Neutron's egress rules, within the project's quota (raises ``quota.OverQuota``);
    the group with its rules. The project's `default` group is made first, as Neutron does."""
    async with request.app[keys.DB].acquire() as conn:
        await q.ensure_default_security_group(conn, project_id)
        async with conn.transaction():
            await quota.reserve(conn, project_id, {"security_group": 1})
            group_id = await q.create_group(conn, project_id, name, description)
            await q.add_default_egress(conn, group_id, project_id)
        return await q.get_group(conn, group_id)


async def security_groups_update(request: web.Request) -> web.Response:
    """PUT /security-groups/{id}: name and description; the `default` group keeps its name."""
    group_id = request.match_info["group_id"]
    item = await _body(request, "security_group", {"name", "description"})
    changes = {a: _string(item, a) for a in ("name", "description") if a in item}
    async with request.app[keys.DB].acquire() as conn:
        g = await q.get_group(conn, group_id)
        if g is None:
            raise _group_not_found(group_id)
        _authorize(request, "update_security_group", _group_target(g), "get_security_group",
                   _group_not_found(group_id))
        g = await update_group(conn, g, changes)
    return web.json_response({"security_group": security_group_doc(g)})


async def update_group(conn: Any, g: dict, changes: dict[str, str | None]) -> dict:
    """Rename or describe the group; the `default` group keeps its name and none takes it (409).
    The group as it is now."""
    if "name" in changes and g["name"] == q.DEFAULT_NAME:
        raise NeutronError(409, "SecurityGroupCannotUpdateDefault", "Updating default security group not allowed.")
    check_new_name(changes.get("name") or "")
    await q.update_group(conn, g["id"], changes)
    return await q.get_group(conn, g["id"])


async def security_groups_delete(request: web.Request) -> web.Response:
    """DELETE /security-groups/{id}: not while a port is a member (409); a project's `default`
    group only by an admin (Tempest's cleanup of a deleted project does this); it is made
    again when next needed."""
    group_id = request.match_info["group_id"]
    async with request.app[keys.DB].acquire() as conn:
        g = await q.get_group(conn, group_id)
        if g is None:
            raise _group_not_found(group_id)
        _authorize(request, "delete_security_group", _group_target(g), "get_security_group",
                   _group_not_found(group_id))
    await delete_group(request, g)
    return web.Response(status=204)


async def delete_group(request: web.Request, g: dict) -> None:
    """Delete the group: not while a port is a member, the `default` one only by an admin (409).
    Ports whose filters named it as remote group get their filters anew."""
    group_id = g["id"]
    async with request.app[keys.DB].acquire() as conn:
        if await q.group_in_use(conn, group_id):
            raise NeutronError(409, "SecurityGroupInUse", f"Security Group {group_id} in use.")
        if g["name"] == q.DEFAULT_NAME and not is_admin(request):
            raise NeutronError(409, "SecurityGroupCannotRemoveDefault",
                               "Insufficient rights for removing default security group.")
        dependents = await q.dependent_ports(conn, [group_id])
        await q.delete_group(conn, group_id)
    if dependents:  # rules naming it as remote group went with it
        await request.app[keys.NETWORK_API].ports_changed(dependents)


# -- rules -------------------------------------------------------------------------------


def _unsupported(value: Any) -> NeutronError:
    return _invalid_input(
        "SecurityGroupRuleInvalidProtocol",
        f"Security group rule protocol {value} not supported. Only protocol values {_NEUTRON_PROTOCOLS} "
        "and integer representations [0 to 255] are supported.")


def _protocol(value: Any, ethertype: str) -> str | None:
    """Neutron's protocol value (a name, or a number as a string), refused when nwfilter cannot enforce it."""
    if value is None or (isinstance(value, str) and value.lower() in ("", "any")):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _unsupported(value)
    text = str(value).lower()
    if text.isdigit() and int(text) > 255 or not text.isdigit() and text not in {*ENFORCED_PROTOCOLS, *OTHER_PROTOCOLS}:
        raise _unsupported(value)
    if ethertype == "IPv6" and text in {"icmp", "icmpv6", "ipv6-icmp", "1", "58"}:
        return "58" if text.isdigit() else "ipv6-icmp"  # Neutron's canonical IPv6 ICMP
    if text in _IPV6_ONLY:
        raise _invalid_input("SecurityGroupEthertypeConflictWithProtocol",
                             f"Invalid ethertype {ethertype} for protocol {text}.")
    if enforced_name(text) not in ENFORCED_PROTOCOLS:
        raise _invalid_input(
            "SecurityGroupRuleInvalidProtocol",
            f"Security group rule protocol {value} cannot be enforced by this cloud's packet filter. "
            f"Only {sorted(ENFORCED_PROTOCOLS)}, their numbers, or any protocol (none) are supported.")
    return text


def _port_value(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not str(value).isdigit() or not 0 <= int(value) <= 65535:
        raise _invalid_input("SecurityGroupInvalidPortValue", f"Invalid value for port {value}")
    return int(value)


def _check_ports(rule: dict) -> None:
    """Neutron's port range checks; the full tcp/udp range is stored as no range."""
    low, high = rule["port_range_min"], rule["port_range_max"]
    if low is None and high is None:
        return
    if rule["protocol"] is None:
        raise _invalid_input("SecurityGroupProtocolRequiredWithPorts",
                             "Must also specify protocol if port range is given.")
    name = enforced_name(rule["protocol"])
    if name in PORT_PROTOCOLS:
        if low == 0 or high == 0:
            raise _invalid_input("SecurityGroupInvalidPortValue", "Invalid value for port 0")
        if low is None or high is None or low > high:
            raise _invalid_input("SecurityGroupInvalidPortRange",
                                 "For TCP/UDP protocols, port_range_min must be <= port_range_max")
        if (low, high) == (1, 65535):
            rule["port_range_min"] = rule["port_range_max"] = None
    elif name in _ICMP:
        for attr, field in (("port_range_min", "type"), ("port_range_max", "code")):
            if rule[attr] is not None and not 0 <= rule[attr] <= 255:
                raise _invalid_input("SecurityGroupInvalidIcmpValue",
                                     f"Invalid value for ICMP {field} ({attr}) {rule[attr]}. It must be 0 to 255.")
        if low is None:
            raise _invalid_input("SecurityGroupMissingIcmpType",
                                 f"ICMP code (port-range-max) {high} is provided but ICMP type "
                                 "(port-range-min) is missing.")
    else:
        raise _invalid_input("SecurityGroupInvalidProtocolForPort",
                             f"Ports cannot be specified for protocol {name}. Ports are only supported "
                             f"for {', '.join(p.upper() for p in PORT_PROTOCOLS)}.")


def _prefix(value: Any, ethertype: str) -> str | None:
    """remote_ip_prefix with its mask always written (10.0.0.5 → 10.0.0.5/32), of the rule's IP version."""
    if not value:
        return None
    try:
        iface = ipaddress.ip_interface(str(value))
    except ValueError:
        raise _bad(f"Invalid CIDR {value} given as IP prefix.", "InvalidCIDR") from None
    if ethertype != f"IPv{iface.version}":
        raise _invalid_input("SecurityGroupRuleParameterConflict",
                             f"Conflicting value ethertype {ethertype} for CIDR {value}")
    return iface.with_prefixlen


def validate_rule(item: dict) -> dict:
    """A rule body checked and normalised as Neutron does (no database needed); table columns."""
    for attr in ("security_group_id", "direction"):
        if item.get(attr) is None:
            raise _bad(f"Failed to parse request. Required attribute '{attr}' not specified")
    if item["direction"] not in ("ingress", "egress"):
        raise _bad(f"Invalid input for direction. Reason: '{item['direction']}' is not in ['ingress', 'egress'].")
    ethertype = item.get("ethertype") or "IPv4"
    ethertype = {"ipv4": "IPv4", "ipv6": "IPv6"}.get(str(ethertype).lower())
    if ethertype is None:
        raise _invalid_input("SecurityGroupRuleInvalidEtherType",
                             f"Security group rule for ethertype '{item['ethertype']}' not supported. "
                             "Allowed values are ['IPv4', 'IPv6'].")
    if item.get("remote_address_group_id") is not None:
        raise _bad("Address groups are not supported by this cloud.")
    rule = {
        "security_group_id": str(item["security_group_id"]),
        "direction": item["direction"],
        "ethertype": ethertype,
        "protocol": _protocol(item.get("protocol"), ethertype),
        "port_range_min": _port_value(item.get("port_range_min")),
        "port_range_max": _port_value(item.get("port_range_max")),
        "remote_ip_prefix": _prefix(item.get("remote_ip_prefix"), ethertype),
        "remote_group_id": str(item["remote_group_id"]) if item.get("remote_group_id") else None,
        "description": _string(item, "description", "") or "",
    }
    _check_ports(rule)
    if rule["remote_ip_prefix"] and rule["remote_group_id"]:
        raise _invalid_input("SecurityGroupMultipleRemoteEntites",
                             "Only one of remote_ip_prefix or remote_group_id or remote_address_group_id "
                             "may be provided.")
    return rule


def _rule_key(r: dict) -> tuple:
    """What makes two rules the same for Neutron (anywhere as prefix = no prefix; 6 = tcp)."""
    prefix = r["remote_ip_prefix"]
    if prefix in ("0.0.0.0/0", "::/0"):
        prefix = None
    return (r["direction"], r["ethertype"], r["port_range_min"], r["port_range_max"], enforced_name(r["protocol"]),
            r["remote_group_id"], prefix, r["security_group_id"])


async def security_group_rules_index(request: web.Request) -> web.Response:
    ctx = context(request)
    async with request.app[keys.DB].acquire() as conn:
        rows = await q.list_rules(conn, project_id=ctx.project_id, is_admin=is_admin(request))
    docs = [rule_doc(r) for r in rows
            if allowed(request, "get_security_group_rule", _rule_target(r, r["group_project_id"]))]
    return web.json_response({"security_group_rules": filtered(request, docs)})


async def _visible_rule(request: web.Request, conn: Any, rule_id: str) -> dict:
    r = await q.get_rule(conn, rule_id)
    if r is None or not allowed(request, "get_security_group_rule", _rule_target(r, r["group_project_id"])):
        raise _rule_not_found(rule_id)
    return r


async def security_group_rules_show(request: web.Request) -> web.Response:
    async with request.app[keys.DB].acquire() as conn:
        r = await _visible_rule(request, conn, request.match_info["rule_id"])
    return web.json_response({"security_group_rule": fields_of(request, rule_doc(r))})


async def security_group_rules_create(request: web.Request) -> web.Response:
    """POST /security-group-rules: validated, not a duplicate, within quota; then enforced."""
    rule = validate_rule(await _body(request, "security_group_rule", _RULE_ATTRS))
    async with request.app[keys.DB].acquire() as conn:
        g = await _visible_group(request, conn, rule["security_group_id"])
        rule["project_id"] = g["project_id"]
        target = _rule_target(rule, g["project_id"])
        if not allowed(request, "create_security_group_rule", target):
            raise disallowed("create_security_group_rule")
        if rule["remote_group_id"]:
            await _visible_group(request, conn, rule["remote_group_id"])
    try:
        row = await add_rule(request, g, rule)
    except quota.OverQuota as exc:
        raise _over_quota(exc) from None
    return web.json_response({"security_group_rule": rule_doc(row)}, status=201)


async def add_rule(request: web.Request, g: dict, rule: dict) -> dict:
    """Store a rule checked by :func:`validate_rule` in group ``g``: within the group owner's quota
    (raises ``quota.OverQuota``), not a duplicate (409 SecurityGroupRuleExists); then the filters
    of the ports it affects are pushed to their hosts. The stored rule."""
    rule = {**rule, "project_id": g["project_id"]}
    async with request.app[keys.DB].acquire() as conn:
        async with conn.transaction():
            await quota.reserve(conn, g["project_id"], {"security_group_rule": 1})
            # The group row is locked so two equal rules posted at once cannot both pass the check.
            await conn.execute("SELECT 1 FROM security_groups WHERE id = $1::uuid FOR UPDATE", g["id"])
            current = await q.get_group(conn, g["id"])
            for existing in current["rules"]:
                if _rule_key(existing) == _rule_key(rule):
                    raise NeutronError(409, "SecurityGroupRuleExists",
                                       f"Security group rule already exists. Rule id is {existing['id']}.")
            rule_id = await q.insert_rule(conn, rule)
        row = await q.get_rule(conn, rule_id)
    await request.app[keys.NETWORK_API].security_changed([g["id"]])
    return row


async def security_group_rules_delete(request: web.Request) -> web.Response:
    rule_id = request.match_info["rule_id"]
    async with request.app[keys.DB].acquire() as conn:
        r = await q.get_rule(conn, rule_id)
        if r is None:
            raise _rule_not_found(rule_id)
        _authorize(request, "delete_security_group_rule", _rule_target(r, r["group_project_id"]),
                   "get_security_group_rule", _rule_not_found(rule_id))
    await delete_rule(request, r)
    return web.Response(status=204)


async def delete_rule(request: web.Request, r: dict) -> None:
    """Delete the rule; the filters of the ports it affected are pushed to their hosts."""
    async with request.app[keys.DB].acquire() as conn:
        await q.delete_rule(conn, r["id"])
    await request.app[keys.NETWORK_API].security_changed([r["security_group_id"]])


#: The Neutron rules each handler asks (tests check every one is registered).
HANDLER_RULES: dict[str, tuple[str, ...]] = {
    "security_groups_index": ("context_is_admin", "get_security_group"),
    "security_groups_show": ("context_is_admin", "get_security_group"),
    "security_groups_create": ("context_is_admin", "create_security_group"),
    "security_groups_update": ("update_security_group", "get_security_group"),
    "security_groups_delete": ("context_is_admin", "delete_security_group", "get_security_group"),
    "security_group_rules_index": ("context_is_admin", "get_security_group_rule"),
    "security_group_rules_show": ("get_security_group_rule",),
    "security_group_rules_create": ("get_security_group", "create_security_group_rule"),
    "security_group_rules_delete": ("delete_security_group_rule", "get_security_group_rule"),
}


def add_routes(app: web.Application) -> None:
    r = app.router
    v2 = "/networking/v2.0"
    r.add_get(v2 + "/security-groups", security_groups_index)
    r.add_post(v2 + "/security-groups", security_groups_create)
    r.add_get(v2 + "/security-groups/{group_id}", security_groups_show)
    r.add_put(v2 + "/security-groups/{group_id}", security_groups_update)
    r.add_delete(v2 + "/security-groups/{group_id}", security_groups_delete)
    r.add_get(v2 + "/security-group-rules", security_group_rules_index)
    r.add_post(v2 + "/security-group-rules", security_group_rules_create)
    r.add_get(v2 + "/security-group-rules/{rule_id}", security_group_rules_show)
    r.add_delete(v2 + "/security-group-rules/{rule_id}", security_group_rules_delete)
