"""Keystone v3 subset: version documents and tokens (/identity).

Admin APIs for projects, users and roles live in ``identity_admin``. Both ask
Keystone's policy (``keys.KEYSTONE_POLICY``, ``identity:*`` rules) through
``authorize`` with Keystone's flattened targets (``target.user.id``, ...).
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from novalite.api import errors, keys
from novalite.api import policy as api_policy
from novalite.api.middleware import read_json
from novalite.api.pagination import capped
from novalite.db import identity as q
from novalite.identity import DOMAIN, IdentityService, TokenInfo

UPDATED = "2024-04-01T00:00:00Z"


def identity_service(request: web.Request) -> IdentityService:
    return request.app[keys.IDENTITY]


def keystone_creds(request: web.Request) -> dict:
    """Keystone's credentials for a project-scoped token: no domain or system scope, and the
    token itself (``token.project.domain.id``) for rules that read it."""
    ctx = api_policy.context(request)
    domain = {"id": DOMAIN["id"]}
    return {
        **ctx.creds(),
        "domain_id": None,
        "system_scope": None,
        "user_domain_id": DOMAIN["id"],
        "project_domain_id": DOMAIN["id"],
        "token": {"user": {"id": ctx.user_id, "domain": domain},
                  "project": {"id": ctx.project_id, "domain": domain}},
    }


def forbidden(action: str) -> errors.Forbidden:
    return errors.Forbidden(f"You are not authorized to perform the requested action: identity:{action}.")


def authorize(request: web.Request, action: str, target: dict | None = None) -> None:
    """403 unless Keystone's ``identity:<action>`` allows the caller on ``target``
    (flat keys as Keystone's enforcer flattens them: ``target.user.id``, ``target.project.domain_id``)."""
    rule = f"identity:{action}"
    if not api_policy.check(request, keys.KEYSTONE_POLICY, rule, target or {}, keystone_creds(request)):
        raise forbidden(action)


def v3_document(base: str) -> dict:
    return {
        "id": "v3.14",
        "status": "stable",
        "updated": UPDATED,
        "links": [{"rel": "self", "href": f"{base}/identity/v3/"}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    }


async def versions(request: web.Request) -> web.Response:
    base = request.app[keys.CONFIG].public_url
    body = {"versions": {"values": [v3_document(base)]}}
    return web.json_response(body, status=300)


async def version_v3(request: web.Request) -> web.Response:
    return web.json_response({"version": v3_document(request.app[keys.CONFIG].public_url)})


def _parse_expires(value: object) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise errors.BadRequest("Invalid expires_at.") from None


async def create_token(request: web.Request) -> web.Response:
    """POST /v3/auth/tokens: password or token method, project scoped or unscoped."""
    service = identity_service(request)
    body = await read_json(request)
    auth = body.get("auth")
    if not isinstance(auth, dict) or not isinstance(auth.get("identity"), dict):
        raise errors.BadRequest("Expecting to find identity in auth.")
    ident = auth["identity"]
    methods = ident.get("methods")
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise errors.BadRequest("Expecting to find methods in identity.")
    expires: datetime | None = None
    if "password" in methods:
        password = ident.get("password")
        user_block = password.get("user") if isinstance(password, dict) else None
        if not isinstance(user_block, dict):
            raise errors.BadRequest("Expecting to find user in password.")
        if not isinstance(user_block.get("domain", {}), dict):
            raise errors.BadRequest("Expecting to find domain in user.")
        user = await service.authenticate_password(user_block)
        user_id = user["id"]
    elif "token" in methods:
        token = ident.get("token")
        if not isinstance(token, dict):
            raise errors.BadRequest("Expecting to find token in identity.")
        old = await service.validate(str(token.get("id", "")))
        if old is None:
            raise errors.Unauthorized()
        user_id, expires = old.user_id, old.expires_at
    else:
        raise errors.Unauthorized("Attempted to authenticate with an unsupported method.")
    scope = auth.get("scope")
    if scope == "unscoped":
        scope = None
    if scope is not None and not isinstance(scope, dict):
        raise errors.BadRequest("Expecting to find scope as an object in auth.")
    if isinstance(scope, dict) and "project" not in scope:
        raise errors.Unauthorized("Only project scope is supported.")
    project = await service.resolve_scope(user_id, scope)
    if project is None and scope is None and "password" in methods:
        project = await _default_project(service, user_id)
    info = await service.issue(user_id, project["id"] if project else None, methods, expires)
    nocatalog = "nocatalog" in request.query
    return web.json_response(
        service.token_body(info, with_catalog=not nocatalog), status=201, headers={"X-Subject-Token": info.id}
    )


async def _default_project(service: IdentityService, user_id: str):
    async with service.pool.acquire() as conn:
        user = await q.get_user(conn, user_id)
        if user is None or not user["default_project_id"]:
            return None
        project = await q.get_project(conn, user["default_project_id"])
        if project is None or not project["enabled"] or not await q.role_names(conn, user_id, project["id"]):
            return None
        return project


async def _subject(request: web.Request) -> TokenInfo:
    subject = request.headers.get("X-Subject-Token")
    if not subject:
        raise errors.NotFound("Could not find token.")
    info = await identity_service(request).validate(subject)
    if info is None:
        raise errors.NotFound(f"Could not find token: {subject}.")
    return info


def _may_inspect(request: web.Request, subject: TokenInfo, action: str) -> None:
    """validate_token, check_token, revoke_token: an admin or the token's own user (and a service
    may validate)."""
    authorize(request, action, {"target.token.user_id": subject.user_id})


async def validate_token(request: web.Request) -> web.Response:
    subject = await _subject(request)
    _may_inspect(request, subject, "validate_token")
    nocatalog = "nocatalog" in request.query
    return web.json_response(
        identity_service(request).token_body(subject, with_catalog=not nocatalog),
        headers={"X-Subject-Token": subject.id},
    )


async def check_token(request: web.Request) -> web.Response:
    subject = await _subject(request)
    _may_inspect(request, subject, "check_token")
    return web.Response(status=200, headers={"X-Subject-Token": subject.id})


async def revoke_token(request: web.Request) -> web.Response:
    subject = await _subject(request)
    _may_inspect(request, subject, "revoke_token")
    await identity_service(request).revoke(subject.id)
    return web.Response(status=204)


def project_document(row, base: str) -> dict:
    return {
        "id": row["id"],
        "name": row["name"],
        "domain_id": row["domain_id"],
        "description": row["description"],
        "enabled": row["enabled"],
        "is_domain": False,
        "parent_id": row["domain_id"],
        "options": {},
        "tags": [],
        "links": {"self": f"{base}/identity/v3/projects/{row['id']}"},
    }


async def auth_projects(request: web.Request) -> web.Response:
    """GET /v3/auth/projects: projects the token's user holds a role on."""
    authorize(request, "get_auth_projects")
    base = request.app[keys.CONFIG].public_url
    async with identity_service(request).pool.acquire() as conn:
        rows = await q.user_projects(conn, request[keys.TOKEN].user_id)
    return web.json_response(
        {
            "projects": capped(request, [project_document(r, base) for r in rows if r["enabled"]]),
            "links": {"self": f"{base}/identity/v3/auth/projects", "previous": None, "next": None},
        }
    )


async def auth_catalog(request: web.Request) -> web.Response:
    authorize(request, "get_auth_catalog")
    base = request.app[keys.CONFIG].public_url
    return web.json_response(
        {"catalog": identity_service(request).catalog(getattr(request.get(keys.TOKEN), "project_id", None)), "links": {"self": f"{base}/identity/v3/auth/catalog"}}
    )


#: The Keystone rules each handler asks (tests check every one is registered).
HANDLER_RULES: dict[str, tuple[str, ...]] = {
    "versions": (), "version_v3": (), "create_token": (),
    "validate_token": ("identity:validate_token",),
    "check_token": ("identity:check_token",),
    "revoke_token": ("identity:revoke_token",),
    "auth_projects": ("identity:get_auth_projects",),
    "auth_catalog": ("identity:get_auth_catalog",),
}


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/identity", versions)
    r.add_get("/identity/", versions)
    r.add_get("/identity/v3", version_v3)
    r.add_get("/identity/v3/", version_v3)
    r.add_post("/identity/v3/auth/tokens", create_token)
    r.add_get("/identity/v3/auth/tokens", validate_token, allow_head=False)
    r.add_route("HEAD", "/identity/v3/auth/tokens", check_token)
    r.add_delete("/identity/v3/auth/tokens", revoke_token)
    r.add_get("/identity/v3/auth/projects", auth_projects)
    r.add_get("/identity/v3/auth/catalog", auth_catalog)
