"""Volumes: the project's list, create, attach to and detach from a server (through Nova's
os-volume_attachments, as Horizon does), delete. Every answer and error is Cinder's or Nova's."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from novalite.dashboard import framework as fw

ATTACHMENTS = "/compute/v2.1/servers/{server}/os-volume_attachments"


def volumes_path(request: web.Request) -> str:
    return f"/volume/v3/{quote(fw.session_of(request).project_id, safe='')}/volumes"


def server_choice(request: web.Request) -> str:
    server_id = str(fw.form_of(request).get("server_id", ""))
    if not fw.ID.match(server_id):
        raise fw.PageError(400, "Choose a server.")
    return quote(server_id, safe="")


async def index(request: web.Request) -> web.Response:
    answers = await fw.api_many(request, {"volumes": volumes_path(request) + "/detail",
                                          "servers": "/compute/v2.1/servers?limit=1000"})
    volumes, servers = answers["volumes"], answers["servers"]
    names = {s["id"]: s["name"] for s in servers.body.get("servers", [])} if servers.ok else {}
    return fw.render(request, "volumes.html", {
        "volumes": volumes.body.get("volumes", []) if volumes.ok else [], "servers": names,
        "error": "" if volumes.ok else volumes.message()})


async def create(request: web.Request) -> web.Response:
    form = fw.form_of(request)
    size = str(form.get("size", "")).strip()
    body = {"volume": {"name": str(form.get("name", "")), "size": int(size) if size.isdigit() else size}}
    return await fw.act(request, "POST", volumes_path(request), "Volume created.", "/volumes", body=body)


async def attach(request: web.Request) -> web.Response:
    volume_id = fw.path_id(request, "volume_id", "Volume")
    path = ATTACHMENTS.format(server=server_choice(request))
    return await fw.act(request, "POST", path, "Attach requested.", "/volumes",
                        body={"volumeAttachment": {"volumeId": volume_id}})


async def detach(request: web.Request) -> web.Response:
    volume_id = quote(fw.path_id(request, "volume_id", "Volume"), safe="")
    path = ATTACHMENTS.format(server=server_choice(request)) + f"/{volume_id}"
    return await fw.act(request, "DELETE", path, "Detach requested.", "/volumes")


async def delete(request: web.Request) -> web.Response:
    volume_id = quote(fw.path_id(request, "volume_id", "Volume"), safe="")
    return await fw.act(request, "DELETE", f"{volumes_path(request)}/{volume_id}", "Delete requested.", "/volumes")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/volumes", index)
    router.add_post("/volumes", create)
    router.add_post("/volumes/{volume_id}/attach", attach)
    router.add_post("/volumes/{volume_id}/detach", detach)
    router.add_post("/volumes/{volume_id}/delete", delete)
