"""Through the public gateway, the way a customer uses it: sign up, make an API key, connect an iCal
feed and a CalDAV server (Radicale), build a unified calendar, wait for the sync, read the merged
events, write one to the CalDAV source and delete it, and remove a connection."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from calmesh_testing.feeds import FeedServer
from calmesh_testing.radicale import Radicale, radicale
from calmesh_testing.servers import serve


def stamp(value: datetime) -> str:
    return value.strftime("%Y%m%dT%H%M%SZ")


def feed_body() -> str:
    start = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0) + timedelta(days=2)
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calmesh e2e//EN\r\nX-WR-CALNAME:Holidays\r\n"
        f"BEGIN:VEVENT\r\nUID:e2e-1\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:{stamp(start)}\r\n"
        f"DTEND:{stamp(start + timedelta(hours=1))}\r\nSUMMARY:From the feed\r\nEND:VEVENT\r\n"
        f"BEGIN:VEVENT\r\nUID:e2e-2\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:{stamp(start + timedelta(days=1))}\r\n"
        f"DTEND:{stamp(start + timedelta(days=1, hours=2))}\r\nRRULE:FREQ=DAILY;COUNT=3\r\nSUMMARY:Daily from the feed\r\nEND:VEVENT\r\n"
        "END:VCALENDAR\r\n"
    )


class Customer:
    def __init__(self, base: str) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.client = httpx.Client(base_url=base, timeout=30)
        r = self.client.post("/api/v1/auth/signup", json={
            "email": f"conn-{suffix}@example.com", "password": "a long enough passphrase", "handle": f"conn-{suffix}",
            "timezone": "Europe/Amsterdam"})
        assert r.status_code == 201, r.text
        csrf = self.client.cookies["calmesh_csrf"]
        keys = {}
        for scope in ("full", "read"):
            r = self.client.post("/api/v1/api-keys", json={"name": scope, "scope": scope}, headers={"X-CSRF-Token": csrf})
            assert r.status_code == 201, r.text
            keys[scope] = r.json()["key"]
        self.full = httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {keys['full']}"})
        self.read = httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {keys['read']}"})

    def wait(self, connection_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = self.full.get(f"/api/v1/connections/{connection_id}").json()
            if body.get("status") in ("active", "error", "revoked"):
                return body
            time.sleep(0.2)
        raise AssertionError(f"not synced: {body}")


@pytest.fixture(scope="module")
def dav() -> Iterator[Radicale]:
    with radicale() as server:
        server.make_calendar("e2e", "E2E")
        yield server


async def test_connect_sync_read_write_through_the_gateway(stack: Any, dav: Radicale) -> None:
    feeds = FeedServer()
    feeds.put("/holidays.ics", feed_body())
    async with serve(feeds) as base:
        me, someone = await asyncio.to_thread(Customer, stack.gateway_url), await asyncio.to_thread(Customer, stack.gateway_url)
        r = me.full.post("/api/v1/connections/ical", json={"url": f"{base}/holidays.ics"})
        assert r.status_code == 201, r.text
        feed_id = r.json()["id"]
        r = me.full.post("/api/v1/connections/caldav", json={"url": dav.url, "username": dav.username, "password": dav.password})
        assert r.status_code == 201, r.text
        dav_id = r.json()["id"]
        assert dav.password not in r.text
        for cid in (feed_id, dav_id):
            body = await asyncio.to_thread(me.wait, cid)
            assert body["status"] == "active", body

        # Scopes: a read key reads but does not connect; another user sees nothing of mine.
        assert me.read.get(f"/api/v1/connections/{feed_id}").status_code == 200
        refused = me.read.post("/api/v1/connections/ical", json={"url": f"{base}/holidays.ics"})
        assert refused.status_code == 403 and refused.json()["code"] == "insufficient_scope"
        assert someone.full.get(f"/api/v1/connections/{feed_id}").status_code == 404

        r = me.full.post("/api/v1/calendars", json={"slug": "everything", "name": "Everything", "timezone": "Europe/Amsterdam",
                                                    "sources": [{"connection_id": feed_id}, {"connection_id": dav_id}]})
        assert r.status_code == 201, r.text
        assert r.json()["default_source_id"] == r.json()["sources"][1]["id"]  # the CalDAV one: the feed is read-only

        start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        window = {"start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": (start + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")}
        events = me.read.get("/api/v1/calendars/everything/events", params=window)
        assert events.status_code == 200, events.text
        titles = sorted(e["title"] for e in events.json()["data"])
        assert titles == ["Daily from the feed"] * 3 + ["From the feed"]

        # Write an event (to the default target, the CalDAV source) and read it back at once.
        when = start + timedelta(days=5, hours=9)
        r = me.full.post("/api/v1/calendars/everything/events", json={
            "title": "Written through the gateway", "start": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end": (when + timedelta(minutes=45)).strftime("%Y-%m-%dT%H:%M:%SZ")})
        assert r.status_code == 201, r.text
        written = r.json()
        assert any("Written through the gateway" in data for data in dav.objects("e2e").values())
        listed = me.read.get("/api/v1/calendars/everything/events", params=window).json()["data"]
        assert written["id"] in {e["id"] for e in listed}
        r = me.full.delete("/api/v1/calendars/everything/events", params={"event_id": written["id"]})
        assert r.status_code == 204, r.text
        assert not any("Written through the gateway" in data for data in dav.objects("e2e").values())

        # A manual sync, then the feed removed: its events leave the calendar.
        assert me.full.post(f"/api/v1/connections/{feed_id}/sync").status_code == 202
        assert me.full.delete(f"/api/v1/connections/{feed_id}").status_code == 204
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            left = me.read.get("/api/v1/calendars/everything/events", params=window).json()["data"]
            if not any(e["title"].endswith("from the feed") for e in left):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the removed connection's events are still listed")
        assert [s["connection_id"] for s in me.full.get("/api/v1/calendars/everything").json()["sources"]] == [dav_id]

        # The OAuth callback is public: it reaches the connections service without credentials.
        anonymous = httpx.Client(base_url=stack.gateway_url, timeout=10)
        r = anonymous.get("/api/v1/connections/google/callback", params={"code": "x", "state": "forged"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_state"
