"""Default policy rules as data, one module per service, all read by ``novalite.policy``.

Each module holds ``DEFAULT_RULES``: the rules its upstream service registers
(new defaults, project scope) for the API routes novalite serves, as
``RuleDefault(name, check_str, description)``. Base rule names (``context_is_admin``,
``admin_or_owner``, ``default``) repeat across services with different check
strings, so each service gets its own ``novalite.policy.Enforcer`` over its own table.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RuleDefault"]


@dataclass(frozen=True, slots=True)
class RuleDefault:
    """A registered rule: its name, default check string and a description."""

    name: str
    check_str: str
    description: str
