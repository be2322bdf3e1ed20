"""The virt driver contract: what the compute manager may ask of a hypervisor.

Modelled on the idea of Nova's ``nova/virt/driver.py``: the compute layer speaks
only in these verbs and dataclasses, and each hypervisor backend (today only
libvirt, see :mod:`novalite.virt.libvirt.driver`) implements them.  Every verb
is a coroutine; an implementation must never block the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

# Power states (Nova's numbering) are defined once, in novalite.virt.power_state; re-exported here.
from novalite.virt.power_state import CRASHED, NOSTATE, PAUSED, RUNNING, SHUTDOWN, SUSPENDED
from novalite.virt.power_state import STATE_NAMES as POWER_STATE_NAMES

__all__ = [
    "CRASHED",
    "NOSTATE",
    "PAUSED",
    "POWER_STATE_NAMES",
    "RUNNING",
    "SHUTDOWN",
    "SUSPENDED",
    "DiskSpec",
    "GuestSpec",
    "HostInfo",
    "HypervisorUnavailable",
    "InstanceExists",
    "InstanceInfo",
    "InstanceNotFound",
    "LifecycleCallback",
    "NicSpec",
    "VirtDriver",
    "VirtError",
]

VirtType = Literal["test", "qemu", "kvm"]


class VirtError(Exception):
    """Any failure of the hypervisor layer; ``code`` is the backend's error code if known."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class InstanceNotFound(VirtError):
    """The hypervisor has no domain for this instance uuid."""


class InstanceExists(VirtError):
    """A domain with this instance's uuid or name already exists on the hypervisor."""


class HypervisorUnavailable(VirtError):
    """The hypervisor connection could not be opened or was closed."""


@dataclass(frozen=True, slots=True)
class DiskSpec:
    """One block device of a guest, backed by a local file."""

    path: str
    device: Literal["disk", "cdrom"] = "disk"
    bus: str = "virtio"
    target_dev: str = "vda"
    driver_type: Literal["qcow2", "raw"] = "qcow2"


@dataclass(frozen=True, slots=True)
class NicSpec:
    """One virtual NIC; ``network`` is a libvirt network name, None for no host network."""

    mac: str
    network: str | None = None
    model: str = "virtio"


@dataclass(slots=True)
class GuestSpec:
    """Everything a driver needs to build and boot one instance, already decided upstream.

    ``metadata`` carries Nova-like keys that end up in the domain's nova metadata
    element: display_name, flavor_name, memory_mb, vcpus, root_gb, project_id,
    user_id, creation_time.
    """

    instance_uuid: str
    name: str  # libvirt domain name, e.g. "instance-0000a1b2"
    memory_mb: int
    vcpus: int
    virt_type: VirtType = "qemu"
    disks: list[DiskSpec] = field(default_factory=list)
    nics: list[NicSpec] = field(default_factory=list)
    kernel: str | None = None
    ramdisk: str | None = None
    cmdline: str | None = None
    console_log_path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """A snapshot of one domain's state as the hypervisor reports it."""

    power_state: int
    max_mem_kb: int
    mem_kb: int
    num_cpu: int


@dataclass(frozen=True, slots=True)
class HostInfo:
    """What a compute host offers, as reported when the driver starts."""

    hostname: str
    vcpus: int
    memory_mb: int
    local_gb: int
    hypervisor_type: str
    hypervisor_version: int
    cpu_arch: str
    cpu_model: str


# Called on the event loop with (instance_uuid, power_state, event name) whenever
# the hypervisor reports that a domain started, stopped, paused, resumed, ...
LifecycleCallback = Callable[[str, int, str], None]


@runtime_checkable
class VirtDriver(Protocol):
    """The verbs the compute manager uses; one driver object per compute host.

    All methods are coroutines and must not block the event loop: blocking
    hypervisor calls belong in worker threads.  Errors are raised as
    :class:`VirtError` subclasses, never as backend exceptions.
    """

    async def init_host(self) -> HostInfo:
        """Connect to the hypervisor and describe the host.

        Before: the driver is constructed and not closed.
        After: the driver holds an open connection that later calls reuse; the
        returned HostInfo reflects the hypervisor's view of the host.
        Raises HypervisorUnavailable if the hypervisor cannot be reached.
        """
        ...

    async def spawn(self, guest: GuestSpec) -> None:
        """Define and start a domain for ``guest``.

        Before: no domain with guest.instance_uuid or guest.name exists
        (otherwise InstanceExists is raised and the existing domain is untouched).
        After success: a persistent domain with that uuid is defined and running.
        If this fails, any partial domain is undefined/destroyed before the
        exception propagates, so the host is left as it was.
        """
        ...

    async def destroy(self, instance_uuid: str) -> None:
        """Power off (if running) and undefine the instance's domain.

        After: no domain with this uuid exists.  Idempotent: a domain that does
        not exist is not an error, so callers may retry freely.
        """
        ...

    async def get_info(self, instance_uuid: str) -> InstanceInfo | None:
        """Return the domain's power state and sizes, or None when there is no such domain.

        Has no side effects; power_state uses Nova's numbering (RUNNING, SHUTDOWN, ...).
        """
        ...

    async def list_instance_uuids(self) -> list[str]:
        """Return the uuids of all domains the hypervisor knows, running or not.

        Has no side effects; the order is unspecified.
        """
        ...

    async def close(self) -> None:
        """Wait for in-flight calls, then release the connection and worker threads.

        After: every other verb raises HypervisorUnavailable.  Calling close twice is fine.
        """
        ...

    # -- power actions (issue 7) ----------------------------------------------
    # Each verb acts on an existing domain (InstanceNotFound otherwise), returns
    # once the domain is in the stated power state, and is safe to repeat: asking
    # for the state the domain is already in is not an error.

    async def power_off(self, instance_uuid: str, timeout: float = 0) -> None:
        """Stop the guest: a clean (ACPI) shutdown waited for up to ``timeout`` seconds, then a hard stop.

        ``timeout`` 0 means a hard stop at once.  After: the domain is defined and SHUTDOWN.
        """
        ...

    async def power_on(self, instance_uuid: str) -> None:
        """Start a defined, stopped domain (restoring a managed save if there is one).

        After: the domain is RUNNING.
        """
        ...

    async def reboot(self, instance_uuid: str, hard: bool, timeout: float = 0) -> bool:
        """Reboot the guest; return True if a soft reboot worked, False if a hard one was done.

        Soft: a clean shutdown waited for up to ``timeout`` seconds, then start;
        when the guest ignores it, fall back to hard.  Hard: stop at once, then
        start (also brings up a stopped, paused or suspended domain).
        After: the domain is RUNNING.
        """
        ...

    async def pause(self, instance_uuid: str) -> None:
        """Freeze the guest's vCPUs in memory.  Before: RUNNING.  After: PAUSED."""
        ...

    async def unpause(self, instance_uuid: str) -> None:
        """Let a paused guest run again.  After: RUNNING."""
        ...

    async def suspend(self, instance_uuid: str) -> None:
        """Save the guest's memory to disk and stop it (resumable).  After: SHUTDOWN, with a saved image."""
        ...

    async def resume(self, instance_uuid: str) -> None:
        """Restore a suspended guest from its saved image.  After: RUNNING."""
        ...

    async def has_saved_state(self, instance_uuid: str) -> bool:
        """True when a stopped domain has a saved image (it was suspended)."""
        ...

    async def list_instance_states(self) -> dict[str, int]:
        """Every domain the hypervisor knows, uuid → power_state, in one call (no side effects)."""
        ...

    async def watch_lifecycle(self, callback: LifecycleCallback) -> None:
        """Subscribe ``callback`` to lifecycle events of every domain of this host.

        The callback runs on the event loop, must not block, and gets the new
        power state as the event implies it (callers re-read the domain when they
        need certainty: events can arrive late or be coalesced).
        """
        ...
