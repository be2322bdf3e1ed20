"""First-start data: roles, admin and demo projects and users, DevStack's flavors.

Passwords are random and written once to ``<state dir>/credentials.json``
(mode 0600); ``clouds.yaml`` is generated from that file.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import uuid
from pathlib import Path

import asyncpg
import yaml

from novalite.config import Config
from novalite.identity import hash_password

ROLES = ("admin", "manager", "member", "reader")  # keystone-manage bootstrap's
# DevStack's default flavors: (id, name, ram MB, disk GB, vcpus).
FLAVORS = (
    ("1", "m1.tiny", 512, 1, 1),
    ("2", "m1.small", 2048, 20, 1),
    ("3", "m1.medium", 4096, 40, 2),
    ("4", "m1.large", 8192, 80, 4),
    ("5", "m1.xlarge", 16384, 160, 8),
)


def new_id() -> str:
    return uuid.uuid4().hex


async def ensure_role(conn: asyncpg.Connection, name: str) -> str:
    return await conn.fetchval(
        """INSERT INTO roles (id, name) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id""",
        new_id(),
        name,
    )


async def create_project(conn: asyncpg.Connection, name: str, description: str = "") -> str:
    return await conn.fetchval(
        "INSERT INTO projects (id, name, description) VALUES ($1, $2, $3) RETURNING id", new_id(), name, description
    )


async def create_user(
    conn: asyncpg.Connection, name: str, password: str, project_id: str | None, rounds: int
) -> str:
    hashed = await asyncio.to_thread(hash_password, password, rounds)
    return await conn.fetchval(
        """INSERT INTO users (id, name, password_hash, default_project_id)
           VALUES ($1, $2, $3, $4) RETURNING id""",
        new_id(),
        name,
        hashed,
        project_id,
    )


async def grant(conn: asyncpg.Connection, user_id: str, project_id: str, role: str) -> None:
    await conn.execute(
        """INSERT INTO role_assignments (user_id, project_id, role_id)
           SELECT $1, $2, id FROM roles WHERE name = $3 ON CONFLICT DO NOTHING""",
        user_id,
        project_id,
        role,
    )


async def bootstrap(pool: asyncpg.Pool, config: Config) -> dict | None:
    """Create the first-start data unless it exists; return the new credentials."""
    rounds = config.identity.bcrypt_rounds
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7400002)")
        for role in ROLES:
            await ensure_role(conn, role)
        for flavorid, name, ram, disk, vcpus in FLAVORS:
            await conn.execute(
                """INSERT INTO flavors (flavorid, name, memory_mb, root_gb, vcpus)
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING""",
                flavorid,
                name,
                ram,
                disk,
                vcpus,
            )
        if await conn.fetchval("SELECT 1 FROM users WHERE name = 'admin'"):
            return None
        creds = {"admin": secrets.token_urlsafe(18), "demo": secrets.token_urlsafe(18)}
        admin_project = await create_project(conn, "admin", "Bootstrap project for initializing the cloud.")
        demo_project = await create_project(conn, "demo", "Default project for lab users.")
        admin = await create_user(conn, "admin", creds["admin"], admin_project, rounds)
        demo = await create_user(conn, "demo", creds["demo"], demo_project, rounds)
        await grant(conn, admin, admin_project, "admin")
        await grant(conn, admin, demo_project, "admin")
        await grant(conn, demo, demo_project, "member")
    return creds


def credentials_file(config: Config) -> Path:
    return config.state_dir / "credentials.json"


def _write_private(path: Path, text: str) -> None:
    """Write `path` whole or not at all (a temporary file renamed over it), mode 0600: it holds passwords."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(partial, 0o600)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def save_credentials(config: Config, creds: dict) -> None:
    _write_private(credentials_file(config), json.dumps(creds))


def _saved_credentials(config: Config) -> dict | None:
    path = credentials_file(config)
    return json.loads(path.read_text()) if path.exists() else None


def novalite_clouds(config: Config, creds: dict) -> dict:
    """clouds.yaml's entries `novalite` (demo member) and `novalite-admin`."""

    def cloud(user: str, project: str, password: str) -> dict:
        return {
            "auth": {
                "auth_url": f"{config.public_url}/identity",
                "username": user,
                "password": password,
                "project_name": project,
                "user_domain_name": "Default",
                "project_domain_name": "Default",
            },
            "region_name": config.identity.region,
            "identity_api_version": 3,
            "interface": "public",
        }

    return {
        "novalite": cloud("demo", "demo", creds["demo"]),
        "novalite-admin": cloud("admin", "admin", creds["admin"]),
    }


def clouds_yaml(config: Config, creds: dict) -> str:
    """clouds.yaml text with clouds `novalite` and `novalite-admin` only."""
    return yaml.safe_dump({"clouds": novalite_clouds(config, creds)}, sort_keys=False)


def write_clouds_yaml(config: Config, path: Path = Path("clouds.yaml")) -> Path | None:
    """Write clouds.yaml (mode 0600) from the saved credentials; None if there are none."""
    creds = _saved_credentials(config)
    if creds is None:
        return None
    _write_private(path, clouds_yaml(config, creds))
    return path


USER_CLOUDS_YAML = Path(".config") / "openstack" / "clouds.yaml"


def merge_user_clouds_yaml(config: Config, home: Path | None = None) -> Path | None:
    """Put our two clouds into ``~/.config/openstack/clouds.yaml``, where the openstack CLI looks
    from any directory; the file's other clouds and keys stay as they are. None without
    credentials, or when the file is not a YAML mapping (it is left alone then)."""
    creds = _saved_credentials(config)
    path = (home or Path.home()) / USER_CLOUDS_YAML
    if creds is None:
        return None
    try:
        document = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    except yaml.YAMLError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("clouds") or {}, dict):
        return None
    document["clouds"] = {**(document.get("clouds") or {}), **novalite_clouds(config, creds)}
    _write_private(path, yaml.safe_dump(document, sort_keys=False))
    return path
