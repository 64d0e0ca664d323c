"""The slot listing's busy cache forgets exactly what sync's and booking's events say changed."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from calmesh_booking.busy import ProjectionCache, _Entry
from calmesh_booking.store import BookingStore
from calmesh_common.events import Envelope, encode_envelope, new_event_id


def envelope(kind: str, **event: object) -> bytes:
    return encode_envelope(Envelope(id=new_event_id(), stream_id="s", version=1, occurred_at=datetime.now(UTC),
                                    type=kind, event=msgspec.Raw(msgspec.json.encode(event))))


def cache_with(*entries: tuple[str, str, str]) -> ProjectionCache:
    cache = ProjectionCache(BookingStore("booking"))
    for connection_id, calendar_id, user_id in entries:
        cache._entries[(connection_id, calendar_id)] = _Entry(user_id, 0, 10, 1e18, [], [], 0, [])
    return cache


def test_events_forget_the_sources_they_touch() -> None:
    cache = cache_with(("c1", "a", "u1"), ("c1", "b", "u1"), ("c2", "a", "u2"))
    cache.apply_event(envelope("source_events.upserted.v1", connection_id="c1", calendar_id="a", rows=[]))
    assert set(cache._entries) == {("c1", "b"), ("c2", "a")}
    cache.apply_event(envelope("connection_events.purged.v1", connection_id="c1"))
    assert set(cache._entries) == {("c2", "a")}
    cache.apply_event(envelope("sync.completed.v1", connection_id="c2", sync_id="x"))
    assert set(cache._entries) == {("c2", "a")}  # changes no rows
    cache.apply_event(envelope("booking.cancelled.v1", user_id="u2", booking_id="bk_1"))
    assert cache._entries == {}


def test_anything_unreadable_forgets_everything() -> None:
    cache = cache_with(("c1", "a", "u1"))
    cache.apply_event(b"not json")
    assert cache._entries == {}
    cache = cache_with(("c1", "a", "u1"))
    cache.apply_event(envelope("source_events.deleted.v1", calendar_id="a"))  # no connection named
    assert cache._entries == {}


def test_a_booking_or_hold_entering_the_projection_keeps_the_calendar_cached() -> None:
    # The cache leaves reserved rows out (they are read fresh): every booking's reservation event
    # would otherwise make the next booking of the page reload the calendar's busy rows.
    cache = cache_with(("c1", "a", "u1"))
    reserved = {"event_id": "e1", "uid": "bk_1@calmesh", "booking_id": "bk_1"}
    cache.apply_event(envelope("source_events.upserted.v1", connection_id="c1", calendar_id="a", created=[reserved]))
    cache.apply_event(envelope("source_events.upserted.v1", connection_id="c1", calendar_id="a", updated=[reserved]))
    assert set(cache._entries) == {("c1", "a")}
    # A provider row among them (or a row that lost its booking) changes what the cache holds.
    provider = {"event_id": "e2", "uid": "meeting@example.com"}
    cache.apply_event(envelope("source_events.upserted.v1", connection_id="c1", calendar_id="a",
                               created=[reserved], updated=[provider]))
    assert cache._entries == {}
