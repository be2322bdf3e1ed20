"""POST /servers/{id}/action for power actions, lock/unlock and os-resetState (migrate and evacuate
in move_actions, interface/network ones in network_actions).

Nova's handlers (servers.py _start/_stop/_reboot, pause_server.py,
suspend_server.py, lock_server.py, admin_actions.py): policy first, then the
compute API, 202 with an empty body; wrong state or a lock → 409.
"""

from __future__ import annotations

import uuid as uuidlib

import asyncpg
from aiohttp import web

from novalite import quota
from novalite.api import errors, keys
from novalite.api.compute import move_actions, network_actions, schemas
from novalite.api.compute.common import at_least, authorize, compute_url
from novalite.api.compute.validation import BOOLEAN, NAME, to_bool, validate_body
from novalite.compute.actions import ServerActions
from novalite.compute.api import generate_password
from novalite.compute.image_actions import ImageRequest, is_volume_backed
from novalite.compute.shelve import UNSET

# action name → (policy rule, compute kind, target includes user_id)
POWER_ACTIONS: dict[str, tuple[str, str, bool]] = {
    "os-stop": ("os_compute_api:servers:stop", "stop", True),
    "os-start": ("os_compute_api:servers:start", "start", True),
    "pause": ("os_compute_api:os-pause-server:pause", "pause", True),
    "unpause": ("os_compute_api:os-pause-server:unpause", "unpause", True),
    "suspend": ("os_compute_api:os-suspend-server:suspend", "suspend", False),
    "resume": ("os_compute_api:os-suspend-server:resume", "resume", False),
}
REBOOT_TYPES = ("HARD", "Hard", "hard", "SOFT", "Soft", "soft")


def server_actions(request: web.Request) -> ServerActions:
    return request.app[keys.SERVER_ACTIONS]


def _target(inst: asyncpg.Record, with_user: bool = True) -> dict:
    target = {"project_id": inst["project_id"]}
    if with_user:
        target["user_id"] = inst["user_id"]
    return target


def _accepted() -> web.Response:
    return web.Response(status=202)


async def create_image(request: web.Request, inst: asyncpg.Record, name: str, value: object) -> web.Response:
    """createImage (Nova's servers.py _create_image) and createBackup (create_backup.py): 202, the
    image's id in the body from 2.45, before that in a Location header (a backup's only if rotation > 0)."""
    model = schemas.parse_image_action(name, value)
    target = {"project_id": inst["project_id"]}
    backup = isinstance(model, schemas.CreateBackup)
    ctx = authorize(request, "os_compute_api:os-create-backup" if backup else "os_compute_api:servers:create_image",
                    target)
    metadata = dict(model.metadata)
    async with request.app[keys.DB].acquire() as conn:
        if metadata and not at_least(request, 39):  # from 2.39 Nova no longer checks a quota here
            limit = (await quota.get_limits(conn, request.app[keys.CONFIG].quota, ctx.project_id))["metadata_items"]
            if 0 <= limit < len(metadata):
                raise errors.Forbidden("Image metadata limit exceeded")
        if not backup and await is_volume_backed(conn, inst):
            authorize(request, "os_compute_api:servers:create_image:allow_volume_backed", target)
    req = ImageRequest(name=model.name, metadata=metadata)
    if isinstance(model, schemas.CreateBackup):
        req.backup_type, req.rotation = model.backup_type, int(model.rotation)
    image = await server_actions(request).create_image(ctx, inst, req)
    image_id = str(image["id"])
    if at_least(request, 45):
        return web.json_response({"image_id": image_id}, status=202)
    response = web.Response(status=202)
    if not backup:
        response.headers["Location"] = f"{request.app[keys.CONFIG].public_url}/image/images/{image_id}"
    elif req.rotation:
        response.headers["Location"] = f"{compute_url(request)}/v2.1/images/{image_id}"
    return response


def _parse_resize(value: object) -> tuple[str, bool | None]:
    """Nova's resize body: ``flavorRef`` (string or integer, not empty) and ``OS-DCF:diskConfig``."""
    if not isinstance(value, dict):
        raise errors.BadRequest(f"Invalid input for field/attribute resize. Value: {value}. "
                                f"{value!r} is not of type 'object'")
    extra = sorted(set(value) - {"flavorRef", "OS-DCF:diskConfig"})
    if extra:
        raise errors.BadRequest("Invalid input for field/attribute resize. Additional properties are not allowed "
                                f"({', '.join(repr(k) for k in extra)} {'was' if len(extra) == 1 else 'were'} "
                                "unexpected)")
    if "flavorRef" not in value:
        raise errors.BadRequest("Invalid input for field/attribute resize. Value: "
                                f"{value}. 'flavorRef' is a required property")
    ref = value["flavorRef"]
    if isinstance(ref, bool) or not isinstance(ref, (str, int)):
        raise errors.BadRequest(f"Invalid input for field/attribute flavorRef. Value: {ref}. "
                                f"{ref!r} is not of type 'string', 'integer'")
    if isinstance(ref, str) and not ref:
        raise errors.BadRequest("Invalid input for field/attribute flavorRef. Value: . '' is too short")
    disk_config = value.get("OS-DCF:diskConfig")
    if disk_config is not None and disk_config not in ("AUTO", "MANUAL"):
        raise errors.BadRequest(f"Invalid input for field/attribute OS-DCF:diskConfig. Value: {disk_config}. "
                                f"{disk_config!r} is not one of ['AUTO', 'MANUAL']")
    return str(ref), (None if disk_config is None else disk_config == "AUTO")


MIGRATE_LIVE = "os_compute_api:os-migrate-server:migrate_live"
HOST = {"type": ["string", "null"], "minLength": 1, "maxLength": 255}


def migrate_live_schema(request: web.Request) -> dict:
    """Nova's os-migrateLive body for the request's microversion (2.1, 2.25, 2.30, 2.68)."""
    props: dict = {"host": HOST}
    required = ["block_migration", "host"]
    if at_least(request, 25):
        props["block_migration"] = {"type": ["boolean", "string"], "enum": ["auto", *BOOLEAN["enum"]]}
    else:
        props["block_migration"] = BOOLEAN
        props["disk_over_commit"] = BOOLEAN
        required.append("disk_over_commit")
    if at_least(request, 30) and not at_least(request, 68):
        props["force"] = BOOLEAN
    return {"type": "object", "properties": {"os-migrateLive": {
        "type": "object", "properties": props, "required": required, "additionalProperties": False}},
        "required": ["os-migrateLive"], "additionalProperties": False}


async def migrate_live(request: web.Request, inst: asyncpg.Record, value: object) -> web.Response:
    """os-migrateLive: 202; 400 for a bad body, an unknown host, a force without a host, or (before
    2.34, when Nova answered synchronously) the instance's own host; 409 for a locked or busy server."""
    validate_body(migrate_live_schema(request), {"os-migrateLive": value})
    assert isinstance(value, dict)
    host = value["host"]
    target = {"project_id": inst["project_id"]}
    ctx = authorize(request, f"{MIGRATE_LIVE}:host" if host else MIGRATE_LIVE, target)
    force = at_least(request, 30) and not at_least(request, 68) and to_bool(value.get("force", False))
    if force and not host:
        raise errors.BadRequest("Can't force to a non-provided destination")
    if host and host == inst["host"] and not at_least(request, 34):
        raise errors.BadRequest(f"Unable to migrate instance ({inst['uuid']}) to current host ({host}).")
    await server_actions(request).live_migrate(ctx, inst, host, force)
    return web.Response(status=202)


# Nova's unshelve body schemas (api/openstack/compute/schemas/shelve.py): before 2.77 any value.
UNSHELVE_V277 = {"type": "object", "properties": {"unshelve": {
    "type": ["object", "null"], "properties": {"availability_zone": NAME},
    "required": ["availability_zone"], "additionalProperties": False}},
    "required": ["unshelve"], "additionalProperties": False}
UNSHELVE_V291 = {"type": "object", "properties": {"unshelve": {
    "type": ["object", "null"], "properties": {"availability_zone": {"type": ["string", "null"]},
                                               "host": {"type": "string"}},
    "additionalProperties": False}},
    "required": ["unshelve"], "additionalProperties": False}


async def shelve_action(request: web.Request, inst: asyncpg.Record, name: str, value: object) -> web.Response:
    """Nova's shelve.py: shelve, shelveOffload and unshelve (2.77 a zone, 2.91 a host or null to unpin)."""
    actions = server_actions(request)
    if name == "shelve":
        ctx = authorize(request, "os_compute_api:os-shelve:shelve", _target(inst))
        await actions.shelve(ctx, inst)
    elif name == "shelveOffload":
        ctx = authorize(request, "os_compute_api:os-shelve:shelve_offload", _target(inst))
        await actions.shelve_offload(ctx, inst)
    else:
        if at_least(request, 91):
            validate_body(UNSHELVE_V291, {"unshelve": value})
        elif at_least(request, 77):
            validate_body(UNSHELVE_V277, {"unshelve": value})
        ctx = authorize(request, "os_compute_api:os-shelve:unshelve", _target(inst, False))
        new_az, host = UNSET, None
        if isinstance(value, dict) and value:
            if at_least(request, 77) and "availability_zone" in value:
                new_az = value["availability_zone"]
            if at_least(request, 91):
                host = value.get("host")

        def authorize_host() -> None:
            authorize(request, "os_compute_api:os-shelve:unshelve_to_host", _target(inst))

        await actions.unshelve(ctx, inst, new_az, host, authorize_host)
    return _accepted()


async def dispatch(request: web.Request, inst: asyncpg.Record, name: str, value: object) -> web.Response | None:
    """Handle one of this module's actions (or network_actions'); None when `name` is not one of them."""
    for module in (network_actions, move_actions):
        response = await module.dispatch(request, inst, name, value)
        if response is not None:
            return response
    if name in ("shelve", "shelveOffload", "unshelve"):
        return await shelve_action(request, inst, name, value)
    if name == "os-migrateLive":
        return await migrate_live(request, inst, value)
    if name in ("createImage", "createBackup"):
        return await create_image(request, inst, name, value)
    if name in POWER_ACTIONS:
        rule, kind, with_user = POWER_ACTIONS[name]
        ctx = authorize(request, rule, _target(inst, with_user))
        await server_actions(request).power_action(ctx, inst, kind)
        return _accepted()
    if name == "reboot":
        if not isinstance(value, dict) or set(value) != {"type"}:
            raise errors.BadRequest("Invalid input for field/attribute reboot. 'type' is a required property")
        if value["type"] not in REBOOT_TYPES:
            raise errors.BadRequest(
                f"Invalid input for field/attribute type. Value: {value['type']}. "
                f"'{value['type']}' is not one of {list(REBOOT_TYPES)}"
            )
        ctx = authorize(request, "os_compute_api:servers:reboot", _target(inst, False))
        kind = "reboot_hard" if value["type"].upper() == "HARD" else "reboot_soft"
        await server_actions(request).power_action(ctx, inst, kind)
        return _accepted()
    if name == "lock":
        reason = None
        if at_least(request, 73) and value is not None:
            if not isinstance(value, dict) or set(value) - {"locked_reason"}:
                raise errors.BadRequest("Invalid input for field/attribute lock. Additional properties are not allowed")
            reason = value.get("locked_reason")
            if reason is not None and (not isinstance(reason, str) or len(reason) > 255):
                raise errors.BadRequest("Invalid input for field/attribute locked_reason.")
        ctx = authorize(request, "os_compute_api:os-lock-server:lock", _target(inst))
        await server_actions(request).lock(ctx, inst, reason)
        return _accepted()
    if name == "unlock":
        ctx = authorize(request, "os_compute_api:os-lock-server:unlock", _target(inst, False))
        if not ServerActions.is_expected_locked_by(ctx, inst):
            authorize(request, "os_compute_api:os-lock-server:unlock:unlock_override", _target(inst, False))
        await server_actions(request).unlock(ctx, inst)
        return _accepted()
    if name == "resize":
        flavor_id, auto_disk_config = _parse_resize(value)
        ctx = authorize(request, "os_compute_api:servers:resize", _target(inst))
        await server_actions(request).resize(ctx, inst, flavor_id, auto_disk_config)
        return _accepted()
    if name == "confirmResize":
        ctx = authorize(request, "os_compute_api:servers:confirm_resize", _target(inst, False))
        await server_actions(request).confirm_resize(ctx, inst)
        return web.Response(status=204)
    if name == "revertResize":
        ctx = authorize(request, "os_compute_api:servers:revert_resize", _target(inst, False))
        await server_actions(request).revert_resize(ctx, inst)
        return _accepted()
    if name == "rescue":
        return await rescue(request, inst, value)
    if name == "unrescue":
        ctx = authorize(request, "os_compute_api:os-unrescue", _target(inst, False))
        await server_actions(request).unrescue(ctx, inst)
        return _accepted()
    if name == "os-resetState":
        ctx = authorize(request, "os_compute_api:os-admin-actions:reset_state", _target(inst, False))
        state = value.get("state") if isinstance(value, dict) else None
        if state not in ("active", "error"):
            raise errors.BadRequest(
                f"Invalid input for field/attribute state. Value: {state}. '{state}' is not one of "
                "['active', 'error']"
            )
        await server_actions(request).reset_state(ctx, inst, state)
        return _accepted()
    return None


async def rescue(request: web.Request, inst: asyncpg.Record, value: object) -> web.Response:
    """Nova's rescue.py _rescue: 200 with the rescue password (when enable_instance_password), else {}."""
    if value is not None and not isinstance(value, dict):
        raise errors.BadRequest(f"Invalid input for field/attribute rescue. Value: {value}. "
                                f"{value!r} is not of type 'object', 'null'")
    body = value or {}
    extra = sorted(set(body) - {"adminPass", "rescue_image_ref"})
    if extra:
        raise errors.BadRequest(f"Additional properties are not allowed ('{extra[0]}' was unexpected)")
    password = body.get("adminPass")
    if "adminPass" in body and not isinstance(password, str):
        raise errors.BadRequest(f"Invalid input for field/attribute adminPass. Value: {password}. "
                                f"{password!r} is not of type 'string'")
    image_ref = body.get("rescue_image_ref")
    if "rescue_image_ref" in body:
        if not isinstance(image_ref, str):
            raise errors.BadRequest(f"Invalid input for field/attribute rescue_image_ref. Value: {image_ref}. "
                                    f"{image_ref!r} is not of type 'string'")
        try:
            uuidlib.UUID(image_ref)
        except ValueError:
            raise errors.BadRequest(f"Invalid input for field/attribute rescue_image_ref. Value: {image_ref}. "
                                    f"'{image_ref}' is not a 'uuid'") from None
    if password is None:
        password = generate_password()
    ctx = authorize(request, "os_compute_api:os-rescue", _target(inst))
    await server_actions(request).rescue(ctx, inst, password, image_ref, at_least(request, 87))
    if request.app[keys.CONFIG].api.enable_instance_password:
        return web.json_response({"adminPass": password})
    return web.json_response({})
