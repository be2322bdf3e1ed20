"""The request context: who is calling and which request this is, passed to every layer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    """The caller of one API request; built by the API's auth middleware, read by the services."""

    request_id: str
    user_id: str
    project_id: str
    roles: tuple[str, ...]
    user_name: str = ""
    project_name: str = ""

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def creds(self) -> dict:
        """The target-independent credentials a policy check reads."""
        return {
            "user_id": self.user_id,
            "project_id": self.project_id,
            "roles": list(self.roles),
            "is_admin": self.is_admin,
        }
