"""Retention (issue #15): tokens, notifications and scheduling verdicts do not pile up, and a
token stops working the moment its user or project does."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import add_image, create_user_with_role, start_cloud, stop_cloud, wait_for_status

from novalite.api import keys
from novalite.config import Config
from novalite.db import retention as q


async def compute_status(cloud, token: str) -> int:
    async with cloud.session.get(f"{cloud.url}/compute/v2.1/servers", headers={"X-Auth-Token": token}) as r:
        return r.status


async def count(cloud, sql: str, *args) -> int:
    async with cloud.app[keys.DB].acquire() as conn:
        return await conn.fetchval(sql, *args)


async def add_old_notifications(cloud, n: int, days: float = 8) -> None:
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute(
            """INSERT INTO notifications (event_type, publisher_id, payload, created_at)
               SELECT 'test.old', 'test', '{}'::jsonb, now() - $2 * interval '1 day' FROM generate_series(1, $1)""",
            n, days,
        )


async def boot(cloud, name: str = "vm", image: str | None = None) -> str:
    image = image or await add_image(cloud)
    body = {"server": {"name": name, "imageRef": image, "flavorRef": "1", "networks": "none"}}
    status, created, _ = await cloud.compute("POST", "/servers", json_body=body, version="2.latest")
    assert status == 202, created
    return created["server"]["id"]


def test_retention_defaults_keep_a_week():
    retention = Config().retention
    assert (retention.notifications_days, retention.scheduling_verdicts_days) == (7, 7)


async def test_old_notifications_and_verdicts_go_in_batches_fresh_ones_stay(pg_dsn, tmp_path):
    cloud = await start_cloud(pg_dsn, tmp_path, extra="[retention]\nbatch_size = 100\n")
    try:
        server = await boot(cloud)
        await wait_for_status(cloud, server, "ACTIVE")
        fresh_notifications = await count(cloud, "SELECT count(*) FROM notifications")
        assert fresh_notifications > 0
        await add_old_notifications(cloud, 250)
        await add_old_notifications(cloud, 3, days=6)  # younger than the week kept
        async with cloud.app[keys.DB].acquire() as conn:
            await conn.execute(
                """INSERT INTO scheduling_verdicts (instance_uuid, summary, verdicts, created_at)
                   SELECT $1::uuid, 'old', '{}'::jsonb, now() - interval '30 days' FROM generate_series(1, 120)""",
                server,
            )
            # One statement deletes one batch, no more.
            assert await q.purge_older_than(conn, "notifications", 7, 100) == 100
            with pytest.raises(ValueError):
                await q.purge_older_than(conn, "instances", 7, 100)

        purged = await cloud.app[keys.RETENTION].purge_once()

        assert purged["notifications"] == 150 and purged["scheduling_verdicts"] == 120
        assert await count(cloud, "SELECT count(*) FROM notifications") == fresh_notifications + 3
        assert await count(cloud, "SELECT count(*) FROM notifications WHERE created_at < now() - interval '7 days'") == 0
        assert await count(cloud, "SELECT count(*) FROM scheduling_verdicts") == 1
        status, body, _ = await cloud.compute("GET", f"/servers/{server}/os-scheduling", user="admin")
        assert status == 200 and body["scheduling"]["request_id"]
    finally:
        await stop_cloud(cloud)


async def test_expired_and_revoked_tokens_are_purged_and_still_refused(cloud):
    live = await cloud.login("demo", cloud.creds["demo"], "demo")
    revoked = await cloud.login("demo", cloud.creds["demo"], "demo")
    assert await compute_status(cloud, revoked) == 200
    async with cloud.session.delete(
        f"{cloud.url}/identity/v3/auth/tokens", headers={"X-Auth-Token": live, "X-Subject-Token": revoked}
    ) as r:
        assert r.status == 204
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute(
            """INSERT INTO tokens (id, user_id, project_id, methods, issued_at, expires_at)
               SELECT 'nl-expired', user_id, project_id, methods, now() - interval '2 hours', now() - interval '1 hour'
               FROM tokens WHERE id = $1""",
            live,
        )
    assert await compute_status(cloud, revoked) == 401
    assert await compute_status(cloud, "nl-expired") == 401

    purged = await cloud.app[keys.RETENTION].purge_once()

    assert purged["tokens"] == 2
    assert await count(cloud, "SELECT count(*) FROM tokens WHERE id = ANY($1)", [revoked, "nl-expired"]) == 0
    assert await compute_status(cloud, revoked) == 401
    assert await compute_status(cloud, "nl-expired") == 401
    assert await compute_status(cloud, live) == 200


async def test_the_purge_runs_by_itself_every_interval(pg_dsn, tmp_path):
    cloud = await start_cloud(pg_dsn, tmp_path, extra="[retention]\npurge_interval = 0.2\n")
    try:
        await add_old_notifications(cloud, 5)
        deadline = time.monotonic() + 10
        while await count(cloud, "SELECT count(*) FROM notifications WHERE event_type = 'test.old'"):
            assert time.monotonic() < deadline, "old notifications still there"
            await asyncio.sleep(0.1)
    finally:
        await stop_cloud(cloud)


@pytest.mark.parametrize(
    "method, path, body, answer",
    [
        ("PATCH", "/identity/v3/users/{user}", {"user": {"enabled": False}}, 200),
        ("DELETE", "/identity/v3/users/{user}", None, 204),
        ("PATCH", "/identity/v3/projects/{project}", {"project": {"enabled": False}}, 200),
        ("DELETE", "/identity/v3/projects/{project}", None, 204),
    ],
    ids=["disable-user", "delete-user", "disable-project", "delete-project"],
)
async def test_token_stops_working_at_once(cloud, method, path, body, answer):
    user_id, grant = await create_user_with_role(cloud, "ann", "ann-pw")
    project_id = grant.split("/projects/")[1].split("/")[0]
    token = await cloud.login("ann", "ann-pw", "demo")
    assert await compute_status(cloud, token) == 200  # and now in the identity service's cache

    status, _, _ = await cloud.request(
        method, path.format(user=user_id, project=project_id), user="admin", json_body=body
    )
    assert status == answer

    assert await compute_status(cloud, token) == 401


async def test_revoke_racing_a_validation_leaves_no_cached_token(cloud):
    """A validation that reads the token while its revocation is committing must not cache it."""
    identity = cloud.app[keys.IDENTITY]
    token = await cloud.login("demo", cloud.creds["demo"], "demo")
    info = await identity.validate(token)
    identity.forget(user_id=info.user_id)  # the next validation reads Postgres
    async with cloud.app[keys.DB].acquire() as blocker:
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM tokens WHERE id = $1 FOR UPDATE", token)
            revoke = asyncio.create_task(identity.revoke(token))
            # pg_stat_activity is read through a snapshot kept for the whole transaction: clear
            # it on each look, or a revoke that starts waiting after the first look is never seen.
            async with asyncio.timeout(30):
                while not await blocker.fetchval(
                    "SELECT pg_stat_clear_snapshot(), count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE tokens%'", column=1
                ):
                    await asyncio.sleep(0.01)
            assert await identity.validate(token) is not None  # not revoked yet in Postgres
        assert await revoke
    assert await identity.validate(token) is None
    assert await compute_status(cloud, token) == 401


async def test_a_boot_completes_while_a_large_purge_runs(pg_dsn, tmp_path):
    cloud = await start_cloud(pg_dsn, tmp_path, extra="[retention]\nbatch_size = 200\n")
    try:
        # Enough batches that the purge is still under way when the POST returns, on a fast hour
        # too (20,000 rows, 100 batches, were purged before it once), the image ready beforehand.
        image = await add_image(cloud)
        await add_old_notifications(cloud, 60_000)
        started = time.monotonic()
        purge = asyncio.create_task(cloud.app[keys.RETENTION].purge_once())
        server = await boot(cloud, image=image)
        assert not purge.done()  # the boot starts while the purge is under way
        await wait_for_status(cloud, server, "ACTIVE", timeout=30)
        booted = time.monotonic() - started
        purged = await asyncio.wait_for(purge, 60)
        assert purged["notifications"] == 60_000
        assert await count(cloud, "SELECT count(*) FROM notifications WHERE event_type = 'test.old'") == 0
        assert booted < 15, f"the boot took {booted:.1f} s beside the purge"
    finally:
        await stop_cloud(cloud)
