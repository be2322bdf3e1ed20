"""Server actions on a server's networking: Nova's multinic (addFixedIp/removeFixedIp, gone
from 2.44) and security_groups.py's addSecurityGroup/removeSecurityGroup.

addFixedIp attaches a new port on the network (one fixed IP per port here);
removeFixedIp detaches the port holding the address. The group actions change
the server's groups and all its ports' memberships together (novalite.network).
"""

from __future__ import annotations

import ipaddress

import asyncpg
from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute.common import at_least, authorize
from novalite.api.compute.validation import validate_body

MULTINIC_ACTIONS = ("addFixedIp", "removeFixedIp")
GROUP_ACTIONS = {"addSecurityGroup": "os_compute_api:os-security-groups:add",
                 "removeSecurityGroup": "os_compute_api:os-security-groups:remove"}

ADD_FIXED_IP = {"type": "object", "properties": {"addFixedIp": {
    "type": "object", "properties": {"networkId": {"type": ["string", "number"], "minLength": 1,
                                                   "maxLength": 255}},
    "required": ["networkId"], "additionalProperties": False}},
    "required": ["addFixedIp"], "additionalProperties": False}
REMOVE_FIXED_IP = {"type": "object", "properties": {"removeFixedIp": {
    "type": "object", "properties": {"address": {"type": "string"}},
    "required": ["address"], "additionalProperties": False}},
    "required": ["removeFixedIp"], "additionalProperties": False}


def _target(inst: asyncpg.Record) -> dict:
    return {"project_id": inst["project_id"]}


async def multinic(request: web.Request, inst: asyncpg.Record, name: str, value: object) -> web.Response:
    """addFixedIp {networkId}: a new port on that network; removeFixedIp {address}: the port
    holding it goes (400 when the server has no such address). 404 from 2.44, as in Nova."""
    if at_least(request, 44):
        raise errors.NotFound("The resource could not be found.")
    uuid = str(inst["uuid"])
    attachments = request.app[keys.INTERFACES]
    if name == "addFixedIp":
        validate_body(ADD_FIXED_IP, {name: value})
        ctx = authorize(request, "os_compute_api:os-multinic:add", _target(inst))
        await attachments.attach(ctx, inst, network_id=str(value["networkId"]))
        return web.Response(status=202)
    validate_body(REMOVE_FIXED_IP, {name: value})
    address = value["address"]
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise errors.BadRequest(f"Invalid input for field/attribute address. Value: {address}. "
                                f"{address!r} is not valid under any of the given schemas") from None
    ctx = authorize(request, "os_compute_api:os-multinic:remove", _target(inst))
    ports = await request.app[keys.NETWORK_API].ports_for_instance(uuid)
    port = next((p for p in ports if p.ip == address), None)
    if port is None:
        raise errors.BadRequest(f"Instance {uuid} doesn't have fixed IP '{address}'.")
    await attachments.detach(ctx, inst, port.port_id)
    return web.Response(status=202)


def _group_name(name: str, value: object) -> str:
    """Nova's SecurityGroupActionController._parse."""
    if not isinstance(value, dict):
        raise errors.BadRequest("Missing parameter dict")
    if "name" not in value:
        raise errors.BadRequest("Security group not specified")
    group = value["name"]
    if not group or not isinstance(group, str) or not group.strip():
        raise errors.BadRequest("Security group name cannot be empty")
    return group


async def security_group(request: web.Request, inst: asyncpg.Record, name: str, value: object) -> web.Response:
    """addSecurityGroup/removeSecurityGroup {name}: 202; the group by name or id in the caller's project."""
    ctx = authorize(request, GROUP_ACTIONS[name], _target(inst))
    group = _group_name(name, value)
    network = request.app[keys.NETWORK_API]
    change = network.add_security_group if name == "addSecurityGroup" else network.remove_security_group
    await change(str(inst["uuid"]), ctx.project_id, group)
    return web.Response(status=202)


async def dispatch(request: web.Request, inst: asyncpg.Record, name: str, value: object) -> web.Response | None:
    """Handle one of this module's actions; None when ``name`` is not one of them."""
    if name in MULTINIC_ACTIONS:
        return await multinic(request, inst, name, value)
    if name in GROUP_ACTIONS:
        return await security_group(request, inst, name, value)
    return None
