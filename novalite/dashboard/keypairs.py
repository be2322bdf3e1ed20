"""Key pairs: the user's list, import a public key, create one (Nova generates it) and take its
private key once: the answer to the create is the only page that ever holds it. The dashboard
keeps no copy (nothing is stored, the page is ``no-store``); the page's script saves it as a file."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from novalite.dashboard import framework as fw

KEYPAIRS = "/compute/v2.1/os-keypairs"
GENERATING_VERSION = "compute 2.91"  # Nova stopped generating key pairs at 2.92


async def index(request: web.Request) -> web.Response:
    answer = await fw.api(request, "GET", KEYPAIRS)
    keypairs = [k["keypair"] for k in answer.body.get("keypairs", [])] if answer.ok else []
    return fw.render(request, "keypairs.html", {"keypairs": keypairs, "error": "" if answer.ok else answer.message()})


async def import_key(request: web.Request) -> web.Response:
    form = fw.form_of(request)
    body = {"keypair": {"name": str(form.get("name", "")), "public_key": str(form.get("public_key", ""))}}
    return await fw.act(request, "POST", KEYPAIRS, "Key pair imported.", "/keypairs", body=body)


async def create(request: web.Request) -> web.Response:
    """POST: Nova makes the pair; its private key goes into this one answer and nowhere else."""
    body = {"keypair": {"name": str(fw.form_of(request).get("name", ""))}}
    answer = await fw.api(request, "POST", KEYPAIRS, body=body, headers={"OpenStack-API-Version": GENERATING_VERSION})
    if not answer.ok:
        fw.session_of(request).flash = answer.message()
        raise fw.redirect("/keypairs")
    return fw.render(request, "keypair_created.html", {"keypair": answer.body["keypair"]}, status=201)


async def delete(request: web.Request) -> web.Response:
    name = str(fw.form_of(request).get("name", ""))
    if name in ("", ".", ".."):  # never a dot segment in the API path
        raise fw.PageError(404, f"Keypair {name} could not be found.")
    return await fw.act(request, "DELETE", f"{KEYPAIRS}/{quote(name, safe='')}", "Key pair deleted.", "/keypairs")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/keypairs", index)
    router.add_post("/keypairs/import", import_key)
    router.add_post("/keypairs/create", create)
    router.add_post("/keypairs/delete", delete)
