"""Rescheduling on Google and Microsoft calendars moves the provider's event in place (docs/api-guide.md,
Rescheduling: "the provider event is moved in place (same UID, not deleted and created again)").

The whole platform as processes (its own stack, on a private database and NATS, configured for the
local fakes of Google Calendar v3, Microsoft Graph and their OAuth server in calmesh_testing): a user
connects Google and Microsoft through the OAuth flow, makes a unified calendar of each with a
booking page on it; a visitor books, then reschedules with the booking's `reschedule_url`. At the
provider the event is the same one — same id, same iCalUID — at the new time, and there is no
second event; Google's `sequence` went up and its etag changed, Graph's `changeKey` changed.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest

from calmesh_common.devstack.embedded import free_port
from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.backends import private_nats
from calmesh_testing.google import GoogleFake
from calmesh_testing.graph import GraphFake
from calmesh_testing.oauth import OAuthFake
from calmesh_testing.servers import serve
from calmesh_testing.wait import wait_for

pytestmark = pytest.mark.timeout(300)

AMS = ZoneInfo("Europe/Amsterdam")
ALL_WEEK = {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def on(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=AMS)


def z(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

@pytest.fixture(scope="module")
def private_database(database_url: str) -> Iterator[str]:
    """A database of its own on the session's PostgreSQL: this module's stack must not share the
    session stack's consumers (they would take its sync jobs without the fakes' settings)."""
    name = f"calmesh_providers_{uuid.uuid4().hex[:8]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(database_url)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class World:
    stack: Stack
    oauth: OAuthFake
    google: GoogleFake
    graph: GraphFake


@pytest.fixture(scope="module")
async def world(private_database: str) -> AsyncIterator[World]:
    oauth = OAuthFake()
    google, graph = GoogleFake(oauth), GraphFake(oauth)
    google.calendar("primary", "Ada's Google", primary=True)
    graph.calendar("AAMkCAL1", "Ada's Outlook")
    with private_nats() as nats_url, tempfile.TemporaryDirectory(prefix="calmesh-test-providers-") as tmp:
        async with serve(oauth.app()) as oauth_url, serve(google.app()) as google_url, serve(graph.app()) as graph_url:
            graph.base_url = graph_url
            stack = Stack(
                data_dir=Path(tmp), http_port=free_port(), sync_workers=1, database_url=private_database,
                nats_url=nats_url, fixed_ports=False, quiet=True, restart=False,
                extra_env={
                    "CALMESH_LOG_LEVEL": "warning", "CALMESH_DB_POOL_MAX": "4", "CALMESH_ALLOW_PRIVATE_NETWORKS": "1",
                    "CALMESH_PUSH_NOTIFICATIONS": "off",
                    "CALMESH_GOOGLE_CLIENT_ID": oauth.client_id, "CALMESH_GOOGLE_CLIENT_SECRET": oauth.client_secret,
                    "CALMESH_GOOGLE_AUTH_URL": f"{oauth_url}/authorize", "CALMESH_GOOGLE_TOKEN_URL": f"{oauth_url}/token",
                    "CALMESH_GOOGLE_REVOKE_URL": f"{oauth_url}/revoke", "CALMESH_GOOGLE_API_URL": google_url,
                    "CALMESH_MICROSOFT_CLIENT_ID": oauth.client_id,
                    "CALMESH_MICROSOFT_CLIENT_SECRET": oauth.client_secret,
                    "CALMESH_MICROSOFT_AUTH_URL": f"{oauth_url}/authorize",
                    "CALMESH_MICROSOFT_TOKEN_URL": f"{oauth_url}/token", "CALMESH_MICROSOFT_GRAPH_URL": graph_url,
                },
            )
            await asyncio.to_thread(stack.start, 120)
            try:
                yield World(stack, oauth, google, graph)
            finally:
                await asyncio.to_thread(stack.stop)


@dataclass
class Owner:
    handle: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def connect(gw: httpx.AsyncClient, csrf: dict[str, str], provider: str) -> str:
    """The OAuth flow as the signed-in user's browser goes through it; the connection's id."""
    r = await gw.post(f"/api/v1/connections/{provider}", headers=csrf)
    assert r.status_code == 201, r.text
    created = r.json()
    url = created["authorization_url"]
    for _ in range(4):  # CalMesh's start URL → the provider's consent → CalMesh's callback
        r = await gw.get(url)
        if r.status_code not in (301, 302, 303, 307):
            break
        url = r.headers["location"]
        if not url.startswith("http"):
            break
    assert r.status_code < 400, r.text
    return str(created["id"])


@pytest.fixture(scope="module")
async def owner(world: World) -> AsyncIterator[tuple[Owner, dict[str, str]]]:
    """A user with a Google and a Microsoft connection, a unified calendar of each (`gwork`,
    `mwork`) and a booking page on each (`gmeet`, `mmeet`)."""
    suffix = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(base_url=world.stack.gateway_url, timeout=30) as gw:
        r = await gw.post("/api/v1/auth/signup", json={
            "email": f"prov-{suffix}@example.com", "password": "a long enough passphrase",
            "handle": f"prov-{suffix}", "name": "Ada", "timezone": "Europe/Amsterdam"})
        assert r.status_code == 201, r.text
        csrf = {"X-CSRF-Token": gw.cookies["calmesh_csrf"]}
        k = await gw.post("/api/v1/api-keys", json={"name": "full", "scope": "full"}, headers=csrf)
        assert k.status_code == 201, k.text
        o = Owner(f"prov-{suffix}", k.json()["key"])
        connections = {p: await connect(gw, csrf, p) for p in ("google", "microsoft")}
    async with httpx.AsyncClient(base_url=world.stack.gateway_url, timeout=30, headers=o.auth) as api:
        for provider, slug in (("google", "g"), ("microsoft", "m")):
            cid = connections[provider]
            deadline = time.monotonic() + 60
            while True:
                got = (await api.get(f"/api/v1/connections/{cid}")).json()
                if got["status"] == "active" and got["last_synced_at"] and got["calendars"]:
                    break
                assert got["status"] != "error" and time.monotonic() < deadline, got
                await asyncio.sleep(0.2)
            r = await api.post("/api/v1/calendars", json={
                "slug": f"{slug}work", "name": provider, "timezone": "Europe/Amsterdam",
                "sources": [{"connection_id": cid, "calendar_id": got["calendars"][0]["id"]}]})
            assert r.status_code == 201, r.text
            r = await api.post("/api/v1/booking-pages", json={
                "slug": f"{slug}meet", "calendar_slug": f"{slug}work", "title": f"Call on {provider}",
                "duration_minutes": 30, "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK})
            assert r.status_code == 201, r.text
    yield o, connections


async def book(world: World, owner: Owner, page: str, day: date) -> tuple[dict[str, Any], str, str]:
    """A visitor books 10:00 on `page`; the booking, its start and the start it will move to (14:00)."""
    s0, s1 = z(on(day, 10)), z(on(day, 14))
    async with httpx.AsyncClient(base_url=world.stack.gateway_url, timeout=30) as visitor:
        r = await visitor.post(f"/api/v1/booking-pages/{page}/book", params={"handle": owner.handle},
                               json={"start": s0, "name": "Rita Resched", "email": "rita@example.org"})
        assert r.status_code == 201, r.text
        booking = r.json()
        return booking, s0, s1


async def reschedule(world: World, booking: dict[str, Any], start: str) -> dict[str, Any]:
    path = booking["reschedule_url"][booking["reschedule_url"].index("/api/v1/"):]
    async with httpx.AsyncClient(base_url=world.stack.gateway_url, timeout=30) as visitor:
        moved = await visitor.post(path, json={"start": start})
    assert moved.status_code == 200, moved.text
    assert moved.json()["id"] == booking["id"] and moved.json()["start"] == start
    return moved.json()  # type: ignore[no-any-return]


async def one_event_of_booking(world: World, owner: Owner, slug: str, booking_id: str, start: str) -> None:
    """CalMesh's own view: one event of the booking, at `start`."""
    async with httpx.AsyncClient(base_url=world.stack.gateway_url, timeout=30, headers=owner.auth) as api:
        day_start = start[:10] + "T00:00:00Z"
        day_end = (date.fromisoformat(start[:10]) + timedelta(days=1)).isoformat() + "T00:00:00Z"
        r = await api.get(f"/api/v1/calendars/{slug}/events", params={"start": day_start, "end": day_end})
        assert r.status_code == 200, r.text
        mine = [e for e in r.json()["data"] if e["booking_id"] == booking_id]
        assert [e["start"] for e in mine] == [start], r.json()


async def test_a_reschedule_on_google_patches_the_same_event(world: World, owner: tuple[Owner, dict[str, str]]) -> None:
    o, _ = owner
    day = (datetime.now(AMS) + timedelta(days=9)).date()
    booking, s0, s1 = await book(world, o, "gmeet", day)

    def written() -> dict[str, Any] | None:
        events = world.google.events_of("primary")
        return events[0] if len(events) == 1 and events[0]["start"]["dateTime"] == s0 else None

    before = dict(await wait_for(written, what="the booking's event at Google"))
    assert before["iCalUID"] == f"{booking['id']}@calmesh.xyz"
    await reschedule(world, booking, s1)

    def moved() -> dict[str, Any] | None:
        events = world.google.events_of("primary", include_cancelled=True)
        return events[0] if len(events) == 1 and events[0]["start"]["dateTime"] == s1 else None

    after = await wait_for(moved, what="the Google event to move")
    assert (after["id"], after["iCalUID"], after["status"]) == (before["id"], before["iCalUID"], "confirmed")
    assert after["end"]["dateTime"] == z(on(day, 14, 30))
    assert after["sequence"] == before["sequence"] + 1 and after["etag"] != before["etag"]
    assert after["summary"] == before["summary"]  # what the patch did not name stays
    assert not any(r.startswith("DELETE ") for r in world.google.requests)
    await one_event_of_booking(world, o, "gwork", booking["id"], s1)


async def test_a_reschedule_on_microsoft_patches_the_same_event(world: World, owner: tuple[Owner, dict[str, str]]) -> None:
    o, _ = owner
    day = (datetime.now(AMS) + timedelta(days=10)).date()
    booking, s0, s1 = await book(world, o, "mmeet", day)
    graph_s0 = s0.replace("Z", ".0000000")

    def written() -> dict[str, Any] | None:
        events = world.graph.events_of("AAMkCAL1")
        return events[0] if len(events) == 1 and events[0]["start"]["dateTime"] == graph_s0 else None

    before = dict(await wait_for(written, what="the booking's event at Microsoft"))
    await reschedule(world, booking, s1)

    def moved() -> dict[str, Any] | None:
        events = world.graph.events_of("AAMkCAL1")
        return events[0] if len(events) == 1 and events[0]["start"]["dateTime"] == s1.replace("Z", ".0000000") else None

    after = await wait_for(moved, what="the Graph event to move")
    assert (after["id"], after["iCalUId"]) == (before["id"], before["iCalUId"])
    assert after["end"] == {"dateTime": z(on(day, 14, 30)).replace("Z", ".0000000"), "timeZone": "UTC"}
    assert after["changeKey"] != before["changeKey"]
    assert after["body"] == before["body"]  # what the patch did not name stays
    assert not world.graph.calendars["AAMkCAL1"].removed
    await one_event_of_booking(world, o, "mwork", booking["id"], s1)
