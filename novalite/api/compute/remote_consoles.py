"""Nova's remote consoles, protocol serial: ``POST /servers/{id}/remote-consoles`` (2.6+) and
the ``os-getSerialConsole`` action (2.1-2.5, in :mod:`.console`). ``openstack console url show
--serial`` comes here.

The answer carries a ``ws://`` URL on this process's own port with a single-use,
short-lived token (:mod:`novalite.compute.consoles`); :mod:`novalite.api.console_proxy`
serves that websocket. VNC, SPICE and MKS are not offered: 400 "Unavailable console type".
"""

from __future__ import annotations

from aiohttp import web

from novalite.api import errors
from novalite.api.compute.common import at_least, authorize
from novalite.api.compute.console import POLICY_REMOTE, console_url
from novalite.api.compute.servers import load_instance
from novalite.api.compute.validation import validate_body
from novalite.api.middleware import read_json


def _schema(protocols: list[str], types: list[str]) -> dict:
    """Nova's create_v26/create_v28 request schema."""
    return {"type": "object", "properties": {"remote_console": {
        "type": "object",
        "properties": {"protocol": {"type": "string", "enum": protocols},
                       "type": {"type": "string", "enum": types}},
        "required": ["protocol", "type"], "additionalProperties": False}},
        "required": ["remote_console"], "additionalProperties": False}


CREATE_V26 = _schema(["vnc", "spice", "serial"], ["novnc", "xvpvnc", "spice-html5", "serial"])
CREATE_V28 = _schema(["vnc", "spice", "serial", "mks"], ["novnc", "xvpvnc", "spice-html5", "serial", "webmks"])


async def create(request: web.Request) -> web.Response:
    """POST /servers/{id}/remote-consoles → 200 {"remote_console": {protocol, type, url}}."""
    if not at_least(request, 6):
        raise errors.NotFound("The resource could not be found.")
    body = await read_json(request)
    validate_body(CREATE_V28 if at_least(request, 8) else CREATE_V26, body)
    inst = await load_instance(request)
    authorize(request, POLICY_REMOTE, {"project_id": inst["project_id"]})
    protocol, console_type = body["remote_console"]["protocol"], body["remote_console"]["type"]
    url = await console_url(request, inst, protocol, console_type)
    return web.json_response({"remote_console": {"protocol": protocol, "type": console_type, "url": url}})


# handler → the Nova rules it checks (tests/test_policy_services.py reads these tables).
HANDLER_RULES: dict[str, tuple[str, ...]] = {"create": (POLICY_REMOTE,)}


def add_routes(app: web.Application) -> None:
    app.router.add_post("/compute/v2.1/servers/{server_id}/remote-consoles", create)
