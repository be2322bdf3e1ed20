"""Local disks of an instance on a real host: a per-host image cache and qcow2 overlays.

Layout under ``<state dir>/instances/<host>/``:

- ``_base/<image id>``: the image as fetched once from the image store
  (concurrent boots of one image wait for the same fetch);
- ``<uuid>/disk``: qcow2 overlay on the cached base, resized to the flavor's root disk;
- ``<uuid>/disk.eph0``, ``disk.swap``: ephemeral and swap disks from the flavor;
- ``<uuid>/kernel``, ``ramdisk``: for images that boot a kernel directly (aki/ari);
- ``<uuid>/disk.config``: the config drive; ``console.log``: the serial console.

Simulated (libvirt test driver) hosts describe the same disks but write no files.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from novalite.virt.driver import DiskSpec

log = structlog.get_logger(__name__)


class DiskError(Exception):
    """A disk could not be prepared (missing image data, qemu-img failure)."""


@dataclass
class PreparedDisks:
    disks: list[DiskSpec] = field(default_factory=list)
    kernel: str | None = None
    ramdisk: str | None = None
    cmdline: str | None = None
    cdrom_bus: str = "sata"  # the image's hw_cdrom_bus when it is one of CDROM_TARGETS

    def add_config_drive(self, path: Path | str) -> None:
        """The config drive as the cdrom on :attr:`cdrom_bus` (sda on sata, hda on ide)."""
        self.disks.append(DiskSpec(path=str(path), device="cdrom", bus=self.cdrom_bus,
                                   target_dev=CDROM_TARGETS[self.cdrom_bus], driver_type="raw"))


# Buses the config drive may use (Nova's hw_cdrom_bus image property): ide for guest kernels
# without an AHCI driver (Debian's cloud kernel); anything else keeps sata.
CDROM_TARGETS = {"sata": "sda", "ide": "hda"}


async def qemu_img(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise DiskError(f"qemu-img {' '.join(args)}: {err.decode().strip()}")


class ImageCache:
    """Images fetched once per host; a fetch in progress is shared by everyone who needs it."""

    def __init__(self, base_dir: Path, image_root: Path) -> None:
        self.base_dir = base_dir
        self.image_root = image_root
        self._fetches: dict[str, asyncio.Task] = {}

    def path(self, image_id: str) -> Path:
        """The cached base image: named by its canonical uuid, never by a path (ValueError)."""
        return self.base_dir / str(uuidlib.UUID(image_id))

    async def fetch(self, image_id: str) -> Path:
        target = self.path(image_id)
        if target.exists():
            return target
        task = self._fetches.get(image_id)
        if task is None:
            task = asyncio.create_task(self._fetch(image_id, target))
            self._fetches[image_id] = task
            task.add_done_callback(lambda _t: self._fetches.pop(image_id, None))
        return await asyncio.shield(task)

    async def _fetch(self, image_id: str, target: Path) -> Path:
        source = self.image_root / image_id
        if not source.is_file():
            raise DiskError(f"image {image_id} has no data in the image store")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")

        def copy() -> None:
            try:
                os.link(source, part)  # same filesystem: no copy at all
            except OSError:
                shutil.copyfile(source, part)
            os.chmod(part, 0o644)
            os.replace(part, target)

        await asyncio.to_thread(copy)
        log.info("image_cached", image_id=image_id, path=str(target))
        return target


def instance_dir(root: Path, uuid: str) -> Path:
    """An instance's directory: its canonical uuid under ``root`` (ValueError for anything else)."""
    return root / str(uuidlib.UUID(uuid))


async def prepare_local_disks(
    *,
    cache: ImageCache,
    inst_dir: Path,
    image: dict,
    kernel_id: str,
    ramdisk_id: str,
    flavor: dict,
    write_files: bool,
    keep_ephemeral: bool = False,
    root_file: bool = True,
) -> PreparedDisks:
    """Root (overlay on the cached image), ephemeral, swap, and kernel/ramdisk for direct boot.

    ``keep_ephemeral`` (a rebuild's preserve_ephemeral) leaves an existing ephemeral disk as it is;
    without ``root_file`` (the root is a volume) the root keeps its place (vda) but no file is made.
    """
    out = PreparedDisks()
    letters = iter("abcdefghijklmnop")
    root = inst_dir / "disk"
    out.disks.append(DiskSpec(path=str(root), target_dev=f"vd{next(letters)}"))
    eph = swap = None
    if flavor.get("ephemeral_gb"):
        eph = inst_dir / "disk.eph0"
        out.disks.append(DiskSpec(path=str(eph), target_dev=f"vd{next(letters)}"))
    if flavor.get("swap"):
        swap = inst_dir / "disk.swap"
        out.disks.append(DiskSpec(path=str(swap), target_dev=f"vd{next(letters)}"))
    props = image.get("properties") or {}
    if props.get("hw_cdrom_bus") in CDROM_TARGETS:
        out.cdrom_bus = props["hw_cdrom_bus"]
    if kernel_id:
        out.kernel = str(inst_dir / "kernel")
        out.cmdline = str(props.get("os_command_line") or "console=ttyS0")
        if ramdisk_id:
            out.ramdisk = str(inst_dir / "ramdisk")
    if not write_files:
        return out
    inst_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(inst_dir, 0o755)
    image_id = image.get("id") or ""
    fmt = "qcow2" if image.get("disk_format") == "qcow2" else "raw"
    if root_file and image_id:
        base = await cache.fetch(image_id)
        await qemu_img("create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base), str(root))
        if flavor.get("root_gb"):
            size = await _virtual_size(base)
            wanted = flavor["root_gb"] * 1024**3
            if wanted > size:
                await qemu_img("resize", "-q", str(root), str(wanted))
    elif root_file:
        await qemu_img("create", "-q", "-f", "qcow2", str(root), f"{max(1, flavor.get('root_gb') or 1)}G")
    if eph is not None and not (keep_ephemeral and eph.exists()):
        await qemu_img("create", "-q", "-f", "qcow2", str(eph), f"{flavor['ephemeral_gb']}G")
    if swap is not None:
        await qemu_img("create", "-q", "-f", "qcow2", str(swap), f"{flavor['swap']}M")
    for ref, name in ((kernel_id, "kernel"), (ramdisk_id, "ramdisk")):
        if ref:
            src = await cache.fetch(ref)
            await asyncio.to_thread(shutil.copyfile, src, inst_dir / name)
    return out


async def _virtual_size(path: Path) -> int:
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", "info", "--output=json", str(path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise DiskError(f"qemu-img info {path}: {err.decode().strip()}")
    import json

    return int(json.loads(out)["virtual-size"])


async def remove_instance_files(inst_dir: Path) -> None:
    """Delete everything an instance had on this host (idempotent)."""
    await asyncio.to_thread(shutil.rmtree, inst_dir, True)
