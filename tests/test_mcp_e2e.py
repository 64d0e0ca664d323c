"""The MCP server over stdio, driven by the official SDK's client, against the whole platform with a
Radicale-backed calendar: the 19 tools are listed with described schemas, every tool is called, and
what each returns is what the REST API says; a `read` key calling a booking tool gets a clear tool
error, and the tool's description warned about it."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.booking import PlatformOwner, sign_up_with_caldav
from calmesh_testing.radicale import Radicale

pytestmark = pytest.mark.timeout(300)

BIN = str(Path(sys.executable).parent / "calmesh-mcp")
AMS = ZoneInfo("Europe/Amsterdam")
TOOLS = {
    "calmesh_list_calendars", "calmesh_get_events", "calmesh_check_availability", "calmesh_find_conflicts",
    "calmesh_get_slots", "calmesh_create_booking", "calmesh_cancel_booking", "calmesh_list_bookings",
    "calmesh_create_poll", "calmesh_list_polls", "calmesh_get_poll_overlap", "calmesh_decide_poll",
    "calmesh_start_oauth_connection", "calmesh_start_credential_connection", "calmesh_check_connection_status",
    "calmesh_list_connections", "calmesh_remove_connection", "calmesh_create_calendar", "calmesh_manage_calendar",
}


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radicale]:
    server = Radicale(tmp_path_factory.mktemp("radicale-mcp")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def owner(stack: Stack, radicale: Radicale) -> PlatformOwner:
    return await sign_up_with_caldav(stack.gateway_url, radicale)


@asynccontextmanager
async def mcp(stack: Stack, key: str) -> AsyncIterator[ClientSession]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALMESH_")}
    env.update(CALMESH_API_KEY=key, CALMESH_API_URL=f"{stack.gateway_url}/api/v1")
    params = StdioServerParameters(command=BIN, args=[], env=env)
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


def z(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_every_tool_over_stdio_answers_what_the_rest_api_says(stack: Stack, owner: PlatformOwner) -> None:
    rest = httpx.AsyncClient(base_url=f"{stack.gateway_url}/api/v1/", headers=owner.auth, timeout=30)
    called: set[str] = set()
    day = (datetime.now(AMS) + timedelta(days=5)).date()
    day_start = datetime(day.year, day.month, day.day, tzinfo=AMS)
    window = {"start": z(day_start), "end": z(day_start + timedelta(days=1))}

    async with rest, mcp(stack, owner.key) as session:
        async def call(name: str, args: dict[str, Any]) -> Any:
            result = await session.call_tool(name, args)
            called.add(name)
            return result

        tools = (await session.list_tools()).tools
        assert {t.name for t in tools} == TOOLS and len(tools) == 19
        for tool in tools:
            assert tool.description and tool.annotations is not None
            assert tool.input_schema["type"] == "object"
            for prop, schema in tool.input_schema.get("properties", {}).items():
                assert schema.get("description"), f"{tool.name}.{prop} has no description"

        # Calendars, events, availability, conflicts.
        r = await call("calmesh_list_calendars", {})
        assert not r.is_error and r.structured_content == (await rest.get("calendars", params={"limit": 200})).json()
        assert "work" in r.content[0].text

        created = await rest.post("calendars/work/events", json={
            "title": "Budget review", "start": z(day_start + timedelta(hours=10)), "end": z(day_start + timedelta(hours=11))})
        assert created.status_code == 201, created.text
        r = await call("calmesh_get_events", {"calendar_slug": "work", **window})
        assert not r.is_error
        assert r.structured_content == (await rest.get("calendars/work/events", params=window)).json()
        assert "Budget review" in r.content[0].text and "(09:00 UTC)" in r.content[0].text  # local time with UTC beside

        r = await call("calmesh_check_availability", {"calendar_slug": "work", "date": day.isoformat(), "explain": True})
        expected = (await rest.get("calendars/work/availability", params={"date": day.isoformat(), "explain": "true"})).json()
        assert not r.is_error and r.structured_content == expected
        assert any(b["start"] == z(day_start + timedelta(hours=10)) for b in expected["busy"])
        assert "because of: Budget review" in r.content[0].text

        r = await call("calmesh_find_conflicts", {"calendar_slug": "work", **window})
        assert not r.is_error and r.structured_content == (await rest.get("calendars/work/conflicts", params=window)).json()

        # Connections.
        r = await call("calmesh_list_connections", {})
        listed = (await rest.get("connections", params={"limit": 200})).json()
        stable = ("id", "provider", "display_name", "calendars")  # a scheduled sync may move last_synced_at meanwhile
        assert not r.is_error
        assert [{k: c[k] for k in stable} for c in r.structured_content["data"]] == \
            [{k: c[k] for k in stable} for c in listed["data"]]
        r = await call("calmesh_check_connection_status", {"connection_id": owner.connection_id})
        got = (await rest.get(f"connections/{owner.connection_id}")).json()
        assert not r.is_error
        assert {k: r.structured_content[k] for k in ("id", "provider", "calendars")} == \
            {k: got[k] for k in ("id", "provider", "calendars")}

        r = await call("calmesh_start_credential_connection", {
            "provider": "caldav", "url": owner.radicale.calendar_url(owner.calendar),
            "username": owner.radicale.username, "password": owner.radicale.password})
        assert not r.is_error, r.content[0].text
        second = r.structured_content["id"]
        assert (await rest.get(f"connections/{second}")).json()["provider"] == "caldav"

        r = await call("calmesh_start_oauth_connection", {"provider": "google"})
        direct = await rest.post("connections/google", json={})
        if direct.status_code == 201:
            assert not r.is_error and r.structured_content["authorization_url"].startswith("http")
        else:  # Google is not configured on this stack: the tool says what the API says.
            assert r.is_error and direct.json()["detail"] in r.content[0].text

        # Unified calendars.
        slug = f"mcp-{uuid.uuid4().hex[:6]}"
        r = await call("calmesh_create_calendar", {"slug": slug, "name": "Via MCP", "timezone": "Europe/Amsterdam",
                                                    "sources": [{"connection_id": second}]})
        assert not r.is_error, r.content[0].text
        assert r.structured_content == (await rest.get(f"calendars/{slug}")).json() | {
            k: r.structured_content[k] for k in ("created_at",) if k in r.structured_content}
        r = await call("calmesh_manage_calendar", {"calendar_slug": slug, "action": "update", "name": "Renamed"})
        assert not r.is_error and (await rest.get(f"calendars/{slug}")).json()["name"] == "Renamed"
        source_id = (await rest.get(f"calendars/{slug}")).json()["sources"][0]["id"]
        r = await call("calmesh_manage_calendar", {"calendar_slug": slug, "action": "remove_source", "source_id": source_id})
        assert not r.is_error and (await rest.get(f"calendars/{slug}")).json()["sources"] == []

        r = await call("calmesh_remove_connection", {"connection_id": second})
        assert not r.is_error and (await rest.get(f"connections/{second}")).status_code == 404
        r = await call("calmesh_manage_calendar", {"calendar_slug": slug, "action": "delete"})
        assert not r.is_error and (await rest.get(f"calendars/{slug}")).status_code == 404

        # Booking: slots, book, list, cancel.
        page = f"mcp-{uuid.uuid4().hex[:6]}"
        made = await rest.post("booking-pages", json={
            "slug": page, "calendar_slug": "work", "title": "Chat", "duration_minutes": 30, "timezone": "Europe/Amsterdam",
            "weekly_hours": {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}})
        assert made.status_code == 201, made.text
        slot_args = {"handle": owner.handle, "start": day.isoformat(), "end": day.isoformat()}
        r = await call("calmesh_get_slots", {"booking_page_slug": page, **slot_args})
        expected = (await rest.get(f"booking-pages/{page}/slots", params=slot_args)).json()
        assert not r.is_error and r.structured_content == expected
        assert z(day_start + timedelta(hours=10)) not in [s["start"] for s in expected["slots"]]  # the event is busy
        first = expected["slots"][0]["start"]

        r = await call("calmesh_create_booking", {"booking_page_slug": page, "handle": owner.handle, "start": first,
                                                   "name": "Mia Model", "email": "mia@example.org"})
        assert not r.is_error, r.content[0].text
        booking = r.structured_content
        assert booking["status"] == "confirmed" and booking["start"] == first
        assert (await rest.get(f"bookings/{booking['id']}")).json()["status"] == "confirmed"
        # The calendar write fills in the booking's event_id a moment later; compare once it has.
        deadline = asyncio.get_running_loop().time() + 60
        while not (await rest.get(f"bookings/{booking['id']}")).json().get("event_id"):
            assert asyncio.get_running_loop().time() < deadline, "the booking's event was never written"
            await asyncio.sleep(0.1)

        r = await call("calmesh_list_bookings", {"status": "confirmed"})
        assert not r.is_error
        assert r.structured_content == (await rest.get("bookings", params={"status": "confirmed", "limit": 50})).json()
        assert booking["id"] in r.content[0].text

        r = await call("calmesh_cancel_booking", {"booking_id": booking["id"], "reason": "testing"})
        assert not r.is_error and (await rest.get(f"bookings/{booking['id']}")).json()["status"] == "cancelled"

        # Polls.
        options = [{"start": z(day_start + timedelta(hours=h)), "end": z(day_start + timedelta(hours=h + 1))} for h in (13, 15)]
        r = await call("calmesh_create_poll", {"title": "Kick-off", "duration_minutes": 60, "options": options,
                                               "calendar_slug": "work"})
        assert not r.is_error, r.content[0].text
        poll = r.structured_content
        assert poll["status"] == "open" and len(poll["options"]) == 2

        r = await call("calmesh_list_polls", {})
        assert not r.is_error and r.structured_content == (await rest.get("polls", params={"limit": 50})).json()

        r = await call("calmesh_get_poll_overlap", {"poll_id": poll["id"]})
        assert not r.is_error and r.structured_content == (await rest.get(f"polls/{poll['id']}/overlap")).json()

        r = await call("calmesh_decide_poll", {"poll_id": poll["id"], "option_id": poll["options"][0]["id"]})
        assert not r.is_error, r.content[0].text
        assert (await rest.get(f"polls/{poll['id']}")).json()["status"] == "decided"

    assert called == TOOLS


async def test_a_read_key_calling_a_booking_tool_gets_a_clear_tool_error(stack: Stack, owner: PlatformOwner) -> None:
    async with httpx.AsyncClient(base_url=f"{stack.gateway_url}/api/v1/", headers=owner.auth, timeout=30) as rest:
        made = await rest.post("api-keys", json={"name": "read only", "scope": "read"})
        assert made.status_code == 201, made.text
        read_key = made.json()["key"]
    async with mcp(stack, read_key) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert len(tools) == 19  # still listed ...
        assert "configured key has scope read" in (tools["calmesh_create_booking"].description or "")  # ... and say so
        assert "configured key has scope read" not in (tools["calmesh_list_calendars"].description or "")

        start = z(datetime.now(UTC) + timedelta(days=3))
        result = await session.call_tool("calmesh_create_booking", {
            "booking_page_slug": "anything", "handle": owner.handle, "start": start, "name": "Rae", "email": "rae@example.org"})
        assert result.is_error
        text = result.content[0].text
        assert "insufficient_scope" in text and "This key has scope read" in text and "book" in text

        # Reading still works with the same key.
        listed = await session.call_tool("calmesh_list_calendars", {})
        assert not listed.is_error


async def test_ids_that_climb_out_of_their_path_are_refused_and_delete_nothing(stack: Stack, owner: PlatformOwner) -> None:
    """Issue 10.4: a tool's id argument never becomes another path. `../webhooks/wh_…` as a
    connection id once deleted a webhook, `../api-keys/key_…` revoked a key."""
    async with httpx.AsyncClient(base_url=f"{stack.gateway_url}/api/v1/", headers=owner.auth, timeout=30) as rest:
        hook = await rest.post("webhooks", json={"url": "http://127.0.0.1:9/hook", "event_types": ["*"]})
        assert hook.status_code == 201, hook.text
        hook_id = hook.json()["id"]
        spare = await rest.post("api-keys", json={"name": "spare", "scope": "read"})
        assert spare.status_code == 201, spare.text
        spare_id, spare_key = spare.json()["id"], spare.json()["key"]
        calendars_before = (await rest.get("calendars")).json()["data"]

        attacks = [
            ("calmesh_remove_connection", {"connection_id": f"../webhooks/{hook_id}"}),
            ("calmesh_remove_connection", {"connection_id": f"../api-keys/{spare_id}"}),
            ("calmesh_remove_connection", {"connection_id": f"conn_x/../../webhooks/{hook_id}"}),
            ("calmesh_remove_connection", {"connection_id": f"%2e%2e%2fwebhooks%2f{hook_id}"}),
            ("calmesh_check_connection_status", {"connection_id": f"../webhooks/{hook_id}"}),
            ("calmesh_cancel_booking", {"booking_id": f"../../webhooks/{hook_id}"}),
            ("calmesh_get_poll_overlap", {"poll_id": "../../me"}),
            ("calmesh_decide_poll", {"poll_id": f"../webhooks/{hook_id}/rotate-secret", "option_id": "opt_x"}),
            ("calmesh_manage_calendar", {"calendar_slug": f"../webhooks/{hook_id}", "action": "delete"}),
            ("calmesh_manage_calendar", {"calendar_slug": "work", "action": "remove_source",
                                         "source_id": f"../../../webhooks/{hook_id}"}),
            ("calmesh_get_events", {"calendar_slug": "work/../../webhooks", "start": "2026-03-01T00:00:00Z",
                                    "end": "2026-03-02T00:00:00Z"}),
            ("calmesh_get_slots", {"booking_page_slug": "../../webhooks", "handle": owner.handle,
                                   "start": "2026-03-01", "end": "2026-03-01"}),
        ]
        async with mcp(stack, owner.key) as session:
            for name, args in attacks:
                result = await session.call_tool(name, args)
                assert result.is_error, (name, args, result.content)
                assert "must be" in result.content[0].text, result.content[0].text

        assert (await rest.get(f"webhooks/{hook_id}")).status_code == 200  # not deleted
        assert (await rest.get("me", headers={"Authorization": f"Bearer {spare_key}"})).status_code == 200  # not revoked
        assert (await rest.get("calendars")).json()["data"] == calendars_before
        assert (await rest.get(f"connections/{owner.connection_id}")).status_code == 200
