"""Networks (list; create a network with its subnet) and security groups (list with their rules;
create a group; add and delete rules), through the networking API as the user."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from novalite.dashboard import framework as fw

NET = "/networking/v2.0"
RULE_FIELDS = ("direction", "ethertype", "protocol", "port_range_min", "port_range_max", "remote_ip_prefix")


def net_path(request: web.Request, collection: str, key: str, noun: str) -> str:
    return f"{NET}/{collection}/{quote(fw.path_id(request, key, noun), safe='')}"


async def networks(request: web.Request) -> web.Response:
    answers = await fw.api_many(request, {"networks": f"{NET}/networks", "subnets": f"{NET}/subnets"})
    nets, subnets = answers["networks"], answers["subnets"]
    cidrs = {s["id"]: s["cidr"] for s in subnets.body.get("subnets", [])} if subnets.ok else {}
    return fw.render(request, "networks.html", {
        "networks": nets.body.get("networks", []) if nets.ok else [], "cidrs": cidrs,
        "error": "" if nets.ok else nets.message()})


def subnet_body(form, network_id: str) -> dict:
    subnet = {"network_id": network_id, "cidr": str(form.get("cidr", "")).strip(), "ip_version": 4,
              "enable_dhcp": form.get("enable_dhcp") == "on", "name": str(form.get("name", ""))}
    if ":" in subnet["cidr"]:
        subnet["ip_version"] = 6
    if gateway := str(form.get("gateway_ip", "")).strip():
        subnet["gateway_ip"] = gateway
    return {"subnet": subnet}


async def create_network(request: web.Request) -> web.Response:
    """POST: the network, then its subnet; a refused subnet takes the new network away again."""
    form = fw.form_of(request)
    session = fw.session_of(request)
    answer = await fw.api(request, "POST", f"{NET}/networks", body={"network": {"name": str(form.get("name", ""))}})
    if not answer.ok:
        session.flash = answer.message()
        raise fw.redirect("/networks")
    network_id = answer.body["network"]["id"]
    subnet = await fw.api(request, "POST", f"{NET}/subnets", body=subnet_body(form, network_id))
    if not subnet.ok:
        await fw.api(request, "DELETE", f"{NET}/networks/{quote(network_id, safe='')}")
    session.flash = "Network created." if subnet.ok else subnet.message()
    raise fw.redirect("/networks")


async def delete_network(request: web.Request) -> web.Response:
    return await fw.act(request, "DELETE", net_path(request, "networks", "network_id", "Network"),
                        "Network deleted.", "/networks")


async def security_groups(request: web.Request) -> web.Response:
    answer = await fw.api(request, "GET", f"{NET}/security-groups")
    groups = answer.body.get("security_groups", []) if answer.ok else []
    return fw.render(request, "security_groups.html", {"groups": groups, "error": "" if answer.ok else answer.message()})


async def create_group(request: web.Request) -> web.Response:
    form = fw.form_of(request)
    body = {"security_group": {"name": str(form.get("name", "")), "description": str(form.get("description", ""))}}
    return await fw.act(request, "POST", f"{NET}/security-groups", "Security group created.", "/security-groups",
                        body=body)


def rule_body(form, group_id: str) -> dict:
    """The rule the form describes; blank fields are left out (Neutron's defaults), numbers as numbers."""
    rule: dict = {"security_group_id": group_id}
    for name in RULE_FIELDS:
        value = str(form.get(name, "")).strip()
        if value:
            rule[name] = int(value) if name.startswith("port_range") and value.isdigit() else value
    return {"security_group_rule": rule}


async def add_rule(request: web.Request) -> web.Response:
    group_id = fw.path_id(request, "group_id", "Security group")
    return await fw.act(request, "POST", f"{NET}/security-group-rules", "Rule added.", "/security-groups",
                        body=rule_body(fw.form_of(request), group_id))


async def delete_rule(request: web.Request) -> web.Response:
    return await fw.act(request, "DELETE", net_path(request, "security-group-rules", "rule_id", "Security group rule"),
                        "Rule deleted.", "/security-groups")


async def delete_group(request: web.Request) -> web.Response:
    return await fw.act(request, "DELETE", net_path(request, "security-groups", "group_id", "Security group"),
                        "Security group deleted.", "/security-groups")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/networks", networks)
    router.add_post("/networks", create_network)
    router.add_post("/networks/{network_id}/delete", delete_network)
    router.add_get("/security-groups", security_groups)
    router.add_post("/security-groups", create_group)
    router.add_post("/security-groups/{group_id}/rules", add_rule)
    router.add_post("/security-groups/{group_id}/delete", delete_group)
    router.add_post("/security-group-rules/{rule_id}/delete", delete_rule)
