"""Shelve, shelveOffload and unshelve, API side: the checks, the snapshot image, the task state, the action.

Mirrors Nova's ``compute/api.py`` ``shelve``/``shelve_offload``/``unshelve``:

- shelve: unlocked (or admin), ACTIVE, STOPPED, PAUSED or SUSPENDED with no
  task. An image-backed server gets a queued snapshot image named
  ``<name>-shelved`` (Nova's ``create_image`` with ``image_type=snapshot``, as
  createImage makes it); a volume-backed one gets none and goes straight to the
  offload, as in Nova. task_state None → ``shelving``, action ``shelve``.
- shelveOffload: a SHELVED server, task_state None → ``shelving_offloading``.
- unshelve: SHELVED or SHELVED_OFFLOADED. An availability zone (2.77) or a host
  (2.91, admin) may be named only for an offloaded server (409 otherwise); the
  zone must be an available one (400), the host must exist (400) and be in the
  zone the server will have (409). The request spec keeps the new zone (Nova
  saves it) and the requested host; task_state None → ``unshelving``, action
  ``unshelve``; the conductor takes it from there.

novalite keeps in ``system_metadata`` what the host needs again after a
restart: the snapshot being made (``snapshot_image_id``, as createImage does)
until the shelve ends, then Nova's ``shelved_at``/``shelved_image_id``/``shelved_host``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from novalite import exception
from novalite.compute import states
from novalite.compute.image_actions import (
    SYSMETA_IMAGE,
    ImageRequest,
    is_volume_backed,
    snapshot_image_values,
)
from novalite.context import RequestContext
from novalite.db import boot as lookups
from novalite.db import images as images_db
from novalite.db import instances as db

log = structlog.get_logger(__name__)

# task_state, as Nova names them (nova/compute/task_states.py)
SHELVING = "shelving"
SHELVING_IMAGE_PENDING_UPLOAD = "shelving_image_pending_upload"
SHELVING_IMAGE_UPLOADING = "shelving_image_uploading"
SHELVING_OFFLOADING = "shelving_offloading"
UNSHELVING = "unshelving"
SHELVE_TASK_STATES = (SHELVING, SHELVING_IMAGE_PENDING_UPLOAD, SHELVING_IMAGE_UPLOADING, SHELVING_OFFLOADING,
                      UNSHELVING)

SHELVE_VM_STATES = (states.ACTIVE, states.STOPPED, states.PAUSED, states.SUSPENDED)
SHELVED_VM_STATES = (states.SHELVED, states.SHELVED_OFFLOADED)

# Nova's shelve keys of system_metadata (compute/utils.py remove_shelved_keys_from_system_metadata).
SHELVED_KEYS = ("shelved_at", "shelved_image_id", "shelved_host")

UNSET: Any = object()  # unshelve without an availability_zone key: the server keeps its zone


def without_shelved_keys(sysmeta: dict | None) -> dict:
    return {k: v for k, v in (sysmeta or {}).items() if k not in SHELVED_KEYS}


async def delete_shelved_image(pool: asyncpg.Pool, store: Any, image_id: str | None) -> bool:
    """Delete a shelved server's snapshot and its data (Nova's _delete_snapshot_of_shelved_instance:
    one already gone is only logged). ``store`` has the image store's ``delete``."""
    if not image_id:
        return False
    async with pool.acquire() as conn:
        gone = await images_db.delete(conn, image_id)
    if store is not None:
        store.delete(image_id)
    if gone:
        log.info("shelved_image_deleted", image_id=image_id)
    else:
        log.warning("shelved_image_already_gone", image_id=image_id)
    return gone


class ShelveCheck:
    """The checks and the state change of an accepted shelve, shelveOffload or unshelve."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @staticmethod
    def _conflict(uuid: str, action: str, conflict: db.StateConflict) -> exception.NovaliteException:
        actual = conflict.actual
        if actual is None or actual["deleted"]:
            return exception.NotFound(f"Instance {uuid} could not be found.")
        return exception.Conflict(f"Cannot '{action}' instance {uuid} while it is in task_state {actual['task_state']}")

    async def accept_shelve(self, ctx: RequestContext, inst: asyncpg.Record) -> str | None:
        """Make the snapshot image (image-backed servers), move to ``shelving``, start the action.

        Returns the image id, None for a volume-backed server (the host offloads it at once).
        """
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn:
            volume_backed = await is_volume_backed(conn, inst)
            values = props = None
            if not volume_backed:
                values, props = await snapshot_image_values(
                    conn, ctx, inst, ImageRequest(name=f"{inst['display_name']}-shelved"))
            async with conn.transaction():
                sysmeta = dict(inst["system_metadata"] or {})
                # Nova keeps the image the server was booted from for the unshelve.
                sysmeta["image_base_image_ref"] = str(inst["image_ref"] or "")
                image_id = None
                if values is not None and props is not None:
                    image = await images_db.create(conn, values, props)
                    if values["visibility"] == "shared":
                        await images_db.add_member(conn, image["id"], inst["project_id"])
                    image_id = str(image["id"])
                    sysmeta[SYSMETA_IMAGE] = image_id
                try:
                    await db.compare_and_set(conn, uuid, expect_vm_state=list(SHELVE_VM_STATES),
                                             expect_task_state=None, task_state=SHELVING, system_metadata=sysmeta)
                except db.StateConflict as conflict:
                    raise self._conflict(uuid, "shelve", conflict) from None
                await db.start_actions(conn, [uuid], "shelve", ctx.request_id, ctx.user_id, ctx.project_id)
        log.info("shelve_accepted", instance_uuid=uuid, image_id=image_id, host=inst["host"])
        return image_id

    async def accept_offload(self, ctx: RequestContext, inst: asyncpg.Record) -> None:
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await db.compare_and_set(conn, uuid, expect_vm_state=states.SHELVED, expect_task_state=None,
                                         task_state=SHELVING_OFFLOADING)
            except db.StateConflict as conflict:
                raise self._conflict(uuid, "shelveOffload", conflict) from None
            await db.start_actions(conn, [uuid], "shelveOffload", ctx.request_id, ctx.user_id, ctx.project_id)
        log.info("shelve_offload_accepted", instance_uuid=uuid, host=inst["host"])

    async def accept_unshelve(
        self, ctx: RequestContext, inst: asyncpg.Record, new_az: Any = UNSET, host: str | None = None,
        authorize_host: Callable[[], None] | None = None,
    ) -> None:
        """Nova's unshelve checks, in Nova's order; then the spec's zone and host, ``unshelving``, the action.

        ``authorize_host`` raises when the caller may not name a host (checked where Nova checks it).
        """
        uuid = str(inst["uuid"])
        az_passed = new_az is not UNSET
        if (az_passed or host) and inst["vm_state"] != states.SHELVED_OFFLOADED:
            raise exception.Conflict(
                f'Specifying an availability zone or a host when unshelving server "{uuid}" with status '
                f'"{inst["vm_state"]}" is not supported. The server status must be SHELVED_OFFLOADED.')
        spec = dict(inst["request_spec"] or {})
        async with self.pool.acquire() as conn:
            if az_passed and new_az:
                zones = {r["availability_zone"] for r in await conn.fetch(
                    "SELECT DISTINCT availability_zone FROM compute_nodes WHERE NOT disabled")}
                if new_az not in zones:
                    raise exception.Invalid("The requested availability zone is not available")
            expected_az = new_az if az_passed else spec.get("availability_zone")
            if host:
                if authorize_host is not None:
                    authorize_host()
                node = await lookups.compute_node(conn, host)
                if node is None:
                    raise exception.Invalid(f"Compute host {host} could not be found.")
                if expected_az is not None and node["availability_zone"] != expected_az:
                    raise exception.Conflict(f'Host "{host}" is not in the availability zone "{expected_az}".')
                host = node["host"]
            spec["availability_zone"] = expected_az
            spec["requested_destination"] = {"host": host} if host else None
            async with conn.transaction():
                try:
                    await db.compare_and_set(conn, uuid, expect_vm_state=list(SHELVED_VM_STATES),
                                             expect_task_state=None, task_state=UNSHELVING, request_spec=spec)
                except db.StateConflict as conflict:
                    raise self._conflict(uuid, "unshelve", conflict) from None
                await db.start_actions(conn, [uuid], "unshelve", ctx.request_id, ctx.user_id, ctx.project_id)
        log.info("unshelve_accepted", instance_uuid=uuid, availability_zone=expected_az, host=host)
