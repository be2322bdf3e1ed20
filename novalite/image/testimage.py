"""``novalite image build-test``: a CirrOS-like test guest, built offline in seconds.

Nothing is downloaded from image mirrors: the distribution kernel package
(``linux-image-<abi>-amd64``, resolved through ``apt-cache depends
linux-image-amd64``) and ``busybox-static`` are fetched with ``apt-get
download`` into ``<cache>/debs`` and unpacked with ``dpkg-deb -x`` under the
cache (nothing is installed into /boot). From them it builds, in ``<cache>/out``:

``vmlinuz``
    the distribution kernel; uploaded as ``novalite-test-kernel``
    (disk_format ``aki``, container_format ``aki``).
``initrd.gz``
    a gzip'd newc cpio written in Python: busybox-static, the kernel modules a
    qemu guest needs (virtio pci/blk/net/scsi, ata_piix, ahci, sr_mod, cdrom,
    isofs, in modules.dep order) and ``/init``; uploaded as
    ``novalite-test-ramdisk`` (``ari``/``ari``).
``disk.raw``
    a 1 MiB empty root disk; uploaded as ``novalite-test`` (``ami``/``ami``)
    with properties ``kernel_id``, ``ramdisk_id``, ``os_command_line``
    (:data:`CMDLINE`) and ``os_distro=novalite-test``.
``disk.qcow2``
    a 64 MiB empty qcow2 (when ``qemu-img`` exists); uploaded as
    ``novalite-test-qcow2`` (``qcow2``/``bare``) with the same properties.

The guest's ``/init`` prints lines prefixed ``NOVALITE-GUEST: `` on the serial
console (ttyS0)::

    NOVALITE-GUEST: boot kernel=<uname -r> uptime=<seconds>
    NOVALITE-GUEST: smbios product=<SMBIOS product name>   ("OpenStack Nova")
    NOVALITE-GUEST: config_drive=<device>            (or "config_drive=none")
    NOVALITE-GUEST: metadata_service=169.254.169.254 (no config drive: the lines below come after
                                                      the lease, fetched from there; or "=none <why>")
    NOVALITE-GUEST: uuid=<meta_data uuid>
    NOVALITE-GUEST: name=<name>
    NOVALITE-GUEST: hostname=<hostname>
    NOVALITE-GUEST: availability_zone=<az>
    NOVALITE-GUEST: launch_index=<n>
    NOVALITE-GUEST: public_keys=<raw JSON object>
    NOVALITE-GUEST: meta=<raw JSON object>
    NOVALITE-GUEST: admin_pass_sha256=<hex>          (when meta_data has admin_pass; its hash, not the password)
    NOVALITE-GUEST: file <path>=<content>           (one per injected file)
    NOVALITE-GUEST: user_data=<content>
    NOVALITE-GUEST: user_data_b64=<base64 of user_data, one line>
    NOVALITE-GUEST: lease ip=<ip> mac=<mac> iface=<eth0> mask=<prefix> router=<gw> routes=<option 121>
    NOVALITE-GUEST: lease none iface=<eth0>         (no DHCP answer)
    NOVALITE-GUEST: addr iface=<eth0> ip=<ip> prefix=<n> mac=<mac>  (one per IPv4 address after DHCP)
    NOVALITE-GUEST: disk <vdX> size=<bytes>              (one per virtio disk)
    NOVALITE-GUEST: disk_marker=<word>                 (a marker found at the start of /dev/vda)
    NOVALITE-GUEST: disk_marker_written=<word>         (user_data line "write-disk-marker <word>")
    NOVALITE-GUEST: init done uptime=<seconds since the kernel started>
    NOVALITE-GUEST: disks now: <vda vdb ...>           (after a disk was hot-plugged or unplugged)
    NOVALITE-GUEST: script: <line>                     (each stdout/stderr line of a "#!" user_data)
    NOVALITE-GUEST: script_exit=<code>                 (when that script ends)
    NOVALITE-GUEST: console shell: press Enter          (then Enter on ttyS0 starts a root shell there)

It mounts proc/sys/dev, loads the modules, finds the config drive by label
``config-2`` (``findfs``, then by trying /dev/sr* /dev/vd* /dev/sd* /dev/hd*),
runs ``udhcpc`` on every NIC (applying DHCP classless static routes), and with no config drive
fetches ``meta_data.json`` and ``user_data`` from ``http://169.254.169.254/openstack/latest/``
into the same place (an HTTP/1.0 GET through busybox ``nc``), so what follows reads them alike; after
``init done`` it offers a root shell on ttyS0 (started by Enter; ``novalite console``), or runs
``poweroff -f`` when user_data has a line ``poweroff-after-boot``.

A user_data that starts with ``#!`` is a script, as cloud-init treats it: after
``init done`` :data:`RUN_SCRIPT` runs it in the background as root, in /tmp,
with busybox's tools (nc, ping, ip, arping, httpd, timeout, ...) and the config
drive still mounted on /mnt/config; the guest keeps idling when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog

log = structlog.get_logger(__name__)

CMDLINE = "console=ttyS0 quiet"
PREFIX = "NOVALITE-GUEST: "
# What a qemu guest needs for a virtio disk/NIC and a config drive on a cdrom,
# whatever the bus (ide on pc, sata on q35, virtio-scsi); missing ones are skipped.
WANTED_MODULES = (
    "virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "virtio_console",
    "ata_piix", "ahci", "sd_mod", "sr_mod", "cdrom", "isofs",
)
NAMES = {
    "kernel": "novalite-test-kernel",
    "ramdisk": "novalite-test-ramdisk",
    "ami": "novalite-test",
    "qcow2": "novalite-test-qcow2",
}

INIT = r"""#!/bin/sh
# novalite test guest: report what the cloud gave us on the serial console.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
say() { echo "NOVALITE-GUEST: $*"; }
say "boot kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
say "smbios product=$(cat /sys/class/dmi/id/product_name 2>/dev/null)"
say "mem_total_kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo) cpus=$(grep -c ^processor /proc/cpuinfo)"
for m in $(cat /etc/modules); do insmod "/lib/modules/$m" 2>/dev/null; done

cd_dev=""
tries=0
# cdroms on ata/sata are probed asynchronously: give them up to 3 s to show up
while [ -z "$cd_dev" ] && [ $tries -lt 30 ]; do
  cd_dev=$(findfs LABEL=config-2 2>/dev/null)
  [ -n "$cd_dev" ] || usleep 100000
  tries=$((tries + 1))
done
mkdir -p /mnt/config
if [ -n "$cd_dev" ] && mount -o ro "$cd_dev" /mnt/config 2>/dev/null; then
  :
else
  cd_dev=""
  for d in /dev/sr* /dev/vd* /dev/sd* /dev/hd*; do
    [ -b "$d" ] || continue
    if mount -o ro "$d" /mnt/config 2>/dev/null; then
      [ -f /mnt/config/openstack/latest/meta_data.json ] && { cd_dev=$d; break; }
      umount /mnt/config
    fi
  done
fi

# What meta_data.json and user_data say, from the config drive or as fetched from the metadata service.
report_meta() {
  md=/mnt/config/openstack/latest/meta_data.json
  flat=$(tr -d '\n' < "$md")
  str() { echo "$flat" | grep -o "\"$1\": *\"[^\"]*\"" | head -n1 | sed 's/^"[^"]*": *"//; s/"$//'; }
  obj() { echo "$flat" | grep -o "\"$1\": *{[^}]*}" | head -n1 | sed 's/^"[^"]*": *//'; }
  say "uuid=$(str uuid)"
  say "name=$(str name)"
  h=$(str hostname)
  say "hostname=$h"
  [ -n "$h" ] && hostname "$h"
  say "availability_zone=$(str availability_zone)"
  say "launch_index=$(echo "$flat" | grep -o '"launch_index": *[0-9]*' | sed 's/.*: *//')"
  say "public_keys=$(obj public_keys)"
  say "meta=$(obj meta)"
  ap=$(str admin_pass)
  [ -n "$ap" ] && say "admin_pass_sha256=$(printf %s "$ap" | sha256sum | cut -d' ' -f1)"
  echo "$flat" | grep -o '"files": *\[[^]]*\]' | grep -o '{[^}]*}' | while read -r f; do
    p=$(echo "$f" | grep -o '"path": *"[^"]*"' | sed 's/^"path": *"//; s/"$//')
    c=$(echo "$f" | grep -o '"content_path": *"[^"]*"' | sed 's/^"content_path": *"//; s/"$//')
    say "file $p=$(cat "/mnt/config/openstack/${c#/}" 2>/dev/null)"
  done
  ud=/mnt/config/openstack/latest/user_data
  if [ -f "$ud" ]; then
    say "user_data=$(cat "$ud")"
    say "user_data_b64=$(base64 < "$ud" | tr -d '\n')"
  fi
}
# No config drive: once DHCP has run, ask the metadata service (reached through a DHCP route).
# GET http://169.254.169.254$1 into file $2 when the answer is 200 (nc: busybox-static's wget
# crashes in an initramfs without /etc). nc half-closes at the end of its input, and aiohttp
# drops a half-closed connection: the input stays open until the answer is in (nc ends then).
# On failure $why says what went wrong.
http_get() {
  { printf 'GET %s HTTP/1.0\r\nHost: 169.254.169.254\r\n\r\n' "$1"; sleep 1; } \
    | nc -w 3 169.254.169.254 80 > /tmp/http.out 2> /tmp/http.err || { why=$(cat /tmp/http.err); return 1; }
  head -n1 /tmp/http.out | grep -q ' 200 ' || { why=$(head -n1 /tmp/http.out); return 1; }
  cr=$(printf '\r')
  sed "1,/^$cr\$/d" /tmp/http.out > "$2"
}
fetch_meta() {
  # Only where the network says so (a host route from DHCP): never through a default route off the machine.
  why="no route to 169.254.169.254"
  [ -n "$(ip route show 169.254.169.254 2>/dev/null)" ] || return 1
  mkdir -p /mnt/config/openstack/latest
  for t in 1 2 3; do
    http_get /openstack/latest/meta_data.json /mnt/config/openstack/latest/meta_data.json && break
    sleep 1
  done
  [ -s /mnt/config/openstack/latest/meta_data.json ] || return 1
  http_get /openstack/latest/user_data /mnt/config/openstack/latest/user_data \
    || rm -f /mnt/config/openstack/latest/user_data
}
if [ -n "$cd_dev" ]; then
  say "config_drive=$cd_dev"
  report_meta
else
  say "config_drive=none"
fi

for n in /sys/class/net/*; do
  ifc=${n##*/}
  [ "$ifc" = lo ] && continue
  ip link set "$ifc" up
  udhcpc -i "$ifc" -s /etc/udhcpc.script -O staticroutes -n -q -t 10 -T 1 >/dev/null 2>&1 || say "lease none iface=$ifc"
done
if [ -z "$cd_dev" ]; then
  if fetch_meta; then
    say "metadata_service=169.254.169.254"
    report_meta
  else
    say "metadata_service=none $(echo "$why" | tr -d '\r' | tail -n1)"
  fi
fi
# What each NIC ended up with, whoever configured it: how a test learns a guest's IP from its console.
for n in /sys/class/net/*; do
  ifc=${n##*/}
  [ "$ifc" = lo ] && continue
  ip -4 -o addr show dev "$ifc" | while read -r _ _ _ cidr _; do
    say "addr iface=$ifc ip=${cidr%/*} prefix=${cidr#*/} mac=$(cat "$n/address")"
  done
done

for b in /sys/block/vd*; do
  [ -e "$b" ] || continue
  say "disk ${b##*/} size=$(( $(cat "$b/size") * 512 ))"
done
# A marker at the start of the root disk proves disk contents across snapshots: shown at every
# boot, written when user_data has a line "write-disk-marker <word>".
mk=$(head -c 80 /dev/vda 2>/dev/null | head -n1 | tr -cd 'A-Za-z0-9:._-')
case "$mk" in NOVALITE-MARKER:?*) say "disk_marker=${mk#NOVALITE-MARKER:}";; esac
w=$(sed -n 's/^write-disk-marker //p' /mnt/config/openstack/latest/user_data 2>/dev/null | tr -cd 'A-Za-z0-9._-')
if [ -n "$w" ] && [ -b /dev/vda ]; then
  printf 'NOVALITE-MARKER:%s\n' "$w" | dd of=/dev/vda conv=notrunc 2>/dev/null
  sync
  say "disk_marker_written=$w"
fi
say "init done uptime=$(cut -d' ' -f1 /proc/uptime)"
# Hot-plugged disks (volume attach/detach) show up here when the guest sees them.
(
  known=$(ls /sys/block | grep '^vd' | tr '\n' ' ')
  while true; do
    sleep 1
    now=$(ls /sys/block | grep '^vd' | tr '\n' ' ')
    [ "$now" != "$known" ] && say "disks now: $now" && known=$now
  done
) &
# A "#!" user_data is a script (cloud-init's convention); other user_data keeps its line commands.
if [ "$(head -c 2 /mnt/config/openstack/latest/user_data 2>/dev/null)" = "#!" ]; then
  /etc/run-script /mnt/config/openstack/latest/user_data &
fi
if [ -f /mnt/config/openstack/latest/user_data ] && grep -qx 'poweroff-after-boot' /mnt/config/openstack/latest/user_data; then
  sync
  poweroff -f
fi
# A root shell on the serial console (`novalite console`, the remote console's websocket), started
# by Enter as busybox's askfirst does, so no prompt lands in the middle of the lines above; its
# output goes to the console log too. Leaving it (exit) waits for the next Enter.
say "console shell: press Enter"
while true; do
  read -r _ </dev/ttyS0 || { sleep 60; continue; }
  setsid cttyhack sh -l </dev/ttyS0 >/dev/ttyS0 2>&1 || sleep 1
done
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc hook: configure the address and report the lease on the console.
case "$1" in
  deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then ip route add default via "${router%% *}" dev "$interface"; fi
    # DHCP option 121 (classless static routes), e.g. to the metadata service: "dest/len gateway" pairs
    set -- $staticroutes
    while [ $# -ge 2 ]; do ip route add "$1" via "$2" dev "$interface"; shift 2; done
    echo "NOVALITE-GUEST: lease ip=$ip mac=$(cat /sys/class/net/$interface/address) iface=$interface mask=$mask router=$router routes=$staticroutes" > /dev/console
    ;;
esac
exit 0
"""

RUN_SCRIPT = r"""#!/bin/sh
# Run the script $1 (a "#!" user_data) as cloud-init would, its output on the console:
# each stdout/stderr line as "NOVALITE-GUEST: script: <line>", then "NOVALITE-GUEST: script_exit=<code>"
# as soon as the script itself ends (what it left running in the background keeps its prefix).
if ! script=$(mktemp) || ! cp "$1" "$script" || ! chmod 700 "$script"; then
  echo "NOVALITE-GUEST: script_exit=126"
  exit 1
fi
# The exit code travels down the same pipe, after the script's last output, behind a marker it cannot
# guess (on the last line itself when that line had no newline).
end="novalite-script-end-$$-$(head -c 12 /dev/urandom | md5sum | cut -c1-16)"
{
  cd "${TMPDIR:-/tmp}" && "$script" </dev/null 2>&1
  echo "$end $?"
} | while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    *"$end "*)
      [ -n "${line%%"$end "*}" ] && echo "NOVALITE-GUEST: script: ${line%%"$end "*}"
      echo "NOVALITE-GUEST: script_exit=${line##*"$end "}" ;;
    *) echo "NOVALITE-GUEST: script: $line" ;;
  esac
done
"""


class BuildError(Exception):
    """The test image could not be built (missing package, no apt, ...)."""


@dataclass(frozen=True)
class TestImage:
    """The built files and what the cloud needs to know about them."""

    kernel: Path
    ramdisk: Path
    disk: Path
    qcow2: Path | None
    kernel_version: str
    cmdline: str = CMDLINE


def _run(*cmd: str | Path, cwd: Path | None = None) -> str:
    try:
        res = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise BuildError(f"{cmd[0]} not found: {exc}") from None
    if res.returncode != 0:
        raise BuildError(f"{' '.join(str(c) for c in cmd)} failed: {res.stderr.strip()[-2000:]}")
    return res.stdout


def resolve_kernel_package(meta: str = "linux-image-amd64") -> str:
    """The concrete kernel package a Debian kernel metapackage points at."""
    out = _run("apt-cache", "depends", meta)
    m = re.search(r"Depends:\s*(linux-image-\S+)", out)
    if not m:
        raise BuildError(f"apt-cache depends {meta}: no linux-image dependency")
    return m.group(1)


def fetch_deb(debs: Path, package: str) -> Path:
    """``apt-get download`` a package into ``debs`` once and return the .deb."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        log.info("test_image_step", step=f"downloading {package} (apt-get download)")
        _run("apt-get", "download", "-q", package, cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        raise BuildError(f"apt-get download {package} left no .deb in {debs}")
    return found[-1]


def unpack(deb: Path, dest: Path) -> Path:
    """``dpkg-deb -x`` once (a marker file says the tree is complete)."""
    done = dest / ".unpacked"
    if not done.exists():
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        log.info("test_image_step", step=f"unpacking {deb.name}")
        _run("dpkg-deb", "-x", deb, dest)
        done.write_text(deb.name)
    return dest


_DEPENDS = re.compile(rb"(?:^|\x00)depends=([^\x00]*)\x00")


def module_depends(ko: Path) -> list[str]:
    """The ``depends=`` entry of a module's .modinfo section (what modules.dep is built from)."""
    m = _DEPENDS.search(ko.read_bytes())
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def module_closure(moddir: Path, wanted: tuple[str, ...] = WANTED_MODULES) -> list[Path]:
    """The .ko files for ``wanted`` plus their dependencies, each after what it needs."""
    index: dict[str, Path] = {}
    for ko in (moddir / "kernel").rglob("*.ko*"):
        name = ko.name.split(".ko")[0]
        index[name] = ko
        index.setdefault(name.replace("-", "_"), ko)
    ordered: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in seen or key not in index:
            return
        seen.add(key)
        for dep in module_depends(index[key]):
            visit(dep)
        ordered.append(index[key])

    for name in wanted:
        visit(name)
    return ordered


class Cpio:
    """A newc ("070701") cpio archive written in memory, as the kernel's initramfs reader wants."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name_b = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 2 if mode & 0o040000 else 1, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(name_b), 0)
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        head = header + name_b
        self._parts.append(head + b"\0" * (-len(head) % 4))
        self._parts.append(data + b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._parts)


def build_initramfs(busybox: Path, moddir: Path) -> bytes:
    """busybox + modules + /init as a gzip'd cpio."""
    modules = module_closure(moddir)
    cpio = Cpio()
    for d in ("bin", "dev", "proc", "sys", "mnt", "etc", "tmp", "lib", "lib/modules"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", INIT.encode(), 0o755)
    cpio.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    cpio.file("etc/run-script", RUN_SCRIPT.encode(), 0o755)
    names = []
    for ko in modules:
        cpio.file(f"lib/modules/{ko.name}", ko.read_bytes())
        names.append(ko.name)
    cpio.file("etc/modules", ("\n".join(names) + "\n").encode())
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


def build(cache_dir: Path, kernel_package: str | None = None) -> TestImage:
    """Build (or reuse from ``cache_dir``) the kernel, initramfs and disks; one builder at a
    time per cache (two starts, or the suite's parallel workers, may share it)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(cache_dir, kernel_package)


def _build(cache_dir: Path, kernel_package: str | None) -> TestImage:
    kernel_package = kernel_package or resolve_kernel_package()
    kdeb = fetch_deb(cache_dir / "debs", kernel_package)
    bdeb = fetch_deb(cache_dir / "debs", "busybox-static")
    ktree = unpack(kdeb, cache_dir / "tree" / kdeb.stem)
    btree = unpack(bdeb, cache_dir / "tree" / bdeb.stem)
    vmlinuz = sorted((ktree / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise BuildError(f"{kdeb.name} has no /boot/vmlinuz-*")
    version = vmlinuz[-1].name.removeprefix("vmlinuz-")
    moddir = ktree / "lib" / "modules" / version
    busybox = btree / "bin" / "busybox"
    if not busybox.exists():
        raise BuildError(f"{bdeb.name} has no /bin/busybox")

    # Rebuild when the inputs or the init scripts change.
    scripts = f"{INIT}|{UDHCPC_SCRIPT}|{RUN_SCRIPT}"
    key = hashlib.sha256(f"{kdeb.name}|{bdeb.name}|{scripts}|{WANTED_MODULES}".encode()).hexdigest()[:16]
    out = cache_dir / "out" / key
    kernel, ramdisk, disk, qcow2 = out / "vmlinuz", out / "initrd.gz", out / "disk.raw", out / "disk.qcow2"
    if not (out / ".done").exists():
        log.info("test_image_step", step=f"building the initramfs and disks for kernel {version}", out=str(out))
        tmp = cache_dir / "out" / f".{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copyfile(vmlinuz[-1], tmp / "vmlinuz")
        (tmp / "initrd.gz").write_bytes(build_initramfs(busybox, moddir))
        with open(tmp / "disk.raw", "wb") as f:
            f.truncate(1024 * 1024)
        if shutil.which("qemu-img"):
            _run("qemu-img", "create", "-q", "-f", "qcow2", tmp / "disk.qcow2", "64M")
        (tmp / ".done").write_text(version)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return TestImage(kernel, ramdisk, disk, qcow2 if qcow2.exists() else None, version)


# ---------------------------------------------------------------------- upload

async def _token(session: aiohttp.ClientSession, url: str, user: str, password: str, project: str) -> str:
    body = {"auth": {
        "identity": {"methods": ["password"],
                     "password": {"user": {"name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}},
    }}
    async with session.post(f"{url}/identity/v3/auth/tokens", json=body) as r:
        if r.status != 201:
            raise BuildError(f"login as {user} failed: {r.status} {await r.text()}")
        return r.headers["X-Subject-Token"]


async def _create(session: aiohttp.ClientSession, images: str, headers: dict, meta: dict) -> str:
    async with session.post(images, json=meta, headers=headers) as r:
        if r.status != 201:
            raise BuildError(f"create image {meta['name']}: {r.status} {await r.text()}")
        return (await r.json())["id"]


async def register_boot_set(session: aiohttp.ClientSession, images: str, headers: dict, *,
                            names: dict[str, str], disks: dict[str, tuple[str, str]], cmdline: str,
                            properties: dict, visibility: str = "public") -> dict[str, str]:
    """Create the records (``queued``, no data yet) of a kernel, a ramdisk and the disks booted
    with them: ``disks`` maps a kind to (disk_format, container_format); each disk image gets
    ``kernel_id``, ``ramdisk_id`` and ``os_command_line``, and every image ``properties``.
    Returns {"kernel"|"ramdisk"|<kind>: image id}, the images named after ``names[kind]``."""
    common = {"visibility": visibility, **properties}
    ids = {kind: await _create(session, images, headers, {"name": names[kind], "disk_format": fmt,
                                                          "container_format": fmt, **common})
           for kind, fmt in (("kernel", "aki"), ("ramdisk", "ari"))}
    boot = {"kernel_id": ids["kernel"], "ramdisk_id": ids["ramdisk"], "os_command_line": cmdline}
    for kind, (disk_format, container_format) in disks.items():
        ids[kind] = await _create(session, images, headers, {
            "name": names[kind], "disk_format": disk_format, "container_format": container_format,
            **common, **boot})
    return ids


async def upload_files(session: aiohttp.ClientSession, images: str, headers: dict, ids: dict[str, str],
                       files: dict[str, Path]) -> None:
    """Upload each kind's file into its registered image (``saving``, then ``active``)."""
    for kind, path in files.items():
        log.info("image_uploading", image_id=ids[kind], file=str(path), bytes=path.stat().st_size)
        with open(path, "rb") as f:
            async with session.put(f"{images}/{ids[kind]}/file", data=f,
                                   headers={**headers, "Content-Type": "application/octet-stream"}) as r:
                if r.status != 204:
                    raise BuildError(f"upload {path.name}: {r.status} {await r.text()}")
        log.info("image_active", image_id=ids[kind])


async def upload_boot_set(url: str, user: str, password: str, project: str, *, names: dict[str, str],
                          kernel: Path, ramdisk: Path, disks: dict[str, tuple[Path, str, str]],
                          cmdline: str, properties: dict, token: str | None = None,
                          visibility: str = "public") -> dict[str, str]:
    """Register, then upload, a kernel, a ramdisk and the disks booted with them through the
    image API (see :func:`register_boot_set`); ``disks`` maps a kind to (file, disk_format,
    container_format). Returns {"kernel"|"ramdisk"|<kind>: image id}."""
    url = url.rstrip("/")
    async with aiohttp.ClientSession() as session:
        token = token or await _token(session, url, user, password, project)
        headers = {"X-Auth-Token": token}
        images = f"{url}/image/v2/images"
        ids = await register_boot_set(session, images, headers, names=names, cmdline=cmdline,
                                      disks={kind: formats for kind, (_, *formats) in disks.items()},
                                      properties=properties, visibility=visibility)
        files = {"kernel": kernel, "ramdisk": ramdisk, **{kind: path for kind, (path, *_) in disks.items()}}
        await upload_files(session, images, headers, ids, files)
        return ids


async def upload(image: TestImage, url: str, user: str, password: str, project: str = "admin",
                 *, token: str | None = None, visibility: str = "public") -> dict[str, str]:
    """Upload the test image through the image API; returns {"kernel"|"ramdisk"|"ami"|"qcow2": id}."""
    disks = {"ami": (image.disk, "ami", "ami")}
    if image.qcow2 is not None:
        disks["qcow2"] = (image.qcow2, "qcow2", "bare")
    return await upload_boot_set(url, user, password, project, names=NAMES, kernel=image.kernel,
                                 ramdisk=image.ramdisk, disks=disks, cmdline=image.cmdline,
                                 properties={"os_distro": "novalite-test"}, token=token,
                                 visibility=visibility)


def upload_as_admin(config, url: str | None, upload_fn, names: dict[str, str]) -> int:
    """Run ``upload_fn(url, admin_password)`` (a coroutine function) against the configured cloud
    and list the images it made (``names[kind]`` and id); the exit code, 1 after saying why not."""
    from novalite.bootstrap import credentials_file

    creds_path = credentials_file(config)
    if not creds_path.exists():
        print(f"novalite: {creds_path} not found: run `novalite serve` (or bootstrap) first", file=sys.stderr)
        return 1
    creds = json.loads(creds_path.read_text())
    try:
        ids = asyncio.run(upload_fn(url or config.public_url, creds["admin"]))
    except (BuildError, aiohttp.ClientError) as exc:
        print(f"novalite: {exc}", file=sys.stderr)
        return 1
    for kind, image_id in ids.items():
        print(f"{names[kind]:24} {image_id}")
    return 0


def main(config, args: argparse.Namespace) -> int:
    """CLI entry: build, then write to ``--output`` or upload to the configured cloud as admin."""
    cache = Path(args.cache_dir) if args.cache_dir else config.state_dir / "cache" / "testimage"
    try:
        image = build(cache, args.kernel_package)
    except BuildError as exc:
        print(f"novalite: {exc}", file=sys.stderr)
        return 1
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        for src in (image.kernel, image.ramdisk, image.disk, image.qcow2):
            if src is not None:
                shutil.copyfile(src, out / src.name)
        (out / "cmdline").write_text(image.cmdline + "\n")
        print(f"wrote {out}: vmlinuz ({image.kernel_version}), initrd.gz, disk.raw"
              f"{', disk.qcow2' if image.qcow2 else ''}; cmdline {image.cmdline!r}")
        return 0
    return upload_as_admin(config, args.url, lambda url, password: upload(image, url, "admin", password), NAMES)


async def ensure_uploaded(config, pool) -> dict[str, str] | None:
    """First start of `novalite serve`: the test guest, unless images exist.

    Runs in the background once the server listens: the images are registered at once
    (``queued``, so the image list shows them coming), then built (each step a log line) and
    uploaded (``saving``, then ``active``). Returns their ids; None when images existed or the
    test guest could not be made: a machine that cannot fetch the Debian packages only gets a
    warning (the cloud works without it) and no image is left behind."""
    from novalite.bootstrap import credentials_file

    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id::text AS id, name, status FROM images")
    # A stop during an earlier first start left the test set queued or saving: redo it.
    interrupted = [r["id"] for r in rows if r["name"] in NAMES.values() and r["status"] in ("queued", "saving")]
    if len(rows) > len(interrupted):
        return None
    url = config.public_url
    images = f"{url}/image/v2/images"
    disks = {"ami": ("ami", "ami"), **({"qcow2": ("qcow2", "bare")} if shutil.which("qemu-img") else {})}
    ids: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        try:
            await _wait_serving(session, url)
            creds = json.loads(credentials_file(config).read_text())
            headers = {"X-Auth-Token": await _token(session, url, "admin", creds["admin"], "admin")}
            for image_id in interrupted:
                async with session.delete(f"{images}/{image_id}", headers=headers):
                    pass
            if interrupted:
                log.info("test_image_interrupted", removed=len(interrupted), fix="building it again")
            ids = await register_boot_set(session, images, headers, names=NAMES, disks=disks, cmdline=CMDLINE,
                                          properties={"os_distro": "novalite-test"})
            log.info("test_image_registered", status="queued", images=[NAMES[k] for k in ids])
            cache = config.state_dir / "cache" / "testimage"
            log.info("test_image_building", cache=str(cache))
            image = await asyncio.to_thread(build, cache)
            files = {"kernel": image.kernel, "ramdisk": image.ramdisk, "ami": image.disk}
            if "qcow2" in ids and image.qcow2 is not None:
                files["qcow2"] = image.qcow2
            await upload_files(session, images, headers, ids, files)
        except (BuildError, aiohttp.ClientError, OSError, KeyError) as exc:
            log.warning("test_image_failed", error=str(exc), fix="`novalite image build-test` retries")
            for image_id in ids.values():
                async with session.delete(f"{images}/{image_id}", headers=headers):
                    pass
            return None
    log.info("test_image_active", image=NAMES["ami"], image_id=ids["ami"])
    return ids


async def _wait_serving(session: aiohttp.ClientSession, url: str, timeout: float = 30) -> None:
    """Until this server answers HTTP at ``url`` (it runs once the listener is up)."""
    for _ in range(int(timeout * 10)):
        try:
            async with session.get(f"{url}/image") as r:
                if r.status < 500:
                    return
        except aiohttp.ClientError:
            await asyncio.sleep(0.1)
