"""`novalite serve` as an operator runs it: a subprocess of this checkout, its log in a file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from boot_storm import token as admin_token  # noqa: E402  (the admin login the benchmarks use)

__all__ = ["ServeProcess", "admin_token"]


class ServeProcess:
    """One `novalite serve` (``--config``, JSON logs at info) whose stderr is kept in ``log``."""

    def __init__(self, config: Path, *args: str, **env: str) -> None:
        self.config = config
        self.args = args
        self.env = dict(os.environ, PYTHONPATH=str(REPO), NOVALITE_LOG__LEVEL="info",
                        NOVALITE_LOG__FORMAT="json", **env)
        self.log = config.parent / "serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "novalite.cli", "--config", str(self.config), "serve", *self.args],
                cwd=self.config.parent, stdout=out, stderr=out, env=self.env)

    async def wait_listening(self, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
        raise AssertionError(f"not listening after {timeout} s:\n{self.log.read_text()[-3000:]}")

    async def terminate(self, timeout: float) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds it took (killed after ``timeout``)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        while self.proc.poll() is None and time.monotonic() - started < timeout:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
        rc = self.proc.wait()
        return rc, time.monotonic() - started

    def events(self, name: str) -> list[dict]:
        """The JSON log lines whose event is ``name``."""
        found = []
        for text in self.log.read_text().splitlines():
            if text.startswith("{") and f'"{name}"' in text:
                record = json.loads(text)
                if record.get("event") == name:
                    found.append(record)
        return found

    async def wait_event(self, name: str, count: int = 1, timeout: float = 60) -> list[dict]:
        """The log's ``name`` events once there are ``count`` of them (the server logs
        ``hosts_ready`` after it started serving, once its hosts are up and recovered)."""
        deadline = time.monotonic() + timeout
        while len(found := self.events(name)) < count:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{count} {name} not logged in {timeout} s"
            await asyncio.sleep(0.05)
        return found

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
