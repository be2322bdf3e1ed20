"""Upgrades: a database the previous release made, with data, brought to today's schema by the
numbered migrations; nothing lost, new columns at their defaults, the cloud serves it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from novalite import bootstrap, db
from novalite.config import load_config
from novalite.db.migrate import MIGRATIONS_DIR, SCHEMA_VERSION, migrations
from tests.conftest import REPO, fresh_database, start_cloud, stop_cloud, write_config

DEMO = "p-demo"
INSTANCE = "11111111-2222-3333-4444-555555555555"
NETWORK = "21111111-2222-3333-4444-555555555555"
SUBNET = "31111111-2222-3333-4444-555555555555"
PORT = "41111111-2222-3333-4444-555555555555"
IMAGE = "51111111-2222-3333-4444-555555555555"
VOLUME = "61111111-2222-3333-4444-555555555555"
GROUP = "71111111-2222-3333-4444-555555555555"

# Rows as the previous release wrote them (only 0001's columns).
RELEASE_1_DATA = f"""
INSERT INTO projects (id, name, description) VALUES ('{DEMO}', 'lab', 'a lab project');
INSERT INTO users (id, name, password_hash, default_project_id, email)
    VALUES ('u-alice', 'alice', 'x', '{DEMO}', 'alice@example.org');
INSERT INTO quotas (project_id, resource, hard_limit) VALUES ('{DEMO}', 'instances', 3);
INSERT INTO images (id, name, owner, status, visibility, disk_format, container_format, size,
                    properties, tags, min_disk)
    VALUES ('{IMAGE}', 'cirros', '{DEMO}', 'active', 'public', 'qcow2', 'bare', 1234,
            '{{"hw_disk_bus": "virtio"}}', '{{base}}', 1);
INSERT INTO compute_nodes (host, hypervisor_hostname, uuid, service_uuid, uri, availability_zone,
                           vcpus, memory_mb, local_gb)
    VALUES ('sim1', 'sim1', gen_random_uuid(), gen_random_uuid(), 'test:///x', 'nova', 8, 16384, 200);
INSERT INTO security_groups (id, project_id, name, description)
    VALUES ('{GROUP}', '{DEMO}', 'default', 'Default security group');
INSERT INTO instances (uuid, project_id, user_id, display_name, hostname, reservation_id, vm_state,
                       power_state, host, node, availability_zone, flavor, vcpus, memory_mb,
                       root_gb, ephemeral_gb, image_ref, metadata, security_groups, tags)
    VALUES ('{INSTANCE}', '{DEMO}', 'u-alice', 'web-1', 'web-1', 'r-1', 'stopped', 4, 'sim1', 'sim1',
            'nova', '{{"name": "m1.tiny", "flavorid": "1", "memory_mb": 512, "vcpus": 1,
                      "root_gb": 1, "ephemeral_gb": 0, "swap": 0, "extra_specs": {{}}}}',
            1, 512, 1, 0, '{IMAGE}', '{{"role": "web"}}', '{{default}}', '{{blue}}');
INSERT INTO instance_actions (id, action, instance_uuid, request_id, user_id, project_id, finish_time)
    VALUES (1, 'create', '{INSTANCE}', 'req-1', 'u-alice', '{DEMO}', now());
INSERT INTO instance_actions_events (action_id, event, finish_time, result, host)
    VALUES (1, 'compute__do_build_and_run_instance', now(), 'Success', 'sim1');
INSERT INTO allocations (instance_uuid, host, vcpus, memory_mb, disk_gb)
    VALUES ('{INSTANCE}', 'sim1', 1, 512, 1);
INSERT INTO networks (id, name, project_id, is_default, libvirt_name)
    VALUES ('{NETWORK}', 'private', 'p-admin', true, 'novalite-private');
INSERT INTO subnets (id, network_id, name, project_id, cidr, gateway_ip, pool_start, pool_end)
    VALUES ('{SUBNET}', '{NETWORK}', 'private-subnet', 'p-admin', '10.20.0.0/24', '10.20.0.1',
            '10.20.0.2', '10.20.0.254');
INSERT INTO ports (id, network_id, subnet_id, project_id, mac_address, fixed_ip, device_id,
                   device_owner, host, status)
    VALUES ('{PORT}', '{NETWORK}', '{SUBNET}', '{DEMO}', 'fa:16:3e:00:00:05', '10.20.0.5',
            '{INSTANCE}', 'compute:nova', 'sim1', 'DOWN');
INSERT INTO volumes (id, project_id, user_id, name, size, status, host, pool_name, vol_name)
    VALUES ('{VOLUME}', '{DEMO}', 'u-alice', 'data', 2, 'available', 'sim1', 'novalite-sim1', 'v-data');
"""


async def release_1_database(pg_dsn: str) -> str:
    """A database as the previous release left it: 0001's schema (at version 1) and its rows."""
    dsn = await fresh_database(pg_dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute((MIGRATIONS_DIR / "0001_initial.sql").read_text())
        await conn.execute(RELEASE_1_DATA)
    finally:
        await conn.close()
    return dsn


async def all_rows(conn: asyncpg.Connection) -> dict[str, list[dict]]:
    """Every row of every table, as JSON objects."""
    tables = [r["tablename"] for r in await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
    return {table: [json.loads(r["row"]) for r in await conn.fetch(f'SELECT to_jsonb(t) AS row FROM "{table}" t')]
            for table in tables}


def as_text(rows: list[dict], columns) -> list[str]:
    """Rows cut to `columns`, as sorted JSON texts: compared whatever their order."""
    return sorted(json.dumps({c: row[c] for c in columns}, sort_keys=True) for row in rows)


async def upgrade_dsn(dsn: str) -> int:
    pool = await db.create_pool(dsn, 1, 2)
    try:
        return await db.upgrade(pool)
    finally:
        await pool.close()


def novalite_cli(*args: str, dsn: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NOVALITE_DATABASE__DSN": f'"{dsn}"'}
    return subprocess.run([sys.executable, "-m", "novalite.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_migration_files_are_numbered_without_gaps():
    assert [n for n, _ in migrations()] == list(range(1, SCHEMA_VERSION + 1))
    assert SCHEMA_VERSION >= 2


async def test_upgrade_from_release_1_keeps_every_row_and_value(pg_dsn):
    dsn = await release_1_database(pg_dsn)
    conn = await asyncpg.connect(dsn)
    try:
        before = await all_rows(conn)
        assert await conn.fetchval("SELECT version FROM schema_version") == 1
        assert await upgrade_dsn(dsn) == SCHEMA_VERSION
        after = await all_rows(conn)
        assert await conn.fetchval("SELECT version FROM schema_version") == SCHEMA_VERSION

        for table, rows in before.items():
            if table == "schema_version":
                continue
            if rows:
                assert as_text(after[table], rows[0]) == as_text(rows, rows[0]), table

        # The new columns, at their defaults; networks of release 1 all came from config.
        net = after["networks"][0]
        assert (net["config_name"], net["external"], net["port_security_enabled"],
                net["admin_state_up"], net["description"]) == ("private", False, True, True, "")
        subnet = after["subnets"][0]
        assert (subnet["ip_version"], subnet["allocation_pools"], subnet["host_routes"]) == (4, [], [])
        port = after["ports"][0]
        assert (port["port_security_enabled"], port["admin_state_up"], port["description"]) == (True, True, "")
        group = after["security_groups"][0]
        assert (group["stateful"], group["revision_number"]) == (True, 1)
        assert after["compute_nodes"][0]["virt_type"] == "qemu"
        for table in ("security_group_rules", "port_security_groups", "network_quotas",
                      "virtual_interfaces", "console_auth_tokens"):
            assert after[table] == [], table
        # Two networks may now share a name (tenant networks), config names stay unique.
        await conn.execute("INSERT INTO networks (id, name, project_id, libvirt_name) "
                           "VALUES (gen_random_uuid(), 'private', $1, 'nl-t1')", DEMO)
    finally:
        await conn.close()


async def test_upgraded_release_1_database_serves_its_servers_ports_and_volumes(pg_dsn, tmp_path):
    dsn = await release_1_database(pg_dsn)
    config = load_config(write_config(tmp_path, dsn))
    pool = await db.create_pool(dsn, 1, 2)
    try:  # the previous release's first start: its users and credentials file
        bootstrap.save_credentials(config, await bootstrap.bootstrap(pool, config))
        demo = await pool.fetchval("SELECT id FROM projects WHERE name = 'demo'")
        for table in ("instances", "ports", "volumes", "security_groups", "instance_actions", "images"):
            column = "owner" if table == "images" else "project_id"
            await pool.execute(f"UPDATE {table} SET {column} = $1", demo)
    finally:
        await pool.close()

    cloud = await start_cloud(pg_dsn, tmp_path, dsn=dsn)  # the upgrade runs at start
    try:
        status, body, _ = await cloud.compute("GET", f"/servers/{INSTANCE}")
        assert status == 200, body
        server = body["server"]
        assert (server["name"], server["status"], server["metadata"]) == ("web-1", "SHUTOFF", {"role": "web"})
        assert server["addresses"]["private"][0]["addr"] == "10.20.0.5"
        status, body, _ = await cloud.request("GET", f"/compute/v2.1/servers/{INSTANCE}/os-instance-actions")
        assert [a["request_id"] for a in body["instanceActions"]] == ["req-1"]
        status, body, _ = await cloud.request("GET", "/networking/v2.0/networks?name=private")
        assert len(body["networks"]) == 1 and body["networks"][0]["id"] == NETWORK
        status, body, _ = await cloud.request("GET", f"/networking/v2.0/ports/{PORT}")
        assert body["port"]["fixed_ips"] == [{"subnet_id": SUBNET, "ip_address": "10.20.0.5"}]
        status, body, _ = await cloud.request("GET", f"/volume/v3/{demo}/volumes/{VOLUME}")
        assert (status, body["volume"]["name"], body["volume"]["size"]) == (200, "data", 2)
    finally:
        await stop_cloud(cloud)


async def test_upgrade_twice_changes_nothing(pg_dsn):
    dsn = await release_1_database(pg_dsn)
    assert await upgrade_dsn(dsn) == SCHEMA_VERSION
    conn = await asyncpg.connect(dsn)
    try:
        first = await all_rows(conn)
        assert await upgrade_dsn(dsn) == SCHEMA_VERSION
        assert await all_rows(conn) == first
    finally:
        await conn.close()


async def test_concurrent_upgrades_apply_each_migration_once(pg_dsn):
    dsn = await fresh_database(pg_dsn)
    pools = [await db.create_pool(dsn, 1, 1) for _ in range(2)]
    try:
        versions = await asyncio.gather(*(db.upgrade(pool) for pool in pools))
        assert versions == [SCHEMA_VERSION, SCHEMA_VERSION]
        assert await pools[0].fetchval("SELECT count(*) FROM schema_version") == 1
        assert await pools[0].fetchval("SELECT count(*) FROM roles") == 0
    finally:
        for pool in pools:
            await pool.close()


async def test_a_database_newer_than_the_code_is_refused(pg_dsn, tmp_path):
    dsn = await fresh_database(pg_dsn)
    assert await upgrade_dsn(dsn) == SCHEMA_VERSION
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(db.SchemaError, match="newer than this novalite"):
        await upgrade_dsn(dsn)

    result = novalite_cli("db", "upgrade", dsn=dsn, cwd=tmp_path)
    assert result.returncode == 2
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this novalite" in result.stderr
    assert "Traceback" not in result.stderr


async def test_db_upgrade_command_brings_an_empty_database_to_the_latest_version(pg_dsn, tmp_path):
    dsn = await fresh_database(pg_dsn)
    result = novalite_cli("db", "upgrade", dsn=dsn, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"schema version {SCHEMA_VERSION}"
