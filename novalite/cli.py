"""Command line: ``novalite serve | db upgrade|backup|restore | bootstrap | clouds-yaml | image build-test | build-cloud | console | completion | install-service``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sys
import termios
import tty
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import structlog
import yaml
from aiohttp import web

from novalite import __version__, bootstrap, db, install, sdnotify
from novalite.api import keys
from novalite.config import Config, ConfigError, load_config
from novalite.db import dump
from novalite.logs import setup_logging
from novalite.policy import PolicyError

log = structlog.get_logger(__name__)

# Allocations between two young collections of a serving process (Python's default: 700); cmd_serve says why.
YOUNG_COLLECTION_THRESHOLD = 10_000


async def _with_dsn(config: Config, fn):
    """Call ``fn(dsn)`` on the configured database (the embedded server started for it if need be)."""
    embedded = None
    dsn = config.database.dsn
    if not dsn:
        embedded = db.EmbeddedPostgres(config.state_dir / "pgdata")
        dsn = await embedded.start()
    try:
        return await fn(dsn)
    finally:
        if embedded is not None:
            await embedded.stop()


async def _with_pool(config: Config, fn):
    async def on_pool(dsn: str):
        pool = await db.create_pool(dsn, 1, 2)
        try:
            return await fn(pool)
        finally:
            await pool.close()

    return await _with_dsn(config, on_pool)


def preflight(config: Config) -> int | None:
    """``novalite doctor``'s checks before serving: each problem a warning line with its fix;
    a fatal one (Postgres, the API port, libvirt when no host answers) stops the start with
    exit code 1."""
    from novalite import doctor

    checks = asyncio.run(doctor.run_checks(config))
    fatal = [c for c in checks if c.status == doctor.FAIL and c.fatal]
    hosts = [c for c in checks if c.check.startswith("libvirt ")]
    if any(c.status == doctor.OK for c in hosts):
        # A lab with one hypervisor down still serves on the others (its service shows down).
        fatal = [c for c in fatal if c not in hosts]
    for check in checks:
        if check.status != doctor.OK:
            log.warning("preflight", check=check.check, status=check.status, problem=check.what, fix=check.fix)
    for check in fatal:
        print(f"novalite: cannot start: {check.line()}", file=sys.stderr)
    return 1 if fatal else None


def boost_cpu_priority(boost: int) -> None:
    """Lower the nice value of every thread of this process by ``boost`` (Linux's nice is per
    thread; threads started later inherit their creator's); logged either way."""
    if boost == 0:
        return
    was = os.getpriority(os.PRIO_PROCESS, 0)
    nice = max(-20, was - boost)
    try:
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
    except PermissionError:
        log.warning("cpu_priority_unchanged", nice=was,
                    why="lowering a nice value needs root or CAP_SYS_NICE ([api] cpu_priority_boost = 0 stops trying)")
        return
    log.info("cpu_priority", nice=nice, was=was)


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from novalite.app import init_app

    if (refused := preflight(config)) is not None:
        return refused
    app = init_app(config, clouds_yaml=Path(args.clouds_yaml), sighup=True)

    background: list[asyncio.Task] = []  # held here: the loop keeps only weak references to tasks

    def freeze_heap() -> None:
        gc.collect()
        gc.freeze()
        # The collector's full-pass rule counts only what is not frozen (~40,000 objects with 1,000
        # hosts), so whatever one large request kept alive across a young collection set a full pass
        # off: a detail page of 1,000 servers promoted enough to start one in 1 page of 7, 17-44 ms
        # each. With young collections every 10,000 allocations instead of 700, a request's objects
        # mostly die young: full passes in 1 page of ~190.
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])

    async def settle_heap(app: web.Application) -> None:
        # What startup built (policy rules, models, hosts, connections) lives as long as the
        # process: keep it out of the cyclic collector, whose full passes over it took
        # 50-80 ms each during a boot storm and stalled every request in flight. The hosts
        # come up after the API serves (their libvirt connections, host states, networks):
        # what that builds is frozen too once they are up (1,000 hosts left the full passes
        # at 35-80 ms each, the detail page's p99).
        freeze_heap()
        hosts_up = asyncio.get_running_loop().create_task(app[keys.HOSTS_READY].wait())
        hosts_up.add_done_callback(lambda task: task.cancelled() or freeze_heap())  # not when stopping first
        background.append(hosts_up)

    async def raise_priority(app: web.Application) -> None:
        # After the database's start (app.cleanup_ctx runs first): an embedded Postgres keeps its own priority.
        boost_cpu_priority(config.api.cpu_priority_boost)

    async def test_image(app: web.Application) -> None:
        # After startup: the upload goes through this server's own image API.
        from novalite.image import testimage

        task = asyncio.get_running_loop().create_task(testimage.ensure_uploaded(config, app[keys.DB]))
        app[keys.TEST_IMAGE_TASK] = task

    async def ready(app: web.Application) -> None:
        background.append(asyncio.get_running_loop().create_task(announce_ready(app, config, Path(args.clouds_yaml))))

    async def stopping(app: web.Application) -> None:
        sdnotify.notify("STOPPING=1", "STATUS=stopping: finishing requests and builds in flight")
        log.info("shutdown_started", timeout_s=config.api.shutdown_timeout)

    app.on_startup.append(settle_heap)
    app.on_startup.append(raise_priority)
    if not args.no_test_image:
        app.on_startup.append(test_image)
    app.on_startup.append(ready)
    app.on_shutdown.append(stopping)
    if config.api.event_loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host=config.api.listen, port=config.api.port, print=None, access_log=None,
                shutdown_timeout=config.api.shutdown_timeout)
    log.info("stopped")
    return 0


async def announce_ready(app: web.Application, config: Config, clouds_yaml: Path) -> None:
    """Once the API listens: READY=1 to systemd; once the first start's test image is active
    (at once when there is none to make), the "ready: try ..." line with commands that work."""
    host = "127.0.0.1" if config.api.listen in ("0.0.0.0", "") else config.api.listen.strip("[]")
    host = "::1" if host == "::" else host
    for _ in range(300):
        try:
            _, writer = await asyncio.open_connection(host, config.api.port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        break
    sdnotify.notify("READY=1", f"STATUS=serving on {config.public_url}")
    log.info("serving", url=config.public_url)
    task = app.get(keys.TEST_IMAGE_TASK)
    ids = await task if task is not None else None
    print(ready_line(clouds_yaml, with_image=bool(ids)), file=sys.stderr, flush=True)


def ready_line(clouds_yaml: Path, *, with_image: bool) -> str:
    """The commands a user can paste: the openstack CLI by its full path (or how to install it),
    pointed at this cloud's clouds.yaml."""
    cli = Path(sys.prefix) / "bin" / "openstack"
    env = f"OS_CLIENT_CONFIG_FILE={clouds_yaml.resolve()} OS_CLOUD=novalite"
    if cli.exists():
        openstack, extra = str(cli), f"\n  (or `. {sys.prefix}/bin/activate` first, then plain `openstack`)"
    else:
        openstack, extra = "openstack", "\n  (the openstack CLI: `pip install python-openstackclient`)"
    lines = [f"ready: try  {env} {openstack} server list"]
    if with_image:
        lines.append(f"  and  {env} {openstack} server create --image novalite-test --flavor m1.tiny --wait demo")
    return "\n".join(lines) + extra


def cmd_doctor(config: Config, args: argparse.Namespace) -> int:
    from novalite import doctor

    return doctor.main(config)


def cmd_db_upgrade(config: Config, args: argparse.Namespace) -> int:
    version = asyncio.run(_with_pool(config, db.upgrade))
    print(f"schema version {version}")
    return 0


def cmd_db_backup(config: Config, args: argparse.Namespace) -> int:
    path = Path(args.path).resolve()
    asyncio.run(_with_dsn(config, lambda dsn: dump.backup(dsn, path)))
    print(f"backed up to {path}")
    return 0


def cmd_db_restore(config: Config, args: argparse.Namespace) -> int:
    path = Path(args.path).resolve()
    asyncio.run(_with_dsn(config, lambda dsn: dump.restore(dsn, path)))
    print(f"restored from {path}; `novalite serve` upgrades it if it is older than this novalite")
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
    if config.api.user_clouds_yaml and (merged := bootstrap.merge_user_clouds_yaml(config)):
        print(f"merged clouds novalite and novalite-admin into {merged}")
    return 0


def cmd_completion(config: Config, args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def cmd_install_service(config: Config, args: argparse.Namespace) -> int:
    config_path = Path(args.config).resolve() if args.config else install.SERVICE_CONFIG
    state_dir = Path(args.state_dir).resolve() if args.state_dir else install.SERVICE_STATE_DIR
    unit = install.systemd_unit(
        command=install.novalite_command(), config=config_path, state_dir=state_dir, user=args.user,
        stop_timeout=config.compute.shutdown_timeout + 30,
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(unit)
    print(f"wrote {output}\nnext: systemctl daemon-reload && systemctl enable --now {output.stem}")
    return 0


def cmd_image_build_test(config: Config, args: argparse.Namespace) -> int:
    from novalite.image import testimage

    return testimage.main(config, args)


def cmd_image_build_cloud(config: Config, args: argparse.Namespace) -> int:
    from novalite.image import cloudimage

    return cloudimage.main(config, args)


# ---------------------------------------------------------------- novalite console

LEAVE = b"\x1d"  # Ctrl-]
CLOUDS_YAML = (Path("clouds.yaml"), Path.home() / ".config" / "openstack" / "clouds.yaml",
               Path("/etc/openstack/clouds.yaml"))


def cloud_auth(name: str) -> dict:
    """The ``auth`` section of cloud ``name`` in clouds.yaml, found where the openstack CLI looks."""
    env = os.environ.get("OS_CLIENT_CONFIG_FILE")
    for path in ((Path(env),) if env else ()) + CLOUDS_YAML:
        if path.exists():
            clouds = (yaml.safe_load(path.read_text()) or {}).get("clouds") or {}
            if name in clouds:
                return clouds[name]["auth"]
    raise LookupError(f"no cloud {name!r} in clouds.yaml (run `novalite clouds-yaml`)")


async def _login(session: aiohttp.ClientSession, auth: dict) -> tuple[str, str]:
    """Password login as clouds.yaml says: (token, the compute endpoint from the catalog)."""
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": auth["username"], "password": auth["password"],
            "domain": {"name": auth.get("user_domain_name", "Default")}}}},
        "scope": {"project": {"name": auth["project_name"],
                              "domain": {"name": auth.get("project_domain_name", "Default")}}},
    }}
    async with session.post(f"{auth['auth_url'].rstrip('/')}/v3/auth/tokens", json=body) as r:
        if r.status != 201:
            raise LookupError(f"login as {auth['username']} failed: {r.status} {await r.text()}")
        catalog = (await r.json())["token"]["catalog"]
        token = r.headers["X-Subject-Token"]
    for service in catalog:
        if service["type"] == "compute":
            return token, next(e["url"] for e in service["endpoints"] if e["interface"] == "public")
    raise LookupError("the catalog has no compute endpoint")


async def serial_console_url(session: aiohttp.ClientSession, auth: dict, server: str) -> str:
    """The serial console URL of ``server`` (id or exact name), through Nova's remote-consoles API."""
    token, compute = await _login(session, auth)
    headers = {"X-Auth-Token": token, "OpenStack-API-Version": "compute 2.6"}
    async with session.get(f"{compute}/servers", params={"name": f"^{server}$"}, headers=headers) as r:
        named = [s["id"] for s in (await r.json()).get("servers", [])] if r.status == 200 else []
    server_id = named[0] if len(named) == 1 else server
    async with session.post(f"{compute}/servers/{server_id}/remote-consoles", headers=headers,
                            json={"remote_console": {"protocol": "serial", "type": "serial"}}) as r:
        body = await r.json()
        if r.status != 200:
            message = next(iter(body.values()), {}).get("message", body) if isinstance(body, dict) else body
            raise LookupError(f"{server}: {message}")
    return body["remote_console"]["url"]


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal in raw mode (every key goes to the guest), restored however we leave."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def attach(url: str, stdin: int, stdout: int) -> None:
    """Relay the terminal and the console websocket until Ctrl-] or the console closes."""
    loop = asyncio.get_running_loop()
    keys_in: asyncio.Queue[bytes] = asyncio.Queue()
    loop.add_reader(stdin, lambda: keys_in.put_nowait(os.read(stdin, 1024)))
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(url, protocols=("binary",)) as ws:
            async def typing() -> None:
                while (data := await keys_in.get()) and LEAVE not in data:
                    await ws.send_bytes(data)
                if data:
                    await ws.send_bytes(data[:data.index(LEAVE)])

            async def showing() -> None:
                async for msg in ws:
                    if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                        os.write(stdout, msg.data if isinstance(msg.data, bytes) else msg.data.encode())

            legs = [asyncio.ensure_future(typing()), asyncio.ensure_future(showing())]
            await asyncio.wait(legs, return_when=asyncio.FIRST_COMPLETED)
            for leg in legs:
                leg.cancel()
    finally:
        loop.remove_reader(stdin)


def cmd_console(config: Config, args: argparse.Namespace) -> int:
    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            url = await serial_console_url(session, cloud_auth(args.os_cloud), args.server)
        with raw_terminal(sys.stdin.fileno()):
            print(f"Connected to the serial console of {args.server}; Ctrl-] leaves. "
                  "Press Enter for a prompt.\r", file=sys.stderr, flush=True)
            await attach(url, sys.stdin.fileno(), sys.stdout.fileno())

    try:
        asyncio.run(run())
    except (LookupError, aiohttp.ClientError) as exc:
        print(f"novalite: {exc}", file=sys.stderr)
        return 1
    print("\r\nConsole closed.", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="novalite",
        description="OpenStack Nova's VM boot flow in one process: Keystone, Nova and friends "
        "on one port, state in Postgres, guests through libvirt.",
    )
    parser.add_argument("--version", action="version", version=f"novalite {__version__}")
    parser.add_argument("--config", default=None, help="config file (default: $NOVALITE_CONFIG or ./config.toml)")
    parser.add_argument("--state-dir", default=os.environ.get("NOVALITE_STATE_DIR"),
                        help="where the database, images and instances live (default: $NOVALITE_STATE_DIR, "
                        "else [state] dir)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="set up the database, bootstrap on first start, and serve the APIs")
    serve.add_argument("--clouds-yaml", default="clouds.yaml", help="where to write clouds.yaml on first start")
    serve.add_argument("--no-test-image", action="store_true",
                       help="do not build and upload the test guest when the image list is empty")
    serve.set_defaults(fn=cmd_serve)
    doc = sub.add_parser("doctor", help="check what a start needs (Postgres, libvirt per host, qemu's access to "
                         "the state directory, /dev/kvm, dnsmasq, the API port, disk space); one line each")
    doc.set_defaults(fn=cmd_doctor)
    dbp = sub.add_parser("db", help="database commands")
    dbsub = dbp.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="apply the schema migrations the database lacks")
    up.set_defaults(fn=cmd_db_upgrade)
    bk = dbsub.add_parser("backup", help="write the database to a file (pg_dump's custom format)")
    bk.add_argument("path")
    bk.set_defaults(fn=cmd_db_backup)
    rs = dbsub.add_parser("restore", help="replace the database by a backup's content (refused while "
                          "a novalite server is connected to it)")
    rs.add_argument("path")
    rs.set_defaults(fn=cmd_db_restore)
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
    bc = imgsub.add_parser("build-cloud", help="build a small Debian 12 image with cloud-init and openssh-server "
                           "from Debian's packages (mmdebstrap; cached) and upload it as debian-12-cloud")
    bc.add_argument("--cache-dir", default=None, help="default: /var/tmp/novalite-cloudimage-cache")
    bc.add_argument("--url", default=None, help="novalite URL (default: the config's public URL)")
    bc.set_defaults(fn=cmd_image_build_cloud)
    con = sub.add_parser("console", help="attach this terminal to a server's serial console (Ctrl-] leaves)")
    con.add_argument("server", help="server name or id")
    con.add_argument("--os-cloud", default=os.environ.get("OS_CLOUD", "novalite"),
                     help="the cloud in clouds.yaml (default: $OS_CLOUD or novalite)")
    con.set_defaults(fn=cmd_console)
    comp = sub.add_parser("completion", help="print the shell completion script (bash: "
                          "`novalite completion bash > /etc/bash_completion.d/novalite`)")
    comp.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    comp.set_defaults(fn=cmd_completion)
    svc = sub.add_parser("install-service", help="write a systemd unit that runs `novalite serve` "
                         "(--config and --state-dir given before the command are the service's)")
    svc.add_argument("--user", default=None, help="the account the service runs as (default: root)")
    svc.add_argument("--output", "-o", default=str(install.UNIT_PATH))
    svc.set_defaults(fn=cmd_install_service)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"novalite: {exc}", file=sys.stderr)
        return 2
    if args.state_dir:
        config.state.dir = Path(args.state_dir).resolve()
    setup_logging(config.log.level, config.log.format)
    try:
        return args.fn(config, args)
    except (PolicyError, db.SchemaError, dump.BackupError) as exc:
        print(f"novalite: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
