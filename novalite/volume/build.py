"""What a build does with volumes: check and reserve them at create, make and claim them on the host.

The compute API checks a create's volume BDMs (:meth:`VolumeBuild.check_bdms`)
and reserves the named volumes in the provisioning transaction
(:meth:`VolumeBuild.reserve_for_instance`); the compute manager's
BLOCK_DEVICE_MAPPING step claims or creates them on its host
(:meth:`VolumeBuild.prepare_build`), undoes that when the build fails
(:meth:`VolumeBuild.undo_build`) and gives them back when the server is deleted
(:meth:`VolumeBuild.release_instance`). A reaper releases what deleted or
failed servers still hold.
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from novalite import exception
from novalite.compute import states
from novalite.compute.disks import PreparedDisks
from novalite.context import RequestContext
from novalite.db import images as images_db
from novalite.db import instances as instances_db
from novalite.db import volumes as q
from novalite.virt.driver import DiskSpec
from novalite.volume.api import (
    DEVICE_PREFIX,
    ROOT_DEV,
    VolumeAPI,
    next_device,
    normalise_device,
    reserve,
    vol_name,
)

log = structlog.get_logger(__name__)


class VolumeBuild:
    """The volumes of builds, deletes and failed builds; on top of :class:`VolumeAPI`."""

    def __init__(self, volumes: VolumeAPI) -> None:
        self.volumes = volumes
        self.pool = volumes.pool
        self.cfg = volumes.cfg
        self._reaper: asyncio.Task | None = None

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever(), name="volume-reaper")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()

    # -- boot: check_and_transform_bdm (compute API) ------------------------------------
    async def check_bdms(self, conn: asyncpg.Connection, ctx: RequestContext, req: Any, bdms: list[dict]) -> None:
        """Validate the volume BDMs of a create request (Nova's _validate_bdm) and pin the host.

        Volumes and snapshots named by the request must exist, belong to the caller
        and be available; new volumes need a size. Their host becomes the forced
        host of the request (they can only be attached there).
        """
        hosts: set[str] = set()
        for b in bdms:
            src, dest = b["source_type"], b["destination_type"]
            if dest != "volume":
                continue
            size = b.get("volume_size")
            if size is not None and size < 1:
                raise exception.Invalid("Block Device Mapping is Invalid: volume_size must be positive.")
            if src == "volume":
                vid = b.get("volume_id")
                vol = await q.get(conn, vid) if vid else None
                if vol is None or (vol["project_id"] != ctx.project_id and not ctx.is_admin):
                    raise exception.Invalid(f"Volume {vid} could not be found.")  # Nova's VolumeNotFound → 400
                if req.max_count > 1:
                    raise exception.Invalid("Cannot attach one or more volumes to multiple instances")
                if vol["status"] != q.AVAILABLE:
                    raise exception.Invalid(
                        f"Invalid volume: Volume {vid} status must be available or downloading to reserve, but the "
                        f"current status is {vol['status']}."
                    )
                b["volume_id"] = str(vol["id"])
                if b.get("volume_size") is None:
                    b["volume_size"] = vol["size"]
                hosts.add(vol["host"])
            elif src == "snapshot":
                sid = b.get("snapshot_id")
                snap = await q.get_snapshot(conn, sid) if sid else None
                if snap is None or (snap["project_id"] != ctx.project_id and not ctx.is_admin):
                    raise exception.Invalid(f"Block Device Mapping is Invalid: failed to get snapshot {sid}.")
                if snap["status"] != q.AVAILABLE:
                    raise exception.Invalid(f"Invalid snapshot: Snapshot {sid} status must be available")
                if size is None:
                    b["volume_size"] = snap["size"]
                elif size < snap["size"]:
                    raise exception.Invalid(
                        f"Block Device Mapping is Invalid: volume_size {size} is smaller than snapshot {sid} "
                        f"({snap['size']} GB)."
                    )
                hosts.add(snap["host"])
            elif src == "image":
                if size is None:
                    raise exception.Invalid(
                        "Block Device Mapping is Invalid: Images with destination_type 'volume' need to have a "
                        "non-zero size specified"
                    )
            elif src == "blank":
                if size is None:
                    raise exception.Invalid(
                        "Block Device Mapping is Invalid: Blank volumes (source: 'blank', dest: 'volume') need "
                        "to have non-zero size"
                    )
        hosts.discard(None)  # type: ignore[arg-type]
        if len(hosts) > 1:
            raise exception.Invalid(
                "Block Device Mapping is Invalid: the requested volumes live on different hosts "
                f"({', '.join(sorted(hosts))}) and can only be attached on their own host."
            )
        if hosts:
            (host,) = hosts
            wanted = req.forced_host or req.forced_node
            if wanted and wanted != host:
                raise exception.Invalid(
                    f"Block Device Mapping is Invalid: the requested volumes live on host {host}, not {wanted}."
                )
            req.forced_host = host

    async def reserve_for_instance(self, conn: asyncpg.Connection, instance_uuid: str, bdms: list[dict]) -> None:
        """available → reserved for each existing volume of the request, in the provisioning transaction.

        Runs before the BDM rows are inserted: a second request for the same
        volume waits on the row lock, then finds it reserved and fails with 400.
        """
        for b in bdms:
            if b.get("source_type") != "volume" or b.get("destination_type") != "volume" or not b.get("volume_id"):
                continue
            await reserve(conn, b["volume_id"], uuidlib.UUID(instance_uuid))

    # -- boot: BLOCK_DEVICE_MAPPING (compute manager) ------------------------------------
    async def prepare_build(self, host: str, inst: asyncpg.Record, prepared: PreparedDisks) -> None:
        """Claim, create and fill the instance's volumes on ``host`` and add them to ``prepared``.

        A root volume (boot_index 0) replaces the local root disk as vda; the others
        get their requested device or the next free /dev/vdX after the local disks.
        On return every volume is in-use by the instance and its BDM names its device.
        """
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn:
            bdms = await q.volume_bdms(conn, uuid)
        if not bdms:
            return
        local = list(prepared.disks)
        root_bdm = next((b for b in bdms if b["boot_index"] == 0), None)
        if root_bdm is not None:
            local = [d for d in local if d.target_dev != "vda"]
        used = {f"/dev/{d.target_dev}" for d in local}
        if root_bdm is not None:
            used.add(ROOT_DEV)
        volume_disks: list[DiskSpec] = []
        for b in bdms:
            vol = await self._claim_for_build(host, inst, b)
            if b is root_bdm:
                device = ROOT_DEV
            else:
                wanted = normalise_device(b["device_name"])
                device = wanted if wanted and wanted not in used and wanted.startswith(DEVICE_PREFIX) \
                    else next_device(used)
                used.add(device)
            async with self.pool.acquire() as conn, conn.transaction():
                vol = await q.compare_and_set(
                    conn, str(vol["id"]), q.ATTACHING, expect_instance=uuid, status=q.IN_USE, mountpoint=device,
                    attached_at=datetime.now(UTC),
                )
                await q.set_bdm(conn, b["id"], device_name=device, volume_id=str(vol["id"]),
                                attachment_id=vol["attachment_id"])
            disk = DiskSpec(path=vol["path"], target_dev=device.removeprefix("/dev/"),
                            driver_type="qcow2" if vol["format"] == "qcow2" else "raw")
            volume_disks.append(disk)
        root = [d for d in volume_disks if d.target_dev == "vda"]
        others = sorted((d for d in volume_disks if d.target_dev != "vda"), key=lambda d: (len(d.target_dev), d.target_dev))
        prepared.disks[:] = root + local + others
        log.info("volumes_prepared", instance_uuid=uuid, devices=[d.target_dev for d in volume_disks])

    async def attached_disks(self, uuid: str, prepared: PreparedDisks) -> None:
        """Add the volumes the instance has in use to ``prepared`` at their devices (a rebuild's guest).

        A root volume replaces the local root disk as vda, as at the build.
        """
        async with self.pool.acquire() as conn:
            vols = {str(v["id"]): v for v in await q.for_instance(conn, uuid)}
            bdms = await q.volume_bdms(conn, uuid)
        disks: list[DiskSpec] = []
        for b in bdms:
            vol = vols.get(str(b["volume_id"] or ""))
            if vol is None or vol["status"] != q.IN_USE or not b["device_name"]:
                continue
            disks.append(DiskSpec(path=vol["path"], target_dev=b["device_name"].removeprefix("/dev/"),
                                  driver_type="qcow2" if vol["format"] == "qcow2" else "raw"))
        targets = {d.target_dev for d in disks}
        local = [d for d in prepared.disks if d.target_dev not in targets]
        root = [d for d in disks if d.target_dev == "vda"]
        others = sorted((d for d in disks if d.target_dev != "vda"), key=lambda d: (len(d.target_dev), d.target_dev))
        prepared.disks[:] = root + local + others

    async def _claim_for_build(self, host: str, inst: asyncpg.Record, bdm: asyncpg.Record) -> asyncpg.Record:
        """The volume of one BDM in ``attaching`` for this instance: claimed, or created on ``host``."""
        uuid = str(inst["uuid"])
        if bdm["source_type"] == "volume":
            async with self.pool.acquire() as conn:
                try:
                    vol = await q.compare_and_set(conn, bdm["volume_id"], [q.RESERVED, q.ATTACHING, q.IN_USE],
                                                  expect_instance=uuid, status=q.ATTACHING)
                except q.VolumeStateConflict as conflict:
                    actual = conflict.actual["status"] if conflict.actual else "deleted"
                    raise RuntimeError(f"volume {bdm['volume_id']} is not reserved for this server "
                                       f"(status {actual})") from None
            if vol["host"] != host:
                raise RuntimeError(f"volume {vol['id']} lives on host {vol['host']}, not {host}")
            return vol
        # snapshot / image / blank → a new volume made for this instance on this host
        source: dict[str, Any] = {}
        async with self.pool.acquire() as conn:
            if bdm["volume_id"]:  # a retried build: the volume made last time goes first
                old = await q.get(conn, bdm["volume_id"])
                if old is not None and old["created_for"] == inst["uuid"]:
                    await self.volumes.destroy_volume(old)
            if bdm["source_type"] == "snapshot":
                snap = await q.get_snapshot(conn, bdm["snapshot_id"])
                if snap is None or snap["status"] != q.AVAILABLE:
                    raise RuntimeError(f"snapshot {bdm['snapshot_id']} is not available")
                if snap["host"] != host:
                    raise RuntimeError(f"snapshot {snap['id']} lives on host {snap['host']}, not {host}")
                source = {"snapshot": snap}
            elif bdm["source_type"] == "image":
                # Seen again as the caller, now: the image may have been unshared since the create.
                image = await images_db.get_visible(conn, bdm["image_id"] or inst["image_ref"], inst["project_id"],
                                                    bool((inst["request_spec"] or {}).get("is_admin")))
                if image is None:
                    raise RuntimeError(f"image {bdm['image_id']} not found")
                source = {"image": image}
        vid = uuidlib.uuid4()
        size = int(bdm["volume_size"] or 1)
        pool = self.volumes.pool_def(host)
        async with self.pool.acquire() as conn, conn.transaction():
            await self.volumes.check_quota(conn, inst["project_id"], volumes=1, gigabytes=size)
            vol = await q.insert(
                conn, id=vid, project_id=inst["project_id"], user_id=inst["user_id"], name="", description=None,
                size=size, status=q.CREATING, host=host, pool_name=pool.name, vol_name=vol_name(str(vid)),
                format=pool.volume_format, availability_zone=inst["availability_zone"] or "nova",
                image_id=str(source["image"]["id"]) if "image" in source else None,
                snapshot_id=source["snapshot"]["id"] if "snapshot" in source else None,
                bootable="image" in source, instance_uuid=inst["uuid"], created_for=inst["uuid"],
                attachment_id=uuidlib.uuid4(),
            )
            await q.set_bdm(conn, bdm["id"], volume_id=str(vid))
        path = await self.volumes.make_data(vol, source)
        async with self.pool.acquire() as conn:
            return await q.compare_and_set(conn, str(vid), q.CREATING, expect_instance=uuid, status=q.ATTACHING,
                                           path=path)


    async def undo_build(self, uuid: str) -> None:
        """A build on this host failed or was aborted: delete the volumes it made, keep the others reserved.

        Only for instances still BUILDING (a delete of a built server goes through
        :meth:`release_instance`). Kept reservations are released by the reaper (or
        the delete) if the instance ends in ERROR.
        """
        async with self.pool.acquire() as conn:
            inst = await instances_db.get(conn, uuid, include_deleted=True)
            if inst is None or inst["vm_state"] != states.BUILDING:
                return
            vols = await q.for_instance(conn, uuid)
        for vol in vols:
            if vol["created_for"] == inst["uuid"]:
                await self.volumes.destroy_volume(vol)
                async with self.pool.acquire() as conn:
                    await conn.execute(
                        "UPDATE block_device_mappings SET volume_id = NULL, device_name = NULL "
                        "WHERE instance_uuid = $1 AND volume_id = $2", inst["uuid"], str(vol["id"]),
                    )
            elif vol["status"] in (q.ATTACHING, q.IN_USE):
                async with self.pool.acquire() as conn:
                    try:
                        await q.compare_and_set(conn, str(vol["id"]), [q.ATTACHING, q.IN_USE], expect_instance=uuid,
                                                status=q.RESERVED, mountpoint=None, attached_at=None)
                    except q.VolumeStateConflict:
                        pass
        log.info("volumes_build_undone", instance_uuid=uuid)

    async def release_instance(self, uuid: str) -> None:
        """The instance is being deleted (its domain is gone): delete_on_termination volumes are
        deleted, the others go back to available; their BDMs end."""
        async with self.pool.acquire() as conn:
            vols = await q.for_instance(conn, uuid)
            dot = {
                r["volume_id"]: r["delete_on_termination"]
                for r in await conn.fetch(
                    "SELECT volume_id, delete_on_termination FROM block_device_mappings "
                    "WHERE instance_uuid = $1 AND volume_id IS NOT NULL AND NOT deleted", uuidlib.UUID(uuid),
                )
            }
        for vol in vols:
            vid = str(vol["id"])
            async with self.pool.acquire() as conn:
                has_snaps = await q.has_snapshots(conn, vid)
            if dot.get(vid) and not has_snaps:
                async with self.pool.acquire() as conn:
                    try:
                        vol = await q.compare_and_set(
                            conn, vid, [q.RESERVED, q.ATTACHING, q.IN_USE, q.DETACHING, q.CREATING, q.ERROR],
                            expect_instance=uuid, status=q.DELETING)
                    except q.VolumeStateConflict:
                        continue
                await self.volumes.destroy_volume(vol)
            else:
                async with self.pool.acquire() as conn:
                    try:
                        await q.compare_and_set(
                            conn, vid, [q.RESERVED, q.ATTACHING, q.IN_USE, q.DETACHING], expect_instance=uuid,
                            status=q.AVAILABLE, instance_uuid=None, mountpoint=None, attached_at=None,
                            attachment_id=None, created_for=None,
                        )
                    except q.VolumeStateConflict:
                        continue
        async with self.pool.acquire() as conn:
            await q.delete_bdms_of_volumes(conn, [str(v["id"]) for v in vols])
        if vols:
            log.info("volumes_released", instance_uuid=uuid, volumes=[str(v["id"]) for v in vols])

    async def reap(self) -> int:
        """Release volumes held by deleted instances, and reservations of builds that ended in ERROR."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT DISTINCT v.instance_uuid FROM volumes v JOIN instances i ON i.uuid = v.instance_uuid
                   WHERE NOT v.deleted AND (i.deleted OR (i.vm_state = 'error' AND i.task_state IS NULL
                                                           AND v.status IN ('reserved', 'attaching', 'creating')))"""
            )
        for r in rows:
            await self.release_instance(str(r["instance_uuid"]))
        return len(rows)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.reap_interval)
            try:
                await self.reap()
            except Exception:  # the next pass retries
                log.warning("volume_reap_failed", exc_info=True)
