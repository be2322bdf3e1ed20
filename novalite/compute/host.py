"""What the services need of one compute host, and nothing more: the narrow port to a host.

The volume service, the network service and the compute manager of a host all
reach the hypervisor through the same :class:`ComputeHost`: its virt driver
(one connection, one worker pool), the host's image cache, and whether it is a
simulated host (libvirt's test driver: domains are described, no files are written).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from novalite.compute.disks import ImageCache
from novalite.config import Config, HostConfig
from novalite.virt.driver import VirtDriver

__all__ = ["ComputeHost", "compute_host"]


@dataclass(frozen=True, slots=True)
class ComputeHost:
    """One configured compute host: its name, virt driver, image cache and instance directory."""

    name: str
    driver: VirtDriver
    image_cache: ImageCache
    instances_dir: Path  # <state dir>/instances/<host>
    simulated: bool
    virt_type: str  # what guests are built for: "kvm" or "qemu" ("auto" resolved at start)


def compute_host(host: HostConfig, config: Config, driver: VirtDriver, virt_type: str) -> ComputeHost:
    """The port of ``host`` around its driver; its directories are resolved once, here."""
    instances_dir = config.state_dir / "instances" / host.name
    return ComputeHost(
        name=host.name,
        driver=driver,
        image_cache=ImageCache(instances_dir / "_base", config.state_dir / "images"),
        instances_dir=instances_dir,
        simulated=host.simulate is not None or (host.uri or "").startswith("test"),
        virt_type=virt_type,
    )
