"""structlog set-up: JSON lines (or coloured console lines) carrying request id and trace id.

Request ids are bound with `structlog.contextvars` by the HTTP middleware and the consumers; the
trace id is read from the current OpenTelemetry span for every line.

URLs are capabilities more often than not (a private iCal feed's ``?token=``, Google's
``/private-…/basic.ics``, ``nats://token@…``, a database URL with its password), so no URL reaches a
log line whole: structlog values and standard-library records (httpx's "HTTP Request: GET <url>")
keep only the scheme, host and port (`redact_urls`).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog
from structlog.typing import EventDict

from .tracing import current_trace_id

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

#: Keys whose values never reach a log line.
REDACTED_KEYS = frozenset({"password", "app_password", "token", "access_token", "refresh_token", "secret",
                           "api_key", "key", "authorization", "cookie", "client_secret"})


def _add_trace_id(_: Any, __: str, event_dict: EventDict) -> EventDict:
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


_URL = re.compile(r"(?i)\b(https?|webcal|wss?|nats|tls|postgres(?:ql)?)://([^\s/?#\"'<>]*)([^\s\"'<>]*)")


def redact_url(url: str) -> str:
    """`url` with only its scheme, host and port: no user or password, path, query or fragment
    (``https://feeds.example/…``)."""
    return _URL.sub(_url_replacement, url)


def _url_replacement(match: re.Match[str]) -> str:
    scheme, netloc, rest = match.group(1), match.group(2), match.group(3)
    host = netloc.rpartition("@")[2]
    return f"{scheme}://{host}" + ("/…" if rest not in ("", "/") or "@" in netloc else "")


def redact_urls(text: str) -> str:
    """`text` with every URL in it cut down to its origin (see `redact_url`)."""
    return _URL.sub(_url_replacement, text) if "://" in text else text


def _scrub_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact_urls(value)
    if depth > 6:
        return value
    if isinstance(value, Mapping):
        return {k: "[redacted]" if _is_secret(k) else _scrub_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v, depth + 1) for v in value]
    return value


def _redact(_: Any, __: str, event_dict: EventDict) -> EventDict:
    for key, value in list(event_dict.items()):
        if _is_secret(key):
            event_dict[key] = "[redacted]"
        elif isinstance(value, str | Mapping | list | tuple):
            event_dict[key] = _scrub_value(value)
    return event_dict


class RedactURLs(logging.Filter):
    """A standard-library filter that cuts every URL in a record's message down to its origin."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: leave it to the handler
            return True
        if "://" in message:
            record.msg, record.args = redact_urls(message), None
        return True


#: Standard-library loggers of the HTTP and NATS clients: they name the URLs they talk to.
CLIENT_LOGGERS = ("httpx", "httpcore", "aiohttp.client", "nats", "asyncio")
#: Of those, the ones that log every request at INFO: only warnings pass.
_CHATTY = ("httpx", "httpcore")


def protect_client_loggers() -> None:
    """Keep request URLs out of the logs: httpx's per-request INFO lines off, and a URL-redacting
    filter on the client loggers and the root handlers. Idempotent; litestar re-configures the
    root logger when an app is built, which leaves these in place."""
    for name in CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactURLs) for f in logger.filters):
            logger.addFilter(RedactURLs())
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactURLs) for f in handler.filters):
            handler.addFilter(RedactURLs())


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
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        # After the traceback is text: an exception's message names URLs too ("no servers
        # available for connection (nats://<token>@host:port)").
        _redact,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[_fold_outages, *shared, renderer],
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
    handler.addFilter(FoldOutages())
    root.addHandler(handler)
    root.setLevel(max(_LEVELS[level], logging.WARNING))
    # uvicorn configures its own loggers unless told not to (run_service passes log_config=None);
    # make sure theirs propagate to the root handler above rather than print plain text.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncpg", "nats", "opentelemetry"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
    protect_client_loggers()


def _stdlib_message(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """A standard-library record's own arguments stay out of the JSON (they may hold anything);
    its formatted message is the event."""
    event_dict.pop("positional_args", None)
    return event_dict


#: An error text naming the database or NATS being away (the `error=repr(exc)` of a loop's line).
_DATABASE_AWAY = re.compile(r"CannotConnectNowError|ConnectionDoesNotExistError|PostgresConnectionError|"
                            r"AdminShutdownError|CrashShutdownError|TooManyConnectionsError|"
                            r"connection was closed in the middle of operation")
_NATS_AWAY = re.compile(r"ConnectionClosedError|NoServersError|ConnectionReconnectingError|StaleConnectionError|"
                        r"UnexpectedEOF|nats: connection closed|nats: no servers available")
_OUTAGE_EVENTS = re.compile(r"^\w+_(unavailable|still_unavailable|recovered)$")


def _fold_outages(_: Any, method: str, event_dict: EventDict) -> EventDict:
    """A warning or error line that only says the database or NATS is away (a loop's retry) is
    folded into the process's `outage` for it: one line when it goes, one a minute, not one (and
    a traceback) per retry from every loop."""
    if _folded(method, event_dict):
        raise structlog.DropEvent
    return event_dict


class FoldOutages(logging.Filter):
    """`_fold_outages` for the standard library's records: asyncpg's "Failed to restore the pool
    connection floor" with its traceback, nats-py's "encountered error" on every reconnect."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: leave it to the handler
            return True
        return not _folded(record.levelname.lower(),
                           {"event": message, "exc_info": record.exc_info, "logger": record.name})


def _folded(method: str, event_dict: Mapping[str, Any]) -> bool:
    """Whether the line says only that the database or NATS is away; if so it was counted."""
    if method not in ("warning", "error", "exception", "critical") or _OUTAGE_EVENTS.match(
            str(event_dict.get("event", ""))):
        return False
    exc: Any = event_dict.get("exc_info")
    if exc is True:
        exc = sys.exc_info()[1]
    elif isinstance(exc, tuple):
        exc = exc[1]
    what: str | None = None
    if isinstance(exc, BaseException):
        what = "database" if is_database_outage(exc) else "nats" if is_nats_outage(exc) else None
    if what is None and str(event_dict.get("logger", "")).startswith("nats.aio"):
        what = "nats"  # nats-py's own "encountered error" lines: it is reconnecting
    if what is None:
        text = f"{event_dict.get('error', '')} {event_dict.get('event', '')}"
        what = "database" if _DATABASE_AWAY.search(text) else "nats" if _NATS_AWAY.search(text) else None
    if what is None:
        return False
    outage(what).failed(exc if isinstance(exc, BaseException) else event_dict.get("error") or event_dict.get("event"))
    return True


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)


class Outage:
    """One log line when a dependency goes away, then one a minute while it stays away, and one
    when it is back: never a line (or a traceback) per retry.

    ``failed(error)`` on every failed attempt, ``recovered()`` on the first success after; both are
    cheap when nothing changed. `what` names the dependency in the lines (``nats``, ``database``)."""

    def __init__(self, what: str, *, logger: Any = None, every: float = 60.0, **fields: Any) -> None:
        self.what = what
        self.every = every
        self.fields = fields
        self.log = logger or get_logger("calmesh.outage")
        self.since: float | None = None
        self.failures = 0
        self._last_line = 0.0
        self._last_failure = 0.0
        #: Seconds without a failure after which the next failure starts a new outage.
        self.quiet = 30.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, error: object = None) -> None:
        import time

        now = time.monotonic()
        if self.since is not None and now - self._last_failure > self.quiet:
            # Nothing failed for a while (and nothing said it recovered): this is a new outage.
            self.since = None
            self.failures = 0
        self._last_failure = now
        self.failures += 1
        text = _short_error(error)
        if self.since is None:
            self.since = now
            self._last_line = now
            self.log.warning(f"{self.what}_unavailable", error=text, **self.fields)
        elif now - self._last_line >= self.every:
            self._last_line = now
            self.log.warning(f"{self.what}_still_unavailable", error=text, down_seconds=round(now - self.since),
                             failures=self.failures, **self.fields)

    def recovered(self) -> None:
        import time

        if self.since is None:
            return
        self.log.info(f"{self.what}_recovered", down_seconds=round(time.monotonic() - self.since, 1),
                      failures=self.failures, **self.fields)
        self.since = None
        self.failures = 0


def _short_error(error: object) -> str | None:
    if error is None:
        return None
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    else:
        text = str(error)
    return redact_urls(text)[:300]


_OUTAGES: dict[str, Outage] = {}


def outage(what: str) -> Outage:
    """This process's one `Outage` for `what` (``nats``, ``database``): every loop of a service
    that sees the dependency fail reports to the same one, so the service logs one line, not one
    per consumer."""
    found = _OUTAGES.get(what)
    if found is None:
        found = _OUTAGES[what] = Outage(what)
    return found


def is_database_outage(exc: BaseException) -> bool:
    """The database is away (refused, restarting, the connection lost), as opposed to a query error.

    An OSError counts only when asyncpg raised it (a refused connect): the same ConnectionError out
    of a handler's HTTP call to a provider is that call's failure, retried and dead-lettered."""
    import asyncpg

    if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.CannotConnectNowError
                  | asyncpg.ConnectionDoesNotExistError
                  | asyncpg.AdminShutdownError | asyncpg.CrashShutdownError
                  | asyncpg.TooManyConnectionsError):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        # "connection is closed" is the outage; "another operation is in progress" is a bug.
        return "closed" in str(exc)
    return isinstance(exc, OSError) and _raised_in(exc, "asyncpg")


def _raised_in(exc: BaseException, package: str) -> bool:
    """Whether a frame of `package` is on the exception's traceback."""
    tb = exc.__traceback__
    while tb is not None:
        if (tb.tb_frame.f_globals.get("__name__") or "").split(".")[0] == package:
            return True
        tb = tb.tb_next
    return False


def is_nats_outage(exc: BaseException) -> bool:
    """NATS is away (disconnected, reconnecting, no stream leader answering)."""
    import nats.errors

    return isinstance(exc, nats.errors.ConnectionClosedError | nats.errors.ConnectionReconnectingError
                      | nats.errors.NoServersError | nats.errors.StaleConnectionError | nats.errors.TimeoutError
                      | nats.errors.NoRespondersError | nats.errors.OutboundBufferLimitError
                      | nats.errors.ConnectionDrainingError)
