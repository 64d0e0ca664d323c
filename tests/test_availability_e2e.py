"""Availability end to end: the whole platform as processes (the session `stack`), a real CalDAV
server (Radicale) and an iCal feed behind one unified calendar, every request through the gateway
with API keys.

What a user relies on: the merged events, free/busy (with explain) and conflicts are what the two
sources hold; an event created through the API lands on the CalDAV server and in the next query,
and a delete removes it from both; `read` keys read, `write` keys write, `book` keys may not create
events; bad input is a problem document, never a 500; another user's calendar does not exist; a
source removed from the calendar leaves the reads.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.feeds import FeedServer
from calmesh_testing.radicale import Radicale, radicale
from calmesh_testing.servers import serve
from calmesh_testing.wait import wait_for

pytestmark = pytest.mark.timeout(240)

#: The day of the test, two weeks ahead (inside the synced window), in winter or summer alike: the
#: events are given in UTC and the expectations are computed from the calendar's zone.
DAY = (datetime.now(UTC) + timedelta(days=14)).date()
ZONE = "Europe/Berlin"


def at(hour: int, minute: int = 0, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def z(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def vevent(uid: str, summary: str, start: datetime | date, end: datetime | date, *extra: str) -> str:
    def when(name: str, v: datetime | date) -> str:
        if isinstance(v, datetime):
            return f"{name}:{v:%Y%m%dT%H%M%SZ}"
        return f"{name};VALUE=DATE:{v:%Y%m%d}"

    return "\r\n".join(["BEGIN:VEVENT", f"UID:{uid}", "DTSTAMP:20261101T000000Z", when("DTSTART", start),
                        when("DTEND", end), f"SUMMARY:{summary}", *extra, "END:VEVENT"])


def vcalendar(*events: str) -> str:
    return "\r\n".join(["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//calmesh availability e2e//EN", *events,
                        "END:VCALENDAR", ""])


@dataclass
class World:
    gw: httpx.AsyncClient
    keys: dict[str, str]
    dav: Radicale
    dav_calendar: str
    dav_source: str
    feed_source: str
    feed_server: FeedServer
    other_key: str

    def auth(self, scope: str = "full") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}


@pytest.fixture(scope="module")
def dav_server() -> Iterator[Radicale]:
    with radicale() as server:
        yield server

async def account(gw: httpx.AsyncClient, scopes: tuple[str, ...]) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    async with httpx.AsyncClient(base_url=str(gw.base_url), timeout=30) as session:
        r = await session.post("/api/v1/auth/signup", json={
            "email": f"avail-{suffix}@example.com", "password": "a long enough passphrase",
            "handle": f"avail-{suffix}", "timezone": ZONE})
        assert r.status_code == 201, r.text
        csrf = {"X-CSRF-Token": session.cookies["calmesh_csrf"]}
        keys = {}
        for scope in scopes:
            k = await session.post("/api/v1/api-keys", json={"name": scope, "scope": scope}, headers=csrf)
            assert k.status_code == 201, k.text
            keys[scope] = k.json()["key"]
    return keys


@pytest.fixture(scope="module")
async def world(stack: Stack, dav_server: Radicale) -> AsyncIterator[World]:
    """A user whose calendar `merged` (Europe/Berlin) has a Radicale calendar, then an iCal feed."""
    cal = f"work-{uuid.uuid4().hex[:6]}"
    dav_server.make_calendar(cal, "Work")
    dav_server.put(cal, "standup.ics", vcalendar(vevent("standup@e2e", "Standup", at(8), at(8, 30))))
    dav_server.put(cal, "review.ics", vcalendar(vevent("review@e2e", "Design review", at(9), at(10))))
    dav_server.put(cal, "board.ics", vcalendar(vevent("board@e2e", "Board", at(13), at(14))))
    dav_server.put(cal, "focus.ics", vcalendar(vevent("focus@e2e", "Focus", at(15), at(16), "TRANSP:TRANSPARENT")))
    feed = FeedServer()
    feed.put("/team.ics", vcalendar(
        vevent("dentist@e2e", "Dentist", at(9, 30), at(10, 30)),
        vevent("gym@e2e", "Gym", at(10, 30), at(11)),
        vevent("board@e2e", "Board", at(13), at(14)),  # the same meeting, seen through the feed too
        vevent("holiday@e2e", "Holiday", DAY + timedelta(days=1), DAY + timedelta(days=2)),
        vevent("off@e2e", "Called off", at(16), at(17), "STATUS:CANCELLED"),
    ))
    async with serve(feed) as feed_url, httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        keys = await account(gw, ("full", "read", "write", "book"))
        other = await account(gw, ("full",))
        auth = {"Authorization": f"Bearer {keys['full']}"}
        r = await gw.post("/api/v1/connections/caldav", headers=auth, json={
            "url": dav_server.url + f"/{dav_server.username}/{cal}/", "username": dav_server.username,
            "password": dav_server.password})
        assert r.status_code == 201, r.text
        dav = r.json()
        r = await gw.post("/api/v1/connections/ical", headers=auth, json={"url": feed_url + "/team.ics"})
        assert r.status_code == 201, r.text
        ical = r.json()

        async def active(connection_id: str) -> bool:
            got = (await gw.get(f"/api/v1/connections/{connection_id}", headers=auth)).json()
            assert got["status"] != "error", got
            return got["status"] == "active" and got["last_synced_at"] is not None and bool(got["calendars"])

        for c in (dav, ical):
            await wait_for(lambda c=c: active(c["id"]), what=f"the first sync of {c['provider']}", interval=0.2)
        dav_cal = [c for c in (await gw.get(f"/api/v1/connections/{dav['id']}", headers=auth)).json()["calendars"]]
        r = await gw.post("/api/v1/calendars", headers=auth, json={
            "slug": "merged", "name": "Merged", "timezone": ZONE,
            "sources": [{"connection_id": dav["id"], "calendar_id": dav_cal[0]["id"]}, {"connection_id": ical["id"]}]})
        assert r.status_code == 201, r.text
        sources = r.json()["sources"]
        assert len(sources) == 2, sources
        yield World(gw, keys, dav_server, cal, sources[0]["id"], sources[1]["id"], feed, other["full"])


def day_window() -> tuple[str, str]:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(ZONE)
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=tz).astimezone(UTC)
    nxt = DAY + timedelta(days=1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).astimezone(UTC)
    return z(start), z(end)


async def test_merged_events_come_from_both_sources_with_provenance(world: World) -> None:
    r = await world.gw.get("/api/v1/calendars/merged/events", headers=world.auth("read"),
                           params={"start": z(at(0)), "end": z(at(0, day=DAY + timedelta(days=1)))})
    assert r.status_code == 200, r.text
    body = r.json()
    got = [(e["title"], e["source_id"], e["start"], e["end"]) for e in body["data"]]
    dav, feed = world.dav_source, world.feed_source
    expected_timed = [
        ("Standup", dav, z(at(8)), z(at(8, 30))),
        ("Design review", dav, z(at(9)), z(at(10))),
        ("Dentist", feed, z(at(9, 30)), z(at(10, 30))),
        ("Gym", feed, z(at(10, 30)), z(at(11))),
        ("Board", dav, z(at(13)), z(at(14))),
        ("Board", feed, z(at(13)), z(at(14))),
        ("Focus", dav, z(at(15)), z(at(16))),
    ]
    timed = [g for g in got if g[0] != "Holiday"]
    assert sorted(timed[4:6]) == sorted(expected_timed[4:6])
    assert timed[:4] + timed[6:] == expected_timed[:4] + expected_timed[6:]
    focus = next(e for e in body["data"] if e["title"] == "Focus")
    assert focus["transparency"] == "free" and focus["status"] == "confirmed" and focus["all_day"] is False
    assert set(focus) == {"id", "source_id", "connection_id", "title", "description", "location", "start", "end",
                          "all_day", "status", "transparency", "recurring_event_id", "booking_id", "updated_at"}
    assert focus["id"].startswith("evt_") and focus["connection_id"].startswith("conn_")
    assert "Called off" not in [g[0] for g in got]
    cancelled = await world.gw.get("/api/v1/calendars/merged/events", headers=world.auth("read"), params={
        "start": z(at(0)), "end": z(at(23)), "include_cancelled": "true"})
    assert "Called off" in [e["title"] for e in cancelled.json()["data"]]


async def test_availability_of_the_day_merges_both_sources_and_explains_itself(world: World) -> None:
    r = await world.gw.get("/api/v1/calendars/merged/availability", headers=world.auth("read"),
                           params={"date": DAY.isoformat(), "explain": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    start, end = day_window()
    assert (body["slug"], body["timezone"], body["start"], body["end"]) == ("merged", ZONE, start, end)
    dav, feed = world.dav_source, world.feed_source
    # Focus is transparent, "Called off" cancelled; Gym touches the Dentist; Board is one meeting
    # in both sources; the all-day holiday is tomorrow in Berlin.
    assert [(b["start"], b["end"], b["source_ids"]) for b in body["busy"]] == [
        (z(at(8)), z(at(8, 30)), [dav]),
        (z(at(9)), z(at(11)), [dav, feed]),
        (z(at(13)), z(at(14)), [dav, feed]),
    ]
    assert [[e["title"] for e in b["events"]] for b in body["busy"]] == [
        ["Standup"], ["Design review", "Dentist", "Gym"], ["Board"]]
    dentist = body["busy"][1]["events"][1]
    assert (dentist["start"], dentist["end"], dentist["source_id"]) == (z(at(9, 30)), z(at(10, 30)), feed)
    assert body["free"] == [
        {"start": start, "end": z(at(8))},
        {"start": z(at(8, 30)), "end": z(at(9))},
        {"start": z(at(11)), "end": z(at(13))},
        {"start": z(at(14)), "end": end},
    ]
    long_only = await world.gw.get("/api/v1/calendars/merged/availability", headers=world.auth("read"),
                                   params={"date": DAY.isoformat(), "min_duration": "60"})
    assert [f["start"] for f in long_only.json()["free"]] == [start, z(at(11)), z(at(14))]
    tomorrow = await world.gw.get("/api/v1/calendars/merged/availability", headers=world.auth("read"),
                                  params={"date": (DAY + timedelta(days=1)).isoformat()})
    assert tomorrow.json()["free"] == []  # the holiday blocks the whole local day


async def test_conflicts_are_the_overlapping_meetings_of_different_sources(world: World) -> None:
    r = await world.gw.get("/api/v1/calendars/merged/conflicts", headers=world.auth("read"),
                           params={"start": z(at(0)), "end": z(at(23))})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["next_cursor"] is None
    assert [([e["title"] for e in c["events"]], c["overlap_start"], c["overlap_end"]) for c in body["data"]] == [
        (["Design review", "Dentist"], z(at(9, 30)), z(at(10)))]
    assert [e["source_id"] for e in body["data"][0]["events"]] == [world.dav_source, world.feed_source]


async def test_an_event_created_through_the_api_is_on_the_caldav_server_and_in_the_next_query(world: World) -> None:
    title = f"Call {uuid.uuid4().hex[:6]}"
    r = await world.gw.post("/api/v1/calendars/merged/events", headers=world.auth("write"), json={
        "title": title, "start": z(at(17)), "end": z(at(17, 30)), "location": "Phone"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["source_id"], created["start"], created["end"], created["title"]) == (
        world.dav_source, z(at(17)), z(at(17, 30)), title)  # the feed is read-only: CalDAV is the target
    assert any(title in text for text in world.dav.objects(world.dav_calendar).values())
    listed = await world.gw.get("/api/v1/calendars/merged/events", headers=world.auth("read"),
                                params={"start": z(at(16, 30)), "end": z(at(18))})
    assert [e["id"] for e in listed.json()["data"]] == [created["id"]]
    busy = await world.gw.get("/api/v1/calendars/merged/availability", headers=world.auth("read"),
                              params={"date": DAY.isoformat()})
    assert {"start": z(at(17)), "end": z(at(17, 30)), "source_ids": [world.dav_source]} in busy.json()["busy"]

    gone = await world.gw.delete("/api/v1/calendars/merged/events", headers=world.auth("write"),
                                 params={"event_id": created["id"]})
    assert gone.status_code == 204, gone.text
    assert not any(title in text for text in world.dav.objects(world.dav_calendar).values())
    listed = await world.gw.get("/api/v1/calendars/merged/events", headers=world.auth("read"),
                                params={"start": z(at(16, 30)), "end": z(at(18))})
    assert listed.json()["data"] == []
    again = await world.gw.delete("/api/v1/calendars/merged/events", headers=world.auth("write"),
                                  params={"event_id": created["id"]})
    assert again.status_code == 404


async def test_scopes_read_reads_write_writes_book_may_not_create_events(world: World) -> None:
    body = {"title": "Nope", "start": z(at(18)), "end": z(at(19))}
    for scope in ("read", "book"):
        r = await world.gw.post("/api/v1/calendars/merged/events", headers=world.auth(scope), json=body)
        assert (r.status_code, r.json()["code"]) == (403, "insufficient_scope"), r.text
        r = await world.gw.delete("/api/v1/calendars/merged/events", headers=world.auth(scope),
                                  params={"event_id": "evt_whatever"})
        assert r.status_code == 403
    for scope in ("read", "write", "book", "full"):
        r = await world.gw.get("/api/v1/calendars/merged/availability", headers=world.auth(scope),
                               params={"date": DAY.isoformat()})
        assert r.status_code == 200, (scope, r.text)
    feed_only = await world.gw.post("/api/v1/calendars/merged/events", headers=world.auth("write"),
                                    json={**body, "source_id": world.feed_source})
    assert (feed_only.status_code, feed_only.json()["code"]) == (422, "read_only_source")


@pytest.mark.parametrize(("path", "params", "status", "code"), [
    ("availability", {"start": "2026-12-02T00:00:00Z", "end": "2026-12-01T00:00:00Z"}, 422, "invalid_range"),
    ("events", {"start": "2026-12-02T00:00:00Z", "end": "2026-12-01T00:00:00Z"}, 422, "invalid_range"),
    ("conflicts", {"start": "2026-01-01T00:00:00Z", "end": "2027-02-01T00:00:00Z"}, 422, "range_too_long"),
    ("availability", {"date": "2026-12-01", "tz": "Atlantis/Capital"}, 400, "invalid_timezone"),
    ("availability", {"date": "2026-13-45"}, 400, "validation_error"),
])
async def test_bad_input_is_a_problem_document(world: World, path: str, params: dict[str, str], status: int,
                                               code: str) -> None:
    r = await world.gw.get(f"/api/v1/calendars/merged/{path}", headers=world.auth("read"), params=params)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_unknown_and_other_users_calendars_do_not_exist(world: World) -> None:
    for key, slug in ((world.keys["read"], "nope"), (world.other_key, "merged")):
        r = await world.gw.get(f"/api/v1/calendars/{slug}/availability", headers={"Authorization": f"Bearer {key}"},
                               params={"date": DAY.isoformat()})
        assert (r.status_code, r.json()["code"]) == (404, "not_found"), r.text


async def test_a_removed_source_leaves_the_reads(world: World) -> None:
    """Last in this module: it changes the calendar."""
    params = {"date": DAY.isoformat()}
    before = (await world.gw.get("/api/v1/calendars/merged/availability", headers=world.auth("read"), params=params))
    assert world.feed_source in {s for b in before.json()["busy"] for s in b["source_ids"]}
    r = await world.gw.delete(f"/api/v1/calendars/merged/sources/{world.feed_source}", headers=world.auth("full"))
    assert r.status_code == 204, r.text
    removed_at = time.monotonic()

    async def feed_gone() -> bool:
        got = await world.gw.get("/api/v1/calendars/merged/availability", headers=world.auth("read"), params=params)
        return world.feed_source not in {s for b in got.json()["busy"] for s in b["source_ids"]}

    # The connections service publishes the change; every availability replica drops its cached
    # calendar on receipt (milliseconds), so the next reads no longer see the source.
    await wait_for(feed_gone, what="the removed source to leave availability", interval=0.2, timeout=2.0)
    assert time.monotonic() - removed_at < 2.0
    after = await world.gw.get("/api/v1/calendars/merged/events", headers=world.auth("read"),
                               params={"start": z(at(0)), "end": z(at(23))})
    assert {e["source_id"] for e in after.json()["data"]} == {world.dav_source}
