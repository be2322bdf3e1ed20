"""``GET``/``HEAD /healthcheck`` in oslo.middleware's healthcheck shape.

Healthy when Postgres answers and at least one configured compute host is up
(its nova-compute heartbeat is fresh and it is not forced down: the ``state``
``GET /os-services`` shows). Anyone gets the terse answer: ``200 OK`` or
``503`` with the failing reasons as text lines, or ``{"detailed": false,
"reasons": [...]}`` when Accept prefers JSON; ``HEAD`` answers 204 or 503
without a body. No token is needed. While Postgres answers, an X-Auth-Token
that passes ``os_compute_api:os-services:list`` (admin by default: the detail
is the services' state) gets the detailed JSON instead: each check with its
details, Postgres' latency, every host up or down by name.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from novalite.api import keys
from novalite.api.middleware import HEALTHCHECK_PATH, authenticate
from novalite.db import catalog

# Who sees the detailed answer: Nova's rule for listing the compute services.
DETAIL_RULE = "os_compute_api:os-services:list"
# Longer than this and Postgres counts as not answering (a probe must not hang).
POSTGRES_TIMEOUT = 3.0


@dataclass(frozen=True)
class Result:
    """One check's outcome, as oslo.middleware's HealthcheckResult."""

    check: str
    available: bool
    reason: str
    details: str


# What a session the server ended looks like to its client: terminated while idle (noticed on the
# next use), mid-query, or mid-use inside asyncpg.
_SESSION_ENDED = (asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError,
                  asyncpg.InternalClientError)


async def _compute_nodes(app: web.Application, service_down_time: int) -> list:
    async with app[keys.DB].acquire() as conn:
        return await catalog.list_compute_nodes(conn, service_down_time)


async def run_checks(app: web.Application) -> tuple[list[Result], float | None, dict[str, str]]:
    """Postgres and the compute hosts in one query: the results, Postgres' latency in ms
    (None when it did not answer) and each configured host's ``up``/``down``."""
    config = app[keys.CONFIG]
    started = time.perf_counter()
    try:
        async with asyncio.timeout(POSTGRES_TIMEOUT):
            try:
                nodes = await _compute_nodes(app, config.scheduler.service_down_time)
            except _SESSION_ENDED:
                # A pooled session the server ended (a restart's terminate reaches each backend when
                # it does, possibly mid-query): its siblings were most likely ended too, so the pool
                # replaces them all, and whether Postgres answers is asked once more on a new
                # connection, within the same time.
                await app[keys.DB].expire_connections()
                nodes = await _compute_nodes(app, config.scheduler.service_down_time)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        reason = Result("postgres", False, "postgres unreachable", f"{type(exc).__name__}: {exc}".rstrip(": "))
        return [reason], None, {}
    latency = round((time.perf_counter() - started) * 1000, 2)
    alive = {n["host"]: n["alive"] for n in nodes}
    hosts = {h.name: "up" if alive.get(h.name) else "down" for h in config.hosts}
    up = [name for name, state in hosts.items() if state == "up"]
    down = [name for name, state in hosts.items() if state == "down"]
    results = [
        Result("postgres", True, "OK", f"answered in {latency} ms"),
        Result("hosts", True, "OK", f"{len(up)} of {len(hosts)} compute hosts up")
        if up else Result("hosts", False, "no compute host up", f"down: {', '.join(down) or 'none configured'}"),
    ]
    return results, latency, hosts


def wants_json(accept: str) -> bool:
    """Whether an Accept header prefers application/json to text/plain (a tie is text, as oslo's order)."""
    quality = {"text/plain": 0.0, "application/json": 0.0}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        for offer in quality:
            if media in (offer, "*/*", offer.split("/")[0] + "/*"):
                quality[offer] = max(quality[offer], q)
    return quality["application/json"] > quality["text/plain"]


async def may_see_details(request: web.Request) -> bool:
    """A project-scoped token that passes DETAIL_RULE (admin by default). Asked only once
    Postgres answered: a probe must say what is wrong, not fail checking a token."""
    if await authenticate(request) is None:
        return False
    ctx = request.get(keys.CONTEXT)
    return ctx is not None and request.app[keys.POLICY].check(DETAIL_RULE, ctx.creds())


async def healthcheck(request: web.Request) -> web.Response:
    """GET/HEAD /healthcheck."""
    results, latency, hosts = await run_checks(request.app)
    healthy = all(r.available for r in results)
    if request.method == "HEAD":
        return web.Response(status=204 if healthy else 503)
    status = 200 if healthy else 503
    reasons = ["OK"] if healthy else [r.reason for r in results if not r.available]
    if not wants_json(request.headers.get("Accept", "")):
        return web.Response(status=status, text="\n".join(reasons))
    if latency is None or not await may_see_details(request):
        return web.json_response({"detailed": False, "reasons": reasons}, status=status)
    return web.json_response({
        "detailed": True,
        "now": datetime.datetime.now(datetime.UTC).isoformat(),
        "reasons": [{"reason": r.reason, "details": r.details, "class": r.check} for r in results],
        "postgres": {"available": latency is not None, "latency_ms": latency},
        "hosts": hosts,
    }, status=status)


def add_routes(app: web.Application) -> None:
    app.router.add_get(HEALTHCHECK_PATH, healthcheck)  # HEAD too
