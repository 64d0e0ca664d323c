"""structlog set-up: JSON lines (or coloured console lines) carrying request id and trace id.

Request ids are bound with `structlog.contextvars` by the HTTP middleware and the consumers; the
trace id is read from the current OpenTelemetry span for every line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from .tracing import current_trace_id

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

#: Keys whose values never reach a log line.
REDACTED_KEYS = frozenset({"password", "app_password", "token", "access_token", "refresh_token", "secret",
                           "api_key", "key", "authorization", "cookie", "client_secret"})


def _add_trace_id(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    trace_id = current_trace_id()
    if trace_id is not None:
        event_dict.setdefault("trace_id", trace_id)
    return event_dict


def _redact(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in list(event_dict):
        if key.lower() in REDACTED_KEYS:
            event_dict[key] = "[redacted]"
    return event_dict


def setup_logging(service_name: str, level: str = "info", json: bool = True) -> None:
    """Configure structlog and the standard library's root logger for this process."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_id,
        _redact,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service_name)
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
