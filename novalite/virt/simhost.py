"""A simulated compute host that survives a crash of novalite.

libvirt's test driver keeps a host's state in memory.  Opened in-process
(``test:///...``) that memory belongs to the connection, so it dies with
novalite and a crash test could never compare "what the host has" with the
database.  Served by a libvirt daemon (``test+unix:///default``) the test
driver's ``default`` host is ONE shared state inside that daemon, alive as long
as at least one connection to it stays open (libvirt frees it with its last
connection).  So a persistent simulated host is:

- a private ``libvirtd`` (a session daemon with its own runtime directory and
  socket, run as an unprivileged user when we are root), so tests never share
  state with the machine's system daemon or with each other, and nothing of it
  can touch real guests;
- a keeper connection held by the process that owns the host (the crash
  harness or the test), which outlives every novalite it starts and kills.

novalite reaches it as ``test+unix:///default?socket=<dir>/run/libvirt/libvirt-sock``:
a real libvirt remote connection, lifecycle events and all.  The test
driver's predefined ``test`` domain is removed at start so the host begins
empty.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import libvirt

__all__ = ["PersistentTestHost"]


class PersistentTestHost:
    """A private libvirtd serving the test driver's shared ``default`` host, plus a keeper connection.

    ``workdir`` must be reachable by ``user`` (the default, a fresh directory under /tmp, is).
    """

    def __init__(self, name: str, workdir: Path | None = None, user: str = "nobody") -> None:
        self.name = name
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"novalite-host-{name}-"))
        self.user = user
        self.proc: subprocess.Popen | None = None
        self.keeper: libvirt.virConnect | None = None

    @property
    def socket(self) -> Path:
        return self.dir / "run" / "libvirt" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"test+unix:///default?socket={self.socket}"

    def start(self, timeout: float = 15) -> str:
        """Start the daemon, open the keeper connection, empty the host; return its URI."""
        libvirtd = shutil.which("libvirtd") or "/usr/sbin/libvirtd"
        for sub in ("run", "cfg", "cache"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        env = {
            "HOME": str(self.dir),
            "XDG_RUNTIME_DIR": str(self.dir / "run"),
            "XDG_CONFIG_HOME": str(self.dir / "cfg"),
            "XDG_CACHE_HOME": str(self.dir / "cache"),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        }
        cmd = [libvirtd]
        if os.geteuid() == 0:
            # A root libvirtd would be a second system daemon; a session daemon of an
            # unprivileged user is isolated by construction.
            pw = pwd.getpwnam(self.user)
            os.chmod(self.dir, 0o755)
            for path in [self.dir, *self.dir.rglob("*")]:
                os.chown(path, pw.pw_uid, pw.pw_gid)
            cmd = ["runuser", "-u", self.user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), libvirtd]
        log = open(self.dir / "libvirtd.log", "ab")  # noqa: SIM115 - lives as long as the daemon
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"libvirtd for {self.name} exited: see {self.dir / 'libvirtd.log'}")
            if self.socket.exists():
                try:
                    self.keeper = libvirt.open(self.uri)
                    break
                except libvirt.libvirtError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"libvirtd for {self.name} did not come up in {timeout} s")
            time.sleep(0.05)
        for dom in self.keeper.listAllDomains(0):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        return self.uri

    def domains(self) -> dict[str, int]:
        """uuid → libvirt state of every domain on the host (through the keeper connection)."""
        assert self.keeper is not None
        return {d.UUIDString(): d.state()[0] for d in self.keeper.listAllDomains(0)}

    def stop(self) -> None:
        if self.keeper is not None:
            try:
                self.keeper.close()
            except libvirt.libvirtError:
                pass
            self.keeper = None
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PersistentTestHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
