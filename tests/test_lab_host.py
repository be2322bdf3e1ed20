"""A second libvirt host on this machine (scripts/lab-host.sh) and a host's liveness (#17).

No guest boots here: the lab host's daemon is real (its own libvirtd over TCP on 127.0.0.1),
the servers run on a simulated host, and the one "on" the lab host is a defined-but-not-started
domain there.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
from conftest import (
    REPO,
    add_image,
    fresh_database,
    start_cloud,
    stop_cloud,
    wait_for_status,
    write_config,
)
from serve_process import ServeProcess, admin_token

from novalite.api import keys

LAB = REPO / "scripts" / "lab-host.sh"
LAB_BASE = Path("/var/lib/novalite-lab")


async def lab(*args: str) -> str:
    """Run scripts/lab-host.sh off the event loop; its stdout (the URI for `up`)."""
    proc = await asyncio.create_subprocess_exec(str(LAB), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


def virsh(uri: str, *args: str) -> str:
    return subprocess.run(["virsh", "-q", "-c", uri, *args], check=True, capture_output=True, text=True,
                          timeout=30).stdout


def host_uuid(uri: str) -> str:
    caps = virsh(uri, "capabilities")
    return caps.split("<uuid>", 1)[1].split("</uuid>", 1)[0]


async def test_lab_host_has_its_own_uuid_and_cannot_see_the_state_dir(tmp_path):
    name = f"w2hup{uuid.uuid4().hex[:6]}"
    state = tmp_path / "state"
    state.mkdir()
    (state / "novalite-secret").write_text("x")
    uri = await lab("up", name, str(state))
    try:
        assert uri.startswith("qemu+tcp://127.0.0.1:") and uri.endswith("/system")
        assert await lab("up", name) == uri  # idempotent: the running host again
        assert host_uuid(uri) != host_uuid("qemu:///system")
        # What the daemon sees at novalite's state directory: an empty directory.
        virsh(uri, "pool-create-as", f"{name}-probe", "dir", "--target", str(state))
        assert virsh(uri, "vol-list", f"{name}-probe").strip() == ""
        assert virsh(uri, "list", "--all", "--name").strip() == ""  # none of the system daemon's domains
    finally:
        pid = (LAB_BASE / name / "libvirtd.pid").read_text().strip()
        assert "down" in await lab("down", name)
    await lab("down", name)  # idempotent
    assert not (LAB_BASE / name).exists()
    assert not Path(f"/proc/{pid}").exists()
    assert subprocess.run(["virsh", "-c", uri, "version"], capture_output=True, timeout=30).returncode != 0
    assert (state / "novalite-secret").exists()  # hidden from it, untouched for us


LIVENESS = """
[scheduler]
service_down_time = 3

[compute]
report_interval = 0.5
virt_type = "qemu"

[networking]
libvirt_prefix = "w2hl-"

[volume]
pool_target = "/var/lib/libvirt/images/w2hl"

[[networks]]
name = "w2hlnet"
cidr = "10.231.77.0/24"
"""


async def services(cloud) -> dict[str, str]:
    _, body, _ = await cloud.compute("GET", "/os-services", user="admin")
    return {s["host"]: s["state"] for s in body["services"]}


async def wait_state(cloud, host: str, state: str, timeout: float) -> float:
    """Seconds until os-services shows ``host`` in ``state``; fails after ``timeout``."""
    started = time.monotonic()
    while (await services(cloud))[host] != state:
        assert time.monotonic() - started < timeout, f"{host} not {state} after {timeout} s"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def boot(cloud, image: str, user: str = "demo", **server: str) -> str:
    status, body, _ = await cloud.compute("POST", "/servers", user=user, json_body={"server": {
        "name": "w2hl", "imageRef": image, "flavorRef": "1", "networks": "none", **server}}, version="2.37")
    assert status == 202, body
    return body["server"]["id"]


def _domain_xml(name: str, instance: str) -> str:
    return (f"<domain type='qemu'><name>{name}</name><uuid>{instance}</uuid><memory unit='MiB'>64</memory>"
            "<os><type>hvm</type></os></domain>")


async def test_a_host_whose_libvirtd_stops_goes_down_is_avoided_and_comes_back(pg_dsn, tmp_path):
    name = f"w2hl{uuid.uuid4().hex[:6]}"
    uri = await lab("up", name, str(tmp_path / "state"))
    hosts = ('[[hosts]]\nname = "sim1"\nsimulate = { vcpus = 8, memory_mb = 16384, disk_gb = 200 }\n\n'
             f'[[hosts]]\nname = "lab"\nuri = "{uri}"\ndisk_gb = 400\n')
    cloud = await start_cloud(pg_dsn, tmp_path, LIVENESS, hosts)
    try:
        # Host facts from the lab host's own libvirt.
        _, body, _ = await cloud.compute("GET", "/os-hypervisors/detail", user="admin", version="2.28")
        lab_hv = next(h for h in body["hypervisors"] if h["service"]["host"] == "lab")
        caps = virsh(uri, "capabilities")
        assert lab_hv["host_ip"] == "127.0.0.1" and lab_hv["state"] == "up"
        assert f"<vendor>{lab_hv['cpu_info']['vendor']}</vendor>" in caps
        assert f"cores='{lab_hv['cpu_info']['topology']['cores']}'" in caps
        _, body, _ = await cloud.compute("GET", "/os-hypervisors/detail", user="admin", version="2.88")
        assert " up " in next(h for h in body["hypervisors"] if h["service"]["host"] == "lab")["uptime"]

        # A server "on" the lab host: booted on sim1, its domain defined (not started) on the lab
        # host while it still belongs to sim1, its row moved there while the lab host is down.
        image = await add_image(cloud)
        moved = await boot(cloud, image, user="admin", availability_zone="nova:sim1")
        await wait_for_status(cloud, moved, "ACTIVE", user="admin")
        domain_xml = tmp_path / "dom.xml"
        domain_xml.write_text(_domain_xml(f"w2hl-{moved[:8]}", moved))
        virsh(uri, "define", str(domain_xml))

        stopped = time.monotonic()
        await lab("stop", name)
        await wait_state(cloud, "lab", "down", 3 + 10)
        took = time.monotonic() - stopped
        await cloud.app[keys.DB].execute("UPDATE instances SET host = 'lab', node = 'lab' WHERE uuid = $1",
                                         uuid.UUID(moved))
        _, shown, _ = await cloud.compute("GET", f"/servers/{moved}", user="admin", version="2.16")
        assert shown["server"]["host_status"] == "UNKNOWN" and shown["server"]["status"] == "ACTIVE"
        # New boots avoid it (it has the more free memory, so the weighers would pick it).
        for _ in range(2):
            sid = await boot(cloud, image)
            assert (await wait_for_status(cloud, sid, "ACTIVE", user="admin"))["OS-EXT-SRV-ATTR:host"] == "sim1"

        await lab("up", name)
        back = await wait_state(cloud, "lab", "up", 3 + 10)
        # Its power states resynced as it came back: the domain there is shut off, the server stops.
        server = await wait_for_status(cloud, moved, "SHUTOFF", user="admin", timeout=15)
        assert server["OS-EXT-STS:power_state"] == 4
        _, shown, _ = await cloud.compute("GET", f"/servers/{moved}", user="admin", version="2.16")
        assert shown["server"]["host_status"] == "UP"
        print(f"lab host down {took:.1f} s after its libvirtd was told to stop, up {back:.1f} s after it started")
    finally:
        await stop_cloud(cloud)
        await lab("down", name)
    assert not (LAB_BASE / name).exists()


# The liveness test's settings, with names and a subnet of its own.
LATE = LIVENESS.replace("w2hl", "w3lb").replace("10.231.77.", "10.231.78.")


async def test_a_host_unreachable_at_start_starts_down_and_comes_up_when_it_answers(pg_dsn, tmp_path):
    """novalite starts while a host's libvirtd is stopped: the start does not fail, the host is down
    with its last report; started, its libvirtd answers and the host comes up, no restart of novalite."""
    name = f"w3lb{uuid.uuid4().hex[:6]}"
    uri = await lab("up", name, str(tmp_path / "state"))
    hosts = ('[[hosts]]\nname = "sim1"\nsimulate = { vcpus = 8, memory_mb = 16384, disk_gb = 200 }\n\n'
             f'[[hosts]]\nname = "lab"\nuri = "{uri}"\n')
    dsn = await fresh_database(pg_dsn)
    config = write_config(tmp_path, dsn, LATE, hosts)
    port = int(config.read_text().split("port = ")[1].split()[0])
    base = f"http://127.0.0.1:{port}"
    serve = ServeProcess(config, "--no-test-image", "--clouds-yaml", str(tmp_path / "clouds.yaml"))
    try:
        async with aiohttp.ClientSession() as session:

            starts = 0

            async def started() -> dict[str, str]:
                """Serve, log in: the hosts' service states as os-services shows them once the
                start's bring-up is done (the API serves before it)."""
                nonlocal starts
                serve.start()
                starts += 1
                await serve.wait_listening(port)
                await serve.wait_event("hosts_ready", starts)
                password = json.loads((tmp_path / "state" / "credentials.json").read_text())["admin"]
                session.headers["X-Auth-Token"] = await admin_token(session, base, password)
                return await states()

            async def states() -> dict[str, str]:
                async with session.get(f"{base}/compute/v2.1/os-services") as r:
                    return {s["host"]: s["state"] for s in (await r.json())["services"]}

            async def lab_hypervisor() -> dict:
                async with session.get(f"{base}/compute/v2.1/os-hypervisors/detail",
                                       headers={"OpenStack-API-Version": "compute 2.28"}) as r:
                    return next(h for h in (await r.json())["hypervisors"] if h["service"]["host"] == "lab")

            assert await started() == {"sim1": "up", "lab": "up"}  # its first report
            reported = await lab_hypervisor()
            rc, _ = await serve.terminate(30)
            assert rc == 0, serve.log.read_text()[-3000:]

            await lab("stop", name)
            assert (await started())["sim1"] == "up"
            assert serve.events("compute_host_unreachable_at_start")[0]["host"] == "lab"
            await asyncio.sleep(3)  # its last beat ages past service_down_time
            assert await states() == {"sim1": "up", "lab": "down"}
            shown = await lab_hypervisor()
            assert shown["state"] == "down" and shown["vcpus"] == reported["vcpus"]  # its last report

            await lab("up", name)
            deadline = time.monotonic() + 15
            while (await states())["lab"] != "up":
                assert time.monotonic() < deadline, serve.log.read_text()[-3000:]
                await asyncio.sleep(0.2)
            # Its init_host writes a heartbeat before the rest of the late start (recovery, NICs,
            # power sync) ends and logs it: "up" can be read before the log line.
            assert [e["host"] for e in await serve.wait_event("compute_host_started_late")] == ["lab"]
            assert (await lab_hypervisor())["local_gb"] > 0  # its pool made and measured there now
            assert serve.events("compute_host_late_start_failed") == []
            rc, _ = await serve.terminate(30)
            assert rc == 0, serve.log.read_text()[-3000:]
    finally:
        serve.stop()
        await lab("down", name)
