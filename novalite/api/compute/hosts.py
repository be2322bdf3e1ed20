"""Hosts as the compute API shows them: availability zones, hypervisors, services.

Every configured host is one ``compute_nodes`` row: the hypervisor (node) and
its nova-compute service. Usage comes from ``allocations``; a service is up
when its heartbeat is younger than ``scheduler.service_down_time`` and it is
not forced down.
"""

from __future__ import annotations

import datetime
import json
import re
import time

from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute import common
from novalite.api.compute.validation import (
    BOOLEAN,
    PAGINATION,
    limit_and_marker,
    next_links,
    to_bool,
    validate_body,
    validate_query,
)
from novalite.api.middleware import read_json
from novalite.api.pagination import capped, max_limit
from novalite.db import catalog, is_uuid

BINARY = "nova-compute"


def _timestamp(value: datetime.datetime | None) -> str | None:
    """Nova's naive-UTC datetime serialisation (2025-01-01T00:00:00.000000)."""
    if value is None:
        return None
    return value.astimezone(datetime.UTC).replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _down_time(request: web.Request) -> int:
    return request.app[keys.CONFIG].scheduler.service_down_time


async def _nodes(request: web.Request, pattern: str | None = None) -> list[dict]:
    async with request.app[keys.DB].acquire() as conn:
        return await catalog.list_compute_nodes(conn, _down_time(request), pattern)


# Availability zones ---------------------------------------------------------------


def _zones(nodes: list[dict]) -> tuple[list[str], list[str]]:
    """(zones with an enabled service, zones with only disabled ones), in service order."""
    available: list[str] = []
    for n in nodes:
        if not n["disabled"] and n["availability_zone"] not in available:
            available.append(n["availability_zone"])
    unavailable: list[str] = []
    for n in nodes:
        zone = n["availability_zone"]
        if n["disabled"] and zone not in available and zone not in unavailable:
            unavailable.append(zone)
    return available, unavailable


async def list_zones(request: web.Request) -> web.Response:
    """GET /os-availability-zone."""
    common.authorize(request, "os_compute_api:os-availability-zone:list", {})
    available, unavailable = _zones(await _nodes(request))
    info = [{"zoneName": z, "zoneState": {"available": True}, "hosts": None} for z in available]
    info += [{"zoneName": z, "zoneState": {"available": False}, "hosts": None} for z in unavailable]
    return web.json_response({"availabilityZoneInfo": capped(request, info)})


async def list_zones_detail(request: web.Request) -> web.Response:
    """GET /os-availability-zone/detail (admin): hosts and their service states."""
    common.authorize(request, "os_compute_api:os-availability-zone:detail", {})
    nodes = await _nodes(request)
    available, unavailable = _zones(nodes)
    info = []
    for zone in available:
        hosts = {
            n["host"]: {
                BINARY: {
                    "available": n["alive"],
                    "active": not n["disabled"],
                    "updated_at": _timestamp(n["heartbeat_at"]),
                }
            }
            for n in nodes
            if n["availability_zone"] == zone and not n["disabled"]
        }
        info.append({"zoneName": zone, "zoneState": {"available": True}, "hosts": hosts})
    info += [{"zoneName": z, "zoneState": {"available": False}, "hosts": None} for z in unavailable]
    return web.json_response({"availabilityZoneInfo": capped(request, info)})


# Hypervisors ----------------------------------------------------------------------


def _usage(request: web.Request, n: dict) -> dict:
    sched = request.app[keys.CONFIG].scheduler
    memory_used = n["alloc_memory_mb"] + sched.reserved_host_memory_mb
    disk_used = n["alloc_disk_gb"] + sched.reserved_host_disk_mb // 1024
    return {
        "vcpus": n["vcpus"],
        "memory_mb": n["memory_mb"],
        "local_gb": n["local_gb"],
        "vcpus_used": n["vcpus_used"],
        "memory_mb_used": memory_used,
        "local_gb_used": disk_used,
        "free_ram_mb": n["memory_mb"] - memory_used,
        "free_disk_gb": n["local_gb"] - disk_used,
        "current_workload": n["current_workload"],
        "running_vms": n["running_vms"],
        # Measured free space of the host's instance pool where there is one; else what the flavors leave.
        "disk_available_least": (n["disk_available_least"] if n["disk_available_least"] is not None
                                 else n["local_gb"] - disk_used),
    }


def _cpu_info(n: dict) -> dict:
    """The host's CPU as its libvirt capabilities describe it (Nova's cpu_info); the model is the one
    guests see: the host's under KVM (host-model), qemu64 under TCG."""
    topology = n["cpu_topology"] if isinstance(n["cpu_topology"], dict) else json.loads(n["cpu_topology"] or "{}")
    return {
        "arch": n["cpu_arch"],
        "model": n["cpu_model"] if n["virt_type"] == "kvm" and n["cpu_model"] else "qemu64",
        "vendor": n["cpu_vendor"] or "unknown",
        "topology": topology or {"cells": 1, "sockets": 1, "cores": n["vcpus"], "threads": 1},
        "features": list(n["cpu_features"]),
    }


def _uptime(n: dict) -> str | None:
    """Nova's `uptime` line from the boot time the host's libvirt reported (no users or load
    average: libvirt does not report them); None where the host gave no boot time."""
    if n["booted_at"] is None:
        return None
    seconds = int((datetime.datetime.now(datetime.UTC) - n["booted_at"]).total_seconds())
    days, rest = divmod(max(seconds, 0), 86400)
    hours, minutes = divmod(rest // 60, 60)
    up = f"{days} days, {hours:2d}:{minutes:02d}" if days else f"{hours:2d}:{minutes:02d}"
    return f" {time.strftime('%H:%M:%S')} up {up}"


def hypervisor_view(request: web.Request, n: dict, detail: bool, servers: list[dict] | None = None,
                    with_servers: bool = False) -> dict:
    """One hypervisor at the request's microversion (Nova's _view_hypervisor)."""
    v253 = common.at_least(request, 53)
    body: dict = {
        "id": str(n["uuid"]) if v253 else n["id"],
        "hypervisor_hostname": n["hypervisor_hostname"],
        "state": "up" if n["alive"] else "down",
        "status": "disabled" if n["disabled"] else "enabled",
    }
    if detail:
        body["hypervisor_type"] = n["hypervisor_type"]
        body["hypervisor_version"] = n["hypervisor_version"]
        body["host_ip"] = n["host_ip"] or request.app[keys.CONFIG].api.listen  # None: this machine
        body["service"] = {
            "id": str(n["service_uuid"]) if v253 else n["id"],
            "host": n["host"],
            "disabled_reason": n["disabled_reason"],
        }
        if not common.at_least(request, 88):
            body.update(_usage(request, n))
            body["cpu_info"] = _cpu_info(n) if common.at_least(request, 28) else _cpu_json(n)
        else:
            body["uptime"] = _uptime(n) if n["alive"] else None
    if servers:
        body["servers"] = [{"name": s["name"], "uuid": s["uuid"]} for s in servers]
    elif with_servers and common.at_least(request, 75):
        body["servers"] = []
    return body


def _cpu_json(n: dict) -> str:
    return json.dumps(_cpu_info(n))


async def _servers_on(request: web.Request, host: str) -> list[dict]:
    async with request.app[keys.DB].acquire() as conn:
        rows = await conn.fetch(
            "SELECT uuid, display_name FROM instances WHERE host = $1 AND NOT deleted ORDER BY created_at",
            host,
        )
    return [{"name": r["display_name"], "uuid": str(r["uuid"])} for r in rows]


async def _hypervisor_list(request: web.Request, detail: bool) -> web.Response:
    rule = "list-detail" if detail else "list"
    v253 = common.at_least(request, 53)
    if v253:
        validate_query(
            request,
            {**PAGINATION, "hypervisor_hostname_pattern": {"type": "string"}, "with_servers": BOOLEAN},
            strict=common.at_least(request, 75),
        )
    elif common.at_least(request, 33):
        validate_query(request, PAGINATION)
    common.authorize(request, f"os_compute_api:os-hypervisors:{rule}", {})
    limit, marker, links = max_limit(request), None, False
    if common.at_least(request, 33):
        limit, marker = limit_and_marker(request)
        links = True
    pattern = request.query.get("hypervisor_hostname_pattern") if v253 else None
    with_servers = to_bool(request.query.get("with_servers", False)) if v253 else False
    if pattern is not None:
        if "limit" in request.query or marker:
            raise errors.BadRequest(
                "Paging over hypervisors with the hypervisor_hostname_pattern query parameter is not supported."
            )
        links = False
        nodes = capped(request, await _nodes(request, pattern))
        if not nodes:
            raise errors.NotFound(f"No hypervisor matching '{pattern}' could be found.")
    else:
        nodes = await _nodes(request)
        if marker is not None:
            key = "uuid" if v253 else "id"
            ids = [str(n[key]) for n in nodes]
            if marker not in ids:
                raise errors.BadRequest(f"marker [{marker}] not found")
            nodes = nodes[ids.index(marker) + 1 :]
        nodes = nodes[:limit]
    out = []
    for n in nodes:
        servers = await _servers_on(request, n["host"]) if with_servers else None
        out.append(hypervisor_view(request, n, detail, servers, with_servers))
    body: dict = {"hypervisors": out}
    if links:
        more = next_links(request, out, "os-hypervisors/detail" if detail else "os-hypervisors", "id")
        if more:
            body["hypervisors_links"] = more
    return web.json_response(body)


async def list_hypervisors(request: web.Request) -> web.Response:
    """GET /os-hypervisors."""
    return await _hypervisor_list(request, detail=False)


async def list_hypervisors_detail(request: web.Request) -> web.Response:
    """GET /os-hypervisors/detail."""
    return await _hypervisor_list(request, detail=True)


async def _find_hypervisor(request: web.Request, ident: str) -> dict:
    """Nova's _validate_id + compute_node_get: uuid from 2.53, integer id before."""
    not_found = errors.NotFound(f"Hypervisor with ID '{ident}' could not be found.")
    async with request.app[keys.DB].acquire() as conn:
        if common.at_least(request, 53):
            if not is_uuid(ident):
                raise errors.BadRequest(f"Invalid uuid {ident}")
            node = await catalog.get_compute_node(conn, _down_time(request), node_uuid=ident)
        else:
            if not re.fullmatch(r"\s*[+-]?\d+\s*", ident) or not 0 <= int(ident) <= 0x7FFFFFFF:
                raise not_found
            node = await catalog.get_compute_node(conn, _down_time(request), node_id=int(ident))
    if node is None:
        raise not_found
    return node


async def show_hypervisor(request: web.Request) -> web.Response:
    """GET /os-hypervisors/{id}."""
    v253 = common.at_least(request, 53)
    if v253:
        validate_query(request, {"with_servers": BOOLEAN}, strict=True)
    common.authorize(request, "os_compute_api:os-hypervisors:show", {})
    node = await _find_hypervisor(request, request.match_info["hypervisor_id"])
    with_servers = to_bool(request.query.get("with_servers", False)) if v253 else False
    servers = await _servers_on(request, node["host"]) if with_servers else None
    return web.json_response({"hypervisor": hypervisor_view(request, node, True, servers, with_servers)})


async def hypervisor_uptime(request: web.Request) -> web.Response:
    """GET /os-hypervisors/{id}/uptime (until 2.87)."""
    if common.at_least(request, 88):
        raise errors.NotFound("The resource could not be found.")
    common.authorize(request, "os_compute_api:os-hypervisors:uptime", {})
    node = await _find_hypervisor(request, request.match_info["hypervisor_id"])
    if not node["alive"]:
        raise errors.BadRequest(f"Compute service of {node['host']} is unavailable at this time.")
    body = hypervisor_view(request, node, False)
    body["uptime"] = _uptime(node)
    return web.json_response({"hypervisor": body})


async def hypervisor_statistics(request: web.Request) -> web.Response:
    """GET /os-hypervisors/statistics (until 2.87): sums over every node."""
    if common.at_least(request, 88):
        raise errors.NotFound("The resource could not be found.")
    common.authorize(request, "os_compute_api:os-hypervisors:statistics", {})
    nodes = await _nodes(request)
    keys = ("vcpus", "memory_mb", "local_gb", "vcpus_used", "memory_mb_used", "local_gb_used",
            "free_ram_mb", "free_disk_gb", "current_workload", "running_vms", "disk_available_least")
    stats = {"count": len(nodes)} | {k: 0 for k in keys}
    for n in nodes:
        usage = _usage(request, n)
        for k in keys:
            stats[k] += usage[k]
    return web.json_response({"hypervisor_statistics": stats})


async def _search(request: web.Request, with_servers: bool) -> web.Response:
    if common.at_least(request, 53):
        raise errors.NotFound("The resource could not be found.")
    common.authorize(request, f"os_compute_api:os-hypervisors:{'servers' if with_servers else 'search'}", {})
    pattern = request.match_info["pattern"]
    nodes = capped(request, await _nodes(request, pattern))
    if not nodes:
        raise errors.NotFound(f"No hypervisor matching '{pattern}' could be found.")
    out = []
    for n in nodes:
        servers = await _servers_on(request, n["host"]) if with_servers else None
        out.append(hypervisor_view(request, n, False, servers))
    return web.json_response({"hypervisors": out})


async def search_hypervisors(request: web.Request) -> web.Response:
    """GET /os-hypervisors/{pattern}/search (until 2.52)."""
    return await _search(request, with_servers=False)


async def hypervisor_servers(request: web.Request) -> web.Response:
    """GET /os-hypervisors/{pattern}/servers (until 2.52)."""
    return await _search(request, with_servers=True)


# Services -------------------------------------------------------------------------


def service_view(request: web.Request, n: dict, forced_down: bool | None = None) -> dict:
    """One nova-compute service (Nova's _get_service_detail)."""
    body = {
        "binary": BINARY,
        "host": n["host"],
        "id": str(n["service_uuid"]) if common.at_least(request, 53) else n["id"],
        "zone": n["availability_zone"],
        "status": "disabled" if n["disabled"] else "enabled",
        "state": "up" if n["alive"] else "down",
        "updated_at": _timestamp(n["heartbeat_at"]),
        "disabled_reason": n["disabled_reason"],
    }
    if forced_down or (forced_down is None and common.at_least(request, 11)):
        body["forced_down"] = n["forced_down"]
    return body


async def list_services(request: web.Request) -> web.Response:
    """GET /os-services (?host=, ?binary=)."""
    validate_query(request, {"host": {}, "binary": {}}, strict=common.at_least(request, 75))
    common.authorize(request, "os_compute_api:os-services:list", {})
    nodes = await _nodes(request)
    host = request.query.get("host", "")
    binary = request.query.get("binary", "")
    nodes = [n for n in nodes if (not host or n["host"] == host) and (not binary or binary == BINARY)]
    return web.json_response({"services": [service_view(request, n) for n in capped(request, nodes)]})


_REASON = {"type": "string", "minLength": 1, "maxLength": 255}
_FQDN = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[a-zA-Z0-9-._]*$"}


async def update_service(request: web.Request) -> web.Response:
    """PUT /os-services/{id} (2.53+), or /os-services/{enable|disable|...} before."""
    body = await read_json(request)
    if common.at_least(request, 53):
        return await _update_v253(request, body)
    props: dict = {
        "host": _FQDN,
        "binary": {"type": "string", "minLength": 1, "maxLength": 255},
        "disabled_reason": _REASON,
    }
    if common.at_least(request, 11):
        props["forced_down"] = BOOLEAN
    validate_body(
        {"type": "object", "properties": props, "required": ["host", "binary"], "additionalProperties": False},
        body,
    )
    common.authorize(request, "os_compute_api:os-services:update", {})
    action = request.match_info["service_id"]
    actions = {"enable", "disable", "disable-log-reason"}
    if common.at_least(request, 11):
        actions.add("force-down")
    if action not in actions:
        raise errors.NotFound("Unknown action")
    host, binary = body["host"], body["binary"]
    result: dict = {"host": host, "binary": binary}
    if action == "enable":
        values: dict = {"disabled": False, "disabled_reason": None}
        result["status"] = "enabled"
    elif action == "force-down":
        if "forced_down" not in body:
            raise errors.BadRequest("Missing forced_down field")
        values = {"forced_down": to_bool(body["forced_down"], strict=False)}
        result["forced_down"] = values["forced_down"]
    else:
        reason = None
        if action == "disable-log-reason":
            if "disabled_reason" not in body:
                raise errors.BadRequest("Missing disabled reason field")
            reason = body["disabled_reason"]
        values = {"disabled": True, "disabled_reason": reason}
        result["status"] = "disabled"
        if reason:
            result["disabled_reason"] = reason
    if binary != BINARY:
        raise errors.BadRequest(
            f"Updating a {binary} service is not supported. Only nova-compute services can be updated."
        )
    async with request.app[keys.DB].acquire() as conn:
        node = await catalog.get_compute_node(conn, _down_time(request), host=host)
        if node is None:
            raise errors.NotFound(f"Could not find binary {binary} on host {host}.")
        await catalog.update_service(conn, node["id"], values)
    if keys.SCHEDULER in request.app:  # the scheduler's cached host states must see it at once
        request.app[keys.SCHEDULER].invalidate_host_states()
    return web.json_response({"service": result})


async def _update_v253(request: web.Request, body: dict) -> web.Response:
    service_id = request.match_info["service_id"]
    if not is_uuid(service_id):
        raise errors.BadRequest(f"Invalid uuid {service_id}")
    validate_body(
        {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["enabled", "disabled"]},
                "disabled_reason": _REASON,
                "forced_down": BOOLEAN,
            },
            "additionalProperties": False,
        },
        body,
    )
    common.authorize(request, "os_compute_api:os-services:update", {})
    async with request.app[keys.DB].acquire() as conn:
        node = await catalog.get_compute_node(conn, _down_time(request), service_uuid=service_id)
        if node is None:
            raise errors.NotFound(f"Service {service_id} could not be found.")
        values: dict = {}
        if "status" in body:
            if body["status"] == "enabled":
                if body.get("disabled_reason"):
                    raise errors.BadRequest("Specifying 'disabled_reason' with status 'enabled' is invalid.")
                values.update(disabled=False, disabled_reason=None)
            else:
                values.update(disabled=True, disabled_reason=body.get("disabled_reason"))
        if "forced_down" in body:
            values["forced_down"] = to_bool(body["forced_down"])
        if not values:
            raise errors.BadRequest(
                "No updates were requested. Fields 'status' or 'forced_down' should be specified."
            )
        await catalog.update_service(conn, node["id"], values)
        node = await catalog.get_compute_node(conn, _down_time(request), node_id=node["id"])
    if keys.SCHEDULER in request.app:  # the scheduler's cached host states must see it at once
        request.app[keys.SCHEDULER].invalidate_host_states()
    return web.json_response({"service": service_view(request, node, forced_down=True)})


# Aggregates -----------------------------------------------------------------------


async def list_aggregates(request: web.Request) -> web.Response:
    """GET /os-aggregates (admin): novalite has no host aggregates, so always empty.

    `openstack hypervisor show` lists aggregates to show a host's membership.
    """
    common.authorize(request, "os_compute_api:os-aggregates:index", {})
    return web.json_response({"aggregates": capped(request, [])})
