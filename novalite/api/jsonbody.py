"""The one parser of JSON request bodies: every service's body goes through ``parse``.

Before a handler sees a body it must be UTF-8, nested at most ``[api]
max_json_depth`` deep, and hold no number a database column or a 64-bit
integer cannot take (nor NaN/Infinity, which JSON does not have), and hold
no NUL character (Postgres stores none in text or jsonb). Anything
else is ``Invalid`` (400) in the caller's words, never a RecursionError or
an OverflowError deep in a handler.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from novalite.exception import Invalid

# The largest integer a body may carry: Postgres bigint, Nova's and Glance's integer columns.
MAX_INT = 2**63 - 1
# JSON strings (escapes included), removed before brackets are counted.
# Possessive and anchored at the end, so an unterminated string costs one linear scan.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_BRACKETS = re.compile(rb"[^\[\]{}]+")
# +1 for an opening bracket, -1 for a closing one, by byte value.
_DELTA = [0] * 256
_DELTA[ord("[")] = _DELTA[ord("{")] = 1
_DELTA[ord("]")] = _DELTA[ord("}")] = -1


def depth(raw: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (0 for a scalar).

    Counted on the bytes, without parsing, so a body of ten thousand ``[`` costs a
    scan rather than a recursion through the json module."""
    brackets = _BRACKETS.sub(b"", _STRING.sub(b"", raw))
    return max(accumulate(map(_DELTA.__getitem__, brackets)), default=0)


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 19 or abs(value := int(text)) > MAX_INT:
        raise ValueError("integer out of range")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse(raw: bytes, max_depth: int, message: str) -> Any:
    """The JSON value of ``raw``, or ``Invalid(message)`` for anything a handler must not see."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(message) from None
    if depth(raw) > max_depth:
        raise Invalid(f"{message.rstrip('.')}: JSON nested deeper than {max_depth} levels.")
    try:
        doc = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except (ValueError, RecursionError):
        raise Invalid(message) from None
    if _NUL.search(text) and _holds_nul(doc):
        raise Invalid(f"{message.rstrip('.')}: NUL characters are not allowed.")
    return doc


_NUL = re.compile(r"\\u0000", re.IGNORECASE)  # the only way a JSON text can carry U+0000


def _holds_nul(doc: Any) -> bool:
    stack = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return True
        elif isinstance(value, dict):
            stack.extend(value.values())
            stack.extend(value.keys())
        elif isinstance(value, list):
            stack.extend(value)
    return False
