"""Glance v2 subset at /image: images, their data, members and tags.

Create (``POST /v2/images``, status ``queued``), upload (``PUT .../file``:
streamed to disk while hashed, ``queued`` → ``saving`` → ``active``; any failure
puts the image back to ``queued`` with no data), download, list with Glance's
filters, sorting and pagination, show, JSON-patch update, delete, members, tags,
and the schemas the clients fetch. Every decision goes through Glance's policy
(``keys.GLANCE_POLICY``, Glance's rule names and targets: the image's owner as
``project_id``/``owner``, its visibility, ``member_id``); with the defaults only
admins publicize, owners (or admins) modify. A rule denied on an image the caller
may not even ``get_image`` answers 404, as Glance hides what it will not show.

Large uploads: aiohttp's ``client_max_size`` only limits bodies read whole
(``request.read()/json()``); the upload handler reads ``request.content`` as a
stream, bounded instead by ``[image] size_cap_bytes`` (Glance's image_size_cap),
the owner's ``[quota] image_size_total_mib`` (413 both) and the store's free space
less ``[image] reserve_free_bytes`` (507): checked against Content-Length before a
byte is read and again as the data arrives.
"""

from __future__ import annotations

import uuid as uuidlib
from typing import Any
from urllib.parse import urlencode

import asyncpg
import structlog
from aiohttp import web

from novalite.api import errors, keys, validation
from novalite.api import policy as api_policy
from novalite.api.middleware import parse_json
from novalite.api.pagination import capped, max_limit, page_limit
from novalite.api.policy import context
from novalite.context import RequestContext
from novalite.db import images as db
from novalite.image.store import CHUNK, ImageStore, ImageTooLarge, StorageFull, UploadError

log = structlog.get_logger(__name__)

DISK_FORMATS = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop")
CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")
VISIBILITIES = ("public", "private", "shared", "community")
READ_ONLY = {"id", "status", "checksum", "os_hash_algo", "os_hash_value", "size", "virtual_size",
             "created_at", "updated_at", "self", "file", "schema", "direct_url", "locations", "stores"}
WRITABLE = {"name", "visibility", "protected", "os_hidden", "disk_format", "container_format",
            "min_disk", "min_ram", "tags", "owner"}
PATCH_TYPES = ("application/openstack-images-v2.1-json-patch", "application/openstack-images-v2.0-json-patch")
# Query parameters of GET /v2/images that are not property filters.
LIST_PARAMS = {"limit", "marker", "sort_key", "sort_dir", "sort", "name", "id", "status", "visibility",
               "member_status", "owner", "disk_format", "container_format", "protected", "os_hidden", "tag",
               "size_min", "size_max", "created_at", "updated_at"}
# SDK-computed checksums, verified on upload when the client set them.
OWNER_MD5 = "owner_specified.openstack.md5"
OWNER_SHA256 = "owner_specified.openstack.sha256"


def store(request: web.Request) -> ImageStore:
    return request.app[keys.IMAGE_STORE]


def _ts(value) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def image_document(row: asyncpg.Record) -> dict:
    """The image as Glance v2 shows it: base attributes plus extra properties at top level."""
    iid = str(row["id"])
    doc: dict[str, Any] = {
        "id": iid,
        "name": row["name"],
        "status": row["status"],
        "visibility": row["visibility"],
        "protected": row["protected"],
        "os_hidden": row["os_hidden"],
        "owner": row["owner"],
        "checksum": row["checksum"],
        "os_hash_algo": row["os_hash_algo"],
        "os_hash_value": row["os_hash_value"],
        "size": row["size"],
        "virtual_size": row["virtual_size"],
        "min_ram": row["min_ram"],
        "min_disk": row["min_disk"],
        "disk_format": row["disk_format"],
        "container_format": row["container_format"],
        "created_at": _ts(row["created_at"]),
        "updated_at": _ts(row["updated_at"]),
        "tags": list(row["tags"] or []),
        "self": f"/v2/images/{iid}",
        "file": f"/v2/images/{iid}/file",
        "schema": "/v2/schemas/image",
    }
    for key, value in (row["properties"] or {}).items():
        doc.setdefault(key, value)
    return doc


def not_found(image_id: str) -> errors.NotFound:
    return errors.NotFound(f"No image found with ID {image_id}")


def allowed(request: web.Request, rule: str, target: dict | None = None) -> bool:
    """Whether Glance's policy lets the caller do ``rule`` on ``target`` (default: own project)."""
    if target is None:
        ctx = context(request)
        target = {"project_id": ctx.project_id, "owner": ctx.project_id}
    return api_policy.check(request, keys.GLANCE_POLICY, rule, target)


def is_admin(request: web.Request) -> bool:
    """Glance's ``context_is_admin``: who sees and may set everything (owner, any image)."""
    return allowed(request, "context_is_admin")


def denied(action: str) -> errors.Forbidden:
    return errors.Forbidden(f"You are not authorized to complete {action} action.")


def image_target(ctx: RequestContext, row: asyncpg.Record | dict, member_id: str | None = None) -> dict:
    """Glance's ImageTarget: the owner is ``project_id`` and ``owner``; ``member_id`` is the
    member an action names, else the caller when it sees a shared image through membership."""
    owner = row["owner"]
    target = {"project_id": owner, "owner": owner, "visibility": row["visibility"]}
    if row.get("id") is not None:
        target["image_id"] = str(row["id"])
    if member_id is None and row["visibility"] == "shared" and owner != ctx.project_id:
        member_id = ctx.project_id
    if member_id is not None:
        target["member_id"] = member_id
    return target


def authorize_image(request: web.Request, row: asyncpg.Record, rule: str, member_id: str | None = None) -> None:
    """403 when ``rule`` denies; 404 when the caller may not even get_image (Glance hides it)."""
    ctx = context(request)
    if allowed(request, rule, image_target(ctx, row, member_id)):
        return
    if rule == "get_image" or not allowed(request, "get_image", image_target(ctx, row)):
        raise not_found(str(row["id"]))
    raise denied(rule)


async def visible_image(request: web.Request, conn: asyncpg.Connection, image_id: str) -> asyncpg.Record:
    """The image if the caller's project sees it (Glance's visibility query) and get_image allows."""
    ctx = context(request)
    row = await db.get_visible(conn, image_id, ctx.project_id, is_admin(request))
    if row is None:
        raise not_found(image_id)
    authorize_image(request, row, "get_image")
    return row


async def owned_image(request: web.Request, conn: asyncpg.Connection, image_id: str, rule: str) -> asyncpg.Record:
    """A visible image the caller may ``rule`` (modify_image, delete_image, upload_image, ...)."""
    row = await visible_image(request, conn, image_id)
    authorize_image(request, row, rule)
    return row


async def read_body(request: web.Request) -> Any:
    raw = await request.read()
    return parse_json(request, raw, "Malformed JSON in request body.") if raw else None


# ------------------------------------------------------------------ validation

def _check_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise errors.BadRequest(f"Invalid value for {key}: {value!r} is not a non-negative integer.")
    return value


def validate_attribute(
    request: web.Request, target: dict, key: str, value: Any, *, status: str = "queued"
) -> Any:
    """One base attribute as a create body or a patch sets it on the image ``target``
    (403 read-only or denied by policy, 400 invalid)."""
    if key in READ_ONLY:
        raise errors.Forbidden(f"Attribute '{key}' is read-only.")
    if key == "name":
        problem = None if value is None else validation.name_problem(value, max_length=255, min_length=0)
        if problem:
            raise errors.BadRequest(f"Invalid value for name: {problem}")
    elif key == "visibility":
        if value not in VISIBILITIES:
            raise errors.BadRequest(f"Invalid visibility value: {value}")
        rule = {"public": "publicize_image", "community": "communitize_image"}.get(value)
        if rule and not allowed(request, rule, target):
            raise denied(rule)
    elif key in ("protected", "os_hidden"):
        if not isinstance(value, bool):
            raise errors.BadRequest(f"Invalid value for {key}: {value!r} is not of type 'boolean'.")
    elif key in ("min_disk", "min_ram"):
        value = _check_int(key, value)
    elif key in ("disk_format", "container_format"):
        formats = DISK_FORMATS if key == "disk_format" else CONTAINER_FORMATS
        if value is not None and value not in formats:
            raise errors.BadRequest(f"Invalid value '{value}' for parameter '{key}': "
                                    f"must be one of {', '.join(formats)}.")
        if status != "queued":
            raise errors.Forbidden(f"Attribute {key} can be only replaced for a queued image.")
    elif key == "tags":
        if not isinstance(value, list) or not all(isinstance(t, str) and len(t) <= 255 for t in value):
            raise errors.BadRequest("Invalid value for tags: a list of strings.")
        value = list(dict.fromkeys(value))
    elif key == "owner":
        if not is_admin(request):
            raise errors.Forbidden("Attribute 'owner' can only be changed by an admin.")
        if value is not None and not isinstance(value, str):
            raise errors.BadRequest("Invalid value for owner.")
    return value


def validate_property(key: str, value: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > 255:
        raise errors.BadRequest("Property names are non-empty strings of at most 255 characters.")
    if not isinstance(value, str):
        raise errors.BadRequest(f"Invalid value for property {key}: {value!r} is not of type 'string'.")
    return value


# -------------------------------------------------------------- version, schema

def _versions(base: str) -> list[dict]:
    href = f"{base}/image/v2/"
    current = ["v2.16"]
    supported = ["v2.15", "v2.14", "v2.13", "v2.12", "v2.11", "v2.10", "v2.9", "v2.8", "v2.7", "v2.6",
                 "v2.5", "v2.4", "v2.3", "v2.2", "v2.1", "v2.0"]
    return ([{"id": v, "status": "CURRENT", "links": [{"rel": "self", "href": href}]} for v in current]
            + [{"id": v, "status": "SUPPORTED", "links": [{"rel": "self", "href": href}]} for v in supported])


async def versions(request: web.Request) -> web.Response:
    """Glance answers its root with 300 Multiple Choices."""
    return web.json_response({"versions": _versions(request.app[keys.CONFIG].public_url)}, status=300)


async def versions_ok(request: web.Request) -> web.Response:
    return web.json_response({"versions": _versions(request.app[keys.CONFIG].public_url)})


def image_schema() -> dict:
    nullable_str = {"type": ["null", "string"]}
    return {
        "name": "image",
        "additionalProperties": {"type": "string"},
        "properties": {
            "id": {"type": "string", "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-"
                   "([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"},
            "name": {**nullable_str, "maxLength": 255},
            "status": {"type": "string", "readOnly": True,
                       "enum": ["queued", "saving", "active", "killed", "deleted", "uploading", "importing",
                                "pending_delete", "deactivated"]},
            "visibility": {"type": "string", "enum": list(VISIBILITIES)},
            "protected": {"type": "boolean"},
            "os_hidden": {"type": "boolean"},
            "checksum": {**nullable_str, "readOnly": True, "maxLength": 32},
            "os_hash_algo": {**nullable_str, "readOnly": True, "maxLength": 64},
            "os_hash_value": {**nullable_str, "readOnly": True, "maxLength": 128},
            "owner": {**nullable_str, "maxLength": 255},
            "size": {"type": ["null", "integer"], "readOnly": True},
            "virtual_size": {"type": ["null", "integer"], "readOnly": True},
            "container_format": {"type": ["null", "string"], "enum": [None, *CONTAINER_FORMATS]},
            "disk_format": {"type": ["null", "string"], "enum": [None, *DISK_FORMATS]},
            "created_at": {"type": "string", "readOnly": True},
            "updated_at": {"type": "string", "readOnly": True},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}},
            "direct_url": {"type": "string", "readOnly": True},
            "min_ram": {"type": "integer"},
            "min_disk": {"type": "integer"},
            "self": {"type": "string", "readOnly": True},
            "file": {"type": "string", "readOnly": True},
            "schema": {"type": "string", "readOnly": True},
            "locations": {"type": "array", "items": {"type": "object"}},
            "kernel_id": {"type": ["null", "string"],
                          "description": "ID of image stored in Glance that should be used as the kernel "
                                         "when booting an AMI-style image.", "is_base": False},
            "ramdisk_id": {"type": ["null", "string"],
                           "description": "ID of image stored in Glance that should be used as the ramdisk "
                                          "when booting an AMI-style image.", "is_base": False},
            "os_distro": {"type": "string", "is_base": False},
            "os_version": {"type": "string", "is_base": False},
            "architecture": {"type": "string", "is_base": False},
            "instance_uuid": {"type": "string", "is_base": False},
        },
        "links": [
            {"rel": "self", "href": "{self}"},
            {"rel": "enclosure", "href": "{file}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


async def schema_image(request: web.Request) -> web.Response:
    return web.json_response(image_schema())


async def schema_images(request: web.Request) -> web.Response:
    return web.json_response({
        "name": "images",
        "properties": {
            "images": {"type": "array", "items": image_schema()},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    })


async def schema_member(request: web.Request) -> web.Response:
    return web.json_response({
        "name": "member",
        "properties": {
            "image_id": {"type": "string"}, "member_id": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "accepted", "rejected"]},
            "created_at": {"type": "string"}, "updated_at": {"type": "string"}, "schema": {"type": "string"},
        },
    })


# ---------------------------------------------------------------------- images

async def create_image(request: web.Request) -> web.Response:
    ctx = context(request)
    own = {"owner": ctx.project_id, "visibility": "shared"}
    if not allowed(request, "add_image", image_target(ctx, own)):
        raise denied("add_image")
    body = await read_body(request)
    if not isinstance(body, dict):
        raise errors.BadRequest("Request body must be a JSON object.")
    values: dict[str, Any] = dict(own)
    properties: dict[str, str] = {}
    for key, value in body.items():
        if key == "id":
            try:
                values["id"] = uuidlib.UUID(str(value))
            except ValueError:
                raise errors.BadRequest(f"Invalid image id {value!r}: not a UUID.") from None
        elif key in WRITABLE or key in READ_ONLY:
            values[key] = validate_attribute(request, image_target(ctx, own), key, value)
        else:
            properties[key] = validate_property(key, value)
    if values["owner"] != ctx.project_id and not allowed(request, "add_image", image_target(ctx, values)):
        raise denied("add_image")  # Glance checks add_image on the image as it will be owned
    async with request.app[keys.DB].acquire() as conn:
        try:
            row = await db.create(conn, values, properties)
        except asyncpg.UniqueViolationError:
            raise errors.Conflict(f"An image with identifier {values['id']} already exists") from None
    log.info("image_created", image_id=str(row["id"]), name=row["name"])
    doc = image_document(row)
    return web.json_response(doc, status=201, headers={"Location": f"{request.app[keys.CONFIG].public_url}/image{doc['self']}"})


def _parse_list_query(request: web.Request, ctx: RequestContext) -> db.ImageQuery:
    qs = request.query
    q = db.ImageQuery(project_id=ctx.project_id, is_admin=is_admin(request))
    # Glance: limit_param_default (25) when absent, clamped to api_limit_max either way
    q.limit = page_limit(request) if "limit" in qs else min(q.limit, max_limit(request))
    q.marker = qs.get("marker")
    if qs.get("visibility"):
        if qs["visibility"] not in (*VISIBILITIES, "all"):
            raise errors.BadRequest(f"Invalid visibility value: {qs['visibility']}")
        q.visibility = qs["visibility"]
    if qs.get("member_status"):
        if qs["member_status"] not in ("pending", "accepted", "rejected", "all"):
            raise errors.BadRequest(f"Invalid status value: {qs['member_status']}")
        q.member_status = qs["member_status"]

    def in_list(value: str) -> list[str] | str:
        if value.startswith("in:"):
            return [v.strip().strip('"') for v in value[3:].split(",") if v.strip()]
        return value

    if qs.get("id"):
        ids = in_list(qs["id"])
        ids = ids if isinstance(ids, list) else [ids]
        try:
            q.ids = [uuidlib.UUID(i) for i in ids]
        except ValueError:
            q.ids = []
    for key in ("name", "status", "owner", "disk_format", "container_format"):
        if key in qs:
            q.equals[key] = in_list(qs[key])
    if "protected" in qs:
        if qs["protected"].lower() not in ("true", "false"):
            raise errors.BadRequest("Invalid value for protected filter")
        q.equals["protected"] = qs["protected"].lower() == "true"
    if "os_hidden" in qs:
        if qs["os_hidden"].lower() not in ("true", "false"):
            raise errors.BadRequest("Invalid value for os_hidden filter")
        q.os_hidden = qs["os_hidden"].lower() == "true"
    q.tag = qs.getall("tag", [])
    for key in ("size_min", "size_max"):
        if key in qs:
            try:
                setattr(q, key, int(qs[key]))
            except ValueError:
                raise errors.BadRequest(f"{key} must be an integer") from None
    for key, value in qs.items():
        if key not in LIST_PARAMS:
            q.properties[key] = value

    # sort: either sort=key:dir,key:dir or repeated sort_key with sort_dir
    sort: list[tuple[str, str]] = []
    if "sort" in qs:
        if "sort_key" in qs or "sort_dir" in qs:
            raise errors.BadRequest("The 'sort' parameter cannot be combined with 'sort_key' or 'sort_dir'.")
        for part in qs["sort"].split(","):
            key, _, direction = part.strip().partition(":")
            sort.append((key, direction or "desc"))
    else:
        keys = qs.getall("sort_key", []) or ["created_at"]
        dirs = qs.getall("sort_dir", [])
        if len(dirs) > 1 and len(dirs) != len(keys):
            raise errors.BadRequest("Number of sort dirs does not match the number of sort keys")
        for i, key in enumerate(keys):
            direction = dirs[i] if len(dirs) > 1 else (dirs[0] if dirs else "desc")
            sort.append((key, direction))
    for key, direction in sort:
        if key not in db.SORT_KEYS:
            raise errors.BadRequest(f"Invalid sort key: {key}. It should be one of: {', '.join(sorted(db.SORT_KEYS))}")
        if direction not in ("asc", "desc"):
            raise errors.BadRequest(f"Invalid sort direction: {direction}")
    q.sort = sort
    return q


async def list_images(request: web.Request) -> web.Response:
    ctx = context(request)
    if not allowed(request, "get_images"):
        raise denied("get_images")
    q = _parse_list_query(request, ctx)
    async with request.app[keys.DB].acquire() as conn:
        try:
            rows = await db.list_images(conn, q)
        except db.MarkerNotFound:
            raise errors.BadRequest(f"marker [{q.marker}] not found") from None
    body: dict[str, Any] = {"images": [image_document(r) for r in rows], "first": "/v2/images",
                            "schema": "/v2/schemas/images"}
    if q.limit and len(rows) == q.limit:
        params = [(k, v) for k, v in request.query.items() if k != "marker"]
        params.append(("marker", str(rows[-1]["id"])))
        body["next"] = "/v2/images?" + urlencode(params)
    return web.json_response(body)


async def show_image(request: web.Request) -> web.Response:
    async with request.app[keys.DB].acquire() as conn:
        row = await visible_image(request, conn, request.match_info["image_id"])
    return web.json_response(image_document(row))


def _patch_ops(body: Any, content_type: str) -> list[tuple[str, str, Any]]:
    """(op, attribute, value) from a v2.1 ({"op", "path"}) or v2.0 ({"replace": path}) JSON patch."""
    if not isinstance(body, list):
        raise errors.BadRequest("Request body must be a JSON array of operation objects.")
    ops = []
    for item in body:
        if not isinstance(item, dict):
            raise errors.BadRequest("Operations must be JSON objects.")
        if content_type.endswith("v2.1-json-patch"):
            op, path = item.get("op"), item.get("path")
        else:
            found = [k for k in ("add", "replace", "remove") if k in item]
            if len(found) != 1:
                raise errors.BadRequest("Operation objects must contain exactly one of \"add\", \"remove\", \"replace\"")
            op, path = found[0], item[found[0]]
        if op not in ("add", "replace", "remove"):
            raise errors.BadRequest(f"Invalid operation: `{op}`: Operation must be one of add, remove, replace.")
        if not isinstance(path, str) or not path.startswith("/") or path == "/":
            raise errors.BadRequest(f"Invalid JSON pointer for this resource: '{path}'")
        name = path[1:].replace("~1", "/").replace("~0", "~")
        if op != "remove" and "value" not in item:
            raise errors.BadRequest(f"Operation \"{op}\" requires a member named \"value\".")
        ops.append((op, name, item.get("value")))
    return ops


async def update_image(request: web.Request) -> web.Response:
    ctx = context(request)
    if request.content_type not in PATCH_TYPES:
        raise errors.UnsupportedMediaType(
            f"Unsupported Content-Type: use one of {', '.join(PATCH_TYPES)}",
            headers={"Accept-Patch": ", ".join(PATCH_TYPES)})
    ops = _patch_ops(await read_body(request), request.content_type)
    async with request.app[keys.DB].acquire() as conn, conn.transaction():
        row = await owned_image(request, conn, request.match_info["image_id"], "modify_image")
        row = await conn.fetchrow("SELECT * FROM images WHERE id = $1 FOR UPDATE", row["id"])
        target = image_target(ctx, row)
        values: dict[str, Any] = {}
        props = dict(row["properties"] or {})
        for op, name, value in ops:
            if name.startswith("tags/"):
                raise errors.BadRequest(f"Invalid JSON pointer for this resource: '/{name}'")
            if name in READ_ONLY:
                raise errors.Forbidden(f"Attribute '{name}' is read-only.")
            if name in WRITABLE:
                if op == "remove":
                    raise errors.Forbidden(f"Attribute '{name}' is reserved.")
                values[name] = validate_attribute(request, target, name, value, status=row["status"])
            elif op == "remove":
                if name not in props:
                    raise errors.Conflict(f"Property {name} does not exist.")
                del props[name]
            else:
                if op == "replace" and name not in props:
                    raise errors.Conflict(f"Property {name} does not exist.")
                props[name] = validate_property(name, value)
        row = await db.update(conn, row["id"], values, props)
    return web.json_response(image_document(row))


async def delete_image(request: web.Request) -> web.Response:
    image_id = request.match_info["image_id"]
    async with request.app[keys.DB].acquire() as conn:
        row = await owned_image(request, conn, image_id, "delete_image")
        if row["protected"]:
            raise errors.Forbidden(f"Image {image_id} is protected and cannot be deleted.")
        if not await db.delete(conn, row["id"]):
            raise not_found(image_id)
    store(request).delete(str(row["id"]))
    log.info("image_deleted", image_id=str(row["id"]))
    return web.Response(status=204)


# ------------------------------------------------------------------------ data

def _virtual_size(path, disk_format: str | None, size: int) -> int | None:
    """qcow2: the virtual size from its header; raw-like formats: the file size."""
    if disk_format == "qcow2":
        with open(path, "rb") as f:
            header = f.read(32)
        if len(header) == 32 and header[:4] == b"QFI\xfb":
            return int.from_bytes(header[24:32], "big")
        return None
    if disk_format in ("raw", "iso", "ami", "aki", "ari"):
        return size
    return None


MIB = 1 << 20


class _UploadLimit:
    """The most bytes one upload may store, and the error that says why when it tries more."""

    def __init__(self, size_cap: int, quota_mib: int, used: int) -> None:
        self.size_cap = size_cap
        self.quota_mib = quota_mib
        self.quota_left = None if quota_mib < 0 else max(0, quota_mib * MIB - used)
        self.max_size = size_cap if self.quota_left is None else min(size_cap, self.quota_left)

    def error(self) -> errors.OverLimit:
        if self.quota_left is not None and self.quota_left < self.size_cap:
            return errors.OverLimit(
                f"Image data would exceed the project's image_size_total quota of {self.quota_mib} MiB "
                f"({self.quota_left} bytes left); quota exceeded.")
        return errors.OverLimit(f"The incoming image is larger than the image_size_cap of {self.size_cap} bytes.")


def storage_full() -> errors.ApiError:
    return errors.ApiError("Image storage media is full: not enough free space left for the image data.", code=507)


async def upload_image(request: web.Request) -> web.Response:
    image_id = request.match_info["image_id"]
    if request.content_type not in ("application/octet-stream", ""):
        raise errors.UnsupportedMediaType(f"Content type {request.content_type} is not supported for image data.")
    config = request.app[keys.CONFIG]
    pool = request.app[keys.DB]
    expected_size = request.content_length
    async with pool.acquire() as conn:
        row = await owned_image(request, conn, image_id, "upload_image")
        if not row["disk_format"] or not row["container_format"]:
            raise errors.BadRequest("Properties disk_format, container_format must be set prior to saving data.")
        used = await db.storage_usage(conn, row["owner"], row["id"]) if config.quota.image_size_total_mib >= 0 else 0
        limit = _UploadLimit(config.image.size_cap_bytes, config.quota.image_size_total_mib, used)
        if expected_size is not None and expected_size > limit.max_size:
            raise limit.error()  # refused before a byte is read; the image stays queued
        if expected_size is not None and expected_size > store(request).free_bytes():
            raise storage_full()
        saving = await db.compare_and_set_status(conn, row["id"], ("queued",), "saving")
    if saving is None:
        current = row["status"] if row["status"] != "queued" else "saving"
        raise errors.Conflict(f"Image status transition from {current} to saving is not allowed")
    props = row["properties"] or {}
    done = False
    try:
        try:
            stored = await store(request).write(
                str(row["id"]),
                request.content.iter_chunked(CHUNK),
                expected_size=expected_size,
                expected_md5=props.get(OWNER_MD5) or None,
                expected_sha256=props.get(OWNER_SHA256) or None,
                max_size=limit.max_size,
            )
        except ImageTooLarge:
            raise limit.error() from None
        except StorageFull:
            log.error("image_store_full", image_id=str(row["id"]), root=str(store(request).root))
            raise storage_full() from None
        except UploadError as exc:
            raise errors.BadRequest(str(exc)) from None
        vsize = _virtual_size(store(request).path(str(row["id"])), row["disk_format"], stored.size)
        async with pool.acquire() as conn:
            active = await db.compare_and_set_status(
                conn, row["id"], ("saving",), "active", size=stored.size, checksum=stored.checksum,
                os_hash_algo=stored.os_hash_algo, os_hash_value=stored.os_hash_value, virtual_size=vsize)
        if active is None:
            store(request).delete(str(row["id"]))
            raise errors.ApiError(
                f"Image {image_id} could not be found after upload. The image may have been deleted during "
                "the upload.", code=410)
        done = True
        log.info("image_uploaded", image_id=str(row["id"]), size=stored.size)
    finally:
        if not done:
            # failed or interrupted: back to queued, no data (the store removed the partial file)
            async with pool.acquire() as conn:
                await db.compare_and_set_status(conn, row["id"], ("saving",), "queued")
    return web.Response(status=204)


async def download_image(request: web.Request) -> web.StreamResponse:
    image_id = request.match_info["image_id"]
    async with request.app[keys.DB].acquire() as conn:
        row = await owned_image(request, conn, image_id, "download_image")
    if row["status"] != "active" or not store(request).exists(str(row["id"])):
        if row["status"] == "deactivated":
            raise errors.Forbidden("The requested image has been deactivated. Image data download is forbidden.")
        return web.Response(status=204)
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
    resp.content_length = row["size"]
    if row["checksum"]:
        resp.headers["Content-MD5"] = row["checksum"]
    await resp.prepare(request)
    async for chunk in store(request).read(str(row["id"])):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


# --------------------------------------------------------------- members, tags

def member_document(m: asyncpg.Record) -> dict:
    return {"image_id": str(m["image_id"]), "member_id": m["member"], "status": m["status"],
            "created_at": _ts(m["created_at"]), "updated_at": _ts(m["updated_at"]),
            "schema": "/v2/schemas/member"}


async def list_members(request: web.Request) -> web.Response:
    ctx = context(request)
    async with request.app[keys.DB].acquire() as conn:
        row = await visible_image(request, conn, request.match_info["image_id"])
        if row["visibility"] != "shared":
            raise errors.Forbidden("Only shared images have members.")
        authorize_image(request, row, "get_members")
        members = await db.list_members(conn, row["id"])
    # Glance's member repository: the owner (or an admin) lists every member, a member itself.
    if not allowed(request, "get_members", {"project_id": row["owner"], "owner": row["owner"]}):
        members = [m for m in members if m["member"] == ctx.project_id]
    return web.json_response({"members": [member_document(m) for m in capped(request, members)],
                              "schema": "/v2/schemas/members"})


async def add_member(request: web.Request) -> web.Response:
    body = await read_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("member"), str):
        raise errors.BadRequest("Request body must be a JSON object with a 'member' string.")
    async with request.app[keys.DB].acquire() as conn:
        row = await owned_image(request, conn, request.match_info["image_id"], "add_member")
        if row["visibility"] != "shared":
            raise errors.Forbidden("Only shared images have members.")
        m = await db.add_member(conn, row["id"], body["member"])
    if m is None:
        raise errors.Conflict(f"Member {body['member']} already associated with image {row['id']}")
    return web.json_response(member_document(m))


async def show_member(request: web.Request) -> web.Response:
    ctx = context(request)
    member_id = request.match_info["member_id"]
    async with request.app[keys.DB].acquire() as conn:
        row = await visible_image(request, conn, request.match_info["image_id"])
        m = await db.member(conn, row["id"], member_id)
    if m is None or not allowed(request, "get_member", image_target(ctx, row, member_id)):
        raise errors.NotFound(f"Member {member_id} not found")
    return web.json_response(member_document(m))


async def update_member(request: web.Request) -> web.Response:
    ctx = context(request)
    member_id = request.match_info["member_id"]
    body = await read_body(request)
    status = body.get("status") if isinstance(body, dict) else None
    if status not in ("pending", "accepted", "rejected"):
        raise errors.BadRequest(f"Invalid status value: {status}")
    async with request.app[keys.DB].acquire() as conn:
        row = await visible_image(request, conn, request.match_info["image_id"])
        if not allowed(request, "modify_member", image_target(ctx, row, member_id)):
            raise errors.Forbidden("You are not permitted to modify 'status' on this image member.")
        m = await db.set_member_status(conn, row["id"], member_id, status)
    if m is None:
        raise errors.NotFound(f"Member {member_id} not found")
    return web.json_response(member_document(m))


async def delete_member(request: web.Request) -> web.Response:
    member_id = request.match_info["member_id"]
    async with request.app[keys.DB].acquire() as conn:
        row = await owned_image(request, conn, request.match_info["image_id"], "delete_member")
        if not await db.delete_member(conn, row["id"], member_id):
            raise errors.NotFound(f"Member {member_id} not found")
    return web.Response(status=204)


async def add_tag(request: web.Request) -> web.Response:
    tag = request.match_info["tag"]
    async with request.app[keys.DB].acquire() as conn:
        row = await owned_image(request, conn, request.match_info["image_id"], "modify_image")
        if tag not in row["tags"]:
            await db.update(conn, row["id"], {"tags": [*row["tags"], tag]}, None)
    return web.Response(status=204)


async def delete_tag(request: web.Request) -> web.Response:
    tag = request.match_info["tag"]
    async with request.app[keys.DB].acquire() as conn:
        row = await owned_image(request, conn, request.match_info["image_id"], "modify_image")
        if tag not in row["tags"]:
            raise errors.NotFound(f"Tag {tag} not found")
        await db.update(conn, row["id"], {"tags": [t for t in row["tags"] if t != tag]}, None)
    return web.Response(status=204)


#: The Glance rules each handler asks (tests check every one is registered).
HANDLER_RULES: dict[str, tuple[str, ...]] = {
    "versions": (), "versions_ok": (), "schema_image": (), "schema_images": (), "schema_member": (),
    "create_image": ("add_image", "publicize_image", "communitize_image", "context_is_admin"),
    "list_images": ("get_images", "context_is_admin"),
    "show_image": ("get_image",),
    "update_image": ("get_image", "modify_image", "publicize_image", "communitize_image", "context_is_admin"),
    "delete_image": ("get_image", "delete_image"),
    "upload_image": ("get_image", "upload_image"),
    "download_image": ("get_image", "download_image"),
    "list_members": ("get_image", "get_members"),
    "add_member": ("get_image", "add_member"),
    "show_member": ("get_image", "get_member"),
    "update_member": ("get_image", "modify_member"),
    "delete_member": ("get_image", "delete_member"),
    "add_tag": ("get_image", "modify_image"),
    "delete_tag": ("get_image", "modify_image"),
    "image_tasks": ("get_image",),
}


async def image_tasks(request: web.Request) -> web.Response:
    """GET /v2/images/{id}/tasks (Glance 2.12): the image's import tasks; novalite runs none, so none."""
    async with request.app[keys.DB].acquire() as conn:
        await visible_image(request, conn, request.match_info["image_id"])
    return web.json_response({"tasks": []})


def add_routes(app: web.Application) -> None:
    """Image routes; the image store lives under ``<state dir>/images``."""
    config = app[keys.CONFIG]
    app[keys.IMAGE_STORE] = ImageStore(config.state_dir / "images", config.image.reserve_free_bytes)
    r = app.router
    r.add_get("/image", versions)
    r.add_get("/image/", versions)
    r.add_get("/image/versions", versions_ok)
    r.add_get("/image/v2/schemas/image", schema_image)
    r.add_get("/image/v2/schemas/images", schema_images)
    r.add_get("/image/v2/schemas/member", schema_member)
    r.add_post("/image/v2/images", create_image)
    r.add_get("/image/v2/images", list_images)
    r.add_get("/image/v2/images/{image_id}", show_image)
    r.add_patch("/image/v2/images/{image_id}", update_image)
    r.add_delete("/image/v2/images/{image_id}", delete_image)
    r.add_put("/image/v2/images/{image_id}/file", upload_image)
    r.add_get("/image/v2/images/{image_id}/file", download_image)
    r.add_get("/image/v2/images/{image_id}/tasks", image_tasks)
    r.add_get("/image/v2/images/{image_id}/members", list_members)
    r.add_post("/image/v2/images/{image_id}/members", add_member)
    r.add_get("/image/v2/images/{image_id}/members/{member_id}", show_member)
    r.add_put("/image/v2/images/{image_id}/members/{member_id}", update_member)
    r.add_delete("/image/v2/images/{image_id}/members/{member_id}", delete_member)
    r.add_put("/image/v2/images/{image_id}/tags/{tag}", add_tag)
    r.add_delete("/image/v2/images/{image_id}/tags/{tag}", delete_tag)
