"""The booking service over HTTP (as the gateway calls it), with fakes of connections and sync.

Busy time comes from a projection table with the columns of docs/contracts.md, written here as sync
would; the fake sync's event writes land there too.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from email.message import Message
from typing import Any

import httpx
import pytest

from calmesh_booking.domain import cancel_signature
from calmesh_booking.handlers.context import link_secret
from calmesh_testing.booking import BookingHarness, User, utc
from calmesh_testing.wait import wait_for

pytestmark = pytest.mark.timeout(120)

ALL_WEEK = {d: [["09:00", "12:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def future_day(days: int = 10) -> date:
    return (datetime.now(UTC) + timedelta(days=days)).date()


async def make_page(bk: BookingHarness, user: User, slug: str = "intro", **extra: Any) -> dict[str, Any]:
    body = {"slug": slug, "calendar_slug": "work", "title": "Intro call", "duration_minutes": 30,
            "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK, **extra}
    r = await bk.client.post("/api/v1/booking-pages", json=body, headers=user.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def slots(bk: BookingHarness, user: User, day: date, slug: str = "intro", tz: str | None = None) -> list[str]:
    params = {"handle": user.handle, "start": day.isoformat(), "end": day.isoformat()}
    if tz:
        params["tz"] = tz
    r = await bk.client.get(f"/api/v1/booking-pages/{slug}/slots", params=params)
    assert r.status_code == 200, r.text
    return [s["start"] for s in r.json()["slots"]]


async def book(bk: BookingHarness, user: User, start: str, slug: str = "intro", key: str | None = None,
               name: str = "Vera Visitor", mail: str = "vera@example.org") -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return await bk.client.post(f"/api/v1/booking-pages/{slug}/book", params={"handle": user.handle},
                                json={"start": start, "name": name, "email": mail, "timezone": "America/New_York"},
                                headers=headers)

def local_slots(day: date, hours: range, minutes: tuple[int, ...] = (0, 30), tz: str = "Europe/Amsterdam") -> list[str]:
    from zoneinfo import ZoneInfo

    out = []
    for hour in hours:
        for minute in minutes:
            dt = datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo(tz)).astimezone(UTC)
            out.append(dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return out


async def test_booking_page_crud_and_ownership(bk: BookingHarness) -> None:
    ann, bob = await bk.new_user(), await bk.new_user()
    page = await make_page(bk, ann, buffer_after_minutes=10,
                           date_overrides=[{"date": "2027-01-01", "hours": []}])
    assert page["id"].startswith("bp_")
    assert page["public_url"] == f"{bk.public_base_url}/{ann.handle}/intro"
    assert page["slot_interval_minutes"] == 30
    assert page["date_overrides"] == [{"date": "2027-01-01", "hours": []}]

    again = await bk.client.post("/api/v1/booking-pages", headers=ann.headers, json={
        "slug": "intro", "calendar_slug": "work", "title": "x", "duration_minutes": 30,
        "timezone": "UTC", "weekly_hours": {}})
    assert again.status_code == 409 and again.json()["code"] == "slug_taken"

    # The same slug for another user is fine; another user's page is a 404, never a 403.
    await make_page(bk, bob)
    assert (await bk.client.get("/api/v1/booking-pages/intro", headers=bob.headers)).json()["id"] != page["id"]
    await make_page(bk, ann, slug="ann-only")
    assert (await bk.client.get("/api/v1/booking-pages/ann-only", headers=bob.headers)).status_code == 404
    assert (await bk.client.delete("/api/v1/booking-pages/ann-only", headers=bob.headers)).status_code == 404

    no_cal = await bk.client.post("/api/v1/booking-pages", headers=ann.headers, json={
        "slug": "other", "calendar_slug": "nope", "title": "x", "duration_minutes": 30, "timezone": "UTC",
        "weekly_hours": {}})
    assert no_cal.status_code == 422 and no_cal.json()["code"] == "calendar_not_found"

    bad_type = await bk.client.post("/api/v1/booking-pages", headers=ann.headers, json={
        "slug": "other", "calendar_slug": "work", "title": "x", "duration_minutes": "30", "timezone": "UTC",
        "weekly_hours": {}})
    assert bad_type.status_code == 400 and bad_type.json()["errors"][0]["field"] == "duration_minutes"
    unknown = await bk.client.post("/api/v1/booking-pages", headers=ann.headers, json={
        "slug": "other", "calendar_slug": "work", "title": "x", "duration_minutes": 30, "timezone": "UTC",
        "weekly_hours": {}, "colour": "red"})
    assert unknown.status_code == 400
    bad_hours = await bk.client.post("/api/v1/booking-pages", headers=ann.headers, json={
        "slug": "other", "calendar_slug": "work", "title": "x", "duration_minutes": 30, "timezone": "UTC",
        "weekly_hours": {"mon": [["17:00", "09:00"]]}})
    assert bad_hours.status_code == 422 and bad_hours.json()["errors"][0]["field"] == "weekly_hours.mon[0]"
    bad_tz = await bk.client.post("/api/v1/booking-pages", headers=ann.headers, json={
        "slug": "other", "calendar_slug": "work", "title": "x", "duration_minutes": 30, "timezone": "Nowhere/City",
        "weekly_hours": {}})
    assert bad_tz.status_code == 422
    malformed = await bk.client.post("/api/v1/booking-pages", headers={**ann.headers, "content-type": "application/json"},
                                     content=b"{nope")
    assert malformed.status_code == 400 and "traceback" not in malformed.text.lower()

    # A key without the full scope may read pages but not change them.
    assert (await bk.client.get("/api/v1/booking-pages", headers=ann.with_scope("read").headers)).status_code == 200
    denied = await bk.client.patch("/api/v1/booking-pages/intro", headers=ann.with_scope("book").headers,
                                   json={"title": "x"})
    assert denied.status_code == 403 and denied.json()["required_scope"] == "full"

    # The free plan allows two booking pages.
    third = await bk.client.post("/api/v1/booking-pages", headers=ann.headers, json={
        "slug": "third", "calendar_slug": "work", "title": "x", "duration_minutes": 30, "timezone": "UTC",
        "weekly_hours": {}})
    assert third.status_code == 402 and third.json()["code"] == "plan_limit_reached"

    patched = await bk.client.patch("/api/v1/booking-pages/intro", headers=ann.headers,
                                    json={"title": "Longer call", "duration_minutes": 60, "slug": "longer"})
    assert patched.status_code == 200, patched.text
    doc = patched.json()
    assert (doc["title"], doc["duration_minutes"], doc["slot_interval_minutes"], doc["slug"]) == (
        "Longer call", 60, 60, "longer")
    assert doc["public_url"].endswith(f"/{ann.handle}/longer")
    listed = await bk.client.get("/api/v1/booking-pages", params={"limit": 1}, headers=ann.headers)
    assert len(listed.json()["data"]) == 1 and listed.json()["next_cursor"]
    rest = await bk.client.get("/api/v1/booking-pages", params={"cursor": listed.json()["next_cursor"]},
                               headers=ann.headers)
    assert {p["slug"] for p in listed.json()["data"] + rest.json()["data"]} == {"longer", "ann-only"}
    assert (await bk.client.delete("/api/v1/booking-pages/longer", headers=ann.headers)).status_code == 204
    assert (await bk.client.get("/api/v1/booking-pages/longer", headers=ann.headers)).status_code == 404


async def test_slots_subtract_busy_time_from_the_projection(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann, buffer_before_minutes=15)
    day = future_day(12)
    # 10:00–10:30 Amsterdam busy: its own slot goes, and with 15 minutes of buffer before each slot,
    # 10:30 too ([10:15, 11:00) overlaps it); 09:30 ends as the event starts and stays.
    from zoneinfo import ZoneInfo

    ams = ZoneInfo("Europe/Amsterdam")
    at = lambda h, m=0: datetime(day.year, day.month, day.day, h, m, tzinfo=ams)  # noqa: E731
    await bk.fake.add_event(ann.calendar, at(10), at(10, 30))
    await bk.fake.add_event(ann.calendar, at(11), at(11, 30), transparency="free")  # not busy
    await bk.fake.add_event(ann.calendar, at(11, 30), at(12), status="cancelled")  # not busy
    expected = local_slots(day, range(9, 10)) + local_slots(day, range(11, 12))
    assert await slots(bk, ann, day) == expected

    # An all-day event blocks the whole day in the calendar's timezone.
    next_day = day + timedelta(days=1)
    await bk.fake.add_event(ann.calendar, datetime.combine(next_day, datetime.min.time(), UTC) - timedelta(hours=14),
                            datetime.combine(next_day, datetime.min.time(), UTC) + timedelta(hours=36),
                            all_day=True, start_date=next_day, end_date=next_day + timedelta(days=1))
    assert await slots(bk, ann, next_day) == []

    # The same slots seen from Tokyo fall on the visitor's calendar day (17:00–20:00 JST in winter or
    # 16:00–19:00 in summer), and the visitor's timezone is echoed.
    r = await bk.client.get("/api/v1/booking-pages/intro/slots", params={
        "handle": ann.handle, "start": day.isoformat(), "end": day.isoformat(), "tz": "Asia/Tokyo"})
    assert r.json()["timezone"] == "Asia/Tokyo"
    assert [s["start"] for s in r.json()["slots"]] == expected

    too_long = await bk.client.get("/api/v1/booking-pages/intro/slots", params={
        "handle": ann.handle, "start": "2027-01-01", "end": "2028-01-02"})
    assert too_long.status_code == 422 and too_long.json()["code"] == "range_too_long"
    backwards = await bk.client.get("/api/v1/booking-pages/intro/slots", params={
        "handle": ann.handle, "start": "2027-01-02", "end": "2027-01-01"})
    assert backwards.status_code == 422
    nobody = await bk.client.get("/api/v1/booking-pages/intro/slots", params={
        "handle": "nobody-here", "start": "2027-01-01", "end": "2027-01-01"})
    assert nobody.status_code == 404


def _mail(bk: BookingHarness, stem: str) -> Message:
    return email.message_from_bytes((bk.mail_dir / f"{stem}.eml").read_bytes(), policy=email.policy.default)


def _ics(msg: Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/calendar":
            return part.get_payload(decode=True).decode()
    raise AssertionError("no text/calendar part")


async def test_book_blocks_the_slot_writes_the_event_mails_and_cancels(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann)
    day = future_day(14)
    first = (await slots(bk, ann, day))[0]

    r = await book(bk, ann, first)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["status"] == "confirmed" and created["start"] == first
    assert created["end"] == (utc(first) + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert created["cancel_url"].startswith(f"{bk.public_base_url}/api/v1/bookings/{created['id']}/cancel?exp=")
    # Busy at once, before any calendar write.
    assert first not in await slots(bk, ann, day)
    again = await book(bk, ann, first, name="Someone Else", mail="else@example.org")
    assert again.status_code == 409 and again.json()["code"] == "slot_unavailable"
    off_grid = await book(bk, ann, first.replace(":00:00Z", ":10:00Z"))
    assert off_grid.status_code == 409

    # The consumer writes the event through sync and stores its id.
    async def written() -> Any:
        got = await bk.client.get(f"/api/v1/bookings/{created['id']}", headers=ann.headers)
        return got.json()["event_id"]

    event_id = await wait_for(written)
    assert [e["id"] for e in bk.fake.created if e["start"] == first] == [event_id]
    event = next(e for e in bk.fake.created if e["id"] == event_id)
    assert event["attendees"] == ["vera@example.org"] and event["calendar_id"] == "personal"

    # Both sides get a confirmation with an iCalendar REQUEST.
    await wait_for(lambda: _ready(bk, f"{created['id']}-confirmed-owner"))
    visitor = _mail(bk, f"{created['id']}-confirmed-visitor")
    owner = _mail(bk, f"{created['id']}-confirmed-owner")
    assert visitor["To"] == "Vera Visitor <vera@example.org>"
    assert owner["To"].endswith(f"<{ann.handle}@example.com>")
    ics = _ics(visitor)
    assert "METHOD:REQUEST" in ics and f"UID:{created['id']}@calmesh" in ics
    text = visitor.get_body(("plain",)).get_content()
    assert f"/{ann.handle}/intro?booking={created['id']}&exp=" in text

    # The owner cancels; a second cancel answers the same; the slot is free again at once.
    c1 = await bk.client.post(f"/api/v1/bookings/{created['id']}/cancel", json={"reason": "ill"}, headers=ann.headers)
    assert c1.status_code == 200 and c1.json()["status"] == "cancelled" and c1.json()["cancelled_by"] == "owner"
    c2 = await bk.client.post(f"/api/v1/bookings/{created['id']}/cancel", headers=ann.headers)
    assert c2.status_code == 200 and c2.json() == c1.json()
    assert first in await slots(bk, ann, day)
    await wait_for(lambda: _async(event_id in bk.fake.deleted))
    await wait_for(lambda: _ready(bk, f"{created['id']}-cancelled-visitor"))
    assert "METHOD:CANCEL" in _ics(_mail(bk, f"{created['id']}-cancelled-visitor"))

    # Someone else's booking is a 404.
    bob = await bk.new_user()
    assert (await bk.client.get(f"/api/v1/bookings/{created['id']}", headers=bob.headers)).status_code == 404
    assert (await bk.client.post(f"/api/v1/bookings/{created['id']}/cancel", headers=bob.headers)).status_code == 404


async def _ready(bk: BookingHarness, stem: str) -> bool:
    return (bk.mail_dir / f"{stem}.eml").exists()


async def _async(value: bool) -> bool:
    return value


async def test_idempotency_key_replays_the_first_answer(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann)
    day = future_day(15)
    first, second = (await slots(bk, ann, day))[:2]
    r1 = await book(bk, ann, first, key="retry-1")
    r2 = await book(bk, ann, first, key="retry-1")
    assert r1.status_code == r2.status_code == 201
    assert r1.json() == r2.json() and r2.headers.get("idempotent-replayed") == "true"
    different = await book(bk, ann, second, key="retry-1")
    assert different.status_code == 422 and different.json()["code"] == "idempotency_key_reused"
    listed = await bk.client.get("/api/v1/bookings", headers=ann.headers)
    assert len(listed.json()["data"]) == 1


async def test_visitor_cancel_with_good_tampered_and_expired_links(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann)
    day = future_day(16)
    starts = await slots(bk, ann, day)
    a = (await book(bk, ann, starts[0])).json()
    b = (await book(bk, ann, starts[1])).json()
    path = lambda url: url.split(bk.public_base_url, 1)[1]  # noqa: E731

    # Tampered: another booking's id with this signature, a changed exp, a changed sig.
    exp_a = a["cancel_url"].split("exp=")[1].split("&")[0]
    sig_a = a["cancel_url"].split("sig=")[1]
    for url in (
        f"/api/v1/bookings/{b['id']}/cancel?exp={exp_a}&sig={sig_a}",
        f"/api/v1/bookings/{a['id']}/cancel?exp={int(exp_a) + 3600}&sig={sig_a}",
        f"/api/v1/bookings/{a['id']}/cancel?exp={exp_a}&sig={sig_a[:-2]}xy",
        f"/api/v1/bookings/{a['id']}/cancel?exp={exp_a}",
    ):
        r = await bk.client.post(url)
        assert r.status_code == 403, (url, r.text)
        assert r.json()["code"] == "invalid_signature"
    # Expired: properly signed, but its time has passed.
    past = int(time.time()) - 60
    expired_sig = cancel_signature(link_secret(bk.settings), a["id"], past)
    r = await bk.client.post(f"/api/v1/bookings/{a['id']}/cancel?exp={past}&sig={expired_sig}")
    assert r.status_code == 403
    # The booking is untouched by all that.
    assert (await bk.client.get(f"/api/v1/bookings/{a['id']}", headers=ann.headers)).json()["status"] == "confirmed"

    # Good: no credentials needed; twice gives the same answer.
    good = await bk.client.post(path(a["cancel_url"]), json={"reason": "clash"})
    assert good.status_code == 200, good.text
    assert good.json()["status"] == "cancelled" and good.json()["cancelled_by"] == "visitor"
    twice = await bk.client.post(path(a["cancel_url"]))
    assert twice.status_code == 200 and twice.json() == good.json()
    assert starts[0] in await slots(bk, ann, day)
    assert starts[1] not in await slots(bk, ann, day)

    # Without a signature or credentials: 401.
    assert (await bk.client.post(f"/api/v1/bookings/{b['id']}/cancel")).status_code == 401

    # The page a mailed link opens asks before cancelling; a bad link shows a 403 page.
    sig_b = b["cancel_url"].split("sig=")[1]
    exp_b = b["cancel_url"].split("exp=")[1].split("&")[0]
    page = await bk.client.get(f"/{ann.handle}/intro", params={"booking": b["id"], "exp": exp_b, "sig": sig_b})
    assert page.status_code == 200 and 'id="cancel-form"' in page.text
    assert f"/api/v1/bookings/{b['id']}/cancel?exp={exp_b}&amp;sig={sig_b}" in page.text
    bad = await bk.client.get(f"/{ann.handle}/intro", params={"booking": b["id"], "exp": exp_b, "sig": "nope"})
    assert bad.status_code == 403 and "cancel-form" not in bad.text


@pytest.mark.parametrize("round_", [1, 2, 3])
async def test_two_hundred_concurrent_bookings_of_one_slot(bk: BookingHarness, round_: int) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann)
    day = future_day(20 + round_)
    target = (await slots(bk, ann, day))[2]
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
    async with httpx.AsyncClient(base_url=bk.service.url, headers=bk.client.headers, limits=limits,
                                 timeout=60) as client:
        async def one(i: int) -> int:
            r = await client.post("/api/v1/booking-pages/intro/book", params={"handle": ann.handle},
                                  json={"start": target, "name": f"Racer {i}", "email": f"racer{i}@example.org"})
            return r.status_code

        codes = Counter(await asyncio.gather(*(one(i) for i in range(200))))
    assert codes == {201: 1, 409: 199}, codes
    async with bk.pool.acquire() as conn:
        rows = await conn.fetchval(
            f"SELECT count(*) FROM {bk.schema}.bookings WHERE user_id = $1 AND start_at = $2 AND status = 'confirmed'",
            ann.user_id, utc(target))
    assert rows == 1

    async def one_event() -> bool:
        return sum(1 for e in bk.fake.created if e["user_id"] == ann.user_id and e["start"] == target) == 1

    await wait_for(one_event)


async def test_list_bookings_filters_and_pages(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann)
    day = future_day(30)
    starts = (await slots(bk, ann, day))[:5]
    ids = [(await book(bk, ann, s)).json()["id"] for s in starts]
    await bk.client.post(f"/api/v1/bookings/{ids[0]}/cancel", headers=ann.headers)

    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await bk.client.get("/api/v1/bookings", params=params, headers=ann.headers)).json()
        seen += [b["id"] for b in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids
    confirmed = await bk.client.get("/api/v1/bookings", params={"status": "confirmed"}, headers=ann.headers)
    assert [b["id"] for b in confirmed.json()["data"]] == ids[1:]
    window = await bk.client.get("/api/v1/bookings", headers=ann.headers,
                                 params={"start": starts[1], "end": starts[3]})
    assert [b["id"] for b in window.json()["data"]] == ids[1:3]
    too_long = await bk.client.get("/api/v1/bookings", headers=ann.headers,
                                   params={"start": "2027-01-01T00:00:00Z", "end": "2028-03-01T00:00:00Z"})
    assert too_long.status_code == 422
    bad_cursor = await bk.client.get("/api/v1/bookings", params={"cursor": "zzz"}, headers=ann.headers)
    assert bad_cursor.status_code == 400


async def test_calendar_write_is_retried_and_never_blocks_the_booking(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann)
    day = future_day(31)
    start = (await slots(bk, ann, day))[0]
    bk.fake.fail_writes.extend([503, 502])
    t0 = time.monotonic()
    r = await book(bk, ann, start)
    assert r.status_code == 201 and time.monotonic() - t0 < 2
    booking_id = r.json()["id"]

    async def written() -> Any:
        return (await bk.client.get(f"/api/v1/bookings/{booking_id}", headers=ann.headers)).json()["event_id"]

    await wait_for(written, timeout=20)
    assert not bk.fake.fail_writes


async def test_public_booking_page_and_embed_script(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann, description="Let's <talk>")
    page = await bk.client.get(f"/{ann.handle}/intro")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<main" in html and 'aria-live="polite"' in html and '<label for="email">' in html
    assert "Let&#x27;s &lt;talk&gt;" in html  # escaped
    assert '<script src="/assets/booking/booking-page.' in html and 'name="viewport"' in html
    assert "frame-ancestors *" in page.headers["content-security-policy"]
    assert (await bk.client.get(f"/{ann.handle}/nope")).status_code == 404
    js = await bk.client.get("/embed.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    for attr in ("data-calmesh-handle", "data-calmesh-slug", "data-mode", "data-color", "calmesh:resize"):
        assert attr in js.text


async def test_book_checks_input_and_scope(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann)
    start = (await slots(bk, ann, future_day(32)))[0]
    url = "/api/v1/booking-pages/intro/book"
    bad_email = await bk.client.post(url, params={"handle": ann.handle},
                                     json={"start": start, "name": "V", "email": "not-an-email"})
    assert bad_email.status_code == 422 and bad_email.json()["errors"][0]["field"] == "email"
    bad_start = await bk.client.post(url, params={"handle": ann.handle},
                                     json={"start": "tomorrow", "name": "V", "email": "v@example.org"})
    assert bad_start.status_code == 400
    missing = await bk.client.post(url, params={"handle": ann.handle}, json={"start": start, "name": "V"})
    assert missing.status_code == 400 and missing.json()["errors"][0]["field"] == "email"
    read_key = await bk.client.post(url, params={"handle": ann.handle}, headers=ann.with_scope("read").headers,
                                    json={"start": start, "name": "V", "email": "v@example.org"})
    assert read_key.status_code == 403 and read_key.json()["code"] == "insufficient_scope"
    past = await bk.client.post(url, params={"handle": ann.handle},
                                json={"start": "2020-01-06T09:00:00Z", "name": "V", "email": "v@example.org"})
    assert past.status_code == 409


async def test_racing_for_overlapping_slots_lets_only_one_win(bk: BookingHarness) -> None:
    # 60-minute meetings every 30 minutes with 15 minutes' buffer: 09:00, 09:30 and 10:00 all clash
    # (10:00 with 09:00 through the buffer only), across the owner's hour locks.
    ann = await bk.new_user()
    await make_page(bk, ann, duration_minutes=60, slot_interval_minutes=30, buffer_before_minutes=15,
                    buffer_after_minutes=15)
    day = future_day(33)
    offered = await slots(bk, ann, day)
    nine, half_past, ten = offered[0], offered[1], offered[2]
    limits = httpx.Limits(max_connections=150)
    async with httpx.AsyncClient(base_url=bk.service.url, headers=bk.client.headers, limits=limits,
                                 timeout=60) as client:
        async def one(i: int, start: str) -> tuple[str, int]:
            r = await client.post("/api/v1/booking-pages/intro/book", params={"handle": ann.handle},
                                  json={"start": start, "name": f"R{i}", "email": f"r{i}@example.org"})
            return start, r.status_code

        results = await asyncio.gather(*(one(i, (nine, half_past, ten)[i % 3]) for i in range(120)))
    won = [start for start, code in results if code == 201]
    assert Counter(code for _, code in results) == {201: 1, 409: 119}
    # Whichever won is gone, and 09:30 (which clashes with both others) too.
    remaining = await slots(bk, ann, day)
    assert won[0] not in remaining and half_past not in remaining


async def test_a_change_announced_by_connections_reaches_slots_at_once(bk: BookingHarness) -> None:
    import nats

    from calmesh_common.events import Envelope, encode_envelope, new_event_id

    ann = await bk.new_user()
    await make_page(bk, ann)
    day = future_day(34)
    before = await slots(bk, ann, day)  # the calendar is cached now
    # The owner adds a source that is busy all morning.
    extra = bk.fake.add_calendar(ann.user_id, "spare", "Europe/Amsterdam")
    await bk.fake.add_event(extra, datetime.combine(day, datetime.min.time(), UTC),
                            datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=23))
    ann.calendar.sources.append(extra.sources[0])
    assert await slots(bk, ann, day) == before  # still the cached calendar
    nc = await nats.connect(bk.settings.nats_url)
    try:
        envelope = Envelope(id=new_event_id(), stream_id="cal_x", version=2, occurred_at=datetime.now(UTC),
                            type="calendar.source_added.v1", user_id=ann.user_id)
        await nc.publish("calmesh.connections.calendar.source_added", encode_envelope(envelope))
        await nc.flush()
    finally:
        await nc.close()

    async def gone() -> bool:
        return await slots(bk, ann, day) == []

    await wait_for(gone, timeout=5)


async def test_idempotency_keys_are_forgotten_after_a_day(bk: BookingHarness) -> None:
    ctx = bk.app.state.deps.extras["booking"]
    async with bk.pool.acquire() as conn:
        await conn.execute(
            f"INSERT INTO {bk.schema}.idempotency_keys (scope, key, request_hash, status_code, body, created_at)"
            " VALUES ('t', 'old', 'h', 201, '{}', now() - interval '25 hours'),"
            "        ('t', 'new', 'h', 201, '{}', now() - interval '1 hour')")
        await ctx.store.keys.expire(conn, datetime.now(UTC))
        left = await conn.fetch(f"SELECT key FROM {bk.schema}.idempotency_keys WHERE scope = 't'")
    assert [r["key"] for r in left] == ["new"]


async def test_long_events_that_began_long_before_still_block_bookings(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann)
    day = future_day(40)
    free = await slots(bk, ann, day)  # loads the busy cache around the day
    assert free
    # A fortnight away (began ten days before) and a multi-day all-day event, synced afterwards.
    away_from = datetime.combine(day - timedelta(days=10), datetime.min.time(), UTC)
    await bk.fake.add_event(ann.calendar, away_from, away_from + timedelta(days=14), title="Sabbatical")
    assert await slots(bk, ann, day) == []
    r = await book(bk, ann, free[0])
    assert r.status_code == 409 and r.json()["code"] == "slot_unavailable"
    later = day + timedelta(days=10)
    later_free = await slots(bk, ann, later)
    await bk.fake.add_event(ann.calendar, datetime.combine(later - timedelta(days=3), datetime.min.time(), UTC),
                            datetime.combine(later + timedelta(days=2), datetime.min.time(), UTC), all_day=True,
                            start_date=later - timedelta(days=2), end_date=later + timedelta(days=2))
    r = await book(bk, ann, later_free[0])
    assert r.status_code == 409
