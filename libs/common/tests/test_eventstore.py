"""The event store: appends with optimistic concurrency, and an outbox row per event, in the
caller's transaction."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import pytest

from calmesh_common.events import decode_event
from calmesh_common.events.gateway import ApiKeyRevoked, UserSignedUp
from calmesh_common.eventstore import ConcurrencyError, EventStore


def signed_up(n: int) -> UserSignedUp:
    return UserSignedUp(user_id=f"usr_{n}", email=f"u{n}@example.com", handle=f"u{n}", name=f"U {n}", timezone="UTC")


async def counts(conn: asyncpg.Connection, schema: str, stream_id: str) -> tuple[int, int]:
    events = await conn.fetchval(f"SELECT count(*) FROM {schema}.events WHERE stream_id = $1", stream_id)
    outbox = await conn.fetchval(
        f"SELECT count(*) FROM {schema}.outbox o JOIN {schema}.events e USING (event_id) WHERE e.stream_id = $1",
        stream_id,
    )
    orphans = await conn.fetchval(
        f"SELECT count(*) FROM {schema}.outbox o WHERE NOT EXISTS"
        f" (SELECT 1 FROM {schema}.events e WHERE e.event_id = o.event_id)"
    )
    assert orphans == 0, "an outbox row without its event"
    return events, outbox


async def test_appended_events_load_back_in_order_and_decode(pool, lane) -> None:
    store = EventStore(lane.schema, context="gateway")
    first = [signed_up(1)]
    second = [ApiKeyRevoked(key_id="key_1", user_id="usr_1", key_hash="h1"), ApiKeyRevoked(key_id="key_2", user_id="usr_1", key_hash="h2")]
    async with pool.acquire() as conn:
        async with conn.transaction():
            appended = await store.append(conn, "user-1", 0, first, user_id="usr_1")
        async with conn.transaction():
            appended += await store.append(conn, "user-1", 1, second, user_id="usr_1")
        async with conn.transaction():
            await store.append(conn, "user-2", 0, [signed_up(2)])

        loaded = await store.load(conn, "user-1")
        assert [e.id for e in loaded] == [e.id for e in appended]
        assert [e.version for e in loaded] == [1, 2, 3]
        assert [e.type for e in loaded] == ["user.signed_up.v1", "api_key.revoked.v1", "api_key.revoked.v1"]
        assert all(e.user_id == "usr_1" and e.stream_id == "user-1" for e in loaded)
        assert [decode_event(e) for e in loaded] == [*first, *second]
        assert await store.version(conn, "user-1") == 3
        assert await store.version(conn, "nobody") == 0
        assert await store.load(conn, "nobody") == []

        # read_all: every stream, in commit order, resumable from a position.
        everything = await store.read_all(conn)
        assert [e.stream_id for _, e in everything] == ["user-1", "user-1", "user-1", "user-2"]
        after_second = await store.read_all(conn, after_position=everything[1][0])
        assert [e.id for _, e in after_second] == [e.id for _, e in everything[2:]]
        only_signups = await store.read_all(conn, types=["user.signed_up.v1"])
        assert [e.stream_id for _, e in only_signups] == ["user-1", "user-2"]

        # One outbox row per event, on the event's subject, carrying the stored envelope.
        rows = await conn.fetch(f"SELECT event_id::text, subject, payload FROM {lane.schema}.outbox ORDER BY position")
        assert [r["event_id"] for r in rows] == [e.id for _, e in everything]
        assert rows[0]["subject"] == "calmesh.gateway.user.signed_up"
        assert rows[1]["subject"] == "calmesh.gateway.api_key.revoked"
        assert msgspec.json.decode(rows[0]["payload"])["id"] == appended[0].id


async def test_expected_version_none_appends_at_the_end(pool, lane) -> None:
    store = EventStore(lane.schema, context="gateway")
    async with pool.acquire() as conn:
        for n in range(3):
            async with conn.transaction():
                await store.append(conn, "s", None, [signed_up(n)])
        assert [e.version for e in await store.load(conn, "s")] == [1, 2, 3]


async def test_a_stale_expected_version_is_refused_and_writes_nothing(pool, lane) -> None:
    store = EventStore(lane.schema, context="gateway")
    async with pool.acquire() as conn:
        async with conn.transaction():
            await store.append(conn, "s", 0, [signed_up(1), signed_up(2)])
        with pytest.raises(ConcurrencyError) as caught:
            async with conn.transaction():
                await store.append(conn, "s", 1, [signed_up(3)])
        assert (caught.value.expected, caught.value.actual) == (1, 2)
        assert await counts(conn, lane.schema, "s") == (2, 2)


async def test_two_writers_at_the_same_version_exactly_one_wins(pool, lane) -> None:
    """Both read version 0 and append while the other's transaction is still open: the second
    waits for the first, then fails with ConcurrencyError; its events and its own state change
    are gone, the winner's are whole."""
    store = EventStore(lane.schema, context="gateway")
    async with pool.acquire() as conn:
        await conn.execute(f"CREATE TABLE {lane.schema}.state (writer text)")
    first_appended = asyncio.Event()

    async def writer(name: str, events: int, hold: float) -> str:
        async with pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {lane.schema}.state VALUES ($1)", name)
                    if name == "b":
                        await first_appended.wait()
                    await store.append(conn, "booking-1", 0, [signed_up(n) for n in range(events)])
                    if name == "a":
                        first_appended.set()
                    await asyncio.sleep(hold)  # keep the transaction open while "b" appends
            except ConcurrencyError:
                return "lost"
        return "won"

    outcomes = await asyncio.gather(writer("a", 2, 0.3), writer("b", 3, 0))
    assert sorted(outcomes) == ["lost", "won"]
    async with pool.acquire() as conn:
        assert await counts(conn, lane.schema, "booking-1") == (2, 2)
        assert [e.version for e in await store.load(conn, "booking-1")] == [1, 2]
        assert await conn.fetchval(f"SELECT array_agg(writer) FROM {lane.schema}.state") == ["a"]


async def test_append_outside_a_transaction_is_refused(pool, lane) -> None:
    store = EventStore(lane.schema, context="gateway")
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="transaction"):
            await store.append(conn, "s", 0, [signed_up(1)])
        assert await counts(conn, lane.schema, "s") == (0, 0)


async def test_events_and_outbox_roll_back_with_the_callers_state_change(pool, lane) -> None:
    store = EventStore(lane.schema, context="gateway")
    async with pool.acquire() as conn:
        await conn.execute(f"CREATE TABLE {lane.schema}.users (id text PRIMARY KEY)")

        class Refused(Exception):
            pass

        with pytest.raises(Refused):
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {lane.schema}.users VALUES ('usr_1')")
                await store.append(conn, "user-1", 0, [signed_up(1)])
                raise Refused
        assert await conn.fetchval(f"SELECT count(*) FROM {lane.schema}.users") == 0
        assert await counts(conn, lane.schema, "user-1") == (0, 0)

        async with conn.transaction():
            await conn.execute(f"INSERT INTO {lane.schema}.users VALUES ('usr_1')")
            await store.append(conn, "user-1", 0, [signed_up(1)])
        assert await conn.fetchval(f"SELECT count(*) FROM {lane.schema}.users") == 1
        assert await counts(conn, lane.schema, "user-1") == (1, 1)
