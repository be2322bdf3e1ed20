"""Volumes on simulated hosts: the Cinder subset, BDMs at boot, attachments, races, quotas.

The hosts are libvirt test-driver connections: their storage pools and volumes
are real libvirt objects kept in memory (no files), and a hot-plug shows in the
domain's persistent definition (the test driver has no live attach).
"""

from __future__ import annotations

import asyncio

import libvirt
import pytest
from conftest import add_image, start_cloud, stop_cloud, wait_for_status

from novalite.api import keys
from novalite.virt.libvirt.config import LibvirtConfigGuestDisk

EXTRA = """
[volume]
reap_interval = 0.2
"""


@pytest.fixture
async def vcloud(pg_dsn, tmp_path):
    c = await start_cloud(pg_dsn, tmp_path, extra=EXTRA)
    yield c
    await stop_cloud(c)


async def volume_call(cloud, method: str, path: str, *, user: str = "demo", json_body=None):
    project_id = await project_of(cloud, user)
    return await cloud.request(method, f"/volume/v3/{project_id}{path}", user=user, json_body=json_body)


async def project_of(cloud, user: str = "demo") -> str:
    async with cloud.app[keys.DB].acquire() as conn:
        return await conn.fetchval("SELECT id FROM projects WHERE name = $1", "admin" if user == "admin" else "demo")


async def wait_volume(cloud, vid: str, statuses, timeout: float = 20, user: str = "demo") -> dict:
    if isinstance(statuses, str):
        statuses = {statuses}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status, body, _ = await volume_call(cloud, "GET", f"/volumes/{vid}", user=user)
        current = "deleted" if status == 404 else body["volume"]["status"]
        if current in statuses:
            return body["volume"] if status == 200 else {}
        if loop.time() > deadline:
            raise AssertionError(f"volume {vid} stuck in {current}: {body}")
        await asyncio.sleep(0.05)


async def make_volume(cloud, size: int = 1, user: str = "demo", **extra) -> str:
    status, body, _ = await volume_call(cloud, "POST", "/volumes", user=user,
                                        json_body={"volume": {"size": size, **extra}})
    assert status == 202, body
    vid = body["volume"]["id"]
    await wait_volume(cloud, vid, "available", user=user)
    return vid


async def boot(cloud, bdms: list[dict], image: str | None = None, version: str = "2.79", user: str = "demo",
               **extra):
    server = {"name": extra.pop("name", "vm"), "flavorRef": "1", "block_device_mapping_v2": bdms,
              "networks": "none", **extra}
    if image:
        server["imageRef"] = image
    return await cloud.compute("POST", "/servers", version=version, user=user, json_body={"server": server})


async def host_of(cloud, server_id: str) -> str:
    async with cloud.app[keys.DB].acquire() as conn:
        return await conn.fetchval("SELECT host FROM instances WHERE uuid = $1", server_id)


async def pool_volumes(cloud, host: str = "sim1") -> list[str]:
    api = cloud.app[keys.VOLUME_API]
    driver, pool = api.storage(host)
    return await driver.list_volumes(pool.name)


async def test_version_documents_answer_without_a_token(vcloud):
    for path in ("/volume", "/volume/v3/"):
        status, body, _ = await vcloud.request("GET", path, user=None)
        assert status == 200, body
        (doc,) = body["versions"]
        assert doc["id"] == "v3.0" and doc["min_version"] == "3.0"
        assert any(link["rel"] == "self" for link in doc["links"])


async def test_volume_lifecycle_filters_update_and_pool(vcloud):
    vid = await make_volume(vcloud, 2, name="data", metadata={"tier": "gold"})
    assert f"volume-{vid}" in await pool_volumes(vcloud)
    other = await make_volume(vcloud, 1, name="other")
    status, body, headers = await volume_call(vcloud, "GET", "/volumes/detail?name=data")
    assert status == 200 and [v["id"] for v in body["volumes"]] == [vid]
    assert headers["OpenStack-API-Version"] == "volume 3.0"
    vol = body["volumes"][0]
    assert vol["size"] == 2 and vol["bootable"] == "false" and vol["attachments"] == []
    assert vol["volume_type"] == "__DEFAULT__" and vol["metadata"] == {"tier": "gold"}
    status, body, _ = await volume_call(vcloud, "GET", '/volumes/detail?metadata={"tier": "gold"}')
    assert [v["id"] for v in body["volumes"]] == [vid]
    status, body, _ = await volume_call(vcloud, "GET", "/volumes")
    assert {v["id"] for v in body["volumes"]} == {vid, other} and set(body["volumes"][0]) == {"id", "name", "links"}
    status, body, _ = await volume_call(vcloud, "PUT", f"/volumes/{vid}",
                                        json_body={"volume": {"name": "renamed", "description": "d"}})
    assert status == 200 and body["volume"]["name"] == "renamed" and body["volume"]["description"] == "d"
    status, body, _ = await volume_call(vcloud, "DELETE", f"/volumes/{vid}")
    assert status == 202, body
    await wait_volume(vcloud, vid, "deleted")
    assert f"volume-{vid}" not in await pool_volumes(vcloud)
    status, body, _ = await volume_call(vcloud, "GET", f"/volumes/{vid}")
    assert status == 404 and body == {"itemNotFound": {"code": 404, "message": f"Volume {vid} could not be found."}}
    status, body, _ = await volume_call(vcloud, "POST", "/volumes", json_body={"volume": {"size": 0}})
    assert status == 400 and "badRequest" in body
    status, body, _ = await volume_call(vcloud, "GET", "/types")
    assert [t["name"] for t in body["volume_types"]] == ["__DEFAULT__"]


async def test_snapshots_and_volumes_from_snapshot_and_volume(vcloud):
    vid = await make_volume(vcloud, 1)
    status, body, _ = await volume_call(vcloud, "POST", "/snapshots",
                                        json_body={"snapshot": {"volume_id": vid, "name": "s1"}})
    assert status == 202, body
    sid = body["snapshot"]["id"]
    for _ in range(100):
        _, body, _ = await volume_call(vcloud, "GET", f"/snapshots/{sid}")
        if body["snapshot"]["status"] == "available":
            break
        await asyncio.sleep(0.05)
    assert body["snapshot"]["status"] == "available" and body["snapshot"]["volume_id"] == vid
    status, body, _ = await volume_call(vcloud, "DELETE", f"/volumes/{vid}")
    assert status == 400 and "snapshots" in body["badRequest"]["message"]
    from_snap = await make_volume(vcloud, 2, snapshot_id=sid)
    clone = await make_volume(vcloud, source_volid=vid)
    _, body, _ = await volume_call(vcloud, "GET", f"/volumes/{from_snap}")
    assert body["volume"]["snapshot_id"] == sid and body["volume"]["size"] == 2
    _, body, _ = await volume_call(vcloud, "GET", f"/volumes/{clone}")
    assert body["volume"]["source_volid"] == vid and body["volume"]["size"] == 1
    names = await pool_volumes(vcloud)
    assert {f"snapshot-{sid}", f"volume-{from_snap}", f"volume-{clone}"} <= set(names)
    status, _, _ = await volume_call(vcloud, "DELETE", f"/snapshots/{sid}")
    assert status == 202
    for _ in range(100):
        status, _, _ = await volume_call(vcloud, "GET", f"/snapshots/{sid}")
        if status == 404:
            break
        await asyncio.sleep(0.05)
    assert status == 404 and f"snapshot-{sid}" not in await pool_volumes(vcloud)


async def test_volume_quotas_are_counted_race_free(vcloud):
    project = await project_of(vcloud)
    status, body, _ = await volume_call(vcloud, "PUT", f"/os-quota-sets/{project}", user="admin",
                                        json_body={"quota_set": {"volumes": 3, "gigabytes": 100}})
    assert status == 200, body
    results = await asyncio.gather(*(
        volume_call(vcloud, "POST", "/volumes", json_body={"volume": {"size": 1}}) for _ in range(6)
    ))
    codes = sorted(r[0] for r in results)
    assert codes == [202] * 3 + [413] * 3, codes
    over = next(r[1] for r in results if r[0] == 413)
    assert over["overLimit"]["message"].startswith("VolumeLimitExceeded")
    _, body, _ = await volume_call(vcloud, "GET", f"/os-quota-sets/{project}?usage=True")
    assert body["quota_set"]["volumes"]["in_use"] == 3 and body["quota_set"]["gigabytes"]["in_use"] == 3


async def test_boot_with_existing_volume_attaches_it_and_delete_keeps_it(vcloud):
    image = await add_image(vcloud)
    vid = await make_volume(vcloud, 1)
    status, body, _ = await boot(vcloud, [
        {"boot_index": 0, "uuid": image, "source_type": "image", "destination_type": "local"},
        {"uuid": vid, "source_type": "volume", "destination_type": "volume", "boot_index": -1},
    ], image=image)
    assert status == 202, body
    sid = body["server"]["id"]
    server = await wait_for_status(vcloud, sid, {"ACTIVE", "ERROR"})
    assert server["status"] == "ACTIVE", server.get("fault")
    assert server["os-extended-volumes:volumes_attached"] == [{"id": vid, "delete_on_termination": False}]
    assert await host_of(vcloud, sid) == "sim1"  # the volume's host
    vol = await wait_volume(vcloud, vid, "in-use")
    (att,) = vol["attachments"]
    assert att["server_id"] == sid and att["device"] == "/dev/vdb"
    xml = await vcloud.app[keys.COMPUTES]["sim1"].driver.domain_xml(sid)
    assert f"volume-{vid}" in xml and "vdb" in xml
    status, body, _ = await vcloud.compute("GET", f"/servers/{sid}/os-volume_attachments", version="2.89")
    (a,) = body["volumeAttachments"]
    assert a["volumeId"] == vid and a["device"] == "/dev/vdb" and a["attachment_id"] and "id" not in a
    status, _, _ = await vcloud.compute("DELETE", f"/servers/{sid}")
    assert status == 204
    await wait_for_status(vcloud, sid, "DELETED")
    vol = await wait_volume(vcloud, vid, "available")
    assert vol["attachments"] == []


async def test_boot_from_image_volume_blank_and_snapshot_with_delete_on_termination(vcloud):
    image = await add_image(vcloud, kernel_id="", ramdisk_id="")
    base = await make_volume(vcloud, 1)
    _, body, _ = await volume_call(vcloud, "POST", "/snapshots", json_body={"snapshot": {"volume_id": base}})
    snap = body["snapshot"]["id"]
    for _ in range(100):
        _, body, _ = await volume_call(vcloud, "GET", f"/snapshots/{snap}")
        if body["snapshot"]["status"] == "available":
            break
        await asyncio.sleep(0.05)
    status, body, _ = await boot(vcloud, [
        {"boot_index": 0, "uuid": image, "source_type": "image", "destination_type": "volume", "volume_size": 2,
         "delete_on_termination": True},
        {"source_type": "blank", "destination_type": "volume", "volume_size": 1, "delete_on_termination": True},
        {"uuid": snap, "source_type": "snapshot", "destination_type": "volume"},
    ])
    assert status == 202, body
    sid = body["server"]["id"]
    server = await wait_for_status(vcloud, sid, {"ACTIVE", "ERROR"})
    assert server["status"] == "ACTIVE", server.get("fault")
    attached = server["os-extended-volumes:volumes_attached"]
    assert [a["delete_on_termination"] for a in attached] == [True, True, False]
    vols = [await wait_volume(vcloud, a["id"], "in-use") for a in attached]
    assert [v["attachments"][0]["device"] for v in vols] == ["/dev/vda", "/dev/vdb", "/dev/vdc"]
    assert vols[0]["bootable"] == "true" and vols[0]["size"] == 2
    assert vols[2]["snapshot_id"] == snap
    # The detail list shows the same attachments, in the same (boot) order, as the server's own page.
    _, listed, _ = await vcloud.compute("GET", "/servers/detail", version="2.latest")
    (in_list,) = [s for s in listed["servers"] if s["id"] == sid]
    assert in_list["os-extended-volumes:volumes_attached"] == attached
    cfg = await vcloud.app[keys.COMPUTES]["sim1"].driver.get_domain_config(sid)
    disks = {d.target_dev: d.source_path for d in cfg.devices if isinstance(d, LibvirtConfigGuestDisk)}
    assert disks["vda"].endswith(f"volume-{vols[0]['id']}")  # the guest runs from the volume
    status, _, _ = await vcloud.compute("DELETE", f"/servers/{sid}")
    await wait_for_status(vcloud, sid, "DELETED")
    await wait_volume(vcloud, vols[0]["id"], "deleted")
    await wait_volume(vcloud, vols[1]["id"], "deleted")
    await wait_volume(vcloud, vols[2]["id"], "available")
    names = await pool_volumes(vcloud)
    assert f"volume-{vols[0]['id']}" not in names and f"volume-{vols[2]['id']}" in names


async def test_two_servers_racing_for_one_volume_exactly_one_wins(vcloud):
    image = await add_image(vcloud)
    vid = await make_volume(vcloud, 1)
    bdm = [{"boot_index": 0, "uuid": image, "source_type": "image", "destination_type": "local"},
           {"uuid": vid, "source_type": "volume", "destination_type": "volume"}]
    results = await asyncio.gather(*(boot(vcloud, bdm, image=image, name=f"racer{i}") for i in range(4)))
    codes = sorted(r[0] for r in results)
    assert codes == [202, 400, 400, 400], [(r[0], r[1]) for r in results]
    loser = next(r[1] for r in results if r[0] == 400)
    assert "Invalid volume" in loser["badRequest"]["message"]
    winner = next(r[1] for r in results if r[0] == 202)["server"]["id"]
    server = await wait_for_status(vcloud, winner, {"ACTIVE", "ERROR"})
    assert server["status"] == "ACTIVE" and server["os-extended-volumes:volumes_attached"][0]["id"] == vid
    status, body, _ = await boot(vcloud, bdm, image=image, name="late")
    assert status == 400 and "in-use" in body["badRequest"]["message"]


async def test_failed_build_returns_volumes_and_deletes_the_ones_it_made(vcloud):
    image = await add_image(vcloud)
    for compute in vcloud.app[keys.COMPUTES].values():
        compute.fail_spawn = "injected spawn failure"
    vid = await make_volume(vcloud, 1)
    status, body, _ = await boot(vcloud, [
        {"boot_index": 0, "uuid": image, "source_type": "image", "destination_type": "local"},
        {"uuid": vid, "source_type": "volume", "destination_type": "volume"},
        {"source_type": "blank", "destination_type": "volume", "volume_size": 1},
    ], image=image)
    assert status == 202, body
    sid = body["server"]["id"]
    server = await wait_for_status(vcloud, sid, {"ACTIVE", "ERROR"})
    assert server["status"] == "ERROR"
    await wait_volume(vcloud, vid, "available")
    project = await project_of(vcloud)
    async with vcloud.app[keys.DB].acquire() as conn:
        live = await conn.fetch("SELECT id, status FROM volumes WHERE project_id = $1 AND NOT deleted", project)
    assert [str(r["id"]) for r in live] == [vid]  # the blank volume the build made is gone
    assert [n for n in await pool_volumes(vcloud) if n != f"volume-{vid}"] == []


async def test_attach_and_detach_on_a_running_server(vcloud):
    image = await add_image(vcloud)
    status, body, _ = await boot(vcloud, [], image=image)
    sid = body["server"]["id"]
    await wait_for_status(vcloud, sid, "ACTIVE")
    vid = await make_volume(vcloud, 1)
    status, body, _ = await vcloud.compute("POST", f"/servers/{sid}/os-volume_attachments", version="2.79",
                                           json_body={"volumeAttachment": {"volumeId": vid,
                                                                           "delete_on_termination": True}})
    assert status == 200, body
    assert body["volumeAttachment"] == {"id": vid, "volumeId": vid, "serverId": sid, "device": "/dev/vdb",
                                        "tag": None, "delete_on_termination": True}
    await wait_volume(vcloud, vid, "in-use")
    driver = vcloud.app[keys.COMPUTES]["sim1"].driver
    assert f"volume-{vid}" in await driver.domain_xml(sid, inactive=True)
    # attaching it again, or a bad device, or a missing volume: Nova's answers
    status, body, _ = await vcloud.compute("POST", f"/servers/{sid}/os-volume_attachments",
                                           json_body={"volumeAttachment": {"volumeId": vid}})
    assert status == 400 and "already attached" in body["badRequest"]["message"]
    other = await make_volume(vcloud, 1)
    status, body, _ = await vcloud.compute("POST", f"/servers/{sid}/os-volume_attachments",
                                           json_body={"volumeAttachment": {"volumeId": other, "device": "bad"}})
    assert status == 400 and "device path" in body["badRequest"]["message"]
    status, body, _ = await vcloud.compute("POST", f"/servers/{sid}/os-volume_attachments",
                                           json_body={"volumeAttachment": {"volumeId": other, "device": "/dev/vdb"}})
    assert status == 409, body
    missing = "8f0d3c9e-0000-4000-8000-000000000000"
    status, body, _ = await vcloud.compute("POST", f"/servers/{sid}/os-volume_attachments",
                                           json_body={"volumeAttachment": {"volumeId": missing}})
    assert status == 404 and "itemNotFound" in body
    status, body, _ = await vcloud.compute("GET", f"/servers/{sid}/os-volume_attachments/{vid}")
    assert status == 200 and body["volumeAttachment"]["device"] == "/dev/vdb"
    status, body, _ = await volume_call(vcloud, "DELETE", f"/volumes/{vid}")
    assert status == 400  # in-use
    status, _, _ = await vcloud.compute("DELETE", f"/servers/{sid}/os-volume_attachments/{vid}")
    assert status == 202
    await wait_volume(vcloud, vid, "available")
    assert f"volume-{vid}" not in await driver.domain_xml(sid, inactive=True)
    status, _, _ = await vcloud.compute("GET", f"/servers/{sid}/os-volume_attachments/{vid}")
    assert status == 404
    # attached again with delete_on_termination: the server's delete takes it along
    status, body, _ = await vcloud.compute("POST", f"/servers/{sid}/os-volume_attachments", version="2.79",
                                           json_body={"volumeAttachment": {"volumeId": vid,
                                                                           "delete_on_termination": True}})
    assert status == 200
    await wait_volume(vcloud, vid, "in-use")
    await vcloud.compute("DELETE", f"/servers/{sid}")
    await wait_for_status(vcloud, sid, "DELETED")
    await wait_volume(vcloud, vid, "deleted")


async def test_volume_on_another_host_is_refused_for_attach(vcloud):
    image = await add_image(vcloud)
    status, body, _ = await boot(vcloud, [], image=image, availability_zone="nova:sim2", user="admin")
    assert status == 202, body
    sid = body["server"]["id"]
    await wait_for_status(vcloud, sid, "ACTIVE", user="admin")
    vid = await make_volume(vcloud, 1, user="admin")  # lives on sim1, the default volume host
    status, body, _ = await vcloud.compute("POST", f"/servers/{sid}/os-volume_attachments", user="admin",
                                           json_body={"volumeAttachment": {"volumeId": vid}})
    assert status == 400 and "lives on host sim1" in body["badRequest"]["message"], body
    # booting with it pins the server to sim1, whatever else would be picked
    status, body, _ = await boot(vcloud, [
        {"boot_index": 0, "uuid": image, "source_type": "image", "destination_type": "local"},
        {"uuid": vid, "source_type": "volume", "destination_type": "volume"},
    ], image=image, user="admin", name="pinned")
    assert status == 202, body
    server = await wait_for_status(vcloud, body["server"]["id"], "ACTIVE", user="admin")
    assert server["OS-EXT-SRV-ATTR:host"] == "sim1"


async def test_pools_are_libvirt_pools_named_with_the_prefix(vcloud):
    api = vcloud.app[keys.VOLUME_API]
    driver, pool = api.storage("sim2")
    assert pool.name == "novalite-sim2" and pool.type == "dir"

    def pools() -> list[str]:
        return [p.name() for p in driver.host.connection().listAllStoragePools(0)]

    assert "novalite-sim2" in await asyncio.to_thread(pools)
    assert libvirt.VIR_ERR_NO_SUPPORT  # the test driver: no resize, no live attach (virt/libvirt/storage.py)


async def wait_cli_volume(cloud, name: str, status: str) -> dict:
    for _ in range(100):
        shown = await cloud.openstack_json("volume", "show", name)
        if shown["status"] == status:
            return shown
        await asyncio.sleep(0.1)
    raise AssertionError(f"volume {name} never became {status}: {shown}")


async def test_openstack_cli_volumes_and_servers_with_volumes(vcloud):
    await add_image(vcloud, name="cirros")
    created = await vcloud.openstack_json("volume", "create", "--size", "1", "--property", "k=v", "cli-vol")
    assert created["name"] == "cli-vol" and created["size"] == 1
    await wait_cli_volume(vcloud, "cli-vol", "available")
    listed = await vcloud.openstack_json("volume", "list")
    assert [(v["Name"], v["Status"], v["Size"]) for v in listed] == [("cli-vol", "available", 1)]
    # boot from the existing volume (--volume: it becomes the root disk)
    server = await vcloud.openstack_json(
        "server", "create", "--volume", "cli-vol", "--flavor", "m1.tiny", "--nic", "none", "--wait", "from-vol",
    )
    assert server["status"] == "ACTIVE"
    shown = await wait_cli_volume(vcloud, "cli-vol", "in-use")
    assert shown["attachments"][0]["device"] == "/dev/vda"
    # an image-booted server with a new blank volume from --block-device
    server = await vcloud.openstack_json(
        "server", "create", "--image", "cirros", "--flavor", "m1.tiny", "--nic", "none",
        "--block-device", "source_type=blank,destination_type=volume,volume_size=1,delete_on_termination=true",
        "--wait", "with-blank",
    )
    assert server["status"] == "ACTIVE"
    attached = server["volumes_attached"]
    assert len(attached) == 1
    await vcloud.openstack("server", "delete", "--wait", "from-vol", "with-blank")
    await wait_cli_volume(vcloud, "cli-vol", "available")
    await vcloud.openstack("volume", "delete", "cli-vol")
    for _ in range(100):
        if await vcloud.openstack_json("volume", "list") == []:
            break
        await asyncio.sleep(0.1)
    assert await vcloud.openstack_json("volume", "list") == []
    quota = await vcloud.openstack_json("quota", "show")
    assert quota


async def test_rebuild_of_a_volume_backed_server_keeps_its_image_and_its_volume(vcloud):
    """Nova before 2.93: the image of a volume-backed server cannot change; the same one rebuilds."""
    image, other = await add_image(vcloud, kernel_id="", ramdisk_id=""), await add_image(vcloud, "other")
    status, body, _ = await boot(vcloud, [
        {"boot_index": 0, "uuid": image, "source_type": "image", "destination_type": "volume", "volume_size": 1,
         "delete_on_termination": True}])
    assert status == 202, body
    sid = body["server"]["id"]
    server = await wait_for_status(vcloud, sid, {"ACTIVE", "ERROR"})
    assert server["status"] == "ACTIVE", server.get("fault")
    root = server["os-extended-volumes:volumes_attached"][0]["id"]
    path = f"/servers/{sid}/action"
    status, body, _ = await vcloud.compute("POST", path, json_body={"rebuild": {"imageRef": other}})
    assert status == 400 and body["badRequest"]["message"] == (
        f"Image {other} is unacceptable: Unable to rebuild with a different image for a volume-backed server.")
    status, body, _ = await vcloud.compute("POST", path, json_body={"rebuild": {"imageRef": image}})
    assert status == 202, body
    server = await wait_for_status(vcloud, sid, {"ACTIVE", "ERROR"})
    assert server["status"] == "ACTIVE", server.get("fault")
    cfg = await vcloud.app[keys.COMPUTES]["sim1"].driver.get_domain_config(sid)
    disks = {d.target_dev: d.source_path for d in cfg.devices if isinstance(d, LibvirtConfigGuestDisk)}
    assert disks["vda"].endswith(f"volume-{root}")  # still the same volume
    assert (await wait_volume(vcloud, root, "in-use"))["attachments"][0]["server_id"] == sid
