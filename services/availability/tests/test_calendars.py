"""The calendar cache: one hop to connections per calendar, and forgotten when connections says so."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from calmesh_availability.calendars import CalendarDirectory, ConnectionsUnavailable
from calmesh_availability.domain import CalendarDoc, ConnectionState, Source
from calmesh_common.events import encode_envelope, make_envelope
from calmesh_common.events.connections import (
    CalendarSource,
    CalendarSourceRemoved,
    ConnectionErrored,
    ConnectionRevoked,
    ConnectionSynced,
    UnifiedCalendar,
)
from calmesh_common.events.sync import SyncCompleted, SyncFailed, SyncStarted
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
    assert nc.subjects == ["calmesh.connections.>", "calmesh.sync.sync.>"]
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


# --- freshness: where each source's connection stands ---------------------------------------------


def doc_with_states(user: str, *states: tuple[str, str, str | None]) -> CalendarDoc:
    """A calendar with one source per (source id, status, last_synced_at), each its own connection."""
    return CalendarDoc(
        slug="work", user_id=user, timezone="UTC",
        sources=[Source(id=s, connection_id=f"conn_{s}", calendar_id="c", sort_order=i)
                 for i, (s, _, _) in enumerate(states)],
        connections=[ConnectionState(id=f"conn_{s}", status=st, last_synced_at=at) for s, st, at in states],
    )


def envelope(event: Any, user: str = "usr_1") -> bytes:
    return encode_envelope(make_envelope(event, stream_id=f"x:{event.connection_id}", version=1, user_id=user))


def started(conn: str, run: str) -> bytes:
    return envelope(SyncStarted(sync_id=run, connection_id=conn, user_id="usr_1", reason="schedule", started_at=NOW))


def completed(conn: str, run: str, at: datetime) -> bytes:
    return envelope(SyncCompleted(sync_id=run, connection_id=conn, user_id="usr_1", finished_at=at))


def failed(conn: str, run: str, kind: str = "transient") -> bytes:
    return envelope(SyncFailed(sync_id=run, connection_id=conn, user_id="usr_1", failed_at=NOW,
                               error="the feed answered 500", kind=kind))


def states(d: CalendarDirectory, cal: Any) -> tuple[bool, list[tuple[str, str, str | None]]]:
    fresh = d.freshness(cal)
    return fresh.complete, [(s.id, s.status, s.last_synced_at) for s in fresh.sources]


async def test_a_calendar_whose_connections_are_active_and_synced_is_complete() -> None:
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc_with_states(
        "usr_1", ("src_a", "active", "2026-11-25T08:00:00Z"), ("src_b", "active", "2026-11-25T07:00:00Z"))
    d, _ = await directory(conns)
    cal = await d.get("usr_1", "work")
    assert states(d, cal) == (True, [("src_a", "active", "2026-11-25T08:00:00Z"),
                                     ("src_b", "active", "2026-11-25T07:00:00Z")])


@pytest.mark.parametrize(("status", "synced"), [
    ("active", None), ("pending", None), ("syncing", None), ("error", "2026-11-25T08:00:00Z"),
    ("revoked", "2026-11-25T08:00:00Z"), ("syncing", "2026-11-25T08:00:00Z"),
])
async def test_a_source_not_active_or_never_synced_makes_it_incomplete(status: str, synced: str | None) -> None:
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc_with_states(
        "usr_1", ("src_a", "active", "2026-11-25T08:00:00Z"), ("src_b", status, synced))
    d, _ = await directory(conns)
    complete, got = states(d, await d.get("usr_1", "work"))
    assert not complete and got[1] == ("src_b", status, synced)


async def test_a_source_whose_connection_state_nobody_gave_is_unknown_and_incomplete() -> None:
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc("usr_1", "src_a")
    d, _ = await directory(conns)
    assert states(d, await d.get("usr_1", "work")) == (False, [("src_a", "unknown", None)])


async def test_a_failing_sync_shows_in_the_next_answer_without_asking_connections_again() -> None:
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc_with_states("usr_1", ("src_a", "active", "2026-11-25T08:00:00Z"))
    d, _ = await directory(conns)
    cal = await d.get("usr_1", "work")
    d.apply_event(started("conn_src_a", "sync_2"))
    # A re-sync of an active connection leaves it active: its answers stay complete meanwhile.
    assert states(d, await d.get("usr_1", "work")) == (True, [("src_a", "active", "2026-11-25T08:00:00Z")])
    d.apply_event(failed("conn_src_a", "sync_2"))
    assert states(d, await d.get("usr_1", "work")) == (False, [("src_a", "error", "2026-11-25T08:00:00Z")])
    d.apply_event(started("conn_src_a", "sync_3"))
    # connections' echo of sync_2's failure arrives while sync_3 runs: stale, changes nothing.
    d.apply_event(envelope(ConnectionErrored(connection_id="conn_src_a", user_id="usr_1", error="500",
                                             kind="transient", at=NOW)))
    assert states(d, cal)[1] == [("src_a", "syncing", "2026-11-25T08:00:00Z")]
    d.apply_event(completed("conn_src_a", "sync_3", datetime(2026, 11, 25, 9, 30, 15, 400000, tzinfo=UTC)))
    assert states(d, await d.get("usr_1", "work")) == (True, [("src_a", "active", "2026-11-25T09:30:15Z")])
    d.apply_event(started("conn_src_a", "sync_4"))
    assert states(d, cal) == (True, [("src_a", "active", "2026-11-25T09:30:15Z")])
    d.apply_event(failed("conn_src_a", "sync_4"))
    # ...and the echo of sync_3's success, arriving after sync_4 started (and failed), does not make it active.
    d.apply_event(envelope(ConnectionSynced(connection_id="conn_src_a", user_id="usr_1", sync_id="sync_3",
                                            synced_at=NOW)))
    assert states(d, cal) == (False, [("src_a", "error", "2026-11-25T09:30:15Z")])
    assert conns.calls == 1


async def test_a_revoked_connection_stays_revoked_and_a_revoking_failure_revokes() -> None:
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc_with_states(
        "usr_1", ("src_a", "active", "2026-11-25T08:00:00Z"), ("src_b", "active", "2026-11-25T08:00:00Z"))
    d, _ = await directory(conns)
    cal = await d.get("usr_1", "work")
    d.apply_event(failed("conn_src_a", "sync_2", kind="revoked"))
    d.apply_event(envelope(ConnectionRevoked(connection_id="conn_src_b", user_id="usr_1", provider="google", at=NOW)))
    d.apply_event(completed("conn_src_b", "sync_3", NOW))
    assert [s[1] for s in states(d, cal)[1]] == ["revoked", "revoked"]


async def test_connection_errored_outside_a_run_is_an_error() -> None:
    """connections' own refusal (an OAuth callback that failed) comes only as connection.errored."""
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc_with_states("usr_1", ("src_a", "pending", None))
    d, _ = await directory(conns)
    cal = await d.get("usr_1", "work")
    d.apply_event(envelope(ConnectionErrored(connection_id="conn_src_a", user_id="usr_1", error="denied",
                                             kind="auth", at=NOW)))
    assert states(d, cal) == (False, [("src_a", "error", None)])


async def test_a_status_event_during_a_fetch_keeps_the_older_answer_out_of_the_cache() -> None:
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc_with_states("usr_1", ("src_a", "active", "2026-11-25T08:00:00Z"))
    conns.calendars[("usr_1", "home")] = doc_with_states("usr_1", ("src_a", "active", "2026-11-25T08:00:00Z"))
    d, _ = await directory(conns)
    await d.get("usr_1", "home")
    conns.gate = asyncio.Event()
    pending = asyncio.create_task(d.get("usr_1", "work"))
    await asyncio.sleep(0)
    d.apply_event(failed("conn_src_a", "sync_2"))
    conns.gate.set()
    await pending
    conns.gate = None
    assert states(d, await d.get("usr_1", "work"))[1] == [("src_a", "error", "2026-11-25T08:00:00Z")]
    assert conns.calls == 3  # the answer fetched during the event was not kept


async def test_without_a_live_subscription_the_states_come_from_connections() -> None:
    conns = Connections()
    conns.calendars[("usr_1", "work")] = doc_with_states("usr_1", ("src_a", "active", "2026-11-25T08:00:00Z"))
    d, nc = await directory(conns)
    await d.get("usr_1", "work")
    d.apply_event(failed("conn_src_a", "sync_2"))
    nc.is_connected = False
    conns.calendars[("usr_1", "work")] = doc_with_states("usr_1", ("src_a", "syncing", "2026-11-25T08:00:00Z"))
    assert states(d, await d.get("usr_1", "work"))[1] == [("src_a", "syncing", "2026-11-25T08:00:00Z")]
