"""POST /servers/{id}/action for power actions, lock/unlock and os-resetState.

Nova's handlers (servers.py _start/_stop/_reboot, pause_server.py,
suspend_server.py, lock_server.py, admin_actions.py): policy first, then the
compute API, 202 with an empty body; wrong state or a lock → 409.
"""

from __future__ import annotations

import uuid as uuidlib

import asyncpg
from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute.common import at_least, authorize
from novalite.compute.actions import ServerActions
from novalite.compute.api import generate_password

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


async def dispatch(request: web.Request, inst: asyncpg.Record, name: str, value: object) -> web.Response | None:
    """Handle one of this module's actions; None when `name` is not one of them."""
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
