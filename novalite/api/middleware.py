"""Middlewares shared by every API: request ids, errors, auth and microversions."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import structlog
from aiohttp import web

from novalite import metrics
from novalite.api import errors, jsonbody, keys, validation
from novalite.context import RequestContext
from novalite.identity import IdentityService, TokenInfo

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Microversions novalite answers exactly as Nova does.
MIN_VERSION = (2, 1)
MAX_VERSION = (2, 96)
API_VERSION_HEADER = "OpenStack-API-Version"
LEGACY_VERSION_HEADER = "X-OpenStack-Nova-API-Version"

# Paths served without a token: version documents and token creation.
# The serial console's websocket carries its own credential (a console token).
_PUBLIC = re.compile(r"^/(identity|compute|image|networking|volume)(/v[0-9.]+)?/?$|^/identity/v3/auth/tokens/?$|^/?$"
                     r"|^/console/serial$")


# The web dashboard (novalite.dashboard) and / sending browsers to it: they authenticate by their own
# session cookie and reach the APIs with the session's token, through this middleware like any client.
_DASHBOARD = re.compile(r"^/dashboard(/.*)?$")

# Answered to anyone (load balancers, systemd, monitoring); a valid admin token gets the detail.
HEALTHCHECK_PATH = "/healthcheck"

# oslo.middleware's request_id format: an incoming X-OpenStack-Request-ID is taken only in this shape.
_REQUEST_ID = re.compile(r"^req-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$")
REQUEST_ID_HEADER = "X-OpenStack-Request-ID"

access_log = structlog.get_logger("novalite.access")

_IMAGE_DATA = re.compile(r"^/(image/v2/images/[^/]+/file|dashboard/images/[^/]+/data)/?$")  # and the dashboard's


def service_of(path: str) -> str:
    return path.split("/", 2)[1] if path.count("/") >= 1 else ""


# Neutron's exception type names by status, for errors raised without one.
NEUTRON_ERROR_TYPES = {400: "HTTPBadRequest", 401: "HTTPUnauthorized", 403: "HTTPForbidden", 404: "HTTPNotFound",
                       405: "HTTPMethodNotAllowed", 409: "HTTPConflict"}


def error_response(request: web.Request, exc: errors.ApiError) -> web.Response:
    """Render a domain or HTTP error in the body shape of the service the path belongs to."""
    service = service_of(request.path)
    status = exc.code
    if service == "identity" or status == 401:  # 401s come from keystonemiddleware in OpenStack
        body = errors.keystone_body(status, exc.message)
    elif service == "image":
        body = {"code": status, "title": HTTPStatus(status).phrase, "message": exc.message}
    elif service == "networking":
        kind = getattr(exc, "kind", None) or NEUTRON_ERROR_TYPES.get(status, "HTTPInternalServerError")
        body = {"NeutronError": {"type": kind, "message": exc.message, "detail": ""}}
    else:
        body = errors.nova_body(status, exc.message)
    resp = web.json_response(body, status=status, headers=exc.headers)
    if status == 401:
        public_url = request.app[keys.CONFIG].public_url
        resp.headers["WWW-Authenticate"] = f'Keystone uri="{public_url}/identity"'
    return resp


def incoming_request_id(request: web.Request) -> str:
    """The caller's X-OpenStack-Request-ID when well formed (``req-<uuid>``), else a new one.

    oslo.middleware keeps a caller's id as the *global* request id beside a new
    local one; novalite is one process, so the caller's id is the request id
    itself: one id to grep in the client's and the server's logs."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _REQUEST_ID.match(given) else f"req-{uuid.uuid4()}"


UNMATCHED = "unmatched"  # the metric's route for requests no route matched (404, 405), whatever the path


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id, bind it to every log line and echo it back; time the request
    once for both its access line and its API metric (``novalite_api_request_seconds``)."""
    started = time.perf_counter()
    request_id = incoming_request_id(request)
    request[keys.REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    foreground = request.app[keys.FOREGROUND]
    foreground.begin()
    status = 500  # what escapes as anything but an answer or an HTTP error counts as a 500
    try:
        resp = await handler(request)
        status = resp.status
    except web.HTTPException as exc:  # a redirect or an error aiohttp renders: raised on, as aiohttp wants
        status = exc.status
        _echo_request_id(request, exc, request_id)
        raise
    finally:
        foreground.end()
        _answered(request, status, time.perf_counter() - started)
    _echo_request_id(request, resp, request_id)
    return resp


def _echo_request_id(request: web.Request, resp: web.StreamResponse | web.HTTPException, request_id: str) -> None:
    resp.headers["x-openstack-request-id"] = request_id
    if service_of(request.path) == "compute":
        resp.headers["x-compute-request-id"] = request_id


def _answered(request: web.Request, status: int, seconds: float) -> None:
    """The request's metric, by its route's pattern (``/compute/v2.1/servers/{server_id}``), and
    its access line (user and project come from the bound context)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    metrics.api_request(request.method, route or UNMATCHED, status, seconds)
    if request.app[keys.CONFIG].log.access_log:
        access_log.info("request", method=request.method, route=route, path=request.path, status=status,
                        duration_ms=round(seconds * 1000, 2), remote=request.remote)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn ApiErrors, aiohttp's own HTTP errors and crashes into proper bodies.

    A body announced larger than ``[api] max_body_bytes`` is refused here, before auth
    and before it is read (as oslo.middleware's sizelimit does in front of Nova); one
    that only turns out larger while read is refused by aiohttp's ``client_max_size``."""
    try:
        length = request.content_length
        if length is not None and length > request.app[keys.CONFIG].api.max_body_bytes and not streams_body(request):
            raise web.HTTPRequestEntityTooLarge(max_size=request.app[keys.CONFIG].api.max_body_bytes,
                                                actual_size=length)
        validation.refuse_nul(request.path, request.query)
        return await handler(request)
    except errors.ApiError as exc:
        if exc.code >= 500:
            log.error("api_error", status=exc.code, message=exc.message)
        return error_response(request, exc)
    except web.HTTPRequestEntityTooLarge:
        return error_response(request, errors.OverLimit("Request is too large."))
    except web.HTTPMethodNotAllowed:
        return error_response(request, errors.MethodNotAllowed("The method specified is not allowed for this resource."))
    except web.HTTPNotFound:
        return error_response(request, errors.NotFound("The resource could not be found."))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled_error", path=request.path, method=request.method)
        exc = errors.ApiError(
            "Unexpected API Error. Please report this at http://bugs.launchpad.net/nova/ "
            f"and attach the Nova API log if possible.\n<class 'Exception'> (request {request[keys.REQUEST_ID]})"
        )
        return error_response(request, exc)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require a valid X-Auth-Token on everything but discovery, token creation and the healthcheck."""
    if request.method == "POST" and _PUBLIC.match(request.path) and request.path.startswith("/identity"):
        return await handler(request)
    if request.method == "GET" and _PUBLIC.match(request.path) and "auth/tokens" not in request.path:
        return await handler(request)
    if request.path == HEALTHCHECK_PATH:  # anyone; the handler reads a token itself, for the detail only
        return await handler(request)
    if _DASHBOARD.match(request.path):
        return await handler(request)
    info = await authenticate(request)
    if info is None:
        raise errors.Unauthorized()
    if info.project_id is None and not request.path.startswith("/identity"):
        raise errors.Unauthorized()
    return await handler(request)


async def authenticate(request: web.Request) -> TokenInfo | None:
    """Validate the request's X-Auth-Token: None without a valid one; else the token, put on the
    request with (for a project-scoped token) its RequestContext, user and project bound to the log."""
    token_id = request.headers.get("X-Auth-Token")
    if not token_id:
        return None
    identity: IdentityService = request.app[keys.IDENTITY]
    info = await identity.validate(token_id)
    if info is None:
        return None
    request[keys.TOKEN] = info
    if info.project_id is not None:
        request[keys.CONTEXT] = RequestContext(
            request_id=request[keys.REQUEST_ID],
            user_id=info.user_id,
            project_id=info.project_id,
            roles=tuple(info.role_names),
            user_name=info.user_name,
            project_name=info.project_name or "",
        )
        structlog.contextvars.bind_contextvars(user_id=info.user_id, project_id=info.project_id)
    return info


def parse_version(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*([1-9]\d*)\.(0|[1-9]\d*)\s*", text)
    if not m:
        raise errors.BadRequest(
            f"API Version String {text} is of invalid format. Must be of format MajorNum.MinorNum."
        )
    return int(m.group(1)), int(m.group(2))


def version_string(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def requested_version(headers: dict) -> tuple[int, int]:
    """The compute microversion of a request, as Nova reads it from the headers."""
    raw = None
    for value in headers.getall(API_VERSION_HEADER, []) if hasattr(headers, "getall") else []:
        for part in value.split(","):
            service, _, ver = part.strip().partition(" ")
            if service.lower() == "compute":
                raw = ver.strip()
    if raw is None:
        raw = headers.get(LEGACY_VERSION_HEADER)
    if raw is None:
        return MIN_VERSION
    if raw.strip().lower() == "latest":
        return MAX_VERSION
    version = parse_version(raw)
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise errors.NotAcceptable(
            f"Version {version_string(version)} is not supported by the API. "
            f"Minimum is {version_string(MIN_VERSION)} and maximum is {version_string(MAX_VERSION)}."
        )
    return version


@web.middleware
async def microversion_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Negotiate the compute microversion and echo it back, as Nova does."""
    if not request.path.startswith("/compute/v2.1/") and request.path != "/compute/v2.1/":
        return await handler(request)
    version = requested_version(request.headers)
    request[keys.VERSION] = version
    try:
        resp = await handler(request)
    except errors.ApiError as exc:
        resp = error_response(request, exc)
    vs = version_string(version)
    resp.headers[API_VERSION_HEADER] = f"compute {vs}"
    resp.headers[LEGACY_VERSION_HEADER] = vs
    resp.headers["Vary"] = f"{API_VERSION_HEADER}, {LEGACY_VERSION_HEADER}"
    return resp


async def read_json(request: web.Request) -> dict:
    """The request body as a JSON object, or Nova's 400 for anything else."""
    ctype = request.content_type
    if ctype not in ("application/json", "application/octet-stream", "") and not ctype.endswith("+json"):
        raise errors.UnsupportedMediaType("Unsupported Content-Type")
    raw = await request.read()
    if not raw:
        raise errors.BadRequest("The server could not comply with the request since it is either malformed or otherwise incorrect.")
    body = parse_json(request, raw, "Malformed request body")
    if not isinstance(body, dict):
        raise errors.BadRequest("Malformed request body")
    return body


def parse_json(request: web.Request, raw: bytes, message: str):
    """Any service's JSON body through the one parser (UTF-8, depth, number limits); 400 ``message``."""
    return jsonbody.parse(raw, request.app[keys.CONFIG].api.max_json_depth, message)


def streams_body(request: web.Request) -> bool:
    """Requests whose body is streamed to disk, not read whole: Glance image data uploads (and
    the dashboard's, which it streams on to Glance), bounded by the image size cap, the image quota and the store's free space instead."""
    return request.method == "PUT" and _IMAGE_DATA.match(request.path) is not None
