"""The serial console's websocket (Nova's serial proxy), on the API's own port.

``GET /console/serial?token=<token>`` with a websocket upgrade (subprotocol
``binary``, as Nova's proxy offers): the token is consumed
(:meth:`novalite.compute.consoles.SerialConsoles.connect` -- unknown, used or
expired: 401, before the upgrade), then bytes flow both ways between the
websocket and the domain's serial port until either side closes, which closes
the other. No Keystone token is needed: the console token is the credential.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import WSMsgType, web

from novalite.api import errors, keys
from novalite.compute.consoles import SERIAL_PATH
from novalite.virt.driver import ConsoleWriter, VirtError

log = structlog.get_logger(__name__)

READ_CHUNK = 4096


async def _to_client(reader: asyncio.StreamReader, ws: web.WebSocketResponse) -> None:
    while data := await reader.read(READ_CHUNK):
        await ws.send_bytes(data)


async def _to_guest(ws: web.WebSocketResponse, writer: ConsoleWriter) -> None:
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            await writer.write(msg.data)
        elif msg.type == WSMsgType.TEXT:
            await writer.write(msg.data.encode())


async def serial(request: web.Request) -> web.StreamResponse:
    """Relay one websocket to the serial console its token opens."""
    token = request.query.get("token", "")
    ws = web.WebSocketResponse(protocols=("binary",))
    if not ws.can_prepare(request).ok:
        raise errors.BadRequest("A websocket upgrade is expected here.")
    if not token:
        raise errors.Unauthorized("The console token is invalid or has expired")
    uuid, reader, writer = await request.app[keys.SERIAL_CONSOLES].connect(token)
    structlog.contextvars.bind_contextvars(instance_uuid=uuid)
    try:
        await ws.prepare(request)
        log.info("console_session_started")
        with request.app[keys.FOREGROUND].waiting():
            legs = [asyncio.ensure_future(_to_client(reader, ws)), asyncio.ensure_future(_to_guest(ws, writer))]
            try:
                await asyncio.wait(legs, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for leg in legs:
                    leg.cancel()
                await asyncio.gather(*legs, return_exceptions=True)
    finally:
        with contextlib.suppress(VirtError):
            await writer.close()
        await ws.close()
        log.info("console_session_ended")
    return ws


def add_routes(app: web.Application) -> None:
    app.router.add_get(SERIAL_PATH, serial)
