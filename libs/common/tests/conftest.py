"""Fixtures for the common library's tests: a fresh schema and a fresh JetStream stream per test.

Each test gets its own PostgreSQL schema (the common event-store migrations applied) and its own
stream ``LT_<unique>`` on ``calmesh.lt<unique>.>``, so tests never see each other's rows or messages.
An `EventStore` made by `store` publishes `ThingRecorded` there: the event has no context of its
own, so its subject comes from the store's context.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import nats
import pytest
import structlog
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from calmesh_common.events import Event
from calmesh_common.eventstore import EventStore
from calmesh_common.logging import setup_logging
from calmesh_common.migrations import apply_migrations, common_migrations
from calmesh_common.streams import DUPLICATE_WINDOW_SECONDS, ensure_streams
from calmesh_testing.wait import wait_for as _wait_for


class ThingRecorded(Event, tag="libtest.thing_recorded.v1"):
    """A test-only event. No `context`: the store's context names its subject."""

    n: int
    note: str = ""


@dataclass(frozen=True)
class Lane:
    """One test's private corner: a migrated schema and a stream with its subjects."""

    schema: str
    context: str
    stream: str
    subjects: str

    def store(self) -> EventStore:
        return EventStore(self.schema, context=self.context)

    @property
    def subject(self) -> str:
        """The subject `ThingRecorded` is published on by `store()`."""
        return f"calmesh.{self.context}.libtest.thing_recorded"


@pytest.fixture(scope="session")
async def calmesh_streams(nats_server_url: str) -> None:
    """The real CALMESH_* streams (the dead-letter stream among them)."""
    nc = await nats.connect(nats_server_url)
    try:
        await ensure_streams(nc.jetstream())
    finally:
        await nc.close()


@pytest.fixture
def js(nc: nats.NATS) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
async def lane(pool: asyncpg.Pool, js: JetStreamContext, unique: str) -> AsyncIterator[Lane]:
    lane = Lane(
        schema=f"lt_{unique}",
        context=f"lt{unique}",
        stream=f"LT_{unique.upper()}",
        subjects=f"calmesh.lt{unique}.>",
    )
    async with pool.acquire() as conn:
        await apply_migrations(conn, lane.schema, common_migrations())
    await js.add_stream(
        StreamConfig(
            name=lane.stream,
            subjects=[lane.subjects],
            storage=StorageType.MEMORY,
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
        )
    )
    yield lane
    await js.delete_stream(lane.stream)
    async with pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA {lane.schema} CASCADE")


@pytest.fixture
def wait_for() -> Callable[..., Awaitable[Any]]:
    """calmesh_testing's `wait_for`, as a fixture for the tests that take it so."""
    return _wait_for


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    subject: str
    msg_id: str
    headers: dict[str, str]
    data: bytes


async def stream_messages(js: JetStreamContext, stream: str) -> list[StoredMessage]:
    """Every message stored on `stream`, in stream order."""
    info = await js.stream_info(stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
        raw = await js.get_msg(stream, seq)
        headers = dict(raw.headers or {})
        found.append(StoredMessage(seq, raw.subject, headers.get("Nats-Msg-Id", ""), headers, raw.data or b""))
    return found


@pytest.fixture
def read_stream(js: JetStreamContext) -> Callable[[str], Awaitable[list[StoredMessage]]]:
    async def read(stream: str) -> list[StoredMessage]:
        return await stream_messages(js, stream)

    return read


@pytest.fixture
def json_logs() -> Iterator[Callable[[], list[dict]]]:
    """Logging configured as a service's `run_service` does (JSON lines), written to a buffer;
    returns a function giving the lines logged so far. The default configuration comes back after."""
    setup_logging("booking", "info", json=True)
    buffer = io.StringIO()
    # Same processors; output to the buffer; no logger keeps this configuration after the test.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buffer), cache_logger_on_first_use=False)

    def lines() -> list[dict]:
        return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]

    yield lines
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
