"""createImage and createBackup, API side: the image record, the task state, the action.

Mirrors Nova's ``compute/api.py`` ``snapshot``/``backup`` and
``compute/utils.py`` ``create_image``: the instance is ACTIVE, STOPPED, PAUSED or
SUSPENDED with no task (a lock does not stop a snapshot, as in Nova); an image
is created in Glance's ``queued`` state carrying what Nova copies from the
instance's image system metadata (the source image's inheritable properties,
``min_ram``, ``min_disk`` as the flavor's root disk raised it at boot,
``base_image_ref``, ``owner_project_name``/``owner_user_name``) plus
``instance_uuid``, ``user_id``, ``image_type`` and the request's metadata.
An image made by another project's caller (an admin) is ``shared`` with the
instance's project, as Nova does. Then, in one transaction, task_state None →
``image_snapshot_pending`` (``image_backup`` for a backup) and the action
starts; the host (:mod:`novalite.compute.snapshot`) takes the disk and uploads it.

novalite keeps Nova's ``system_metadata`` for what the host needs again after
a restart: the image being made (``snapshot_image_id``) and a backup's
rotation (``backup_rotation``), removed when the work ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from novalite import exception
from novalite.compute import states
from novalite.context import RequestContext
from novalite.db import identity as identity_db
from novalite.db import images as images_db
from novalite.db import instances as db
from novalite.db import volumes as volumes_db

log = structlog.get_logger(__name__)

# task_state, as Nova names them (nova/compute/task_states.py)
IMAGE_SNAPSHOT_PENDING = "image_snapshot_pending"
IMAGE_SNAPSHOT = "image_snapshot"
IMAGE_PENDING_UPLOAD = "image_pending_upload"
IMAGE_UPLOADING = "image_uploading"
IMAGE_BACKUP = "image_backup"
SNAPSHOT_TASK_STATES = (IMAGE_SNAPSHOT_PENDING, IMAGE_SNAPSHOT, IMAGE_BACKUP, IMAGE_PENDING_UPLOAD, IMAGE_UPLOADING)

SNAPSHOT_VM_STATES = (states.ACTIVE, states.STOPPED, states.PAUSED, states.SUSPENDED)

# Image properties a snapshot never inherits (Nova's NON_INHERITABLE_IMAGE_PROPERTIES, SM_SKIP_KEYS).
NOT_INHERITED = frozenset({
    "cinder_encryption_key_id", "cinder_encryption_key_deletion_policy", "img_signature",
    "img_signature_hash_method", "img_signature_key_type", "img_signature_certificate_uuid",
    "mappings", "block_device_mapping", "img_mappings", "img_block_device_mapping",
})
NOT_INHERITED_PREFIXES = ("os_glance",)
# Keys of instances.system_metadata used while an image is being made.
SYSMETA_IMAGE = "snapshot_image_id"
SYSMETA_ROTATION = "backup_rotation"


@dataclass
class ImageRequest:
    """A createImage or createBackup request as the API parsed it."""

    name: str
    metadata: dict[str, str] = field(default_factory=dict)
    backup_type: str | None = None  # set: a createBackup
    rotation: int | None = None

    @property
    def is_backup(self) -> bool:
        return self.backup_type is not None


async def is_volume_backed(conn: asyncpg.Connection, inst: asyncpg.Record) -> bool:
    """Nova's is_volume_backed_instance: no image, or the root device is a volume."""
    if not inst["image_ref"]:
        return True
    bdms = await volumes_db.volume_bdms(conn, str(inst["uuid"]))
    return any(b["boot_index"] == 0 for b in bdms)


async def snapshot_image_values(
    conn: asyncpg.Connection, ctx: RequestContext, inst: asyncpg.Record, req: ImageRequest,
    image_type: bool = True,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The new image's base attributes and properties (Nova's create_image), before any data.

    ``image_type`` False: only what Nova's initialize_instance_snapshot_metadata gives (a
    volume-backed snapshot has no instance_uuid, user_id or image_type)."""
    spec_image = (inst["request_spec"] or {}).get("image") or {}
    props = {
        str(k): str(v) for k, v in (spec_image.get("properties") or {}).items()
        if k not in NOT_INHERITED and not str(k).startswith(NOT_INHERITED_PREFIXES) and v is not None
    }
    props["base_image_ref"] = str(inst["image_ref"] or "")
    user = await identity_db.get_user(conn, inst["user_id"])
    project = await identity_db.get_project(conn, inst["project_id"])
    if user is not None:
        props["owner_user_name"] = user["name"]
    if project is not None:
        props["owner_project_name"] = project["name"]
    if image_type:
        props.update(instance_uuid=str(inst["uuid"]), user_id=str(ctx.user_id),
                     image_type="backup" if req.is_backup else "snapshot")
    if req.is_backup:
        props["backup_type"] = str(req.backup_type)
    props.update({str(k): str(v) for k, v in req.metadata.items()})
    flavor = inst["flavor"] or {}
    values: dict[str, Any] = {
        "name": req.name,
        "owner": ctx.project_id,
        "status": "queued",
        "visibility": "private",
        "min_ram": int(spec_image.get("min_ram") or 0),
        # Nova's get_system_metadata_from_image: the flavor's root disk raises the image's min_disk.
        "min_disk": max(int(spec_image.get("min_disk") or 0), int(flavor.get("root_gb") or 0))
        if spec_image.get("disk_format") != "vhd" else int(flavor.get("root_gb") or 0),
    }
    if ctx.project_id != inst["project_id"]:
        values["visibility"] = "shared"
        props["instance_owner"] = inst["project_id"]
    if req.is_backup:
        # Nova drops the formats only for snapshots; the host sets what it uploads anyway.
        values["disk_format"] = spec_image.get("disk_format")
        source = await images_db.get(conn, str(inst["image_ref"] or ""))
        values["container_format"] = source["container_format"] if source is not None else None
    return values, props


class ImageActionCheck:
    """The checks and the state change of an accepted createImage/createBackup."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def accept(self, ctx: RequestContext, inst: asyncpg.Record, req: ImageRequest) -> asyncpg.Record:
        """Create the queued image, move the instance to its first task state, start the action.

        Returns the image row. The caller has checked the instance's state and casts to the host.
        """
        uuid = str(inst["uuid"])
        action = "createBackup" if req.is_backup else "createImage"
        task_state = IMAGE_BACKUP if req.is_backup else IMAGE_SNAPSHOT_PENDING
        async with self.pool.acquire() as conn:
            if await is_volume_backed(conn, inst):
                if req.is_backup:
                    raise exception.Invalid("Backup is not supported for volume-backed instances.")
                raise exception.Invalid("Snapshot of a volume-backed server is not supported by novalite yet.")
            values, props = await snapshot_image_values(conn, ctx, inst, req)
            async with conn.transaction():
                image = await images_db.create(conn, values, props)
                if values["visibility"] == "shared":
                    await images_db.add_member(conn, image["id"], inst["project_id"])
                sysmeta = dict(inst["system_metadata"] or {})
                sysmeta[SYSMETA_IMAGE] = str(image["id"])
                if req.is_backup:
                    sysmeta[SYSMETA_ROTATION] = req.rotation
                try:
                    await db.compare_and_set(
                        conn, uuid, expect_vm_state=list(SNAPSHOT_VM_STATES), expect_task_state=None,
                        task_state=task_state, system_metadata=sysmeta,
                    )
                except db.StateConflict as conflict:
                    actual = conflict.actual
                    if actual is None or actual["deleted"]:
                        raise exception.NotFound(f"Instance {uuid} could not be found.") from None
                    if actual["vm_state"] not in SNAPSHOT_VM_STATES:
                        raise exception.Conflict(
                            f"Cannot '{action}' instance {uuid} while it is in vm_state {actual['vm_state']}"
                        ) from None
                    raise exception.Conflict(
                        f"Cannot '{action}' instance {uuid} while it is in task_state {actual['task_state']}"
                    ) from None
                await db.start_actions(conn, [uuid], action, ctx.request_id, ctx.user_id, ctx.project_id)
        log.info("image_action_accepted", instance_uuid=uuid, action=action, image_id=str(image["id"]),
                 host=inst["host"])
        return image
