"""Compute API layer: validate a create request the way Nova's compute/api.py
does, provision the instances in one transaction, and cast to the conductor.

Nothing here knows HTTP: errors are :mod:`novalite.exception` errors, raised
before anything is written, so bad input leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import string
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import structlog

from novalite import exception, quota
from novalite.compute import image_bdms, states
from novalite.compute.locks import InstanceLocks
from novalite.compute.shelve import delete_shelved_image
from novalite.config import Config
from novalite.context import RequestContext
from novalite.db import boot as lookups
from novalite.db import images as images_db
from novalite.db import instances as db
from novalite.db import migration_records
from novalite.db import volumes as volumes_db
from novalite.db.batch import BatchWriter
from novalite.foreground import Foreground
from novalite.virt import power_state

log = structlog.get_logger(__name__)

ROOT_DEVICE_RE = re.compile(r"^/dev/x{0,1}[a-z]{0,1}d{0,1}[a-z]+[0-9]*$")
DEFAULT_ROOT_DEVICE = "/dev/vda"


@dataclass
class CreateRequest:
    """create_kwargs as the API handler builds them from the request body."""

    name: str
    flavor_ref: str
    image_ref: str = ""
    description: str | None = None
    hostname: str | None = None
    admin_password: str | None = None
    access_ip_v4: str | None = None
    access_ip_v6: str | None = None
    availability_zone: str | None = None
    forced_host: str | None = None
    forced_node: str | None = None
    block_device_mapping: list[dict] = field(default_factory=list)
    legacy_bdm: bool = False
    config_drive: bool | None = None
    auto_disk_config: bool | None = None
    key_name: str | None = None
    min_count: int = 1
    max_count: int = 1
    return_reservation_id: bool = False
    injected_files: list[tuple[str, str]] = field(default_factory=list)
    scheduler_hints: dict = field(default_factory=dict)
    security_groups: list[str] = field(default_factory=list)
    user_data: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    requested_networks: Any = None  # "auto" | "none" | list of {uuid, port, fixed_ip, tag}
    tags: list[str] = field(default_factory=list)


@dataclass
class BuildRequest:
    """What the API casts to the conductor: instances to schedule and build.

    ``admin_password`` goes to the config drive. It travels only in memory, with the cast
    (Nova's build RPC carries it the same way), never through Postgres: even a column wiped
    once the drive is written leaves the text in the WAL and in dead row versions until
    vacuum. So a build that recovery restarts after a crash gets a drive without it.
    """

    instance_uuids: list[str]
    request_spec: dict
    request_id: str
    admin_password: str | None = field(default=None, repr=False)


def sanitize_hostname(name: str, default: str = "server") -> str:
    """Nova's hostname sanitisation: lower case, [a-z0-9-], at most 63 characters."""
    host = name.lower()
    host = re.sub(r"[ _]", "-", host)
    host = re.sub(r"[^\w.-]+", "", host, flags=re.ASCII)
    host = host.replace(".", "-")
    host = host[:63].strip("-")
    return host or default


def generate_password(length: int = 12) -> str:
    """Random letters and digits, from one read of the OS's random source (not one per letter)."""
    alphabet = string.ascii_letters + string.digits
    limit = 256 - 256 % len(alphabet)  # bytes at or above are skipped, so no letter is likelier
    chars: list[str] = []
    while len(chars) < length:
        chars.extend(alphabet[b % len(alphabet)] for b in secrets.token_bytes(2 * length) if b < limit)
    return "".join(chars[:length])


class _Refused(Exception):
    """Provisioning wrote nothing: the project's usage (``used``, as its statement left it) no longer fits."""

    def __init__(self, used: dict[str, int]) -> None:
        super().__init__("quota re-check refused")
        self.used = used


@dataclass(slots=True)
class BaseOptions:
    """Nova's base_options: what validation hands to provisioning, all checked."""

    flavor: dict  # the flavor document stored with each instance and in the request spec
    image_id: str  # '' when a volume is the root
    kernel_id: str
    ramdisk_id: str
    key_data: str | None
    security_groups: list[str]
    auto_disk_config: bool
    root_device_name: str
    bdms: list[dict]  # checked and transformed (check_and_transform_bdm)
    group: asyncpg.Record | None  # the instance group of the `group` hint
    availability_zone: str | None
    request_spec: dict
    limits: dict  # the project's quota limits
    used: dict  # the project's instance usage when validated (provisioning re-checks it under its lock)
    networks_read: dict | None = None  # what the network check reads (NetworkAPI.create_read_sql), if read


def check_metadata_quota(metadata: dict, limits: dict) -> None:
    """No more metadata items than the project's metadata_items quota."""
    if limits["metadata_items"] != quota.UNLIMITED and len(metadata) > limits["metadata_items"]:
        raise exception.QuotaExceeded(f"Maximum number of metadata items exceeds {limits['metadata_items']}")


def check_injected_files_quota(files: list[tuple[str, str]], limits: dict) -> None:
    """Personality files within the quotas: how many, path length, decoded content size."""
    if not files:
        return
    if limits["injected_files"] != quota.UNLIMITED and len(files) > limits["injected_files"]:
        raise exception.QuotaExceeded("Personality file limit exceeded")
    for path, contents in files:
        if len(path.encode()) > limits["injected_file_path_bytes"] >= 0:
            raise exception.QuotaExceeded(
                f"Personality file path exceeds maximum {limits['injected_file_path_bytes']}"
            )
        try:
            content = base64.b64decode(contents, validate=True)
        except ValueError:
            raise exception.Invalid(f"Personality content for {path} cannot be decoded") from None
        if len(content) > limits["injected_file_content_bytes"] >= 0:
            raise exception.QuotaExceeded(
                f"Personality file content exceeds maximum {limits['injected_file_content_bytes']}"
            )


def validate_flavor_extra_specs(specs: dict) -> None:
    """NUMA and PCI extra specs must be well formed before anything is scheduled."""
    nodes = specs.get("hw:numa_nodes")
    if nodes is not None:
        if not str(nodes).isdigit() or int(nodes) < 1:
            raise exception.Invalid(f"Invalid flavor extra spec hw:numa_nodes={nodes}: must be a positive integer.")
        n = int(nodes)
        cpus = [k for k in specs if k.startswith("hw:numa_cpus.")]
        mems = [k for k in specs if k.startswith("hw:numa_mem.")]
        if (cpus or mems) and (len(cpus) != n or len(mems) != n):
            raise exception.Invalid("CPU and memory allocation must be provided for all NUMA nodes")
    for key in ("hw:cpu_policy",):
        if key in specs and specs[key] not in ("shared", "dedicated", "mixed"):
            raise exception.Invalid(f"Invalid {key} extra spec value: {specs[key]}")
    alias = specs.get("pci_passthrough:alias")
    if alias is not None:
        for part in str(alias).split(","):
            name, _, count = part.strip().partition(":")
            if not name or not count.isdigit() or int(count) < 1:
                raise exception.Invalid(
                    f"Invalid PCI alias definition: pci_passthrough:alias={alias} (expected name:count[,name:count])"
                )


class ComputeRPC(Protocol):
    """What the compute API asks of the compute manager of an instance's host (Nova's compute rpcapi)."""

    async def terminate_instance(self, inst: asyncpg.Record, request_id: str) -> None: ...

    async def get_console_output(self, uuid: str) -> bytes | None: ...


class ComputeAPI:
    """Validates and provisions servers, and starts deletes."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: Config,
        locks: InstanceLocks,
        *,
        build_instances: Callable[[BuildRequest], None],
        computes: Mapping[str, ComputeRPC],
        network_api: Any = None,
        volume_build: Any = None,
        image_store: Any = None,
        foreground: Foreground | None = None,
    ) -> None:
        """``build_instances`` casts provisioned instances to the conductor; ``computes`` are the
        managers of the hosts, which deletes and console reads go to; ``image_store`` deletes the
        image data of a shelved server's snapshot; ``foreground`` gives deletes their turns."""
        self.pool = pool
        self.network_api = network_api
        self.config = config
        self.locks = locks
        self.build_instances = build_instances
        self.volume_build = volume_build
        self.computes = computes
        self.image_store = image_store
        self._tasks: set[asyncio.Task] = set()
        # A delete's background part starts at a background turn (novalite.foreground): while
        # DELETEs keep coming their answers go first, and the terminations follow together, in
        # larger batches (a storm of 1,000 deletes: 240-250 -> 260-300/s, bench/README.md).
        self.foreground = foreground or Foreground(0)
        self._deletes: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._delete_starter: asyncio.Task | None = None
        self._creating = asyncio.Semaphore(config.api.max_concurrent_creates)  # FIFO: waiters in order
        # the provisioning statements of concurrent creates, together: each project's usage row
        # is held until a commit, once for all of them instead of once each (db.batch)
        self._provisions = BatchWriter(pool, db.provision_many, config.api.max_concurrent_creates, "provisions")

    # -- create -------------------------------------------------------------
    async def create(self, ctx: RequestContext, req: CreateRequest) -> tuple[list[asyncpg.Record], str, str | None]:
        """Validate, provision and cast; return (instances, reservation_id, admin_password).

        The password (the request's, else a new one unless ``enable_instance_password`` is
        off) is the one every instance of the request gets on its config drive."""
        if req.min_count > req.max_count:
            raise exception.Invalid("min_count must be <= max_count")
        async with self._creating:
            # The checks' connection goes back before provisioning: a batched provision writes on
            # its writer's own, and a create holding one while it waited for that writer could
            # leave the writer none (every connection held by a waiting create: no create ends).
            async with self.pool.acquire() as conn:
                base = await self._validate(conn, ctx, req)
                await self._validate_networks(conn, ctx, req, base)
            password = req.admin_password or (
                generate_password() if self.config.api.enable_instance_password else None
            )
            instances, reservation_id = await self._provision(ctx, req, base)
        uuids = [str(i["uuid"]) for i in instances]
        self.build_instances(
            BuildRequest(instance_uuids=uuids, request_spec=base.request_spec, request_id=ctx.request_id,
                         admin_password=password)
        )
        return instances, reservation_id, password

    async def _validate(self, conn: asyncpg.Connection, ctx: RequestContext, req: CreateRequest) -> BaseOptions:
        """Nova's _validate_and_build_base_options, check_and_transform_bdm and
        get_requested_instance_group: the boot flow's validation list, a step a call.

        The steps run in the order their errors have always been reported in, which is
        the list's except where a step needs an earlier one's result: the BDMs get their
        defaults and one root first (the root may name the image), the flavor is checked
        before the image (the image must fit it), and the BDMs are checked against the
        flavor and the volume service right after the image (their host may become the
        forced host). The API handler checks policy, parses the AZ and validates the
        config drive value; the requested networks are checked after this, and the
        reservation id is made when the instances are provisioned. One query
        (``lookups.snapshot``) reads what every step but the forced host, the kernel and
        ramdisk, and the group needs.
        """
        self._check_multi_create_networks(req)
        bdms = self._bdms_with_root(req)
        root = next((b for b in bdms if b.get("boot_index") == 0), None)
        image_id = self._boot_image_id(req, root)
        # The network check's reads (an `auto` request's) come with the lookups: one round trip.
        networks_read = (self.network_api.create_read_sql(req.requested_networks, "$3")
                         if self.network_api is not None else None)
        snap = await lookups.snapshot(
            conn, flavorid=req.flavor_ref, image_id=image_id, project_id=ctx.project_id, user_id=ctx.user_id,
            is_admin=ctx.is_admin, key_name=req.key_name, zones=bool(req.availability_zone), also=networks_read,
        )
        flavor = self._flavor(snap, req.flavor_ref)
        validate_flavor_extra_specs(flavor["extra_specs"] or {})
        if image_bdms.image_defined_bdms(snap["image"]):  # e.g. a volume-backed server's snapshot
            bdms = image_bdms.merge_image_bdms(bdms, snap["image"])
            self._check_boot_sequence(bdms)
            root = next((b for b in bdms if b.get("boot_index") == 0), None)
        image = self._image(snap, image_id, flavor, root)
        await self._check_bdms(conn, bdms, flavor, ctx, req)
        image_props = dict(image["properties"] or {}) if image else {}
        auto_disk = self._auto_disk_config(req, image_id, image_props)
        az, forced_host = await self._availability_zone(conn, req, snap["zones"])
        self._check_user_data(req)
        limits = quota.limits_from(self.config.quota, snap["quota_overrides"])
        check_metadata_quota(req.metadata, limits)
        check_injected_files_quota(req.injected_files, limits)
        groups = await self._security_groups(conn, ctx, req, snap["security_groups"])
        kernel_id, ramdisk_id = await self._kernel_and_ramdisk(conn, ctx, image_props)
        key_data = self._key_data(req, snap["key_data"])
        root_device = self._root_device_name(root)
        group = await self._instance_group(conn, ctx, req)
        flavor_doc = self._flavor_doc(flavor)
        return BaseOptions(
            flavor=flavor_doc, image_id=image_id, kernel_id=kernel_id, ramdisk_id=ramdisk_id, key_data=key_data,
            security_groups=groups, auto_disk_config=auto_disk, root_device_name=root_device, bdms=bdms,
            group=group, availability_zone=az, limits=limits, used=snap["usage"] or dict(quota.NO_USAGE),
            request_spec=self._request_spec(
                ctx, req, flavor_doc, image_id, image, image_props, az, forced_host, group, bdms
            ),
            networks_read=snap.get("also"),
        )

    @staticmethod
    def _check_multi_create_networks(req: CreateRequest) -> None:
        """Multi-create may name neither fixed IPs nor ports: each could go to one instance only."""
        nets = req.requested_networks
        if req.max_count > 1 and isinstance(nets, list):
            if any(n.get("fixed_ip") for n in nets):
                raise exception.Invalid(
                    "Failed to launch instances: max_count can't be greater than 1 if a fixed_ip is specified."
                )
            if any(n.get("port") for n in nets):
                raise exception.Invalid(
                    "Failed to launch instances: Unable to launch multiple instances with a single configured "
                    "port ID. Please launch your instance one by one with different ports."
                )

    def _bdms_with_root(self, req: CreateRequest) -> list[dict]:
        """check_and_transform_bdm: one root device; an image-backed root when only imageRef is given."""
        bdms = [dict(b) for b in req.block_device_mapping]
        if req.legacy_bdm:
            converted = []
            for b in bdms:
                if b.get("no_device"):
                    continue
                src = "snapshot" if b.get("snapshot_id") else "volume" if b.get("volume_id") else "blank"
                is_root = b.get("device_name") in (DEFAULT_ROOT_DEVICE, "vda")
                converted.append(
                    {
                        "source_type": src,
                        "destination_type": "volume" if src != "blank" else "local",
                        "volume_id": b.get("volume_id"),
                        "snapshot_id": b.get("snapshot_id"),
                        "volume_size": b.get("volume_size"),
                        "device_name": b.get("device_name"),
                        "delete_on_termination": bool(b.get("delete_on_termination")),
                        "boot_index": 0 if is_root else None,
                    }
                )
            bdms = converted
        for b in bdms:
            uuid = b.pop("uuid", None)
            src = b.get("source_type")
            if src is None:
                # v1-style entry inside v2: infer the source like Nova's from_legacy
                src = "snapshot" if b.get("snapshot_id") else "volume" if b.get("volume_id") else "blank"
                b["source_type"] = src
            if uuid:
                key = {"image": "image_id", "volume": "volume_id", "snapshot": "snapshot_id"}.get(src)
                if key is None:
                    raise exception.Invalid("Block Device Mapping is Invalid: uuid given for a blank device.")
                b[key] = uuid
            if b.get("boot_index") is not None and b["boot_index"] < 0:
                b["boot_index"] = None
            b.setdefault("destination_type", "local" if src in ("image", "blank") else "volume")
            b["delete_on_termination"] = bool(b.get("delete_on_termination"))
            for k in ("virtual_name", "no_device", "connection_info"):
                b.pop(k, None)
        if req.image_ref and not any(b.get("boot_index") == 0 for b in bdms):
            image_id = req.image_ref.rsplit("/", 1)[-1]
            bdms.insert(
                0,
                {
                    "source_type": "image",
                    "destination_type": "local",
                    "image_id": image_id,
                    "boot_index": 0,
                    "delete_on_termination": True,
                    "device_name": None,
                },
            )
        self._check_boot_sequence(bdms)
        for b in bdms:
            if b.get("boot_index") == 0 and b["source_type"] == "image" and b["destination_type"] == "local":
                b["delete_on_termination"] = True
        return bdms

    @staticmethod
    def _check_boot_sequence(bdms: list[dict]) -> None:
        """One root, and boot indexes 0, 1, 2... without a gap."""
        roots = [b for b in bdms if b.get("boot_index") == 0]
        indexes = sorted(b["boot_index"] for b in bdms if b.get("boot_index") is not None)
        if len(roots) > 1 or (indexes and indexes != list(range(len(indexes)))):
            raise exception.Invalid(
                "Block Device Mapping is Invalid: Boot sequence for the instance and image/block device "
                "mapping combination is not valid."
            )

    @staticmethod
    def _boot_image_id(req: CreateRequest, root: dict | None) -> str:
        """The image to boot: an image-backed root BDM's, else imageRef's ('' for none)."""
        image_id = req.image_ref.rsplit("/", 1)[-1] if req.image_ref else ""
        if root is not None and root.get("source_type") == "image":
            image_id = root.get("image_id") or image_id
        return image_id

    @staticmethod
    def _flavor(snap: dict, flavor_ref: str) -> dict:
        """The requested flavor exists, the caller may use it and it is not disabled."""
        flavor = snap["flavor"]
        if flavor is None or flavor["disabled"]:
            raise exception.Invalid(f"Flavor {flavor_ref} could not be found.")
        return flavor

    def _image(self, snap: dict, image_id: str, flavor: dict, root: dict | None) -> dict | None:
        """The image exists for the caller (the snapshot has none it may not see), is active and
        fits the flavor; with no image, a volume is the root."""
        if not image_id:
            if root is None or root.get("source_type") == "image":
                raise exception.Invalid(
                    "Block Device Mapping is Invalid: Boot sequence for the instance and image/block device "
                    "mapping combination is not valid."
                )
            return None
        image = snap["image"]
        if image is None:
            raise exception.Invalid("Can not find requested image")
        if image["status"] != "active":
            raise exception.Invalid(f"Image {image_id} is not active.")
        self._check_image_fits_flavor(image, flavor, root)
        return image

    @staticmethod
    def _check_image_fits_flavor(image: dict, flavor: dict, root: dict | None) -> None:
        """The flavor has the memory the image asks for, and a local root disk the room."""
        if image["min_ram"] and flavor["memory_mb"] < image["min_ram"]:
            raise exception.Invalid("Flavor's memory is too small for requested image.")
        if root is not None and root.get("destination_type") == "volume":
            return
        if flavor["root_gb"]:
            if image["min_disk"] and flavor["root_gb"] < image["min_disk"]:
                raise exception.Invalid(
                    f"Flavor's disk is too small for requested image. Flavor disk is {flavor['root_gb'] * 1024**3} "
                    f"bytes, minimum required by image is {image['min_disk'] * 1024**3} bytes."
                )
            if image["size"] and image["size"] > flavor["root_gb"] * 1024**3:
                raise exception.Invalid(
                    f"Flavor's disk is too small for requested image. Flavor disk is "
                    f"{flavor['root_gb'] * 1024**3} bytes, image is {image['size']} bytes."
                )

    async def _check_bdms(
        self, conn: asyncpg.Connection, bdms: list[dict], flavor: dict, ctx: RequestContext, req: CreateRequest
    ) -> None:
        """check_and_transform_bdm against the flavor and the volume service: volumes usable (a
        volume is never attached to two instances), images the caller may see, swap and ephemeral
        within the flavor, device names valid."""
        await self._check_bdm_images(conn, ctx, bdms)
        ephemeral_total = 0
        if any(b["destination_type"] == "volume" for b in bdms):
            if self.volume_build is None:
                raise exception.Invalid("Block Device Mapping is Invalid: this cloud has no volume service.")
            # Volumes/snapshots exist, are available and ours; new volumes have a size; their host is forced.
            await self.volume_build.check_bdms(conn, ctx, req, bdms)
        for b in bdms:
            src, dest = b["source_type"], b["destination_type"]
            if src in ("volume", "snapshot") and dest != "volume":
                raise exception.Invalid(
                    f"Block Device Mapping is Invalid: {src} sources need destination_type volume."
                )
            if src == "blank" and dest == "local":
                size = b.get("volume_size")
                if b.get("guest_format") == "swap":
                    if size is not None and size * 1024 > flavor["swap"]:
                        raise exception.Invalid("Swap drive requested is larger than instance type allows.")
                else:
                    ephemeral_total += size if size is not None else flavor["ephemeral_gb"]
        if ephemeral_total > flavor["ephemeral_gb"]:
            raise exception.Invalid(
                "Ephemeral disks requested are larger than the instance type allows. If no size is given in "
                "one block device mapping, flavor ephemeral size will be used."
            )
        for b in bdms:
            name = b.get("device_name")
            if name and not ROOT_DEVICE_RE.match(name if name.startswith("/dev/") else f"/dev/{name}"):
                raise exception.Invalid(f"The supplied device path ({name}) is invalid.")

    @staticmethod
    async def _check_bdm_images(conn: asyncpg.Connection, ctx: RequestContext, bdms: list[dict]) -> None:
        """Nova's _validate_bdm: every image a BDM names exists for the caller (one it may not see
        is answered as one that does not exist). The boot image (the root's) was checked by the
        snapshot, so only other images cost a query, and only when there are some."""
        root = next((b for b in bdms if b.get("boot_index") == 0), None)
        boot_image = root.get("image_id") if root is not None and root["source_type"] == "image" else None
        wanted = [b.get("image_id") or "" for b in bdms if b["source_type"] == "image" and b is not root]
        wanted = [i for i in dict.fromkeys(wanted) if i != boot_image]
        if not wanted:
            return
        found = await lookups.visible_image_ids(conn, wanted, ctx.project_id, ctx.is_admin)
        for image_id in wanted:
            if image_id not in found:
                raise exception.Invalid(f"Block Device Mapping is Invalid: failed to get image {image_id}.")

    @staticmethod
    def _auto_disk_config(req: CreateRequest, image_id: str, image_props: dict) -> bool:
        """OS-DCF:diskConfig, or the image's default; AUTO is refused when the image disables it."""
        if req.auto_disk_config is None:
            return str(image_props.get("auto_disk_config", "false")).lower() == "true"
        if req.auto_disk_config and str(image_props.get("auto_disk_config", "")).lower() == "disabled":
            raise exception.Invalid(f"Requested image {image_id} has automatic disk resize disabled.")
        return req.auto_disk_config

    @staticmethod
    async def _availability_zone(
        conn: asyncpg.Connection, req: CreateRequest, zones: list[str] | None
    ) -> tuple[str | None, str | None]:
        """The zone exists; a forced host exists and is in it (its zone is the zone when none is asked).

        Returns (availability zone, forced host)."""
        az = req.availability_zone
        if az and az not in zones:
            raise exception.Invalid("The requested availability zone is not available")
        forced_host = req.forced_host or req.forced_node
        if forced_host:
            node = await lookups.compute_node(conn, forced_host)
            if node is None:
                raise exception.Invalid(f"Compute host {forced_host} could not be found.")
            if az and node["availability_zone"] != az:
                raise exception.Invalid(
                    f"Host '{forced_host}' is not a member of availability zone '{az}'."
                )
            az = az or node["availability_zone"]
        return az, forced_host

    def _check_user_data(self, req: CreateRequest) -> None:
        """user_data is base64 and, decoded, no larger than ``compute.max_user_data_bytes``."""
        if req.user_data is None:
            return
        try:
            decoded = base64.b64decode(req.user_data, validate=True)
        except ValueError:
            raise exception.Invalid("User data needs to be valid base 64.") from None
        if len(decoded) > self.config.compute.max_user_data_bytes:
            raise exception.Invalid("User data too large.")

    @staticmethod
    async def _security_groups(
        conn: asyncpg.Connection, ctx: RequestContext, req: CreateRequest, known_names: list[str]
    ) -> list[str]:
        """The requested groups (``default`` when none, made on first use) exist in the project."""
        groups = sorted(set(req.security_groups)) or ["default"]
        known = set(known_names)
        if "default" not in known:
            await lookups.ensure_default_security_group(conn, ctx.project_id)
            known.add("default")
        for name in groups:
            if name not in known:
                raise exception.Invalid(f"Security group {name} not found for project {ctx.project_id}.")
        return groups

    @staticmethod
    async def _kernel_and_ramdisk(
        conn: asyncpg.Connection, ctx: RequestContext, image_props: dict
    ) -> tuple[str, str]:
        """The kernel and ramdisk the image's properties name ('' for none) are images the caller
        may see; one it may not see is answered as one that does not exist."""
        kernel_id = str(image_props.get("kernel_id") or "")
        ramdisk_id = str(image_props.get("ramdisk_id") or "")
        for ref in (kernel_id, ramdisk_id):
            if ref and await images_db.get_visible(conn, ref, ctx.project_id, ctx.is_admin) is None:
                raise exception.Invalid(f"Image {ref} could not be found.")
        return kernel_id, ramdisk_id

    @staticmethod
    def _key_data(req: CreateRequest, key_data: str | None) -> str | None:
        """The named key pair exists for the caller; its public key, or None when none is named."""
        if req.key_name is None:
            return None
        if key_data is None:
            raise exception.Invalid("Invalid key_name provided.")
        return key_data

    @staticmethod
    def _root_device_name(root: dict | None) -> str:
        """The root BDM's device name (``/dev/vda`` when it names none) is a valid device path."""
        root_device = (root or {}).get("device_name") or DEFAULT_ROOT_DEVICE
        if not ROOT_DEVICE_RE.match(root_device):
            raise exception.Invalid(f"The supplied device path ({root_device}) is invalid.")
        return root_device

    @staticmethod
    async def _instance_group(
        conn: asyncpg.Connection, ctx: RequestContext, req: CreateRequest
    ) -> asyncpg.Record | None:
        """The server group of the ``group`` scheduler hint exists and is the caller's (or the caller is admin)."""
        group_hint = req.scheduler_hints.get("group")
        if isinstance(group_hint, list):
            group_hint = group_hint[0] if group_hint else None
        if not group_hint:
            return None
        group = await lookups.instance_group(conn, str(group_hint))
        if group is None or (group["project_id"] != ctx.project_id and not ctx.is_admin):
            raise exception.Invalid(f"Instance group {group_hint} could not be found.")
        return group

    @staticmethod
    def _flavor_doc(flavor: dict) -> dict:
        """The flavor as each instance stores it and the request spec carries it."""
        return {
            "flavorid": flavor["flavorid"],
            "name": flavor["name"],
            "memory_mb": flavor["memory_mb"],
            "vcpus": flavor["vcpus"],
            "root_gb": flavor["root_gb"],
            "ephemeral_gb": flavor["ephemeral_gb"],
            "swap": flavor["swap"],
            "extra_specs": flavor["extra_specs"] or {},
        }

    @staticmethod
    def _request_spec(
        ctx: RequestContext, req: CreateRequest, flavor_doc: dict, image_id: str, image: dict | None,
        image_props: dict, availability_zone: str | None, forced_host: str | None, group: asyncpg.Record | None,
        bdms: list[dict],
    ) -> dict:
        """The RequestSpec the conductor and scheduler read (each instance adds its uuid)."""
        return {
            "project_id": ctx.project_id,
            "user_id": ctx.user_id,
            # Whether the caller was admin: the build reads images as the caller (Nova's context).
            "is_admin": ctx.is_admin,
            "flavor": flavor_doc,
            "image": {
                "id": image_id,
                "properties": image_props,
                "min_ram": image["min_ram"] if image else 0,
                "min_disk": image["min_disk"] if image else 0,
                "disk_format": image["disk_format"] if image else None,
            },
            "availability_zone": availability_zone,
            "force_hosts": [forced_host] if forced_host else [],
            "scheduler_hints": req.scheduler_hints,
            "instance_group": str(group["uuid"]) if group else None,
            "num_instances": req.max_count,
            "retry": {"num_attempts": 0, "hosts": []},
            # Whether the compute host has volumes to prepare (skips a lookup when not).
            "has_volumes": any(b.get("destination_type") == "volume" for b in bdms),
            # The root is a volume: the host makes no local root disk for it.
            "root_is_volume": any(b.get("boot_index") == 0 and b.get("destination_type") == "volume" for b in bdms),
        }

    async def _validate_networks(self, conn: asyncpg.Connection, ctx: RequestContext, req: CreateRequest,
                                 base: BaseOptions) -> None:
        """Requested networks, ports and fixed IPs must exist and be usable by this many instances;
        the networks resolved go in the request spec."""
        if self.network_api is None:
            return
        plan = await self.network_api.validate_requested_networks(
            ctx.project_id, req.requested_networks, req.max_count, is_admin=ctx.is_admin, conn=conn,
            read=base.networks_read,
        )
        if plan.fits < req.min_count:
            raise exception.Forbidden(
                f"Maximum number of ports exceeded: only {plan.fits} of {req.min_count} instances can get addresses."
            )
        if plan.networks is not None:
            base.request_spec["networks"] = plan.networks  # the build takes them as they are (Nova's NetworkRequestList)

    # -- provision ----------------------------------------------------------
    def _instance_rows(
        self, ctx: RequestContext, req: CreateRequest, base: BaseOptions, count: int, reservation_id: str
    ) -> list[dict]:
        """The instance rows of one request (names from the multi-create template)."""
        flavor = base.flavor
        group = base.group
        rows = []
        template = self.config.compute.multi_instance_display_name_template
        for index in range(count):
            uuid = str(uuidlib.uuid4())
            name = req.name
            if count > 1:
                name = template % {"name": req.name, "count": index + 1, "uuid": uuid}
            hostname = req.hostname or sanitize_hostname(name)
            if req.hostname and count > 1:
                hostname = f"{req.hostname}-{index + 1}"
            spec = dict(base.request_spec, instance_uuid=uuid)
            rows.append(
                {
                    "uuid": uuid,
                    "project_id": ctx.project_id,
                    "user_id": ctx.user_id,
                    "display_name": name,
                    "display_description": req.description,
                    "hostname": hostname,
                    "reservation_id": reservation_id,
                    "launch_index": index,
                    "vm_state": states.BUILDING,
                    "task_state": states.SCHEDULING,
                    "power_state": power_state.NOSTATE,
                    "availability_zone": base.availability_zone,
                    "flavor": flavor,
                    "vcpus": flavor["vcpus"],
                    "memory_mb": flavor["memory_mb"],
                    "root_gb": flavor["root_gb"],
                    "ephemeral_gb": flavor["ephemeral_gb"],
                    "image_ref": base.image_id,
                    "kernel_id": base.kernel_id,
                    "ramdisk_id": base.ramdisk_id,
                    "key_name": req.key_name,
                    "key_data": base.key_data,
                    "user_data": req.user_data,
                    "config_drive": "True" if req.config_drive else "",
                    "auto_disk_config": base.auto_disk_config,
                    "access_ip_v4": req.access_ip_v4 or None,
                    "access_ip_v6": req.access_ip_v6 or None,
                    "root_device_name": base.root_device_name,
                    "metadata": req.metadata,
                    "system_metadata": {},
                    "security_groups": base.security_groups,
                    "tags": sorted(set(req.tags)),
                    "injected_files": [[p, c] for p, c in req.injected_files],
                    "requested_networks": req.requested_networks,
                    "request_spec": spec,
                    "instance_group": str(group["uuid"]) if group else None,
                }
            )
        return rows

    async def _provision(
        self, ctx: RequestContext, req: CreateRequest, base: BaseOptions
    ) -> tuple[list[asyncpg.Record], str]:
        """Admit what fits in the project's quota and write it: instance rows, BDMs, group
        members, actions, notifications. How many fit is computed from the usage last seen;
        the provisioning statement re-checks it under the project's lock and writes nothing if
        a concurrent create took the room, and then it is computed again from the newer usage."""
        flavor = base.flavor
        reservation_id = "r-" + secrets.token_hex(4)
        notification = {"state": states.BUILDING, "task_state": states.SCHEDULING, "reservation_id": reservation_id}
        used = base.used
        while True:
            count = quota.admissible_count(base.limits, used, flavor["vcpus"], flavor["memory_mb"], req.max_count)
            if count < req.min_count:
                raise quota.instances_over_quota(
                    base.limits, used, flavor["vcpus"], flavor["memory_mb"],
                    req.min_count if count else max(1, req.min_count),
                )
            rows = self._instance_rows(ctx, req, base, count, reservation_id)
            try:
                instances = await self._write(ctx, base, rows, notification)
                break
            except _Refused as refused:
                used = refused.used
        log.info("provisioned", reservation_id=reservation_id, instance_uuids=[r["uuid"] for r in rows])
        return instances, reservation_id

    async def _write(
        self, ctx: RequestContext, base: BaseOptions, rows: list[dict], notification: dict
    ) -> list[asyncpg.Record]:
        """One statement, shared with the creates provisioning at the same time; on its own in a
        transaction when a server group's member quota
        (its row locked) or volumes (reserved first: one winner per volume) come with it.
        Raises _Refused (nothing written) when the project's usage no longer fits ``rows``."""
        group = base.group
        volumes = any(b.get("volume_id") or b.get("snapshot_id") or b.get("destination_type") == "volume"
                      for b in base.bdms)
        create = db.Provision(
            rows=rows, bdms=[dict(b, instance_uuid=r["uuid"]) for r in rows for b in base.bdms],
            group_uuid=str(group["uuid"]) if group else None, request_id=ctx.request_id, user_id=ctx.user_id,
            project_id=ctx.project_id, notification=notification,
            usage_bounds=quota.usage_bounds(base.limits, base.flavor["vcpus"], base.flavor["memory_mb"], len(rows)),
        )
        if group is None and not volumes:  # with the creates in flight beside it: one commit for all
            instances, used = await self._provisions.submit(create)
            if not instances:
                raise _Refused(used)
            return instances
        async with self.pool.acquire() as conn, conn.transaction():
            if group is not None:
                members = await conn.fetchval(
                    """SELECT (SELECT count(*) FROM instance_group_members m WHERE m.group_uuid = g.uuid)
                       FROM instance_groups g WHERE g.uuid = $1 FOR UPDATE""",
                    group["uuid"],
                )
                limit = base.limits["server_group_members"]
                if limit != quota.UNLIMITED and (members or 0) + len(rows) > limit:
                    raise exception.QuotaExceeded("Quota exceeded, too many servers in group")
            if self.volume_build is not None:  # available → reserved before the BDM rows: one winner per volume
                for r in rows:
                    await self.volume_build.reserve_for_instance(conn, r["uuid"], base.bdms)
            instances, used = await db.provision(conn, create)
            if not instances:
                raise _Refused(used)  # rolls the reservations back
            return instances

    # -- delete -------------------------------------------------------------
    async def delete(self, ctx: RequestContext, instance: asyncpg.Record, force: bool = False) -> None:
        """Mark an instance deleting (any stage, even mid-build) and finish the delete in the background."""
        uuid = str(instance["uuid"])
        if instance["locked"] and not ctx.is_admin:
            raise exception.Conflict(f"Instance {uuid} is locked")
        async with self.pool.acquire() as conn:
            marked = await db.mark_deleting(conn, uuid, ctx.request_id, ctx.user_id, ctx.project_id)
        if marked is None:
            raise exception.NotFound(f"Instance {uuid} could not be found.")
        if marked:  # else already being deleted: DELETE is idempotent
            self.start_delete(uuid, ctx.request_id)

    def start_delete(self, uuid: str, request_id: str) -> None:
        """Queue the delete's background part (:meth:`run_delete`) for the next background turn.
        The instance is marked deleting already: one still queued at a stop is a restart's to finish."""
        self._deletes.put_nowait((uuid, request_id))
        if self._delete_starter is None:
            self._delete_starter = asyncio.create_task(self._start_deletes(), name="deletes")

    async def _start_deletes(self) -> None:
        while True:
            uuid, request_id = await self._deletes.get()
            await self.foreground.background_turn()
            task = asyncio.create_task(self.run_delete(uuid, request_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def run_delete(self, uuid: str, request_id: str) -> None:
        """Wait out a build holding the instance lock, then destroy, free and mark deleted."""
        structlog.contextvars.bind_contextvars(instance_uuid=uuid, request_id=request_id)
        async with self.locks.lock(uuid):
            async with self.pool.acquire() as conn:
                # Whether there is a migration to end or a volume to release, read with the row:
                # most deletes have neither, and each check was a round trip of its own.
                inst = await db.get_with(conn, uuid, {"open_migration": migration_records.open_sql("i.uuid"),
                                                      "holds_volumes": volumes_db.held_sql("i.uuid")})
            if inst is None:
                return
            if inst["vm_state"] in (states.SHELVED, states.SHELVED_OFFLOADED):
                # Nova: a shelved server's snapshot goes with it.
                await delete_shelved_image(self.pool, self.image_store,
                                           (inst["system_metadata"] or {}).get("shelved_image_id"))
            host = inst["host"]
            compute = self.computes.get(host) if host else None
            if compute is not None:
                await compute.terminate_instance(inst, request_id, migrations=inst["open_migration"],
                                                 volumes=inst["holds_volumes"])
            else:
                if self.network_api is not None:
                    await self.network_api.deallocate_for_instance(uuid)
                if self.volume_build is not None and inst["holds_volumes"]:
                    await self.volume_build.release_instance(uuid)
                await finish_delete(self.pool, uuid, request_id, host=None)

    # -- console ------------------------------------------------------------
    async def get_console_output(self, inst: asyncpg.Record) -> bytes | None:
        """The tail of the serial console log from the instance's host; None without a host or a log."""
        compute = self.computes.get(inst["host"]) if inst["host"] else None
        return None if compute is None else await compute.get_console_output(str(inst["uuid"]))

    def pending(self) -> int:
        """Deletes queued or started in the background, and other background work, not yet done."""
        return self._deletes.qsize() + len(self._tasks)

    async def wait_idle(self) -> None:
        """Wait for the background work started; deletes still queued are left to recovery."""
        if self._delete_starter is not None:
            self._delete_starter.cancel()
            await asyncio.gather(self._delete_starter, return_exceptions=True)
            self._delete_starter = None
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def delete_end(uuid: str, request_id: str, host: str | None) -> db.DeleteEnd:
    """The end of a delete: reported by the instance's compute host, or by the API without one."""
    return db.DeleteEnd(uuid, request_id, publisher_id=f"nova-compute:{host}" if host else "nova-api",
                        event="compute_terminate_instance", power_state=power_state.NOSTATE)


async def finish_delete(pool: asyncpg.Pool, uuid: str, request_id: str, host: str | None) -> None:
    """Free the claim and mark the instance deleted, with the action's end, in one statement."""
    async with pool.acquire() as conn:
        (conflict,) = await db.finish_deletes(conn, [delete_end(uuid, request_id, host)])
    if conflict is not None:
        raise conflict
    log.info("instance_deleted", instance_uuid=uuid)
