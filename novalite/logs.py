"""structlog set-up: JSON lines by default, a console renderer on a TTY.

Request ids and instance uuids are bound with structlog's contextvars, so every
line a request causes carries them, down to the libvirt call.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

import orjson
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


# Per stdlib logger: the least severe level worth showing, whatever ``[log] level`` says.
# aiohttp's access logger is replaced by novalite's own access line (``[log] access_log``).
_STDLIB_FLOORS = {"aiohttp.access": logging.WARNING}

# Marks the handler setup_logging puts on the root logger, so a second call replaces it.
_HANDLER_NAME = "novalite"


def _json_line(event_dict: dict, **kw: Any) -> str:
    """A JSON line through orjson, a tenth of json.dumps' cost (an info-level storm writes several
    lines per boot); a line with any non-ASCII character is json.dumps' as before, which escapes
    what orjson leaves raw (C1 controls, U+2028/U+2029) so that no value can forge a line."""
    line = orjson.dumps(event_dict, default=kw["default"], option=orjson.OPT_NON_STR_KEYS)
    return line.decode() if line.isascii() else json.dumps(event_dict, **kw)


def _renderer(fmt: str) -> list:
    """The last processors of a line: control characters escaped on a console, then rendered."""
    if fmt == "console":
        return [escape_controls, structlog.dev.ConsoleRenderer()]
    return [structlog.processors.JSONRenderer(serializer=_json_line)]


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and stdlib logging once for the process (a second call replaces both).

    structlog events are rendered straight to stderr (the hot path: no stdlib
    logging in between). Records of stdlib loggers -- aiohttp, asyncpg, asyncio,
    Python warnings -- go through structlog's ProcessorFormatter to the same
    stream in the same format, with the same bound context (request id, user,
    project, instance uuid) and the logger's name; the root logger's level is
    ``level``, so ``debug`` shows their debug records too."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info,
                    *_renderer(fmt)],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.StackInfoRenderer(), structlog.processors.format_exc_info,
                    *_renderer(fmt)],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    for name, floor in _STDLIB_FLOORS.items():
        logging.getLogger(name).setLevel(max(floor, _LEVELS[level]))
    logging.captureWarnings(True)
