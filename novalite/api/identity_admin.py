"""Keystone v3 admin subset (/identity/v3): projects, users, roles, domains, grants.

Only the ``default`` domain exists. Bodies, status codes and error messages
follow Keystone so that python-openstackclient and openstacksdk work
unmodified. Every change to a user, project or grant tells the identity
service to forget cached tokens, so the token cache never outlives it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
from aiohttp import web

from novalite.api import errors, keys, validation
from novalite.api.identity import authorize, identity_service, project_document
from novalite.api.middleware import read_json
from novalite.api.pagination import capped
from novalite.db import identity as q
from novalite.identity import DOMAIN, hash_password

V3 = "/identity/v3"
DEFAULT_DOMAIN_ID = DOMAIN["id"]


# -- helpers -------------------------------------------------------------
def base_url(request: web.Request) -> str:
    """The absolute URL of this server as clients see it."""
    return request.app[keys.CONFIG].public_url


def domain_filter(request: web.Request) -> dict:
    """A list's target: the domain_id filter when given (absent, a domain reader's branch
    must not match a project-scoped token's empty domain)."""
    domain_id = request.query.get("domain_id")
    return {} if domain_id is None else {"target.domain_id": domain_id}


def project_target(project_id: str | None = None) -> dict:
    """Keystone's target for a project rule (every project is in the default domain)."""
    target: dict = {"target.project.domain_id": DEFAULT_DOMAIN_ID}
    if project_id is not None:
        target["target.project.id"] = project_id
    return target


def user_target(user_id: str | None = None) -> dict:
    target: dict = {"target.user.domain_id": DEFAULT_DOMAIN_ID}
    if user_id is not None:
        target["target.user.id"] = user_id
    return target


def grant_target(request: web.Request) -> dict:
    """A user's grant on a project: the project, the user and the (global) role."""
    m = request.match_info
    return {**project_target(m["project_id"]), **user_target(m["user_id"]),
            "target.role.id": m.get("role_id"), "target.role.domain_id": None}


def query_is_true(request: web.Request, key: str) -> bool | None:
    """Keystone's reading of a boolean query filter: absent None, '0'/'false' False, else True."""
    if key not in request.query:
        return None
    return request.query[key].strip().lower() not in ("0", "false")


def invalid(field: str, reason: str) -> errors.BadRequest:
    return errors.BadRequest(f"Invalid input for field '{field}': {reason}")


def collection(request: web.Request, key: str, items: list[dict]) -> web.Response:
    """A Keystone list body: the items plus self/previous/next links, cut to ``[api] max_limit``
    with ``"truncated": true`` as Keystone's list_limit does (Keystone has no ``limit`` parameter)."""
    self_url = f"{base_url(request)}{request.path}"
    if request.query_string:
        self_url += f"?{request.query_string}"
    body: dict = {key: capped(request, items), "links": {"self": self_url, "previous": None, "next": None}}
    if len(items) > len(body[key]):
        body["truncated"] = True
    return web.json_response(body)


async def entity_body(request: web.Request, key: str) -> dict:
    """The JSON object under ``key`` in the request body, or Keystone's 400."""
    body = await read_json(request)
    entity = body.get(key)
    if not isinstance(entity, dict):
        raise invalid(key, f"'{key}' is a required property")
    return entity


def check_domain(value: object) -> None:
    if value is not None and value != DEFAULT_DOMAIN_ID:
        raise errors.NotFound(f"Could not find domain: {value}.")


def check_string(entity: dict, field: str, *, max_len: int, required: bool = False) -> str | None:
    value = entity.get(field)
    if value is None:
        if required:
            raise invalid(field, f"'{field}' is a required property")
        return None
    if not isinstance(value, str):
        raise invalid(field, f"{value!r} is not of type 'string'")
    if required and not value.strip():
        raise invalid(field, f"{value!r} is too short")
    if len(value) > max_len:
        raise invalid(field, f"{value!r} is too long")
    return value


def check_name(entity: dict, *, max_len: int) -> str:
    """A project or user name: Keystone's length limit, and the printable rule every
    service shares (no control or format characters, no whitespace at either end)."""
    value = check_string(entity, "name", max_len=max_len, required=True)
    problem = validation.name_problem(value, max_length=max_len)
    if problem:
        raise invalid("name", problem)
    return value


def check_bool(entity: dict, field: str) -> bool | None:
    value = entity.get(field)
    if value is not None and not isinstance(value, bool):
        raise invalid(field, f"{value!r} is not of type 'boolean'")
    return value


def conflict(kind: str, name: str) -> errors.Conflict:
    if kind == "project":
        details = f"it is not permitted to have two projects with the same name in the same domain : {name}"
    else:
        details = f"Duplicate entry found with name {name} at domain ID {DEFAULT_DOMAIN_ID}"
    return errors.Conflict(f"Conflict occurred attempting to store {kind} - {details}.")


def pool(request: web.Request) -> asyncpg.Pool:
    return identity_service(request).pool


# -- documents -----------------------------------------------------------
def user_document(row: Any, base: str) -> dict:
    """A user as Keystone shows it; never the password hash."""
    doc = {
        "id": row["id"],
        "name": row["name"],
        "domain_id": row["domain_id"],
        "enabled": row["enabled"],
        "password_expires_at": None,
        "options": {},
        "links": {"self": f"{base}{V3}/users/{row['id']}"},
    }
    for extra in ("default_project_id", "email", "description"):
        if row[extra] is not None:
            doc[extra] = row[extra]
    return doc


def role_document(row: Any, base: str) -> dict:
    return {
        "id": row["id"],
        "name": row["name"],
        "domain_id": None,
        "description": None,
        "options": {},
        "links": {"self": f"{base}{V3}/roles/{row['id']}"},
    }


def domain_document(base: str) -> dict:
    return {
        "id": DEFAULT_DOMAIN_ID,
        "name": DOMAIN["name"],
        "description": "The default domain",
        "enabled": True,
        "tags": [],
        "options": {},
        "links": {"self": f"{base}{V3}/domains/{DEFAULT_DOMAIN_ID}"},
    }


async def fetch_project(conn: asyncpg.Connection, project_id: str) -> asyncpg.Record:
    row = await q.get_project(conn, project_id)
    if row is None:
        raise errors.NotFound(f"Could not find project: {project_id}.")
    return row


async def fetch_user(conn: asyncpg.Connection, user_id: str) -> asyncpg.Record:
    row = await q.get_user(conn, user_id)
    if row is None:
        raise errors.NotFound(f"Could not find user: {user_id}.")
    return row


async def fetch_role(conn: asyncpg.Connection, role_id: str) -> asyncpg.Record:
    row = await q.get_role(conn, role_id)
    if row is None:
        raise errors.NotFound(f"Could not find role: {role_id}.")
    return row


# -- projects ------------------------------------------------------------
async def list_projects(request: web.Request) -> web.Response:
    """GET /v3/projects with Keystone's name, enabled and domain_id filters."""
    authorize(request, "list_projects", domain_filter(request))
    async with pool(request).acquire() as conn:
        rows = await q.list_projects(
            conn,
            name=request.query.get("name"),
            enabled=query_is_true(request, "enabled"),
            domain_id=request.query.get("domain_id"),
        )
    base = base_url(request)
    return collection(request, "projects", [project_document(r, base) for r in rows])


async def create_project(request: web.Request) -> web.Response:
    """POST /v3/projects: 201 with the project, 409 on a duplicate name."""
    authorize(request, "create_project", project_target())
    entity = await entity_body(request, "project")
    name = check_name(entity, max_len=64)
    description = check_string(entity, "description", max_len=65535) or ""
    enabled = check_bool(entity, "enabled")
    check_domain(entity.get("domain_id"))
    if entity.get("is_domain"):
        raise invalid("is_domain", "only the default domain exists")
    check_domain(entity.get("parent_id"))
    async with pool(request).acquire() as conn:
        try:
            row = await q.insert_project(
                conn, uuid.uuid4().hex, name, description, True if enabled is None else enabled
            )
        except asyncpg.UniqueViolationError:
            raise conflict("project", name) from None
    return web.json_response({"project": project_document(row, base_url(request))}, status=201)


async def show_project(request: web.Request) -> web.Response:
    project_id = request.match_info["project_id"]
    authorize(request, "get_project", project_target(project_id))
    async with pool(request).acquire() as conn:
        row = await fetch_project(conn, project_id)
    return web.json_response({"project": project_document(row, base_url(request))})


async def update_project(request: web.Request) -> web.Response:
    """PATCH /v3/projects/{id}: name, description, enabled."""
    project_id = request.match_info["project_id"]
    authorize(request, "update_project", project_target(project_id))
    entity = await entity_body(request, "project")
    changes: dict[str, object] = {}
    if "name" in entity:
        changes["name"] = check_name(entity, max_len=64)
    if "description" in entity:
        changes["description"] = check_string(entity, "description", max_len=65535) or ""
    if "enabled" in entity:
        changes["enabled"] = check_bool(entity, "enabled")
        if changes["enabled"] is None:
            raise invalid("enabled", "None is not of type 'boolean'")
    if "domain_id" in entity and entity["domain_id"] != DEFAULT_DOMAIN_ID:
        raise invalid("domain_id", "Update of `domain_id` is not allowed.")
    async with pool(request).acquire() as conn:
        try:
            row = await q.update_project(conn, project_id, changes)
        except asyncpg.UniqueViolationError:
            raise conflict("project", str(changes["name"])) from None
    if row is None:
        raise errors.NotFound(f"Could not find project: {project_id}.")
    identity_service(request).forget(project_id=project_id)
    return web.json_response({"project": project_document(row, base_url(request))})


async def delete_project(request: web.Request) -> web.Response:
    """DELETE /v3/projects/{id}: its grants and tokens go too."""
    project_id = request.match_info["project_id"]
    authorize(request, "delete_project", project_target(project_id))
    async with pool(request).acquire() as conn:
        deleted = await q.delete_project(conn, project_id)
    if not deleted:
        raise errors.NotFound(f"Could not find project: {project_id}.")
    identity_service(request).forget(project_id=project_id)
    return web.Response(status=204)


# -- users ---------------------------------------------------------------
async def _user_fields(request: web.Request, entity: dict, *, creating: bool) -> dict[str, object]:
    """Validated column values from a user body; the password becomes a bcrypt hash."""
    fields: dict[str, object] = {}
    if creating or "name" in entity:
        fields["name"] = check_name(entity, max_len=255)
    for extra in ("email", "description"):
        if extra in entity:
            fields[extra] = check_string(entity, extra, max_len=65535)
    if "enabled" in entity:
        enabled = check_bool(entity, "enabled")
        if enabled is None:
            raise invalid("enabled", "None is not of type 'boolean'")
        fields["enabled"] = enabled
    if "default_project_id" in entity:
        project_id = entity["default_project_id"]
        if project_id is not None:
            async with pool(request).acquire() as conn:
                await fetch_project(conn, str(project_id))
        fields["default_project_id"] = project_id
    if "domain_id" in entity:
        if creating:
            check_domain(entity["domain_id"])
        elif entity["domain_id"] != DEFAULT_DOMAIN_ID:
            raise invalid("domain_id", "Update of `domain_id` is not allowed.")
    if "password" in entity:
        password = entity["password"]
        if password is not None and not isinstance(password, str):
            raise invalid("password", f"{password!r} is not of type 'string'")
        rounds = request.app[keys.CONFIG].identity.bcrypt_rounds
        fields["password_hash"] = (
            None if password is None else await asyncio.to_thread(hash_password, password, rounds)
        )
    return fields


async def list_users(request: web.Request) -> web.Response:
    authorize(request, "list_users", domain_filter(request))
    async with pool(request).acquire() as conn:
        rows = await q.list_users(
            conn,
            name=request.query.get("name"),
            enabled=query_is_true(request, "enabled"),
            domain_id=request.query.get("domain_id"),
        )
    base = base_url(request)
    return collection(request, "users", [user_document(r, base) for r in rows])


async def create_user(request: web.Request) -> web.Response:
    """POST /v3/users: 201 with the user (no password), 409 on a duplicate name."""
    authorize(request, "create_user", user_target())
    entity = await entity_body(request, "user")
    fields = await _user_fields(request, entity, creating=True)
    async with pool(request).acquire() as conn:
        try:
            row = await q.insert_user(conn, uuid.uuid4().hex, fields)
        except asyncpg.UniqueViolationError:
            raise conflict("user", str(fields["name"])) from None
    return web.json_response({"user": user_document(row, base_url(request))}, status=201)


async def show_user(request: web.Request) -> web.Response:
    user_id = request.match_info["user_id"]
    authorize(request, "get_user", user_target(user_id))
    async with pool(request).acquire() as conn:
        row = await fetch_user(conn, user_id)
    return web.json_response({"user": user_document(row, base_url(request))})


async def update_user(request: web.Request) -> web.Response:
    """PATCH /v3/users/{id}; a new password or disabling revokes the user's tokens, as in Keystone."""
    user_id = request.match_info["user_id"]
    authorize(request, "update_user", user_target(user_id))
    entity = await entity_body(request, "user")
    fields = await _user_fields(request, entity, creating=False)
    async with pool(request).acquire() as conn, conn.transaction():
        try:
            row = await q.update_user(conn, user_id, fields)
        except asyncpg.UniqueViolationError:
            raise conflict("user", str(fields["name"])) from None
        if row is None:
            raise errors.NotFound(f"Could not find user: {user_id}.")
        if "password_hash" in fields or fields.get("enabled") is False:
            await q.revoke_user_tokens(conn, user_id)
        if fields.get("enabled") is True:  # as in Keystone: enabling a user unlocks it
            await q.reset_failed_auth(conn, user_id)
    identity_service(request).forget(user_id=user_id)
    return web.json_response({"user": user_document(row, base_url(request))})


async def delete_user(request: web.Request) -> web.Response:
    """DELETE /v3/users/{id}: its grants and tokens go too."""
    user_id = request.match_info["user_id"]
    authorize(request, "delete_user", user_target(user_id))
    async with pool(request).acquire() as conn:
        deleted = await q.delete_user(conn, user_id)
    if not deleted:
        raise errors.NotFound(f"Could not find user: {user_id}.")
    identity_service(request).forget(user_id=user_id)
    return web.Response(status=204)


async def list_user_projects(request: web.Request) -> web.Response:
    """GET /v3/users/{id}/projects: projects the user holds a role on."""
    user_id = request.match_info["user_id"]
    authorize(request, "list_user_projects", user_target(user_id))
    async with pool(request).acquire() as conn:
        await fetch_user(conn, user_id)
        rows = await q.user_projects(conn, user_id)
    base = base_url(request)
    return collection(request, "projects", [project_document(r, base) for r in rows])


# -- roles and domains ---------------------------------------------------
async def list_roles(request: web.Request) -> web.Response:
    authorize(request, "list_roles")
    async with pool(request).acquire() as conn:
        rows = await q.list_roles(conn, name=request.query.get("name"))
    base = base_url(request)
    return collection(request, "roles", [role_document(r, base) for r in rows])


async def show_role(request: web.Request) -> web.Response:
    authorize(request, "get_role", {"target.role.id": request.match_info["role_id"]})
    async with pool(request).acquire() as conn:
        row = await fetch_role(conn, request.match_info["role_id"])
    return web.json_response({"role": role_document(row, base_url(request))})


async def list_domains(request: web.Request) -> web.Response:
    """GET /v3/domains: the single Default domain (filters name, enabled)."""
    authorize(request, "list_domains")
    name = request.query.get("name")
    enabled = query_is_true(request, "enabled")
    matches = (name is None or name == DOMAIN["name"]) and enabled is not False
    items = [domain_document(base_url(request))] if matches else []
    return collection(request, "domains", items)


async def show_domain(request: web.Request) -> web.Response:
    """GET /v3/domains/{id}: readable by anyone scoped to a project in it, as in Keystone."""
    domain_id = request.match_info["domain_id"]
    check_domain(domain_id)
    authorize(request, "get_domain", {"target.domain.id": domain_id})
    return web.json_response({"domain": domain_document(base_url(request))})


# -- grants --------------------------------------------------------------
async def _grant_target(request: web.Request, conn: asyncpg.Connection) -> tuple[str, str, str]:
    project_id = request.match_info["project_id"]
    user_id = request.match_info["user_id"]
    role_id = request.match_info["role_id"]
    await fetch_role(conn, role_id)
    await fetch_user(conn, user_id)
    await fetch_project(conn, project_id)
    return project_id, user_id, role_id


def assignment_not_found(project_id: str, user_id: str, role_id: str) -> errors.NotFound:
    return errors.NotFound(
        f"Could not find role assignment with role: {role_id}, user or group: {user_id}, "
        f"project, domain, or system: {project_id}."
    )


async def add_grant(request: web.Request) -> web.Response:
    """PUT /v3/projects/{p}/users/{u}/roles/{r}: 204."""
    authorize(request, "create_grant", grant_target(request))
    async with pool(request).acquire() as conn:
        project_id, user_id, role_id = await _grant_target(request, conn)
        await q.add_assignment(conn, user_id, project_id, role_id)
    identity_service(request).forget(user_id=user_id)
    return web.Response(status=204)


async def check_grant(request: web.Request) -> web.Response:
    """HEAD /v3/projects/{p}/users/{u}/roles/{r}: 204 or 404."""
    authorize(request, "check_grant", grant_target(request))
    async with pool(request).acquire() as conn:
        project_id, user_id, role_id = await _grant_target(request, conn)
        found = await q.has_assignment(conn, user_id, project_id, role_id)
    if not found:
        raise assignment_not_found(project_id, user_id, role_id)
    return web.Response(status=204)


async def revoke_grant(request: web.Request) -> web.Response:
    """DELETE /v3/projects/{p}/users/{u}/roles/{r}: 204; the user's cached tokens are dropped."""
    authorize(request, "revoke_grant", grant_target(request))
    async with pool(request).acquire() as conn:
        project_id, user_id, role_id = await _grant_target(request, conn)
        removed = await q.remove_assignment(conn, user_id, project_id, role_id)
    if not removed:
        raise assignment_not_found(project_id, user_id, role_id)
    identity_service(request).forget(user_id=user_id)
    return web.Response(status=204)


async def list_grants(request: web.Request) -> web.Response:
    """GET /v3/projects/{p}/users/{u}/roles: the roles directly assigned."""
    authorize(request, "list_grants", grant_target(request))
    project_id = request.match_info["project_id"]
    user_id = request.match_info["user_id"]
    async with pool(request).acquire() as conn:
        await fetch_user(conn, user_id)
        await fetch_project(conn, project_id)
        rows = await q.role_names(conn, user_id, project_id)
    base = base_url(request)
    return collection(request, "roles", [role_document(r, base) for r in rows])


def _assignment_document(row: Any, role: tuple[str, str], prior: str | None, names: bool, base: str) -> dict:
    project_id, user_id = row["project_id"], row["user_id"]
    links = {"assignment": f"{base}{V3}/projects/{project_id}/users/{user_id}/roles/{row['role_id']}"}
    if prior is not None:
        links["prior_role"] = f"{base}{V3}/roles/{prior}"
    doc: dict = {
        "role": {"id": role[0]},
        "user": {"id": user_id},
        "scope": {"project": {"id": project_id}},
        "links": links,
    }
    if names:
        doc["role"]["name"] = role[1]
        doc["user"]["name"] = row["user_name"]
        doc["user"]["domain"] = dict(DOMAIN)
        doc["scope"]["project"]["name"] = row["project_name"]
        doc["scope"]["project"]["domain"] = dict(DOMAIN)
    return doc


async def list_role_assignments(request: web.Request) -> web.Response:
    """GET /v3/role_assignments with user.id, scope.project.id, role.id, effective, include_names."""
    authorize(request, "list_role_assignments")
    query = request.query
    effective = bool(query_is_true(request, "effective"))
    names = bool(query_is_true(request, "include_names"))
    role_filter = query.get("role.id")
    base = base_url(request)
    items: list[dict] = []
    if "group.id" in query or "scope.domain.id" in query or "scope.system" in query:
        return collection(request, "role_assignments", items)  # only user grants on projects exist
    async with pool(request).acquire() as conn:
        rows = await q.list_assignments(conn, user_id=query.get("user.id"), project_id=query.get("scope.project.id"))
        by_name = {r["name"]: r["id"] for r in await q.all_roles(conn)}
    seen: set[tuple[str, str, str]] = set()
    for row in rows:
        expanded: list[tuple[tuple[str, str], str | None]] = [((row["role_id"], row["role_name"]), None)]
        if effective:
            for implied in q.IMPLIED_ROLES.get(row["role_name"], ()):
                if implied in by_name:
                    expanded.append(((by_name[implied], implied), row["role_id"]))
        for role, prior in expanded:
            key = (row["user_id"], row["project_id"], role[0])
            if (role_filter is not None and role[0] != role_filter) or (effective and key in seen):
                continue
            seen.add(key)
            items.append(_assignment_document(row, role, prior, names, base))
    return collection(request, "role_assignments", items)


#: The Keystone rules each handler asks (tests check every one is registered).
HANDLER_RULES: dict[str, tuple[str, ...]] = {
    name: (f"identity:{rule}",) for name, rule in {
        "list_projects": "list_projects", "create_project": "create_project", "show_project": "get_project",
        "update_project": "update_project", "delete_project": "delete_project", "list_users": "list_users",
        "create_user": "create_user", "show_user": "get_user", "update_user": "update_user",
        "delete_user": "delete_user", "list_user_projects": "list_user_projects", "list_roles": "list_roles",
        "show_role": "get_role", "list_domains": "list_domains", "show_domain": "get_domain",
        "add_grant": "create_grant", "check_grant": "check_grant", "revoke_grant": "revoke_grant",
        "list_grants": "list_grants", "list_role_assignments": "list_role_assignments",
    }.items()
}


def add_routes(app: web.Application) -> None:
    """Register the admin APIs under /identity/v3."""
    r = app.router
    r.add_get(f"{V3}/projects", list_projects)
    r.add_post(f"{V3}/projects", create_project)
    r.add_get(f"{V3}/projects/{{project_id}}", show_project)
    r.add_patch(f"{V3}/projects/{{project_id}}", update_project)
    r.add_delete(f"{V3}/projects/{{project_id}}", delete_project)
    grant = f"{V3}/projects/{{project_id}}/users/{{user_id}}/roles"
    r.add_get(grant, list_grants)
    r.add_put(f"{grant}/{{role_id}}", add_grant)
    r.add_route("HEAD", f"{grant}/{{role_id}}", check_grant)
    r.add_delete(f"{grant}/{{role_id}}", revoke_grant)
    r.add_get(f"{V3}/users", list_users)
    r.add_post(f"{V3}/users", create_user)
    r.add_get(f"{V3}/users/{{user_id}}", show_user)
    r.add_patch(f"{V3}/users/{{user_id}}", update_user)
    r.add_delete(f"{V3}/users/{{user_id}}", delete_user)
    r.add_get(f"{V3}/users/{{user_id}}/projects", list_user_projects)
    r.add_get(f"{V3}/roles", list_roles)
    r.add_get(f"{V3}/roles/{{role_id}}", show_role)
    r.add_get(f"{V3}/domains", list_domains)
    r.add_get(f"{V3}/domains/{{domain_id}}", show_domain)
    r.add_get(f"{V3}/role_assignments", list_role_assignments)
