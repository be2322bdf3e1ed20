"""Instances: the project's servers (live), the launch form, and one server's page (overview, boot
timeline, scheduler verdicts, console log, actions). Every figure comes from the compute API."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from aiohttp import web

from novalite.api import keys
from novalite.dashboard import framework as fw
from novalite.dashboard import server_actions as buttons

SERVERS = "/compute/v2.1/servers"
POWER_STATES = {0: "No state", 1: "Running", 3: "Paused", 4: "Shut down", 6: "Crashed", 7: "Suspended"}
TIMELINE_ACTIONS = 10  # the newest actions drawn on the instance page
CONSOLE_LINES = 200


def parse_time(text: str | None) -> datetime | None:
    """An API timestamp (``...Z`` or naive UTC) as an aware datetime."""
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def age(created: str | None, now: datetime) -> str:
    """How long ago, in the largest whole unit: 45s, 12m, 3h, 9d."""
    moment = parse_time(created)
    if moment is None:
        return ""
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def addresses(server: dict) -> str:
    return ", ".join(a["addr"] for nets in (server.get("addresses") or {}).values() for a in nets)


def row(server: dict, image_names: dict[str, str], now: datetime) -> dict:
    """What one line of the instances table shows (the HTML page and its JSON updates alike)."""
    image = image_id(server)
    task = server.get("OS-EXT-STS:task_state")
    return {
        "id": server["id"],
        "name": server.get("name", ""),
        "status": server.get("status", ""),
        "task_state": task or "",
        "power_state": POWER_STATES.get(server.get("OS-EXT-STS:power_state"), ""),
        "addresses": addresses(server),
        "flavor": (server.get("flavor") or {}).get("original_name", ""),
        "image": image_names.get(image, image[:8]) if image else "(volume)",
        "host": server.get("OS-EXT-SRV-ATTR:host") or "",
        "age": age(server.get("created"), now),
        "locked": bool(server.get("locked")),
        "busy": bool(task) or server.get("status") in ("BUILD", "REBOOT", "HARD_REBOOT", "DELETED"),
    }


def list_query(request: web.Request) -> dict[str, str]:
    """The API query of the instances list: the filters and marker the page was given, and a page size."""
    page_size = request.config_dict[keys.CONFIG].dashboard.page_size
    query = {k: request.query[k] for k in ("name", "status", "marker") if request.query.get(k)}
    limit = request.query.get("limit", "")
    query["limit"] = limit if limit.isdigit() and 0 < int(limit) <= 1000 else str(page_size)
    return query


async def images(request: web.Request) -> list[dict]:
    """The images the user sees (for names in the tables and the rebuild picker)."""
    answer = await fw.api(request, "GET", "/image/v2/images", params={"limit": "1000"})
    return (answer.body or {}).get("images", []) if answer.ok else []


def names_of(found: list[dict]) -> dict[str, str]:
    return {i["id"]: i.get("name") or i["id"][:8] for i in found}


async def image_names(request: web.Request) -> dict[str, str]:
    return names_of(await images(request))


def image_id(server: dict) -> str:
    image = server.get("image") or {}
    return image.get("id", "") if isinstance(image, dict) else ""  # "" when booted from a volume


async def known_image_names(request: web.Request, servers: list[dict]) -> dict[str, str]:
    """The names of the servers' images, asked of the image API only when one is new to this session:
    the live list polls every second, and in a boot storm each API call waits behind the storm's."""
    session = fw.session_of(request)
    if not {image_id(s) for s in servers} - {""} <= session.image_names.keys():
        session.image_names = await image_names(request)
    return session.image_names


async def server_rows(request: web.Request) -> dict:
    """One page of the project's servers: rows, the next page's marker, the API's error if any."""
    query = list_query(request)
    servers = await fw.api(request, "GET", f"{SERVERS}/detail", params=query)
    if not servers.ok:
        return {"rows": [], "next": None, "error": servers.message()}
    now = datetime.now(UTC)
    found = servers.body.get("servers", [])
    names = await known_image_names(request, found)
    rows = [row(s, names, now) for s in found]
    full = len(found) == int(query["limit"])
    return {"rows": rows, "next": rows[-1]["id"] if full and rows else None, "error": ""}


async def index(request: web.Request) -> web.Response:
    page = await server_rows(request)
    filters = {k: request.query.get(k, "") for k in ("name", "status")}
    next_query = urlencode({**{k: v for k, v in filters.items() if v}, "marker": page["next"]}) if page["next"] else ""
    poll = fw.url("/instances.json") + ("?" + request.query_string if request.query_string else "")
    return fw.render(request, "instances.html", {**page, "filters": filters, "next_query": next_query,
                                                 "poll_url": poll, "statuses": STATUS_FILTERS,
                                                 "marker": request.query.get("marker", "")})


STATUS_FILTERS = ("ACTIVE", "BUILD", "SHUTOFF", "ERROR", "REBOOT", "PAUSED", "SUSPENDED", "SHELVED_OFFLOADED")


async def index_json(request: web.Request) -> web.Response:
    """The instances table's live update: the same page of rows, as JSON."""
    return web.json_response(await server_rows(request))


# --- launch ---------------------------------------------------------------------------------------

LAUNCH_LISTS = {
    "images": "/image/v2/images?limit=1000",
    "flavors": "/compute/v2.1/flavors/detail",
    "networks": "/networking/v2.0/networks",
    "ports": "/networking/v2.0/ports",
    "keypairs": "/compute/v2.1/os-keypairs",
    "security_groups": "/networking/v2.0/security-groups",
    "zones": "/compute/v2.1/os-availability-zone",
}


async def launch_choices(request: web.Request) -> dict:
    """What the launch form offers, each list as the user's API lists it."""
    answers = await fw.api_many(request, LAUNCH_LISTS)
    body = {name: (a.body or {}) if a.ok else {} for name, a in answers.items()}
    return {
        "images": [i for i in body["images"].get("images", []) if i.get("status") == "active"],
        "flavors": body["flavors"].get("flavors", []),
        "networks": body["networks"].get("networks", []),
        "ports": [p for p in body["ports"].get("ports", []) if not p.get("device_id")],
        "keypairs": [k["keypair"] for k in body["keypairs"].get("keypairs", [])],
        "security_groups": body["security_groups"].get("security_groups", []),
        "zones": [z["zoneName"] for z in body["zones"].get("availabilityZoneInfo", [])
                  if z.get("zoneState", {}).get("available")],
    }


def launch_body(form) -> dict:
    """The create request the form describes; the API validates it (its errors go back on the form)."""
    count = str(form.get("count", "1")).strip() or "1"
    number: int | str = int(count) if count.isdigit() else count
    server: dict = {"name": form.get("name", ""), "imageRef": form.get("image", ""),
                    "flavorRef": form.get("flavor", ""), "min_count": number, "max_count": number}
    kind, _, ident = str(form.get("network", "auto")).partition(":")
    server["networks"] = [{"uuid": ident}] if kind == "net" else [{"port": ident}] if kind == "port" else kind
    if form.get("key_name"):
        server["key_name"] = form["key_name"]
    if groups := form.getall("security_groups", []):
        server["security_groups"] = [{"name": g} for g in groups]
    if form.get("user_data"):
        server["user_data"] = base64.b64encode(str(form["user_data"]).encode()).decode()
    if form.get("availability_zone"):
        server["availability_zone"] = form["availability_zone"]
    return {"server": server}


async def launch_form(request: web.Request) -> web.Response:
    return fw.render(request, "launch.html", {**await launch_choices(request), "values": {}, "error": ""})


async def launch(request: web.Request) -> web.Response:
    """POST: the create request; on an API error the form again, with its message and the values."""
    form = fw.form_of(request)
    answer = await fw.api(request, "POST", SERVERS, body=launch_body(form))
    if answer.ok:
        count = launch_body(form)["server"]["min_count"]
        fw.session_of(request).flash = f"Launching {count} instance{'s' * (count != 1)}."
        raise fw.redirect("/instances")
    values = {k: form.getall(k) if k == "security_groups" else form.get(k, "") for k in form}
    return fw.render(request, "launch.html", {**await launch_choices(request), "values": values,
                                              "error": answer.message()}, status=answer.status)


# --- one instance -----------------------------------------------------------------------------------

def server_path(request: web.Request) -> str:
    return f"{SERVERS}/{quote(fw.path_id(request, 'server_id', 'Instance'), safe='')}"


def timeline(action: dict, now: datetime) -> dict:
    """An instance action as bars: each event's offset and width in % of the action's span."""
    events = sorted(action.get("events") or [], key=lambda e: e.get("start_time") or "")
    start = parse_time(action.get("start_time")) or now
    ends = [parse_time(e.get("finish_time")) or now for e in events]  # an action may have no events (a lock)
    span = max((max(ends, default=start) - start).total_seconds(), 1e-3)
    steps = []
    for event, end in zip(events, ends, strict=True):
        began = parse_time(event.get("start_time")) or start
        seconds = (end - began).total_seconds()
        steps.append({"event": event["event"], "start": event.get("start_time") or "",
                      "finish": event.get("finish_time") or "", "result": event.get("result") or "running",
                      "duration_ms": round(seconds * 1000, 1),
                      "offset": round(100 * (began - start).total_seconds() / span, 2),
                      "width": max(round(100 * seconds / span, 2), 0.3)})
    return {"action": action["action"], "request_id": action["request_id"], "start": action.get("start_time"),
            "message": action.get("message") or "", "total_ms": round(span * 1000, 1), "steps": steps}


def verdict_matrix(scheduling: dict) -> list[dict]:
    """Hosts × filters: ✓ passed, ✗ removed it (with why), blank: not run on that host."""
    filters = scheduling.get("filters", [])
    rows = []
    for entry in scheduling.get("table", []):
        cells, removed_by = [], entry.get("filter") if entry.get("result") == "rejected" else None
        seen_reject = removed_by not in filters  # removed after the filters (claims, forced hosts)
        for name in filters:
            if seen_reject and removed_by in filters:
                cells.append({"mark": "", "title": "not run"})
            elif name == removed_by:
                cells.append({"mark": "✗", "title": entry.get("reason", "")})
                seen_reject = True
            else:
                cells.append({"mark": "✓", "title": "passed"})
        if entry.get("host") == "...":
            cells = [{"mark": "", "title": ""} for _ in filters]
        rows.append({**entry, "cells": cells})
    return rows


async def console_text(request: web.Request, path: str) -> str:
    answer = await fw.api(request, "POST", f"{path}/action", body={"os-getConsoleOutput": {"length": CONSOLE_LINES}})
    return answer.body.get("output", "") if answer.ok else f"({answer.message()})"


async def timelines(request: web.Request, path: str, now: datetime) -> list[dict]:
    listing = await fw.api(request, "GET", f"{path}/os-instance-actions")
    if not listing.ok:
        return []
    actions = listing.body.get("instanceActions", [])[:TIMELINE_ACTIONS]
    details = await asyncio.gather(*(fw.api(request, "GET", f"{path}/os-instance-actions/{quote(a['request_id'])}")
                                     for a in actions))
    return [timeline(d.body["instanceAction"], now) for d in details if d.ok]


async def scheduling(request: web.Request, path: str) -> dict:
    answer = await fw.api(request, "GET", f"{path}/os-scheduling")
    if not answer.ok:
        return {"error": answer.message()}
    doc = answer.body["scheduling"]
    return {**doc, "matrix": verdict_matrix(doc), "error": ""}


async def flavors(request: web.Request) -> list[dict]:
    """The flavors the user may pick (the resize picker)."""
    answer = await fw.api(request, "GET", "/compute/v2.1/flavors/detail")
    return (answer.body or {}).get("flavors", []) if answer.ok else []


def action_buttons(request: web.Request, server: dict) -> list[dict]:
    """Every button of the page, each with whether it shows now (the page's script updates that live)."""
    shown = buttons.allowed(request, fw.session_of(request), server)
    return [{"name": name, "label": b.label, "picker": b.picker, "shown": name in shown,
             "confirm": buttons.confirm_text(name, server.get("name", ""))} for name, b in buttons.BUTTONS.items()]


async def detail(request: web.Request) -> web.Response:
    path = server_path(request)
    server = (await fw.api_ok(request, "GET", path))["server"]
    now = datetime.now(UTC)
    found, flavor_list, steps, verdicts, console = await asyncio.gather(
        images(request), flavors(request), timelines(request, path, now), scheduling(request, path),
        console_text(request, path))
    return fw.render(request, "instance.html", {
        "server": server, "row": row(server, names_of(found), now), "timelines": steps, "scheduling": verdicts,
        "console": console, "metadata": server.get("metadata") or {}, "buttons": action_buttons(request, server),
        "images": [i for i in found if i.get("status") == "active"], "flavors": flavor_list,
        "state_url": fw.url(f"/instances/{quote(server['id'])}/state.json"),
        "console_url": fw.url(f"/instances/{quote(server['id'])}/console.json"),
        "terminal_url": fw.url(f"/instances/{quote(server['id'])}/console-url"),
    })


async def state_json(request: web.Request) -> web.Response:
    """The instance page's live fields; ``gone`` once the server is deleted."""
    answer = await fw.api(request, "GET", server_path(request))
    if answer.status == 404:
        return web.json_response({"gone": True})
    if not answer.ok:
        raise fw.PageError(answer.status, answer.message())
    server = answer.body["server"]
    return web.json_response({"gone": False, "row": row(server, {}, datetime.now(UTC)),
                              "actions": buttons.allowed(request, fw.session_of(request), server)})


async def console_json(request: web.Request) -> web.Response:
    return web.json_response({"output": await console_text(request, server_path(request))})


async def console_url(request: web.Request) -> web.Response:
    """POST (the page's Connect button): a fresh serial console URL from the API, as the user;
    JSON ``{"url"}`` for the page's terminal, or ``{"error"}`` with the API's message."""
    body = {"remote_console": {"protocol": "serial", "type": "serial"}}
    answer = await fw.api(request, "POST", f"{server_path(request)}/remote-consoles", body=body)
    if not answer.ok:
        return web.json_response({"error": answer.message()}, status=answer.status)
    return web.json_response({"url": answer.body["remote_console"]["url"]})


async def server_action(request: web.Request) -> web.Response:
    """POST: one of the page's actions; the API's answer (an error, say a locked server) is shown next."""
    path = server_path(request)
    form = fw.form_of(request)
    name = str(form.get("action", ""))
    if name not in buttons.BUTTONS:
        raise fw.PageError(400, f"Unknown action {name!r}.")
    button = buttons.BUTTONS[name]
    body = button.body(form)
    answer = await (fw.api(request, "DELETE", path) if body is None
                    else fw.api(request, "POST", f"{path}/action", body=body))
    session = fw.session_of(request)
    session.flash = f"{button.label} requested." if answer.ok else answer.message()
    if name == "delete" and answer.ok:
        raise fw.redirect("/instances")
    raise fw.redirect(f"/instances/{quote(request.match_info['server_id'])}")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/instances", index)
    router.add_get("/instances.json", index_json)
    router.add_get("/instances/launch", launch_form)
    router.add_post("/instances/launch", launch)
    router.add_get("/instances/{server_id}", detail)
    router.add_get("/instances/{server_id}/state.json", state_json)
    router.add_get("/instances/{server_id}/console.json", console_json)
    router.add_post("/instances/{server_id}/action", server_action)
    router.add_post("/instances/{server_id}/console-url", console_url)
