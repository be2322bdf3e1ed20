"""Command line: ``novalite serve | db upgrade | bootstrap | clouds-yaml | image build-test``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from pathlib import Path

from aiohttp import web

from novalite import bootstrap, db
from novalite.api import keys
from novalite.config import Config, ConfigError, load_config
from novalite.logs import setup_logging
from novalite.policy import PolicyError


async def _with_pool(config: Config, fn):
    embedded = None
    dsn = config.database.dsn
    if not dsn:
        embedded = db.EmbeddedPostgres(config.state_dir / "pgdata")
        dsn = await embedded.start()
    pool = await db.create_pool(dsn, 1, 2)
    try:
        return await fn(pool)
    finally:
        await pool.close()
        if embedded is not None:
            await embedded.stop()


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from novalite.app import init_app

    app = init_app(config, clouds_yaml=Path(args.clouds_yaml))

    async def settle_heap(app: web.Application) -> None:
        # What startup built (policy rules, models, hosts, connections) lives as long as the
        # process: keep it out of the cyclic collector, whose full passes over it took
        # 50-80 ms each during a boot storm and stalled every request in flight.
        gc.collect()
        gc.freeze()

    async def announce(app: web.Application) -> None:
        print(
            f"novalite serving on {config.public_url}\n"
            f"  try: OS_CLOUD=novalite openstack server list   (clouds.yaml in {Path.cwd()})",
            file=sys.stderr,
            flush=True,
        )

    async def test_image(app: web.Application) -> None:
        # After startup: the upload goes through this server's own image API.
        from novalite.image import testimage

        task = asyncio.get_running_loop().create_task(testimage.ensure_uploaded(config, app[keys.DB]))
        app[keys.TEST_IMAGE_TASK] = task

    app.on_startup.append(settle_heap)
    app.on_startup.append(announce)
    if not args.no_test_image:
        app.on_startup.append(test_image)
    if config.api.event_loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host=config.api.listen, port=config.api.port, print=None, access_log=None)
    return 0


def cmd_db_upgrade(config: Config, args: argparse.Namespace) -> int:
    version = asyncio.run(_with_pool(config, db.upgrade))
    print(f"schema version {version}")
    return 0


def cmd_bootstrap(config: Config, args: argparse.Namespace) -> int:
    async def run(pool):
        await db.upgrade(pool)
        return await bootstrap.bootstrap(pool, config)

    creds = asyncio.run(_with_pool(config, run))
    if creds is None:
        print("already bootstrapped")
    else:
        bootstrap.save_credentials(config, creds)
        print(f"bootstrapped; credentials in {bootstrap.credentials_file(config)}")
    return 0


def cmd_clouds_yaml(config: Config, args: argparse.Namespace) -> int:
    path = bootstrap.write_clouds_yaml(config, Path(args.output))
    if path is None:
        print("not bootstrapped yet: run `novalite bootstrap` or `novalite serve` first", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def cmd_image_build_test(config: Config, args: argparse.Namespace) -> int:
    from novalite.image import testimage

    return testimage.main(config, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="novalite",
        description="OpenStack Nova's VM boot flow in one process: Keystone, Nova and friends "
        "on one port, state in Postgres, guests through libvirt.",
    )
    parser.add_argument("--config", default=None, help="config file (default: $NOVALITE_CONFIG or ./config.toml)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="set up the database, bootstrap on first start, and serve the APIs")
    serve.add_argument("--clouds-yaml", default="clouds.yaml", help="where to write clouds.yaml on first start")
    serve.add_argument("--no-test-image", action="store_true",
                       help="do not build and upload the test guest when the image list is empty")
    serve.set_defaults(fn=cmd_serve)
    dbp = sub.add_parser("db", help="database commands")
    dbsub = dbp.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="apply schema.sql and migrations")
    up.set_defaults(fn=cmd_db_upgrade)
    boot = sub.add_parser("bootstrap", help="create roles, admin/demo projects and users, default flavors")
    boot.set_defaults(fn=cmd_bootstrap)
    cy = sub.add_parser("clouds-yaml", help="write clouds.yaml (clouds novalite and novalite-admin)")
    cy.add_argument("--output", "-o", default="clouds.yaml")
    cy.set_defaults(fn=cmd_clouds_yaml)
    img = sub.add_parser("image", help="image helpers")
    imgsub = img.add_subparsers(dest="image_command", required=True)
    bt = imgsub.add_parser("build-test", help="build the CirrOS-like test guest from Debian packages and "
                           "upload it (aki/ari/ami/qcow2) as admin, or write it to --output")
    bt.add_argument("--output", "-o", default=None, help="write the files to this directory instead of uploading")
    bt.add_argument("--cache-dir", default=None, help="default: <state dir>/cache/testimage")
    bt.add_argument("--kernel-package", default=None, help="default: what linux-image-amd64 depends on")
    bt.add_argument("--url", default=None, help="novalite URL (default: the config's public URL)")
    bt.set_defaults(fn=cmd_image_build_test)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"novalite: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log.level, config.log.format)
    try:
        return args.fn(config, args)
    except PolicyError as exc:
        print(f"novalite: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
