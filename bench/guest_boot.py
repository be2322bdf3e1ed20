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
the time until all P print ``init done`` on each side (the first POST or define → the last init
line written to a guest's serial log, the logs read here every 50 ms; the API's own console
reads, once a second, confirm each line), novalite's overhead in per cent; ``--rounds R``
(default 3) rounds, which side goes first alternating, a row each, and a last JSON line of the
median round: {"bench": "guest_boot", "parallel": P, "rounds": R, "api_s": ..., "bare_s": ...,
"overhead_pct": ..., "overhead_pct_rounds": [...], "novalite_cpu_s": ..., "guests_cpu_s": ...,
"paced_overhead_pct": ..., "paced_overhead_pct_rounds": [...]} (paced: each side's wall per CPU
second its guests used, compared: the machine's pace, which drifts by 20 % within minutes here,
taken out; the server's CPU and a later start still count).
Each row also says when the last domain was running on each side, and the CPU the server and
its Postgres used meanwhile (its console reads and status polls included) against the guests'.

With ``--host NAME``: a lab host (scripts/lab-host.sh, a second libvirtd sharing no filesystem
with novalite) started fresh: the first boot on it (the image's upload to it included), then N
boots on it against N on this machine's qemu:///system; a table and one JSON line
{"bench": "guest_boot", "host", "first_boot_s", "remote_s", "local_s", "overhead_s"}
(means of POST → "init done").
Usage: bench/guest_boot.py [-n 5] [--parallel 8 [--rounds 3] | --host NAME]
Environment: BENCH_COMPUTE_CONFIG adds lines (";"-separated) to the server's [compute] section,
e.g. BENCH_COMPUTE_CONFIG="libvirt_threads = 10".
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
import threading
import time
import uuid
from pathlib import Path

import aiohttp
import libvirt

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "scripts" / "lab-host.sh"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from boot_storm import (  # noqa: E402
    env_lines,
    free_port,
    postgres_cpu_seconds,
    proc_cpu_seconds,
    start_postgres,
    token,
    wait_serving,
)

from novalite.image import testimage  # noqa: E402
from novalite.virt.libvirt.driver import serial_log_files  # noqa: E402
from novalite.virt.libvirt.storage import purge_pools  # noqa: E402

INIT_DONE = "NOVALITE-GUEST: init done"
BOOT_TIMEOUT = 300  # s, from the first POST (or start) to a guest's init line
# With P guests at once each side reads each console once a second: P console reads every 50 ms
# through the API (each up to 100 KiB of log, as JSON) took the 2 cores from the guests themselves.
PARALLEL_POLL = 1.0
# The time a guest printed its init line is taken, on both sides, from its serial log file on this
# machine, read here every 50 ms from where the last read ended (a few bytes a read): the 1 s polls
# above alone left each side's figure up to a second late (±2 % of a 45 s wall).
WATCH_POLL = 0.05


class LogWatch:
    """When each of a set of serial log files first held the init line (perf_counter s)."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.running: dict[str, float] = {}  # when each domain was seen running (recorded by the caller)
        self._files: dict[str, tuple[Path, int, bytes]] = {}  # key → (path, offset read, tail kept)

    def add(self, key: str, path: Path) -> None:
        self._files.setdefault(key, (path, 0, b""))

    def knows(self, key: str) -> bool:
        return key in self._files or key in self.seen

    def poll(self) -> None:
        now = time.perf_counter()
        for key, (path, offset, tail) in list(self._files.items()):
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                continue
            if INIT_DONE.encode() in tail + data:
                self.seen[key] = now
                del self._files[key]
            else:
                self._files[key] = (path, offset + len(data), (tail + data)[-len(INIT_DONE):])

    def last(self, keys: list[str], times: dict[str, float] | None = None) -> float | None:
        """The latest of these keys' times (``seen`` unless given), None while any is missing."""
        times = self.seen if times is None else times
        return max(times[k] for k in keys) if all(k in times for k in keys) else None


libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # no "Domain not found" lines on stderr while watching


def guests_cpu(doms: list) -> float:
    """CPU s the domains' qemu processes used so far (their pid files under /run/libvirt/qemu)."""
    return sum(proc_cpu_seconds(int(Path(f"/run/libvirt/qemu/{d.name()}.pid").read_text())) for d in doms)


async def _boot(s: aiohttp.ClientSession, url: str, hdrs: dict, image_id: str, name: str, poll: float,
                host: str | None = None, posted: list[str] | None = None) -> tuple[float, float, str]:
    """POST one server and wait for its console's init line, read every ``poll`` s: (POST → ACTIVE s,
    POST → init done s, its id); its id is appended to ``posted`` once the POST is answered."""
    body = {"server": {"name": name, "imageRef": image_id, "flavorRef": "1", "networks": "none", "config_drive": True}}
    if host is not None:  # forced onto that host (admin's zone:host)
        body["server"]["availability_zone"] = f"nova:{host}"
    t0 = time.perf_counter()
    async with s.post(f"{url}/compute/v2.1/servers", json=body, headers=hdrs) as r:
        answer = await r.json()
        if r.status != 202:
            raise RuntimeError(f"POST {name}: {r.status} {answer}")
        sid = answer["server"]["id"]
    if posted is not None:
        posted.append(sid)
    active = None
    while True:
        if active is None:  # its status until ACTIVE, then only its console
            async with s.get(f"{url}/compute/v2.1/servers/{sid}", headers=hdrs) as r:
                status = (await r.json())["server"]["status"]
            if status == "ACTIVE":
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
                    uri: str = "qemu:///system") -> tuple[list[float], list[float], float, float, dict | None]:
    """A `novalite serve` managing ``host`` at ``uri`` alone; its first boot, untimed in the
    figures (the image's upload to the host included), then n boots one after another (parallel
    1), or parallel boots at once: (POST → ACTIVE s each, POST → init done s each, first POST →
    the last guest's init done s as the 1 s polls saw it, the first boot's POST → init done s,
    parallel only: {"printed": first POST → the last init line written to a serial log, "running":
    → the last domain seen running, "novalite_cpu": CPU s of the server and its Postgres meanwhile,
    "guests_cpu": CPU s of the guests' qemu processes})."""
    pg, dsn = await start_postgres(root)
    port = free_port()
    tag = uuid.uuid4().hex[:6]
    cfg = root / "config.toml"
    cfg.write_text(
        f'[api]\nlisten = "127.0.0.1"\nport = {port}\nuser_clouds_yaml = false\n[database]\ndsn = "{dsn}"\n'
        f'[state]\ndir = "{root / "state"}"\n[log]\nlevel = "warning"\nformat = "json"\n'
        f'[identity]\nbcrypt_rounds = 4\n[compute]\nvirt_type = "qemu"\n'
        + env_lines("BENCH_COMPUTE_CONFIG")
        + f'[networking]\nlibvirt_prefix = "nlb{tag}-"\ndefault_network = "bench"\n'
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
            detail = None
            t0 = time.perf_counter()
            if parallel > 1:
                def novalite_cpu() -> float:  # the server (and what it ran) and its Postgres
                    return proc_cpu_seconds(proc.pid, reaped_children=True) + postgres_cpu_seconds(root / "pgdata")

                cpu0 = novalite_cpu()
                posted: list[str] = []
                watching = asyncio.create_task(_watch_api_logs(uri, posted, watch := LogWatch()))
                try:
                    boots = await asyncio.gather(*(_boot(s, url, hdrs, ids["ami"], f"bench{i}", PARALLEL_POLL,
                                                         host, posted) for i in range(parallel)))
                finally:
                    watching.cancel()
                last = watch.last(posted)
                if last is None:
                    raise RuntimeError("an init line the API showed was never seen in its serial log")
                ours = novalite_cpu() - cpu0
                with contextlib.closing(libvirt.openReadOnly(uri)) as conn:
                    guests = guests_cpu([conn.lookupByUUIDString(b[2]) for b in boots])
                detail = {"printed": last - t0, "running": watch.last(posted, watch.running) - t0,
                          "novalite_cpu": ours, "guests_cpu": guests}
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
    return to_active, to_init, wall, first[1], detail


async def _watch_api_logs(uri: str, posted: list[str], watch: LogWatch) -> None:
    """Until cancelled: each posted server's serial log (found once its domain exists) watched, and
    when its domain was first seen running."""
    conn = libvirt.openReadOnly(uri)
    try:
        while True:
            for sid in posted:
                if watch.knows(sid) and sid in watch.running:
                    continue
                try:  # one lookup a domain a turn, until its log is watched and it was seen running
                    dom = conn.lookupByUUIDString(sid)
                    if not watch.knows(sid) and (logs := serial_log_files(dom.XMLDesc(0))):
                        watch.add(sid, Path(logs[0]))
                    if sid not in watch.running and dom.isActive():
                        watch.running[sid] = time.perf_counter()
                except libvirt.libvirtError:
                    continue  # not defined yet
            watch.poll()
            await asyncio.sleep(WATCH_POLL)
    finally:
        conn.close()


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


def wait_init(logs: list[Path], t0: float) -> float:
    """When the last of these serial logs first held the init line (perf_counter s), read every
    WATCH_POLL s; BOOT_TIMEOUT from t0."""
    watch = LogWatch()
    keys = [str(log) for log in logs]
    for log in logs:
        watch.add(str(log), log)
    while (last := watch.last(keys)) is None:
        if time.perf_counter() - t0 > BOOT_TIMEOUT:
            raise RuntimeError("bare guest never printed init done")
        time.sleep(WATCH_POLL)
        watch.poll()
    return last


def bare_boots(n: int, root: Path, image: testimage.TestImage,
               parallel: int = 1) -> tuple[list[float], float, float | None]:
    """n guests defined and started one after another (parallel 1), or parallel at once, their
    disks prepared before the clock starts: (define+start → init done s each, or for parallel
    the first define → the last init line written to its serial log; the time until every
    domain was started; parallel only: the CPU s the guests' qemu processes used)."""
    conn = libvirt.open("qemu:///system")
    times: list[float] = []
    doms: list = []
    try:
        prepared = [_prepare_bare(root, image, i) for i in range(parallel if parallel > 1 else n)]
        t_all = time.perf_counter()
        if parallel > 1:

            def define_and_start(xml: str) -> None:
                doms.append(dom := conn.defineXML(xml))
                dom.create()

            # at once: a thread each (libvirt's connection takes concurrent calls), as the API's
            # builds run concurrently on the host's libvirt threads
            threads = [threading.Thread(target=define_and_start, args=(xml,)) for xml, _log in prepared]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if len(doms) < len(prepared):
                raise RuntimeError("a bare guest could not be started")
            started = time.perf_counter() - t_all
            times = [wait_init([log for _xml, log in prepared], t_all) - t_all]
            bare_guests_cpu = guests_cpu(doms)
        else:
            for xml, log in prepared:
                t0 = time.perf_counter()
                doms.append(dom := conn.defineXML(xml))
                dom.create()
                times.append(wait_init([log], t0) - t0)
                dom.destroy()
                dom.undefine()
                doms.remove(dom)
            started = time.perf_counter() - t_all
            bare_guests_cpu = None
    finally:
        for dom in doms:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefine()
        conn.close()
    return times, started, bare_guests_cpu


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
        r_active, r_init, _, first, _ = await api_boots(n, remote_root, image, host=name, uri=uri)
    finally:
        lab_host("down", name)
    l_active, l_init, _, _, _ = await api_boots(n, local_root, image)
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


async def parallel_rounds(parallel: int, rounds: int, root: Path, image: testimage.TestImage) -> dict:
    """``rounds`` rounds of ``parallel`` guests at once through the API and with libvirt directly,
    which side goes first alternating (the machine's pace drifts over minutes); a row a round and
    the median round's figures."""
    rows = []
    for r in range(rounds):
        api = bare = None
        for side in ("api", "bare") if r % 2 == 0 else ("bare", "api"):
            work = root / f"r{r}{side}"
            work.mkdir(mode=0o755)
            if side == "api":
                api = await api_boots(1, work, image, parallel)
            else:
                bare = await asyncio.to_thread(bare_boots, 1, work, image, parallel)
        active, _init, polled, _first, detail = api
        (bare_printed,), bare_running, bare_guests = bare
        printed = detail["printed"]
        rows.append({"api_s": printed, "bare_s": bare_printed, "polled_s": polled, "active_max_s": max(active),
                     "api_running_s": detail["running"], "bare_running_s": bare_running,
                     "novalite_cpu_s": detail["novalite_cpu"], "api_guests_cpu_s": detail["guests_cpu"],
                     "bare_guests_cpu_s": bare_guests,
                     "overhead_pct": (printed - bare_printed) / bare_printed * 100,
                     "paced_overhead_pct": ((printed / detail["guests_cpu"]) / (bare_printed / bare_guests) - 1) * 100,
                     "first": "API" if r % 2 == 0 else "bare"})
    print(f"{parallel} guests at once: the first POST (first define) → the last init line written to a serial log;")
    print("all running: → the last domain started (API: seen running, asked every 50 ms); ACTIVE: as polled once a second")
    print("CPU: the server's and its Postgres' (with children) from the first POST to the last init line seen")
    print("through the API; the guests' qemu processes' over their lives. Paced: each side's wall per CPU s its guests")
    print("used, compared (the same eight boots take more CPU s when the machine runs slower, as its pace drifts")
    print("by 20 % within minutes here; the server's own CPU and a later start count, they add wall, not guest CPU)")
    print(f"{'round':>5} | {'first':>5} | {'API s':>6} | {'bare s':>6} | {'overhead':>8} | {'all running: API':>16} | "
          f"{'bare':>5} | {'all ACTIVE':>10} | {'API, polled 1/s':>15} | {'novalite CPU':>12} | "
          f"{'guests CPU: API':>15} | {'bare':>6} | {'paced':>7}")
    for i, row in enumerate(rows):
        print(f"{i + 1:>5} | {row['first']:>5} | {row['api_s']:6.2f} | {row['bare_s']:6.2f} | "
              f"{row['overhead_pct']:+7.1f}% | {row['api_running_s']:15.2f}s | {row['bare_running_s']:4.2f}s | "
              f"{row['active_max_s']:9.2f}s | {row['polled_s']:14.2f}s | {row['novalite_cpu_s']:11.2f}s | "
              f"{row['api_guests_cpu_s']:14.2f}s | {row['bare_guests_cpu_s']:5.2f}s | {row['paced_overhead_pct']:+6.1f}%")
    median = sorted(rows, key=lambda row: row["overhead_pct"])[len(rows) // 2]
    print(f"median round: API {median['api_s']:.2f} s, bare libvirt {median['bare_s']:.2f} s: "
          f"novalite's overhead {median['overhead_pct']:+.1f} % (rounds: "
          + ", ".join(f"{row['overhead_pct']:+.1f}" for row in rows) + " %)")
    paced = sorted(row["paced_overhead_pct"] for row in rows)[len(rows) // 2]
    print(f"paced by the guests' CPU, the median round: {paced:+.1f} % (rounds: "
          + ", ".join(f"{row['paced_overhead_pct']:+.1f}" for row in rows) + " %)")
    return {"bench": "guest_boot", "parallel": parallel, "rounds": rounds, "api_s": round(median["api_s"], 2),
            "bare_s": round(median["bare_s"], 2), "overhead_pct": round(median["overhead_pct"], 1),
            "overhead_pct_rounds": [round(row["overhead_pct"], 1) for row in rows],
            "novalite_cpu_s": round(median["novalite_cpu_s"], 2), "guests_cpu_s": round(median["api_guests_cpu_s"], 2),
            "paced_overhead_pct": round(paced, 1),
            "paced_overhead_pct_rounds": [round(row["paced_overhead_pct"], 1) for row in rows]}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5, help="boots one after another (default 5)")
    parser.add_argument("--parallel", type=int, default=1, help="boot this many guests at once instead")
    parser.add_argument("--rounds", type=int, default=3,
                        help="with --parallel: rounds of both sides, the order alternating (default 3)")
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
        if args.parallel > 1:
            print(json.dumps(await parallel_rounds(args.parallel, args.rounds, root, image)))
            return 0
        active, init, _, _, _ = await api_boots(args.n, root, image)
        bare, _, _ = await asyncio.to_thread(bare_boots, args.n, root, image)
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
