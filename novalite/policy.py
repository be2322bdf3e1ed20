"""Policy engine for novalite: oslo.policy check strings plus Nova 34's defaults.

Every API call asks ``Enforcer.authorize(rule, creds, target)``. Rules use the
oslo.policy check-string language (the subset Nova uses) and are parsed once
into a tree of small check objects, so evaluation is plain Python calls.

Supported syntax::

    @                        always allow (an empty string also allows)
    !                        never allow
    role:<name>              creds["roles"] contains <name> (case-insensitive)
    rule:<name>              evaluate another named rule (unknown name: deny)
    is_admin:True            creds["is_admin"] is True (Nova's own check)
    <cred_key>:%(<tkey>)s    str(creds[cred_key]) == str(target[tkey])
    <cred_key>:<literal>     str(creds[cred_key]) == "<literal>"
    '<literal>':%(<tkey>)s   the Python literal equals str(target[tkey])
    not X / X and Y / X or Y / ( ... )

Precedence is ``not`` > ``and`` > ``or``; the keywords are case-insensitive,
check names (``role``, ``rule``, ...) are case-sensitive, as in oslo.policy.
Dotted cred keys (``a.b``) walk nested dicts; lists match if any item does.
A target key missing from the target makes that check deny.

Defaults: Nova 34 registers only project-scoped (``scope_types=['project']``)
or unscoped rules and its check strings no longer contain ``system_scope``
parts. With ``enforce_scope``/``enforce_new_defaults`` on (Nova 34's default),
a project-scoped token passes every scope check, and deprecated (legacy) check
strings are ignored. novalite only has project-scoped credentials, so the
scope check is dropped and the new-default check strings are used verbatim.

Roles: Keystone's bootstrap makes ``admin`` imply ``manager`` imply ``member``
imply ``reader`` and expands implied roles into the token. novalite has no
Keystone, so the Enforcer expands the same chain (``IMPLIED_ROLES``) itself;
pass ``implied_roles={}`` to get oslo.policy's plain behaviour.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

LOG = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RULES",
    "IMPLIED_ROLES",
    "Check",
    "Enforcer",
    "PolicyError",
    "PolicyFileError",
    "PolicyNotAuthorized",
    "PolicyNotRegistered",
    "PolicySyntaxError",
    "RuleDefault",
    "generate_sample",
    "parse_rule",
]


# --------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------


class PolicyError(Exception):
    """Base class for every error raised by the policy engine."""


class PolicyNotAuthorized(PolicyError):
    """The credentials do not satisfy the rule (maps to HTTP 403)."""

    def __init__(self, rule: str) -> None:
        self.rule = rule
        super().__init__(f"Policy doesn't allow {rule} to be performed.")


class PolicyNotRegistered(PolicyError):
    """The rule name has no registered default: a programming error."""

    def __init__(self, rule: str) -> None:
        self.rule = rule
        super().__init__(f"Policy {rule} has not been registered")


class PolicySyntaxError(PolicyError, ValueError):
    """A check string cannot be parsed."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(f"invalid check string {text!r}: {reason}")


class PolicyFileError(PolicyError):
    """The policy file is unreadable or holds an invalid rule."""

    def __init__(self, path: Path, message: str, rule: str | None = None) -> None:
        self.path = path
        self.rule = rule
        where = (
            f"rule {rule!r} in policy file {str(path)!r}"
            if rule
            else (f"policy file {str(path)!r}")
        )
        super().__init__(f"{where}: {message}")


# --------------------------------------------------------------------------
# Check tree
# --------------------------------------------------------------------------


class _Ctx:
    """Per-call evaluation state shared by every node of a check tree."""

    __slots__ = ("target", "creds", "roles", "rules", "missing")

    def __init__(
        self,
        target: Mapping[str, Any],
        creds: Mapping[str, Any],
        roles: frozenset[str] | set[str],
        rules: Mapping[str, Check],
        missing: _MissingRuleReporter,
    ) -> None:
        self.target = target
        self.creds = creds
        self.roles = roles
        self.rules = rules
        self.missing = missing


class _MissingRuleReporter:
    """Logs each dangling ``rule:`` reference once instead of on every call."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, name: str) -> None:
        if name not in self.seen:
            self.seen.add(name)
            LOG.warning("Policy references unknown rule %r; denying", name)


class Check:
    """A parsed check-string node; call ``evaluate`` or use an Enforcer."""

    __slots__ = ()

    def __call__(self, ctx: _Ctx) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(
        self,
        creds: Mapping[str, Any],
        target: Mapping[str, Any],
        rules: Mapping[str, Check] | None = None,
    ) -> bool:
        """Evaluate standalone (roles not expanded); handy for tests and tools."""
        roles = {str(r).lower() for r in creds.get("roles") or ()}
        return self(_Ctx(target, creds, roles, rules or {}, _MissingRuleReporter()))

    def rule_refs(self) -> Iterator[str]:
        """Yield the names of every ``rule:`` this tree references."""
        return iter(())


class _TrueCheck(Check):
    __slots__ = ()

    def __call__(self, ctx: _Ctx) -> bool:
        return True

    def __str__(self) -> str:
        return "@"


class _FalseCheck(Check):
    __slots__ = ()

    def __call__(self, ctx: _Ctx) -> bool:
        return False

    def __str__(self) -> str:
        return "!"


class _NotCheck(Check):
    __slots__ = ("rule",)

    def __init__(self, rule: Check) -> None:
        self.rule = rule

    def __call__(self, ctx: _Ctx) -> bool:
        return not self.rule(ctx)

    def __str__(self) -> str:
        return f"not {self.rule}"

    def rule_refs(self) -> Iterator[str]:
        return self.rule.rule_refs()


class _AndCheck(Check):
    __slots__ = ("rules",)

    def __init__(self, rules: list[Check]) -> None:
        self.rules = tuple(rules)

    def __call__(self, ctx: _Ctx) -> bool:
        for rule in self.rules:
            if not rule(ctx):
                return False
        return True

    def __str__(self) -> str:
        return "(" + " and ".join(str(r) for r in self.rules) + ")"

    def rule_refs(self) -> Iterator[str]:
        for rule in self.rules:
            yield from rule.rule_refs()


class _OrCheck(Check):
    __slots__ = ("rules",)

    def __init__(self, rules: list[Check]) -> None:
        self.rules = tuple(rules)

    def __call__(self, ctx: _Ctx) -> bool:
        for rule in self.rules:
            if rule(ctx):
                return True
        return False

    def __str__(self) -> str:
        return "(" + " or ".join(str(r) for r in self.rules) + ")"

    def rule_refs(self) -> Iterator[str]:
        for rule in self.rules:
            yield from rule.rule_refs()


_SIMPLE_SUBST = re.compile(r"%\(([^()]+)\)s")


class _Template:
    """The right-hand side of ``kind:match``, expanded against the target.

    ``render`` returns None when the target lacks a key (oslo.policy denies).
    """

    __slots__ = ("text", "key", "constant")

    def __init__(self, text: str) -> None:
        self.text = text
        self.key: str | None = None
        self.constant = "%" not in text
        m = _SIMPLE_SUBST.fullmatch(text)
        if m:
            self.key = m.group(1)
        elif not self.constant:
            try:  # validate the format string once, at parse time
                text % _AnyMapping()
            except TypeError:
                pass  # e.g. %(n)d: only a real target value can tell
            except ValueError as exc:
                raise PolicySyntaxError(text, f"bad substitution: {exc}") from None

    def render(self, target: Mapping[str, Any]) -> str | None:
        if self.constant:
            return self.text
        if self.key is not None:
            try:
                return str(target[self.key])
            except KeyError:
                return None
        try:
            return self.text % target
        except (KeyError, TypeError, ValueError):
            return None


class _AnyMapping(dict):  # type: ignore[type-arg]
    """Mapping that answers every key with a string; used to vet templates."""

    def __missing__(self, key: str) -> str:
        return ""


class _RuleCheck(Check):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, ctx: _Ctx) -> bool:
        rule = ctx.rules.get(self.name)
        if rule is None:
            ctx.missing(self.name)
            return False
        return rule(ctx)

    def __str__(self) -> str:
        return f"rule:{self.name}"

    def rule_refs(self) -> Iterator[str]:
        yield self.name


class _RoleCheck(Check):
    __slots__ = ("match",)

    def __init__(self, match: str) -> None:
        self.match = _Template(match)

    def __call__(self, ctx: _Ctx) -> bool:
        role = self.match.render(ctx.target)
        return role is not None and role.lower() in ctx.roles

    def __str__(self) -> str:
        return f"role:{self.match.text}"


class _IsAdminCheck(Check):
    """Nova's ``is_admin:<bool>`` check: compares creds["is_admin"] as a bool."""

    __slots__ = ("expected", "text")

    def __init__(self, match: str) -> None:
        self.text = match
        self.expected = match.lower() == "true"

    def __call__(self, ctx: _Ctx) -> bool:
        value = ctx.creds.get("is_admin", False)
        if isinstance(value, str):
            value = value.lower() == "true"
        return bool(value) == self.expected

    def __str__(self) -> str:
        return f"is_admin:{self.text}"


_NO_LITERAL = object()


class _GenericCheck(Check):
    __slots__ = ("kind", "path", "literal", "match")

    def __init__(self, kind: str, match: str) -> None:
        self.kind = kind
        self.match = _Template(match)
        self.path = tuple(kind.split("."))
        try:  # oslo.policy: a kind that is a Python literal is compared as str
            self.literal: Any = str(ast.literal_eval(kind))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            self.literal = _NO_LITERAL

    def __call__(self, ctx: _Ctx) -> bool:
        match = self.match.render(ctx.target)
        if match is None:
            return False
        if self.literal is not _NO_LITERAL:
            return match == self.literal
        return _find_in(ctx.creds, self.path, match)

    def __str__(self) -> str:
        return f"{self.kind}:{self.match.text}"


def _find_in(value: Any, path: tuple[str, ...], match: str) -> bool:
    """Walk ``path`` through nested dicts/lists; True if any leaf equals match."""
    if not path:
        return str(value) == match
    try:
        value = value[path[0]]
    except (KeyError, TypeError, IndexError):
        return False
    if isinstance(value, list):
        return any(_find_in(item, path[1:], match) for item in value)
    return _find_in(value, path[1:], match)


# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------

_KEYWORDS = frozenset({"and", "or", "not"})


def _tokenize(text: str) -> list[tuple[str, str]]:
    """Split a check string like oslo.policy: on whitespace, peeling parens."""
    tokens: list[tuple[str, str]] = []
    for tok in text.split():
        clean = tok.lstrip("(")
        tokens.extend([("(", "(")] * (len(tok) - len(clean)))
        stripped = clean.rstrip(")")
        trail = len(clean) - len(stripped)
        if stripped:
            lowered = stripped.lower()
            if lowered in _KEYWORDS:
                tokens.append((lowered, stripped))
            else:
                tokens.append(("check", stripped))
        tokens.extend([(")", ")")] * trail)
    return tokens


def _make_check(text: str, token: str) -> Check:
    if token == "@":
        return _TrueCheck()
    if token == "!":
        return _FalseCheck()
    kind, sep, match = token.partition(":")
    if not sep or not kind:
        raise PolicySyntaxError(text, f"{token!r} is not a 'kind:match' check")
    if kind == "rule":
        return _RuleCheck(match)
    if kind == "role":
        return _RoleCheck(match)
    if kind == "is_admin":
        return _IsAdminCheck(match)
    return _GenericCheck(kind, match)


class _Parser:
    """Recursive descent: or_expr := and_expr ('or' and_expr)* and so on."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def _peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def _take(self) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise PolicySyntaxError(self.text, "unexpected end of expression")
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def parse(self) -> Check:
        if not self.tokens:
            raise PolicySyntaxError(self.text, "empty expression")
        node = self._or()
        if self.pos != len(self.tokens):
            raise PolicySyntaxError(self.text, f"unexpected {self.tokens[self.pos][1]!r}")
        return node

    def _or(self) -> Check:
        nodes = [self._and()]
        while self._peek() == "or":
            self.pos += 1
            nodes.append(self._and())
        return nodes[0] if len(nodes) == 1 else _OrCheck(nodes)

    def _and(self) -> Check:
        nodes = [self._not()]
        while self._peek() == "and":
            self.pos += 1
            nodes.append(self._not())
        return nodes[0] if len(nodes) == 1 else _AndCheck(nodes)

    def _not(self) -> Check:
        if self._peek() == "not":
            self.pos += 1
            return _NotCheck(self._not())
        return self._atom()

    def _atom(self) -> Check:
        kind, raw = self._take()
        if kind == "(":
            node = self._or()
            kind, raw = self._take()
            if kind != ")":
                raise PolicySyntaxError(self.text, f"expected ')' before {raw!r}")
            return node
        if kind == "check":
            return _make_check(self.text, raw)
        raise PolicySyntaxError(self.text, f"unexpected {raw!r}")


def parse_rule(text: str | None) -> Check:
    """Parse a check string into a Check tree; '' or None means always allow.

    Raises PolicySyntaxError on malformed input (oslo.policy would silently
    deny instead; novalite prefers failing loudly at load time).
    """
    if text is None or text == "":
        return _TrueCheck()
    if not isinstance(text, str):
        raise PolicySyntaxError(repr(text), "a check string must be a string")
    return _Parser(text).parse()


# --------------------------------------------------------------------------
# Defaults (Nova 34, nova/policies/*.py)
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleDefault:
    """A registered rule: its name, default check string and a description."""

    name: str
    check_str: str
    description: str


_r = RuleDefault

# Aliases as in nova/policies/base.py.
ADMIN = "rule:context_is_admin"
PROJECT_MANAGER_OR_ADMIN = "rule:project_manager_or_admin"
PROJECT_MEMBER_OR_ADMIN = "rule:project_member_or_admin"
PROJECT_READER_OR_ADMIN = "rule:project_reader_or_admin"
SERVICE_OR_ADMIN = "rule:service_or_admin"
RULE_ANY = "@"
RULE_NOBODY = "!"
# nova/policies/keypairs.py: admin, or the user the keypair belongs to.
ADMIN_OR_KEYPAIR_OWNER = "(rule:context_is_admin) or user_id:%(user_id)s"

#: Every rule Nova 34 registers, in Nova's order, with its default check string.
# fmt: off
DEFAULT_RULES: tuple[RuleDefault, ...] = (
    _r("context_is_admin", "role:admin",
       "Decides what is required for the 'is_admin:True' check to succeed"),
    _r("admin_or_owner", "is_admin:True or project_id:%(project_id)s",
       "Default rule for most non-Admin APIs"),
    _r("admin_api", "is_admin:True", "Default rule for most Admin APIs"),
    _r("project_manager_api", "role:manager and project_id:%(project_id)s",
       "Default rule for Project level management APIs"),
    _r("project_member_api", "role:member and project_id:%(project_id)s",
       "Default rule for Project level non admin APIs"),
    _r("project_reader_api", "role:reader and project_id:%(project_id)s",
       "Default rule for Project level read only APIs"),
    _r("service_api", "role:service", "Default rule for service-to-service APIs"),
    _r("project_manager_or_admin", "rule:project_manager_api or rule:context_is_admin",
       "Default rule for Project Manager or admin APIs"),
    _r("project_member_or_admin", "rule:project_member_api or rule:context_is_admin",
       "Default rule for Project Member or admin APIs"),
    _r("project_reader_or_admin", "rule:project_reader_api or rule:context_is_admin",
       "Default rule for Project reader or admin APIs"),
    _r("service_or_admin", "rule:service_api or rule:context_is_admin",
       "Default rule for service or admin APIs"),
    _r("os_compute_api:os-admin-actions:reset_state", ADMIN,
       "Reset the state of a given server"),
    _r("os_compute_api:os-admin-actions:inject_network_info", ADMIN,
       "Inject network information into the server"),
    _r("os_compute_api:os-admin-password", PROJECT_MEMBER_OR_ADMIN,
       "Change the administrative password for a server"),
    _r("os_compute_api:os-aggregates:set_metadata", ADMIN,
       "Create or replace metadata for an aggregate"),
    _r("os_compute_api:os-aggregates:add_host", ADMIN, "Add a host to an aggregate"),
    _r("os_compute_api:os-aggregates:create", ADMIN, "Create an aggregate"),
    _r("os_compute_api:os-aggregates:remove_host", ADMIN,
       "Remove a host from an aggregate"),
    _r("os_compute_api:os-aggregates:update", ADMIN,
       "Update name and/or availability zone for an aggregate"),
    _r("os_compute_api:os-aggregates:index", ADMIN, "List all aggregates"),
    _r("os_compute_api:os-aggregates:delete", ADMIN, "Delete an aggregate"),
    _r("os_compute_api:os-aggregates:show", ADMIN, "Show details for an aggregate"),
    _r("compute:aggregates:images", ADMIN, "Request image caching for an aggregate"),
    _r("os_compute_api:os-assisted-volume-snapshots:create", SERVICE_OR_ADMIN,
       "Create an assisted volume snapshot"),
    _r("os_compute_api:os-assisted-volume-snapshots:delete", SERVICE_OR_ADMIN,
       "Delete an assisted volume snapshot"),
    _r("os_compute_api:os-attach-interfaces:list", PROJECT_READER_OR_ADMIN,
       "List port interfaces attached to a server"),
    _r("os_compute_api:os-attach-interfaces:show", PROJECT_READER_OR_ADMIN,
       "Show details of a port interface attached to a server"),
    _r("os_compute_api:os-attach-interfaces:create", PROJECT_MEMBER_OR_ADMIN,
       "Attach an interface to a server"),
    _r("os_compute_api:os-attach-interfaces:delete", PROJECT_MEMBER_OR_ADMIN,
       "Detach an interface from a server"),
    _r("os_compute_api:os-availability-zone:list", RULE_ANY,
       "List availability zone information without host information"),
    _r("os_compute_api:os-availability-zone:detail", ADMIN,
       "List detailed availability zone information with host information"),
    _r("os_compute_api:os-baremetal-nodes:list", ADMIN,
       "List and show details of bare metal nodes"),
    _r("os_compute_api:os-baremetal-nodes:show", ADMIN,
       "Show action details for a server"),
    _r("os_compute_api:os-console-auth-tokens", ADMIN,
       "Show console connection information for a given console authentication token"),
    _r("os_compute_api:os-console-output", PROJECT_MEMBER_OR_ADMIN,
       "Show console output for a server"),
    _r("os_compute_api:os-create-backup", PROJECT_MEMBER_OR_ADMIN,
       "Create a back up of a server"),
    _r("os_compute_api:os-deferred-delete:restore", PROJECT_MEMBER_OR_ADMIN,
       "Restore a soft deleted server"),
    _r("os_compute_api:os-deferred-delete:force", PROJECT_MEMBER_OR_ADMIN,
       "Force delete a server before deferred cleanup"),
    _r("os_compute_api:os-evacuate", ADMIN,
       "Evacuate a server from a failed host to a new host"),
    _r("os_compute_api:os-extended-server-attributes", ADMIN,
       "Return extended attributes for server"),
    _r("os_compute_api:extensions", RULE_ANY,
       "List available extensions and show information for an extension by alias"),
    _r("os_compute_api:os-flavor-access:add_tenant_access", ADMIN,
       "Add flavor access to a tenant"),
    _r("os_compute_api:os-flavor-access:remove_tenant_access", ADMIN,
       "Remove flavor access from a tenant"),
    _r("os_compute_api:os-flavor-access", ADMIN,
       "List tenants that have access to a flavor"),
    _r("os_compute_api:os-flavor-extra-specs:show", PROJECT_READER_OR_ADMIN,
       "Show an extra spec for a flavor"),
    _r("os_compute_api:os-flavor-extra-specs:create", ADMIN,
       "Create extra specs for a flavor"),
    _r("os_compute_api:os-flavor-extra-specs:update", ADMIN,
       "Update an extra spec for a flavor"),
    _r("os_compute_api:os-flavor-extra-specs:delete", ADMIN,
       "Delete an extra spec for a flavor"),
    _r("os_compute_api:os-flavor-extra-specs:index", PROJECT_READER_OR_ADMIN,
       "List extra specs for a flavor"),
    _r("os_compute_api:os-flavor-manage:create", ADMIN, "Create a flavor"),
    _r("os_compute_api:os-flavor-manage:update", ADMIN, "Update a flavor"),
    _r("os_compute_api:os-flavor-manage:delete", ADMIN, "Delete a flavor"),
    _r("os_compute_api:os-floating-ip-pools", RULE_ANY, "List floating IP pools"),
    _r("os_compute_api:os-floating-ips:add", PROJECT_MEMBER_OR_ADMIN,
       "Associate floating IPs to server"),
    _r("os_compute_api:os-floating-ips:remove", PROJECT_MEMBER_OR_ADMIN,
       "Disassociate floating IPs to server"),
    _r("os_compute_api:os-floating-ips:list", PROJECT_READER_OR_ADMIN,
       "List floating IPs"),
    _r("os_compute_api:os-floating-ips:create", PROJECT_MEMBER_OR_ADMIN,
       "Create floating IPs"),
    _r("os_compute_api:os-floating-ips:show", PROJECT_READER_OR_ADMIN,
       "Show floating IPs"),
    _r("os_compute_api:os-floating-ips:delete", PROJECT_MEMBER_OR_ADMIN,
       "Delete floating IPs"),
    _r("os_compute_api:os-hosts:list", ADMIN, "List physical hosts"),
    _r("os_compute_api:os-hosts:show", ADMIN, "Show physical host"),
    _r("os_compute_api:os-hosts:update", ADMIN, "Update physical host"),
    _r("os_compute_api:os-hosts:reboot", ADMIN, "Reboot physical host"),
    _r("os_compute_api:os-hosts:shutdown", ADMIN, "Shutdown physical host"),
    _r("os_compute_api:os-hosts:start", ADMIN, "Start physical host"),
    _r("os_compute_api:os-hypervisors:list", ADMIN, "List all hypervisors"),
    _r("os_compute_api:os-hypervisors:list-detail", ADMIN,
       "List all hypervisors with details"),
    _r("os_compute_api:os-hypervisors:statistics", ADMIN,
       "Show summary statistics for all hypervisors over all compute nodes"),
    _r("os_compute_api:os-hypervisors:show", ADMIN, "Show details for a hypervisor"),
    _r("os_compute_api:os-hypervisors:uptime", ADMIN,
       "Show the uptime of a hypervisor"),
    _r("os_compute_api:os-hypervisors:search", ADMIN,
       "Search hypervisor by hypervisor_hostname pattern"),
    _r("os_compute_api:os-hypervisors:servers", ADMIN,
       "List all servers on hypervisors matching a hypervisor_hostname pattern"),
    _r("os_compute_api:os-instance-actions:events:details", ADMIN,
       "Add \"details\" key in action events for a server"),
    _r("os_compute_api:os-instance-actions:events", ADMIN,
       "Add events details in action details for a server"),
    _r("os_compute_api:os-instance-actions:list", PROJECT_READER_OR_ADMIN,
       "List actions for a server"),
    _r("os_compute_api:os-instance-actions:show", PROJECT_READER_OR_ADMIN,
       "Show action details for a server"),
    _r("os_compute_api:os-instance-usage-audit-log:list", ADMIN,
       "List all usage audits"),
    _r("os_compute_api:os-instance-usage-audit-log:show", ADMIN,
       "List usage audits before a specified time for all servers on all hosts"),
    _r("os_compute_api:ips:show", PROJECT_READER_OR_ADMIN,
       "Show IP addresses details for a network label of a server"),
    _r("os_compute_api:ips:index", PROJECT_READER_OR_ADMIN,
       "List IP addresses that are assigned to a server"),
    _r("os_compute_api:os-keypairs:index", ADMIN_OR_KEYPAIR_OWNER, "List all keypairs"),
    _r("os_compute_api:os-keypairs:create", ADMIN_OR_KEYPAIR_OWNER, "Create a keypair"),
    _r("os_compute_api:os-keypairs:delete", ADMIN_OR_KEYPAIR_OWNER, "Delete a keypair"),
    _r("os_compute_api:os-keypairs:show", ADMIN_OR_KEYPAIR_OWNER,
       "Show details of a keypair"),
    _r("os_compute_api:limits", RULE_ANY,
       "Show rate and absolute limits for the current user project"),
    _r("os_compute_api:limits:other_project", ADMIN,
       "Show rate and absolute limits of other project"),
    _r("os_compute_api:os-lock-server:lock", PROJECT_MEMBER_OR_ADMIN, "Lock a server"),
    _r("os_compute_api:os-lock-server:unlock", PROJECT_MEMBER_OR_ADMIN,
       "Unlock a server"),
    _r("os_compute_api:os-lock-server:unlock:unlock_override", ADMIN,
       "Unlock a server, regardless who locked the server"),
    _r("os_compute_api:os-migrate-server:migrate", PROJECT_MANAGER_OR_ADMIN,
       "Cold migrate a server without specifying a host"),
    _r("os_compute_api:os-migrate-server:migrate:host", ADMIN,
       "Cold migrate a server to a specified host"),
    _r("os_compute_api:os-migrate-server:migrate_live", PROJECT_MANAGER_OR_ADMIN,
       "Live migrate a server to a new host without a reboot, no host given"),
    _r("os_compute_api:os-migrate-server:migrate_live:host", ADMIN,
       "Live migrate a server to a specified host without a reboot"),
    _r("os_compute_api:os-migrations:index", PROJECT_MANAGER_OR_ADMIN,
       "List migrations without host info"),
    _r("os_compute_api:os-migrations:index:all_projects", ADMIN,
       "List migrations for all or cross projects"),
    _r("os_compute_api:os-migrations:index:host", ADMIN,
       "List migrations with host info"),
    _r("os_compute_api:os-multinic:add", PROJECT_MEMBER_OR_ADMIN,
       "Add a fixed IP address to a server"),
    _r("os_compute_api:os-multinic:remove", PROJECT_MEMBER_OR_ADMIN,
       "Remove a fixed IP address from a server"),
    _r("os_compute_api:os-networks:list", PROJECT_READER_OR_ADMIN,
       "List networks for the project"),
    _r("os_compute_api:os-networks:show", PROJECT_READER_OR_ADMIN,
       "Show network details"),
    _r("os_compute_api:os-pause-server:pause", PROJECT_MEMBER_OR_ADMIN,
       "Pause a server"),
    _r("os_compute_api:os-pause-server:unpause", PROJECT_MEMBER_OR_ADMIN,
       "Unpause a paused server"),
    _r("os_compute_api:os-quota-class-sets:show", ADMIN,
       "List quotas for specific quota classes"),
    _r("os_compute_api:os-quota-class-sets:update", ADMIN,
       "Update quotas for specific quota class"),
    _r("os_compute_api:os-quota-sets:update", ADMIN, "Update the quotas"),
    _r("os_compute_api:os-quota-sets:defaults", RULE_ANY, "List default quotas"),
    _r("os_compute_api:os-quota-sets:show", PROJECT_READER_OR_ADMIN, "Show a quota"),
    _r("os_compute_api:os-quota-sets:delete", ADMIN, "Revert quotas to defaults"),
    _r("os_compute_api:os-quota-sets:detail", PROJECT_READER_OR_ADMIN,
       "Show the detail of quota"),
    _r("os_compute_api:os-remote-consoles", PROJECT_MEMBER_OR_ADMIN,
       "Generate a URL to access remote server console"),
    _r("os_compute_api:os-rescue", PROJECT_MEMBER_OR_ADMIN, "Rescue a server"),
    _r("os_compute_api:os-unrescue", PROJECT_MEMBER_OR_ADMIN, "Unrescue a server"),
    _r("os_compute_api:os-security-groups:get", PROJECT_READER_OR_ADMIN,
       "List security groups"),
    _r("os_compute_api:os-security-groups:show", PROJECT_READER_OR_ADMIN,
       "Show security group"),
    _r("os_compute_api:os-security-groups:create", PROJECT_MEMBER_OR_ADMIN,
       "Create security group"),
    _r("os_compute_api:os-security-groups:update", PROJECT_MEMBER_OR_ADMIN,
       "Update security group"),
    _r("os_compute_api:os-security-groups:delete", PROJECT_MEMBER_OR_ADMIN,
       "Delete security group"),
    _r("os_compute_api:os-security-groups:rule:create", PROJECT_MEMBER_OR_ADMIN,
       "Create security group Rule"),
    _r("os_compute_api:os-security-groups:rule:delete", PROJECT_MEMBER_OR_ADMIN,
       "Delete security group Rule"),
    _r("os_compute_api:os-security-groups:list", PROJECT_READER_OR_ADMIN,
       "List security groups of server"),
    _r("os_compute_api:os-security-groups:add", PROJECT_MEMBER_OR_ADMIN,
       "Add security groups to server"),
    _r("os_compute_api:os-security-groups:remove", PROJECT_MEMBER_OR_ADMIN,
       "Remove security groups from server"),
    _r("os_compute_api:os-server-diagnostics", ADMIN,
       "Show the usage data for a server"),
    _r("os_compute_api:os-server-external-events:create", SERVICE_OR_ADMIN,
       "Create one or more external events"),
    _r("os_compute_api:os-server-groups:create", PROJECT_MEMBER_OR_ADMIN,
       "Create a new server group"),
    _r("os_compute_api:os-server-groups:delete", PROJECT_MEMBER_OR_ADMIN,
       "Delete a server group"),
    _r("os_compute_api:os-server-groups:index", PROJECT_READER_OR_ADMIN,
       "List all server groups"),
    _r("os_compute_api:os-server-groups:index:all_projects", ADMIN,
       "List all server groups for all projects"),
    _r("os_compute_api:os-server-groups:show", PROJECT_READER_OR_ADMIN,
       "Show details of a server group"),
    _r("os_compute_api:server-metadata:index", PROJECT_READER_OR_ADMIN,
       "List all metadata of a server"),
    _r("os_compute_api:server-metadata:show", PROJECT_READER_OR_ADMIN,
       "Show metadata for a server"),
    _r("os_compute_api:server-metadata:create", PROJECT_MEMBER_OR_ADMIN,
       "Create metadata for a server"),
    _r("os_compute_api:server-metadata:update_all", PROJECT_MEMBER_OR_ADMIN,
       "Replace metadata for a server"),
    _r("os_compute_api:server-metadata:update", PROJECT_MEMBER_OR_ADMIN,
       "Update metadata from a server"),
    _r("os_compute_api:server-metadata:delete", PROJECT_MEMBER_OR_ADMIN,
       "Delete metadata from a server"),
    _r("os_compute_api:os-server-password:show", PROJECT_READER_OR_ADMIN,
       "Show the encrypted administrative password of a server"),
    _r("os_compute_api:os-server-password:clear", PROJECT_MEMBER_OR_ADMIN,
       "Clear the encrypted administrative password of a server"),
    _r("os_compute_api:os-server-shares:index", PROJECT_READER_OR_ADMIN,
       "List all shares for given server"),
    _r("os_compute_api:os-server-shares:create", PROJECT_MEMBER_OR_ADMIN,
       "Attach a share to the specified server"),
    _r("os_compute_api:os-server-shares:show", PROJECT_READER_OR_ADMIN,
       "Show a share configured for the specified server"),
    _r("os_compute_api:os-server-shares:delete", PROJECT_MEMBER_OR_ADMIN,
       "Detach a share to the specified server"),
    _r("os_compute_api:os-server-tags:delete_all", PROJECT_MEMBER_OR_ADMIN,
       "Delete all the server tags"),
    _r("os_compute_api:os-server-tags:index", PROJECT_READER_OR_ADMIN,
       "List all tags for given server"),
    _r("os_compute_api:os-server-tags:update_all", PROJECT_MEMBER_OR_ADMIN,
       "Replace all tags on specified server with the new set of tags"),
    _r("os_compute_api:os-server-tags:delete", PROJECT_MEMBER_OR_ADMIN,
       "Delete a single tag from the specified server"),
    _r("os_compute_api:os-server-tags:update", PROJECT_MEMBER_OR_ADMIN,
       "Add a single tag to the server if server has no specified tag"),
    _r("os_compute_api:os-server-tags:show", PROJECT_READER_OR_ADMIN,
       "Check tag existence on the server"),
    _r("compute:server:topology:index", PROJECT_READER_OR_ADMIN,
       "Show the NUMA topology data for a server"),
    _r("compute:server:topology:host:index", ADMIN,
       "Show a server's NUMA topology with host NUMA ID and CPU pinning info"),
    _r("os_compute_api:servers:index", PROJECT_READER_OR_ADMIN, "List all servers"),
    _r("os_compute_api:servers:detail", PROJECT_READER_OR_ADMIN,
       "List all servers with detailed information"),
    _r("os_compute_api:servers:index:get_all_tenants", ADMIN,
       "List all servers for all projects"),
    _r("os_compute_api:servers:detail:get_all_tenants", ADMIN,
       "List all servers with detailed information for all projects"),
    _r("os_compute_api:servers:allow_all_filters", ADMIN,
       "Allow all filters when listing servers"),
    _r("os_compute_api:servers:show", PROJECT_READER_OR_ADMIN, "Show a server"),
    _r("os_compute_api:servers:show:flavor-extra-specs", PROJECT_READER_OR_ADMIN,
       "Show flavor extra specs in server show/update/rebuild responses (2.47+)"),
    _r("os_compute_api:servers:show:host_status", ADMIN,
       "Show a server with additional host status information"),
    _r("os_compute_api:servers:show:host_status:unknown-only", ADMIN,
       "Show a server with host status, only if host status is UNKNOWN"),
    _r("os_compute_api:servers:create", PROJECT_MEMBER_OR_ADMIN, "Create a server"),
    _r("os_compute_api:servers:create:forced_host", ADMIN,
       "Create a server on a specified host/node, bypassing the scheduler filters"),
    _r("compute:servers:create:requested_destination", ADMIN,
       "Create a server on a requested host/node, validated by the scheduler"),
    _r("os_compute_api:servers:create:attach_volume", PROJECT_MEMBER_OR_ADMIN,
       "Create a server with the requested volume attached to it"),
    _r("os_compute_api:servers:create:attach_network", PROJECT_MEMBER_OR_ADMIN,
       "Create a server with the requested network attached to it"),
    _r("os_compute_api:servers:create:trusted_certs", PROJECT_MEMBER_OR_ADMIN,
       "Create a server with trusted image certificate IDs"),
    _r("os_compute_api:servers:create:zero_disk_flavor", ADMIN,
       "Create a volume-backed server from an image with a flavor with disk=0"),
    _r("network:attach_external_network", ADMIN,
       "Attach an unshared external network to a server"),
    _r("os_compute_api:servers:delete", PROJECT_MEMBER_OR_ADMIN, "Delete a server"),
    _r("os_compute_api:servers:update", PROJECT_MEMBER_OR_ADMIN, "Update a server"),
    _r("os_compute_api:servers:confirm_resize", PROJECT_MEMBER_OR_ADMIN,
       "Confirm a server resize"),
    _r("os_compute_api:servers:revert_resize", PROJECT_MEMBER_OR_ADMIN,
       "Revert a server resize"),
    _r("os_compute_api:servers:reboot", PROJECT_MEMBER_OR_ADMIN, "Reboot a server"),
    _r("os_compute_api:servers:resize", PROJECT_MEMBER_OR_ADMIN, "Resize a server"),
    _r("compute:servers:resize:cross_cell", RULE_NOBODY,
       "Resize a server across cells"),
    _r("os_compute_api:servers:rebuild", PROJECT_MEMBER_OR_ADMIN, "Rebuild a server"),
    _r("os_compute_api:servers:rebuild:trusted_certs", PROJECT_MEMBER_OR_ADMIN,
       "Rebuild a server with trusted image certificate IDs"),
    _r("os_compute_api:servers:create_image", PROJECT_MEMBER_OR_ADMIN,
       "Create an image from a server"),
    _r("os_compute_api:servers:create_image:allow_volume_backed",
       PROJECT_MEMBER_OR_ADMIN,
       "Create an image from a volume backed server"),
    _r("os_compute_api:servers:start", PROJECT_MEMBER_OR_ADMIN, "Start a server"),
    _r("os_compute_api:servers:stop", PROJECT_MEMBER_OR_ADMIN, "Stop a server"),
    _r("os_compute_api:servers:trigger_crash_dump", PROJECT_MEMBER_OR_ADMIN,
       "Trigger crash dump in a server"),
    _r("os_compute_api:servers:migrations:show", ADMIN,
       "Show details for an in-progress live migration for a given server"),
    _r("os_compute_api:servers:migrations:force_complete", PROJECT_MANAGER_OR_ADMIN,
       "Force an in-progress live migration for a given server to complete"),
    _r("os_compute_api:servers:migrations:delete", PROJECT_MANAGER_OR_ADMIN,
       "Delete(Abort) an in-progress live migration"),
    _r("os_compute_api:servers:migrations:index", PROJECT_MANAGER_OR_ADMIN,
       "Lists in-progress live migrations for a given server without host info"),
    _r("os_compute_api:servers:migrations:index:host", ADMIN,
       "Lists in-progress live migrations for a given server with host info"),
    _r("os_compute_api:os-services:list", ADMIN,
       "List all running Compute services in a region"),
    _r("os_compute_api:os-services:update", ADMIN, "Update a Compute service"),
    _r("os_compute_api:os-services:delete", ADMIN, "Delete a Compute service"),
    _r("os_compute_api:os-shelve:shelve", PROJECT_MEMBER_OR_ADMIN, "Shelve server"),
    _r("os_compute_api:os-shelve:unshelve", PROJECT_MEMBER_OR_ADMIN,
       "Unshelve (restore) shelved server"),
    _r("os_compute_api:os-shelve:unshelve_to_host", ADMIN,
       "Unshelve (restore) shelve offloaded server to a specific host"),
    _r("os_compute_api:os-shelve:shelve_offload", ADMIN,
       "Shelf-offload (remove) server"),
    _r("os_compute_api:os-simple-tenant-usage:show", PROJECT_READER_OR_ADMIN,
       "Show usage statistics for a specific tenant"),
    _r("os_compute_api:os-simple-tenant-usage:list", ADMIN,
       "List per tenant usage statistics for all tenants"),
    _r("os_compute_api:os-suspend-server:resume", PROJECT_MEMBER_OR_ADMIN,
       "Resume suspended server"),
    _r("os_compute_api:os-suspend-server:suspend", PROJECT_MEMBER_OR_ADMIN,
       "Suspend server"),
    _r("os_compute_api:os-tenant-networks:list", PROJECT_READER_OR_ADMIN,
       "List project networks"),
    _r("os_compute_api:os-tenant-networks:show", PROJECT_READER_OR_ADMIN,
       "Show project network details"),
    _r("os_compute_api:os-volumes:list", PROJECT_READER_OR_ADMIN, "List volumes"),
    _r("os_compute_api:os-volumes:create", PROJECT_MEMBER_OR_ADMIN, "Create volume"),
    _r("os_compute_api:os-volumes:detail", PROJECT_READER_OR_ADMIN,
       "List volumes detail"),
    _r("os_compute_api:os-volumes:show", PROJECT_READER_OR_ADMIN, "Show volume"),
    _r("os_compute_api:os-volumes:delete", PROJECT_MEMBER_OR_ADMIN, "Delete volume"),
    _r("os_compute_api:os-volumes:snapshots:list", PROJECT_READER_OR_ADMIN,
       "List snapshots"),
    _r("os_compute_api:os-volumes:snapshots:create", PROJECT_MEMBER_OR_ADMIN,
       "Create snapshots"),
    _r("os_compute_api:os-volumes:snapshots:detail", PROJECT_READER_OR_ADMIN,
       "List snapshots details"),
    _r("os_compute_api:os-volumes:snapshots:show", PROJECT_READER_OR_ADMIN,
       "Show snapshot"),
    _r("os_compute_api:os-volumes:snapshots:delete", PROJECT_MEMBER_OR_ADMIN,
       "Delete snapshot"),
    _r("os_compute_api:os-volumes-attachments:index", PROJECT_READER_OR_ADMIN,
       "List volume attachments for an instance"),
    _r("os_compute_api:os-volumes-attachments:create", PROJECT_MEMBER_OR_ADMIN,
       "Attach a volume to an instance"),
    _r("os_compute_api:os-volumes-attachments:show", PROJECT_READER_OR_ADMIN,
       "Show details of a volume attachment"),
    _r("os_compute_api:os-volumes-attachments:update", PROJECT_MEMBER_OR_ADMIN,
       "Update a volume attachment"),
    _r("os_compute_api:os-volumes-attachments:swap", SERVICE_OR_ADMIN,
       "Update a volume attachment with a different volumeId"),
    _r("os_compute_api:os-volumes-attachments:delete", PROJECT_MEMBER_OR_ADMIN,
       "Detach a volume from an instance"),
)
# fmt: on

#: Keystone bootstrap's role implications (admin > manager > member > reader).
IMPLIED_ROLES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"admin": ("manager",), "manager": ("member",), "member": ("reader",)}
)


def _implied_closure(
    implied: Mapping[str, Iterable[str]],
) -> dict[str, frozenset[str]]:
    """Map each role (lowercased) to every role it transitively implies."""
    direct = {k.lower(): {v.lower() for v in vs} for k, vs in implied.items()}
    closure: dict[str, frozenset[str]] = {}
    for role in direct:
        seen: set[str] = set()
        stack = list(direct[role])
        while stack:
            cur = stack.pop()
            if cur not in seen:
                seen.add(cur)
                stack.extend(direct.get(cur, ()))
        closure[role] = frozenset(seen)
    return closure


# --------------------------------------------------------------------------
# Enforcer
# --------------------------------------------------------------------------


class Enforcer:
    """Holds the parsed rules (defaults overlaid with a policy file) and checks them.

    ``policy_file`` is an oslo.policy YAML/JSON file of ``"name": "check"``
    pairs; a missing file means defaults only. Rules only present in the file
    can be referenced with ``rule:`` but not authorized directly, since
    authorize() accepts registered (default) names only, like oslo.policy.
    """

    def __init__(
        self,
        policy_file: Path | str | None = None,
        *,
        defaults: Iterable[RuleDefault] = DEFAULT_RULES,
        implied_roles: Mapping[str, Iterable[str]] = IMPLIED_ROLES,
    ) -> None:
        self.policy_file = Path(policy_file) if policy_file is not None else None
        self.defaults: dict[str, RuleDefault] = {d.name: d for d in defaults}
        self._implied = _implied_closure(implied_roles)
        self._missing = _MissingRuleReporter()
        rules = {name: parse_rule(d.check_str) for name, d in self.defaults.items()}
        self.overrides: dict[str, str] = {}
        if self.policy_file is not None:
            self.overrides = _load_policy_file(self.policy_file)
            for name, check_str in self.overrides.items():
                try:
                    rules[name] = parse_rule(check_str)
                except PolicySyntaxError as exc:
                    raise PolicyFileError(self.policy_file, str(exc), name) from None
        self._check_references(rules)
        self._rules: dict[str, Check] = rules
        #: Read-only view of every parsed rule, keyed by name.
        self.rules: Mapping[str, Check] = MappingProxyType(rules)

    def _check_references(self, rules: Mapping[str, Check]) -> None:
        """Warn about dangling ``rule:`` references and reject cycles."""
        for name, rule in rules.items():
            for ref in rule.rule_refs():
                if ref not in rules:
                    LOG.warning("Policy rule %r references unknown rule %r", name, ref)
        done: set[str] = set()
        path: list[str] = []

        def visit(name: str) -> None:
            if name in done or name not in rules:
                return
            if name in path:
                cycle = " -> ".join([*path[path.index(name) :], name])
                culprit = next((n for n in path if n in self.overrides), None)
                where = self.policy_file or Path("<defaults>")
                raise PolicyFileError(where, f"rule reference cycle: {cycle}", culprit)
            path.append(name)
            for ref in rules[name].rule_refs():
                visit(ref)
            path.pop()
            done.add(name)

        for name in rules:
            visit(name)

    def is_registered(self, rule: str) -> bool:
        """True if ``rule`` is a registered (default) rule name."""
        return rule in self.defaults

    def check(
        self,
        rule: str,
        creds: Mapping[str, Any],
        target: Mapping[str, Any] | None = None,
    ) -> bool:
        """Return whether ``creds`` may perform ``rule`` on ``target``.

        ``target`` defaults to the caller's own project and user, as in Nova.
        Raises PolicyNotRegistered for an unknown rule name (a typo in code).
        """
        if rule not in self.defaults:
            raise PolicyNotRegistered(rule)
        if target is None:
            target = {
                "project_id": creds.get("project_id"),
                "user_id": creds.get("user_id"),
            }
        roles: set[str] = set()
        implied = self._implied
        for role in creds.get("roles") or ():
            name = str(role).lower()
            roles.add(name)
            more = implied.get(name)
            if more:
                roles.update(more)
        ctx = _Ctx(target, creds, roles, self._rules, self._missing)
        return self._rules[rule](ctx)

    def authorize(
        self,
        rule: str,
        creds: Mapping[str, Any],
        target: Mapping[str, Any] | None = None,
    ) -> None:
        """Like check() but raise PolicyNotAuthorized(rule) when denied."""
        if not self.check(rule, creds, target):
            LOG.debug("Policy check for %s failed with credentials %s", rule, creds)
            raise PolicyNotAuthorized(rule)


def _load_policy_file(path: Path) -> dict[str, str]:
    """Read an oslo.policy YAML (or JSON) file into ``{name: check_str}``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        LOG.info("Policy file %s not found; using default rules only", path)
        return {}
    except OSError as exc:
        raise PolicyFileError(path, f"cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyFileError(path, f"invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PolicyFileError(path, "top level must be a mapping of rule: check")
    rules: dict[str, str] = {}
    for name, check_str in data.items():
        if not isinstance(name, str):
            raise PolicyFileError(path, "rule names must be strings", str(name))
        if check_str is None:
            check_str = ""  # oslo.policy: an empty rule always allows
        if not isinstance(check_str, str):
            raise PolicyFileError(
                path,
                f"check must be a string, got {type(check_str).__name__}"
                " (list-of-lists syntax is not supported)",
                name,
            )
        rules[name] = check_str
    return rules


# --------------------------------------------------------------------------
# Sample file
# --------------------------------------------------------------------------


def generate_sample(rules: Iterable[RuleDefault] = DEFAULT_RULES) -> str:
    """Render a commented policy.yaml.sample listing every rule and its default."""
    lines = [
        "# novalite policy file sample (defaults from Nova 34, new secure RBAC).",
        "#",
        "# Every rule is listed commented out with its default check string.",
        "# To override a rule, copy it to policy.yaml and uncomment it.",
        "# Regenerate with: python -m novalite.policy > policy.yaml.sample",
        "",
    ]
    for rule in rules:
        lines.append(f"# {rule.description}")
        lines.append(f"#{_yaml_quote(rule.name)}: {_yaml_quote(rule.check_str)}")
        lines.append("")
    return "\n".join(lines)


def _yaml_quote(value: str) -> str:
    """Double-quote a string for YAML (the rule strings hold no escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


if __name__ == "__main__":  # pragma: no cover
    print(generate_sample(), end="")
