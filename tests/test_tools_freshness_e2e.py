"""An agent asking through the tools whether a person is free must be told when CalMesh could not
check that person's calendar: the whole platform (the session `stack`), iCal feeds, and
`POST /api/v1/tools/{name}/call` through the gateway with an API key, exactly as a function-calling
agent (or the MCP servers, which run the same executor) calls it.

A calendar whose feed fails answers `complete: false`; the tool's text then opens with
"INCOMPLETE ANSWER: could not check <the source> … (… status error; last error: …)" and never lists
free time. `calmesh_check_availability` with `calendar_slugs` finds a time across calendars.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.feeds import FeedServer
from calmesh_testing.servers import serve
from calmesh_testing.wait import wait_for

pytestmark = pytest.mark.timeout(300)

ZONE = "Europe/Amsterdam"
DAY = (datetime.now(UTC) + timedelta(days=6)).date()


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hour, minute, tzinfo=UTC)


def z(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def vcalendar(name: str, *events: tuple[str, datetime, datetime]) -> str:
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//calmesh tools e2e//EN", f"X-WR-CALNAME:{name}"]
    for uid, start, end in events:
        lines += ["BEGIN:VEVENT", f"UID:{uid}", "DTSTAMP:20261101T000000Z", f"DTSTART:{start:%Y%m%dT%H%M%SZ}",
                  f"DTEND:{end:%Y%m%dT%H%M%SZ}", f"SUMMARY:{uid}", "END:VEVENT"]
    return "\r\n".join([*lines, "END:VCALENDAR", ""])

@dataclass
class World:
    gw: httpx.AsyncClient
    key: str
    feeds: FeedServer
    connections: dict[str, str]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def connection(self, slug: str) -> dict[str, Any]:
        r = await self.gw.get(f"/api/v1/connections/{self.connections[slug]}", headers=self.auth)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        r = await self.gw.post(f"/api/v1/tools/{name}/call", headers=self.auth, json={"arguments": arguments})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["is_error"] is False, body
        return body  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
async def world(stack: Stack) -> AsyncIterator[World]:
    """A user (Europe/Amsterdam, full key) with calendars `ada` (a working feed) and `bob` (a feed
    that works, for now)."""
    feeds = FeedServer()
    feeds.put("/ada.ics", vcalendar("Ada's diary", ("ada-1@tools", at(9), at(10))))
    feeds.put("/bob.ics", vcalendar("Bob's diary", ("bob-1@tools", at(11), at(12))))
    suffix = uuid.uuid4().hex[:10]
    async with serve(feeds) as feed_url, httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        r = await gw.post("/api/v1/auth/signup", json={
            "email": f"tools-{suffix}@example.com", "password": "a long enough passphrase",
            "handle": f"tools-{suffix}", "timezone": ZONE})
        assert r.status_code == 201, r.text
        k = await gw.post("/api/v1/api-keys", json={"name": "agent", "scope": "full"},
                          headers={"X-CSRF-Token": gw.cookies["calmesh_csrf"]})
        assert k.status_code == 201, k.text
        w = World(gw, k.json()["key"], feeds, {})
        for who in ("ada", "bob"):
            r = await gw.post("/api/v1/connections/ical", headers=w.auth, json={"url": f"{feed_url}/{who}.ics"})
            assert r.status_code == 201, r.text
            w.connections[who] = r.json()["id"]
        for who in ("ada", "bob"):
            async def active(who: str = who) -> bool:
                return (await w.connection(who))["status"] == "active"

            await wait_for(active, what=f"the first sync of {who}'s feed", interval=0.2)
            r = await gw.post("/api/v1/calendars", headers=w.auth, json={
                "slug": who, "name": who.title(), "timezone": ZONE,
                "sources": [{"connection_id": w.connections[who]}]})
            assert r.status_code == 201, r.text
        yield w


async def test_a_failing_feed_makes_the_tools_say_the_answer_is_incomplete_and_why(world: World) -> None:
    window = {"start": z(at(0)), "end": z(at(23))}
    before = await world.tool("calmesh_check_availability", {"calendar_slug": "bob", **window})
    assert not before["content"][0]["text"].startswith("INCOMPLETE") and before["structured"]["free"]

    world.feeds.put("/bob.ics", "the server broke", status=500)
    r = await world.gw.post(f"/api/v1/connections/{world.connections['bob']}/sync", headers=world.auth)
    assert r.status_code == 202, r.text

    async def errored() -> dict[str, Any] | None:
        got = await world.connection("bob")
        return got if got["status"] == "error" and got["last_error"] else None

    conn = await wait_for(errored, what="bob's feed to show error", interval=0.2)
    source_name = (await world.gw.get("/api/v1/calendars/bob", headers=world.auth)).json()["sources"][0]["name"]

    for name in ("calmesh_check_availability", "calmesh_get_events", "calmesh_find_conflicts"):
        body = await world.tool(name, {"calendar_slug": "bob", **window})
        first = body["content"][0]["text"].split("\n")[0]
        assert first.startswith(f"INCOMPLETE ANSWER: could not check '{source_name}' of calendar bob "
                                f"(ical connection {world.connections['bob']}: status "), (name, first)
        assert f"last error: {conn['last_error']}" in first and first.endswith("time as free."), first
        assert body["structured"]["complete"] is False
    availability = await world.tool("calmesh_check_availability", {"calendar_slug": "bob", **window})
    assert availability["structured"]["free"] == []  # and what is known stays busy
    assert [b["start"] for b in availability["structured"]["busy"]] == [z(at(11))]

    # Across calendars: ada must be free, bob optional and not known — never counted free.
    found = await world.tool("calmesh_check_availability", {
        "calendar_slugs": ["ada"], "optional_calendar_slugs": ["bob"], "duration_minutes": 60,
        "start": z(at(8)), "end": z(at(13))})
    text = found["content"][0]["text"].split("\n")
    assert text[0].startswith(f"INCOMPLETE ANSWER: could not check '{source_name}' of calendar bob"), text[0]
    assert "ada" not in text[0].split(" — ")[0].replace("calendar bob", "")  # ada's feed is not blamed
    slots = found["structured"]["slots"]
    assert found["structured"]["complete"] is False
    assert z(at(9)) not in [s["start"] for s in slots]  # ada is busy 09:00-10:00
    assert all("bob" not in s["free"] for s in slots)
    assert {s["start"] for s in slots if s["end"] <= z(at(13))} >= {z(at(8)), z(at(10)), z(at(12))}


async def test_a_background_resync_of_an_active_feed_keeps_the_answers_complete(world: World) -> None:
    """A scheduled (or asked-for) re-sync does not blank the user's free time while it runs: the
    connection stays active with its `progress` shown, and availability stays complete."""
    world.feeds.put("/ada.ics", vcalendar("Ada's diary", ("ada-1@tools", at(9), at(10))), delay=3.0)
    try:
        r = await world.gw.post(f"/api/v1/connections/{world.connections['ada']}/sync", headers=world.auth)
        assert r.status_code == 202, r.text

        async def running() -> dict[str, Any] | None:
            got = await world.connection("ada")
            return got if got["progress"] is not None else None

        during = await wait_for(running, what="ada's re-sync to start", interval=0.05)
        assert during["status"] == "active" and during["progress"]["sync_id"] == r.json()["sync_id"], during
        answer = await world.gw.get("/api/v1/calendars/ada/availability", headers=world.auth,
                                    params={"start": z(at(8)), "end": z(at(12))})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["complete"] is True and [s["status"] for s in body["sources"]] == ["active"], body
        assert body["free"] == [{"start": z(at(8)), "end": z(at(9))}, {"start": z(at(10)), "end": z(at(12))}], body
        text = (await world.tool("calmesh_check_availability", {"calendar_slug": "ada", "start": z(at(8)), "end": z(at(12))}))
        assert not text["content"][0]["text"].startswith("INCOMPLETE"), text
    finally:
        world.feeds.put("/ada.ics", vcalendar("Ada's diary", ("ada-1@tools", at(9), at(10))))

    async def finished() -> dict[str, Any] | None:
        got = await world.connection("ada")
        return got if got["progress"] is None and got["status"] == "active" else None

    await wait_for(finished, what="ada's re-sync to finish", interval=0.2)
