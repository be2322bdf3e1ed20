#!/usr/bin/env python3
"""Real guests: novalite's overhead over bare libvirt, side by side.

Boots the test image (novalite image build-test) N times through the API of a
real `novalite serve` on qemu:///system (TCG), and N times as the same domain
XML defined and started directly with libvirt, and prints per boot:

    API:  POST → ACTIVE,  POST → guest's "init done" line on the console
    bare: define+start → "init done" in the serial log

and the difference of the means. Loopback only; nothing talks to the guests.

``--parallel P``: P guests at once instead (issue #22): P concurrent POSTs, and the same P
domains defined and started at once with libvirt (their disks prepared beforehand, untimed);
the time until all P print ``init done`` on each side, novalite's overhead in per cent, and a
last JSON line {"bench": "guest_boot", "parallel": P, "api_s": ..., "bare_s": ..., "overhead_pct": ...}.

With ``--host NAME``: a lab host (scripts/lab-host.sh, a second libvirtd sharing no filesystem
with novalite) started fresh: the first boot on it (the image's upload to it included), then N
boots on it against N on this machine's qemu:///system; a table and one JSON line
{"bench": "guest_boot", "host", "first_boot_s", "remote_s", "local_s", "overhead_s"}
(means of POST → "init done").
Usage: bench/guest_boot.py [-n 5] [--parallel 8 | --host NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
LAB = REPO / "scripts" / "lab-host.sh"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from boot_storm import free_port, start_postgres, token, wait_serving  # noqa: E402

from novalite.image import testimage  # noqa: E402
from novalite.virt.libvirt.storage import purge_pools  # noqa: E402

INIT_DONE = "NOVALITE-GUEST: init done"
BOOT_TIMEOUT = 300  # s, from the first POST (or start) to a guest's init line
# With P guests at once each side reads each console once a second: P console reads every 50 ms
# through the API (each up to 100 KiB of log, as JSON) took the 2 cores from the guests themselves.
PARALLEL_POLL = 1.0


async def _boot(s: aiohttp.ClientSession, url: str, hdrs: dict, image_id: str, name: str, poll: float,
                host: str | None = None) -> tuple[float, float, str]:
    """POST one server and wait for its console's init line, read every ``poll`` s: (POST → ACTIVE s,
    POST → init done s, its id)."""
    body = {"server": {"name": name, "imageRef": image_id, "flavorRef": "1", "networks": "none", "config_drive": True}}
    if host is not None:  # forced onto that host (admin's zone:host)
        body["server"]["availability_zone"] = f"nova:{host}"
    t0 = time.perf_counter()
    async with s.post(f"{url}/compute/v2.1/servers", json=body, headers=hdrs) as r:
        answer = await r.json()
        if r.status != 202:
            raise RuntimeError(f"POST {name}: {r.status} {answer}")
        sid = answer["server"]["id"]
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
                    return active, time.perf_counter() - t0, sid
        if time.perf_counter() - t0 > BOOT_TIMEOUT:
            raise RuntimeError(f"{name} never printed init done")
        await asyncio.sleep(poll)


async def _delete(s: aiohttp.ClientSession, url: str, hdrs: dict, sid: str) -> None:
    async with s.delete(f"{url}/compute/v2.1/servers/{sid}", headers=hdrs):
        pass
    while True:
        async with s.get(f"{url}/compute/v2.1/servers/{sid}", headers=hdrs) as r:
            if r.status == 404:
                return
        await asyncio.sleep(0.05)


async def wait_host_up(s: aiohttp.ClientSession, url: str, hdrs: dict, host: str, timeout: float = 120) -> None:
    """Until os-services shows ``host`` up: `serve` answers before its hosts are brought up, and a
    boot forced to a host that is not up yet is refused (its zone is not available)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with s.get(f"{url}/compute/v2.1/os-services", headers=hdrs) as r:
            if any(sv["host"] == host and sv["state"] == "up" for sv in (await r.json())["services"]):
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"host {host} not up in {timeout:.0f} s")


async def api_boots(n: int, root: Path, image: testimage.TestImage, parallel: int = 1, host: str = "local",
                    uri: str = "qemu:///system") -> tuple[list[float], list[float], float, float]:
    """A `novalite serve` managing ``host`` at ``uri`` alone; its first boot, untimed in the
    figures (the image's upload to the host included), then n boots one after another (parallel
    1), or parallel boots at once: (POST → ACTIVE s each, POST → init done s each, first POST →
    the last guest's init done s, the first boot's POST → init done s)."""
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
    proc = subprocess.Popen([sys.executable, "-m", "novalite.cli", "--config", str(cfg), "serve", "--no-test-image", "--clouds-yaml",
                             str(root / "clouds.yaml")], cwd=REPO, stdout=subprocess.DEVNULL,
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
            await wait_host_up(s, url, hdrs, host)
            first = await _boot(s, url, hdrs, ids["ami"], "bench-first", 0.05, host)
            await _delete(s, url, hdrs, first[2])
            t0 = time.perf_counter()
            if parallel > 1:
                boots = await asyncio.gather(*(_boot(s, url, hdrs, ids["ami"], f"bench{i}", PARALLEL_POLL, host)
                                               for i in range(parallel)))
            else:
                boots = []
                for i in range(n):
                    boots.append(await _boot(s, url, hdrs, ids["ami"], f"bench{i}", 0.05, host))
                    await _delete(s, url, hdrs, boots[-1][2])
            wall = time.perf_counter() - t0
            to_active, to_init = [b[0] for b in boots], [b[1] for b in boots]
            if parallel > 1:
                await asyncio.gather(*(_delete(s, url, hdrs, b[2]) for b in boots))
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
    return to_active, to_init, wall, first[1]


def _prepare_bare(root: Path, image: testimage.TestImage, i: int) -> tuple[str, Path]:
    """The same guest as the API boots (kernel, initrd, config drive, serial log), its disks made:
    (domain XML, console log path)."""
    from novalite.virt import DiskSpec, GuestSpec
    from novalite.virt.configdrive import build_config_drive, instance_metadata
    from novalite.virt.libvirt.driver import design_guest

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
    return design_guest(spec, "qemu").to_xml(), d / "console.log"


def _wait_init(logs: list[Path], t0: float, poll: float) -> None:
    """Until every console log holds the init line, read every ``poll`` s (BOOT_TIMEOUT from t0)."""
    waiting = list(logs)
    while waiting:
        waiting = [log for log in waiting if not (log.exists() and INIT_DONE in log.read_text(errors="replace"))]
        if waiting:
            if time.perf_counter() - t0 > BOOT_TIMEOUT:
                raise RuntimeError("bare guest never printed init done")
            time.sleep(poll)


def bare_boots(n: int, root: Path, image: testimage.TestImage, parallel: int = 1) -> tuple[list[float], float]:
    """n guests defined and started one after another (parallel 1), or parallel at once, their
    disks prepared before the clock starts: (define+start → init done s each, the wall time)."""
    conn = libvirt.open("qemu:///system")
    times: list[float] = []
    doms: list = []
    try:
        prepared = [_prepare_bare(root, image, i) for i in range(parallel if parallel > 1 else n)]
        t_all = time.perf_counter()
        if parallel > 1:
            for xml, _log in prepared:
                doms.append(dom := conn.defineXML(xml))
                dom.create()
            _wait_init([log for _xml, log in prepared], t_all, PARALLEL_POLL)
            times = [time.perf_counter() - t_all]
        else:
            for xml, log in prepared:
                t0 = time.perf_counter()
                doms.append(dom := conn.defineXML(xml))
                dom.create()
                _wait_init([log], t0, 0.05)
                times.append(time.perf_counter() - t0)
                dom.destroy()
                dom.undefine()
                doms.remove(dom)
        wall = time.perf_counter() - t_all
    finally:
        for dom in doms:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefine()
        conn.close()
    return times, wall


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
        r_active, r_init, _, first = await api_boots(n, remote_root, image, host=name, uri=uri)
    finally:
        lab_host("down", name)
    l_active, l_init, _, _ = await api_boots(n, local_root, image)
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
    parser.add_argument("-n", type=int, default=5, help="boots one after another (default 5)")
    parser.add_argument("--parallel", type=int, default=1, help="boot this many guests at once instead")
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
        active, init, api_wall, _ = await api_boots(args.n, root, image, args.parallel)
        bare, bare_wall = await asyncio.to_thread(bare_boots, args.n, root, image, args.parallel)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.parallel > 1:
        overhead = (api_wall - bare_wall) / bare_wall * 100
        print(f"{args.parallel} guests at once, until all printed init done: API {api_wall:.2f} s "
              f"(POST → ACTIVE {min(active):.2f}–{max(active):.2f} s), bare libvirt {bare_wall:.2f} s: "
              f"novalite's overhead {overhead:+.1f} %")
        print(json.dumps({"bench": "guest_boot", "parallel": args.parallel, "api_s": round(api_wall, 2),
                          "bare_s": round(bare_wall, 2), "overhead_pct": round(overhead, 1)}))
        return 0
    print(f"{'boot':>4} | {'API POST→ACTIVE':>16} | {'API POST→init done':>19} | {'bare start→init done':>21}")
    for i in range(args.n):
        print(f"{i:>4} | {active[i]:15.2f}s | {init[i]:18.2f}s | {bare[i]:20.2f}s")
    mean_api, mean_bare = statistics.mean(init), statistics.mean(bare)
    print(f"mean | {statistics.mean(active):15.2f}s | {mean_api:18.2f}s | {mean_bare:20.2f}s")
    print(f"novalite overhead over bare libvirt (to the guest's init line): {mean_api - mean_bare:+.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
