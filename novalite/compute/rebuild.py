"""Rebuild, API side: the server keeps its id, host, ports and volumes; its disks start over from an image.

Mirrors Nova's ``compute/api.py`` ``rebuild``: the instance is unlocked (or the
caller is admin) and ACTIVE, STOPPED or ERROR with no task; the image is one
the caller may see (an image it may not see is answered as one that does not
exist: "Cannot find image for rebuild"), active, fits the flavor, and its
kernel/ramdisk are visible too; a volume-backed server keeps its image (a
different one is refused, as Nova before 2.93). Then one transaction moves
task_state None → ``rebuilding`` with the new image, name, metadata, key and
user data written on the row, and starts the ``rebuild`` action; the host
(``ComputeManager.rebuild_instance``) does the rest. The admin password travels
only in the cast, never through Postgres.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from novalite import exception, quota
from novalite.compute import states
from novalite.compute.api import check_injected_files_quota, check_metadata_quota
from novalite.compute.image_actions import is_volume_backed
from novalite.config import Config
from novalite.context import RequestContext
from novalite.db import catalog
from novalite.db import images as images_db
from novalite.db import instances as db
from novalite.db import volumes as volumes_db

log = structlog.get_logger(__name__)

# task_state, as Nova names them (nova/compute/task_states.py)
REBUILDING = "rebuilding"
REBUILD_BLOCK_DEVICE_MAPPING = "rebuild_block_device_mapping"
REBUILD_SPAWNING = "rebuild_spawning"
REBUILD_TASK_STATES = (REBUILDING, REBUILD_BLOCK_DEVICE_MAPPING, REBUILD_SPAWNING)

REBUILD_VM_STATES = (states.ACTIVE, states.STOPPED, states.ERROR)
REBUILD_EVENT = "compute_rebuild_instance"  # the host's action event (a rebuild's and an evacuation's)

UNSET: Any = object()  # a field the request did not name: the instance keeps its value


@dataclass
class RebuildRequest:
    """What the API parsed from a ``rebuild`` action (fields left UNSET are kept)."""

    image_ref: str
    admin_password: str | None = None
    name: Any = UNSET
    description: Any = UNSET
    metadata: Any = UNSET
    key_name: Any = UNSET
    user_data: Any = UNSET
    hostname: Any = UNSET
    access_ip_v4: Any = UNSET
    access_ip_v6: Any = UNSET
    auto_disk_config: Any = UNSET
    injected_files: list[tuple[str, str]] = field(default_factory=list)
    preserve_ephemeral: bool = False


class RebuildCheck:
    """The checks and the state change of one accepted rebuild (Nova's compute API rebuild)."""

    def __init__(self, pool: asyncpg.Pool, config: Config) -> None:
        self.pool = pool
        self.config = config

    async def accept(self, ctx: RequestContext, inst: asyncpg.Record, req: RebuildRequest) -> asyncpg.Record:
        """Validate, move the instance to ``rebuilding`` and start the action; return the updated row.

        The caller has checked the lock and the instance's state, and casts to the host afterwards.
        """
        uuid = str(inst["uuid"])
        image_id = req.image_ref.rstrip("/").rsplit("/", 1)[-1]
        async with self.pool.acquire() as conn:
            image = await images_db.get_visible(conn, image_id, ctx.project_id, ctx.is_admin)
            if image is None:
                raise exception.Invalid("Cannot find image for rebuild")
            if image["status"] != "active":
                raise exception.Invalid(f"Image {image_id} is not active.")
            volume_backed = await is_volume_backed(conn, inst)
            if volume_backed:
                await self._check_volume_image(conn, uuid, image_id)
            self._check_fits(image, inst["flavor"], volume_backed)
            props = dict(image["properties"] or {})
            kernel_id, ramdisk_id = await self._kernel_and_ramdisk(conn, ctx, props)
            if req.auto_disk_config is True and str(props.get("auto_disk_config", "")).lower() == "disabled":
                raise exception.Invalid(f"Requested image {image_id} has automatic disk resize disabled.")
            limits = await quota.get_limits(conn, self.config.quota, inst["project_id"])
            self._check_quotas(req, limits)
            updates = await self._updates(conn, ctx, req)
        if req.user_data is not UNSET and req.user_data is not None:
            if len(base64.b64decode(req.user_data)) > self.config.compute.max_user_data_bytes:
                raise exception.Invalid("User data too large.")
        spec = dict(inst["request_spec"] or {})
        spec["image"] = {
            "id": inst["image_ref"] if volume_backed else image_id, "properties": props, "min_ram": image["min_ram"],
            "min_disk": image["min_disk"], "disk_format": image["disk_format"],
        }
        if not volume_backed:
            updates["image_ref"] = image_id  # a volume-backed server keeps its (possibly empty) image_ref
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                row = await db.compare_and_set(
                    conn, uuid, expect_vm_state=list(REBUILD_VM_STATES), expect_task_state=None,
                    task_state=REBUILDING, kernel_id=kernel_id, ramdisk_id=ramdisk_id, progress=0,
                    request_spec=spec, **updates,
                )
            except db.StateConflict as conflict:
                actual = conflict.actual
                if actual is None or actual["deleted"]:
                    raise exception.NotFound(f"Instance {uuid} could not be found.") from None
                raise exception.Conflict(
                    f"Cannot 'rebuild' instance {uuid} while it is in task_state {actual['task_state']}"
                ) from None
            await db.start_actions(conn, [uuid], "rebuild", ctx.request_id, ctx.user_id, ctx.project_id)
        log.info("rebuild_accepted", instance_uuid=uuid, image_id=image_id, host=inst["host"])
        return row

    @staticmethod
    async def _check_volume_image(conn: asyncpg.Connection, uuid: str, image_id: str) -> None:
        """A volume-backed server is rebuilt with the image its root volume came from, or not at all."""
        root = next((b for b in await volumes_db.volume_bdms(conn, uuid) if b["boot_index"] == 0), None)
        vol = await volumes_db.get(conn, root["volume_id"]) if root is not None and root["volume_id"] else None
        if vol is None or str(vol["image_id"] or "") != image_id:
            raise exception.Invalid(
                f"Image {image_id} is unacceptable: Unable to rebuild with a different image for a "
                "volume-backed server."
            )

    @staticmethod
    def _check_fits(image: asyncpg.Record, flavor: dict, volume_backed: bool) -> None:
        """Nova's _validate_flavor_image_nostatus: memory, and the local root disk's room."""
        if image["min_ram"] and flavor["memory_mb"] < image["min_ram"]:
            raise exception.Invalid("Flavor's memory is too small for requested image.")
        if volume_backed or not flavor["root_gb"]:
            return
        disk = flavor["root_gb"] * 1024**3
        if image["min_disk"] and flavor["root_gb"] < image["min_disk"]:
            raise exception.Invalid(
                f"Flavor's disk is too small for requested image. Flavor disk is {disk} bytes, "
                f"minimum required by image is {image['min_disk'] * 1024**3} bytes."
            )
        if image["size"] and image["size"] > disk:
            raise exception.Invalid(
                f"Flavor's disk is too small for requested image. Flavor disk is {disk} bytes, "
                f"image is {image['size']} bytes."
            )

    @staticmethod
    async def _kernel_and_ramdisk(conn: asyncpg.Connection, ctx: RequestContext, props: dict) -> tuple[str, str]:
        kernel_id = str(props.get("kernel_id") or "")
        ramdisk_id = str(props.get("ramdisk_id") or "")
        for ref in (kernel_id, ramdisk_id):
            if ref and await images_db.get_visible(conn, ref, ctx.project_id, ctx.is_admin) is None:
                raise exception.Invalid("Cannot find image for rebuild")
        return kernel_id, ramdisk_id

    @staticmethod
    def _check_quotas(req: RebuildRequest, limits: dict) -> None:
        if req.metadata is not UNSET and req.metadata is not None:
            check_metadata_quota(req.metadata, limits)
        check_injected_files_quota(req.injected_files, limits)

    @staticmethod
    async def _updates(conn: asyncpg.Connection, ctx: RequestContext, req: RebuildRequest) -> dict[str, Any]:
        """The instance columns the request changes."""
        out: dict[str, Any] = {}
        if req.key_name is not UNSET:
            if req.key_name:
                # The caller's key pair (users own keys, projects own servers), as Nova looks it up.
                key = await catalog.get_keypair(conn, ctx.user_id, req.key_name)
                if key is None:
                    raise exception.Invalid("Invalid key_name provided.")
                out.update(key_name=key["name"], key_data=key["public_key"])
            else:
                out.update(key_name=None, key_data=None)
        simple = {"name": "display_name", "description": "display_description", "metadata": "metadata",
                  "user_data": "user_data", "hostname": "hostname", "access_ip_v4": "access_ip_v4",
                  "access_ip_v6": "access_ip_v6", "auto_disk_config": "auto_disk_config"}
        for attr, column in simple.items():
            value = getattr(req, attr)
            if value is not UNSET:
                out[column] = value if column != "metadata" else (value or {})
        if req.injected_files:
            out["injected_files"] = [list(f) for f in req.injected_files]
        return out
