"""Busy at once, holds and rescheduling, against the booking service with fakes of connections and
sync (calmesh_testing.booking): the projection table is written by the fake exactly where sync's
reservation routes write the real one.

What a user relies on: a booking's time is in the merged-events projection (what availability,
conflicts and events read) before its 201, and leaves it before a cancel's 200; when sync cannot be
reached the visitor gets a 503 with Retry-After and the slot stays free; a booking whose process died
half-way is settled; a hold keeps a slot from every page until it expires or is released, and only
its own booking takes it; a reschedule moves the booking in place, with its own signed link.
"""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from calmesh_booking.handlers.bookings import settle_pending_bookings
from calmesh_common.ids import new_id
from calmesh_testing.booking import BookingHarness, User
from calmesh_testing.wait import wait_for

pytestmark = pytest.mark.timeout(180)

ALL_WEEK = {d: [["09:00", "12:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


@pytest.fixture(scope="module")
async def bk(database_url: str) -> AsyncIterator[BookingHarness]:
    harness = await BookingHarness(database_url, hold_seconds_override=2, booking_pending_timeout_seconds=1).start()
    yield harness
    await harness.stop()


def future_day(days: int) -> date:
    return (datetime.now(UTC) + timedelta(days=days)).date()


async def make_page(bk: BookingHarness, user: User, slug: str, **extra: Any) -> None:
    r = await bk.client.post("/api/v1/booking-pages", headers=user.headers, json={
        "slug": slug, "calendar_slug": "work", "title": "Intro call", "duration_minutes": 30,
        "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK, **extra})
    assert r.status_code == 201, r.text


async def slots(bk: BookingHarness, user: User, slug: str, day: date) -> list[str]:
    r = await bk.client.get(f"/api/v1/booking-pages/{slug}/slots",
                            params={"handle": user.handle, "start": day.isoformat(), "end": day.isoformat()})
    assert r.status_code == 200, r.text
    return [s["start"] for s in r.json()["slots"]]


async def book(bk: BookingHarness, user: User, slug: str, start: str, **extra: Any) -> httpx.Response:
    return await bk.client.post(f"/api/v1/booking-pages/{slug}/book", params={"handle": user.handle},
                                json={"start": start, "name": "Vera Visitor", "email": "vera@example.org", **extra})


async def hold(bk: BookingHarness, user: User, slug: str, start: str) -> httpx.Response:
    return await bk.client.post(f"/api/v1/booking-pages/{slug}/holds", params={"handle": user.handle},
                                json={"start": start})


async def projection_rows(bk: BookingHarness, reservation_id: str) -> list[dict[str, Any]]:
    async with bk.pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT * FROM {bk.projection} WHERE booking_id = $1", reservation_id)
    return [dict(r) for r in rows]

def z(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def path_of(url: str) -> str:
    return url[url.index("/api/v1/"):]


async def test_a_booking_is_in_the_projection_before_its_201_and_leaves_it_before_the_cancel_answers(
        bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann, "intro")
    await make_page(bk, ann, "other")
    day = future_day(12)
    first = (await slots(bk, ann, "intro", day))[0]
    r = await book(bk, ann, "intro", first)
    assert r.status_code == 201, r.text
    booking = r.json()
    assert booking["reschedule_url"].startswith(f"{bk.public_base_url}/api/v1/bookings/{booking['id']}/reschedule?exp=")
    # The very next read: the time is a busy row of the calendar's write target, marked with the booking.
    rows = await projection_rows(bk, booking["id"])
    assert len(rows) == 1 and z(rows[0]["start_at"]) == first and rows[0]["status"] == "confirmed"
    assert (rows[0]["connection_id"], rows[0]["calendar_id"]) == (
        ann.calendar.sources[0]["connection_id"], ann.calendar.sources[0]["calendar_id"])
    assert first not in await slots(bk, ann, "other", day)
    # The provider write fills in that same row (no second one).
    async def written() -> bool:
        found = await projection_rows(bk, booking["id"])
        return len(found) == 1 and found[0]["provider_event_id"] is not None
    await wait_for(written)
    got = (await bk.client.get(f"/api/v1/bookings/{booking['id']}", headers=ann.headers)).json()
    assert got["reschedule_url"] == booking["reschedule_url"] and got["cancel_url"] == booking["cancel_url"]

    c = await bk.client.post(f"/api/v1/bookings/{booking['id']}/cancel", headers=ann.headers, json={})
    assert c.status_code == 200
    rows = await projection_rows(bk, booking["id"])
    assert all(row["status"] == "cancelled" for row in rows)  # free at once; the provider delete follows
    assert first in await slots(bk, ann, "other", day)
    await wait_for(lambda: _empty(projection_rows(bk, booking["id"])))


async def _empty(rows: Any) -> bool:
    return not await rows


async def test_sync_away_gives_503_with_retry_after_and_the_slot_stays_free(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann, "intro")
    day = future_day(13)
    first = (await slots(bk, ann, "intro", day))[0]
    bk.fake.fail_reservations.append(503)
    r = await book(bk, ann, "intro", first)
    assert r.status_code == 503 and r.headers["retry-after"] and r.json()["code"] == "dependency_unavailable"
    assert first in await slots(bk, ann, "intro", day)
    listed = (await bk.client.get("/api/v1/bookings", headers=ann.headers)).json()["data"]
    assert listed == []
    again = await book(bk, ann, "intro", first)
    assert again.status_code == 201, again.text


async def test_a_booking_left_pending_by_a_dead_process_is_settled(bk: BookingHarness) -> None:
    """The reaper confirms a pending booking whose time reached the projection, and releases one
    whose time did not."""
    ann = await bk.new_user()
    await make_page(bk, ann, "intro")
    day = future_day(14)
    a_start, b_start = (await slots(bk, ann, "intro", day))[:2]
    ctx = bk.app.state.deps.extras["booking"]
    src = ann.calendar.sources[0]
    async with bk.pool.acquire() as conn:
        page_id = await conn.fetchval(f"SELECT id FROM {bk.schema}.pages WHERE user_id = $1 AND slug = 'intro'",
                                      ann.user_id)
        ids = []
        for start in (a_start, b_start):
            bid = new_id("bk")
            ids.append(bid)
            s = datetime.fromisoformat(start.replace("Z", "+00:00"))
            await conn.execute(
                f"INSERT INTO {bk.schema}.bookings (id, page_id, page_slug, user_id, calendar_slug, title, start_at,"
                " end_at, status, name, email, timezone, created_at)"
                " VALUES ($1, $2, 'intro', $3, 'work', 'Intro call', $4, $5, 'pending', 'Pat', 'pat@example.org',"
                " 'UTC', now() - interval '1 minute')",
                bid, page_id, ann.user_id, s, s + timedelta(minutes=30))
    # Pending bookings are busy already (the process died after its first transaction).
    assert a_start not in await slots(bk, ann, "intro", day)
    # The first one's time reached the projection before the process died; the second's did not.
    r = await bk.client.put(f"{bk.neighbours.url}/internal/reservations/{ids[0]}", headers={
        "x-calmesh-internal-secret": bk.secret}, json={
        "user_id": ann.user_id, "connection_id": src["connection_id"], "calendar_id": src["calendar_id"],
        "title": "Intro call: Pat", "start": a_start, "end": z(datetime.fromisoformat(a_start.replace("Z", "+00:00"))
                                                                 + timedelta(minutes=30))})
    assert r.status_code == 201
    await settle_pending_bookings(ctx)
    got = await bk.client.get(f"/api/v1/bookings/{ids[0]}", headers=ann.headers)
    assert got.status_code == 200 and got.json()["status"] == "confirmed"
    assert (await bk.client.get(f"/api/v1/bookings/{ids[1]}", headers=ann.headers)).status_code == 404
    offered = await slots(bk, ann, "intro", day)
    assert a_start not in offered and b_start in offered


async def test_a_hold_takes_the_slot_from_every_page_until_its_booking_confirms_it(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann, "intro", hold_minutes=30)
    await make_page(bk, ann, "other")
    day = future_day(15)
    first, second = (await slots(bk, ann, "intro", day))[:2]
    r = await hold(bk, ann, "intro", first)
    assert r.status_code == 201, r.text
    held = r.json()
    assert held["id"].startswith("hold_") and held["start"] == first and set(held) == {"id", "start", "end", "expires_at"}
    assert len(await projection_rows(bk, held["id"])) == 1  # busy in availability at once
    assert first not in await slots(bk, ann, "intro", day) and first not in await slots(bk, ann, "other", day)
    # Someone else's hold: another hold or a booking without it is refused.
    assert (await hold(bk, ann, "other", first)).json()["code"] == "slot_unavailable"
    plain = await book(bk, ann, "other", first)
    assert plain.status_code == 409 and plain.json()["code"] == "slot_unavailable"
    wrong = await book(bk, ann, "intro", second, hold_id=held["id"])
    assert wrong.status_code == 422 and wrong.json()["code"] == "invalid_hold"
    unknown = await book(bk, ann, "intro", first, hold_id="hold_nope")
    assert unknown.status_code == 422 and unknown.json()["code"] == "invalid_hold"
    # Its own booking takes it over: the hold's row gives way to the booking's in one step.
    confirmed = await book(bk, ann, "intro", first, hold_id=held["id"])
    assert confirmed.status_code == 201, confirmed.text
    assert await projection_rows(bk, held["id"]) == []
    assert len(await projection_rows(bk, confirmed.json()["id"])) == 1
    assert first not in await slots(bk, ann, "other", day)

    # Released: free again at once; an unknown hold is 404.
    r2 = (await hold(bk, ann, "intro", second)).json()
    gone = await bk.client.delete(f"/api/v1/booking-pages/intro/holds/{r2['id']}", params={"handle": ann.handle})
    assert gone.status_code == 204
    assert second in await slots(bk, ann, "other", day) and await projection_rows(bk, r2["id"]) == []
    missing = await bk.client.delete("/api/v1/booking-pages/intro/holds/hold_nope", params={"handle": ann.handle})
    assert missing.status_code == 404
    bad = await bk.client.post("/api/v1/booking-pages/intro/holds", params={"handle": ann.handle},
                               json={"start": "soon"})
    assert bad.status_code == 400
    out_of_range = await bk.client.patch("/api/v1/booking-pages/intro", headers=ann.headers, json={"hold_minutes": 61})
    assert out_of_range.status_code == 400


async def test_an_expired_hold_frees_the_slot_and_cannot_be_booked(bk: BookingHarness) -> None:
    """The harness makes every hold last 2 s (CALMESH_HOLD_SECONDS_OVERRIDE)."""
    ann = await bk.new_user()
    await make_page(bk, ann, "intro")
    day = future_day(16)
    first = (await slots(bk, ann, "intro", day))[0]
    held = (await hold(bk, ann, "intro", first)).json()
    assert first not in await slots(bk, ann, "intro", day)

    async def freed() -> bool:
        return first in await slots(bk, ann, "intro", day) and not await projection_rows(bk, held["id"])

    await wait_for(freed, timeout=15)
    late = await book(bk, ann, "intro", first, hold_id=held["id"])
    assert late.status_code == 409 and late.json()["code"] == "hold_expired"


async def test_reschedule_moves_the_booking_in_place_with_its_own_link(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann, "intro")
    day = future_day(17)
    s0, s1, s2, s3 = (await slots(bk, ann, "intro", day))[:4]
    booking = (await book(bk, ann, "intro", s0)).json()
    other = (await book(bk, ann, "intro", s3)).json()

    async def written() -> Any:
        return (await bk.client.get(f"/api/v1/bookings/{booking['id']}", headers=ann.headers)).json()["event_id"]

    event_id = await wait_for(written)
    url = path_of(booking["reschedule_url"])
    cancel_query = booking["cancel_url"].split("?", 1)[1]
    base = url.split("?", 1)[0]
    assert (await bk.client.post(base, json={"start": s1})).status_code == 401
    assert (await bk.client.post(f"{base}?{cancel_query}", json={"start": s1})).status_code == 403
    assert (await bk.client.post(url.replace("sig=", "sig=x"), json={"start": s1})).status_code == 403
    expired = await bk.client.post(f"{base}?exp=1000&sig=abc", json={"start": s1})
    assert expired.status_code == 403
    taken = await bk.client.post(url, json={"start": s3})
    assert taken.status_code == 409 and taken.json()["code"] == "slot_unavailable"
    assert (await bk.client.get(f"/api/v1/bookings/{booking['id']}", headers=ann.headers)).json()["start"] == s0

    moved = await bk.client.post(url, json={"start": s1})
    assert moved.status_code == 200, moved.text
    doc = moved.json()
    assert (doc["id"], doc["start"], doc["status"]) == (booking["id"], s1, "confirmed")
    # Old time free, new time busy, at once; the projection row moved (one row, same event).
    offered = await slots(bk, ann, "intro", day)
    assert s0 in offered and s1 not in offered
    rows = await projection_rows(bk, booking["id"])
    assert len(rows) == 1 and z(rows[0]["start_at"]) == s1 and rows[0]["event_id"] == event_id
    # The provider event is moved in place (the same event id, not deleted and created again).
    await wait_for(lambda: _async(any(m["id"] == event_id and m["start"] == s1 for m in bk.fake.moved)))
    assert event_id not in bk.fake.deleted
    # The owner may reschedule too, and the booking's own old time counts as free for it.
    back = await bk.client.post(f"/api/v1/bookings/{booking['id']}/reschedule", headers=ann.headers,
                                json={"start": s2})
    assert back.status_code == 200 and back.json()["start"] == s2
    # An updated invitation: same UID, SEQUENCE 1 then 2.
    await wait_for(lambda: _async((bk.mail_dir / f"{booking['id']}-rescheduled-2-visitor.eml").exists()))
    message = email.message_from_bytes((bk.mail_dir / f"{booking['id']}-rescheduled-1-visitor.eml").read_bytes(),
                                       policy=email.policy.default)
    ics = next(p.get_payload(decode=True).decode() for p in message.walk() if p.get_content_type() == "text/calendar")
    assert "SEQUENCE:1" in ics and f"UID:{booking['id']}@calmesh" in ics and "METHOD:REQUEST" in ics
    assert message["Subject"].startswith("Booking rescheduled:")
    # A cancelled booking cannot be rescheduled.
    await bk.client.post(f"/api/v1/bookings/{other['id']}/cancel", headers=ann.headers, json={})
    refused = await bk.client.post(f"/api/v1/bookings/{other['id']}/reschedule", headers=ann.headers,
                                   json={"start": s3})
    assert refused.status_code == 409 and refused.json()["code"] == "booking_cancelled"
    read_key = await bk.client.post(f"/api/v1/bookings/{booking['id']}/reschedule",
                                    headers=ann.with_scope("read").headers, json={"start": s0})
    assert read_key.status_code == 403


async def _async(value: bool) -> bool:
    return value


def _visitor_text(bk: BookingHarness, stem: str) -> str:
    message = email.message_from_bytes((bk.mail_dir / f"{stem}-visitor.eml").read_bytes(), policy=email.policy.default)
    return next(p.get_content() for p in message.walk() if p.get_content_type() == "text/plain")


async def test_the_confirmation_mail_links_a_page_that_reschedules_with_its_own_signature(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann, "intro")
    day = future_day(19)
    s0, s1 = (await slots(bk, ann, "intro", day))[:2]
    booking = (await book(bk, ann, "intro", s0)).json()
    await wait_for(lambda: _async((bk.mail_dir / f"{booking['id']}-confirmed-visitor.eml").exists()))
    text = _visitor_text(bk, f"{booking['id']}-confirmed")
    link = next(line.split("Need to reschedule? ", 1)[1] for line in text.splitlines()
                if line.startswith("Need to reschedule? "))
    parts = urlsplit(link)
    page_url = f"{parts.path}?{parts.query}"
    assert page_url.startswith(f"/{ann.handle}/intro?reschedule={booking['id']}&exp=")
    signed = page_url.split("&", 1)[1]
    # The page opened from the link moves this booking: its current time and the signed endpoint.
    page = await bk.client.get(page_url)
    assert page.status_code == 200
    assert "Reschedule your booking" in page.text and 'id="step-move"' in page.text
    config = page.text.split('<script id="calmesh-config" type="application/json">', 1)[1].split("</script>", 1)[0]
    moving = json.loads(config)["reschedule"]
    assert (moving["id"], moving["start"]) == (booking["id"], s0)
    assert moving["api"] == f"/api/v1/bookings/{booking['id']}/reschedule?{signed}"
    # What the page's script posts moves the booking.
    moved = await bk.client.post(moving["api"], json={"start": s1})
    assert moved.status_code == 200 and moved.json()["start"] == s1
    # The cancel link's signature does not open the reschedule page, nor a tampered one.
    cancel_signed = booking["cancel_url"].split("?", 1)[1]
    wrong = await bk.client.get(f"/{ann.handle}/intro?reschedule={booking['id']}&{cancel_signed}")
    assert wrong.status_code == 403 and "reschedule link is expired or not valid" in wrong.text
    tampered = await bk.client.get(page_url.replace("sig=", "sig=0"))
    assert tampered.status_code == 403
    # The moved booking's mail carries a reschedule link again.
    await wait_for(lambda: _async((bk.mail_dir / f"{booking['id']}-rescheduled-1-visitor.eml").exists()))
    assert f"/{ann.handle}/intro?reschedule={booking['id']}&exp=" in _visitor_text(bk, f"{booking['id']}-rescheduled-1")
    # Once cancelled, the link says so instead of offering times.
    await bk.client.post(f"/api/v1/bookings/{booking['id']}/cancel", headers=ann.headers, json={})
    gone = await bk.client.get(page_url)
    assert gone.status_code == 409 and "cancelled" in gone.text
