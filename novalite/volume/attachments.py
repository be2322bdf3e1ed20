"""os-volume_attachments: plug a volume into a running (or stopped) server and take it out again.

The request reserves the volume and a device in one transaction and answers;
the hot-plug runs in the background under the instance's lock, through the
virt driver of the server's host (:meth:`VirtDriver.attach_disk`,
:meth:`VirtDriver.detach_disk`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import structlog

from novalite import exception
from novalite.compute.locks import InstanceLocks
from novalite.context import RequestContext
from novalite.db import instances as instances_db
from novalite.db import volumes as q
from novalite.virt.driver import DiskSpec
from novalite.volume.api import ROOT_DEV, VolumeAPI, next_device, normalise_device, reserve

log = structlog.get_logger(__name__)


class VolumeAttachments:
    """Attach and detach volumes of servers; on top of :class:`VolumeAPI`."""

    def __init__(self, volumes: VolumeAPI, locks: InstanceLocks) -> None:
        self.volumes = volumes
        self.pool = volumes.pool
        self.cfg = volumes.cfg
        self.locks = locks

    async def attach(
        self, ctx: RequestContext, inst: asyncpg.Record, volume_id: str, device: str | None,
        delete_on_termination: bool = False, tag: str | None = None,
    ) -> asyncpg.Record:
        """Reserve the volume and a device for the server now (one transaction), plug it in the background."""
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn, conn.transaction():
            vol = await q.get(conn, volume_id)
            if vol is None or (vol["project_id"] != inst["project_id"] and not ctx.is_admin):
                raise exception.NotFound(f"Volume {volume_id} could not be found.")
            if vol["instance_uuid"] == inst["uuid"]:
                raise exception.Invalid(f"Invalid volume: volume {volume_id} already attached")
            if vol["host"] != inst["host"]:
                raise exception.Invalid(
                    f"Invalid volume: volume {volume_id} lives on host {vol['host']}; it can only be attached to "
                    "servers on that host."
                )
            used = await q.device_names(conn, uuid)
            used |= await self._domain_devices(inst)
            used.add(inst["root_device_name"] or ROOT_DEV)
            device = normalise_device(device)
            if device is not None and device in used:
                raise exception.Conflict(f"The supplied device path ({device}) is in use.")
            device = device or next_device(used)
            vol = await reserve(conn, volume_id, inst["uuid"], mountpoint=device)
            bdm = await conn.fetchrow(
                """INSERT INTO block_device_mappings (instance_uuid, source_type, destination_type, device_name,
                       volume_id, volume_size, delete_on_termination, tag, attachment_id)
                   VALUES ($1, 'volume', 'volume', $2, $3, $4, $5, $6, $7) RETURNING *""",
                inst["uuid"], device, str(vol["id"]), vol["size"], delete_on_termination, tag, vol["attachment_id"],
            )
        self.volumes.run_in_background(self._attach_now(inst, vol, device))
        return bdm

    async def _domain_devices(self, inst: asyncpg.Record) -> set[str]:
        compute = self.volumes.hosts.get(inst["host"])
        if compute is None:
            return set()
        try:
            targets = await compute.driver.disk_targets(str(inst["uuid"]))
        except Exception:
            return set()
        return {f"/dev/{t}" for t in targets}

    async def _attach_now(self, inst: asyncpg.Record, vol: asyncpg.Record, device: str) -> None:
        uuid, vid = str(inst["uuid"]), str(vol["id"])
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, volume_id=vid)
        async with self.locks.lock(uuid):
            async with self.pool.acquire() as conn:
                try:
                    vol = await q.compare_and_set(conn, vid, q.RESERVED, expect_instance=uuid, status=q.ATTACHING)
                except q.VolumeStateConflict:
                    log.info("attach_abandoned")  # released meanwhile (the server went away)
                    return
            try:
                compute = self.volumes.hosts[inst["host"]]
                disk = DiskSpec(path=vol["path"], target_dev=device.removeprefix("/dev/"),
                                driver_type="qcow2" if vol["format"] == "qcow2" else "raw")
                await compute.driver.attach_disk(uuid, disk)
            except Exception as exc:
                log.warning("attach_failed", error=str(exc))
                async with self.pool.acquire() as conn, conn.transaction():
                    await q.compare_and_set(conn, vid, q.ATTACHING, status=q.AVAILABLE, instance_uuid=None,
                                            mountpoint=None, attachment_id=None, error=str(exc)[:255])
                    await q.delete_bdms_of_volumes(conn, [vid])
                    await instances_db.add_fault(conn, uuid, 500, f"attach of volume {vid} failed: {exc}"[:255],
                                                 "", inst["host"])
                return
            async with self.pool.acquire() as conn:
                await q.compare_and_set(conn, vid, q.ATTACHING, status=q.IN_USE, attached_at=datetime.now(UTC))
        log.info("volume_attached", device=device)

    async def detach(self, ctx: RequestContext, inst: asyncpg.Record, volume_id: str) -> None:
        """in-use → detaching now; unplug and make it available in the background."""
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn:
            bdm = await q.bdm_for_volume(conn, uuid, volume_id)
            if bdm is None:
                raise exception.NotFound(f"Instance {uuid} is not attached to volume {volume_id}.")
            if bdm["boot_index"] == 0:
                raise exception.Invalid("Can't detach root device volume")
            try:
                vol = await q.compare_and_set(conn, volume_id, q.IN_USE, expect_instance=uuid, status=q.DETACHING)
            except q.VolumeStateConflict as conflict:
                actual = conflict.actual["status"] if conflict.actual else "deleted"
                raise exception.Invalid(f"Invalid volume: Unable to detach volume. Volume status must be 'in-use' "
                                        f"and attach_status must be 'attached' to detach (status {actual}).") \
                    from None
        self.volumes.run_in_background(self._detach_now(inst, vol, bdm))

    async def _detach_now(self, inst: asyncpg.Record, vol: asyncpg.Record, bdm: asyncpg.Record) -> None:
        uuid, vid = str(inst["uuid"]), str(vol["id"])
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, volume_id=vid)
        async with self.locks.lock(uuid):
            try:
                compute = self.volumes.hosts.get(inst["host"])
                if compute is not None:
                    device = (bdm["device_name"] or vol["mountpoint"] or "").removeprefix("/dev/")
                    disk = DiskSpec(path=vol["path"], target_dev=device,
                                    driver_type="qcow2" if vol["format"] == "qcow2" else "raw")
                    await compute.driver.detach_disk(uuid, disk, self.cfg.detach_timeout)
            except Exception as exc:
                log.warning("detach_failed", error=str(exc))
                async with self.pool.acquire() as conn, conn.transaction():
                    try:
                        await q.compare_and_set(conn, vid, q.DETACHING, status=q.IN_USE, error=str(exc)[:255])
                    except q.VolumeStateConflict:
                        pass
                    await instances_db.add_fault(conn, uuid, 500, f"detach of volume {vid} failed: {exc}"[:255],
                                                 "", inst["host"])
                return
            async with self.pool.acquire() as conn, conn.transaction():
                try:
                    await q.compare_and_set(conn, vid, q.DETACHING, status=q.AVAILABLE, instance_uuid=None,
                                            mountpoint=None, attached_at=None, attachment_id=None, created_for=None)
                except q.VolumeStateConflict:
                    return
                await q.delete_bdms_of_volumes(conn, [vid])
        log.info("volume_detached")
