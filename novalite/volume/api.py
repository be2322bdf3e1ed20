"""The volume service: volumes and snapshots in the hosts' storage pools, state in Postgres.

This module holds the volumes' own life (create, update, delete, snapshots,
quotas) and their data, made through each host's virt driver; what a build
does with volumes is in :mod:`novalite.volume.build`, plugging volumes into
running servers in :mod:`novalite.volume.attachments`.

Where volume data lives: in the storage pool of ONE compute host (recorded as
``volumes.host``). The rules that follow from it:

- a volume made through the volume API goes to ``volume.default_host`` (the
  first configured host by default); one made from a snapshot or another volume
  goes to its source's host;
- a volume is attached only to a server on its host: booting with an existing
  volume or a snapshot forces the server onto that host (two sources on two
  hosts: 400), and ``os-volume_attachments`` refuses a server elsewhere (400);
- volumes a build creates (image, blank, snapshot sources) are made on the host
  the scheduler chose.

A single-host lab, the main case, never notices.

State machine (Cinder's): creating → available → reserved → attaching → in-use →
detaching → available; error; deleting → gone (error_deleting when the pool
refuses). Each transition is one compare-and-set (``novalite.db.volumes``):
two boots or attaches racing for one volume both try ``available → reserved``
and exactly one wins. Quotas (volumes, gigabytes, snapshots) are counted from
live rows under the project's advisory lock, in the transaction that adds rows.
"""

from __future__ import annotations

import asyncio
import math
import uuid as uuidlib
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any

import asyncpg
import structlog

from novalite import exception, quota
from novalite.compute.disks import DiskError, stream_volume
from novalite.compute.host import ComputeHost
from novalite.config import Config
from novalite.context import RequestContext
from novalite.db import images as images_db
from novalite.db import volumes as q
from novalite.virt.driver import StoragePoolSpec, VirtDriver

log = structlog.get_logger(__name__)

RESOURCES = ("volumes", "gigabytes", "snapshots")
ROOT_DEV = "/dev/vda"
DEVICE_PREFIX = "/dev/vd"


class VolumeLimitExceeded(exception.OverLimit):
    """Cinder answers quota overruns with 413 overLimit."""


def vol_name(volume_id: str) -> str:
    return f"volume-{volume_id}"


def snap_name(snapshot_id: str) -> str:
    return f"snapshot-{snapshot_id}"


def normalise_device(name: str | None) -> str | None:
    if not name:
        return None
    return name if name.startswith("/dev/") else f"/dev/{name}"


def next_device(used: Iterable[str]) -> str:
    """The first /dev/vdX not in ``used`` (b..z, then aa..)."""
    taken = {normalise_device(u) for u in used if u}
    letters = "abcdefghijklmnopqrstuvwxyz"
    for i in range(1, 26 * 27):
        suffix = letters[i] if i < 26 else letters[i // 26 - 1] + letters[i % 26]
        dev = f"{DEVICE_PREFIX}{suffix}"
        if dev not in taken:
            return dev
    raise exception.Forbidden("The maximum allowed number of disk devices (702) to attach to a single instance has been exceeded.")




async def reserve(conn: asyncpg.Connection, volume_id: str, instance_uuid: uuidlib.UUID, **fields: Any
                  ) -> asyncpg.Record:
    """available → reserved for the instance, in one compare-and-set; 400 with Cinder's message otherwise."""
    try:
        return await q.compare_and_set(conn, volume_id, q.AVAILABLE, status=q.RESERVED, instance_uuid=instance_uuid,
                                       attachment_id=uuidlib.uuid4(), **fields)
    except q.VolumeStateConflict as conflict:
        actual = conflict.actual["status"] if conflict.actual else "deleted"
        raise exception.Invalid(
            f"Invalid volume: Volume {volume_id} status must be available or downloading to reserve, but the "
            f"current status is {actual}."
        ) from None


class PoolError(Exception):
    """A host has no storage pool here."""


class VolumeAPI:
    """Volumes and snapshots: rows in Postgres, data in the storage pool of their host."""

    def __init__(self, pool: asyncpg.Pool, config: Config, hosts: Mapping[str, ComputeHost]) -> None:
        self.pool = pool
        self.config = config
        self.cfg = config.volume
        self.hosts = hosts
        self._tasks: set[asyncio.Task] = set()

    # -- pools -----------------------------------------------------------------------
    def pool_def(self, host: str) -> StoragePoolSpec:
        cfg = self.cfg
        prefix = cfg.pool_prefix if cfg.pool_prefix is not None else self.config.networking.libvirt_prefix
        name = f"{prefix}{host}"
        if cfg.pool_type == "logical":
            if not cfg.pool_source:
                raise exception.NovaliteException("volume.pool_source (an LVM volume group) is required for logical pools")
            return StoragePoolSpec(name=name, type="logical", target=f"/dev/{cfg.pool_source}", source=cfg.pool_source)
        # On the host, never under novalite's state directory: a domain names only the host's paths.
        target = cfg.pool_target / host if cfg.pool_target else f"{self.config.compute.instance_pool_target}/{name}"
        return StoragePoolSpec(name=name, type="dir", target=str(target))

    async def ensure_pool(self, host: str) -> None:
        """Define and start the storage pool of one host (at start: as the host comes up)."""
        await self.hosts[host].driver.ensure_pool(self.pool_def(host))

    def storage(self, host: str | None) -> tuple[VirtDriver, StoragePoolSpec]:
        """The driver and the pool that hold the volumes of ``host``."""
        if host is None or host not in self.hosts:
            raise PoolError(f"no storage pool for host {host!r}")
        return self.hosts[host].driver, self.pool_def(host)

    def default_host(self) -> str:
        if self.cfg.default_host:
            return self.cfg.default_host
        if not self.config.hosts:
            raise exception.NovaliteException("no compute host to keep volumes on", code=503)
        return self.config.hosts[0].name

    # -- background work -------------------------------------------------------------
    def run_in_background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task:
        """Run volume work after the request answered; :meth:`wait_idle` waits for all of it."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        await self.wait_idle()

    # -- quotas ----------------------------------------------------------------------
    async def limits(self, conn: asyncpg.Connection, project_id: str) -> dict[str, int]:
        out = {r: getattr(self.cfg, r) for r in RESOURCES}
        for row in await conn.fetch(
            "SELECT resource, hard_limit FROM quotas WHERE project_id = $1 AND resource = ANY($2::text[])",
            project_id, list(RESOURCES),
        ):
            out[row["resource"]] = row["hard_limit"]
        return out

    async def check_quota(
        self, conn: asyncpg.Connection, project_id: str, *, volumes: int = 0, gigabytes: int = 0, snapshots: int = 0
    ) -> None:
        """Raise 413 when the adds do not fit; the caller holds the project's quota lock in its transaction."""
        await quota.lock_project(conn, project_id)
        limits = await self.limits(conn, project_id)
        used = await q.usage(conn, project_id)
        if volumes and limits["volumes"] != quota.UNLIMITED and used["volumes"] + volumes > limits["volumes"]:
            raise VolumeLimitExceeded(
                f"VolumeLimitExceeded: Maximum number of volumes allowed ({limits['volumes']}) exceeded for "
                "quota 'volumes'."
            )
        if snapshots and limits["snapshots"] != quota.UNLIMITED and used["snapshots"] + snapshots > limits["snapshots"]:
            raise VolumeLimitExceeded(
                f"SnapshotLimitExceeded: Maximum number of snapshots allowed ({limits['snapshots']}) exceeded"
            )
        if gigabytes and limits["gigabytes"] != quota.UNLIMITED and used["gigabytes"] + gigabytes > limits["gigabytes"]:
            raise VolumeLimitExceeded(
                "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed gigabytes quota. "
                f"Requested {gigabytes}G, quota is {limits['gigabytes']}G and {used['gigabytes']}G has been consumed."
            )

    # -- volumes through the volume API ----------------------------------------------
    async def create(
        self,
        ctx: RequestContext,
        *,
        size: int | None,
        name: str | None = None,
        description: str | None = None,
        metadata: dict | None = None,
        image_id: str | None = None,
        snapshot_id: str | None = None,
        source_volid: str | None = None,
        availability_zone: str | None = None,
    ) -> asyncpg.Record:
        """Insert the volume (creating) under quota, then make its data in the background."""
        host = self.default_host()
        source: dict[str, Any] = {}
        async with self.pool.acquire() as conn:
            if snapshot_id:
                snap = await q.get_snapshot(conn, snapshot_id)
                if snap is None or (snap["project_id"] != ctx.project_id and not ctx.is_admin):
                    raise exception.NotFound(f"Snapshot {snapshot_id} could not be found.")
                if snap["status"] != q.AVAILABLE:
                    raise exception.Invalid("Invalid snapshot: Originating snapshot status must be one of "
                                            "'available' values")
                size = size or snap["size"]
                if size < snap["size"]:
                    raise exception.Invalid(f"Invalid input received: Volume size '{size}'GB cannot be smaller "
                                            f"than the snapshot size {snap['size']}GB. They must be >= original "
                                            "snapshot size.")
                host, source = snap["host"], {"snapshot": snap}
            elif source_volid:
                src = await q.get(conn, source_volid)
                if src is None or (src["project_id"] != ctx.project_id and not ctx.is_admin):
                    raise exception.NotFound(f"Volume {source_volid} could not be found.")
                if src["status"] not in (q.AVAILABLE, q.IN_USE):
                    raise exception.Invalid("Invalid volume: Unable to clone volumes that are in an error state.")
                size = size or src["size"]
                if size < src["size"]:
                    raise exception.Invalid(f"Invalid input received: Volume size '{size}'GB cannot be smaller "
                                            f"than original volume size {src['size']}GB. They must be >= "
                                            "original volume size.")
                host, source = src["host"], {"volume": src}
            elif image_id:
                # Cinder's answer for an image the caller may not see is its answer for a missing one.
                image = await images_db.get_visible(conn, image_id, ctx.project_id, ctx.is_admin)
                if image is None or image["status"] != "active":
                    raise exception.Invalid("Invalid image identifier or unable to access requested image.")
                min_gb = max(image["min_disk"] or 0, math.ceil((image["size"] or 0) / 1024**3), 1)
                size = size or min_gb
                if size < min_gb:
                    raise exception.Invalid(f"Invalid input received: Image minDisk size {min_gb} is larger "
                                            f"than the volume size {size}.")
                source = {"image": image}
        if not size or size < 1:
            raise exception.Invalid("Invalid input received: 'size' parameter must be an integer greater than 0.")
        vid = uuidlib.uuid4()
        async with self.pool.acquire() as conn, conn.transaction():
            await self.check_quota(conn, ctx.project_id, volumes=1, gigabytes=size)
            row = await q.insert(
                conn,
                id=vid, project_id=ctx.project_id, user_id=ctx.user_id, name=name, description=description,
                size=size, status=q.CREATING, host=host, pool_name=self.pool_def(host).name,
                vol_name=vol_name(str(vid)), format=self.pool_def(host).volume_format,
                availability_zone=availability_zone or "nova", metadata=metadata or {},
                image_id=image_id, snapshot_id=uuidlib.UUID(snapshot_id) if snapshot_id else None,
                source_volid=uuidlib.UUID(source_volid) if source_volid else None, bootable=bool(image_id),
            )
        self.run_in_background(self._create_data(row, source))
        return row

    async def make_data(self, vol: asyncpg.Record, source: dict[str, Any]) -> str:
        """Make a volume's data in its host's pool from its source; returns its path."""
        driver, pool = self.storage(vol["host"])
        name = vol["vol_name"]
        if "snapshot" in source:
            return await driver.clone_volume(pool.name, source["snapshot"]["vol_name"], name, vol["size"],
                                             pool.volume_format)
        if "volume" in source:
            return await driver.clone_volume(pool.name, source["volume"]["vol_name"], name, vol["size"],
                                             pool.volume_format)
        compute = self.hosts[vol["host"]]
        if "image" in source and not compute.simulated:
            return await self._from_image(compute, source["image"], vol)
        return await driver.create_volume(pool.name, name, vol["size"], pool.volume_format)

    async def move(self, vol: asyncpg.Record, host: str) -> asyncpg.Record:
        """Move a volume's data into ``host``'s pool (an evacuated server's volume: its old host is
        fenced off, but the volume is only reachable while that host's libvirt still answers): the
        bytes streamed between the hosts, the row re-pointed, the old copy deleted."""
        path = await self.copy_to(vol, host)
        async with self.pool.acquire() as conn:
            row = await q.update_fields(conn, str(vol["id"]), host=host, pool_name=self.pool_def(host).name, path=path)
        await self.drop_copy(vol, vol["host"])
        log.info("volume_moved", volume_id=str(vol["id"]), source=vol["host"], host=host)
        return row

    async def copy_to(self, vol: asyncpg.Record, host: str, *, empty: bool = False) -> str:
        """A copy of the volume in ``host``'s pool under its own name, the original left as it is
        (a leftover copy there is replaced); its path. The bytes stream between the hosts through
        libvirt (never through this machine's files); ``empty``: a blank volume of the same size
        and format instead, for a live migration's block copy to fill. Simulated hosts (no streams)
        get a blank one."""
        src, src_pool = self.storage(vol["host"])
        dst, dst_pool = self.storage(host)
        if not await src.is_alive():
            raise PoolError(f"volume {vol['id']} lives in the pool of host {vol['host']}, whose libvirt does not "
                            "answer: it cannot be copied elsewhere")
        name = vol["vol_name"]
        if empty or self.hosts[host].simulated or self.hosts[vol["host"]].simulated:
            return await dst.create_volume(dst_pool.name, name, vol["size"], vol["format"] or dst_pool.volume_format)
        info = await src.volume_info(src_pool.name, name)
        return await stream_volume(src, src_pool.name, name, dst, dst_pool.name, name,
                                   info.physical if info is not None else 0)

    async def follow(self, conn: asyncpg.Connection, instance_uuid: str, host: str) -> list[asyncpg.Record]:
        """In the caller's transaction: the instance's volumes now live in ``host``'s pool (their
        copies there, made before, are the ones its guest uses); the rows, hence the attachments'
        disk paths, name them. Raises PoolError for a volume that has no copy there."""
        driver, pool = self.storage(host)
        rows = []
        for vol in await q.for_instance(conn, instance_uuid):
            if vol["host"] == host:
                rows.append(vol)
                continue
            info = await driver.volume_info(pool.name, vol["vol_name"])
            if info is None:
                raise PoolError(f"volume {vol['id']} has no copy in the pool of host {host}")
            rows.append(await q.update_fields(conn, str(vol["id"]), host=host, pool_name=pool.name, path=info.path))
        return rows

    async def drop_copies(self, instance_uuid: str, host: str) -> None:
        """The copies an instance's move left in ``host``'s pool of volumes whose rows name
        another host (a move's source after it, its destination after a rollback) go."""
        if host not in self.hosts:
            return
        async with self.pool.acquire() as conn:
            vols = [v for v in await q.for_instance(conn, instance_uuid) if v["host"] != host]
        for vol in vols:
            await self.drop_copy(vol, host)

    async def drop_copy(self, vol: asyncpg.Record, host: str) -> None:
        """The volume's copy in ``host``'s pool goes (none there: nothing to do)."""
        driver, pool = self.storage(host)
        await driver.delete_volume(pool.name, vol["vol_name"])

    async def _from_image(self, compute: ComputeHost, image: Any, vol: asyncpg.Record) -> str:
        """The volume as a copy of the host's cached image volume (virStorageVolCreateXMLFrom from
        its instance pool): the host converts the data, so nothing of it passes through this
        machine, wherever the host is."""
        image_id = str(image["id"])
        cached = await compute.store.image(image_id)  # uploaded to the host once, checksum verified
        if cached.capacity > vol["size"] * 1024**3:
            raise DiskError(f"image {image_id} ({cached.capacity} bytes) does not fit a {vol['size']} GiB volume")
        pool = self.pool_def(vol["host"])
        return await compute.driver.clone_volume(pool.name, compute.store.image_volume(image_id), vol["vol_name"],
                                                 vol["size"], pool.volume_format, source_pool=compute.store.pool.name)

    async def _create_data(self, vol: asyncpg.Record, source: dict[str, Any]) -> None:
        vid = str(vol["id"])
        structlog.contextvars.bind_contextvars(volume_id=vid)
        try:
            path = await self.make_data(vol, source)
        except Exception as exc:
            log.warning("volume_create_failed", error=str(exc))
            async with self.pool.acquire() as conn:
                try:
                    await q.compare_and_set(conn, vid, q.CREATING, status=q.ERROR, error=str(exc)[:255])
                except q.VolumeStateConflict:
                    pass
            return
        async with self.pool.acquire() as conn:
            try:
                await q.compare_and_set(conn, vid, q.CREATING, status=q.AVAILABLE, path=path)
            except q.VolumeStateConflict:
                log.info("volume_gone_while_creating")
        log.info("volume_created", host=vol["host"], path=path)

    async def update(self, ctx: RequestContext, vol: asyncpg.Record, fields: dict[str, Any]) -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            row = await q.update_fields(conn, str(vol["id"]), **fields)
        if row is None:
            raise exception.NotFound(f"Volume {vol['id']} could not be found.")
        return row

    async def delete(self, ctx: RequestContext, vol: asyncpg.Record) -> None:
        """available/error → deleting (one compare-and-set), then remove the data in the background."""
        vid = str(vol["id"])
        async with self.pool.acquire() as conn, conn.transaction():
            if await q.has_snapshots(conn, vid):
                raise exception.Invalid(
                    f"Invalid volume: Volume {vid} status must be available or error or error_restoring or "
                    "error_extending or error_managing and must not be migrating, attached, belong to a group, "
                    "have snapshots, awaiting a transfer, or be disassociated from snapshots after volume transfer."
                )
            try:
                row = await q.compare_and_set(conn, vid, [q.AVAILABLE, q.ERROR, q.ERROR_DELETING], status=q.DELETING)
            except q.VolumeStateConflict as conflict:
                if conflict.actual is None:
                    raise exception.NotFound(f"Volume {vid} could not be found.") from None
                raise exception.Invalid(
                    "Invalid volume: Volume status must be available or error or error_restoring or "
                    "error_extending or error_managing and must not be migrating, attached, belong to a group, "
                    "have snapshots, awaiting a transfer, or be disassociated from snapshots after volume transfer."
                ) from None
        self.run_in_background(self._delete_data(row))

    async def _delete_data(self, vol: asyncpg.Record) -> None:
        vid = str(vol["id"])
        try:
            if vol["host"] in self.hosts:
                driver, pool = self.storage(vol["host"])
                await driver.delete_volume(pool.name, vol["vol_name"])
        except Exception as exc:
            log.warning("volume_delete_failed", volume_id=vid, error=str(exc))
            async with self.pool.acquire() as conn:
                try:
                    await q.compare_and_set(conn, vid, q.DELETING, status=q.ERROR_DELETING, error=str(exc)[:255])
                except q.VolumeStateConflict:
                    pass
            return
        async with self.pool.acquire() as conn:
            await q.mark_deleted(conn, vid)
        log.info("volume_deleted", volume_id=vid)

    # -- snapshots --------------------------------------------------------------------
    async def create_snapshot(
        self, ctx: RequestContext, volume_id: str, *, name: str | None, description: str | None,
        force: bool = False, metadata: dict | None = None, wait: bool = False,
    ) -> asyncpg.Record:
        """Insert the snapshot (creating) under quota and copy the volume's data in the background.

        ``wait``: return only when the copy ended, with the row as it then is (available or error);
        the copy runs to its end even if the caller is cancelled.
        """
        sid = uuidlib.uuid4()
        async with self.pool.acquire() as conn, conn.transaction():
            vol = await q.get(conn, volume_id)
            if vol is None or (vol["project_id"] != ctx.project_id and not ctx.is_admin):
                raise exception.NotFound(f"Volume {volume_id} could not be found.")
            allowed = (q.AVAILABLE, q.IN_USE) if force else (q.AVAILABLE,)
            if vol["status"] not in allowed:
                raise exception.Invalid(f"Invalid volume: Volume {volume_id} status must be available, but "
                                        f"current status is: {vol['status']}.")
            await self.check_quota(conn, ctx.project_id, snapshots=1, gigabytes=vol["size"])
            # Lock the volume row so a delete cannot slip in between the check and the insert.
            await conn.execute("SELECT 1 FROM volumes WHERE id = $1 FOR UPDATE", vol["id"])
            snap = await q.insert_snapshot(
                conn, id=sid, volume_id=vol["id"], project_id=ctx.project_id, user_id=ctx.user_id, name=name,
                description=description, size=vol["size"], status=q.CREATING, host=vol["host"],
                pool_name=vol["pool_name"], vol_name=snap_name(str(sid)), metadata=metadata or {},
            )
        task = self.run_in_background(self._create_snapshot_data(snap, vol))
        if not wait:
            return snap
        await asyncio.shield(task)
        async with self.pool.acquire() as conn:
            return await q.get_snapshot(conn, str(sid)) or snap

    async def _create_snapshot_data(self, snap: asyncpg.Record, vol: asyncpg.Record) -> None:
        sid = str(snap["id"])
        try:
            driver, pool = self.storage(vol["host"])
            path = await driver.clone_volume(pool.name, vol["vol_name"], snap["vol_name"], snap["size"],
                                             pool.volume_format)
        except Exception as exc:
            log.warning("snapshot_create_failed", snapshot_id=sid, error=str(exc))
            async with self.pool.acquire() as conn:
                await q.snapshot_compare_and_set(conn, sid, q.CREATING, status=q.ERROR, error=str(exc)[:255])
            return
        async with self.pool.acquire() as conn:
            try:
                await q.snapshot_compare_and_set(conn, sid, q.CREATING, status=q.AVAILABLE, path=path)
            except q.VolumeStateConflict:
                pass
        log.info("snapshot_created", snapshot_id=sid, volume_id=str(vol["id"]))

    async def delete_snapshot(self, ctx: RequestContext, snap: asyncpg.Record) -> None:
        sid = str(snap["id"])
        async with self.pool.acquire() as conn:
            try:
                row = await q.snapshot_compare_and_set(conn, sid, [q.AVAILABLE, q.ERROR], status=q.DELETING)
            except q.VolumeStateConflict:
                raise exception.Invalid("Invalid snapshot: Volume Snapshot status must be available or error") \
                    from None

        async def remove() -> None:
            try:
                driver, pool = self.storage(row["host"])
                await driver.delete_volume(pool.name, row["vol_name"])
            except Exception as exc:
                async with self.pool.acquire() as conn:
                    await q.snapshot_compare_and_set(conn, sid, q.DELETING, status=q.ERROR_DELETING,
                                                     error=str(exc)[:255])
                return
            async with self.pool.acquire() as conn:
                await q.mark_snapshot_deleted(conn, sid)

        self.run_in_background(remove())


    async def destroy_volume(self, vol: asyncpg.Record) -> None:
        """Remove a volume's data and row (no status check: the caller owns it)."""
        try:
            driver, pool = self.storage(vol["host"])
            await driver.delete_volume(pool.name, vol["vol_name"])
        except Exception as exc:
            log.warning("volume_delete_failed", volume_id=str(vol["id"]), error=str(exc))
            async with self.pool.acquire() as conn:
                await conn.execute(
                    "UPDATE volumes SET status = 'error_deleting', instance_uuid = NULL, error = $2, "
                    "updated_at = now() WHERE id = $1", vol["id"], str(exc)[:255],
                )
            return
        async with self.pool.acquire() as conn:
            await q.mark_deleted(conn, str(vol["id"]))
