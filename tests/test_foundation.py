"""Foundation: discovery, tokens, errors, request ids."""

from __future__ import annotations

import re

import pytest

from novalite.api import keys
from novalite.config import ConfigError, load_config


async def test_compute_root_lists_v20_then_v21_without_token(cloud):
    async with cloud.session.get(f"{cloud.url}/compute/") as r:
        assert r.status == 200
        body = await r.json()
    assert [v["id"] for v in body["versions"]] == ["v2.0", "v2.1"]
    v21 = body["versions"][1]
    assert v21["min_version"] == "2.1" and v21["status"] == "CURRENT"
    assert v21["links"][0]["href"] == f"{cloud.url}/compute/v2.1/"
    assert re.fullmatch(r"req-[0-9a-f-]{36}", r.headers["x-openstack-request-id"])
    assert r.headers["x-compute-request-id"] == r.headers["x-openstack-request-id"]


async def test_identity_version_documents_without_token(cloud):
    async with cloud.session.get(f"{cloud.url}/identity/v3") as r:
        assert r.status == 200
        body = await r.json()
    assert body["version"]["id"].startswith("v3")
    assert body["version"]["links"][0]["href"] == f"{cloud.url}/identity/v3/"


async def test_token_carries_catalog_with_regions(cloud):
    token = await cloud.token("demo")
    async with cloud.session.get(
        f"{cloud.url}/identity/v3/auth/tokens", headers={"X-Auth-Token": token, "X-Subject-Token": token}
    ) as r:
        assert r.status == 200
        body = (await r.json())["token"]
    assert body["project"]["name"] == "demo"
    assert {r["name"] for r in body["roles"]} == {"member", "reader"}
    types = {s["type"]: s for s in body["catalog"]}
    assert {"identity", "compute", "image"} <= set(types)
    ep = types["compute"]["endpoints"][0]
    assert ep["region"] == ep["region_id"] == "RegionOne"
    assert ep["url"] == f"{cloud.url}/compute/v2.1"


async def test_wrong_password_is_401_without_hint(cloud):
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": "demo", "domain": {"id": "default"}, "password": "nope"}},
            }
        }
    }
    async with cloud.session.post(f"{cloud.url}/identity/v3/auth/tokens", json=body) as r:
        wrong_pw = (r.status, await r.json())
    body["auth"]["identity"]["password"]["user"]["name"] = "nobody"
    async with cloud.session.post(f"{cloud.url}/identity/v3/auth/tokens", json=body) as r:
        no_user = (r.status, await r.json())
    assert wrong_pw[0] == no_user[0] == 401
    assert wrong_pw[1] == no_user[1]


async def test_missing_token_is_401_with_keystone_hint(cloud):
    async with cloud.session.get(f"{cloud.url}/compute/v2.1/flavors") as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"] == f'Keystone uri="{cloud.url}/identity"'
        assert (await r.json())["error"]["code"] == 401


async def test_revoked_token_is_401(cloud):
    token = await cloud.login("demo", cloud.creds["demo"], "demo")
    hdrs = {"X-Auth-Token": token, "X-Subject-Token": token}
    async with cloud.session.delete(f"{cloud.url}/identity/v3/auth/tokens", headers=hdrs) as r:
        assert r.status == 204
    async with cloud.session.get(f"{cloud.url}/compute/v2.1/flavors", headers={"X-Auth-Token": token}) as r:
        assert r.status == 401


async def test_expired_token_is_401(cloud):
    token = await cloud.login("demo", cloud.creds["demo"], "demo")
    async with cloud.app[keys.DB].acquire() as conn:
        await conn.execute("UPDATE tokens SET expires_at = now() - interval '1 second' WHERE id = $1", token)
    cloud.app[keys.IDENTITY]._cache.clear()
    async with cloud.session.get(f"{cloud.url}/compute/v2.1/flavors", headers={"X-Auth-Token": token}) as r:
        assert r.status == 401


async def test_unknown_microversion_is_406(cloud):
    status, body, headers = await cloud.compute("GET", "/flavors", version="2.999")
    assert status == 406
    assert "Version 2.999 is not supported by the API" in body["computeFault"]["message"]
    status, body, _ = await cloud.compute("GET", "/flavors", version="two")
    assert status == 400 and "invalid format" in body["badRequest"]["message"]


async def test_microversion_is_echoed(cloud):
    status, _, headers = await cloud.compute("GET", "/flavors", version="latest")
    assert status == 200
    assert headers["OpenStack-API-Version"].startswith("compute 2.")
    assert "OpenStack-API-Version" in headers["Vary"]


async def test_bad_json_and_content_type(cloud):
    status, body, _ = await cloud.request(
        "POST", "/compute/v2.1/flavors", user="admin", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert status == 400 and "badRequest" in body
    status, body, _ = await cloud.request(
        "POST", "/compute/v2.1/flavors", user="admin", data=b"<xml/>", headers={"Content-Type": "text/xml"}
    )
    assert status == 415


async def test_oversized_body_is_413(cloud):
    big = b'{"x": "' + b"a" * (cloud.config.api.max_body_bytes + 10) + b'"}'
    status, body, _ = await cloud.request(
        "POST", "/compute/v2.1/flavors", user="admin", data=big, headers={"Content-Type": "application/json"}
    )
    assert status == 413 and body["overLimit"]["code"] == 413


def test_unknown_config_key_names_key_and_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[api]\nlisten = '127.0.0.1'\nprot = 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: unknown key `api.prot`"


def test_env_overrides_config(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[api]\nport = 1\n")
    cfg = load_config(path, {"NOVALITE_API__PORT": "4242", "NOVALITE_DATABASE__DSN": "postgresql:///x"})
    assert cfg.api.port == 4242 and cfg.database.dsn == "postgresql:///x"
