"""The network service the compute layers call: networks, ports, IPAM and DHCP entries.

Networks come from config (``[[networks]]``; one shared ``private`` network when
none is configured) and are created at start by :meth:`NetworkAPI.ensure_networks`
in Postgres and, as isolated networks, on every compute host through its virt
driver (:class:`novalite.virt.driver.VirtDriver`). A build
asks :meth:`NetworkAPI.allocate_for_instance` for its ports (a MAC, a fixed IP
and a DHCP host entry on the instance's host each); delete gives them back with
:meth:`NetworkAPI.deallocate_for_instance`. Ports, MACs and IPs live in Postgres,
so the server view (:meth:`NetworkAPI.addresses_for`) never asks libvirt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from novalite import exception
from novalite.config import Config, ConfigError, NetworkConfig
from novalite.db import networks as q
from novalite.network import quota
from novalite.virt.driver import NetworkSpec, NicSpec, VirtDriver

log = structlog.get_logger(__name__)

DEFAULT_NETWORK = NetworkConfig(name="private", cidr="10.20.0.0/24", shared=True)
DEVICE_OWNER = "compute:nova"


@dataclass(frozen=True, slots=True)
class PortInfo:
    """One port of an instance as the build, the server view and the config drive need it."""

    port_id: str
    network_id: str
    network_name: str  # the libvirt network name: NicSpec.network
    network_label: str  # the user-visible network name: the key in `addresses`
    subnet_id: str
    mac: str
    ip: str
    cidr: str
    gateway: str | None
    dns_nameservers: tuple[str, ...] = ()
    mtu: int = 1500
    enable_dhcp: bool = True
    host: str | None = None
    tag: str | None = None

    def nic(self, model: str = "virtio") -> NicSpec:
        """The guest NIC for this port."""
        return NicSpec(mac=self.mac, network=self.network_name, model=model)

    def address(self) -> dict:
        """This port in a server document's ``addresses`` list."""
        return {"addr": self.ip, "version": 4, "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": self.mac}


def _port_info(row: dict, tag: str | None = None) -> PortInfo:
    return PortInfo(
        port_id=row["id"],
        network_id=row["network_id"],
        network_name=row["libvirt_name"],
        network_label=row["network_name"],
        subnet_id=row["subnet_id"],
        mac=row["mac_address"],
        ip=row["fixed_ip"],
        cidr=row["cidr"],
        gateway=row["gateway_ip"],
        dns_nameservers=tuple(row["dns_nameservers"] or ()),
        mtu=row["mtu"],
        enable_dhcp=row["enable_dhcp"],
        host=row["host"],
        tag=tag,
    )


def network_data(ports: Iterable[PortInfo]) -> dict:
    """``openstack/latest/network_data.json`` for these ports, in Nova's format (netutils)."""
    links, networks, services = [], [], []
    for i, port in enumerate(ports):
        link_id = "tap" + port.port_id[:11]
        links.append({
            "id": link_id,
            "vif_id": port.port_id,
            "type": "bridge",
            "mtu": port.mtu,
            "ethernet_mac_address": port.mac,
        })
        dns = [{"type": "dns", "address": a} for a in port.dns_nameservers]
        if port.enable_dhcp:
            networks.append({"id": f"network{i}", "type": "ipv4_dhcp", "link": link_id,
                             "network_id": port.network_id})
        else:
            net = ipaddress.ip_network(port.cidr, strict=False)
            routes = []
            if port.gateway:
                routes.append({"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": port.gateway})
            networks.append({
                "id": f"network{i}", "type": "ipv4", "link": link_id, "ip_address": port.ip,
                "netmask": str(net.netmask), "routes": routes, "network_id": port.network_id, "services": dns,
            })
        services.extend(s for s in dns if s not in services)
    return {"links": links, "networks": networks, "services": services}


def default_networks(config: Config) -> list[NetworkConfig]:
    """The configured networks, or the one shared ``private`` network when none is configured."""
    return list(config.networks) or [DEFAULT_NETWORK]


@dataclass(frozen=True, slots=True)
class SubnetPlan:
    cidr: str
    gateway: str
    pool_start: str
    pool_end: str


def plan_subnet(net: NetworkConfig) -> SubnetPlan:
    """Gateway and allocation pool of a configured network, defaults filled in and checked."""
    try:
        cidr = ipaddress.IPv4Network(net.cidr, strict=True)
    except ValueError as exc:
        raise ConfigError(f"network {net.name}: bad cidr {net.cidr!r}: {exc}") from None
    if cidr.num_addresses < 8:
        raise ConfigError(f"network {net.name}: {net.cidr} is too small (a /29 at least)")
    first, last = cidr.network_address + 1, cidr.broadcast_address - 1

    def addr(value: str | None, default: ipaddress.IPv4Address, what: str) -> ipaddress.IPv4Address:
        if value is None:
            return default
        try:
            ip = ipaddress.IPv4Address(value)
        except ValueError:
            raise ConfigError(f"network {net.name}: bad {what} {value!r}") from None
        if not first <= ip <= last:
            raise ConfigError(f"network {net.name}: {what} {value} is not a host address of {net.cidr}")
        return ip

    gateway = addr(net.gateway, first, "gateway")
    start = addr(net.dhcp_start, gateway + 1 if gateway == first else first, "dhcp_start")
    end = addr(net.dhcp_end, last, "dhcp_end")
    if start > end:
        raise ConfigError(f"network {net.name}: dhcp_start {start} is after dhcp_end {end}")
    return SubnetPlan(str(cidr), str(gateway), str(start), str(end))


@dataclass
class _Wanted:
    """One resolved entry of requested_networks."""

    network: dict
    port: dict | None = None
    fixed_ip: str | None = None
    tag: str | None = None


@dataclass
class NetworkAPI:
    """Networks, ports and DHCP entries for every compute host, each reached through its virt driver."""

    pool: asyncpg.Pool
    config: Config
    # host name → the virt driver of that host (its networks live on its hypervisor)
    hosts: Mapping[str, VirtDriver] = field(default_factory=dict)

    # -- start ----------------------------------------------------------------------
    async def ensure_networks(self) -> None:
        """Create or update the configured networks in Postgres and on every host; idempotent.

        DHCP host entries on each host are reconciled with the ports bound to
        it, so entries left by a crash are removed and missing ones restored.
        """
        defs = await self._ensure_rows()
        await asyncio.gather(*(self._ensure_on(host, driver, defs) for host, driver in self.hosts.items()))

    async def _ensure_rows(self) -> list[NetworkSpec]:
        prefix = self.config.networking.libvirt_prefix
        default = self.config.networking.default_network
        defs: list[NetworkSpec] = []
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(7400006)")
            admin_project = await q.project_id_by_name(conn, "admin") or ""
            for net in default_networks(self.config):
                plan = plan_subnet(net)
                project_id = admin_project
                if net.project:
                    project_id = await q.project_id_by_name(conn, net.project)
                    if project_id is None:
                        raise ConfigError(f"network {net.name}: no project named {net.project!r}")
                row = await q.upsert_network(
                    conn, name=net.name, project_id=project_id, shared=net.shared,
                    is_default=net.name == default, libvirt_name=prefix + net.name, mtu=net.mtu,
                )
                await q.upsert_subnet(
                    conn, network_id=row["id"], name=f"{net.name}-subnet", project_id=project_id,
                    cidr=plan.cidr, gateway_ip=plan.gateway, pool_start=plan.pool_start, pool_end=plan.pool_end,
                    dns_nameservers=list(net.dns_nameservers),
                )
                defs.append(NetworkSpec(
                    name=row["libvirt_name"], uuid=row["id"], cidr=plan.cidr, gateway=plan.gateway,
                    dhcp_start=plan.pool_start, dhcp_end=plan.pool_end, mtu=net.mtu,
                ))
        return defs

    async def _ensure_on(self, host: str, driver: VirtDriver, defs: list[NetworkSpec]) -> None:
        for d in defs:
            await driver.ensure_network(d)
        async with self.pool.acquire() as conn:
            ports = await q.ports_on_host(conn, host)
        for d in defs:
            wanted = {p["mac_address"]: p["fixed_ip"] for p in ports if p["libvirt_name"] == d.name}
            added, removed = await driver.sync_dhcp_hosts(d.name, wanted)
            if added or removed:
                log.info("dhcp_hosts_reconciled", network=d.name, host=host, added=added, removed=removed)

    # -- requested networks ---------------------------------------------------------
    async def _resolve(
        self, conn: asyncpg.Connection, project_id: str, requested: Any, instance_uuid: str | None,
        is_admin: bool,
    ) -> list[_Wanted]:
        if requested == "none":
            return []
        if requested is None or requested == "auto":
            net = await self._auto_network(conn, project_id, is_admin)
            if net is None:
                if requested == "auto":
                    raise exception.Invalid(f"Unable to automatically allocate a network for project {project_id}")
                return []
            return [_Wanted(net)]
        if not isinstance(requested, list):
            raise exception.Invalid(f"Bad networks format: {requested!r}")
        out: list[_Wanted] = []
        for req in requested:
            port_id, net_id, fixed_ip = req.get("port"), req.get("uuid"), req.get("fixed_ip")
            if port_id:
                port = await q.get_port(conn, port_id)
                if port is None or (port["project_id"] != project_id and not is_admin):
                    raise exception.Invalid(f"Port id {port_id} could not be found.")
                if port["device_id"] and port["device_id"] != instance_uuid:
                    raise exception.Conflict(f"Port {port_id} is still in use.")
                if port["fixed_ip"] is None:
                    raise exception.Invalid(f"Port {port_id} requires a FixedIP in order to be used.")
                out.append(_Wanted(await q.get_network(conn, port["network_id"]), port, None, req.get("tag")))
                continue
            net = await q.get_network(conn, net_id) if net_id else None
            if net is None or not (net["shared"] or net["project_id"] == project_id or is_admin):
                raise exception.Invalid(f"Network {net_id} could not be found.")
            if fixed_ip:
                await self._check_fixed_ip(conn, net, str(fixed_ip), instance_uuid)
            out.append(_Wanted(net, None, str(fixed_ip) if fixed_ip else None, req.get("tag")))
        return out

    async def _auto_network(self, conn: asyncpg.Connection, project_id: str, is_admin: bool) -> dict | None:
        """The project's own network if it has exactly one, else the default, else the only shared one."""
        visible = await q.list_networks(conn, project_id=project_id, is_admin=False)
        own = [n for n in visible if n["project_id"] == project_id and not n["shared"]]
        if len(own) == 1:
            return own[0]
        if len(own) > 1:
            raise exception.Conflict(
                "Multiple possible networks found, use a Network ID to be more specific."
            )
        default = [n for n in visible if n["is_default"]]
        if default:
            return default[0]
        shared = [n for n in visible if n["shared"]]
        if len(shared) > 1:
            raise exception.Conflict("Multiple possible networks found, use a Network ID to be more specific.")
        return shared[0] if shared else None

    async def _check_fixed_ip(self, conn: asyncpg.Connection, net: dict, address: str,
                              instance_uuid: str | None) -> None:
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            raise exception.Invalid(f"Invalid fixed IP address ({address})") from None
        subnet = next((s for s in await q.subnets_of_network(conn, net["id"])
                       if ip in ipaddress.IPv4Network(s["cidr"])), None)
        cidr = ipaddress.IPv4Network(subnet["cidr"]) if subnet else None
        if (cidr is None or ip in (cidr.network_address, cidr.broadcast_address)
                or address == subnet["gateway_ip"]):
            raise exception.Invalid(
                f"Fixed IP address {address} is not a valid address of network {net['id']}."
            )
        holder = await q.port_with_address(conn, net["id"], address)
        if holder is not None and holder["device_id"] != (instance_uuid or ""):
            # Nova answers FixedIpAlreadyInUse on create with 400.
            raise exception.Invalid(
                f"Fixed IP address {address} is already in use on instance {holder['device_id']}."
            )

    async def validate_requested_networks(
        self, project_id: str, requested: Any, max_count: int = 1, *, is_admin: bool = False,
        conn: asyncpg.Connection | None = None,
    ) -> int:
        """Check requested_networks at create time; return how many instances (≤ max_count) fit.

        ``requested`` is "auto", "none", None (no ``networks`` key, before 2.37) or
        a list of {uuid, port, fixed_ip, tag}. Raises with Nova's messages:
        400 ``Network <id> could not be found.`` / ``Port id <id> could not be
        found.`` / fixed IP not in the subnet or already in use; 409 ``Port <id>
        is still in use.``; 403 ``Maximum number of ports exceeded`` when no
        instance would get an address or its ports would pass the project's Neutron port
        quota. Runs on `conn` when the caller holds one.
        """
        if conn is None:
            async with self.pool.acquire() as conn:
                return await self.validate_requested_networks(
                    project_id, requested, max_count, is_admin=is_admin, conn=conn)
        wanted = await self._resolve(conn, project_id, requested, None, is_admin)
        needs: dict[str, int] = {}
        for w in wanted:
            if w.port is None:
                needs[w.network["id"]] = needs.get(w.network["id"], 0) + 1
        fits = max_count
        for net_id, per_instance in needs.items():
            fits = min(fits, await q.free_addresses_on_network(conn, net_id) // per_instance)
        if needs:
            room = await quota.headroom(conn, project_id, "port")
            if room is not None:
                fits = min(fits, room // sum(needs.values()))
        if fits < 1:
            raise exception.QuotaExceeded("Maximum number of ports exceeded")
        return fits

    # -- build and delete -----------------------------------------------------------
    async def allocate_for_instance(
        self, instance_uuid: str, project_id: str, requested_networks: Any, host: str | None,
        *, is_admin: bool = False,
    ) -> list[PortInfo]:
        """NETWORKING step of a build: ports (MAC + fixed IP) and DHCP host entries on ``host``.

        Idempotent per instance: if it already has ports (a retried or rescheduled
        build) they are moved to ``host`` and returned as they are. On failure the
        ports made by this call are removed again before the error propagates.
        A host without a virt driver here gets ports in Postgres only.
        """
        async with self.pool.acquire() as conn:
            existing = await q.ports_for_devices(conn, [instance_uuid])
        if existing:
            return await self._rebind(existing, host)
        made: list[dict] = []
        try:
            async with self.pool.acquire() as conn:
                wanted = await self._resolve(conn, project_id, requested_networks, instance_uuid, is_admin)
                tags: list[str | None] = []
                for index, w in enumerate(wanted):
                    if w.port is not None:
                        row = await q.bind_port(conn, w.port["id"], device_id=instance_uuid, host=host,
                                                device_index=index)
                        if row is None:
                            raise exception.Conflict(f"Port {w.port['id']} is still in use.")
                        made.append(row)
                    else:
                        try:
                            async with conn.transaction():
                                await quota.reserve(conn, project_id, {"port": 1})
                                row = await q.create_port(
                                    conn, network_id=w.network["id"], project_id=project_id,
                                    device_id=instance_uuid, device_owner=DEVICE_OWNER, host=host,
                                    fixed_ip=w.fixed_ip, device_index=index,
                                )
                        except quota.OverQuota:
                            raise exception.QuotaExceeded("Maximum number of ports exceeded") from None
                        except q.AddressInUse as exc:
                            raise exception.Invalid(
                                f"Fixed IP address {exc.address} is already in use on instance {exc.device_id}."
                            ) from None
                        except q.NoMoreAddresses:
                            raise exception.Conflict(
                                f"No fixed IP addresses available for network: {w.network['id']}"
                            ) from None
                        made.append(row)
                    tags.append(w.tag)
                rows = await q.ports_for_devices(conn, [instance_uuid])
            ports = [_port_info(r, t) for r, t in zip(rows, tags, strict=False)]
            driver = self.hosts.get(host) if host else None
            if driver is not None:
                for p in ports:
                    await driver.add_dhcp_host(p.network_name, p.mac, p.ip)
            log.info("ports_allocated", instance_uuid=instance_uuid, host=host,
                     ports=[(p.mac, p.ip, p.network_label) for p in ports])
            return ports
        except BaseException:
            if made:
                await asyncio.shield(self._undo(instance_uuid, {r["id"] for r in made}))
            raise

    async def _undo(self, instance_uuid: str, port_ids: set[str]) -> None:
        async with self.pool.acquire() as conn:
            rows = await q.ports_for_devices(conn, [instance_uuid])
        await self._release([r for r in rows if r["id"] in port_ids])

    async def _rebind(self, rows: list[dict], host: str | None) -> list[PortInfo]:
        ports = [_port_info(r) for r in rows]
        new_driver = self.hosts.get(host) if host else None
        for p in ports:
            old_driver = self.hosts.get(p.host) if p.host else None
            if p.host != host:
                if old_driver is not None and old_driver is not new_driver:
                    await self._forget_dhcp(old_driver, p)
                async with self.pool.acquire() as conn:
                    await q.set_port_host(conn, p.port_id, host)
            if new_driver is not None:
                await new_driver.add_dhcp_host(p.network_name, p.mac, p.ip)
        return [dataclasses.replace(p, host=host) for p in ports]

    async def _forget_dhcp(self, driver: VirtDriver, p: PortInfo) -> None:
        try:
            await driver.remove_dhcp_host(p.network_name, p.mac)
        except Exception:
            # Left behind only until the next start reconciles the host's entries.
            log.warning("dhcp_host_remove_failed", network=p.network_name, mac=p.mac, exc_info=True)

    async def _release(self, rows: list[dict]) -> None:
        for row in rows:
            driver = self.hosts.get(row["host"]) if row["host"] else None
            if driver is not None:
                await self._forget_dhcp(driver, _port_info(row))
            async with self.pool.acquire() as conn:
                await q.release_port(conn, row)

    async def deallocate_for_instance(self, instance_uuid: str) -> None:
        """Remove the instance's DHCP entries and ports (user-made ports are unbound); idempotent."""
        async with self.pool.acquire() as conn:
            rows = await q.ports_for_devices(conn, [instance_uuid])
        await self._release(rows)
        if rows:
            log.info("ports_deallocated", instance_uuid=instance_uuid, ports=len(rows))

    async def bind_ports_to_host(self, instance_uuid: str, host: str | None) -> list[PortInfo]:
        """Move an instance's existing ports to ``host`` (None: unbound, as a shelve offload leaves
        them): DHCP entries leave the old host and are added on the new one; no port is made."""
        async with self.pool.acquire() as conn:
            rows = await q.ports_for_devices(conn, [instance_uuid])
        return await self._rebind(rows, host) if rows else []

    # -- datapath follows the rows (issue 16: wired by the lead at merge time) -------
    async def ports_changed(self, port_ids: Iterable[str]) -> None:
        """After ports' rows changed (fixed IP, security groups, port security, binding): their
        DHCP entries and packet filters on their hosts follow. INTEGRATION POINT, no-op for now."""

    async def security_changed(self, group_ids: Iterable[str]) -> None:
        """After groups' rules or members changed: refresh the filters of every port whose
        filter depends on them (members, and ports with rules naming them as remote group).
        INTEGRATION POINT, no-op for now."""

    async def port_deleted(self, row: dict) -> None:
        """After a port row bound to a host was deleted through the API: its DHCP entry,
        filter (and NIC) leave the host. INTEGRATION POINT, no-op for now."""

    # -- reads ----------------------------------------------------------------------
    async def ports_for_instance(self, instance_uuid: str) -> list[PortInfo]:
        """The instance's ports in NIC order (for the config drive and the guest spec)."""
        async with self.pool.acquire() as conn:
            return [_port_info(r) for r in await q.ports_for_devices(conn, [instance_uuid])]

    async def addresses_for(self, instance_uuids: Iterable[str]) -> dict[str, dict[str, list[dict]]]:
        """Server view ``addresses``: {uuid: {network name: [{addr, version, OS-EXT-IPS:type, ...MAC}]}}."""
        uuids = [str(u) for u in instance_uuids]
        out: dict[str, dict[str, list[dict]]] = {}
        if not uuids:
            return out
        async with self.pool.acquire() as conn:
            rows = await q.ports_for_devices(conn, uuids)
        for r in rows:
            p = _port_info(r)
            out.setdefault(r["device_id"], {}).setdefault(p.network_label, []).append(p.address())
        return out
