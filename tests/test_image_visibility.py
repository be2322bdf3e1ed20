"""A project uses only the images it may see (Glance's rule), on every path that reads one (issue 15).

Project ``other`` (user olga) owns the images; ``demo`` asks for them. An image demo may
not see is answered exactly as one that does not exist, and nothing is written. Shared
with demo (a pending member: Glance shows an image by id to a member of any status),
public and community images work; admin sees everything.
"""

from __future__ import annotations

import uuid

from conftest import start_cloud, stop_cloud, wait_for_status

from novalite.api import keys

NOT_FOUND = "Can not find requested image"  # Nova's servers.py create, on ImageNotFound
CINDER_NOT_FOUND = "Invalid image identifier or unable to access requested image."  # Cinder's _image_uuid_from_ref


async def project_id(cloud, name: str) -> str:
    async with cloud.app[keys.DB].acquire() as conn:
        return await conn.fetchval("SELECT id FROM projects WHERE name = $1", name)


async def other_project(cloud) -> str:
    """Project ``other`` with olga as a member, made through the identity API."""
    status, body, _ = await cloud.request("POST", "/identity/v3/projects", user="admin",
                                          json_body={"project": {"name": "other"}})
    assert status == 201, body
    other = body["project"]["id"]
    status, body, _ = await cloud.request("POST", "/identity/v3/users", user="admin", json_body={
        "user": {"name": "olga", "password": "olga-pw", "default_project_id": other}})
    assert status == 201, body
    olga = body["user"]["id"]
    _, body, _ = await cloud.request("GET", "/identity/v3/roles?name=member", user="admin")
    role = body["roles"][0]["id"]
    status, _, _ = await cloud.request("PUT", f"/identity/v3/projects/{other}/users/{olga}/roles/{role}",
                                       user="admin")
    assert status == 204
    cloud.creds["olga"] = "olga-pw"
    return other


async def owned_image(cloud, owner: str, visibility: str, **props) -> str:
    """An active image row of ``owner`` as the image API stores one after an upload."""
    image_id = uuid.uuid4()
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute(
            """INSERT INTO images (id, name, owner, status, visibility, disk_format, container_format, size,
                                   properties)
               VALUES ($1, $2, $3, 'active', $4, 'qcow2', 'bare', 1048576, $5)""",
            image_id, f"{visibility}-image", owner, visibility, props,
        )
    return str(image_id)


async def images_of_other(cloud, **props) -> dict[str, str]:
    """other's private, shared-with-demo (member pending), public and community images."""
    other = await other_project(cloud)
    images = {v: await owned_image(cloud, other, v, **props) for v in ("private", "shared", "public", "community")}
    status, member, _ = await cloud.request("POST", f"/image/v2/images/{images['shared']}/members", user="olga",
                                            project="other", json_body={"member": await project_id(cloud, "demo")})
    assert status == 200 and member["status"] == "pending", member
    return images


async def count(cloud, table: str, project: str) -> int:
    async with cloud.app[keys.DB].acquire() as conn:
        return await conn.fetchval(f"SELECT count(*) FROM {table} WHERE project_id = $1",
                                   await project_id(cloud, project))


async def create_server(cloud, user: str = "demo", **server):
    server = {"name": "vm", "flavorRef": "1", "networks": "none", **server}
    return await cloud.compute("POST", "/servers", user=user, version="2.79", json_body={"server": server})


def cli_root(image_id: str) -> list[dict]:
    """The image-backed root BDM the openstack CLI sends along with imageRef."""
    return [{"boot_index": 0, "uuid": image_id, "source_type": "image", "destination_type": "local",
             "delete_on_termination": True}]


async def test_server_create_with_an_image_of_another_project(cloud):
    images = await images_of_other(cloud)
    private = images["private"]
    for body in ({"imageRef": private}, {"imageRef": private, "block_device_mapping_v2": cli_root(private)}):
        status, err, _ = await create_server(cloud, **body)
        assert (status, err) == (400, {"badRequest": {"code": 400, "message": NOT_FOUND}})
    assert await count(cloud, "instances", "demo") == 0
    for vis in ("shared", "public", "community"):
        status, body, _ = await create_server(cloud, imageRef=images[vis],
                                              block_device_mapping_v2=cli_root(images[vis]))
        assert status == 202, (vis, body)
    status, body, _ = await create_server(cloud, user="admin", imageRef=private)
    assert status == 202, body


async def test_kernel_and_ramdisk_of_another_project(cloud):
    images = await images_of_other(cloud)
    other = await project_id(cloud, "other")
    for prop in ("kernel_id", "ramdisk_id"):
        boot = await owned_image(cloud, other, "public", **{prop: images["private"]})
        status, err, _ = await create_server(cloud, imageRef=boot)
        assert status == 400 and err["badRequest"]["message"] == f"Image {images['private']} could not be found."
        assert await count(cloud, "instances", "demo") == 0
        status, body, _ = await create_server(cloud, user="admin", imageRef=boot)
        assert status == 202, body
    for vis in ("shared", "public", "community"):
        boot = await owned_image(cloud, other, "public", kernel_id=images[vis], ramdisk_id=images[vis])
        status, body, _ = await create_server(cloud, imageRef=boot)
        assert status == 202, (vis, body)


async def volume_create(cloud, image_id: str, user: str = "demo"):
    project = await project_id(cloud, "admin" if user == "admin" else "demo")
    return await cloud.request("POST", f"/volume/v3/{project}/volumes", user=user,
                               json_body={"volume": {"size": 1, "imageRef": image_id}})


async def test_volume_from_an_image_of_another_project(cloud):
    images = await images_of_other(cloud)
    status, err, _ = await volume_create(cloud, images["private"])
    assert status == 400 and err["badRequest"]["message"] == CINDER_NOT_FOUND
    assert await count(cloud, "volumes", "demo") == 0
    for vis in ("shared", "public", "community"):
        status, body, _ = await volume_create(cloud, images[vis])
        assert status == 202, (vis, body)
    async with cloud.app[keys.DB].acquire() as conn:
        made = await conn.fetch("SELECT image_id FROM volumes WHERE project_id = $1 ORDER BY created_at",
                                await project_id(cloud, "demo"))
    assert [str(r["image_id"]) for r in made] == [images["shared"], images["public"], images["community"]]
    status, body, _ = await volume_create(cloud, images["private"], user="admin")
    assert status == 202, body


def volume_from(image_id: str, boot_index: int | None) -> dict:
    return {"boot_index": boot_index, "uuid": image_id, "source_type": "image", "destination_type": "volume",
            "volume_size": 1, "delete_on_termination": True}


async def test_image_bdms_of_another_project(cloud):
    images = await images_of_other(cloud)
    mine = await owned_image(cloud, await project_id(cloud, "demo"), "private")
    private = images["private"]
    status, err, _ = await create_server(cloud, imageRef=mine,
                                         block_device_mapping_v2=[*cli_root(mine), volume_from(private, None)])
    assert status == 400 and err["badRequest"]["message"] == (
        f"Block Device Mapping is Invalid: failed to get image {private}.")
    status, err, _ = await create_server(cloud, block_device_mapping_v2=[volume_from(private, 0)])
    assert status == 400 and err["badRequest"]["message"] == NOT_FOUND
    assert await count(cloud, "instances", "demo") == 0
    assert await count(cloud, "volumes", "demo") == 0
    servers = []
    for vis in ("shared", "public", "community"):
        for bdms in ([*cli_root(mine), volume_from(images[vis], None)], [volume_from(images[vis], 0)]):
            status, body, _ = await create_server(cloud, block_device_mapping_v2=bdms,
                                                  **({"imageRef": mine} if len(bdms) == 2 else {}))
            assert status == 202, (vis, body)
            servers.append(("demo", body["server"]["id"]))
    # admin, and again when the build makes the volume: the build reads the image as admin
    status, body, _ = await create_server(cloud, user="admin", block_device_mapping_v2=[volume_from(private, 0)])
    assert status == 202, body
    servers.append(("admin", body["server"]["id"]))
    for user, sid in servers:
        server = await wait_for_status(cloud, sid, {"ACTIVE", "ERROR"}, user=user)
        assert server["status"] == "ACTIVE", server.get("fault")


async def test_build_reads_the_image_again_when_it_makes_the_volume(pg_dsn, tmp_path):
    """Unshared between the create and the build: the build finds no image and the server ends in ERROR."""
    cloud = await start_cloud(pg_dsn, tmp_path, extra="[compute]\ndrill_stage_delays = { networking = 1.5 }\n")
    try:
        images = await images_of_other(cloud)
        shared = images["shared"]
        status, body, _ = await create_server(cloud, block_device_mapping_v2=[volume_from(shared, 0)])
        assert status == 202, body
        sid = body["server"]["id"]
        demo = await project_id(cloud, "demo")
        status, _, _ = await cloud.request("DELETE", f"/image/v2/images/{shared}/members/{demo}", user="olga",
                                           project="other")
        assert status == 204
        server = await wait_for_status(cloud, sid, {"ACTIVE", "ERROR"})
        assert server["status"] == "ERROR" and f"image {shared} not found" in server["fault"]["message"], server
        async with cloud.app[keys.DB].acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM volumes WHERE image_id = $1 AND NOT deleted",
                                       shared) == 0
    finally:
        await stop_cloud(cloud)
