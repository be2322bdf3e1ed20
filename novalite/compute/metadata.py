"""What the metadata service answers (Nova's ``nova/api/metadata``): the config drive's documents.

An instance is found by the network a request arrived on and its source address, the fixed IP
of one of its ports there (nwfilter's anti-spoofing keeps a guest to its own addresses), as
Neutron's metadata agent finds it. The OpenStack documents are the config drive's own
(:func:`novalite.virt.configdrive.openstack_documents`, built from the same instance row by
:func:`instance_meta`), without the admin password, which only the config drive carries; the EC2
tree (``/latest/meta-data/``) holds the same facts under Nova's EC2 names.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from novalite import exception
from novalite.config import Config
from novalite.db import instances as instances_db
from novalite.db import networks as networks_db
from novalite.network import NetworkAPI, network_data
from novalite.virt.configdrive import instance_metadata, openstack_documents

__all__ = ["MAX_PASSWORD_BYTES", "InstanceDocuments", "MetadataService", "injected_files", "instance_meta",
           "user_data"]

# Nova's password handler: a guest posts at most this much (an encrypted password, base64).
MAX_PASSWORD_BYTES = 256
_PASSWORD_KEY = "password"


def instance_meta(inst: Mapping[str, Any], availability_zone: str | None,
                  admin_pass: str | None = None) -> dict[str, Any]:
    """``meta_data.json`` (without ``files``) of an instance row: the config drive's and the service's."""
    return instance_metadata(
        uuid=str(inst["uuid"]),
        name=inst["display_name"],
        hostname=inst["hostname"],
        availability_zone=inst["availability_zone"] or availability_zone,
        launch_index=inst["launch_index"],
        project_id=inst["project_id"],
        key_name=inst["key_name"],
        key_data=inst["key_data"],
        meta=inst["metadata"],
        admin_pass=admin_pass,
    )


def user_data(inst: Mapping[str, Any]) -> bytes | None:
    """The instance's user_data, decoded (stored base64, as the API took it)."""
    return base64.b64decode(inst["user_data"]) if inst["user_data"] else None


def injected_files(inst: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """The instance's injected (personality) files as (guest path, content) pairs."""
    return [(p, base64.b64decode(c)) for p, c in (inst["injected_files"] or [])]


@dataclass(frozen=True, slots=True)
class InstanceDocuments:
    """Everything the metadata service may answer one instance."""

    uuid: str
    openstack: dict[str, bytes]  # file name → content, the same under every version directory
    files: list[bytes]           # openstack/content/0000, 0001, ...
    ec2: dict[str, Any]          # the meta-data/ tree: a str is a leaf, a dict a directory
    password: str


def _ec2_tree(inst: Mapping[str, Any], address: str, az: str | None) -> dict[str, Any]:
    """Nova's EC2 ``meta-data/`` tree for an instance reached at ``address``."""
    tree: dict[str, Any] = {
        "ami-launch-index": str(inst["launch_index"]),
        "block-device-mapping": {"ami": "vda", "root": inst["root_device_name"] or "/dev/vda"},
        "hostname": inst["hostname"],
        "instance-action": "none",
        "instance-id": f"i-{inst['id']:08x}",
        "instance-type": inst["flavor"]["name"],
        "local-hostname": inst["hostname"],
        "local-ipv4": address,
        "placement": {"availability-zone": az or ""},
        "public-hostname": inst["hostname"],
        "reservation-id": inst["reservation_id"],
        "security-groups": "\n".join(inst["security_groups"] or ()),
    }
    if inst["key_name"] and inst["key_data"]:
        # Listed as "0=<name>", reached as public-keys/0/openssh-key.
        tree["public-keys"] = {f"0={inst['key_name']}": {"openssh-key": inst["key_data"]}}
    return tree


class MetadataService:
    """Finds the instance behind a request and gives its documents; stores the password it posts."""

    def __init__(self, pool: asyncpg.Pool, config: Config, network_api: NetworkAPI) -> None:
        self.pool = pool
        self.config = config
        self.network_api = network_api
        self._host_zones = {h.name: h.availability_zone for h in config.hosts}

    async def lookup(self, network_id: str, address: str) -> InstanceDocuments | None:
        """The documents of the instance whose port on ``network_id`` has fixed IP ``address``; None
        when no instance's port has it."""
        async with self.pool.acquire() as conn:
            port = await networks_db.port_with_address(conn, network_id, address)
            if port is None or not port["device_owner"].startswith("compute:") or not port["device_id"]:
                return None
            inst = await instances_db.get(conn, port["device_id"])
        if inst is None:
            return None
        uuid = str(inst["uuid"])
        az = inst["availability_zone"] or self._host_zones.get(inst["host"]) \
            or self.config.compute.default_availability_zone
        files = injected_files(inst)
        ports = await self.network_api.ports_for_instance(uuid)
        documents = openstack_documents(instance_meta(inst, az), user_data(inst), files, network_data(ports))
        return InstanceDocuments(uuid=uuid, openstack=documents, files=[c for _, c in files],
                                 ec2=_ec2_tree(inst, address, az),
                                 password=(inst["system_metadata"] or {}).get(_PASSWORD_KEY, ""))

    async def set_password(self, uuid: str, password: str) -> None:
        """Store the password a guest posts, once (Nova's password handler): 409 when one is set."""
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            raise exception.Invalid(f"The password is longer than {MAX_PASSWORD_BYTES} bytes.")
        async with self.pool.acquire() as conn:
            done = await conn.fetchval(
                """UPDATE instances SET system_metadata = system_metadata || jsonb_build_object($2::text, $3::text)
                   WHERE uuid = $1 AND NOT deleted AND coalesce(system_metadata->>$2, '') = ''
                   RETURNING true""",
                uuid, _PASSWORD_KEY, password,
            )
        if not done:
            raise exception.Conflict("The password is already set.")
