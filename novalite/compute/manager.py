"""One compute manager per configured host: builds and destroys its instances.

A build runs as its own task (the queue consumer stays free), holds the
instance's lock, and waits for the host's ``asyncio.Semaphore``
(max_concurrent_builds). Each step is a compare-and-set of task_state
(None → networking → block_device_mapping → spawning → active), an action
event and a notification, so a delete arriving mid-build makes the next step
fail, the build cleans up what it made, and the delete finishes.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from novalite import metrics
from novalite.compute import states
from novalite.compute.api import delete_end
from novalite.compute.disks import GiB, PreparedDisks, prepare_local_disks
from novalite.compute.evacuate import EvacuateManager
from novalite.compute.failures import (
    Failure,
    Notification,
    fail_instance,
    finish_superseded,
    moved_on,
)
from novalite.compute.host import ComputeHost
from novalite.compute.live_migration import LiveMigrationManager
from novalite.compute.locks import InstanceLocks
from novalite.compute.metadata import injected_files, instance_meta, user_data
from novalite.compute.power import PowerManager
from novalite.compute.rebuild import (
    REBUILD_BLOCK_DEVICE_MAPPING,
    REBUILD_EVENT,
    REBUILD_SPAWNING,
    REBUILDING,
)
from novalite.compute.rescue import RescueManager
from novalite.compute.resize import ResizeManager
from novalite.compute.shelve_host import ShelveManager
from novalite.compute.snapshot import ImageWriter, SnapshotManager
from novalite.config import Config, HostConfig
from novalite.db import instances as db
from novalite.db.heartbeats import Heartbeats
from novalite.db.steps import BuildStep, StepWriter
from novalite.network import NetworkAPI, PortInfo, network_data
from novalite.periodic import Periodic, staggered
from novalite.scheduler.affinity import validate_instance_group_policy
from novalite.virt import power_state
from novalite.virt.configdrive import build_config_drive
from novalite.virt.driver import GuestSpec, HostInfo, NicSpec, VirtError
from novalite.volume.api import VolumeAPI
from novalite.volume.build import VolumeBuild

log = structlog.get_logger(__name__)

BUILD_EVENT = "compute_build_and_run_instance"  # the build's action event, as Nova names it
MAX_CONSOLE_BYTES = 100 * 1024  # the most of a console log Nova returns

# The conductor's reschedule, as the manager sees it: (uuid, request_id, alternates, attempts, admin_password).
Reschedule = Callable[[str, str, list[str], list[tuple[str, str]], str | None], Awaitable[None]]


def _lap(step: str, since: float) -> float:
    """Record that a build spent the time since ``since`` in ``step``; the time now, for the next step."""
    now = time.perf_counter()
    metrics.step_took(step, now - since)
    return now


class BuildAborted(Exception):
    """The instance left the build (deleted meanwhile): stop and clean up, no reschedule."""


class ComputeManager:
    """Builds, destroys and reports instances of one host through its virt driver."""

    def __init__(
        self,
        host: HostConfig,
        compute_host: ComputeHost,
        pool: asyncpg.Pool,
        steps: StepWriter,
        heartbeats: Heartbeats,
        config: Config,
        locks: InstanceLocks,
        reschedule: Reschedule,
        network_api: NetworkAPI | None = None,
        volume_build: VolumeBuild | None = None,
        image_store: ImageWriter | None = None,
        peers: Callable[[str], ComputeManager | None] | None = None,
    ) -> None:
        """``reschedule`` hands a build that failed here back to the conductor (its alternates);
        ``image_store`` is where snapshots are written; ``peers`` finds another host's manager
        (the other end of a resize)."""
        self.host = host.name
        self.network_api = network_api
        self.volume_build = volume_build  # a build's volumes: prepared, undone, released
        # libvirt's test driver: the same domains are described, but no volumes are made.
        self.simulated = compute_host.simulated
        self.store = compute_host.store  # the host's instance pool: image cache, instance volumes
        self.scratch = compute_host.scratch  # this machine's working files (config drives before upload)
        self.virt_type = compute_host.virt_type  # "auto" already resolved by the wiring
        self.host_config = host
        self.driver = compute_host.driver  # owned by the wiring (app.py), which closes it
        self.pool = pool
        self.steps = steps
        self.heartbeats = heartbeats
        self.config = config
        self.locks = locks
        self.reschedule = reschedule
        self.semaphore = asyncio.Semaphore(host.max_concurrent_builds or config.compute.max_concurrent_builds)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.host_info: HostInfo | None = None
        self._tasks: set[asyncio.Task] = set()
        self._builds: set[asyncio.Task] = set()  # the builds among the tasks (read at scrape)
        self._workers: list[asyncio.Task] = []
        # Fault injection for tests and drills: a build on this host fails at spawn
        # with this message; `before_step(uuid, task_state)` is awaited before each step.
        self.fail_spawn: str | None = None
        self.before_step: Callable[[str, str | None], Awaitable[None]] | None = None
        # Set by the wiring for a host whose libvirt did not answer at start: its start-up, run by
        # the heartbeat once it answers (the host stays down, with its last report, until then).
        self.late_start: Callable[[], Awaitable[None]] | None = None
        self.power = PowerManager(self.host, self.driver, pool, locks, config, self.spawn_task)
        self.snapshot = SnapshotManager(self.host, self.driver, pool, locks, config, image_store,
                                        self.store, self.scratch, self.spawn_task)
        self.resize = ResizeManager(self, peers or (lambda _host: None))
        self.evacuate = EvacuateManager(self, peers or (lambda _host: None))
        self.live = LiveMigrationManager(self, peers or (lambda _host: None))
        self.rescue = RescueManager(self)
        self.shelve = ShelveManager(self, image_store)
        self._image_cache = Periodic(f"image-cache-{self.host}", config.image_cache.manager_interval,
                                     self.prune_image_cache, stagger=True)
        self._resources = Periodic(f"resources-{self.host}", config.compute.update_resources_interval,
                                   self.update_resources, stagger=True)

    # -- lifecycle ---------------------------------------------------------
    async def init_host(self) -> None:
        """Connect to the hypervisor and register/refresh this host's compute node row."""
        info = await self.driver.init_host()
        self.host_info = info
        await self.store.ensure_pool()
        await self.remove_orphan_volumes()
        local_gb, available_gb = await self.disk_facts()
        async with self.pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO compute_nodes (host, hypervisor_hostname, uuid, service_uuid, uri, availability_zone,
                                              hypervisor_type, hypervisor_version, cpu_arch, vcpus, memory_mb,
                                              local_gb, virt_type, cpu_model, cpu_vendor, cpu_features,
                                              cpu_topology, host_ip, booted_at, disk_available_least,
                                              heartbeat_at)
                   VALUES ($1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::jsonb, $17,
                           now() - make_interval(secs => $18), $19, now())
                   ON CONFLICT (host) DO UPDATE SET uri = EXCLUDED.uri,
                       availability_zone = EXCLUDED.availability_zone, hypervisor_type = EXCLUDED.hypervisor_type,
                       hypervisor_version = EXCLUDED.hypervisor_version, cpu_arch = EXCLUDED.cpu_arch,
                       vcpus = EXCLUDED.vcpus, memory_mb = EXCLUDED.memory_mb, local_gb = EXCLUDED.local_gb,
                       virt_type = EXCLUDED.virt_type, cpu_model = EXCLUDED.cpu_model,
                       cpu_vendor = EXCLUDED.cpu_vendor, cpu_features = EXCLUDED.cpu_features,
                       cpu_topology = EXCLUDED.cpu_topology, host_ip = EXCLUDED.host_ip,
                       booted_at = EXCLUDED.booted_at, disk_available_least = EXCLUDED.disk_available_least,
                       heartbeat_at = now(), updated_at = now()""",
                self.host,
                uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"node.{self.host}.novalite"),
                uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"service.{self.host}.novalite"),
                self.host_config.uri or "test:///",
                self.host_config.availability_zone,
                "QEMU" if info.hypervisor_type.lower() in ("qemu", "kvm", "test") else info.hypervisor_type,
                info.hypervisor_version,
                info.cpu_arch,
                info.vcpus,
                info.memory_mb,
                local_gb,
                self.virt_type,
                info.cpu_model,
                info.cpu_vendor,
                list(info.cpu_features),
                json.dumps(info.cpu_topology),
                info.host_ip,
                info.uptime_seconds,
                available_gb,
            )
        log.info("compute_host_ready", host=self.host, vcpus=info.vcpus, memory_mb=info.memory_mb, local_gb=local_gb)

    async def disk_facts(self) -> tuple[int, int | None]:
        """``local_gb`` and ``disk_available_least`` of the host: its instance pool's capacity and
        free space in whole GiB as the host measures them (virStoragePoolGetInfo, the same call
        for a local or a remote host). A configured ``disk_gb`` (or a simulated host's) is the
        operator's word instead: then there is no measured free space (None)."""
        configured = (self.host_config.simulate.disk_gb if self.host_config.simulate is not None
                      else self.host_config.disk_gb)
        if configured is not None:
            return configured, None
        usage = await self.store.usage()
        return usage.capacity // GiB, usage.available // GiB

    async def update_resources(self) -> None:
        """Nova's periodic resource update, for disk: the pool read again (volumes of other
        services and the host's own files change its free space); a host that does not
        answer keeps its last report."""
        try:
            local_gb, available_gb = await self.disk_facts()
        except VirtError as exc:
            log.warning("disk_facts_unavailable", host=self.host, error=str(exc))
            return
        async with self.pool.acquire() as conn:
            await conn.execute("UPDATE compute_nodes SET local_gb = $2, disk_available_least = $3 WHERE host = $1",
                               self.host, local_gb, available_gb)

    def start(self) -> None:
        self._workers.append(asyncio.create_task(self._serve(), name=f"compute-{self.host}"))
        self._workers.append(asyncio.create_task(self._heartbeat(), name=f"heartbeat-{self.host}"))
        self.install_drill_delays()
        self._workers.append(self.power.start())
        self._resize_confirmer = self.resize.start()
        self.shelve.start()
        self._image_cache.start()
        self._resources.start()

    async def stop(self) -> None:
        await self.shelve.stop()
        await self._image_cache.stop()
        await self._resources.stop()
        for w in self._workers:
            w.cancel()
        if getattr(self, "_resize_confirmer", None) is not None:
            await self._resize_confirmer.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)

    def pending(self) -> int:
        """Casts queued or running on this host: builds and the other tasks (what a clean shutdown waits for)."""
        return self.queue.qsize() + len(self._tasks)

    def install_drill_delays(self) -> None:
        """Crash drills: hold instances in the configured stages (compute.drill_stage_delays)."""
        delays: dict[str, float] = dict(self.config.compute.drill_stage_delays)
        if not delays:
            return
        # before_step(uuid, next) runs before the step that LEAVES a stage.
        leaving = {states.NETWORKING: "scheduling", states.BLOCK_DEVICE_MAPPING: "networking",
                   states.SPAWNING: "block_device_mapping"}

        async def before_step(uuid: str, new: str | None) -> None:
            stage = leaving.get(new)
            if stage in delays:
                await asyncio.sleep(delays[stage])

        self.before_step = before_step
        if "spawning" in delays:
            # Held after the domain started, before the build records ACTIVE.
            spawn = self.driver.spawn

            async def slow_spawn(guest: Any, _spawn: Any = spawn) -> None:
                await _spawn(guest)
                await asyncio.sleep(delays["spawning"])

            self.driver.spawn = slow_spawn  # type: ignore[method-assign]
        if "deleting" in delays:
            destroy = self.driver.destroy

            async def slow_destroy(uuid: str, _destroy: Any = destroy) -> None:
                await asyncio.sleep(delays["deleting"])
                await _destroy(uuid)

            self.driver.destroy = slow_destroy  # type: ignore[method-assign]
        held = {s: delays[s] for s in ("image_snapshot", "image_pending_upload", "image_uploading") if s in delays}
        if held:  # a snapshot is held in its task states

            async def after_state(uuid: str, state: str) -> None:
                await asyncio.sleep(held.get(state, 0))

            self.snapshot.after_state = after_state
        shelve_held = {s: delays[s] for s in ("shelving_image_uploading", "unshelve_spawning") if s in delays}
        if shelve_held:  # a shelve or an unshelve is held in its task states

            async def shelve_after_state(uuid: str, state: str) -> None:
                key = "unshelve_spawning" if state == states.SPAWNING else state
                await asyncio.sleep(shelve_held.get(key, 0))

            self.shelve.after_state = shelve_after_state
        if "live_migrating" in delays:  # a live migration is held ``running``, before the guest moves

            async def before_move(uuid: str, migration_id: int) -> None:
                await asyncio.sleep(delays["live_migrating"])

            self.live.before_move = before_move
        log.warning("drill_delays_installed", host=self.host, delays=delays)

    async def _heartbeat(self) -> None:
        """Nova's service heartbeat, written only while the host's libvirt connection answers: a
        host whose libvirtd is gone goes down after ``service_down_time`` everywhere "up" is read
        (os-services, os-hypervisors, ComputeFilter, host_status). When it answers again its
        power states are synced at once (its lifecycle events come back with the connection)."""
        interval = self.config.compute.report_interval
        reachable = True
        wait = staggered(interval)  # not every host's beat in the same moment
        while True:
            await asyncio.sleep(wait)
            wait = interval
            alive = await self._libvirt_answers(interval)
            if alive and self.late_start is not None:
                if not await self._start_late():
                    continue
                reachable = True  # just started: its facts and power states are fresh
            if alive != reachable:
                reachable = alive
                log.warning("compute_host_reachable" if alive else "compute_host_unreachable",
                            host=self.host, uri=self.host_config.uri or "test:///")
                if alive:
                    self.spawn_task(self._resync())
            if not alive:
                continue
            try:
                beat = await self.heartbeats.beat(self.host)  # with the other hosts' beats
            except Exception:  # a missed beat is logged, the next one retries
                log.warning("heartbeat_failed", host=self.host, exc_info=True)
                continue
            if beat is not None and beat.evacuated and not beat.forced_down:
                await self._destroy_evacuated()  # back (or never gone): what evacuations left here goes

    async def _destroy_evacuated(self) -> None:
        try:
            await self.evacuate.destroy_evacuated()
        except Exception:  # the next beat tries again
            log.warning("destroy_evacuated_failed", host=self.host, exc_info=True)

    async def _start_late(self) -> bool:
        """A host unreachable at start, answering now: its start-up (networks, pool, init_host,
        recovery of its instances, power sync) runs here, and only then does it beat; a failure
        is logged and tried again at the next beat."""
        assert self.late_start is not None
        try:
            await self.late_start()
        except Exception:
            log.exception("compute_host_late_start_failed", host=self.host)
            return False
        self.late_start = None
        log.warning("compute_host_started_late", host=self.host, uri=self.host_config.uri or "test:///")
        return True

    async def _libvirt_answers(self, timeout: float) -> bool:
        """Whether the host's libvirt answers within ``timeout`` s (a worker may stay on a hung host)."""
        try:
            return await asyncio.wait_for(self.driver.is_alive(), timeout)
        except TimeoutError:
            return False

    async def _resync(self) -> None:
        """A host that came back: its facts read again (it may have rebooted), its instances against
        its domains now, not at the next periodic pass."""
        try:
            await self.init_host()
            await self.power.sync_power_states()
        except Exception:
            log.exception("power_sync_failed", host=self.host)

    def spawn_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task:
        """Run ``coro`` as one of this host's tracked tasks (a shutdown waits for them); the task."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def volume_api(self) -> VolumeAPI | None:
        """The volume service (a moving server's Cinder volumes); None when volumes are off."""
        return self.volume_build.volumes if self.volume_build is not None else None

    async def _serve(self) -> None:
        while True:
            kind, args = await self.queue.get()
            if kind == "build":
                task = asyncio.create_task(self._build(*args))
                for tracked in (self._tasks, self._builds):
                    tracked.add(task)
                    task.add_done_callback(tracked.discard)

    def builds_in_flight(self) -> int:
        """Builds queued for this host or running on it (read at scrape)."""
        return self.queue.qsize() + len(self._builds)

    # -- build ---------------------------------------------------------------
    def build_and_run_instance(
        self, uuid: str, request_id: str, alternates: list[str], attempts: list[tuple[str, str]] | None = None,
        admin_password: str | None = None,
    ) -> None:
        """Cast: queue a build for this host; ``admin_password`` is for the config drive only."""
        self.queue.put_nowait(("build", (uuid, request_id, alternates, attempts or [], admin_password)))

    async def _step(self, uuid: str, request_id: str, expect: str | None, new: str | None, **kwargs: Any
                    ) -> asyncpg.Record:
        """One build step: compare-and-set task_state, finish the previous step's events,
        start the next ones — written together with the steps of other builds (db.steps)."""
        if self.before_step is not None:
            await self.before_step(uuid, new if new is not None else kwargs.get("vm_state"))
        try:
            return await self.steps.step(BuildStep(
                uuid, request_id, expect_vm_state=states.BUILDING, expect_task_state=expect, task_state=new,
                host=self.host, **kwargs,
            ))
        except db.StateConflict as conflict:
            actual = conflict.actual
            if (actual is not None and not actual["deleted"] and kwargs.get("require_claim_on")
                    and actual["task_state"] == expect and actual["host"] == self.host):
                raise RuntimeError(f"no resource claim for {uuid} on {self.host}") from None
            raise BuildAborted(
                f"instance left the build before {new or kwargs.get('vm_state')}"
            ) from conflict

    async def _build(
        self, uuid: str, request_id: str, alternates: list[str], attempts: list[tuple[str, str]],
        admin_password: str | None,
    ) -> None:
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        publisher = f"nova-compute:{self.host}"
        async with self.locks.lock(uuid), self.semaphore:
            made = False  # whether this host may hold a domain or files of the instance
            spawning = False
            try:
                # SCHEDULING → NETWORKING on this host, in one step: Nova passes through task_state
                # None for the moment between its build's start and its network step, a write of the
                # instance row (every one of its indexes) that nothing waits for. The scheduler's
                # claim is the resource claim: the step happens only if the instance holds it here.
                inst = await self._step(
                    uuid, request_id, states.SCHEDULING, states.NETWORKING,
                    start_events=[BUILD_EVENT, "compute_allocate_network"],
                    notification=("instance.create.start", {"host": self.host}, publisher),
                    require_claim_on=self.host, full_row=True,
                )
                mark = time.perf_counter()
                ports = await self._networking(inst, request_id)
                made = True
                mark = _lap("networking", mark)
                prepared = await self._block_device_mapping(inst, request_id, ports)
                if inst["instance_group"] is not None:
                    async with self.pool.acquire() as conn:
                        await validate_instance_group_policy(conn, uuid, self.host)  # late group check (Nova)
                # The row read at the build's first step serves the spawn, as Nova's build
                # keeps the Instance it started with.
                await self._step(
                    uuid, request_id, states.BLOCK_DEVICE_MAPPING, states.SPAWNING,
                    finish_events=["compute_prep_block_device"], start_events=["compute_spawn"],
                    event_details=json.dumps([d.path for d in prepared.disks]),
                )
                spawning = True
                mark = _lap("block_device_mapping", mark)
                await self.write_config_drive(inst, ports, prepared, admin_password)
                guest = self.guest_spec(inst, [p.nic() for p in ports], prepared)
                if self.fail_spawn:
                    raise RuntimeError(self.fail_spawn)
                await self.driver.spawn(guest)
                await self._step(
                    uuid, request_id, states.SPAWNING, None, vm_state=states.ACTIVE, power_state=power_state.RUNNING,
                    launched=True, finish_events=["compute_spawn", BUILD_EVENT], finish_action=True,
                    notification=("instance.create.end", {"host": self.host, "state": states.ACTIVE}, publisher),
                )
                _lap("spawning", mark)
                metrics.boot_finished("active")
                log.info("instance_active")
            except BuildAborted as exc:
                log.info("build_aborted", reason=str(exc))
                metrics.boot_finished("deleted")
                if made:
                    await self._undo_build(uuid)
                async with self.pool.acquire() as conn:
                    await db.event_finish(conn, uuid, request_id, BUILD_EVENT, "Error", details=str(exc))
            except Exception as exc:
                log.warning("build_failed", error=str(exc))
                await self._build_failed(uuid, request_id, alternates, attempts, exc, made, spawning, admin_password)

    async def _undo_build(self, uuid: str, volumes: bool = True) -> None:
        """Remove the domain and volumes this host made for an instance (ports stay: they move with it);
        ``volumes`` False: the instance holds none."""
        try:
            await self.driver.destroy(uuid)
        except Exception:
            log.exception("cleanup_destroy_failed")
        await self.store.remove(uuid)
        if self.volume_build is not None and volumes:  # a failed build: volumes it made go, claimed ones stay reserved
            await self.volume_build.undo_build(uuid)

    async def clean_partial_build(self, uuid: str) -> None:
        """Remove whatever a cut-off build left on this host (recovery and the watchdog call it)."""
        await self._undo_build(uuid)

    def cast_clean_partial_build(self, uuid: str) -> None:
        """Cast: :meth:`clean_partial_build` as one of this host's tracked tasks."""
        self.spawn_task(self.clean_partial_build(uuid))

    async def _networking(self, inst: asyncpg.Record, request_id: str) -> list[PortInfo]:
        """NETWORKING (the build's first step entered it): ports with MACs and fixed IPs, DHCP host
        entries on this host's networks."""
        uuid = str(inst["uuid"])
        if self.network_api is None or inst["requested_networks"] == "none":
            return []
        return await self.network_api.allocate_for_instance(
            uuid, inst["project_id"], inst["requested_networks"], self.host,
            resolved=(inst["request_spec"] or {}).get("networks"),
        )

    async def _block_device_mapping(
        self, inst: asyncpg.Record, request_id: str, ports: list[PortInfo]
    ) -> PreparedDisks:
        """BLOCK_DEVICE_MAPPING: root overlay on the cached image, ephemeral, swap, kernel/ramdisk."""
        uuid = str(inst["uuid"])
        await self._step(
            uuid, request_id, states.NETWORKING, states.BLOCK_DEVICE_MAPPING,
            finish_events=["compute_allocate_network"], start_events=["compute_prep_block_device"],
            event_details=json.dumps({"ports": [{"id": p.port_id, "mac": p.mac, "ip": p.ip} for p in ports]}),
        )
        spec_image = (inst["request_spec"] or {}).get("image") or {}
        image = dict(spec_image, id=inst["image_ref"] or "")
        if image["id"] and "disk_format" not in image:
            async with self.pool.acquire() as conn:
                row = await conn.fetchrow("SELECT disk_format FROM images WHERE id::text = $1", image["id"])
            image["disk_format"] = row["disk_format"] if row else "raw"
        prepared = await prepare_local_disks(
            store=self.store,
            uuid=uuid,
            image=image,
            kernel_id=inst["kernel_id"],
            ramdisk_id=inst["ramdisk_id"],
            flavor=inst["flavor"],
            write_files=not self.simulated,
            root_file=not (inst["request_spec"] or {}).get("root_is_volume"),
        )
        if self.volume_build is not None and (inst["request_spec"] or {}).get("has_volumes", True):
            # volume/snapshot/image/blank → volume BDMs, attached as disks
            await self.volume_build.prepare_build(self.host, inst, prepared)
        return prepared

    def wants_config_drive(self, inst: asyncpg.Record) -> bool:
        """Whether the instance has a config drive here: asked for, or forced for this host
        (``[compute] force_config_drive``, ``force_config_drive_remote`` on a remote host)."""
        return bool(inst["config_drive"]) or self.config.compute.forces_config_drive(self.host_config)

    async def write_config_drive(
        self, inst: asyncpg.Record, ports: list[PortInfo], prepared: PreparedDisks, admin_password: str | None,
        name: str = "disk.config", files: bool = True,
    ) -> None:
        """Build the config drive ISO (label config-2) when asked for or forced by config; the
        admin password is in its meta_data.json (and nowhere else on this side).

        A rescue writes its own (``disk.config.rescue``) without the injected files, as Nova's.
        The ISO is built on this machine and uploaded as a volume of the host's instance pool."""
        if not self.wants_config_drive(inst):
            return
        uuid = str(inst["uuid"])
        prepared.add_config_drive(self.store.path(uuid, name))
        if self.simulated:
            return
        meta = instance_meta(inst, self.host_config.availability_zone, admin_password)
        injected = injected_files(inst) if files else []
        local = self.scratch / self.store.volume(uuid, name)
        await asyncio.to_thread(local.parent.mkdir, parents=True, exist_ok=True)
        try:
            await asyncio.to_thread(build_config_drive, local, meta, user_data(inst), injected, network_data(ports))
            await self.store.upload(uuid, name, local)
        finally:
            await asyncio.to_thread(local.unlink, True)

    def guest_spec(self, inst: asyncpg.Record, nics: list[NicSpec], prepared: PreparedDisks) -> GuestSpec:
        flavor = inst["flavor"]
        return GuestSpec(
            instance_uuid=str(inst["uuid"]),
            name=self.config.compute.instance_name_template % inst["id"],
            memory_mb=flavor["memory_mb"],
            vcpus=flavor["vcpus"],
            virt_type=self.virt_type,
            disks=prepared.disks,
            nics=nics,
            kernel=prepared.kernel,
            ramdisk=prepared.ramdisk,
            cmdline=prepared.cmdline,
            console_log_path=self.store.path(str(inst["uuid"]), "console.log"),
            metadata={
                "display_name": inst["display_name"],
                "flavor_name": flavor["name"],
                "memory_mb": flavor["memory_mb"],
                "vcpus": flavor["vcpus"],
                "root_gb": flavor["root_gb"],
                "project_id": inst["project_id"],
                "user_id": inst["user_id"],
                "creation_time": inst["created_at"].isoformat(),
            },
        )

    async def _build_failed(
        self,
        uuid: str,
        request_id: str,
        alternates: list[str],
        attempts: list[tuple[str, str]],
        exc: Exception,
        made: bool,
        spawning: bool,
        admin_password: str | None,
    ) -> None:
        """Clean up what this host made; reschedule to an alternate or go to ERROR."""
        if made:
            await self._undo_build(uuid)
        reason = f"{type(exc).__name__}: {exc}"
        attempts = [*attempts, (self.host, reason)]
        tb = traceback.format_exc(limit=5)
        async with self.pool.acquire() as conn, conn.transaction():
            if spawning:
                await db.event_finish(conn, uuid, request_id, "compute_spawn", "Error", traceback=reason)
            # The action goes on: the conductor reschedules it or ends it in ERROR.
            await fail_instance(conn, uuid, request_id, Failure(reason, tb, self.host, traceback=tb),
                                events=[BUILD_EVENT], finish_action=False)
            try:
                # Back to scheduling, with this host's claim released.
                await db.compare_and_set(
                    conn, uuid, expect_vm_state=states.BUILDING, expect_task_state=db.Not(states.DELETING),
                    task_state=states.SCHEDULING, host=None, node=None,
                )
            except db.StateConflict:
                metrics.boot_finished("deleted")  # deleted while it failed here
                return
            await conn.execute("DELETE FROM allocations WHERE instance_uuid = $1", uuid)
        await self.reschedule(uuid, request_id, alternates, attempts, admin_password)

    # -- rebuild -------------------------------------------------------------
    def cast_rebuild(self, uuid: str, request_id: str, admin_password: str | None, preserve_ephemeral: bool) -> None:
        """Cast: rebuild an instance the compute API moved to ``rebuilding`` (the password only travels here)."""
        self.spawn_task(self.rebuild_instance(uuid, request_id, admin_password, preserve_ephemeral))

    async def rebuild_instance(
        self, uuid: str, request_id: str, admin_password: str | None, preserve_ephemeral: bool
    ) -> None:
        """Nova's rebuild on the host: rebuilding → rebuild_block_device_mapping → rebuild_spawning → done.

        The domain goes, the root disk (and the ephemeral one unless preserved) is made anew from the
        instance's image, the config drive is written again, and the guest is defined and started with
        the same ports and volumes. A server that was STOPPED is stopped again afterwards, as in Nova.
        """
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id, host=self.host)
        pub = f"nova-compute:{self.host}"
        async with self.locks.lock(uuid):
            async with self.pool.acquire() as conn:
                await db.event_start(conn, uuid, request_id, REBUILD_EVENT, self.host)
                await db.notify(conn, "instance.rebuild.start", {"host": self.host}, publisher_id=pub,
                                instance_uuids=[uuid], request_id=request_id)
            try:
                async with self.pool.acquire() as conn:
                    inst = await db.compare_and_set(conn, uuid, expect_task_state=REBUILDING,
                                                    task_state=REBUILD_BLOCK_DEVICE_MAPPING, progress=33)
                stopped = inst["vm_state"] == states.STOPPED
                await self.driver.destroy(uuid)
                prepared = await self.rebuild_disks(inst, preserve_ephemeral)
                async with self.pool.acquire() as conn:
                    inst = await db.compare_and_set(conn, uuid, expect_task_state=REBUILD_BLOCK_DEVICE_MAPPING,
                                                    task_state=REBUILD_SPAWNING, progress=66)
                ports = await self.network_api.ports_for_instance(uuid) if self.network_api is not None else []
                vm_state, power = await self.spawn_rebuilt(inst, ports, prepared, admin_password, stopped)
                async with self.pool.acquire() as conn, conn.transaction():
                    await db.compare_and_set(
                        conn, uuid, expect_task_state=REBUILD_SPAWNING, task_state=None, vm_state=vm_state,
                        power_state=power, launched_at=datetime.now(UTC), progress=100,
                    )
                    await db.event_finish(conn, uuid, request_id, REBUILD_EVENT)
                    await db.finish_action(conn, uuid, request_id)
                    await db.notify(conn, "instance.rebuild.end", {"host": self.host, "state": vm_state},
                                    publisher_id=pub, instance_uuids=[uuid], request_id=request_id)
                log.info("instance_rebuilt", vm_state=vm_state)
            except db.StateConflict as conflict:
                what = moved_on(conflict)
                log.info("rebuild_superseded", now=what)
                async with self.pool.acquire() as conn:
                    await finish_superseded(conn, uuid, request_id, REBUILD_EVENT, what)
            except Exception as exc:
                log.warning("rebuild_failed", error=str(exc))
                reason = f"{type(exc).__name__}: {exc}"
                tb = traceback.format_exc(limit=5)
                async with self.pool.acquire() as conn, conn.transaction():
                    await fail_instance(
                        conn, uuid, request_id, Failure(reason, tb, self.host, traceback=tb), events=[REBUILD_EVENT],
                        expect={"expect_task_state": [REBUILDING, REBUILD_BLOCK_DEVICE_MAPPING, REBUILD_SPAWNING]},
                        notification=Notification("instance.rebuild.error", {"host": self.host, "fault": reason},
                                                  pub),
                    )

    async def spawn_rebuilt(self, inst: asyncpg.Record, ports: list[PortInfo], prepared: PreparedDisks,
                            admin_password: str | None, stopped: bool) -> tuple[str, int]:
        """The last step of a rebuild (or an evacuation's): the config drive written, the guest
        started (stopped again if it is to end STOPPED); its vm_state and power state."""
        uuid = str(inst["uuid"])
        await self.write_config_drive(inst, ports, prepared, admin_password)
        await self.driver.spawn(self.guest_spec(inst, [p.nic() for p in ports], prepared))
        if stopped:
            await self.driver.power_off(uuid, 0)
        info = await self.driver.get_info(uuid)
        return (states.STOPPED if stopped else states.ACTIVE), (info.power_state if info else power_state.NOSTATE)

    async def rebuild_disks(self, inst: asyncpg.Record, preserve_ephemeral: bool) -> PreparedDisks:
        """The rebuilt guest's disks: local ones made anew from the image, the volumes it has in use."""
        uuid = str(inst["uuid"])
        gone = ["disk", "disk.config", "disk.swap"]
        if not preserve_ephemeral:
            gone.append("disk.eph0")
        await self.store.remove(uuid, gone)
        image = dict((inst["request_spec"] or {}).get("image") or {}, id=inst["image_ref"] or "")
        prepared = await prepare_local_disks(
            store=self.store, uuid=uuid, image=image, kernel_id=inst["kernel_id"],
            ramdisk_id=inst["ramdisk_id"], flavor=inst["flavor"], write_files=not self.simulated,
            keep_ephemeral=preserve_ephemeral, root_file=not (inst["request_spec"] or {}).get("root_is_volume"),
        )
        if self.volume_build is not None:
            await self.volume_build.attached_disks(uuid, prepared)
        return prepared

    async def remove_orphan_volumes(self) -> list[str]:
        """At start: the volumes of instances that are deleted or unknown go (a delete or a build
        cut off between the domain and its volumes); a live instance's stay, whichever host it is on
        (a resize in progress has volumes on both)."""
        found = await self.store.instance_uuids()
        if not found:
            return []
        async with self.pool.acquire() as conn:
            live = {str(u) for u in await conn.fetchval(
                "SELECT coalesce(array_agg(uuid), '{}') FROM instances WHERE uuid = ANY($1::uuid[]) AND NOT deleted",
                list(found))}
        orphans = sorted(found - live)
        for uuid in orphans:
            await self.store.remove(uuid)
        if orphans:
            log.info("orphan_volumes_removed", host=self.host, instances=orphans)
        return orphans

    async def prune_image_cache(self) -> list[str]:
        """Nova's image cache manager pass: cached images no instance of this host refers to
        (image, kernel, ramdisk) go once unused for ``remove_unused_original_minimum_age_seconds``."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT image_ref, kernel_id, ramdisk_id FROM instances"
                                    " WHERE host = $1 AND NOT deleted", self.host)
        in_use = {str(v) for r in rows for v in r.values() if v}
        return await self.store.prune_images(in_use, self.config.image_cache.remove_unused_original_minimum_age_seconds)

    # -- console -------------------------------------------------------------
    async def get_console_output(self, uuid: str) -> bytes | None:
        """The tail of the instance's serial console log (Nova's MAX_CONSOLE_BYTES), None if none yet."""
        return await self.driver.get_console_output(uuid, MAX_CONSOLE_BYTES)

    # -- delete --------------------------------------------------------------
    async def terminate_instance(self, inst: asyncpg.Record, request_id: str, *, migrations: bool = True,
                                 volumes: bool = True) -> None:
        """Destroy the domain and its files, then free the claim and mark deleted (caller holds the lock).
        ``migrations`` / ``volumes`` False: the caller read (under the lock) that the instance has no
        open migration / holds no volume, and their clean-ups are skipped."""
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn:
            await db.event_start_notify(conn, uuid, request_id, "compute_terminate_instance", self.host,
                                        "instance.delete.start", {"host": self.host}, f"nova-compute:{self.host}")
        if migrations:
            await self.live.cleanup_for_delete(uuid)  # a live migration is aborted first, as Nova does
        await self._undo_build(uuid, volumes=volumes)
        if migrations:
            await self.resize.cleanup_for_delete(uuid)  # a resize's other host and its held claim
        if self.volume_build is not None and volumes:  # delete_on_termination volumes go, the others become available
            await self.volume_build.release_instance(uuid)
        if self.network_api is not None:
            await self.network_api.deallocate_for_instance(uuid)
        await self.steps.finish_delete(delete_end(uuid, request_id, self.host))  # with other deletes' ends
        log.info("instance_deleted", instance_uuid=uuid)
