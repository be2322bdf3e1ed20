"""`novalite db backup PATH` / `novalite db restore PATH`: what a backup holds comes back."""

from __future__ import annotations

import stat

import asyncpg

from novalite import db
from novalite.api import keys
from tests.conftest import fresh_database, start_cloud, stop_cloud
from tests.test_migrations import novalite_cli


async def test_backup_then_restore_brings_deleted_rows_back(pg_dsn, tmp_path):
    dsn = await fresh_database(pg_dsn)
    assert novalite_cli("db", "upgrade", dsn=dsn, cwd=tmp_path).returncode == 0
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO projects (id, name) VALUES ('p1', 'lab'), ('p2', 'class')")
        backup = tmp_path / "novalite.dump"
        result = novalite_cli("db", "backup", str(backup), dsn=dsn, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"backed up to {backup}"
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        assert not list(tmp_path.glob("*.partial"))

        await conn.execute("DELETE FROM projects")
        await conn.execute("INSERT INTO projects (id, name) VALUES ('p3', 'made after the backup')")
        result = novalite_cli("db", "restore", str(backup), dsn=dsn, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert sorted(await conn.fetch("SELECT id, name FROM projects")) == [("p1", "lab"), ("p2", "class")]
        assert await conn.fetchval("SELECT version FROM schema_version") == db.SCHEMA_VERSION
    finally:
        await conn.close()


async def test_restore_is_refused_while_a_server_is_connected(pg_dsn, tmp_path):
    cloud = await start_cloud(pg_dsn, tmp_path)
    dsn = cloud.app[keys.DSN]
    try:
        backup = tmp_path / "b.dump"
        assert novalite_cli("db", "backup", str(backup), dsn=dsn, cwd=tmp_path).returncode == 0
        result = novalite_cli("db", "restore", str(backup), dsn=dsn, cwd=tmp_path)
        assert result.returncode == 2
        assert "a novalite server is connected to this database: stop it first" in result.stderr
        status, _, _ = await cloud.compute("GET", "/servers")
        assert status == 200
    finally:
        await stop_cloud(cloud)


def test_restore_of_a_missing_file_says_so(tmp_path):
    result = novalite_cli("db", "restore", str(tmp_path / "nope.dump"), dsn="postgresql://127.0.0.1:1/x",
                          cwd=tmp_path)
    assert (result.returncode, result.stderr.strip()) == (2, f"novalite: {tmp_path / 'nope.dump'}: no such backup file")
