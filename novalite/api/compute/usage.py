"""os-simple-tenant-usage: hours, vCPU-, RAM- and disk-hours per project over a period.

Nova's simple_tenant_usage.py: an instance counts when it launched before the
period's end and was not terminated before its start (deleted ones too); the
end is clamped to now; links for paging from 2.40.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute.common import at_least, authorize, compute_url
from novalite.api.pagination import max_limit, page_limit

_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d %H:%M:%S.%f")


def _naive(ts: datetime) -> str:
    """Nova's JSON rendering of a naive UTC datetime."""
    return ts.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _parse(value: str | None, now: datetime) -> datetime:
    if not value:
        return now
    for fmt in _FORMATS:
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC)
        except ValueError:
            pass
    raise errors.BadRequest("Invalid datetime string: Datetime is in invalid format")


def _period(request: web.Request) -> tuple[datetime, datetime, bool]:
    q = request.query
    now = datetime.now(UTC)
    # Nova reads the clock once per missing bound, so two defaults are never equal.
    start, stop = _parse(q.get("start"), now), _parse(q.get("end"), now + timedelta(microseconds=1))
    if not start < stop:
        raise errors.BadRequest("Invalid start time. The start time cannot occur after the end time.")
    return start, min(stop, now), q.get("detailed", "0") == "1"


def _hours(launched: datetime | None, terminated: datetime | None, start: datetime, stop: datetime) -> float:
    if launched is None or launched > stop or (terminated and terminated < start):
        return 0
    end = min(stop, terminated) if terminated else stop
    return (end - max(launched, start)).total_seconds() / 3600.0


async def _usages(
    request: web.Request, start: datetime, stop: datetime, project_id: str | None, detailed: bool
) -> tuple[list[dict], list[dict]]:
    q = request.query
    limit = page_limit(request) if at_least(request, 40) else max_limit(request)
    marker_sql, args = "", [start, stop]
    if project_id is not None:
        args.append(project_id)
        marker_sql += f" AND project_id = ${len(args)}"
    async with request.app[keys.DB].acquire() as conn:
        if at_least(request, 40) and q.get("marker"):
            marker = await conn.fetchval("SELECT id FROM instances WHERE uuid::text = $1", q["marker"])
            if marker is None:
                raise errors.BadRequest(f"Marker {q['marker']} could not be found.")
            args.append(marker)
            marker_sql += f" AND id > ${len(args)}"
        args.append(limit)
        rows = await conn.fetch(
            f"""SELECT uuid, display_name, project_id, flavor, launched_at, terminated_at, vm_state
                  FROM instances
                 WHERE (terminated_at IS NULL OR terminated_at > $1) AND launched_at < $2 {marker_sql}
                 ORDER BY id LIMIT ${len(args)}""",
            *args,
        )
    now = datetime.now(UTC)
    summaries: OrderedDict[str, dict] = OrderedDict()
    servers = []
    for r in rows:
        flavor = r["flavor"] or {}
        info = {
            "hours": _hours(r["launched_at"], r["terminated_at"], start, stop),
            "flavor": flavor.get("name", ""),
            "instance_id": str(r["uuid"]),
            "name": r["display_name"],
            "tenant_id": r["project_id"],
            "memory_mb": flavor.get("memory_mb", 0),
            "local_gb": flavor.get("root_gb", 0) + flavor.get("ephemeral_gb", 0),
            "vcpus": flavor.get("vcpus", 0),
            "started_at": _naive(r["launched_at"]),
            "ended_at": _naive(r["terminated_at"]) if r["terminated_at"] else None,
            "state": "terminated" if r["terminated_at"] else r["vm_state"],
            "uptime": int(((r["terminated_at"] or now) - r["launched_at"]).total_seconds()),
        }
        summary = summaries.get(r["project_id"])
        if summary is None:
            summary = summaries[r["project_id"]] = {
                "tenant_id": r["project_id"],
                **({"server_usages": []} if detailed else {}),
                "total_local_gb_usage": 0,
                "total_vcpus_usage": 0,
                "total_memory_mb_usage": 0,
                "total_hours": 0,
                "start": _naive(start),
                "stop": _naive(stop),
            }
        summary["total_local_gb_usage"] += info["local_gb"] * info["hours"]
        summary["total_vcpus_usage"] += info["vcpus"] * info["hours"]
        summary["total_memory_mb_usage"] += info["memory_mb"] * info["hours"]
        summary["total_hours"] += info["hours"]
        servers.append(info)
        if detailed:
            summary["server_usages"].append(info)
    return list(summaries.values()), servers


def _links(request: web.Request, servers: list[dict], collection: str) -> list[dict] | None:
    """A `next` link when a full page came back (Nova's _get_collection_links)."""
    q = request.query
    limit = page_limit(request)
    if not servers or len(servers) < limit:
        return None
    params = "&".join(f"{k}={v}" for k, v in q.items() if k != "marker")
    sep = "&" if params else ""
    href = f"{compute_url(request)}/v2.1/{collection}?{params}{sep}marker={servers[-1]['instance_id']}"
    return [{"rel": "next", "href": href}]


async def list_usages(request: web.Request) -> web.Response:
    """GET /os-simple-tenant-usage: every project's usage (admin)."""
    authorize(request, "os_compute_api:os-simple-tenant-usage:list")
    start, stop, detailed = _period(request)
    usages, servers = await _usages(request, start, stop, None, detailed)
    body: dict = {"tenant_usages": usages}
    if at_least(request, 40) and (links := _links(request, servers, "os-simple-tenant-usage")):
        body["tenant_usages_links"] = links
    return web.json_response(body)


async def show_usage(request: web.Request) -> web.Response:
    """GET /os-simple-tenant-usage/{tenant_id}: one project's usage, always detailed."""
    project_id = request.match_info["tenant_id"]
    authorize(request, "os_compute_api:os-simple-tenant-usage:show", {"project_id": project_id})
    start, stop, _ = _period(request)
    usages, servers = await _usages(request, start, stop, project_id, True)
    body: dict = {"tenant_usage": usages[0] if usages else {}}
    if at_least(request, 40) and (links := _links(request, servers, f"os-simple-tenant-usage/{project_id}")):
        body["tenant_usage_links"] = links
    return web.json_response(body)
