"""Neutron v2 subset at /networking: networks, subnets and ports (read and write), security
groups (read), extensions, quotas and availability zones — what the openstack CLI,
openstacksdk and Tempest call.

Reads and writes go straight to Postgres (novalite.db.networks); configured networks
([[networks]], ``config_name`` set) are made by
:meth:`novalite.network.NetworkAPI.ensure_networks` and cannot be deleted nor have their
addressing changed here (409). Bodies are checked as Neutron's API layer checks them
(novalite.api.neutron_attrs). Errors use Neutron's body ``{"NeutronError": {"type",
"message", "detail"}}`` with Neutron's exception type names.

Every decision goes through Neutron's policy (``keys.NEUTRON_POLICY``) as Neutron
takes it: the SQL narrows rows to the caller's project and shared networks (all
of them when ``context_is_admin`` passes), then each item must pass
``get_<resource>`` with the resource as target, or it is left out of a list and
a GET of it is 404; attributes whose ``get_<resource>:<attr>`` rule denies are
stripped (provider and binding details for non-admins). A write asks
``<action>_<resource>`` and ``<action>_<resource>:<attr>`` for each attribute it sets;
a denied update or delete is 403 to whom may see the resource, 404 to others.

Ports: novalite's ``max_fixed_ips_per_port`` is 1 — a port has one IPv4 address or none
(``fixed_ips: []``, or a network without subnets); more entries are Neutron's 400
"Exceeded maximum amount of fixed ips per port.". Networks made here get a
``network:dhcp`` port on their first DHCP subnet, as Neutron's DHCP agent makes one.
Creates count against the project's Neutron quotas (novalite.network.quota) in the
inserting transaction, so concurrent creates at a limit admit exactly what fits.
"""

from __future__ import annotations

import ipaddress
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from aiohttp import web

from novalite.api import keys
from novalite.api import neutron_attrs as attrs_of
from novalite.api import policy as api_policy
from novalite.api.middleware import read_json
from novalite.api.neutron_attrs import NeutronError
from novalite.api.pagination import capped, page_limit
from novalite.api.policy import context
from novalite.context import RequestContext
from novalite.db import networks as q
from novalite.db import security_groups as sg_q
from novalite.network import quota

_NOT_FILTERS = {"fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse", "tags", "tags-any",
                "not-tags", "not-tags-any"}

# Extensions whose behaviour novalite has (clients probe some of them by alias).
EXTENSIONS = [
    ("agent", "agent", "The agent management extension."),
    ("availability_zone", "Availability Zone", "The availability zone extension."),
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external application"),
    ("external-net", "Neutron external network", "Adds external network attribute to network resource."),
    ("ip-substring-filtering", "IP address substring filtering",
     "Provides IP address substring filtering when listing ports"),
    ("network-ip-availability", "Network IP Availability", "Provides IP availability data for each network and subnet."),
    ("network_availability_zone", "Network Availability Zone", "Availability zone support for network."),
    ("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    ("net-mtu-writable", "Network MTU (writable)", "Provides a writable MTU attribute for a network resource."),
    ("port-security", "Port Security", "Provides port security"),
    ("project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled."),
    ("quotas", "Quota management support", "Expose functions for quotas management per tenant"),
    ("quota_details", "Quota details management support", "Expose functions for quotas usage statistics per project"),
    ("security-group", "security-group", "The security groups extension."),
    ("subnet-external-network", "Subnet belongs to an external network",
     "Informs if the subnet belongs to an external network"),
    ("standard-attr-description", "standard-attr-description", "Extension to add descriptions to standard attributes"),
    ("standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes."),
]

def _base(request: web.Request) -> str:
    return f"{request.app[keys.CONFIG].public_url}/networking"


def _ts(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def _caller(request: web.Request) -> RequestContext:
    return context(request)


# -- policy --------------------------------------------------------------------------


def allowed(request: web.Request, rule: str, target: dict | None = None) -> bool:
    """Whether Neutron's policy lets the caller do ``rule`` on ``target`` (default: own project)."""
    return api_policy.check(request, keys.NEUTRON_POLICY, rule, target)


def is_admin(request: web.Request) -> bool:
    """Neutron's context.is_admin: the ``context_is_admin`` rule."""
    return allowed(request, "context_is_admin")


def disallowed(rule: str) -> NeutronError:
    return NeutronError(403, "PolicyNotAuthorized", f"(rule:{rule}) is disallowed by policy")


def _target(doc: dict, network: dict | None = None) -> dict:
    """Neutron's policy target: the resource's attributes, plus its network's owner and
    ``shared`` for subnets and ports (``network:project_id``, ``rule:shared``)."""
    target = dict(doc)
    if network is not None:
        target["network:project_id"] = network["project_id"]
        target["network:tenant_id"] = network["project_id"]
        target.setdefault("shared", network["shared"])
        target.setdefault("router:external", network["external"])
    return target


def _shown(request: web.Request, resource: str, doc: dict, network: dict | None = None) -> dict | None:
    """The document if ``get_<resource>`` allows it, without the attributes the caller may not read."""
    if not allowed(request, f"get_{resource}", _target(doc, network)):
        return None
    return _readable(request, resource, doc, network)


def _readable(request: web.Request, resource: str, doc: dict, network: dict | None = None) -> dict:
    """The document without the attributes ``get_<resource>:<attr>`` hides from the caller; Neutron
    strips them from every answer, creates and updates too (e.g. a member's port has no binding:host_id)."""
    target = _target(doc, network)
    enforcer = request.app[keys.NEUTRON_POLICY]
    for attr in list(doc):
        rule = f"get_{resource}:{attr}"
        if enforcer.is_registered(rule) and not allowed(request, rule, target):
            del doc[attr]
    return doc


async def _networks_by_id(conn) -> dict[str, dict]:
    return {n["id"]: n for n in await q.list_networks(conn, project_id="", is_admin=True)}


# -- documents ---------------------------------------------------------------------


def network_doc(n: dict) -> dict:
    """A network as Neutron shows it, every attribute from its stored row."""
    return {
        "id": n["id"],
        "name": n["name"],
        "tenant_id": n["project_id"],
        "project_id": n["project_id"],
        "admin_state_up": n["admin_state_up"],
        "mtu": n["mtu"],
        "status": n["status"],
        "subnets": list(n["subnets"]),
        "shared": n["shared"],
        "availability_zone_hints": [],
        "availability_zones": ["nova"],
        "ipv4_address_scope": None,
        "ipv6_address_scope": None,
        "router:external": n["external"],
        "description": n["description"],
        "port_security_enabled": n["port_security_enabled"],
        "is_default": n["is_default"],
        "l2_adjacency": True,
        "tags": [],
        "created_at": _ts(n["created_at"]),
        "updated_at": _ts(n["updated_at"]),
        "revision_number": 1,
        "provider:network_type": "local",
        "provider:physical_network": None,
        "provider:segmentation_id": None,
    }


def subnet_doc(s: dict) -> dict:
    return {
        "id": s["id"],
        "name": s["name"],
        "tenant_id": s["project_id"],
        "project_id": s["project_id"],
        "network_id": s["network_id"],
        "ip_version": s["ip_version"],
        "subnetpool_id": None,
        "enable_dhcp": s["enable_dhcp"],
        "ipv6_ra_mode": None,
        "ipv6_address_mode": None,
        "gateway_ip": s["gateway_ip"],
        "cidr": s["cidr"],
        "allocation_pools": list(s["allocation_pools"]),
        "host_routes": list(s["host_routes"]),
        "dns_nameservers": list(s["dns_nameservers"]),
        "description": s["description"],
        "service_types": [],
        "router:external": s["external"],  # subnet-external-network: whether its network is external
        "tags": [],
        "created_at": _ts(s["created_at"]),
        "updated_at": _ts(s["updated_at"]),
        "revision_number": 0,
    }


def port_doc(p: dict, security_group_ids: list[str]) -> dict:
    """A port as Neutron shows it: its stored attributes and security group memberships."""
    fixed_ips = [{"subnet_id": p["subnet_id"], "ip_address": p["fixed_ip"]}] if p["fixed_ip"] else []
    return {
        "id": p["id"],
        "name": p["name"],
        "network_id": p["network_id"],
        "tenant_id": p["project_id"],
        "project_id": p["project_id"],
        "mac_address": p["mac_address"],
        "admin_state_up": p["admin_state_up"],
        "status": p["status"],
        "device_id": p["device_id"],
        "device_owner": p["device_owner"],
        "fixed_ips": fixed_ips,
        "allowed_address_pairs": [],
        "security_groups": security_group_ids,
        "description": p["description"],
        "binding:vnic_type": "normal",
        "port_security_enabled": p["port_security_enabled"],
        "tags": [],
        "created_at": _ts(p["created_at"]),
        "updated_at": _ts(p["updated_at"]),
        "revision_number": 1,
        "binding:host_id": p["host"] or "",
        "binding:profile": {},
        "binding:vif_details": {},
        "binding:vif_type": "bridge" if p["host"] else "unbound",
    }


# -- filtering -----------------------------------------------------------------------


def _fixed_ip_matches(ip: dict, attr: str, value: str) -> bool:
    """One ``fixed_ips=attr=value`` filter on one fixed IP; ``ip_address_substr`` (the
    ip-substring-filtering extension) matches a part of the address."""
    if attr == "ip_address_substr":
        return value in ip["ip_address"]
    return str(ip.get(attr)) == value


def _matches(doc: dict, key: str, wanted: list[str]) -> bool:
    if key == "fixed_ips":
        for spec in wanted:
            attr, _, value = spec.partition("=")
            if not any(_fixed_ip_matches(ip, attr, value) for ip in doc.get("fixed_ips", [])):
                return False
        return True
    if key not in doc:
        return True  # Neutron ignores filters on attributes it does not know
    value = doc[key]
    if isinstance(value, bool):
        return any(w.strip().lower() in (("true", "1") if value else ("false", "0")) for w in wanted)
    if isinstance(value, list):
        return any(w in value for w in wanted)
    return str(value if value is not None else "") in wanted


def filtered(request: web.Request, docs: list[dict]) -> list[dict]:
    """Apply Neutron's query filters (field=value, repeated = OR), ``fields`` and ``limit``."""
    keys = {k for k in request.query if k not in _NOT_FILTERS}
    out = [d for d in docs if all(_matches(d, k, request.query.getall(k)) for k in keys)]
    marker = request.query.get("marker")
    if marker:
        ids = [d.get("id") for d in out]
        out = out[ids.index(marker) + 1:] if marker in ids else out
    out = out[: page_limit(request)]
    return [_fields(request, d) for d in out]


def _fields(request: web.Request, doc: dict) -> dict:
    wanted = [f for v in request.query.getall("fields", []) for f in v.split(",") if f]
    return {k: v for k, v in doc.items() if k in wanted} if wanted else doc


# -- handlers ------------------------------------------------------------------------


async def versions(request: web.Request) -> web.Response:
    base = _base(request)
    return web.json_response({"versions": [
        {"id": "v2.0", "status": "CURRENT", "links": [{"rel": "self", "href": f"{base}/v2.0/"}]}
    ]})


async def version_v2(request: web.Request) -> web.Response:
    base = f"{_base(request)}/v2.0"
    resources = ["subnets", "networks", "ports", "security-groups", "quotas", "extensions",
                 "availability_zones"]
    return web.json_response({"resources": [
        {"name": r.rstrip("s").replace("-", "_"), "collection": r,
         "links": [{"rel": "self", "href": f"{base}/{r}"}]} for r in resources
    ]})


async def extensions_index(request: web.Request) -> web.Response:
    _caller(request)
    return web.json_response({"extensions": capped(request, [
        {"alias": a, "name": n, "description": d, "updated": "2024-01-01T00:00:00-00:00", "links": []}
        for a, n, d in EXTENSIONS
    ])})


async def extensions_show(request: web.Request) -> web.Response:
    _caller(request)
    alias = request.match_info["alias"]
    for a, n, d in EXTENSIONS:
        if a == alias:
            return web.json_response({"extension": {"alias": a, "name": n, "description": d,
                                                    "updated": "2024-01-01T00:00:00-00:00", "links": []}})
    raise NeutronError(404, "ExtensionNotFound", f"Extension with alias {alias} does not exist")


async def networks_index(request: web.Request) -> web.Response:
    ctx = _caller(request)
    async with request.app[keys.DB].acquire() as conn:
        rows = await q.list_networks(conn, project_id=ctx.project_id, is_admin=is_admin(request))
    docs = [d for d in (_shown(request, "network", network_doc(n)) for n in rows) if d is not None]
    return web.json_response({"networks": filtered(request, docs)})


def _visible_network(request: web.Request, n: dict | None) -> bool:
    """Neutron's network query: the caller's own, shared and external networks, every one for an admin."""
    ctx = _caller(request)
    return n is not None and (n["shared"] or n["external"] or n["project_id"] == ctx.project_id
                              or is_admin(request))


async def networks_show(request: web.Request) -> web.Response:
    net_id = request.match_info["network_id"]
    async with request.app[keys.DB].acquire() as conn:
        n = await q.get_network(conn, net_id)
    doc = _shown(request, "network", network_doc(n)) if _visible_network(request, n) else None
    if doc is None:
        raise NeutronError(404, "NetworkNotFound", f"Network {net_id} could not be found.")
    return web.json_response({"network": _fields(request, doc)})


async def subnets_index(request: web.Request) -> web.Response:
    ctx = _caller(request)
    async with request.app[keys.DB].acquire() as conn:
        rows = await q.list_subnets(conn, project_id=ctx.project_id, is_admin=is_admin(request))
        networks = await _networks_by_id(conn)
    docs = [_shown(request, "subnet", subnet_doc(s), networks.get(s["network_id"])) for s in rows]
    return web.json_response({"subnets": filtered(request, [d for d in docs if d is not None])})


async def subnets_show(request: web.Request) -> web.Response:
    subnet_id = request.match_info["subnet_id"]
    async with request.app[keys.DB].acquire() as conn:
        s = await q.get_subnet(conn, subnet_id)
        n = await q.get_network(conn, s["network_id"]) if s else None
    doc = _shown(request, "subnet", subnet_doc(s), n) if s and _visible_network(request, n) else None
    if doc is None:
        raise NeutronError(404, "SubnetNotFound", f"Subnet {subnet_id} could not be found.")
    return web.json_response({"subnet": _fields(request, doc)})


async def ports_index(request: web.Request) -> web.Response:
    ctx = _caller(request)
    async with request.app[keys.DB].acquire() as conn:
        rows = await q.list_ports(conn, project_id=ctx.project_id, is_admin=is_admin(request))
        groups = await sg_q.port_group_ids(conn, [p["id"] for p in rows])
        networks = await _networks_by_id(conn)
    docs = [_shown(request, "port", port_doc(p, groups.get(p["id"], [])), networks.get(p["network_id"]))
            for p in rows]
    return web.json_response({"ports": filtered(request, [d for d in docs if d is not None])})


async def _visible_port(request: web.Request, conn, port_id: str) -> tuple[dict, dict, dict]:
    """(row, document, network) of a port the caller may see (``get_port``), else 404 PortNotFound."""
    ctx = _caller(request)
    p = await q.get_port(conn, port_id)
    doc = None
    if p is not None and (p["project_id"] == ctx.project_id or is_admin(request)):
        n = await q.get_network(conn, p["network_id"])
        groups = await sg_q.port_group_ids(conn, [p["id"]])
        doc = _shown(request, "port", port_doc(p, groups.get(p["id"], [])), n)
    if doc is None:
        raise NeutronError(404, "PortNotFound", f"Port {port_id} could not be found.")
    return p, doc, n


async def ports_show(request: web.Request) -> web.Response:
    async with request.app[keys.DB].acquire() as conn:
        _, doc, _ = await _visible_port(request, conn, request.match_info["port_id"])
    return web.json_response({"port": _fields(request, doc)})


# -- writes: shared steps -------------------------------------------------------------


@asynccontextmanager
async def _transaction(request: web.Request) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a transaction; Neutron's OverQuota (409) when a reserve() in it fails."""
    async with request.app[keys.DB].acquire() as conn:
        try:
            async with conn.transaction():
                yield conn
        except quota.OverQuota as exc:
            raise NeutronError(409, "OverQuota", str(exc)) from None


_DEADLOCK_RETRIES = 3


async def _create(request: web.Request, resource: str, spec: dict,
                  create_one: Callable[[web.Request, asyncpg.Connection, dict], Awaitable[dict]]) -> web.Response:
    """A POST of one resource or of several (Neutron's bulk create): every item checked first,
    then all made in one transaction, so a refused item leaves none of them behind. Items on
    several networks lock them in the order given, so two bulks naming them in opposite orders
    can deadlock: Postgres then rolls one back, and it is simply made again."""
    items, bulk = attrs_of.parse_many(await read_json(request), resource, spec)
    for attempt in range(_DEADLOCK_RETRIES + 1):
        try:
            async with _transaction(request) as conn:
                docs = [_readable(request, resource, await create_one(request, conn, item)) for item in items]
            break
        except asyncpg.DeadlockDetectedError:
            if attempt == _DEADLOCK_RETRIES:
                raise NeutronError(409, "Conflict", "Concurrent requests changed these networks; try again.") \
                    from None
    if resource == "subnet":
        await _networks_changed(request, {d["network_id"] for d in docs})
    return web.json_response({f"{resource}s": docs} if bulk else {resource: docs[0]}, status=201)


async def _networks_changed(request: web.Request, network_ids: Iterable[str]) -> None:
    """After subnets changed (options, DHCP, the DHCP port): hosts that have the networks follow."""
    for network_id in network_ids:
        await request.app[keys.NETWORK_API].network_changed(network_id)


def _authorize(request: web.Request, action: str, target: dict, explicit: Iterable[str]) -> None:
    """Neutron's enforcement of a write: ``action`` on the target, then ``action:<attr>`` for
    each attribute the request sets (where such a rule is registered). 403 PolicyNotAuthorized."""
    if not allowed(request, action, target):
        raise disallowed(action)
    enforcer = request.app[keys.NEUTRON_POLICY]
    for attr in explicit:
        rule = f"{action}:{attr}"
        if enforcer.is_registered(rule) and not allowed(request, rule, target):
            raise disallowed(rule)


def _authorize_change(request: web.Request, action: str, resource: str, target: dict,
                      explicit: Iterable[str]) -> None:
    """An update or delete: 403 to whom may see the resource, 404 (as if missing) to others."""
    if not allowed(request, action, target) and not allowed(request, f"get_{resource}", target):
        raise _not_found(resource, target["id"])
    _authorize(request, action, target, explicit)


def _not_found(resource: str, resource_id: str) -> NeutronError:
    kind = {"network": "NetworkNotFound", "subnet": "SubnetNotFound", "port": "PortNotFound"}[resource]
    return NeutronError(404, kind, f"{resource.capitalize()} {resource_id} could not be found.")


def _set(body: dict, defaults: dict) -> list[str]:
    """Attributes a create sets explicitly (Neutron: present and not the default)."""
    return [k for k, v in body.items() if k not in defaults or defaults[k] != v]


def _configured(n: dict) -> NeutronError:
    return NeutronError(409, "HTTPConflict", f"Network {n['id']} comes from [[networks]] in novalite's config; "
                                             "change or remove it there.")


async def _check_removable(conn: asyncpg.Connection, n: dict, in_use: NeutronError, **where: str) -> None:
    """A network or subnet may go unless it is configured or ports other than DHCP's use it."""
    if n["config_name"] is not None:
        raise _configured(n)
    if await q.ports_in_use(conn, **where):
        raise in_use


async def _network_for(request: web.Request, conn: asyncpg.Connection, network_id: str) -> dict:
    """The network a new subnet or port goes on: 404 NetworkNotFound unless the caller sees it."""
    n = await q.get_network(conn, network_id)
    if not _visible_network(request, n) or _shown(request, "network", network_doc(n)) is None:
        raise _not_found("network", network_id)
    return n


# -- networks ---------------------------------------------------------------------------

_NETWORK_COLUMNS = {"name": "name", "description": "description", "admin_state_up": "admin_state_up",
                    "shared": "shared", "router:external": "external",
                    "port_security_enabled": "port_security_enabled", "mtu": "mtu"}
_NETWORK_DEFAULTS = {"shared": False, "router:external": False, "port_security_enabled": True,
                     "admin_state_up": True}


async def _create_network(request: web.Request, conn: asyncpg.Connection, body: dict) -> dict:
    """One network of a POST /networks (shared and external ones: admin)."""
    project_id = attrs_of.project_of(body, _caller(request).project_id)
    _authorize(request, "create_network", {**body, "project_id": project_id, "tenant_id": project_id},
               _set(body, _NETWORK_DEFAULTS))
    network_id = uuidlib.uuid4()
    columns = {"shared": False, **{col: body[attr] for attr, col in _NETWORK_COLUMNS.items() if attr in body}}
    prefix = request.app[keys.CONFIG].networking.libvirt_prefix
    await quota.reserve(conn, project_id, {"network": 1})
    n = await q.create_network(conn, network_id=str(network_id), libvirt_name=f"{prefix}n{network_id.hex[:12]}",
                               project_id=project_id, **columns)
    return network_doc(n)


async def networks_create(request: web.Request) -> web.Response:
    """POST /networks: one tenant network, or several (``{"networks": [...]}``) all or none."""
    return await _create(request, "network", attrs_of.NETWORK, _create_network)


async def networks_update(request: web.Request) -> web.Response:
    """PUT /networks/{id}: name, description, admin state, sharing, port security, MTU."""
    network_id = request.match_info["network_id"]
    body = attrs_of.parse(await read_json(request), "network", attrs_of.NETWORK, create=False)
    async with _transaction(request) as conn:
        n = await q.lock_network(conn, network_id)
        if n is None or not _visible_network(request, n):
            raise _not_found("network", network_id)
        _authorize_change(request, "update_network", "network", {**network_doc(n), **body}, body)
        if n["config_name"] is not None and {"mtu", "shared", "router:external"} & set(body):
            raise _configured(n)
        n = await q.update_network(conn, network_id, {_NETWORK_COLUMNS[k]: v for k, v in body.items()})
    return web.json_response({"network": _readable(request, "network", network_doc(n))})


async def networks_delete(request: web.Request) -> web.Response:
    """DELETE /networks/{id}: 409 NetworkInUse while ports other than its DHCP port are on it."""
    network_id = request.match_info["network_id"]
    async with _transaction(request) as conn:
        n = await q.lock_network(conn, network_id)
        if n is None or not _visible_network(request, n):
            raise _not_found("network", network_id)
        _authorize_change(request, "delete_network", "network", network_doc(n), ())
        await _check_removable(conn, n, NeutronError(
            409, "NetworkInUse", f"Unable to complete operation on network {network_id}. "
                                 "There are one or more ports still in use on the network."), network_id=network_id)
        await q.delete_network(conn, network_id)
    return web.Response(status=204)


# -- subnets ----------------------------------------------------------------------------

_SUBNET_CONFIGURED = {"gateway_ip", "allocation_pools", "dns_nameservers"}


async def _create_subnet(request: web.Request, conn: asyncpg.Connection, body: dict) -> dict:
    """One IPv4 subnet of a POST /subnets; the network's DHCP port follows its first DHCP subnet."""
    cidr = attrs_of.parse_cidr(body["cidr"], body["ip_version"])
    project_id = attrs_of.project_of(body, _caller(request).project_id)
    n = await _network_for(request, conn, body["network_id"])
    target = _target({**body, "project_id": project_id, "tenant_id": project_id}, n)
    _authorize(request, "create_subnet", target, body)
    if n["config_name"] is not None:
        raise _configured(n)
    plan = attrs_of.plan_subnet(cidr, body.get("gateway_ip", attrs_of.UNSET), body.get("allocation_pools"))
    await quota.reserve(conn, project_id, {"subnet": 1})  # the quota lock before the network's, as ports do
    n = await q.lock_network(conn, n["id"])
    for other in await q.subnets_of_network(conn, n["id"]):
        if cidr.overlaps(ipaddress.IPv4Network(other["cidr"])):
            raise attrs_of.invalid_input(f"Requested subnet with cidr: {cidr} for network: {n['id']} "
                                         "overlaps with another subnet.")
    s = await q.create_subnet(
        conn, network_id=n["id"], project_id=project_id, cidr=plan.cidr, gateway_ip=plan.gateway_ip,
        allocation_pools=plan.allocation_pools, name=body.get("name", ""),
        description=body.get("description", ""), enable_dhcp=body.get("enable_dhcp", True),
        dns_nameservers=body.get("dns_nameservers"), host_routes=body.get("host_routes"),
    )
    await q.sync_dhcp_port(conn, n)
    return subnet_doc(s)


async def subnets_create(request: web.Request) -> web.Response:
    """POST /subnets: one subnet, or several (``{"subnets": [...]}``) all or none."""
    return await _create(request, "subnet", attrs_of.SUBNET, _create_subnet)


async def _visible_subnet(request: web.Request, conn: asyncpg.Connection, subnet_id: str) -> tuple[dict, dict]:
    s = await q.get_subnet(conn, subnet_id)
    n = await q.lock_network(conn, s["network_id"]) if s else None
    if s is None or not _visible_network(request, n):
        raise _not_found("subnet", subnet_id)
    return s, n


async def subnets_update(request: web.Request) -> web.Response:
    """PUT /subnets/{id}: name, description, gateway, pools, DNS servers, host routes, DHCP."""
    subnet_id = request.match_info["subnet_id"]
    body = attrs_of.parse(await read_json(request), "subnet", attrs_of.SUBNET, create=False)
    async with _transaction(request) as conn:
        s, n = await _visible_subnet(request, conn, subnet_id)
        _authorize_change(request, "update_subnet", "subnet", _target({**subnet_doc(s), **body}, n), body)
        if n["config_name"] is not None and _SUBNET_CONFIGURED & set(body):
            raise _configured(n)
        changes = dict(body)
        if {"gateway_ip", "allocation_pools"} & set(body):
            plan = attrs_of.plan_subnet(ipaddress.IPv4Network(s["cidr"]), body.get("gateway_ip", s["gateway_ip"]),
                                        body.get("allocation_pools", s["allocation_pools"]))
            changes.update(gateway_ip=plan.gateway_ip, allocation_pools=plan.allocation_pools)
            holder = plan.gateway_ip and await q.port_with_address(conn, n["id"], plan.gateway_ip)
            if holder:
                raise NeutronError(409, "IpAddressInUse", f"Unable to complete operation for network {n['id']}. "
                                                          f"The IP address {plan.gateway_ip} is in use.")
        s = await q.update_subnet(conn, subnet_id, changes)
        await q.sync_dhcp_port(conn, n)
    await _networks_changed(request, [n["id"]])
    return web.json_response({"subnet": _readable(request, "subnet", subnet_doc(s), n)})


async def subnets_delete(request: web.Request) -> web.Response:
    """DELETE /subnets/{id}: 409 SubnetInUse while ports other than the DHCP port hold its addresses."""
    subnet_id = request.match_info["subnet_id"]
    async with _transaction(request) as conn:
        s, n = await _visible_subnet(request, conn, subnet_id)
        _authorize_change(request, "delete_subnet", "subnet", _target(subnet_doc(s), n), ())
        await _check_removable(conn, n, NeutronError(
            409, "SubnetInUse", f"Unable to complete operation on subnet {subnet_id}: "
                                "One or more ports have an IP allocation from this subnet."), subnet_id=subnet_id)
        await q.delete_subnet(conn, subnet_id)
        await q.sync_dhcp_port(conn, n)
    await _networks_changed(request, [n["id"]])
    return web.Response(status=204)


# -- ports ------------------------------------------------------------------------------

_PORT_COLUMNS = {"name": "name", "description": "description", "admin_state_up": "admin_state_up",
                 "port_security_enabled": "port_security_enabled", "device_id": "device_id",
                 "device_owner": "device_owner", "binding:host_id": "host"}
_PORT_DEFAULTS = {"admin_state_up": True, "device_id": "", "device_owner": "", "binding:vnic_type": "normal",
                  "binding:profile": {}, "allowed_address_pairs": []}


@dataclass(frozen=True)
class _Address:
    """What a port's fixed_ips asks for: an address or none, from which subnet, which IP."""

    with_ip: bool
    subnet_id: str | None = None
    ip_address: str | None = None


def _policy_attrs(body: dict, defaults: dict) -> list[str]:
    """The attributes a port write sets, with ``fixed_ips:ip_address``/``:subnet_id`` as Neutron names them."""
    names = _set(body, defaults)
    for entry in body.get("fixed_ips") or []:
        names.extend(f"fixed_ips:{k}" for k in entry)
    return names


async def _address(conn: asyncpg.Connection, n: dict, fixed_ips: list[dict] | None, action: str) -> _Address:
    """Check a port's fixed_ips (at most one entry, novalite's max_fixed_ips_per_port) against the network."""
    subnets = await q.subnets_of_network(conn, n["id"])
    if fixed_ips is None:
        return _Address(with_ip=bool(subnets))
    if not fixed_ips:
        return _Address(with_ip=False)
    if len(fixed_ips) > 1:
        raise attrs_of.invalid_input("Exceeded maximum amount of fixed ips per port.")
    entry = fixed_ips[0]
    subnet_id, ip = entry.get("subnet_id"), entry.get("ip_address")
    if subnet_id is not None:
        subnets = [s for s in subnets if s["id"] == subnet_id]
        if not subnets:
            raise attrs_of.invalid_input(f"Failed to {action} port on network {n['id']}, because fixed_ips "
                                         f"included invalid subnet {subnet_id}.")
    if ip is not None:
        address = ipaddress.IPv4Address(ip)
        holding = [s for s in subnets if address in ipaddress.IPv4Network(s["cidr"])]
        if not holding and subnet_id is None:
            raise NeutronError(400, "InvalidIpForNetwork", f"IP address {ip} is not a valid IP for any of the "
                                                           "subnets on the specified network.")
        cidr = ipaddress.IPv4Network(holding[0]["cidr"]) if holding else None
        if cidr is None or address in (cidr.network_address, cidr.broadcast_address) \
                or ip == holding[0]["gateway_ip"]:
            raise NeutronError(400, "InvalidIpForSubnet",
                               f"IP address {ip} is not a valid IP for the specified subnet.")
        subnet_id = holding[0]["id"]
    return _Address(with_ip=True, subnet_id=subnet_id, ip_address=ip)


def _ip_errors(n: dict, exc: Exception) -> NeutronError:
    """The Neutron error for an address or MAC the database refused."""
    if isinstance(exc, q.AddressInUse):
        return NeutronError(409, "IpAddressAlreadyAllocated",
                            f"IP address {exc.address} already allocated in subnet {exc.subnet_id}")
    if isinstance(exc, q.MacInUse):
        return NeutronError(409, "MacAddressInUse", f"Unable to complete operation for network {n['id']}. "
                                                    f"The mac address {exc} is in use.")
    return NeutronError(409, "IpAddressGenerationFailure", f"No more IP addresses available on network {n['id']}.")


_SG_NEEDS = NeutronError(400, "PortSecurityAndIPRequiredForSecurityGroups",
                         "Port security must be enabled and port must have an IP address in order to use "
                         "security groups.")


async def _checked_groups(conn: asyncpg.Connection, project_id: str, groups: list[str]) -> list[str]:
    """The groups, each one of the project's (404 SecurityGroupNotFound otherwise)."""
    found = await q.project_group_ids(conn, project_id, groups)
    for g in groups:
        if g not in found:
            raise NeutronError(404, "SecurityGroupNotFound", f"Security group {g} does not exist")
    return list(dict.fromkeys(groups))


async def _new_port_groups(conn: asyncpg.Connection, project_id: str, body: dict, security: bool,
                           with_ip: bool) -> list[str]:
    """A new port's groups: the requested ones, else the project's ``default`` when it is filtered."""
    groups = body.get("security_groups")
    if groups and not (security and with_ip):
        raise _SG_NEEDS
    if groups is not None:
        return await _checked_groups(conn, project_id, groups)
    if not (security and with_ip):
        return []
    return [await sg_q.default_group_id(conn, project_id)]


async def _create_port(request: web.Request, conn: asyncpg.Connection, body: dict) -> dict:
    """One port of a POST /ports: a MAC and at most one fixed IP, in its project's security groups."""
    project_id = attrs_of.project_of(body, _caller(request).project_id)
    n = await _network_for(request, conn, body["network_id"])
    target = _target({**body, "project_id": project_id, "tenant_id": project_id}, n)
    _authorize(request, "create_port", target, _policy_attrs(body, _PORT_DEFAULTS))
    want = await _address(conn, n, body.get("fixed_ips"), "create")
    security = body.get("port_security_enabled", n["port_security_enabled"])
    groups = await _new_port_groups(conn, project_id, body, security, want.with_ip)
    await quota.reserve(conn, project_id, {"port": 1})
    try:
        p = await q.create_port(
            conn, network_id=n["id"], project_id=project_id, with_ip=want.with_ip, subnet_id=want.subnet_id,
            fixed_ip=want.ip_address, mac_address=body.get("mac_address"), security_groups=groups,
            port_security_enabled=security, preserve_on_delete=True, name=body.get("name", ""),
            description=body.get("description", ""), admin_state_up=body.get("admin_state_up", True),
            device_id=body.get("device_id", ""), device_owner=body.get("device_owner", ""),
            host=body.get("binding:host_id") or None,
        )
    except (q.AddressInUse, q.NoMoreAddresses, q.MacInUse) as exc:
        raise _ip_errors(n, exc) from None
    return port_doc(p, groups)


async def ports_create(request: web.Request) -> web.Response:
    """POST /ports: one port, or several (``{"ports": [...]}``) all or none."""
    return await _create(request, "port", attrs_of.PORT, _create_port)


def _port_groups_after(p: dict, doc: dict, body: dict, with_ip: bool) -> list[str]:
    """The groups a port update leaves, refused as Neutron refuses them with port security off."""
    security = body.get("port_security_enabled", p["port_security_enabled"])
    groups = body.get("security_groups", doc["security_groups"])
    if groups and not (security and with_ip):
        if body.get("security_groups"):
            raise _SG_NEEDS
        raise NeutronError(409, "PortSecurityPortHasSecurityGroup",
                           "Port has security group associated. Cannot disable port security or IP address "
                           "until security group is removed.")
    return groups


async def ports_update(request: web.Request) -> web.Response:
    """PUT /ports/{id}; the datapath follows through NetworkAPI.ports_changed/security_changed."""
    port_id = request.match_info["port_id"]
    body = attrs_of.parse(await read_json(request), "port", attrs_of.PORT, create=False)
    async with _transaction(request) as conn:
        network_id = await conn.fetchval("SELECT network_id::text FROM ports WHERE id::text = $1", port_id)
        if network_id is not None:  # the network's lock first, as subnet and network deletes take it
            await q.lock_network(conn, network_id)
        p, doc, n = await _visible_port(request, conn, port_id)
        _authorize_change(request, "update_port", "port", _target({**doc, **body}, n), _policy_attrs(body, {}))
        want = _Address(with_ip=p["fixed_ip"] is not None)
        if "fixed_ips" in body:
            want = await _address(conn, n, body["fixed_ips"], "update")
        groups = _port_groups_after(p, doc, body, want.with_ip)
        if "security_groups" in body:
            groups = await _checked_groups(conn, p["project_id"], groups)
            await q.set_port_groups(conn, port_id, groups)
        if "fixed_ips" in body:
            try:
                await q.readdress_port(conn, p, with_ip=want.with_ip, subnet_id=want.subnet_id,
                                       fixed_ip=want.ip_address)
            except (q.AddressInUse, q.NoMoreAddresses) as exc:
                raise _ip_errors(n, exc) from None
        changes = {_PORT_COLUMNS[k]: v for k, v in body.items() if k in _PORT_COLUMNS}
        if "host" in changes:
            changes["host"] = changes["host"] or None
        p = await q.update_port(conn, port_id, changes)
    network_api = request.app[keys.NETWORK_API]
    if {"fixed_ips", "security_groups", "port_security_enabled"} & set(body):
        await network_api.ports_changed([port_id])
    if set(groups) != set(doc["security_groups"]):
        await network_api.security_changed(set(groups) | set(doc["security_groups"]))
    return web.json_response({"port": _readable(request, "port", port_doc(p, groups), n)})


async def ports_delete(request: web.Request) -> web.Response:
    """DELETE /ports/{id}; a bound port's NIC, DHCP entry and filter leave its host
    (NetworkAPI.port_deleted) and its group mates' filters forget its address."""
    port_id = request.match_info["port_id"]
    async with _transaction(request) as conn:
        _, doc, n = await _visible_port(request, conn, port_id)
        _authorize_change(request, "delete_port", "port", _target(doc, n), ())
        groups = (await sg_q.port_group_ids(conn, [port_id])).get(port_id, [])
        row = await q.delete_port(conn, port_id)
    network_api = request.app[keys.NETWORK_API]
    if row is not None and row["host"]:
        await network_api.port_deleted(row)
    if groups:
        await network_api.security_changed(groups)
    return web.Response(status=204)


# -- quotas ---------------------------------------------------------------------------


def _quota_project(request: web.Request) -> str:
    """Neutron's quotas: a project reads its own; another's needs get_quota, which Neutron
    checks against the caller's own project as target."""
    ctx = _caller(request)
    project_id = request.match_info["project_id"].removesuffix(".json")
    if project_id != ctx.project_id and not allowed(request, "get_quota"):
        raise disallowed("get_quota")
    return project_id


async def quotas_show(request: web.Request) -> web.Response:
    project_id = _quota_project(request)
    async with request.app[keys.DB].acquire() as conn:
        limits = await quota.limits(conn, project_id)
    return web.json_response({"quota": limits})


async def quotas_details(request: web.Request) -> web.Response:
    ctx = _caller(request)
    project_id = request.match_info["project_id"].removesuffix(".json")
    if project_id != ctx.project_id and not is_admin(request):  # Neutron asks context.is_admin here
        raise NeutronError(403, "HTTPForbidden", "Only admin is authorized to access quotas for another project")
    async with request.app[keys.DB].acquire() as conn:
        limits = await quota.limits(conn, project_id)
        used = await quota.usage(conn, project_id)
    return web.json_response({"quota": {
        k: {"limit": v, "used": used.get(k, 0), "reserved": 0} for k, v in limits.items()
    }})


async def quotas_default(request: web.Request) -> web.Response:
    _quota_project(request)
    return web.json_response({"quota": dict(quota.DEFAULTS)})


async def quotas_index(request: web.Request) -> web.Response:
    if not allowed(request, "get_quota"):
        raise disallowed("get_quota")
    async with request.app[keys.DB].acquire() as conn:
        docs = [{"project_id": p, "tenant_id": p, **await quota.limits(conn, p)}
                for p in await quota.projects_with_limits(conn)]
    return web.json_response({"quotas": capped(request, docs)})


def _quota_limits(body: object) -> dict[str, int]:
    """``{"quota": {resource: limit}}`` checked as Neutron does: known resources, integers ≥ -1."""
    spec = {r: attrs_of.Attr(attrs_of.integer) for r in quota.DEFAULTS}
    limits = attrs_of.parse(body, "quota", spec, create=False)
    for resource, limit in limits.items():
        if not -1 <= limit <= attrs_of.MAX_QUOTA:
            raise NeutronError(400, "HTTPBadRequest", f"Invalid input for {resource}. Reason: "
                                                      f"'{limit}' is not in range -1 through {attrs_of.MAX_QUOTA}.")
    return limits


async def quotas_update(request: web.Request) -> web.Response:
    """PUT /quotas/{project}: the project's own limits (admin, ``update_quota``)."""
    project_id = request.match_info["project_id"].removesuffix(".json")
    if not allowed(request, "update_quota", {"project_id": project_id, "tenant_id": project_id}):
        raise disallowed("update_quota")
    limits = _quota_limits(await read_json(request))
    async with request.app[keys.DB].acquire() as conn, conn.transaction():
        await quota.set_limits(conn, project_id, limits)
        current = await quota.limits(conn, project_id)
    return web.json_response({"quota": current})


async def quotas_delete(request: web.Request) -> web.Response:
    """DELETE /quotas/{project}: back to Neutron's defaults (admin, ``delete_quota``)."""
    project_id = request.match_info["project_id"].removesuffix(".json")
    if not allowed(request, "delete_quota", {"project_id": project_id, "tenant_id": project_id}):
        raise disallowed("delete_quota")
    async with request.app[keys.DB].acquire() as conn:
        await quota.reset(conn, project_id)
    return web.Response(status=204)


async def availability_zones_index(request: web.Request) -> web.Response:
    docs = [{"name": "nova", "resource": "network", "state": "available"}]
    docs = [d for d in docs if allowed(request, "get_availability_zone", d)]
    return web.json_response({"availability_zones": filtered(request, docs)})


async def ip_availability_index(request: web.Request) -> web.Response:
    ctx = _caller(request)
    async with request.app[keys.DB].acquire() as conn:
        nets = await q.list_networks(conn, project_id=ctx.project_id, is_admin=is_admin(request))
        out = []
        for n in nets:
            if not allowed(request, "get_network_ip_availability", _target(network_doc(n))):
                continue
            subnets = []
            for sid in n["subnets"]:
                s = await q.get_subnet(conn, sid)
                free = await q.free_addresses(conn, sid)
                used = await conn.fetchval("SELECT count(*) FROM ports WHERE subnet_id = $1::uuid", sid)
                subnets.append({"subnet_id": sid, "subnet_name": s["name"], "cidr": s["cidr"], "ip_version": 4,
                                "used_ips": used, "total_ips": used + free})
            out.append({"network_id": n["id"], "network_name": n["name"], "tenant_id": n["project_id"],
                        "project_id": n["project_id"], "subnet_ip_availability": subnets,
                        "used_ips": sum(x["used_ips"] for x in subnets),
                        "total_ips": sum(x["total_ips"] for x in subnets)})
    return web.json_response({"network_ip_availabilities": filtered(request, out)})


#: The Neutron rules each handler asks (tests check every one is registered).
HANDLER_RULES: dict[str, tuple[str, ...]] = {
    "versions": (), "version_v2": (), "extensions_index": (), "extensions_show": (),
    "networks_index": ("context_is_admin", "get_network", "get_network:provider:network_type"),
    "networks_create": ("create_network", "create_network:shared", "create_network:router:external",
                        "create_network:port_security_enabled"),
    "networks_update": ("context_is_admin", "update_network", "update_network:shared",
                        "update_network:router:external", "update_network:port_security_enabled", "get_network"),
    "networks_delete": ("context_is_admin", "delete_network", "get_network"),
    "subnets_create": ("context_is_admin", "get_network", "create_subnet"),
    "subnets_update": ("context_is_admin", "update_subnet", "get_subnet"),
    "subnets_delete": ("context_is_admin", "delete_subnet", "get_subnet"),
    "ports_create": ("context_is_admin", "get_network", "create_port", "create_port:device_id",
                     "create_port:device_owner", "create_port:mac_address", "create_port:fixed_ips",
                     "create_port:fixed_ips:ip_address", "create_port:fixed_ips:subnet_id",
                     "create_port:port_security_enabled", "create_port:binding:host_id"),
    "ports_update": ("context_is_admin", "get_port", "update_port", "update_port:device_id",
                     "update_port:device_owner", "update_port:fixed_ips", "update_port:fixed_ips:ip_address",
                     "update_port:fixed_ips:subnet_id", "update_port:port_security_enabled",
                     "update_port:binding:host_id"),
    "ports_delete": ("context_is_admin", "get_port", "delete_port"),
    "quotas_update": ("update_quota",),
    "quotas_delete": ("delete_quota",),
    "networks_show": ("context_is_admin", "get_network", "get_network:provider:network_type"),
    "subnets_index": ("context_is_admin", "get_subnet"),
    "subnets_show": ("context_is_admin", "get_subnet"),
    "ports_index": ("context_is_admin", "get_port", "get_port:binding:host_id"),
    "ports_show": ("context_is_admin", "get_port", "get_port:binding:host_id"),
    "quotas_index": ("get_quota",),
    "quotas_details": ("context_is_admin",),
    "quotas_default": ("get_quota",),
    "quotas_show": ("get_quota",),
    "availability_zones_index": ("get_availability_zone",),
    "ip_availability_index": ("context_is_admin", "get_network_ip_availability"),
}


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/networking", versions)
    r.add_get("/networking/", versions)
    r.add_get("/networking/v2.0", version_v2)
    r.add_get("/networking/v2.0/", version_v2)
    v2 = "/networking/v2.0"
    r.add_get(v2 + "/extensions", extensions_index)
    r.add_get(v2 + "/extensions/{alias}", extensions_show)
    r.add_get(v2 + "/networks", networks_index)
    r.add_post(v2 + "/networks", networks_create)
    r.add_get(v2 + "/networks/{network_id}", networks_show)
    r.add_put(v2 + "/networks/{network_id}", networks_update)
    r.add_delete(v2 + "/networks/{network_id}", networks_delete)
    r.add_get(v2 + "/subnets", subnets_index)
    r.add_post(v2 + "/subnets", subnets_create)
    r.add_get(v2 + "/subnets/{subnet_id}", subnets_show)
    r.add_put(v2 + "/subnets/{subnet_id}", subnets_update)
    r.add_delete(v2 + "/subnets/{subnet_id}", subnets_delete)
    r.add_get(v2 + "/ports", ports_index)
    r.add_post(v2 + "/ports", ports_create)
    r.add_get(v2 + "/ports/{port_id}", ports_show)
    r.add_put(v2 + "/ports/{port_id}", ports_update)
    r.add_delete(v2 + "/ports/{port_id}", ports_delete)
    r.add_get(v2 + "/quotas", quotas_index)
    r.add_get(v2 + "/quotas/{project_id}/details.json", quotas_details)
    r.add_get(v2 + "/quotas/{project_id}/details", quotas_details)
    r.add_get(v2 + "/quotas/{project_id}/default", quotas_default)
    r.add_get(v2 + "/quotas/{project_id}", quotas_show)
    r.add_put(v2 + "/quotas/{project_id}", quotas_update)
    r.add_delete(v2 + "/quotas/{project_id}", quotas_delete)
    r.add_get(v2 + "/availability_zones", availability_zones_index)
    r.add_get(v2 + "/network-ip-availabilities", ip_availability_index)
