"""While a dependency is away a service logs one line, then one a minute, and one when it is back
(not a traceback per reconnect attempt); a request meanwhile is a 503 with Retry-After."""

from __future__ import annotations

from typing import Any

import asyncpg

from calmesh_common.logging import Outage, is_database_outage, is_nats_outage


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))

    info = warning


def test_an_outage_is_one_line_then_one_a_minute_then_one_when_back(monkeypatch: Any) -> None:
    import time

    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    log = Lines()
    away = Outage("nats", logger=log)
    for _ in range(130):  # over a minute of reconnect attempts, twice a second
        away.failed(ConnectionRefusedError("refused"))
        now[0] += 0.5
    assert [e for e, _ in log.lines] == ["nats_unavailable", "nats_still_unavailable"]
    assert log.lines[1][1]["failures"] == 121 and log.lines[1][1]["down_seconds"] == 60
    away.recovered()
    away.recovered()  # nothing to say the second time
    assert [e for e, _ in log.lines][-1] == "nats_recovered" and len(log.lines) == 3
    away.failed("again")
    assert log.lines[-1][0] == "nats_unavailable"


async def test_a_refused_database_connection_is_a_database_outage() -> None:
    try:
        await asyncpg.connect("postgresql://nobody@127.0.0.1:1/none", timeout=2)
    except Exception as exc:  # noqa: BLE001
        assert is_database_outage(exc), repr(exc)
    else:
        raise AssertionError("connected to port 1")


def test_what_counts_as_an_outage() -> None:
    assert not is_database_outage(ConnectionRefusedError())  # not from asyncpg: a provider, say
    assert is_database_outage(asyncpg.CannotConnectNowError("starting up"))
    assert not is_database_outage(asyncpg.UniqueViolationError("dup"))
    import nats.errors

    assert is_nats_outage(nats.errors.ConnectionClosedError())
    assert not is_nats_outage(ValueError())
