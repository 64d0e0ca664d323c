"""No write that can never succeed (issue 12, item 6), against the booking service with fakes of
connections and sync:

- a booking page on a calendar with no writable source (only iCal feeds) is refused with 422
  `no_writable_source`, on creation and on a PATCH of `calendar_slug`;
- a provider write that fails for good (sync: the credentials refused, the calendar gone) ends in
  `calendar_write: "failed"` with the reason on the booking and `booking.calendar_write_failed`
  (the webhooks service delivers it as `connection.error`), after one attempt: no retries;
- a write that succeeds shows `calendar_write: "written"`;
- connections asks booking which pages use a calendar (`GET /internal/pages`).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from calmesh_common.events import decode_envelope
from calmesh_testing.booking import BookingHarness, User

pytestmark = pytest.mark.timeout(120)

ALL_WEEK = {d: [["09:00", "12:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def page_body(slug: str, calendar_slug: str = "work") -> dict[str, Any]:
    return {"slug": slug, "calendar_slug": calendar_slug, "title": "Intro call", "duration_minutes": 30,
            "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK}


async def first_slot(bk: BookingHarness, user: User, slug: str, days: int) -> str:
    day = (datetime.now(UTC) + timedelta(days=days)).date().isoformat()
    r = await bk.client.get(f"/api/v1/booking-pages/{slug}/slots",
                            params={"handle": user.handle, "start": day, "end": day})
    assert r.status_code == 200, r.text
    return str(r.json()["slots"][0]["start"])


async def book(bk: BookingHarness, user: User, slug: str, start: str) -> dict[str, Any]:
    r = await bk.client.post(f"/api/v1/booking-pages/{slug}/book", params={"handle": user.handle},
                             json={"start": start, "name": "Vera Visitor", "email": "vera@example.org"})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def settled(bk: BookingHarness, user: User, booking_id: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = (await bk.client.get(f"/api/v1/bookings/{booking_id}", headers=user.headers)).json()
        if doc["calendar_write"] != "pending":
            return dict(doc)
        if time.monotonic() > deadline:
            raise AssertionError(f"the calendar write never settled: {doc}")
        await asyncio.sleep(0.05)


async def events_of(bk: BookingHarness, booking_id: str, type_: str) -> list[Any]:
    async with bk.pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT envelope FROM {bk.schema}.events WHERE stream_id = $1 AND type = $2",
                                booking_id, type_)
    return [decode_envelope(bytes(r["envelope"])) for r in rows]


async def test_a_page_on_a_calendar_with_no_writable_source_is_refused(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    bk.fake.add_calendar(ann.user_id, "feeds", read_only=True)  # an iCal subscription only
    r = await bk.client.post("/api/v1/booking-pages", json=page_body("intro", "feeds"), headers=ann.headers)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "no_writable_source"
    assert r.json()["errors"][0]["field"] == "calendar_slug"

    ok = await bk.client.post("/api/v1/booking-pages", json=page_body("intro"), headers=ann.headers)
    assert ok.status_code == 201, ok.text
    moved = await bk.client.patch("/api/v1/booking-pages/intro", json={"calendar_slug": "feeds"}, headers=ann.headers)
    assert moved.status_code == 422 and moved.json()["code"] == "no_writable_source", moved.text
    assert (await bk.client.get("/api/v1/booking-pages/intro", headers=ann.headers)).json()["calendar_slug"] == "work"


async def test_written_then_refused_credentials_end_in_failed_after_one_attempt(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    assert (await bk.client.post("/api/v1/booking-pages", json=page_body("intro"), headers=ann.headers)).status_code == 201

    good = await book(bk, ann, "intro", await first_slot(bk, ann, "intro", 20))
    done = await settled(bk, ann, good["id"])
    assert done["calendar_write"] == "written" and done["event_id"] and done["calendar_write_error"] is None

    attempts = bk.fake.write_attempts
    # Sync's answer when the provider refuses the connection's credentials (401/403).
    bk.fake.fail_writes.append((409, "connection_unavailable"))
    refused = await book(bk, ann, "intro", await first_slot(bk, ann, "intro", 21))
    failed = await settled(bk, ann, refused["id"])
    assert failed["status"] == "confirmed"  # the booking stands
    assert failed["calendar_write"] == "failed" and failed["event_id"] is None
    assert "connection_unavailable" in failed["calendar_write_error"]
    [event] = await events_of(bk, refused["id"], "booking.calendar_write_failed.v1")
    assert event.user_id == ann.user_id
    await asyncio.sleep(3.0)  # the consumer's first redelivery would come after 1 s
    assert bk.fake.write_attempts == attempts + 1  # one try, no retries
    assert len(await events_of(bk, refused["id"], "booking.calendar_write_failed.v1")) == 1
    # The booking's time stays taken in CalMesh.
    assert refused["start"] not in [s["start"] for s in (await bk.client.get(
        "/api/v1/booking-pages/intro/slots", params={"handle": ann.handle, "start": refused["start"][:10],
                                                     "end": refused["start"][:10]})).json()["slots"]]


async def test_a_calendar_gone_at_the_provider_fails_for_good(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    assert (await bk.client.post("/api/v1/booking-pages", json=page_body("intro"), headers=ann.headers)).status_code == 201
    bk.fake.fail_writes.append((422, "calendar_gone"))
    b = await book(bk, ann, "intro", await first_slot(bk, ann, "intro", 22))
    failed = await settled(bk, ann, b["id"])
    assert failed["calendar_write"] == "failed" and "calendar_gone" in failed["calendar_write_error"]
    listed = (await bk.client.get("/api/v1/bookings", headers=ann.headers)).json()["data"]
    assert [x["calendar_write"] for x in listed if x["id"] == b["id"]] == ["failed"]


async def test_a_passing_failure_stays_pending_and_is_retried(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    assert (await bk.client.post("/api/v1/booking-pages", json=page_body("intro"), headers=ann.headers)).status_code == 201
    bk.fake.fail_writes.append(503)
    b = await book(bk, ann, "intro", await first_slot(bk, ann, "intro", 23))
    first = (await bk.client.get(f"/api/v1/bookings/{b['id']}", headers=ann.headers)).json()
    assert first["calendar_write"] in ("pending", "written")
    assert (await settled(bk, ann, b["id"]))["calendar_write"] == "written"


async def test_connections_can_ask_which_pages_use_a_calendar(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    for slug in ("b-page", "a-page"):
        assert (await bk.client.post("/api/v1/booking-pages", json=page_body(slug), headers=ann.headers)).status_code == 201
    r = await bk.client.get("/internal/pages", params={"user_id": ann.user_id, "calendar_slug": "work"})
    assert r.status_code == 200 and r.json() == {"data": [{"slug": "a-page"}, {"slug": "b-page"}]}
    none = await bk.client.get("/internal/pages", params={"user_id": ann.user_id, "calendar_slug": "other"})
    assert none.json() == {"data": []}
    anonymous = await bk.client.get("/internal/pages", params={"user_id": ann.user_id, "calendar_slug": "work"},
                                    headers={"x-calmesh-internal-secret": "wrong"})
    assert anonymous.status_code in (401, 403)
