"""Compute version documents (/compute, /compute/v2.1), served without a token."""

from __future__ import annotations

from aiohttp import web

from novalite.api import keys
from novalite.api.middleware import MAX_VERSION, MIN_VERSION, version_string


def _documents(base: str) -> list[dict]:
    html = {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"}
    return [
        {
            "id": "v2.0",
            "status": "DEPRECATED",
            "version": "",
            "min_version": "",
            "updated": "2025-07-04T12:00:00Z",
            "links": [{"rel": "self", "href": f"{base}/compute/v2/"}, html],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2"}
            ],
        },
        {
            "id": "v2.1",
            "status": "CURRENT",
            "version": version_string(MAX_VERSION),
            "min_version": version_string(MIN_VERSION),
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{base}/compute/v2.1/"}, html],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}
            ],
        },
    ]


async def versions(request: web.Request) -> web.Response:
    docs = _documents(request.app[keys.CONFIG].public_url)
    body = {
        "versions": [
            {k: d[k] for k in ("id", "status", "version", "min_version", "updated")} | {"links": d["links"][:1]}
            for d in docs
        ]
    }
    return web.json_response(body)


async def version_v21(request: web.Request) -> web.Response:
    return web.json_response({"version": _documents(request.app[keys.CONFIG].public_url)[1]})


async def version_v20(request: web.Request) -> web.Response:
    """The deprecated v2.0 document (the listing links it; Tempest follows every link)."""
    return web.json_response({"version": _documents(request.app[keys.CONFIG].public_url)[0]})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/compute", versions)
    r.add_get("/compute/", versions)
    r.add_get("/compute/v2", version_v20)
    r.add_get("/compute/v2/", version_v20)
    r.add_get("/compute/v2.1", version_v21)
    r.add_get("/compute/v2.1/", version_v21)
