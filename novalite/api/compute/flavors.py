"""Flavors, flavor extra specs and flavor access, as Nova's API serves them."""

from __future__ import annotations

import uuid

from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute import common
from novalite.api.compute.validation import (
    BOOLEAN,
    MAX_INT,
    NAME,
    PAGINATION,
    limit_and_marker,
    next_links,
    to_bool,
    validate_body,
    validate_query,
)
from novalite.api.middleware import read_json
from novalite.api.pagination import capped
from novalite.db import catalog

# Flavor views -----------------------------------------------------------------

_FLAVOR_ID = {
    "type": ["string", "number", "null"],
    "minLength": 1,
    "maxLength": 255,
    "pattern": "^(?! )[a-zA-Z0-9. _-]+(?<! )$",
}
_FLAVOR_POSITIVE = {"type": ["integer", "string"], "pattern": "^[0-9]+$", "minimum": 1, "maximum": MAX_INT}
_FLAVOR_NON_NEGATIVE = dict(_FLAVOR_POSITIVE, minimum=0)
_DESCRIPTION = {"type": ["string", "null"], "minLength": 0, "maxLength": 65535}
_VALID_SORT_KEYS = [
    "created_at", "description", "disabled", "ephemeral_gb", "flavorid", "id",
    "is_public", "memory_mb", "name", "root_gb", "rxtx_factor", "swap",
    "updated_at", "vcpu_weight", "vcpus",
]


def _create_schema(request: web.Request) -> dict:
    props: dict = {
        "name": NAME,
        "id": _FLAVOR_ID,
        "ram": _FLAVOR_POSITIVE,
        "vcpus": _FLAVOR_POSITIVE,
        "disk": _FLAVOR_NON_NEGATIVE,
        "OS-FLV-EXT-DATA:ephemeral": _FLAVOR_NON_NEGATIVE,
        "swap": _FLAVOR_NON_NEGATIVE,
        "rxtx_factor": {
            "type": ["number", "string"],
            "pattern": r"^[0-9]+(\.[0-9]+)?$",
            "exclusiveMinimum": 0,
            "maximum": 3.40282e38,
        },
        "os-flavor-access:is_public": BOOLEAN,
    }
    if common.at_least(request, 55):
        props["description"] = _DESCRIPTION
    return {
        "type": "object",
        "properties": {
            "flavor": {
                "type": "object",
                "properties": props,
                "required": ["name", "ram", "vcpus", "disk"],
                "additionalProperties": False,
            }
        },
        "required": ["flavor"],
        "additionalProperties": False,
    }


def _can(request: web.Request, rule: str, target: dict | None = None) -> bool:
    ctx = common.context(request)
    if target is None:
        target = {"project_id": ctx.project_id, "user_id": ctx.user_id}
    return request.app[keys.POLICY].check(rule, ctx.creds(), target)


def _include_extra_specs(request: web.Request) -> bool:
    ctx = common.context(request)
    return common.at_least(request, 61) and _can(
        request, "os_compute_api:os-flavor-extra-specs:index", {"project_id": ctx.project_id}
    )


def flavor_brief(request: web.Request, f: dict) -> dict:
    body = {"id": f["flavorid"], "name": f["name"], "links": common.links(request, "flavors", f["flavorid"])}
    if common.at_least(request, 55):
        body["description"] = f["description"]
    return body


def flavor_view(request: web.Request, f: dict, extra_specs: bool = False) -> dict:
    """The full flavor document at the request's microversion."""
    body = {
        "id": f["flavorid"],
        "name": f["name"],
        "ram": f["memory_mb"],
        "disk": f["root_gb"],
        "swap": (f["swap"] or 0) if common.at_least(request, 75) else (f["swap"] or ""),
        "OS-FLV-EXT-DATA:ephemeral": f["ephemeral_gb"],
        "OS-FLV-DISABLED:disabled": f["disabled"],
        "vcpus": f["vcpus"],
        "os-flavor-access:is_public": f["is_public"],
        "rxtx_factor": f["rxtx_factor"] or "",
        "links": common.links(request, "flavors", f["flavorid"]),
    }
    if common.at_least(request, 55):
        body["description"] = f["description"]
    if extra_specs:
        body["extra_specs"] = {k: str(v) for k, v in (f["extra_specs"] or {}).items()}
    return body


def _not_found(flavorid: str) -> errors.NotFound:
    return errors.NotFound(f"Flavor {flavorid} could not be found.")


async def _visible_flavor(request: web.Request, flavorid: str) -> dict:
    ctx = common.context(request)
    async with request.app[keys.DB].acquire() as conn:
        flavor = await catalog.get_flavor(conn, flavorid, project_id=ctx.project_id, is_admin=ctx.is_admin)
    if flavor is None:
        raise _not_found(flavorid)
    return flavor


def _sort_value(row: dict, key: str) -> tuple:
    value = row[catalog.FLAVOR_SORT_COLUMNS[key]]
    return (0,) if value is None else (1, value)


async def _flavor_page(request: web.Request) -> list[dict]:
    """Nova's FlavorsController._get_flavors: filters, sorting and paging."""
    validate_query(
        request,
        {
            **PAGINATION,
            "is_public": {"type": "string"},
            "minRam": {"type": "string"},
            "minDisk": {"type": "string"},
            "sort_key": {"type": "string", "enum": _VALID_SORT_KEYS},
            "sort_dir": {"type": "string", "enum": ["asc", "desc"]},
        },
        strict=common.at_least(request, 75),
    )
    ctx = common.context(request)
    q = request.query
    sort_key = q.get("sort_key") or "flavorid"
    sort_dir = q.get("sort_dir") or "asc"
    limit, marker = limit_and_marker(request)
    is_public: bool | None = True
    if ctx.is_admin and "is_public" in q:
        raw = q["is_public"]
        if raw.strip().lower() == "none":
            is_public = None
        else:
            try:
                is_public = to_bool(raw)
            except ValueError:
                raise errors.BadRequest(f"Invalid is_public filter [{raw}]") from None
    mins: dict[str, int | None] = {"minRam": None, "minDisk": None}
    for name in mins:
        if name in q:
            try:
                mins[name] = int(q[name])
            except ValueError:
                raise errors.BadRequest(f"Invalid {name} filter [{q[name]}]") from None
    async with request.app[keys.DB].acquire() as conn:
        rows = await catalog.list_flavors(
            conn,
            project_id=ctx.project_id,
            is_admin=ctx.is_admin,
            is_public=is_public,
            min_ram=mins["minRam"],
            min_disk=mins["minDisk"],
            only_enabled=not ctx.is_admin,
        )
        marker_row = None
        if marker is not None:
            marker_row = await catalog.get_flavor(
                conn, marker, project_id=ctx.project_id, is_admin=ctx.is_admin
            )
            if marker_row is None:
                raise errors.BadRequest(f"marker [{marker}] not found")

    def order(row: dict) -> tuple:
        return (_sort_value(row, sort_key), row["created_at"], row["flavorid"])

    rows.sort(key=order, reverse=sort_dir == "desc")
    if marker_row is not None:
        pivot = order(marker_row)
        rows = [r for r in rows if (order(r) > pivot if sort_dir == "asc" else order(r) < pivot)]
    return rows[:limit]


# Flavor handlers --------------------------------------------------------------


async def list_flavors(request: web.Request) -> web.Response:
    """GET /flavors."""
    rows = await _flavor_page(request)
    body: dict = {"flavors": [flavor_brief(request, r) for r in rows]}
    more = next_links(request, rows, "flavors", "flavorid")
    if more:
        body["flavors_links"] = more
    return web.json_response(body)


async def list_flavors_detail(request: web.Request) -> web.Response:
    """GET /flavors/detail."""
    rows = await _flavor_page(request)
    specs = _include_extra_specs(request)
    body: dict = {"flavors": [flavor_view(request, r, specs) for r in rows]}
    more = next_links(request, rows, "flavors/detail", "flavorid")
    if more:
        body["flavors_links"] = more
    return web.json_response(body)


async def show_flavor(request: web.Request) -> web.Response:
    """GET /flavors/{flavor_id}."""
    common.context(request)
    flavor = await _visible_flavor(request, request.match_info["flavor_id"])
    return web.json_response({"flavor": flavor_view(request, flavor, _include_extra_specs(request))})


async def create_flavor(request: web.Request) -> web.Response:
    """POST /flavors (admin)."""
    body = await read_json(request)
    validate_body(_create_schema(request), body)
    common.authorize(request, "os_compute_api:os-flavor-manage:create", {})
    vals = body["flavor"]
    flavorid = vals.get("id")
    if flavorid is None or flavorid == "":
        flavorid = str(uuid.uuid4())
    elif isinstance(flavorid, float) and flavorid.is_integer():
        flavorid = str(flavorid)
    try:
        rxtx = float(vals.get("rxtx_factor", 1.0))
        if rxtx <= 0 or rxtx > 3.40282e38:
            raise ValueError(rxtx)
    except ValueError:
        raise errors.BadRequest("Invalid input received: 'rxtx_factor' argument must be a float between 0 and 3.40282e+38") from None
    values = {
        "flavorid": str(flavorid),
        "name": vals["name"].strip(),
        "memory_mb": int(vals["ram"]),
        "vcpus": int(vals["vcpus"]),
        "root_gb": int(vals["disk"]),
        "ephemeral_gb": int(vals.get("OS-FLV-EXT-DATA:ephemeral", 0)),
        "swap": int(vals.get("swap", 0)),
        "rxtx_factor": rxtx,
        "is_public": to_bool(vals.get("os-flavor-access:is_public", True)),
        "description": vals.get("description") if common.at_least(request, 55) else None,
    }
    async with request.app[keys.DB].acquire() as conn:
        try:
            flavor = await catalog.create_flavor(conn, values)
        except catalog.FlavorConflict as exc:
            if exc.field == "name":
                raise errors.Conflict(f"Flavor with name {values['name']} already exists.") from None
            raise errors.Conflict(f"Flavor with ID {values['flavorid']} already exists.") from None
    return web.json_response({"flavor": flavor_view(request, flavor, _include_extra_specs(request))})


async def update_flavor(request: web.Request) -> web.Response:
    """PUT /flavors/{flavor_id} (2.55+, description only)."""
    if not common.at_least(request, 55):
        raise errors.NotFound("The resource could not be found.")
    body = await read_json(request)
    validate_body(
        {
            "type": "object",
            "properties": {
                "flavor": {
                    "type": "object",
                    "properties": {"description": _DESCRIPTION},
                    "required": ["description"],
                    "additionalProperties": False,
                }
            },
            "required": ["flavor"],
            "additionalProperties": False,
        },
        body,
    )
    common.authorize(request, "os_compute_api:os-flavor-manage:update", {})
    flavorid = request.match_info["flavor_id"]
    async with request.app[keys.DB].acquire() as conn:
        flavor = await catalog.update_flavor_description(conn, flavorid, body["flavor"]["description"])
    if flavor is None:
        raise _not_found(flavorid)
    return web.json_response({"flavor": flavor_view(request, flavor, _include_extra_specs(request))})


async def delete_flavor(request: web.Request) -> web.Response:
    """DELETE /flavors/{flavor_id} (admin): 202, no body."""
    common.authorize(request, "os_compute_api:os-flavor-manage:delete", {})
    flavorid = request.match_info["flavor_id"]
    async with request.app[keys.DB].acquire() as conn:
        if not await catalog.delete_flavor(conn, flavorid):
            raise _not_found(flavorid)
    return web.Response(status=202)


# Extra specs ------------------------------------------------------------------

_SPECS = {
    "type": "object",
    "patternProperties": {
        "^[a-zA-Z0-9-_:. ]{1,255}$": {"type": ["string", "number"], "maxLength": 255},
    },
    "additionalProperties": False,
}


def _check_spec_values(specs: dict) -> dict[str, str]:
    out = {}
    for key, value in specs.items():
        if isinstance(value, int | float) and len(str(value)) > 255:
            raise errors.BadRequest(
                "Invalid input received: extra_specs value has more than 255 characters."
            )
        out[key] = str(value)
    return out


async def list_extra_specs(request: web.Request) -> web.Response:
    """GET /flavors/{flavor_id}/os-extra_specs."""
    ctx = common.context(request)
    common.authorize(request, "os_compute_api:os-flavor-extra-specs:index", {"project_id": ctx.project_id})
    flavor = await _visible_flavor(request, request.match_info["flavor_id"])
    return web.json_response({"extra_specs": flavor["extra_specs"] or {}})


async def create_extra_specs(request: web.Request) -> web.Response:
    """POST /flavors/{flavor_id}/os-extra_specs (admin): merge specs, echo the body."""
    body = await read_json(request)
    validate_body(
        {
            "type": "object",
            "properties": {"extra_specs": _SPECS},
            "required": ["extra_specs"],
            "additionalProperties": False,
        },
        body,
    )
    common.authorize(request, "os_compute_api:os-flavor-extra-specs:create", {})
    specs = _check_spec_values(body["extra_specs"])
    flavorid = request.match_info["flavor_id"]
    await _visible_flavor(request, flavorid)
    async with request.app[keys.DB].acquire() as conn:
        if not await catalog.merge_extra_specs(conn, flavorid, specs):
            raise _not_found(flavorid)
    return web.json_response(body)


async def update_extra_spec(request: web.Request) -> web.Response:
    """PUT /flavors/{flavor_id}/os-extra_specs/{key} (admin)."""
    body = await read_json(request)
    validate_body(dict(_SPECS, minProperties=1, maxProperties=1), body)
    common.authorize(request, "os_compute_api:os-flavor-extra-specs:update", {})
    specs = _check_spec_values(body)
    key = request.match_info["key"]
    if key not in body:
        raise errors.BadRequest("Request body and URI mismatch")
    flavorid = request.match_info["flavor_id"]
    await _visible_flavor(request, flavorid)
    async with request.app[keys.DB].acquire() as conn:
        if not await catalog.merge_extra_specs(conn, flavorid, specs):
            raise _not_found(flavorid)
    return web.json_response(body)


async def show_extra_spec(request: web.Request) -> web.Response:
    """GET /flavors/{flavor_id}/os-extra_specs/{key}."""
    ctx = common.context(request)
    common.authorize(request, "os_compute_api:os-flavor-extra-specs:show", {"project_id": ctx.project_id})
    flavorid, key = request.match_info["flavor_id"], request.match_info["key"]
    flavor = await _visible_flavor(request, flavorid)
    specs = flavor["extra_specs"] or {}
    if key not in specs:
        raise errors.NotFound(f"Flavor {flavorid} has no extra specs with key {key}.")
    return web.json_response({key: specs[key]})


async def delete_extra_spec(request: web.Request) -> web.Response:
    """DELETE /flavors/{flavor_id}/os-extra_specs/{key} (admin): 200, no body."""
    common.authorize(request, "os_compute_api:os-flavor-extra-specs:delete", {})
    flavorid, key = request.match_info["flavor_id"], request.match_info["key"]
    await _visible_flavor(request, flavorid)
    async with request.app[keys.DB].acquire() as conn:
        if not await catalog.delete_extra_spec(conn, flavorid, key):
            raise errors.NotFound(f"Flavor {flavorid} has no extra specs with key {key}.")
    return web.Response(status=200)


# Flavor access ----------------------------------------------------------------


async def _access_body(request: web.Request, flavorid: str) -> dict:
    async with request.app[keys.DB].acquire() as conn:
        projects = await catalog.flavor_projects(conn, flavorid)
    return {"flavor_access": [{"flavor_id": flavorid, "tenant_id": p} for p in capped(request, projects)]}


async def list_flavor_access(request: web.Request) -> web.Response:
    """GET /flavors/{flavor_id}/os-flavor-access (admin)."""
    common.authorize(request, "os_compute_api:os-flavor-access")
    flavor = await _visible_flavor(request, request.match_info["flavor_id"])
    if flavor["is_public"]:
        raise errors.NotFound("Access list not available for public flavors.")
    return web.json_response(await _access_body(request, flavor["flavorid"]))


def _tenant_schema(action: str) -> dict:
    return {
        "type": "object",
        "properties": {
            action: {
                "type": "object",
                "properties": {"tenant": {"type": "string", "minLength": 1, "maxLength": 255}},
                "required": ["tenant"],
                "additionalProperties": False,
            }
        },
        "required": [action],
        "additionalProperties": False,
    }


async def flavor_action(request: web.Request) -> web.Response:
    """POST /flavors/{flavor_id}/action: addTenantAccess / removeTenantAccess."""
    body = await read_json(request)
    action = next(iter(body), None)
    if action not in ("addTenantAccess", "removeTenantAccess"):
        raise errors.BadRequest(f"There is no such action: {action}")
    validate_body(_tenant_schema(action), body)
    flavorid = request.match_info["flavor_id"]
    tenant = body[action]["tenant"]
    if action == "addTenantAccess":
        common.authorize(request, "os_compute_api:os-flavor-access:add_tenant_access", {})
    else:
        common.authorize(request, "os_compute_api:os-flavor-access:remove_tenant_access", {})
    async with request.app[keys.DB].acquire() as conn:
        known = await catalog.project_exists(conn, tenant)
    if action == "addTenantAccess":
        if not known:
            raise errors.BadRequest(f"Project ID {tenant} is not a valid project.")
        flavor = await _visible_flavor(request, flavorid)
        if common.at_least(request, 7) and flavor["is_public"]:
            raise errors.Conflict("Can not add access to a public flavor.")
        async with request.app[keys.DB].acquire() as conn:
            try:
                await catalog.add_flavor_access(conn, flavorid, tenant)
            except catalog.Duplicate:
                raise errors.Conflict(
                    f"Flavor access already exists for flavor {flavorid} and project {tenant} combination."
                ) from None
    else:
        await _visible_flavor(request, flavorid)
        async with request.app[keys.DB].acquire() as conn:
            if not await catalog.remove_flavor_access(conn, flavorid, tenant):
                raise errors.NotFound(
                    f"Flavor access not found for {flavorid} / {tenant} combination."
                )
    return web.json_response(await _access_body(request, flavorid))
