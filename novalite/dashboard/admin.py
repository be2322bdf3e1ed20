"""Admin: hypervisors with usage bars, services up/down, projects and users, quotas (view; edit).

The menu shows the area to those the policy lets list hypervisors (asked of the API once per
login or project switch); every page asks the API itself, so a member who types the URL gets
the API's own 403 as the error page."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from aiohttp import web

from novalite.dashboard import framework as fw

COMPUTE = "/compute/v2.1"
HYPERVISORS = f"{COMPUTE}/os-hypervisors/detail"
USAGE_VERSION = "compute 2.87"  # the last microversion whose hypervisors carry vCPU/RAM/disk usage
IDENTITY = "/identity/v3"


async def allowed(request: web.Request, token: str) -> bool:
    """Whether ``token`` may list hypervisors: the admin menu entry's test."""
    answer = await request.config_dict[fw.CLIENT].call(request, "GET", f"{COMPUTE}/os-hypervisors", token,
                                                       params={"limit": "1"})
    return answer.ok


def usage(h: dict, most_instances: int) -> list[dict]:
    """The four bars of one hypervisor: used of total, as <meter> takes them."""
    return [
        {"name": "vCPU", "used": h.get("vcpus_used", 0), "total": h.get("vcpus", 0), "unit": ""},
        {"name": "RAM", "used": h.get("memory_mb_used", 0), "total": h.get("memory_mb", 0), "unit": " MB"},
        {"name": "Disk", "used": h.get("local_gb_used", 0), "total": h.get("local_gb", 0), "unit": " GB"},
        {"name": "Instances", "used": h.get("running_vms", 0), "total": most_instances, "unit": ""},
    ]


async def hypervisors(request: web.Request) -> web.Response:
    body = await fw.api_ok(request, "GET", HYPERVISORS, headers={"OpenStack-API-Version": USAGE_VERSION})
    # By name: the API lists by id, and hosts brought up concurrently get ids in no set order.
    found = sorted(body.get("hypervisors", []), key=lambda h: h.get("hypervisor_hostname") or "")
    most = max([h.get("running_vms", 0) for h in found] + [1])
    rows = [{**h, "bars": usage(h, most)} for h in found]
    return fw.render(request, "admin_hypervisors.html", {"hypervisors": rows})


async def services(request: web.Request) -> web.Response:
    body = await fw.api_ok(request, "GET", f"{COMPUTE}/os-services")
    return fw.render(request, "admin_services.html", {"services": body.get("services", [])})


async def identity(request: web.Request) -> web.Response:
    projects, users = await asyncio.gather(fw.api_ok(request, "GET", f"{IDENTITY}/projects"),
                                           fw.api_ok(request, "GET", f"{IDENTITY}/users"))
    return fw.render(request, "admin_identity.html", {"projects": projects.get("projects", []),
                                                      "users": users.get("users", [])})


async def quotas(request: web.Request) -> web.Response:
    """One project's compute quotas (limit and use); the form edits them through the API."""
    projects = (await fw.api_ok(request, "GET", f"{IDENTITY}/projects")).get("projects", [])
    project_id = request.query.get("project_id") or fw.session_of(request).project_id
    if not fw.ID.match(project_id):
        raise fw.PageError(404, f"Project {project_id} could not be found.")
    body = await fw.api_ok(request, "GET", f"{COMPUTE}/os-quota-sets/{quote(project_id, safe='')}/detail")
    quota = {k: v for k, v in body["quota_set"].items() if isinstance(v, dict)}
    return fw.render(request, "admin_quotas.html", {"projects": projects, "project_id": project_id, "quota": quota})


def quota_body(form) -> dict:
    """The limits the form sets (blank fields unchanged); numbers as numbers, the rest for the API to refuse."""
    values = {}
    for key, raw in form.items():
        value = str(raw).strip()
        if key.startswith("q_") and value:
            values[key[2:]] = int(value) if value.lstrip("-").isdigit() else value
    return {"quota_set": values}


async def update_quotas(request: web.Request) -> web.Response:
    project_id = fw.path_id(request, "project_id", "Project")
    return await fw.act(request, "PUT", f"{COMPUTE}/os-quota-sets/{quote(project_id, safe='')}", "Quotas updated.",
                        f"/admin/quotas?project_id={quote(project_id, safe='')}",
                        body=quota_body(fw.form_of(request)))


async def home(request: web.Request) -> web.Response:
    raise fw.redirect("/admin/hypervisors")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/admin", home)
    router.add_get("/admin/hypervisors", hypervisors)
    router.add_get("/admin/services", services)
    router.add_get("/admin/identity", identity)
    router.add_get("/admin/quotas", quotas)
    router.add_post("/admin/quotas/{project_id}", update_quotas)
