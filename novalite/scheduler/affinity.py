"""The late server-group policy check a compute host runs before spawning
(Nova's ``ComputeManager._validate_instance_group_policy``).

The scheduler enforces affinity and anti-affinity on the host states it
loaded, but two requests scheduled at the same moment both saw the group as
it was before either claimed. So the host checks again against the claims
actually committed. Claims are ordered (allocations.created_at, taken after
the host row lock): the member that claimed first keeps its place and the
later one fails here, is rescheduled to an alternate, and the scheduler's
next look at the group includes the winner.
"""

from __future__ import annotations

import asyncpg


class GroupPolicyViolation(Exception):
    """This build would break its server group's hard policy on this host: reschedule it."""


async def validate_instance_group_policy(conn: asyncpg.Connection, instance_uuid: str, host: str) -> None:
    """Raise GroupPolicyViolation when an earlier-claimed member makes this host wrong for the instance."""
    group = await conn.fetchrow(
        """SELECT g.uuid, g.policy, g.rules, a.created_at AS claimed_at
             FROM instance_group_members m
             JOIN instance_groups g ON g.uuid = m.group_uuid
             LEFT JOIN allocations a ON a.instance_uuid = m.instance_uuid
            WHERE m.instance_uuid = $1::uuid""",
        instance_uuid,
    )
    if group is None or group["policy"] not in ("affinity", "anti-affinity"):
        return
    # Members that claimed before this instance did (uuid order breaks an exact tie).
    earlier = await conn.fetch(
        """SELECT a.host, count(*)::int AS n
             FROM instance_group_members m
             JOIN allocations a ON a.instance_uuid = m.instance_uuid
             JOIN instances i ON i.uuid = m.instance_uuid AND NOT i.deleted
            WHERE m.group_uuid = $1 AND m.instance_uuid <> $2::uuid
              AND ($3::timestamptz IS NULL OR (a.created_at, a.instance_uuid) < ($3, $2::uuid))
            GROUP BY a.host""",
        group["uuid"],
        instance_uuid,
        group["claimed_at"],
    )
    hosts = {r["host"]: r["n"] for r in earlier}
    if group["policy"] == "anti-affinity":
        limit = int((group["rules"] or {}).get("max_server_per_host", 1))
        here = hosts.get(host, 0)
        if here >= limit:
            raise GroupPolicyViolation(
                f"Anti-affinity instance group policy was violated: {here} member(s) of server group "
                f"{group['uuid']} already on {host} (max_server_per_host {limit})."
            )
    elif hosts and host not in hosts:
        raise GroupPolicyViolation(
            f"Affinity instance group policy was violated: server group {group['uuid']} is on "
            f"{', '.join(sorted(hosts))}, not {host}."
        )
