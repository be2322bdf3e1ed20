"""Tests for novalite.policy: check-string parsing/evaluation and Nova's defaults."""

from __future__ import annotations

import logging
import timeit
from pathlib import Path
from typing import Any

import pytest
import yaml

from novalite.policy import (
    DEFAULT_RULES,
    Enforcer,
    PolicyFileError,
    PolicyNotAuthorized,
    PolicyNotRegistered,
    PolicySyntaxError,
    RuleDefault,
    generate_sample,
    parse_rule,
)

REPO = Path(__file__).resolve().parent.parent


def creds(roles: list[str], project: str = "A", user: str = "u1", **extra: Any) -> dict[str, Any]:
    return {"user_id": user, "project_id": project, "roles": roles, **extra}


ADMIN = creds(["admin"], project="ops")
MEMBER_A = creds(["member"], project="A")
READER_A = creds(["reader"], project="A")
MANAGER_A = creds(["manager"], project="A")
OTHER = creds(["foo"], project="A")
TARGET_A = {"project_id": "A", "user_id": "u1"}
TARGET_B = {"project_id": "B", "user_id": "u2"}


def ev(text: str, c: dict[str, Any] | None = None, t: dict[str, Any] | None = None) -> bool:
    return parse_rule(text).evaluate(c if c is not None else {}, t if t is not None else {})


@pytest.fixture(scope="module")
def enforcer() -> Enforcer:
    return Enforcer(None)


# --- syntax elements -----------------------------------------------------------------


def test_always_never_and_empty() -> None:
    assert ev("@") is True
    assert ev("!") is False
    assert ev("") is True
    assert parse_rule(None).evaluate({}, {}) is True


def test_role_check_is_case_insensitive() -> None:
    assert ev("role:admin", {"roles": ["Admin"]})
    assert ev("role:ADMIN", {"roles": ["admin"]})
    assert not ev("role:admin", {"roles": ["member"]})
    assert not ev("role:admin", {})


def test_role_check_with_target_substitution() -> None:
    assert ev("role:%(role)s", {"roles": ["x"]}, {"role": "X"})
    assert not ev("role:%(role)s", {"roles": ["x"]}, {})


def test_generic_check_against_target() -> None:
    c = {"project_id": "A", "user_id": "u1"}
    assert ev("project_id:%(project_id)s", c, {"project_id": "A"})
    assert not ev("project_id:%(project_id)s", c, {"project_id": "B"})
    assert ev("user_id:%(user_id)s", c, {"user_id": "u1"})
    # Missing target key or cred key: deny.
    assert not ev("project_id:%(project_id)s", c, {})
    assert not ev("domain_id:%(project_id)s", c, {"project_id": "A"})


def test_generic_check_literal_and_stringification() -> None:
    assert ev("project_id:A", {"project_id": "A"})
    assert not ev("project_id:B", {"project_id": "A"})
    assert ev("count:3", {"count": 3})  # creds values compared as strings
    # A Python-literal kind is compared with the substituted target value.
    assert ev("'spam':%(name)s", {}, {"name": "spam"})
    assert not ev("'spam':%(name)s", {}, {"name": "ham"})
    assert ev("True:%(enabled)s", {}, {"enabled": True})


def test_generic_check_nested_and_lists() -> None:
    c = {"token": {"project": {"id": "A"}}, "groups": ["g1", "g2"]}
    assert ev("token.project.id:%(project_id)s", c, {"project_id": "A"})
    assert not ev("token.project.id:%(project_id)s", c, {"project_id": "B"})
    assert ev("groups:g2", c)
    assert not ev("groups:g3", c)


def test_mixed_format_template() -> None:
    assert ev("name:%(a)s-%(b)s", {"name": "x-y"}, {"a": "x", "b": "y"})
    assert not ev("name:%(a)s-%(b)s", {"name": "x-y"}, {"a": "x"})
    assert ev("count:%(n)d", {"count": 3}, {"n": 3})
    assert not ev("count:%(n)d", {"count": 3}, {"n": "three"})


def test_is_admin_check() -> None:
    assert ev("is_admin:True", {"is_admin": True})
    assert not ev("is_admin:True", {"is_admin": False})
    assert not ev("is_admin:True", {})
    assert ev("is_admin:False", {"is_admin": False})
    assert ev("is_admin:true", {"is_admin": "True"})


def test_check_names_are_case_sensitive() -> None:
    # "Role:" is not the role check but a generic check on creds["Role"].
    assert not ev("Role:admin", {"roles": ["admin"]})
    assert ev("Role:admin", {"Role": "admin"})


def test_and_or_not() -> None:
    a, b = {"roles": ["a"]}, {"roles": ["b"]}
    ab = {"roles": ["a", "b"]}
    assert ev("role:a and role:b", ab)
    assert not ev("role:a and role:b", a)
    assert ev("role:a or role:b", b)
    assert not ev("role:a or role:b", {"roles": ["c"]})
    assert ev("not role:a", b)
    assert not ev("not role:a", a)
    assert ev("not not role:a", a)
    assert ev("role:a AND NOT role:b", a)  # keywords are case-insensitive


def test_precedence_not_and_or() -> None:
    # not > and > or
    assert str(parse_rule("@ or ! and !")) == "(@ or (! and !))"
    assert ev("@ or ! and !")
    assert str(parse_rule("not ! and !")) == "(not ! and !)"
    assert not ev("not ! and !")
    assert str(parse_rule("role:a and role:b or role:c and not role:d")) == (
        "((role:a and role:b) or (role:c and not role:d))"
    )
    assert ev("role:a and role:b or role:c and not role:d", {"roles": ["c"]})
    assert not ev("role:a and role:b or role:c and not role:d", {"roles": ["c", "d"]})


def test_parentheses() -> None:
    assert not ev("(@ or !) and !")
    assert ev("@ or (! and !)")
    assert ev("not (! or !)")
    assert not ev("((role:a) and (role:b))", {"roles": ["a"]})
    # Parens glued to checks, and target templates holding parens, both work.
    node = parse_rule("(rule:x) or (user_id:%(user_id)s)")
    assert str(node) == "(rule:x or user_id:%(user_id)s)"
    assert node.evaluate({"user_id": "u"}, {"user_id": "u"})


def test_rule_reference_and_unknown_rule(caplog: pytest.LogCaptureFixture) -> None:
    rules = {"is_a": parse_rule("role:a")}
    assert parse_rule("rule:is_a").evaluate({"roles": ["a"]}, {}, rules)
    with caplog.at_level(logging.WARNING, logger="novalite.policy"):
        assert not parse_rule("rule:nope").evaluate({"roles": ["a"]}, {}, rules)
        assert parse_rule("not rule:nope").evaluate({}, {}, rules)
    assert "nope" in caplog.text


@pytest.mark.parametrize(
    "text",
    [
        "   ",
        "role:a and",
        "or role:a",
        "(role:a",
        "role:a)",
        "()",
        "role:a role:b",
        "not",
        "justaword",
        ":nokind",
        "name:%(x)s%",
        "name:%(x)y",
    ],
)
def test_syntax_errors(text: str) -> None:
    with pytest.raises(PolicySyntaxError):
        parse_rule(text)


# --- defaults ---------------------------------------------------------------------------


def test_defaults_match_nova_base_rules(enforcer: Enforcer) -> None:
    d = {r.name: r.check_str for r in DEFAULT_RULES}
    assert d["context_is_admin"] == "role:admin"
    assert d["admin_api"] == "is_admin:True"
    assert d["admin_or_owner"] == "is_admin:True or project_id:%(project_id)s"
    assert d["project_member_api"] == "role:member and project_id:%(project_id)s"
    assert d["project_reader_or_admin"] == "rule:project_reader_api or rule:context_is_admin"
    assert d["os_compute_api:servers:create"] == "rule:project_member_or_admin"
    assert d["os_compute_api:servers:create:forced_host"] == "rule:context_is_admin"
    assert d["compute:servers:create:requested_destination"] == "rule:context_is_admin"
    assert d["os_compute_api:os-keypairs:create"] == (
        "(rule:context_is_admin) or user_id:%(user_id)s"
    )
    assert d["compute:servers:resize:cross_cell"] == "!"
    assert len(d) == len(DEFAULT_RULES)  # no duplicates
    # Every rule: reference in the defaults resolves.
    for name, rule in enforcer.rules.items():
        for ref in rule.rule_refs():
            assert ref in enforcer.rules, (name, ref)


REQUIRED = [
    "os_compute_api:servers:index",
    "os_compute_api:servers:detail",
    "os_compute_api:servers:index:get_all_tenants",
    "os_compute_api:servers:detail:get_all_tenants",
    "os_compute_api:servers:allow_all_filters",
    "os_compute_api:servers:show",
    "os_compute_api:servers:show:host_status",
    "os_compute_api:servers:create",
    "os_compute_api:servers:create:forced_host",
    "os_compute_api:servers:create:attach_volume",
    "os_compute_api:servers:create:attach_network",
    "os_compute_api:servers:create:trusted_certs",
    "os_compute_api:servers:create:zero_disk_flavor",
    "os_compute_api:servers:delete",
    "os_compute_api:servers:update",
    "os_compute_api:servers:start",
    "os_compute_api:servers:stop",
    "os_compute_api:servers:reboot",
    "os_compute_api:os-flavor-manage:create",
    "os_compute_api:os-flavor-manage:delete",
    "os_compute_api:os-flavor-manage:update",
    "os_compute_api:os-flavor-extra-specs:index",
    "os_compute_api:os-flavor-access",
    "os_compute_api:os-flavor-access:add_tenant_access",
    "os_compute_api:os-keypairs:index",
    "os_compute_api:os-availability-zone:list",
    "os_compute_api:os-availability-zone:detail",
    "os_compute_api:os-quota-sets:show",
    "os_compute_api:limits",
    "os_compute_api:limits:other_project",
    "os_compute_api:os-hypervisors:list",
    "os_compute_api:os-services:list",
    "os_compute_api:os-instance-actions:list",
    "os_compute_api:os-instance-actions:show",
    "os_compute_api:os-instance-actions:events",
    "os_compute_api:os-instance-actions:events:details",
    "os_compute_api:server-metadata:index",
    "os_compute_api:os-server-groups:create",
    "os_compute_api:os-lock-server:lock",
    "os_compute_api:os-pause-server:pause",
    "os_compute_api:os-suspend-server:suspend",
    "os_compute_api:os-admin-actions:reset_state",
    "os_compute_api:os-console-output",
    "os_compute_api:os-extended-server-attributes",
    "os_compute_api:os-server-tags:index",
    "os_compute_api:os-attach-interfaces:list",
    "os_compute_api:os-volumes-attachments:index",
    "os_compute_api:os-simple-tenant-usage:show",
    "os_compute_api:os-simple-tenant-usage:list",
]


@pytest.mark.parametrize("rule", REQUIRED)
def test_required_rules_registered(enforcer: Enforcer, rule: str) -> None:
    assert enforcer.is_registered(rule)


def test_member_can_create_and_show_in_own_project_only(enforcer: Enforcer) -> None:
    for rule in ("create", "show", "delete", "update", "start", "stop", "reboot"):
        name = f"os_compute_api:servers:{rule}"
        assert enforcer.check(name, MEMBER_A, TARGET_A), name
        assert not enforcer.check(name, MEMBER_A, TARGET_B), name
    enforcer.authorize("os_compute_api:servers:create", MEMBER_A, TARGET_A)
    with pytest.raises(PolicyNotAuthorized) as exc:
        enforcer.authorize("os_compute_api:servers:create", MEMBER_A, TARGET_B)
    assert str(exc.value) == ("Policy doesn't allow os_compute_api:servers:create to be performed.")
    assert exc.value.rule == "os_compute_api:servers:create"


def test_reader_can_show_but_not_create(enforcer: Enforcer) -> None:
    assert enforcer.check("os_compute_api:servers:show", READER_A, TARGET_A)
    assert enforcer.check("os_compute_api:servers:index", READER_A, TARGET_A)
    assert not enforcer.check("os_compute_api:servers:show", READER_A, TARGET_B)
    assert not enforcer.check("os_compute_api:servers:create", READER_A, TARGET_A)
    assert not enforcer.check("os_compute_api:servers:delete", READER_A, TARGET_A)


def test_unrelated_role_gets_nothing_on_project(enforcer: Enforcer) -> None:
    assert not enforcer.check("os_compute_api:servers:show", OTHER, TARGET_A)
    assert not enforcer.check("os_compute_api:servers:create", OTHER, TARGET_A)
    # ... except rules open to anyone.
    assert enforcer.check("os_compute_api:os-availability-zone:list", OTHER, TARGET_A)
    assert enforcer.check("os_compute_api:limits", OTHER, TARGET_A)


def test_admin_can_do_everything_registered(enforcer: Enforcer) -> None:
    assert enforcer.check("os_compute_api:servers:create:forced_host", ADMIN, TARGET_B)
    assert enforcer.check("os_compute_api:os-flavor-manage:create", ADMIN, TARGET_B)
    for rule in DEFAULT_RULES:
        if rule.check_str == "!":
            continue  # nobody, not even admin (e.g. resize:cross_cell)
        if rule.name in ("admin_api", "admin_or_owner"):
            continue  # legacy rules keyed on creds["is_admin"]
        if rule.name in ("service_api", "project_manager_api"):
            continue  # require the project id or the service role
        if rule.name.startswith("project_") and rule.name.endswith("_api"):
            continue
        assert enforcer.check(rule.name, ADMIN, TARGET_B), rule.name


def test_member_cannot_manage_flavors_or_force_hosts(enforcer: Enforcer) -> None:
    for rule in (
        "os_compute_api:os-flavor-manage:create",
        "os_compute_api:os-flavor-manage:delete",
        "os_compute_api:servers:create:forced_host",
        "compute:servers:create:requested_destination",
        "os_compute_api:servers:index:get_all_tenants",
        "os_compute_api:os-hypervisors:list",
        "os_compute_api:os-services:list",
        "os_compute_api:os-instance-actions:events",
    ):
        assert not enforcer.check(rule, MEMBER_A, TARGET_A), rule


def test_manager_role(enforcer: Enforcer) -> None:
    assert enforcer.check("os_compute_api:os-migrate-server:migrate", MANAGER_A, TARGET_A)
    assert not enforcer.check("os_compute_api:os-migrate-server:migrate", MEMBER_A, TARGET_A)
    assert not enforcer.check("os_compute_api:os-migrate-server:migrate:host", MANAGER_A, TARGET_A)
    # manager implies member implies reader.
    assert enforcer.check("os_compute_api:servers:create", MANAGER_A, TARGET_A)


def test_keypairs_owner_or_admin(enforcer: Enforcer) -> None:
    rule = "os_compute_api:os-keypairs:create"
    assert enforcer.check(rule, MEMBER_A, {"user_id": "u1"})
    assert not enforcer.check(rule, MEMBER_A, {"user_id": "someone"})
    assert enforcer.check(rule, ADMIN, {"user_id": "someone"})


def test_default_target_is_own_project(enforcer: Enforcer) -> None:
    assert enforcer.check("os_compute_api:servers:create", MEMBER_A)
    assert enforcer.check("os_compute_api:os-keypairs:index", MEMBER_A)


def test_implied_roles_can_be_disabled() -> None:
    plain = Enforcer(None, implied_roles={})
    assert not plain.check("os_compute_api:servers:show", MEMBER_A, TARGET_A)
    assert plain.check("os_compute_api:servers:show", creds(["member", "reader"]), TARGET_A)


def test_unregistered_rule(enforcer: Enforcer) -> None:
    with pytest.raises(PolicyNotRegistered, match="os_compute_api:servers:nope"):
        enforcer.authorize("os_compute_api:servers:nope", ADMIN, TARGET_A)
    with pytest.raises(PolicyNotRegistered):
        enforcer.check("nope", ADMIN, TARGET_A)


def test_check_is_fast(enforcer: Enforcer) -> None:
    n = 2000
    secs = timeit.timeit(
        lambda: enforcer.check("os_compute_api:servers:show", READER_A, TARGET_A), number=n
    )
    assert secs / n < 200e-6  # generous: ~a few microseconds in practice


# --- policy file ------------------------------------------------------------------------


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    e = Enforcer(tmp_path / "absent.yaml")
    assert e.check("os_compute_api:servers:create", MEMBER_A, TARGET_A)


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text("# nothing\n")
    assert Enforcer(f).check("os_compute_api:servers:create", MEMBER_A, TARGET_A)


def test_file_overlays_defaults(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "os_compute_api:os-flavor-manage:create": "rule:project_member_or_admin",
                "os_compute_api:servers:create": "rule:context_is_admin",
                "context_is_admin": "role:admin or role:cloud_admin",
                "my_alias": "role:auditor",
                "os_compute_api:servers:show": "rule:my_alias",
                "os_compute_api:servers:index": "",
            }
        )
    )
    e = Enforcer(f)
    assert e.overrides["my_alias"] == "role:auditor"
    assert e.check("os_compute_api:os-flavor-manage:create", MEMBER_A, TARGET_A)
    assert not e.check("os_compute_api:servers:create", MEMBER_A, TARGET_A)
    # Overriding a base rule affects every rule referencing it.
    cloud_admin = creds(["cloud_admin"], project="ops")
    assert e.check("os_compute_api:servers:create", cloud_admin, TARGET_B)
    assert e.check("os_compute_api:os-services:list", cloud_admin, TARGET_B)
    # File-only rules can be referenced but are not registered themselves.
    assert e.check("os_compute_api:servers:show", creds(["auditor"], "Z"), TARGET_A)
    assert not e.check("os_compute_api:servers:show", READER_A, TARGET_A)
    with pytest.raises(PolicyNotRegistered):
        e.check("my_alias", ADMIN, TARGET_A)
    # Empty check string: anyone.
    assert e.check("os_compute_api:servers:index", OTHER, TARGET_B)
    # Untouched rules keep their default.
    assert e.check("os_compute_api:servers:delete", MEMBER_A, TARGET_A)


def test_json_file_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "policy.json"
    f.write_text('{"os_compute_api:servers:create": "!"}')
    assert not Enforcer(f).check("os_compute_api:servers:create", ADMIN, TARGET_A)


def test_bad_check_string_names_rule_and_file(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text('"os_compute_api:servers:create": "role:member and (project_id:x"\n')
    with pytest.raises(PolicyFileError) as exc:
        Enforcer(f)
    msg = str(exc.value)
    assert "os_compute_api:servers:create" in msg
    assert str(f) in msg
    assert exc.value.rule == "os_compute_api:servers:create"
    assert exc.value.path == f


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("a: [b\n", "invalid YAML"),
        ("- just\n- a list\n", "mapping"),
        ('"os_compute_api:servers:create": 3\n', "os_compute_api:servers:create"),
        ('"os_compute_api:servers:create": [["role:a"]]\n', "list-of-lists"),
    ],
)
def test_bad_file_errors(tmp_path: Path, content: str, needle: str) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(content)
    with pytest.raises(PolicyFileError, match=str(f)) as exc:
        Enforcer(f)
    assert needle in str(exc.value)


def test_rule_cycle_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text('"a": "rule:b"\n"b": "role:x or rule:a"\n')
    with pytest.raises(PolicyFileError, match="cycle") as exc:
        Enforcer(f, defaults=[RuleDefault("a", "@", "test")])
    assert exc.value.rule in ("a", "b")


def test_unknown_rule_in_file_denies_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text('"os_compute_api:servers:create": "rule:does_not_exist or role:nobody"\n')
    with caplog.at_level(logging.WARNING, logger="novalite.policy"):
        e = Enforcer(f)
        assert not e.check("os_compute_api:servers:create", ADMIN, TARGET_A)
    assert "does_not_exist" in caplog.text


# --- sample -----------------------------------------------------------------------------


def test_sample_file_lists_every_default() -> None:
    text = (REPO / "policy.yaml.sample").read_text()
    assert text == generate_sample(), "regenerate: python -m novalite.policy > policy.yaml.sample"
    body = "\n".join(line[1:] for line in text.splitlines() if line.startswith('#"'))
    parsed = yaml.safe_load(body)
    assert parsed == {r.name: r.check_str for r in DEFAULT_RULES}
