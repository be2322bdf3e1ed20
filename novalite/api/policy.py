"""Policy checks for every API: the service's enforcer, the caller's credentials, a target.

Each service has its own ``Enforcer`` (``keys.POLICY`` for Nova, ``keys.GLANCE_POLICY``,
``keys.NEUTRON_POLICY``, ``keys.CINDER_POLICY``, ``keys.KEYSTONE_POLICY``), built by
``app.py`` from that service's defaults (``novalite.policies``) and override file.
Each API module turns a denial into its service's own error; this module only asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from novalite.api import errors, keys
from novalite.context import RequestContext
from novalite.policy import Enforcer


def context(request: web.Request) -> RequestContext:
    ctx = request.get(keys.CONTEXT)
    if ctx is None:
        raise errors.Unauthorized()
    return ctx


def check(
    request: web.Request,
    key: web.AppKey[Enforcer],
    rule: str,
    target: Mapping[str, Any] | None = None,
    creds: Mapping[str, Any] | None = None,
) -> bool:
    """Whether the caller passes ``rule`` of the service whose enforcer is ``key``.

    ``target`` defaults to the caller's own project and user; ``creds`` to the
    request context's (a service adds what its check strings read).
    """
    if creds is None:
        creds = context(request).creds()
    return request.app[key].check(rule, creds, target)


def is_admin(request: web.Request, key: web.AppKey[Enforcer]) -> bool:
    """The service's ``context_is_admin`` rule: who sees every project's resources."""
    return check(request, key, "context_is_admin")
