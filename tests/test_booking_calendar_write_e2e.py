"""No write that can never succeed (issue 12, item 6), end to end: the whole platform as processes
and a real CalDAV server (Radicale).

What a user relies on:
- a booking page on a unified calendar whose only source is an iCal feed is refused (422
  `no_writable_source`): its bookings could never be written to a calendar;
- the last writable source of a calendar that a booking page uses cannot be removed (409
  `last_writable_source`); once another writable source is there, it can;
- when the provider refuses the write for good (here: the CalDAV calendar was deleted), the booking
  stands, shows `calendar_write: "failed"` with the reason, and a `connection.error` webhook names the
  booking; nothing is retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
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
FEED = (b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//tests//EN\r\nBEGIN:VEVENT\r\nUID:feed-1\r\n"
        b"DTSTAMP:20260101T000000Z\r\nDTSTART:20300101T090000Z\r\nDTEND:20300101T100000Z\r\nSUMMARY:Feed\r\n"
        b"END:VEVENT\r\nEND:VCALENDAR\r\n")


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radicale]:
    server = Radicale(tmp_path_factory.mktemp("radicale-write")).start()
    yield server
    server.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    r = Receiver()
    r.on("/feed.ics", (200, {"content-type": "text/calendar"}, FEED))
    async with serve(r) as url:
        yield r, url

def page(slug: str, calendar_slug: str) -> dict[str, Any]:
    return {"slug": slug, "calendar_slug": calendar_slug, "title": "Intro call", "duration_minutes": 30,
            "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK}


async def test_no_page_without_a_writable_source_and_a_refused_write_fails_visibly(
        stack: Stack, radicale: Radicale, receiver: tuple[Receiver, str]) -> None:
    owner: PlatformOwner = await sign_up_with_caldav(stack.gateway_url, radicale)
    rec, url = receiver
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        hook = await gw.post("/api/v1/webhooks", headers=owner.auth,
                             json={"url": f"{url}/hooks", "event_types": ["connection.error"]})
        assert hook.status_code == 201, hook.text

        # An iCal feed only: no page on it.
        feed = await gw.post("/api/v1/connections/ical", headers=owner.auth, json={"url": f"{url}/feed.ics"})
        assert feed.status_code == 201, feed.text
        cal = await gw.post("/api/v1/calendars", headers=owner.auth, json={
            "slug": "feeds", "name": "Feeds", "timezone": "Europe/Amsterdam",
            "sources": [{"connection_id": feed.json()["id"]}]})
        assert cal.status_code == 201, cal.text
        refused = await gw.post("/api/v1/booking-pages", headers=owner.auth, json=page("feedpage", "feeds"))
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["code"] == "no_writable_source"

        # A page on `work` keeps its last writable source in place.
        made = await gw.post("/api/v1/booking-pages", headers=owner.auth, json=page("intro", "work"))
        assert made.status_code == 201, made.text
        moved = await gw.patch("/api/v1/booking-pages/intro", headers=owner.auth, json={"calendar_slug": "feeds"})
        assert moved.status_code == 422 and moved.json()["code"] == "no_writable_source", moved.text
        work = (await gw.get("/api/v1/calendars/work", headers=owner.auth)).json()
        [caldav_source] = work["sources"]
        blocked = await gw.delete(f"/api/v1/calendars/work/sources/{caldav_source['id']}", headers=owner.auth)
        assert blocked.status_code == 409, blocked.text
        assert blocked.json()["code"] == "last_writable_source" and "intro" in blocked.json()["detail"]
        # A read-only source may go (it is not the writable one).
        added = await gw.post("/api/v1/calendars/work/sources", headers=owner.auth,
                              json={"connection_id": feed.json()["id"]})
        assert added.status_code == 201, added.text
        gone = await gw.delete(f"/api/v1/calendars/work/sources/{added.json()['id']}", headers=owner.auth)
        assert gone.status_code == 204, gone.text

        # The CalDAV calendar is deleted at the provider: the next booking's write fails for good.
        assert httpx.request("DELETE", radicale.calendar_url(owner.calendar), auth=radicale.auth).status_code in (200, 204)
        day = (datetime.now(AMS) + timedelta(days=12)).date()
        start = datetime(day.year, day.month, day.day, 10, tzinfo=AMS).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        booked = await gw.post("/api/v1/booking-pages/intro/book", params={"handle": owner.handle},
                               json={"start": start, "name": "Fay Failed", "email": "fay@example.org"})
        assert booked.status_code == 201, booked.text
        booking_id = booked.json()["id"]

        async def settled() -> Any:
            doc = (await gw.get(f"/api/v1/bookings/{booking_id}", headers=owner.auth)).json()
            return doc if doc["calendar_write"] != "pending" else None

        doc = await wait_for(settled, what="the calendar write to settle")
        assert doc["status"] == "confirmed" and doc["calendar_write"] == "failed", doc
        assert doc["event_id"] is None and "gone" in doc["calendar_write_error"]

        def hooks_for_booking() -> list[dict[str, Any]]:
            return [b for b in rec.bodies if b["type"] == "connection.error" and b["data"].get("booking_id") == booking_id]

        async def delivered() -> Any:
            return hooks_for_booking()

        [error] = await wait_for(delivered, what="the connection.error webhook")
        assert error["data"]["connection_id"] == owner.connection_id and error["data"]["kind"] == "calendar_gone"
        # Still busy in CalMesh: the visitor's time is not offered again.
        r = await gw.get("/api/v1/booking-pages/intro/slots",
                         params={"handle": owner.handle, "start": day.isoformat(), "end": day.isoformat()})
        assert start not in [s["start"] for s in r.json()["slots"]]
        await asyncio.sleep(2.5)  # a retry would have come by now (the consumer's back-off starts at 1 s)
        assert len(hooks_for_booking()) == 1
        assert (await gw.get(f"/api/v1/bookings/{booking_id}", headers=owner.auth)).json()["calendar_write"] == "failed"
