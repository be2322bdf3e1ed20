"""Remote serial consoles: the console URL's token, and the console it opens (Nova's serial console).

``get_serial_console`` answers what Nova's compute API and manager answer: a
``ws://`` URL on this process's own port carrying a random token, bound to
the instance and its host, good once and for ``[console] token_ttl`` seconds.
Only the token's SHA-256 is stored. ``connect`` consumes the token and opens
the domain's serial console through the host's virt driver, so the websocket
in :mod:`novalite.api.console_proxy` can relay it.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Mapping

import asyncpg
import structlog

from novalite import exception
from novalite.compute.host import ComputeHost
from novalite.compute.states import DELETING
from novalite.config import Config
from novalite.db import console_tokens
from novalite.db import instances as db
from novalite.virt.driver import ConsoleUnavailable, ConsoleWriter, InstanceNotFound

__all__ = ["SERIAL", "SERIAL_PATH", "SerialConsoles"]

log = structlog.get_logger(__name__)

SERIAL = "serial"
SERIAL_PATH = "/console/serial"  # where the websocket listens, on the API's own port
_REJECTED_TASK_STATES = (DELETING, "migrating")  # Nova's reject_instance_state for consoles


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SerialConsoles:
    """Console URLs for instances, and the consoles their tokens open."""

    def __init__(self, pool: asyncpg.Pool, config: Config, hosts: Mapping[str, ComputeHost]) -> None:
        self.pool = pool
        self.config = config
        self.hosts = hosts

    def base_url(self) -> str:
        """The websocket's URL: the API's public URL with ws(s) for http(s)."""
        public = self.config.public_url
        scheme, _, rest = public.partition("://")
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{SERIAL_PATH}"

    async def get_serial_console(self, inst: asyncpg.Record, console_type: str) -> str:
        """A fresh console URL for ``inst``; raises as Nova's get_serial_console does."""
        uuid = str(inst["uuid"])
        if console_type != SERIAL:
            raise exception.Invalid(f"Invalid console type {console_type}")
        if not inst["host"] or inst["vm_state"] == "building":
            raise exception.Conflict(f"Instance {uuid} is not ready")
        if inst["task_state"] in _REJECTED_TASK_STATES:
            raise exception.Conflict(f"Cannot 'get_serial_console' instance {uuid} while it is in "
                                     f"task_state {inst['task_state']}")
        host = self.hosts.get(inst["host"])
        if host is None or host.simulated:  # libvirt's test driver has no console to open
            raise exception.Invalid(f"Unavailable console type {console_type}.")
        token = secrets.token_urlsafe(32)
        async with self.pool.acquire() as conn:
            await console_tokens.create(conn, token_hash(token), console_type, uuid, inst["host"],
                                        self.config.console.token_ttl)
        return f"{self.base_url()}?token={token}"

    async def connect(self, token: str) -> tuple[str, asyncio.StreamReader, ConsoleWriter]:
        """Consume ``token`` and open its instance's serial console: (uuid, output, input).

        401 for an unknown, used or expired token; 409 when the instance is gone
        from that host or its domain is not running."""
        async with self.pool.acquire() as conn:
            row = await console_tokens.consume(conn, token_hash(token), SERIAL)
            if row is None:
                raise exception.NotAuthenticated("The console token is invalid or has expired")
            uuid = row["instance_uuid"]
            inst = await db.get(conn, uuid)
        if inst is None or inst["host"] != row["host"] or row["host"] not in self.hosts:
            raise exception.Conflict(f"Instance {uuid} is not ready")
        try:
            reader, writer = await self.hosts[row["host"]].driver.open_console(uuid)
        except (InstanceNotFound, ConsoleUnavailable) as exc:
            log.info("console_not_ready", instance_uuid=uuid, reason=str(exc))
            raise exception.Conflict(f"Instance {uuid} is not ready") from exc
        return uuid, reader, writer
