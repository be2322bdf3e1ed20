"""The Glance v2 subset at /image: create, upload, download, list, patch, delete, and the real CLI."""

from __future__ import annotations

import asyncio
import hashlib
import os
from urllib.parse import urlsplit

from novalite.api import keys

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
OCTET = {"Content-Type": "application/octet-stream"}


async def image_api(cloud, method, path, **kw):
    return await cloud.request(method, f"/image/v2{path}", **kw)


async def create(cloud, user="demo", **body):
    body.setdefault("disk_format", "qcow2")
    body.setdefault("container_format", "bare")
    status, doc, _ = await image_api(cloud, "POST", "/images", user=user, json_body=body)
    assert status == 201, doc
    return doc


def qcow2_bytes(virtual_size: int = 64 * 1024 * 1024) -> bytes:
    """A tiny, valid-looking qcow2 header (magic, version 3, virtual size) plus padding."""
    header = b"QFI\xfb" + (3).to_bytes(4, "big") + bytes(16) + virtual_size.to_bytes(8, "big")
    return header + os.urandom(4096)


async def test_versions_answer_without_a_token(cloud):
    async with cloud.session.get(f"{cloud.url}/image/") as r:
        assert r.status == 300
        body = await r.json()
    assert body["versions"][0]["status"] == "CURRENT"
    assert body["versions"][0]["links"][0]["href"] == f"{cloud.url}/image/v2/"


async def test_create_upload_show_download_delete(cloud):
    doc = await create(cloud, name="img1", kernel_id="k-1", os_distro="debian", hw_disk_bus="virtio")
    assert doc["status"] == "queued" and doc["visibility"] == "shared" and doc["size"] is None
    assert doc["kernel_id"] == "k-1" and doc["hw_disk_bus"] == "virtio"
    data = qcow2_bytes()
    status, body, _ = await image_api(cloud, "PUT", f"/images/{doc['id']}/file", data=data, headers=OCTET)
    assert status == 204, body
    status, shown, _ = await image_api(cloud, "GET", f"/images/{doc['id']}")
    assert status == 200
    assert shown["status"] == "active"
    assert shown["size"] == len(data)
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    assert shown["os_hash_algo"] == "sha512"
    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert shown["virtual_size"] == 64 * 1024 * 1024
    assert shown["os_distro"] == "debian"
    path = cloud.app[keys.IMAGE_STORE].path(doc["id"])
    assert path.read_bytes() == data

    async with cloud.session.get(f"{cloud.url}/image/v2/images/{doc['id']}/file",
                                 headers={"X-Auth-Token": await cloud.token()}) as r:
        assert r.status == 200
        assert r.headers["Content-MD5"] == shown["checksum"]
        assert await r.read() == data

    status, _, _ = await image_api(cloud, "PUT", f"/images/{doc['id']}/file", data=b"again", headers=OCTET)
    assert status == 409

    status, _, _ = await image_api(cloud, "DELETE", f"/images/{doc['id']}")
    assert status == 204
    assert not path.exists()
    status, body, _ = await image_api(cloud, "GET", f"/images/{doc['id']}")
    assert status == 404 and body["code"] == 404 and body["title"] == "Not Found"


async def test_upload_larger_than_the_api_body_limit_streams_to_disk(cloud):
    limit = cloud.config.api.max_body_bytes
    data = os.urandom(limit * 3 + 17)
    doc = await create(cloud, name="big", disk_format="raw")
    status, body, _ = await image_api(cloud, "PUT", f"/images/{doc['id']}/file", data=data, headers=OCTET)
    assert status == 204, body
    _, shown, _ = await image_api(cloud, "GET", f"/images/{doc['id']}")
    assert shown["size"] == len(data) and shown["status"] == "active"
    assert shown["virtual_size"] == len(data)


async def test_checksum_mismatch_leaves_the_image_queued_without_data(cloud):
    data = b"x" * 1000
    doc = await create(cloud, name="bad", disk_format="raw",
                       **{"owner_specified.openstack.md5": hashlib.md5(b"other").hexdigest()})
    status, body, _ = await image_api(cloud, "PUT", f"/images/{doc['id']}/file", data=data, headers=OCTET)
    assert status == 400 and "checksum" in body["message"]
    _, shown, _ = await image_api(cloud, "GET", f"/images/{doc['id']}")
    assert shown["status"] == "queued" and shown["checksum"] is None
    store_dir = cloud.app[keys.IMAGE_STORE].root
    assert list(store_dir.glob(f"{doc['id']}*")) == []


async def test_interrupted_upload_leaves_the_image_queued_without_data(cloud):
    doc = await create(cloud, name="cut", disk_format="raw")
    parts = urlsplit(cloud.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(
        (f"PUT /image/v2/images/{doc['id']}/file HTTP/1.1\r\nHost: {parts.netloc}\r\n"
         f"X-Auth-Token: {await cloud.token()}\r\nContent-Type: application/octet-stream\r\n"
         f"Content-Length: 1000000\r\n\r\n").encode() + b"y" * 5000
    )
    await writer.drain()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while loop.time() < deadline:  # wait until the server is saving
        _, shown, _ = await image_api(cloud, "GET", f"/images/{doc['id']}")
        if shown["status"] == "saving":
            break
        await asyncio.sleep(0.02)
    writer.close()
    deadline = loop.time() + 5
    while loop.time() < deadline:
        _, shown, _ = await image_api(cloud, "GET", f"/images/{doc['id']}")
        if shown["status"] == "queued":
            break
        await asyncio.sleep(0.05)
    assert shown["status"] == "queued" and shown["size"] is None
    assert list(cloud.app[keys.IMAGE_STORE].root.glob(f"{doc['id']}*")) == []
    # and a proper upload works afterwards
    status, _, _ = await image_api(cloud, "PUT", f"/images/{doc['id']}/file", data=b"ok", headers=OCTET)
    assert status == 204


async def test_list_filters_sorting_and_pagination(cloud):
    ids = {}
    for name in ("alpha", "bravo", "charlie", "delta"):
        ids[name] = (await create(cloud, name=name, os_distro="x" if name != "delta" else "y"))["id"]
    status, body, _ = await image_api(cloud, "GET", "/images?name=bravo")
    assert [i["id"] for i in body["images"]] == [ids["bravo"]]
    status, body, _ = await image_api(cloud, "GET", f"/images?id=in:{ids['alpha']},{ids['delta']}")
    assert {i["name"] for i in body["images"]} == {"alpha", "delta"}
    status, body, _ = await image_api(cloud, "GET", "/images?status=active")
    assert body["images"] == []
    status, body, _ = await image_api(cloud, "GET", "/images?os_distro=y")
    assert [i["name"] for i in body["images"]] == ["delta"]
    status, body, _ = await image_api(cloud, "GET", "/images?visibility=shared&sort_key=name&sort_dir=asc&limit=3")
    assert [i["name"] for i in body["images"]] == ["alpha", "bravo", "charlie"]
    assert "marker=" in body["next"] and "sort_key=name" in body["next"]
    status, body, _ = await image_api(cloud, "GET", body["next"].removeprefix("/v2"))
    assert [i["name"] for i in body["images"]] == ["delta"]
    status, body, _ = await image_api(cloud, "GET", "/images?sort=name:desc&limit=2")
    assert [i["name"] for i in body["images"]] == ["delta", "charlie"]
    status, body, _ = await image_api(cloud, "GET", "/images?marker=nope")
    assert status == 400
    status, body, _ = await image_api(cloud, "GET", "/images?sort_key=bogus")
    assert status == 400


async def test_visibility_and_ownership_rules(cloud):
    status, body, _ = await image_api(cloud, "POST", "/images", json_body={"name": "pub", "visibility": "public"})
    assert status == 403 and "publicize_image" in body["message"]
    pub = await create(cloud, user="admin", name="pub", visibility="public")
    priv = await create(cloud, user="admin", name="adm-private", visibility="private")
    comm = await create(cloud, user="admin", name="adm-community", visibility="community")
    status, _, _ = await image_api(cloud, "GET", f"/images/{priv['id']}")
    assert status == 404
    status, _, _ = await image_api(cloud, "GET", f"/images/{comm['id']}")
    assert status == 200
    _, body, _ = await image_api(cloud, "GET", "/images")
    names = {i["name"] for i in body["images"]}
    assert "pub" in names and "adm-private" not in names and "adm-community" not in names
    _, body, _ = await image_api(cloud, "GET", "/images?visibility=community")
    assert [i["name"] for i in body["images"]] == ["adm-community"]
    # demo may not change or delete the admin's public image
    status, _, _ = await image_api(cloud, "DELETE", f"/images/{pub['id']}")
    assert status == 403
    status, _, _ = await image_api(cloud, "PATCH", f"/images/{pub['id']}", headers=PATCH,
                                   data=b'[{"op": "replace", "path": "/name", "value": "x"}]')
    assert status == 403
    # shared images: visible to accepted members
    shared = await create(cloud, user="admin", name="adm-shared", visibility="shared")
    demo_project = (await cloud.openstack_json("project", "show", "demo", cloud="novalite-admin"))["id"]
    status, member, _ = await image_api(cloud, "POST", f"/images/{shared['id']}/members", user="admin",
                                        json_body={"member": demo_project})
    assert status == 200 and member["status"] == "pending"
    _, body, _ = await image_api(cloud, "GET", "/images")
    assert "adm-shared" not in {i["name"] for i in body["images"]}
    status, member, _ = await image_api(cloud, "PUT", f"/images/{shared['id']}/members/{demo_project}",
                                        json_body={"status": "accepted"})
    assert status == 200 and member["status"] == "accepted"
    _, body, _ = await image_api(cloud, "GET", "/images")
    assert "adm-shared" in {i["name"] for i in body["images"]}


async def test_json_patch_updates_properties_and_attributes(cloud):
    doc = await create(cloud, name="p", disk_format="ami", container_format="ami")
    ops = (b'[{"op": "add", "path": "/kernel_id", "value": "k"},'
           b' {"op": "add", "path": "/os_command_line", "value": "console=ttyS0"},'
           b' {"op": "replace", "path": "/name", "value": "renamed"},'
           b' {"op": "replace", "path": "/min_ram", "value": 64},'
           b' {"op": "add", "path": "/hw_rng_model", "value": "virtio"}]')
    status, body, _ = await image_api(cloud, "PATCH", f"/images/{doc['id']}", headers=PATCH, data=ops)
    assert status == 200, body
    assert (body["name"], body["min_ram"], body["kernel_id"], body["os_command_line"]) == \
        ("renamed", 64, "k", "console=ttyS0")
    status, body, _ = await image_api(cloud, "PATCH", f"/images/{doc['id']}", headers=PATCH,
                                      data=b'[{"op": "remove", "path": "/hw_rng_model"}]')
    assert status == 200 and "hw_rng_model" not in body
    status, body, _ = await image_api(cloud, "PATCH", f"/images/{doc['id']}", headers=PATCH,
                                      data=b'[{"op": "replace", "path": "/status", "value": "active"}]')
    assert status == 403
    status, body, _ = await image_api(cloud, "PATCH", f"/images/{doc['id']}", headers=PATCH,
                                      data=b'[{"op": "replace", "path": "/nope", "value": "x"}]')
    assert status == 409
    status, body, _ = await image_api(cloud, "PATCH", f"/images/{doc['id']}", headers=PATCH,
                                      data=b'[{"op": "replace", "path": "/disk_format", "value": "vhdx"}]')
    assert status == 200 and body["disk_format"] == "vhdx"
    status, body, _ = await image_api(cloud, "PATCH", f"/images/{doc['id']}", headers=PATCH,
                                      data=b'[{"op": "replace", "path": "/disk_format", "value": "floppy"}]')
    assert status == 400
    status, body, _ = await image_api(cloud, "PATCH", f"/images/{doc['id']}",
                                      headers={"Content-Type": "application/json"}, data=b"[]")
    assert status == 415
    status, body, _ = await image_api(cloud, "POST", "/images", json_body={"name": "x", "status": "active"})
    assert status == 403 and "read-only" in body["message"]


async def test_schemas(cloud):
    status, body, _ = await image_api(cloud, "GET", "/schemas/image")
    assert status == 200 and body["name"] == "image" and "disk_format" in body["properties"]
    status, body, _ = await image_api(cloud, "GET", "/schemas/images")
    assert status == 200 and body["name"] == "images"


async def test_openstack_cli_image_lifecycle(cloud):
    disk = cloud.workdir / "disk.qcow2"
    disk.write_bytes(qcow2_bytes())
    kernel = cloud.workdir / "vmlinuz"
    kernel.write_bytes(os.urandom(2048))
    img = await cloud.openstack_json("image", "create", "--file", str(disk), "--disk-format", "qcow2",
                                     "--container-format", "bare", "cli-disk")
    assert img["status"] == "active"
    assert img["checksum"] == hashlib.md5(disk.read_bytes()).hexdigest()
    aki = await cloud.openstack_json("image", "create", "--disk-format", "aki", "--file", str(kernel), "cli-kernel")
    assert aki["disk_format"] == "aki" and aki["status"] == "active"
    listed = await cloud.openstack_json("image", "list")
    assert {"cli-disk", "cli-kernel"} <= {i["Name"] for i in listed}
    await cloud.openstack("image", "set", "--property", f"kernel_id={aki['id']}",
                          "--property", "os_command_line=console=ttyS0", "cli-disk")
    shown = await cloud.openstack_json("image", "show", "cli-disk")
    props = shown["properties"]
    assert props["kernel_id"] == aki["id"] and props["os_command_line"] == "console=ttyS0"
    saved = cloud.workdir / "saved.qcow2"
    await cloud.openstack("image", "save", "--file", str(saved), "cli-disk")
    assert saved.read_bytes() == disk.read_bytes()
    await cloud.openstack("image", "delete", "cli-disk", "cli-kernel")
    listed = await cloud.openstack_json("image", "list")
    assert not {"cli-disk", "cli-kernel"} & {i["Name"] for i in listed}
    assert list(cloud.app[keys.IMAGE_STORE].root.iterdir()) == []
