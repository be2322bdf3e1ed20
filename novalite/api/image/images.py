"""Glance v2 read subset (/image): version documents, image list and show.

Enough for `openstack server create --image NAME` and `openstack image list`
to resolve images; upload and the rest of the image API come with real guests.
"""

from __future__ import annotations

import uuid as uuidlib

import asyncpg
from aiohttp import web

from novalite.api import errors
from novalite.api.compute.common import context

CORE = {"id", "name", "status", "visibility", "owner", "disk_format", "container_format", "min_disk", "min_ram",
        "size", "checksum"}


def image_document(row: asyncpg.Record) -> dict:
    iid = str(row["id"])
    doc = {
        "id": iid,
        "name": row["name"],
        "status": row["status"],
        "visibility": row["visibility"],
        "protected": False,
        "os_hidden": False,
        "owner": row["owner"],
        "checksum": row["checksum"],
        "os_hash_algo": "sha512" if row["checksum"] else None,
        "os_hash_value": (row["properties"] or {}).get("os_hash_value"),
        "size": row["size"],
        "virtual_size": None,
        "min_ram": row["min_ram"],
        "min_disk": row["min_disk"],
        "disk_format": row["disk_format"],
        "container_format": row["container_format"],
        "created_at": row["created_at"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        "updated_at": row["updated_at"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tags": [],
        "self": f"/v2/images/{iid}",
        "file": f"/v2/images/{iid}/file",
        "schema": "/v2/schemas/image",
    }
    for key, value in (row["properties"] or {}).items():
        if key not in doc:
            doc[key] = value
    return doc


def _version(base: str) -> dict:
    return {"id": "v2.16", "status": "CURRENT", "links": [{"rel": "self", "href": f"{base}/image/v2/"}]}


async def versions(request: web.Request) -> web.Response:
    return web.json_response({"versions": [_version(request.app["config"].public_url)]}, status=300)


async def list_images(request: web.Request) -> web.Response:
    ctx = context(request)
    q = request.query
    where = ["(visibility IN ('public', 'community') OR owner = $1 OR $2)"]
    args: list = [ctx.project_id, ctx.is_admin]

    def arg(v) -> str:
        args.append(v)
        return f"${len(args)}"

    if q.get("name"):
        where.append(f"name = {arg(q['name'])}")
    if q.get("status"):
        where.append(f"status = {arg(q['status'])}")
    if q.get("visibility") and q["visibility"] != "all":
        where.append(f"visibility = {arg(q['visibility'])}")
    if q.get("id"):
        ids = q["id"].removeprefix("in:").split(",")
        try:
            ids = [str(uuidlib.UUID(i.strip())) for i in ids]
        except ValueError:
            return web.json_response({"images": [], "first": "/v2/images", "schema": "/v2/schemas/images"})
        where.append(f"id = ANY({arg(ids)}::uuid[])")
    limit = 25
    if q.get("limit"):
        if not q["limit"].isdigit():
            raise errors.BadRequest("limit param must be an integer")
        limit = min(int(q["limit"]), 1000)
    async with request.app["db"].acquire() as conn:
        if q.get("marker"):
            marker = await conn.fetchrow(
                "SELECT created_at, id FROM images WHERE id::text = $1", q["marker"]
            )
            if marker is None:
                raise errors.BadRequest(f"marker [{q['marker']}] not found")
            where.append(f"(created_at, id) < ({arg(marker['created_at'])}, {arg(marker['id'])})")
        rows = await conn.fetch(
            f"SELECT * FROM images WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT {arg(limit)}",
            *args,
        )
    body: dict = {"images": [image_document(r) for r in rows], "first": "/v2/images", "schema": "/v2/schemas/images"}
    if len(rows) == limit:
        body["next"] = f"/v2/images?marker={rows[-1]['id']}&limit={limit}"
    return web.json_response(body)


async def show_image(request: web.Request) -> web.Response:
    ctx = context(request)
    image_id = request.match_info["image_id"]
    try:
        uuidlib.UUID(image_id)
    except ValueError:
        raise errors.NotFound(f"No image found with ID {image_id}") from None
    async with request.app["db"].acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM images WHERE id = $1::uuid", image_id)
    if row is None or not (
        row["visibility"] in ("public", "community") or row["owner"] == ctx.project_id or ctx.is_admin
    ):
        raise errors.NotFound(f"No image found with ID {image_id}")
    return web.json_response(image_document(row))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/image", versions)
    r.add_get("/image/", versions)
    r.add_get("/image/v2/images", list_images)
    r.add_get("/image/v2/images/{image_id}", show_image)
