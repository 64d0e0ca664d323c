"""CalDAV against a real server (Radicale), through the platform's own processes (the `stack`):
connect, sync, compare the projection with what recurring-ical-events expands from the same
objects; change and delete at the server and see exactly that change after the next sync; write and
delete events through the sync service (PUT If-None-Match, DELETE If-Match, EXDATE)."""

from __future__ import annotations

import asyncio
import time
import uuid
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import icalendar
import pytest

from calmesh_testing.radicale import Radicale, radicale
from calmesh_testing.reference import overlapping, reference, rows_key
from calmesh_testing.stackutil import as_user, internal, wait_connection

NY = zoneinfo.ZoneInfo("America/New_York")


def next_dst_change(after: date) -> date:
    """The next day on which New York's UTC offset changes."""
    day = after
    while True:
        a = datetime(day.year, day.month, day.day, 12, tzinfo=NY).utcoffset()
        b = datetime(day.year, day.month, day.day, 12, tzinfo=NY) + timedelta(days=1)
        if b.utcoffset() != a:
            return day + timedelta(days=1)
        day += timedelta(days=1)


def vcal(*events: str, tz: bool = True) -> str:
    parts = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//calmesh tests//EN"]
    if tz:
        parts.append(icalendar.Timezone.from_tzinfo(NY, first_date=date(2020, 1, 1), last_date=date(2030, 1, 1)).to_ical().decode().strip())
    parts.extend(e.strip() for e in events)
    parts.append("END:VCALENDAR")
    return ("\n".join(parts) + "\n").replace("\r\n", "\n").replace("\n", "\r\n")


def local(day: date, hour: int, minute: int = 0) -> str:
    return f"{day:%Y%m%d}T{hour:02d}{minute:02d}00"


@pytest.fixture(scope="module")
def server() -> Iterator[Radicale]:
    with radicale() as r:
        yield r


def seed(server: Radicale, cal: str) -> dict[str, str]:
    """The calendar of the test: what it holds and why."""
    today = datetime.now(UTC).date()
    start = today - timedelta(days=14)
    moved_from = start + timedelta(days=21)  # 4th instance, moved by two hours
    deleted = start + timedelta(days=28)  # 5th instance, EXDATE
    dst = next_dst_change(today)
    objects = {
        "series.ics": vcal(f"""
BEGIN:VEVENT
UID:series-1@test
DTSTAMP:20260101T000000Z
DTSTART;TZID=America/New_York:{local(start, 9)}
DTEND;TZID=America/New_York:{local(start, 10)}
RRULE:FREQ=WEEKLY;COUNT=30
EXDATE;TZID=America/New_York:{local(deleted, 9)}
SUMMARY:Weekly sync
END:VEVENT
BEGIN:VEVENT
UID:series-1@test
DTSTAMP:20260101T000000Z
RECURRENCE-ID;TZID=America/New_York:{local(moved_from, 9)}
DTSTART;TZID=America/New_York:{local(moved_from, 11)}
DTEND;TZID=America/New_York:{local(moved_from, 12)}
SUMMARY:Weekly sync (moved)
END:VEVENT"""),
        "allday.ics": vcal(f"""
BEGIN:VEVENT
UID:allday-1@test
DTSTAMP:20260101T000000Z
DTSTART;VALUE=DATE:{today + timedelta(days=3):%Y%m%d}
DTEND;VALUE=DATE:{today + timedelta(days=5):%Y%m%d}
SUMMARY:Offsite
END:VEVENT""", tz=False),
        "dst.ics": vcal(f"""
BEGIN:VEVENT
UID:dst-1@test
DTSTAMP:20260101T000000Z
DTSTART;TZID=America/New_York:{local(dst - timedelta(days=1), 22)}
DTEND;TZID=America/New_York:{local(dst, 10)}
SUMMARY:Across the clock change
END:VEVENT"""),
        "free.ics": vcal(f"""
BEGIN:VEVENT
UID:free-1@test
DTSTAMP:20260101T000000Z
DTSTART:{today + timedelta(days=2):%Y%m%d}T140000Z
DTEND:{today + timedelta(days=2):%Y%m%d}T150000Z
TRANSP:TRANSPARENT
SUMMARY:Maybe lunch
END:VEVENT""", tz=False),
        "cancelled.ics": vcal(f"""
BEGIN:VEVENT
UID:cancelled-1@test
DTSTAMP:20260101T000000Z
DTSTART:{today + timedelta(days=6):%Y%m%d}T080000Z
DTEND:{today + timedelta(days=6):%Y%m%d}T090000Z
STATUS:CANCELLED
SUMMARY:Called off
END:VEVENT""", tz=False),
        "untitled.ics": vcal(f"""
BEGIN:VEVENT
UID:untitled-1@test
DTSTAMP:20260101T000000Z
DTSTART:{today + timedelta(days=7):%Y%m%d}T080000Z
DURATION:PT30M
END:VEVENT""", tz=False),
    }
    for name, ics in objects.items():
        server.put(cal, name, ics)
    return objects


async def projection(database_url: str, connection_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch("SELECT * FROM sync.event_instances WHERE connection_id = $1 ORDER BY uid, recurrence_id", connection_id)
    finally:
        await conn.close()


async def wait_run(database_url: str, sync_id: str, timeout: float = 30.0) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            outcome = await conn.fetchval(
                "SELECT outcome FROM sync.sync_runs WHERE sync_id = $1 AND outcome IS NOT NULL ORDER BY id DESC LIMIT 1", sync_id
            )
            if outcome:
                return str(outcome)
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise AssertionError(f"sync {sync_id} did not finish")


def compare(rows: list[Any], objects: dict[str, str], tz: str) -> None:
    today = datetime.now(UTC)
    start, end = today - timedelta(days=60), today + timedelta(days=300)
    expected = reference([icalendar.Calendar.from_ical(o) for o in objects.values()], start, end, tz)
    got = {rows_key(r) for r in overlapping(rows, start, end)}
    assert len(overlapping(rows, start, end)) == sum(expected.values())
    assert got == set(expected)


async def test_radicale_sync_matches_expansion_then_follows_changes(stack: Any, server: Radicale, database_url: str) -> None:
    cal_url = server.make_calendar("work", "Work")
    objects = seed(server, "work")
    with as_user(stack, tz="Europe/Berlin") as api:
        r = api.post("/api/v1/connections/caldav", json={"url": server.url + "/", "username": server.username, "password": server.password})
        assert r.status_code == 201, r.text
        conn = r.json()
        assert conn["provider"] == "caldav" and conn["status"] in ("pending", "syncing", "active")
        assert "password" not in r.text and server.password not in r.text
        assert [c["name"] for c in conn["calendars"]] == ["Work"]
        cid = conn["id"]
        body = wait_connection(api, cid)
        assert body["status"] == "active", body
        rows = await projection(database_url, cid)
        compare(rows, objects, "Europe/Berlin")

        # Field by field, for what the comparison does not look at.
        by_uid = {}
        for row in rows:
            by_uid.setdefault(row["uid"], []).append(row)
        assert {r["transparency"] for r in by_uid["free-1@test"]} == {"free"}
        assert {r["status"] for r in by_uid["cancelled-1@test"]} == {"cancelled"}
        assert by_uid["untitled-1@test"][0]["title"] == ""
        allday = by_uid["allday-1@test"][0]
        assert allday["all_day"] and (allday["end_date"] - allday["start_date"]).days == 2
        dst = by_uid["dst-1@test"][0]
        assert dst["end_at"] - dst["start_at"] in (timedelta(hours=11), timedelta(hours=13))  # 12 wall hours across the change
        series = by_uid["series-1@test"]
        assert all(r["recurring_event_id"] == series[0]["recurring_event_id"] for r in series)
        moved = [r for r in series if r["title"] == "Weekly sync (moved)"]
        assert len(moved) == 1 and moved[0]["recurrence_id"] != moved[0]["start_at"].strftime("%Y-%m-%dT%H:%M:%SZ")
        assert all(r["provider_event_id"].endswith("/work/series.ics") for r in series)
        assert all(r["user_id"] == api.headers["x-calmesh-user-id"] for r in rows)

        # Change one event, delete another, at the server: the next sync shows exactly that.
        before = {(r["uid"], r["recurrence_id"]): r for r in rows}
        objects["free.ics"] = objects["free.ics"].replace("Maybe lunch", "Lunch (confirmed)").replace("TRANSP:TRANSPARENT\r\n", "")
        server.put("work", "free.ics", objects["free.ics"])
        server.delete("work", "allday.ics")
        del objects["allday.ics"]
        r = api.post(f"/api/v1/connections/{cid}/sync")
        assert r.status_code == 202 and r.json()["sync_id"]
        assert await wait_run(database_url, r.json()["sync_id"]) == "completed"
        after_rows = await projection(database_url, cid)
        after = {(r["uid"], r["recurrence_id"]): r for r in after_rows}
        assert set(before) - set(after) == {("allday-1@test", "")}
        assert set(after) - set(before) == set()
        changed = {k for k in after if dict(after[k]) != dict(before[k])}
        assert changed == {("free-1@test", "")}
        assert after[("free-1@test", "")]["title"] == "Lunch (confirmed)"
        assert after[("free-1@test", "")]["transparency"] == "busy"
        compare(after_rows, objects, "Europe/Berlin")

        # An unchanged calendar: nothing written.
        r = api.post(f"/api/v1/connections/{cid}/sync")
        assert await wait_run(database_url, r.json()["sync_id"]) == "completed"
        assert [dict(x) for x in await projection(database_url, cid)] == [dict(x) for x in after_rows]
        assert cal_url.endswith("/work/")


async def test_radicale_bad_password_is_refused_at_creation(stack: Any, server: Radicale) -> None:
    with as_user(stack) as api:
        r = api.post("/api/v1/connections/caldav", json={"url": server.url, "username": server.username, "password": "wrong"})
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "invalid_credentials"
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_event_writes_put_and_delete_at_radicale(stack: Any, server: Radicale, database_url: str) -> None:
    server.make_calendar("writes", "Writes")
    objects = {"series.ics": seed(server, "writes")["series.ics"]}
    for name in ("allday.ics", "dst.ics", "free.ics", "cancelled.ics", "untitled.ics"):
        server.delete("writes", name)
    with as_user(stack) as api:
        user_id = api.headers["x-calmesh-user-id"]
        r = api.post("/api/v1/connections/caldav", json={"url": server.url + f"/{server.username}/writes/", "username": server.username,
                                                         "password": server.password})
        assert r.status_code == 201, r.text
        cid, calendar_id = r.json()["id"], r.json()["calendars"][0]["id"]
        assert wait_connection(api, cid)["status"] == "active"
    start = (datetime.now(UTC) + timedelta(days=3)).replace(hour=13, minute=0, second=0, microsecond=0)
    with internal(stack, "sync") as sync:
        r = sync.post("/internal/events", json={
            "user_id": user_id, "connection_id": cid, "calendar_id": calendar_id, "title": "Written by CalMesh",
            "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "description": "from the test", "location": "Room 1", "attendees": [{"email": "bob@example.com", "name": "Bob"}],
        })
        assert r.status_code == 201, r.text
        event = r.json()
        assert event["title"] == "Written by CalMesh" and event["start"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
        # At the server at once, and in the projection before the answer came.
        stored = [n for n, data in server.objects("writes").items() if "Written by CalMesh" in data]
        assert len(stored) == 1
        rows = {r["event_id"]: r for r in await projection(database_url, cid)}
        assert event["id"] in rows and rows[event["id"]]["location"] == "Room 1"

        # Someone else's user id: 404; bad input: 400/422, never a 500.
        assert sync.delete(f"/internal/events/{event['id']}", params={"user_id": "usr_other"}).status_code == 404
        bad = sync.post("/internal/events", json={"user_id": user_id, "connection_id": cid, "calendar_id": calendar_id, "title": "x",
                                                  "start": "2026-01-02T10:00:00Z", "end": "2026-01-02T09:00:00Z"})
        assert bad.status_code == 422 and bad.json()["code"] == "end_before_start"
        assert sync.post("/internal/events", json={"user_id": user_id, "nope": 1}).status_code == 400

        # Delete it: gone at the server (DELETE with If-Match) and from the projection.
        assert sync.delete(f"/internal/events/{event['id']}", params={"user_id": user_id}).status_code == 204
        assert not [n for n, data in server.objects("writes").items() if "Written by CalMesh" in data]
        assert event["id"] not in {r["event_id"] for r in await projection(database_url, cid)}

        # Delete one instance of the recurring series: an EXDATE on the series at the server.
        series = [r for r in await projection(database_url, cid) if r["uid"] == "series-1@test" and r["title"] == "Weekly sync"]
        victim = series[-1]
        assert sync.delete(f"/internal/events/{victim['event_id']}", params={"user_id": user_id}).status_code == 204
        data = server.objects("writes")["series.ics"]
        assert data.count("EXDATE") == 2
        left = {r["event_id"] for r in await projection(database_url, cid)}
        assert victim["event_id"] not in left and series[0]["event_id"] in left
        # The next sync agrees with the server (the instance stays gone).
        with as_user(stack, user_id) as api:
            r = api.post(f"/api/v1/connections/{cid}/sync")
        await wait_run(database_url, r.json()["sync_id"])
        assert victim["event_id"] not in {r["event_id"] for r in await projection(database_url, cid)}
        objects["series.ics"] = data


def connect_calendar(stack: Any, server: Radicale, name: str) -> tuple[str, str, str]:
    """A new user with an active CalDAV connection to a new calendar `name` at the server:
    (user id, connection id, calendar id)."""
    server.make_calendar(name, name.capitalize())
    with as_user(stack) as api:
        user_id = api.headers["x-calmesh-user-id"]
        r = api.post("/api/v1/connections/caldav", json={"url": server.url + f"/{server.username}/{name}/",
                                                         "username": server.username, "password": server.password})
        assert r.status_code == 201, r.text
        cid, calendar_id = r.json()["id"], r.json()["calendars"][0]["id"]
        assert wait_connection(api, cid)["status"] == "active"
    return user_id, cid, calendar_id


async def test_a_bookings_event_is_written_exactly_once_and_moved_in_place(stack: Any, server: Radicale,
                                                                           database_url: str) -> None:
    """The reservation row is filled in by the provider write (one row); a repeat with the same
    Idempotency-Key gets the first answer; a repeat whose answer was lost (no key kept) finds the
    same CalDAV object; a move is a PUT of that object (same UID, SEQUENCE + 1)."""
    user_id, cid, calendar_id = connect_calendar(stack, server, "exact")
    start = (datetime.now(UTC) + timedelta(days=5)).replace(hour=10, minute=0, second=0, microsecond=0)
    when = {"start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": (start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    booking_id = "bk_exactlyonce" + uuid.uuid4().hex[:8]
    base = {"user_id": user_id, "connection_id": cid, "calendar_id": calendar_id, "title": "Intro: Vera"}
    with internal(stack, "sync") as sync:
        reserved = sync.put(f"/internal/reservations/{booking_id}", json={**base, **when})
        assert reserved.status_code == 201, reserved.text
        body = {**base, **when, "booking_id": booking_id}
        first = sync.post("/internal/events", json=body, headers={"Idempotency-Key": f"k-{booking_id}"})
        assert first.status_code == 201, first.text
        assert first.json()["id"] == reserved.json()["id"] and first.json()["booking_id"] == booking_id
        repeat = sync.post("/internal/events", json=body, headers={"Idempotency-Key": f"k-{booking_id}"})
        assert repeat.status_code == 201 and repeat.json() == first.json()
        assert repeat.headers.get("idempotent-replayed") == "true"
        other = sync.post("/internal/events", json={**body, "title": "else"}, headers={"Idempotency-Key": f"k-{booking_id}"})
        assert other.status_code == 422
        # The answer lost and the key's record with it: the same object is found, not a second written.
        lost = sync.post("/internal/events", json=body, headers={"Idempotency-Key": f"k2-{booking_id}"})
        assert lost.status_code == 201 and lost.json()["id"] == first.json()["id"]
        objects = [data for data in server.objects("exact").values() if booking_id in data]
        assert len(objects) == 1
        rows = [r for r in await projection(database_url, cid) if r["booking_id"] == booking_id]
        assert len(rows) == 1 and rows[0]["provider_event_id"]

        later = start + timedelta(hours=3)
        moved = sync.patch(f"/internal/events/{first.json()['id']}", json={
            "user_id": user_id, "start": later.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end": (later + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")})
        assert moved.status_code == 200, moved.text
        assert moved.json()["id"] == first.json()["id"] and moved.json()["start"] == later.strftime("%Y-%m-%dT%H:%M:%SZ")
        after = {n: d for n, d in server.objects("exact").items() if booking_id in d}
        assert len(after) == 1
        text = next(iter(after.values())).replace("\r\n ", "")
        assert f"UID:{booking_id}@calmesh.xyz" in text and "SEQUENCE:1" in text and later.strftime("%Y%m%dT%H%M%S") in text

        # Released (its booking cancelled): free at once, the object stays until its deletion.
        assert sync.delete(f"/internal/reservations/{booking_id}", params={"user_id": user_id}).status_code == 204
        rows = [r for r in await projection(database_url, cid) if r["booking_id"] == booking_id]
        assert len(rows) == 1 and rows[0]["status"] == "cancelled"
        assert sync.delete(f"/internal/events/{first.json()['id']}", params={"user_id": user_id}).status_code == 204
        assert not [d for d in server.objects("exact").values() if booking_id in d]
        assert sync.delete(f"/internal/events/{first.json()['id']}", params={"user_id": user_id}).status_code == 404


async def test_every_internal_write_repeated_with_one_idempotency_key_changes_nothing_twice(
        stack: Any, server: Radicale, database_url: str) -> None:
    """Sync's internal writes honour Idempotency-Key (docs/contracts.md): a repeated POST
    /internal/events is one event on Radicale (no booking_id: its UID is fresh per write, so only the
    key holds it to one), two PATCHes with one key are one move at the provider (SEQUENCE 1, not 2),
    a repeated DELETE is a no-op answering the first 204, and a repeated PUT or DELETE of a
    reservation gets the first answer."""
    user_id, cid, calendar_id = connect_calendar(stack, server, "keyed")
    tag = uuid.uuid4().hex[:8]
    start = (datetime.now(UTC) + timedelta(days=6)).replace(hour=9, minute=0, second=0, microsecond=0)
    z = "%Y-%m-%dT%H:%M:%SZ"

    def keyed(name: str) -> dict[str, str]:
        return {"Idempotency-Key": f"{name}-{tag}"}

    with internal(stack, "sync") as sync:
        body = {"user_id": user_id, "connection_id": cid, "calendar_id": calendar_id, "title": f"Keyed {tag}",
                "start": start.strftime(z), "end": (start + timedelta(hours=1)).strftime(z)}
        first = sync.post("/internal/events", json=body, headers=keyed("create"))
        again = sync.post("/internal/events", json=body, headers=keyed("create"))
        assert first.status_code == again.status_code == 201, (first.text, again.text)
        assert again.json() == first.json() and again.headers.get("idempotent-replayed") == "true"
        assert len([d for d in server.objects("keyed").values() if f"Keyed {tag}" in d]) == 1
        other = sync.post("/internal/events", json={**body, "title": "else"}, headers=keyed("create"))
        assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"

        event_id = first.json()["id"]
        later = start + timedelta(hours=2)
        move = {"user_id": user_id, "start": later.strftime(z), "end": (later + timedelta(hours=1)).strftime(z)}
        moved = [sync.patch(f"/internal/events/{event_id}", json=move, headers=keyed("move")) for _ in range(2)]
        assert [m.status_code for m in moved] == [200, 200], moved[0].text
        assert moved[1].json() == moved[0].json() and moved[1].headers.get("idempotent-replayed") == "true"
        text = next(d for d in server.objects("keyed").values() if f"Keyed {tag}" in d).replace("\r\n ", "")
        assert "SEQUENCE:1" in text and "SEQUENCE:2" not in text  # one PUT at the provider

        params = {"user_id": user_id}
        gone = [sync.delete(f"/internal/events/{event_id}", params=params, headers=keyed("delete")) for _ in range(2)]
        assert [g.status_code for g in gone] == [204, 204]
        assert gone[1].headers.get("idempotent-replayed") == "true"
        assert not [d for d in server.objects("keyed").values() if f"Keyed {tag}" in d]
        assert sync.delete(f"/internal/events/{event_id}", params=params).status_code == 404  # unkeyed: gone

        booking_id = f"bk_keyed{tag}"
        held = {"user_id": user_id, "connection_id": cid, "calendar_id": calendar_id, "title": "Held",
                "start": start.strftime(z), "end": (start + timedelta(minutes=30)).strftime(z)}
        put = [sync.put(f"/internal/reservations/{booking_id}", json=held, headers=keyed("reserve")) for _ in range(2)]
        assert [p.status_code for p in put] == [201, 201]  # unkeyed, the repeat would answer 200
        assert put[1].json() == put[0].json() and put[1].headers.get("idempotent-replayed") == "true"
        assert len([r for r in await projection(database_url, cid) if r["booking_id"] == booking_id]) == 1
        freed = [sync.delete(f"/internal/reservations/{booking_id}", params=params, headers=keyed("release"))
                 for _ in range(2)]
        assert [f.status_code for f in freed] == [204, 204] and freed[1].headers.get("idempotent-replayed") == "true"
        assert not [r for r in await projection(database_url, cid) if r["booking_id"] == booking_id]
