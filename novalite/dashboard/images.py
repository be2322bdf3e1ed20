"""Images: the project's list, an upload from the browser with progress, delete.

The browser never holds the token: the page's script asks the dashboard to create
the image record (Glance ``POST /v2/images``), then PUTs the file's bytes to the
dashboard, which streams them on to Glance's ``PUT /v2/images/{id}/file`` as the
user as they arrive (nothing is buffered whole; Glance checks size and quota)."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from novalite.dashboard import framework as fw

IMAGES = "/image/v2/images"
DISK_FORMATS = ("qcow2", "raw", "iso", "vmdk", "vdi", "vhd", "vhdx", "ami", "ari", "aki")
VISIBILITIES = ("private", "shared", "community", "public")


def image_path(request: web.Request) -> str:
    return f"{IMAGES}/{quote(fw.path_id(request, 'image_id'), safe='')}"


async def index(request: web.Request) -> web.Response:
    answer = await fw.api(request, "GET", IMAGES, params={"limit": "1000"})
    images = answer.body.get("images", []) if answer.ok else []
    return fw.render(request, "images.html", {"images": images, "error": "" if answer.ok else answer.message(),
                                              "disk_formats": DISK_FORMATS, "visibilities": VISIBILITIES,
                                              "me": fw.session_of(request).project_id})


async def create(request: web.Request) -> web.Response:
    """POST (the upload script): the image record; JSON with where to PUT its bytes, or the API's error."""
    form = fw.form_of(request)
    body = {"name": str(form.get("name", "")), "disk_format": str(form.get("disk_format", "")),
            "container_format": "bare", "visibility": str(form.get("visibility", "private"))}
    answer = await fw.api(request, "POST", IMAGES, body=body)
    if not answer.ok:
        return web.json_response({"error": answer.message()}, status=answer.status)
    image_id = answer.body["id"]
    return web.json_response({"id": image_id, "upload_url": fw.url(f"/images/{quote(image_id)}/data")}, status=201)


async def upload(request: web.Request) -> web.Response:
    """PUT: the file's bytes, streamed to Glance as they arrive; JSON with the API's answer."""
    headers = {"Content-Type": "application/octet-stream"}
    if request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    answer = await fw.api(request, "PUT", f"{image_path(request)}/file", data=request.content, headers=headers)
    if not answer.ok:
        return web.json_response({"error": answer.message()}, status=answer.status)
    return web.json_response({"ok": True})


async def delete(request: web.Request) -> web.Response:
    return await fw.act(request, "DELETE", image_path(request), "Image deleted.", "/images")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/images", index)
    router.add_post("/images", create)
    router.add_put("/images/{image_id}/data", upload)
    router.add_post("/images/{image_id}/delete", delete)
