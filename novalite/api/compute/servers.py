"""/servers: create, list, show, update, delete, metadata and instance actions.

Handlers stay thin: parse and authorize here, validate and provision in
``novalite.compute.api``; the server list's SQL is ``novalite.db.server_list``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg
import orjson
from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute import actions as server_actions
from novalite.api.compute import console, schemas, views
from novalite.api.compute.common import at_least, authorize, bool_query, context, links
from novalite.api.middleware import read_json
from novalite.api.pagination import capped, page_limit
from novalite.compute.api import ComputeAPI, CreateRequest, generate_password
from novalite.compute.rebuild import RebuildRequest
from novalite.compute.states import states_from_status
from novalite.context import RequestContext
from novalite.db import catalog, is_uuid, server_list
from novalite.db import instances as db
from novalite.network.api import addresses_doc

if TYPE_CHECKING:
    from multidict import MultiDictProxy

SORT_KEYS = {
    "created_at", "display_name", "updated_at", "launched_at", "terminated_at", "uuid", "vm_state",
    "task_state", "power_state", "availability_zone", "host", "node", "hostname", "project_id", "user_id",
    "image_ref", "key_name", "launch_index", "locked", "reservation_id", "root_device_name", "display_description",
    "config_drive", "kernel_id", "ramdisk_id", "access_ip_v4", "access_ip_v6", "auto_disk_config", "progress",
}
SORT_ALIASES = {"name": "display_name", "id": "id", "description": "display_description", "flavor": "flavor"}


def compute_api(request: web.Request) -> ComputeAPI:
    return request.app[keys.COMPUTE_API]


def _target(inst: asyncpg.Record) -> dict:
    return {"project_id": inst["project_id"], "user_id": inst["user_id"]}


async def load_instance(
    request: web.Request, uuid: str | None = None,
    read: Callable[[asyncpg.Connection, str], Awaitable[asyncpg.Record | None]] = db.get,
) -> asyncpg.Record:
    """The instance named in the path, or Nova's 404 (also for other projects' servers);
    ``read``: how its row is read (the show reads more with it)."""
    uuid = uuid or request.match_info["server_id"]
    ctx = context(request)
    if not is_uuid(uuid):
        raise errors.NotFound(f"Instance {uuid} could not be found.")
    async with request.app[keys.DB].acquire() as conn:
        inst = await read(conn, uuid)
    if inst is None or (inst["project_id"] != ctx.project_id and not request.app[keys.POLICY].check(
        "os_compute_api:servers:show", ctx.creds(), _target(inst)
    )):
        raise errors.NotFound(f"Instance {uuid} could not be found.")
    return inst


# -- create -------------------------------------------------------------------

async def create(request: web.Request) -> web.Response:
    ctx = context(request)
    version = request[keys.VERSION]
    body = await read_json(request)
    model, hints = schemas.parse_create(body, version)
    target = {"project_id": ctx.project_id, "user_id": ctx.user_id, "availability_zone": model.availability_zone}
    authorize(request, "os_compute_api:servers:create", target)
    az, host, node = parse_availability_zone(model.availability_zone)
    if model.host or model.hypervisor_hostname:
        authorize(request, "compute:servers:create:requested_destination", target)
    if host or node:
        authorize(request, "os_compute_api:servers:create:forced_host", target)
    if model.trusted_image_certificates:
        authorize(request, "os_compute_api:servers:create:trusted_certs", target)
    if isinstance(model.networks, list) and model.networks:
        authorize(request, "os_compute_api:servers:create:attach_network", target)
    legacy = bool(model.block_device_mapping) and not model.block_device_mapping_v2
    bdm_items = model.block_device_mapping_v2 or model.block_device_mapping or []
    bdms = [b.model_dump(exclude_none=True) for b in bdm_items]
    if any(b.get("source_type") in ("volume", "snapshot") or b.get("volume_id") for b in bdms):
        authorize(request, "os_compute_api:servers:create:attach_volume", target)
    if not model.imageRef and not bdms:
        raise errors.BadRequest("Missing imageRef attribute")
    image_ref = model.imageRef
    if image_ref and not _looks_like_image_ref(image_ref):
        raise errors.BadRequest("Invalid imageRef provided.")
    req = CreateRequest(
        name=model.name,
        flavor_ref=str(model.flavorRef).rstrip("/").rsplit("/", 1)[-1],
        image_ref=image_ref,
        description=model.description if at_least(request, 19) else model.name,
        hostname=model.hostname,
        admin_password=model.adminPass,
        access_ip_v4=model.accessIPv4,
        access_ip_v6=model.accessIPv6,
        availability_zone=az,
        forced_host=host or model.host,
        forced_node=node or model.hypervisor_hostname,
        block_device_mapping=bdms,
        legacy_bdm=legacy,
        config_drive=model.config_drive,
        auto_disk_config=None if model.disk_config is None else model.disk_config == "AUTO",
        key_name=model.key_name,
        min_count=model.min_count or 1,
        max_count=model.max_count or model.min_count or 1,
        return_reservation_id=model.return_reservation_id,
        injected_files=[(p.path, p.contents) for p in model.personality or []],
        scheduler_hints=hints,
        security_groups=[g.name for g in model.security_groups or []],
        user_data=model.user_data,
        metadata=model.metadata,
        requested_networks=(
            model.networks if isinstance(model.networks, str) or model.networks is None
            else [n.model_dump(exclude_none=True) for n in model.networks]
        ),
        tags=model.tags or [],
    )
    instances, reservation_id, password = await compute_api(request).create(ctx, req)
    if req.return_reservation_id:
        return web.json_response({"reservation_id": reservation_id}, status=202)
    first = instances[0]
    server = {
        "id": str(first["uuid"]),
        "links": links(request, "servers", str(first["uuid"])),
        "OS-DCF:diskConfig": "AUTO" if first["auto_disk_config"] else "MANUAL",
        "security_groups": [{"name": n} for n in first["security_groups"]],
    }
    if password is not None and request.app[keys.CONFIG].api.enable_instance_password:
        server["adminPass"] = password
    return web.json_response({"server": server}, status=202, headers={"Location": server["links"][0]["href"]})


def _looks_like_image_ref(ref: str) -> bool:
    return is_uuid(ref.rstrip("/").rsplit("/", 1)[-1])


def parse_availability_zone(value: str | None) -> tuple[str | None, str | None, str | None]:
    """Nova's `az`, `az:host`, `az:host:node`, `az::node` forms."""
    if not value or ":" not in value:
        return value or None, None, None
    parts = value.split(":")
    if len(parts) == 2:
        return parts[0] or None, parts[1] or None, None
    if len(parts) == 3:
        return parts[0] or None, parts[1] or None, parts[2] or None
    raise errors.BadRequest("Invalid input received: Unable to parse availability_zone")


# -- list / show ---------------------------------------------------------------

def _parse_time(value: str, name: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise errors.BadRequest(f"Invalid filter field: {name}.") from None


def _list_query(
    request: web.Request, ctx: RequestContext, detail: bool, all_tenants: bool, admin_filters: bool
) -> server_list.ServerListQuery | None:
    """The list query of the query string, checked as Nova checks it and in its order; None when a
    status filter names no status at all (before 2.38 that lists nothing rather than failing).
    Filters and sort keys that need `admin_filters` are ignored without it."""
    q = request.query
    project_id = ctx.project_id
    if all_tenants:
        project_id = (q.get("project_id") or q.get("tenant_id") or None) if admin_filters else None
    changes_since = _parse_time(q["changes-since"], "changes-since") if "changes-since" in q else None
    changes_before = None
    if "changes-before" in q and at_least(request, 66):
        changes_before = _parse_time(q["changes-before"], "changes-before")
    if changes_since and changes_before and changes_before < changes_since:
        raise errors.BadRequest("The value of changes-since must be less than or equal to changes-before.")
    deleted = False
    if "deleted" in q and admin_filters:
        deleted = bool_query(q["deleted"], "deleted") or False
    statuses = q.getall("status", [])
    states = [pair for status in statuses for pair in states_from_status(status)]
    if statuses and not states:
        if at_least(request, 38):
            raise errors.BadRequest("Invalid status value")
        return None
    if not ctx.is_admin and any(vm_state == "deleted" for vm_state, _ in states):
        raise errors.Forbidden("Only administrators may list deleted instances")
    name, ip, ip6 = _regex_filter(q, "name"), _regex_filter(q, "ip"), _regex_filter(q, "ip6")

    def admin_only(key: str) -> str | None:
        return (q.get(key) or None) if admin_filters else None

    def tag_list(key: str) -> list[str] | None:
        return q[key].split(",") if q.get(key) and at_least(request, 26) else None

    locked = bool_query(q["locked"], "locked") if at_least(request, 73) and "locked" in q else None
    sort = _list_sort(q, admin_filters)
    limit = page_limit(request)
    return server_list.ServerListQuery(
        sort=sort, limit=limit, marker=q.get("marker") or None, detail=detail, project_id=project_id,
        changes_since=changes_since, changes_before=changes_before, deleted=deleted, states=states,
        name=name, ip=ip, ip6=ip6, reservation_id=q.get("reservation_id") or None, flavor=q.get("flavor") or None,
        image=q["image"].rstrip("/").rsplit("/", 1)[-1] if q.get("image") else None,
        host=admin_only("host"), node=admin_only("node"), user_id=admin_only("user_id"),
        availability_zone=admin_only("availability_zone"), tags=tag_list("tags"), tags_any=tag_list("tags-any"),
        not_tags=tag_list("not-tags"), not_tags_any=tag_list("not-tags-any"), locked=locked,
    )


def _regex_filter(q: MultiDictProxy[str], key: str) -> str | None:
    """A regex filter of the query string (None when absent), or Nova's 400 when it does not compile."""
    value = q.get(key) or None
    if value is not None:
        try:
            re.compile(value)
        except re.error:
            raise errors.BadRequest(f"Invalid regex in {key} filter: {value}") from None
    return value


def _list_sort(q: MultiDictProxy[str], admin_filters: bool) -> list[tuple[str, str]]:
    """(column, direction) of each sort_key/sort_dir (newest first by default). Nova skips the
    flavor key, and host and node without `admin_filters`; a direction not given is the first
    one given, else desc."""
    sort_keys = q.getall("sort_key", []) or ["created_at"]
    sort_dirs = q.getall("sort_dir", [])
    sort = []
    for i, key in enumerate(sort_keys):
        col = SORT_ALIASES.get(key, key)
        if col not in SORT_KEYS and col not in ("id",):
            if col == "flavor":
                continue
            raise errors.BadRequest(f"Invalid sort_key: {key}")
        if col in ("host", "node") and not admin_filters:
            continue
        direction = (sort_dirs[i] if i < len(sort_dirs) else (sort_dirs[0] if sort_dirs else "desc")).lower()
        if direction not in ("asc", "desc"):
            raise errors.BadRequest(f"Invalid sort direction: {direction}")
        sort.append((col, direction))
    return sort


async def _list(request: web.Request, detail: bool) -> web.Response:
    ctx = context(request)
    q = request.query
    authorize(request, "os_compute_api:servers:detail" if detail else "os_compute_api:servers:index")
    all_tenants = "all_tenants" in q and q.get("all_tenants", "").lower() not in ("0", "false", "f", "no", "off", "n")
    if all_tenants:
        authorize(request, f"os_compute_api:servers:{'detail' if detail else 'index'}:get_all_tenants")
    admin_filters = request.app[keys.POLICY].check("os_compute_api:servers:allow_all_filters", ctx.creds(), {})
    query = _list_query(request, ctx, detail, all_tenants, admin_filters)
    if query is None:
        return web.json_response({"servers": []})
    async with request.app[keys.DB].acquire() as conn:
        try:
            rows = await server_list.list_servers(conn, query)
        except server_list.MarkerNotFound:
            raise errors.BadRequest(f"marker [{query.marker}] not found") from None
        uuids = [str(r["uuid"]) for r in rows]
        faults = await db.latest_faults(conn, uuids) if detail else {}
        bdms = await server_list.attached_volumes(conn, uuids) if detail else {}
    if detail:
        addrs = await addresses_for(request, uuids)
        statuses = await _host_statuses(request, ctx, rows, {"project_id": ctx.project_id})
        check = _memo_check(request, ctx)
        # Each server's document is encoded as soon as it is built: its dozen dicts and lists are
        # freed at once instead of living until the page is done, for the collector's passes to
        # walk (a page of 1,000 on a database that has lived: p50 77 -> 64 ms, p90 113 -> 82 ms).
        docs = [
            orjson.Fragment(_encode(await _detail_doc(request, ctx, r, faults.get(u), bdms.get(u, []), addrs.get(u),
                                                      host_status=statuses.get(u), check=check)))
            for r, u in zip(rows, uuids, strict=True)
        ]
    else:
        docs = [views.basic(request, r) for r in rows]
    body: dict = {"servers": docs}
    if len(rows) == query.limit and rows and "limit" in q:
        base = request.app[keys.CONFIG].public_url
        path = "servers/detail" if detail else "servers"
        params = "&".join(f"{k}={v}" for k, v in q.items() if k != "marker")
        body["servers_links"] = [
            {"rel": "next", "href": f"{base}/compute/v2.1/{path}?{params}&marker={rows[-1]['uuid']}"}
        ]
    # A page of a thousand servers is a large document: orjson encodes it several times faster,
    # and as bytes it is sent as it is (a str would be encoded again).
    return web.Response(body=_encode(body), content_type="application/json", charset="utf-8")


def _encode(doc: dict) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)


def _memo_check(request: web.Request, ctx: RequestContext) -> Callable[[str, dict], bool]:
    """The policy check of this request's caller, remembered per rule and target: a page of
    servers has few distinct targets (project, user), and each check costs a rule evaluation."""
    policy, creds = request.app[keys.POLICY], ctx.creds()
    seen: dict[tuple, bool] = {}

    def check(rule: str, target: dict) -> bool:
        key = (rule, *target.values())  # targets are _target's: the same keys, in the same order
        if key not in seen:
            seen[key] = policy.check(rule, creds, target)
        return seen[key]

    return check


async def index(request: web.Request) -> web.Response:
    return await _list(request, detail=False)


async def detail(request: web.Request) -> web.Response:
    return await _list(request, detail=True)


async def addresses_for(request: web.Request, uuids: list[str]) -> dict[str, dict]:
    network_api = request.app.get(keys.NETWORK_API)
    return await network_api.addresses_for(uuids) if network_api is not None and uuids else {}


async def _detail_doc(
    request: web.Request, ctx: RequestContext, inst: asyncpg.Record, fault, bdms, addresses: dict | None = None,
    *, all_attributes: bool = True, server_groups: list[str] | None = None, host_status: str | None = None,
    check: Callable[[str, dict], bool] | None = None,
) -> dict:
    """``host_status``: what :func:`_host_statuses` allows the caller to see of this server's host;
    ``check``: the policy check to use (a list's :func:`_memo_check`; by default the policy's own)."""
    if check is None:
        policy, creds = request.app[keys.POLICY], ctx.creds()

        def check(rule: str, target: dict) -> bool:
            return policy.check(rule, creds, target)

    target = _target(inst)
    return views.show(
        request,
        inst,
        fault=fault,
        bdms=bdms,
        addresses=addresses or {},
        show_extended_attr=all_attributes and check("os_compute_api:os-extended-server-attributes", target),
        show_extra_specs=at_least(request, 47) and check("os_compute_api:servers:show:flavor-extra-specs", target),
        is_admin=ctx.is_admin,
        host_status=host_status if all_attributes else None,
        all_attributes=all_attributes,
        server_groups=server_groups,
    )


async def _query(request: web.Request, fn, *args):
    async with request.app[keys.DB].acquire() as conn:
        return await fn(conn, *args)


async def _one_server_doc(
    request: web.Request, ctx: RequestContext, inst: asyncpg.Record, all_attributes: bool = True,
    extras: asyncpg.Record | None = None,
) -> dict:
    """One server's document: its fault, BDMs, addresses, groups and host's status read in one
    statement (db.server_list.server_extras) unless the caller read them (``extras``)."""
    uuid = str(inst["uuid"])
    unknown_only = _host_status_access(request, ctx, {"project_id": inst["project_id"]})
    groups = at_least(request, 71)
    if extras is None:
        async with request.app[keys.DB].acquire() as conn:
            extras = await server_list.server_extras(
                conn, uuid, addresses=request.app.get(keys.NETWORK_API) is not None, groups=groups,
                host=inst["host"] if unknown_only is not None else None,
                service_down_time=request.app[keys.CONFIG].scheduler.service_down_time,
            )
    host_status = None
    if unknown_only is not None:
        host_status = (extras["host_status"] or "") if inst["host"] else ""  # "": no host, or no service
        if unknown_only and host_status != "UNKNOWN":
            host_status = None
    return await _detail_doc(request, ctx, inst, extras["fault"], extras["bdms"],
                             addresses_doc(extras["addresses"] or []), all_attributes=all_attributes,
                             server_groups=extras["groups"] if groups else None, host_status=host_status)


def _host_status_access(request: web.Request, ctx: RequestContext, target: dict) -> bool | None:
    """Whether the caller sees host_status (2.16) of servers of ``target``: None (not at all), False
    (any status: ``show:host_status``) or True (UNKNOWN only: ``show:host_status:unknown-only``), as
    Nova's view decides."""
    if not at_least(request, 16):
        return None
    policy = request.app[keys.POLICY]
    if policy.check("os_compute_api:servers:show:host_status", ctx.creds(), target):
        return False
    if policy.check("os_compute_api:servers:show:host_status:unknown-only", ctx.creds(), target):
        return True
    return None


async def _host_statuses(
    request: web.Request, ctx: RequestContext, rows: list[asyncpg.Record], target: dict
) -> dict[str, str]:
    """host_status (2.16) of each server the caller may see it for (_host_status_access);
    "" for a server without a host (or whose host has no service)."""
    unknown_only = _host_status_access(request, ctx, target) if rows else None
    if unknown_only is None:
        return {}
    hosts = sorted({r["host"] for r in rows if r["host"]})
    by_host = await _query(request, catalog.host_statuses, request.app[keys.CONFIG].scheduler.service_down_time,
                           hosts) if hosts else {}
    out = {}
    for r in rows:
        status = by_host.get(r["host"], "") if r["host"] else ""
        if not unknown_only or status == "UNKNOWN":
            out[str(r["uuid"])] = status
    return out


async def show(request: web.Request) -> web.Response:
    """The server and what its document shows besides its row, read in one statement
    (db.server_list.server_shown)."""
    inst = await load_instance(request, read=functools.partial(
        server_list.server_shown, addresses=request.app.get(keys.NETWORK_API) is not None,
        groups=at_least(request, 71), service_down_time=request.app[keys.CONFIG].scheduler.service_down_time,
    ))
    ctx = authorize(request, "os_compute_api:servers:show", _target(inst))
    return web.json_response({"server": await _one_server_doc(request, ctx, inst, extras=inst)})


async def update(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    ctx = authorize(request, "os_compute_api:servers:update", _target(inst))
    changes = schemas.parse_update(await read_json(request), request[keys.VERSION])
    updates: dict = {}
    if "name" in changes:
        updates["display_name"] = changes["name"]
    if "description" in changes:
        updates["display_description"] = changes["description"]
    if "hostname" in changes:
        updates["hostname"] = changes["hostname"]
    if "accessIPv4" in changes:
        updates["access_ip_v4"] = changes["accessIPv4"] or None
    if "accessIPv6" in changes:
        updates["access_ip_v6"] = changes["accessIPv6"] or None
    if "OS-DCF:diskConfig" in changes:
        updates["auto_disk_config"] = changes["OS-DCF:diskConfig"] == "AUTO"
    if updates:
        async with request.app[keys.DB].acquire() as conn:
            inst = await db.compare_and_set(conn, str(inst["uuid"]), **updates)
    return web.json_response({"server": await _one_server_doc(request, ctx, inst, at_least(request, 75))})


async def rebuild(request: web.Request, inst: asyncpg.Record, value: object) -> web.Response:
    """The rebuild action (Nova's servers.py _rebuild): 202 with the server as GET shows it, and adminPass."""
    model = schemas.parse_rebuild(value, request[keys.VERSION])
    target = _target(inst)
    authorize(request, "os_compute_api:servers:rebuild", target)
    given = model.model_fields_set
    if "trusted_image_certificates" in given:
        authorize(request, "os_compute_api:servers:rebuild:trusted_certs", target)
    if not _looks_like_image_ref(model.imageRef):
        raise errors.BadRequest("Invalid imageRef provided.")
    show_password = request.app[keys.CONFIG].api.enable_instance_password
    password = model.adminPass if "adminPass" in given else (generate_password() if show_password else None)
    req = RebuildRequest(
        image_ref=model.imageRef, admin_password=password, preserve_ephemeral=model.preserve_ephemeral,
        injected_files=[(p.path, p.contents) for p in model.personality or []],
    )
    for field, attr in (("name", "name"), ("description", "description"), ("metadata", "metadata"),
                        ("key_name", "key_name"), ("user_data", "user_data"), ("hostname", "hostname")):
        if field in given:
            setattr(req, attr, getattr(model, field))
    if "name" in given and model.name is None:
        raise errors.BadRequest("Invalid input for field/attribute name. Value: None. None is not of type 'string'")
    for field, attr in (("accessIPv4", "access_ip_v4"), ("accessIPv6", "access_ip_v6")):
        if field in given:
            setattr(req, attr, getattr(model, field) or None)
    if model.disk_config is not None:
        req.auto_disk_config = model.disk_config == "AUTO"
    ctx = context(request)
    inst = await request.app[keys.SERVER_ACTIONS].rebuild(ctx, inst, req)
    doc = await _one_server_doc(request, ctx, inst, at_least(request, 75))
    doc.pop("OS-EXT-SRV-ATTR:user_data", None)  # Nova's rebuild view: user_data only as below (2.57)
    if at_least(request, 54):
        doc["key_name"] = inst["key_name"]
    if show_password:
        doc["adminPass"] = password
    if at_least(request, 57):
        doc["user_data"] = inst["user_data"]
    return web.json_response({"server": doc}, status=202)


async def delete(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    ctx = authorize(request, "os_compute_api:servers:delete", _target(inst))
    await compute_api(request).delete(ctx, inst)
    return web.Response(status=204)


async def action(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    body = await read_json(request)
    if len(body) != 1:
        raise errors.BadRequest("There is no such action: " + ",".join(body) if body else "Malformed request body")
    name = next(iter(body))
    if name == "os-getConsoleOutput":
        return await console.get_console_output(request, inst, body)
    if name == "os-getSerialConsole":
        return await console.get_serial_console(request, inst, body)
    if name == "forceDelete":
        ctx = authorize(request, "os_compute_api:os-deferred-delete:force", _target(inst))
        await compute_api(request).delete(ctx, inst, force=True)
        return web.Response(status=202)
    if name == "rebuild":
        return await rebuild(request, inst, body[name])
    response = await server_actions.dispatch(request, inst, name, body[name])
    if response is not None:
        return response
    raise errors.BadRequest(f"There is no such action: {name}")


# -- addresses (/servers/{id}/ips) ---------------------------------------------------

async def ips_index(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    authorize(request, "os_compute_api:ips:index", {"project_id": inst["project_id"]})
    addrs = (await addresses_for(request, [str(inst["uuid"])])).get(str(inst["uuid"])) or {}
    return web.json_response({"addresses": views.unextended(addrs)})


async def ips_show(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    authorize(request, "os_compute_api:ips:show", {"project_id": inst["project_id"]})
    label = request.match_info["network"]
    addrs = (await addresses_for(request, [str(inst["uuid"])])).get(str(inst["uuid"])) or {}
    if label not in addrs:
        raise errors.NotFound("Instance is not a member of specified network")
    return web.json_response(views.unextended({label: addrs[label]}))


# -- server metadata -------------------------------------------------------------

def _check_meta(meta: object) -> dict[str, str]:
    if not isinstance(meta, dict):
        raise errors.BadRequest("Malformed request body")
    for k, v in meta.items():
        if not isinstance(k, str) or not 1 <= len(k) <= 255:
            raise errors.BadRequest("Invalid input for field/attribute metadata. Metadata property key must be 1-255 characters.")
        if not isinstance(v, str) or len(v) > 255:
            raise errors.BadRequest(f"Invalid input for field/attribute {k}. Value must be a string of at most 255 characters.")
    return meta


async def _save_metadata(request: web.Request, inst: asyncpg.Record, meta: dict) -> dict:
    from novalite import quota

    async with request.app[keys.DB].acquire() as conn:
        limits = await quota.get_limits(conn, request.app[keys.CONFIG].quota, inst["project_id"])
        if limits["metadata_items"] != quota.UNLIMITED and len(meta) > limits["metadata_items"]:
            raise errors.QuotaExceeded(f"Quota exceeded for metadata_items: Requested {len(meta)}, but already used "
                                       f"0 of {limits['metadata_items']} metadata_items")
        row = await db.compare_and_set(conn, str(inst["uuid"]), metadata=meta)
    return row["metadata"]


async def metadata_index(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    authorize(request, "os_compute_api:server-metadata:index", _target(inst))
    return web.json_response({"metadata": inst["metadata"]})


async def metadata_create(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    authorize(request, "os_compute_api:server-metadata:create", _target(inst))
    body = await read_json(request)
    meta = _check_meta(body.get("metadata"))
    merged = dict(inst["metadata"], **meta)
    return web.json_response({"metadata": await _save_metadata(request, inst, merged)})


async def metadata_replace(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    authorize(request, "os_compute_api:server-metadata:update_all", _target(inst))
    body = await read_json(request)
    meta = _check_meta(body.get("metadata"))
    return web.json_response({"metadata": await _save_metadata(request, inst, meta)})


async def metadata_show(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    authorize(request, "os_compute_api:server-metadata:show", _target(inst))
    key = request.match_info["key"]
    if key not in inst["metadata"]:
        raise errors.NotFound("Metadata item was not found")
    return web.json_response({"meta": {key: inst["metadata"][key]}})


async def metadata_update_item(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    authorize(request, "os_compute_api:server-metadata:update", _target(inst))
    key = request.match_info["key"]
    body = await read_json(request)
    meta = _check_meta(body.get("meta"))
    if len(meta) != 1:
        raise errors.BadRequest("Request body contains too many items")
    if key not in meta:
        raise errors.BadRequest("Request body and URI mismatch")
    merged = dict(inst["metadata"], **meta)
    await _save_metadata(request, inst, merged)
    return web.json_response({"meta": meta})


async def metadata_delete(request: web.Request) -> web.Response:
    inst = await load_instance(request)
    authorize(request, "os_compute_api:server-metadata:delete", _target(inst))
    key = request.match_info["key"]
    if key not in inst["metadata"]:
        raise errors.NotFound("Metadata item was not found")
    meta = {k: v for k, v in inst["metadata"].items() if k != key}
    await _save_metadata(request, inst, meta)
    return web.Response(status=204)


# -- instance actions --------------------------------------------------------------

def _action_doc(request: web.Request, a: asyncpg.Record) -> dict:
    doc = {
        "action": a["action"],
        "instance_uuid": str(a["instance_uuid"]),
        "message": a["message"],
        "project_id": a["project_id"],
        "request_id": a["request_id"],
        "start_time": _action_time(request, a["start_time"]),
        "user_id": a["user_id"],
    }
    if at_least(request, 58):
        doc["updated_at"] = _action_time(request, a["updated_at"])
    return doc


def _action_time(request: web.Request, ts: datetime | None) -> str | None:
    if ts is None:
        return None
    if at_least(request, 58):
        return ts.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return ts.replace(tzinfo=None).isoformat()


async def _load_for_actions(request: web.Request) -> asyncpg.Record:
    uuid = request.match_info["server_id"]
    ctx = context(request)
    async with request.app[keys.DB].acquire() as conn:
        inst = await db.get(conn, uuid, include_deleted=True) if is_uuid(uuid) else None
    # Deleted servers' actions are readable from 2.21.
    if inst is None or (inst["deleted"] and not at_least(request, 21)):
        raise errors.NotFound(f"Instance {uuid} could not be found.")
    if inst["project_id"] != ctx.project_id and not ctx.is_admin:
        raise errors.NotFound(f"Instance {uuid} could not be found.")
    return inst


async def actions_index(request: web.Request) -> web.Response:
    inst = await _load_for_actions(request)
    authorize(request, "os_compute_api:os-instance-actions:list", _target(inst))
    async with request.app[keys.DB].acquire() as conn:
        rows = await db.list_actions(conn, str(inst["uuid"]))
    rows = rows[:page_limit(request)] if at_least(request, 58) else capped(request, rows)
    return web.json_response({"instanceActions": [_action_doc(request, a) for a in rows]})


async def actions_show(request: web.Request) -> web.Response:
    inst = await _load_for_actions(request)
    ctx = authorize(request, "os_compute_api:os-instance-actions:show", _target(inst))
    request_id = request.match_info["request_id"]
    async with request.app[keys.DB].acquire() as conn:
        a = await db.get_action(conn, str(inst["uuid"]), request_id)
        if a is None:
            raise errors.NotFound(f"Action {request_id} not found")
        events = await db.list_events(conn, a["id"])
    doc = _action_doc(request, a)
    policy = request.app[keys.POLICY]
    target = _target(inst)
    may_see_events = policy.check("os_compute_api:os-instance-actions:events", ctx.creds(), target)
    if may_see_events or at_least(request, 51):
        show_details = at_least(request, 84) and policy.check(
            "os_compute_api:os-instance-actions:events:details", ctx.creds(), target
        )
        evs = []
        for e in events:
            ev = {
                "event": e["event"],
                "start_time": _action_time(request, e["start_time"]),
                "finish_time": _action_time(request, e["finish_time"]),
                "result": e["result"],
            }
            if may_see_events:
                ev["traceback"] = e["traceback"]
                if at_least(request, 62):
                    ev["host"] = e["host"]
            if at_least(request, 62):
                ev["hostId"] = views.host_id(e["host"], inst["project_id"])
            if show_details:
                ev["details"] = e["details"]
            evs.append(ev)
        doc["events"] = evs
    return web.json_response({"instanceAction": doc})


async def scheduling_show(request: web.Request) -> web.Response:
    """GET /servers/{id}/os-scheduling (novalite extension; admins by default, under the same rule
    as instance-action event details): the latest scheduling of the server, i.e. every filter's
    verdict on every host and the weights of the hosts that passed. The NoValidHost fault details
    point here."""
    inst = await _load_for_actions(request)
    authorize(request, "os_compute_api:os-instance-actions:events:details", _target(inst))
    async with request.app[keys.DB].acquire() as conn:
        row = await db.latest_verdicts(conn, str(inst["uuid"]))
    if row is None:
        raise errors.NotFound(f"No scheduling recorded for instance {inst['uuid']}.")
    doc = {"request_id": row["request_id"], "created_at": _action_time(request, row["created_at"]), **row["verdicts"]}
    return web.json_response({"scheduling": doc})


def add_routes(app: web.Application) -> None:
    r = app.router
    base = "/compute/v2.1/servers"
    r.add_post(base, create)
    r.add_get(base, index)
    r.add_get(f"{base}/detail", detail)
    r.add_get(base + "/{server_id}", show)
    r.add_put(base + "/{server_id}", update)
    r.add_delete(base + "/{server_id}", delete)
    r.add_post(base + "/{server_id}/action", action)
    r.add_get(base + "/{server_id}/ips", ips_index)
    r.add_get(base + "/{server_id}/ips/{network}", ips_show)
    r.add_get(base + "/{server_id}/metadata", metadata_index)
    r.add_post(base + "/{server_id}/metadata", metadata_create)
    r.add_put(base + "/{server_id}/metadata", metadata_replace)
    r.add_get(base + "/{server_id}/metadata/{key}", metadata_show)
    r.add_put(base + "/{server_id}/metadata/{key}", metadata_update_item)
    r.add_delete(base + "/{server_id}/metadata/{key}", metadata_delete)
    r.add_get(base + "/{server_id}/os-instance-actions", actions_index)
    r.add_get(base + "/{server_id}/os-instance-actions/{request_id}", actions_show)
    r.add_get(base + "/{server_id}/os-scheduling", scheduling_show)
