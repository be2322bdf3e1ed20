"""createImage and createBackup on the host: the root disk into the queued image.

Nova's ``snapshot_instance``/``backup_instance`` with the libvirt driver's
``snapshot``: under the instance lock, task_state ``image_snapshot_pending`` →
``image_snapshot`` (a backup starts at ``image_backup``) → ``image_pending_upload``
(the disk is copied) → ``image_uploading`` (the copy goes into the image store)
→ None, with the ``compute_snapshot_instance``/``compute_backup_instance`` event
and ``instance.snapshot.start/.end`` notifications. The image goes ``queued`` →
``saving`` → ``active`` through the store's own write path, which computes size,
checksum and os_hash as an upload does, bounded by the owner's image quota.

The copy: a running (or paused) guest is not stopped — its disk is mirrored by a
shallow block copy into a qcow2 over the same base, ended without pivot
(:meth:`VirtDriver.copy_disk_live`), which leaves the guest on its disk and its
chain as it was; a guest that is not running (stopped, suspended) has its disk
read directly. Either way ``qemu-img convert`` flattens the copy into one
standalone qcow2, which is what the image holds. A simulated (libvirt test
driver) host writes no disk files, so there is no guest data to take: its
snapshots are honest empty raw images (size 0), never invented content.

A failure deletes the image (Nova's ``delete_image_on_error``), clears the task
state (``reverts_task_state``: the server stays as it was) and records a fault.
After a crash, recovery puts the instance back to its first task state and the
image back to ``queued``, and the snapshot is taken again (:meth:`resume`).
A backup then rotates: images of this instance and backup_type beyond
``rotation`` are deleted, oldest first (Nova's ``_rotate_backups``).
"""

from __future__ import annotations

import asyncio
import json
import traceback
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import structlog

from novalite.compute.disks import InstanceStore
from novalite.compute.failures import (
    Failure,
    Notification,
    fail_instance,
    finish_superseded,
    moved_on,
)
from novalite.compute.image_actions import (
    IMAGE_BACKUP,
    IMAGE_PENDING_UPLOAD,
    IMAGE_SNAPSHOT,
    IMAGE_SNAPSHOT_PENDING,
    IMAGE_UPLOADING,
    SNAPSHOT_TASK_STATES,
    SYSMETA_IMAGE,
    SYSMETA_ROTATION,
)
from novalite.compute.locks import InstanceLocks
from novalite.compute.power import RECOVER_EVENT
from novalite.config import Config
from novalite.db import images as images_db
from novalite.db import instances as db
from novalite.virt.driver import VirtDriver

log = structlog.get_logger(__name__)

SNAPSHOT_EVENT = "compute_snapshot_instance"
# The server's progress while a snapshot (or a shelve's) passes its steps; 100 once the image is active.
STEP_PROGRESS = {"image_snapshot": 0, "image_backup": 0, "image_pending_upload": 33, "image_uploading": 66,
                 "shelving_image_pending_upload": 33, "shelving_image_uploading": 66}
BACKUP_EVENT = "compute_backup_instance"
MIB = 1 << 20
READ_CHUNK = 1 << 20


class ImageWriter(Protocol):
    """The image store's write path, as the host sees it (novalite.image.store.ImageStore)."""

    async def write(self, image_id: str, chunks: AsyncIterable[bytes], *, max_size: int | None = None) -> Any:
        """Store the data; the result has ``size``, ``checksum``, ``os_hash_algo``, ``os_hash_value``."""
        ...

    def delete(self, image_id: str) -> None:
        """Remove an image's data (and any partial upload)."""
        ...


async def _read_file(path: Path) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while data := await asyncio.to_thread(f.read, READ_CHUNK):
            yield data
    finally:
        await asyncio.to_thread(f.close)


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


async def _qemu_info(path: Path) -> dict:
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", "info", "-U", "--output=json", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"qemu-img info {path}: {err.decode().strip()}")
    return json.loads(out)


def is_backup(inst: asyncpg.Record) -> bool:
    return SYSMETA_ROTATION in (inst["system_metadata"] or {})


def first_task_state(inst: asyncpg.Record) -> str:
    """Where the API put the instance: image_backup for a backup, image_snapshot_pending otherwise."""
    return IMAGE_BACKUP if is_backup(inst) else IMAGE_SNAPSHOT_PENDING


def without_snapshot_keys(sysmeta: dict | None) -> dict:
    return {k: v for k, v in (sysmeta or {}).items() if k not in (SYSMETA_IMAGE, SYSMETA_ROTATION)}


class SnapshotManager:
    """Takes the root disk of this host's instances into images (snapshot, backup)."""

    def __init__(
        self, host: str, driver: VirtDriver, pool: asyncpg.Pool, locks: InstanceLocks, config: Config,
        images: ImageWriter | None, store: InstanceStore, scratch: Path,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        """``images`` is the image store's write path; ``spawn`` runs a cast as a tracked task of the host."""
        self.host = host
        self.driver = driver
        self.pool = pool
        self.locks = locks
        self.config = config
        self.images = images
        self.store = store  # the host's instance pool: the root disk and the copy are its volumes
        self.scratch = scratch  # this machine's working files: the flattened copy, downloaded
        self.simulated = store.simulated
        self.spawn_task = spawn
        # Crash drills and tests: awaited after the instance reaches each task state.
        self.after_state: Callable[[str, str], Coroutine[Any, Any, None]] | None = None

    def cast_snapshot(self, uuid: str, request_id: str) -> None:
        """Cast: take the image the compute API queued for this instance (snapshot or backup)."""
        self.spawn_task(self.snapshot_instance(uuid, request_id))

    async def _set(self, uuid: str, expect: str, new: str | None, **updates: Any) -> asyncpg.Record:
        if new in STEP_PROGRESS and "progress" not in updates:
            updates["progress"] = STEP_PROGRESS[new]
        async with self.pool.acquire() as conn:
            row = await db.compare_and_set(conn, uuid, expect_task_state=expect, task_state=new, **updates)
        if self.after_state is not None and new is not None and new != expect:
            await self.after_state(uuid, new)
        return row

    async def snapshot_instance(self, uuid: str, request_id: str) -> None:
        """The host's half of createImage/createBackup (see the module's docstring)."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        pub = f"nova-compute:{self.host}"
        async with self.locks.lock(uuid):
            async with self.pool.acquire() as conn:
                inst = await db.get(conn, uuid)
            if inst is None or inst["task_state"] not in SNAPSHOT_TASK_STATES:
                log.info("snapshot_not_pending", task_state=inst["task_state"] if inst else None)
                return
            image_id = str((inst["system_metadata"] or {}).get(SYSMETA_IMAGE) or "")
            backup = is_backup(inst)
            event = BACKUP_EVENT if backup else SNAPSHOT_EVENT
            payload = {"host": self.host, "snapshot_image_id": image_id}
            async with self.pool.acquire() as conn:
                await db.event_start(conn, uuid, request_id, event, self.host)
                await db.notify(conn, "instance.snapshot.start", payload, publisher_id=pub,
                                instance_uuids=[uuid], request_id=request_id)
            work = self._work(uuid, image_id)
            try:
                state = first_task_state(inst)
                if not backup:
                    inst = await self._set(uuid, IMAGE_SNAPSHOT_PENDING, IMAGE_SNAPSHOT)
                    state = IMAGE_SNAPSHOT
                info = await self.driver.get_info(uuid)
                if info is not None:
                    inst = await self._set(uuid, state, state, power_state=info.power_state)
                inst = await self._set(uuid, state, IMAGE_PENDING_UPLOAD)
                disk_format = await self._copy_root_disk(inst, work)
                inst = await self._set(uuid, IMAGE_PENDING_UPLOAD, IMAGE_UPLOADING)
                await self._upload(inst, image_id, work if disk_format == "qcow2" else None, disk_format)
                async with self.pool.acquire() as conn, conn.transaction():
                    await db.compare_and_set(conn, uuid, expect_task_state=IMAGE_UPLOADING, task_state=None,
                                             system_metadata=without_snapshot_keys(inst["system_metadata"]),
                                             progress=100)
                    await db.event_finish(conn, uuid, request_id, event)
                    await db.finish_action(conn, uuid, request_id)
                    await db.notify(conn, "instance.snapshot.end", payload, publisher_id=pub,
                                    instance_uuids=[uuid], request_id=request_id)
                log.info("instance_snapshotted", image_id=image_id, backup=backup)
                if backup:
                    image = await self._image(image_id)
                    rotation = int((inst["system_metadata"] or {}).get(SYSMETA_ROTATION) or 0)
                    if image is not None:
                        await self.rotate_backups(uuid, (image["properties"] or {}).get("backup_type", ""), rotation)
            except db.StateConflict as conflict:
                what = moved_on(conflict)
                log.info("snapshot_superseded", now=what)
                await self._drop_unfinished_image(image_id)
                async with self.pool.acquire() as conn:
                    await finish_superseded(conn, uuid, request_id, event, what)
            except Exception as exc:
                log.warning("snapshot_failed", error=str(exc))
                await self._drop_unfinished_image(image_id)
                reason = f"{type(exc).__name__}: {exc}"
                tb = traceback.format_exc(limit=5)
                async with self.pool.acquire() as conn, conn.transaction():
                    try:  # Nova's reverts_task_state: the server is as it was, without the task
                        await db.compare_and_set(conn, uuid, expect_task_state=list(SNAPSHOT_TASK_STATES),
                                                 task_state=None,
                                                 system_metadata=without_snapshot_keys(inst["system_metadata"]))
                    except db.StateConflict:
                        pass
                    await fail_instance(
                        conn, uuid, request_id, Failure(reason, tb, self.host, traceback=tb), events=[event],
                        notification=Notification("instance.snapshot.error",
                                                  {**payload, "fault": reason}, pub),
                    )
            finally:
                await self._remove_work_files(work)

    # -- for shelve ---------------------------------------------------------------
    async def snapshot_into(
        self, inst: asyncpg.Record, image_id: str,
        update_task_state: Callable[[str], Coroutine[Any, Any, asyncpg.Record]],
    ) -> None:
        """Take the root disk into the queued image ``image_id`` (Nova's driver.snapshot as shelve calls
        it): ``update_task_state`` is awaited with image_pending_upload before the copy and
        image_uploading before the upload, and returns the instance's row."""
        work = self._work(str(inst["uuid"]), image_id)
        try:
            inst = await update_task_state(IMAGE_PENDING_UPLOAD)
            disk_format = await self._copy_root_disk(inst, work)
            inst = await update_task_state(IMAGE_UPLOADING)
            await self._upload(inst, image_id, work if disk_format == "qcow2" else None, disk_format)
        finally:
            await self._remove_work_files(work)

    async def discard_image(self, image_id: str) -> None:
        """Delete an image this host was making unless it became active (a failed or superseded shelve)."""
        await self._drop_unfinished_image(image_id)

    async def requeue_image(self, uuid: str, image_id: str) -> None:
        """After a crash: the image back to queued, its partial data and this host's work files gone.

        An image that became active just before the crash goes back too: the shelve that makes it
        starts over and uploads it again (no server refers to it until the shelve ends)."""
        await self._remove_work_files(self._work(uuid, image_id))
        async with self.pool.acquire() as conn:
            await images_db.compare_and_set_status(conn, image_id, ("saving", "active"), "queued")
        if self.images is not None:
            self.images.delete(image_id)

    # -- the disk -----------------------------------------------------------------
    async def _copy_root_disk(self, inst: asyncpg.Record, out: Path) -> str:
        """Write the root disk, flattened, to ``out``; return the image's disk_format.

        A simulated host has no disk data: nothing is written and the image is an empty raw disk.
        """
        if self.simulated:
            return "raw"
        uuid = str(inst["uuid"])
        pool, disk = self.store.pool.name, self.store.volume(uuid, "disk")
        flat, delta = out.name, out.name + ".delta"  # volumes of the host named as the local copy
        info = await self.driver.volume_info(pool, disk)
        if info is None:
            raise RuntimeError(f"instance {uuid} has no root disk on {self.host}")
        backing = info.backing.rsplit("/", 1)[-1] if info.backing else None  # a volume of the same pool
        source = disk
        delta_path = await self.driver.make_volume(pool, delta, info.capacity, "qcow2", backing=backing)
        if await self.driver.copy_disk_live(uuid, "vda", delta_path):
            source = delta  # the mirror of the top layer, over the same base
        await self.driver.clone_volume(pool, source, flat, 0, "qcow2")  # the host's qemu-img flattens it
        await asyncio.to_thread(out.parent.mkdir, parents=True, exist_ok=True)
        await self.driver.download_volume(pool, flat, out)
        return "qcow2"

    def _work(self, uuid: str, image_id: str) -> Path:
        """The flattened copy on this machine; its volumes on the host have the same name."""
        return self.scratch / self.store.volume(uuid, f"snapshot-{image_id}")

    async def _remove_work_files(self, work: Path) -> None:
        await asyncio.to_thread(work.unlink, True)
        uuid = work.name.split("_", 1)[0]
        await self.store.remove(uuid, [work.name[len(uuid) + 1:] + suffix for suffix in ("", ".delta")])

    # -- the image ----------------------------------------------------------------
    async def _image(self, image_id: str) -> asyncpg.Record | None:
        async with self.pool.acquire() as conn:
            return await images_db.get(conn, image_id)

    async def _upload(self, inst: asyncpg.Record, image_id: str, data: Path | None, disk_format: str) -> None:
        """queued → saving → active through the store's write path; the image's metadata as Nova's driver sets it."""
        if self.images is None:
            raise RuntimeError("no image store to upload the snapshot to")
        async with self.pool.acquire() as conn:
            image = await images_db.compare_and_set_status(conn, image_id, ("queued",), "saving")
            if image is None:
                raise RuntimeError(f"Image {image_id} is no longer queued for the snapshot")
            max_size = self.config.image.size_cap_bytes
            quota_mib = self.config.quota.image_size_total_mib
            if quota_mib >= 0:
                used = await images_db.storage_usage(conn, image["owner"], image["id"])
                max_size = min(max_size, max(0, quota_mib * MIB - used))
        # Over the size cap or the owner's image_size_total quota: the store refuses, the snapshot fails.
        stored = await self.images.write(image_id, _read_file(data) if data else _empty(), max_size=max_size)
        virtual_size = (await _qemu_info(data))["virtual-size"] if data else 0
        props = dict(image["properties"] or {})
        props.update(image_location="snapshot", image_state="available", owner_id=inst["project_id"])
        for key in ("kernel_id", "ramdisk_id"):
            if inst[key]:
                props[key] = inst[key]
        async with self.pool.acquire() as conn, conn.transaction():
            active = await images_db.compare_and_set_status(
                conn, image["id"], ("saving",), "active", size=stored.size, checksum=stored.checksum,
                os_hash_algo=stored.os_hash_algo, os_hash_value=stored.os_hash_value, virtual_size=virtual_size,
                disk_format=disk_format, container_format=image["container_format"] or "bare",
            )
            if active is None:
                self.images.delete(image_id)
                raise RuntimeError(f"Image {image_id} was deleted during the snapshot upload")
            await images_db.update(conn, image["id"], {}, props)
        log.info("snapshot_uploaded", image_id=image_id, size=stored.size)

    async def _drop_unfinished_image(self, image_id: str) -> None:
        """Delete the snapshot's image unless it already became active (Nova's delete_image_on_error)."""
        if not image_id:
            return
        async with self.pool.acquire() as conn:
            gone = await conn.fetchval(
                "DELETE FROM images WHERE id = $1::uuid AND status <> 'active' RETURNING true", image_id)
        if gone and self.images is not None:
            self.images.delete(image_id)
            log.info("snapshot_image_deleted", image_id=image_id)

    async def rotate_backups(self, uuid: str, backup_type: str, rotation: int) -> list[str]:
        """Nova's _rotate_backups: keep the newest ``rotation`` backups of this instance and type."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT id, protected FROM images WHERE properties->>'image_type' = 'backup'
                   AND properties->>'backup_type' = $1 AND properties->>'instance_uuid' = $2
                   ORDER BY created_at DESC, id DESC""",
                backup_type, uuid,
            )
            deleted: list[str] = []
            for row in rows[rotation:]:
                if row["protected"]:  # Glance refuses; Nova logs it and goes on
                    log.info("backup_rotation_skipped_protected", image_id=str(row["id"]))
                    continue
                if await images_db.delete(conn, row["id"]):
                    deleted.append(str(row["id"]))
        for image_id in deleted:
            if self.images is not None:
                self.images.delete(image_id)
        if deleted:
            log.info("backups_rotated", backup_type=backup_type, rotation=rotation, deleted=deleted)
        return deleted

    # -- recovery -----------------------------------------------------------------
    async def resume(self, inst: asyncpg.Record, request_id: str, note: str) -> None:
        """After a crash: end a left-over block copy, put the image back to queued and the instance
        back to its first task state, and take the snapshot again."""
        uuid = str(inst["uuid"])
        image_id = str((inst["system_metadata"] or {}).get(SYSMETA_IMAGE) or "")
        if not self.simulated:
            try:
                await self.driver.abort_disk_copy(uuid, "vda")
            except Exception:
                log.warning("abort_disk_copy_failed", exc_info=True)
            await self._remove_work_files(self._work(uuid, image_id))
        async with self.pool.acquire() as conn, conn.transaction():
            image = await images_db.get(conn, image_id) if image_id else None
            if image is not None and image["status"] == "active":
                # The upload had finished: only the instance's last step was cut off. Keep the image.
                await db.compare_and_set(conn, uuid, expect_task_state=inst["task_state"], task_state=None,
                                         system_metadata=without_snapshot_keys(inst["system_metadata"]))
                await db.interrupt_open_events(conn, uuid, request_id, "interrupted by a restart of novalite")
                await db.event_finish(conn, uuid, request_id, RECOVER_EVENT,
                                      details=f"{note.split(';')[0]}; the image {image_id} was already active")
                await db.finish_action(conn, uuid, request_id)
                return
            if image_id:
                await images_db.compare_and_set_status(conn, image_id, ("saving",), "queued")
            await db.compare_and_set(conn, uuid, expect_task_state=inst["task_state"],
                                     task_state=first_task_state(inst))
            await db.interrupt_open_events(conn, uuid, request_id, "interrupted by a restart of novalite")
            await db.event_finish(conn, uuid, request_id, RECOVER_EVENT, details=note)
        if image_id and self.images is not None:
            self.images.delete(image_id)  # a partial upload's leftovers; the image has no data yet
        self.cast_snapshot(uuid, request_id)
