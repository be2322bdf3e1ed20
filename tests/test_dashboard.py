"""The dashboard over plain HTTP: what a browser gets (redirects, cookie flags, CSP, CSRF refusals,
escaping, project scoping) and what logging out does to the token on the API."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import os
import re

import aiohttp
import asyncpg
import pytest
from conftest import add_image, start_cloud, stop_cloud, wait_for_status
from yarl import URL

from novalite.api import keys
from novalite.dashboard import framework as fw
from novalite.dashboard.sessions import COOKIE

XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
async def cloud(pg_dsn, tmp_path_factory):
    c = await start_cloud(pg_dsn, tmp_path_factory.mktemp("dash"))
    yield c
    await stop_cloud(c)


class Browser:
    """A cookie-keeping HTTP client, as a browser talks to the dashboard."""

    def __init__(self, cloud) -> None:
        self.cloud = cloud
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def get(self, path: str, **kw) -> tuple[aiohttp.ClientResponse, str]:
        async with self.http.get(self.cloud.url + path, **kw) as r:
            return r, await r.text()

    async def post(self, path: str, data: dict, **kw) -> tuple[aiohttp.ClientResponse, str]:
        async with self.http.post(self.cloud.url + path, data=data, **kw) as r:
            return r, await r.text()

    async def csrf(self, path: str) -> str:
        _, page = await self.get(path)
        return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)

    async def login(self, user: str = "demo", project: str = "demo", **kw) -> aiohttp.ClientResponse:
        form = {"csrf_token": await self.csrf("/dashboard/login"), "user": user,
                "password": self.cloud.creds[user], "project": project}
        resp, _ = await self.post("/dashboard/login", form, allow_redirects=False, **kw)
        return resp

    async def session_token(self) -> str:
        cookie = self.http.cookie_jar.filter_cookies(URL(self.cloud.url))[COOKIE].value
        return (await self.cloud.app[fw.SESSIONS].get(cookie)).token

    async def close(self) -> None:
        await self.http.close()


@pytest.fixture
async def browser(cloud):
    b = Browser(cloud)
    yield b
    await b.close()


async def test_root_sends_browsers_to_login_and_api_roots_keep_their_answers(cloud, browser):
    resp, page = await browser.get("/")
    assert resp.status == 200 and str(resp.url).endswith("/dashboard/login")
    assert 'id="login"' in page and resp.headers["Content-Type"].startswith("text/html")
    for root in ("/compute/", "/identity/v3", "/image/", "/networking/", "/volume/"):
        async with cloud.session.get(cloud.url + root) as r:
            assert r.status in (200, 300) and r.content_type == "application/json", root
    async with cloud.session.get(cloud.url + "/compute/v2.1/servers") as r:
        assert r.status == 401  # the API still wants a token, whatever the dashboard does


async def test_session_cookie_is_httponly_strict_and_secure_only_over_tls(browser):
    resp = await browser.login()
    assert resp.status == 302 and resp.headers["Location"] == "/dashboard/instances"
    cookie = resp.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"]
    assert len(cookie.value) >= 40  # a random id, not the token
    assert cookie.value != await browser.session_token()
    tls = await browser.login(headers={"X-Forwarded-Proto": "https"})
    assert tls.cookies[COOKIE]["secure"]


async def test_every_answer_has_a_csp_without_inline_code(browser):
    await browser.login()
    for path in ("/dashboard/login", "/dashboard/instances", "/dashboard/instances/launch",
                 "/dashboard/nothing-here", "/dashboard/static/dashboard.js"):
        resp, _ = await browser.get(path)
        csp = resp.headers["Content-Security-Policy"]
        assert "unsafe-inline" not in csp and "script-src 'self'" in csp and "style-src 'self'" in csp, path
    resp, page = await browser.get("/dashboard/nothing-here")
    assert resp.status == 404 and "<h1" in page  # an HTML page, not the API's JSON


async def test_posts_without_the_csrf_token_are_refused(cloud, browser):
    _, page = await browser.post("/dashboard/login", {"user": "demo", "password": cloud.creds["demo"]})
    resp = await browser.login()
    image = await add_image(cloud, "csrf-image")
    launch = {"name": "csrf-victim", "image": image, "flavor": "1", "network": "none", "count": "1"}
    for token in ({}, {"csrf_token": "forged"}):
        resp, page = await browser.post("/dashboard/instances/launch", {**launch, **token})
        assert resp.status == 403 and "CSRF" in page
    resp, page = await browser.post("/dashboard/logout", {})
    assert resp.status == 403
    status, body, _ = await cloud.compute("GET", "/servers?name=csrf-victim")
    assert body["servers"] == []


async def test_logout_revokes_the_token(cloud, browser):
    await browser.login()
    token = await browser.session_token()
    async with cloud.session.get(cloud.url + "/compute/v2.1/servers", headers={"X-Auth-Token": token}) as r:
        assert r.status == 200
    resp, _ = await browser.post("/dashboard/logout", {"csrf_token": await browser.csrf("/dashboard/instances")},
                                 allow_redirects=False)
    assert resp.status == 302 and resp.cookies[COOKIE].value == ""
    async with cloud.session.get(cloud.url + "/compute/v2.1/servers", headers={"X-Auth-Token": token}) as r:
        assert r.status == 401
    resp, _ = await browser.get("/dashboard/instances", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/dashboard/login"


async def test_wrong_password_shows_keystones_answer(browser):
    form = {"csrf_token": await browser.csrf("/dashboard/login"), "user": "demo", "password": "wrong",
            "project": "demo"}
    resp, page = await browser.post("/dashboard/login", form)
    assert resp.status == 401, page
    assert "id=\"login-error\"" in page and "authenticat" in page.lower(), page


async def test_launch_errors_are_the_apis_own_and_names_are_escaped(cloud, browser):
    await browser.login()
    image = await add_image(cloud, "dash-image")
    csrf = await browser.csrf("/dashboard/instances/launch")
    form = {"csrf_token": csrf, "name": XSS, "image": image, "flavor": "1", "network": "none", "count": "0"}
    resp, page = await browser.post("/dashboard/instances/launch", form)
    status, body, _ = await cloud.compute("POST", "/servers", json_body={"server": {
        "name": "x", "imageRef": image, "flavorRef": "1", "networks": "none", "min_count": 0, "max_count": 0}}, version="2.latest")
    assert resp.status == status == 400 and body["badRequest"]["message"].replace("'", "&#39;") in page
    assert 'value="&lt;script&gt;alert(1)&lt;/script&gt;"' in page  # the values stay on the form, escaped
    resp, page = await browser.post("/dashboard/instances/launch", {**form, "count": "1"}, allow_redirects=False)
    assert resp.status == 302
    resp, page = await browser.get("/dashboard/instances")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and XSS not in page
    async with browser.http.get(cloud.url + "/dashboard/instances.json") as r:
        rows = (await r.json())["rows"]
    assert rows[0]["name"] == XSS  # JSON for the page's script, which writes it as text


async def test_a_member_gets_a_404_page_for_another_projects_instance(cloud, browser):
    image = await add_image(cloud, "admin-image")
    status, body, _ = await cloud.compute("POST", "/servers", user="admin", json_body={"server": {
        "name": "admins-own", "imageRef": image, "flavorRef": "1", "networks": "none"}}, version="2.latest")
    assert status == 202
    await browser.login()
    resp, page = await browser.get(f"/dashboard/instances/{body['server']['id']}")
    assert resp.status == 404 and "could not be found" in page and "admins-own" not in page
    async with browser.http.get(URL(cloud.url + "/dashboard/instances/%2E%2E", encoded=True)) as r:
        assert r.status == 404  # never a dot segment in the API path


async def test_admin_switches_project_and_the_old_token_is_revoked(cloud, browser):
    await browser.login("admin", "admin")
    old = await browser.session_token()
    _, page = await browser.get("/dashboard/instances")
    demo_id = re.search(r'<option value="([0-9a-f]+)">demo</option>', page).group(1)
    resp, page = await browser.post("/dashboard/project", {"csrf_token": await browser.csrf("/dashboard/instances"),
                                                           "project_id": demo_id})
    assert resp.status == 200 and '<span class="project">demo</span>' in page
    async with cloud.session.get(cloud.url + "/compute/v2.1/servers", headers={"X-Auth-Token": old}) as r:
        assert r.status == 401


# --- the other areas: images, volumes, key pairs, networks, security groups, admin, console ---------

async def until(check, timeout: float = 20):
    """``await check()`` until it is truthy (bounded), returning its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await check()):
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return value


async def form_post(browser, page: str, action: str, fields: dict) -> tuple[aiohttp.ClientResponse, str]:
    """A form of ``page`` posted with its CSRF token, redirects followed (the page showing the answer)."""
    return await browser.post(action, {"csrf_token": await browser.csrf(page), **fields})


async def wait_for_host(cloud, server_id: str, wanted, timeout: float = 30) -> str:
    """Until the server (as the admin sees it) is ACTIVE with no task on a host ``wanted`` accepts."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        _, body, _ = await cloud.compute("GET", f"/servers/{server_id}", user="admin")
        server = body["server"]
        host = server["OS-EXT-SRV-ATTR:host"]
        if server["status"] == "ACTIVE" and server["OS-EXT-STS:task_state"] is None and wanted(host):
            return host
        assert asyncio.get_running_loop().time() < deadline, server
        await asyncio.sleep(0.1)


def flash(page: str) -> str:
    found = re.search(r'id="flash">([^<]*)<', page)
    return html.unescape(found.group(1)) if found else ""


async def test_image_upload_streams_the_bytes_to_glance_with_the_token_kept_server_side(cloud, browser):
    await browser.login()
    csrf = await browser.csrf("/dashboard/images")
    resp, text = await browser.post("/dashboard/images", {"csrf_token": csrf, "name": XSS, "disk_format": "raw",
                                                          "visibility": "private"})
    assert resp.status == 201, text
    created = json.loads(text)
    data = os.urandom(3 * 2**20 + 7)
    async with browser.http.put(cloud.url + created["upload_url"], data=data) as r:
        assert r.status == 403  # a PUT without the page's CSRF token
    async with cloud.session.put(cloud.url + created["upload_url"], data=b"x", allow_redirects=False) as r:
        assert r.status == 401  # nor without a session (a script's request: no login page to go to)
    async with browser.http.put(cloud.url + created["upload_url"], data=data,
                                headers={"X-CSRF-Token": csrf}) as r:
        assert r.status == 200, await r.text()
    status, image, _ = await cloud.request("GET", f"/image/v2/images/{created['id']}")
    assert image["status"] == "active" and image["size"] == len(data)
    assert image["checksum"] == hashlib.md5(data).hexdigest()  # noqa: S324  (Glance's own checksum)
    _, page = await browser.get("/dashboard/images")
    assert created["id"] in page and "&lt;script&gt;" in page and XSS not in page
    async with browser.http.put(cloud.url + created["upload_url"], data=b"again",
                                headers={"X-CSRF-Token": csrf}) as r:
        assert r.status == 409 and "not allowed" in (await r.json())["error"]  # Glance's answer, passed on
    resp, text = await browser.post("/dashboard/images", {"csrf_token": csrf, "name": "pub", "disk_format": "raw",
                                                          "visibility": "public"})
    assert resp.status == 403 and json.loads(text)["error"]  # members may not publicize: Glance's policy
    _, page = await form_post(browser, "/dashboard/images", f"/dashboard/images/{created['id']}/delete", {})
    assert flash(page) == "Image deleted." and created["id"] not in page


async def boot_server(cloud, name: str, image_name: str, host: str | None = None) -> str:
    """A server of the demo project (no network) on a new image; its id. With ``host``, the admin
    places it there (Nova's ``availability_zone: "nova:<host>"``)."""
    image = await add_image(cloud, image_name)
    server = {"name": name, "imageRef": image, "flavorRef": "1", "networks": "none"}
    who = {}
    if host is not None:
        server["availability_zone"] = f"nova:{host}"
        who = {"user": "admin", "project": "demo"}
    status, body, _ = await cloud.compute("POST", "/servers", version="2.latest", json_body={"server": server}, **who)
    assert status == 202, body
    return body["server"]["id"]


async def test_volume_create_attach_detach_delete(cloud, browser):
    await browser.login()
    _, page = await form_post(browser, "/dashboard/volumes", "/dashboard/volumes", {"name": "data", "size": "zero"})
    assert "size" in flash(page).lower() and 'id="flash"' in page  # Cinder's 400, on the page
    _, page = await form_post(browser, "/dashboard/volumes", "/dashboard/volumes", {"name": "data", "size": "1"})
    assert flash(page) == "Volume created."
    volume_id = re.search(r'<tr data-id="([0-9a-f-]+)">\s*<td>data</td>', page).group(1)
    # A volume attaches only to servers on its own host: the server goes there (where the scheduler
    # would put it depends on the servers the module's earlier tests left on the hosts).
    demo = await cloud.app[keys.DB].fetchval("SELECT id FROM projects WHERE name = 'demo'")
    _, body, _ = await cloud.request("GET", f"/volume/v3/{demo}/volumes/{volume_id}", user="admin", project="demo")
    volume_host = body["volume"]["os-vol-host-attr:host"].split("@")[0]
    server_id = await boot_server(cloud, "vol-host", "vol-image", host=volume_host)
    await wait_for_status(cloud, server_id, "ACTIVE")

    async def volume_page_shows(status: str):
        _, page = await browser.get("/dashboard/volumes")
        row = page[page.index(f'data-id="{volume_id}"'):]
        return page if f'<td class="status">{status}</td>' in row[:400] else None

    await until(lambda: volume_page_shows("available"))
    _, page = await form_post(browser, "/dashboard/volumes", f"/dashboard/volumes/{volume_id}/attach",
                              {"server_id": server_id})
    assert flash(page) == "Attach requested.", flash(page)
    page = await until(lambda: volume_page_shows("in-use"))
    assert "vol-host /dev/vdb" in page
    resp, page = await form_post(browser, "/dashboard/volumes", f"/dashboard/volumes/{volume_id}/delete", {})
    assert "attached" in flash(page) or "in-use" in flash(page), flash(page)  # Cinder refuses: it is in use
    _, page = await form_post(browser, "/dashboard/volumes", f"/dashboard/volumes/{volume_id}/detach",
                              {"server_id": server_id})
    assert flash(page) == "Detach requested."
    await until(lambda: volume_page_shows("available"))
    _, page = await form_post(browser, "/dashboard/volumes", f"/dashboard/volumes/{volume_id}/delete", {})
    assert flash(page) == "Delete requested."


async def test_keypair_private_key_is_shown_once_and_import_shows_novas_errors(cloud, browser):
    await browser.login()
    resp, page = await form_post(browser, "/dashboard/keypairs", "/dashboard/keypairs/create", {"name": "made"})
    assert resp.status == 201 and "-----BEGIN RSA PRIVATE KEY-----" in page and 'id="download-key"' in page
    assert resp.headers["Cache-Control"] == "no-store"
    _, page = await browser.get("/dashboard/keypairs")
    assert "<td>made</td>" in page and "PRIVATE KEY" not in page
    status, body, _ = await cloud.compute("GET", "/os-keypairs/made")
    assert status == 200 and "private_key" not in body["keypair"]
    _, page = await form_post(browser, "/dashboard/keypairs", "/dashboard/keypairs/create", {"name": "made"})
    assert "already exists" in flash(page)
    _, page = await form_post(browser, "/dashboard/keypairs", "/dashboard/keypairs/import",
                              {"name": "bad", "public_key": "not a key"})
    assert flash(page).startswith("Keypair data is invalid") and "<td>bad</td>" not in page
    public = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + bytes(32)).decode()
    _, page = await form_post(browser, "/dashboard/keypairs", "/dashboard/keypairs/import",
                              {"name": "mine", "public_key": public})
    assert flash(page) == "Key pair imported." and "<td>mine</td>" in page
    _, page = await form_post(browser, "/dashboard/keypairs", "/dashboard/keypairs/delete", {"name": "mine"})
    assert flash(page) == "Key pair deleted." and "<td>mine</td>" not in page


async def test_network_with_subnet_and_security_group_rules(cloud, browser):
    await browser.login()
    _, page = await form_post(browser, "/dashboard/networks", "/dashboard/networks",
                              {"name": "half", "cidr": "10.300.0.0/24", "enable_dhcp": "on"})
    assert "10.300.0.0/24" in flash(page) and "<td>half</td>" not in page  # Neutron's 400; no network left
    _, page = await form_post(browser, "/dashboard/networks", "/dashboard/networks",
                              {"name": "lab", "cidr": "10.42.0.0/24", "enable_dhcp": "on"})
    assert flash(page) == "Network created." and "10.42.0.0/24" in page
    _, page = await form_post(browser, "/dashboard/security-groups", "/dashboard/security-groups",
                              {"name": "web", "description": XSS})
    assert flash(page) == "Security group created." and XSS not in page
    group_id = re.search(r'<section class="card group" data-id="([0-9a-f-]+)">\s*<h2>web ', page).group(1)
    rule = {"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": "22",
            "port_range_max": "22", "remote_ip_prefix": "0.0.0.0/0"}
    _, page = await form_post(browser, "/dashboard/security-groups",
                              f"/dashboard/security-groups/{group_id}/rules", rule)
    assert flash(page) == "Rule added."
    _, page = await form_post(browser, "/dashboard/security-groups", f"/dashboard/security-groups/{group_id}/rules",
                              {**rule, "port_range_min": "90", "port_range_max": "80"})
    assert "port" in flash(page).lower() and flash(page) != "Rule added."  # Neutron's own refusal
    status, body, _ = await cloud.request("GET", f"/networking/v2.0/security-group-rules?security_group_id={group_id}"
                                                 "&protocol=tcp")
    (made,) = body["security_group_rules"]
    assert made["port_range_min"] == 22
    _, page = await form_post(browser, "/dashboard/security-groups",
                              f"/dashboard/security-group-rules/{made['id']}/delete", {})
    assert flash(page) == "Rule deleted." and made["id"] not in page


async def test_admin_pages_are_absent_for_members_and_show_admins_the_hypervisors_usage(cloud, browser):
    await browser.login()
    _, page = await browser.get("/dashboard/instances")
    assert 'id="admin-link"' not in page
    for path in ("/dashboard/admin/hypervisors", "/dashboard/admin/services", "/dashboard/admin/identity",
                 "/dashboard/admin/quotas"):
        resp, page = await browser.get(path)
        page = html.unescape(page)  # Nova's or Keystone's own 403 message
        assert resp.status == 403 and ("Policy doesn't allow" in page or "not authorized" in page), path
    admin = Browser(cloud)
    try:
        await admin.login("admin", "admin")
        _, page = await admin.get("/dashboard/instances")
        assert 'id="admin-link"' in page
        _, page = await admin.get("/dashboard/admin/hypervisors")
        meters = re.findall(r'<tr data-host="(sim\d)">|<meter min="0" max="(\d+)" value="(\d+)" data-usage="(\w+)"',
                            page)
        assert [m[0] for m in meters if m[0]] == ["sim1", "sim2"]
        vcpus = [(int(m[1]), int(m[2])) for m in meters if m[3] == "vCPU"]
        assert [total for total, _ in vcpus] == [8, 8] and sum(used for _, used in vcpus) >= 1  # the servers above
        _, page = await admin.get("/dashboard/admin/services")
        assert page.count('class="state-up">up<') == 2
        _, page = await admin.get("/dashboard/admin/identity")
        assert "<td>demo</td>" in page and "<td>admin</td>" in page
        demo_id = re.search(r'<option value="([0-9a-f]+)">demo</option>', page) or re.search(
            r'<tr><td>demo</td><td class="mono">([0-9a-f]+)</td>', page)
        quotas = f"/dashboard/admin/quotas?project_id={demo_id.group(1)}"
        _, page = await form_post(admin, quotas, f"/dashboard/admin/quotas/{demo_id.group(1)}",
                                  {"q_instances": "-2"})
        assert "instances" in flash(page) and flash(page) != "Quotas updated."  # Nova's 400 on the page
        _, page = await form_post(admin, quotas, f"/dashboard/admin/quotas/{demo_id.group(1)}",
                                  {"q_instances": "33", "q_cores": ""})
        assert flash(page) == "Quotas updated." and '<td>instances</td><td class="num">' in page
        status, body, _ = await cloud.compute("GET", "/os-quota-sets/" + demo_id.group(1), user="admin")
        assert body["quota_set"]["instances"] == 33
    finally:
        await admin.close()


async def test_instance_page_offers_the_serial_console_and_serves_xterm(cloud, browser):
    """Simulated hosts have no console to open, so the API's refusal is what the page gets; a real
    guest's URL goes to the page's terminal the same way (the vendored xterm.js over the websocket)."""
    await browser.login()
    server_id = await boot_server(cloud, "console-vm", "console-image")
    await wait_for_status(cloud, server_id, "ACTIVE")
    _, page = await browser.get(f"/dashboard/instances/{server_id}")
    url = f"/dashboard/instances/{server_id}/console-url"
    assert f'data-url="{url}"' in page and "/dashboard/static/vendor/xterm.js" in page
    resp, text = await browser.post(url, {})
    assert resp.status == 403  # a POST: the CSRF token is required
    resp, text = await browser.post(url, {"csrf_token": await browser.csrf(f"/dashboard/instances/{server_id}")})
    status, api, _ = await cloud.compute("POST", f"/servers/{server_id}/remote-consoles", version="2.latest",
                                         json_body={"remote_console": {"protocol": "serial", "type": "serial"}})
    assert resp.status == status == 400 and json.loads(text)["error"] == api["badRequest"]["message"]
    for name, kind in (("xterm.js", "javascript"), ("xterm.css", "text/css"), ("xterm.LICENSE", "")):
        resp, text = await browser.get(f"/dashboard/static/vendor/{name}")
        assert resp.status == 200 and kind in resp.headers["Content-Type"], (name, resp.headers["Content-Type"])
    assert "xterm.js 6.0.0" in (await browser.get("/dashboard/static/vendor/README"))[1]


# --- the instance page's server actions ------------------------------------------------------------

def shown_actions(page: str) -> set[str]:
    """The action buttons the page shows (the hidden ones are there for the live update to reveal)."""
    tags = re.findall(r'<form[^>]*data-action="([^"]+)"([^>]*)>', page)
    return {name for name, rest in tags if not rest.rstrip().endswith("hidden")}


async def test_actions_follow_the_servers_state_and_show_the_apis_errors(cloud, browser):
    await browser.login()
    server_id = await boot_server(cloud, "acts-vm", "actions-image")
    await wait_for_status(cloud, server_id, "ACTIVE")
    page_url = f"/dashboard/instances/{server_id}"
    action_url = f"{page_url}/action"
    _, page = await browser.get(page_url)
    assert shown_actions(page) == {"stop", "reboot", "pause", "suspend", "resize", "rebuild", "rescue", "shelve",
                                   "createImage", "lock", "delete"}  # no migrate: the policy wants an admin
    assert 'data-confirm="Rebuild acts-vm? Its disk is replaced by the image."' in page

    csrf = await browser.csrf(page_url)
    _, page = await browser.post(action_url, {"csrf_token": csrf, "action": "pause"})
    assert flash(page) == "Pause requested."
    await wait_for_status(cloud, server_id, "PAUSED")
    async with browser.http.get(cloud.url + f"{page_url}/state.json") as r:
        assert set((await r.json())["actions"]) == {"unpause", "shelve", "createImage", "lock", "delete"}
    _, page = await browser.post(action_url, {"csrf_token": csrf, "action": "pause"})  # a stale page's button
    status, api, _ = await cloud.compute("POST", f"/servers/{server_id}/action", json_body={"pause": None})
    assert status == 409 and flash(page) == api["conflictingRequest"]["message"]

    _, page = await form_post(browser, page_url, action_url, {"action": "unpause"})
    await wait_for_status(cloud, server_id, "ACTIVE")
    _, page = await form_post(browser, page_url, action_url, {"action": "resize", "flavor": "2"})
    assert flash(page) == "Resize requested."
    await wait_for_status(cloud, server_id, "VERIFY_RESIZE")
    _, page = await browser.get(page_url)
    assert {"confirmResize", "revertResize"} <= shown_actions(page) and "resize" not in shown_actions(page)
    _, page = await form_post(browser, page_url, action_url, {"action": "revertResize"})
    server = await wait_for_status(cloud, server_id, "ACTIVE")
    assert server["flavor"]["original_name"] == "m1.tiny"

    _, page = await form_post(browser, page_url, action_url, {"action": "createImage", "name": "acts-snap"})
    assert flash(page) == "Create snapshot requested."
    status, body, _ = await cloud.request("GET", "/image/v2/images?name=acts-snap")
    assert [i["name"] for i in body["images"]] == ["acts-snap"]
    # The snapshot's upload ends first: while it runs (image_uploading) Nova refuses a resize with
    # 409 before it reads the flavor, as novalite does.
    await wait_for_host(cloud, server_id, lambda host: True)
    _, page = await form_post(browser, page_url, action_url, {"action": "resize", "flavor": "nope"})
    assert "nope" in flash(page) and "requested" not in flash(page)  # Nova's 400 for a flavor it lacks

    admin = Browser(cloud)
    try:
        await admin.login("admin", "demo")
        _, page = await admin.get(page_url)
        assert {"migrate", "os-migrateLive"} <= shown_actions(page)
        # The buttons move the server: live to the other host, then cold back and confirmed.
        source = (await wait_for_status(cloud, server_id, "ACTIVE", user="admin"))["OS-EXT-SRV-ATTR:host"]
        _, page = await form_post(admin, page_url, action_url, {"action": "os-migrateLive"})
        assert flash(page) == "Live migrate requested."
        moved = await wait_for_host(cloud, server_id, lambda host: host != source)
        _, page = await form_post(admin, page_url, action_url, {"action": "migrate"})
        assert flash(page) == "Migrate requested."
        await wait_for_status(cloud, server_id, "VERIFY_RESIZE", user="admin")
        _, page = await form_post(admin, page_url, action_url, {"action": "confirmResize"})
        server = await wait_for_status(cloud, server_id, "ACTIVE", user="admin")
        assert server["OS-EXT-SRV-ATTR:host"] == source != moved
    finally:
        await admin.close()


async def test_a_session_survives_a_restart_and_logout_deletes_its_row(pg_dsn, tmp_path):
    """Sessions live in the database (by the hash of the cookie's id): a new process on the same
    database knows the browser; logging out deletes the row and revokes the token."""
    first = await start_cloud(pg_dsn, tmp_path)
    dsn = first.app[keys.DSN]
    browser = Browser(first)
    try:
        await browser.login()
        token = await browser.session_token()
        cookie = browser.http.cookie_jar.filter_cookies(URL(first.url))[COOKIE].value
        await stop_cloud(first)
        second = await start_cloud(pg_dsn, tmp_path, dsn=dsn)
        browser.cloud = second
        resp, page = await browser.get("/dashboard/instances", allow_redirects=False)
        assert resp.status == 200 and '<span class="project">demo</span>' in page
        conn = await asyncpg.connect(dsn)
        try:
            stored = await conn.fetch("SELECT id_hash, token FROM dashboard_sessions")
            assert [r["id_hash"] for r in stored] == [hashlib.sha256(cookie.encode()).hexdigest()]
            assert cookie not in str([dict(r) for r in stored])  # the id itself is never stored
            await browser.post("/dashboard/logout", {"csrf_token": await browser.csrf("/dashboard/instances")})
            assert await conn.fetchval("SELECT count(*) FROM dashboard_sessions") == 0
        finally:
            await conn.close()
        async with second.session.get(second.url + "/compute/v2.1/servers", headers={"X-Auth-Token": token}) as r:
            assert r.status == 401
    finally:
        await browser.close()
        await stop_cloud(browser.cloud)
