"""GET /os-migrations: the migration records (resizes) as Nova's migrations.py shows them.

Fields per microversion: the base set; ``migration_type`` from 2.23; ``uuid`` and paging
(``limit``, ``marker``, ``migrations_links``) from 2.59; ``user_id`` and ``project_id``
from 2.80. Listing another project's (or every project's) migrations needs
``index:all_projects``; without ``index:host`` the host fields are null, as in Nova.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute.common import at_least, authorize, compute_url
from novalite.api.pagination import page_limit
from novalite.db import migration_records
from novalite.policy import PolicyNotAuthorized

RULE = "os_compute_api:os-migrations:index"


def _time(ts: datetime | None) -> str | None:
    """Nova's JSON rendering of a naive UTC datetime."""
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat() if ts is not None else None


def view(request: web.Request, m: asyncpg.Record, with_host: bool) -> dict:
    doc = {
        "id": m["id"],
        "status": m["status"],
        "instance_uuid": str(m["instance_uuid"]),
        "source_node": m["source_node"],
        "source_compute": m["source_compute"],
        "dest_node": m["dest_node"],
        "dest_compute": m["dest_compute"],
        "dest_host": m["dest_host"],
        "old_instance_type_id": m["old_instance_type_id"],
        "new_instance_type_id": m["new_instance_type_id"],
        "created_at": _time(m["created_at"]),
        "updated_at": _time(m["updated_at"]),
    }
    if not with_host:
        for key in ("source_node", "source_compute", "dest_node", "dest_compute", "dest_host"):
            doc[key] = None
    if at_least(request, 23):
        doc["migration_type"] = m["migration_type"]
    if at_least(request, 59):
        doc["uuid"] = str(m["uuid"])
    if at_least(request, 80):
        doc["user_id"] = m["user_id"]
        doc["project_id"] = m["project_id"]
    return doc


async def list_migrations(request: web.Request) -> web.Response:
    ctx = authorize(request, RULE)
    q = request.query
    project_id = q.get("project_id") if at_least(request, 80) else None
    if not project_id or project_id != ctx.project_id:
        authorize(request, "os_compute_api:os-migrations:index:all_projects")
    try:
        request.app[keys.POLICY].authorize("os_compute_api:os-migrations:index:host", ctx.creds(),
                                           {"project_id": ctx.project_id, "user_id": ctx.user_id})
        with_host = True
    except PolicyNotAuthorized:
        with_host = False
    filters = {k: q.get(k) for k in ("status", "migration_type", "instance_uuid", "source_compute", "host")}
    if at_least(request, 80):
        filters["project_id"], filters["user_id"] = project_id, q.get("user_id")
    paged = at_least(request, 59)
    limit = page_limit(request) if paged else 1000
    async with request.app[keys.DB].acquire() as conn:
        rows = await migration_records.list_for_api(conn, filters, 100000 if paged and q.get("marker") else limit)
    if paged and q.get("marker"):
        marker = q["marker"]
        at = next((i for i, r in enumerate(rows) if str(r["uuid"]) == marker), None)
        if at is None:
            raise errors.BadRequest(f"Marker {marker} could not be found.")
        rows = rows[at + 1: at + 1 + limit]
    body: dict = {"migrations": [view(request, r, with_host) for r in rows]}
    if paged and rows and len(rows) >= limit and q.get("limit"):
        body["migrations_links"] = [{
            "rel": "next",
            "href": f"{compute_url(request)}/v2.1/os-migrations?limit={limit}&marker={rows[-1]['uuid']}",
        }]
    return web.json_response(body)


def add_routes(app: web.Application, base: str = "/compute/v2.1") -> None:
    app.router.add_get(f"{base}/os-migrations", list_migrations)
