"""Nova's os-volume_attachments on servers: list, show, attach, detach.

The body follows the microversion like Nova's view: ``tag`` from 2.70,
``delete_on_termination`` from 2.79 (also accepted in the attach body), and
``attachment_id`` + ``bdm_uuid`` instead of ``id`` from 2.89. Attach answers at
once with the reserved device; the volume is plugged in the background (Nova
casts to the compute host), so it goes reserved → attaching → in-use.
Swapping volumes (PUT with another volumeId) is not supported; a PUT may only
change ``delete_on_termination`` (2.85+).
"""

from __future__ import annotations

import uuid as uuidlib

import asyncpg
from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute.common import at_least, authorize
from novalite.api.compute.servers import load_instance
from novalite.api.middleware import read_json
from novalite.api.pagination import max_limit, page_limit
from novalite.compute import states
from novalite.compute.actions import InstanceInvalidState, check_instance_lock
from novalite.compute.api import ROOT_DEVICE_RE
from novalite.db import volumes as q

# vm_states Nova allows attach/detach in (compute/api.py check_instance_state).
ATTACH_STATES = (states.ACTIVE, states.PAUSED, states.STOPPED, states.SUSPENDED)


def _target(inst: asyncpg.Record) -> dict:
    return {"project_id": inst["project_id"], "user_id": inst["user_id"]}


def attachment_view(request: web.Request, bdm: asyncpg.Record, *, create: bool = False) -> dict:
    d: dict = {}
    if not at_least(request, 89):
        d["id"] = bdm["volume_id"]
    d["volumeId"] = bdm["volume_id"]
    d["serverId"] = str(bdm["instance_uuid"])
    if bdm["device_name"] or create:
        d["device"] = bdm["device_name"]
    if at_least(request, 70):
        d["tag"] = bdm["tag"]
    if at_least(request, 79):
        d["delete_on_termination"] = bool(bdm["delete_on_termination"])
    if at_least(request, 89):
        d["attachment_id"] = str(bdm["attachment_id"]) if bdm["attachment_id"] else None
        d["bdm_uuid"] = str(bdm["uuid"])
    return d


async def _volume_bdms(request: web.Request, uuid: str) -> list[asyncpg.Record]:
    async with request.app[keys.DB].acquire() as conn:
        return await conn.fetch(
            """SELECT * FROM block_device_mappings WHERE instance_uuid = $1 AND NOT deleted
               AND volume_id IS NOT NULL ORDER BY boot_index NULLS LAST, id""",
            uuidlib.UUID(uuid),
        )


def _check_state(inst: asyncpg.Record, action: str) -> None:
    if inst["vm_state"] not in ATTACH_STATES:
        raise InstanceInvalidState(action, str(inst["uuid"]), "vm_state", inst["vm_state"])
    if inst["task_state"] is not None:
        raise InstanceInvalidState(action, str(inst["uuid"]), "task_state", inst["task_state"])


async def index(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    authorize(request, "os_compute_api:os-volumes-attachments:index", _target(inst))
    bdms = await _volume_bdms(request, str(inst["uuid"]))
    items = [attachment_view(request, b) for b in bdms]
    offset = request.query.get("offset")
    try:
        start = int(offset) if offset else 0
    except ValueError:
        raise errors.BadRequest("offset param must be an integer") from None
    if start < 0:
        raise errors.BadRequest("offset param must be positive")
    items = items[start:start + (page_limit(request) or max_limit(request))]  # Nova's limited: 0 is max_limit
    return web.json_response({"volumeAttachments": items})


async def _find(request: web.Request, inst: asyncpg.Record, volume_id: str) -> asyncpg.Record:
    for b in await _volume_bdms(request, str(inst["uuid"])):
        if b["volume_id"] == volume_id:
            return b
    raise errors.NotFound(f"Instance {inst['uuid']} is not attached to volume {volume_id}.")


async def show(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    authorize(request, "os_compute_api:os-volumes-attachments:show", _target(inst))
    bdm = await _find(request, inst, request.match_info["volume_id"])
    return web.json_response({"volumeAttachment": attachment_view(request, bdm)})


async def create(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    ctx = authorize(request, "os_compute_api:os-volumes-attachments:create", _target(inst))
    body = await read_json(request)
    att = body.get("volumeAttachment")
    if not isinstance(att, dict) or "volumeId" not in att:
        raise errors.BadRequest("Invalid input for field/attribute volumeAttachment. 'volumeId' is a required property")
    allowed = {"volumeId", "device"}
    if at_least(request, 49):
        allowed.add("tag")
    if at_least(request, 79):
        allowed.add("delete_on_termination")
    extra = set(att) - allowed
    if extra:
        raise errors.BadRequest(
            f"Invalid input for field/attribute volumeAttachment. Additional properties are not allowed "
            f"({', '.join(repr(e) for e in sorted(extra))} {'was' if len(extra) == 1 else 'were'} unexpected)"
        )
    volume_id = str(att["volumeId"])
    try:
        uuidlib.UUID(volume_id)
    except ValueError:
        raise errors.BadRequest(
            f"Invalid input for field/attribute volumeId. Value: {volume_id}. '{volume_id}' is not a 'uuid'"
        ) from None
    device = att.get("device")
    if device is not None and (not isinstance(device, str) or not ROOT_DEVICE_RE.match(device)):
        raise errors.BadRequest(f"The supplied device path ({device}) is invalid.")
    dot = att.get("delete_on_termination", False)
    if not isinstance(dot, bool):
        raise errors.BadRequest("Invalid input for field/attribute delete_on_termination.")
    check_instance_lock(ctx, inst)
    _check_state(inst, "attach_volume")
    bdm = await request.app[keys.VOLUME_ATTACHMENTS].attach(ctx, inst, volume_id, device or None, dot, att.get("tag"))
    return web.json_response({"volumeAttachment": attachment_view(request, bdm, create=True)})


def _update_body(att: object, version_85: bool) -> dict:
    """Nova's update schema: an object with a uuid volumeId; from 2.85 also the attachment's
    other fields (only delete_on_termination may change)."""
    if not isinstance(att, dict) or "volumeId" not in att:
        raise errors.BadRequest("Invalid input for field/attribute volumeAttachment. 'volumeId' is a required property")
    allowed = {"volumeId"} | ({"device", "id", "serverId", "tag", "delete_on_termination"} if version_85 else set())
    extra = set(att) - allowed
    if extra:
        raise errors.BadRequest(
            f"Invalid input for field/attribute volumeAttachment. Additional properties are not allowed "
            f"({', '.join(repr(e) for e in sorted(extra))} {'was' if len(extra) == 1 else 'were'} unexpected)"
        )
    volume_id = att["volumeId"]
    try:
        uuidlib.UUID(volume_id if isinstance(volume_id, str) else "")
    except ValueError:
        raise errors.BadRequest(
            f"Invalid input for field/attribute volumeId. Value: {volume_id}. '{volume_id}' is not a 'uuid'"
        ) from None
    if "delete_on_termination" in att and not isinstance(att["delete_on_termination"], bool):
        raise errors.BadRequest("Invalid input for field/attribute delete_on_termination.")
    return att


async def update(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    volume_id = request.match_info["volume_id"]
    body = await read_json(request)
    att = _update_body(body.get("volumeAttachment"), at_least(request, 85))
    if att["volumeId"] != volume_id:
        authorize(request, "os_compute_api:os-volumes-attachments:swap", _target(inst))
        # Nova's raise_feature_not_supported: a 400, not a 501.
        raise errors.BadRequest("The requested functionality is not supported: novalite does not swap volumes.")
    ctx = authorize(request, "os_compute_api:os-volumes-attachments:update", _target(inst))
    if not at_least(request, 85):
        raise errors.BadRequest("Only swapping volumes is supported below microversion 2.85.")
    check_instance_lock(ctx, inst)
    bdm = await _find(request, inst, volume_id)
    if "delete_on_termination" in att:
        async with request.app[keys.DB].acquire() as conn:
            await q.set_bdm(conn, bdm["id"], delete_on_termination=att["delete_on_termination"])
    return web.Response(status=202)


async def delete(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    ctx = authorize(request, "os_compute_api:os-volumes-attachments:delete", _target(inst))
    volume_id = request.match_info["volume_id"]
    check_instance_lock(ctx, inst)
    _check_state(inst, "detach_volume")
    await _find(request, inst, volume_id)
    await request.app[keys.VOLUME_ATTACHMENTS].detach(ctx, inst, volume_id)
    return web.Response(status=202)


def add_routes(app: web.Application) -> None:
    r = app.router
    base = "/compute/v2.1/servers/{server_id}/os-volume_attachments"
    r.add_get(base, index)
    r.add_post(base, create)
    r.add_get(base + "/{volume_id}", show)
    r.add_put(base + "/{volume_id}", update)
    r.add_delete(base + "/{volume_id}", delete)
