"""Cinder v3 subset at /volume: volumes, snapshots, types, quotas, zones, limits.

Paths are DevStack's: version documents at ``/volume`` and ``/volume/v3``, the
API under ``/volume/v3/{project_id}/...``. Errors use Cinder's body, which is
Nova's (``{"itemNotFound": {"code": 404, "message": ...}}``, ``badRequest``,
``overLimit`` for quota, ...), so the shared error middleware renders them.
Microversion 3.0 only: ``OpenStack-API-Version: volume 3.0`` is echoed, and
clients negotiate down to it.

Every decision goes through Cinder's policy (``keys.CINDER_POLICY``) with Cinder's
rule names and the resource's project as target: ``volume:get`` and the action's
own rule for one volume, ``volume:get_all`` for lists, ``volume_extension:*`` for
the admin-only attributes (host, migration status) and quotas. Rows of other
projects stay out of sight (404) unless ``context_is_admin`` passes, as Cinder's
project-only queries do.
"""

from __future__ import annotations

import ast
import functools
import json
import uuid as uuidlib
from datetime import datetime

import asyncpg
from aiohttp import web

from novalite.api import errors, keys, validation
from novalite.api import policy as api_policy
from novalite.api.middleware import error_response, read_json
from novalite.api.pagination import capped, page_limit
from novalite.api.policy import context
from novalite.context import RequestContext
from novalite.db import volumes as q
from novalite.volume.api import RESOURCES, VolumeAPI

VERSION = "3.0"
DEFAULT_TYPE_ID = "00000000-0000-4000-8000-00000000d3f1"
DEFAULT_TYPE = {
    "id": DEFAULT_TYPE_ID,
    "name": "__DEFAULT__",
    "description": "Default Volume Type",
    "is_public": True,
    "extra_specs": {},
    "os-volume-type-access:is_public": True,
    "qos_specs_id": None,
}


def _api(request: web.Request) -> VolumeAPI:
    return request.app[keys.VOLUME_API]


def _ts(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f") if value else None


def _base(request: web.Request) -> str:
    return f"{request.app[keys.CONFIG].public_url}/volume"


def allowed(request: web.Request, rule: str, target: dict | None = None) -> bool:
    """Whether Cinder's policy lets the caller do ``rule`` on ``target`` (default: own project)."""
    return api_policy.check(request, keys.CINDER_POLICY, rule, target)


def authorize(request: web.Request, rule: str, project_id: str | None = None) -> None:
    """Cinder's context.authorize: 403 unless ``rule`` allows it on ``project_id`` (default: own)."""
    target = None if project_id is None else {"project_id": project_id}
    if not allowed(request, rule, target):
        raise errors.Forbidden(f"Policy doesn't allow {rule} to be performed.")


def is_admin(request: web.Request) -> bool:
    """Cinder's context.is_admin: the ``context_is_admin`` rule."""
    return allowed(request, "context_is_admin")


def _ctx(request: web.Request) -> RequestContext:
    ctx = context(request)
    project = request.match_info.get("project_id")
    if project and project != ctx.project_id and not is_admin(request):
        raise errors.BadRequest("Malformed request url")
    return ctx


def _links(request: web.Request, kind: str, ident: str, project_id: str) -> list[dict]:
    base = _base(request)
    return [
        {"href": f"{base}/v3/{project_id}/{kind}/{ident}", "rel": "self"},
        {"href": f"{base}/{project_id}/{kind}/{ident}", "rel": "bookmark"},
    ]


def _version_doc(request: web.Request) -> dict:
    return {
        "id": "v3.0",
        "status": "CURRENT",
        "version": VERSION,
        "min_version": "3.0",
        "updated": "2023-02-20T00:00:00Z",
        "links": [
            {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
            {"rel": "self", "href": f"{_base(request)}/v3/"},
        ],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}],
    }


async def versions(request: web.Request) -> web.Response:
    return web.json_response({"versions": [_version_doc(request)]})


def _check_version(request: web.Request) -> None:
    for value in request.headers.getall("OpenStack-API-Version", []):
        for part in value.split(","):
            service, _, ver = part.strip().partition(" ")
            if service.lower() != "volume":
                continue
            ver = ver.strip().lower()
            if ver in ("latest", "3.0", "3", ""):
                continue
            try:
                major, minor = (int(x) for x in ver.split("."))
            except ValueError:
                raise errors.BadRequest(f"API Version String {ver} is of invalid format. Must be of format "
                                        "MajorNum.MinorNum.") from None
            if (major, minor) != (3, 0):
                raise errors.NotAcceptable(f"Version {ver} is not supported by the API. Minimum is 3.0 and "
                                           "maximum is 3.0.")


def versioned(handler):
    """Check the requested volume microversion and echo Cinder's headers, errors included."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            _check_version(request)
            resp = await handler(request)
        except errors.ApiError as exc:
            if exc.code == 401:
                raise
            resp = error_response(request, exc)
        resp.headers["OpenStack-API-Version"] = f"volume {VERSION}"
        resp.headers["Vary"] = "OpenStack-API-Version"
        return resp

    return wrapped


# -- volumes ---------------------------------------------------------------------------

def volume_summary(request: web.Request, v: asyncpg.Record) -> dict:
    vid = str(v["id"])
    return {"id": vid, "name": v["name"], "links": _links(request, "volumes", vid, v["project_id"])}


def volume_detail(request: web.Request, v: asyncpg.Record) -> dict:
    vid = str(v["id"])
    attachments = []
    if v["instance_uuid"] is not None and v["status"] in (q.IN_USE, q.DETACHING, q.ATTACHING):
        attachments.append({
            "id": vid,
            "attachment_id": str(v["attachment_id"]) if v["attachment_id"] else None,
            "volume_id": vid,
            "server_id": str(v["instance_uuid"]),
            "host_name": v["host"],
            "device": v["mountpoint"],
            "attached_at": _ts(v["attached_at"]),
        })
    doc = {
        "id": vid,
        "name": v["name"],
        "description": v["description"],
        "status": v["status"],
        "size": v["size"],
        "availability_zone": v["availability_zone"],
        "created_at": _ts(v["created_at"]),
        "updated_at": _ts(v["updated_at"]),
        "attachments": attachments,
        "volume_type": v["volume_type"],
        "snapshot_id": str(v["snapshot_id"]) if v["snapshot_id"] else None,
        "source_volid": str(v["source_volid"]) if v["source_volid"] else None,
        "metadata": v["metadata"] or {},
        "links": _links(request, "volumes", vid, v["project_id"]),
        "user_id": v["user_id"],
        "bootable": "true" if v["bootable"] else "false",
        "encrypted": False,
        "replication_status": None,
        "consistencygroup_id": None,
        "multiattach": False,
    }
    target = {"project_id": v["project_id"]}
    if allowed(request, "volume_extension:volume_tenant_attribute", target):
        doc["os-vol-tenant-attr:tenant_id"] = v["project_id"]
    if v["image_id"] and allowed(request, "volume_extension:volume_image_metadata:show", target):
        doc["volume_image_metadata"] = {"image_id": v["image_id"]}
    if allowed(request, "volume_extension:volume_host_attribute", target):
        doc["os-vol-host-attr:host"] = f"{v['host']}@libvirt#{v['pool_name']}" if v["host"] else None
    if allowed(request, "volume_extension:volume_mig_status_attribute", target):
        doc["os-vol-mig-status-attr:migstat"] = None
        doc["os-vol-mig-status-attr:name_id"] = None
    return doc


def _filters(request: web.Request) -> dict:
    out: dict = {}
    for key in ("name", "status", "bootable", "availability_zone", "volume_id"):
        if key in request.query:
            out[key] = request.query[key]
    raw = request.query.get("metadata")
    if raw:
        try:
            meta = json.loads(raw)
        except ValueError:
            try:
                meta = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                raise errors.BadRequest(f"Invalid input received: Invalid filter metadata={raw}") from None
        if not isinstance(meta, dict):
            raise errors.BadRequest(f"Invalid input received: Invalid filter metadata={raw}")
        out["metadata"] = {str(k): str(v) for k, v in meta.items()}
    return out


def _scope(request: web.Request, ctx: RequestContext) -> str | None:
    all_tenants = request.query.get("all_tenants", "").lower() in ("1", "true", "yes")
    if all_tenants and is_admin(request):
        return request.query.get("project_id")
    return ctx.project_id


async def _list_volumes(request: web.Request, detail: bool) -> web.Response:
    ctx = _ctx(request)
    authorize(request, "volume:get_all")
    limit_n = page_limit(request)
    async with request.app[keys.DB].acquire() as conn:
        rows = await q.list_volumes(conn, _scope(request, ctx), _filters(request), limit_n,
                                    request.query.get("marker"))
    docs = [volume_detail(request, v) if detail else volume_summary(request, v) for v in rows]
    return web.json_response({"volumes": docs})


async def list_volumes(request: web.Request) -> web.Response:
    return await _list_volumes(request, False)


async def list_volumes_detail(request: web.Request) -> web.Response:
    return await _list_volumes(request, True)


async def _load_volume(request: web.Request, ctx: RequestContext, rule: str = "volume:get") -> asyncpg.Record:
    """The volume if the caller's project sees it (404), volume:get and ``rule`` allow it (403)."""
    vid = request.match_info["volume_id"]
    async with request.app[keys.DB].acquire() as conn:
        v = await q.get(conn, vid)
    if v is None or (v["project_id"] != ctx.project_id and not is_admin(request)):
        raise errors.NotFound(f"Volume {vid} could not be found.")
    authorize(request, "volume:get", v["project_id"])
    if rule != "volume:get":
        authorize(request, rule, v["project_id"])
    return v


MAX_QUOTA = 2**31 - 1  # Cinder's db.MAX_INT: a quota is an Integer column


def _str_field(body: dict, key: str, max_len: int = 255) -> str | None:
    value = body.get(key)
    if value is not None and (not isinstance(value, str) or len(value) > max_len):
        raise errors.BadRequest(f"Invalid input for field/attribute {key}.")
    return value


def _name_field(body: dict, key: str) -> str | None:
    """A volume or snapshot name: Cinder's 255 characters (empty allowed), and the printable
    rule every service shares (no control or format characters, no whitespace at either end)."""
    value = body.get(key)
    problem = None if value is None else validation.name_problem(value, max_length=255, min_length=0)
    if problem:
        raise errors.BadRequest(f"Invalid input for field/attribute {key}. Value: {str(value)[:255]}. {problem}")
    return value


def _metadata(body: dict) -> dict | None:
    meta = body.get("metadata")
    if meta is None:
        return None
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise errors.BadRequest("Invalid input for field/attribute metadata.")
    return meta


async def create_volume(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    body = (await read_json(request)).get("volume")
    if not isinstance(body, dict):
        raise errors.BadRequest("Missing required element 'volume' in request body.")
    size = body.get("size")
    if size is not None:
        try:
            size = int(size)
        except (TypeError, ValueError):
            raise errors.BadRequest(f"Invalid input received: 'size' parameter must be an integer greater "
                                    f"than 0 (got {size}).") from None
        if size < 1:
            raise errors.BadRequest("Invalid input received: 'size' parameter must be an integer greater than 0.")
    image = body.get("imageRef") or body.get("image_id")
    if size is None and not (body.get("snapshot_id") or body.get("source_volid") or image):
        raise errors.BadRequest("Invalid input received: 'size' parameter is required.")
    authorize(request, "volume:create")
    if image:
        authorize(request, "volume:create_from_image")
    vtype = body.get("volume_type")
    if vtype not in (None, "", "__DEFAULT__", DEFAULT_TYPE_ID):
        raise errors.NotFound(f"Volume type with name {vtype} could not be found.")
    for key in ("snapshot_id", "source_volid"):
        if body.get(key):
            try:
                uuidlib.UUID(str(body[key]))
            except ValueError:
                raise errors.NotFound(f"{'Snapshot' if key == 'snapshot_id' else 'Volume'} {body[key]} could "
                                      "not be found.") from None
    vol = await _api(request).create(
        ctx,
        size=size,
        name=_name_field(body, "name") or _name_field(body, "display_name"),
        description=_str_field(body, "description") or _str_field(body, "display_description"),
        metadata=_metadata(body),
        image_id=str(image) if image else None,
        snapshot_id=str(body["snapshot_id"]) if body.get("snapshot_id") else None,
        source_volid=str(body["source_volid"]) if body.get("source_volid") else None,
        availability_zone=body.get("availability_zone"),
    )
    return web.json_response({"volume": volume_detail(request, vol)}, status=202)


async def show_volume(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    v = await _load_volume(request, ctx)
    return web.json_response({"volume": volume_detail(request, v)})


async def update_volume(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    v = await _load_volume(request, ctx, "volume:update")
    body = (await read_json(request)).get("volume")
    if not isinstance(body, dict):
        raise errors.BadRequest("Missing required element 'volume' in request body.")
    fields: dict = {}
    for key, col in (("name", "name"), ("display_name", "name"), ("description", "description"),
                     ("display_description", "description")):
        if key in body:
            fields[col] = _name_field(body, key) if col == "name" else _str_field(body, key)
    meta = _metadata(body)
    if meta is not None:
        fields["metadata"] = meta
    if not fields:
        return web.json_response({"volume": volume_detail(request, v)})
    v = await _api(request).update(ctx, v, fields)
    return web.json_response({"volume": volume_detail(request, v)})


async def delete_volume(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    v = await _load_volume(request, ctx, "volume:delete")
    await _api(request).delete(ctx, v)
    return web.Response(status=202)


async def volume_metadata(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    rule = {"GET": "volume:get_volume_metadata", "POST": "volume:create_volume_metadata"}.get(
        request.method, "volume:update_volume_metadata")
    v = await _load_volume(request, ctx, rule)
    if request.method == "GET":
        return web.json_response({"metadata": v["metadata"] or {}})
    meta = _metadata(await read_json(request))
    if meta is None:
        raise errors.BadRequest("Malformed request body")
    new = meta if request.method == "PUT" else {**(v["metadata"] or {}), **meta}
    v = await _api(request).update(ctx, v, {"metadata": new})
    return web.json_response({"metadata": v["metadata"]})


async def volume_metadata_delete(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    v = await _load_volume(request, ctx, "volume:delete_volume_metadata")
    key = request.match_info["key"]
    meta = dict(v["metadata"] or {})
    if key not in meta:
        raise errors.NotFound(f"Volume {v['id']} has no metadata with key {key}.")
    meta.pop(key)
    await _api(request).update(ctx, v, {"metadata": meta})
    return web.Response(status=200)


async def volume_action(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    v = await _load_volume(request, ctx)
    body = await read_json(request)
    if "os-set_bootable" in body:
        authorize(request, "volume:update", v["project_id"])  # Cinder sets the flag through update
        args = body["os-set_bootable"]
        if not isinstance(args, dict) or "bootable" not in args:
            raise errors.BadRequest("Invalid input for field/attribute os-set_bootable. "
                                    "'bootable' is a required property")
        raw = args["bootable"]
        if isinstance(raw, bool):
            bootable = raw
        elif str(raw).lower() in ("true", "1", "yes", "false", "0", "no"):
            bootable = str(raw).lower() in ("true", "1", "yes")
        else:
            raise errors.BadRequest(f"Invalid input received: Invalid value for 'bootable': {raw!r}.")
        await _api(request).update(ctx, v, {"bootable": bootable})
        return web.Response(status=200)
    name = next(iter(body), "")
    raise errors.BadRequest(f"Invalid input received: action {name} is not supported by novalite.")


# -- snapshots -------------------------------------------------------------------------

def snapshot_detail(request: web.Request, s: asyncpg.Record) -> dict:
    doc = {
        "id": str(s["id"]),
        "name": s["name"],
        "description": s["description"],
        "status": s["status"],
        "size": s["size"],
        "volume_id": str(s["volume_id"]),
        "metadata": s["metadata"] or {},
        "created_at": _ts(s["created_at"]),
        "updated_at": _ts(s["updated_at"]),
    }
    if allowed(request, "volume_extension:extended_snapshot_attributes", {"project_id": s["project_id"]}):
        doc["os-extended-snapshot-attributes:progress"] = "100%" if s["status"] == q.AVAILABLE else "0%"
        doc["os-extended-snapshot-attributes:project_id"] = s["project_id"]
    return doc


async def _list_snapshots(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    authorize(request, "volume:get_all_snapshots")
    async with request.app[keys.DB].acquire() as conn:
        rows = await q.list_snapshots(conn, _scope(request, ctx), _filters(request))
    return web.json_response({"snapshots": [snapshot_detail(request, s) for s in rows[:page_limit(request)]]})


async def _load_snapshot(request: web.Request, ctx: RequestContext, rule: str = "volume:get_snapshot") -> asyncpg.Record:
    """The snapshot if the caller's project sees it (404), volume:get_snapshot and ``rule`` allow it (403)."""
    sid = request.match_info["snapshot_id"]
    async with request.app[keys.DB].acquire() as conn:
        s = await q.get_snapshot(conn, sid)
    if s is None or (s["project_id"] != ctx.project_id and not is_admin(request)):
        raise errors.NotFound(f"Snapshot {sid} could not be found.")
    authorize(request, "volume:get_snapshot", s["project_id"])
    if rule != "volume:get_snapshot":
        authorize(request, rule, s["project_id"])
    return s


async def create_snapshot(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    body = (await read_json(request)).get("snapshot")
    if not isinstance(body, dict) or not body.get("volume_id"):
        raise errors.BadRequest("Invalid input for field/attribute snapshot. 'volume_id' is a required property")
    authorize(request, "volume:create_snapshot")
    force = str(body.get("force", False)).lower() in ("true", "1", "yes")
    snap = await _api(request).create_snapshot(
        ctx, str(body["volume_id"]), name=_name_field(body, "name") or _name_field(body, "display_name"),
        description=_str_field(body, "description"), force=force, metadata=_metadata(body),
    )
    return web.json_response({"snapshot": snapshot_detail(request, snap)}, status=202)


async def show_snapshot(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    return web.json_response({"snapshot": snapshot_detail(request, await _load_snapshot(request, ctx))})


async def update_snapshot(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    s = await _load_snapshot(request, ctx, "volume:update_snapshot")
    body = (await read_json(request)).get("snapshot")
    if not isinstance(body, dict):
        raise errors.BadRequest("Missing required element 'snapshot' in request body.")
    sets = {k: _name_field(body, k) if k == "name" else _str_field(body, k) for k in ("name", "description")
            if k in body}
    if sets:
        async with request.app[keys.DB].acquire() as conn:
            cols = ", ".join(f"{k} = ${i + 2}" for i, k in enumerate(sets))
            s = await conn.fetchrow(f"UPDATE volume_snapshots SET {cols}, updated_at = now() WHERE id = $1 "
                                    "RETURNING *", s["id"], *sets.values())
    return web.json_response({"snapshot": snapshot_detail(request, s)})


async def delete_snapshot(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    await _api(request).delete_snapshot(ctx, await _load_snapshot(request, ctx, "volume:delete_snapshot"))
    return web.Response(status=202)


# -- types, zones, quotas, limits ---------------------------------------------------------

async def list_types(request: web.Request) -> web.Response:
    _ctx(request)
    authorize(request, "volume_extension:type_get_all")
    return web.json_response({"volume_types": capped(request, [DEFAULT_TYPE])})


async def show_type(request: web.Request) -> web.Response:
    _ctx(request)
    authorize(request, "volume_extension:type_get")
    ident = request.match_info["type_id"]
    if ident not in ("default", DEFAULT_TYPE_ID, "__DEFAULT__"):
        raise errors.NotFound(f"Volume type {ident} could not be found.")
    return web.json_response({"volume_type": DEFAULT_TYPE})


async def availability_zones(request: web.Request) -> web.Response:
    _ctx(request)
    zones = sorted({h.availability_zone for h in request.app[keys.CONFIG].hosts} or {"nova"})
    return web.json_response({"availabilityZoneInfo": capped(request, [
        {"zoneName": z, "zoneState": {"available": True}} for z in zones
    ])})


async def _quota_numbers(request: web.Request, project_id: str) -> tuple[dict, dict]:
    api = _api(request)
    async with request.app[keys.DB].acquire() as conn:
        limits = await api.limits(conn, project_id)
        used = await q.usage(conn, project_id)
    return limits, used


def _quota_body(project_id: str, limits: dict, used: dict, usage: bool) -> dict:
    body: dict = {"id": project_id}
    extra = {"per_volume_gigabytes": -1, "backups": 10, "backup_gigabytes": 1000, "groups": 10,
             "volumes___DEFAULT__": -1, "gigabytes___DEFAULT__": -1, "snapshots___DEFAULT__": -1}
    for r in RESOURCES:
        body[r] = {"limit": limits[r], "in_use": used[r], "reserved": 0, "allocated": 0} if usage else limits[r]
    for r, v in extra.items():
        body[r] = {"limit": v, "in_use": 0, "reserved": 0, "allocated": 0} if usage else v
    return body


async def show_quota(request: web.Request) -> web.Response:
    _ctx(request)
    target = request.match_info["target_id"]
    authorize(request, "volume_extension:quotas:show", target)
    usage = request.query.get("usage", "").lower() in ("1", "true", "yes")
    limits, used = await _quota_numbers(request, target)
    return web.json_response({"quota_set": _quota_body(target, limits, used, usage)})


async def quota_defaults(request: web.Request) -> web.Response:
    _ctx(request)
    target = request.match_info["target_id"]
    authorize(request, "volume_extension:quotas:show", target)  # Cinder guards defaults with show
    cfg = request.app[keys.CONFIG].volume
    limits = {r: getattr(cfg, r) for r in RESOURCES}
    return web.json_response({"quota_set": _quota_body(target, limits, dict.fromkeys(RESOURCES, 0), False)})


async def update_quota(request: web.Request) -> web.Response:
    _ctx(request)
    target = request.match_info["target_id"]
    authorize(request, "volume_extension:quotas:update", target)
    body = (await read_json(request)).get("quota_set")
    if not isinstance(body, dict):
        raise errors.BadRequest("Missing required element 'quota_set' in request body.")
    values = {}
    for k, v in body.items():
        if k in RESOURCES:
            try:
                if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                    raise ValueError(v)
                values[k] = int(v)
            except (TypeError, ValueError):
                raise errors.BadRequest(f"Invalid input received: Quota value {v} for {k} must be an integer.") \
                    from None
            if values[k] > MAX_QUOTA:
                raise errors.BadRequest(f"Invalid input received: Quota limit {v} for {k} must be less than or "
                                        f"equal to {MAX_QUOTA}.")
            if values[k] < -1:
                raise errors.BadRequest(f"Invalid input received: Quota limit {v} for {k} must be -1 or greater.")
    async with request.app[keys.DB].acquire() as conn:
        await conn.executemany(
            """INSERT INTO quotas (project_id, resource, hard_limit) VALUES ($1, $2, $3)
               ON CONFLICT (project_id, resource) DO UPDATE SET hard_limit = EXCLUDED.hard_limit""",
            [(target, k, v) for k, v in values.items()],
        )
    limits, used = await _quota_numbers(request, target)
    body = _quota_body(target, limits, used, False)
    body.pop("id")
    return web.json_response({"quota_set": body})


async def limits(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    lim, used = await _quota_numbers(request, ctx.project_id)
    absolute = {
        "maxTotalVolumes": lim["volumes"],
        "maxTotalSnapshots": lim["snapshots"],
        "maxTotalVolumeGigabytes": lim["gigabytes"],
        "maxTotalBackups": 10,
        "maxTotalBackupGigabytes": 1000,
    }
    if allowed(request, "limits_extension:used_limits"):  # Cinder adds usage only when allowed
        absolute.update({
            "totalVolumesUsed": used["volumes"],
            "totalSnapshotsUsed": used["snapshots"],
            "totalGigabytesUsed": used["gigabytes"],
            "totalBackupsUsed": 0,
            "totalBackupGigabytesUsed": 0,
        })
    return web.json_response({"limits": {"rate": [], "absolute": absolute}})


#: The Cinder rules each handler asks (tests check every one is registered).
HANDLER_RULES: dict[str, tuple[str, ...]] = {
    "versions": (),
    "list_volumes": ("context_is_admin", "volume:get_all"),
    "list_volumes_detail": ("context_is_admin", "volume:get_all", "volume_extension:volume_tenant_attribute",
                            "volume_extension:volume_image_metadata:show", "volume_extension:volume_host_attribute",
                            "volume_extension:volume_mig_status_attribute"),
    "create_volume": ("volume:create", "volume:create_from_image"),
    "show_volume": ("context_is_admin", "volume:get"),
    "update_volume": ("context_is_admin", "volume:get", "volume:update"),
    "delete_volume": ("context_is_admin", "volume:get", "volume:delete"),
    "volume_metadata": ("context_is_admin", "volume:get", "volume:get_volume_metadata",
                        "volume:create_volume_metadata", "volume:update_volume_metadata"),
    "volume_metadata_delete": ("context_is_admin", "volume:get", "volume:delete_volume_metadata"),
    "volume_action": ("context_is_admin", "volume:get", "volume:update"),
    "_list_snapshots": ("context_is_admin", "volume:get_all_snapshots",
                        "volume_extension:extended_snapshot_attributes"),
    "create_snapshot": ("volume:create_snapshot",),
    "show_snapshot": ("context_is_admin", "volume:get_snapshot"),
    "update_snapshot": ("context_is_admin", "volume:get_snapshot", "volume:update_snapshot"),
    "delete_snapshot": ("context_is_admin", "volume:get_snapshot", "volume:delete_snapshot"),
    "list_types": ("volume_extension:type_get_all",),
    "show_type": ("volume_extension:type_get",),
    "availability_zones": (),
    "show_quota": ("volume_extension:quotas:show",),
    "update_quota": ("volume_extension:quotas:update",),
    "quota_defaults": ("volume_extension:quotas:show",),
    "limits": ("limits_extension:used_limits",),
}


def add_routes(app: web.Application) -> None:
    r = app.router
    for path in ("/volume", "/volume/", "/volume/v3", "/volume/v3/"):
        r.add_get(path, versions)
    p = "/volume/v3/{project_id}"

    def add(method: str, path: str, handler) -> None:
        r.add_route(method, path, versioned(handler))

    add("GET", f"{p}/volumes", list_volumes)
    add("POST", f"{p}/volumes", create_volume)
    add("GET", f"{p}/volumes/detail", list_volumes_detail)
    add("GET", p + "/volumes/{volume_id}", show_volume)
    add("PUT", p + "/volumes/{volume_id}", update_volume)
    add("DELETE", p + "/volumes/{volume_id}", delete_volume)
    add("GET", p + "/volumes/{volume_id}/metadata", volume_metadata)
    add("POST", p + "/volumes/{volume_id}/metadata", volume_metadata)
    add("PUT", p + "/volumes/{volume_id}/metadata", volume_metadata)
    add("DELETE", p + "/volumes/{volume_id}/metadata/{key}", volume_metadata_delete)
    add("POST", p + "/volumes/{volume_id}/action", volume_action)
    add("GET", f"{p}/snapshots", _list_snapshots)
    add("GET", f"{p}/snapshots/detail", _list_snapshots)
    add("POST", f"{p}/snapshots", create_snapshot)
    add("GET", p + "/snapshots/{snapshot_id}", show_snapshot)
    add("PUT", p + "/snapshots/{snapshot_id}", update_snapshot)
    add("DELETE", p + "/snapshots/{snapshot_id}", delete_snapshot)
    add("GET", f"{p}/types", list_types)
    add("GET", p + "/types/{type_id}", show_type)
    add("GET", f"{p}/os-availability-zone", availability_zones)
    add("GET", p + "/os-quota-sets/{target_id}", show_quota)
    add("PUT", p + "/os-quota-sets/{target_id}", update_quota)
    add("GET", p + "/os-quota-sets/{target_id}/defaults", quota_defaults)
    add("GET", f"{p}/limits", limits)
