"""`serve` raises its own CPU priority once its database is up ([api] cpu_priority_boost): every
thread of the process, the libvirt workers started later included, runs at a nice value 5 below
the one it was started with; an embedded Postgres, started before, keeps its own."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import fresh_database, write_config
from serve_process import ServeProcess


def stat_fields(path: str) -> list[str] | None:
    """The fields of a /proc stat file after the command's name (field 3 first); None when the
    process or thread ended meanwhile."""
    try:
        return Path(path).read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None


def nice_values(pid: int) -> dict[str, int]:
    """Every thread's nice value (field 19 of /proc/<pid>/task/<tid>/stat), by thread id."""
    values = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        if (fields := stat_fields(f"/proc/{pid}/task/{tid}/stat")) is not None:
            values[tid] = int(fields[16])
    return values


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
        return ""


def processes() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def of_pgdata(pgdata: str) -> list[int]:
    """The processes whose command line names this data directory (a postmaster)."""
    return [pid for pid in processes() if pgdata in cmdline(pid)]


def children(pid: int) -> list[int]:
    """The processes whose parent (field 4 of their stat) is ``pid``."""
    return [child for child in processes() if (fields := stat_fields(f"/proc/{child}/stat")) and int(fields[1]) == pid]


async def serve_until_hosts_ready(config: Path) -> ServeProcess:
    port = int(config.read_text().split("port = ")[1].split()[0])
    serve = ServeProcess(config, "--no-test-image", "--clouds-yaml", str(config.parent / "clouds.yaml"))
    serve.start()
    await serve.wait_listening(port)
    await serve.wait_event("hosts_ready")
    return serve


async def test_every_thread_of_serve_runs_five_nice_steps_up(pg_dsn, tmp_path):
    assert os.geteuid() == 0, "lowering a nice value needs root"
    started_at = os.getpriority(os.PRIO_PROCESS, 0)
    serve = await serve_until_hosts_ready(write_config(tmp_path, await fresh_database(pg_dsn)))
    try:
        (said,) = serve.events("cpu_priority")
        assert (said["was"], said["nice"]) == (started_at, started_at - 5)
        threads = nice_values(serve.proc.pid)
        assert len(threads) > 2  # the libvirt workers the hosts' bring-up started, after the change
        assert set(threads.values()) == {started_at - 5}
    finally:
        serve.stop()


async def test_boost_zero_leaves_the_priority_as_started(pg_dsn, tmp_path):
    config = write_config(tmp_path, await fresh_database(pg_dsn), extra="")
    config.write_text(config.read_text().replace("[api]\n", "[api]\ncpu_priority_boost = 0\n"))
    serve = await serve_until_hosts_ready(config)
    try:
        assert not serve.events("cpu_priority") and not serve.events("cpu_priority_unchanged")
        assert set(nice_values(serve.proc.pid).values()) == {os.getpriority(os.PRIO_PROCESS, 0)}
    finally:
        serve.stop()


async def test_an_embedded_postgres_keeps_the_priority_serve_was_started_with(tmp_path):
    serve = await serve_until_hosts_ready(write_config(tmp_path, ""))
    pgdata = str(tmp_path / "state" / "pgdata")
    try:
        started_at = os.getpriority(os.PRIO_PROCESS, 0)
        assert set(nice_values(serve.proc.pid).values()) == {started_at - 5}
        (postmaster,) = of_pgdata(pgdata)
        backends = [postmaster, *children(postmaster)]  # its backends and workers, serve's connections
        assert len(backends) > 2
        assert {nice for pid in backends for nice in nice_values(pid).values()} == {started_at}
    finally:
        rc, _ = await serve.terminate(60)  # a clean stop stops the embedded Postgres too
    assert rc == 0 and not of_pgdata(pgdata)
