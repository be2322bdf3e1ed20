"""Local disks of an instance: volumes of its host's instance pool, reached only through libvirt.

Every host (the local one too) has one ``dir`` storage pool for instance files,
``<prefix>instances-<host>`` at ``[compute] instance_pool_target/<pool name>`` on the
host; nothing of an instance lives on novalite's own filesystem, and no domain names
a path of this machine. Volumes, flat in the pool:

- ``_base_<image id>``: the image, uploaded once per host (``virStorageVolUpload``)
  and checked against Glance's checksum by reading it back; concurrent boots of one
  image wait for the same upload; removed when no instance of the host has used it for
  ``[image_cache] remove_unused_original_minimum_age_seconds``;
- ``<uuid>_disk``: qcow2 overlay on the cached image, the flavor's root size;
- ``<uuid>_disk.eph0``, ``<uuid>_disk.swap``: ephemeral and swap disks from the flavor;
- ``<uuid>_disk.config``: the config drive, built here and uploaded;
- ``<uuid>_console.log``: the serial console, written by the host's virtlogd, read
  back with ``virStorageVolDownload``.

Direct-boot kernels and ramdisks are the cached image volumes themselves.
Simulated (libvirt test driver) hosts describe the same disks but make no volumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import structlog

from novalite.virt.driver import DiskSpec, PoolUsage, StoragePoolSpec, VirtDriver, VolumeInfo

log = structlog.get_logger(__name__)

IMAGE_PREFIX = "_base_"  # the image cache's volumes: _base_<image id>
GiB = 1024**3


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


class InstanceStore:
    """The instance pool of one host: its image cache and the instances' volumes."""

    def __init__(self, driver: VirtDriver, pool: StoragePoolSpec, simulated: bool, image_root: Path,
                 db: asyncpg.Pool | None, scratch: Path) -> None:
        self.driver = driver
        self.pool = pool
        self.simulated = simulated
        self.image_root = image_root  # novalite's image store: what uploads read
        self.db = db
        self.scratch = scratch  # this machine's working files (a config drive before its upload)
        self._fetches: dict[str, asyncio.Task] = {}
        self._verified: set[str] = set()  # image volumes checked since start
        self._unused_since: dict[str, float] = {}

    # -- names ---------------------------------------------------------------------
    @staticmethod
    def volume(uuid: str, name: str) -> str:
        """An instance volume's name: the canonical uuid, "_", the file's name (ValueError for a bad uuid)."""
        return f"{uuidlib.UUID(uuid)}_{name}"

    def path(self, uuid: str, name: str) -> str:
        """Where the host keeps the instance volume ``name`` (the path its domain names)."""
        return f"{self.pool.target}/{self.volume(uuid, name)}"

    @staticmethod
    def image_volume(image_id: str) -> str:
        return f"{IMAGE_PREFIX}{uuidlib.UUID(image_id)}"

    def image_path(self, image_id: str) -> str:
        return f"{self.pool.target}/{self.image_volume(image_id)}"

    # -- the pool ------------------------------------------------------------------
    async def ensure_pool(self) -> None:
        """Define, build and start the host's instance pool (idempotent; a simulated host's is
        the test driver's, in memory, where nothing is written)."""
        await self.driver.ensure_pool(self.pool)

    async def usage(self) -> PoolUsage:
        """The instance pool's capacity, allocation and free space as the host measures them."""
        return await self.driver.pool_usage(self.pool.name)

    async def image(self, image_id: str) -> VolumeInfo:
        """The host's cached, verified copy of the image: uploaded once, shared by concurrent callers."""
        task = self._fetches.get(image_id)
        if task is None:
            task = asyncio.create_task(self._image(image_id))
            self._fetches[image_id] = task
            task.add_done_callback(lambda _t: self._fetches.pop(image_id, None))
        return await asyncio.shield(task)

    async def _image(self, image_id: str) -> VolumeInfo:
        name = self.image_volume(image_id)
        info = await self.driver.volume_info(self.pool.name, name)
        if info is not None and (image_id in self._verified or await self._matches(image_id, name)):
            self._verified.add(image_id)
            return info
        source = self.image_root / str(uuidlib.UUID(image_id))
        if not source.is_file():
            raise DiskError(f"image {image_id} has no data in the image store")
        size = (await asyncio.to_thread(source.stat)).st_size
        await self.driver.make_volume(self.pool.name, name, size, "raw")
        await self.driver.upload_volume(self.pool.name, name, source)
        await self.driver.refresh_pool(self.pool.name)  # libvirt now probes the image's own format
        if not await self._matches(image_id, name):
            await self.driver.delete_volume(self.pool.name, name)
            raise DiskError(f"image {image_id} arrived on the host with another checksum")
        self._verified.add(image_id)
        info = await self.driver.volume_info(self.pool.name, name)
        if info is None:
            raise DiskError(f"image {image_id} is gone from the host's pool")
        log.info("image_cached", image_id=image_id, volume=name, bytes=size)
        return info

    async def _matches(self, image_id: str, name: str) -> bool:
        """Whether the host's copy has Glance's checksum (md5) of the image, read back through a stream."""
        expected = None
        if self.db is not None:
            async with self.db.acquire() as conn:
                expected = await conn.fetchval("SELECT checksum FROM images WHERE id::text = $1", image_id)
        digest = hashlib.md5(usedforsecurity=False)

        async def feed(chunk: bytes) -> None:
            digest.update(chunk)

        await self.driver.download_volume(self.pool.name, name, feed)
        ok = expected is None or digest.hexdigest() == expected
        if not ok:
            log.warning("image_checksum_mismatch", image_id=image_id, expected=expected, got=digest.hexdigest())
        return ok

    async def overlay(self, uuid: str, name: str, image_id: str, size: int) -> str:
        """A qcow2 volume on the cached image, ``size`` bytes or the image's own size if larger."""
        await self.image(image_id)
        return await self.driver.make_volume(self.pool.name, self.volume(uuid, name), size, "qcow2",
                                             backing=self.image_volume(image_id))

    async def blank(self, uuid: str, name: str, size: int) -> str:
        """An empty qcow2 volume of ``size`` bytes."""
        return await self.driver.make_volume(self.pool.name, self.volume(uuid, name), size, "qcow2")

    async def exists(self, uuid: str, name: str) -> bool:
        return await self.driver.volume_info(self.pool.name, self.volume(uuid, name)) is not None

    async def upload(self, uuid: str, name: str, local: Path) -> str:
        """The file ``local`` of this machine as the raw volume ``name`` of the instance."""
        size = (await asyncio.to_thread(local.stat)).st_size
        path = await self.driver.make_volume(self.pool.name, self.volume(uuid, name), size, "raw")
        await self.driver.upload_volume(self.pool.name, self.volume(uuid, name), local)
        return path

    async def remove(self, uuid: str, names: Iterable[str] | None = None) -> list[str]:
        """Delete the instance's volumes (``names`` only, when given); idempotent. Returns what went."""
        if self.simulated:
            return []
        prefix = self.volume(uuid, "")
        wanted = None if names is None else {self.volume(uuid, n) for n in names}
        gone = [v for v in await self.driver.list_volumes(self.pool.name)
                if v.startswith(prefix) and (wanted is None or v in wanted)]
        for v in gone:
            await self.driver.delete_volume(self.pool.name, v)
        if gone:
            log.info("instance_volumes_removed", instance_uuid=uuid, volumes=gone)
        return gone

    async def names(self, uuid: str) -> list[str]:
        """The instance's volumes here, by their short names ("disk", "disk.config", ...)."""
        if self.simulated:
            return []
        prefix = self.volume(uuid, "")
        return [v[len(prefix):] for v in await self.driver.list_volumes(self.pool.name) if v.startswith(prefix)]

    async def grow(self, uuid: str, name: str, size: int) -> None:
        """Grow the instance's volume to ``size`` bytes when it is smaller (a resize up)."""
        if size:
            await self.driver.grow_volume(self.pool.name, self.volume(uuid, name), size)

    async def copy(self, uuid: str, names: Iterable[tuple[str, str]], dest: InstanceStore) -> None:
        """Copy the instance's volumes, (name here, name there) pairs, to ``dest`` (another host's
        pool, or this one), standalone: an overlay is flattened by the host first (its backing file
        is a path of this host). Between hosts the data streams through novalite (download here,
        upload there): the hosts share nothing."""
        for name, new_name in names:
            source = self.volume(uuid, name)
            target = dest.volume(uuid, new_name)
            info = await self.driver.volume_info(self.pool.name, source)
            if info is None:
                continue
            if dest is self:
                fmt = "qcow2" if info.format == "qcow2" else "raw"
                await self.driver.clone_volume(self.pool.name, source, target, 0, fmt)
                continue
            flat = f"{source}.xfer"
            if info.backing:
                await self.driver.clone_volume(self.pool.name, source, flat, 0, "qcow2")
                info = await self.driver.volume_info(self.pool.name, flat)
                source = flat
            try:
                await stream_volume(self.driver, self.pool.name, source, dest.driver, dest.pool.name, target,
                                    info.physical if info is not None else 0)
            finally:
                if source == flat:
                    await self.driver.delete_volume(self.pool.name, flat)
            log.info("instance_volume_copied", instance_uuid=uuid, volume=name, to=dest.pool.name)

    async def instance_uuids(self) -> set[str]:
        """Uuids that have volumes in the pool (recovery compares them with the database)."""
        if self.simulated:
            return set()
        out = set()
        for v in await self.driver.list_volumes(self.pool.name):
            head = v.split("_", 1)[0]
            with contextlib.suppress(ValueError):
                out.add(str(uuidlib.UUID(head)))
        return out

    async def prune_images(self, in_use: set[str], min_age: float, now: float | None = None) -> list[str]:
        """Remove cached images no instance of the host used for ``min_age`` seconds (Nova's image cache
        manager); an image first seen unused now is only remembered. Returns the image ids removed."""
        if self.simulated:
            return []
        now = time.monotonic() if now is None else now
        cached = {v[len(IMAGE_PREFIX):] for v in await self.driver.list_volumes(self.pool.name)
                  if v.startswith(IMAGE_PREFIX)}
        removed = []
        for image_id in cached - in_use - set(self._fetches):
            since = self._unused_since.setdefault(image_id, now)
            if now - since >= min_age:
                await self.driver.delete_volume(self.pool.name, self.image_volume(image_id))
                self._verified.discard(image_id)
                self._unused_since.pop(image_id, None)
                removed.append(image_id)
        for image_id in in_use:
            self._unused_since.pop(image_id, None)
        if removed:
            log.info("image_cache_pruned", images=removed)
        return removed


async def stream_volume(src: VirtDriver, src_pool: str, name: str, dst: VirtDriver, dst_pool: str, target: str,
                        size: int) -> str:
    """One volume's bytes from one host's pool into a new raw-created volume of another's (the
    target's format is probed by its pool afterwards, as for an uploaded image); the new one's path."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=8)

    async def put(chunk: bytes) -> None:
        await queue.put(chunk)

    async def chunks() -> AsyncIterator[bytes]:
        while (chunk := await queue.get()) is not None:
            yield chunk

    async def download() -> None:
        try:
            await src.download_volume(src_pool, name, put)
        finally:
            await queue.put(None)

    path = await dst.make_volume(dst_pool, target, size, "raw")
    await asyncio.gather(download(), dst.upload_volume(dst_pool, target, chunks()))
    await dst.refresh_pool(dst_pool)
    return path


async def prepare_local_disks(
    *,
    store: InstanceStore,
    uuid: str,
    image: dict,
    kernel_id: str,
    ramdisk_id: str,
    flavor: dict,
    write_files: bool,
    keep_ephemeral: bool = False,
    root_file: bool = True,
) -> PreparedDisks:
    """Root (overlay on the cached image), ephemeral, swap, and kernel/ramdisk for direct boot.

    Without ``write_files`` (or on a simulated host) the disks are only described.
    ``keep_ephemeral`` (a rebuild's preserve_ephemeral) leaves an existing ephemeral disk as it is;
    without ``root_file`` (the root is a volume) the root keeps its place (vda) but no volume is made.
    """
    out = PreparedDisks()
    letters = iter("abcdefghijklmnop")
    out.disks.append(DiskSpec(path=store.path(uuid, "disk"), target_dev=f"vd{next(letters)}"))
    for wanted, name in ((flavor.get("ephemeral_gb"), "disk.eph0"), (flavor.get("swap"), "disk.swap")):
        if wanted:
            out.disks.append(DiskSpec(path=store.path(uuid, name), target_dev=f"vd{next(letters)}"))
    props = image.get("properties") or {}
    if props.get("hw_cdrom_bus") in CDROM_TARGETS:
        out.cdrom_bus = props["hw_cdrom_bus"]
    if kernel_id:
        out.kernel = store.image_path(kernel_id)
        out.cmdline = str(props.get("os_command_line") or "console=ttyS0")
        if ramdisk_id:
            out.ramdisk = store.image_path(ramdisk_id)
    if not write_files or store.simulated:
        return out
    image_id = image.get("id") or ""
    root_size = (flavor.get("root_gb") or 0) * GiB
    if root_file and image_id:
        await store.overlay(uuid, "disk", image_id, root_size)
    elif root_file:
        await store.blank(uuid, "disk", max(GiB, root_size))
    if flavor.get("ephemeral_gb") and not (keep_ephemeral and await store.exists(uuid, "disk.eph0")):
        await store.blank(uuid, "disk.eph0", flavor["ephemeral_gb"] * GiB)
    if flavor.get("swap"):
        await store.blank(uuid, "disk.swap", flavor["swap"] * 1024**2)
    for ref in (kernel_id, ramdisk_id):
        if ref:
            await store.image(ref)
    return out
