"""The domain's errors: what a service below the API can say went wrong.

As in Nova's ``nova/exception.py``, each error carries the ``code`` an API
answers it with (``Invalid`` 400, ``NotFound`` 404, ...), so a service never
needs HTTP to say "not found"; the API's error middleware renders any
:class:`NovaliteException` in the body shape of the service the request was for.
"""

from __future__ import annotations


class NovaliteException(Exception):
    """Base of every domain error: a user-facing message and the status an API answers with."""

    code = 500

    def __init__(self, message: str, *, code: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}


class Invalid(NovaliteException):
    """Input that fails validation."""

    code = 400


class NotAuthenticated(NovaliteException):
    """No valid token (Keystone's 401)."""

    code = 401

    def __init__(self, message: str = "The request you have made requires authentication.") -> None:
        super().__init__(message)


class AccountLocked(NotAuthenticated):
    """Too many failed password checks in a row (Keystone's AccountLocked, a 401)."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"The account is locked for user: {user_id}.")


class Forbidden(NovaliteException):
    code = 403


class QuotaExceeded(Forbidden):
    """Nova answers quota overruns on create with 403."""


class NotFound(NovaliteException):
    code = 404


class Conflict(NovaliteException):
    """The resource is in a state that does not allow this (Nova's 409s: invalid state, locked, in use)."""

    code = 409


class OverLimit(NovaliteException):
    """Over a size or rate limit (413)."""

    code = 413


class NotImplementedYet(NovaliteException):
    """A valid request for something novalite does not do (501)."""

    code = 501


class ServiceUnavailable(NovaliteException):
    code = 503
