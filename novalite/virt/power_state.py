"""Power states, numbered as in Nova's ``nova/compute/power_state.py``.

The values stored in ``instances.power_state`` mean what Nova's mean. They live
at the bottom of the house (virt) because the drivers report them and the
compute layer stores them; both import this one definition.
"""

from __future__ import annotations

NOSTATE = 0
RUNNING = 1
PAUSED = 3
SHUTDOWN = 4  # the guest is off (libvirt "shutdown" and "shutoff" both map here)
CRASHED = 6
SUSPENDED = 7

STATE_NAMES: dict[int, str] = {
    NOSTATE: "pending",
    RUNNING: "running",
    PAUSED: "paused",
    SHUTDOWN: "shutdown",
    CRASHED: "crashed",
    SUSPENDED: "suspended",
}
