"""API errors and how each service renders them.

Handlers and the layers below raise ``ApiError`` subclasses; the error
middleware renders them in the body shape of the service the path belongs to:
Nova's ``{"badRequest": {"code": 400, "message": ...}}`` under /compute,
Keystone's ``{"error": {"code", "message", "title"}}`` under /identity.
"""

from __future__ import annotations

from http import HTTPStatus

# Nova's fault names by status (nova/api/openstack/wsgi.py Fault); others: computeFault.
NOVA_FAULT_NAMES = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    429: "overLimit",
    501: "notImplemented",
    503: "serviceUnavailable",
}


class ApiError(Exception):
    """An error with an HTTP status and a user-facing message."""

    status = 500

    def __init__(self, message: str, *, status: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401

    def __init__(self, message: str = "The request you have made requires authentication.") -> None:
        super().__init__(message)


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405


class NotAcceptable(ApiError):
    status = 406


class Conflict(ApiError):
    status = 409


class OverLimit(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class Invalid(BadRequest):
    """Input that fails validation (below the API layer, no HTTP knowledge needed)."""


class QuotaExceeded(Forbidden):
    """Nova answers quota overruns on create with 403."""


def nova_body(status: int, message: str) -> dict:
    return {NOVA_FAULT_NAMES.get(status, "computeFault"): {"code": status, "message": message}}


def keystone_body(status: int, message: str) -> dict:
    return {"error": {"code": status, "message": message, "title": HTTPStatus(status).phrase}}
