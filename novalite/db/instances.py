"""Queries for instances, their faults, actions, events, BDMs and notifications.

``compare_and_set`` is the ONE way instance state changes: an UPDATE guarded
by the (vm_state, task_state) the caller expects, so a delete during a build
or two actions at once cannot clobber each other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger(__name__)

ANY = object()  # an expectation that matches every value


def by_uuid(conditions: str) -> str:
    """``conditions`` on a row found by its uuid, checked on that one row only.

    Written as plain conditions (``NOT deleted``, a vm or task state), they let the planner scan
    a partial index instead of the primary key (``instances_vm_state``, ``_zone``, ``_in_flight``
    all hold only live rows): with statistics taken when few rows were live, a generic plan
    thinks that index nearly empty and then filters every live row for the uuid. A claim in a
    storm read 280 building rows that way. Inside ``IS TRUE`` the conditions match no index."""
    return f"({conditions}) IS TRUE"


def among(items: str, column: str = "i.uuid", key: str = "uuid") -> str:
    """``column`` is one of the ``key``s of ``items`` (a CTE of a batch, joined on it too), looked
    up in its index. Joined only, the planner takes a jsonb_to_recordset batch for 100 rows and
    hashes a scan of the whole table instead (1.5 ms for 1,000 instances, growing with the table);
    the array is a parameter of the plan, estimated at a few rows."""
    return f"{column} = ANY(ARRAY(SELECT {key} FROM {items}))"


class Not:
    """An expectation that matches every value except these."""

    def __init__(self, *values: Any) -> None:
        self.values = values

INSTANCE_COLUMNS = (
    "uuid",
    "project_id",
    "user_id",
    "display_name",
    "display_description",
    "hostname",
    "reservation_id",
    "launch_index",
    "vm_state",
    "task_state",
    "power_state",
    "availability_zone",
    "flavor",
    "vcpus",
    "memory_mb",
    "root_gb",
    "ephemeral_gb",
    "image_ref",
    "kernel_id",
    "ramdisk_id",
    "key_name",
    "key_data",
    "user_data",
    "config_drive",
    "auto_disk_config",
    "access_ip_v4",
    "access_ip_v6",
    "root_device_name",
    "metadata",
    "system_metadata",
    "security_groups",
    "tags",
    "injected_files",
    "requested_networks",
    "request_spec",
    "instance_group",
)
_UPDATABLE = set(INSTANCE_COLUMNS) | {
    "host",
    "node",
    "launched_on",
    "launched_at",
    "terminated_at",
    "deleted",
    "deleted_at",
    "locked",
    "locked_by",
    "locked_reason",
    "progress",
}


class StateConflict(Exception):
    """The instance was not in the state the caller expected (someone else moved it)."""

    def __init__(self, uuid: str, actual: asyncpg.Record | None) -> None:
        self.uuid = uuid
        self.actual = actual
        super().__init__(f"instance {uuid} is not in the expected state")


def _expect_clause(column: str, expected: Any, args: list) -> str:
    if expected is ANY:
        return "true"
    if isinstance(expected, Not):
        parts = []
        for value in expected.values:
            if value is None:
                parts.append(f"{column} IS NOT NULL")
            else:
                args.append(value)
                parts.append(f"{column} IS DISTINCT FROM ${len(args)}")
        return "(" + " AND ".join(parts or ["true"]) + ")"
    values = list(expected) if isinstance(expected, (list, tuple, set, frozenset)) else [expected]
    parts = []
    non_null = [v for v in values if v is not None]
    if None in values:
        parts.append(f"{column} IS NULL")
    if non_null:
        args.append(non_null)
        parts.append(f"{column} = ANY(${len(args)})")
    return "(" + " OR ".join(parts) + ")"


async def compare_and_set(
    conn: asyncpg.Connection,
    uuid: str,
    *,
    expect_vm_state: Any = ANY,
    expect_task_state: Any = ANY,
    allow_deleted: bool = False,
    **updates: Any,
) -> asyncpg.Record:
    """Set `updates` on an instance only if its states are among the expected ones.

    Returns the updated row; raises StateConflict (with the current row) otherwise.
    """
    bad = set(updates) - _UPDATABLE
    if bad:
        raise ValueError(f"not updatable: {bad}")
    args: list = [uuid]
    sets = ["updated_at = now()"]
    for key, value in updates.items():
        args.append(value)
        sets.append(f"{key} = ${len(args)}")
    where = [  # checked on the row of uuid $1
        _expect_clause("vm_state", expect_vm_state, args),
        _expect_clause("task_state", expect_task_state, args),
    ]
    if not allow_deleted:
        where.append("NOT deleted")
    row = await conn.fetchrow(
        f"UPDATE instances SET {', '.join(sets)} WHERE uuid = $1 AND {by_uuid(' AND '.join(where))} RETURNING *",
        *args,
    )
    if row is None:
        raise StateConflict(uuid, await get(conn, uuid, include_deleted=True))
    log.debug(
        "instance_state",
        instance_uuid=uuid,
        vm_state=row["vm_state"],
        task_state=row["task_state"],
        power_state=row["power_state"],
    )
    return row


# What a create answers with (the rest of the row, request_spec above all, is not read back).
PROVISIONED_COLUMNS = ("uuid", "launch_index", "auto_disk_config", "security_groups")

# Column types for jsonb_to_recordset, in INSTANCE_COLUMNS order.
_INSTANCE_TYPES = {
    "uuid": "uuid", "launch_index": "integer", "power_state": "integer", "flavor": "jsonb", "vcpus": "integer",
    "memory_mb": "integer", "root_gb": "integer", "ephemeral_gb": "integer", "auto_disk_config": "boolean",
    "access_ip_v4": "inet", "access_ip_v6": "inet", "metadata": "jsonb", "system_metadata": "jsonb",
    "security_groups": "text[]", "tags": "text[]", "injected_files": "jsonb", "requested_networks": "jsonb",
    "request_spec": "jsonb", "instance_group": "uuid",
}
_BDM_COLUMNS = {
    "instance_uuid": "uuid", "source_type": "text", "destination_type": "text", "device_name": "text",
    "boot_index": "integer", "image_id": "text", "volume_id": "text", "snapshot_id": "text",
    "volume_size": "integer", "device_type": "text", "disk_bus": "text", "guest_format": "text",
    "delete_on_termination": "boolean", "tag": "text", "volume_type": "text",
}


def _recordset(columns: dict[str, str]) -> str:
    return ", ".join(f"{c} {t}" for c, t in columns.items())


# The project's usage row, created if missing and locked to the end of the transaction;
# its latest committed counts (a concurrent holder is waited for, then re-read).
_LOCK_USAGE = """INSERT INTO project_usage AS u (project_id) VALUES ($1) ON CONFLICT (project_id)
                 DO UPDATE SET project_id = u.project_id RETURNING instances, cores, ram"""

_REQUEST_TYPES = {
    "i": "integer", "project_id": "text", "request_id": "text", "user_id": "text", "group_uuid": "uuid",
    "notification": "jsonb", "max_instances": "integer", "max_cores": "integer", "max_ram": "bigint",
}

# Many creates in ONE statement ($1 the requests, $2 their instance rows, $3 their BDMs; rows and
# BDMs carry their request's index i and their own order n). Each project's usage row is locked
# (all of a statement's projects in id order) and re-read once; a request is admitted when its
# project's usage plus everything asked by the requests before it in this statement (admitted or
# not: never over, sometimes too careful) is within its bounds. Per request, the usage after the
# statement's admitted requests (what a refused one re-plans from) and its new rows in launch order.
_PROVISION_SQL = f"""
WITH req AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS r({_recordset(_REQUEST_TYPES)})),
x AS MATERIALIZED (
    SELECT * FROM jsonb_to_recordset($2::jsonb)
        AS x({_recordset({c: _INSTANCE_TYPES.get(c, "text") for c in INSTANCE_COLUMNS})}, i integer, n integer)),
need AS (SELECT i, count(*) AS instances, sum(vcpus) AS cores, sum(memory_mb) AS ram FROM x GROUP BY i),
gate AS (
    INSERT INTO project_usage AS u (project_id) SELECT DISTINCT project_id FROM req ORDER BY project_id
    ON CONFLICT (project_id) DO UPDATE SET project_id = u.project_id RETURNING project_id, instances, cores, ram),
queue AS (
    SELECT r.*, k.instances, k.cores, k.ram,
           g.instances + coalesce(sum(k.instances) OVER ahead, 0) AS seen_instances,
           g.cores + coalesce(sum(k.cores) OVER ahead, 0) AS seen_cores,
           g.ram + coalesce(sum(k.ram) OVER ahead, 0) AS seen_ram
    FROM req r JOIN need k USING (i) JOIN gate g USING (project_id)
    WINDOW ahead AS (PARTITION BY r.project_id ORDER BY r.i ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)),
admitted AS MATERIALIZED (
    SELECT * FROM queue WHERE (max_instances IS NULL OR seen_instances <= max_instances)
        AND (max_cores IS NULL OR seen_cores <= max_cores) AND (max_ram IS NULL OR seen_ram <= max_ram)),
taken AS (SELECT project_id, sum(instances) AS instances, sum(cores) AS cores, sum(ram) AS ram
          FROM admitted GROUP BY project_id),
ins AS (
    INSERT INTO instances ({", ".join(INSTANCE_COLUMNS)})
    SELECT {", ".join(INSTANCE_COLUMNS)} FROM x WHERE i IN (SELECT i FROM admitted) ORDER BY n
    RETURNING {", ".join(PROVISIONED_COLUMNS)}),
made AS (SELECT ins.*, x.n, a.i, a.group_uuid, a.request_id, a.user_id, a.project_id, a.notification
         FROM ins JOIN x USING (uuid) JOIN admitted a ON a.i = x.i),
bdm AS (
    INSERT INTO block_device_mappings ({", ".join(_BDM_COLUMNS)})
    SELECT {", ".join(f"coalesce(b.{c}, false)" if c == "delete_on_termination" else f"b.{c}" for c in _BDM_COLUMNS)}
    FROM jsonb_to_recordset($3::jsonb) AS b({_recordset(_BDM_COLUMNS)}, n integer)
    WHERE b.instance_uuid IN (SELECT uuid FROM ins) ORDER BY b.n),
mem AS (
    INSERT INTO instance_group_members (group_uuid, instance_uuid)
    SELECT group_uuid, uuid FROM made WHERE group_uuid IS NOT NULL ORDER BY n),
act AS (
    INSERT INTO instance_actions (action, instance_uuid, request_id, user_id, project_id)
    SELECT 'create', uuid, request_id, user_id, project_id FROM made ORDER BY n),
note AS (
    INSERT INTO notifications (event_type, priority, publisher_id, instance_uuid, request_id, payload)
    SELECT 'instance.update', 'INFO', 'nova-api', uuid, request_id, notification FROM made ORDER BY n)
SELECT q.i, (g.instances + coalesce(t.instances, 0))::integer AS used_instances,
       (g.cores + coalesce(t.cores, 0))::integer AS used_cores, (g.ram + coalesce(t.ram, 0))::bigint AS used_ram,
       {", ".join(f"m.{c}" for c in PROVISIONED_COLUMNS)}
FROM queue q JOIN gate g USING (project_id) LEFT JOIN taken t USING (project_id) LEFT JOIN made m ON m.i = q.i
ORDER BY q.i, m.launch_index
"""


@dataclass(frozen=True, slots=True)
class Provision:
    """One create's instances to write (with their BDMs, group membership, 'create' actions and
    instance.update notifications) if the project's usage is within ``usage_bounds``: the most
    instances, cores and RAM it may already use (None: no bound)."""

    rows: Sequence[dict]
    bdms: Sequence[dict]
    group_uuid: str | None
    request_id: str
    user_id: str
    project_id: str
    notification: dict
    usage_bounds: Sequence[int | None] = (None, None, None)

    def request(self, i: int) -> dict:
        max_instances, max_cores, max_ram = self.usage_bounds
        return {"i": i, "project_id": self.project_id, "request_id": self.request_id, "user_id": self.user_id,
                "group_uuid": self.group_uuid, "notification": self.notification, "max_instances": max_instances,
                "max_cores": max_cores, "max_ram": max_ram}


Provisioned = tuple[list[asyncpg.Record], dict[str, int]]


async def provision_many(conn: asyncpg.Connection, creates: Sequence[Provision]) -> list[Provisioned]:
    """Many creates in ONE statement (one commit, one hold of each project's usage row). Per
    create, in order: the PROVISIONED_COLUMNS of its new rows in launch order (none when its
    project's usage did not fit it) and the project's usage after the statement. Never over: a
    create is admitted only if it would fit with every create before it in the statement admitted."""
    requests = [create.request(i) for i, create in enumerate(creates)]
    rows = [{**{c: r.get(c) for c in INSTANCE_COLUMNS}, "i": i} for i, create in enumerate(creates) for r in create.rows]
    bdms = [{c: b.get(c) for c in _BDM_COLUMNS} for create in creates for b in create.bdms]
    for n, record in enumerate(rows + bdms):  # the order they are written in
        record["n"] = n
    out: list[Provisioned] = [([], {}) for _ in creates]
    for r in await conn.fetch(_PROVISION_SQL, requests, rows, bdms):
        instances, used = out[r["i"]]
        used.update(instances=r["used_instances"], cores=r["used_cores"], ram=r["used_ram"])
        if r["uuid"] is not None:
            instances.append(r)
    return out


async def provision(conn: asyncpg.Connection, create: Provision) -> Provisioned:
    """One create on its own (:func:`provision_many`): the project's usage row is locked from
    the check to the commit, for this statement alone when the caller has no transaction open."""
    return (await provision_many(conn, [create]))[0]


async def lock_usage(conn: asyncpg.Connection, project_id: str) -> dict[str, int]:
    """The project's instance usage (instances, cores, ram), its row locked to the end of the
    caller's transaction: the same serialisation point a create's provisioning takes."""
    return dict(await conn.fetchrow(_LOCK_USAGE, project_id))


async def rederive_usage(conn: asyncpg.Connection) -> int:
    """Set every project's usage counters (kept by triggers, see migrations 0003 and 0005) to
    what its live instances and its ports (DHCP ports aside) add up to, in one transaction
    under the project rows' locks; run at each start, so nothing (a restore, a hand edit) can
    leave a quota off. Returns the rows fixed."""
    async with conn.transaction():
        fixed = await conn.fetchval(
            """WITH live AS (SELECT project_id, count(*) AS instances, sum(vcpus) AS cores,
                                    sum(memory_mb) AS ram
                             FROM instances WHERE NOT deleted GROUP BY project_id),
                    upsert AS (
                 INSERT INTO project_usage AS u (project_id, instances, cores, ram)
                 SELECT project_id, instances, cores, ram FROM live
                 ON CONFLICT (project_id) DO UPDATE SET instances = EXCLUDED.instances,
                     cores = EXCLUDED.cores, ram = EXCLUDED.ram
                  WHERE (u.instances, u.cores, u.ram) IS DISTINCT FROM
                        (EXCLUDED.instances, EXCLUDED.cores, EXCLUDED.ram)
                 RETURNING 1),
                    zero AS (
                 UPDATE project_usage u SET instances = 0, cores = 0, ram = 0
                  WHERE (u.instances, u.cores, u.ram) IS DISTINCT FROM (0, 0, 0)
                    AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.project_id = u.project_id AND NOT i.deleted)
                 RETURNING 1)
               SELECT (SELECT count(*) FROM upsert) + (SELECT count(*) FROM zero)""")
        fixed += await conn.fetchval(
            """WITH live AS (SELECT project_id, count(*) AS ports FROM ports
                             WHERE device_owner <> 'network:dhcp' GROUP BY project_id),
                    upsert AS (
                 INSERT INTO network_usage AS u (project_id, ports) SELECT project_id, ports FROM live
                 ON CONFLICT (project_id) DO UPDATE SET ports = EXCLUDED.ports WHERE u.ports <> EXCLUDED.ports
                 RETURNING 1),
                    zero AS (
                 UPDATE network_usage u SET ports = 0
                  WHERE u.ports <> 0 AND NOT EXISTS (SELECT 1 FROM live WHERE live.project_id = u.project_id)
                 RETURNING 1)
               SELECT (SELECT count(*) FROM upsert) + (SELECT count(*) FROM zero)""")
    return fixed


async def get(conn: asyncpg.Connection, uuid: str, include_deleted: bool = False) -> asyncpg.Record | None:
    if include_deleted:
        return await conn.fetchrow("SELECT * FROM instances WHERE uuid = $1", uuid)
    return await conn.fetchrow(f"SELECT * FROM instances WHERE uuid = $1 AND {by_uuid('NOT deleted')}", uuid)


async def get_with(conn: asyncpg.Connection, uuid: str, also: dict[str, str], *args: Any) -> asyncpg.Record | None:
    """The live instance's row (as :func:`get`) with, under their names, the values of the SQL
    expressions ``also`` of it (``i.uuid``, ``i.host``, ...; their parameters from $2: ``args``),
    in the same round trip."""
    extra = "".join(f", {sql} AS {name}" for name, sql in also.items())
    return await conn.fetchrow(
        f"SELECT i.*{extra} FROM instances i WHERE i.uuid = $1::uuid AND {by_uuid('NOT i.deleted')}", uuid, *args)


async def latest_faults(conn: asyncpg.Connection, uuids: Sequence[str]) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        """SELECT DISTINCT ON (instance_uuid) * FROM instance_faults
           WHERE instance_uuid = ANY($1::uuid[]) ORDER BY instance_uuid, id DESC""",
        list(uuids),
    )
    return {str(r["instance_uuid"]): r for r in rows}


async def bdms_for(conn: asyncpg.Connection, uuids: Sequence[str]) -> dict[str, list[asyncpg.Record]]:
    rows = await conn.fetch(
        """SELECT * FROM block_device_mappings WHERE instance_uuid = ANY($1::uuid[]) AND NOT deleted
           ORDER BY instance_uuid, boot_index NULLS LAST, id""",
        list(uuids),
    )
    out: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        out.setdefault(str(r["instance_uuid"]), []).append(r)
    return out


async def add_fault(
    conn: asyncpg.Connection, uuid: str, code: int, message: str, details: str = "", host: str | None = None
) -> None:
    await conn.execute(
        "INSERT INTO instance_faults (instance_uuid, code, message, details, host) VALUES ($1, $2, $3, $4, $5)",
        uuid,
        code,
        message[:255],
        details,
        host,
    )


# -- instance actions and events -----------------------------------------------

async def start_actions(
    conn: asyncpg.Connection, uuids: Sequence[str], action: str, request_id: str, user_id: str, project_id: str
) -> None:
    await conn.execute(
        """INSERT INTO instance_actions (action, instance_uuid, request_id, user_id, project_id)
           SELECT $1, u, $3, $4, $5 FROM unnest($2::uuid[]) AS u""",
        action,
        list(uuids),
        request_id,
        user_id,
        project_id,
    )


# A DELETE's start in one statement (it was a transaction of four round trips): the instance is
# marked deleting unless it is already, and the request's 'delete' action recorded with it. The
# last two columns read the row as it was before (a statement does not see its own changes).
_MARK_DELETING = f"""
WITH cas AS (
    UPDATE instances SET updated_at = now(), task_state = 'deleting'
     WHERE uuid = $1 AND {by_uuid("task_state IS DISTINCT FROM 'deleting' AND NOT deleted")}
    RETURNING uuid),
act AS (
    INSERT INTO instance_actions (action, instance_uuid, request_id, user_id, project_id)
    SELECT 'delete', uuid, $2, $3, $4 FROM cas)
SELECT EXISTS (SELECT 1 FROM cas) AS marked, (SELECT NOT deleted FROM instances WHERE uuid = $1) AS live"""


async def mark_deleting(
    conn: asyncpg.Connection, uuid: str, request_id: str, user_id: str, project_id: str
) -> bool | None:
    """Mark the instance deleting and start its 'delete' action: True when this call marked it,
    False when a delete was under way already; None when there is no such (live) instance."""
    row = await conn.fetchrow(_MARK_DELETING, uuid, request_id, user_id, project_id)
    if row["marked"]:
        return True
    return False if row["live"] else None


async def finish_action(conn: asyncpg.Connection, uuid: str, request_id: str, message: str | None = None) -> None:
    await conn.execute(
        """UPDATE instance_actions SET finish_time = now(), updated_at = now(), message = coalesce($3, message)
           WHERE instance_uuid = $1 AND request_id = $2 AND finish_time IS NULL""",
        uuid,
        request_id,
        message,
    )


async def event_start(conn: asyncpg.Connection, uuid: str, request_id: str, event: str, host: str | None) -> None:
    """Record an action event as started (on the action of that request)."""
    await conn.execute(
        """INSERT INTO instance_actions_events (action_id, event, host)
           SELECT id, $3, $4 FROM instance_actions WHERE instance_uuid = $1 AND request_id = $2
           ORDER BY id DESC LIMIT 1""",
        uuid,
        request_id,
        event,
        host,
    )


async def event_start_notify(
    conn: asyncpg.Connection, uuid: str, request_id: str, event: str, host: str | None, event_type: str,
    payload: dict, publisher_id: str,
) -> None:
    """:func:`event_start` and :func:`notify` (for this instance) in one statement."""
    await conn.execute(
        """WITH ev AS (
               INSERT INTO instance_actions_events (action_id, event, host)
               SELECT id, $3, $4 FROM instance_actions WHERE instance_uuid = $1 AND request_id = $2
               ORDER BY id DESC LIMIT 1)
           INSERT INTO notifications (event_type, priority, publisher_id, instance_uuid, request_id, payload)
           VALUES ($5, 'INFO', $6, $1, $2, $7)""",
        uuid, request_id, event, host, event_type, publisher_id, payload,
    )
    log.info("notification", event_type=event_type, publisher_id=publisher_id, instance_uuids=[uuid])


async def event_finish(
    conn: asyncpg.Connection,
    uuid: str,
    request_id: str,
    event: str,
    result: str = "Success",
    traceback: str | None = None,
    details: str | None = None,
) -> None:
    """Finish the latest open event of that name; create it when it was never started."""
    done = await conn.fetchval(
        """WITH a AS (SELECT id FROM instance_actions WHERE instance_uuid = $1 AND request_id = $2
                      ORDER BY id DESC LIMIT 1),
                e AS (SELECT ev.id FROM instance_actions_events ev, a
                      WHERE ev.action_id = a.id AND ev.event = $3 AND ev.finish_time IS NULL
                      ORDER BY ev.id DESC LIMIT 1)
           UPDATE instance_actions_events SET finish_time = now(), result = $4, traceback = $5, details = $6
           WHERE id = (SELECT id FROM e) RETURNING id""",
        uuid,
        request_id,
        event,
        result,
        traceback,
        details,
    )
    if done is None:
        await conn.execute(
            """INSERT INTO instance_actions_events (action_id, event, finish_time, result, traceback, details)
               SELECT id, $3, now(), $4, $5, $6 FROM instance_actions
               WHERE instance_uuid = $1 AND request_id = $2 ORDER BY id DESC LIMIT 1""",
            uuid,
            request_id,
            event,
            result,
            traceback,
            details,
        )


async def interrupt_open_events(conn: asyncpg.Connection, uuid: str, request_id: str, note: str) -> list[str]:
    """Finish, as errors, the events of this request's action that never finished; return their names."""
    rows = await conn.fetch(
        """UPDATE instance_actions_events SET finish_time = now(), result = 'Error', details = $3
           WHERE finish_time IS NULL AND action_id = (
               SELECT id FROM instance_actions WHERE instance_uuid = $1 AND request_id = $2
               ORDER BY id DESC LIMIT 1)
           RETURNING event""",
        uuid, request_id, note,
    )
    return [r["event"] for r in rows]


# The records of many schedulings in one statement: per scheduling its notifications and verdict
# rows (the scheduler's) and its finished event for each instance that got a host (the conductor's).
_RECORD_SCHEDULES = """
WITH r AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS r(
        i integer, uuids uuid[], request_id text, start_payload jsonb, started_at timestamptz, verdicts jsonb,
        end_payload jsonb, event text, event_started_at timestamptz, scheduled jsonb)),
verdicts AS (
    INSERT INTO scheduling_verdicts (instance_uuid, request_id, host, summary, verdicts)
    SELECT v.instance_uuid, r.request_id, v.host, v.summary, v.verdicts
      FROM r CROSS JOIN LATERAL jsonb_to_recordset(r.verdicts)
                                AS v(instance_uuid uuid, host text, summary text, verdicts jsonb)),
events AS (
    INSERT INTO instance_actions_events (action_id, event, start_time, finish_time, result, details)
    SELECT a.id, r.event, r.event_started_at, now(), 'Success', d.details
      FROM r CROSS JOIN LATERAL jsonb_to_recordset(r.scheduled) AS d(u uuid, details text)
      CROSS JOIN LATERAL (SELECT id FROM instance_actions WHERE instance_uuid = d.u AND request_id = r.request_id
                          ORDER BY id DESC LIMIT 1) AS a)
INSERT INTO notifications (event_type, priority, publisher_id, instance_uuid, request_id, payload, created_at)
SELECT n.event_type, 'INFO', 'nova-scheduler', u.u, r.request_id, n.payload, n.at
  FROM r CROSS JOIN LATERAL (VALUES (1, 'scheduler.select_destinations.start', r.start_payload, r.started_at),
                                    (2, 'scheduler.select_destinations.end', r.end_payload, now()))
                            AS n(ord, event_type, payload, at)
 CROSS JOIN LATERAL unnest(r.uuids) WITH ORDINALITY AS u(u, k)
 ORDER BY r.i, n.ord, u.k
"""


@dataclass(frozen=True)
class ScheduleRecord:
    """What one scheduling leaves: the scheduler's record (scheduler.manager.scheduling_record) of
    ``uuids``, and the conductor's ``event`` (started at ``event_started_at``) finished for each
    instance in ``scheduled`` (uuid, details) that got a host."""

    uuids: Sequence[str]
    request_id: str
    record: dict
    event: str
    event_started_at: datetime
    scheduled: Sequence[tuple[str, str]]


async def record_schedules(conn: asyncpg.Connection, records: list[ScheduleRecord]) -> list[None]:
    """The records of many schedulings in ONE statement (a ``db.batch.BatchWriter`` sends those of
    concurrent schedulings together); one None per record."""
    await conn.execute(_RECORD_SCHEDULES, [
        {"i": i, "uuids": list(r.uuids), "request_id": r.request_id, "start_payload": r.record["start_payload"],
         "started_at": r.record["started_at"], "verdicts": r.record["verdicts"], "end_payload": r.record["end_payload"],
         "event": r.event, "event_started_at": r.event_started_at,
         "scheduled": [{"u": u, "details": d} for u, d in r.scheduled]}
        for i, r in enumerate(records)
    ])
    return [None] * len(records)


async def record_schedule(
    conn: asyncpg.Connection,
    uuids: Sequence[str],
    request_id: str,
    record: dict,
    *,
    event: str,
    event_started_at: datetime,
    scheduled: Sequence[tuple[str, str]],
) -> None:
    """One scheduling's record (record_schedules) on its own."""
    await record_schedules(conn, [ScheduleRecord(uuids, request_id, record, event, event_started_at, scheduled)])


async def list_actions(conn: asyncpg.Connection, uuid: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM instance_actions WHERE instance_uuid = $1 ORDER BY start_time DESC, id DESC", uuid
    )


async def get_action(conn: asyncpg.Connection, uuid: str, request_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM instance_actions WHERE instance_uuid = $1 AND request_id = $2 ORDER BY id DESC LIMIT 1",
        uuid,
        request_id,
    )


async def list_events(conn: asyncpg.Connection, action_id: int) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM instance_actions_events WHERE action_id = $1 ORDER BY id", action_id)


# -- notifications ---------------------------------------------------------------

async def notify(
    conn: asyncpg.Connection,
    event_type: str,
    payload: dict,
    *,
    publisher_id: str,
    instance_uuids: Sequence[str] = (),
    request_id: str | None = None,
    priority: str = "INFO",
) -> None:
    """Store a versioned notification (one row per instance) and log it."""
    uuids = list(instance_uuids) or [None]
    await conn.execute(
        """INSERT INTO notifications (event_type, priority, publisher_id, instance_uuid, request_id, payload)
           SELECT $1, $2, $3, u, $5, $6 FROM unnest($4::uuid[]) AS u""",
        event_type,
        priority,
        publisher_id,
        uuids,
        request_id,
        payload,
    )
    log.info("notification", event_type=event_type, publisher_id=publisher_id, instance_uuids=[str(u) for u in uuids if u])


# The ends of deletes, many in one statement: each instance still being deleted is marked
# deleted, its claim and group memberships go, its BDMs are marked deleted, its terminate event
# is finished (or recorded finished, as event_finish does), its action is finished and its
# instance.delete.end stored. One commit for many: every delete changes its project's usage
# row (a trigger), which a project's deletes and creates would otherwise take one commit at a time.
# The hosts whose usage counters the deleted claims change (another trigger) are locked first, in
# host order, before the instances' rows, as a batch of claims locks them: two batches never hold
# one row each and wait for the other's.
_FINISH_DELETES = f"""
WITH x AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(i integer, uuid uuid, request_id text, publisher text,
                                                            event text, power_state integer)),
hosts AS MATERIALIZED (SELECT host FROM compute_nodes WHERE host = ANY(ARRAY(
                          SELECT a.host FROM allocations a WHERE {among("x", "a.instance_uuid")}))
                       ORDER BY host FOR UPDATE),
inst AS (
    UPDATE instances i SET updated_at = now(), vm_state = 'deleted', task_state = NULL, power_state = x.power_state,
        deleted = true, deleted_at = now(), terminated_at = now()
    FROM x WHERE i.uuid = x.uuid AND {among("x")} AND {by_uuid("NOT i.deleted AND i.task_state = 'deleting'")}
      AND (SELECT count(*) FROM hosts) >= 0
    RETURNING i.uuid),
alloc AS (DELETE FROM allocations a USING inst WHERE a.instance_uuid = inst.uuid),
members AS (DELETE FROM instance_group_members m USING inst WHERE m.instance_uuid = inst.uuid),
bdms AS (UPDATE block_device_mappings b SET deleted = true FROM inst WHERE b.instance_uuid = inst.uuid),
act AS (SELECT DISTINCT ON (x.uuid) a.id, x.event FROM x JOIN inst ON inst.uuid = x.uuid
        JOIN instance_actions a ON a.instance_uuid = x.uuid AND a.request_id = x.request_id
        ORDER BY x.uuid, a.id DESC),
open_event AS (SELECT DISTINCT ON (act.id) act.id AS action_id, e.id FROM act
               JOIN instance_actions_events e ON e.action_id = act.id AND e.event = act.event AND e.finish_time IS NULL
               ORDER BY act.id, e.id DESC),
fin AS (UPDATE instance_actions_events e SET finish_time = now(), result = 'Success', traceback = NULL, details = NULL
        FROM open_event o WHERE e.id = o.id),
never AS (INSERT INTO instance_actions_events (action_id, event, finish_time, result)
          SELECT act.id, act.event, now(), 'Success' FROM act
          WHERE NOT EXISTS (SELECT 1 FROM open_event o WHERE o.action_id = act.id)),
af AS (UPDATE instance_actions a SET finish_time = now(), updated_at = now()
       FROM x JOIN inst ON inst.uuid = x.uuid
       WHERE a.instance_uuid = x.uuid AND a.request_id = x.request_id AND a.finish_time IS NULL),
n AS (INSERT INTO notifications (event_type, priority, publisher_id, instance_uuid, request_id, payload)
      SELECT 'instance.delete.end', 'INFO', x.publisher, x.uuid, x.request_id, $2::jsonb
      FROM x JOIN inst ON inst.uuid = x.uuid)
SELECT x.i, inst.uuid IS NOT NULL AS done FROM x LEFT JOIN inst ON inst.uuid = x.uuid"""


@dataclass(frozen=True)
class DeleteEnd:
    """The end of one instance's delete: who deleted it (the request) and who reports it."""

    uuid: str
    request_id: str
    publisher_id: str  # of its instance.delete.end
    event: str  # the action event the delete finishes
    power_state: int  # the deleted instance's


async def finish_deletes(conn: asyncpg.Connection, ends: list[DeleteEnd]) -> list[None | StateConflict]:
    """The ends of deletes (at most one per instance) in one statement (_FINISH_DELETES); per
    delete None, or StateConflict (with the current row) when the instance was no longer being
    deleted, and then nothing of it changed."""
    rows = await conn.fetch(
        _FINISH_DELETES,
        [{"i": i, "uuid": e.uuid, "request_id": e.request_id, "publisher": e.publisher_id, "event": e.event,
          "power_state": e.power_state} for i, e in enumerate(ends)],
        {"state": "deleted"},
    )
    out: list[None | StateConflict] = [None] * len(ends)
    for row in rows:
        end = ends[row["i"]]
        if row["done"]:
            log.info("notification", event_type="instance.delete.end", publisher_id=end.publisher_id,
                     instance_uuids=[end.uuid])
        else:
            out[row["i"]] = StateConflict(end.uuid, await get(conn, end.uuid, include_deleted=True))
    return out


def iso(ts: datetime | None) -> str | None:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ") if ts else None


def dumps(value: Any) -> str:
    return json.dumps(value, default=str)


async def latest_verdicts(conn: asyncpg.Connection, instance_uuid: str) -> asyncpg.Record | None:
    """The newest scheduling verdicts of an instance, or None if it was never scheduled."""
    return await conn.fetchrow(
        """SELECT request_id, host, summary, verdicts, created_at FROM scheduling_verdicts
           WHERE instance_uuid = $1::uuid ORDER BY id DESC LIMIT 1""",
        instance_uuid,
    )


async def count_by_state(conn: asyncpg.Connection) -> list[tuple[str, str, int]]:
    """Instances not deleted, counted by (vm_state, task_state or "none"): a few rows however many
    instances there are (metrics read it at scrape; 5 s at most)."""
    rows = await conn.fetch(
        "SELECT vm_state, coalesce(task_state, 'none') AS task_state, count(*) AS n FROM instances"
        " WHERE NOT deleted GROUP BY 1, 2", timeout=5)
    return [(r["vm_state"], r["task_state"], r["n"]) for r in rows]


async def count_on_host(conn: asyncpg.Connection, host: str) -> int:
    """Instances not deleted whose host is ``host`` (a host with any cannot be removed)."""
    return await conn.fetchval("SELECT count(*) FROM instances WHERE host = $1 AND NOT deleted", host)
