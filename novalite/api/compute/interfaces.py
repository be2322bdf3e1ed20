"""Nova's os-interface on servers (attach_interfaces.py) and the server's os-security-groups list.

``openstack server add/remove port`` and (from 2.44) ``server add fixed ip`` come
here. Attach answers with the attachment once the NIC is in the guest (Nova's
call to the compute host); detach answers 202 once it is out. ``tag`` is
accepted from 2.49 and shown from 2.70.
"""

from __future__ import annotations

import ipaddress
import uuid as uuidlib

import asyncpg
from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute.common import at_least, authorize
from novalite.api.compute.security_groups_proxy import security_group_view
from novalite.api.compute.servers import load_instance
from novalite.api.compute.validation import validate_body
from novalite.api.middleware import read_json
from novalite.compute.interfaces import InterfaceAttachments
from novalite.network.api import NetworkAPI

TAG = {"type": "string", "maxLength": 60, "pattern": "^[^,/]*$"}
_FIXED_IPS = {"type": "array", "items": {"type": "object", "properties": {"ip_address": {"type": "string"}},
                                         "required": ["ip_address"], "additionalProperties": False}}


def _create_schema(with_tag: bool) -> dict:
    props: dict = {"net_id": {"type": "string"}, "port_id": {"type": "string"}, "fixed_ips": _FIXED_IPS}
    if with_tag:
        props["tag"] = TAG
    return {"type": "object", "properties": {"interfaceAttachment": {
        "type": "object", "properties": props, "additionalProperties": False}},
        "additionalProperties": False}


def _target(inst: asyncpg.Record) -> dict:
    return {"project_id": inst["project_id"]}


def interfaces(request: web.Request) -> InterfaceAttachments:
    return request.app[keys.INTERFACES]


def network_api(request: web.Request) -> NetworkAPI:
    return request.app[keys.NETWORK_API]


def attachment_view(request: web.Request, port: dict) -> dict:
    """One interfaceAttachment: the port as Nova's view maps it (``tag`` from 2.70)."""
    doc = {
        "net_id": port["network_id"],
        "port_id": port["id"],
        "mac_addr": port["mac_address"],
        "port_state": port["status"],
        "fixed_ips": [{"subnet_id": port["subnet_id"], "ip_address": port["fixed_ip"]}] if port["fixed_ip"] else [],
    }
    if at_least(request, 70):
        doc["tag"] = port.get("tag")
    return doc


async def index(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    authorize(request, "os_compute_api:os-attach-interfaces:list", _target(inst))
    ports = await network_api(request).interface_ports(str(inst["uuid"]))
    return web.json_response({"interfaceAttachments": [attachment_view(request, p) for p in ports]})


async def _shown(request: web.Request, inst: asyncpg.Record, port_id: str) -> web.Response:
    uuid = str(inst["uuid"])
    port = next((p for p in await network_api(request).interface_ports(uuid) if p["id"] == port_id), None)
    if port is None:
        raise errors.NotFound(f"Instance {uuid} does not have a port with id {port_id}")
    return web.json_response({"interfaceAttachment": attachment_view(request, port)})


async def show(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    authorize(request, "os_compute_api:os-attach-interfaces:show", _target(inst))
    return await _shown(request, inst, request.match_info["port_id"])


def _uuid_field(name: str, value: object) -> str | None:
    if value is None:
        return None
    try:
        uuidlib.UUID(str(value))
    except ValueError:
        raise errors.BadRequest(
            f"Invalid input for field/attribute {name}. Value: {value}. '{value}' is not a 'uuid'") from None
    return str(value)


def _requested_ip(att: dict) -> str | None:
    fixed_ips = att.get("fixed_ips")
    if fixed_ips is None:
        return None
    if len(fixed_ips) != 1:
        raise errors.BadRequest(f"Invalid input for field/attribute fixed_ips. Value: {fixed_ips}. "
                                f"{fixed_ips!r} is {'too short' if not fixed_ips else 'too long'}")
    address = fixed_ips[0]["ip_address"]
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise errors.BadRequest(f"Invalid input for field/attribute ip_address. Value: {address}. "
                                f"{address!r} is not valid under any of the given schemas") from None
    return address


async def create(request: web.Request) -> web.Response:
    """Nova's create: port_id or net_id (+ one fixed IP), not both; the attachment as show renders it."""
    inst = await load_instance(request)
    ctx = authorize(request, "os_compute_api:os-attach-interfaces:create", _target(inst))
    body = await read_json(request)
    validate_body(_create_schema(at_least(request, 49)), body)
    att = body.get("interfaceAttachment") or {}
    network_id = _uuid_field("net_id", att.get("net_id"))
    port_id = _uuid_field("port_id", att.get("port_id"))
    fixed_ip = _requested_ip(att)
    if network_id and port_id:
        raise errors.BadRequest("Must not input both network_id and port_id")
    if fixed_ip and not network_id:
        raise errors.BadRequest("Must input network_id when request IP address")
    port = await interfaces(request).attach(ctx, inst, port_id=port_id, network_id=network_id,
                                            fixed_ip=fixed_ip, tag=att.get("tag"))
    return await _shown(request, inst, port.port_id)


async def delete(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    ctx = authorize(request, "os_compute_api:os-attach-interfaces:delete", _target(inst))
    await interfaces(request).detach(ctx, inst, request.match_info["port_id"])
    return web.Response(status=202)


async def security_groups_index(request: web.Request) -> web.Response:
    """GET /servers/{id}/os-security-groups: the server's groups, sorted by (tenant_id, name)."""
    inst = await load_instance(request)
    authorize(request, "os_compute_api:os-security-groups:list", _target(inst))
    groups = await network_api(request).server_security_groups(inst["project_id"], inst["security_groups"] or [])
    docs = sorted((security_group_view(g) for g in groups), key=lambda g: (g["tenant_id"], g["name"]))
    return web.json_response({"security_groups": docs})


# handler → the Nova rules it checks (tests/test_policy_services.py reads these tables).
HANDLER_RULES: dict[str, tuple[str, ...]] = {
    "index": ("os_compute_api:os-attach-interfaces:list",),
    "show": ("os_compute_api:os-attach-interfaces:show",),
    "create": ("os_compute_api:os-attach-interfaces:create",),
    "delete": ("os_compute_api:os-attach-interfaces:delete",),
    "security_groups_index": ("os_compute_api:os-security-groups:list",),
}


def add_routes(app: web.Application) -> None:
    r = app.router
    base = "/compute/v2.1/servers/{server_id}"
    r.add_get(base + "/os-interface", index)
    r.add_post(base + "/os-interface", create)
    r.add_get(base + "/os-interface/{port_id}", show)
    r.add_delete(base + "/os-interface/{port_id}", delete)
    r.add_get(base + "/os-security-groups", security_groups_index)
