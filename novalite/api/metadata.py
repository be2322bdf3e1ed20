"""The metadata service over HTTP, as Nova's nova-api-metadata answers a guest.

One small aiohttp app per network (:func:`metadata_app`), served by
:class:`MetadataListeners` on the addresses guests reach it at (a configured network's
gateway; a tenant network's 169.254.169.254 through a socket made inside its DHCP
namespace, :meth:`MetadataListeners.serve_socket`); the network a
request arrived on plus its source address name the instance
(:meth:`novalite.compute.metadata.MetadataService.lookup`), an unknown address is 404.
Paths, as Nova serves them:

- ``/openstack`` → the versions; ``/openstack/<version>/`` → its files;
  ``meta_data.json``, ``user_data``, ``network_data.json``, ``vendor_data.json``,
  ``vendor_data2.json``, ``password`` (GET; POST once); ``/openstack/content/NNNN``;
- ``/`` → the EC2 versions; ``/<version>/`` → ``meta-data/`` (and ``user-data``);
  ``/<version>/meta-data/...`` the EC2 tree (a directory answers its listing).
"""

from __future__ import annotations

import socket
from typing import Any

import structlog
from aiohttp import web

from novalite import exception
from novalite.compute.metadata import MAX_PASSWORD_BYTES, InstanceDocuments, MetadataService
from novalite.virt.configdrive import VERSIONS

__all__ = ["EC2_VERSIONS", "MetadataListeners", "metadata_app"]

log = structlog.get_logger(__name__)

EC2_VERSIONS = ("1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15",
                "2008-02-01", "2008-09-01", "2009-04-04")
_SERVICE = web.AppKey("metadata_service", MetadataService)
_NETWORK = web.AppKey("metadata_network", str)


def _text(body: str | bytes, status: int = 200) -> web.Response:
    data = body.encode() if isinstance(body, str) else body
    return web.Response(status=status, body=data, content_type="text/plain", charset="utf-8")


def _listing(names: list[str]) -> web.Response:
    return _text("\n".join(names))


def _not_found() -> web.Response:
    return _text("404 Not Found\n\nThe resource could not be found.\n", status=404)


def _walk(tree: dict[str, Any], parts: list[str]) -> web.Response:
    """A leaf's text, or a directory's listing (subdirectories with a trailing "/", and
    ``public-keys``' ``0=<name>`` entries reached as ``0``)."""
    node: Any = tree
    for part in parts:
        if not isinstance(node, dict):
            return _not_found()
        key = next((k for k in node if k == part or k.split("=", 1)[0] == part), None)
        if key is None:
            return _not_found()
        node = node[key]
    if isinstance(node, dict):
        return _listing([k + "/" if isinstance(v, dict) and "=" not in k else k for k, v in node.items()])
    return _text(node)


async def _openstack(request: web.Request, docs: InstanceDocuments, parts: list[str]) -> web.Response:
    if not parts:
        return _listing([*VERSIONS, "latest"])
    version, rest = parts[0], parts[1:]
    if version == "content" and len(rest) == 1 and rest[0].isdigit():
        index = int(rest[0])
        return _text(docs.files[index]) if index < len(docs.files) else _not_found()
    if version not in (*VERSIONS, "latest") or len(rest) > 1:
        return _not_found()
    if not rest:
        return _listing([*docs.openstack, "password"])
    name = rest[0]
    if name == "password":
        return await _password(request, docs)
    if request.method != "GET" or name not in docs.openstack:
        return _not_found() if request.method == "GET" else _text("", status=405)
    if name.endswith(".json"):
        return web.Response(body=docs.openstack[name], content_type="application/json")
    return _text(docs.openstack[name])


async def _password(request: web.Request, docs: InstanceDocuments) -> web.Response:
    """GET: the password the guest posted ("" before); POST: store it once (Nova's password handler)."""
    if request.method == "GET":
        return _text(docs.password)
    if request.content_length is not None and request.content_length > MAX_PASSWORD_BYTES:
        return _text("Request is too large.", status=400)
    body = (await request.content.read(MAX_PASSWORD_BYTES + 1)).decode(errors="replace")
    try:
        await request.app[_SERVICE].set_password(docs.uuid, body)
    except exception.NovaliteException as exc:
        return _text(str(exc), status=exc.code)
    return _text("")


def _ec2(docs: InstanceDocuments, parts: list[str]) -> web.Response:
    if not parts:
        return _listing([*EC2_VERSIONS, "latest"])
    if parts[0] not in (*EC2_VERSIONS, "latest"):
        return _not_found()
    user_data = docs.openstack.get("user_data")
    if len(parts) == 1:
        return _listing(["meta-data/", *(["user-data"] if user_data is not None else [])])
    if parts[1] == "user-data" and len(parts) == 2:
        return _text(user_data) if user_data is not None else _not_found()
    if parts[1] == "meta-data":
        return _walk(docs.ec2, parts[2:])
    return _not_found()


async def handle(request: web.Request) -> web.Response:
    """Any path: find the instance from the listener's network and the source address, then answer."""
    if request.method not in ("GET", "HEAD", "POST"):
        return _text("", status=405)
    docs = await request.app[_SERVICE].lookup(request.app[_NETWORK], request.remote or "")
    if docs is None:
        log.info("metadata_unknown_address", network_id=request.app[_NETWORK], address=request.remote)
        return _not_found()
    parts = [p for p in request.path.split("/") if p]
    if parts[:1] == ["openstack"]:
        return await _openstack(request, docs, parts[1:])
    if request.method == "POST":
        return _text("", status=405)
    return _ec2(docs, parts)


def metadata_app(service: MetadataService, network_id: str) -> web.Application:
    """The metadata service of one network (no auth: the source address is the identity)."""
    app = web.Application(client_max_size=4096)
    app[_SERVICE] = service
    app[_NETWORK] = network_id
    app.router.add_route("*", "/{path:.*}", handle)
    return app


class MetadataListeners:
    """The listening sockets of the metadata service, one app per network; closed together."""

    def __init__(self, service: MetadataService) -> None:
        self.service = service
        self._runners: list[web.AppRunner] = []
        self._sockets: dict[str, web.AppRunner] = {}  # network id → the runner of its namespace's socket

    async def listen(self, network_id: str, host: str, port: int) -> int:
        """Serve ``network_id``'s metadata on ``host:port`` (port 0: any); returns the bound port.
        OSError when the address cannot be bound (not on this machine, in use)."""
        runner = web.AppRunner(metadata_app(self.service, network_id), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runners.append(runner)
        return runner.addresses[0][1]

    async def serve_socket(self, network_id: str, sock: socket.socket | None) -> None:
        """Serve ``network_id``'s metadata on a listening socket made for it (a tenant network's, in
        its DHCP namespace), instead of the one served so far; None: stop and close it."""
        old = self._sockets.pop(network_id, None)
        if old is not None:
            await old.cleanup()  # closes the socket, which releases its namespace
        if sock is None:
            return
        runner = web.AppRunner(metadata_app(self.service, network_id), access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._sockets[network_id] = runner

    async def close(self) -> None:
        for runner in [*self._runners, *self._sockets.values()]:
            await runner.cleanup()
        self._runners.clear()
        self._sockets.clear()
