"""Flavors, flavor extra specs and flavor access, as Nova's API serves them.

Also holds ``validate_body``/``validate_query``: the subset of JSON Schema
(draft 2020-12) Nova's request schemas use, with Nova's error messages.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Iterator
from functools import cache
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from novalite.api import errors
from novalite.api.compute import common
from novalite.api.middleware import read_json
from novalite.db import catalog

MAX_LIMIT = 1000  # Nova's [api]max_limit
MAX_INT = 0x7FFFFFFF

# JSON Schema validation -------------------------------------------------------


@cache
def _printable(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return ord(ch) < 0xFFFF and not cat.startswith("C") and (not cat.startswith("Z") or cat == "Zs")


def _valid_name(value: str) -> bool:
    """Nova's valid_name_regex: printable, no leading or trailing whitespace."""
    if not all(_printable(c) for c in value):
        return False
    return not value or (unicodedata.category(value[0]) != "Zs" and unicodedata.category(value[-1]) != "Zs")


def _valid_name_spaces(value: str) -> bool:
    """Nova's name_with_leading_trailing_spaces: printable with one non-space."""
    return all(_printable(c) for c in value) and any(unicodedata.category(c) != "Zs" for c in value)


_NAME_REASONS = {
    "name": (_valid_name, "printable characters. Can not start or end with whitespace."),
    "name_with_leading_trailing_spaces": (
        _valid_name_spaces,
        "printable characters with at least one non space character",
    ),
}


def _is_type(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if kind == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, int | float)
    return False


def _number(value: Any) -> int | float | None:
    """Nova's validator compares string numbers against minimum/maximum too."""
    if isinstance(value, bool):
        return int(value)
    try:
        return int(value)
    except (ValueError, TypeError):
        try:
            return float(value)
        except (ValueError, TypeError):
            return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _errors(schema: dict, inst: Any, path: list) -> Iterator[tuple[list, Any, str, bool]]:
    """Yield (path, instance, message, is_final) for each violation, in jsonschema's order."""
    for key, rule in schema.items():
        if key == "type":
            kinds = rule if isinstance(rule, list) else [rule]
            if not any(_is_type(inst, k) for k in kinds):
                yield path, inst, f"{inst!r} is not of type {', '.join(repr(k) for k in kinds)}", False
        elif key == "format" and rule in _NAME_REASONS:
            check, reason = _NAME_REASONS[rule]
            if not isinstance(inst, str) or not check(inst):
                yield path, inst, f"An invalid 'name' value was provided. The name must be: {reason}", True
        elif key == "pattern" and isinstance(inst, str):
            if not re.search(rule, inst):
                yield path, inst, f"{inst!r} does not match {rule!r}", False
        elif key == "minLength" and isinstance(inst, str) and len(inst) < rule:
            yield path, inst, f"{inst!r} " + ("should be non-empty" if rule == 1 else "is too short"), False
        elif key == "maxLength" and isinstance(inst, str) and len(inst) > rule:
            yield path, inst, f"{inst!r} " + ("is expected to be empty" if rule == 0 else "is too long"), False
        elif key in ("minimum", "maximum"):
            num = _number(inst) if not isinstance(inst, dict | list) else None
            if num is None:
                continue
            if key == "minimum" and num < rule:
                yield path, inst, f"{num!r} is less than the minimum of {rule!r}", False
            if key == "maximum" and num > rule:
                yield path, inst, f"{num!r} is greater than the maximum of {rule!r}", False
        elif key == "exclusiveMinimum" and _is_type(inst, "number") and inst <= rule:
            yield path, inst, f"{inst!r} is less than or equal to the minimum of {rule!r}", False
        elif key == "enum" and not any(_same(inst, e) for e in rule):
            yield path, inst, f"{inst!r} is not one of {rule!r}", False
        elif key == "properties" and isinstance(inst, dict):
            for prop, sub in rule.items():
                if prop in inst:
                    yield from _errors(sub, inst[prop], [*path, prop])
        elif key == "patternProperties" and isinstance(inst, dict):
            for pattern, sub in rule.items():
                for prop, value in inst.items():
                    if re.search(pattern, prop):
                        yield from _errors(sub, value, [*path, prop])
        elif key == "additionalProperties" and isinstance(inst, dict) and rule is False:
            props = schema.get("properties", {})
            patterns = schema.get("patternProperties", {})
            extras = [k for k in inst if k not in props and not any(re.search(p, k) for p in patterns)]
            if extras and patterns:
                verb = "does" if len(extras) == 1 else "do"
                joined = ", ".join(repr(e) for e in sorted(extras))
                pats = ", ".join(repr(p) for p in sorted(patterns))
                yield path, inst, f"{joined} {verb} not match any of the regexes: {pats}", False
            elif extras:
                verb = "was" if len(extras) == 1 else "were"
                joined = ", ".join(repr(e) for e in extras)
                yield path, inst, f"Additional properties are not allowed ({joined} {verb} unexpected)", False
        elif key == "required" and isinstance(inst, dict):
            for prop in rule:
                if prop not in inst:
                    yield path, inst, f"{prop!r} is a required property", False
        elif key == "minProperties" and isinstance(inst, dict) and len(inst) < rule:
            msg = "should be non-empty" if rule == 1 else "does not have enough properties"
            yield path, inst, f"{inst!r} {msg}", False
        elif key == "maxProperties" and isinstance(inst, dict) and len(inst) > rule:
            msg = "is expected to be empty" if rule == 0 else "has too many properties"
            yield path, inst, f"{inst!r} {msg}", False
        elif key == "allOf":
            for sub in rule:
                yield from _errors(sub, inst, path)
        elif key == "items" and isinstance(inst, list):
            for i, item in enumerate(inst):
                yield from _errors(rule, item, [*path, i])


def _fmt(value: Any) -> str:
    return str(value)


def validate_body(schema: dict, body: Any) -> None:
    """400 with Nova's message when the request body breaks the schema."""
    for path, inst, message, final in _errors(schema, body, []):
        if final or not path:
            raise errors.BadRequest(message)
        raise errors.BadRequest(
            f"Invalid input for field/attribute {path[-1]}. Value: {_fmt(inst)}. {message}"
        )


def validate_query(request: web.Request, properties: dict, *, strict: bool = False) -> None:
    """400 with Nova's message when query parameters break the schema (strict: no extras)."""
    query = {k: request.query.getall(k) for k in request.query}
    schema = {
        "type": "object",
        "properties": {k: {"type": "array", "items": v} for k, v in properties.items()},
        "additionalProperties": not strict,
    }
    for path, inst, message, final in _errors(schema, query, []):
        if final or not path:
            raise errors.BadRequest(message)
        raise errors.BadRequest(
            f"Invalid input for query parameters {path[0]}. Value: {_fmt(inst)}. {message}"
        )


NON_NEGATIVE_INT = {"type": ["integer", "string"], "pattern": "^[0-9]*$", "minimum": 0, "minLength": 1}
PAGINATION = {"limit": NON_NEGATIVE_INT, "marker": {"type": "string"}}
BOOLEAN = {
    "type": ["boolean", "string"],
    "enum": [True, "True", "TRUE", "true", "1", "ON", "On", "on", "YES", "Yes", "yes",
             False, "False", "FALSE", "false", "0", "OFF", "Off", "off", "NO", "No", "no"],
}
NAME = {"type": "string", "format": "name", "minLength": 1, "maxLength": 255}


def to_bool(value: Any, strict: bool = True) -> bool:
    """oslo's bool_from_string."""
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in ("1", "t", "true", "on", "y", "yes"):
        return True
    if low in ("0", "f", "false", "off", "n", "no") or not strict:
        return False
    raise ValueError(value)


def limit_and_marker(request: web.Request) -> tuple[int, str | None]:
    """Nova's get_limit_and_marker (limit capped at max_limit)."""
    limit = MAX_LIMIT
    if "limit" in request.query:
        raw = request.query["limit"]
        try:
            value = int(raw)
        except ValueError:
            raise errors.BadRequest("limit must be an integer") from None
        if value < 0:
            raise errors.BadRequest("limit must be >= 0")
        limit = min(limit, value)
    return limit, request.query.get("marker")


def next_links(request: web.Request, items: list[dict], collection: str, id_key: str) -> list[dict]:
    """Nova's `<collection>_links` next link when the page is full."""
    try:
        max_items = min(int(request.query.get("limit", MAX_LIMIT)), MAX_LIMIT)
    except ValueError:
        max_items = MAX_LIMIT
    if not max_items or max_items != len(items):
        return []
    params = dict(sorted(request.query.items()))
    params["marker"] = items[-1][id_key]
    href = f"{common.compute_url(request)}/v2.1/{collection}?{urlencode(params)}"
    return [{"rel": "next", "href": href}]


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
    return request.app["policy"].check(rule, ctx.creds(), target)


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
    async with request.app["db"].acquire() as conn:
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
    async with request.app["db"].acquire() as conn:
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
    async with request.app["db"].acquire() as conn:
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
    async with request.app["db"].acquire() as conn:
        flavor = await catalog.update_flavor_description(conn, flavorid, body["flavor"]["description"])
    if flavor is None:
        raise _not_found(flavorid)
    return web.json_response({"flavor": flavor_view(request, flavor, _include_extra_specs(request))})


async def delete_flavor(request: web.Request) -> web.Response:
    """DELETE /flavors/{flavor_id} (admin): 202, no body."""
    common.authorize(request, "os_compute_api:os-flavor-manage:delete", {})
    flavorid = request.match_info["flavor_id"]
    async with request.app["db"].acquire() as conn:
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
    async with request.app["db"].acquire() as conn:
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
    async with request.app["db"].acquire() as conn:
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
    async with request.app["db"].acquire() as conn:
        if not await catalog.delete_extra_spec(conn, flavorid, key):
            raise errors.NotFound(f"Flavor {flavorid} has no extra specs with key {key}.")
    return web.Response(status=200)


# Flavor access ----------------------------------------------------------------


async def _access_body(request: web.Request, flavorid: str) -> dict:
    async with request.app["db"].acquire() as conn:
        projects = await catalog.flavor_projects(conn, flavorid)
    return {"flavor_access": [{"flavor_id": flavorid, "tenant_id": p} for p in projects]}


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
    async with request.app["db"].acquire() as conn:
        known = await catalog.project_exists(conn, tenant)
    if action == "addTenantAccess":
        if not known:
            raise errors.BadRequest(f"Project ID {tenant} is not a valid project.")
        flavor = await _visible_flavor(request, flavorid)
        if common.at_least(request, 7) and flavor["is_public"]:
            raise errors.Conflict("Can not add access to a public flavor.")
        async with request.app["db"].acquire() as conn:
            try:
                await catalog.add_flavor_access(conn, flavorid, tenant)
            except catalog.Duplicate:
                raise errors.Conflict(
                    f"Flavor access already exists for flavor {flavorid} and project {tenant} combination."
                ) from None
    else:
        await _visible_flavor(request, flavorid)
        async with request.app["db"].acquire() as conn:
            if not await catalog.remove_flavor_access(conn, flavorid, tenant):
                raise errors.NotFound(
                    f"Flavor access not found for {flavorid} / {tenant} combination."
                )
    return web.json_response(await _access_body(request, flavorid))
