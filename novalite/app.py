"""The one wiring point: config → database, identity, compute services, aiohttp app.

Resources with a lifetime live in ``app.cleanup_ctx`` generators (create,
yield, close), in dependency order: database first, then the services that
use it, so shutdown runs the other way round.
"""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import structlog
from aiohttp import web

from novalite import bootstrap, db, metrics
from novalite.api import console_proxy, healthcheck, identity_admin, keys, middleware
from novalite.api import identity as identity_api
from novalite.api import metrics as metrics_api
from novalite.api import networking as networking_api
from novalite.api import security_groups as security_groups_api
from novalite.api import volume as volume_api_routes
from novalite.api.compute import (
    catalog_routes,
    remote_consoles,
    security_groups_proxy,
    server_groups,
    server_migrations,
    servers,
    volume_attachments,
)
from novalite.api.compute import images as compute_images
from novalite.api.compute import interfaces as compute_interfaces
from novalite.api.compute import migrations as compute_migrations
from novalite.api.compute import versions as compute_versions
from novalite.api.image import images as image_api
from novalite.api.metadata import MetadataListeners
from novalite.compute.actions import ServerActions
from novalite.compute.api import ComputeAPI
from novalite.compute.consoles import SerialConsoles
from novalite.compute.drain import drain
from novalite.compute.host import ComputeHost, compute_host
from novalite.compute.interfaces import InterfaceAttachments
from novalite.compute.live_migration import LiveMigrationTask
from novalite.compute.locks import InstanceLocks
from novalite.compute.manager import ComputeManager
from novalite.compute.metadata import MetadataService
from novalite.compute.recovery import interrupted, recover
from novalite.compute.watchdog import Watchdog
from novalite.conductor import Conductor
from novalite.config import Config, ConfigError, HostConfig, load_config
from novalite.dashboard import add_routes as add_dashboard
from novalite.db import catalog, startup
from novalite.db import instances as instances_db
from novalite.db.heartbeats import Heartbeats
from novalite.db.steps import StepWriter
from novalite.foreground import Foreground
from novalite.identity import IdentityService
from novalite.image.store import ImageStore
from novalite.network import NetworkAPI
from novalite.policy import SERVICES, Enforcer
from novalite.retention import Retention
from novalite.scheduler.host_state import load_host_states
from novalite.scheduler.manager import Scheduler
from novalite.virt.libvirt import LibvirtDriver
from novalite.virt.libvirt.eventloop import ensure_registered
from novalite.virt.libvirt.kvmprobe import resolve_virt_type
from novalite.virt.testnode import write_test_node
from novalite.volume import VolumeAPI, VolumeAttachments, VolumeBuild

log = structlog.get_logger(__name__)


def database_ctx(config: Config, clouds_yaml: Path | None):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        embedded = None
        dsn = config.database.dsn
        if not dsn:
            embedded = db.EmbeddedPostgres(config.state_dir / "pgdata")
            dsn = await embedded.start()
        pool_max = config.database.pool_max
        pool = await db.create_pool(dsn, min(config.database.pool_min or pool_max, pool_max), pool_max)
        workers = await db.create_pool(dsn, config.database.worker_pool_max, config.database.worker_pool_max)
        try:
            await db.upgrade(pool)
            async with pool.acquire() as conn:
                if fixed := await instances_db.rederive_usage(conn):
                    log.warning("quota_usage_rederived", projects=fixed)
            await log_database(pool, embedded)
            creds = await bootstrap.bootstrap(pool, config)
            if creds is not None:
                bootstrap.save_credentials(config, creds)
                log.info("bootstrapped", credentials=str(bootstrap.credentials_file(config)))
            if clouds_yaml is not None and (creds is not None or not clouds_yaml.exists()):
                bootstrap.write_clouds_yaml(config, clouds_yaml)
            if clouds_yaml is not None and config.api.user_clouds_yaml:
                log.info("user_clouds_yaml", path=str(bootstrap.merge_user_clouds_yaml(config)))
            await log_images(pool)
            app[keys.DB] = pool
            app[keys.DB_WORKERS] = workers
            app[keys.DSN] = dsn
            app[keys.IDENTITY] = IdentityService(
                pool, config.public_url, config.identity.region, config.identity.token_lifetime,
                bcrypt_rounds=config.identity.bcrypt_rounds,
                lockout_failure_attempts=config.identity.lockout_failure_attempts,
                lockout_duration=config.identity.lockout_duration,
            )
            yield
        finally:
            await workers.close()
            await pool.close()
            if embedded is not None:
                await embedded.stop()
            log.info("postgres_closed", embedded=embedded is not None)

    return ctx


async def log_database(pool: asyncpg.Pool, embedded: db.EmbeddedPostgres | None) -> None:
    """Say at start which Postgres novalite uses: embedded (its data directory) or external
    (address and database; never the DSN, which may hold a password), and its version."""
    row = await startup.server_info(pool)
    where = ({"pgdata": str(embedded.pgdata)} if embedded is not None else
             {"address": row["address"] or "unix socket", "port": row["port"]})
    log.info("postgres", embedded=embedded is not None, database=row["database"], server_version=row["version"],
             **where)


async def log_images(pool: asyncpg.Pool, shown: int = 20) -> None:
    """Say at start which images the image service holds (name and status of the first ``shown``)."""
    rows = await startup.images_present(pool, shown + 1)
    log.info("images", count=len(rows) if len(rows) <= shown else f"more than {shown}",
             images=[f"{r['name']} ({r['status']})" for r in rows[:shown]])


def host_uri(config: Config, host: HostConfig) -> str:
    """The libvirt URI of a host; simulated hosts get a test-driver node file under the state dir."""
    if host.simulate is None:
        return host.uri
    nodes = config.state_dir / "hosts"
    nodes.mkdir(parents=True, exist_ok=True)
    return write_test_node(nodes / f"{host.name}.xml", host.name, host.simulate.vcpus, host.simulate.memory_mb)


async def make_compute_host(config: Config, host: HostConfig, pool: asyncpg.Pool) -> ComputeHost:
    """The driver (its connection opened lazily) and port of one configured host (``pool``
    gives its image cache Glance's checksums)."""
    uri = host_uri(config, host)
    virt_type, reason = await resolve_virt_type(config.compute.virt_type, uri, config.compute.virt_type_probe_timeout)
    log.info("virt_type_chosen", host=host.name, uri=uri, virt_type=virt_type, reason=reason)
    driver = LibvirtDriver(
        uri,
        virt_type,
        config.compute.libvirt_threads,
        state_dir=config.state_dir,
        hostname=host.name,
    )
    return compute_host(host, config, driver, virt_type, pool)


async def unreachable_hosts(hosts: dict[str, ComputeHost], timeout: float) -> set[str]:
    """The hosts whose libvirt does not answer within ``timeout`` s now (asked all at once): they
    start down and are started when they answer (:meth:`ComputeManager.start_late`)."""

    async def answers(host: ComputeHost) -> bool:
        try:
            return await asyncio.wait_for(host.driver.is_alive(), timeout)
        except TimeoutError:
            return False

    alive = await asyncio.gather(*(answers(h) for h in hosts.values()))
    down = {name for name, up in zip(hosts, alive, strict=True) if not up}
    for name in sorted(down):
        log.warning("compute_host_unreachable_at_start", host=name, uri=hosts[name].driver.uri,
                    detail="it starts down and is started when its libvirt answers")
    return down


def hosts_ctx(config: Config):
    """One virt driver per configured host -- one libvirt connection and worker pool each --
    shared by its compute manager, the network service and the volume service; closed last."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        ensure_registered()  # libvirt's event loop before the first libvirt connection
        hosts: dict[str, ComputeHost] = {}
        for host in config.hosts:
            hosts[host.name] = await make_compute_host(config, host, app[keys.DB])
        app[keys.HOSTS] = hosts
        app[keys.HOSTS_DOWN] = await unreachable_hosts(hosts, config.compute.report_interval)
        try:
            yield
        finally:
            await asyncio.gather(*(h.driver.close() for h in hosts.values()))
            log.info("libvirt_closed", hosts=sorted(hosts))

    return ctx


def network_ctx(config: Config):
    """Networks from config, made in Postgres and as isolated networks on every host."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        drivers = {name: h.driver for name, h in app[keys.HOSTS].items() if name not in app[keys.HOSTS_DOWN]}
        network_api = NetworkAPI(app[keys.DB], config, drivers)
        await network_api.ensure_rows()  # the hosts' side: compute_ctx's bring-up
        app[keys.NETWORK_API] = network_api
        yield
        await network_api.firewall.close()

    return ctx


def _local_qemu(config: Config) -> bool:
    """Whether a configured host is this machine's qemu (its networks' bridges are ours)."""
    return any(urlsplit(h.uri).scheme.startswith("qemu") and not urlsplit(h.uri).hostname for h in config.hosts)


def metadata_ctx(config: Config):
    """The metadata service on each configured network's gateway and in each tenant network's DHCP
    namespace, when this machine hosts guests."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        network_api = app[keys.NETWORK_API]
        listeners = MetadataListeners(MetadataService(app[keys.DB], config, network_api))
        app[keys.METADATA] = listeners
        later: asyncio.Task[None] | None = None
        if config.metadata.enabled and _local_qemu(config):
            # A gateway whose bridge is already up (a restart) is served at once; the others once
            # the hosts are up: they come up in the background while the API serves, and their
            # bridges carry the gateway addresses.
            waiting = await _listen_metadata(listeners, network_api.metadata_networks, config.metadata.port,
                                             quiet=True)
            if waiting:
                later = asyncio.create_task(_listen_when_hosts_up(app, listeners, waiting, config.metadata.port),
                                            name="metadata-listen")
            await network_api.watch_tenant_metadata(listeners.serve_socket)
        try:
            yield
        finally:
            if later is not None:
                later.cancel()
                await asyncio.gather(later, return_exceptions=True)
            await listeners.close()

    return ctx


async def _listen_metadata(listeners: MetadataListeners, gateways: dict[str, str], port: int,
                           quiet: bool = False) -> dict[str, str]:
    """Listen on each network's gateway; returns those that could not be bound (logged unless quiet)."""
    failed: dict[str, str] = {}
    for network_id, gateway in gateways.items():
        try:
            await listeners.listen(network_id, gateway, port)
        except OSError as exc:
            failed[network_id] = gateway
            if not quiet:
                log.warning("metadata_listen_failed", network_id=network_id, address=gateway, port=port,
                            error=str(exc))
            continue
        log.info("metadata_listening", network_id=network_id, address=gateway, port=port)
    return failed


async def _listen_when_hosts_up(app: web.Application, listeners: MetadataListeners, gateways: dict[str, str],
                                port: int) -> None:
    await app[keys.HOSTS_READY].wait()
    await _listen_metadata(listeners, gateways, port)


def volume_ctx(config: Config):
    """Volumes: one storage pool per host, defined and started as the host comes up, before its
    compute runs (:func:`_bring_up_hosts`)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        volume_api = VolumeAPI(app[keys.DB], config, app[keys.HOSTS])
        volume_build = VolumeBuild(volume_api)
        try:  # each host's storage pool is made as it comes up (compute_ctx's bring-up)
            app[keys.VOLUME_API] = volume_api
            app[keys.VOLUME_BUILD] = volume_build
            app[keys.VOLUME_ATTACHMENTS] = VolumeAttachments(volume_api, app[keys.LOCKS])
            volume_build.start()
            yield
        finally:
            await volume_build.close()
            await volume_api.close()

    return ctx


def compute_ctx(config: Config, sighup: bool = False):
    """Conductor, scheduler and one compute manager per host. The API serves at once; the hosts
    come up in the background (:func:`_bring_up_hosts`), then the interrupted work read before
    serving is recovered and scheduling starts (builds accepted meanwhile wait in BUILD); with
    ``sighup``, [[hosts]] are read again on SIGHUP (:class:`HostsReload`)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        pool = app[keys.DB]
        workers = app[keys.DB_WORKERS]  # background work: conductor, scheduler, compute hosts
        locks = app[keys.LOCKS]
        steps = StepWriter(workers)  # the build steps of all hosts, written together
        heartbeats = Heartbeats(workers, config.compute.report_interval)  # and their heartbeats
        scheduler = Scheduler(workers, config.scheduler)
        network_api = app[keys.NETWORK_API]
        volume_build = app[keys.VOLUME_BUILD]
        computes: dict[str, ComputeManager] = {}
        # Snapshots go through the image store's write path (size, checksum, os_hash as an upload).
        image_store = ImageStore(config.state_dir / "images", config.image.reserve_free_bytes)

        def cast_build(host: str, uuid: str, request_id: str, alternates: list[str],
                       attempts: list[tuple[str, str]], admin_password: str | None) -> None:
            computes[host].build_and_run_instance(uuid, request_id, alternates, attempts, admin_password)

        def cast_resize(host: str, stage: str, uuid: str, request_id: str, migration_id: int) -> None:
            computes[host].resize.cast(stage, uuid, request_id, migration_id)

        def cast_live(host: str, uuid: str, request_id: str, migration_id: int) -> None:
            computes[host].live.cast(uuid, request_id, migration_id)

        def cast_unshelve(host: str, uuid: str, request_id: str) -> None:
            computes[host].shelve.cast_unshelve(uuid, request_id)

        def cast_evacuate(host: str, uuid: str, request_id: str, migration_id: int, password: str | None) -> None:
            computes[host].evacuate.cast(uuid, request_id, migration_id, password)

        conductor = Conductor(workers, scheduler, config.scheduler, cast_build=cast_build, network_api=network_api,
                              foreground=app[keys.FOREGROUND], cast_resize=cast_resize,
                              cast_unshelve=cast_unshelve, cast_evacuate=cast_evacuate)
        live_task = LiveMigrationTask(workers, scheduler, cast_live, conductor.spawn_task)
        def add_manager(host: HostConfig) -> ComputeManager:
            computes[host.name] = ComputeManager(host, app[keys.HOSTS][host.name], workers, steps, heartbeats, config, locks,
                                                conductor.reschedule, network_api, volume_build,
                                                image_store=image_store, peers=computes.get)
            return computes[host.name]

        for host in config.hosts:
            add_manager(host)
        compute_api = ComputeAPI(pool, config, locks, build_instances=conductor.build_instances, computes=computes,
                                 network_api=network_api, volume_build=volume_build, image_store=image_store,
                                 foreground=app[keys.FOREGROUND])
        watchdog = Watchdog(workers, config, computes)
        attachments = InterfaceAttachments(pool, network_api, locks, config)
        to_recover = await interrupted(pool)  # before the API serves: what it starts is not "interrupted"
        down = app[keys.HOSTS_DOWN]

        async def start_late(name: str) -> None:
            """What the start does for a host, for one unreachable then: run once its libvirt answers."""
            await network_api.add_host(name, app[keys.HOSTS][name].driver)
            await app[keys.VOLUME_API].ensure_pool(name)
            await computes[name].init_host()
            await recover(pool, compute_api, conductor, computes, on_host=lambda host: host == name)
            await attachments.repair_nics(name)
            await computes[name].power.sync_power_states()
            down.discard(name)

        async def bring_up() -> None:
            try:
                for name in down:
                    computes[name].late_start = functools.partial(start_late, name)
                await _bring_up_hosts({n: m for n, m in computes.items() if n not in down}, network_api,
                                      app[keys.VOLUME_API], attachments)
                await recover(pool, compute_api, conductor, computes, to_recover,
                              on_host=lambda host: host not in down)
            except Exception:  # scheduling must start even so: the API has accepted builds
                log.exception("bring_up_failed")
            scheduler.start()
            conductor.start()
            for manager in computes.values():
                manager.start()
            hosts_ready.set()
            log.info("hosts_ready", hosts=len(computes))

        hosts_ready = app[keys.HOSTS_READY]
        bringing_up = asyncio.create_task(bring_up(), name="hosts-bring-up")
        try:
            app[keys.COMPUTE_API] = compute_api
            app[keys.CONDUCTOR] = conductor
            app[keys.SCHEDULER] = scheduler
            app[keys.COMPUTES] = computes
            app[keys.SERVER_ACTIONS] = ServerActions(pool, computes, config, conductor.migrate_server,
                                                     unshelve_instance=conductor.unshelve_instance,
                                                     volumes=app[keys.VOLUME_API], images=image_store,
                                                     evacuate_server=conductor.evacuate_server,
                                                     live_migrate=live_task.live_migrate)
            app[keys.WATCHDOG] = watchdog
            app[keys.SERIAL_CONSOLES] = SerialConsoles(pool, config, app[keys.HOSTS])
            app[keys.INTERFACES] = attachments
            watchdog.start()
            if sighup:
                reload = HostsReload(app, config, add_manager)
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload.request)
            yield
        finally:
            if sighup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            bringing_up.cancel()
            await asyncio.gather(bringing_up, return_exceptions=True)
            # Accepted work runs to its end first (bounded), so a clean stop leaves nothing to recover.
            await drain({"scheduling": conductor.pending, "background": compute_api.pending,
                         **{f"host_{name}": m.pending for name, m in computes.items()}},
                        config.api.shutdown_timeout)
            await watchdog.stop()
            await conductor.stop()
            await scheduler.stop()
            await compute_api.wait_idle()
            await app[keys.VOLUME_API].wait_idle()  # attachments and volume data running in the background
            for manager in computes.values():
                await manager.stop()
            await heartbeats.close()

    return ctx


# Hosts brought up at once at start: their libvirt calls run on their own threads, the
# Postgres ones share the worker pool.
BRING_UP_CONCURRENCY = 16


async def _bring_up_hosts(computes: dict[str, ComputeManager], network_api: NetworkAPI, volume_api: VolumeAPI,
                          attachments: InterfaceAttachments) -> None:
    """Every host's start, a bounded number at a time, while the API already serves: its
    networks (DHCP entries reconciled, firewall synced), its volumes' storage pool, its compute
    node (init_host) and its guests' NICs. A host that fails is logged and left out; the
    others go on."""
    gate = asyncio.Semaphore(BRING_UP_CONCURRENCY)

    async def one(name: str, manager: ComputeManager) -> None:
        async with gate:
            try:
                await network_api.ensure_host(name)
                await volume_api.ensure_pool(name)
                await manager.init_host()
                await attachments.repair_nics(name)
            except Exception:
                log.exception("host_bring_up_failed", host=name)

    await asyncio.gather(*(one(name, m) for name, m in computes.items()))


async def hosts_ready(app: web.Application) -> None:
    """Wait until every host is up, recovery is done and builds are scheduled (the API
    answers before: `novalite serve` starts serving while its hosts come up)."""
    await app[keys.HOSTS_READY].wait()


class HostsReload:
    """SIGHUP: config.toml's ``[[hosts]]`` read again and applied without a restart.

    An added host gets what a host gets at start -- its driver, the configured networks and
    its storage pool there, its compute manager (its node row, heartbeat, power sync) -- and
    the scheduler sees it at its next request. A removed host stops, unless instances still
    live on it: then it is refused with a log line and keeps running. A host whose entry
    changed (same name, other settings) needs a restart, and says so. One reload at a time.
    """

    def __init__(self, app: web.Application, config: Config,
                 add_manager: Callable[[HostConfig], ComputeManager]) -> None:
        self.app, self.config, self.add_manager = app, config, add_manager
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    def request(self) -> None:
        """The signal handler: a reload as a task (one after another)."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> None:
        async with self._lock:
            try:
                wanted = {h.name: h for h in load_config(self.config.source).hosts}
            except ConfigError as exc:
                log.error("hosts_reload_failed", error=str(exc), detail="the hosts stay as they were")
                return
            current = {h.name: h for h in self.config.hosts}
            log.info("hosts_reload", added=sorted(wanted.keys() - current.keys()),
                     removed=sorted(current.keys() - wanted.keys()))
            for name in sorted(current.keys() & wanted.keys()):
                if current[name] != wanted[name]:
                    log.warning("host_change_needs_restart", host=name)
            for name in sorted(current.keys() - wanted.keys()):
                await self._remove(current[name])
            for name in sorted(wanted.keys() - current.keys()):
                await self._add(wanted[name])
            self.app[keys.SCHEDULER].invalidate_host_states()

    async def _add(self, host: HostConfig) -> None:
        hosts, network_api = self.app[keys.HOSTS], self.app[keys.NETWORK_API]
        compute_host = await make_compute_host(self.config, host, self.app[keys.DB])
        hosts[host.name] = compute_host
        try:
            await network_api.add_host(host.name, compute_host.driver)
            volume_api = self.app[keys.VOLUME_API]
            await compute_host.driver.ensure_pool(volume_api.pool_def(host.name))
            manager = self.add_manager(host)
            await manager.init_host()
        except Exception:
            log.exception("host_add_failed", host=host.name)
            self.app[keys.COMPUTES].pop(host.name, None)
            network_api.remove_host(host.name)
            del hosts[host.name]
            await compute_host.driver.close()
            return
        manager.start()
        self.config.hosts.append(host)
        log.info("host_added", host=host.name)

    async def _remove(self, host: HostConfig) -> None:
        async with self.app[keys.DB].acquire() as conn:
            left = await instances_db.count_on_host(conn, host.name)
            if left:
                log.error("host_removal_refused", host=host.name, instances=left,
                          detail="instances still live on it: delete or move them, then send SIGHUP again")
                return
            await catalog.delete_compute_node(conn, host.name)
        self.config.hosts.remove(host)
        self.app[keys.SCHEDULER].invalidate_host_states()
        manager = self.app[keys.COMPUTES].pop(host.name)
        await manager.stop()
        self.app[keys.NETWORK_API].remove_host(host.name)
        compute_host = self.app[keys.HOSTS].pop(host.name)
        await compute_host.driver.close()
        log.info("host_removed", host=host.name)


def metrics_ctx(config: Config):
    """What a scrape of /metrics reads (queues, pools, hosts, instances by state), read only then;
    the separate listener when ``[metrics] listen`` names one."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        conductor, scheduler, computes, pool = app[keys.CONDUCTOR], app[keys.SCHEDULER], app[keys.COMPUTES], app[keys.DB]

        async def hosts() -> list:
            states = scheduler.cached_host_states()  # the scheduler's view, as its last request left it
            if states is None:
                async with pool.acquire() as conn:
                    states = await load_host_states(conn, config.scheduler)
            return states

        async def instances() -> list[tuple[str, str, int]]:
            async with pool.acquire() as conn:
                return await instances_db.count_by_state(conn)

        sources = metrics.ScrapeSources(
            queues=lambda: {"conductor": conductor.pending(), "scheduler": scheduler.queue_depth()},
            host_builds=lambda: {name: manager.builds_in_flight() for name, manager in computes.items()},
            pools=lambda: {"api": pool, "workers": app[keys.DB_WORKERS]},
            hosts=hosts, instances=instances,
        )
        app[keys.METRICS] = sources
        listener = metrics_api.MetricsListener(sources)
        if config.metrics.address is not None:
            await listener.start(*config.metrics.address)
            log.info("metrics_listening", address=config.metrics.listen)
        try:
            yield
        finally:
            await listener.close()

    return ctx


def retention_ctx(config: Config):
    """The purge of expired tokens, old notifications and verdicts, on the background pool;
    started last, so it stops first."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        retention = Retention(app[keys.DB_WORKERS], config.retention)
        app[keys.RETENTION] = retention
        retention.start()
        try:
            yield
        finally:
            await retention.stop()

    return ctx


def init_app(config: Config, *, clouds_yaml: Path | None = None, sighup: bool = False) -> web.Application:
    """Build the whole process: every API under one aiohttp app (``sighup``: hosts reload on SIGHUP,
    for `novalite serve`)."""
    app = web.Application(
        client_max_size=config.api.max_body_bytes,
        # aiohttp answers a longer request line or header field with 400 before any handler runs
        handler_args={"max_line_size": config.api.max_line_size, "max_field_size": config.api.max_field_size},
        middlewares=[
            middleware.request_id_middleware,  # times everything: the access line and the metric
            middleware.error_middleware,
            middleware.auth_middleware,
            middleware.microversion_middleware,
        ],
    )
    app[keys.CONFIG] = config
    app[keys.FOREGROUND] = Foreground(config.api.busy_background_interval)  # API first, see novalite.foreground
    app[keys.LOCKS] = InstanceLocks()  # one lock per instance, for the compute and volume services
    app[keys.HOSTS_READY] = asyncio.Event()  # set once the hosts are up and builds are scheduled
    # One enforcer per service, each over its own defaults and override file.
    for key, service in ((keys.POLICY, "nova"), (keys.GLANCE_POLICY, "glance"), (keys.NEUTRON_POLICY, "neutron"),
                         (keys.CINDER_POLICY, "cinder"), (keys.KEYSTONE_POLICY, "keystone")):
        app[key] = Enforcer(config.policy.service_file(service), defaults=SERVICES[service][1])
    app.cleanup_ctx.append(database_ctx(config, clouds_yaml))
    app.cleanup_ctx.append(hosts_ctx(config))
    app.cleanup_ctx.append(network_ctx(config))
    app.cleanup_ctx.append(metadata_ctx(config))
    app.cleanup_ctx.append(volume_ctx(config))
    app.cleanup_ctx.append(compute_ctx(config, sighup))
    metrics.set_recording(config.metrics.enabled)
    if config.metrics.enabled:
        app.cleanup_ctx.append(metrics_ctx(config))
        if config.metrics.address is None:
            metrics_api.add_routes(app)
    app.cleanup_ctx.append(retention_ctx(config))
    identity_api.add_routes(app)
    identity_admin.add_routes(app)
    compute_versions.add_routes(app)
    catalog_routes.add_routes(app)
    compute_images.add_routes(app)
    compute_migrations.add_routes(app)
    server_migrations.add_routes(app)
    servers.add_routes(app)
    server_groups.add_routes(app)
    image_api.add_routes(app)
    networking_api.add_routes(app)
    security_groups_api.add_routes(app)
    volume_api_routes.add_routes(app)
    volume_attachments.add_routes(app)
    compute_interfaces.add_routes(app)
    security_groups_proxy.add_routes(app)
    remote_consoles.add_routes(app)
    console_proxy.add_routes(app)
    healthcheck.add_routes(app)
    if config.dashboard.enabled:
        add_dashboard(app)
    return app
