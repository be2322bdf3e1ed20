"""A server's live migrations (Nova's server_migrations.py; the os-migrateLive action that
starts one is in :mod:`novalite.api.compute.actions`).

- ``GET /servers/{id}/migrations[/{mid}]`` (2.23+): the live migrations in progress, with their
  progress in bytes; ``POST .../{mid}/action {"force_complete": null}`` (2.22+) pauses the guest so
  the copy converges; ``DELETE .../{mid}`` (2.24+) aborts (2.65+: a queued or preparing one too).
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute.common import at_least, authorize
from novalite.api.compute.migrations import _time
from novalite.api.compute.servers import load_instance
from novalite.api.compute.validation import validate_body
from novalite.api.middleware import read_json
from novalite.db import migration_records
from novalite.policy import PolicyNotAuthorized

RULE = "os_compute_api:servers:migrations:%s"


def view(request: web.Request, m: asyncpg.Record, with_host: bool) -> dict:
    """Nova's server_migrations.output: the hosts, the progress in bytes, uuid from 2.59, the owner from 2.80."""
    doc = {
        "created_at": _time(m["created_at"]),
        "dest_compute": None, "dest_host": None, "dest_node": None,
        "disk_processed_bytes": m["disk_processed"],
        "disk_remaining_bytes": m["disk_remaining"],
        "disk_total_bytes": m["disk_total"],
        "id": m["id"],
        "memory_processed_bytes": m["memory_processed"],
        "memory_remaining_bytes": m["memory_remaining"],
        "memory_total_bytes": m["memory_total"],
        "server_uuid": str(m["instance_uuid"]),
        "source_compute": None, "source_node": None,
        "status": m["status"],
        "updated_at": _time(m["updated_at"]),
    }
    if at_least(request, 59):
        doc["uuid"] = str(m["uuid"])
    if at_least(request, 80):
        doc["user_id"], doc["project_id"] = m["user_id"], m["project_id"]
    if with_host:
        for key in ("dest_compute", "dest_host", "dest_node", "source_compute", "source_node"):
            doc[key] = m[key]
    return doc


def _since(request: web.Request, minor: int) -> None:
    if not at_least(request, minor):
        raise errors.NotFound("The resource could not be found.")


def _migration_id(request: web.Request, uuid: str) -> int:
    raw = request.match_info["migration_id"]
    if not raw.isdigit():
        raise errors.NotFound(f"Migration {raw} not found for instance {uuid}")
    return int(raw)


async def index(request: web.Request) -> web.Response:
    _since(request, 23)
    inst = await load_instance(request)
    target = {"project_id": inst["project_id"]}
    ctx = authorize(request, RULE % "index", target)
    try:
        request.app[keys.POLICY].authorize(RULE % "index:host", ctx.creds(), target)
        with_host = True
    except PolicyNotAuthorized:
        with_host = False
    async with request.app[keys.DB].acquire() as conn:
        rows = await migration_records.live_of_instance(conn, str(inst["uuid"]))
    return web.json_response({"migrations": [view(request, r, with_host) for r in rows]})


async def show(request: web.Request) -> web.Response:
    _since(request, 23)
    inst = await load_instance(request)
    authorize(request, RULE % "show", {"project_id": inst["project_id"]})
    uuid = str(inst["uuid"])
    mid = _migration_id(request, uuid)
    async with request.app[keys.DB].acquire() as conn:
        row = await migration_records.get(conn, mid)
    if row is None or str(row["instance_uuid"]) != uuid or row["deleted"]:
        raise errors.NotFound(f"In-progress live migration {mid} is not found for server {uuid}.")
    if row["migration_type"] != migration_records.LIVE:
        raise errors.NotFound(f"Migration {mid} for server {uuid} is not live-migration.")
    if row["status"] not in migration_records.LIVE_IN_PROGRESS:
        raise errors.NotFound(f"Live migration {mid} for server {uuid} is not in progress.")
    return web.json_response({"migration": view(request, row, True)})


async def action(request: web.Request) -> web.Response:
    """POST .../migrations/{mid}/action {"force_complete": null} (2.22+): 202."""
    _since(request, 22)
    inst = await load_instance(request)
    body = await read_json(request)
    validate_body({"type": "object", "properties": {"force_complete": {"type": "null"}},
                   "required": ["force_complete"], "additionalProperties": False}, body)
    ctx = authorize(request, RULE % "force_complete", {"project_id": inst["project_id"]})
    mid = _migration_id(request, str(inst["uuid"]))
    await request.app[keys.SERVER_ACTIONS].live_migrate_force_complete(ctx, inst, mid)
    return web.Response(status=202)


async def delete(request: web.Request) -> web.Response:
    """DELETE .../migrations/{mid} (2.24+): abort; 202."""
    _since(request, 24)
    inst = await load_instance(request)
    ctx = authorize(request, RULE % "delete", {"project_id": inst["project_id"]})
    mid = _migration_id(request, str(inst["uuid"]))
    await request.app[keys.SERVER_ACTIONS].live_migrate_abort(ctx, inst, mid, at_least(request, 65))
    return web.Response(status=202)


def add_routes(app: web.Application, base: str = "/compute/v2.1") -> None:
    path = f"{base}/servers/{{server_id}}/migrations"
    app.router.add_get(path, index)
    app.router.add_get(f"{path}/{{migration_id}}", show)
    app.router.add_post(f"{path}/{{migration_id}}/action", action)
    app.router.add_delete(f"{path}/{{migration_id}}", delete)
