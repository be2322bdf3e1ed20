"""Identity: passwords, tokens and the service catalog (Keystone v3 semantics).

Tokens are random opaque ids stored in Postgres: this process is the only
issuer and the only validator, so a signed format (Fernet) would buy nothing
but would make revocation a list to check anyway. Valid tokens are cached in
memory; revocation and changes to users, projects or roles go through this
service, which drops the affected cache entries, so the cache never says yes
to a token the database says no to.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import bcrypt

from novalite import metrics
from novalite.db import identity as q
from novalite.exception import AccountLocked, NotAuthenticated

DOMAIN = {"id": "default", "name": "Default"}


def hash_password(password: str, rounds: int = 12) -> str:
    """bcrypt hash of a password (bcrypt only looks at the first 72 bytes)."""
    return bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(rounds)).decode()


def check_password(password: str, hashed: str | None) -> bool:
    if not hashed:
        return False
    return bcrypt.checkpw(password.encode()[:72], hashed.encode())


def dummy_hash(rounds: int) -> str:
    """A well-formed bcrypt hash of the given cost that no password is known to match:
    checking against it costs what checking a real user's password costs."""
    alphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return bcrypt.gensalt(rounds).decode() + "".join(secrets.choice(alphabet) for _ in range(31))


# bcrypt checks at once: a storm of bad logins queues behind itself instead of taking
# every core from the API and the builds (each check is ~0.25 s of CPU at cost 12).
PASSWORD_CHECKS = max(1, (os.cpu_count() or 2) // 2)


@dataclass
class _Gate:
    """The password checks in flight for one user, so a burst cannot outrun the lockout."""

    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    checking: int = 0
    waiters: int = 0  # tasks holding the gate; the last one removes it


def expand_roles(names: list[str]) -> list[str]:
    """Add implied roles the way Keystone's default implied roles do (admin ⇒ member ⇒ reader)."""
    out = list(dict.fromkeys(names))
    for name in names:
        for implied in q.IMPLIED_ROLES.get(name, ()):
            if implied not in out:
                out.append(implied)
    return out


@dataclass(frozen=True)
class TokenInfo:
    """What a validated token says about its caller."""

    id: str
    user_id: str
    user_name: str
    project_id: str | None
    project_name: str | None
    roles: tuple[tuple[str, str], ...]  # (id, name)
    methods: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    audit_id: str = field(default_factory=lambda: secrets.token_urlsafe(16)[:22])

    @property
    def role_names(self) -> list[str]:
        return [name for _, name in self.roles]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.role_names


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


class IdentityService:
    """Authenticates users and issues, validates and revokes tokens."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        public_url: str,
        region: str,
        token_lifetime: int,
        *,
        bcrypt_rounds: int = 12,
        lockout_failure_attempts: int = 0,
        lockout_duration: float = 1800,
    ) -> None:
        """``lockout_failure_attempts`` failed checks in a row lock a user for ``lockout_duration``
        seconds (0: no lockout); unknown users are checked against a hash of ``bcrypt_rounds``."""
        self.pool = pool
        self.public_url = public_url.rstrip("/")
        self.region = region
        self.token_lifetime = token_lifetime
        self.lockout_failure_attempts = lockout_failure_attempts
        self.lockout_duration = lockout_duration
        self._dummy_hash = dummy_hash(bcrypt_rounds)
        self._checks = asyncio.Semaphore(PASSWORD_CHECKS)
        self._gates: dict[str, _Gate] = {}
        self._cache: dict[str, TokenInfo] = {}
        # Bumped by forget(): a validation that started before a change must not cache its result.
        self._generation = 0

    # -- authentication -------------------------------------------------
    async def authenticate_password(self, user: dict) -> asyncpg.Record:
        """Check a password method's user block; any failure is the same 401, except a
        locked user's (Keystone's AccountLocked names the user)."""
        password = user.get("password")
        if not isinstance(password, str):
            raise NotAuthenticated()
        async with self.pool.acquire() as conn:
            if user.get("id"):
                row = await q.get_user(conn, str(user["id"]))
            elif user.get("name"):
                domain = user.get("domain") or {}
                if domain.get("id", "default") != "default" or domain.get("name", "Default") != "Default":
                    raise NotAuthenticated()
                row = await q.get_user_by_name(conn, str(user["name"]))
            else:
                raise NotAuthenticated()
        if row is None or not row["enabled"] or not row["password_hash"]:
            # The same bcrypt work as a real check: the time taken does not say which part was wrong.
            await self._check(password, self._dummy_hash)
            raise NotAuthenticated()
        if not self.lockout_failure_attempts:
            if not await self._check(password, row["password_hash"]):
                raise NotAuthenticated()
            return row
        return await self._check_with_lockout(row, password)

    async def _check(self, password: str, hashed: str) -> bool:
        async with self._checks:
            return await asyncio.to_thread(check_password, password, hashed)

    def _recent_failures(self, row: asyncpg.Record, now: datetime) -> int:
        """Failures that still count: those of a run whose last one is younger than the duration."""
        last = row["failed_auth_at"]
        if last is None or last <= now - timedelta(seconds=self.lockout_duration):
            return 0
        return row["failed_auth_count"]

    async def _check_with_lockout(self, row: asyncpg.Record, password: str) -> asyncpg.Record:
        """Keystone's lockout: a locked user is refused before the password is looked at; a failure
        is counted, a success resets the count. At most (attempts - failures) checks of one user
        run at once, the others wait for their outcome, so parallel guesses get no more tries."""
        user_id = row["id"]
        gate = self._gates.setdefault(user_id, _Gate())
        gate.waiters += 1
        try:
            async with gate.changed:
                while True:
                    failures = self._recent_failures(row, datetime.now(UTC))
                    if failures >= self.lockout_failure_attempts:
                        raise AccountLocked(user_id)
                    if failures + gate.checking < self.lockout_failure_attempts:
                        break
                    await gate.changed.wait()
                    async with self.pool.acquire() as conn:  # the checks before this one wrote their outcome
                        row = await q.get_user(conn, user_id)
                    if row is None or not row["enabled"] or not row["password_hash"]:
                        raise NotAuthenticated()
                gate.checking += 1
            try:
                ok = await self._check(password, row["password_hash"])
                async with self.pool.acquire() as conn:
                    if not ok:
                        await q.record_failed_auth(conn, user_id, datetime.now(UTC), self.lockout_duration)
                    elif row["failed_auth_count"]:
                        await q.reset_failed_auth(conn, user_id)
            finally:
                async with gate.changed:
                    gate.checking -= 1
                    gate.changed.notify_all()
        finally:
            gate.waiters -= 1
            if not gate.waiters:
                del self._gates[user_id]
        if not ok:
            raise NotAuthenticated()
        return row

    async def resolve_scope(self, user_id: str, scope: dict | None) -> asyncpg.Record | None:
        """The project a token will be scoped to; the user must hold a role on it."""
        if not scope:
            return None
        project = scope.get("project")
        if not isinstance(project, dict):
            raise NotAuthenticated("Only project scope is supported.")
        async with self.pool.acquire() as conn:
            if project.get("id"):
                row = await q.get_project(conn, str(project["id"]))
            else:
                row = await q.get_project_by_name(conn, str(project.get("name")))
            if row is None or not row["enabled"]:
                raise NotAuthenticated()
            if not await q.role_names(conn, user_id, row["id"]):
                raise NotAuthenticated()
        return row

    # -- tokens ----------------------------------------------------------
    async def issue(
        self, user_id: str, project_id: str | None, methods: list[str], expires_at: datetime | None = None
    ) -> TokenInfo:
        now = datetime.now(UTC)
        lifetime_end = now + timedelta(seconds=self.token_lifetime)
        expires = min(expires_at, lifetime_end) if expires_at else lifetime_end
        token_id = "nl" + secrets.token_urlsafe(32)
        async with self.pool.acquire() as conn:
            await q.insert_token(conn, token_id, user_id, project_id, methods, now, expires)
        info = await self.validate(token_id)
        if info is None:  # pragma: no cover - just inserted
            raise NotAuthenticated()
        return info

    async def validate(self, token_id: str) -> TokenInfo | None:
        """The token's info, or None when it is unknown, expired or revoked."""
        info = self._cache.get(token_id)
        now = datetime.now(UTC)
        metrics.token_lookup(info is not None)
        if info is not None:
            if info.expires_at > now:
                return info
            self._cache.pop(token_id, None)
            return None
        generation = self._generation
        async with self.pool.acquire() as conn:
            row = await q.get_token(conn, token_id)
            if row is None or not row["user_enabled"]:
                return None
            roles: list[tuple[str, str]] = []
            if row["project_id"] is not None:
                if not row["project_enabled"]:
                    return None
                assigned = await q.role_names(conn, row["user_id"], row["project_id"])
                if not assigned:
                    return None
                by_name = {r["name"]: r["id"] for r in await q.all_roles(conn)}
                roles = [(by_name[n], n) for n in expand_roles([r["name"] for r in assigned]) if n in by_name]
        info = TokenInfo(
            id=token_id,
            user_id=row["user_id"],
            user_name=row["user_name"],
            project_id=row["project_id"],
            project_name=row["project_name"],
            roles=tuple(roles),
            methods=tuple(row["methods"]),
            issued_at=row["issued_at"],
            expires_at=row["expires_at"],
        )
        if generation == self._generation:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[token_id] = info
        return info

    async def revoke(self, token_id: str) -> bool:
        # Before the UPDATE: no request is answered from the cache meanwhile. After its commit,
        # as forget() is called: a validation that read the row before the commit sees a new
        # generation and does not cache what it read.
        self._forget_token(token_id)
        async with self.pool.acquire() as conn:
            revoked = await q.revoke_token(conn, token_id)
        self._forget_token(token_id)
        return revoked

    def _forget_token(self, token_id: str) -> None:
        self._generation += 1
        self._cache.pop(token_id, None)

    def forget(self, *, user_id: str | None = None, project_id: str | None = None) -> None:
        """Drop cached tokens of a user or project after their roles or state changed."""
        self._generation += 1
        for tid, info in list(self._cache.items()):
            if (user_id and info.user_id == user_id) or (project_id and info.project_id == project_id):
                self._cache.pop(tid, None)

    # -- documents -------------------------------------------------------
    def catalog(self, project_id: str | None = None) -> list[dict]:
        services = [
            ("identity", "keystone", f"{self.public_url}/identity"),
            ("compute", "nova", f"{self.public_url}/compute/v2.1"),
            ("image", "glance", f"{self.public_url}/image"),
            ("network", "neutron", f"{self.public_url}/networking"),
        ]
        if project_id:  # Cinder v3 at 3.0 needs the project in the path, as DevStack lists it
            services += [
                ("volumev3", "cinderv3", f"{self.public_url}/volume/v3/{project_id}"),
                ("block-storage", "cinder", f"{self.public_url}/volume/v3/{project_id}"),
            ]
        out = []
        for stype, name, url in services:
            sid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{stype}:{url}")).replace("-", "")
            endpoints = [
                {
                    "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{iface}:{url}")).replace("-", ""),
                    "interface": iface,
                    "region": self.region,
                    "region_id": self.region,
                    "url": url,
                }
                for iface in ("public", "internal", "admin")
            ]
            out.append({"id": sid, "type": stype, "name": name, "endpoints": endpoints})
        return out

    def token_body(self, info: TokenInfo, with_catalog: bool = True) -> dict:
        token: dict = {
            "methods": list(info.methods),
            "user": {"domain": DOMAIN, "id": info.user_id, "name": info.user_name, "password_expires_at": None},
            "audit_ids": [info.audit_id],
            "expires_at": _iso(info.expires_at),
            "issued_at": _iso(info.issued_at),
        }
        if info.project_id is not None:
            token["project"] = {"domain": DOMAIN, "id": info.project_id, "name": info.project_name}
            token["is_domain"] = False
            token["roles"] = [{"id": rid, "name": name} for rid, name in info.roles]
            if with_catalog:
                token["catalog"] = self.catalog(info.project_id)
        return {"token": token}

