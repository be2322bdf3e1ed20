"""Request validation shared by the compute API: the subset of JSON Schema
(draft 2020-12) Nova's request schemas use, with Nova's error messages, plus
paging helpers (limit/marker, next links)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from novalite.api import errors
from novalite.api import validation as shared
from novalite.api.compute import common
from novalite.api.pagination import max_limit, page_limit
from novalite.db import is_uuid

MAX_INT = 0x7FFFFFFF

# JSON Schema validation -------------------------------------------------------


_NAME_REASONS = {
    "name": (shared.valid_name, shared.NAME_RULE),
    "name_with_leading_trailing_spaces": (
        shared.valid_name_with_spaces,
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
        elif key == "format" and rule == "uuid" and isinstance(inst, str) and not is_uuid(inst):
            yield path, inst, f"{inst!r} is not a 'uuid'", False
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


def offset_and_limit(request: web.Request) -> tuple[int, int]:
    """Nova's common.limited: offset and limit (0 or absent → max_limit)."""
    offset = 0
    raw = request.query.get("offset")
    if raw is not None:
        try:
            offset = int(raw)
        except ValueError:
            raise errors.BadRequest("offset param must be an integer") from None
        if offset < 0:
            raise errors.BadRequest("offset param must be positive")
    return offset, page_limit(request) or max_limit(request)


def limit_and_marker(request: web.Request) -> tuple[int, str | None]:
    """Nova's get_limit_and_marker (limit capped at max_limit)."""
    return page_limit(request), request.query.get("marker")


def next_links(request: web.Request, items: list[dict], collection: str, id_key: str) -> list[dict]:
    """Nova's `<collection>_links` next link when the page is full."""
    max_items = page_limit(request)
    if not max_items or max_items != len(items):
        return []
    params = dict(sorted(request.query.items()))
    params["marker"] = items[-1][id_key]
    href = f"{common.compute_url(request)}/v2.1/{collection}?{urlencode(params)}"
    return [{"rel": "next", "href": href}]
