"""Shelve, offload and unshelve on a compute host: the ShelveManager each ComputeManager holds.

Nova's ``shelve_instance``, ``shelve_offload_instance``, ``unshelve_instance`` and
``start_instance`` (for a shelved server that was never offloaded), each under
the instance lock, each a chain of compare-and-sets through Nova's task states:

- shelve: the guest is powered off (a clean shutdown unless paused), the root
  disk goes into the queued ``<name>-shelved`` image through the snapshot path
  (``shelving`` → ``shelving_image_pending_upload`` → ``shelving_image_uploading``),
  then vm_state ``shelved`` with ``shelved_at``/``shelved_image_id``/``shelved_host``
  in system_metadata. With ``[compute] shelved_offload_time = 0`` the offload
  follows at once (task ``shelving_offloading``), inside the same event, as Nova.
- offload: the domain and the instance's files go, the ports are unbound, the
  resource claim is freed and host/node are cleared in the same transaction
  that sets ``shelved_offloaded``. A volume-backed server has no image and is
  offloaded straight from its shelve, as in Nova.
- unshelve of an offloaded server, on the host the conductor claimed: ``spawning``,
  the ports bound here, the root disk from the shelved image, the volumes it
  has, a config drive, the domain → ACTIVE; then the shelved image is deleted
  and the shelve keys removed. A failure cleans up here, frees the claim and
  leaves the server SHELVED_OFFLOADED with a fault (Nova's reverts_task_state).
- unshelve of a shelved server: powered on where it is (task ``powering-on``,
  event ``compute_start_instance``, as Nova's conductor sends it to start_instance).

A periodic pass offloads servers shelved longer than ``shelved_offload_time``
seconds (when > 0), as Nova's ``_poll_shelved_instances``. After a crash,
:meth:`ShelveManager.resume` takes each interrupted step up again.
"""

from __future__ import annotations

import traceback
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from novalite.compute import states
from novalite.compute.disks import prepare_local_disks
from novalite.compute.failures import (
    Failure,
    Notification,
    fail_instance,
    finish_superseded,
    moved_on,
)
from novalite.compute.image_actions import IMAGE_PENDING_UPLOAD, IMAGE_UPLOADING, SYSMETA_IMAGE
from novalite.compute.power import POWERING_ON, RECOVER_EVENT
from novalite.compute.shelve import (
    SHELVING,
    SHELVING_IMAGE_PENDING_UPLOAD,
    SHELVING_IMAGE_UPLOADING,
    SHELVING_OFFLOADING,
    UNSHELVING,
    delete_shelved_image,
    without_shelved_keys,
)
from novalite.db import images as images_db
from novalite.db import instances as db
from novalite.periodic import Periodic
from novalite.virt import power_state

log = structlog.get_logger(__name__)

SHELVE_EVENT = "compute_shelve_instance"
OFFLOAD_EVENT = "compute_shelve_offload_instance"
UNSHELVE_EVENT = "compute_unshelve_instance"
START_EVENT = "compute_start_instance"
SHELVING_STATES = (SHELVING, SHELVING_IMAGE_PENDING_UPLOAD, SHELVING_IMAGE_UPLOADING)
_SHELVING_FOR = {IMAGE_PENDING_UPLOAD: SHELVING_IMAGE_PENDING_UPLOAD, IMAGE_UPLOADING: SHELVING_IMAGE_UPLOADING}


class ShelveManager:
    """Host side of shelve, shelveOffload and unshelve for one host.

    ``manager`` is the host's ComputeManager: its driver, pool, locks, config,
    snapshot path, network and volume services, image cache, config drive and
    guest spec are what a shelve and an unshelve use.
    """

    def __init__(self, manager: Any, image_store: Any) -> None:
        """``image_store`` deletes image data (the shelved image once it is no longer needed)."""
        self.m = manager
        self.host: str = manager.host
        self.driver = manager.driver
        self.pool: asyncpg.Pool = manager.pool
        self.locks = manager.locks
        self.config = manager.config
        self.image_store = image_store
        self.spawn_task: Callable[[Any], None] = manager.spawn_task
        # Crash drills and tests: awaited after the instance reaches each task state.
        self.after_state: Callable[[str, str], Awaitable[None]] | None = None
        self._periodic = Periodic(f"shelve-offload-{self.host}", self.config.compute.shelved_poll_interval,
                                  self.offload_expired, stagger=True)

    @property
    def pub(self) -> str:
        return f"nova-compute:{self.host}"

    # -- casts -------------------------------------------------------------------
    def cast_shelve(self, uuid: str, request_id: str, clean_shutdown: bool = True) -> None:
        self.spawn_task(self.shelve_instance(uuid, request_id, clean_shutdown))

    def cast_offload(self, uuid: str, request_id: str, clean_shutdown: bool = True) -> None:
        self.spawn_task(self.shelve_offload_instance(uuid, request_id, clean_shutdown))

    def cast_unshelve(self, uuid: str, request_id: str) -> None:
        """Cast from the conductor: power a shelved server on here, or spawn an offloaded one claimed here."""
        self.spawn_task(self.unshelve_instance(uuid, request_id))

    def start(self) -> None:
        if self.config.compute.shelved_offload_time > 0:
            self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def _set(self, uuid: str, expect: Any, new: str | None, **updates: Any) -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            row = await db.compare_and_set(conn, uuid, expect_task_state=expect, task_state=new, **updates)
        if self.after_state is not None and new is not None and new != expect:
            await self.after_state(uuid, new)
        return row

    async def _notify(self, uuid: str, request_id: str, event_type: str, payload: dict) -> None:
        async with self.pool.acquire() as conn:
            await db.notify(conn, event_type, {"host": self.host, **payload}, publisher_id=self.pub,
                            instance_uuids=[uuid], request_id=request_id)

    async def _power_off(self, inst: asyncpg.Record, clean_shutdown: bool) -> None:
        """Nova's _power_off_instance: a clean shutdown (not of a paused guest), else at once."""
        clean = clean_shutdown and inst["power_state"] != power_state.PAUSED
        await self.driver.power_off(str(inst["uuid"]), self.config.compute.shutdown_timeout if clean else 0)

    async def _superseded(self, uuid: str, request_id: str, event: str, conflict: db.StateConflict) -> None:
        what = moved_on(conflict)
        log.info("shelve_superseded", event=event, now=what)
        async with self.pool.acquire() as conn:
            await finish_superseded(conn, uuid, request_id, event, what)

    async def _failed(self, uuid: str, request_id: str, event: str, exc: Exception, notification: str,
                      expect_task: list[str], **revert: Any) -> None:
        """Nova's reverts_task_state + wrap_instance_fault: task_state back to None (with ``revert``), a fault."""
        reason = f"{type(exc).__name__}: {exc}"
        tb = traceback.format_exc(limit=5)
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                await db.compare_and_set(conn, uuid, expect_task_state=expect_task, task_state=None, **revert)
            except db.StateConflict:
                pass
            await fail_instance(conn, uuid, request_id, Failure(reason, tb, self.host, traceback=tb), events=[event],
                                notification=Notification(notification, {"host": self.host, "fault": reason},
                                                          self.pub))

    # -- shelve ------------------------------------------------------------------
    async def shelve_instance(self, uuid: str, request_id: str, clean_shutdown: bool = True) -> None:
        """The host's half of shelve (see the module's docstring)."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        async with self.locks.lock(uuid):
            async with self.pool.acquire() as conn:
                inst = await db.get(conn, uuid)
            if inst is None or inst["task_state"] != SHELVING:
                log.info("shelve_not_pending", task_state=inst["task_state"] if inst else None)
                return
            image_id = str((inst["system_metadata"] or {}).get(SYSMETA_IMAGE) or "")
            if not image_id:  # volume-backed: Nova casts shelve_offload_instance straight away
                await self._offload_action(inst, request_id, clean_shutdown)
                return
            offload = self.config.compute.shelved_offload_time == 0
            async with self.pool.acquire() as conn:
                await db.event_start(conn, uuid, request_id, SHELVE_EVENT, self.host)
            await self._notify(uuid, request_id, "instance.shelve.start", {})
            try:
                await self._power_off(inst, clean_shutdown)

                async def update_task_state(state: str) -> asyncpg.Record:
                    new = _SHELVING_FOR[state]
                    expect = SHELVING if new == SHELVING_IMAGE_PENDING_UPLOAD else SHELVING_IMAGE_PENDING_UPLOAD
                    return await self._set(uuid, expect, new)

                await self.m.snapshot.snapshot_into(inst, image_id, update_task_state)
                info = await self.driver.get_info(uuid)
                sysmeta = {k: v for k, v in (inst["system_metadata"] or {}).items() if k != SYSMETA_IMAGE}
                sysmeta.update(shelved_at=datetime.now(UTC).isoformat(), shelved_image_id=image_id,
                               shelved_host=self.host)
                async with self.pool.acquire() as conn, conn.transaction():
                    inst = await db.compare_and_set(
                        conn, uuid, expect_task_state=[SHELVING, SHELVING_IMAGE_UPLOADING],
                        vm_state=states.SHELVED, task_state=SHELVING_OFFLOADING if offload else None,
                        power_state=info.power_state if info else power_state.NOSTATE, system_metadata=sysmeta,
                    )
                    await db.notify(conn, "instance.shelve.end", {"host": self.host, "state": states.SHELVED},
                                    publisher_id=self.pub, instance_uuids=[uuid], request_id=request_id)
                    if not offload:
                        await db.event_finish(conn, uuid, request_id, SHELVE_EVENT)
                        await db.finish_action(conn, uuid, request_id)
                log.info("instance_shelved", image_id=image_id, offload=offload)
            except db.StateConflict as conflict:
                await self.m.snapshot.discard_image(image_id)
                await self._superseded(uuid, request_id, SHELVE_EVENT, conflict)
                return
            except Exception as exc:
                log.warning("shelve_failed", error=str(exc))
                await self.m.snapshot.discard_image(image_id)
                await self._failed(uuid, request_id, SHELVE_EVENT, exc, "instance.shelve.error",
                                   list(SHELVING_STATES), system_metadata={
                                       k: v for k, v in (inst["system_metadata"] or {}).items() if k != SYSMETA_IMAGE})
                return
            if offload:
                await self._offload(inst, request_id, False, SHELVE_EVENT)

    # -- offload -----------------------------------------------------------------
    async def shelve_offload_instance(self, uuid: str, request_id: str, clean_shutdown: bool = True) -> None:
        """The shelveOffload action (and the periodic offload): a SHELVED server leaves this host."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        async with self.locks.lock(uuid):
            async with self.pool.acquire() as conn:
                inst = await db.get(conn, uuid)
            if inst is None or inst["task_state"] != SHELVING_OFFLOADING or inst["host"] != self.host:
                log.info("offload_not_pending", task_state=inst["task_state"] if inst else None)
                return
            await self._offload_action(inst, request_id, clean_shutdown)

    async def _offload_action(self, inst: asyncpg.Record, request_id: str, clean_shutdown: bool) -> None:
        async with self.pool.acquire() as conn:
            await db.event_start(conn, str(inst["uuid"]), request_id, OFFLOAD_EVENT, self.host)
        await self._offload(inst, request_id, clean_shutdown, OFFLOAD_EVENT)

    async def _offload(self, inst: asyncpg.Record, request_id: str, clean_shutdown: bool, event: str) -> None:
        """Nova's _shelve_offload_instance; ``event`` (already started) is finished with it. Caller holds the lock."""
        uuid = str(inst["uuid"])
        await self._notify(uuid, request_id, "instance.shelve_offload.start", {})
        try:
            await self._power_off(inst, clean_shutdown)
            info = await self.driver.get_info(uuid)
            if self.m.network_api is not None:
                await self.m.network_api.bind_ports_to_host(uuid, None)
            await self.driver.destroy(uuid)
            await self.m.store.remove(uuid)
            async with self.pool.acquire() as conn, conn.transaction():
                # The claim goes in the same transaction that clears the host: no host counts it any more.
                await conn.execute("DELETE FROM allocations WHERE instance_uuid = $1", uuid)
                await db.compare_and_set(
                    conn, uuid, expect_task_state=[SHELVING, SHELVING_OFFLOADING], vm_state=states.SHELVED_OFFLOADED,
                    task_state=None, host=None, node=None,
                    power_state=info.power_state if info else power_state.SHUTDOWN,
                )
                await db.event_finish(conn, uuid, request_id, event)
                await db.finish_action(conn, uuid, request_id)
                await db.notify(conn, "instance.shelve_offload.end",
                                {"host": self.host, "state": states.SHELVED_OFFLOADED},
                                publisher_id=self.pub, instance_uuids=[uuid], request_id=request_id)
            log.info("instance_shelve_offloaded")
        except db.StateConflict as conflict:
            await self._superseded(uuid, request_id, event, conflict)
        except Exception as exc:
            log.warning("shelve_offload_failed", error=str(exc))
            await self._failed(uuid, request_id, event, exc, "instance.shelve_offload.error",
                               [SHELVING, SHELVING_OFFLOADING])

    async def offload_expired(self) -> list[str]:
        """Nova's _poll_shelved_instances: offload servers shelved here longer than shelved_offload_time."""
        offload_time = self.config.compute.shelved_offload_time
        if offload_time <= 0:
            return []
        cutoff = datetime.now(UTC) - timedelta(seconds=offload_time)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT uuid, user_id, project_id, system_metadata FROM instances
                   WHERE host = $1 AND vm_state = 'shelved' AND task_state IS NULL AND NOT deleted""", self.host)
        done = []
        for r in rows:
            try:
                shelved_at = datetime.fromisoformat(str((r["system_metadata"] or {}).get("shelved_at")))
            except ValueError:
                continue
            if shelved_at.tzinfo is None:
                shelved_at = shelved_at.replace(tzinfo=UTC)
            if shelved_at > cutoff:
                continue
            uuid = str(r["uuid"])
            request_id = f"req-{uuidlib.uuid4()}"
            async with self.pool.acquire() as conn, conn.transaction():
                try:
                    await db.compare_and_set(conn, uuid, expect_vm_state=states.SHELVED, expect_task_state=None,
                                             task_state=SHELVING_OFFLOADING)
                except db.StateConflict:
                    continue
                await db.start_actions(conn, [uuid], "shelveOffload", request_id, r["user_id"], r["project_id"])
            await self.shelve_offload_instance(uuid, request_id, clean_shutdown=False)
            done.append(uuid)
        return done

    # -- unshelve ----------------------------------------------------------------
    async def unshelve_instance(self, uuid: str, request_id: str) -> None:
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        async with self.locks.lock(uuid):
            async with self.pool.acquire() as conn:
                inst = await db.get(conn, uuid)
            if inst is None or inst["host"] != self.host:
                log.info("unshelve_not_here", host=inst["host"] if inst else None)
                return
            if inst["vm_state"] == states.SHELVED and inst["task_state"] == POWERING_ON:
                await self._start_shelved(inst, request_id)
            elif inst["vm_state"] == states.SHELVED_OFFLOADED and inst["task_state"] == UNSHELVING:
                await self._unshelve_offloaded(inst, request_id)
            else:
                log.info("unshelve_not_pending", vm_state=inst["vm_state"], task_state=inst["task_state"])

    async def _start_shelved(self, inst: asyncpg.Record, request_id: str) -> None:
        """Nova's start_instance for a shelved server: power on, ACTIVE, the shelved image deleted."""
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn:
            await db.event_start(conn, uuid, request_id, START_EVENT, self.host)
        await self._notify(uuid, request_id, "instance.power_on.start", {})
        sysmeta = inst["system_metadata"] or {}
        try:
            await self.driver.power_on(uuid)
            info = await self.driver.get_info(uuid)
            async with self.pool.acquire() as conn, conn.transaction():
                await db.compare_and_set(
                    conn, uuid, expect_task_state=POWERING_ON, task_state=None, vm_state=states.ACTIVE,
                    power_state=info.power_state if info else power_state.NOSTATE,
                    system_metadata=without_shelved_keys(sysmeta),
                )
                await db.event_finish(conn, uuid, request_id, START_EVENT)
                await db.finish_action(conn, uuid, request_id)
                await db.notify(conn, "instance.power_on.end", {"host": self.host, "state": states.ACTIVE},
                                publisher_id=self.pub, instance_uuids=[uuid], request_id=request_id)
        except db.StateConflict as conflict:
            await self._superseded(uuid, request_id, START_EVENT, conflict)
            return
        except Exception as exc:
            log.warning("unshelve_power_on_failed", error=str(exc))
            await self._failed(uuid, request_id, START_EVENT, exc, "instance.power_on.error", [POWERING_ON])
            return
        await delete_shelved_image(self.pool, self.image_store, sysmeta.get("shelved_image_id"))
        log.info("instance_unshelved_in_place")

    async def _unshelve_offloaded(self, inst: asyncpg.Record, request_id: str) -> None:
        """Nova's _unshelve_instance on the host the conductor claimed."""
        uuid = str(inst["uuid"])
        sysmeta = inst["system_metadata"] or {}
        image_id = str(sysmeta.get("shelved_image_id") or "")
        spec = {k: v for k, v in (inst["request_spec"] or {}).items() if k != "requested_destination"}
        async with self.pool.acquire() as conn:
            await db.event_start(conn, uuid, request_id, UNSHELVE_EVENT, self.host)
        await self._notify(uuid, request_id, "instance.unshelve.start", {})
        try:
            inst = await self._set(uuid, UNSHELVING, states.SPAWNING)
            ports = []
            if self.m.network_api is not None:
                ports = await self.m.network_api.bind_ports_to_host(uuid, self.host)
            prepared = await self._disks(inst, image_id)
            await self.m.write_config_drive(inst, ports, prepared, None)
            await self.driver.spawn(self.m.guest_spec(inst, [p.nic() for p in ports], prepared))
            info = await self.driver.get_info(uuid)
            async with self.pool.acquire() as conn, conn.transaction():
                await db.compare_and_set(
                    conn, uuid, expect_vm_state=states.SHELVED_OFFLOADED, expect_task_state=states.SPAWNING,
                    vm_state=states.ACTIVE, task_state=None, launched_at=datetime.now(UTC),
                    power_state=info.power_state if info else power_state.NOSTATE,
                    system_metadata=without_shelved_keys(sysmeta), request_spec=spec,
                )
                await db.event_finish(conn, uuid, request_id, UNSHELVE_EVENT)
                await db.finish_action(conn, uuid, request_id)
                await db.notify(conn, "instance.unshelve.end", {"host": self.host, "state": states.ACTIVE},
                                publisher_id=self.pub, instance_uuids=[uuid], request_id=request_id)
        except db.StateConflict as conflict:
            await self.m.clean_partial_build(uuid)
            await self._superseded(uuid, request_id, UNSHELVE_EVENT, conflict)
            return
        except Exception as exc:
            log.warning("unshelve_failed", error=str(exc))
            await self.m.clean_partial_build(uuid)
            if self.m.network_api is not None:
                await self.m.network_api.bind_ports_to_host(uuid, None)
            async with self.pool.acquire() as conn:
                await conn.execute("DELETE FROM allocations WHERE instance_uuid = $1", uuid)
            await self._failed(uuid, request_id, UNSHELVE_EVENT, exc, "instance.unshelve.error",
                               [UNSHELVING, states.SPAWNING], host=None, node=None, request_spec=spec)
            return
        await delete_shelved_image(self.pool, self.image_store, image_id)
        log.info("instance_unshelved")

    async def _disks(self, inst: asyncpg.Record, image_id: str) -> Any:
        """The guest's disks: the root from the shelved image (the boot image's properties), the volumes."""
        uuid = str(inst["uuid"])
        spec_image = dict((inst["request_spec"] or {}).get("image") or {})
        image: dict[str, Any] = {"id": "", "properties": spec_image.get("properties") or {}}
        if image_id:
            async with self.pool.acquire() as conn:
                row = await images_db.get(conn, image_id)
            if row is None or row["status"] != "active":
                raise RuntimeError(f"Unshelve attempted but the image {image_id} cannot be found.")
            image.update(id=image_id, disk_format=row["disk_format"])
        prepared = await prepare_local_disks(
            store=self.m.store, uuid=uuid, image=image, kernel_id=inst["kernel_id"],
            ramdisk_id=inst["ramdisk_id"], flavor=inst["flavor"], write_files=not self.m.simulated,
        )
        if self.m.volume_build is not None:
            await self.m.volume_build.attached_disks(uuid, prepared)
        return prepared

    # -- recovery ----------------------------------------------------------------
    async def resume(self, inst: asyncpg.Record, request_id: str) -> str:
        """After a crash: take the interrupted shelve, offload or unshelve up again on this host.

        A shelve starts over (its image back to queued); an offload or an in-place unshelve is
        redone (each step is idempotent); an unshelve cut off while spawning here has its domain
        and files removed and spawns again on the claim it holds. Returns what was done.
        """
        uuid = str(inst["uuid"])
        task = inst["task_state"]
        vm_state = inst["vm_state"]
        note = f"interrupted by a restart in {vm_state}/{task}"
        if task in SHELVING_STATES:
            image_id = str((inst["system_metadata"] or {}).get(SYSMETA_IMAGE) or "")
            if image_id:
                await self.m.snapshot.requeue_image(uuid, image_id)
            back, cast, how = SHELVING, self.cast_shelve, "shelving again"
        elif task == SHELVING_OFFLOADING:
            back, cast, how = SHELVING_OFFLOADING, self.cast_offload, "offloading again"
        elif task == POWERING_ON:
            back, cast, how = POWERING_ON, self.cast_unshelve, "powering on again"
        elif task in (UNSHELVING, states.SPAWNING):
            await self.m.clean_partial_build(uuid)
            back, cast, how = UNSHELVING, self.cast_unshelve, "unshelving again on its claim"
        else:
            raise ValueError(f"not a shelve state: {vm_state}/{task}")
        async with self.pool.acquire() as conn, conn.transaction():
            await db.compare_and_set(conn, uuid, expect_task_state=task, task_state=back)
            await db.interrupt_open_events(conn, uuid, request_id, "interrupted by a restart of novalite")
            await db.event_finish(conn, uuid, request_id, RECOVER_EVENT, details=f"{note}; {how}")
        cast(uuid, request_id)
        return how
