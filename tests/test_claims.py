"""Claims written together (issue #22): the scheduler's claims on different hosts go in one
statement, and each is decided there as if it had been made alone — what fits is placed and
recorded, what no longer fits or whose instance left scheduling is refused and leaves nothing."""

from __future__ import annotations

import asyncpg
from conftest import add_image, start_cloud, stop_cloud, wait_for_status
from test_scheduler_api import boot, host_block

from novalite.api import keys
from novalite.scheduler.host_state import load_host_states
from novalite.scheduler.manager import Claim, claim_many


async def scheduling_copies(conn: asyncpg.Connection, source: str, n: int) -> list[str]:
    """New instances copied from ``source``, waiting in (building, scheduling) with no host."""
    rows = await conn.fetch(
        """INSERT INTO instances SELECT (jsonb_populate_record(NULL::instances, to_jsonb(i) || jsonb_build_object(
               'uuid', gen_random_uuid(), 'id', nextval(pg_get_serial_sequence('instances', 'id')),
               'vm_state', 'building', 'task_state', 'scheduling', 'host', NULL, 'node', NULL,
               'launched_on', NULL))).*
           FROM instances i, generate_series(1, $2) WHERE i.uuid = $1::uuid RETURNING uuid::text""",
        source, n)
    return [r["uuid"] for r in rows]


async def usage(conn: asyncpg.Connection) -> dict[str, tuple[int, int, int, int]]:
    rows = await conn.fetch("SELECT host, vcpus_used, memory_mb_used, disk_gb_used, instances_used FROM compute_nodes")
    return {r["host"]: tuple(r[1:]) for r in rows}


async def test_a_batch_of_claims_places_what_fits_and_refuses_the_rest(pg_dsn, tmp_path):
    cloud = await start_cloud(pg_dsn, tmp_path, hosts="".join(host_block(f"sim{i}") for i in (1, 2, 3)))
    try:
        image = await add_image(cloud)
        source = await boot(cloud, image)
        await wait_for_status(cloud, source, "ACTIVE")
        async with cloud.app[keys.DB].acquire() as conn:
            fits, too_big, gone = await scheduling_copies(conn, source, 3)
            await conn.execute("UPDATE instances SET task_state = 'deleting' WHERE uuid = $1::uuid", gone)
            hosts = {h.host: h for h in await load_host_states(conn, cloud.config.scheduler)}
            before = await usage(conn)

            made = await claim_many(conn, [
                Claim(hosts["sim2"], fits, 1, 512, 1),
                Claim(hosts["sim1"], too_big, 1, 100 * 16384, 1),  # more RAM than the host will ever have
                Claim(hosts["sim3"], gone, 1, 512, 1),  # its instance is being deleted meanwhile
            ])
            assert made == [True, False, False]

            placed = {r["uuid"]: r for r in await conn.fetch(
                "SELECT uuid::text, host, node, launched_on, availability_zone FROM instances"
                " WHERE uuid = ANY($1::uuid[])", [fits, too_big, gone])}
            assert tuple(placed[fits])[1:] == ("sim2", hosts["sim2"].nodename, "sim2", hosts["sim2"].availability_zone)
            assert placed[too_big]["host"] is None and placed[gone]["host"] is None
            allocations = await conn.fetch(
                "SELECT instance_uuid::text, host, vcpus, memory_mb, disk_gb FROM allocations"
                " WHERE instance_uuid = ANY($1::uuid[])", [fits, too_big, gone])
            assert [tuple(r) for r in allocations] == [(fits, "sim2", 1, 512, 1)]
            after = await usage(conn)
            assert after["sim2"] == tuple(a + b for a, b in zip(before["sim2"], (1, 512, 1, 1), strict=True))
            assert after["sim1"] == before["sim1"] and after["sim3"] == before["sim3"]
    finally:
        await stop_cloud(cloud)
