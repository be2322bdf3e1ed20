"""structlog set-up: JSON lines by default, a console renderer on a TTY.

Request ids and instance uuids are bound with structlog's contextvars, so every
line a request causes carries them, down to the libvirt call.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


# Characters that end or rewrite a console line: C0 and C1 controls, DEL, line and paragraph separators.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Multi-line by design: the rendered traceback and stack.
_MULTILINE = frozenset({"exception", "stack"})


def _escape(text: str) -> str:
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def escape_controls(_logger: Any, _method: str, event_dict: dict) -> dict:
    """Escape control characters in every string of a console line, so that a name or
    path with a newline or an ANSI sequence cannot forge or recolour a log line (JSON
    lines escape them already)."""
    return {k: _escape(v) if isinstance(v, str) and k not in _MULTILINE else v for k, v in event_dict.items()}


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog (and stdlib logging) once for the process."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            *([escape_controls] if fmt == "console" else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), stream=sys.stderr)
