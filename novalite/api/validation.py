"""Input rules every API shares: request bodies that decode safely, and names.

Names follow Nova's ``parameter_types``: every character printable — no
category C (controls, format characters such as U+200B or U+202E, surrogates,
unassigned), no category Z but the plain space separators (Zs), nothing above
the basic multilingual plane — and no space separator at either end. Each
service applies the rule with its own length limit and renders the refusal in
its own error body (the error middleware does that by path).
"""

from __future__ import annotations

import unicodedata
from functools import cache
from typing import Any

from novalite.api import errors

# Deeper documents than any API needs; deeper ones would exhaust recursion later on.


@cache
def printable(ch: str) -> bool:
    """Nova's _is_printable over its character set (code points below U+FFFF)."""
    cat = unicodedata.category(ch)
    return ord(ch) < 0xFFFF and not cat.startswith("C") and (not cat.startswith("Z") or cat == "Zs")


def _edge_space(ch: str) -> bool:
    return unicodedata.category(ch) == "Zs"


def valid_name(value: str) -> bool:
    """Nova's valid_name_regex: printable, no leading or trailing whitespace."""
    if not all(printable(c) for c in value):
        return False
    return not value or not (_edge_space(value[0]) or _edge_space(value[-1]))


def valid_name_with_spaces(value: str) -> bool:
    """Nova's name_with_leading_trailing_spaces: printable with one non-space."""
    return all(printable(c) for c in value) and any(not _edge_space(c) for c in value)


NAME_RULE = "printable characters. Can not start or end with whitespace."


def name_problem(value: Any, *, max_length: int = 255, min_length: int = 1) -> str | None:
    """Why a name is refused (None when it is fine): not a string, its length, or its characters."""
    if not isinstance(value, str):
        return f"{value!r} is not of type 'string'"
    if len(value) < min_length:
        return f"{value!r} is too short"
    if len(value) > max_length:
        return f"{value[:64]!r}... is too long (the limit is {max_length} characters)"
    if not valid_name(value):
        return f"An invalid 'name' value was provided. The name must be: {NAME_RULE}"
    return None


def refuse_nul(request_path: str, query: Any) -> None:
    """400 when the path or query string carries a NUL character (nothing stores one)."""
    if "\x00" in request_path or any("\x00" in k or "\x00" in v for k, v in query.items()):
        raise errors.BadRequest("Invalid input: NUL characters are not allowed in the URL.")
