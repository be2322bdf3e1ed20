"""Request limits as a client sees them: body size, header size, JSON depth and numbers,
the cap on every list, and image uploads bounded by size cap, quota and free disk."""

from __future__ import annotations

import asyncio
import os
import re

import pytest
from conftest import add_image, start_cloud, stop_cloud, wait_for_status

from novalite.api import keys

CAP = 3
OCTET = {"Content-Type": "application/octet-stream"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def limited(pg_dsn, tmp_path, monkeypatch):
    """A cloud with small limits: lists of 3, 64 KiB bodies, 100 kB images, 1 MiB of images per project."""
    for key, value in {
        "API__MAX_LIMIT": CAP,
        "API__MAX_BODY_BYTES": 65536,
        "IMAGE__SIZE_CAP_BYTES": 100_000,
        "IMAGE__RESERVE_FREE_BYTES": 0,
        "QUOTA__IMAGE_SIZE_TOTAL_MIB": 1,
    }.items():
        monkeypatch.setenv(f"NOVALITE_{key}", str(value))
    c = await start_cloud(pg_dsn, tmp_path)
    yield c
    await stop_cloud(c)


# ------------------------------------------------------------------ body size


async def test_oversized_body_is_413_in_each_services_shape_and_nothing_is_created(limited):
    big = b'{"flavor": {"name": "' + b"a" * 70_000 + b'", "ram": 1, "vcpus": 1, "disk": 1}}'
    status, body, _ = await limited.compute("POST", "/flavors", user="admin", data=big, headers=JSON)
    assert status == 413 and body == {"overLimit": {"code": 413, "message": "Request is too large."}}
    _, flavors, _ = await limited.compute("GET", "/flavors?limit=1000", user="admin")
    assert all(len(f["name"]) < 100 for f in flavors["flavors"])

    status, body, _ = await limited.request("POST", "/image/v2/images", data=big, headers=JSON)
    assert status == 413 and body["code"] == 413 and body["title"] == "Request Entity Too Large"

    status, body, _ = await limited.request("POST", "/identity/v3/auth/tokens", user="", data=big, headers=JSON)
    assert status == 413 and body["error"]["code"] == 413  # refused before auth, in Keystone's shape

    status, body, _ = await limited.request("GET", "/networking/v2.0/networks", data=big, headers=JSON)
    assert status == 413 and "NeutronError" in body


async def test_chunked_oversized_body_is_413_too(limited):
    async def chunks():
        for _ in range(20):
            yield b"x" * 8192

    status, body, _ = await limited.compute("POST", "/os-keypairs", data=chunks(), headers=JSON)
    assert status == 413 and body["overLimit"]["code"] == 413


# ---------------------------------------------------------------- header size


async def _raw(cloud, request: bytes) -> bytes:
    host, port = re.match(r"http://([^:]+):(\d+)", cloud.url).groups()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    return data


async def test_oversized_header_and_request_line_are_answered_400(limited):
    field = limited.config.api.max_field_size
    answer = await _raw(limited, b"GET /compute/v2.1/flavors HTTP/1.1\r\nHost: x\r\nX-Auth-Token: "
                        + b"a" * (field + 10) + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    line = limited.config.api.max_line_size
    answer = await _raw(limited, b"GET /compute/v2.1/" + b"a" * (line + 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b" 400 " in answer.split(b"\r\n")[0]
    # the server still serves
    status, _, _ = await limited.compute("GET", "/flavors")
    assert status == 200


# ------------------------------------------------------------------ JSON body


@pytest.mark.parametrize("raw", [
    b'{"keypair": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}",
    b'{"keypair": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"keypair": {"name": "\xff\xfe"}}',
    b'{"keypair": {"name": 1' + b"0" * 5000 + b"}}",
    b'{"keypair": {"name": 1e999}}',
    b'{"keypair": {"name": NaN}}',
])
async def test_unacceptable_json_is_400_before_any_handler(limited, raw):
    status, body, _ = await limited.compute("POST", "/os-keypairs", data=raw, headers=JSON)
    assert status == 400 and body["badRequest"]["code"] == 400
    status, body, _ = await limited.request("POST", "/image/v2/images", data=raw, headers=JSON)
    assert status == 400 and body["code"] == 400
    _, listing, _ = await limited.compute("GET", "/os-keypairs")
    assert listing["keypairs"] == []


async def test_huge_integer_in_a_field_is_400_not_500(limited):
    status, body, _ = await limited.compute(
        "POST", "/flavors", user="admin",
        json_body={"flavor": {"name": "big", "ram": 10**30, "vcpus": 1, "disk": 1}})
    assert status == 400, body


# ------------------------------------------------------------------ list caps

# GET routes whose lists are not collections a client pages through.
NOT_LISTS = re.compile(r"^/(identity|compute|image|networking|volume)(/v[0-9.]+)?/?$|/versions$|/schemas/"
                       r"|/auth/catalog$|/v3/auth/tokens$"
                       r"|^/dashboard|^/$|^/metrics$|^/healthcheck$")  # pages and text, not API lists


async def _populate(cloud) -> dict[str, str]:
    """More than CAP of each cheap object, as admin; the ids the walk puts in route paths."""
    image = await add_image(cloud)
    for i in range(5):
        status, body, _ = await cloud.compute("POST", "/os-keypairs", user="admin",
                                              json_body={"keypair": {"name": f"kp{i}"}})
        assert status in (200, 201), body
        status, body, _ = await cloud.compute("POST", "/os-server-groups", user="admin",
                                              json_body={"server_group": {"name": f"g{i}", "policies": ["affinity"]}})
        assert status == 200, body
        status, body, _ = await cloud.request("POST", "/identity/v3/users", user="admin",
                                              json_body={"user": {"name": f"u{i}", "password": "pw"}})
        assert status == 201, body
        status, body, _ = await cloud.request("POST", "/identity/v3/projects", user="admin",
                                              json_body={"project": {"name": f"p{i}"}})
        assert status == 201, body
    status, body, _ = await cloud.request("POST", "/image/v2/images", user="admin", json_body={
        "name": "shared", "visibility": "shared", "disk_format": "raw", "container_format": "bare"})
    shared = body["id"]
    for i in range(5):
        status, _, _ = await cloud.request("POST", "/image/v2/images", user="admin", json_body={"name": f"i{i}"})
        assert status == 201
        status, _, _ = await cloud.request("POST", f"/image/v2/images/{shared}/members", user="admin",
                                           json_body={"member": f"project{i}"})
        assert status == 200
    status, body, _ = await cloud.compute("POST", "/servers", user="admin", version="2.latest", json_body={
        "server": {"name": "vm", "imageRef": image, "flavorRef": "1", "networks": "none", "min_count": 5}})
    assert status == 202, body
    _, servers, _ = await cloud.compute("GET", "/servers?all_tenants=1", user="admin")
    server = servers["servers"][0]["id"]
    await wait_for_status(cloud, server, "ACTIVE", user="admin")
    _, projects, _ = await cloud.request("GET", "/identity/v3/projects?name=admin", user="admin")
    _, users, _ = await cloud.request("GET", "/identity/v3/users?name=admin", user="admin")
    return {"server_id": server, "image_id": shared, "project_id": projects["projects"][0]["id"],
            "user_id": users["users"][0]["id"], "flavor_id": "1", "pattern": "sim", "tenant_id":
            projects["projects"][0]["id"]}


async def test_every_list_route_answers_at_most_max_limit(limited):
    ids = await _populate(limited)
    seen_full: set[str] = set()
    walked = 0
    for route in limited.app.router.routes():
        if route.method != "GET":
            continue
        info = route.resource.get_info()
        template = info.get("path") or info.get("formatter") or info.get("prefix", "")
        if NOT_LISTS.search(template):
            continue
        path = re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "unknown"), template)
        status, body, _ = await limited.request("GET", f"{path}?limit=100000", user="admin", version="2.latest")
        walked += 1
        assert status < 500, (template, body)
        if status != 200 or not isinstance(body, dict):
            continue
        for key, value in body.items():
            if isinstance(value, list):
                assert len(value) <= CAP, (template, key, len(value))
                if len(value) == CAP:
                    seen_full.add(template.rsplit("/", 1)[-1] if "{" not in template.rsplit("/", 1)[-1]
                                  else template)
    assert walked > 40
    # the cap did bite where more than CAP objects exist
    for name in ("servers", "detail", "os-keypairs", "os-server-groups", "images", "users", "projects",
                 "flavors", "extensions"):
        assert name in seen_full, (name, sorted(seen_full))
    _, body, _ = await limited.request("GET", "/identity/v3/users", user="admin")
    assert body["truncated"] is True


@pytest.mark.parametrize("path,shape", [
    ("/compute/v2.1/servers?limit=-1", "badRequest"),
    ("/compute/v2.1/flavors?limit=abc", "badRequest"),
    ("/image/v2/images?limit=-1", "code"),
    ("/networking/v2.0/networks?limit=x", "NeutronError"),
    ("/volume/v3/{project}/volumes?limit=x", "badRequest"),
])
async def test_bad_limit_is_the_services_400(limited, path, shape):
    _, projects, _ = await limited.request("GET", "/identity/v3/auth/projects")
    path = path.replace("{project}", projects["projects"][0]["id"])
    status, body, _ = await limited.request("GET", path, version="2.latest")
    assert status == 400 and shape in body, body


# -------------------------------------------------------------- image uploads


async def _image(cloud) -> str:
    status, body, _ = await cloud.request("POST", "/image/v2/images", json_body={
        "name": "up", "disk_format": "raw", "container_format": "bare"})
    assert status == 201
    return body["id"]


async def _after(cloud, image_id: str) -> dict:
    _, shown, _ = await cloud.request("GET", f"/image/v2/images/{image_id}")
    root = cloud.app[keys.IMAGE_STORE].root
    stray = list(root.glob(f"{image_id}*")) if root.exists() else []
    return {"status": shown["status"], "size": shown["size"], "checksum": shown["checksum"], "files": stray}


QUEUED_EMPTY = {"status": "queued", "size": None, "checksum": None, "files": []}


async def test_upload_over_the_size_cap_is_413_and_leaves_the_image_queued(limited):
    image = await _image(limited)
    status, body, _ = await limited.request("PUT", f"/image/v2/images/{image}/file", data=os.urandom(100_001),
                                            headers=OCTET)
    assert status == 413 and body["code"] == 413 and "image_size_cap" in body["message"]
    assert await _after(limited, image) == QUEUED_EMPTY

    async def chunks():  # no Content-Length: refused while streaming, the partial file removed
        for _ in range(30):
            yield os.urandom(8192)

    status, body, _ = await limited.request("PUT", f"/image/v2/images/{image}/file", data=chunks(), headers=OCTET)
    assert status == 413 and "image_size_cap" in body["message"]
    assert await _after(limited, image) == QUEUED_EMPTY


async def test_upload_over_the_project_quota_is_413_with_glances_quota_message(limited, monkeypatch):
    monkeypatch.setattr(limited.config.image, "size_cap_bytes", 10 << 20)
    first = await _image(limited)
    status, _, _ = await limited.request("PUT", f"/image/v2/images/{first}/file", data=os.urandom(700_000),
                                         headers=OCTET)
    assert status == 204
    second = await _image(limited)
    status, body, _ = await limited.request("PUT", f"/image/v2/images/{second}/file", data=os.urandom(700_000),
                                            headers=OCTET)
    assert status == 413 and "image_size_total" in body["message"] and "quota" in body["message"]
    assert await _after(limited, second) == QUEUED_EMPTY
    # what still fits is accepted
    status, _, _ = await limited.request("PUT", f"/image/v2/images/{second}/file", data=os.urandom(300_000),
                                         headers=OCTET)
    assert status == 204


async def test_upload_that_would_fill_the_disk_is_507_and_leaves_nothing(limited, monkeypatch):
    image = await _image(limited)
    monkeypatch.setattr(limited.app[keys.IMAGE_STORE], "reserve_free_bytes", 1 << 62)
    status, body, _ = await limited.request("PUT", f"/image/v2/images/{image}/file", data=b"x" * 50_000,
                                            headers=OCTET)
    assert status == 507 and body["code"] == 507 and "full" in body["message"]
    assert await _after(limited, image) == QUEUED_EMPTY

    async def chunks():
        yield b"x" * 50_000

    status, body, _ = await limited.request("PUT", f"/image/v2/images/{image}/file", data=chunks(), headers=OCTET)
    assert status == 507
    assert await _after(limited, image) == QUEUED_EMPTY
