"""Visitor e-mail verification end to end: the whole platform as processes behind the gateway, a
real CalDAV server (Radicale) behind the unified calendar.

What a user relies on: on a page that requires verification, a booking made with someone else's
address books nothing: the slot is held (busy at once), no event reaches the calendar, the address
gets one mail with a link and no invitation. The link, opened and confirmed, makes it a booking like
any other (the event on Radicale, the confirmation mails); a tampered link is refused; an expired one
is 409 and frees the slot.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
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

def on(day: date, hour: int, minute: int = 0) -> str:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=AMS).astimezone(UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


async def slots(gw: httpx.AsyncClient, owner: PlatformOwner, slug: str, day: date) -> list[str]:
    r = await gw.get(f"/api/v1/booking-pages/{slug}/slots",
                     params={"handle": owner.handle, "start": day.isoformat(), "end": day.isoformat()})
    assert r.status_code == 200, r.text
    return [s["start"] for s in r.json()["slots"]]


def mail_text(stack: Stack, stem: str) -> str | None:
    path = stack.data_dir / "mail" / f"{stem}.eml"
    if not path.exists():
        return None
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    return msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


async def test_verification_through_the_gateway(stack: Stack, owner: PlatformOwner, migrated: str) -> None:
    day = (datetime.now(AMS) + timedelta(days=9)).date()
    suffix = uuid.uuid4().hex[:8]
    victim = f"victim-{suffix}@example.org"
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        r = await gw.post("/api/v1/booking-pages", headers=owner.auth, json={
            "slug": "checked", "calendar_slug": "work", "title": "WIN A PRIZE http://spam.example",
            "duration_minutes": 30, "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK,
            "require_email_verification": True})
        assert r.status_code == 201, r.text
        assert r.json()["require_email_verification"] is True
        assert (await gw.get("/api/v1/booking-pages/checked", headers=owner.auth)).json()[
            "require_email_verification"] is True

        # Booked with an address the visitor does not own: pending, and the slot held at once.
        r = await gw.post("/api/v1/booking-pages/checked/book", params={"handle": owner.handle},
                          json={"start": on(day, 10), "name": "Vic Tim", "email": victim})
        assert r.status_code == 201, r.text
        pending = r.json()
        assert pending["status"] == "pending_verification" and "cancel_url" not in pending
        assert on(day, 10) not in await slots(gw, owner, "checked", day)

        # One mail with the link; no event on the CalDAV server, no confirmation mail.
        text = await wait_for(lambda: asyncio.sleep(0, mail_text(stack, f"{pending['id']}-verify-visitor")),
                              what="the verification mail")
        found = re.search(r"https?://\S+(/api/v1/bookings/\S+/verify\?exp=\d+&sig=\S+)", text)
        assert found, text
        link = found.group(1)
        await asyncio.sleep(1.0)
        assert on(day, 10) not in owner.radicale_starts()
        assert mail_text(stack, f"{pending['id']}-confirmed-visitor") is None
        assert mail_text(stack, f"{pending['id']}-confirmed-owner") is None
        assert (await gw.get(f"/api/v1/bookings/{pending['id']}", headers=owner.auth)).status_code == 404

        # The link's page asks first; a tampered link is refused.
        page = await gw.get(link)
        assert page.status_code == 200 and '<form method="post"' in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]  # no script runs there
        assert (await gw.post(link.replace("sig=", "sig=x"))).status_code == 403

        verified = await gw.post(link)
        assert verified.status_code == 200, verified.text
        assert verified.json()["status"] == "confirmed" and verified.json()["id"] == pending["id"]

        # A booking like any other now: on Radicale, both sides mailed, readable by the owner.
        async def on_radicale() -> bool:
            return on(day, 10) in owner.radicale_starts()

        await wait_for(on_radicale, what="the booking's event on Radicale")
        await wait_for(lambda: asyncio.sleep(0, mail_text(stack, f"{pending['id']}-confirmed-visitor") is not None
                                             and mail_text(stack, f"{pending['id']}-confirmed-owner") is not None),
                       what="the confirmation mails")
        got = await gw.get(f"/api/v1/bookings/{pending['id']}", headers=owner.auth)
        assert got.status_code == 200 and got.json()["status"] == "confirmed"
        assert owner.radicale_starts().count(on(day, 10)) == 1

        # A second booking whose link is not used in time: 409, and the slot is free again.
        r = await gw.post("/api/v1/booking-pages/checked/book", params={"handle": owner.handle},
                          json={"start": on(day, 11), "name": "Vic Tim", "email": f"late-{suffix}@example.org"})
        assert r.status_code == 201 and r.json()["status"] == "pending_verification"
        late = r.json()
        text = await wait_for(lambda: asyncio.sleep(0, mail_text(stack, f"{late['id']}-verify-visitor")),
                              what="the second verification mail")
        late_link = re.search(r"https?://\S+(/api/v1/bookings/\S+/verify\?exp=\d+&sig=\S+)", text).group(1)  # type: ignore[union-attr]
        assert on(day, 11) not in await slots(gw, owner, "checked", day)
        # The clock moves on: the hold that keeps the slot for the link reaches its end.
        conn = await asyncpg.connect(migrated)
        try:
            await conn.execute("UPDATE booking.holds SET expires_at = now() - interval '1 second'"
                               " WHERE booking_id = $1", late["id"])
        finally:
            await conn.close()
        expired = await gw.post(late_link)
        assert expired.status_code == 409 and expired.json()["code"] == "verification_expired"
        assert on(day, 11) in await slots(gw, owner, "checked", day)
        assert on(day, 11) not in owner.radicale_starts()
