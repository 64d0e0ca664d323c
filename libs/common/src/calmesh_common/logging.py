"""structlog set-up: JSON lines (or coloured console lines) carrying request id and trace id.

Request ids are bound with `structlog.contextvars` by the HTTP middleware and the consumers; the
trace id is read from the current OpenTelemetry span for every line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
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


#: A key holding one of these (any case, "-" or "_") is secret too: ``internal_secret``,
#: ``X-Calmesh-Internal-Secret``, ``csrf_token``, ``Set-Cookie``, ``smtp_password``...
SECRET_KEY_PARTS = ("password", "secret", "token", "authorization", "cookie", "api_key", "credential")


def _is_secret(key: object) -> bool:
    if not isinstance(key, str):
        return False
    name = key.lower().replace("-", "_")
    return name in REDACTED_KEYS or any(part in name for part in SECRET_KEY_PARTS)


def _scrubbed(value: Any, depth: int = 0) -> Any:
    """A copy of `value` with secret keys redacted in nested mappings and lists (e.g. headers)."""
    if depth > 6:
        return value
    if isinstance(value, Mapping):
        return {k: "[redacted]" if _is_secret(k) else _scrubbed(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v, depth + 1) for v in value]
    return value


def _redact(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key, value in list(event_dict.items()):
        if _is_secret(key):
            event_dict[key] = "[redacted]"
        elif isinstance(value, Mapping | list):
            event_dict[key] = _scrubbed(value)
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
