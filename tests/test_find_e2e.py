"""Find a time and honest freshness end to end: the whole platform as processes (the session `stack`),
Radicale calendars and iCal feeds, every request through the gateway with API keys.

What a user relies on: find-a-time gives the hand-computed slots over a DST change (wall-clock hours
in the zone asked for), required calendars free in every slot, ranked by free optional calendars;
a calendar that could not be checked is never reported free — not in availability, not in find-a-
time — and says why (`complete`, `sources`); a feed that starts failing shows in the next answer.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.feeds import FeedServer
from calmesh_testing.radicale import Radicale, radicale
from calmesh_testing.servers import serve
from calmesh_testing.wait import wait_for

pytestmark = pytest.mark.timeout(300)

ZONE = "Europe/Amsterdam"


def next_spring_change(after: date) -> date:
    """The last Sunday of March (Amsterdam: 02:00 CET becomes 03:00 CEST, at 01:00Z) after `after`."""
    year = after.year
    while True:
        d = date(year, 3, 31)
        d -= timedelta(days=(d.weekday() - 6) % 7)
        if d > after:
            return d
        year += 1


#: A DST change inside the synced window (up to 400 days ahead), at least ten days ahead.
SUNDAY = next_spring_change(datetime.now(UTC).date() + timedelta(days=10))
SATURDAY, MONDAY = SUNDAY - timedelta(days=1), SUNDAY + timedelta(days=1)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def z(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def vcalendar(*events: tuple[str, datetime, datetime]) -> str:
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//calmesh find e2e//EN"]
    for uid, start, end in events:
        lines += ["BEGIN:VEVENT", f"UID:{uid}", "DTSTAMP:20261101T000000Z", f"DTSTART:{start:%Y%m%dT%H%M%SZ}",
                  f"DTEND:{end:%Y%m%dT%H%M%SZ}", f"SUMMARY:{uid}", "END:VEVENT"]
    return "\r\n".join([*lines, "END:VCALENDAR", ""])

@dataclass
class World:
    gw: httpx.AsyncClient
    keys: dict[str, str]
    feeds: FeedServer
    connections: dict[str, str]  # calendar slug -> its connection id

    def auth(self, scope: str = "read") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}

    async def connection(self, slug: str) -> dict[str, Any]:
        r = await self.gw.get(f"/api/v1/connections/{self.connections[slug]}", headers=self.auth("full"))
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def find(self, **body: Any) -> httpx.Response:
        return await self.gw.post("/api/v1/availability/find", headers=self.auth(), json=body)


@pytest.fixture(scope="module")
def dav_server() -> Iterator[Radicale]:
    with radicale() as server:
        yield server


@pytest.fixture(scope="module")
async def world(stack: Stack, dav_server: Radicale) -> AsyncIterator[World]:
    """A user (Europe/Amsterdam) with calendars alice, bob, carol (each a Radicale calendar of one
    CalDAV connection), dana (a feed that was never there) and flaky (a working feed, for now)."""
    busy = {
        "alice": [(at(SUNDAY, 0, 30), at(SUNDAY, 1)), (at(SATURDAY, 8), at(SATURDAY, 8, 30))],
        "bob": [(at(MONDAY, 7), at(MONDAY, 7, 30))],
        "carol": [(at(SUNDAY, 0), at(SUNDAY, 0, 30)), (at(MONDAY, 8), at(MONDAY, 9))],
    }
    feeds = FeedServer()
    feeds.put("/flaky.ics", vcalendar(("flaky-1@e2e", at(MONDAY, 12), at(MONDAY, 13))))
    async with serve(feeds) as feed_url, httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        keys = await account(stack, ("full", "read"))
        full = {"Authorization": f"Bearer {keys['full']}"}
        for who, spans in busy.items():
            dav_server.make_calendar(who, who)
            for i, (s, e) in enumerate(spans):
                dav_server.put(who, f"{who}-{i}.ics", vcalendar((f"{who}-{i}@e2e", s, e)))
        # The free plan's three connections: the CalDAV account (its three calendars) and two feeds.
        r = await gw.post("/api/v1/connections/caldav", headers=full, json={
            "url": dav_server.url, "username": dav_server.username, "password": dav_server.password})
        assert r.status_code == 201, r.text
        connections = {who: r.json()["id"] for who in busy}
        for who in ("dana", "flaky"):
            r = await gw.post("/api/v1/connections/ical", headers=full, json={"url": f"{feed_url}/{who}.ics"})
            assert r.status_code == 201, r.text
            connections[who] = r.json()["id"]
        w = World(gw, keys, feeds, connections)

        async def settled(who: str) -> bool:
            got = await w.connection(who)
            if who == "dana":
                return got["status"] == "error"
            assert got["status"] != "error", got
            return got["status"] == "active" and len(got["calendars"]) >= (3 if who in busy else 1)

        for who in ("alice", "dana", "flaky"):
            await wait_for(lambda who=who: settled(who), what=f"the first sync of {who}", interval=0.2)
        for who, conn_id in connections.items():
            source: dict[str, str] = {"connection_id": conn_id}
            if who in busy:  # the Radicale calendar of that name
                cals = (await w.connection(who))["calendars"]
                source["calendar_id"] = next(c["id"] for c in cals if c["name"] == who)
            r = await gw.post("/api/v1/calendars", headers=full, json={
                "slug": who, "name": who.title(), "timezone": ZONE, "sources": [source]})
            assert r.status_code == 201, r.text
        yield w


async def account(stack: Stack, scopes: tuple[str, ...]) -> dict[str, str]:
    """A new user in Europe/Amsterdam and an API key of each scope."""
    suffix = uuid.uuid4().hex[:10]
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as session:
        r = await session.post("/api/v1/auth/signup", json={
            "email": f"find-{suffix}@example.com", "password": "a long enough passphrase",
            "handle": f"find-{suffix}", "timezone": ZONE})
        assert r.status_code == 201, r.text
        csrf = {"X-CSRF-Token": session.cookies["calmesh_csrf"]}
        keys = {}
        for scope in scopes:
            k = await session.post("/api/v1/api-keys", json={"name": scope, "scope": scope}, headers=csrf)
            assert k.status_code == 201, k.text
            keys[scope] = k.json()["key"]
    return keys


def slot(start: datetime, free: list[str], busy: list[str], unknown: list[str]) -> dict[str, Any]:
    return {"start": z(start), "end": z(start + timedelta(minutes=30)), "free": free, "busy": busy, "unknown": unknown}


HOURS = {"sat": [["09:00", "10:00"]], "sun": [["01:00", "04:00"]], "mon": [["09:00", "11:00"]]}
RANGE = {"start": z(at(SATURDAY, 0)), "end": z(at(SUNDAY + timedelta(days=2), 0))}


async def test_find_a_time_over_a_dst_change_is_the_hand_computed_answer(world: World) -> None:
    """Amsterdam hours: Saturday 09:00–10:00 CET is 08:00–09:00Z; Sunday 01:00 CET to 04:00 CEST
    is 00:00–02:00Z (the 02:00 hour never happens); Monday 09:00–11:00 CEST is 07:00–09:00Z.
    alice and bob are required, carol optional, dana (a feed never synced) optional and unknown."""
    r = await world.find(calendars=[{"slug": "alice"}, {"slug": "bob", "required": True},
                                    {"slug": "carol", "required": False}, {"slug": "dana", "required": False}],
                         duration_minutes=30, slot_interval_minutes=30, tz=ZONE, hours=HOURS, **RANGE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["timezone"], body["complete"]) == (ZONE, False)
    both, with_carol = ["alice", "bob"], ["alice", "bob", "carol"]
    assert body["slots"] == [
        # carol free too, earliest first
        slot(at(SATURDAY, 8, 30), with_carol, [], ["dana"]),
        slot(at(SUNDAY, 1), with_carol, [], ["dana"]),
        slot(at(SUNDAY, 1, 30), with_carol, [], ["dana"]),
        slot(at(MONDAY, 7, 30), with_carol, [], ["dana"]),
        # then the ones where only the required are free
        slot(at(SUNDAY, 0), both, ["carol"], ["dana"]),
        slot(at(MONDAY, 8), both, ["carol"], ["dana"]),
        slot(at(MONDAY, 8, 30), both, ["carol"], ["dana"]),
    ]
    # Saturday 08:00Z (alice), Sunday 00:30Z (alice) and Monday 07:00Z (bob) are never offered.

    limited = await world.find(calendars=[{"slug": "alice"}, {"slug": "bob"}, {"slug": "carol"}],
                               duration_minutes=30, slot_interval_minutes=30, tz=ZONE, hours=HOURS, limit=3, **RANGE)
    assert limited.status_code == 200, limited.text
    assert limited.json()["complete"] is True
    assert [s["start"] for s in limited.json()["slots"]] == [z(at(SATURDAY, 8, 30)), z(at(SUNDAY, 1)),
                                                             z(at(SUNDAY, 1, 30))]


async def test_a_required_calendar_that_could_not_be_checked_leaves_no_time(world: World) -> None:
    r = await world.find(calendars=[{"slug": "alice"}, {"slug": "dana"}], duration_minutes=30, tz=ZONE,
                         hours=HOURS, **RANGE)
    assert r.status_code == 200, r.text
    assert r.json() == {"timezone": ZONE, "slots": [], "complete": False}


async def test_without_hours_any_time_of_day_counts_in_the_users_zone(world: World) -> None:
    r = await world.find(calendars=[{"slug": "alice"}], duration_minutes=60, start=z(at(SUNDAY, 0)),
                         end=z(at(SUNDAY, 2, 30)), slot_interval_minutes=30)
    assert r.status_code == 200, r.text
    assert r.json()["timezone"] == ZONE  # the user's zone
    assert [s["start"] for s in r.json()["slots"]] == [z(at(SUNDAY, 1)), z(at(SUNDAY, 1, 30))]


@pytest.mark.parametrize(("changes", "status", "code"), [
    ({"calendars": [{"slug": "nobody"}]}, 404, "not_found"),
    ({"calendars": [{"slug": f"c{i}"} for i in range(21)]}, 422, "too_many_calendars"),
    ({"calendars": [{"slug": "alice", "required": False}]}, 422, "no_required_calendar"),
    ({"end": z(at(SATURDAY, 0) + timedelta(days=62, seconds=1))}, 422, "range_too_long"),
    ({"limit": 0}, 422, "validation_error"),
    ({"limit": 101}, 422, "validation_error"),
    ({"end": z(at(SATURDAY, 0) - timedelta(hours=1))}, 422, "invalid_range"),
    ({"hours": {"mon": [["17:00", "09:00"]]}}, 422, "validation_error"),
    ({"duration_minutes": "thirty"}, 400, "validation_error"),
    ({"colour": "blue"}, 400, "validation_error"),
    ({"tz": "Atlantis/Capital"}, 400, "invalid_timezone"),
])
async def test_bad_requests_are_problem_documents(world: World, changes: dict[str, Any], status: int,
                                                  code: str) -> None:
    body = {"calendars": [{"slug": "alice"}], "duration_minutes": 30, **RANGE, **changes}
    r = await world.gw.post("/api/v1/availability/find", headers=world.auth(), json=body)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_62_days_are_allowed(world: World) -> None:
    r = await world.find(calendars=[{"slug": "alice"}], duration_minutes=30, start=z(at(SATURDAY, 0)),
                         end=z(at(SATURDAY, 0) + timedelta(days=62)), limit=1)
    assert r.status_code == 200, r.text


# --- freshness ----------------------------------------------------------------------------------


async def availability(world: World, slug: str) -> dict[str, Any]:
    r = await world.gw.get(f"/api/v1/calendars/{slug}/availability", headers=world.auth(),
                           params={"date": MONDAY.isoformat()})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_a_healthy_calendar_is_complete_and_says_when_it_synced(world: World) -> None:
    body = await availability(world, "bob")
    conn = await world.connection("bob")
    assert body["complete"] is True
    assert [(s["connection_id"], s["status"], s["last_synced_at"]) for s in body["sources"]] == [
        (conn["id"], "active", conn["last_synced_at"])]
    assert body["busy"] == [{"start": z(at(MONDAY, 7)), "end": z(at(MONDAY, 7, 30)),
                             "source_ids": [body["sources"][0]["id"]]}]
    assert body["free"][0]["end"] == z(at(MONDAY, 7)) and body["free"][1]["start"] == z(at(MONDAY, 7, 30))


async def test_a_never_synced_source_is_incomplete_with_no_free_time(world: World) -> None:
    body = await availability(world, "dana")
    assert (body["complete"], body["free"], body["busy"]) == (False, [], [])
    assert [(s["status"], s["last_synced_at"]) for s in body["sources"]] == [("error", None)]
    events = await world.gw.get("/api/v1/calendars/dana/events", headers=world.auth(),
                                params={"start": z(at(SATURDAY, 0)), "end": z(at(MONDAY, 23))})
    assert (events.json()["complete"], events.json()["sources"][0]["status"]) == (False, "error")


async def test_a_feed_that_starts_failing_makes_the_next_answer_incomplete(world: World) -> None:
    before = await availability(world, "flaky")
    assert before["complete"] is True and before["free"]
    world.feeds.put("/flaky.ics", "oops", status=500)
    r = await world.gw.post(f"/api/v1/connections/{world.connections['flaky']}/sync", headers=world.auth("full"))
    assert r.status_code == 202, r.text

    async def errored() -> bool:
        return (await world.connection("flaky"))["status"] == "error"

    await wait_for(errored, what="the flaky feed's connection to show error", interval=0.2)
    body = await availability(world, "flaky")  # the very next answer
    assert body["complete"] is False and body["free"] == []
    assert body["busy"] == before["busy"]  # what is known stays
    assert body["sources"][0]["status"] in ("error", "syncing")  # (a retry may have started)
    assert body["sources"][0]["last_synced_at"] == before["sources"][0]["last_synced_at"]
    for path in ("events", "conflicts"):
        r = await world.gw.get(f"/api/v1/calendars/flaky/{path}", headers=world.auth(),
                               params={"start": z(at(SATURDAY, 0)), "end": z(at(MONDAY, 23))})
        assert r.status_code == 200 and r.json()["complete"] is False, r.text
    found = await world.find(calendars=[{"slug": "bob"}, {"slug": "flaky", "required": False}],
                             duration_minutes=60, start=z(at(MONDAY, 12)), end=z(at(MONDAY, 15)),
                             slot_interval_minutes=60)
    assert found.json()["complete"] is False
    # Known busy time is busy; elsewhere flaky is unknown, never free.
    assert [(s["start"], s["free"], s["busy"], s["unknown"]) for s in found.json()["slots"]] == [
        (z(at(MONDAY, 12)), ["bob"], ["flaky"], []),
        (z(at(MONDAY, 13)), ["bob"], [], ["flaky"]),
        (z(at(MONDAY, 14)), ["bob"], [], ["flaky"])]


async def test_an_unreachable_feed_makes_availability_incomplete(stack: Stack, world: World) -> None:
    gone = FeedServer()
    gone.put("/soon-gone.ics", vcalendar(("gone-1@e2e", at(MONDAY, 10), at(MONDAY, 11))))
    keys = await account(stack, ("full", "read"))  # a user of its own: the first one has used its plan
    world = World(world.gw, keys, gone, {})
    full = world.auth("full")
    async with serve(gone) as url:
        r = await world.gw.post("/api/v1/connections/ical", headers=full, json={"url": f"{url}/soon-gone.ics"})
        assert r.status_code == 201, r.text
        conn_id = r.json()["id"]
        world.connections["gone"] = conn_id

        async def active() -> bool:
            return (await world.connection("gone"))["status"] == "active"

        await wait_for(active, what="the feed's first sync", interval=0.2)
        r = await world.gw.post("/api/v1/calendars", headers=full, json={
            "slug": "gone", "name": "Gone", "timezone": ZONE, "sources": [{"connection_id": conn_id}]})
        assert r.status_code == 201, r.text
        assert (await availability(world, "gone"))["complete"] is True
    # The feed server is down now: nothing listens on its port.
    r = await world.gw.post(f"/api/v1/connections/{conn_id}/sync", headers=full)
    assert r.status_code == 202, r.text

    async def errored() -> bool:
        return (await world.connection("gone"))["status"] == "error"

    await wait_for(errored, what="the unreachable feed's connection to show error", interval=0.2)
    body = await availability(world, "gone")
    assert (body["complete"], body["free"]) == (False, [])
    assert body["busy"] == [{"start": z(at(MONDAY, 10)), "end": z(at(MONDAY, 11)),
                             "source_ids": [body["sources"][0]["id"]]}]
