"""The one reading of a list request's ``limit``, for every service.

Each list answers at most ``[api] max_limit`` items, whatever ``limit`` asks
(Nova's max_limit, Glance's api_limit_max, Cinder's osapi_max_limit and
Neutron's pagination_max_limit clamp the same way; Keystone, which has no
``limit``, truncates to list_limit). A negative or non-integer ``limit`` is the
service's own 400. ``tests/test_request_limits.py`` walks every GET route of
the app to hold each list to this.
"""

from __future__ import annotations

from aiohttp import web

from novalite.api import errors, keys


def max_limit(request: web.Request) -> int:
    return request.app[keys.CONFIG].api.max_limit


def _service(request: web.Request) -> str:
    return request.path.split("/", 2)[1] if request.path.count("/") >= 1 else ""


def page_limit(request: web.Request) -> int:
    """How many items this list request may answer: ``limit`` clamped to max_limit (absent: max_limit)."""
    cap = max_limit(request)
    raw = request.query.get("limit")
    service = _service(request)
    if raw is None or service == "identity":
        return cap
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0 or not raw.strip().lstrip("+-").isdigit():
        if service == "networking":
            raise errors.BadRequest(f"Bad limit request: Limit must be an integer 0 or greater and not '{raw}'.")
        if value < 0 and raw.strip().lstrip("-").isdigit():
            raise errors.BadRequest("limit param must be positive")
        raise errors.BadRequest("limit param must be an integer")
    if value == 0 and service == "networking":
        return cap  # Neutron: 0 is no limit, which max_limit bounds
    return min(value, cap)


def capped(request: web.Request, items: list) -> list:
    """A list its upstream API does not paginate (``limit`` is ignored there, so here too),
    cut to max_limit all the same."""
    return items[: max_limit(request)]
