"""The one wiring point: config → database, identity, compute services, aiohttp app.

Resources with a lifetime live in ``app.cleanup_ctx`` generators (create,
yield, close), in dependency order: database first, then the services that
use it, so shutdown runs the other way round.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import web

from novalite import bootstrap, db
from novalite.api import identity as identity_api
from novalite.api import middleware
from novalite.api.compute import versions as compute_versions
from novalite.config import Config
from novalite.identity import IdentityService

log = structlog.get_logger(__name__)


def database_ctx(config: Config, clouds_yaml: Path | None):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        embedded = None
        dsn = config.database.dsn
        if not dsn:
            embedded = db.EmbeddedPostgres(config.state_dir / "pgdata")
            dsn = await embedded.start()
            log.info("embedded_postgres_started", pgdata=str(embedded.pgdata))
        pool = await db.create_pool(dsn, config.database.pool_min, config.database.pool_max)
        try:
            await db.upgrade(pool)
            creds = await bootstrap.bootstrap(pool, config)
            if creds is not None:
                bootstrap.save_credentials(config, creds)
                log.info("bootstrapped", credentials=str(bootstrap.credentials_file(config)))
            if clouds_yaml is not None and (creds is not None or not clouds_yaml.exists()):
                bootstrap.write_clouds_yaml(config, clouds_yaml)
            app["db"] = pool
            app["dsn"] = dsn
            app["identity"] = IdentityService(
                pool, config.public_url, config.identity.region, config.identity.token_lifetime
            )
            yield
        finally:
            await pool.close()
            if embedded is not None:
                await embedded.stop()

    return ctx


def init_app(config: Config, *, clouds_yaml: Path | None = None) -> web.Application:
    """Build the whole process: every API under one aiohttp app."""
    app = web.Application(
        client_max_size=config.api.max_body_bytes,
        middlewares=[
            middleware.request_id_middleware,
            middleware.error_middleware,
            middleware.auth_middleware,
            middleware.microversion_middleware,
        ],
    )
    app["config"] = config
    app.cleanup_ctx.append(database_ctx(config, clouds_yaml))
    identity_api.add_routes(app)
    compute_versions.add_routes(app)
    return app
