"""Configuration: config.toml parsed into pydantic models.

Every key is known; an unknown or ill-typed key stops the start with one line
naming the key and the file. Environment variables override the file:
``NOVALITE_<SECTION>__<KEY>`` (e.g. ``NOVALITE_DATABASE__DSN``,
``NOVALITE_API__PORT``); values are parsed as TOML scalars when they can be.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """A configuration problem, reported as one line without a traceback."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiConfig(_Section):
    listen: str = "127.0.0.1"
    port: int = Field(8774, ge=0, le=65535)
    # URL clients use to reach this process; derived from listen/port when empty.
    public_url: str = ""
    # Largest request body read whole (JSON); more is 413 in the service's error shape.
    # Image data uploads stream and are bounded by [image] and [quota] instead.
    max_body_bytes: int = Field(1_048_576, gt=0)
    # Longest request line and header field (aiohttp's max_line_size / max_field_size);
    # longer ones are answered 400 before any handler runs.
    max_line_size: int = Field(8190, ge=1024)
    max_field_size: int = Field(16384, ge=1024)
    # JSON request bodies nested deeper than this (objects and arrays) are refused with 400.
    max_json_depth: int = Field(32, ge=2)
    # The most items any list answers, whatever `limit` asks: Nova's [api] max_limit,
    # Glance's api_limit_max, Cinder's osapi_max_limit, Neutron's pagination_max_limit,
    # Keystone's list_limit.
    max_limit: int = Field(1000, ge=1)
    # uvloop (libuv) cuts the event loop's own cost, socket writes above all; "asyncio" is the stdlib loop.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # Once its database is up, `serve` lowers its own nice value by this much (the threads it starts
    # later inherit it; an embedded Postgres started before keeps its own). Every request and build
    # step passes through the one event loop thread, which in a storm on a small box shared with its
    # database is runnable far more than it runs (bench/README.md, ninth round: POST p99 median
    # 178 -> 127 ms over 19 pairs, the gain in the box's slow hours). Lowering a nice value needs
    # root or CAP_SYS_NICE; without, `serve` says so and runs as started. 0: as started.
    cpu_priority_boost: int = Field(5, ge=0, le=20)
    # Creates validated and provisioned at once; more wait their turn, first come first
    # served. A burst of creates then neither queues reads behind it nor thrashes two
    # cores with fifty half-done creates (bench/README.md: GET p99 75 -> 50 ms).
    max_concurrent_creates: int = Field(16, ge=1)
    # While API requests are in flight, the conductor starts the next scheduling request
    # at most this often (seconds); when the API is quiet it does not wait. 0: no priority.
    # (novalite.foreground; bench/README.md: storm POST p99 49-60 -> 44-47 ms.)
    busy_background_interval: float = Field(0.05, ge=0, le=1)
    # Nova's [api] enable_instance_password: a create answers the admin password (adminPass)
    # the guest gets in its config drive (meta_data.json admin_pass). Off: no adminPass in
    # the answer and none is made up; one the request names still reaches the config drive.
    enable_instance_password: bool = True
    # On SIGTERM/SIGINT: seconds the API requests and build steps in flight get to finish after
    # the listener closes; builds still running then are cancelled and redone by the next start's recovery.
    shutdown_timeout: float = Field(30, ge=0, description="seconds")
    # `novalite serve` and `novalite clouds-yaml` also put clouds novalite and novalite-admin into
    # ~/.config/openstack/clouds.yaml (other clouds there are kept), so `openstack` works from any directory.
    user_clouds_yaml: bool = True


class DatabaseConfig(_Section):
    # Empty: novalite starts a private Postgres under the state directory.
    dsn: str = ""
    # Connections opened at start (default: all of pool_max), so a burst of requests
    # right after start does not wait for new connections to log in and load their codecs.
    pool_min: int | None = Field(None, ge=1)
    # Connections for API requests; background work (conductor, scheduler, computes)
    # has its own, smaller pool, so a boot storm neither makes API requests queue for a
    # connection nor crowds them out of Postgres (bench/README.md: 4 gave the best of both).
    pool_max: int = Field(20, ge=1)
    worker_pool_max: int = Field(4, ge=1)


class StateConfig(_Section):
    # Relative to config.toml's directory; `novalite --state-dir` / $NOVALITE_STATE_DIR override it
    # (`novalite install-service` makes a service use /var/lib/novalite).
    dir: Path = Path(".novalite")


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    # One structured line per API request (event "request", level info): request id, user, project,
    # method, route, path, status, duration, remote address. aiohttp's own access log stays off.
    access_log: bool = True


class IdentityConfig(_Section):
    token_lifetime: int = Field(3600, gt=0, description="seconds")
    region: str = "RegionOne"
    bcrypt_rounds: int = Field(12, ge=4, le=16)
    # Keystone's [security_compliance] lockout_failure_attempts / lockout_duration: after this
    # many failed password checks in a row a user is refused (401 "The account is locked ...")
    # for lockout_duration seconds, correct password or not; 0 turns lockout off (Keystone's
    # default). A lab listens on a network others share, so it is on: 5 guesses per 5 minutes
    # make an online guess at even a weak password slow (about 1400 a day), while an operator
    # who mistypes five times waits minutes, not Keystone's 30. A failure more than
    # lockout_duration after the previous one starts the count again; a success, or an admin
    # setting the user enabled, resets it.
    lockout_failure_attempts: int = Field(5, ge=0)
    lockout_duration: float = Field(300, gt=0, description="seconds")


class PolicyConfig(_Section):
    """One override file per service (missing file: the service's defaults); relative to config.toml."""

    file: Path | None = Path("policy.yaml")  # Nova's
    glance_file: Path | None = Path("glance-policy.yaml")
    neutron_file: Path | None = Path("neutron-policy.yaml")
    cinder_file: Path | None = Path("cinder-policy.yaml")
    keystone_file: Path | None = Path("keystone-policy.yaml")

    def service_file(self, service: str) -> Path | None:
        """The override file of ``service`` (``nova``, ``glance``, ``neutron``, ``cinder``, ``keystone``)."""
        return self.file if service == "nova" else getattr(self, f"{service}_file")


class QuotaConfig(_Section):
    """Default per-project limits, named as Nova's quota resources."""

    instances: int = 10
    cores: int = 20
    ram: int = 51200
    metadata_items: int = 128
    injected_files: int = 5
    injected_file_content_bytes: int = 10240
    injected_file_path_bytes: int = 255
    key_pairs: int = 100
    server_groups: int = 10
    server_group_members: int = 10
    # Glance's unified limit image_size_total: MiB of image data a project may store
    # (active and saving images); -1 is unlimited.
    image_size_total_mib: int = Field(-1, ge=-1)


class SchedulerConfig(_Section):
    filters: list[str] = [
        "RetryFilter",
        "AvailabilityZoneFilter",
        "ComputeFilter",
        "RamFilter",
        "CoreFilter",
        "DiskFilter",
        "ComputeCapabilitiesFilter",
        "ImagePropertiesFilter",
        "NUMATopologyFilter",
        "ServerGroupAntiAffinityFilter",
        "ServerGroupAffinityFilter",
        "SameHostFilter",
        "DifferentHostFilter",
    ]
    weighers: list[str] = [
        "RAMWeigher",
        "CPUWeigher",
        "DiskWeigher",
        "BuildFailureWeigher",
        "ServerGroupSoftAffinityWeigher",
        "ServerGroupSoftAntiAffinityWeigher",
    ]
    ram_weight_multiplier: float = 1.0
    cpu_weight_multiplier: float = 1.0
    disk_weight_multiplier: float = 1.0
    build_failure_weight_multiplier: float = 1000000.0
    soft_affinity_weight_multiplier: float = Field(1.0, ge=0)
    soft_anti_affinity_weight_multiplier: float = Field(1.0, ge=0)
    # ImagePropertiesFilter: architecture assumed for images without hw_architecture.
    image_properties_default_architecture: str | None = None
    host_subset_size: int = Field(1, ge=1)
    # Seconds the scheduler reuses host states read from Postgres (claims still check there).
    host_state_ttl: float = Field(1.0, ge=0)
    max_attempts: int = Field(3, ge=1)
    ram_allocation_ratio: float = Field(1.5, gt=0)
    cpu_allocation_ratio: float = Field(16.0, gt=0)
    disk_allocation_ratio: float = Field(1.0, gt=0)
    reserved_host_memory_mb: int = Field(512, ge=0)
    reserved_host_disk_mb: int = Field(0, ge=0)
    # A host whose heartbeat is older than this is "down" for ComputeFilter.
    service_down_time: int = Field(60, gt=0)


class ComputeConfig(_Section):
    # "auto": KVM when a probe at start sees a KVM guest really run on the host, else "qemu" (TCG);
    # "kvm" and "qemu" are explicit (novalite.virt.libvirt.kvmprobe).
    virt_type: Literal["auto", "kvm", "qemu"] = "auto"
    virt_type_probe_timeout: float = Field(20, gt=0, description="seconds the KVM probe may take")
    max_concurrent_builds: int = Field(10, ge=1)
    default_availability_zone: str = "nova"
    instance_name_template: str = "instance-%08x"
    multi_instance_display_name_template: str = "%(name)s-%(count)d"
    default_flavor: str = "m1.small"
    max_user_data_bytes: int = 65535
    libvirt_threads: int = Field(4, ge=1)
    # Attach a config drive to every instance, not only those that ask for one.
    force_config_drive: bool = False
    # ... and to every instance on a remote host (a URI naming another machine): the metadata
    # service answers only on this machine's networks, so there the config drive is the way in.
    force_config_drive_remote: bool = True
    # Nova's report_interval: seconds between a host's heartbeats, each written only while its
    # libvirt connection answers (so a host whose libvirtd is gone goes down after service_down_time);
    # a beat waits up to a tenth of it (at most 1 s) to be written with the other hosts' beats.
    report_interval: float = Field(10, gt=0, description="seconds")
    # Nova's update_resources_interval: seconds between reads of a host's disk (its instance pool's info).
    update_resources_interval: float = Field(60, gt=0, description="seconds")
    # Power-state sync: libvirt lifecycle events do the work, this periodic pass is the safety net.
    power_sync_interval: float = Field(600, gt=0, description="seconds")
    # Domains on a host that no live instance owns: "log" reports them, "reap" also destroys them.
    unknown_domain_action: Literal["log", "reap"] = "log"
    shutdown_timeout: float = Field(60, ge=0, description="seconds of clean shutdown before a hard stop")
    soft_reboot_timeout: float = Field(120, ge=0, description="seconds a soft reboot waits before going hard")
    # Crash drills only: seconds to hold every instance in a stage, e.g. {spawning = 2, deleting = 1}
    # (stages: scheduling, networking, block_device_mapping, spawning, deleting).
    drill_stage_delays: dict[str, float] = {}
    # Resize (Nova's [DEFAULT] allow_resize_to_same_host): the current host may be the destination.
    allow_resize_to_same_host: bool = False
    # Seconds after which a resize waiting in VERIFY_RESIZE is confirmed automatically (0: never, Nova's default).
    resize_confirm_window: float = Field(0, ge=0)
    # Shelve (Nova's [DEFAULT] shelved_offload_time, shelved_poll_interval): 0 offloads a shelved
    # server at once, -1 never, N > 0 a periodic pass offloads servers shelved longer than N seconds.
    shelved_offload_time: int = Field(0, ge=-1)
    shelved_poll_interval: float = Field(3600, gt=0, description="seconds")
    # Where each host keeps its instance pool (disks, config drives, console logs, the image
    # cache): the directory <instance_pool_target>/<libvirt_prefix>instances-<host> on the HOST,
    # made by libvirt; nothing of an instance is on novalite's own disk (novalite.compute.disks).
    instance_pool_target: str = Field("/var/lib/libvirt/images", pattern=r"^/")

    def forces_config_drive(self, host: HostConfig) -> bool:
        """Whether every instance on ``host`` gets a config drive, asked for or not (no connection needed)."""
        return self.force_config_drive or (self.force_config_drive_remote and host.remote)


class DeadlinesConfig(_Section):
    """How long an instance may stay in a task state before the watchdog moves it to ERROR (seconds)."""

    scheduling: float = Field(60, gt=0)
    building: float = Field(600, gt=0)  # each build step: networking, block_device_mapping, spawning
    deleting: float = Field(600, gt=0)
    power_action: float = Field(600, gt=0)  # powering-off/on, rebooting*, pausing, suspending, ...
    # Moves copying disks and volumes between hosts (migrating, resize_*, an evacuation's volume move):
    # Nova bounds none of them but a live migration's copy (800 s per GiB); one hour by default.
    migrating: float = Field(3600, gt=0)
    watchdog_interval: float = Field(10, gt=0)


class SimulatedHost(_Section):
    """Resources of a libvirt test-driver host that novalite writes itself."""

    vcpus: int = Field(8, ge=1)
    memory_mb: int = Field(16384, ge=128)
    disk_gb: int = Field(200, ge=1)


class HostConfig(_Section):
    name: str = Field(min_length=1, max_length=255)
    # libvirt URI; omit it with `simulate` set for a test-driver host.
    uri: str = ""
    simulate: SimulatedHost | None = None
    availability_zone: str = "nova"
    max_concurrent_builds: int | None = Field(None, ge=1)
    disk_gb: int | None = Field(None, ge=1)

    @property
    def remote(self) -> bool:
        """Whether the host's libvirt runs on another machine: its URI names a host (qemu+ssh://lab2/system)."""
        return bool(urlsplit(self.uri).hostname)

    @model_validator(mode="after")
    def _uri_or_simulate(self) -> HostConfig:
        if not self.uri and self.simulate is None:
            raise ValueError("needs `uri` or `simulate`")
        if self.uri and self.simulate is not None:
            raise ValueError("give `uri` or `simulate`, not both")
        return self


class NetworkConfig(_Section):
    """One libvirt network with one IPv4 subnet (a ``[[networks]]`` entry).

    ``forward``: "isolated" (no ``<forward>``: guests reach each other and the host's DHCP),
    "nat" (libvirt NATs guest traffic out through the host; the gateway is the host's bridge
    address and DHCP hands it out as the default route) or "bridge" (a provider network: guests
    join the existing host bridge ``bridge``, e.g. a lab's LAN; novalite runs no DHCP there, the
    subnet is recorded with DHCP off as Neutron's ``--no-dhcp`` provider subnets, the LAN's own
    DHCP server and addressing apply, and ``cidr``/pool only give ports the fixed IPs the API
    shows -- make them the LAN's subnet and a range its DHCP does not hand out).
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    cidr: str = "10.20.0.0/24"
    # Defaults: the first host address; the pool is the rest of the subnet.
    gateway: str | None = None
    dhcp_start: str | None = None
    dhcp_end: str | None = None
    shared: bool = True
    # Owner project by name (must exist at start); the admin project when unset.
    project: str | None = None
    mtu: int = Field(1500, ge=576, le=9000)
    dns_nameservers: list[str] = []
    forward: Literal["isolated", "nat", "bridge"] = "isolated"
    # The existing host bridge a "bridge" network joins (novalite neither makes nor removes it).
    bridge: str | None = Field(None, min_length=1, max_length=15, pattern=r"^[A-Za-z0-9_.-]+$")

    @model_validator(mode="after")
    def _bridge_with_bridge_mode(self) -> NetworkConfig:
        if (self.forward == "bridge") != (self.bridge is not None):
            raise ValueError('`bridge` (an existing host bridge) is needed with forward = "bridge", and only then')
        return self


class NetworkingConfig(_Section):
    """Settings shared by all networks: which one `networks: auto` picks, libvirt naming."""

    default_network: str = "private"
    # libvirt network name = prefix + network name (so several clouds can share a host).
    libvirt_prefix: str = "novalite-"


class MetadataConfig(_Section):
    """The metadata service (Nova's nova-api-metadata) for guests on this machine's configured networks:
    169.254.169.254:80 is redirected to a listener on each network's gateway at ``port``
    (Nova's metadata_listen_port). Tenant networks get it on 169.254.169.254:80 inside their DHCP
    namespace (``port`` is not used there). Guests on remote hosts use the config drive."""

    enabled: bool = True
    port: int = Field(8775, ge=1, le=65535)


class VolumeConfig(_Section):
    """Block storage (Cinder subset): one libvirt storage pool per host, quotas, which host gets new volumes."""

    # libvirt pool name = prefix + host name (several clouds can share one libvirtd);
    # unset: networking.libvirt_prefix, so one prefix names all of a cloud's libvirt objects.
    pool_prefix: str | None = None
    # "dir": qcow2 files under pool_target/<host> on the host (default: [compute] instance_pool_target/<pool name>);
    # "logical": raw LVs in the volume group pool_source (made by the operator).
    pool_type: Literal["dir", "logical"] = "dir"
    pool_target: Path | None = None
    pool_source: str | None = None
    # Host for volumes created through the volume API (default: the first configured host).
    default_host: str | None = None
    volumes: int = 10
    gigabytes: int = 1000
    snapshots: int = 10
    # Seconds between passes that release volumes of ERROR/deleted instances (the safety net).
    reap_interval: float = Field(5, gt=0)
    # Seconds a live detach waits for the guest to let the disk go before retrying / failing.
    detach_timeout: float = Field(20, gt=0)


class ImageCacheConfig(_Section):
    """Nova's [image_cache]: each host's cached images (volumes of its instance pool)."""

    # Seconds between passes that remove cached images no instance of the host uses any more.
    manager_interval: float = Field(2400, gt=0, description="seconds")
    # A cached image is removed once unused for this long (seen unused by consecutive passes).
    remove_unused_original_minimum_age_seconds: float = Field(86400, ge=0, description="seconds")


class ImageConfig(_Section):
    """The image store (Glance subset): how large an image may be, how much disk to leave free."""

    # Glance's image_size_cap: the largest image data accepted, in bytes (default 1 TiB).
    size_cap_bytes: int = Field(1_099_511_627_776, ge=1)
    # Bytes the state directory's filesystem keeps free: an upload that would eat into them
    # is refused with 507 (Postgres and the instances live on the same disk).
    reserve_free_bytes: int = Field(1_073_741_824, ge=0)


class ConsoleConfig(_Section):
    """Remote consoles (Nova's serial console): how long a console URL's token is good."""

    # Nova's [consoleauth] token_ttl: seconds a token may wait before its one connect.
    token_ttl: float = Field(600, gt=0, description="seconds")


class RetentionConfig(_Section):
    """What the tables keep and for how long; expired and revoked tokens go on every pass."""

    notifications_days: float = Field(7, gt=0)
    scheduling_verdicts_days: float = Field(7, gt=0)
    purge_interval: float = Field(600, gt=0, description="seconds between purge passes")
    # Rows per DELETE: each batch is one short statement on the background pool, so a boot
    # never waits long behind a purge, however much there is to purge.
    batch_size: int = Field(1000, ge=1)


class MetricsConfig(_Section):
    """Prometheus metrics (novalite.metrics): recorded when enabled, served at /metrics."""

    enabled: bool = True
    # "": GET /metrics on the API port, for tokens that pass the `novalite:metrics` rule (admin);
    # "HOST:PORT": a separate plain listener there, without auth (a Prometheus on this machine).
    listen: str = ""

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if value and not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError("must be empty or HOST:PORT")
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        """The separate listener's (host, port); None: served on the API port."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class DashboardConfig(_Section):
    """The web dashboard at / (novalite.dashboard): pages that call the APIs as the logged-in user."""

    enabled: bool = True
    # Servers per page of the instances list (paged by marker, as the API pages).
    page_size: int = Field(50, ge=1, le=1000)


class Config(_Section):
    api: ApiConfig = ApiConfig()
    database: DatabaseConfig = DatabaseConfig()
    state: StateConfig = StateConfig()
    log: LogConfig = LogConfig()
    identity: IdentityConfig = IdentityConfig()
    policy: PolicyConfig = PolicyConfig()
    quota: QuotaConfig = QuotaConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    compute: ComputeConfig = ComputeConfig()
    deadlines: DeadlinesConfig = DeadlinesConfig()
    hosts: list[HostConfig] = []
    networking: NetworkingConfig = NetworkingConfig()
    metadata: MetadataConfig = MetadataConfig()
    volume: VolumeConfig = VolumeConfig()
    image: ImageConfig = ImageConfig()
    image_cache: ImageCacheConfig = ImageCacheConfig()
    retention: RetentionConfig = RetentionConfig()
    console: ConsoleConfig = ConsoleConfig()
    metrics: MetricsConfig = MetricsConfig()
    dashboard: DashboardConfig = DashboardConfig()
    # Empty: one shared `private` network, 10.20.0.0/24 (see novalite.network.api).
    networks: list[NetworkConfig] = []
    # Where the file came from, for relative paths and messages.
    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _unique_hosts(self) -> Config:
        names = [h.name for h in self.hosts]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate host names: {', '.join(sorted(dup))}")
        return self

    @property
    def public_url(self) -> str:
        if self.api.public_url:
            return self.api.public_url.rstrip("/")
        return f"http://{self.api.listen}:{self.api.port}"

    @property
    def state_dir(self) -> Path:
        return self.state.dir.resolve()


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, raw in environ.items():
        if not key.startswith("NOVALITE_") or "__" not in key:
            continue
        section, _, name = key[len("NOVALITE_") :].lower().partition("__")
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def _describe(err: ValidationError, path: Path | None) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    where = str(path) if path else "config"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key `{key}`"
    return f"{where}: bad value for `{key}`: {first['msg']}"


def load_config(path: Path | str | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read config.toml (if it exists) plus NOVALITE_* overrides into a Config."""
    environ = dict(os.environ if environ is None else environ)
    if path is None:
        path = environ.get("NOVALITE_CONFIG", "config.toml")
    path = Path(path)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    elif "NOVALITE_CONFIG" in environ or path.name != "config.toml":
        raise ConfigError(f"{path}: no such file")
    for section, values in _env_overrides(environ).items():
        if isinstance(data.get(section), dict):
            data[section].update(values)
        else:
            data[section] = values
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    cfg.source = path
    base = path.resolve().parent
    if not cfg.state.dir.is_absolute():
        cfg.state.dir = base / cfg.state.dir
    for name in ("file", "glance_file", "neutron_file", "cinder_file", "keystone_file"):
        policy_file = getattr(cfg.policy, name)
        if policy_file is not None and not policy_file.is_absolute():
            setattr(cfg.policy, name, base / policy_file)
    return cfg
