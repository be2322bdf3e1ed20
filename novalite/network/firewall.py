"""Security groups enforced on the hosts: each port's packet filter, derived from Postgres.

A port's filter (:class:`PortFilterSpec`, named ``<libvirt_prefix>port-<port id>``)
holds anti-spoofing for its own MAC and fixed IP and one allowed flow per IPv4
rule of its groups; a rule's remote group is expanded to the fixed IPs of that
group's member ports, on every network. :class:`Firewall` pushes filters to the
hosts where ports are bound: for given ports, for the ports that depend on given
groups (after a rule or a membership changed), and for a whole host at start.
Only IPv4 rules are enforced: subnets are IPv4 (IPv6 rules are stored, as Neutron
stores them, and have nothing to match).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import asyncpg
import structlog

from novalite.config import Config
from novalite.db import security_groups as q
from novalite.virt.driver import FilterRule, PortFilterSpec, VirtDriver

log = structlog.get_logger(__name__)

# Protocols the nwfilter datapath enforces, by name and IANA number (Neutron stores either form).
ENFORCED_PROTOCOLS = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "esp": 50, "ah": 51, "sctp": 132, "udplite": 136}
_ANYWHERE = "0.0.0.0/0"


def filter_name(prefix: str, port_id: str) -> str:
    """The name of a port's filter on every host: unique across clouds that use other prefixes."""
    return f"{prefix}port-{port_id}"


def enforced_name(protocol: str | None) -> str | None:
    """The nwfilter name of a stored protocol: "6" → "tcp", "tcp" → "tcp", None (any) → None."""
    if protocol is None or not protocol.isdigit():
        return protocol
    return next((name for name, number in ENFORCED_PROTOCOLS.items() if number == int(protocol)), protocol)


def _remotes(rule: dict) -> tuple[str, ...] | None:
    """Where a rule allows traffic from/to: a remote group's member IPs, a prefix, or anywhere (None)."""
    if rule["remote_group_id"] is not None:
        return tuple(f"{ip}/32" for ip in sorted(rule["members"]))
    prefix = rule["remote_ip_prefix"]
    return None if prefix in (None, _ANYWHERE) else (prefix,)


def port_filter_spec(row: dict, prefix: str) -> PortFilterSpec:
    """The filter of one port from its :func:`novalite.db.security_groups.filter_inputs` row."""
    rules: list[FilterRule] = []
    for r in row["rules"]:
        rule = FilterRule(direction=r["direction"], protocol=enforced_name(r["protocol"]),
                          port_min=r["port_range_min"], port_max=r["port_range_max"], remotes=_remotes(r))
        if rule not in rules:  # the same rule through two groups
            rules.append(rule)
    return PortFilterSpec(
        name=filter_name(prefix, row["port_id"]),
        port_id=row["port_id"],
        mac=row["mac_address"],
        ips=(row["fixed_ip"],) if row["fixed_ip"] else (),
        enabled=row["port_security_enabled"],
        rules=tuple(rules),
    )


@dataclass
class Firewall:
    """Pushes ports' filters to the hosts they are bound to (the NetworkAPI's host → driver mapping)."""

    pool: asyncpg.Pool
    config: Config
    hosts: Mapping[str, VirtDriver]  # the NetworkAPI's: it calls hosts_changed() when it adds or removes one
    # Groups whose members grew or shrank, refreshed by one background task (see refresh_groups_soon).
    _pending: set[str] = field(default_factory=set, init=False)
    _flusher: asyncio.Task | None = field(default=None, init=False)
    # The hosts that filter, read on every build and delete: a pass over 1,000 simulated hosts each time.
    _enforcing_hosts: list[str] | None = field(default=None, init=False)

    @property
    def prefix(self) -> str:
        return self.config.networking.libvirt_prefix

    def _enforcing(self) -> list[str]:
        """The hosts whose filters filter (simulated hosts' do not: their ports need no filter work)."""
        if self._enforcing_hosts is None:
            self._enforcing_hosts = [host for host, driver in self.hosts.items() if driver.enforces_port_filters]
        return self._enforcing_hosts

    def hosts_changed(self) -> None:
        """A host was added or removed: which hosts filter is read again."""
        self._enforcing_hosts = None

    def enforced_anywhere(self) -> bool:
        """Whether any host of this cloud filters: if none does, no filter depends on anything."""
        return bool(self._enforcing())

    async def _specs(self, port_ids: Iterable[str]) -> list[tuple[str, PortFilterSpec]]:
        """(host, spec) of each of the ports bound to a host of this cloud that enforces filters."""
        ids = list(dict.fromkeys(port_ids))
        hosts = self._enforcing()
        if not ids or not hosts:
            return []
        async with self.pool.acquire() as conn:
            rows = await q.filter_inputs(conn, ids, hosts)
        return [(r["host"], port_filter_spec(r, self.prefix)) for r in rows]

    async def refresh_ports(self, port_ids: Iterable[str], *, strict: bool = False) -> None:
        """Set the current filter of each port on its host. ``strict``: a failure raises (a build
        must not plug a NIC whose filter is missing); otherwise it is logged and the next
        change or start sets it."""
        for host, spec in await self._specs(port_ids):
            try:
                await self.hosts[host].set_port_filter(spec)
            except Exception:
                if strict:
                    raise
                log.warning("port_filter_set_failed", port_id=spec.port_id, host=host, exc_info=True)

    async def copy_to(self, port_ids: Iterable[str], host: str) -> None:
        """Set the ports' current filters on ``host`` too (a live migration's destination must have
        them before the guest's NICs arrive there); a host that does not filter: nothing."""
        driver = self.hosts.get(host)
        if driver is None or not driver.enforces_port_filters:
            return
        for _bound, spec in await self._specs(port_ids):
            await driver.set_port_filter(spec)

    async def refresh_groups(self, group_ids: Iterable[str]) -> None:
        """Refresh every port whose filter depends on the groups (members, and members of groups
        with rules naming them as remote group)."""
        group_ids = list(group_ids)
        if not group_ids or not self._enforcing():
            return
        async with self.pool.acquire() as conn:
            ports = await q.dependent_ports(conn, group_ids)
        await self.refresh_ports(ports)

    def refresh_groups_soon(self, group_ids: Iterable[str]) -> None:
        """Refresh the ports depending on the groups in the background, within moments: a boot
        storm's membership changes coalesce into a few refreshes instead of one per boot."""
        self._pending.update(group_ids)
        if self._pending and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            groups, self._pending = self._pending, set()
            try:
                await self.refresh_groups(groups)
            except Exception:
                log.warning("port_filters_refresh_failed", groups=len(groups), exc_info=True)

    async def close(self) -> None:
        """Finish the pending background refresh (at shutdown)."""
        if self._flusher is not None:
            await self._flusher

    async def remove(self, host: str | None, port_id: str) -> None:
        """Remove a port's filter from the host it was bound to (kept while a NIC still uses it)."""
        driver = self.hosts.get(host) if host else None
        if driver is None:
            return
        try:
            await driver.remove_port_filter(filter_name(self.prefix, port_id))
        except Exception:
            log.warning("port_filter_remove_failed", port_id=port_id, host=host, exc_info=True)

    async def sync_host(self, host: str, driver: VirtDriver) -> None:
        """At start: set the filter of every port bound to ``host``; remove this cloud's filters
        whose port is gone or bound elsewhere."""
        async with self.pool.acquire() as conn:
            port_ids = await q.bound_ports(conn, host)
        await self.refresh_ports(port_ids)
        wanted = {filter_name(self.prefix, p) for p in port_ids}
        stale = [n for n in await driver.port_filters(filter_name(self.prefix, "")) if n not in wanted]
        for name in stale:
            await driver.remove_port_filter(name)
        if stale:
            log.info("port_filters_reconciled", host=host, removed=len(stale), kept=len(wanted))
