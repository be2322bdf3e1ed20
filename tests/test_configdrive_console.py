"""Config drive ISO content, read back with pycdlib; console output from the log a domain names."""

from __future__ import annotations

import io
import json
import uuid

import libvirt
import pycdlib
import pytest
from aiohttp import web

from novalite.api import errors, keys
from novalite.api.compute.console import get_console_output, parse_length
from novalite.compute.manager import MAX_CONSOLE_BYTES
from novalite.context import RequestContext
from novalite.network.api import PortInfo, network_data
from novalite.virt.configdrive import VERSIONS, build_config_drive, instance_metadata
from novalite.virt.driver import StoragePoolSpec
from novalite.virt.libvirt.driver import LibvirtDriver
from novalite.virt.libvirt.storage import purge_pools


def _read(iso: pycdlib.PyCdlib, path: str, kind: str = "rr_path") -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **{kind: path})
    return out.getvalue()


def test_config_drive_round_trip(tmp_path):
    port = PortInfo(port_id=str(uuid.uuid4()), network_id=str(uuid.uuid4()), network_name="novalite-private",
                    network_label="private", subnet_id=str(uuid.uuid4()), mac="fa:16:3e:01:02:03",
                    ip="10.20.0.2", cidr="10.20.0.0/24", gateway="10.20.0.1")
    meta = instance_metadata(uuid="8c0b5e2a-0000-4000-8000-000000000001", name="vm one", hostname="vm-one",
                             availability_zone="nova", launch_index=0, project_id="p1", key_name="k1",
                             key_data="ssh-ed25519 AAAA test", meta={"role": "web"})
    path = tmp_path / "disk.config"
    build_config_drive(path, meta, b"#!/bin/sh\necho hi\n", [("/etc/motd", b"hello"), ("/root/x", b"\x00\x01")],
                       network_data([port]))

    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "config-2"
        for version in ("latest", VERSIONS[-1], "2018-08-27"):
            doc = json.loads(_read(iso, f"/openstack/{version}/meta_data.json"))
            assert doc["uuid"] == meta["uuid"] and doc["hostname"] == "vm-one" and doc["name"] == "vm one"
            assert doc["availability_zone"] == "nova" and doc["launch_index"] == 0
            assert doc["public_keys"] == {"k1": "ssh-ed25519 AAAA test"} and doc["meta"] == {"role": "web"}
            assert doc["files"] == [{"path": "/etc/motd", "content_path": "/content/0000"},
                                    {"path": "/root/x", "content_path": "/content/0001"}]
        assert _read(iso, "/openstack/latest/user_data") == b"#!/bin/sh\necho hi\n"
        nd = json.loads(_read(iso, "/openstack/latest/network_data.json"))
        assert nd["links"][0]["ethernet_mac_address"] == "fa:16:3e:01:02:03"
        assert nd["networks"][0]["type"] == "ipv4_dhcp"
        assert json.loads(_read(iso, "/openstack/latest/vendor_data.json")) == {}
        assert json.loads(_read(iso, "/openstack/latest/vendor_data2.json")) == {}
        assert _read(iso, "/openstack/content/0000") == b"hello"
        assert _read(iso, "/openstack/content/0001") == b"\x00\x01"
        # Joliet names too (Windows guests and some mount options read those).
        assert _read(iso, "/openstack/latest/user_data", "joliet_path") == b"#!/bin/sh\necho hi\n"
    finally:
        iso.close()
    assert not (tmp_path / "disk.config.tmp").exists()


def test_config_drive_without_user_data_has_no_user_data_file(tmp_path):
    meta = instance_metadata(uuid=str(uuid.uuid4()), name="a", hostname="a", availability_zone=None)
    build_config_drive(tmp_path / "cd.iso", meta, None, [], None)
    iso = pycdlib.PyCdlib()
    iso.open(str(tmp_path / "cd.iso"))
    try:
        names = [c.file_identifier().decode() for c in iso.list_children(iso_path="/openstack/latest")]
        assert "user_data" not in names and "meta_data.json" in names
    finally:
        iso.close()


def test_console_length_is_validated_as_nova_does():
    assert parse_length({"os-getConsoleOutput": {}}) is None
    assert parse_length({"os-getConsoleOutput": {"length": -1}}) is None
    assert parse_length({"os-getConsoleOutput": {"length": "3"}}) == 3
    for bad in ({"length": -2}, {"length": "x"}, {"length": 1.5}, {"foo": 1}):
        with pytest.raises(errors.BadRequest):
            parse_length({"os-getConsoleOutput": bad})


async def _serve_console(cloud, compute_api, instances: dict, project: str) -> tuple[str, web.AppRunner]:
    """A small app with the real handler, the cloud's config and policy, instance rows from a
    dict, and ``compute_api`` reading the console."""

    async def action(request: web.Request) -> web.Response:
        request[keys.CONTEXT] = RequestContext(request_id="req-x", user_id="u1", project_id=project, roles=("member",))
        inst = instances.get(request.match_info["id"])
        if inst is None:
            raise errors.NotFound(f"Instance {request.match_info['id']} could not be found.")
        return await get_console_output(request, inst, await request.json())

    @web.middleware
    async def render(request, handler):
        try:
            return await handler(request)
        except errors.ApiError as exc:
            return web.json_response({"error": exc.message}, status=exc.code)

    app = web.Application(middlewares=[render])
    app[keys.CONFIG] = cloud.config
    app[keys.POLICY] = cloud.app[keys.POLICY]
    app[keys.COMPUTE_API] = compute_api
    app[keys.HOSTS] = cloud.app[keys.HOSTS]
    app.router.add_post("/servers/{id}/action", action)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", runner


@pytest.fixture
async def console_app(cloud):
    """The console handler in front of the cloud's own compute API."""
    instances: dict[str, dict] = {}
    project = "p-demo"
    url, runner = await _serve_console(cloud, cloud.app[keys.COMPUTE_API], instances, project)
    yield url, instances, project
    await runner.cleanup()


def _inst(uuid_: str, project: str, **kw) -> dict:
    row = {"uuid": uuid_, "project_id": project, "user_id": "u1", "deleted": False, "host": "sim1",
           "task_state": None, "vm_state": "active"}
    row.update(kw)
    return row


class _HostConsole:
    """The compute API's console read on a real host: the domain's serial log through the driver."""

    def __init__(self, driver: LibvirtDriver) -> None:
        self.driver = driver

    async def get_console_output(self, inst: dict) -> bytes | None:
        return await self.driver.get_console_output(str(inst["uuid"]), MAX_CONSOLE_BYTES)


_DOMAIN = """<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid><memory unit='MiB'>64</memory>
<os><type arch='x86_64'>hvm</type></os><devices><serial type='pty'><log file='{log}'/>
<target port='0'/></serial></devices></domain>"""


async def test_console_output_tails_the_serial_log(cloud, tmp_path):
    """A domain defined on qemu:///system whose serial log is a file of a pool of this test's own:
    read through libvirt's stream API, as for any host."""
    prefix = f"nlcons{uuid.uuid4().hex[:6]}"
    uid, project = str(uuid.uuid4()), "p-demo"
    log = tmp_path / "pool" / f"{uid}_console.log"
    async with LibvirtDriver("qemu:///system", "qemu") as driver:
        await driver.ensure_pool(StoragePoolSpec(name=f"{prefix}-instances", type="dir", target=str(log.parent)))
        conn = libvirt.open("qemu:///system")
        domain = conn.defineXML(_DOMAIN.format(name=f"{prefix}-dom", uuid=uid, log=log))
        url, runner = await _serve_console(cloud, _HostConsole(driver), {uid: _inst(uid, project, host="qemu")},
                                           project)
        try:
            log.write_bytes(b"x" * 200_000 + b"\nline1\nline2\x07\nline3\n")  # what virtlogd writes
            post = cloud.session.post
            async with post(f"{url}/servers/{uid}/action", json={"os-getConsoleOutput": {"length": 2}}) as r:
                assert r.status == 200
                assert await r.json() == {"output": "line3\n"}
            async with post(f"{url}/servers/{uid}/action", json={"os-getConsoleOutput": {"length": 3}}) as r:
                assert (await r.json())["output"] == "line2\nline3\n"  # control characters stripped
            async with post(f"{url}/servers/{uid}/action", json={"os-getConsoleOutput": {}}) as r:
                out = (await r.json())["output"]
                assert len(out) <= 100 * 1024 and out.endswith("line1\nline2\nline3\n")
            async with post(f"{url}/servers/{uid}/action", json={"os-getConsoleOutput": {"length": 0}}) as r:
                assert (await r.json())["output"] == ""
        finally:
            await runner.cleanup()
            domain.undefine()
            purge_pools(conn, prefix)
            conn.close()


async def test_console_output_conflicts_before_the_console_exists(cloud, console_app):
    url, instances, project = console_app
    unscheduled, building, gone = (str(uuid.uuid4()) for _ in range(3))
    instances[unscheduled] = _inst(unscheduled, project, host=None, vm_state="building")
    instances[building] = _inst(building, project, vm_state="building")
    instances[gone] = _inst(gone, project, task_state="deleting")
    for uid in (unscheduled, building, gone):
        async with cloud.session.post(f"{url}/servers/{uid}/action", json={"os-getConsoleOutput": {}}) as r:
            assert r.status == 409, uid
    async with cloud.session.post(f"{url}/servers/{uuid.uuid4()}/action", json={"os-getConsoleOutput": {}}) as r:
        assert r.status == 404
    other = str(uuid.uuid4())
    instances[other] = _inst(other, "someone-else")
    async with cloud.session.post(f"{url}/servers/{other}/action", json={"os-getConsoleOutput": {}}) as r:
        assert r.status == 403
