"""Schema migrations: numbered SQL files applied in order, each in its own transaction.

``novalite/db/migrations/NNNN_what.sql`` (0001, 0002, ... with no gaps) are the schema's
history; ``schema_version`` holds the number of the last one applied. ``upgrade`` runs at
every start and from ``novalite db upgrade``: under an advisory lock, so two processes
starting at once apply each file once; a database newer than the code is refused rather
than served by code that does not know its tables.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import structlog

from novalite import __version__

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Held by whoever changes the schema, for one migration's transaction at a time.
UPGRADE_LOCK = 7400001
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class SchemaError(RuntimeError):
    """The database's schema cannot be brought to this code's version (one line for the operator)."""


def migrations(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, Path]]:
    """The migration files by number; their numbers must run 1, 2, ... without a gap or a repeat."""
    found = sorted(
        (int(m.group(1)), path) for path in directory.iterdir() if (m := _FILE_NAME.match(path.name))
    )
    numbers = [number for number, _ in found]
    if numbers != list(range(1, len(found) + 1)):
        raise SchemaError(f"{directory}: migrations must be numbered 0001, 0002, ... once each; found {numbers}")
    return found


SCHEMA_VERSION = len(migrations())


async def current_version(conn: asyncpg.Connection) -> int:
    """The number of the last migration applied to the database (0: an empty database)."""
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return 0
    return await conn.fetchval("SELECT version FROM schema_version") or 0


def _too_new(version: int) -> SchemaError:
    return SchemaError(
        f"the database is at schema version {version}, newer than this novalite "
        f"{__version__} knows ({SCHEMA_VERSION}): run the newer novalite, "
        "or restore a backup this version made (`novalite db restore PATH`)"
    )


async def upgrade(pool: asyncpg.Pool) -> int:
    """Apply the migrations the database lacks, one transaction each, and return the version.

    Each transaction takes the upgrade lock and reads the version again, so a concurrent
    upgrade waits for the file in flight and then finds it applied."""
    steps = migrations()
    async with pool.acquire() as conn:
        while True:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", UPGRADE_LOCK)
                version = await current_version(conn)
                if version > len(steps):
                    raise _too_new(version)
                if version == len(steps):
                    return version
                number, path = steps[version]
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_version (version) VALUES ($1)"
                    " ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
                    number,
                )
            log.info("migration_applied", version=number, file=path.name)
