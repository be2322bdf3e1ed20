#!/usr/bin/env python3
"""Real guests: novalite's overhead over bare libvirt, side by side.

Boots the test image (novalite image build-test) N times through the API of a
real `novalite serve` on qemu:///system (TCG), and N times as the same domain
XML defined and started directly with libvirt, and prints per boot:

    API:  POST → ACTIVE,  POST → guest's "init done" line on the console
    bare: define+start → "init done" in the serial log

and the difference of the means. Loopback only; nothing talks to the guests.
With ``--host NAME``: a lab host (scripts/lab-host.sh, a second libvirtd sharing no filesystem
with novalite) started fresh: the first boot on it (the image's upload to it included), then N
boots on it against N on this machine's qemu:///system; a table and one JSON line
{"bench": "guest_boot", "host", "first_boot_s", "remote_s", "local_s", "overhead_s"}
(means of POST → "init done").
Usage: bench/guest_boot.py [-n 5] [--host NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import libvirt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from boot_storm import free_port, start_postgres, token, wait_serving  # noqa: E402

from novalite.image import testimage  # noqa: E402
from novalite.virt.libvirt.storage import purge_pools  # noqa: E402

INIT_DONE = "NOVALITE-GUEST: init done"


LAB = REPO / "scripts" / "lab-host.sh"


async def boot_once(s: aiohttp.ClientSession, url: str, hdrs: dict, image_id: str, name: str,
                    host: str | None = None) -> tuple[float, float]:
    """One guest booted through the API (forced onto ``host`` when given), timed POST → ACTIVE and
    POST → its "init done" console line, then deleted (untimed)."""
    body = {"server": {"name": name, "imageRef": image_id, "flavorRef": "1", "networks": "none",
                       "config_drive": True}}
    if host is not None:
        body["server"]["availability_zone"] = f"nova:{host}"
    t0 = time.perf_counter()
    async with s.post(f"{url}/compute/v2.1/servers", json=body, headers=hdrs) as r:
        sid = (await r.json())["server"]["id"]
    active = None
    while True:
        async with s.get(f"{url}/compute/v2.1/servers/{sid}", headers=hdrs) as r:
            status = (await r.json())["server"]["status"]
        if status == "ACTIVE" and active is None:
            active = time.perf_counter() - t0
        if status == "ERROR":
            raise RuntimeError(f"boot {name} failed")
        if active is not None:
            async with s.post(f"{url}/compute/v2.1/servers/{sid}/action", headers=hdrs,
                              json={"os-getConsoleOutput": {}}) as r:
                if r.status == 200 and INIT_DONE in (await r.json())["output"]:
                    break
        if time.perf_counter() - t0 > 180:
            raise RuntimeError(f"boot {name}: no init done after 180 s")
        await asyncio.sleep(0.05)
    init = time.perf_counter() - t0
    async with s.delete(f"{url}/compute/v2.1/servers/{sid}", headers=hdrs):
        pass
    while True:
        async with s.get(f"{url}/compute/v2.1/servers/{sid}", headers=hdrs) as r:
            if r.status == 404:
                break
        await asyncio.sleep(0.05)
    return active, init


async def api_boots(n: int, root: Path, image: testimage.TestImage, host: str = "local",
                    uri: str = "qemu:///system") -> tuple[float, list[float], list[float]]:
    """A `novalite serve` managing ``host`` at ``uri`` alone: its first boot (POST → init done, the
    image's upload to the host included), then ``n`` boots: (first, to ACTIVE, to init done)."""
    pg, dsn = await start_postgres(root)
    port = free_port()
    tag = uuid.uuid4().hex[:6]
    cfg = root / "config.toml"
    cfg.write_text(
        f'[api]\nlisten = "127.0.0.1"\nport = {port}\nuser_clouds_yaml = false\n[database]\ndsn = "{dsn}"\n'
        f'[state]\ndir = "{root / "state"}"\n[log]\nlevel = "warning"\nformat = "json"\n'
        f'[identity]\nbcrypt_rounds = 4\n[compute]\nvirt_type = "qemu"\n'
        f'[networking]\nlibvirt_prefix = "nlb{tag}-"\ndefault_network = "bench"\n'
        f'[[networks]]\nname = "bench"\ncidr = "10.{100 + int(tag, 16) % 100}.8.0/24"\n'  # beside other clouds
        f'[volume]\npool_prefix = "nlb{tag}-"\n'
        f'[[hosts]]\nname = "{host}"\nuri = "{uri}"\n'
    )
    proc = subprocess.Popen([sys.executable, "-m", "novalite.cli", "--config", str(cfg), "serve", "--no-test-image",
                             "--clouds-yaml", str(root / "clouds.yaml")], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=open(root / "server.log", "w"))  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    to_active: list[float] = []
    to_init: list[float] = []
    try:
        async with aiohttp.ClientSession() as s:
            await wait_serving(s, url, proc, root / "server.log")
            creds = json.loads((root / "state" / "credentials.json").read_text())
            ids = await testimage.upload(image, url, "admin", creds["admin"])
            hdrs = {"X-Auth-Token": await token(s, url, creds["admin"]), "OpenStack-API-Version": "compute 2.56"}
            _, first = await boot_once(s, url, hdrs, ids["ami"], "bench-first", host)
            for i in range(n):
                active, init = await boot_once(s, url, hdrs, ids["ami"], f"bench{i}", host)
                to_active.append(active)
                to_init.append(init)
    finally:
        proc.terminate()
        proc.wait(30)
        await pg.stop()
        conn = libvirt.open(uri)
        for name in conn.listNetworks() + conn.listDefinedNetworks():
            if name.startswith(f"nlb{tag}-"):
                net = conn.networkLookupByName(name)
                if net.isActive():
                    net.destroy()
                net.undefine()
        purge_pools(conn, f"nlb{tag}-")
        conn.close()
    return first, to_active, to_init


def bare_boots(n: int, root: Path, image: testimage.TestImage) -> list[float]:
    """The same guest (kernel, initrd, config drive, serial log) defined and started directly."""
    from novalite.virt import DiskSpec, GuestSpec
    from novalite.virt.configdrive import build_config_drive, instance_metadata
    from novalite.virt.libvirt.driver import design_guest

    conn = libvirt.open("qemu:///system")
    times = []
    try:
        for i in range(n):
            u = str(uuid.uuid4())
            d = root / f"bare{i}"
            d.mkdir(mode=0o755)
            shutil.copy(image.kernel, d / "kernel")
            shutil.copy(image.ramdisk, d / "ramdisk")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / "disk"), "1G"], check=True)
            build_config_drive(d / "disk.config", instance_metadata(uuid=u, name=f"bare{i}", hostname=f"bare{i}",
                                                                    availability_zone="nova"), None, [], {})
            spec = GuestSpec(instance_uuid=u, name=f"bench-bare-{u[:8]}", memory_mb=512, vcpus=1, virt_type="qemu",
                             disks=[DiskSpec(path=str(d / "disk")),
                                    DiskSpec(path=str(d / "disk.config"), device="cdrom", bus="sata",
                                             target_dev="sda", driver_type="raw")],
                             kernel=str(d / "kernel"), ramdisk=str(d / "ramdisk"), cmdline=image.cmdline,
                             console_log_path=str(d / "console.log"))
            xml = design_guest(spec, "qemu").to_xml()
            t0 = time.perf_counter()
            dom = conn.defineXML(xml)
            dom.create()
            log = d / "console.log"
            while not (log.exists() and INIT_DONE in log.read_text(errors="replace")):
                time.sleep(0.05)
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError("bare guest never printed init done")
            times.append(time.perf_counter() - t0)
            dom.destroy()
            dom.undefine()
    finally:
        conn.close()
    return times


def lab_host(*args: str) -> str:
    return subprocess.run([str(LAB), *args], check=True, capture_output=True, text=True, timeout=120).stdout.strip()


async def remote_vs_local(n: int, name: str, root: Path, image: testimage.TestImage) -> dict:
    """``n`` steady-state boots on lab host ``name`` (started fresh here, taken down after) and on
    this machine's qemu:///system, each host alone in its own cloud (one network cannot start on
    both: they share this machine's network namespace); the first boot on the lab host is timed
    apart (the image's upload to it included)."""
    remote_root, local_root = root / "remote", root / "local"
    for d in (remote_root, local_root):
        d.mkdir(mode=0o755)
    uri = lab_host("up", name, str(remote_root / "state"))  # novalite's state hidden from it
    try:
        first, r_active, r_init = await api_boots(n, remote_root, image, name, uri)
    finally:
        lab_host("down", name)
    _, l_active, l_init = await api_boots(n, local_root, image)
    print(f"{'boot':>4} | {'remote POST→ACTIVE':>18} | {'remote →init done':>17} | {'local POST→ACTIVE':>17} | "
          f"{'local →init done':>16}")
    for i in range(n):
        print(f"{i:>4} | {r_active[i]:17.2f}s | {r_init[i]:16.2f}s | {l_active[i]:16.2f}s | {l_init[i]:15.2f}s")
    remote, local = statistics.mean(r_init), statistics.mean(l_init)
    print(f"mean | {statistics.mean(r_active):17.2f}s | {remote:16.2f}s | {statistics.mean(l_active):16.2f}s | "
          f"{local:15.2f}s")
    print(f"first boot on the fresh lab host {name} (image upload included): {first:.2f} s")
    return {"bench": "guest_boot", "host": name, "first_boot_s": round(first, 2), "remote_s": round(remote, 2),
            "local_s": round(local, 2), "overhead_s": round(remote - local, 2)}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5)
    parser.add_argument("--host", metavar="NAME",
                        help="a lab host (scripts/lab-host.sh) of this name, started and removed here: "
                             "boots on it against boots on qemu:///system")
    args = parser.parse_args()
    image = testimage.build(Path("/var/tmp/novalite-testimage-cache"))
    root = Path(tempfile.mkdtemp(prefix="novalite-guestbench-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        if args.host:
            print(json.dumps(await remote_vs_local(args.n, args.host, root, image)))
            return 0
        _, active, init = await api_boots(args.n, root, image)
        bare = await asyncio.to_thread(bare_boots, args.n, root, image)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'boot':>4} | {'API POST→ACTIVE':>16} | {'API POST→init done':>19} | {'bare start→init done':>21}")
    for i in range(args.n):
        print(f"{i:>4} | {active[i]:15.2f}s | {init[i]:18.2f}s | {bare[i]:20.2f}s")
    mean_api, mean_bare = statistics.mean(init), statistics.mean(bare)
    print(f"mean | {statistics.mean(active):15.2f}s | {mean_api:18.2f}s | {mean_bare:20.2f}s")
    print(f"novalite overhead over bare libvirt (to the guest's init line): {mean_api - mean_bare:+.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
