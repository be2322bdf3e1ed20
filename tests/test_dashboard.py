"""The dashboard over plain HTTP: what a browser gets (redirects, cookie flags, CSP, CSRF refusals,
escaping, project scoping) and what logging out does to the token on the API."""

from __future__ import annotations

import re

import aiohttp
import pytest
from conftest import add_image, start_cloud, stop_cloud
from yarl import URL

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

    def session_token(self) -> str:
        cookie = self.http.cookie_jar.filter_cookies(URL(self.cloud.url))[COOKIE].value
        return self.cloud.app[fw.SESSIONS].get(cookie).token

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
    assert cookie.value != browser.session_token()
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
    token = browser.session_token()
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
    old = browser.session_token()
    _, page = await browser.get("/dashboard/instances")
    demo_id = re.search(r'<option value="([0-9a-f]+)">demo</option>', page).group(1)
    resp, page = await browser.post("/dashboard/project", {"csrf_token": await browser.csrf("/dashboard/instances"),
                                                           "project_id": demo_id})
    assert resp.status == 200 and '<span class="project">demo</span>' in page
    async with cloud.session.get(cloud.url + "/compute/v2.1/servers", headers={"X-Auth-Token": old}) as r:
        assert r.status == 401
