"""Log lines: JSON, with request id and trace id, and never a secret."""

from __future__ import annotations

import pytest
import structlog

from calmesh_common.logging import get_logger
from calmesh_common.tracing import setup_tracing, tracer


def test_a_line_is_json_with_the_service_request_id_and_trace_id(json_logs) -> None:
    setup_tracing("libtest")
    structlog.contextvars.bind_contextvars(request_id="req-1")
    with tracer().start_as_current_span("work") as span:
        get_logger("t").info("booking_confirmed", booking_id="bkg_1")
        trace_id = format(span.get_span_context().trace_id, "032x")
    get_logger("t").debug("not_shown")  # below the level
    [line] = json_logs()
    assert line["event"] == "booking_confirmed" and line["booking_id"] == "bkg_1"
    assert line["service"] == "booking" and line["request_id"] == "req-1"
    assert line["trace_id"] == trace_id
    assert line["level"] == "info" and line["timestamp"].endswith("Z")


@pytest.mark.parametrize(
    "key",
    ["password", "app_password", "token", "access_token", "refresh_token", "secret", "client_secret",
     "internal_secret", "session_secret", "api_key", "key", "authorization", "Authorization", "cookie",
     "csrf_token", "smtp_password", "x-calmesh-internal-secret", "set-cookie", "credentials"],
)
def test_secret_values_are_redacted(json_logs, key: str) -> None:
    get_logger("t").warning("login_failed", **{key: "hunter2", "user_id": "usr_1"})
    [line] = json_logs()
    assert line[key] == "[redacted]"
    assert line["user_id"] == "usr_1"


def test_secrets_inside_nested_values_are_redacted_without_touching_the_callers_data(json_logs) -> None:
    headers = {"Authorization": "Bearer abc", "X-Calmesh-Internal-Secret": "s", "Accept": "text/calendar"}
    get_logger("t").info(
        "provider_call",
        headers=headers,
        attempts=[{"token": "t1", "status": 401}],
        key_id="key_1",
    )
    [line] = json_logs()
    assert line["headers"] == {"Authorization": "[redacted]", "X-Calmesh-Internal-Secret": "[redacted]", "Accept": "text/calendar"}
    assert line["attempts"] == [{"token": "[redacted]", "status": 401}]
    assert line["key_id"] == "key_1"  # an id is not a secret
    assert headers["Authorization"] == "Bearer abc"


def test_an_exception_is_logged_with_its_traceback_in_the_line(json_logs) -> None:
    try:
        raise ValueError("bad calendar")
    except ValueError:
        get_logger("t").exception("sync_failed", connection_id="con_1")
    [line] = json_logs()
    assert line["level"] == "error" and "ValueError: bad calendar" in line["exception"]


def test_urls_keep_only_their_origin_in_a_line(json_logs) -> None:
    """A feed URL is a secret (its ?token=, Google's /private-…/ path); so is a URL's password."""
    get_logger("t").warning(
        "feed_failed",
        url="https://feeds.example/cal.ics?token=s3cr3t-feed",
        detail="could not fetch https://calendar.google.com/calendar/ical/x/private-abc123/basic.ics now",
        servers=["nats://natstoken@127.0.0.1:4222"],
        nested={"db": "postgresql://calmesh:pg-pass@db:5432/calmesh"},
    )
    [line] = json_logs()
    text = str(line)
    for secret in ("s3cr3t-feed", "private-abc123", "natstoken", "pg-pass"):
        assert secret not in text
    assert line["url"] == "https://feeds.example/…"
    assert line["servers"] == ["nats://127.0.0.1:4222/…"]
    assert "https://calendar.google.com/…" in line["detail"]


def test_httpx_request_lines_never_show_a_url(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from calmesh_common.logging import protect_client_loggers, redact_url

    protect_client_loggers()
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").info('HTTP Request: %s %s "%s"', "GET", "http://127.0.0.1:9/f.ics?token=abc", "HTTP/1.1 200 OK")
    logging.getLogger("httpx").warning("retrying %s", "https://u:pw@feeds.example/f.ics?token=abc")
    assert "token=abc" not in caplog.text and "pw@" not in caplog.text
    assert "https://feeds.example/…" in caplog.text
    assert redact_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"


def test_the_nats_clients_own_lines_never_show_the_token_of_nats_url() -> None:
    """NATS_URL carries the stack's NATS token (``nats://<token>@host:port``); nats-py's logger
    and an exception naming the server keep only the host and port."""
    import io
    import logging

    from calmesh_common.logging import redact_urls, setup_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    try:
        setup_logging("booking", "info", json=True, stream=buffer)
        url = "nats://Zm9vYmFyLXRva2VuLTEyMw@127.0.0.1:4222"
        logging.getLogger("nats.aio.client").error("nats: could not connect to %s", url)
        try:
            raise ConnectionError(f"nats: no servers available for connection ({url})")
        except ConnectionError:
            logging.getLogger("calmesh.service").exception("nats_connect_failed")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.reset_defaults()
    text = buffer.getvalue()
    assert "could not connect to nats://127.0.0.1:4222" in text
    assert "Zm9vYmFyLXRva2VuLTEyMw" not in text
    assert redact_urls(f"NATS at {url}") == "NATS at nats://127.0.0.1:4222/…", "the token never passes"


def test_a_dependency_that_stays_away_logs_one_line_then_one_a_minute_then_one_when_back(json_logs, monkeypatch) -> None:
    import time

    from calmesh_common.logging import Outage

    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    away = Outage("nats", logger=get_logger("t"))
    for _ in range(120):  # a minute of reconnect attempts, twice a second
        away.failed(ConnectionRefusedError("connect refused nats://calmesh:pw@127.0.0.1:4222"))
        now[0] += 0.5
    away.failed("still refused")
    away.recovered()
    away.recovered()  # nothing left to say
    lines = json_logs()
    assert [line["event"] for line in lines] == ["nats_unavailable", "nats_still_unavailable", "nats_recovered"]
    assert "pw" not in lines[0]["error"]  # a URL in the error keeps only its origin
    assert lines[1]["down_seconds"] == 60 and lines[2]["failures"] == 121


async def test_only_a_database_error_counts_as_the_database_being_away() -> None:
    import asyncpg

    from calmesh_common.logging import is_database_outage

    with pytest.raises(OSError) as refused:
        await asyncpg.connect("postgresql://nobody@127.0.0.1:1/none", timeout=5)
    assert is_database_outage(refused.value)
    assert not is_database_outage(ConnectionError("provider unreachable"))  # a handler's own call
    assert is_database_outage(asyncpg.ConnectionDoesNotExistError("connection was closed"))
    assert not is_database_outage(asyncpg.InterfaceError("another operation is in progress"))


def test_loops_retrying_while_the_database_is_away_log_one_line_not_one_per_retry(json_logs, monkeypatch) -> None:
    import logging

    import asyncpg

    from calmesh_common import logging as calmesh_logging

    monkeypatch.setattr(calmesh_logging, "_OUTAGES", {})
    for _ in range(20):  # two loops of a service, retrying every second
        get_logger("t").warning("webhooks_claim_failed", error=repr(asyncpg.CannotConnectNowError("starting up")))
        get_logger("t").warning("hold_timer_failed", error=repr(asyncpg.CannotConnectNowError("starting up")))
    get_logger("t").warning("webhooks_claim_failed", error="ValueError('a bug')")  # not an outage: kept
    assert [line["event"] for line in json_logs()] == ["database_unavailable", "webhooks_claim_failed"]
    # asyncpg's own "Failed to restore the pool connection floor" (with its traceback) is folded too.
    try:
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    except asyncpg.ConnectionDoesNotExistError:
        import sys

        record = logging.LogRecord("asyncpg.pool", logging.WARNING, __file__, 1,
                                   "Failed to restore the pool connection floor; retrying", None, sys.exc_info())
    assert calmesh_logging.FoldOutages().filter(record) is False
    other = logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, "something else", None, None)
    assert calmesh_logging.FoldOutages().filter(other) is True
    assert calmesh_logging.outage("database").failures == 41
