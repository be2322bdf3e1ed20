"""The web dashboard: pages at /dashboard on the API's port, calling the APIs as the logged-in user.

Each area is one module with ``add_routes(router)`` and its templates under
``templates/``; add a page by adding a module to ``AREAS``. The dashboard is a
sub-application: its middleware (session, CSRF, security headers, HTML error
pages) runs only for its own paths, after the API's request-id and error
middlewares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from novalite.api import keys
from novalite.dashboard import admin, auth, images, instances, keypairs, networks, volumes
from novalite.dashboard import framework as fw
from novalite.dashboard.client import ApiClient
from novalite.dashboard.sessions import SessionStore

AREAS = (auth, instances, images, volumes, keypairs, networks, admin)
HERE = Path(__file__).parent


async def home(request: web.Request) -> web.Response:
    """``/`` and ``/dashboard/``: the instances page (the login page when not logged in)."""
    raise fw.redirect("/instances")


def dashboard_app() -> web.Application:
    app = web.Application(middlewares=[fw.dashboard_middleware])
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                         default_helpers=False)
    app.router.add_get("/", home)
    app.router.add_static("/static/", HERE / "static")
    for area in AREAS:
        area.add_routes(app.router)
    return app


async def dashboard_ctx(app: web.Application) -> AsyncIterator[None]:
    """The session store on the database pool (made by an earlier context), the API client's pool."""
    app[fw.SESSIONS] = SessionStore(app[keys.DB])
    yield
    await app[fw.CLIENT].close()


def add_routes(app: web.Application) -> None:
    """The dashboard under /dashboard, and ``GET /`` sending browsers there. The session store
    and the API client live on the main app (pages read them through ``config_dict``)."""
    app[fw.CLIENT] = ApiClient()
    app.cleanup_ctx.append(dashboard_ctx)
    app.add_subapp(fw.PREFIX, dashboard_app())
    app.router.add_get("/", home)
    app.router.add_get(fw.PREFIX, home)
