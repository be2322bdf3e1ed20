"""Nova's image proxy API (``/images``, 2.1 to 2.35): show and delete an image through Nova.

Nova answers from Glance with the caller's token; here the same Glance rules
(visibility, ``get_image``/``delete_image`` policy) are applied to the image rows,
and the answer is Nova's view (nova/api/openstack/compute/views/images.py):
status SAVING while queued or saving, a progress figure, the properties as
``metadata``, the server a snapshot was made from. From 2.36 the proxy is gone (404).
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute.common import compute_url, proxy_only
from novalite.api.image import images as glance

STATUS = {"active": "ACTIVE", "queued": "SAVING", "saving": "SAVING", "deleted": "DELETED",
          "pending_delete": "DELETED", "killed": "ERROR"}
PROGRESS = {"queued": 25, "saving": 50, "active": 100}


def _links(request: web.Request, collection: str, ident: str) -> list[dict]:
    base = compute_url(request)
    return [{"rel": "self", "href": f"{base}/v2.1/{collection}/{ident}"},
            {"rel": "bookmark", "href": f"{base}/{collection}/{ident}"}]


def image_view(request: web.Request, row: asyncpg.Record) -> dict:
    """Nova's ViewBuilder.show."""
    iid = str(row["id"])
    props = dict(row["properties"] or {})
    doc = {
        "id": iid,
        "name": row["name"],
        "minRam": int(row["min_ram"] or 0),
        "minDisk": int(row["min_disk"] or 0),
        "metadata": props,
        "created": glance._ts(row["created_at"]),
        "updated": glance._ts(row["updated_at"]),
        "status": STATUS.get(row["status"], "UNKNOWN"),
        "progress": PROGRESS.get(row["status"], 0),
        "OS-EXT-IMG-SIZE:size": row["size"],
        "links": [*_links(request, "images", iid),
                  {"rel": "alternate", "type": "application/vnd.openstack.image",
                   "href": f"{request.app[keys.CONFIG].public_url}/image/images/{iid}"}],
    }
    if props.get("instance_uuid") is not None:
        doc["server"] = {"id": props["instance_uuid"], "links": _links(request, "servers", props["instance_uuid"])}
    disk_config = props.get("auto_disk_config")
    if disk_config is not None:
        doc["OS-DCF:diskConfig"] = "AUTO" if str(disk_config).lower() in ("1", "t", "true", "on", "y", "yes") \
            else "MANUAL"
    return doc


async def show_image(request: web.Request) -> web.Response:
    proxy_only(request)
    image_id = request.match_info["image_id"]
    async with request.app[keys.DB].acquire() as conn:
        try:
            row = await glance.visible_image(request, conn, image_id)
        except errors.NotFound:
            raise errors.NotFound("Image not found.") from None
    return web.json_response({"image": image_view(request, row)})


async def delete_image(request: web.Request) -> web.Response:
    proxy_only(request)
    image_id = request.match_info["image_id"]
    async with request.app[keys.DB].acquire() as conn:
        try:
            row = await glance.owned_image(request, conn, image_id, "delete_image")
        except errors.NotFound:
            raise errors.NotFound("Image not found.") from None
        except errors.Forbidden:
            raise errors.Forbidden("You are not allowed to delete the image.") from None
        if row["protected"]:
            raise errors.Forbidden("You are not allowed to delete the image.")
        if not await glance.db.delete(conn, row["id"]):
            raise errors.NotFound("Image not found.")
    glance.store(request).delete(str(row["id"]))
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/compute/v2.1/images/{image_id}", show_image)
    app.router.add_delete("/compute/v2.1/images/{image_id}", delete_image)
