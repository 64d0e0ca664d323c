"""Booking mail is not a spam relay (issue 10, item 6), over HTTP against the booking service with
fakes of connections and sync.

What a user relies on: a page's visitors' addresses get at most so many mails a day each, and a page
at most so many an hour, while the bookings themselves go through; and an owner can make a page hold
each booking until the visitor proves the address is theirs: until then nothing is written to the
calendar and nothing but the one verification mail is sent, and an unused link frees the slot.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from calmesh_testing.booking import BookingHarness, User
from calmesh_testing.wait import wait_for

pytestmark = pytest.mark.timeout(180)

ALL_WEEK = {d: [["08:00", "18:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
PER_PAGE, PER_RECIPIENT = 8, 5


@pytest.fixture(scope="module")
async def bk(database_url: str) -> AsyncIterator[BookingHarness]:
    harness = await BookingHarness(database_url, mail_per_page_per_hour=PER_PAGE,
                                   mail_per_recipient_per_day=PER_RECIPIENT).start()
    yield harness
    await harness.stop()

def day_ahead(days: int) -> date:
    return (datetime.now(UTC) + timedelta(days=days)).date()


def slot(day: date, hour: int, minute: int = 0) -> str:
    dt = datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo("Europe/Amsterdam"))
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def make_page(bk: BookingHarness, user: User, slug: str, **extra: Any) -> dict[str, Any]:
    r = await bk.client.post("/api/v1/booking-pages", headers=user.headers, json={
        "slug": slug, "calendar_slug": "work", "title": "WIN A PRIZE http://spam.example", "duration_minutes": 30,
        "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK, **extra})
    assert r.status_code == 201, r.text
    return r.json()


async def book(bk: BookingHarness, user: User, slug: str, start: str, mail: str, **extra: Any) -> httpx.Response:
    return await bk.client.post(f"/api/v1/booking-pages/{slug}/book", params={"handle": user.handle},
                                json={"start": start, "name": "Vic Tim", "email": mail, **extra})


def mailed(bk: BookingHarness, stem: str) -> bool:
    return (bk.mail_dir / f"{stem}.eml").exists()


def read_mail(bk: BookingHarness, stem: str) -> EmailMessage:
    return email.message_from_bytes((bk.mail_dir / f"{stem}.eml").read_bytes(),  # type: ignore[return-value]
                                    policy=email.policy.default)


async def _true(value: bool) -> bool:
    return value


async def test_a_recipient_gets_five_mails_a_day_and_the_sixth_booking_still_succeeds(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann, "prize")
    day = day_ahead(5)
    ids = []
    for i in range(PER_RECIPIENT + 1):
        # The address as typed: its case does not make it another recipient.
        r = await book(bk, ann, "prize", slot(day, 9 + i), "Victim@Example.org" if i % 2 else "victim@example.org")
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "confirmed"
        ids.append(r.json()["id"])
    # The owner hears of every booking (their own address, not a visitor's).
    for booking_id in ids:
        await wait_for(lambda b=booking_id: _true(mailed(bk, f"{b}-confirmed-owner")), what="the owner's mails")
    assert [mailed(bk, f"{b}-confirmed-visitor") for b in ids] == [True] * PER_RECIPIENT + [False]
    # The booking that was not mailed is booked all the same.
    sixth = await bk.client.get(f"/api/v1/bookings/{ids[-1]}", headers=ann.headers)
    assert sixth.status_code == 200 and sixth.json()["status"] == "confirmed"
    # Another address is mailed as usual; the suppressed mail is counted where operators look.
    other = await book(bk, ann, "prize", slot(day, 16), "someone.else@example.org")
    assert other.status_code == 201
    await wait_for(lambda: _true(mailed(bk, f"{other.json()['id']}-confirmed-visitor")), what="another address")
    metrics = (await bk.client.get("/metrics")).text
    assert 'calmesh_booking_mails_total{kind="confirmed",outcome="suppressed"} 1.0' in metrics
    # Cancelling and rescheduling mails count too: a sixth mail to the address in a day is not sent.
    first = (await bk.client.get(f"/api/v1/bookings/{ids[0]}", headers=ann.headers)).json()
    cancelled = await bk.client.post(f"/api/v1/bookings/{ids[0]}/cancel", headers=ann.headers, json={})
    assert cancelled.status_code == 200 and first["status"] == "confirmed"
    await wait_for(lambda: _true(mailed(bk, f"{ids[0]}-cancelled-owner")), what="the cancellation")
    assert not mailed(bk, f"{ids[0]}-cancelled-visitor")


async def test_a_page_sends_at_most_so_many_mails_an_hour(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann, "busy")
    await make_page(bk, ann, "quiet")
    day = day_ahead(6)
    ids = []
    for i in range(PER_PAGE + 1):
        r = await book(bk, ann, "busy", slot(day, 8 + i // 2, 30 * (i % 2)), f"visitor{i}@example.org")
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    for booking_id in ids:
        await wait_for(lambda b=booking_id: _true(mailed(bk, f"{b}-confirmed-owner")), what="the owner's mails")
    assert sum(mailed(bk, f"{b}-confirmed-visitor") for b in ids) == PER_PAGE
    assert not mailed(bk, f"{ids[-1]}-confirmed-visitor")
    # Another page of the same owner has its own count.
    r = await book(bk, ann, "quiet", slot(day, 17), "visitor-quiet@example.org")
    assert r.status_code == 201
    await wait_for(lambda: _true(mailed(bk, f"{r.json()['id']}-confirmed-visitor")), what="the other page's mail")


def verify_link(bk: BookingHarness, booking_id: str) -> str:
    text = read_mail(bk, f"{booking_id}-verify-visitor").get_content()
    found = re.search(r"(http\S+/verify\?exp=\d+&sig=\S+)", text)
    assert found, text
    url = found.group(1)
    assert url.startswith(f"{bk.public_base_url}/api/v1/bookings/{booking_id}/verify?")
    return url[len(bk.public_base_url):]


async def test_a_page_that_requires_verification_books_nothing_until_the_link_is_used(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    page = await make_page(bk, ann, "checked", require_email_verification=True)
    assert page["require_email_verification"] is True
    day = day_ahead(7)
    start = slot(day, 10)
    r = await book(bk, ann, "checked", start, "vera@example.org")
    assert r.status_code == 201, r.text
    pending = r.json()
    assert pending["status"] == "pending_verification" and pending["start"] == start
    assert "cancel_url" not in pending and "reschedule_url" not in pending
    expires = datetime.fromisoformat(pending["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=14) < expires - datetime.now(UTC) <= timedelta(minutes=15)
    # The slot is held at once: gone from the slots, and nobody else can book it.
    slots = await bk.client.get("/api/v1/booking-pages/checked/slots",
                                params={"handle": ann.handle, "start": day.isoformat(), "end": day.isoformat()})
    assert start not in [s["start"] for s in slots.json()["slots"]]
    clash = await book(bk, ann, "checked", start, "else@example.org")
    assert clash.status_code == 409 and clash.json()["code"] == "slot_unavailable"
    # One mail, with the link and no invitation; no calendar event, no confirmation, no booking to read.
    await wait_for(lambda: _true(mailed(bk, f"{pending['id']}-verify-visitor")), what="the verification mail")
    link = verify_link(bk, pending["id"])
    verify_mail = read_mail(bk, f"{pending['id']}-verify-visitor")
    assert not any(p.get_content_type() == "text/calendar" for p in verify_mail.walk())
    assert "spam" not in str(verify_mail["Subject"])
    await asyncio.sleep(0.5)
    assert not [e for e in bk.fake.created if e["start"] == start]
    assert not mailed(bk, f"{pending['id']}-confirmed-visitor") and not mailed(bk, f"{pending['id']}-confirmed-owner")
    assert (await bk.client.get(f"/api/v1/bookings/{pending['id']}", headers=ann.headers)).status_code == 404
    listed = await bk.client.get("/api/v1/bookings", headers=ann.headers)
    assert pending["id"] not in [b["id"] for b in listed.json()["data"]]

    # The link opens a page that asks (a mail scanner's GET confirms nothing).
    page_html = await bk.client.get(link)
    assert page_html.status_code == 200 and '<form method="post"' in page_html.text
    assert "<script" not in page_html.text
    assert (await bk.client.get(f"/api/v1/bookings/{pending['id']}", headers=ann.headers)).status_code == 404
    # A tampered link is refused, and so is none, or another purpose's signature.
    base = link.split("?", 1)[0]
    assert (await bk.client.post(link.replace("sig=", "sig=x"))).status_code == 403
    assert (await bk.client.post(link.replace("exp=", "exp=1"))).status_code == 403
    assert (await bk.client.post(base)).status_code == 401

    verified = await bk.client.post(link)
    assert verified.status_code == 200, verified.text
    done = verified.json()
    assert done["id"] == pending["id"] and done["status"] == "confirmed" and done["cancel_url"]
    # Now it is a booking like any other: the event is written and both sides are mailed.
    await wait_for(lambda: _true(any(e["start"] == start for e in bk.fake.created)), what="the calendar event")
    await wait_for(lambda: _true(mailed(bk, f"{pending['id']}-confirmed-visitor")
                                   and mailed(bk, f"{pending['id']}-confirmed-owner")), what="the confirmations")
    got = await bk.client.get(f"/api/v1/bookings/{pending['id']}", headers=ann.headers)
    assert got.status_code == 200 and got.json()["status"] == "confirmed"
    slots = await bk.client.get("/api/v1/booking-pages/checked/slots",
                                params={"handle": ann.handle, "start": day.isoformat(), "end": day.isoformat()})
    assert start not in [s["start"] for s in slots.json()["slots"]]
    # A second click answers the same; a browser's form post gets a page.
    again = await bk.client.post(link)
    assert again.status_code == 200 and again.json()["id"] == pending["id"]
    browser = await bk.client.post(link, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert browser.status_code == 200 and "confirmed" in browser.text and browser.headers["content-type"].startswith(
        "text/html")
    assert [e["start"] for e in bk.fake.created].count(start) == 1

    # The owner can turn it off again.
    off = await bk.client.patch("/api/v1/booking-pages/checked", headers=ann.headers,
                                json={"require_email_verification": False})
    assert off.status_code == 200 and off.json()["require_email_verification"] is False
    direct = await book(bk, ann, "checked", slot(day, 11), "vera@example.org")
    assert direct.status_code == 201 and direct.json()["status"] == "confirmed"


async def test_an_unused_verification_link_expires_and_frees_the_slot(database_url: str) -> None:
    bk = await BookingHarness(database_url, booking_verification_seconds=2).start()
    try:
        ann = await bk.new_user()
        await make_page(bk, ann, "checked", require_email_verification=True)
        day = day_ahead(8)
        start = slot(day, 10)
        r = await book(bk, ann, "checked", start, "vera@example.org")
        assert r.status_code == 201 and r.json()["status"] == "pending_verification"
        booking_id = r.json()["id"]
        await wait_for(lambda: _true(mailed(bk, f"{booking_id}-verify-visitor")), what="the verification mail")
        link = verify_link(bk, booking_id)

        async def free_again() -> bool:
            got = await bk.client.get("/api/v1/booking-pages/checked/slots",
                                      params={"handle": ann.handle, "start": day.isoformat(), "end": day.isoformat()})
            return start in [s["start"] for s in got.json()["slots"]]

        assert not await free_again()
        await wait_for(free_again, what="the slot to be free again")
        late = await bk.client.post(link)
        assert late.status_code == 409 and late.json()["code"] == "verification_expired"
        assert not [e for e in bk.fake.created if e["start"] == start]
        assert (await bk.client.get(f"/api/v1/bookings/{booking_id}", headers=ann.headers)).status_code == 404
        # Someone else may book the time now.
        other = await book(bk, ann, "checked", start, "other@example.org")
        assert other.status_code == 201 and other.json()["status"] == "pending_verification"
    finally:
        await bk.stop()
