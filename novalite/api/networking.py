"""Neutron v2 subset at /networking: networks, subnets, ports and security groups (read),
extensions, quotas and availability zones — what the openstack CLI and openstacksdk call.

Reads come straight from Postgres (novalite.db.networks); networks themselves are
made from config by :meth:`novalite.network.NetworkAPI.ensure_networks`. Errors
use Neutron's body ``{"NeutronError": {"type", "message", "detail"}}``.
Visibility follows Neutron's defaults: a project sees its own and shared
networks (and their subnets) and its own ports; admins see everything.
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute.common import context
from novalite.context import RequestContext
from novalite.db import boot as lookups
from novalite.db import networks as q

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


# -- documents ---------------------------------------------------------------------


def network_doc(n: dict, is_admin: bool = False) -> dict:
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
    }
    if is_admin:
        doc.update({"provider:network_type": "local", "provider:physical_network": None,
                    "provider:segmentation_id": None})
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


def port_doc(p: dict, security_group_ids: list[str], is_admin: bool = False) -> dict:
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
    }
    if is_admin:
        doc.update({"binding:host_id": p["host"] or "", "binding:profile": {}, "binding:vif_details": {},
                    "binding:vif_type": "bridge" if p["host"] else "unbound"})
    return doc


def security_group_doc(g: dict) -> dict:
    return {
        "id": g["id"],
        "name": g["name"],
        "tenant_id": g["project_id"],
        "project_id": g["project_id"],
        "description": g["description"],
        "security_group_rules": [],
        "stateful": True,
        "shared": False,
        "tags": [],
        "created_at": None,
        "updated_at": None,
        "revision_number": 1,
    }


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
    limit = request.query.get("limit")
    if limit:
        try:
            out = out[: max(0, int(limit))]
        except ValueError:
            raise errors.BadRequest(f"Bad limit request: Limit must be an integer 0 or greater and not '{limit}'.") \
                from None
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
    return web.json_response({"extensions": [
        {"alias": a, "name": n, "description": d, "updated": "2024-01-01T00:00:00-00:00", "links": []}
        for a, n, d in EXTENSIONS
    ]})


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
        rows = await q.list_networks(conn, project_id=ctx.project_id, is_admin=ctx.is_admin)
    return web.json_response({"networks": filtered(request, [network_doc(n, ctx.is_admin) for n in rows])})


def _visible_network(ctx: RequestContext, n: dict | None) -> bool:
    return n is not None and (ctx.is_admin or n["shared"] or n["project_id"] == ctx.project_id)


async def networks_show(request: web.Request) -> web.Response:
    ctx = _caller(request)
    net_id = request.match_info["network_id"]
    async with request.app[keys.DB].acquire() as conn:
        n = await q.get_network(conn, net_id)
    if not _visible_network(ctx, n):
        raise NeutronError(404, "NetworkNotFound", f"Network {net_id} could not be found.")
    return web.json_response({"network": _fields(request, network_doc(n, ctx.is_admin))})


async def subnets_index(request: web.Request) -> web.Response:
    ctx = _caller(request)
    async with request.app[keys.DB].acquire() as conn:
        rows = await q.list_subnets(conn, project_id=ctx.project_id, is_admin=ctx.is_admin)
    return web.json_response({"subnets": filtered(request, [subnet_doc(s) for s in rows])})


async def subnets_show(request: web.Request) -> web.Response:
    ctx = _caller(request)
    subnet_id = request.match_info["subnet_id"]
    async with request.app[keys.DB].acquire() as conn:
        s = await q.get_subnet(conn, subnet_id)
        n = await q.get_network(conn, s["network_id"]) if s else None
    if s is None or not _visible_network(ctx, n):
        raise NeutronError(404, "SubnetNotFound", f"Subnet {subnet_id} could not be found.")
    return web.json_response({"subnet": _fields(request, subnet_doc(s))})


async def _group_ids(conn, project_ids: set[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pid in project_ids:
        rows = await conn.fetch(
            "SELECT id::text AS id FROM security_groups WHERE project_id = $1 AND name = 'default'", pid
        )
        out[pid] = [r["id"] for r in rows]
    return out


async def ports_index(request: web.Request) -> web.Response:
    ctx = _caller(request)
    async with request.app[keys.DB].acquire() as conn:
        rows = await q.list_ports(conn, project_id=ctx.project_id, is_admin=ctx.is_admin)
        groups = await _group_ids(conn, {p["project_id"] for p in rows})
    docs = [port_doc(p, groups.get(p["project_id"], []), ctx.is_admin) for p in rows]
    return web.json_response({"ports": filtered(request, docs)})


async def ports_show(request: web.Request) -> web.Response:
    ctx = _caller(request)
    port_id = request.match_info["port_id"]
    async with request.app[keys.DB].acquire() as conn:
        p = await q.get_port(conn, port_id)
        groups = await _group_ids(conn, {p["project_id"]}) if p else {}
    if p is None or not (ctx.is_admin or p["project_id"] == ctx.project_id):
        raise NeutronError(404, "PortNotFound", f"Port {port_id} could not be found.")
    return web.json_response({"port": _fields(request, port_doc(p, groups.get(p["project_id"], []), ctx.is_admin))})


async def security_groups_index(request: web.Request) -> web.Response:
    ctx = _caller(request)
    async with request.app[keys.DB].acquire() as conn:
        await lookups.ensure_default_security_group(conn, ctx.project_id)
        rows = await q.security_groups(conn, project_id=ctx.project_id, is_admin=ctx.is_admin)
    return web.json_response({"security_groups": filtered(request, [security_group_doc(g) for g in rows])})


async def security_groups_show(request: web.Request) -> web.Response:
    ctx = _caller(request)
    group_id = request.match_info["group_id"]
    async with request.app[keys.DB].acquire() as conn:
        await lookups.ensure_default_security_group(conn, ctx.project_id)
        rows = await q.security_groups(conn, project_id=ctx.project_id, is_admin=ctx.is_admin)
    for g in rows:
        if g["id"] == group_id:
            return web.json_response({"security_group": _fields(request, security_group_doc(g))})
    raise NeutronError(404, "SecurityGroupNotFound", f"Security group {group_id} does not exist")


async def security_groups_delete(request: web.Request) -> web.Response:
    """DELETE /security-groups/{id}: a project's `default` group only by an admin (Neutron's
    rule; Tempest's cleanup of a deleted project does this); it is made again when next needed."""
    ctx = _caller(request)
    group_id = request.match_info["group_id"]
    async with request.app[keys.DB].acquire() as conn:
        row = await conn.fetchrow(
            "SELECT id, project_id, name FROM security_groups WHERE id::text = $1", group_id
        )
        if row is None or (row["project_id"] != ctx.project_id and not ctx.is_admin):
            raise NeutronError(404, "SecurityGroupNotFound", f"Security group {group_id} does not exist")
        if row["name"] == "default" and not ctx.is_admin:
            raise NeutronError(409, "SecurityGroupCannotRemoveDefault", "Insufficient rights for removing default security group.")
        await conn.execute("DELETE FROM security_groups WHERE id = $1", row["id"])
    return web.Response(status=204)


async def security_group_rules_index(request: web.Request) -> web.Response:
    _caller(request)
    return web.json_response({"security_group_rules": []})


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
    ctx = _caller(request)
    project_id = request.match_info["project_id"].removesuffix(".json")
    if project_id != ctx.project_id and not ctx.is_admin:
        raise NeutronError(403, "HTTPForbidden", "Only admin is authorized to access quotas for another project")
    return project_id


async def quotas_show(request: web.Request) -> web.Response:
    _quota_project(request)
    return web.json_response({"quota": dict(NETWORK_QUOTAS)})


async def quotas_details(request: web.Request) -> web.Response:
    project_id = _quota_project(request)
    used = await _quota_usage(request, project_id)
    return web.json_response({"quota": {
        k: {"limit": v, "used": used.get(k, 0), "reserved": 0} for k, v in NETWORK_QUOTAS.items()
    }})


async def quotas_default(request: web.Request) -> web.Response:
    _quota_project(request)
    return web.json_response({"quota": dict(NETWORK_QUOTAS)})


async def quotas_index(request: web.Request) -> web.Response:
    ctx = _caller(request)
    if not ctx.is_admin:
        raise NeutronError(403, "HTTPForbidden", "Only admin can view or configure quota")
    return web.json_response({"quotas": []})


async def availability_zones_index(request: web.Request) -> web.Response:
    _caller(request)
    docs = [{"name": "nova", "resource": "network", "state": "available"}]
    return web.json_response({"availability_zones": filtered(request, docs)})


async def ip_availability_index(request: web.Request) -> web.Response:
    ctx = _caller(request)
    async with request.app[keys.DB].acquire() as conn:
        nets = await q.list_networks(conn, project_id=ctx.project_id, is_admin=ctx.is_admin)
        out = []
        for n in nets:
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
    r.add_get(v2 + "/security-groups", security_groups_index)
    r.add_get(v2 + "/security-groups/{group_id}", security_groups_show)
    r.add_delete(v2 + "/security-groups/{group_id}", security_groups_delete)
    r.add_get(v2 + "/security-group-rules", security_group_rules_index)
    r.add_get(v2 + "/quotas", quotas_index)
    r.add_get(v2 + "/quotas/{project_id}/details.json", quotas_details)
    r.add_get(v2 + "/quotas/{project_id}/details", quotas_details)
    r.add_get(v2 + "/quotas/{project_id}/default", quotas_default)
    r.add_get(v2 + "/quotas/{project_id}", quotas_show)
    r.add_get(v2 + "/availability_zones", availability_zones_index)
    r.add_get(v2 + "/network-ip-availabilities", ip_availability_index)
