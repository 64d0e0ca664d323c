"""Booking end to end: the whole platform as processes (gateway, connections, sync workers,
availability, booking), a real CalDAV server (Radicale) behind a unified calendar.

What a user relies on: slots leave out what is busy on the CalDAV calendar; a booking is busy at
once, is written to the CalDAV calendar and shows in availability; cancelling removes it; of 200
visitors racing for one slot exactly one wins and exactly one event lands on the CalDAV server; a
decided poll writes its event there too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.booking import PlatformOwner, sign_up_with_caldav
from calmesh_testing.radicale import Radicale
from calmesh_testing.wait import wait_for

pytestmark = pytest.mark.timeout(240)

AMS = ZoneInfo("Europe/Amsterdam")
ALL_WEEK = {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radicale]:
    server = Radicale(tmp_path_factory.mktemp("radicale")).start()
    yield server
    server.stop()

@pytest.fixture(scope="module")
async def owner(stack: Stack, radicale: Radicale) -> PlatformOwner:
    return await sign_up_with_caldav(stack.gateway_url, radicale)


def on(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=AMS)


def z(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def future_day(days: int) -> date:
    return (datetime.now(AMS) + timedelta(days=days)).date()


async def slots(gw: httpx.AsyncClient, owner: PlatformOwner, slug: str, day: date) -> list[str]:
    r = await gw.get(f"/api/v1/booking-pages/{slug}/slots",
                     params={"handle": owner.handle, "start": day.isoformat(), "end": day.isoformat()})
    assert r.status_code == 200, r.text
    return [s["start"] for s in r.json()["slots"]]


async def make_page(gw: httpx.AsyncClient, owner: PlatformOwner, slug: str, **extra: Any) -> dict[str, Any]:
    r = await gw.post("/api/v1/booking-pages", headers=owner.auth, json={
        "slug": slug, "calendar_slug": "work", "title": "Intro call", "duration_minutes": 30,
        "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def busy_in_availability(gw: httpx.AsyncClient, owner: PlatformOwner, start: str, end: str) -> bool:
    r = await gw.get("/api/v1/calendars/work/availability", headers=owner.auth, params={"start": start, "end": end})
    assert r.status_code == 200, r.text
    return any(b["start"] <= start and b["end"] >= end for b in r.json()["busy"])


async def test_booking_through_the_gateway_reaches_the_caldav_calendar(stack: Stack, owner: PlatformOwner) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        page = await make_page(gw, owner, "intro")
        assert page["public_url"].endswith(f"/{owner.handle}/intro")
        day = future_day(9)

        # An event on the CalDAV calendar, synced, is left out of the slots.
        owner.radicale.put_event(owner.calendar, f"meeting-{uuid.uuid4().hex}", on(day, 10), on(day, 11), "Dentist")
        assert (await gw.post(f"/api/v1/connections/{owner.connection_id}/sync", headers=owner.auth)).status_code == 202

        async def dentist_gone() -> bool:
            offered = await slots(gw, owner, "intro", day)
            return z(on(day, 10)) not in offered and z(on(day, 10, 30)) not in offered

        await wait_for(dentist_gone, what="the synced CalDAV event to leave the slots")
        offered = await slots(gw, owner, "intro", day)
        assert z(on(day, 9, 30)) in offered and z(on(day, 11)) in offered

        # A visitor books through the gateway: busy in slots at once.
        t0 = time.monotonic()
        r = await gw.post("/api/v1/booking-pages/intro/book", params={"handle": owner.handle}, json={
            "start": z(on(day, 14)), "name": "Vic Visitor", "email": "vic@example.org", "timezone": "Europe/London"})
        assert r.status_code == 201, r.text
        booking = r.json()
        assert z(on(day, 14)) not in await slots(gw, owner, "intro", day)

        # The consumer writes it to the CalDAV server through sync; availability shows it busy.
        async def on_radicale() -> bool:
            return z(on(day, 14)) in owner.radicale_starts()

        await wait_for(on_radicale, what="the booking's event on Radicale")
        written_after = time.monotonic() - t0
        await wait_for(lambda: busy_in_availability(gw, owner, z(on(day, 14)), z(on(day, 14, 30))),
                       what="the booking in availability")
        busy_after = time.monotonic() - t0
        print(f"\nbooking event on the CalDAV server after {written_after * 1000:.0f} ms, "
              f"busy in availability after {busy_after * 1000:.0f} ms")
        async def event_id_kept() -> Any:
            got = (await gw.get(f"/api/v1/bookings/{booking['id']}", headers=owner.auth)).json()
            return got["status"] == "confirmed" and got["event_id"]

        assert (await wait_for(event_id_kept, what="sync's event id on the booking")).startswith("evt_")

        # Both sides are mailed (the owner's address came from the gateway's signup event).
        mail = stack.data_dir / "mail"

        async def mailed() -> bool:
            return (mail / f"{booking['id']}-confirmed-visitor.eml").exists() and \
                (mail / f"{booking['id']}-confirmed-owner.eml").exists()

        await wait_for(mailed, what="the confirmation mails")
        assert "METHOD:REQUEST" in (mail / f"{booking['id']}-confirmed-owner.eml").read_text()

        # The visitor cancels through the gateway with the signed link: event removed, slot free.
        path = booking["cancel_url"].split(stack.gateway_url, 1)[-1]
        path = path[path.index("/api/v1/"):]
        tampered = await gw.post(path.replace("sig=", "sig=x"))
        assert tampered.status_code == 403
        cancelled = await gw.post(path, json={"reason": "clash"})
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert z(on(day, 14)) in await slots(gw, owner, "intro", day)

        async def removed() -> bool:
            return z(on(day, 14)) not in owner.radicale_starts()

        await wait_for(removed, what="the event to leave Radicale")

        async def free_again() -> bool:
            return not await busy_in_availability(gw, owner, z(on(day, 14)), z(on(day, 14, 30)))

        await wait_for(free_again, what="availability to show the time free again")

        # The owner cancels with a book key; twice is the same answer.
        r = await gw.post("/api/v1/booking-pages/intro/book", params={"handle": owner.handle}, json={
            "start": z(on(day, 15)), "name": "Vic Visitor", "email": "vic@example.org"})
        second = r.json()["id"]
        book_auth = owner.book_auth
        c1 = await gw.post(f"/api/v1/bookings/{second}/cancel", headers=book_auth, json={})
        c2 = await gw.post(f"/api/v1/bookings/{second}/cancel", headers=book_auth, json={})
        assert c1.status_code == c2.status_code == 200 and c1.json() == c2.json()


@pytest.mark.parametrize("round_", [1, 2, 3])
async def test_two_hundred_visitors_race_for_one_slot_through_the_gateway(stack: Stack, owner: PlatformOwner,
                                                                           round_: int) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        if round_ == 1:
            await make_page(gw, owner, "race")
        day = future_day(20 + round_)
        target = z(on(day, 11))
        assert target in await slots(gw, owner, "race", day)
    # Each round comes from a loopback address of its own: public endpoints are limited per client
    # address, and the other tests of the session use 127.0.0.1.
    transport = httpx.AsyncHTTPTransport(local_address=f"127.0.{10 + round_}.1",
                                         limits=httpx.Limits(max_connections=200, max_keepalive_connections=200))
    async with httpx.AsyncClient(base_url=stack.gateway_url, transport=transport, timeout=60) as client:
        async def one(i: int) -> int:
            r = await client.post("/api/v1/booking-pages/race/book", params={"handle": owner.handle},
                                  json={"start": target, "name": f"Racer {i}", "email": f"racer{i}@example.org"})
            if r.status_code not in (201, 409):
                print(r.status_code, r.text[:300])
            return r.status_code

        codes = Counter(await asyncio.gather(*(one(i) for i in range(200))))
    assert codes == {201: 1, 409: 199}, codes

    async def one_event() -> bool:
        return owner.radicale_starts().count(target) == 1

    await wait_for(one_event, what="the winner's event on Radicale")
    await asyncio.sleep(1.0)  # nothing else trickles in
    assert owner.radicale_starts().count(target) == 1


async def test_a_decided_poll_writes_its_event_to_the_caldav_calendar(stack: Stack, owner: PlatformOwner) -> None:
    day = future_day(40)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        book_auth = owner.book_auth
        r = await gw.post("/api/v1/polls", headers=book_auth, json={
            "title": "Quarterly review", "duration_minutes": 60, "calendar_slug": "work",
            "options": [{"start": z(on(day, 9)), "end": z(on(day, 10))}, {"start": z(on(day, 13)), "end": z(on(day, 14))}]})
        assert r.status_code == 201, r.text
        poll = r.json()
        a, b = (o["id"] for o in poll["options"])
        vote_path = poll["vote_url"][poll["vote_url"].index("/api/v1/"):]
        for name, choices in (("Ann", {a: "yes", b: "maybe"}), ("Ben", {a: "no", b: "yes"}), ("Cas", {b: "yes"})):
            v = await gw.post(vote_path, json={"name": name, "choices": choices})
            assert v.status_code == 201, v.text
        overlap = (await gw.get(f"/api/v1/polls/{poll['id']}/overlap", headers=owner.auth)).json()
        assert overlap["best_option_id"] == b
        d = await gw.post(f"/api/v1/polls/{poll['id']}/decide", headers=book_auth, json={"option_id": b})
        assert d.status_code == 200, d.text
        assert d.json()["status"] == "decided" and d.json()["event_id"].startswith("evt_")
        assert z(on(day, 13)) in owner.radicale_starts()  # written before the answer
        late = await gw.post(vote_path, json={"name": "Dee", "choices": {a: "yes"}})
        assert late.status_code == 409 and late.json()["code"] == "poll_closed"
