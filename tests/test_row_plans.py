"""A server's row looked up by its uuid is read through the primary key, whatever the statistics say.

After every server of a cloud is deleted and the table analysed, Postgres thinks the partial indexes
of live rows (``WHERE NOT deleted``: vm_state, zone, in-flight, ...) empty, and a generic plan of
``uuid = $1 AND NOT deleted`` scans one of them and filters the uuid out of every live row: in the
next storm, each claim read every building row (issue #22). The statements of the boot path check
their conditions on the one row the primary key finds (db.instances.by_uuid).
"""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from conftest import add_image, wait_for_status
from test_scheduler_api import boot

from novalite import db as novalite_db
from novalite.db import instances as db
from novalite.db import networks, server_list, steps
from novalite.scheduler import manager


async def generic_plan(conn: asyncpg.Connection, name: str, sql: str, args: str) -> str:
    """The plan Postgres caches for ``sql`` once it stops planning per call (a generic plan)."""
    await conn.execute(f"PREPARE {name} AS {sql}")
    rows = await conn.fetch(f"EXPLAIN EXECUTE {name}({args})")
    return "\n".join(r[0] for r in rows)


async def test_uuid_lookups_use_the_primary_key_when_no_row_is_live(cloud):
    image = await add_image(cloud)
    uuids = [await boot(cloud, image) for _ in range(3)]
    for uuid in uuids:
        await wait_for_status(cloud, uuid, "ACTIVE")
        status, _, _ = await cloud.compute("DELETE", f"/servers/{uuid}")
        assert status == 204
    for uuid in uuids:
        await wait_for_status(cloud, uuid, "DELETED", user="admin")

    conn = await asyncpg.connect(cloud.config.database.dsn)
    try:
        sent: list[str] = []  # what the boot path's helpers send, as they build it
        conn.add_query_logger(lambda record: sent.append(record.query))
        assert await db.get(conn, uuids[0]) is None
        with pytest.raises(db.StateConflict):
            await db.compare_and_set(conn, uuids[0], expect_vm_state="active", expect_task_state=None,
                                     task_state="deleting")
        get_sql, cas_sql = sent[0], sent[1]

        # A table of months (a one-page table is read whole, whatever the indexes): deleted copies.
        await conn.execute(
            """INSERT INTO instances SELECT (jsonb_populate_record(NULL::instances, to_jsonb(i) || jsonb_build_object(
                   'uuid', gen_random_uuid(), 'id', nextval(pg_get_serial_sequence('instances', 'id'))))).*
               FROM instances i, generate_series(1, 1000)""")
        await conn.execute("ANALYZE instances")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        some = f"'{uuids[0]}'"
        plain = await generic_plan(conn, "plain", "SELECT * FROM instances WHERE uuid = $1 AND NOT deleted", some)
        # The trap the guard avoids: the statistics show no live row, so a partial index looks free.
        assert "instances_pkey" not in plain, plain
        for name, sql, args in (
            ("get", get_sql, some),
            ("cas", cas_sql, f"{some}, 'deleting', '{{active}}'"),
        ):
            plan = await generic_plan(conn, name, sql, args)
            assert "Index Scan using instances_pkey on instances" in plan, f"{name}:\n{plan}"
        # A batch (claims, a build's steps, deletes' ends) finds its rows through the primary key too,
        # not by hashing a scan of every row against jsonb_to_recordset's guess of 100 items.
        for name, sql, args in (("claims", manager._CLAIMS, "'[]'"), ("steps", steps._STEPS_UUID_SQL, "'[]'"),
                                ("delete_ends", db._FINISH_DELETES, "'[]', '{}'")):
            plan = await generic_plan(conn, name, sql, args)
            assert "Seq Scan on instance" not in plan and "instances_pkey" in plan, f"{name}:\n{plan}"
    finally:
        await conn.close()


async def test_a_servers_ports_are_found_through_the_device_index(cloud):
    """ports_device holds bound ports only (``WHERE device_id <> ''``): a lookup by device says so too,
    or a generic plan (a parameter) and the show's correlated one (the row's uuid) cannot use it and
    read every port. The show read 20,000 ports (2.4 ms) for each GET on a lived database."""
    image = await add_image(cloud)
    uuid = await boot(cloud, image, networks="auto")  # a port on the cloud's shared network
    await wait_for_status(cloud, uuid, "ACTIVE")
    conn = await asyncpg.connect(cloud.config.database.dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ports WHERE device_id = $1", uuid) == 1
        # Other servers' ports (without addresses), enough that reading them all costs more than the index.
        await conn.execute(
            """INSERT INTO ports SELECT (jsonb_populate_record(NULL::ports, to_jsonb(p) || jsonb_build_object(
                   'id', gen_random_uuid(), 'device_id', gen_random_uuid()::text, 'fixed_ip', NULL,
                   'subnet_id', NULL, 'mac_address', 'fa:16:3e:' || lpad(to_hex(g), 6, '0')))).*
               FROM ports p, generate_series(1, 3000) AS g WHERE p.device_id = $1""", uuid)
        await conn.execute("ANALYZE ports")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        sent: list[str] = []
        conn.add_query_logger(lambda record: sent.append(record.query))
        row = await server_list.server_shown(conn, uuid, addresses=True, groups=True)
        assert len(json.loads(row["addresses"])) == 1  # (a plain connection: JSON as text)
        assert len(await networks.ports_for_device(conn, uuid)) == 1
        await asyncio.sleep(0.05)  # query loggers are called soon after, not during, the query
        shown_sql = next(q for q in sent if q.lstrip().startswith("SELECT i.*"))
        assert not [q for q in sent if "typeinfo" in q]  # no composite type to look up per connection
        ports_sql = next(q for q in sent if "p.device_id = $1" in q)
        for name, sql, args in (("shown", shown_sql, f"'{uuid}', 0"), ("ports", ports_sql, f"'{uuid}'")):
            plan = await generic_plan(conn, name, sql, args)
            assert "Seq Scan on ports" not in plan and "ports_device" in plan, f"{name}:\n{plan}"
        # Left to choose, Postgres plans a device's port lookup once per connection, not per call
        # (as `= ANY($1)` it was costed for several devices and planned anew every time).
        await conn.execute("RESET plan_cache_mode")
        for _ in range(8):
            await networks.ports_for_device(conn, uuid)
        generic, custom = await conn.fetchrow(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1", ports_sql)
        assert custom <= 5 and generic >= 3, (generic, custom)
    finally:
        await conn.close()


async def test_a_pooled_connection_looks_no_type_up_while_serving(cloud):
    """asyncpg has no codec of its own for uuid[] and looks it up on a connection's first statement
    with one (three round trips, 5-8 ms): the pool's connections do it when they open, not in the
    first delete each of them serves."""
    pool = await novalite_db.create_pool(cloud.config.database.dsn, 1, 1)
    try:
        async with pool.acquire() as conn:
            sent: list[str] = []
            conn.add_query_logger(lambda record: sent.append(record.query))
            await networks.release_ports(conn, [[]])
            await asyncio.sleep(0.05)  # query loggers are called soon after, not during, the query
        assert any("DELETE FROM ports" in q for q in sent) and not [q for q in sent if "typeinfo" in q]
    finally:
        await pool.close()
