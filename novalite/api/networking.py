"""Neutron v2 subset at /networking: networks, subnets, ports and security groups (read),
extensions, quotas and availability zones — what the openstack CLI and openstacksdk call.

Reads come straight from Postgres (novalite.db.networks); networks themselves are
made from config by :meth:`novalite.network.NetworkAPI.ensure_networks`. Errors
use Neutron's body ``{"NeutronError": {"type", "message", "detail"}}``.
Every decision goes through Neutron's policy (``keys.NEUTRON_POLICY``) as Neutron
takes it: the SQL narrows rows to the caller's project and shared networks (all
of them when ``context_is_admin`` passes), then each item must pass
``get_<resource>`` with the resource as target, or it is left out of a list and
a GET of it is 404; attributes whose ``get_<resource>:<attr>`` rule denies are
stripped (provider and binding details for non-admins).
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from novalite.api import errors, keys
from novalite.api import policy as api_policy
from novalite.api.pagination import capped, page_limit
from novalite.api.policy import context
from novalite.context import RequestContext
from novalite.db import networks as q
from novalite.db import security_groups as sg_q

_NOT_FILTERS = {"fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse", "tags", "tags-any",
                "not-tags", "not-tags-any"}

# Extensions whose behaviour novalite has (clients probe some of them by alias).
EXTENSIONS = [
    ("agent", "agent", "The agent management extension."),
    ("availability_zone", "Availability Zone", "The availability zone extension."),
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external application"),
    ("external-net", "Neutron external network", "Adds external network attribute to network resource."),
    ("network-ip-availability", "Network IP Availability", "Provides IP availability data for each network and subnet."),
    ("network_availability_zone", "Network Availability Zone", "Availability zone support for network."),
    ("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    ("port-security", "Port Security", "Provides port security"),
    ("project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled."),
    ("quotas", "Quota management support", "Expose functions for quotas management per tenant"),
    ("quota_details", "Quota details management support", "Expose functions for quotas usage statistics per project"),
    ("security-group", "security-group", "The security groups extension."),
    ("standard-attr-description", "standard-attr-description", "Extension to add descriptions to standard attributes"),
    ("standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes."),
]

class NeutronError(errors.ApiError):
    """An error with Neutron's exception type name (e.g. NetworkNotFound), rendered by the error middleware."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message, code=status)
        self.kind = kind


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
    return target


def _shown(request: web.Request, resource: str, doc: dict, network: dict | None = None) -> dict | None:
    """The document if ``get_<resource>`` allows it, without the attributes the caller may not read."""
    target = _target(doc, network)
    if not allowed(request, f"get_{resource}", target):
        return None
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
    doc = {
        "id": n["id"],
        "name": n["name"],
        "tenant_id": n["project_id"],
        "project_id": n["project_id"],
        "admin_state_up": True,
        "mtu": n["mtu"],
        "status": n["status"],
        "subnets": list(n["subnets"]),
        "shared": n["shared"],
        "availability_zone_hints": [],
        "availability_zones": ["nova"],
        "ipv4_address_scope": None,
        "ipv6_address_scope": None,
        "router:external": False,
        "description": "",
        "port_security_enabled": True,
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
    return doc


def subnet_doc(s: dict) -> dict:
    return {
        "id": s["id"],
        "name": s["name"],
        "tenant_id": s["project_id"],
        "project_id": s["project_id"],
        "network_id": s["network_id"],
        "ip_version": 4,
        "subnetpool_id": None,
        "enable_dhcp": s["enable_dhcp"],
        "ipv6_ra_mode": None,
        "ipv6_address_mode": None,
        "gateway_ip": s["gateway_ip"],
        "cidr": s["cidr"],
        "allocation_pools": [{"start": s["pool_start"], "end": s["pool_end"]}],
        "host_routes": [],
        "dns_nameservers": list(s["dns_nameservers"]),
        "description": "",
        "service_types": [],
        "tags": [],
        "created_at": _ts(s["created_at"]),
        "updated_at": _ts(s["updated_at"]),
        "revision_number": 0,
    }


def port_doc(p: dict, security_group_ids: list[str]) -> dict:
    doc = {
        "id": p["id"],
        "name": p["name"],
        "network_id": p["network_id"],
        "tenant_id": p["project_id"],
        "project_id": p["project_id"],
        "mac_address": p["mac_address"],
        "admin_state_up": True,
        "status": p["status"],
        "device_id": p["device_id"],
        "device_owner": p["device_owner"],
        "fixed_ips": [{"subnet_id": p["subnet_id"], "ip_address": p["fixed_ip"]}],
        "allowed_address_pairs": [],
        "extra_dhcp_opts": [],
        "security_groups": security_group_ids if p["device_id"] else [],
        "description": "",
        "binding:vnic_type": "normal",
        "port_security_enabled": True,
        "dns_name": "",
        "dns_assignment": [],
        "tags": [],
        "created_at": _ts(p["created_at"]),
        "updated_at": _ts(p["updated_at"]),
        "revision_number": 1,
        "binding:host_id": p["host"] or "",
        "binding:profile": {},
        "binding:vif_details": {},
        "binding:vif_type": "bridge" if p["host"] else "unbound",
    }
    return doc


# -- filtering -----------------------------------------------------------------------


def _matches(doc: dict, key: str, wanted: list[str]) -> bool:
    if key == "fixed_ips":
        for spec in wanted:
            attr, _, value = spec.partition("=")
            if not any(str(ip.get(attr)) == value for ip in doc.get("fixed_ips", [])):
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
    """Neutron's network query: the caller's own and shared networks, every one for an admin."""
    ctx = _caller(request)
    return n is not None and (n["shared"] or n["project_id"] == ctx.project_id or is_admin(request))


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


async def ports_show(request: web.Request) -> web.Response:
    ctx = _caller(request)
    port_id = request.match_info["port_id"]
    async with request.app[keys.DB].acquire() as conn:
        p = await q.get_port(conn, port_id)
        groups = await sg_q.port_group_ids(conn, [p["id"]]) if p else {}
        n = await q.get_network(conn, p["network_id"]) if p else None
    doc = None
    if p is not None and (p["project_id"] == ctx.project_id or is_admin(request)):
        doc = _shown(request, "port", port_doc(p, groups.get(p["id"], [])), n)
    if doc is None:
        raise NeutronError(404, "PortNotFound", f"Port {port_id} could not be found.")
    return web.json_response({"port": _fields(request, doc)})


# Neutron's default quotas; novalite does not enforce network quotas (ports are bounded by subnets).
NETWORK_QUOTAS = {"network": 100, "subnet": 100, "port": 500, "router": 10, "floatingip": 50,
                  "security_group": 10, "security_group_rule": 100, "rbac_policy": 10, "subnetpool": -1}


async def _quota_usage(request: web.Request, project_id: str) -> dict[str, int]:
    async with request.app[keys.DB].acquire() as conn:
        row = await conn.fetchrow(
            """SELECT (SELECT count(*) FROM networks WHERE project_id = $1) AS network,
                      (SELECT count(*) FROM subnets WHERE project_id = $1) AS subnet,
                      (SELECT count(*) FROM ports WHERE project_id = $1) AS port,
                      (SELECT count(*) FROM security_groups WHERE project_id = $1) AS security_group""",
            project_id,
        )
    return dict(row)


def _quota_project(request: web.Request) -> str:
    """Neutron's quotas: a project reads its own; another's needs get_quota, which Neutron
    checks against the caller's own project as target."""
    ctx = _caller(request)
    project_id = request.match_info["project_id"].removesuffix(".json")
    if project_id != ctx.project_id and not allowed(request, "get_quota"):
        raise disallowed("get_quota")
    return project_id


async def quotas_show(request: web.Request) -> web.Response:
    _quota_project(request)
    return web.json_response({"quota": dict(NETWORK_QUOTAS)})


async def quotas_details(request: web.Request) -> web.Response:
    ctx = _caller(request)
    project_id = request.match_info["project_id"].removesuffix(".json")
    if project_id != ctx.project_id and not is_admin(request):  # Neutron asks context.is_admin here
        raise NeutronError(403, "HTTPForbidden", "Only admin is authorized to access quotas for another project")
    used = await _quota_usage(request, project_id)
    return web.json_response({"quota": {
        k: {"limit": v, "used": used.get(k, 0), "reserved": 0} for k, v in NETWORK_QUOTAS.items()
    }})


async def quotas_default(request: web.Request) -> web.Response:
    _quota_project(request)
    return web.json_response({"quota": dict(NETWORK_QUOTAS)})


async def quotas_index(request: web.Request) -> web.Response:
    if not allowed(request, "get_quota"):
        raise disallowed("get_quota")
    return web.json_response({"quotas": []})


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
    r.add_get(v2 + "/networks/{network_id}", networks_show)
    r.add_get(v2 + "/subnets", subnets_index)
    r.add_get(v2 + "/subnets/{subnet_id}", subnets_show)
    r.add_get(v2 + "/ports", ports_index)
    r.add_get(v2 + "/ports/{port_id}", ports_show)
    r.add_get(v2 + "/quotas", quotas_index)
    r.add_get(v2 + "/quotas/{project_id}/details.json", quotas_details)
    r.add_get(v2 + "/quotas/{project_id}/details", quotas_details)
    r.add_get(v2 + "/quotas/{project_id}/default", quotas_default)
    r.add_get(v2 + "/quotas/{project_id}", quotas_show)
    r.add_get(v2 + "/availability_zones", availability_zones_index)
    r.add_get(v2 + "/network-ip-availabilities", ip_availability_index)
