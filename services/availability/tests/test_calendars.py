"""The calendar cache: one hop to connections per calendar, and forgotten when connections says so."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from calmesh_availability.calendars import CalendarDirectory, ConnectionsUnavailable
from calmesh_availability.domain import CalendarDoc, Source
from calmesh_common.events import encode_envelope, make_envelope
from calmesh_common.events.connections import CalendarSourceRemoved, CalendarSource, ConnectionSynced, UnifiedCalendar
from calmesh_common.problems import Problem

NOW = datetime(2026, 11, 25, tzinfo=UTC)


class FakeNats:
    """What the directory looks at on a NATS client: connected or not, and reconnects."""

    def __init__(self) -> None:
        self.is_connected = True
        self.stats = {"reconnects": 0}
        self.subjects: list[str] = []

    async def subscribe(self, subject: str, cb: Any) -> object:
        self.subjects.append(subject)
        return object()


class Connections:
    """A fake of connections' internal calendar lookup that counts its calls."""

    def __init__(self) -> None:
        self.calendars: dict[tuple[str, str], CalendarDoc] = {}
        self.calls = 0
        self.down = False
        self.gate: asyncio.Event | None = None

    async def fetch(self, user_id: str, slug: str) -> CalendarDoc | None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ConnectionsUnavailable("down")
        return self.calendars.get((user_id, slug))


def doc(user: str, *source_ids: str) -> CalendarDoc:
    return CalendarDoc(slug="work", user_id=user, timezone="Europe/Berlin", sources=[
        Source(id=s, connection_id=f"conn_{s}", calendar_id="c", sort_order=i) for i, s in enumerate(source_ids)
    ])


def source_removed(user: str, removed: str) -> bytes:
    cal = UnifiedCalendar(id="cal_1", user_id=user, slug="work", name="Work", timezone="Europe/Berlin",
                          sources=[], created_at=NOW, updated_at=NOW)
    src = CalendarSource(id=removed, connection_id=f"conn_{removed}", calendar_id="c", name="", sort_order=0)
    event = CalendarSourceRemoved(calendar=cal, source=src)
    return encode_envelope(make_envelope(event, stream_id="cal_1", version=2, user_id=None))


async def directory(connections: Connections, **kw: Any) -> tuple[CalendarDirectory, FakeNats]:
    d = CalendarDirectory(connections.fetch, **kw)
    nc = FakeNats()
    await d.subscribe(nc)  # type: ignore[arg-type]
    return d, nc


async def test_a_calendar_is_fetched_once_and_then_served_from_memory() -> None:
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc("usr_1", "src_a", "src_b")
    d, nc = await directory(conns)
    assert nc.subjects == ["calmesh.connections.>"]
    for _ in range(5):
        cal = await d.get("usr_1", "work")
    assert [s.id for s in cal.sources] == ["src_a", "src_b"]
    assert conns.calls == 1


async def test_unknown_and_other_users_slugs_are_404() -> None:
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc("usr_1", "src_a")
    # A confused answer naming another owner is not served either.
    conns.calendars[("usr_2", "work")] = doc("usr_1", "src_a")
    d, _ = await directory(conns)
    for user, slug in (("usr_1", "nope"), ("usr_2", "work")):
        with pytest.raises(Problem) as caught:
            await d.get(user, slug)
        assert caught.value.status == 404


async def test_an_event_about_a_users_calendar_drops_it_at_once() -> None:
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc("usr_1", "src_a", "src_b")
    conns.calendars[("usr_2", "work")] = doc("usr_2", "src_x")
    d, _ = await directory(conns)
    await d.get("usr_1", "work")
    await d.get("usr_2", "work")
    conns.calendars[("usr_1", "work")] = doc("usr_1", "src_a")
    d.apply_event(source_removed("usr_1", "src_b"))
    cal = await d.get("usr_1", "work")
    assert [s.id for s in cal.sources] == ["src_a"]
    await d.get("usr_2", "work")
    assert conns.calls == 3  # usr_2's entry was kept


async def test_sync_status_events_do_not_empty_the_cache() -> None:
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc("usr_1", "src_a")
    d, _ = await directory(conns)
    await d.get("usr_1", "work")
    synced = ConnectionSynced(connection_id="conn_1", user_id="usr_1", sync_id="s1", synced_at=NOW)
    d.apply_event(encode_envelope(make_envelope(synced, stream_id="conn_1", version=3, user_id="usr_1")))
    await d.get("usr_1", "work")
    assert conns.calls == 1


async def test_what_a_fetch_brought_back_after_an_invalidation_is_not_kept() -> None:
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc("usr_1", "src_a", "src_b")
    d, _ = await directory(conns)
    conns.gate = asyncio.Event()
    pending = asyncio.create_task(d.get("usr_1", "work"))
    await asyncio.sleep(0)
    d.apply_event(source_removed("usr_1", "src_b"))  # arrives while the old answer is on its way
    conns.calendars[("usr_1", "work")] = doc("usr_1", "src_a")
    conns.gate.set()
    await pending
    conns.gate = None
    assert [s.id for s in (await d.get("usr_1", "work")).sources] == ["src_a"]


async def test_without_a_live_subscription_the_cache_is_not_trusted() -> None:
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc("usr_1", "src_a")
    d, nc = await directory(conns)
    await d.get("usr_1", "work")
    nc.is_connected = False
    await d.get("usr_1", "work")
    nc.is_connected = True
    nc.stats["reconnects"] = 1  # back, but events may have been missed meanwhile
    await d.get("usr_1", "work")
    await d.get("usr_1", "work")
    assert conns.calls == 3


async def test_entries_expire_and_connections_being_away_is_a_503_unless_we_know_the_calendar() -> None:
    clock = [0.0]
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc("usr_1", "src_a")
    d, _ = await directory(conns, ttl_seconds=10, stale_seconds=100, clock=lambda: clock[0])
    await d.get("usr_1", "work")
    clock[0] = 11
    conns.down = True
    assert [s.id for s in (await d.get("usr_1", "work")).sources] == ["src_a"]
    assert conns.calls == 2
    with pytest.raises(Problem) as caught:
        await d.get("usr_1", "other")
    assert caught.value.status == 503


async def test_concurrent_misses_share_one_fetch() -> None:
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc("usr_1", "src_a")
    conns.gate = asyncio.Event()
    d, _ = await directory(conns)
    tasks = [asyncio.create_task(d.get("usr_1", "work")) for _ in range(10)]
    await asyncio.sleep(0)
    conns.gate.set()
    results = await asyncio.gather(*tasks)
    assert conns.calls == 1
    assert all(r is results[0] for r in results)
