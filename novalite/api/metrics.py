"""GET /metrics (Prometheus text): on the API port for callers the ``novalite:metrics`` rule
lets in (admin by default), or on a separate plain listener (``[metrics] listen``);
and the middleware that times every API request by method, route pattern and status."""

from __future__ import annotations

import time

from aiohttp import web

from novalite import metrics
from novalite.api import keys
from novalite.api.compute.common import authorize
from novalite.api.middleware import Handler

POLICY_METRICS = "novalite:metrics"
UNMATCHED = "unmatched"  # requests no route matched (404, 405): one label, whatever the path


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time the request and count it under its route's pattern (``/compute/v2.1/servers/{server_id}``)."""
    started = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED
        metrics.api_request(request.method, route, status, time.perf_counter() - started)


def _answer(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def scrape(request: web.Request) -> web.Response:
    """The metrics for an admin token (403 in Nova's shape for anyone else)."""
    authorize(request, POLICY_METRICS)
    return _answer(await request.app[keys.METRICS].render())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", scrape)


class MetricsListener:
    """The separate listener: GET /metrics without auth, on the address the operator chose."""

    def __init__(self, sources: metrics.ScrapeSources) -> None:
        self.sources = sources
        self._runner: web.AppRunner | None = None

    async def _scrape(self, _request: web.Request) -> web.Response:
        return _answer(await self.sources.render())

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
