"""What every dashboard page shares: the session, CSRF, security headers, API calls, HTML errors.

A page area is one module with ``add_routes(router)`` and its templates; handlers
read the logged-in session with ``session_of(request)``, call the APIs with
``api(request, ...)`` and answer ``render(request, template, context)``. Handlers
marked ``@public`` are served without a session (the login page)."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from novalite.dashboard.client import ApiAnswer, ApiClient
from novalite.dashboard.sessions import COOKIE, CSRF_FIELD, Session, SessionStore, clear_cookie

PREFIX = "/dashboard"
SESSIONS = web.AppKey("dashboard_sessions", SessionStore)
CLIENT = web.AppKey("dashboard_client", ApiClient)
SESSION = web.RequestKey("dashboard_session", Session)
FORM = web.RequestKey("dashboard_form", MultiDictProxy)

# No inline script or style anywhere: everything comes from /dashboard/static.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
CSRF_HEADER = "X-CSRF-Token"  # a script's PUT (an image's bytes) carries the token here: its body is data
LOGIN_CSRF_COOKIE = "novalite_login_csrf"  # double-submit token of the login form (no session yet)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PageError(Exception):
    """A page that cannot be shown: rendered as an HTML error page with this status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def public(handler: Handler) -> Handler:
    """Serve ``handler`` without a session (it must check its own CSRF on POST)."""
    handler.dashboard_public = True  # type: ignore[attr-defined]
    return handler


def url(path: str = "/") -> str:
    return PREFIX + path


ID = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")  # an id or name in a path: never a dot segment, never a slash


def path_id(request: web.Request, key: str, noun: str = "Resource") -> str:
    """The ``key`` of the page's path, fit to go into an API path (else the API's kind of 404)."""
    value = request.match_info[key]
    if not ID.match(value) or value in (".", ".."):
        raise PageError(404, f"{noun} {value} could not be found.")
    return value


def session_of(request: web.Request) -> Session:
    return request[SESSION]


def form_of(request: web.Request) -> MultiDictProxy:
    """The POSTed form, read and CSRF-checked by the middleware."""
    return request[FORM]


async def api(request: web.Request, method: str, path: str, *, body: dict | None = None,
              headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
              data: object = None) -> ApiAnswer:
    """One API call as the logged-in user; a token the API no longer takes ends the session."""
    answer = await request.config_dict[CLIENT].call(request, method, path, session_of(request).token, body=body,
                                                    headers=headers, params=params, data=data)
    if answer.status == 401:
        await request.config_dict[SESSIONS].drop(session_of(request))
        raise web.HTTPFound(url("/login"))
    return answer


async def api_ok(request: web.Request, method: str, path: str, **kw) -> dict:
    """``api`` for what the page cannot do without: an error answer becomes the error page."""
    answer = await api(request, method, path, **kw)
    if not answer.ok:
        raise PageError(answer.status, answer.message())
    return answer.body or {}


async def api_many(request: web.Request, paths: dict[str, str]) -> dict[str, ApiAnswer]:
    """Several GETs at once (a page's lists), keyed as ``paths`` is."""
    answers = await asyncio.gather(*(api(request, "GET", p) for p in paths.values()))
    return dict(zip(paths, answers, strict=True))


async def act(request: web.Request, method: str, path: str, done: str, back: str, **kw) -> web.Response:
    """A form's one API call: ``done`` or the API's own error shown on the page ``back`` redirects to."""
    answer = await api(request, method, path, **kw)
    session_of(request).flash = done if answer.ok else answer.message()
    raise redirect(back)


def render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    """A template with what every page shows (who, which project, the CSRF token) added."""
    session = request.get(SESSION)
    base = {"session": session, "csrf_field": CSRF_FIELD, "csrf": session.csrf if session else "", "url": url,
            "flash": session.take_flash() if session else ""}
    return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)


def redirect(path: str) -> web.HTTPFound:
    return web.HTTPFound(url(path))


def new_login_csrf() -> str:
    return secrets.token_urlsafe(32)


@web.middleware
async def dashboard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Security headers on every answer; a session (else the login page) and a checked CSRF token
    on every POST; PageErrors and unknown paths as HTML pages."""
    try:
        return await _page(request, handler)
    finally:  # a flash message set for the next page, or shown on this one, is written back
        if (session := request.get(SESSION)) is not None:
            await request.config_dict[SESSIONS].save_flash(session)


async def _page(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer, or the error page in its place, with the security headers."""
    try:
        resp = await _guarded(request, handler)
    except PageError as exc:
        resp = render(request, "error.html", {"status": exc.status, "message": exc.message}, status=exc.status)
    except web.HTTPNotFound:
        resp = render(request, "error.html", {"status": 404, "message": "This page does not exist."}, status=404)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects go out as raised, with the same headers
            exc.headers.update(SECURITY_HEADERS)
            raise
        resp = render(request, "error.html", {"status": exc.status, "message": exc.reason}, status=exc.status)
    resp.headers.update(SECURITY_HEADERS)
    return resp


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    is_public = getattr(handler, "dashboard_public", False) or request.path.startswith(url("/static/"))
    session = await request.config_dict[SESSIONS].get(request.cookies.get(COOKIE))
    if session is not None:
        request[SESSION] = session
    elif not is_public:
        if request.method not in ("GET", "HEAD", "POST"):  # a script's request (an upload): no page to go to
            raise PageError(401, "The session has ended; log in again.")
        resp = web.HTTPFound(url("/login"))
        if request.cookies.get(COOKIE):
            clear_cookie(resp)  # a session this process no longer knows (expired, or a restart)
        raise resp
    if request.method == "POST":
        form = await request.post()
        expected = session.csrf if session is not None else request.cookies.get(LOGIN_CSRF_COOKIE, "")
        given = str(form.get(CSRF_FIELD, ""))
        if not expected or not given or not secrets.compare_digest(expected.encode(), given.encode()):
            raise PageError(403, "The form's CSRF token is missing or wrong; reload the page and try again.")
        request[FORM] = form
    elif request.method not in ("GET", "HEAD") and (session is None or not session.csrf_ok(
            request.headers.get(CSRF_HEADER, ""))):
        raise PageError(403, "The request's CSRF token is missing or wrong; reload the page and try again.")
    return await handler(request)
