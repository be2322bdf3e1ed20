"""`novalite doctor`: one line per check, each failure with its fix; exit 0 only when nothing failed."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from conftest import REPO, free_port, fresh_database, write_config

SIM = '[[hosts]]\nname = "sim1"\nsimulate = { vcpus = 4, memory_mb = 8192, disk_gb = 50 }\n'


async def doctor(config: Path, **env: str) -> tuple[int, list[str]]:
    """Run `novalite doctor` as an operator would; its exit code and output lines."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "novalite.cli", "--config", str(config), "doctor",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO), **env))
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode().splitlines()


def line(lines: list[str], check: str) -> str:
    return next(x for x in lines if x.split(None, 1)[1].startswith(check + ":"))


async def test_healthy_config_exits_0(pg_dsn, tmp_path):
    rc, lines = await doctor(write_config(tmp_path, await fresh_database(pg_dsn), hosts=SIM))
    assert rc == 0, lines
    assert line(lines, "postgres").startswith("ok")
    assert line(lines, "libvirt sim1").startswith("ok")
    assert line(lines, "api port").startswith("ok")
    assert line(lines, "disk space").split()[0] in ("ok", "warn")


async def test_a_host_that_does_not_answer_fails_with_a_fix(pg_dsn, tmp_path):
    hosts = f'[[hosts]]\nname = "lab2"\nuri = "qemu+tcp://127.0.0.1:{free_port()}/system"\n'
    rc, lines = await doctor(write_config(tmp_path, await fresh_database(pg_dsn), hosts=hosts))
    assert rc == 1
    bad = line(lines, "libvirt lab2")
    assert bad.startswith("fail  libvirt lab2: qemu+tcp://127.0.0.1:")
    assert "fix: check that libvirtd runs on 127.0.0.1" in bad
    assert line(lines, "postgres").startswith("ok")


async def test_a_busy_port_fails(pg_dsn, tmp_path):
    config = write_config(tmp_path, await fresh_database(pg_dsn), hosts=SIM)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, lines = await doctor(config, NOVALITE_API__PORT=str(port))
    assert rc == 1
    bad = line(lines, "api port")
    assert bad.startswith(f"fail  api port: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert f"fix: stop what listens there (`ss -ltnp 'sport = :{port}'`)" in bad


async def test_a_state_dir_qemu_cannot_enter_fails_with_the_directory(pg_dsn, tmp_path):
    """qemu runs as its own user: a parent of the state dir without x for it blocks every guest."""
    base = Path(tempfile.mkdtemp(prefix="novalite-doctor-", dir="/var/tmp"))
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o700)
        os.chown(locked, 0, 0)
        hosts = '[[hosts]]\nname = "local"\nuri = "qemu:///system"\n'
        config = write_config(tmp_path, await fresh_database(pg_dsn), hosts=hosts)
        env = {"NOVALITE_STATE__DIR": f'"{locked / "state"}"'}
        rc, lines = await doctor(config, **env)
        assert rc == 1
        bad = line(lines, "state dir traversal")
        assert bad.startswith("fail  state dir traversal: qemu runs as ")
        assert f"cannot enter {locked} (mode 0700, owner root)" in bad
        assert f"fix: `chmod o+x {locked}`" in bad
        locked.chmod(0o711)
        rc, lines = await doctor(config, **env)
        assert line(lines, "state dir traversal").startswith("ok")
    finally:
        shutil.rmtree(base, ignore_errors=True)
