"""createImage of a volume-backed server: a volume snapshot per volume, and an image that maps to them.

Nova's ``compute/api.py`` ``snapshot_volume_backed``, which runs in the API and
never involves the compute host: the instance's state is checked (ACTIVE,
STOPPED, PAUSED or SUSPENDED, no task) but its task_state never changes; the
caller's snapshot quota must hold one snapshot per volume; the guest is not
quiesced (novalite has no guest agent: as Nova, this is skipped unless the
image sets ``os_require_quiesce``, which then fails); the ``createImage`` action
starts with its ``api_snapshot_instance`` event; each volume BDM gets a forced
(in-use) Cinder snapshot named ``snapshot for <image name>`` with the volume's
description; then the image is made: no data (size 0; Nova's empty upload makes
it ``raw``/``bare`` and ``active``), the source image's inheritable properties,
``root_device_name`` and, in ``block_device_mapping``, the BDMs as Nova's
``get_image_mapping`` writes them (JSON, as Glance v2 holds it) with
``bdm_v2``. Booting from that image merges those BDMs into the request
(:func:`merge_image_bdms`, Nova's ``_check_and_transform_bdm``), so the root
volume is made from the snapshot.

One departure: Nova does not wait for the snapshots, and leaves those already
made when one fails. Here each snapshot is waited for (a boot validates that its
snapshot is available), and a failure deletes the snapshots this request made:
no image is created, the server is untouched, the event ends in Error with the
traceback and the API answers 400 (a snapshot quota overrun: 403, as Nova).
Deleting the image leaves the snapshots (as Nova: they are Cinder's).
"""

from __future__ import annotations

import json
import traceback
import uuid as uuidlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Protocol

import asyncpg
import structlog

from novalite import exception, quota
from novalite.compute.image_actions import ImageRequest, snapshot_image_values
from novalite.compute.states import ACTIVE
from novalite.context import RequestContext
from novalite.db import images as images_db
from novalite.db import instances as db
from novalite.db import volumes as volumes_db
from novalite.volume.api import VolumeAPI, VolumeLimitExceeded

log = structlog.get_logger(__name__)

# Nova's wrap_instance_event(prefix='api') around snapshot_instance.
EVENT = "api_snapshot_instance"
# Nova's block_device.bdm_new_fields less connection_info: the keys get_image_mapping writes.
IMAGE_MAPPING_FIELDS = (
    "source_type", "destination_type", "guest_format", "device_type", "disk_bus", "boot_index",
    "device_name", "delete_on_termination", "snapshot_id", "volume_id", "volume_size", "image_id",
    "no_device", "tag", "volume_type", "encrypted", "encryption_secret_uuid", "encryption_format",
    "encryption_options",
)
# What snapshot_from_bdm copies from the volume's BDM.
FROM_TEMPLATE = ("disk_bus", "device_type", "boot_index", "delete_on_termination", "volume_size", "device_name")
TRUE_STRINGS = ("1", "t", "true", "on", "y", "yes")


class ImageWriter(Protocol):
    """The image store's write path (novalite.image.store.ImageStore)."""

    async def write(self, image_id: str, chunks: AsyncIterable[bytes], *, max_size: int | None = None) -> Any:
        """Store the data; the result has ``size``, ``checksum``, ``os_hash_algo``, ``os_hash_value``."""
        ...

    def delete(self, image_id: str) -> None:
        """Remove an image's data."""
        ...


async def _no_data() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


def image_mapping(bdm: asyncpg.Record | dict) -> dict[str, Any]:
    """Nova's BlockDeviceDict.get_image_mapping: every BDM field (None when unknown), no ids of the instance."""
    get = bdm.get if isinstance(bdm, dict) else (lambda k: bdm[k] if k in bdm.keys() else None)
    out = {k: get(k) for k in IMAGE_MAPPING_FIELDS}
    out["delete_on_termination"] = bool(out["delete_on_termination"])
    return out


def snapshot_mapping(snapshot_id: str, bdm: asyncpg.Record) -> dict[str, Any]:
    """Nova's snapshot_from_bdm(...).get_image_mapping(): the volume's BDM as one made from the snapshot."""
    made = {"source_type": "snapshot", "destination_type": "volume", "snapshot_id": snapshot_id}
    made.update({k: bdm[k] for k in FROM_TEMPLATE})
    return image_mapping(made)


class VolumeBackedSnapshot:
    """createImage for volume-backed servers (see the module's docstring)."""

    def __init__(self, pool: asyncpg.Pool, volumes: VolumeAPI, images: ImageWriter | None) -> None:
        self.pool = pool
        self.volumes = volumes
        self.images = images

    async def snapshot(self, ctx: RequestContext, inst: asyncpg.Record, req: ImageRequest) -> asyncpg.Record:
        """Snapshot every volume of the instance, then create the image; returns the image row.

        The caller checked the instance's state (and the allow_volume_backed policy)."""
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn:
            values, props = await snapshot_image_values(conn, ctx, inst, req, image_type=False)
            bdms = (await db.bdms_for(conn, [uuid])).get(uuid, [])
            volume_bdms = [b for b in bdms if b["destination_type"] == "volume" and b["volume_id"]]
            mapping = [image_mapping(b) for b in bdms if b["destination_type"] != "volume"]
            if volume_bdms:
                await self._check_snapshot_quota(conn, ctx.project_id, len(volume_bdms))
        for key in ("block_device_mapping", "bdm_v2", "root_device_name"):
            props.pop(key, None)
        if inst["root_device_name"]:
            props["root_device_name"] = inst["root_device_name"]
        self._check_quiesce(inst)
        async with self.pool.acquire() as conn, conn.transaction():
            await db.start_actions(conn, [uuid], "createImage", ctx.request_id, ctx.user_id, ctx.project_id)
            await db.event_start(conn, uuid, ctx.request_id, EVENT, None)
        made: list[str] = []
        try:
            for bdm in volume_bdms:
                made.append(await self._snapshot_volume(ctx, str(bdm["volume_id"]), req.name))
                mapping.append(snapshot_mapping(made[-1], bdm))
            if mapping:
                props["block_device_mapping"] = json.dumps(mapping)
                props["bdm_v2"] = "True"  # Glance v2 holds strings; Nova sends str(True)
            image = await self._create_image(inst, values, props)
        except Exception as exc:
            tb = traceback.format_exc(limit=5)
            log.warning("volume_backed_snapshot_failed", instance_uuid=uuid, error=str(exc), snapshots=made)
            for sid in made:
                await self._delete_snapshot(ctx, sid)
            async with self.pool.acquire() as conn, conn.transaction():
                await db.event_finish(conn, uuid, ctx.request_id, EVENT, "Error", traceback=tb,
                                      details=f"{type(exc).__name__}: {exc}")
                await db.finish_action(conn, uuid, ctx.request_id, "Error")
            if isinstance(exc, VolumeLimitExceeded):
                raise exception.Forbidden("Quota exceeded for resources: snapshots") from None
            if isinstance(exc, exception.NovaliteException):
                raise
            raise exception.Invalid(f"Failed to snapshot the volumes of instance {uuid}: {exc}") from None
        async with self.pool.acquire() as conn, conn.transaction():
            await db.event_finish(conn, uuid, ctx.request_id, EVENT)
            await db.finish_action(conn, uuid, ctx.request_id)
        log.info("volume_backed_snapshot_created", instance_uuid=uuid, image_id=str(image["id"]), snapshots=made)
        return image

    async def _check_snapshot_quota(self, conn: asyncpg.Connection, project_id: str, wanted: int) -> None:
        """Nova asks Cinder's limits before it starts, so no volume is snapshotted over quota halfway."""
        limit = (await self.volumes.limits(conn, project_id))["snapshots"]
        used = (await volumes_db.usage(conn, project_id))["snapshots"]
        if limit != quota.UNLIMITED and used + wanted > limit:
            log.info("volume_backed_snapshot_over_quota", used=used, wanted=wanted, limit=limit)
            raise exception.Forbidden("Quota exceeded for resources: snapshots")

    @staticmethod
    def _check_quiesce(inst: asyncpg.Record) -> None:
        """Nova quiesces an ACTIVE guest and goes on without when it cannot, unless the image requires it.

        novalite gives guests no agent channel, so a required quiesce fails as Nova's libvirt driver
        fails it: no hw_qemu_guest_agent → 400, an agent asked for but not there → 409."""
        if inst["vm_state"] != ACTIVE:
            return
        props = ((inst["request_spec"] or {}).get("image") or {}).get("properties") or {}
        if str(props.get("os_require_quiesce", "")).lower() not in TRUE_STRINGS:
            return
        if str(props.get("hw_qemu_guest_agent", "")).lower() not in TRUE_STRINGS:
            raise exception.Invalid("QEMU guest agent is not enabled")
        raise exception.Conflict("Failed to quiesce instance: QEMU guest agent is not connected")

    async def _snapshot_volume(self, ctx: RequestContext, volume_id: str, image_name: str) -> str:
        """A forced snapshot of one volume, waited for; its id once available."""
        async with self.pool.acquire() as conn:
            vol = await volumes_db.get(conn, volume_id)
        if vol is None:
            raise exception.Invalid(f"Volume {volume_id} could not be found.")
        snap = await self.volumes.create_snapshot(
            ctx, volume_id, name=f"snapshot for {image_name}", description=vol["description"], force=True,
            wait=True,
        )
        sid = str(snap["id"])
        if snap["status"] != volumes_db.AVAILABLE:
            await self._delete_snapshot(ctx, sid)
            raise RuntimeError(f"snapshot {sid} of volume {volume_id} ended in {snap['status']}: {snap['error']}")
        return sid

    async def _delete_snapshot(self, ctx: RequestContext, snapshot_id: str) -> None:
        async with self.pool.acquire() as conn:
            snap = await volumes_db.get_snapshot(conn, snapshot_id)
        if snap is None:
            return
        try:
            await self.volumes.delete_snapshot(ctx, snap)
        except exception.NovaliteException:
            log.warning("snapshot_cleanup_failed", snapshot_id=snapshot_id, exc_info=True)

    async def _create_image(self, inst: asyncpg.Record, values: dict[str, Any], props: dict[str, str]
                            ) -> asyncpg.Record:
        """Nova's image_api.create with size 0 and no data: raw/bare, an empty upload, active."""
        image_id = uuidlib.uuid4()
        values = dict(values, id=image_id, disk_format="raw", container_format="bare")
        # Nova's glance client takes instance_owner out of the properties and makes it a member instead.
        owner = props.pop("instance_owner", None)
        async with self.pool.acquire() as conn, conn.transaction():
            await images_db.create(conn, values, props)
            if owner is not None:
                await images_db.add_member(conn, image_id, owner)
        try:
            stats: dict[str, Any] = {"size": 0, "virtual_size": 0}
            if self.images is not None:  # Glance computes the empty upload's checksum and hash
                stored = await self.images.write(str(image_id), _no_data(), max_size=0)
                stats.update(size=stored.size, checksum=stored.checksum, os_hash_algo=stored.os_hash_algo,
                             os_hash_value=stored.os_hash_value)
            async with self.pool.acquire() as conn:
                active = await images_db.compare_and_set_status(conn, image_id, ("queued",), "active", **stats)
            if active is None:
                raise RuntimeError(f"Image {image_id} was deleted while it was being created")
            return active
        except BaseException:
            async with self.pool.acquire() as conn:
                await images_db.delete(conn, image_id)
            if self.images is not None:
                self.images.delete(str(image_id))
            raise
