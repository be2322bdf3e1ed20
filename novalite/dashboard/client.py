"""The dashboard's one way to the APIs: HTTP to this process's own listener, as the logged-in user.

Horizon talks to Nova, Glance and Neutron through their public APIs with the
user's token; the dashboard does the same over loopback, so validation
errors, policy, project scoping, the access log and metrics are exactly the
API's own. A loopback call costs a fraction of a millisecond beside the work
the API does (bench/dashboard.py measures the whole page)."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from novalite.api import keys

UPLOAD_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=300)  # no total bound; a stalled upload ends
COMPUTE_VERSION = "compute 2.96"  # the newest microversion novalite speaks: every field the pages show


@dataclass(frozen=True)
class ApiAnswer:
    """One API answer: its status, its JSON body (None when empty or not JSON) and its headers."""

    status: int
    body: dict | None
    headers: dict[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def message(self) -> str:
        """The error message of any service's error body (Nova, Keystone, Glance, Neutron)."""
        body = self.body or {}
        if "NeutronError" in body:
            return str(body["NeutronError"].get("message", ""))
        if "message" in body:  # Glance
            return str(body["message"])
        for value in body.values():
            if isinstance(value, dict) and "message" in value:
                return str(value["message"])
        return f"The API answered {self.status}."


class ApiClient:
    """HTTP calls to this process's API listener; one connection pool for every user."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use, inside the running loop
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64),
                                                  timeout=aiohttp.ClientTimeout(total=60))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, request: web.Request, method: str, path: str, token: str | None, *,
                   body: dict | None = None, headers: dict[str, str] | None = None,
                   params: dict[str, str] | None = None, data: object = None) -> ApiAnswer:
        """``method path`` on the listener ``request`` came in on, with ``token`` as X-Auth-Token;
        ``data`` (bytes or a stream, an image upload) goes as the raw body instead of JSON ``body``."""
        hdrs = {"OpenStack-API-Version": COMPUTE_VERSION, "X-OpenStack-Request-ID": request_id_of(request)}
        if token:
            hdrs["X-Auth-Token"] = token
        hdrs.update(headers or {})
        url = own_listener(request) + path
        upload = {"timeout": UPLOAD_TIMEOUT} if data is not None else {}  # as long as its bytes take
        async with self.session().request(method, url, json=body, data=data, headers=hdrs, params=params,
                                          **upload) as resp:
            raw = await resp.read()
            parsed = None
            if raw and resp.content_type.endswith("json"):
                parsed = json.loads(raw)
            return ApiAnswer(resp.status, parsed, dict(resp.headers))


def request_id_of(request: web.Request) -> str:
    """The page request's id, passed on so one id follows a page through every API call it makes."""
    return request[keys.REQUEST_ID]


def own_listener(request: web.Request) -> str:
    """``http://ADDR:PORT`` of the socket this request arrived on: a listener of this very process."""
    host, port = request.transport.get_extra_info("sockname")[:2]
    if ipaddress.ip_address(host).is_unspecified:
        host = "::1" if ":" in host else "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
