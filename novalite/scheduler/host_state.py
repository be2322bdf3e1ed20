"""Host states: every compute node with its usage, read from Postgres in one query."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from novalite.config import SchedulerConfig


@dataclass
class HostState:
    """What the filters and weighers know about one host for one scheduling request."""

    host: str
    nodename: str
    availability_zone: str
    vcpus: int
    memory_mb: int
    local_gb: int
    vcpus_used: int
    memory_mb_used: int
    disk_gb_used: int
    disabled: bool
    disabled_reason: str | None
    up: bool
    hypervisor_type: str
    cpu_arch: str
    cpu_allocation_ratio: float
    ram_allocation_ratio: float
    disk_allocation_ratio: float
    reserved_host_memory_mb: int
    reserved_host_disk_mb: int
    num_instances: int = 0
    instance_uuids: set[str] = field(default_factory=set)

    @property
    def free_ram_mb(self) -> float:
        """RAM still claimable, allocation ratio applied (negative when overcommitted)."""
        return self.memory_mb * self.ram_allocation_ratio - self.reserved_host_memory_mb - self.memory_mb_used

    @property
    def free_vcpus(self) -> float:
        return self.vcpus * self.cpu_allocation_ratio - self.vcpus_used

    @property
    def free_disk_gb(self) -> float:
        return self.local_gb * self.disk_allocation_ratio - self.reserved_host_disk_mb / 1024 - self.disk_gb_used

    def consume(self, vcpus: int, memory_mb: int, disk_gb: int, instance_uuid: str) -> None:
        """Account an instance just claimed here, for the rest of this request."""
        self.vcpus_used += vcpus
        self.memory_mb_used += memory_mb
        self.disk_gb_used += disk_gb
        self.num_instances += 1
        self.instance_uuids.add(instance_uuid)


async def load_host_states(conn: asyncpg.Connection, cfg: SchedulerConfig) -> list[HostState]:
    """All hosts with usage summed from allocations: one round trip, no per-host queries."""
    rows = await conn.fetch(
        """SELECT n.*, coalesce(a.vcpus, 0) AS vcpus_used, coalesce(a.memory_mb, 0) AS memory_mb_used,
                  coalesce(a.disk_gb, 0) AS disk_gb_used, coalesce(a.n, 0) AS num_instances,
                  coalesce(a.uuids, '{}') AS uuids
           FROM compute_nodes n
           LEFT JOIN (SELECT host, sum(vcpus) AS vcpus, sum(memory_mb) AS memory_mb, sum(disk_gb) AS disk_gb,
                             count(*) AS n, array_agg(instance_uuid::text) AS uuids
                      FROM allocations GROUP BY host) a ON a.host = n.host
           ORDER BY n.host"""
    )
    now = datetime.now(UTC)
    out = []
    for r in rows:
        up = (
            not r["forced_down"]
            and r["heartbeat_at"] is not None
            and (now - r["heartbeat_at"]).total_seconds() <= cfg.service_down_time
        )
        out.append(
            HostState(
                host=r["host"],
                nodename=r["hypervisor_hostname"],
                availability_zone=r["availability_zone"],
                vcpus=r["vcpus"],
                memory_mb=r["memory_mb"],
                local_gb=r["local_gb"],
                vcpus_used=r["vcpus_used"],
                memory_mb_used=r["memory_mb_used"],
                disk_gb_used=r["disk_gb_used"],
                disabled=r["disabled"],
                disabled_reason=r["disabled_reason"],
                up=up,
                hypervisor_type=r["hypervisor_type"],
                cpu_arch=r["cpu_arch"],
                cpu_allocation_ratio=cfg.cpu_allocation_ratio,
                ram_allocation_ratio=cfg.ram_allocation_ratio,
                disk_allocation_ratio=cfg.disk_allocation_ratio,
                reserved_host_memory_mb=cfg.reserved_host_memory_mb,
                reserved_host_disk_mb=cfg.reserved_host_disk_mb,
                num_instances=r["num_instances"],
                instance_uuids=set(r["uuids"]),
            )
        )
    return out
