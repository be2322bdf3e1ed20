"""Hypervisor layer: the VirtDriver contract and its backends."""

from novalite.virt.driver import (
    DiskSpec,
    GuestSpec,
    HostInfo,
    HypervisorUnavailable,
    InstanceExists,
    InstanceInfo,
    InstanceNotFound,
    NetworkSpec,
    NicSpec,
    StoragePoolSpec,
    VirtDriver,
    VirtError,
)

__all__ = [
    "DiskSpec",
    "GuestSpec",
    "HostInfo",
    "HypervisorUnavailable",
    "InstanceExists",
    "InstanceInfo",
    "InstanceNotFound",
    "NetworkSpec",
    "NicSpec",
    "StoragePoolSpec",
    "VirtDriver",
    "VirtError",
]
