"""Prometheus metrics as an operator reads them: GET /metrics for admins (403 for members),
the separate plain listener, and the values after a few boots and one NoValidHost.

Counters are the process's (several clouds run in one test session), so the tests read
what changed between two scrapes, as a Prometheus ``increase()`` does; gauges are read as they are."""

from __future__ import annotations

import asyncio

import pytest
from conftest import add_image, free_port, start_cloud, stop_cloud, wait_for_status
from prometheus_client.parser import text_string_to_metric_families

from novalite.api import keys
from novalite.config import ConfigError, load_config

HOSTS = "".join(
    f'[[hosts]]\nname = "{name}"\nsimulate = {{ vcpus = 8, memory_mb = 4096, disk_gb = 200 }}\n\n'
    for name in ("msim1", "msim2")
)
TIGHT = "[scheduler]\nram_allocation_ratio = 1.0\nreserved_host_memory_mb = 0\n"

Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(cloud, user: str = "admin") -> tuple[int, str, str]:
    headers = {"X-Auth-Token": await cloud.token(user)}
    async with cloud.session.get(f"{cloud.url}/metrics", headers=headers) as r:
        return r.status, await r.text(), r.headers.get("Content-Type", "")


async def boot(cloud, image: str, flavor: str = "1") -> str:
    body = {"server": {"name": "vm", "imageRef": image, "flavorRef": flavor, "networks": "none"}}
    status, out, _ = await cloud.compute("POST", "/servers", json_body=body, version="2.latest")
    assert status == 202, out
    return out["server"]["id"]


async def test_metrics_after_boots_and_a_no_valid_host(pg_dsn, tmp_path):
    cloud = await start_cloud(pg_dsn, tmp_path, extra=TIGHT, hosts=HOSTS)
    try:
        image = await add_image(cloud)
        status, text, ctype = await scrape(cloud)
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        before = parse(text)

        uuids = await asyncio.gather(*(boot(cloud, image) for _ in range(3)))
        for uuid in uuids:
            await wait_for_status(cloud, uuid, "ACTIVE")
        refused = await boot(cloud, image, flavor="4")  # 8 GB on 4 GB hosts
        server = await wait_for_status(cloud, refused, "ERROR", user="admin")
        assert "RamFilter" in server["fault"]["message"]

        status, text, _ = await scrape(cloud)
        assert status == 200
        after = parse(text)

        def increase(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert increase("novalite_boots_total", outcome="active") == 3
        assert increase("novalite_boots_total", outcome="error") == 1
        assert increase("novalite_scheduler_decisions_total", result="scheduled") == 3
        assert increase("novalite_scheduler_decisions_total", result="no_valid_host") == 1
        assert increase("novalite_scheduler_no_valid_host_total", filter="RamFilter") == 1
        assert increase("novalite_build_step_duration_seconds_count", step="scheduling") == 4
        for step in ("networking", "block_device_mapping", "spawning"):
            assert increase("novalite_build_step_duration_seconds_count", step=step) == 3, step
        assert increase("novalite_api_request_duration_seconds_count",
                        method="POST", route="/compute/v2.1/servers", status="202") == 4
        assert increase("novalite_api_request_duration_seconds_count",
                        method="GET", route="/compute/v2.1/servers/{server_id}", status="200") >= 4
        assert increase("novalite_token_cache_total", result="hit") > 0
        spawns = sum(increase("novalite_libvirt_call_duration_seconds_count", host=h, call="spawn")
                     for h in ("msim1", "msim2"))
        assert spawns == 3

        # Gauges: what the cloud holds now.
        for host in ("msim1", "msim2"):
            assert value(after, "novalite_host_up", host=host) == 1
            assert value(after, "novalite_host_memory_bytes", host=host) == 4096 * 1024 * 1024
            assert value(after, "novalite_host_vcpus", host=host) == 8
        assert sum(value(after, "novalite_host_instances", host=h) for h in ("msim1", "msim2")) == 3
        assert sum(value(after, "novalite_host_memory_used_bytes", host=h) for h in ("msim1", "msim2")) == \
            3 * 512 * 1024 * 1024
        assert value(after, "novalite_instances", vm_state="active", task_state="none") == 3
        assert value(after, "novalite_instances", vm_state="error", task_state="none") == 1
        assert value(after, "novalite_queue_depth", service="conductor") == 0
        assert ("novalite_host_builds", frozenset({("host", "msim1")})) in after
        assert value(after, "novalite_db_pool_max_connections", pool="api") == cloud.config.database.pool_max
        assert value(after, "novalite_db_pool_connections", pool="api") >= 1

        # A member is refused in Nova's shape.
        status, text, _ = await scrape(cloud, user="demo")
        assert status == 403 and "forbidden" in text and "novalite:metrics" in text
    finally:
        await stop_cloud(cloud)


async def test_separate_listener_serves_without_a_token(pg_dsn, tmp_path):
    port = free_port()
    cloud = await start_cloud(pg_dsn, tmp_path, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n', hosts=HOSTS)
    try:
        async with cloud.session.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200
            samples = parse(await r.text())
        assert value(samples, "novalite_host_up", host="msim1") == 1
        assert value(samples, "novalite_db_pool_max_connections", pool="workers") > 0
        # Not on the API port then.
        status, _, _ = await scrape(cloud)
        assert status == 404
    finally:
        await stop_cloud(cloud)


async def test_disabled_metrics_are_not_served(pg_dsn, tmp_path):
    cloud = await start_cloud(pg_dsn, tmp_path, extra="[metrics]\nenabled = false\n", hosts=HOSTS)
    try:
        status, _, _ = await scrape(cloud)
        assert status == 404
    finally:
        await stop_cloud(cloud)


async def test_a_failed_spawn_counts_a_reschedule(pg_dsn, tmp_path):
    cloud = await start_cloud(pg_dsn, tmp_path, hosts=HOSTS)
    try:
        image = await add_image(cloud)
        cloud.app[keys.COMPUTES]["msim1"].fail_spawn = "injected spawn failure"  # the first host picked
        _, text, _ = await scrape(cloud)
        before = parse(text)
        uuid = await boot(cloud, image)
        server = await wait_for_status(cloud, uuid, "ACTIVE", user="admin")
        assert server["OS-EXT-SRV-ATTR:host"] == "msim2"
        _, text, _ = await scrape(cloud)
        after = parse(text)
        for outcome, expected in (("rescheduled", 1), ("active", 1), ("error", 0)):
            assert value(after, "novalite_boots_total", outcome=outcome) - \
                value(before, "novalite_boots_total", outcome=outcome) == expected, outcome
    finally:
        await stop_cloud(cloud)


def test_listen_must_be_host_and_port(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[metrics]\nlisten = "9180"\n')
    with pytest.raises(ConfigError, match="metrics.listen"):
        load_config(path)
    path.write_text('[metrics]\nlisten = "[::1]:9180"\n')
    assert load_config(path).metrics.address == ("::1", 9180)
