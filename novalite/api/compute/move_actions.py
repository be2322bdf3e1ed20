"""POST /servers/{id}/action for cold migration (``migrate``) and ``evacuate``.

Nova's migrate_server.py ``_migrate`` (a host from 2.56, its own policy rule) and evacuate.py
(``onSharedStorage`` until 2.14, ``force`` from 2.29 to 2.67, the evacuated server stopped from
2.95). Bodies are checked against Nova's schemas; the work is the compute API's
(:meth:`ServerActions.migrate`, :meth:`ServerActions.evacuate`).
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute.common import at_least, authorize
from novalite.api.compute.validation import BOOLEAN, to_bool, validate_body
from novalite.compute.actions import ServerActions
from novalite.compute.api import generate_password

FQDN = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[a-zA-Z0-9-._]*$"}
MIGRATE_V256 = {"type": "object", "properties": {"migrate": {
    "type": ["object", "null"], "properties": {"host": {**FQDN, "type": ["string", "null"]}},
    "additionalProperties": False}}, "required": ["migrate"], "additionalProperties": False}


def _evacuate_schema(request: web.Request) -> dict:
    """Nova's evacuate schema of the request's microversion."""
    props: dict = {"host": FQDN, "adminPass": {"type": "string"}}
    required: list[str] = []
    if not at_least(request, 14):
        props["onSharedStorage"] = BOOLEAN
        required = ["onSharedStorage"]
    elif at_least(request, 29) and not at_least(request, 68):
        props["force"] = BOOLEAN
    body = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        body["required"] = required
    return {"type": "object", "properties": {"evacuate": body}, "required": ["evacuate"],
            "additionalProperties": False}


def _actions(request: web.Request) -> ServerActions:
    return request.app[keys.SERVER_ACTIONS]


async def migrate(request: web.Request, inst: asyncpg.Record, value: object) -> web.Response:
    """Cold migration: 202; ``migrate:host`` is the rule when a host is named (2.56+)."""
    host = None
    if at_least(request, 56):
        validate_body(MIGRATE_V256, {"migrate": value})
        host = (value or {}).get("host") if isinstance(value, dict) else None
    rule = "os_compute_api:os-migrate-server:migrate" + (":host" if host else "")
    ctx = authorize(request, rule, {"project_id": inst["project_id"]})
    await _actions(request).migrate(ctx, inst, host)
    return web.Response(status=202)


async def evacuate(request: web.Request, inst: asyncpg.Record, value: object) -> web.Response:
    """Evacuate (admin): 200; the admin password in the body only before 2.14 and when
    ``[api] enable_instance_password`` is on, as Nova answers."""
    validate_body(_evacuate_schema(request), {"evacuate": value})
    body = dict(value)  # type: ignore[call-overload]
    ctx = authorize(request, "os_compute_api:os-evacuate",
                    {"user_id": inst["user_id"], "project_id": inst["project_id"]})
    host = body.get("host")
    force = at_least(request, 29) and to_bool(body.get("force", False))
    if force and not host:
        raise errors.BadRequest("Can't force to a non-provided destination")
    shared = to_bool(body["onSharedStorage"]) if "onSharedStorage" in body else False
    if shared:
        # novalite's hosts never share instance storage: the disks on a down host are out of reach.
        raise errors.BadRequest("onSharedStorage is not supported: novalite's hosts share no instance storage")
    password = body.get("adminPass")
    if password is None and not at_least(request, 14):
        password = generate_password()
    await _actions(request).evacuate(ctx, inst, host, password, stop=at_least(request, 95), force=force)
    if not at_least(request, 14) and request.app[keys.CONFIG].api.enable_instance_password:
        return web.json_response({"adminPass": password})
    return web.Response(status=200)


async def dispatch(request: web.Request, inst: asyncpg.Record, name: str, value: object) -> web.Response | None:
    """Handle ``migrate`` or ``evacuate``; None for any other action."""
    if name == "migrate":
        return await migrate(request, inst, value)
    if name == "evacuate":
        return await evacuate(request, inst, value)
    return None
