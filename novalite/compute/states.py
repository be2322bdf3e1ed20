"""Nova's instance state names and how they map to the API's status strings."""

from __future__ import annotations

# vm_state
ACTIVE = "active"
BUILDING = "building"
STOPPED = "stopped"
PAUSED = "paused"
SUSPENDED = "suspended"
ERROR = "error"
RESCUED = "rescued"
DELETED = "deleted"
SHELVED = "shelved"
SHELVED_OFFLOADED = "shelved_offloaded"

# task_state
SCHEDULING = "scheduling"
NETWORKING = "networking"
BLOCK_DEVICE_MAPPING = "block_device_mapping"
SPAWNING = "spawning"
DELETING = "deleting"

# power_state: novalite.virt.power_state (the drivers report it, the compute layer stores it)

_REBOOT = {t: "REBOOT" for t in ("rebooting", "reboot_pending", "reboot_started")}
_HARD = {t: "HARD_REBOOT" for t in ("rebooting_hard", "reboot_pending_hard", "reboot_started_hard")}
_REBUILD = {t: "REBUILD" for t in ("rebuilding", "rebuild_block_device_mapping", "rebuild_spawning")}
_RESIZE = {t: "RESIZE" for t in ("resize_prep", "resize_migrating", "resize_migrated", "resize_finish")}

STATE_MAP: dict[str, dict[str | None, str]] = {
    "active": {"default": "ACTIVE", **_REBOOT, **_HARD, **_REBUILD, **_RESIZE,
               "updating_password": "PASSWORD", "migrating": "MIGRATING"},
    "building": {"default": "BUILD"},
    "stopped": {"default": "SHUTOFF", **_RESIZE, **_REBUILD},
    "resized": {"default": "VERIFY_RESIZE", "resize_reverting": "REVERT_RESIZE"},
    "paused": {"default": "PAUSED", "migrating": "MIGRATING"},
    "suspended": {"default": "SUSPENDED"},
    "rescued": {"default": "RESCUE"},
    "error": {"default": "ERROR", **_REBUILD},
    "deleted": {"default": "DELETED"},
    "soft-delete": {"default": "SOFT_DELETED"},
    "shelved": {"default": "SHELVED"},
    "shelved_offloaded": {"default": "SHELVED_OFFLOADED"},
}


def status_from_state(vm_state: str, task_state: str | None) -> str:
    """The API status (BUILD, ACTIVE, ERROR, ...) Nova shows for a state pair."""
    task_map = STATE_MAP.get(vm_state, {"default": "UNKNOWN"})
    return task_map.get(task_state, task_map["default"])


def states_from_status(status: str) -> list[tuple[str, str | None]]:
    """(vm_state, task_state-or-'*') pairs that show as `status`, for the status filter."""
    status = status.upper()
    out: list[tuple[str, str | None]] = []
    for vm_state, task_map in STATE_MAP.items():
        for task, shown in task_map.items():
            if shown == status:
                out.append((vm_state, "*" if task == "default" else task))
    return out
