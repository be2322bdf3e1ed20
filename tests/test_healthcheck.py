"""GET/HEAD /healthcheck as a load balancer, a monitoring probe and an admin see it."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import asyncpg

from novalite.api import keys


async def probe(cloud, method: str = "GET", accept: str | None = None, user: str | None = None):
    """(status, content type, body text) of /healthcheck, with no token unless ``user``."""
    headers = {"Accept": accept} if accept else {}
    if user:
        headers["X-Auth-Token"] = await cloud.token(user)
    async with cloud.session.request(method, f"{cloud.url}/healthcheck", headers=headers) as r:
        return r.status, r.content_type, await r.text()


async def force_down(cloud, host: str, down: bool = True) -> None:
    """The operator's way to take a compute service down: PUT /os-services/{id} forced_down (2.53)."""
    _, body, _ = await cloud.compute("GET", f"/os-services?host={host}", user="admin", version="2.53")
    service_id = body["services"][0]["id"]
    status, body, _ = await cloud.compute("PUT", f"/os-services/{service_id}", user="admin", version="2.53",
                                          json_body={"forced_down": down})
    assert status == 200, body


async def test_healthy_cloud_answers_ok_to_anyone(cloud):
    assert await probe(cloud) == (200, "text/plain", "OK")
    status, ctype, text = await probe(cloud, accept="application/json")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(text) == {"detailed": False, "reasons": ["OK"]}
    assert await probe(cloud, accept="text/plain;q=0.5, application/json;q=0.9") == (200, "application/json", text)
    assert (await probe(cloud, accept="*/*"))[:2] == (200, "text/plain")
    assert (await probe(cloud, method="HEAD"))[0] == 204
    # A member's token (or a bad one) changes nothing: the detail is for admins.
    assert (await probe(cloud, accept="application/json", user="demo"))[2] == text
    async with cloud.session.get(f"{cloud.url}/healthcheck", headers={"X-Auth-Token": "bogus"}) as r:
        assert (r.status, await r.text()) == (200, "OK")


async def test_admin_gets_postgres_latency_and_hosts_by_name(cloud):
    status, _, text = await probe(cloud, accept="application/json", user="admin")
    body = json.loads(text)
    assert status == 200 and body["detailed"] is True
    assert body["postgres"]["available"] is True and body["postgres"]["latency_ms"] > 0
    assert body["hosts"] == {"sim1": "up", "sim2": "up"}
    assert {r["class"]: r["reason"] for r in body["reasons"]} == {"postgres": "OK", "hosts": "OK"}
    assert [r["details"] for r in body["reasons"] if r["class"] == "hosts"] == ["2 of 2 compute hosts up"]


async def test_no_host_up_is_503_with_the_reason(cloud):
    await force_down(cloud, "sim1")
    assert (await probe(cloud))[:1] == (200,)  # one host up is enough
    await force_down(cloud, "sim2")
    assert await probe(cloud) == (503, "text/plain", "no compute host up")
    assert (await probe(cloud, method="HEAD"))[0] == 503
    status, _, text = await probe(cloud, accept="application/json", user="admin")
    body = json.loads(text)
    assert status == 503 and body["hosts"] == {"sim1": "down", "sim2": "down"}
    assert {r["class"]: r["details"] for r in body["reasons"]}["hosts"] == "down: sim1, sim2"
    await force_down(cloud, "sim1", down=False)
    assert await probe(cloud) == (200, "text/plain", "OK")


async def test_postgres_refusing_is_503_with_the_reason(cloud, pg_dsn):
    token = await cloud.token("admin")  # before Postgres goes away: the detail needs a token check
    database = await cloud.app[keys.DB].fetchval("SELECT current_database()")
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = $1 AND pid <> pg_backend_pid()", database)
        assert await probe(cloud) == (503, "text/plain", "postgres unreachable")
        assert (await probe(cloud, method="HEAD"))[0] == 503
        async with cloud.session.get(f"{cloud.url}/healthcheck",
                                     headers={"X-Auth-Token": token, "Accept": "application/json"}) as r:
            assert r.status == 503
            assert await r.json() == {"detailed": False, "reasons": ["postgres unreachable"]}
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()
    assert await probe(cloud) == (200, "text/plain", "OK")


async def test_a_pooled_session_the_server_ends_mid_probe_is_not_postgres_unreachable(cloud, pg_dsn):
    """A backend that a restart's terminate reaches only while a probe uses its pooled connection
    (its exit is asynchronous: here it is held stopped until then) fails that one session; Postgres
    itself answers, and the probe says so."""
    database = await cloud.app[keys.DB].fetchval("SELECT current_database()")
    admin = await asyncpg.connect(pg_dsn)
    try:
        pids = [r["pid"] for r in await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", database)]
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
            probing = asyncio.create_task(probe(cloud))
            await asyncio.sleep(0.3)  # the probe has sent its query on one of the stopped sessions
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        assert await probing == (200, "text/plain", "OK")
    finally:
        await admin.close()
