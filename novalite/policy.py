"""Policy engine for novalite: oslo.policy check strings, one Enforcer per service.

Every API call asks ``Enforcer.authorize(rule, creds, target)``. Rules use the
oslo.policy check-string language (the subset Nova, Glance, Neutron, Cinder and
Keystone use) and are parsed once into a tree of small check objects, so
evaluation is plain Python calls. The default rules are data, one module per
service under ``novalite.policies``; each service's API builds its own Enforcer
from its table and its own override file (base rule names such as
``context_is_admin`` repeat across services with different check strings).

Supported syntax::

    @                        always allow (an empty string also allows)
    !                        never allow
    role:<name>              creds["roles"] contains <name> (case-insensitive)
    rule:<name>              evaluate another named rule (unknown name: deny)
    is_admin:True            creds["is_admin"] is true (``1`` means true too)
    field:<res>:<attr>=<v>   Neutron's check of the target's own attribute:
                             str(target[attr]) == v, ``~re`` matches a regex
    <cred_key>:%(<tkey>)s    str(creds[cred_key]) == str(target[tkey])
    <cred_key>:<literal>     str(creds[cred_key]) == "<literal>"
    '<literal>':%(<tkey>)s   the Python literal equals str(target[tkey])
    not X / X and Y / X or Y / ( ... )

Precedence is ``not`` > ``and`` > ``or``; the keywords are case-insensitive,
check names (``role``, ``rule``, ...) are case-sensitive, as in oslo.policy.
Dotted cred keys (``a.b``) walk nested dicts; lists match if any item does.
A target key missing from the target makes that check deny. Target keys are
flat: Keystone's ``%(target.user.id)s`` reads ``target["target.user.id"]``
(oslo.policy flattens nested targets to the same keys).

Defaults: the services register project-scoped (``scope_types`` including
``project``) or unscoped rules. With ``enforce_scope``/``enforce_new_defaults``
on (the current releases' default), a project-scoped token passes every scope
check, and deprecated (legacy) check strings are ignored. novalite only has
project-scoped credentials, so the scope check is dropped and the new-default
check strings are used verbatim (``system_scope:all`` parts never match).

Roles: Keystone's bootstrap makes ``admin`` imply ``manager`` imply ``member``
imply ``reader`` and expands implied roles into the token. The Enforcer expands
the same chain (``IMPLIED_ROLES``) itself; pass ``implied_roles={}`` to get
oslo.policy's plain behaviour.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from novalite.policies import RuleDefault, cinder, glance, keystone, neutron, nova
from novalite.policies.nova import DEFAULT_RULES

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
    "SERVICES",
    "generate_sample",
    "service_sample",
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
    """``is_admin:<bool>``: compares creds["is_admin"] as a bool.

    ``True`` and ``1`` both mean true: Nova writes ``is_admin:True``, Keystone
    ``is_admin:1``; either must deny a caller whose is_admin is false.
    """

    __slots__ = ("expected", "text")

    def __init__(self, match: str) -> None:
        self.text = match
        self.expected = match.lower() in ("true", "1")

    def __call__(self, ctx: _Ctx) -> bool:
        value = ctx.creds.get("is_admin", False)
        if isinstance(value, str):
            value = value.lower() in ("true", "1")
        return bool(value) == self.expected

    def __str__(self) -> str:
        return f"is_admin:{self.text}"


class _FieldCheck(Check):
    """Neutron's ``field:<resource>:<attr>=<value>``: an attribute of the target itself.

    ``<value>`` starting with ``~`` is a regular expression matched at the start
    of the attribute; otherwise the attribute's string form must equal it
    (booleans compare case-insensitively, ``True`` == ``true``). A target
    without the attribute denies. The resource name only documents the rule:
    the API puts the attribute in the target (a subnet's target carries its
    network's ``shared``, as Neutron looks it up).
    """

    __slots__ = ("text", "attr", "value", "regex")

    def __init__(self, text: str, match: str) -> None:
        self.text = match
        resource, sep, rest = match.partition(":")
        attr, eq, value = rest.rpartition("=")
        if not sep or not eq or not resource or not attr:
            raise PolicySyntaxError(text, f"'field:{match}' is not 'field:<resource>:<attr>=<value>'")
        self.attr = attr
        self.value = value
        self.regex = re.compile(value[1:]) if value.startswith("~") else None

    def __call__(self, ctx: _Ctx) -> bool:
        try:
            actual = ctx.target[self.attr]
        except KeyError:
            return False
        if actual is None:
            return False
        if self.regex is not None:
            return self.regex.match(str(actual)) is not None
        if isinstance(actual, bool):
            return str(actual).lower() == self.value.lower()
        return str(actual) == self.value

    def __str__(self) -> str:
        return f"field:{self.text}"


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
    if kind == "field":
        return _FieldCheck(text, match)
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



#: Each service's registered defaults, by the name its override file is keyed on
#: (``[policy] file`` is Nova's, ``glance_file`` Glance's, ...), with the release they come from.
SERVICES: Mapping[str, tuple[str, tuple[RuleDefault, ...]]] = MappingProxyType(
    {
        "nova": ("Nova 34", nova.DEFAULT_RULES),
        "glance": ("Glance 33", glance.DEFAULT_RULES),
        "neutron": ("Neutron 29", neutron.DEFAULT_RULES),
        "cinder": ("Cinder 29", cinder.DEFAULT_RULES),
        "keystone": ("Keystone 30", keystone.DEFAULT_RULES),
    }
)

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


def generate_sample(
    rules: Iterable[RuleDefault] = DEFAULT_RULES,
    *,
    source: str = "Nova 34",
    file: str = "policy.yaml",
    command: str = "python -m novalite.policy > policy.yaml.sample",
) -> str:
    """Render a commented sample policy file listing every rule and its default."""
    lines = [
        f"# novalite policy file sample (defaults from {source}, new secure RBAC).",
        "#",
        "# Every rule is listed commented out with its default check string.",
        f"# To override a rule, copy it to {file} and uncomment it.",
        f"# Regenerate with: {command}",
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


def service_sample(service: str) -> str:
    """The sample file of one service: ``policy.yaml.sample`` for Nova, ``<service>-policy.yaml.sample``."""
    source, rules = SERVICES[service]
    if service == "nova":
        return generate_sample(rules)
    return generate_sample(
        rules,
        source=source,
        file=f"{service}-policy.yaml",
        command=f"python -m novalite.policy {service} > {service}-policy.yaml.sample",
    )


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(service_sample(sys.argv[1] if len(sys.argv) > 1 else "nova"), end="")
