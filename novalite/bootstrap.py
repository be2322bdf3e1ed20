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

ROLES = ("admin", "member", "reader")
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


def save_credentials(config: Config, creds: dict) -> None:
    path = credentials_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f)


def clouds_yaml(config: Config, creds: dict) -> str:
    """clouds.yaml text with clouds `novalite` (demo member) and `novalite-admin`."""

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

    clouds = {
        "novalite": cloud("demo", "demo", creds["demo"]),
        "novalite-admin": cloud("admin", "admin", creds["admin"]),
    }
    return yaml.safe_dump({"clouds": clouds}, sort_keys=False)


def write_clouds_yaml(config: Config, path: Path = Path("clouds.yaml")) -> Path | None:
    """Write clouds.yaml (mode 0600) from the saved credentials; None if there are none."""
    cred_path = credentials_file(config)
    if not cred_path.exists():
        return None
    creds = json.loads(cred_path.read_text())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(clouds_yaml(config, creds))
    os.chmod(path, 0o600)
    return path
