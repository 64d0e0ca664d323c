"""The availability service over real PostgreSQL and NATS, with rows put into the projection
``sync.event_instances`` the way the sync service writes them, and connections' and sync's internal
APIs played by an in-process fake (calendar lookup; event writes that upsert the projection as sync
does before answering). Requests carry the internal headers the gateway adds."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import nats
import pytest
from litestar.testing import AsyncTestClient

from calmesh_availability import domain
from calmesh_availability.app import create_app
from calmesh_availability.calendars import http_fetcher
from calmesh_common.events import encode_envelope, make_envelope
from calmesh_common.events.connections import CalendarSource, CalendarSourceRemoved, UnifiedCalendar
from calmesh_common.ids import event_id_for
from calmesh_common.service import SECRET_HEADER
from calmesh_common.settings import Settings
from calmesh_common.timefmt import rfc3339_epoch

SECRET = "test-internal-secret"
CONNECTIONS = "http://connections.internal"
SYNC = "http://sync.internal"


# --- fakes of connections' and sync's internal APIs ------------------------------------------------


@dataclass
class Internals:
    pool: asyncpg.Pool
    calendars: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    lookups: int = 0
    writes: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.headers.get(SECRET_HEADER) == SECRET
        path = request.url.path
        if request.url.host == "connections.internal" and path.startswith("/internal/calendars/"):
            self.lookups += 1
            slug = path.rsplit("/", 1)[1]
            doc = self.calendars.get((request.url.params["user_id"], slug))
            return httpx.Response(200, json=doc) if doc else httpx.Response(404, json={"code": "not_found"})
        if request.url.host == "sync.internal" and path == "/internal/events" and request.method == "POST":
            body = msgspec.json.decode(request.content)
            self.writes.append(body)
            uid = f"{uuid.uuid4().hex}@calmesh"
            row = await put(self.pool, body["user_id"], body["connection_id"], body["calendar_id"], body["start"],
                            body["end"], title=body["title"], uid=uid, all_day=body.get("all_day", False))
            return httpx.Response(201, json={
                "id": row["event_id"], "source_id": None, "connection_id": body["connection_id"],
                "title": body["title"], "description": body.get("description"), "location": body.get("location"),
                "start": body["start"], "end": body["end"], "all_day": body.get("all_day", False),
                "status": "confirmed", "transparency": "busy", "recurring_event_id": None,
                "updated_at": "2026-11-25T12:00:00Z", "uid": uid,
            })
        if request.url.host == "sync.internal" and path.startswith("/internal/events/") and request.method == "DELETE":
            event_id = path.rsplit("/", 1)[1]
            status = await self.pool.execute(
                "DELETE FROM sync.event_instances WHERE event_id = $1 AND user_id = $2",
                event_id, request.url.params["user_id"])
            return httpx.Response(204 if status.endswith(" 1") else 404)
        return httpx.Response(599)


async def put(pool: asyncpg.Pool, user_id: str, connection_id: str, calendar_id: str, start: str, end: str, *,
              title: str = "", uid: str | None = None, all_day: bool = False, status: str = "confirmed",
              transparency: str = "busy", recurrence_id: str = "", provider_event_id: str | None = None,
              conn: asyncpg.Connection | None = None) -> dict[str, Any]:
    """Write one projection row as sync does (all-day rows with their widest UTC span)."""
    uid = uid or uuid.uuid4().hex
    if all_day:
        sd, ed = date.fromisoformat(start), date.fromisoformat(end)
        s = datetime(sd.year, sd.month, sd.day, tzinfo=UTC) - timedelta(hours=14)
        e = datetime(ed.year, ed.month, ed.day, tzinfo=UTC) + timedelta(hours=12)
    else:
        sd = ed = None
        s = datetime.fromisoformat(start.replace("Z", "+00:00"))
        e = datetime.fromisoformat(end.replace("Z", "+00:00"))
    event_id = event_id_for(connection_id, calendar_id, uid, recurrence_id)
    await (conn or pool).execute(
        """INSERT INTO sync.event_instances (event_id, user_id, connection_id, calendar_id, uid, recurrence_id,
               provider_event_id, title, start_at, end_at, all_day, start_date, end_date, status, transparency,
               updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, now())""",
        event_id, user_id, connection_id, calendar_id, uid, recurrence_id, provider_event_id, title, s, e, all_day,
        sd, ed, status, transparency,
    )
    return {"event_id": event_id, "uid": uid}


# --- the service under test -------------------------------------------------------------------------


@dataclass
class Service:
    client: AsyncTestClient[Any]
    internals: Internals
    pool: asyncpg.Pool
    nc: nats.NATS

    def headers(self, user_id: str, scope: str = "full") -> dict[str, str]:
        return {SECRET_HEADER: SECRET, "x-calmesh-user-id": user_id, "x-calmesh-auth": "key",
                "x-calmesh-scope": scope}

    async def get(self, user_id: str, path: str, scope: str = "read", **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params, headers=self.headers(user_id, scope))


@pytest.fixture(scope="module")
async def service(migrated: str, nats_server_url: str) -> AsyncIterator[Service]:
    settings = Settings.from_env({}, database_url=migrated, nats_url=nats_server_url, internal_secret=SECRET,
                                 service_name="availability",
                                 service_urls={"connections": CONNECTIONS, "sync": SYNC})
    app = create_app(settings)
    pool = await asyncpg.create_pool(migrated, min_size=1, max_size=4)
    internals = Internals(pool)
    nc = await nats.connect(nats_server_url)
    async with AsyncTestClient(app) as client:
        deps = app.state.deps
        internals.pool = deps.pool  # the fakes run inside the app, on its loop and its pool
        fake = httpx.AsyncClient(transport=httpx.MockTransport(internals.handle))
        deps.http = fake
        deps.extras["calendars"]._fetch = http_fetcher(fake, CONNECTIONS, SECRET, SECRET_HEADER)
        yield Service(client, internals, pool, nc)
        await fake.aclose()
    await nc.close()
    await pool.close()


@dataclass
class World:
    """One user's calendar 'work' (Europe/Berlin) over a CalDAV calendar and an iCal feed."""

    user: str
    slug: str
    caldav: dict[str, Any]
    feed: dict[str, Any]


def source(sid: str, conn: str, cal: str, order: int, read_only: bool = False) -> dict[str, Any]:
    return {"id": sid, "connection_id": conn, "calendar_id": cal, "name": sid, "sort_order": order,
            "read_only": read_only}


@pytest.fixture
def world(service: Service, unique: str) -> World:
    user = f"usr_{unique}"
    feed = source(f"src_feed_{unique}", f"conn_ical_{unique}", "feed", 0, read_only=True)
    caldav = source(f"src_dav_{unique}", f"conn_dav_{unique}", "personal", 1)
    service.internals.calendars[(user, "work")] = {
        "slug": "work", "name": "Work", "timezone": "Europe/Berlin", "user_id": user, "sources": [feed, caldav],
        "connections": [active(feed["connection_id"]), active(caldav["connection_id"])]}
    return World(user, "work", caldav, feed)


def active(connection_id: str, synced: str = "2026-03-01T08:00:00Z") -> dict[str, Any]:
    """A connection's state as connections reports it with a calendar: active, synced at `synced`."""
    return {"id": connection_id, "status": "active", "last_synced_at": synced}


async def seed(service: Service, w: World) -> dict[str, dict[str, Any]]:
    """2026-03-16 (a Monday in Berlin, UTC+1): a morning of meetings on both sources."""
    p, dav, feed = service.pool, w.caldav, w.feed
    d, f = (w.user, dav["connection_id"], dav["calendar_id"]), (w.user, feed["connection_id"], feed["calendar_id"])
    return {
        "standup": await put(p, *d, "2026-03-16T08:00:00Z", "2026-03-16T08:30:00Z", title="Stand-up"),
        "review": await put(p, *f, "2026-03-16T08:15:00Z", "2026-03-16T09:00:00Z", title="Review"),
        "touching": await put(p, *d, "2026-03-16T09:00:00Z", "2026-03-16T09:30:00Z", title="1:1"),
        "lunch": await put(p, *d, "2026-03-16T11:00:00Z", "2026-03-16T12:00:00Z", title="Lunch", transparency="free"),
        "cancelled": await put(p, *f, "2026-03-16T13:00:00Z", "2026-03-16T14:00:00Z", title="Old", status="cancelled"),
        "mirror_a": await put(p, *d, "2026-03-16T15:00:00Z", "2026-03-16T16:00:00Z", title="Board", uid="board@x"),
        "mirror_b": await put(p, *f, "2026-03-16T15:00:00Z", "2026-03-16T16:00:00Z", title="Board", uid="board@x"),
        "holiday": await put(p, *f, "2026-03-17", "2026-03-18", title="Holiday", all_day=True),
    }


# --- events -----------------------------------------------------------------------------------------


async def test_events_of_every_source_come_merged_in_start_order_with_provenance(service: Service, world: World) -> None:
    ids = await seed(service, world)
    r = await service.get(world.user, "/api/v1/calendars/work/events",
                          start="2026-03-16T00:00:00+01:00", end="2026-03-18T00:00:00+01:00")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["next_cursor"] is None
    titles = [e["title"] for e in body["data"]]
    assert titles == ["Stand-up", "Review", "1:1", "Lunch", "Board", "Board", "Holiday"]  # cancelled left out
    review = body["data"][1]
    assert review == {
        "id": ids["review"]["event_id"], "source_id": world.feed["id"], "connection_id": world.feed["connection_id"],
        "title": "Review", "description": None, "location": None, "start": "2026-03-16T08:15:00Z",
        "end": "2026-03-16T09:00:00Z", "all_day": False, "status": "confirmed", "transparency": "busy",
        "recurring_event_id": None, "booking_id": None, "updated_at": review["updated_at"],
    }
    assert review["updated_at"].endswith("Z") and len(review["updated_at"]) == 20
    holiday = body["data"][-1]
    assert (holiday["start"], holiday["end"], holiday["all_day"]) == ("2026-03-17", "2026-03-18", True)

    with_cancelled = await service.get(world.user, "/api/v1/calendars/work/events", start="2026-03-16T00:00:00Z",
                                       end="2026-03-17T00:00:00Z", include_cancelled="true")
    assert "Old" in [e["title"] for e in with_cancelled.json()["data"]]
    only_dav = await service.get(world.user, "/api/v1/calendars/work/events", start="2026-03-16T00:00:00Z",
                                 end="2026-03-17T00:00:00Z", source_id=world.caldav["id"])
    assert {e["source_id"] for e in only_dav.json()["data"]} == {world.caldav["id"]}


async def test_the_range_selects_what_overlaps_it(service: Service, world: World) -> None:
    await seed(service, world)
    # 09:00Z exactly: the stand-up and the review ended by then, 1:1 starts then.
    r = await service.get(world.user, "/api/v1/calendars/work/events", start="2026-03-16T08:59:59Z",
                          end="2026-03-16T09:00:01Z")
    assert [e["title"] for e in r.json()["data"]] == ["Review", "1:1"]
    # The all-day holiday is 2026-03-17 in Berlin: 23:00Z on the 16th to 23:00Z on the 17th.
    r = await service.get(world.user, "/api/v1/calendars/work/events", start="2026-03-16T22:00:00Z",
                          end="2026-03-16T23:00:00Z")
    assert [e["title"] for e in r.json()["data"]] == []
    r = await service.get(world.user, "/api/v1/calendars/work/events", start="2026-03-16T22:00:00Z",
                          end="2026-03-16T23:00:01Z")
    assert [e["title"] for e in r.json()["data"]] == ["Holiday"]


async def test_pages_follow_the_cursor_and_stay_stable_under_concurrent_inserts(service: Service, world: World) -> None:
    d = (world.user, world.caldav["connection_id"], world.caldav["calendar_id"])
    for hour in range(7):
        await put(service.pool, *d, f"2026-04-01T{8 + hour:02d}:00:00Z", f"2026-04-01T{8 + hour:02d}:30:00Z",
                  title=f"e{hour}")
    params = {"start": "2026-04-01T00:00:00Z", "end": "2026-04-02T00:00:00Z", "limit": "3"}
    first = (await service.get(world.user, "/api/v1/calendars/work/events", **params)).json()
    assert [e["title"] for e in first["data"]] == ["e0", "e1", "e2"]
    # Someone inserts before the cursor position and after it while we page.
    await put(service.pool, *d, "2026-04-01T07:00:00Z", "2026-04-01T07:30:00Z", title="early")
    await put(service.pool, *d, "2026-04-01T20:00:00Z", "2026-04-01T20:30:00Z", title="late")
    seen = [e["title"] for e in first["data"]]
    cursor = first["next_cursor"]
    while cursor:
        page = (await service.get(world.user, "/api/v1/calendars/work/events", cursor=cursor, **params)).json()
        seen += [e["title"] for e in page["data"]]
        cursor = page["next_cursor"]
    assert seen == ["e0", "e1", "e2", "e3", "e4", "e5", "e6", "late"]
    other_query = await service.get(world.user, "/api/v1/calendars/work/events", cursor=first["next_cursor"],
                                    start="2026-04-01T00:00:00Z", end="2026-04-03T00:00:00Z")
    assert (other_query.status_code, other_query.json()["code"]) == (400, "invalid_cursor")


# --- availability -----------------------------------------------------------------------------------


async def test_availability_of_a_day_in_the_calendars_zone(service: Service, world: World) -> None:
    ids = await seed(service, world)
    r = await service.get(world.user, "/api/v1/calendars/work/availability", date="2026-03-16", explain="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["slug"], body["timezone"], body["start"], body["end"]) == (
        "work", "Europe/Berlin", "2026-03-15T23:00:00Z", "2026-03-16T23:00:00Z")
    dav, feed = world.caldav["id"], world.feed["id"]
    # Lunch is transparent and the 13:00 meeting cancelled: neither is busy. The holiday (the 17th
    # in Berlin) starts at 23:00Z, exactly at the end of this window: not in it.
    assert [(b["start"], b["end"], b["source_ids"]) for b in body["busy"]] == [
        ("2026-03-16T08:00:00Z", "2026-03-16T09:30:00Z", [feed, dav]),
        ("2026-03-16T15:00:00Z", "2026-03-16T16:00:00Z", [feed, dav]),
    ]
    assert [e["title"] for e in body["busy"][0]["events"]] == ["Stand-up", "Review", "1:1"]
    assert body["busy"][0]["events"][1] == {"id": ids["review"]["event_id"], "title": "Review",
                                            "start": "2026-03-16T08:15:00Z", "end": "2026-03-16T09:00:00Z",
                                            "source_id": feed, "all_day": False}
    assert len(body["busy"][1]["events"]) == 1  # the mirrored board meeting is one meeting
    assert body["free"] == [
        {"start": "2026-03-15T23:00:00Z", "end": "2026-03-16T08:00:00Z"},
        {"start": "2026-03-16T09:30:00Z", "end": "2026-03-16T15:00:00Z"},
        {"start": "2026-03-16T16:00:00Z", "end": "2026-03-16T23:00:00Z"},
    ]
    # Without explain the query hands the engine its items directly: the same answer, minus events.
    plain = (await service.get(world.user, "/api/v1/calendars/work/availability", date="2026-03-16")).json()
    assert "events" not in plain["busy"][0]
    assert plain == {**body, "busy": [{k: v for k, v in b.items() if k != "events"} for b in body["busy"]]}


async def test_tz_moves_the_day_and_all_day_events_block_their_days(service: Service, world: World) -> None:
    await seed(service, world)
    r = await service.get(world.user, "/api/v1/calendars/work/availability", date="2026-03-17",
                          tz="America/New_York", min_duration="60")
    body = r.json()
    assert (body["timezone"], body["start"], body["end"]) == (
        "America/New_York", "2026-03-17T04:00:00Z", "2026-03-18T04:00:00Z")
    explained = await service.get(world.user, "/api/v1/calendars/work/availability", date="2026-03-17",
                                  tz="America/New_York", min_duration="60", explain="true")
    assert [e["title"] for e in explained.json()["busy"][0]["events"]] == ["Holiday"]
    assert explained.json()["free"] == body["free"]
    # The holiday blocks the 17th in the calendar's zone (Berlin): until 23:00Z.
    assert [(b["start"], b["end"]) for b in body["busy"]] == [("2026-03-17T04:00:00Z", "2026-03-17T23:00:00Z")]
    assert body["free"] == [{"start": "2026-03-17T23:00:00Z", "end": "2026-03-18T04:00:00Z"}]


async def test_conflicts_pair_busy_events_of_different_sources(service: Service, world: World) -> None:
    ids = await seed(service, world)
    r = await service.get(world.user, "/api/v1/calendars/work/conflicts",
                          start="2026-03-16T00:00:00Z", end="2026-03-17T00:00:00Z")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["next_cursor"] is None
    (conflict,) = body["data"]  # not the mirrored board meeting, not transparent lunch, not touching 1:1
    assert [e["id"] for e in conflict["events"]] == [ids["standup"]["event_id"], ids["review"]["event_id"]]
    assert (conflict["overlap_start"], conflict["overlap_end"]) == ("2026-03-16T08:15:00Z", "2026-03-16T08:30:00Z")
    assert conflict["events"][0]["source_id"] == world.caldav["id"]


async def dense_year(service: Service, w: World) -> None:
    """The red team's calendar: 200 events spanning the year on the CalDAV source, 5,000 short
    ones on the feed: a million overlapping pairs."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    dav, feed = w.caldav, w.feed
    records = []
    for i in range(200):
        records.append((dav, base + timedelta(minutes=i), base + timedelta(days=366) - timedelta(minutes=i)))
    for i in range(5000):
        s = base + timedelta(hours=1) + timedelta(seconds=6300 * i)
        records.append((feed, s, s + timedelta(minutes=30)))
    await service.pool.executemany(
        """INSERT INTO sync.event_instances (event_id, user_id, connection_id, calendar_id, uid, recurrence_id,
               title, start_at, end_at, all_day, status, transparency, updated_at)
           VALUES ($1, $2, $3, $4, $5, '', 'dense', $6, $7, false, 'confirmed', 'busy', now())""",
        [(event_id_for(src["connection_id"], src["calendar_id"], f"dense-{i}", ""), w.user, src["connection_id"],
          src["calendar_id"], f"dense-{i}", s, e) for i, (src, s, e) in enumerate(records)])


async def test_a_dense_conflicts_query_is_bounded_and_never_stalls_another_user(
    service: Service, world: World, unique: str,
) -> None:
    await dense_year(service, world)
    other = f"usr_other_{unique}"
    service.internals.calendars[(other, "work")] = {**service.internals.calendars[(world.user, "work")],
                                                    "user_id": other}
    year = {"start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z", "limit": "200"}
    await service.get(other, "/api/v1/calendars/work/availability", date="2026-03-16")  # calendar cached

    # The test client answers one request at a time; this runs both on the app's own event loop,
    # through a plain ASGI transport, so that they really are concurrent.
    app = service.client.app

    async def race() -> tuple[httpx.Response, float, list[float]]:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            async def dense() -> tuple[httpx.Response, float]:
                began = loop.time()
                r = await http.get("/api/v1/calendars/work/conflicts", params=year, headers=service.headers(world.user))
                return r, loop.time() - began

            task = asyncio.create_task(dense())
            waits: list[float] = []
            while not task.done() or not waits:
                began = loop.time()
                r = await http.get("/api/v1/calendars/work/availability", params={"date": "2026-03-16"},
                                   headers=service.headers(other, "read"))
                waits.append(loop.time() - began)
                assert r.status_code == 200
            r, took = await task
            return r, took, waits

    first, took, waits = await asyncio.to_thread(service.client.blocking_portal.call, race)
    assert first.status_code == 200, first.text
    assert len(first.json()["data"]) == 200 and first.json()["next_cursor"]
    assert took < 5.0  # the unbounded sweep took 9 s and 200 MB here
    # The other user's answers never waited for the sweep (on the loop it stalled them for 5-9 s).
    # Measured here: 10-20 ms typically, about 300 ms at worst with the machine's load at 13 on 2
    # cores; the bound leaves room for that load, not for a stall.
    assert max(waits) < 1.0, waits
    # The cursor goes on where the page ended.
    second = await service.get(world.user, "/api/v1/calendars/work/conflicts", cursor=first.json()["next_cursor"],
                               **year)
    assert second.status_code == 200
    assert second.json()["data"][0]["overlap_start"] >= first.json()["data"][-1]["overlap_start"]


async def test_a_range_holding_too_many_events_is_a_422_range_too_dense(service: Service, world: World) -> None:
    await dense_year(service, world)
    deps = service.client.app.state.deps
    saved = deps.settings
    deps.settings = msgspec.structs.replace(saved, conflicts_max_rows=1000)
    try:
        r = await service.get(world.user, "/api/v1/calendars/work/conflicts",
                              start="2026-01-01T00:00:00Z", end="2027-01-01T00:00:00Z")
    finally:
        deps.settings = saved
    assert (r.status_code, r.json()["code"]) == (422, "range_too_dense"), r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "shorter range" in r.json()["detail"]
    # A range that holds fewer is answered.
    deps.settings = msgspec.structs.replace(saved, conflicts_max_rows=1000)
    try:
        r = await service.get(world.user, "/api/v1/calendars/work/conflicts",
                              start="2026-03-01T00:00:00Z", end="2026-03-15T00:00:00Z")
    finally:
        deps.settings = saved
    assert r.status_code == 200, r.text


async def test_a_sync_in_progress_is_invisible_until_it_commits(service: Service, world: World) -> None:
    await seed(service, world)
    params = {"start": "2026-03-16T00:00:00Z", "end": "2026-03-17T00:00:00Z"}
    before = (await service.get(world.user, "/api/v1/calendars/work/events", **params)).json()["data"]
    async with service.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        # A sync replaces the CalDAV calendar's rows in one transaction.
        await conn.execute("DELETE FROM sync.event_instances WHERE connection_id = $1", world.caldav["connection_id"])
        await put(service.pool, world.user, world.caldav["connection_id"], world.caldav["calendar_id"],
                  "2026-03-16T10:00:00Z", "2026-03-16T11:00:00Z", title="New", conn=conn)
        during = (await service.get(world.user, "/api/v1/calendars/work/events", **params)).json()["data"]
        assert during == before
        await tx.commit()
    after = (await service.get(world.user, "/api/v1/calendars/work/events", **params)).json()["data"]
    assert [e["title"] for e in after if e["source_id"] == world.caldav["id"]] == ["New"]


async def test_a_removed_source_leaves_the_reads_as_soon_as_connections_says_so(service: Service, world: World) -> None:
    await seed(service, world)
    path, params = "/api/v1/calendars/work/availability", {"date": "2026-03-16"}
    first = (await service.get(world.user, path, **params)).json()
    assert {s for b in first["busy"] for s in b["source_ids"]} == {world.feed["id"], world.caldav["id"]}
    lookups = service.internals.lookups
    await service.get(world.user, path, **params)
    assert service.internals.lookups == lookups  # served from the cache
    # connections removes the feed from the calendar and publishes the event.
    cal = service.internals.calendars[(world.user, "work")]
    cal["sources"] = [world.caldav]
    now = datetime.now(UTC)
    event = CalendarSourceRemoved(
        calendar=UnifiedCalendar(id="cal_x", user_id=world.user, slug="work", name="Work", timezone="Europe/Berlin",
                                 sources=[CalendarSource(**{k: world.caldav[k] for k in (
                                     "id", "connection_id", "calendar_id", "name", "sort_order", "read_only")})],
                                 created_at=now, updated_at=now),
        source=CalendarSource(**{k: world.feed[k] for k in (
            "id", "connection_id", "calendar_id", "name", "sort_order", "read_only")}))
    await service.nc.publish("calmesh.connections.calendar.source_removed",
                             encode_envelope(make_envelope(event, stream_id="cal_x", version=2, user_id=world.user)))
    await service.nc.flush()
    for _ in range(100):
        after = (await service.get(world.user, path, **params)).json()
        if service.internals.lookups > lookups:
            break
        await asyncio.sleep(0.01)
    assert {s for b in after["busy"] for s in b["source_ids"]} == {world.caldav["id"]}


# --- writes -----------------------------------------------------------------------------------------


async def test_a_created_event_goes_to_the_first_writable_source_and_shows_in_the_next_query(
    service: Service, world: World,
) -> None:
    h = service.headers(world.user, "write")
    r = await service.client.post("/api/v1/calendars/work/events", headers=h, json={
        "title": "Planning", "start": "2026-05-04T10:00:00+02:00", "end": "2026-05-04T11:00:00+02:00",
        "attendees": ["ana@example.com"], "location": "Room 1"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["source_id"] == world.caldav["id"]  # the feed comes first but is read-only
    assert (created["start"], created["end"]) == ("2026-05-04T08:00:00Z", "2026-05-04T09:00:00Z")
    assert "uid" not in created
    write = service.internals.writes[-1]
    assert (write["connection_id"], write["calendar_id"], write["timezone"]) == (
        world.caldav["connection_id"], "personal", "Europe/Berlin")
    listed = await service.get(world.user, "/api/v1/calendars/work/events", start="2026-05-04T00:00:00Z",
                               end="2026-05-05T00:00:00Z")
    assert [e["id"] for e in listed.json()["data"]] == [created["id"]]

    deleted = await service.client.delete("/api/v1/calendars/work/events", params={"event_id": created["id"]},
                                          headers=h)
    assert deleted.status_code == 204
    listed = await service.get(world.user, "/api/v1/calendars/work/events", start="2026-05-04T00:00:00Z",
                               end="2026-05-05T00:00:00Z")
    assert listed.json()["data"] == []
    again = await service.client.delete("/api/v1/calendars/work/events", params={"event_id": created["id"]},
                                        headers=h)
    assert again.status_code == 404


async def test_writes_to_a_read_only_source_are_422_and_book_keys_may_not_write(service: Service, world: World) -> None:
    body = {"title": "x", "start": "2026-05-04T10:00:00Z", "end": "2026-05-04T11:00:00Z", "source_id": world.feed["id"]}
    r = await service.client.post("/api/v1/calendars/work/events", json=body, headers=service.headers(world.user, "write"))
    assert (r.status_code, r.json()["code"]) == (422, "read_only_source")
    r = await service.client.post("/api/v1/calendars/work/events", json={**body, "source_id": None},
                                  headers=service.headers(world.user, "book"))
    assert (r.status_code, r.json()["code"], r.json()["required_scope"]) == (403, "insufficient_scope", "write")
    feed_event = await put(service.pool, world.user, world.feed["connection_id"], "feed", "2026-05-04T10:00:00Z",
                           "2026-05-04T11:00:00Z")
    r = await service.client.delete("/api/v1/calendars/work/events", params={"event_id": feed_event["event_id"]},
                                    headers=service.headers(world.user, "write"))
    assert (r.status_code, r.json()["code"]) == (422, "read_only_source")
    assert service.internals.writes == [] or all(w["connection_id"] != world.feed["connection_id"]
                                                 for w in service.internals.writes)


async def test_an_idempotency_key_replays_the_first_response(service: Service, world: World) -> None:
    h = {**service.headers(world.user, "write"), "Idempotency-Key": f"k-{world.user}"}
    body = {"title": "Once", "start": "2026-06-01T10:00:00Z", "end": "2026-06-01T11:00:00Z"}
    first = await service.client.post("/api/v1/calendars/work/events", json=body, headers=h)
    writes = len(service.internals.writes)
    again = await service.client.post("/api/v1/calendars/work/events", content=msgspec.json.encode(
        dict(reversed(body.items()))), headers={**h, "content-type": "application/json"})
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert len(service.internals.writes) == writes
    other = await service.client.post("/api/v1/calendars/work/events", json={**body, "title": "Twice"}, headers=h)
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "params", "status", "code"), [
    ("events", {"start": "2026-03-16T10:00:00Z", "end": "2026-03-16T09:00:00Z"}, 422, "invalid_range"),
    ("events", {"start": "2026-01-01T00:00:00Z", "end": "2027-01-03T00:00:00Z"}, 422, "range_too_long"),
    ("events", {"start": "2026-03-16T10:00:00Z"}, 400, "validation_error"),
    ("events", {"start": "2026-03-16T10:00:00Z", "end": "2026-03-17T10:00:00Z", "limit": "500"}, 400,
     "validation_error"),
    ("events", {"start": "2026-03-16T10:00:00Z", "end": "2026-03-17T10:00:00Z", "cursor": "garbage"}, 400,
     "invalid_cursor"),
    ("availability", {"date": "2026-02-30"}, 400, "validation_error"),
    ("availability", {"date": "2026-03-16", "tz": "Mars/Olympus"}, 400, "invalid_timezone"),
    ("availability", {"start": "2026-03-17T00:00:00Z", "end": "2026-03-16T00:00:00Z"}, 422, "invalid_range"),
    ("availability", {"start": "2026-01-01T00:00:00Z", "end": "2027-06-01T00:00:00Z"}, 422, "range_too_long"),
    ("availability", {"date": "2026-03-16", "min_duration": "-5"}, 400, "validation_error"),
    ("availability", {}, 400, "validation_error"),
    ("conflicts", {"start": "yesterday", "end": "2026-03-16T00:00:00Z"}, 400, "validation_error"),
    ("availability", {"date": "9999-12-31"}, 400, "validation_error"),
    ("events", {"start": "0001-01-01T00:00:00Z", "end": "0001-01-02T00:00:00Z"}, 400, "validation_error"),
    # Cursors of the right query whose positions are absurd (a forged or corrupted cursor).
    ("events", {"start": "2026-03-16T10:00:00Z", "end": "2026-03-17T10:00:00Z", "cursor": domain.encode_cursor(
        "events", domain.query_fingerprint("work", 1773655200, 1773741600, "", False), [10**30, "evt_x"])},
     400, "invalid_cursor"),
    ("conflicts", {"start": "2026-03-16T10:00:00Z", "end": "2026-03-17T10:00:00Z", "cursor": domain.encode_cursor(
        "conflicts", domain.query_fingerprint("work", 1773655200, 1773741600), [True, 1, 2])},
     400, "invalid_cursor"),
])
async def test_bad_input_is_a_problem_never_a_500(
    service: Service, world: World, path: str, params: dict[str, str], status: int, code: str,
) -> None:
    r = await service.get(world.user, f"/api/v1/calendars/work/{path}", **params)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["detail"]


async def test_reads_without_an_identity_are_401(service: Service, world: World) -> None:
    r = await service.client.get("/api/v1/calendars/work/availability", params={"date": "2026-03-16"},
                                 headers={SECRET_HEADER: SECRET})
    assert (r.status_code, r.json()["code"]) == (401, "unauthorized")


async def test_unknown_and_other_users_calendars_are_404(service: Service, world: World, unique: str) -> None:
    for user, slug in ((world.user, "nope"), (f"usr_other_{unique}", "work")):
        r = await service.get(user, f"/api/v1/calendars/{slug}/availability", date="2026-03-16")
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
        r = await service.client.delete(f"/api/v1/calendars/{slug}/events", params={"event_id": "evt_x"},
                                        headers=service.headers(user, "write"))
        assert r.status_code == 404


async def test_malformed_event_bodies_are_400(service: Service, world: World) -> None:
    h = service.headers(world.user, "write")
    for body in ({"title": "x", "start": "2026-05-04T10:00:00Z"},
                 {"title": "x", "start": "2026-05-04T10:00:00Z", "end": "2026-05-04T11:00:00Z", "colour": "red"},
                 {"title": 5, "start": "2026-05-04T10:00:00Z", "end": "2026-05-04T11:00:00Z"},
                 {"title": " ", "start": "2026-05-04T10:00:00Z", "end": "2026-05-04T11:00:00Z"}):
        r = await service.client.post("/api/v1/calendars/work/events", json=body, headers=h)
        assert r.status_code == 400, r.text
    r = await service.client.post("/api/v1/calendars/work/events", content=b"{nope", headers={
        **h, "content-type": "application/json"})
    assert r.status_code == 400
    r = await service.client.post("/api/v1/calendars/work/events", headers=h, json={
        "title": "x", "start": "2026-05-04T10:00:00Z", "end": "2026-05-04T09:00:00Z"})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_range")


def test_instants_in_responses_are_utc_to_the_second() -> None:
    assert rfc3339_epoch(1773651600) == "2026-03-16T09:00:00Z"


async def test_the_openapi_document_names_range_too_dense_for_conflicts(service: Service) -> None:
    r = await service.client.get("/schema/openapi.json", headers={SECRET_HEADER: SECRET})
    assert r.status_code == 200, r.text
    refused = r.json()["paths"]["/api/v1/calendars/{slug}/conflicts"]["get"]["responses"]["422"]
    assert "range_too_dense" in refused["description"] and "application/problem+json" in refused["content"]
