"""os-quota-sets and limits: per-project hard limits and what is in use.

Limits come from ``novalite.quota`` (config defaults overlaid by rows). Nova
still lists the nova-network resources (fixed_ips, floating_ips,
security_groups, security_group_rules, unlimited by default) before 2.36 and
the injected_* ones before 2.57.
"""

from __future__ import annotations

from aiohttp import web

from novalite import quota
from novalite.api import errors, keys
from novalite.api.compute import common
from novalite.api.compute.validation import BOOLEAN, to_bool, validate_body, validate_query
from novalite.api.middleware import read_json
from novalite.db import catalog

NETWORK = ("fixed_ips", "floating_ips", "security_groups", "security_group_rules")
INJECTED = ("injected_files", "injected_file_content_bytes", "injected_file_path_bytes")
# Nova lists its resources sorted by name.
ALL_RESOURCES = tuple(sorted((*quota.RESOURCES, *NETWORK)))
PER_USER = ("key_pairs", "server_group_members")  # Nova shows 0 in use for these

_QUOTA_VALUE = {"type": ["integer", "string"], "pattern": "^-?[0-9]+$", "minimum": -1, "maximum": 0x7FFFFFFF}


def shown_resources(request: web.Request) -> list[str]:
    """The resources os-quota-sets shows at this microversion."""
    hidden: tuple[str, ...] = ()
    if common.at_least(request, 57):
        hidden = (*NETWORK, *INJECTED)
    elif common.at_least(request, 36):
        hidden = NETWORK
    return [r for r in ALL_RESOURCES if r not in hidden]


async def project_limits(conn, request: web.Request, project_id: str) -> dict[str, int]:
    """Effective limits of every resource, the legacy network ones included."""
    limits = await quota.get_limits(conn, request.app[keys.CONFIG].quota, project_id)
    stored = await catalog.stored_limits(conn, quota.CLASS_PREFIX + "default")
    stored.update(await catalog.stored_limits(conn, project_id))
    for r in NETWORK:
        limits[r] = stored.get(r, quota.UNLIMITED)
    return limits


async def project_usage(conn, project_id: str) -> dict[str, int]:
    used = await quota.usage(conn, project_id)
    return {r: (0 if r in PER_USER or r in NETWORK else used.get(r, 0)) for r in ALL_RESOURCES}


def _config_defaults(request: web.Request) -> dict[str, int]:
    cfg = request.app[keys.CONFIG].quota
    return {r: getattr(cfg, r) if r in quota.RESOURCES else quota.UNLIMITED for r in ALL_RESOURCES}


async def class_limits(conn, request: web.Request, class_name: str) -> dict[str, int]:
    """A quota class's limits: the config defaults overlaid by class `default`, then by this class."""
    limits = _config_defaults(request)
    for name in dict.fromkeys(("default", class_name)):
        limits.update(await catalog.stored_limits(conn, quota.CLASS_PREFIX + name))
    return limits


async def _verify_project(request: web.Request, conn, project_id: str) -> None:
    if not await catalog.project_exists(conn, project_id):
        raise errors.BadRequest(f"Project ID {project_id} is not a valid project.")


def _user_query(request: web.Request) -> None:
    validate_query(request, {"user_id": {"type": "string"}}, strict=common.at_least(request, 75))


async def show_quota_set(request: web.Request) -> web.Response:
    """GET /os-quota-sets/{project_id}."""
    _user_query(request)
    project_id = request.match_info["project_id"]
    common.authorize(request, "os_compute_api:os-quota-sets:show", {"project_id": project_id})
    async with request.app[keys.DB].acquire() as conn:
        await _verify_project(request, conn, project_id)
        limits = await project_limits(conn, request, project_id)
    body = {"id": project_id} | {r: limits[r] for r in shown_resources(request)}
    return web.json_response({"quota_set": body})


async def show_quota_set_detail(request: web.Request) -> web.Response:
    """GET /os-quota-sets/{project_id}/detail: limit, in_use and reserved per resource."""
    _user_query(request)
    project_id = request.match_info["project_id"]
    common.authorize(request, "os_compute_api:os-quota-sets:detail", {"project_id": project_id})
    async with request.app[keys.DB].acquire() as conn:
        await _verify_project(request, conn, project_id)
        limits = await project_limits(conn, request, project_id)
        used = await project_usage(conn, project_id)
    body: dict = {"id": project_id}
    for r in shown_resources(request):
        body[r] = {"in_use": used[r], "limit": limits[r], "reserved": 0}
    return web.json_response({"quota_set": body})


async def show_defaults(request: web.Request) -> web.Response:
    """GET /os-quota-sets/{project_id}/defaults."""
    project_id = request.match_info["project_id"]
    common.authorize(request, "os_compute_api:os-quota-sets:defaults", {"project_id": project_id})
    async with request.app[keys.DB].acquire() as conn:
        await _verify_project(request, conn, project_id)
        defaults = await class_limits(conn, request, "default")
    body = {"id": project_id} | {r: defaults[r] for r in shown_resources(request)}
    return web.json_response({"quota_set": body})


async def update_quota_set(request: web.Request) -> web.Response:
    """PUT /os-quota-sets/{project_id} (admin): set limits, not below usage unless forced."""
    body = await read_json(request)
    props: dict = {r: _QUOTA_VALUE for r in shown_resources(request)}
    props["force"] = BOOLEAN
    validate_body(
        {
            "type": "object",
            "properties": {"quota_set": {"type": "object", "properties": props, "additionalProperties": False}},
            "required": ["quota_set"],
            "additionalProperties": False,
        },
        body,
    )
    _user_query(request)
    project_id = request.match_info["project_id"]
    common.authorize(request, "os_compute_api:os-quota-sets:update", {"project_id": project_id})
    quota_set = body["quota_set"]
    force = to_bool(quota_set.get("force", "False"), strict=False)
    async with request.app[keys.DB].acquire() as conn, conn.transaction():
        await _verify_project(request, conn, project_id)
        await quota.lock_project(conn, project_id)
        used = await project_usage(conn, project_id)
        values: dict[str, int] = {}
        for key, raw in quota_set.items():
            if key == "force" or (not raw and raw != 0):
                continue
            value = int(raw)
            minimum = used[key]
            if not force and value != quota.UNLIMITED and value < minimum:
                raise errors.BadRequest(
                    f"Quota limit {value} for {key} must be greater than or equal to "
                    f"already used and reserved {minimum}."
                )
            values[key] = value
        await quota.set_limits(conn, project_id, values)
        limits = await project_limits(conn, request, project_id)
    return web.json_response({"quota_set": {r: limits[r] for r in shown_resources(request)}})


async def delete_quota_set(request: web.Request) -> web.Response:
    """DELETE /os-quota-sets/{project_id} (admin): back to defaults, 202."""
    _user_query(request)
    project_id = request.match_info["project_id"]
    common.authorize(request, "os_compute_api:os-quota-sets:delete", {"project_id": project_id})
    async with request.app[keys.DB].acquire() as conn:
        await quota.delete_limits(conn, project_id)
    return web.Response(status=202)


# -- os-quota-class-sets ------------------------------------------------------------

def class_resources(request: web.Request) -> list[str]:
    """Nova's quota_classes.py: no server group quotas before 2.50; network ones hidden from 2.50,
    injected_* from 2.57."""
    if common.at_least(request, 57):
        hidden: tuple[str, ...] = (*NETWORK, *INJECTED)
    elif common.at_least(request, 50):
        hidden = NETWORK
    else:
        hidden = ("server_groups", "server_group_members")
    return [r for r in ALL_RESOURCES if r not in hidden]


async def show_quota_class_set(request: web.Request) -> web.Response:
    """GET /os-quota-class-sets/{id} (admin)."""
    class_name = request.match_info["class_name"]
    common.authorize(request, "os_compute_api:os-quota-class-sets:show", {})
    async with request.app[keys.DB].acquire() as conn:
        limits = await class_limits(conn, request, class_name)
    body = {"id": class_name} | {r: limits[r] for r in class_resources(request)}
    return web.json_response({"quota_class_set": body})


async def update_quota_class_set(request: web.Request) -> web.Response:
    """PUT /os-quota-class-sets/{id} (admin); class `default` sets every project's defaults."""
    body = await read_json(request)
    props: dict = {r: _QUOTA_VALUE for r in class_resources(request)}
    validate_body(
        {
            "type": "object",
            "properties": {"quota_class_set": {"type": "object", "properties": props, "additionalProperties": False}},
            "required": ["quota_class_set"],
            "additionalProperties": False,
        },
        body,
    )
    class_name = request.match_info["class_name"]
    common.authorize(request, "os_compute_api:os-quota-class-sets:update", {})
    if not 1 <= len(class_name) <= 255:
        raise errors.BadRequest("quota_class_name has to be between 1 and 255 characters long.")
    values = {k: int(v) for k, v in body["quota_class_set"].items()}
    async with request.app[keys.DB].acquire() as conn, conn.transaction():
        await quota.set_limits(conn, quota.CLASS_PREFIX + class_name, values)
        limits = await class_limits(conn, request, class_name)
    return web.json_response({"quota_class_set": {r: limits[r] for r in class_resources(request)}})


_LIMIT_NAMES = {
    "ram": ["maxTotalRAMSize"],
    "instances": ["maxTotalInstances"],
    "cores": ["maxTotalCores"],
    "key_pairs": ["maxTotalKeypairs"],
    "floating_ips": ["maxTotalFloatingIps"],
    "metadata_items": ["maxServerMeta", "maxImageMeta"],
    "injected_files": ["maxPersonality"],
    "injected_file_content_bytes": ["maxPersonalitySize"],
    "security_groups": ["maxSecurityGroups"],
    "security_group_rules": ["maxSecurityGroupRules"],
    "server_groups": ["maxServerGroups"],
    "server_group_members": ["maxServerGroupMembers"],
}
_USED_NAMES = {
    "totalRAMUsed": "ram",
    "totalCoresUsed": "cores",
    "totalInstancesUsed": "instances",
    "totalFloatingIpsUsed": "floating_ips",
    "totalSecurityGroupsUsed": "security_groups",
    "totalServerGroupsUsed": "server_groups",
}


async def show_limits(request: web.Request) -> web.Response:
    """GET /limits (?tenant_id= for admins): absolute limits and usage, no rate limits."""
    validate_query(request, {"tenant_id": {"type": "string"}}, strict=common.at_least(request, 75))
    ctx = common.authorize(request, "os_compute_api:limits", {})
    project_id = ctx.project_id
    if "tenant_id" in request.query:
        project_id = request.query["tenant_id"]
        common.authorize(request, "os_compute_api:limits:other_project")
    hidden: tuple[str, ...] = ()
    if common.at_least(request, 57):
        hidden = ("floating_ips", "security_groups", "security_group_rules", "injected_files",
                  "injected_file_content_bytes")
    elif common.at_least(request, 36):
        hidden = ("floating_ips", "security_groups", "security_group_rules")
    async with request.app[keys.DB].acquire() as conn:
        limits = await project_limits(conn, request, project_id)
        used = await project_usage(conn, project_id)
    absolute: dict[str, int] = {}
    for resource, value in limits.items():
        if resource in _LIMIT_NAMES and resource not in hidden:
            for name in _LIMIT_NAMES[resource]:
                if name == "maxImageMeta" and common.at_least(request, 39):
                    continue
                absolute[name] = value
    for name, resource in _USED_NAMES.items():
        if resource not in hidden:
            absolute[name] = used[resource]
    return web.json_response({"limits": {"rate": [], "absolute": absolute}})
