"""Key pairs over real HTTP (generate, import, list, show, delete, quota) and the real CLI."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from novalite.api import keys
from novalite.api.compute.keypairs import ssh_fingerprint


def ed25519_public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode() + " me@host"


async def test_generate_returns_private_key_and_created_status(cloud):
    status, body, _ = await cloud.compute("POST", "/os-keypairs", json_body={"keypair": {"name": "gen"}})
    assert status == 200  # 2.1
    kp = body["keypair"]
    assert set(kp) == {"name", "public_key", "fingerprint", "user_id", "private_key"}
    assert kp["private_key"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert kp["public_key"].startswith("ssh-rsa ") and kp["public_key"].endswith(" Generated-by-Nova")
    assert kp["fingerprint"] == ssh_fingerprint(kp["public_key"])
    status, body, _ = await cloud.compute(
        "POST", "/os-keypairs", version="2.2", json_body={"keypair": {"name": "gen2"}}
    )
    assert status == 201 and body["keypair"]["type"] == "ssh"


async def test_import_fingerprint_and_views(cloud):
    pub = ed25519_public_key()
    status, body, _ = await cloud.compute(
        "POST", "/os-keypairs", version="2.92", json_body={"keypair": {"name": "me@laptop", "public_key": pub}}
    )
    assert status == 201
    assert "private_key" not in body["keypair"]
    assert body["keypair"]["fingerprint"] == ssh_fingerprint(pub)
    _, listing, _ = await cloud.compute("GET", "/os-keypairs", version="2.2")
    assert listing == {
        "keypairs": [{"keypair": {"name": "me@laptop", "public_key": pub, "fingerprint": ssh_fingerprint(pub),
                                  "type": "ssh"}}]
    }
    _, shown, _ = await cloud.compute("GET", "/os-keypairs/me@laptop")
    assert set(shown["keypair"]) == {
        "name", "public_key", "fingerprint", "user_id", "created_at", "deleted", "deleted_at", "id", "updated_at",
    }
    assert shown["keypair"]["deleted"] is False and isinstance(shown["keypair"]["id"], int)


async def test_validation_and_errors(cloud):
    status, body, _ = await cloud.compute(
        "POST", "/os-keypairs", json_body={"keypair": {"name": "bad", "public_key": "ssh-rsa nonsense"}}
    )
    assert status == 400
    assert body["badRequest"]["message"] == "Keypair data is invalid: failed to generate fingerprint"
    status, body, _ = await cloud.compute("POST", "/os-keypairs", json_body={"keypair": {"name": "a@b"}})
    assert status == 400
    assert body["badRequest"]["message"] == (
        "Invalid input for field/attribute name. Value: a@b. 'a@b' does not match '^[_\\\\- a-zA-Z0-9]+$'"
    )
    status, body, _ = await cloud.compute(
        "POST", "/os-keypairs", version="2.92", json_body={"keypair": {"name": "nokey"}}
    )
    assert status == 400 and body["badRequest"]["message"].endswith("'public_key' is a required property")
    status, body, _ = await cloud.compute("POST", "/os-keypairs", json_body={"keypair": {"name": "k", "type": "ssh"}})
    assert status == 400 and "('type' was unexpected)" in body["badRequest"]["message"]
    pub = ed25519_public_key()
    await cloud.compute("POST", "/os-keypairs", json_body={"keypair": {"name": "dup", "public_key": pub}})
    status, body, _ = await cloud.compute("POST", "/os-keypairs", json_body={"keypair": {"name": "dup", "public_key": pub}})
    assert status == 409 and body["conflictingRequest"]["message"] == "Key pair 'dup' already exists."
    status, body, _ = await cloud.compute("GET", "/os-keypairs/missing")
    demo_user = await cloud.app[keys.DB].fetchval("SELECT id FROM users WHERE name = 'demo'")
    assert status == 404
    assert body["itemNotFound"]["message"] == f"Keypair missing not found for user {demo_user}"
    status, body, _ = await cloud.compute("DELETE", "/os-keypairs/dup", version="2.2")
    assert status == 204 and body is None
    status, _, _ = await cloud.compute("DELETE", "/os-keypairs/dup")
    assert status == 404


async def test_quota_limits_key_pairs(cloud):
    demo_project = await cloud.app[keys.DB].fetchval("SELECT id FROM projects WHERE name = 'demo'")
    await cloud.compute(
        "PUT", f"/os-quota-sets/{demo_project}", user="admin", json_body={"quota_set": {"key_pairs": 1}}
    )
    status, _, _ = await cloud.compute(
        "POST", "/os-keypairs", json_body={"keypair": {"name": "one", "public_key": ed25519_public_key()}}
    )
    assert status == 200
    status, body, _ = await cloud.compute(
        "POST", "/os-keypairs", json_body={"keypair": {"name": "two", "public_key": ed25519_public_key()}}
    )
    assert status == 403
    assert body == {"forbidden": {"code": 403, "message": "Quota exceeded, too many key pairs."}}


async def test_admin_user_id_and_paging(cloud):
    demo_user = await cloud.app[keys.DB].fetchval("SELECT id FROM users WHERE name = 'demo'")
    for name in ("a", "b", "c"):
        status, body, _ = await cloud.compute(
            "POST", "/os-keypairs", user="admin", version="2.10",
            json_body={"keypair": {"name": name, "public_key": ed25519_public_key(), "user_id": demo_user}},
        )
        assert status == 201 and body["keypair"]["user_id"] == demo_user
    _, mine, _ = await cloud.compute("GET", "/os-keypairs", user="admin")
    assert mine["keypairs"] == []
    _, page, _ = await cloud.compute("GET", f"/os-keypairs?user_id={demo_user}&limit=2", user="admin", version="2.35")
    assert [k["keypair"]["name"] for k in page["keypairs"]] == ["a", "b"]
    assert "marker=b" in page["keypairs_links"][0]["href"]
    _, rest, _ = await cloud.compute("GET", "/os-keypairs?marker=b", version="2.35")
    assert [k["keypair"]["name"] for k in rest["keypairs"]] == ["c"]
    status, body, _ = await cloud.compute("GET", "/os-keypairs?marker=zz", version="2.35")
    assert status == 400 and body["badRequest"]["message"] == "Marker zz could not be found."
    status, _, _ = await cloud.compute("GET", "/os-keypairs?user_id=someone-else", version="2.10")
    assert status == 403


async def test_cli_keypairs(cloud):
    keyfile = cloud.workdir / "k1.pem"
    created = await cloud.openstack_json("keypair", "create", "--private-key", str(keyfile), "k1")
    assert created["name"] == "k1"
    assert "PRIVATE KEY" in keyfile.read_text()
    pubfile = cloud.workdir / "k2.pub"
    pub = ed25519_public_key()
    pubfile.write_text(pub + "\n")
    imported = await cloud.openstack_json("keypair", "create", "--public-key", str(pubfile), "k2")
    assert imported["fingerprint"] == ssh_fingerprint(pub)
    names = {r["Name"] for r in await cloud.openstack_json("keypair", "list")}
    assert names == {"k1", "k2"}
    shown = await cloud.openstack_json("keypair", "show", "k2")
    assert shown["fingerprint"] == ssh_fingerprint(pub)
    await cloud.openstack("keypair", "delete", "k1")
    names = {r["Name"] for r in await cloud.openstack_json("keypair", "list")}
    assert names == {"k2"}
