"""``novalite image build-cloud``: a small Debian 12 cloud image, built from Debian's packages.

``mmdebstrap --variant=minbase`` installs bookworm from deb.debian.org with
:data:`PACKAGES` (cloud-init, openssh-server, the ``linux-image-cloud-amd64``
kernel and its initramfs, ifupdown + dhclient for cloud-init's network config),
without recommends, documentation, man pages or locales. The root tree becomes
an ext4 filesystem (label :data:`ROOT_LABEL`, no partition table: cloud-init's
resizefs grows it to the flavor's disk) in a compressed qcow2. It boots as
kernel/ramdisk images (the kernel and initrd.img taken from the tree's /boot),
uploaded as ``debian-12-cloud-kernel``/``-ramdisk`` and ``debian-12-cloud``
(qcow2) with :data:`CMDLINE` (the console on ttyS0, where cloud-init's final
message lands) and ``hw_cdrom_bus=ide`` (the cloud kernel has no AHCI driver for
a SATA config drive) through the test image's upload path.

cloud-init only looks for OpenStack: the config drive (label ``config-2``) or the
metadata service at 169.254.169.254 (it recognises Nova by the SMBIOS product
name). The default user is Debian's ``debian`` (sudo without a password, the
keypair's key in ``/home/debian/.ssh/authorized_keys``).

Everything is cached under ``<cache>/out/<key>``, the key a hash of what the image
contains (suite, packages, files written, command line), so a second build is instant.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from novalite.image.testimage import BuildError, _run, upload_as_admin, upload_boot_set

DEFAULT_CACHE = Path("/var/tmp/novalite-cloudimage-cache")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# The point release plus its updates and security fixes (the kernel among them), also the guest's apt sources.
SOURCES = (
    f"deb {MIRROR} {SUITE} main",
    f"deb {MIRROR} {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
ROOT_LABEL = "debian-root"
CMDLINE = f"root=LABEL={ROOT_LABEL} ro console=tty0 console=ttyS0,115200n8"
ROOT_SIZE = "1G"  # the image's virtual size: fits m1.tiny; resizefs grows it on bigger flavors
PACKAGES = (
    "linux-image-cloud-amd64", "initramfs-tools", "systemd-sysv", "udev", "dbus",
    "cloud-init", "openssh-server", "sudo", "ifupdown", "isc-dhcp-client", "iproute2",
    "netbase", "e2fsprogs", "ca-certificates",
)
# dpkg drops these paths as it unpacks (copyright files stay).
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)
NAMES = {
    "kernel": "debian-12-cloud-kernel",
    "ramdisk": "debian-12-cloud-ramdisk",
    "qcow2": "debian-12-cloud",
}
PROPERTIES = {
    "os_distro": "debian", "os_version": "12", "os_type": "linux", "os_admin_user": "debian",
    "hw_qemu_guest_agent": "no", "min_disk": 1, "min_ram": 256,
    # Debian's cloud kernel has no AHCI driver: the config drive goes on IDE (Nova's hw_cdrom_bus).
    "hw_cdrom_bus": "ide",
}
# Files written into the tree after the packages: path -> content.
FILES = {
    "etc/fstab": f"LABEL={ROOT_LABEL} / ext4 defaults,errors=remount-ro 0 1\n",
    "etc/cloud/cloud.cfg.d/90-novalite.cfg": (
        "# novalite: only OpenStack's datasources (config drive, then 169.254.169.254).\n"
        "datasource_list: [ ConfigDrive, OpenStack, None ]\n"
        "datasource:\n"
        "  OpenStack:\n"
        "    max_wait: 60\n"
        "    timeout: 10\n"
        "locale: C.UTF-8\n"
    ),
    "etc/network/interfaces": (
        "# cloud-init writes the NICs to /etc/network/interfaces.d/50-cloud-init\n"
        "source /etc/network/interfaces.d/*\n"
        "auto lo\niface lo inet loopback\n"
    ),
    "etc/hostname": "debian\n",
    "etc/machine-id": "",  # empty: systemd makes one per guest at first boot
}


@dataclass(frozen=True)
class CloudImage:
    """The built files and what the cloud needs to know about them."""

    kernel: Path
    ramdisk: Path
    qcow2: Path
    kernel_version: str
    cmdline: str = CMDLINE


def cache_key() -> str:
    """A hash of everything that decides the image's contents."""
    parts = [SUITE, *SOURCES, ROOT_LABEL, CMDLINE, ROOT_SIZE, *PACKAGES, *DPKG_EXCLUDES,
             *(f"{k}={v}" for k, v in sorted(FILES.items()))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _stage(log: Callable[[str], None], start: float, what: str) -> None:
    log(f"[{time.monotonic() - start:6.1f}s] {what}")


def bootstrap_tree(root: Path) -> None:
    """mmdebstrap bookworm with :data:`PACKAGES` into the (absent) directory ``root``."""
    cmd: list[str | Path] = [
        "mmdebstrap", "--variant=minbase", "--mode=root", "--include=" + ",".join(PACKAGES),
        "--aptopt=APT::Install-Recommends \"false\"", "--components=main",
    ]
    cmd += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
    cmd += ["--customize-hook=chroot \"$1\" apt-get clean", SUITE, root, *SOURCES]
    if shutil.which("mmdebstrap") is None:
        raise BuildError("mmdebstrap not found: apt-get install mmdebstrap (scripts/setup-system.sh does)")
    _run(*cmd)


def configure_tree(root: Path) -> str:
    """Write :data:`FILES`, drop the host's leftovers; returns the kernel version in /boot."""
    for rel, content in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    for leftover in ("etc/resolv.conf", "var/lib/dbus/machine-id"):
        (root / leftover).unlink(missing_ok=True)
    for key in root.glob("etc/ssh/ssh_host_*"):  # each guest makes its own (cloud-init's ssh module)
        key.unlink()
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BuildError(f"{root}/boot has no vmlinuz-*: did linux-image-cloud-amd64 install?")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    if not (root / "boot" / f"initrd.img-{version}").exists():
        raise BuildError(f"{root}/boot has no initrd.img-{version}")
    return version


def make_disk(root: Path, raw: Path, qcow2: Path) -> None:
    """An ext4 filesystem of ``root`` (``mkfs.ext4 -d``, no mount needed), as a compressed qcow2."""
    with open(raw, "wb") as f:
        f.truncate(0)
    _run("mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", root, raw, ROOT_SIZE)
    _run("qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", raw, qcow2)
    raw.unlink()


def build(cache_dir: Path, log: Callable[[str], None] = print) -> CloudImage:
    """Build (or reuse from ``cache_dir``) the kernel, initrd and qcow2 root disk, logging each stage."""
    out = Path(cache_dir) / "out" / cache_key()
    kernel, ramdisk, qcow2 = out / "vmlinuz", out / "initrd.img", out / "disk.qcow2"
    if (out / ".done").exists():
        log(f"debian-12-cloud: cached in {out}")
        return CloudImage(kernel, ramdisk, qcow2, (out / ".done").read_text().strip())
    start = time.monotonic()
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _stage(log, start, f"mmdebstrap {SUITE} from {MIRROR} ({len(PACKAGES)} packages and their "
               "dependencies; a few minutes)")
        bootstrap_tree(tmp / "root")
        _stage(log, start, "configuring cloud-init (ConfigDrive, OpenStack), fstab, first-boot state")
        version = configure_tree(tmp / "root")
        shutil.copyfile(tmp / "root" / "boot" / f"vmlinuz-{version}", tmp / "vmlinuz")
        shutil.copyfile(tmp / "root" / "boot" / f"initrd.img-{version}", tmp / "initrd.img")
        _stage(log, start, f"ext4 root filesystem ({ROOT_SIZE}) -> compressed qcow2")
        make_disk(tmp / "root", tmp / "disk.raw", tmp / "disk.qcow2")
        shutil.rmtree(tmp / "root")
        (tmp / ".done").write_text(version)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in out.parent.iterdir():  # images of older recipes: ~170 MiB each
        if stale != out and not stale.name.startswith("."):
            shutil.rmtree(stale, ignore_errors=True)
    size_mb = qcow2.stat().st_size / 2**20
    _stage(log, start, f"built {out}: kernel {version}, disk.qcow2 {size_mb:.0f} MiB")
    return CloudImage(kernel, ramdisk, qcow2, version)


async def upload(image: CloudImage, url: str, user: str, password: str, project: str = "admin",
                 *, token: str | None = None) -> dict[str, str]:
    """Upload as ``debian-12-cloud`` (qcow2) booted with its kernel/ramdisk images; returns the ids."""
    return await upload_boot_set(url, user, password, project, names=NAMES, kernel=image.kernel,
                                 ramdisk=image.ramdisk, disks={"qcow2": (image.qcow2, "qcow2", "bare")},
                                 cmdline=image.cmdline, properties=PROPERTIES, token=token)


def _log(line: str) -> None:
    print(f"novalite: {line}", file=sys.stderr, flush=True)


def main(config, args: argparse.Namespace) -> int:
    """CLI entry: build (or reuse) the image, then upload it to the configured cloud as admin."""
    cache = Path(args.cache_dir) if args.cache_dir else DEFAULT_CACHE
    try:
        image = build(cache, _log)
    except BuildError as exc:
        print(f"novalite: {exc}", file=sys.stderr)
        return 1
    _log("uploading debian-12-cloud (kernel, ramdisk, qcow2)")
    return upload_as_admin(config, args.url, lambda url, password: upload(image, url, "admin", password), NAMES)

