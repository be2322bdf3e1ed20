"""HTTP errors of the API layer, and the body shape of each service.

Services raise :mod:`novalite.exception` errors; handlers raise those too (the
names below are the same classes under the API's usual names) or the few
HTTP-only ones defined here. The error middleware renders every
:class:`~novalite.exception.NovaliteException` by its ``code`` in the body shape
of the service the path belongs to (see ``middleware.error_response``).
"""

from __future__ import annotations

from http import HTTPStatus

from novalite.exception import Conflict, Forbidden, Invalid, NotFound, OverLimit, QuotaExceeded
from novalite.exception import NotAuthenticated as Unauthorized
from novalite.exception import NovaliteException as ApiError

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Invalid",
    "MethodNotAllowed",
    "NotAcceptable",
    "NotFound",
    "OverLimit",
    "QuotaExceeded",
    "Unauthorized",
    "UnsupportedMediaType",
    "keystone_body",
    "nova_body",
]

BadRequest = Invalid

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


class MethodNotAllowed(ApiError):
    code = 405


class NotAcceptable(ApiError):
    code = 406


class UnsupportedMediaType(ApiError):
    code = 415


def nova_body(status: int, message: str) -> dict:
    return {NOVA_FAULT_NAMES.get(status, "computeFault"): {"code": status, "message": message}}


def keystone_body(status: int, message: str) -> dict:
    return {"error": {"code": status, "message": message, "title": HTTPStatus(status).phrase}}
