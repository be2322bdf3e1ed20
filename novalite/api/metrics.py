"""GET /metrics (Prometheus text): on the API port for callers the ``novalite:metrics`` rule
lets in (admin by default), or on a separate plain listener (``[metrics] listen``). Every API
request is timed by method, route pattern and status in ``api.middleware.request_id_middleware``."""

from __future__ import annotations

from aiohttp import web

from novalite import metrics
from novalite.api import keys
from novalite.api.compute.common import authorize

POLICY_METRICS = "novalite:metrics"


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
