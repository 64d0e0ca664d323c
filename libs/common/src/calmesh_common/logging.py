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


def setup_logging(service_name: str, level: str = "info", json: bool = True, *, stream: Any = None) -> None:
    """Configure structlog and the standard library's root logger for this process.

    structlog's own lines and the standard library's (uvicorn, asyncpg, nats, opentelemetry ...)
    leave through the same processors: one JSON object a line on stdout, with the service, request
    id and trace id, secrets redacted. Libraries log from WARNING up (their INFO is chatter)."""
    out = sys.stdout if stream is None else stream
    shared: list[Any] = [
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
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service_name)
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, _stdlib_message, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(_LEVELS[level], logging.WARNING))
    # uvicorn configures its own loggers unless told not to (run_service passes log_config=None);
    # make sure theirs propagate to the root handler above rather than print plain text.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncpg", "nats", "opentelemetry"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True


def _stdlib_message(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A standard-library record's own arguments stay out of the JSON (they may hold anything);
    its formatted message is the event."""
    event_dict.pop("positional_args", None)
    return event_dict


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
