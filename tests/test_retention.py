"""Issue #15: a token stops working the moment its user or project does, or it is revoked."""

from __future__ import annotations

import asyncio

import pytest
from conftest import create_user_with_role

from novalite.api import keys


async def compute_status(cloud, token: str) -> int:
    async with cloud.session.get(f"{cloud.url}/compute/v2.1/servers", headers={"X-Auth-Token": token}) as r:
        return r.status


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
            while not await blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE tokens%'"
            ):
                await asyncio.sleep(0.01)
            assert await identity.validate(token) is not None  # not revoked yet in Postgres
        assert await revoke
    assert await identity.validate(token) is None
    assert await compute_status(cloud, token) == 401
