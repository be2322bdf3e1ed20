"""Keystone's lockout after failed password checks, and logins that take as long whoever is asked for."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
from conftest import create_user_with_role, start_cloud, stop_cloud

GENERIC = "The request you have made requires authentication."


@pytest.fixture
async def locking_cloud(pg_dsn, tmp_path, monkeypatch):
    """Three failures in a row lock a user for one second."""
    monkeypatch.setenv("NOVALITE_IDENTITY__LOCKOUT_FAILURE_ATTEMPTS", "3")
    monkeypatch.setenv("NOVALITE_IDENTITY__LOCKOUT_DURATION", "1")
    c = await start_cloud(pg_dsn, tmp_path)
    yield c
    await stop_cloud(c)


async def login(cloud, name: str, password: str) -> tuple[int, str]:
    """POST /v3/auth/tokens by user name: (status, error message or '')."""
    body = {"auth": {"identity": {"methods": ["password"], "password": {
        "user": {"name": name, "domain": {"id": "default"}, "password": password}}}}}
    async with cloud.session.post(f"{cloud.url}/identity/v3/auth/tokens", json=body) as r:
        data = await r.json()
        return r.status, (data.get("error") or {}).get("message", "")


async def failures_in_db(cloud, user_id: str) -> int:
    from novalite.api import keys

    async with cloud.app[keys.DB].acquire() as conn:
        return await conn.fetchval("SELECT failed_auth_count FROM users WHERE id = $1", user_id)


async def test_wrong_passwords_lock_the_user_until_the_duration_passes(locking_cloud):
    cloud = locking_cloud
    user_id, _ = await create_user_with_role(cloud, "mallory", "right-pw")
    for _ in range(3):
        assert await login(cloud, "mallory", "guess") == (401, GENERIC)
    locked = (401, f"The account is locked for user: {user_id}.")
    assert await login(cloud, "mallory", "right-pw") == locked
    assert await login(cloud, "mallory", "guess") == locked  # a locked user's guesses are not even checked
    assert await failures_in_db(cloud, user_id) == 3
    await asyncio.sleep(1.1)
    assert (await login(cloud, "mallory", "right-pw"))[0] == 201
    assert await failures_in_db(cloud, user_id) == 0


async def test_a_success_resets_the_count(locking_cloud):
    cloud = locking_cloud
    user_id, _ = await create_user_with_role(cloud, "oscar", "right-pw")
    for _ in range(2):
        for _ in range(2):
            assert await login(cloud, "oscar", "guess") == (401, GENERIC)
        assert (await login(cloud, "oscar", "right-pw"))[0] == 201
    assert await failures_in_db(cloud, user_id) == 0


async def test_parallel_guesses_get_no_more_tries_than_the_limit(locking_cloud):
    cloud = locking_cloud
    user_id, _ = await create_user_with_role(cloud, "peggy", "right-pw")
    answers = await asyncio.gather(*(login(cloud, "peggy", f"guess-{i}") for i in range(10)))
    assert sorted(answers).count((401, GENERIC)) == 3
    assert sorted(answers).count((401, f"The account is locked for user: {user_id}.")) == 7
    assert await failures_in_db(cloud, user_id) == 3


async def test_parallel_right_passwords_all_get_in(locking_cloud):
    cloud = locking_cloud
    await create_user_with_role(cloud, "quinn", "right-pw")
    answers = await asyncio.gather(*(login(cloud, "quinn", "right-pw") for _ in range(8)))
    assert [status for status, _ in answers] == [201] * 8


async def test_enabling_the_user_unlocks_it(locking_cloud):
    cloud = locking_cloud
    user_id, _ = await create_user_with_role(cloud, "rupert", "right-pw")
    for _ in range(3):
        await login(cloud, "rupert", "guess")
    assert (await login(cloud, "rupert", "right-pw"))[1].startswith("The account is locked")
    status, _, _ = await cloud.request(
        "PATCH", f"/identity/v3/users/{user_id}", user="admin", json_body={"user": {"enabled": True}}
    )
    assert status == 200
    assert (await login(cloud, "rupert", "right-pw"))[0] == 201


async def test_the_lock_holds_across_a_restart(pg_dsn, tmp_path, monkeypatch):
    monkeypatch.setenv("NOVALITE_IDENTITY__LOCKOUT_FAILURE_ATTEMPTS", "2")
    monkeypatch.setenv("NOVALITE_IDENTITY__LOCKOUT_DURATION", "60")
    cloud = await start_cloud(pg_dsn, tmp_path)
    dsn = cloud.config.database.dsn
    user_id, _ = await create_user_with_role(cloud, "sybil", "right-pw")
    for _ in range(2):
        await login(cloud, "sybil", "guess")
    await stop_cloud(cloud)
    cloud = await start_cloud(pg_dsn, tmp_path, dsn=dsn)
    try:
        assert await login(cloud, "sybil", "right-pw") == (401, f"The account is locked for user: {user_id}.")
    finally:
        await stop_cloud(cloud)


async def test_lockout_off_counts_nothing(pg_dsn, tmp_path, monkeypatch):
    monkeypatch.setenv("NOVALITE_IDENTITY__LOCKOUT_FAILURE_ATTEMPTS", "0")
    cloud = await start_cloud(pg_dsn, tmp_path)
    try:
        user_id, _ = await create_user_with_role(cloud, "trent", "right-pw")
        for _ in range(8):
            assert await login(cloud, "trent", "guess") == (401, GENERIC)
        assert (await login(cloud, "trent", "right-pw"))[0] == 201
        assert await failures_in_db(cloud, user_id) == 0
    finally:
        await stop_cloud(cloud)


async def test_unknown_user_takes_as_long_as_a_wrong_password(pg_dsn, tmp_path, monkeypatch):
    # A cost where one check (~15-25 ms) stands well above the noise of a request; the
    # check of an unknown user used to be against a hash of cost 4, ~20 times faster.
    monkeypatch.setenv("NOVALITE_IDENTITY__BCRYPT_ROUNDS", "8")
    monkeypatch.setenv("NOVALITE_IDENTITY__LOCKOUT_FAILURE_ATTEMPTS", "1000")
    cloud = await start_cloud(pg_dsn, tmp_path)
    try:
        await create_user_with_role(cloud, "victor", "right-pw")

        async def timed(name: str) -> float:
            start = time.perf_counter()
            assert await login(cloud, name, "guess") == (401, GENERIC)
            return time.perf_counter() - start

        unknown, wrong = [], []
        for i in range(15):  # interleaved, so a slow moment of the machine hits both
            unknown.append(await timed(f"nobody-{i}"))
            wrong.append(await timed("victor"))
        ratio = statistics.median(unknown) / statistics.median(wrong)
        assert 0.6 < ratio < 1.6, (statistics.median(unknown), statistics.median(wrong))
    finally:
        await stop_cloud(cloud)
