"""The event store and transactional outbox on asyncpg.

`EventStore.append` writes events to a service's ``events`` table with optimistic concurrency on
the stream, and the same events to its ``outbox`` in the caller's transaction, so a state change,
its events and their publication stand or fall together. The outbox relay (`relay.py`) publishes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from .events import Envelope, Event, decode_envelope, encode_envelope, make_envelope, subject_for
from .tracing import inject_headers


class ConcurrencyError(Exception):
    """The stream moved on since the caller read it: reload, decide again, retry."""

    def __init__(self, stream_id: str, expected: int, actual: int | None) -> None:
        super().__init__(f"stream {stream_id}: expected version {expected}, found {actual}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class EventStore:
    """One service's event store, living in that service's schema."""

    def __init__(self, schema: str, context: str | None = None) -> None:
        self.schema = schema
        self.context = context or schema
        self.notify_channel = f"{schema}_outbox"
        self._append_sql = (
            f"WITH given AS (SELECT * FROM unnest($2::uuid[], $3::int[], $4::text[], $5::text[], $6::timestamptz[],"
            " $7::bytea[], $8::text[], $9::jsonb[]) WITH ORDINALITY"
            " AS g(event_id, version, type, user_id, occurred_at, payload, subject, headers, n)),"
            f" stored AS (INSERT INTO {schema}.events (event_id, stream_id, version, type, user_id, occurred_at, envelope)"
            " SELECT event_id, $1, version, type, user_id, occurred_at, payload FROM given ORDER BY n),"
            f" queued AS (INSERT INTO {schema}.outbox (event_id, subject, payload, headers)"
            " SELECT event_id, subject, payload, headers FROM given ORDER BY n)"
            " SELECT pg_notify($10, '')"
        )

    async def version(self, conn: asyncpg.Connection, stream_id: str) -> int:
        version: int = await conn.fetchval(
            f"SELECT coalesce(max(version), 0) FROM {self.schema}.events WHERE stream_id = $1", stream_id
        )
        return version

    async def append(
        self,
        conn: asyncpg.Connection,
        stream_id: str,
        expected_version: int | None,
        events: Sequence[Event],
        *,
        user_id: str | None = None,
    ) -> list[Envelope]:
        """Append `events` after `expected_version` (None: wherever the stream is) in the open
        transaction of `conn`, and queue them in the outbox. Raises ConcurrencyError."""
        if not conn.is_in_transaction():
            raise RuntimeError("EventStore.append must run inside a transaction")
        if not events:
            return []
        current = await self.version(conn, stream_id)
        if expected_version is not None and current != expected_version:
            raise ConcurrencyError(stream_id, expected_version, current)
        trace = inject_headers({})
        envelopes = [
            make_envelope(e, stream_id=stream_id, version=current + i + 1, user_id=user_id, trace=trace)
            for i, e in enumerate(events)
        ]
        ids, versions, types, users, occurred, payloads, subjects, headers = [], [], [], [], [], [], [], []
        for env, ev in zip(envelopes, events, strict=True):
            payload = encode_envelope(env)
            ids.append(env.id)
            versions.append(env.version)
            types.append(env.type)
            users.append(env.user_id)
            occurred.append(env.occurred_at)
            payloads.append(payload)
            subjects.append(subject_for(env.type, ev.context or self.context))
            headers.append(msgspec.json.encode({"Calmesh-Event-Type": env.type, **trace}).decode())
        # One round trip for the events, their outbox rows and the relay's wake-up (the caller
        # may hold a write lock until it commits); rows go in the order given.
        try:
            await conn.execute(self._append_sql, stream_id, ids, versions, types, users, occurred, payloads,
                               subjects, headers, self.notify_channel)
        except asyncpg.UniqueViolationError:
            raise ConcurrencyError(stream_id, current, None) from None
        return envelopes

    async def load(self, conn: asyncpg.Connection, stream_id: str) -> list[Envelope]:
        rows = await conn.fetch(
            f"SELECT envelope FROM {self.schema}.events WHERE stream_id = $1 ORDER BY version", stream_id
        )
        return [decode_envelope(r["envelope"]) for r in rows]

    async def read_all(
        self, conn: asyncpg.Connection, after_position: int = 0, limit: int = 1000, types: Sequence[str] | None = None
    ) -> list[tuple[int, Envelope]]:
        """Events in commit order after `after_position` (for rebuilding projections)."""
        args: list[Any] = [after_position, limit]
        where = "position > $1"
        if types:
            where += " AND type = ANY($3::text[])"
            args.append(list(types))
        rows = await conn.fetch(
            f"SELECT position, envelope FROM {self.schema}.events WHERE {where} ORDER BY position LIMIT $2", *args
        )
        return [(r["position"], decode_envelope(r["envelope"])) for r in rows]
