"""Dashboard sessions: a random id in a cookie, the Keystone token kept server-side.

The store is this process's memory: a restart forgets every session (users log
in again; their tokens stay valid in Keystone until they expire, as tokens do
when a Horizon session store is flushed). The cookie is HttpOnly and
SameSite=Strict, and Secure when the page was served over TLS (directly or
behind a proxy saying so, or a public URL on https)."""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from aiohttp import web

from novalite.api import keys

COOKIE = "novalite_session"
CSRF_FIELD = "csrf_token"
MAX_SESSIONS = 10_000  # the oldest session goes when more log in (memory stays bounded)


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

    def take_flash(self) -> str:
        message, self.flash = self.flash, ""
        return message

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def csrf_ok(self, given: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), given.encode())


class SessionStore:
    """Sessions by id, in memory; expired ones are dropped when looked up."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def create(self, **fields) -> Session:
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        session = Session(id=secrets.token_urlsafe(32), **fields)
        self._sessions[session.id] = session
        return session

    def replace_token(self, session: Session, **fields) -> None:
        """A project switch: the same browser session, a new token (and a new CSRF secret)."""
        for name, value in fields.items():
            setattr(session, name, value)
        session.csrf = secrets.token_urlsafe(32)

    def get(self, session_id: str | None) -> Session | None:
        session = self._sessions.get(session_id or "")
        if session is not None and session.expires_at <= time.time():
            del self._sessions[session.id]
            return None
        return session

    def drop(self, session: Session) -> None:
        self._sessions.pop(session.id, None)


def over_tls(request: web.Request) -> bool:
    """Whether the browser reached this page over TLS."""
    return (request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
            or request.config_dict[keys.CONFIG].public_url.startswith("https:"))


def set_cookie(request: web.Request, resp: web.StreamResponse, session: Session) -> None:
    resp.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", secure=over_tls(request), path="/",
                    max_age=max(0, int(session.expires_at - time.time())))


def clear_cookie(resp: web.StreamResponse) -> None:
    resp.del_cookie(COOKIE, path="/")
