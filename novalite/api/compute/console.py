"""An instance's consoles: ``os-getConsoleOutput`` and the ``os-getSerialConsole`` action.

Console output: the compute API asks the instance's host, whose virt driver
reads the last 100 KiB (Nova's MAX_CONSOLE_BYTES) of the serial log the domain
names; this returns the last ``length`` lines of it, as Nova's API does.
The serial console's URL (also asked for through ``remote-consoles``,
:mod:`.remote_consoles`) comes from :class:`novalite.compute.consoles.SerialConsoles`.
"""

from __future__ import annotations

import re

import asyncpg
from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute.common import at_least, authorize
from novalite.api.compute.validation import validate_body
from novalite.compute.consoles import SERIAL

POLICY = "os_compute_api:os-console-output"
POLICY_REMOTE = "os_compute_api:os-remote-consoles"
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f]")  # Nova strips these (not \t, \n)
_LENGTH = re.compile(r"^-?[0-9]+$")


def tail_lines(data: bytes, length: int | None) -> bytes:
    """Nova's _tail_log: the last ``length`` lines; None means all, 0 means nothing."""
    if length is None:
        return data
    if length == 0:
        return b""
    return b"\n".join(data.split(b"\n")[-length:])


def parse_length(body: dict) -> int | None:
    """Validate the action body as Nova's schema does; -1 or null mean the whole log."""
    if not isinstance(body, dict) or set(body) != {"os-getConsoleOutput"}:
        raise errors.BadRequest("Invalid input for field/attribute os-getConsoleOutput.")
    args = body["os-getConsoleOutput"]
    if not isinstance(args, dict) or set(args) - {"length"}:
        raise errors.BadRequest(
            "Invalid input for field/attribute os-getConsoleOutput. Value: "
            f"{args}. Additional properties are not allowed"
        )
    length = args.get("length")
    if length is None:
        return None
    if isinstance(length, bool) or not isinstance(length, int | str) or (
        isinstance(length, str) and not _LENGTH.match(length)
    ):
        raise errors.BadRequest(f"Invalid input for field/attribute length. Value: {length}. "
                                f"{length!r} is not of type 'integer', 'string', 'null'")
    value = int(length)
    if value < -1:
        raise errors.BadRequest(f"Invalid input for field/attribute length. Value: {length}. "
                                f"{value} is less than the minimum of -1")
    return None if value == -1 else value


def _simulated(request: web.Request, host: str) -> bool:
    compute_host = request.app[keys.HOSTS].get(host)
    return compute_host is not None and compute_host.simulated


def simulated_console(request: web.Request, inst: asyncpg.Record) -> bytes:
    """What a guest on a simulated (libvirt test driver) host "prints": no guest runs there, so
    this stands in for the serial log a real guest writes, and says so on its first line."""
    flavor = inst["flavor"] or {}
    name = request.app[keys.CONFIG].compute.instance_name_template % inst["id"]
    lines = [
        f"novalite: simulated console of {name} on test host {inst['host']} (no guest runs here)",
        f"Booting {inst['display_name']} ({inst['uuid']})",
        f"Memory: {flavor.get('memory_mb', 0)} MB, CPUs: {flavor.get('vcpus', 0)}",
        f"Image: {inst['image_ref'] or 'volume'}",
        f"Power state: {inst['power_state']} ({inst['vm_state']})",
        f"{inst['hostname'] or inst['display_name']} login: ",
    ]
    return "\n".join(lines).encode()


async def get_console_output(request: web.Request, inst: asyncpg.Record, body: dict) -> web.Response:
    """POST /servers/{id}/action {"os-getConsoleOutput": {"length": N}} → 200 {"output": "..."}.

    ``inst`` is the instance row the action dispatcher loaded (its 404 covers
    unknown servers). 409 while the instance has no host yet, is being
    deleted, or is still building with no console log written yet.
    """
    length = parse_length(body)
    authorize(request, POLICY, {"project_id": inst["project_id"], "user_id": inst["user_id"]})
    uuid = str(inst["uuid"])
    if inst["deleted"]:
        raise errors.NotFound(f"Instance {uuid} could not be found.")
    if not inst["host"]:
        raise errors.Conflict(f"Instance {uuid} is not ready")
    if inst["task_state"] == "deleting":
        raise errors.Conflict(
            f"Cannot 'get_console_output' instance {uuid} while it is in task_state deleting"
        )
    data = await request.app[keys.COMPUTE_API].get_console_output(inst)
    if data is None:
        if inst["vm_state"] == "building":
            raise errors.Conflict(f"Instance {uuid} is not ready")
        if _simulated(request, inst["host"]):
            data = simulated_console(request, inst)
        else:
            data = b""  # Nova's libvirt driver: a console whose log file is not there (yet) is empty
    output = tail_lines(data, length).decode("ascii", "replace")
    return web.json_response({"output": _CONTROL.sub("", output)})


GET_SERIAL = {"type": "object", "properties": {"os-getSerialConsole": {
    "type": "object", "properties": {"type": {"type": "string", "enum": ["serial"]}},
    "required": ["type"], "additionalProperties": False}},
    "required": ["os-getSerialConsole"], "additionalProperties": False}


async def console_url(request: web.Request, inst: asyncpg.Record, protocol: str, console_type: str) -> str:
    """A remote console's URL; only the serial protocol is offered (no VNC, SPICE or MKS here)."""
    if protocol != SERIAL:
        raise errors.BadRequest(f"Unavailable console type {console_type}.")
    return await request.app[keys.SERIAL_CONSOLES].get_serial_console(inst, console_type)


async def get_serial_console(request: web.Request, inst: asyncpg.Record, body: dict) -> web.Response:
    """POST /servers/{id}/action {"os-getSerialConsole": {"type": "serial"}} (2.1-2.5)
    → 200 {"console": {"type", "url"}}; from 2.6 remote-consoles replaces it (404)."""
    if at_least(request, 6):
        raise errors.NotFound("The resource could not be found.")
    validate_body(GET_SERIAL, body)
    authorize(request, POLICY_REMOTE, {"project_id": inst["project_id"]})
    console_type = body["os-getSerialConsole"]["type"]
    url = await console_url(request, inst, SERIAL, console_type)
    return web.json_response({"console": {"type": console_type, "url": url}})
