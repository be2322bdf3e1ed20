"""os-server-groups: create, list, show and delete server groups (Nova's server_groups.py).

Microversions: `policies` (a one-item list) until 2.63, `policy` + `rules`
(`max_server_per_host` for anti-affinity) from 2.64; soft policies from 2.15;
`project_id`/`user_id` shown from 2.13; unknown list query parameters are
rejected from 2.75. Quota: `server_groups` per project (403 as Nova says it).
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from novalite import quota
from novalite.api import errors, keys
from novalite.api.compute.common import at_least, authorize, context
from novalite.api.compute.validation import (
    NAME,
    NON_NEGATIVE_INT,
    offset_and_limit,
    validate_body,
    validate_query,
)
from novalite.api.middleware import read_json
from novalite.db import server_groups as db

BASE = "/compute/v2.1/os-server-groups"
HARD_POLICIES = ["anti-affinity", "affinity"]
SOFT_POLICIES = ["soft-anti-affinity", "soft-affinity"]
POSITIVE_INT = {"type": ["integer", "string"], "pattern": "^[0-9]*$", "minimum": 1, "minLength": 1}


def _create_schema(request: web.Request) -> dict:
    if at_least(request, 64):
        group = {
            "type": "object",
            "properties": {
                "name": NAME,
                "policy": {"type": "string", "enum": HARD_POLICIES + SOFT_POLICIES},
                "rules": {
                    "type": "object",
                    "properties": {"max_server_per_host": POSITIVE_INT},
                    "additionalProperties": False,
                },
            },
            "required": ["name", "policy"],
            "additionalProperties": False,
        }
    else:
        group = {
            "type": "object",
            "properties": {"name": NAME, "policies": {"type": "array"}},
            "required": ["name", "policies"],
            "additionalProperties": False,
        }
    return {
        "type": "object",
        "properties": {"server_group": group},
        "required": ["server_group"],
        "additionalProperties": False,
    }


def _check_policies(request: web.Request, policies: list) -> str:
    """The pre-2.64 `policies` list: exactly one known policy (jsonschema's messages)."""
    allowed = HARD_POLICIES + (SOFT_POLICIES if at_least(request, 15) else [])
    if not policies:
        raise errors.BadRequest(f"Invalid input for field/attribute policies. Value: {policies}. [] should be non-empty")
    if len(policies) != len({repr(p) for p in policies}):
        raise errors.BadRequest(
            f"Invalid input for field/attribute policies. Value: {policies}. {policies!r} has non-unique elements"
        )
    first = policies[0]
    if not isinstance(first, str) or first not in allowed:
        raise errors.BadRequest(
            f"Invalid input for field/attribute 0. Value: {first}. {first!r} is not one of {allowed!r}"
        )
    if len(policies) > 1:
        raise errors.BadRequest(
            f"Invalid input for field/attribute policies. Value: {policies}. {policies!r} is too long"
        )
    return first


def group_view(request: web.Request, g: asyncpg.Record) -> dict:
    """Nova's _format_server_group for the request's microversion."""
    doc: dict = {"id": str(g["uuid"]), "name": g["name"]}
    if at_least(request, 64):
        doc["policy"] = g["policy"]
        doc["rules"] = {k: int(v) for k, v in (g["rules"] or {}).items()}
    else:
        doc["policies"] = [g["policy"]]
        doc["metadata"] = {}
    doc["members"] = list(g["members"])
    if at_least(request, 13):
        doc["project_id"] = g["project_id"]
        doc["user_id"] = g["user_id"]
    return doc


def _not_found(group_id: str) -> errors.NotFound:
    return errors.NotFound(f"Instance group {group_id} could not be found.")


async def create(request: web.Request) -> web.Response:
    body = await read_json(request)
    validate_body(_create_schema(request), body)
    vals = body["server_group"]
    ctx = authorize(request, "os_compute_api:os-server-groups:create", {"project_id": context(request).project_id})
    if at_least(request, 64):
        policy = vals["policy"]
        rules = vals.get("rules") or {}
        if policy != "anti-affinity" and rules:
            raise errors.BadRequest("Only anti-affinity policy supports rules.")
        rules = {k: int(v) for k, v in rules.items()}
    else:
        policy = _check_policies(request, vals["policies"])
        rules = {}
    async with request.app[keys.DB].acquire() as conn, conn.transaction():
        await quota.lock_project(conn, ctx.project_id)
        limits = await quota.get_limits(conn, request.app[keys.CONFIG].quota, ctx.project_id)
        limit = limits["server_groups"]
        if limit != quota.UNLIMITED and await db.count(conn, ctx.project_id) + 1 > limit:
            raise errors.QuotaExceeded("Quota exceeded, too many server groups.")
        group = await db.create(conn, ctx.project_id, ctx.user_id, vals["name"], policy, rules)
    return web.json_response({"server_group": group_view(request, group)})


async def index(request: web.Request) -> web.Response:
    ctx = authorize(request, "os_compute_api:os-server-groups:index", {"project_id": context(request).project_id})
    props = {"all_projects": {"type": "string"}, "limit": NON_NEGATIVE_INT, "offset": NON_NEGATIVE_INT}
    validate_query(request, props, strict=at_least(request, 75))
    project_id: str | None = ctx.project_id
    if "all_projects" in request.query and ctx.is_admin:
        authorize(request, "os_compute_api:os-server-groups:index:all_projects", {"project_id": ctx.project_id})
        project_id = None
    offset, limit = offset_and_limit(request)
    async with request.app[keys.DB].acquire() as conn:
        groups = await db.list_groups(conn, project_id, offset, limit)
    return web.json_response({"server_groups": [group_view(request, g) for g in groups]})


async def _load(request: web.Request) -> asyncpg.Record:
    group_id = request.match_info["group_id"]
    async with request.app[keys.DB].acquire() as conn:
        group = await db.get(conn, group_id)
    if group is None:
        raise _not_found(group_id)
    return group


async def show(request: web.Request) -> web.Response:
    group = await _load(request)
    authorize(request, "os_compute_api:os-server-groups:show", {"project_id": group["project_id"]})
    return web.json_response({"server_group": group_view(request, group)})


async def delete(request: web.Request) -> web.Response:
    group = await _load(request)
    authorize(request, "os_compute_api:os-server-groups:delete", {"project_id": group["project_id"]})
    async with request.app[keys.DB].acquire() as conn:
        if not await db.delete(conn, str(group["uuid"])):
            raise _not_found(request.match_info["group_id"])
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post(BASE, create)
    r.add_get(BASE, index)
    r.add_get(BASE + "/{group_id}", show)
    r.add_delete(BASE + "/{group_id}", delete)
