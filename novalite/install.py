"""Running novalite as a system service: the systemd unit ``novalite install-service`` writes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

UNIT_PATH = Path("/etc/systemd/system/novalite.service")
SERVICE_STATE_DIR = Path("/var/lib/novalite")
SERVICE_CONFIG = Path("/etc/novalite/config.toml")


def novalite_command() -> str:
    """The absolute command that runs this novalite: the script beside this interpreter (a venv's
    or pipx's), else the one on PATH, else this interpreter with ``-m novalite.cli``."""
    beside = Path(sys.executable).parent / "novalite"
    if beside.exists():
        return str(beside)
    found = shutil.which("novalite")
    return str(Path(found).resolve()) if found else f"{sys.executable} -m novalite.cli"


def systemd_unit(*, command: str, config: Path, state_dir: Path, user: str | None, stop_timeout: float) -> str:
    """The unit text: Type=notify (novalite says READY when it serves), restarted on failure,
    SIGTERM for a clean stop given `stop_timeout` seconds before systemd kills it."""
    service = ["Type=notify", "NotifyAccess=main"]
    if user:
        service.append(f"User={user}")
    if state_dir.parent == Path("/var/lib"):
        # systemd makes the directory (owned by User=) before the start.
        service.append(f"StateDirectory={state_dir.name}")
    service += [
        f"ExecStart={command} --config {config} --state-dir {state_dir} serve --clouds-yaml {state_dir / 'clouds.yaml'}",
        "Environment=PYTHONUNBUFFERED=1",
        "Restart=on-failure",
        "RestartSec=5",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={int(stop_timeout)}",
    ]
    return "\n".join([
        "[Unit]",
        "Description=novalite: Nova's boot flow, Keystone, Glance, Neutron and Cinder subsets in one process",
        "After=network-online.target libvirtd.service postgresql.service",
        "Wants=network-online.target",
        "",
        "[Service]",
        *service,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])
