"""Dashboard sessions: a random id in a cookie, the Keystone token kept server-side.

The store is the database (``dashboard_sessions``, by the SHA-256 of the id: a
leaked table names no cookie), so a restart or an upgrade logs nobody out; a
session ends with its token's expiry, at logout (the row deleted, the token
revoked) or when the API stops taking its token. Each login prunes a batch of
expired rows. The cookie is HttpOnly and SameSite=Strict, and Secure when the
page was served over TLS (directly or behind a proxy saying so, or a public URL
on https)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import asyncpg
from aiohttp import web

from novalite.api import keys
from novalite.db import dashboard_sessions as db

COOKIE = "novalite_session"
CSRF_FIELD = "csrf_token"
PRUNE_BATCH = 1000  # expired sessions deleted per login
MAX_REMEMBERED = 10_000  # sessions also kept in memory, the least recently used forgotten first


@dataclass
class Session:
    """One logged-in browser: who, in which project, with which token and CSRF secret."""

    id: str
    token: str
    user_id: str
    user_name: str
    project_id: str
    project_name: str
    roles: tuple[str, ...]
    expires_at: float  # the token's expiry, epoch seconds
    projects: list[tuple[str, str]] = field(default_factory=list)  # (id, name) for the project switcher
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    admin_area: bool = False  # the policy lets this token into the admin pages (the menu shows them)
    flash: str = ""  # one message for the next page (an action's answer), shown once
    image_names: dict[str, str] = field(default_factory=dict)  # memory only: the instance list's image names
    stored_flash: str = ""  # the flash as the database has it (written back when a request changed it)

    def take_flash(self) -> str:
        message, self.flash = self.flash, ""
        return message

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def csrf_ok(self, given: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), given.encode())


def id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """Sessions in the database by the hash of their id, the recently used ones also in memory:
    a page (and its live poll, every second or five) finds its session without a database round
    trip, which in a boot storm would wait for a connection behind the storm's requests."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._recent: OrderedDict[str, Session] = OrderedDict()

    def _remember(self, session: Session) -> Session:
        self._recent[session.id] = session
        self._recent.move_to_end(session.id)
        while len(self._recent) > MAX_REMEMBERED:
            self._recent.popitem(last=False)
        return session

    @staticmethod
    def _fields(session: Session) -> dict:
        return {f: v for f, v in asdict(session).items() if f in db.FIELDS}

    async def create(self, **fields) -> Session:
        session = Session(id=secrets.token_urlsafe(32), **fields)
        async with self._pool.acquire() as conn:
            await db.prune(conn, PRUNE_BATCH)
            await db.create(conn, id_hash(session.id), self._fields(session), session.expires_at)
        return self._remember(session)

    async def replace_token(self, session: Session, **fields) -> None:
        """A project switch: the same browser session, a new token (and a new CSRF secret)."""
        for name, value in fields.items():
            setattr(session, name, value)
        session.csrf = secrets.token_urlsafe(32)
        async with self._pool.acquire() as conn:
            await db.update(conn, id_hash(session.id), self._fields(session), session.expires_at)

    async def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._recent.get(session_id)
        if session is not None and session.expires_at > time.time():
            return self._remember(session)
        async with self._pool.acquire() as conn:  # not remembered, or expired: the database deletes it
            found = await db.get(conn, id_hash(session_id))
        if found is None:
            self._recent.pop(session_id, None)
            return None
        return self._remember(Session(id=session_id, stored_flash=found["flash"], **found))

    async def save_flash(self, session: Session) -> None:
        """Write the flash message back if the request changed it (set one, or showed it)."""
        if session.flash != session.stored_flash:
            async with self._pool.acquire() as conn:
                await db.set_flash(conn, id_hash(session.id), session.flash)
            session.stored_flash = session.flash

    async def drop(self, session: Session) -> None:
        self._recent.pop(session.id, None)
        async with self._pool.acquire() as conn:
            await db.delete(conn, id_hash(session.id))


def over_tls(request: web.Request) -> bool:
    """Whether the browser reached this page over TLS."""
    return (request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
            or request.config_dict[keys.CONFIG].public_url.startswith("https:"))


def set_cookie(request: web.Request, resp: web.StreamResponse, session: Session) -> None:
    resp.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", secure=over_tls(request), path="/",
                    max_age=max(0, int(session.expires_at - time.time())))


def clear_cookie(resp: web.StreamResponse) -> None:
    resp.del_cookie(COOKIE, path="/")
