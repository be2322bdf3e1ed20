"""Log in (Keystone password auth), switch project (token auth scoped to another project), log out
(the token is revoked, as Horizon's logout does)."""

from __future__ import annotations

import asyncio
from datetime import datetime

from aiohttp import web

from novalite.dashboard import admin
from novalite.dashboard import framework as fw
from novalite.dashboard.sessions import Session, clear_cookie, over_tls, set_cookie

TOKENS = "/identity/v3/auth/tokens"


def token_fields(answer) -> dict:
    """A session's fields from Keystone's token answer."""
    token = answer.body["token"]
    project = token.get("project") or {}
    return {
        "token": answer.headers["X-Subject-Token"],
        "user_id": token["user"]["id"],
        "user_name": token["user"]["name"],
        "project_id": project.get("id", ""),
        "project_name": project.get("name", ""),
        "roles": tuple(r["name"] for r in token.get("roles", [])),
        "expires_at": datetime.fromisoformat(token["expires_at"].replace("Z", "+00:00")).timestamp(),
    }


def password_auth(user: str, password: str, project: str) -> dict:
    auth: dict = {"identity": {"methods": ["password"], "password": {
        "user": {"name": user, "domain": {"id": "default"}, "password": password}}}}
    if project:
        auth["scope"] = {"project": {"name": project, "domain": {"id": "default"}}}
    return {"auth": auth}


def login_page(request: web.Request, error: str = "", values: dict | None = None, status: int = 200) -> web.Response:
    """The login form with a fresh double-submit CSRF token (cookie and hidden field)."""
    csrf = fw.new_login_csrf()
    resp = fw.render(request, "login.html", {"error": error, "values": values or {}, "login_csrf": csrf},
                     status=status)
    resp.set_cookie(fw.LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="Strict", secure=over_tls(request),
                    path=fw.url("/login"))
    return resp


@fw.public
async def login_form(request: web.Request) -> web.Response:
    if request.get(fw.SESSION) is not None:
        raise fw.redirect("/instances")
    return login_page(request)


@fw.public
async def login(request: web.Request) -> web.Response:
    """POST: Keystone password auth; a project-scoped token opens a session."""
    form = fw.form_of(request)
    user, project = str(form.get("user", "")).strip(), str(form.get("project", "")).strip()
    client = request.config_dict[fw.CLIENT]
    answer = await client.call(request, "POST", TOKENS, None, body=password_auth(user, str(form.get("password", "")),
                                                                                 project))
    values = {"user": user, "project": project}
    if answer.status != 201:
        return login_page(request, answer.message(), values, status=answer.status)
    fields = token_fields(answer)
    if not fields["project_id"]:
        await client.call(request, "DELETE", TOKENS, fields["token"], headers={"X-Subject-Token": fields["token"]})
        return login_page(request, "This user has no project to log in to; name one.", values, status=401)
    session = await request.config_dict[fw.SESSIONS].create(**fields, **await token_extras(request, fields["token"]))
    resp = fw.redirect("/instances")
    set_cookie(request, resp, session)
    resp.del_cookie(fw.LOGIN_CSRF_COOKIE, path=fw.url("/login"))
    raise resp


async def user_projects(request: web.Request, token: str) -> list[tuple[str, str]]:
    """(id, name) of the projects the user holds a role on, for the project switcher."""
    answer = await request.config_dict[fw.CLIENT].call(request, "GET", "/identity/v3/auth/projects", token)
    return sorted(((p["id"], p["name"]) for p in (answer.body or {}).get("projects", [])), key=lambda p: p[1])


async def token_extras(request: web.Request, token: str) -> dict:
    """What a session keeps beside the token: the project switcher's list, whether the admin menu shows."""
    projects, admin_area = await asyncio.gather(user_projects(request, token), admin.allowed(request, token))
    return {"projects": projects, "admin_area": admin_area}


async def switch_project(request: web.Request) -> web.Response:
    """POST: a token for another of the user's projects (token auth), the old one revoked."""
    session: Session = fw.session_of(request)
    project_id = str(fw.form_of(request).get("project_id", ""))
    body = {"auth": {"identity": {"methods": ["token"], "token": {"id": session.token}},
                     "scope": {"project": {"id": project_id}}}}
    answer = await fw.api(request, "POST", TOKENS, body=body)
    if answer.status != 201:
        raise fw.PageError(answer.status, answer.message())
    old = session.token
    fields = token_fields(answer)
    await request.config_dict[fw.SESSIONS].replace_token(session, **fields, **await token_extras(request, fields["token"]))
    await request.config_dict[fw.CLIENT].call(request, "DELETE", TOKENS, old, headers={"X-Subject-Token": old})
    raise fw.redirect("/instances")


async def logout(request: web.Request) -> web.Response:
    """POST: the token revoked in Keystone, the session forgotten, the cookie cleared."""
    session = fw.session_of(request)
    await request.config_dict[fw.CLIENT].call(request, "DELETE", TOKENS, session.token,
                                              headers={"X-Subject-Token": session.token})
    await request.config_dict[fw.SESSIONS].drop(session)
    resp = fw.redirect("/login")
    clear_cookie(resp)
    raise resp


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/login", login_form)
    router.add_post("/login", login)
    router.add_post("/logout", logout)
    router.add_post("/project", switch_project)
