"""Helpers every compute handler uses: caller context, policy, microversions, links."""

from __future__ import annotations

from aiohttp import web

from novalite.api import errors, keys
from novalite.api.policy import context
from novalite.context import RequestContext
from novalite.policy import Enforcer, PolicyNotAuthorized


def authorize(request: web.Request, rule: str, target: dict | None = None) -> RequestContext:
    """Enforce a Nova policy rule for the caller; 403 `forbidden` when denied."""
    ctx = context(request)
    enforcer: Enforcer = request.app[keys.POLICY]
    if target is None:
        target = {"project_id": ctx.project_id, "user_id": ctx.user_id}
    try:
        enforcer.authorize(rule, ctx.creds(), target)
    except PolicyNotAuthorized as exc:
        raise errors.Forbidden(str(exc)) from None
    return ctx


def version(request: web.Request) -> tuple[int, int]:
    try:  # not request.get: Mapping.get's generic path costs three calls, and a detail list asks often
        return request[keys.VERSION]
    except KeyError:
        return (2, 1)


def at_least(request: web.Request, minor: int) -> bool:
    """True when the request's microversion is 2.<minor> or later."""
    return version(request) >= (2, minor)


def proxy_only(request: web.Request) -> None:
    """Nova's proxy APIs (images, security groups, ...) end at 2.35: 404 from 2.36."""
    if at_least(request, 36):
        raise errors.NotFound("The resource could not be found.")


def compute_url(request: web.Request) -> str:
    return f"{request.app[keys.CONFIG].public_url}/compute"


def links(request: web.Request, collection: str, ident: str, project_id: str | None = None,
          base: str | None = None) -> list[dict]:
    """Nova's self + bookmark links for one resource (``base``: compute_url(request), when the
    caller has it already)."""
    base = base or compute_url(request)
    proj = f"/{project_id}" if project_id else ""
    return [
        {"rel": "self", "href": f"{base}/v2.1{proj}/{collection}/{ident}"},
        {"rel": "bookmark", "href": f"{base}{proj}/{collection}/{ident}"},
    ]


def bool_query(value: str | None, name: str) -> bool | None:
    """Parse a boolean query parameter the way Nova's strutils does."""
    if value is None:
        return None
    low = value.strip().lower()
    if low in ("1", "t", "true", "on", "y", "yes"):
        return True
    if low in ("0", "f", "false", "off", "n", "no"):
        return False
    raise errors.BadRequest(f"Invalid value '{value}' for {name}.")
