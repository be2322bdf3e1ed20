"""Hot-plug of a server's network interfaces (Nova's attach_interface / detach_interface).

Attach: lock and state checks, then under the instance's lock the
``attach_interface`` action, the port made or bound for the instance on its
host with its DHCP entry (:meth:`NetworkAPI.attach_port`), then the NIC plugged
into the guest (:meth:`VirtDriver.attach_nic`); a failed plug releases the port
again. Detach: the NIC unplugged first (:meth:`VirtDriver.detach_nic`), then
the port released (:meth:`NetworkAPI.detach_port`).

The order is "row, then plug" and "unplug, then row", so a crash in between
always leaves a port row whose NIC is missing from the guest, never a NIC
without a row: :meth:`InterfaceAttachments.repair_nics` (run at start) plugs
those NICs, which finishes an interrupted attach; an interrupted detach shows
the interface still attached and can be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import traceback
from collections.abc import AsyncIterator

import asyncpg
import structlog

from novalite import exception
from novalite.compute import states
from novalite.compute.actions import ActionSpec, check_instance_lock, check_instance_state
from novalite.compute.locks import InstanceLocks
from novalite.config import Config
from novalite.context import RequestContext
from novalite.db import instances as db
from novalite.network.api import NetworkAPI, PortInfo
from novalite.virt.driver import InstanceNotFound, VirtDriver, VirtError

log = structlog.get_logger(__name__)

# Nova's check_instance_state for attach_interface / detach_interface.
_HOTPLUG_VM_STATES = (states.ACTIVE, states.PAUSED, states.STOPPED)
ATTACH = ActionSpec("attach_interface", "attach_interface", _HOTPLUG_VM_STATES, (None,), "",
                    must_have_launched=False)
DETACH = ActionSpec("detach_interface", "detach_interface", _HOTPLUG_VM_STATES, (None,), "",
                    must_have_launched=False)


class InterfaceAttachments:
    """os-interface and the multinic actions on top of the network service and the hosts' drivers."""

    def __init__(self, pool: asyncpg.Pool, network: NetworkAPI, locks: InstanceLocks, config: Config) -> None:
        self.pool = pool
        self.network = network
        self.locks = locks
        self.config = config

    async def attach(
        self, ctx: RequestContext, inst: asyncpg.Record, *, port_id: str | None = None,
        network_id: str | None = None, fixed_ip: str | None = None, tag: str | None = None,
    ) -> PortInfo:
        """Attach a port (``port_id``) or a new port on ``network_id`` and plug its NIC; the port."""
        uuid = str(inst["uuid"])
        check_instance_lock(ctx, inst)
        check_instance_state(ATTACH, inst)
        async with self.locks.lock(uuid):
            inst, driver = await self._current(ctx, uuid, ATTACH)
            async with self._action(ctx, inst, ATTACH, "compute_attach_interface"):
                port = await self.network.attach_port(
                    uuid, inst["project_id"], inst["host"], port_id=port_id, network_id=network_id,
                    fixed_ip=fixed_ip, tag=tag, is_admin=ctx.is_admin,
                    availability_zone=inst["availability_zone"] or self.config.compute.default_availability_zone,
                )
                try:
                    await driver.attach_nic(uuid, port.nic())
                except BaseException as exc:
                    await asyncio.shield(self.network.detach_port(uuid, port.port_id))
                    if isinstance(exc, Exception):
                        log.warning("interface_attach_failed", instance_uuid=uuid, error=str(exc))
                        raise exception.NovaliteException(
                            f"Failed to attach network adapter device to {uuid}") from exc
                    raise
        log.info("interface_attached", instance_uuid=uuid, port_id=port.port_id, mac=port.mac)
        return port

    async def detach(self, ctx: RequestContext, inst: asyncpg.Record, port_id: str) -> None:
        """Unplug the port's NIC, then release the port; 404 when the server has no such port."""
        uuid = str(inst["uuid"])
        check_instance_lock(ctx, inst)
        check_instance_state(DETACH, inst)
        async with self.locks.lock(uuid):
            inst, driver = await self._current(ctx, uuid, DETACH)
            port = await self.network.instance_port(uuid, port_id)
            if port is None:
                raise exception.NotFound(f"Port {port_id} is not attached")
            async with self._action(ctx, inst, DETACH, "compute_detach_interface"):
                try:
                    await driver.detach_nic(uuid, port.mac)
                except Exception as exc:
                    log.warning("interface_detach_failed", instance_uuid=uuid, error=str(exc))
                    raise exception.NovaliteException(
                        f"Failed to detach network adapter device from {uuid}") from exc
                await asyncio.shield(self.network.detach_port(uuid, port_id))
        log.info("interface_detached", instance_uuid=uuid, port_id=port_id)

    async def _current(self, ctx: RequestContext, uuid: str, spec: ActionSpec) -> tuple[asyncpg.Record, VirtDriver]:
        """The instance as it is now that we hold its lock, checked again, and its host's driver."""
        async with self.pool.acquire() as conn:
            inst = await db.get(conn, uuid)
        if inst is None:
            raise exception.NotFound(f"Instance {uuid} could not be found.")
        check_instance_lock(ctx, inst)
        check_instance_state(spec, inst)
        driver = self.network.hosts.get(inst["host"]) if inst["host"] else None
        if driver is None:
            raise exception.Conflict(f"Instance {uuid} is not ready")
        return inst, driver

    @contextlib.asynccontextmanager
    async def _action(self, ctx: RequestContext, inst: asyncpg.Record, spec: ActionSpec,
                      event: str) -> AsyncIterator[None]:
        """The instance action and its one event around a hot-plug: Success, or Error with the traceback."""
        uuid = str(inst["uuid"])
        async with self.pool.acquire() as conn, conn.transaction():
            await db.start_actions(conn, [uuid], spec.action, ctx.request_id, ctx.user_id, ctx.project_id)
            await db.event_start(conn, uuid, ctx.request_id, event, inst["host"])
        trace = None
        try:
            yield
        except BaseException as exc:
            trace = "".join(traceback.format_exception(exc))
            raise
        finally:
            await asyncio.shield(self._finish(uuid, ctx.request_id, event, trace))

    async def _finish(self, uuid: str, request_id: str, event: str, trace: str | None) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await db.event_finish(conn, uuid, request_id, event, "Success" if trace is None else "Error", trace)
            await db.finish_action(conn, uuid, request_id, None if trace is None else "Error")

    async def repair_nics(self, host: str) -> int:
        """Plug the NICs of ports attached in the DB but missing from their guest (a crash between
        an attach's row and its plug, or a detach's unplug and its row); how many were plugged."""
        driver = self.network.hosts.get(host)
        if driver is None:
            return 0
        async with self.pool.acquire() as conn:
            uuids = [str(r["uuid"]) for r in await conn.fetch(
                "SELECT uuid FROM instances WHERE host = $1 AND NOT deleted AND vm_state = ANY($2::text[])",
                host, list(_HOTPLUG_VM_STATES))]
        if uuids:  # the host is asked once which domains it has, not once per instance
            present = set(await driver.list_instance_uuids())
            uuids = [u for u in uuids if u in present]
        plugged = 0
        for uuid in uuids:
            async with self.locks.lock(uuid):
                try:
                    missing = await self.network.unplugged_ports(uuid, await driver.nic_macs(uuid))
                    for port in missing:
                        await driver.attach_nic(uuid, port.nic())
                        plugged += 1
                        log.info("interface_replugged", instance_uuid=uuid, port_id=port.port_id)
                except InstanceNotFound:
                    continue  # no domain: recovery's business, not a NIC's
                except VirtError as exc:  # one unreachable guest must not stop the start
                    log.warning("interface_repair_failed", instance_uuid=uuid, error=str(exc))
        return plugged

