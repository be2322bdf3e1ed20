"""The network service the compute layers call: networks, ports, IPAM and DHCP entries.

Networks come from config (``[[networks]]``; one shared ``private`` network when
none is configured) and are created at start by :meth:`NetworkAPI.ensure_networks`
(or its two halves: :meth:`~NetworkAPI.ensure_rows`, then :meth:`~NetworkAPI.ensure_host` per host)
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
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from novalite import exception
from novalite.config import Config, ConfigError, NetworkConfig
from novalite.db import datapath as dq
from novalite.db import instances as instances_db
from novalite.db import interfaces as iq
from novalite.db import networks as q
from novalite.db import security_groups as sg_q
from novalite.db.batch import BatchWriter
from novalite.network import quota
from novalite.network.firewall import Firewall, filter_name
from novalite.virt.driver import METADATA_ADDRESS, NetworkSpec, NicSpec, VirtDriver, VirtError

log = structlog.get_logger(__name__)

DEFAULT_NETWORK = NetworkConfig(name="private", cidr="10.20.0.0/24", shared=True)
DEVICE_OWNER = "compute:nova"
NOVA_PORTS_PER_STATEMENT = 20  # builds' ports sent together at most (as build steps are)
METADATA_ROUTE = f"{METADATA_ADDRESS}/32"

# Serves a tenant network's metadata socket (network id, listening socket), or stops (network id, None).
ServeMetadata = Callable[[str, socket.socket | None], Awaitable[None]]


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
    filter: str | None = None  # the port's packet filter on its host (NicSpec.filter)

    def nic(self, model: str = "virtio") -> NicSpec:
        """The guest NIC for this port."""
        return NicSpec(mac=self.mac, network=self.network_name, model=model, filter=self.filter)

    def address(self) -> dict:
        """This port in a server document's ``addresses`` list."""
        return address_doc(self.ip, self.mac)


def address_doc(ip: str, mac: str) -> dict:
    """A fixed IP and its port's MAC as a server document's ``addresses`` lists them."""
    return {"addr": ip, "version": 4, "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": mac}


def addresses_doc(ports: Iterable[Sequence[str]]) -> dict[str, list[dict]]:
    """A server document's ``addresses`` from its ports' (network name, fixed IP, MAC), in order."""
    out: dict[str, list[dict]] = {}
    for network, ip, mac in ports:
        out.setdefault(network, []).append(address_doc(ip, mac))
    return out


def _port_info(row: dict, tag: str | None = None, filter_prefix: str | None = None) -> PortInfo:
    """A port row as PortInfo; with ``filter_prefix`` (the cloud's libvirt prefix) its NIC names its filter."""
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
        filter=filter_name(filter_prefix, row["id"]) if filter_prefix is not None else None,
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


def _tenant_spec(row: dict) -> NetworkSpec:
    """A tenant network as its hosts make it (a row of :func:`novalite.db.datapath.tenant_networks`)."""
    return NetworkSpec(
        name=row["libvirt_name"], uuid=row["id"], cidr=row["cidr"] or "", gateway=row["gateway_ip"],
        dhcp_start=row["pool_start"] or "", dhcp_end=row["pool_end"] or "", mtu=row["mtu"], tenant=True,
        dhcp_server=row["dhcp_server"], enable_dhcp=row["enable_dhcp"],
        dns_nameservers=tuple(row["dns_nameservers"] or ()),
        host_routes=tuple((r["destination"], r["nexthop"]) for r in row["host_routes"] or ()),
    )


def _leases(ports: Iterable[dict], network_id: str) -> dict[str, str]:
    """MAC → fixed IP of the network's ports among ``ports``: its DHCP entries on their host."""
    return {p["mac_address"]: p["fixed_ip"] for p in ports if p["network_id"] == network_id}


def _serves_dhcp(spec: NetworkSpec) -> bool:
    """Whether the network's hosts serve DHCP: a DHCP-enabled subnet with a DHCP port address."""
    return spec.enable_dhcp and bool(spec.dhcp_server)


@dataclass(frozen=True)
class NetworkPlan:
    """What the create's network check found: how many instances fit, and, when every request is
    a network to take the next free address on (no ports, no fixed IPs), those networks resolved
    as [{"id", "tag"}] for the build (which then needs no second look at the networks)."""

    fits: int
    networks: list[dict] | None


def _pick_auto(visible: list[dict], project_id: str) -> dict | None:
    """Nova's choice for ``auto`` among the networks a project sees (oldest first): its own network
    if it has exactly one, else the default, else the only shared one (409 when it is ambiguous)."""
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


def _is_auto(requested: Any) -> bool:
    """Whether a create's ``networks`` asks for the automatic choice: ``auto``, or no ``networks``
    at all (before 2.37)."""
    return requested is None or requested == "auto"


def _auto_or_invalid(net: dict | None, requested: Any, project_id: str) -> dict | None:
    """The auto choice of a create's ``networks``: Nova's 400 when ``auto`` finds no network
    (no ``networks`` before 2.37 then means none)."""
    if net is None and requested == "auto":
        raise exception.Invalid(f"Unable to automatically allocate a network for project {project_id}")
    return net


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
    hosts: dict[str, VirtDriver] = field(default_factory=dict)
    # ids of the configured networks: on every host from the start, never made on first use
    _configured: set[str] = field(default_factory=set, init=False, repr=False)
    # (host, network id) → whether it serves DHCP, for the tenant networks made on a host
    _present: dict[tuple[str, str], bool] = field(default_factory=dict, init=False, repr=False)
    # one lock per (host, network id): making and removing a tenant network never race
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict, init=False, repr=False)
    # configured network id → gateway, where the metadata service listens for it
    _metadata_gateways: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _defs: list[NetworkSpec] = field(default_factory=list, init=False, repr=False)  # set by ensure_rows
    # who serves the tenant networks' metadata sockets (watch_tenant_metadata), and the host
    # whose DHCP namespace holds each network's open socket
    _serve_metadata: ServeMetadata | None = field(default=None, init=False, repr=False)
    _metadata_hosts: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    # the ports' packet filters on the same hosts (security groups)
    firewall: Firewall = field(init=False)
    # concurrent builds' ports on the next free address, many per statement (db.batch), and
    # the ports of concurrent deletes, released together
    _nova_ports: BatchWriter[q.NovaPort] = field(init=False, repr=False)
    _released: BatchWriter[list[dict]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.firewall = Firewall(self.pool, self.config, self.hosts)
        self._nova_ports = BatchWriter(self.pool, q.create_nova_ports, NOVA_PORTS_PER_STATEMENT, "nova_ports",
                                       key=lambda w: w.device_id)
        self._released = BatchWriter(self.pool, q.release_ports, NOVA_PORTS_PER_STATEMENT, "released_ports")

    @property
    def _filter_prefix(self) -> str:
        return self.config.networking.libvirt_prefix

    # -- start ----------------------------------------------------------------------
    async def ensure_networks(self) -> None:
        """Create or update the configured networks in Postgres and on every host; idempotent.

        DHCP host entries on each host are reconciled with the ports bound to
        it, so entries left by a crash are removed and missing ones restored.
        Each tenant network with ports bound to a host is made there (a running
        DHCP server is adopted), and this cloud's tenant networks and DHCP
        namespaces on a host with no port bound there are removed.
        """
        await self.ensure_rows()
        await asyncio.gather(*(self.ensure_host(host) for host in self.hosts))

    async def ensure_rows(self) -> None:
        """The configured networks in Postgres (what the API shows); their hosts come after,
        with :meth:`ensure_host` (at start, in the background: the API serves meanwhile)."""
        defs = await self._ensure_rows()
        self._configured |= {d.uuid for d in defs}
        self._metadata_gateways = {d.uuid: d.gateway for d in defs if d.metadata_port and d.gateway}
        self._defs = defs
        for d in defs:
            log.info("network_ready", network=d.name, id=str(d.uuid), cidr=str(d.cidr), gateway=d.gateway,
                     forward=d.forward, hosts=sorted(self.hosts))

    async def ensure_host(self, host: str) -> None:
        """The networks on one host (after :meth:`ensure_rows`): configured and tenant networks
        made, DHCP entries reconciled with the ports bound there, its firewall synced."""
        driver = self.hosts[host]
        await self._ensure_on(host, driver, self._defs)
        await self.firewall.sync_host(host, driver)

    async def add_host(self, host: str, driver: VirtDriver) -> None:
        """A host added while running (SIGHUP): the configured networks made there as at start."""
        self.hosts[host] = driver
        self.firewall.hosts_changed()
        await self.ensure_rows()
        await self.ensure_host(host)

    def remove_host(self, host: str) -> None:
        """A host taken out while running: no network work goes there any more (its libvirt
        networks stay on its hypervisor, as a host's guests would)."""
        self.hosts.pop(host, None)
        self.firewall.hosts_changed()

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
                    dns_nameservers=list(net.dns_nameservers), enable_dhcp=net.forward != "bridge",
                )
                defs.append(NetworkSpec(
                    name=row["libvirt_name"], uuid=row["id"], cidr=plan.cidr, gateway=plan.gateway,
                    dhcp_start=plan.pool_start, dhcp_end=plan.pool_end, mtu=net.mtu,
                    forward=net.forward, host_bridge=net.bridge, enable_dhcp=net.forward != "bridge",
                    **(self._metadata_route(plan.gateway) if net.forward != "bridge" else {}),
                ))
        return defs

    def _metadata_route(self, gateway: str) -> dict[str, Any]:
        """A configured network's way to the metadata service: a DHCP route to 169.254.169.254
        via the gateway, where the host redirects it to novalite's listener (``[metadata]``).
        Not on a bridge network: the gateway there is the LAN's router, not this host."""
        if not self.config.metadata.enabled:
            return {}
        return {"host_routes": ((f"{METADATA_ADDRESS}/32", gateway),), "metadata_port": self.config.metadata.port}

    @property
    def metadata_networks(self) -> dict[str, str]:
        """Network id → gateway of the configured networks that reach the metadata service
        (after :meth:`ensure_networks`): where its listeners bind."""
        return dict(self._metadata_gateways)

    async def _ensure_on(self, host: str, driver: VirtDriver, defs: list[NetworkSpec]) -> None:
        for d in defs:
            await driver.ensure_network(d)
        ports = await self._leased_ports(host)
        tenant = await self._tenant_specs({p["network_id"] for p in ports})
        served = [d for d in defs if d.enable_dhcp]
        for spec in tenant.values():
            try:
                async with self._host_lock(host, spec.uuid):
                    await self._make_on(host, driver, spec)
            except VirtError as exc:
                log.error("tenant_network_failed", network=spec.name, host=host, error=str(exc))
                continue
            if _serves_dhcp(spec):
                served.append(spec)
        for d in served:
            added, removed = await driver.sync_dhcp_hosts(d.name, _leases(ports, d.uuid))
            if added or removed:
                log.info("dhcp_hosts_reconciled", network=d.name, host=host, added=added, removed=removed)
        stale = await driver.prune_tenant_networks(self.config.networking.libvirt_prefix,
                                                   {spec.name for spec in tenant.values()})
        if stale:
            log.info("tenant_networks_pruned", host=host, networks=stale)

    async def _leased_ports(self, host: str) -> list[dict]:
        """The ports bound to ``host`` that get a DHCP lease there (a fixed IP; DHCP ports aside)."""
        async with self.pool.acquire() as conn:
            return [p for p in await q.ports_on_host(conn, host)
                    if p["device_owner"] != q.DHCP_OWNER and p["fixed_ip"]]

    # -- tenant networks on the hosts: made on first use, removed with their last port --
    def _host_lock(self, host: str, network_id: str) -> asyncio.Lock:
        return self._locks.setdefault((host, network_id), asyncio.Lock())

    async def _tenant_specs(self, network_ids: Iterable[str]) -> dict[str, NetworkSpec]:
        """The tenant networks among ``network_ids`` (one query; none when all are configured ones)."""
        ids = set(network_ids) - self._configured
        if not ids:
            return {}
        async with self.pool.acquire() as conn:
            specs = {r["id"]: self._with_metadata_route(_tenant_spec(r)) for r in await dq.tenant_networks(conn, ids)}
        self._configured |= ids - specs.keys()
        return specs

    def _with_metadata_route(self, spec: NetworkSpec) -> NetworkSpec:
        """A tenant network with DHCP reaches the metadata service in its DHCP namespace: a DHCP
        route to 169.254.169.254/32 via the DHCP port's address, as Neutron's isolated metadata
        gives, unless the subnet's host routes name that destination already."""
        if not self.config.metadata.enabled or not _serves_dhcp(spec) \
                or any(ipaddress.ip_network(dst, strict=False) == ipaddress.ip_network(METADATA_ROUTE)
                       for dst, _ in spec.host_routes):
            return spec
        return dataclasses.replace(spec, host_routes=(*spec.host_routes, (METADATA_ROUTE, spec.dhcp_server)))

    async def _make_on(self, host: str, driver: VirtDriver, spec: NetworkSpec) -> None:
        """Make (or bring in line) a tenant network on a host, with its metadata socket where
        its DHCP namespace has one; the caller holds its lock."""
        if not _serves_dhcp(spec):
            await self._close_metadata(host, spec.uuid)  # before its namespace goes
        await driver.ensure_network(spec)
        self._present[(host, spec.uuid)] = _serves_dhcp(spec)
        if _serves_dhcp(spec):
            await self._open_metadata(host, driver, spec)

    # -- the metadata service of tenant networks, in their DHCP namespaces ---------------
    async def watch_tenant_metadata(self, serve: ServeMetadata) -> None:
        """From now on hand ``serve`` the metadata socket of each tenant network's DHCP namespace
        (network id, listening socket) when the network is made on a host, and (network id, None)
        before the namespace goes; starting with the networks made already (at start)."""
        self._serve_metadata = serve
        made = [(host, nid) for (host, nid), dhcp in self._present.items() if dhcp]
        specs = await self._tenant_specs({nid for _, nid in made})
        for host, nid in made:
            if nid in specs and (driver := self.hosts.get(host)) is not None:
                async with self._host_lock(host, nid):
                    if self._present.get((host, nid)):
                        await self._open_metadata(host, driver, specs[nid])

    async def _open_metadata(self, host: str, driver: VirtDriver, spec: NetworkSpec) -> None:
        """Serve the network's metadata in its namespace on ``host``, on a new socket: the namespace
        may be new, and the old socket, closed first, holds the address and port. A failure is
        logged; the guests then get none."""
        if self._serve_metadata is None:
            return
        await self._close_metadata(host, spec.uuid)
        try:
            sock = await driver.metadata_socket(spec.name)
        except VirtError as exc:
            log.warning("tenant_metadata_failed", network=spec.name, host=host, error=str(exc))
            return
        if sock is None:
            return
        self._metadata_hosts[spec.uuid] = host
        await self._serve_metadata(spec.uuid, sock)
        log.info("tenant_metadata_listening", network=spec.name, host=host, address=METADATA_ADDRESS)

    async def _close_metadata(self, host: str, network_id: str) -> None:
        """Stop serving the network's metadata socket if ``host``'s namespace holds it."""
        if self._serve_metadata is not None and self._metadata_hosts.get(network_id) == host:
            del self._metadata_hosts[network_id]
            await self._serve_metadata(network_id, None)

    async def _plug(self, host: str, driver: VirtDriver, ports: list[PortInfo]) -> None:
        """The ports' DHCP entries on ``host``; a tenant network not there yet is made first.

        Costs no query when every network is configured or already on the host, one otherwise.
        """
        specs = await self._tenant_specs({p.network_id for p in ports if (host, p.network_id) not in self._present})
        for p in ports:
            if p.network_id in self._configured:
                if p.enable_dhcp:  # not on a bridge network: the LAN's DHCP serves it
                    await driver.add_dhcp_host(p.network_name, p.mac, p.ip)
                continue
            async with self._host_lock(host, p.network_id):
                if await self._present_on(host, driver, p.network_id, specs) and p.ip:
                    await driver.add_dhcp_host(p.network_name, p.mac, p.ip)

    async def _present_on(self, host: str, driver: VirtDriver, network_id: str,
                          specs: dict[str, NetworkSpec]) -> bool:
        """Make the tenant network on ``host`` unless it is there (the caller holds its lock);
        whether its ports' DHCP entries go to the host."""
        if (host, network_id) not in self._present:
            # Not in ``specs`` when its last port left the host since they were read: read it again.
            spec = specs.get(network_id) or (await self._tenant_specs([network_id])).get(network_id)
            if spec is None:
                return network_id in self._configured
            await self._make_on(host, driver, spec)
        return self._present[(host, network_id)]

    async def network_changed(self, network_id: str) -> None:
        """After a tenant network's subnet or DHCP port changed (options, DHCP on/off): the hosts
        where it exists make it again and resync its DHCP entries."""
        spec = (await self._tenant_specs([network_id])).get(network_id)
        if spec is None:
            return
        for host, nid in list(self._present):
            if nid != network_id or (driver := self.hosts.get(host)) is None:
                continue
            async with self._host_lock(host, network_id):
                if (host, network_id) not in self._present:
                    continue
                await self._make_on(host, driver, spec)
                if _serves_dhcp(spec):
                    await driver.sync_dhcp_hosts(spec.name, _leases(await self._leased_ports(host), network_id))

    async def _drop_unused(self, host: str, network_id: str, name: str) -> None:
        """Remove a tenant network from ``host`` when no port of it is bound there any more."""
        driver = self.hosts.get(host)
        if driver is None or network_id in self._configured:
            return
        async with self._host_lock(host, network_id):
            async with self.pool.acquire() as conn:
                bound = await dq.tenant_ports_on_host(conn, network_id, host)
            if bound is None:
                self._configured.add(network_id)
                return
            if bound:
                return
            self._present.pop((host, network_id), None)
            await self._close_metadata(host, network_id)
            try:
                await driver.undefine_network(name)
            except VirtError:
                # Left behind only until the next start prunes the host's tenant networks.
                log.warning("tenant_network_remove_failed", network=name, host=host, exc_info=True)
                return
            log.info("tenant_network_removed", network=name, host=host)

    # -- requested networks ---------------------------------------------------------
    async def _resolve(
        self, conn: asyncpg.Connection, project_id: str, requested: Any, instance_uuid: str | None,
        is_admin: bool,
    ) -> list[_Wanted]:
        if requested == "none":
            return []
        if _is_auto(requested):
            net = _auto_or_invalid(await self._auto_network(conn, project_id, is_admin), requested, project_id)
            return [] if net is None else [_Wanted(net)]
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
        return _pick_auto(await q.list_networks(conn, project_id=project_id, is_admin=False), project_id)

    @staticmethod
    def create_read_sql(requested: Any, project_arg: str) -> str | None:
        """What validate_requested_networks reads for a create's ``requested`` networks, as an SQL
        expression of the project ``project_arg`` (an SQL text) that the caller may read with its
        own lookups and hand over (``read``): for ``auto`` (or no ``networks`` before 2.37) the
        port quota's room and the networks to choose from with their free addresses. None for
        other requests (their check reads as it resolves them)."""
        if _is_auto(requested):
            return (f"jsonb_build_object('room', {quota.room_sql(project_arg, 'port')}, "
                    f"'networks', {q.auto_candidates_sql(project_arg)})")
        return None

    async def _validate_auto(self, conn: asyncpg.Connection, project_id: str, requested: Any, max_count: int,
                             read: dict | None) -> NetworkPlan:
        """validate_requested_networks of ``auto`` (or no ``networks`` before 2.37) from what
        create_read_sql reads (in one round trip here when the caller did not)."""
        if read is None:
            read = await conn.fetchval(f"SELECT {self.create_read_sql(requested, '$1')}", project_id)
        room, visible = read["room"], read["networks"]
        net = _auto_or_invalid(_pick_auto(visible, project_id), requested, project_id)
        if net is None:
            return NetworkPlan(max_count, [])
        fits = min(max_count, net["free"], max_count if room is None else room)
        if fits < 1:
            raise exception.QuotaExceeded("Maximum number of ports exceeded")
        return NetworkPlan(fits, [{"id": net["id"], "tag": None}])


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
        conn: asyncpg.Connection | None = None, read: dict | None = None,
    ) -> NetworkPlan:
        """Check requested_networks at create time: how many instances (≤ max_count) fit, and the
        networks resolved for the build (NetworkPlan).

        ``requested`` is "auto", "none", None (no ``networks`` key, before 2.37) or
        a list of {uuid, port, fixed_ip, tag}. Raises with Nova's messages:
        400 ``Network <id> could not be found.`` / ``Port id <id> could not be
        found.`` / fixed IP not in the subnet or already in use; 409 ``Port <id>
        is still in use.``; 403 ``Maximum number of ports exceeded`` when no
        instance would get an address or its ports would pass the project's Neutron port
        quota. Runs on `conn` when the caller holds one; ``read``: the value of create_read_sql
        when the caller read it.
        """
        if conn is None:
            async with self.pool.acquire() as conn:
                return await self.validate_requested_networks(
                    project_id, requested, max_count, is_admin=is_admin, conn=conn, read=read)
        if _is_auto(requested):
            return await self._validate_auto(conn, project_id, requested, max_count, read)
        wanted = await self._resolve(conn, project_id, requested, None, is_admin)
        needs: dict[str, int] = {}
        for w in wanted:
            if w.port is None:
                needs[w.network["id"]] = needs.get(w.network["id"], 0) + 1
        fits = max_count
        if needs:  # the port quota's room and each network's free addresses: one round trip
            room, free = await quota.headroom(conn, project_id, "port", also=q.free_addresses_sql("$2::uuid[]"),
                                              also_args=(list(needs),))
            for net_id, per_instance in needs.items():
                fits = min(fits, free[net_id] // per_instance)
            if room is not None:
                fits = min(fits, room // sum(needs.values()))
        if fits < 1:
            raise exception.QuotaExceeded("Maximum number of ports exceeded")
        fresh = all(w.port is None and w.fixed_ip is None for w in wanted)
        return NetworkPlan(fits, [{"id": w.network["id"], "tag": w.tag} for w in wanted] if fresh else None)

    # -- build and delete -----------------------------------------------------------
    async def allocate_for_instance(
        self, instance_uuid: str, project_id: str, requested_networks: Any, host: str | None,
        *, is_admin: bool = False, resolved: list[dict] | None = None,
    ) -> list[PortInfo]:
        """NETWORKING step of a build: ports (MAC + fixed IP) and DHCP host entries on ``host``.
        ``resolved``: the networks the create's check resolved (NetworkPlan.networks), if any.

        Idempotent per instance: if it already has ports (a retried or rescheduled
        build) they are moved to ``host`` and returned as they are. On failure the
        ports made by this call are removed again before the error propagates.
        A host without a virt driver here gets ports in Postgres only.
        """
        if resolved is not None:
            wanted, fresh = [_Wanted({"id": n["id"]}, tag=n["tag"]) for n in resolved], True
        else:
            async with self.pool.acquire() as conn:
                wanted = await self._resolve(conn, project_id, requested_networks, instance_uuid, is_admin)
                # Ports on the next free address say themselves whether the instance has them already.
                fresh = all(w.port is None and w.fixed_ip is None for w in wanted)
                existing = [] if fresh else await q.ports_for_device(conn, instance_uuid)
            if existing:
                return await self._rebind(existing, host)
        made: list[dict] = []  # ports made (or bound) by this call: undone if it fails
        try:
            if fresh:
                for index, w in enumerate(wanted):
                    row = await self._make_port(None, w, instance_uuid, project_id, host, index)
                    if row["existed"]:  # a retried or rescheduled build: its ports move here
                        return await self._rebind(await self._ports_of(instance_uuid), host)
                    made.append(row)
                rows, joined = made, {g for r in made for g in r["groups"]}
            else:
                rows, joined = await self._bind_or_make(wanted, instance_uuid, project_id, host, made)
            ports = [_port_info(r, w.tag, self._filter_prefix) for r, w in zip(rows, wanted, strict=False)]
            driver = self.hosts.get(host) if host else None
            if driver is not None:
                await self._plug(host, driver, ports)
            await self._set_filters(ports, sorted(joined))
            log.info("ports_allocated", instance_uuid=instance_uuid, host=host,
                     ports=[(p.mac, p.ip, p.network_label) for p in ports])
            return ports
        except BaseException:
            if made:
                await asyncio.shield(self._undo(instance_uuid, {r["id"] for r in made}))
            raise

    async def _ports_of(self, instance_uuid: str) -> list[dict]:
        async with self.pool.acquire() as conn:
            return await q.ports_for_device(conn, instance_uuid)

    async def _bind_or_make(
        self, wanted: list[_Wanted], instance_uuid: str, project_id: str, host: str | None, made: list[dict],
    ) -> tuple[list[dict], set[str]]:
        """The ports of a create that names ports or fixed IPs, on one connection: each wanted port
        bound or made (appended to ``made`` as it is), the groups joined; (the instance's ports,
        the ids of the groups they joined)."""
        async with self.pool.acquire() as conn:
            joined: set[str] = set()
            fixed_ids: list[str] = []  # ports made on a requested fixed IP
            for index, w in enumerate(wanted):
                if w.port is not None:
                    row = await q.bind_port(conn, w.port["id"], device_id=instance_uuid, host=host,
                                            device_index=index)
                    if row is None:
                        raise exception.Conflict(f"Port {w.port['id']} is still in use.")
                else:
                    row = await self._make_port(conn, w, instance_uuid, project_id, host, index)
                    joined.update(row["groups"])
                    if w.fixed_ip is not None:
                        fixed_ids.append(row["id"])
                made.append(row)
            joined.update(await sg_q.join_instance_groups(conn, instance_uuid, fixed_ids))
            return await q.ports_for_device(conn, instance_uuid), joined

    async def _make_port(
        self, conn: asyncpg.Connection | None, w: _Wanted, instance_uuid: str, project_id: str, host: str | None,
        index: int,
    ) -> dict:
        """The server's port on ``w.network`` with ``groups``, the security groups it joined (none
        yet for a requested fixed IP). A port on the next free address is one statement (``existed``:
        the instance had that port already), sent with other builds' ports when the caller holds no
        connection (``conn`` None); a requested address goes through the general port create."""
        try:
            if w.fixed_ip is None:
                wanted = q.NovaPort(network_id=w.network["id"], project_id=project_id, device_id=instance_uuid,
                                    device_owner=DEVICE_OWNER, host=host, device_index=index,
                                    port_limit=quota.DEFAULTS["port"])
                if conn is None:
                    return await self._nova_ports.submit(wanted)
                (row,) = await q.create_nova_ports(conn, [wanted])
                if isinstance(row, Exception):
                    raise row
                return row
            async with conn.transaction():
                await quota.reserve(conn, project_id, {"port": 1})
                row = await q.create_port(
                    conn, network_id=w.network["id"], project_id=project_id, device_id=instance_uuid,
                    device_owner=DEVICE_OWNER, host=host, fixed_ip=w.fixed_ip, device_index=index,
                )
            return dict(row, groups=[])
        except (quota.OverQuota, q.PortQuotaExceeded):
            raise exception.QuotaExceeded("Maximum number of ports exceeded") from None
        except q.AddressInUse as exc:
            raise exception.Invalid(
                f"Fixed IP address {exc.address} is already in use on instance {exc.device_id}."
            ) from None
        except q.NoMoreAddresses:
            raise exception.Conflict(f"No fixed IP addresses available for network: {w.network['id']}") from None

    async def _set_filters(self, ports: list[PortInfo], joined: list[str]) -> None:
        """The ports' filters on their host before their NICs are plugged; soon after, the
        filters of ports that allow traffic from the groups the new ports ``joined``."""
        await self.firewall.refresh_ports([p.port_id for p in ports], strict=True)
        self.firewall.refresh_groups_soon(joined)

    async def _undo(self, instance_uuid: str, port_ids: set[str]) -> None:
        async with self.pool.acquire() as conn:
            rows = await q.ports_for_device(conn, instance_uuid)
        await self._release([r for r in rows if r["id"] in port_ids])

    async def _rebind(self, rows: list[dict], host: str | None) -> list[PortInfo]:
        """Move ports to ``host``: DHCP entries (and tenant networks left without ports) leave
        the old hosts, and the new host gets its tenant networks and the entries."""
        ports = [_port_info(r, filter_prefix=self._filter_prefix) for r in rows]
        new_driver = self.hosts.get(host) if host else None
        left: set[tuple[str, str, str]] = set()
        for p in ports:
            old_driver = self.hosts.get(p.host) if p.host else None
            if p.host != host:
                if old_driver is not None and old_driver is not new_driver:
                    await self._forget_dhcp(old_driver, p)
                    await self.firewall.remove(p.host, p.port_id)
                async with self.pool.acquire() as conn:
                    await q.set_port_host(conn, p.port_id, host)
                if p.host:
                    left.add((p.host, p.network_id, p.network_name))
        if new_driver is not None:
            await self._plug(host, new_driver, ports)
        for old_host, network_id, name in left:
            await self._drop_unused(old_host, network_id, name)
        await self.firewall.refresh_ports([p.port_id for p in ports], strict=True)
        return [dataclasses.replace(p, host=host) for p in ports]

    async def _forget_dhcp(self, driver: VirtDriver, p: PortInfo) -> None:
        await self._forget_entry(driver, p.host, p.network_id, p.network_name, p.mac)

    async def _forget_entry(self, driver: VirtDriver, host: str | None, network_id: str, network: str,
                            mac: str) -> None:
        """Remove a port's DHCP entry from its host's network; failures only logged."""
        if self._present.get((host or "", network_id)) is False:
            return  # a tenant network without DHCP on that host: no entries
        try:
            await driver.remove_dhcp_host(network, mac)
        except Exception:
            # Left behind only until the next start reconciles the host's entries.
            log.warning("dhcp_host_remove_failed", network=network, mac=mac, exc_info=True)

    async def _release(self, rows: list[dict]) -> None:
        """Ports leave their hosts (DHCP entry, filter, and tenant networks left without a bound
        port) and are deleted or unbound; the filters that allowed traffic from their groups'
        members follow."""
        if not rows:
            return
        groups: dict[str, list[str]] = {}
        if self.firewall.enforced_anywhere():  # else no filter depends on the ports' groups
            async with self.pool.acquire() as conn:
                groups = await sg_q.port_group_ids(conn, [r["id"] for r in rows])
        left: set[tuple[str, str, str]] = set()
        for row in rows:
            driver = self.hosts.get(row["host"]) if row["host"] else None
            if driver is not None:
                await self._forget_dhcp(driver, _port_info(row))
                left.add((row["host"], row["network_id"], row["libvirt_name"]))
        await self._released.submit(rows)  # with other deletes' ports
        for row in rows:  # after the rows: a group refresh meanwhile would make a filter from a row still there
            await self.firewall.remove(row["host"], row["id"])
        self.firewall.refresh_groups_soon(g for ids in groups.values() for g in ids)
        for host, network_id, name in left:
            await self._drop_unused(host, network_id, name)

    async def deallocate_for_instance(self, instance_uuid: str) -> None:
        """Remove the instance's DHCP entries and ports (user-made ports are unbound); idempotent."""
        async with self.pool.acquire() as conn:
            rows = await q.ports_for_device(conn, instance_uuid)
        await self._release(rows)
        if rows:
            log.info("ports_deallocated", instance_uuid=instance_uuid, ports=len(rows))

    async def bind_ports_to_host(self, instance_uuid: str, host: str | None) -> list[PortInfo]:
        """Move an instance's existing ports to ``host`` (None: unbound, as a shelve offload leaves
        them): DHCP entries leave the old host and are added on the new one; no port is made."""
        async with self.pool.acquire() as conn:
            rows = await q.ports_for_device(conn, instance_uuid)
        return await self._rebind(rows, host) if rows else []

    async def prepare_host(self, instance_uuid: str, host: str) -> None:
        """Before a live migration (Nova's setup_networks_on_host at the destination): the
        instance's networks, DHCP entries and port filters on ``host`` too, while its ports stay
        bound where the guest runs; :meth:`bind_ports_to_host` moves them once it runs there."""
        driver = self.hosts.get(host)
        async with self.pool.acquire() as conn:
            rows = await q.ports_for_device(conn, instance_uuid)
        if driver is None or not rows:
            return
        ports = [_port_info(r, filter_prefix=self._filter_prefix) for r in rows]
        await self._plug(host, driver, ports)
        await self.firewall.copy_to([p.port_id for p in ports], host)

    async def unprepare_host(self, instance_uuid: str, host: str) -> None:
        """Undo :meth:`prepare_host` after a failed live migration: the entries and filters leave
        ``host`` (and a tenant network that no bound port uses there)."""
        driver = self.hosts.get(host)
        async with self.pool.acquire() as conn:
            rows = [r for r in await q.ports_for_device(conn, instance_uuid) if r["host"] != host]
        if driver is None:
            return
        for r in rows:
            p = _port_info(r, filter_prefix=self._filter_prefix)
            await self._forget_entry(driver, host, p.network_id, p.network_name, p.mac)
            await self.firewall.remove(host, p.port_id)
        for network_id, name in {(r["network_id"], r["libvirt_name"]) for r in rows}:
            await self._drop_unused(host, network_id, name)

    # -- the datapath follows the rows: DHCP entries, filters, NICs ------------------
    async def ports_changed(self, port_ids: Iterable[str]) -> None:
        """After ports' rows changed (fixed IP, security groups, port security): their DHCP
        entries (an entry with the port's MAC is replaced) and packet filters on their hosts
        follow, and so do the filters of ports that allow traffic from the ports' groups."""
        ids = list(port_ids)
        async with self.pool.acquire() as conn:
            rows = [r for r in await q.ports_by_ids(conn, ids) if r["host"] and r["device_id"]]
            groups = await sg_q.port_group_ids(conn, ids)
        for host in {r["host"] for r in rows}:
            if (driver := self.hosts.get(host)) is not None:
                await self._plug(host, driver, [_port_info(r) for r in rows if r["host"] == host])
        await self.firewall.refresh_ports(ids)
        self.firewall.refresh_groups_soon(g for gs in groups.values() for g in gs)

    async def security_changed(self, group_ids: Iterable[str]) -> None:
        """After groups' rules or members changed: refresh the filters of every port whose
        filter depends on them (members, and ports with rules naming them as remote group)."""
        await self.firewall.refresh_groups(group_ids)

    async def port_deleted(self, row: dict) -> None:
        """After a bound port's row was deleted through the API: as Nova does on Neutron's
        network-vif-deleted, its NIC leaves the guest; then its DHCP entry, its filter and, with
        the network's last port on that host, the tenant network leave the host."""
        driver = self.hosts.get(row["host"]) if row["host"] else None
        if driver is None:
            return
        if row["device_id"] and row["device_owner"].startswith("compute:"):
            try:
                await driver.detach_nic(row["device_id"], row["mac_address"])
            except VirtError:
                log.warning("deleted_port_nic_detach_failed", port_id=row["id"], instance_uuid=row["device_id"],
                            exc_info=True)
        async with self.pool.acquire() as conn:
            net = await q.get_network(conn, row["network_id"])
        if net is not None:
            await self._forget_entry(driver, row["host"], row["network_id"], net["libvirt_name"], row["mac_address"])
        await self.firewall.remove(row["host"], row["id"])
        if net is not None:
            await self._drop_unused(row["host"], row["network_id"], net["libvirt_name"])

    # -- reads ----------------------------------------------------------------------
    async def ports_for_instance(self, instance_uuid: str) -> list[PortInfo]:
        """The instance's ports in NIC order (for the config drive and the guest spec)."""
        async with self.pool.acquire() as conn:
            rows = await q.ports_for_device(conn, instance_uuid)
        return [_port_info(r, filter_prefix=self._filter_prefix) for r in rows]

    async def addresses_for(self, instance_uuids: Iterable[str]) -> dict[str, dict[str, list[dict]]]:
        """Server view ``addresses``: {uuid: {network name: [{addr, version, OS-EXT-IPS:type, ...MAC}]}}."""
        uuids = [str(u) for u in instance_uuids]
        out: dict[str, dict[str, list[dict]]] = {}
        if not uuids:
            return out
        async with self.pool.acquire() as conn:
            rows = await q.addresses_of_devices(conn, uuids)
        for device_id, network, ip, mac in rows:  # one pass: a detail page has a thousand servers
            out.setdefault(device_id, {}).setdefault(network, []).append(address_doc(ip, mac))
        return out

    # -- hot-plug (os-interface, addFixedIp) ---------------------------------------
    async def attach_port(
        self, instance_uuid: str, project_id: str, host: str | None, *, availability_zone: str,
        port_id: str | None = None, network_id: str | None = None, fixed_ip: str | None = None,
        tag: str | None = None, is_admin: bool = False,
    ) -> PortInfo:
        """One more port for the instance, after its last: the user's ``port_id`` bound to it, or a
        new port on ``network_id`` (the project's network when neither is given), with its DHCP entry
        on ``host``. Nova's errors: 404 port/network unknown, 409 port or fixed IP in use, 400 no
        or ambiguous network, no free address. On a failure after the row changed, the port is
        released again (deleted if made here, unbound if the user's). The NIC is the caller's."""
        owner = f"compute:{availability_zone}"
        row: dict | None = None
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                index = await iq.next_device_index(conn, instance_uuid)
                if port_id:
                    row = await self._claim_port(conn, port_id, instance_uuid, project_id, owner, host, index,
                                                 is_admin)
                else:
                    row = await self._port_on_network(conn, network_id, fixed_ip, instance_uuid, project_id,
                                                      owner, host, index, is_admin)
                await iq.set_tag(conn, row["id"], instance_uuid, tag)
            port = await self._bound_port(instance_uuid, row["id"], tag)
            driver = self.hosts.get(host) if host else None
            if driver is not None:
                await self._plug(host, driver, [port])
            # The port's filter is set before the NIC is plugged; its group mates let it in soon after.
            await self.ports_changed([port.port_id])
            async with self.pool.acquire() as conn:
                groups = await sg_q.port_group_ids(conn, [port.port_id])
            self.firewall.refresh_groups_soon(groups.get(port.port_id, []))
            log.info("port_attached", instance_uuid=instance_uuid, port_id=port.port_id, host=host)
            return port
        except BaseException:
            if row is not None:
                await asyncio.shield(self._undo(instance_uuid, {row["id"]}))
            raise

    async def _claim_port(self, conn: asyncpg.Connection, port_id: str, instance_uuid: str, project_id: str,
                          owner: str, host: str | None, index: int, is_admin: bool) -> dict:
        port = await q.get_port(conn, port_id)
        if port is None or (port["project_id"] != project_id and not is_admin):
            raise exception.NotFound(f"Port id {port_id} could not be found.")
        row = await iq.claim_port(conn, port_id, device_id=instance_uuid, device_owner=owner, host=host,
                                  device_index=index)
        if row is None:
            raise exception.Conflict(f"Port {port_id} is still in use.")
        return row

    async def _port_on_network(self, conn: asyncpg.Connection, network_id: str | None, fixed_ip: str | None,
                               instance_uuid: str, project_id: str, owner: str, host: str | None, index: int,
                               is_admin: bool) -> dict:
        if network_id:
            net = await q.get_network(conn, network_id)
            if net is None or not (net["shared"] or net["project_id"] == project_id or is_admin):
                raise exception.NotFound(f"Network {network_id} could not be found.")
        else:
            try:
                net = await self._auto_network(conn, project_id, is_admin)
            except exception.Conflict:
                raise exception.Invalid("More than one possible network found. Specify network ID(s) to "
                                        "select which one(s) to connect to.") from None
            if net is None:
                raise exception.Invalid(
                    f"No specific network was requested and none are available for project '{project_id}'.")
        if fixed_ip:
            holder = await q.port_with_address(conn, net["id"], fixed_ip)
            if holder is not None:
                raise exception.Conflict(
                    f"Fixed IP address {fixed_ip} is already in use on instance {holder['device_id']}.")
            await self._check_fixed_ip(conn, net, fixed_ip, instance_uuid)
        try:
            await quota.reserve(conn, project_id, {"port": 1})
            row = await q.create_port(conn, network_id=net["id"], project_id=project_id, device_id=instance_uuid,
                                      device_owner=owner, host=host, fixed_ip=fixed_ip, device_index=index)
        except quota.OverQuota:
            raise exception.QuotaExceeded("Maximum number of ports exceeded") from None
        except q.AddressInUse as exc:
            raise exception.Conflict(
                f"Fixed IP address {exc.address} is already in use on instance {exc.device_id}.") from None
        except q.NoMoreAddresses:
            raise exception.Invalid(f"No fixed IP addresses available for network: {net['id']}") from None
        # A port made without groups gets the project's default group, as Neutron does.
        await sg_q.join_group(conn, [row["id"]], await sg_q.default_group_id(conn, project_id))
        return row

    async def _bound_port(self, instance_uuid: str, port_id: str, tag: str | None = None) -> PortInfo:
        async with self.pool.acquire() as conn:
            rows = await q.ports_for_device(conn, instance_uuid)
        return _port_info(next(r for r in rows if r["id"] == port_id), tag, self._filter_prefix)

    async def instance_port(self, instance_uuid: str, port_id: str) -> PortInfo | None:
        """The instance's port ``port_id``, or None when it has no such port."""
        return next((p for p in await self.ports_for_instance(instance_uuid) if p.port_id == port_id), None)

    async def detach_port(self, instance_uuid: str, port_id: str) -> None:
        """Release one port of the instance after its NIC left the guest: its DHCP entry goes, the
        port is deleted (made by Nova) or unbound (the user's); a port not bound to it is fine."""
        async with self.pool.acquire() as conn:
            rows = [r for r in await q.ports_for_device(conn, instance_uuid) if r["id"] == port_id]
        await self._release(rows)
        for row in rows:
            if row["preserve_on_delete"]:
                await self.ports_changed([port_id])
            else:
                await self.port_deleted(row)
            log.info("port_detached", instance_uuid=instance_uuid, port_id=port_id)

    async def interface_ports(self, instance_uuid: str) -> list[dict]:
        """The instance's port rows as os-interface shows them (status, subnet, tag), in NIC order."""
        async with self.pool.acquire() as conn:
            rows = await iq.interface_ports(conn, instance_uuid)
            tags = await iq.tags(conn, instance_uuid)
        return [{**r, "tag": tags.get(r["id"])} for r in rows]

    async def unplugged_ports(self, instance_uuid: str, macs: Iterable[str]) -> list[PortInfo]:
        """The instance's ports whose MAC is not among ``macs`` (the guest's NICs): the ones a
        crash left attached in the DB but not yet plugged."""
        have = {m.lower() for m in macs}
        return [p for p in await self.ports_for_instance(instance_uuid) if p.mac.lower() not in have]

    # -- server security groups (addSecurityGroup, removeSecurityGroup) --------------
    async def add_security_group(self, instance_uuid: str, project_id: str, name: str) -> None:
        """Put every port of the instance, and the instance's group names, in the project's group
        ``name`` (or id) together. Nova's errors: 404 unknown group or no ports, 409 ambiguous name,
        400 a port without port security or address, 400 already a member."""
        async with self.pool.acquire() as conn, conn.transaction():
            group, ports, names = await self._server_group(conn, instance_uuid, project_id, name)
            for p in ports:
                if not p["port_security_enabled"] or not p["fixed_ip"]:
                    raise exception.Invalid("Network requires port_security_enabled and subnet associated in "
                                            "order to apply security groups.")
            port_ids = [p["id"] for p in ports]
            if group["name"] in names or await sg_q.group_members(conn, port_ids, group["id"]):
                raise exception.Invalid(f"Duplicate items in the list: '{group['id']}'")
            await sg_q.join_group(conn, port_ids, group["id"])
            await instances_db.compare_and_set(conn, instance_uuid, security_groups=sorted({*names, group["name"]}))
        await self._security_followup(group["id"], port_ids)

    async def remove_security_group(self, instance_uuid: str, project_id: str, name: str) -> None:
        """Take every port of the instance, and the instance's group names, out of the group
        ``name`` (or id) together; 404 when the server is not in it."""
        async with self.pool.acquire() as conn, conn.transaction():
            group, ports, names = await self._server_group(conn, instance_uuid, project_id, name)
            port_ids = [p["id"] for p in ports]
            if group["name"] not in names and not await sg_q.group_members(conn, port_ids, group["id"]):
                raise exception.NotFound(
                    f"Security group {name} not associated with the instance {instance_uuid}")
            await sg_q.leave_group(conn, port_ids, group["id"])
            await instances_db.compare_and_set(
                conn, instance_uuid, security_groups=sorted(set(names) - {group["name"]}))
        await self._security_followup(group["id"], port_ids)

    async def _server_group(self, conn: asyncpg.Connection, instance_uuid: str, project_id: str,
                            name: str) -> tuple[dict, list[dict], list[str]]:
        """The group named (Neutron's find by name or id), the instance's ports and its group names,
        the instance row locked so concurrent group changes of one server queue up."""
        groups = await sg_q.find_groups(conn, project_id, name)
        if not groups:
            raise exception.NotFound(f"Security group {name} is not found for project {project_id}")
        if len(groups) > 1:
            raise exception.Conflict(
                f"Multiple security_group matches found for name '{name}', use an ID to be more specific.")
        names = await sg_q.lock_instance_groups(conn, instance_uuid)
        ports = await iq.interface_ports(conn, instance_uuid)
        if not ports:
            raise exception.NotFound(f"instance_id {instance_uuid} could not be found as device id on any ports")
        return groups[0], ports, names

    async def _security_followup(self, group_id: str, port_ids: list[str]) -> None:
        await self.security_changed([group_id])
        await self.ports_changed(port_ids)

    async def server_security_groups(self, project_id: str, names: Iterable[str]) -> list[dict]:
        """The server's groups (by the names it holds) with their rules, for os-security-groups."""
        async with self.pool.acquire() as conn:
            return await sg_q.groups_by_name(conn, project_id, names)
