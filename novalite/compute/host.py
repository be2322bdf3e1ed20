"""What the services need of one compute host, and nothing more: the narrow port to a host.

The volume service, the network service and the compute manager of a host all
reach the hypervisor through the same :class:`ComputeHost`: its virt driver
(one connection, one worker pool), the host's instance pool (its image cache and the
instances' volumes), and whether it is a simulated host (libvirt's test driver:
domains are described, no volumes are made).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncpg

from novalite.compute.disks import InstanceStore
from novalite.config import Config, HostConfig
from novalite.virt.driver import StoragePoolSpec, VirtDriver

__all__ = ["ComputeHost", "compute_host", "instance_pool"]


@dataclass(frozen=True, slots=True)
class ComputeHost:
    """One configured compute host: its name, virt driver and instance pool."""

    name: str
    driver: VirtDriver
    store: InstanceStore
    scratch: Path  # this machine's working files for the host (<state dir>/instances/<host>)
    simulated: bool
    virt_type: str  # what guests are built for: "kvm" or "qemu" ("auto" resolved at start)


def instance_pool(host: str, config: Config) -> StoragePoolSpec:
    """The host's instance pool: ``<libvirt_prefix>instances-<host>`` under ``instance_pool_target``."""
    name = f"{config.networking.libvirt_prefix}instances-{host}"
    return StoragePoolSpec(name=name, type="dir", target=f"{config.compute.instance_pool_target.rstrip('/')}/{name}")


def compute_host(host: HostConfig, config: Config, driver: VirtDriver, virt_type: str,
                 db: asyncpg.Pool | None = None) -> ComputeHost:
    """The port of ``host`` around its driver; its pool and directories are resolved once, here.
    ``db`` gives the image cache Glance's checksums."""
    scratch = config.state_dir / "instances" / host.name
    simulated = host.simulate is not None or (host.uri or "").startswith("test")
    return ComputeHost(
        name=host.name,
        driver=driver,
        store=InstanceStore(driver, instance_pool(host.name, config), simulated, config.state_dir / "images", db,
                            scratch),
        scratch=scratch,
        simulated=simulated,
        virt_type=virt_type,
    )
