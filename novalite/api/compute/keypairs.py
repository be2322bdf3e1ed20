"""os-keypairs: create (generate or import), list, show and delete, per user."""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from novalite import quota
from novalite.api import errors, keys
from novalite.api.compute import common
from novalite.api.compute.validation import (
    NAME,
    PAGINATION,
    limit_and_marker,
    next_links,
    validate_body,
    validate_query,
)
from novalite.api.middleware import read_json
from novalite.api.pagination import capped
from novalite.db import catalog

# Crypto (Nova's nova/crypto.py) -------------------------------------------------


def ssh_fingerprint(public_key: str) -> str:
    """MD5 fingerprint of an OpenSSH public key; Nova's 400 when it does not parse."""
    try:
        serialization.load_ssh_public_key(public_key.encode("utf-8"))
        raw = hashlib.md5(base64.b64decode(public_key.split(" ")[1]), usedforsecurity=False).hexdigest()
    except Exception:
        raise errors.BadRequest("Keypair data is invalid: failed to generate fingerprint") from None
    return ":".join(a + b for a, b in zip(raw[::2], raw[1::2], strict=True))


def x509_fingerprint(pem: str) -> str:
    """SHA1 fingerprint of a PEM certificate, as Nova computes it."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("utf-8"))
        raw = binascii.hexlify(cert.fingerprint(hashes.SHA1())).decode("ascii")
    except (ValueError, TypeError, binascii.Error) as exc:
        raise errors.BadRequest(
            f"Keypair data is invalid: failed to generate X509 fingerprint. Error message: {exc}"
        ) from None
    return ":".join(a + b for a, b in zip(raw[::2], raw[1::2], strict=True))


def generate_ssh_keypair(bits: int = 2048) -> tuple[str, str, str]:
    """(private PEM, 'ssh-rsa ... Generated-by-Nova', fingerprint), like Nova's paramiko code."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    openssh = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public = f"{openssh.decode()} Generated-by-Nova"
    return private, public, ssh_fingerprint(public)


def generate_x509_keypair(user_id: str, bits: int = 2048) -> tuple[str, str, str]:
    """(base64 PKCS#12, PEM certificate, fingerprint) for WinRM client auth, like Nova."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user_id)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    p12 = pkcs12.serialize_key_and_certificates(None, key, cert, None, serialization.NoEncryption())
    return base64.b64encode(p12).decode(), pem, x509_fingerprint(pem)


# Views --------------------------------------------------------------------------


def _timestamp(value: datetime.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(datetime.UTC).replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _view(kp: dict, fields: tuple[str, ...]) -> dict:
    return {f: kp[f] for f in fields}


_INDEX = ("name", "public_key", "fingerprint")
_CREATE = (*_INDEX, "user_id")


def keypair_show(request: web.Request, kp: dict) -> dict:
    body = _view(kp, _CREATE)
    body.update(
        created_at=_timestamp(kp["created_at"]), deleted=False, deleted_at=None, id=kp["id"], updated_at=None
    )
    if common.at_least(request, 2):
        body["type"] = kp["type"]
    return body


# Handlers -----------------------------------------------------------------------


def _create_schema(request: web.Request) -> dict:
    pattern = r"^[_\-\@\. a-zA-Z0-9]+$" if common.at_least(request, 92) else r"^[_\- a-zA-Z0-9]+$"
    props: dict = {
        "name": {"allOf": [NAME, {"type": "string", "pattern": pattern, "minLength": 1, "maxLength": 255}]},
        "public_key": {"type": "string"},
    }
    if common.at_least(request, 2):
        props["type"] = {"type": "string", "enum": ["ssh", "x509"]}
    if common.at_least(request, 10):
        props["user_id"] = {"type": "string"}
    return {
        "type": "object",
        "properties": {
            "keypair": {
                "type": "object",
                "properties": props,
                "required": ["name", "public_key"] if common.at_least(request, 92) else ["name"],
                "additionalProperties": False,
            }
        },
        "required": ["keypair"],
        "additionalProperties": False,
    }


def _user_query(request: web.Request) -> str | None:
    if common.at_least(request, 10) and "user_id" in request.query:
        return request.query.getall("user_id")[0]
    return None


def _validate_user_query(request: web.Request, paging: bool = False) -> None:
    if not common.at_least(request, 10):
        return
    props: dict = {"user_id": {"type": "string"}}
    if paging:
        props.update(PAGINATION)
    validate_query(request, props, strict=common.at_least(request, 75))


async def create_keypair(request: web.Request) -> web.Response:
    """POST /os-keypairs: import a public key, or generate a pair before 2.92."""
    body = await read_json(request)
    validate_body(_create_schema(request), body)
    ctx = common.context(request)
    params = body["keypair"]
    name = params["name"].strip()
    key_type = params.get("type", "ssh")
    user_id = (params.get("user_id") if common.at_least(request, 10) else None) or ctx.user_id
    common.authorize(request, "os_compute_api:os-keypairs:create", {"user_id": user_id})
    private_key = None
    if "public_key" in params:
        public_key = params["public_key"]
        fingerprint = ssh_fingerprint(public_key) if key_type == "ssh" else x509_fingerprint(public_key)
    elif key_type == "ssh":
        private_key, public_key, fingerprint = await asyncio.to_thread(generate_ssh_keypair)
    else:
        private_key, public_key, fingerprint = await asyncio.to_thread(generate_x509_keypair, user_id)
    async with request.app[keys.DB].acquire() as conn, conn.transaction():
        await quota.lock_project(conn, ctx.project_id)
        used = await catalog.count_keypairs(conn, user_id)
        await quota.check_count(conn, request.app[keys.CONFIG].quota, ctx.project_id, "key_pairs", used)
        try:
            kp = await catalog.create_keypair(conn, user_id, name, fingerprint, public_key, key_type)
        except catalog.Duplicate:
            raise errors.Conflict(f"Key pair '{name}' already exists.") from None
    out = _view(kp, _CREATE)
    if private_key is not None:
        out["private_key"] = private_key
    if common.at_least(request, 2):
        out["type"] = kp["type"]
    return web.json_response({"keypair": out}, status=201 if common.at_least(request, 2) else 200)


async def list_keypairs(request: web.Request) -> web.Response:
    """GET /os-keypairs (user_id for admins from 2.10, paging from 2.35)."""
    _validate_user_query(request, paging=common.at_least(request, 35))
    ctx = common.context(request)
    user_id = _user_query(request) or ctx.user_id
    common.authorize(request, "os_compute_api:os-keypairs:index", {"user_id": user_id})
    async with request.app[keys.DB].acquire() as conn:
        rows = await catalog.list_keypairs(conn, user_id)
    paging = common.at_least(request, 35)
    if paging:
        limit, marker = limit_and_marker(request)
        if marker is not None:
            names = [r["name"] for r in rows]
            if marker not in names:
                raise errors.BadRequest(f"Marker {marker} could not be found.")
            rows = rows[names.index(marker) + 1 :]
        rows = rows[:limit]
    else:
        rows = capped(request, rows)
    fields = (*_INDEX, "type") if common.at_least(request, 2) else _INDEX
    body: dict = {"keypairs": [{"keypair": _view(r, fields)} for r in rows]}
    if paging:
        more = next_links(request, rows, "os-keypairs", "name")
        if more:
            body["keypairs_links"] = more
    return web.json_response(body)


async def show_keypair(request: web.Request) -> web.Response:
    """GET /os-keypairs/{name}."""
    _validate_user_query(request)
    ctx = common.context(request)
    user_id = _user_query(request) or ctx.user_id
    common.authorize(request, "os_compute_api:os-keypairs:show", {"user_id": user_id})
    name = request.match_info["name"]
    async with request.app[keys.DB].acquire() as conn:
        kp = await catalog.get_keypair(conn, user_id, name)
    if kp is None:
        raise errors.NotFound(f"Keypair {name} not found for user {user_id}")
    return web.json_response({"keypair": keypair_show(request, kp)})


async def delete_keypair(request: web.Request) -> web.Response:
    """DELETE /os-keypairs/{name}: 202 before 2.2, 204 after, no body."""
    _validate_user_query(request)
    ctx = common.context(request)
    user_id = _user_query(request) or ctx.user_id
    common.authorize(request, "os_compute_api:os-keypairs:delete", {"user_id": user_id})
    name = request.match_info["name"]
    async with request.app[keys.DB].acquire() as conn:
        if not await catalog.delete_keypair(conn, user_id, name):
            raise errors.NotFound(f"Keypair {name} not found for user {user_id}")
    return web.Response(status=204 if common.at_least(request, 2) else 202)
