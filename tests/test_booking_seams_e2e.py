"""Busy at once, one slot across pages, holds and rescheduling, end to end: the whole platform as
processes (gateway, connections, sync workers, availability, booking, webhooks) and a real CalDAV
server (Radicale) behind the unified calendar.

What a user relies on (docs/api-guide.md, "Consistency: at once, exactly once", "Holds", "Rescheduling"):
- the instant a booking answers 201, availability shows the time busy, the events list holds it with
  its `booking_id`, and another page on the same calendar no longer offers it — read immediately, no
  polling; the instant a cancel answers 200, all of them show it free again;
- 100 visitors racing through two pages of one calendar for the same slot: one 201, 99 × 409, no
  5xx, and one event on the CalDAV server — several rounds;
- a hold is busy in availability at once;
- a reschedule moves the CalDAV event in place (same UID, same object) and a `booking.rescheduled`
  webhook carries the previous times.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.booking import PlatformOwner, sign_up_with_caldav
from calmesh_testing.radicale import Radicale
from calmesh_testing.receiver import Receiver
from calmesh_testing.servers import serve
from calmesh_testing.wait import wait_for

pytestmark = pytest.mark.timeout(300)

AMS = ZoneInfo("Europe/Amsterdam")
ALL_WEEK = {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radicale]:
    server = Radicale(tmp_path_factory.mktemp("radicale-seams")).start()
    yield server
    server.stop()


# The free plan allows two booking pages: one owner per pair of pages.
@pytest.fixture(scope="module")
async def owner(stack: Stack, radicale: Radicale) -> PlatformOwner:
    return await sign_up_with_caldav(stack.gateway_url, radicale)


@pytest.fixture(scope="module")
async def racing_owner(stack: Stack, radicale: Radicale) -> PlatformOwner:
    return await sign_up_with_caldav(stack.gateway_url, radicale)


@pytest.fixture(scope="module")
async def other_owner(stack: Stack, radicale: Radicale) -> PlatformOwner:
    return await sign_up_with_caldav(stack.gateway_url, radicale)

def on(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=AMS)


def z(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def future_day(days: int) -> date:
    return (datetime.now(AMS) + timedelta(days=days)).date()


async def make_page(gw: httpx.AsyncClient, owner: PlatformOwner, slug: str) -> None:
    r = await gw.post("/api/v1/booking-pages", headers=owner.auth, json={
        "slug": slug, "calendar_slug": "work", "title": "Intro call", "duration_minutes": 30,
        "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK})
    assert r.status_code == 201, r.text


async def offered(gw: httpx.AsyncClient, owner: PlatformOwner, slug: str, day: date) -> list[str]:
    r = await gw.get(f"/api/v1/booking-pages/{slug}/slots",
                     params={"handle": owner.handle, "start": day.isoformat(), "end": day.isoformat()})
    assert r.status_code == 200, r.text
    return [s["start"] for s in r.json()["slots"]]


async def busy(gw: httpx.AsyncClient, owner: PlatformOwner, start: str, end: str) -> bool:
    r = await gw.get("/api/v1/calendars/work/availability", headers=owner.auth, params={"start": start, "end": end})
    assert r.status_code == 200, r.text
    return any(b["start"] <= start and b["end"] >= end for b in r.json()["busy"])


async def events(gw: httpx.AsyncClient, owner: PlatformOwner, start: str, end: str) -> list[dict[str, Any]]:
    r = await gw.get("/api/v1/calendars/work/events", headers=owner.auth, params={"start": start, "end": end})
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


async def test_booked_time_is_busy_everywhere_at_once_and_free_at_once_after_cancelling(
        stack: Stack, owner: PlatformOwner) -> None:
    day = future_day(11)
    s, e = z(on(day, 10)), z(on(day, 10, 30))
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        await make_page(gw, owner, "seams-a")
        await make_page(gw, owner, "seams-b")
        assert s in await offered(gw, owner, "seams-b", day)
        assert not await busy(gw, owner, s, e)
        r = await gw.post("/api/v1/booking-pages/seams-a/book", params={"handle": owner.handle},
                          json={"start": s, "name": "Ida Instant", "email": "ida@example.org"})
        assert r.status_code == 201, r.text
        booking = r.json()
        # Immediately, no polling: availability, events, the other page.
        assert await busy(gw, owner, s, e)
        listed = [ev for ev in await events(gw, owner, s, e) if ev["booking_id"] == booking["id"]]
        assert len(listed) == 1 and listed[0]["start"] == s and listed[0]["end"] == e
        assert s not in await offered(gw, owner, "seams-b", day)

        # The provider write fills in that same event: one event, with the booking's id, on Radicale.
        await wait_for(lambda: _async(s in owner.radicale_starts()), what="the booking's event on Radicale")

        async def filled() -> bool:
            found = [ev for ev in await events(gw, owner, s, e) if ev["booking_id"] == booking["id"]]
            return len(found) == 1 and found[0]["id"] == listed[0]["id"]

        await wait_for(filled, what="the written event to be the same event")
        files = [t for t in owner.radicale.event_files(owner.calendar) if booking["id"] in t]
        assert len(files) == 1 and f"UID:{booking['id']}@calmesh.xyz" in files[0].replace("\r\n ", "")

        c = await gw.post(f"/api/v1/bookings/{booking['id']}/cancel", headers=owner.book_auth, json={})
        assert c.status_code == 200, c.text
        assert not await busy(gw, owner, s, e)
        assert not [ev for ev in await events(gw, owner, s, e) if ev["booking_id"] == booking["id"]]
        assert s in await offered(gw, owner, "seams-b", day)
        await wait_for(lambda: _async(s not in owner.radicale_starts()), what="the event to leave Radicale")


async def _async(value: bool) -> bool:
    return value


@pytest.mark.parametrize("round_", [1, 2, 3])
async def test_a_hundred_visitors_through_two_pages_get_one_booking(stack: Stack, racing_owner: PlatformOwner,
                                                                    round_: int) -> None:
    owner = racing_owner
    day = future_day(30 + round_)
    target = z(on(day, 11))
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        if round_ == 1:
            await make_page(gw, owner, "race-a")
            await make_page(gw, owner, "race-b")
        assert target in await offered(gw, owner, "race-a", day)
    # A loopback address of its own per round: public endpoints are limited per client address.
    transport = httpx.AsyncHTTPTransport(local_address=f"127.0.{40 + round_}.1",
                                         limits=httpx.Limits(max_connections=100, max_keepalive_connections=100))
    async with httpx.AsyncClient(base_url=stack.gateway_url, transport=transport, timeout=60) as client:
        async def one(i: int) -> int:
            page = "race-a" if i % 2 else "race-b"
            r = await client.post(f"/api/v1/booking-pages/{page}/book", params={"handle": owner.handle},
                                  json={"start": target, "name": f"Racer {i}", "email": f"racer{i}@example.org"})
            if r.status_code not in (201, 409):
                print(r.status_code, r.text[:300])
            return r.status_code

        codes = Counter(await asyncio.gather(*(one(i) for i in range(100))))
    assert codes == {201: 1, 409: 99}, codes
    await wait_for(lambda: _async(owner.radicale_starts().count(target) == 1), what="the winner's event on Radicale")
    await asyncio.sleep(1.0)  # nothing else trickles in
    assert owner.radicale_starts().count(target) == 1


async def test_a_hold_is_busy_in_availability_at_once(stack: Stack, other_owner: PlatformOwner) -> None:
    owner = other_owner
    day = future_day(12)
    s, e = z(on(day, 13)), z(on(day, 13, 30))
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        await make_page(gw, owner, "holds")
        r = await gw.post("/api/v1/booking-pages/holds/holds", params={"handle": owner.handle}, json={"start": s})
        assert r.status_code == 201, r.text
        held = r.json()
        assert held["id"].startswith("hold_")
        assert await busy(gw, owner, s, e)
        assert s not in await offered(gw, owner, "holds", day)
        other = await gw.post("/api/v1/booking-pages/holds/book", params={"handle": owner.handle},
                              json={"start": s, "name": "Nick", "email": "nick@example.org"})
        assert other.status_code == 409 and other.json()["code"] == "slot_unavailable"
        released = await gw.delete(f"/api/v1/booking-pages/holds/holds/{held['id']}", params={"handle": owner.handle})
        assert released.status_code == 204
        assert not await busy(gw, owner, s, e)
        read_key = await gw.post("/api/v1/booking-pages/holds/holds", params={"handle": owner.handle},
                                 json={"start": s}, headers=owner.auth)
        assert read_key.status_code == 201  # a full key may hold too


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    r = Receiver()
    async with serve(r) as url:
        yield r, url


async def test_a_reschedule_moves_the_caldav_event_in_place_and_sends_the_webhook(
        stack: Stack, other_owner: PlatformOwner, receiver: tuple[Receiver, str]) -> None:
    owner = other_owner
    rec, url = receiver
    day = future_day(13)
    s0, s1 = z(on(day, 9)), z(on(day, 15))
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        w = await gw.post("/api/v1/webhooks", headers=owner.auth,
                          json={"url": f"{url}/hooks", "event_types": ["booking.rescheduled"]})
        assert w.status_code == 201, w.text
        await make_page(gw, owner, "moves")
        r = await gw.post("/api/v1/booking-pages/moves/book", params={"handle": owner.handle},
                          json={"start": s0, "name": "Rita Resched", "email": "rita@example.org"})
        assert r.status_code == 201, r.text
        booking = r.json()
        await wait_for(lambda: _async(s0 in owner.radicale_starts()), what="the booking's event on Radicale")

        async def event_id() -> Any:
            return (await gw.get(f"/api/v1/bookings/{booking['id']}", headers=owner.auth)).json()["event_id"]

        await wait_for(event_id, what="sync's event id on the booking")
        before = [t for t in owner.radicale.event_files(owner.calendar) if booking["id"] in t]
        assert len(before) == 1

        path = booking["reschedule_url"][booking["reschedule_url"].index("/api/v1/"):]
        cancel_sig = booking["cancel_url"].split("?", 1)[1]
        assert (await gw.post(path.split("?")[0] + "?" + cancel_sig, json={"start": s1})).status_code == 403
        assert (await gw.post(path.split("?")[0], json={"start": s1})).status_code == 401
        moved = await gw.post(path, json={"start": s1})
        assert moved.status_code == 200, moved.text
        assert moved.json()["id"] == booking["id"] and moved.json()["start"] == s1
        # Old time free and new time busy at once.
        assert not await busy(gw, owner, s0, z(on(day, 9, 30)))
        assert await busy(gw, owner, s1, z(on(day, 15, 30)))

        await wait_for(lambda: _async(s1 in owner.radicale_starts() and s0 not in owner.radicale_starts()),
                       what="the CalDAV event to move")
        after = [t for t in owner.radicale.event_files(owner.calendar) if booking["id"] in t]
        assert len(after) == 1  # the same object, moved in place: same UID, SEQUENCE bumped
        assert f"UID:{booking['id']}@calmesh.xyz" in after[0].replace("\r\n ", "")
        assert "SEQUENCE:1" in after[0]

        await wait_for(lambda: _async(any(b["type"] == "booking.rescheduled" for b in rec.bodies)),
                       what="the booking.rescheduled webhook")
        hook = next(b for b in rec.bodies if b["type"] == "booking.rescheduled")
        assert hook["data"]["id"] == booking["id"]
        assert (hook["data"]["previous_start"], hook["data"]["previous_end"]) == (s0, z(on(day, 9, 30)))
        assert (hook["data"]["start"], hook["data"]["end"]) == (s1, z(on(day, 15, 30)))
