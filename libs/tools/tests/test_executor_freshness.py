"""What a model reads when CalMesh could not check a source: an incomplete answer (docs/api-guide.md, Freshness)
opens with a line that says so, names the source, its connection's status and last error, and says
not to treat its time as free. And `calmesh_check_availability` across several calendars is one
`POST /availability/find`, while its one-calendar use is unchanged.

The API is an in-process fake (httpx.MockTransport) answering the contract's shapes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from calmesh_tools.executor import Executor

CAL = {"slug": "work", "name": "Work", "timezone": "Europe/Amsterdam", "sources": [
    {"id": "src_dav", "connection_id": "conn_dav", "calendar_id": "c1", "name": "Office", "sort_order": 0},
    {"id": "src_feed", "connection_id": "conn_feed", "calendar_id": "f1", "name": "Team feed", "sort_order": 1},
]}
OTHER = {"slug": "bob", "name": "Bob", "timezone": "Europe/Amsterdam", "sources": [
    {"id": "src_bob", "connection_id": "conn_dav", "calendar_id": "c2", "name": "Bob's", "sort_order": 0}]}
CONNECTIONS = {
    "conn_dav": {"id": "conn_dav", "provider": "caldav", "display_name": "Radicale", "status": "active",
                 "last_error": None, "last_synced_at": "2026-12-03T09:00:00Z", "calendars": []},
    "conn_feed": {"id": "conn_feed", "provider": "ical", "display_name": "team.ics", "status": "error",
                  "last_error": "The feed answered HTTP 500", "last_synced_at": None, "calendars": []},
}
SOURCES_INCOMPLETE = [
    {"id": "src_dav", "connection_id": "conn_dav", "status": "active", "last_synced_at": "2026-12-03T09:00:00Z"},
    {"id": "src_feed", "connection_id": "conn_feed", "status": "error", "last_synced_at": None},
]
HEADLINE = ("INCOMPLETE ANSWER: could not check 'Team feed' of calendar work (ical connection conn_feed: "
            "status error; last error: The feed answered HTTP 500; last synced never) — ")


class FakeApi:
    def __init__(self, complete: bool = False) -> None:
        self.complete = complete
        self.requests: list[httpx.Request] = []

    def sources(self) -> list[dict[str, Any]]:
        if self.complete:
            return [dict(s, status="active", last_synced_at="2026-12-03T09:00:00Z") for s in SOURCES_INCOMPLETE]
        return SOURCES_INCOMPLETE

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/api/v1/")
        fresh = {"complete": self.complete, "sources": self.sources()}
        if path == "calendars/work":
            return httpx.Response(200, json=CAL)
        if path == "calendars/bob":
            return httpx.Response(200, json=OTHER)
        if path.startswith("connections/"):
            return httpx.Response(200, json=CONNECTIONS[path.split("/")[1]])
        if path == "calendars/work/availability":
            return httpx.Response(200, json={
                "slug": "work", "timezone": "Europe/Amsterdam", "start": "2026-12-07T23:00:00Z",
                "end": "2026-12-08T23:00:00Z", "busy": [{"start": "2026-12-08T09:00:00Z", "end": "2026-12-08T10:00:00Z",
                                                         "source_ids": ["src_dav"]}],
                "free": [] if not self.complete else [{"start": "2026-12-08T10:00:00Z", "end": "2026-12-08T23:00:00Z"}],
                **fresh})
        if path == "calendars/work/events":
            return httpx.Response(200, json={"data": [], "next_cursor": None, **fresh})
        if path == "calendars/work/conflicts":
            return httpx.Response(200, json={"data": [], **fresh})
        if path == "availability/find":
            return httpx.Response(200, json={"timezone": "Europe/Amsterdam", "complete": self.complete, "slots": [
                {"start": "2026-12-08T10:00:00Z", "end": "2026-12-08T10:30:00Z", "free": ["bob"], "busy": [],
                 "unknown": ["work"]}]})
        return httpx.Response(404, json={"code": "not_found", "detail": path})


async def run(api: FakeApi, name: str, args: dict[str, Any]) -> Any:
    async with httpx.AsyncClient(base_url="http://calmesh.test/api/v1/", transport=httpx.MockTransport(api)) as client:
        return await Executor(client).call(name, args)


WINDOW = {"start": "2026-12-08T00:00:00Z", "end": "2026-12-09T00:00:00Z"}


@pytest.mark.parametrize("name,args,consequence", [
    ("calmesh_check_availability", {"calendar_slug": "work", "date": "2026-12-08"}, "do not treat its time as free."),
    ("calmesh_get_events", {"calendar_slug": "work", **WINDOW},
     "its events may be missing; do not treat its time as free."),
    ("calmesh_find_conflicts", {"calendar_slug": "work", **WINDOW}, "do not treat its time as free."),
])
async def test_an_incomplete_answer_opens_by_naming_the_source_that_could_not_be_checked(
        name: str, args: dict[str, Any], consequence: str) -> None:
    result = await run(FakeApi(complete=False), name, args)
    assert not result.is_error
    first, *rest = result.text.split("\n")
    assert first == HEADLINE + consequence
    assert "Office" not in first  # the source that synced is not blamed
    assert result.structured["complete"] is False


@pytest.mark.parametrize("name,args", [
    ("calmesh_check_availability", {"calendar_slug": "work", "date": "2026-12-08"}),
    ("calmesh_get_events", {"calendar_slug": "work", **WINDOW}),
    ("calmesh_find_conflicts", {"calendar_slug": "work", **WINDOW}),
    ("calmesh_check_availability", {"calendar_slugs": ["bob", "work"], "duration_minutes": 30, **WINDOW}),
])
async def test_a_complete_answer_says_nothing_of_the_kind(name: str, args: dict[str, Any]) -> None:
    api = FakeApi(complete=True)
    result = await run(api, name, args)
    assert not result.is_error and "INCOMPLETE" not in result.text
    assert not any(r.url.path.startswith("/api/v1/connections/") for r in api.requests)  # no lookups then


async def test_several_calendars_are_one_find_request_and_an_unknown_one_is_named() -> None:
    api = FakeApi(complete=False)
    result = await run(api, "calmesh_check_availability", {
        "calendar_slugs": ["bob"], "optional_calendar_slugs": ["work"], "duration_minutes": 30, **WINDOW,
        "tz": "Europe/Amsterdam"})
    assert not result.is_error, result.text
    [find] = [r for r in api.requests if r.url.path == "/api/v1/availability/find"]
    assert find.method == "POST"
    assert json.loads(find.content) == {
        "calendars": [{"slug": "bob", "required": True}, {"slug": "work", "required": False}],
        "duration_minutes": 30, "start": WINDOW["start"], "end": WINDOW["end"], "tz": "Europe/Amsterdam"}
    lines = result.text.split("\n")
    assert lines[0] == HEADLINE + "do not treat its time as free."
    assert lines[1] == "1 time(s) of 30 min when bob is free (optional: work), in Europe/Amsterdam:"
    assert lines[2].startswith("- Tue 08 Dec 2026 11:00 CET (10:00 UTC)") and "not checked: work" in lines[2]
    assert result.structured["slots"][0]["unknown"] == ["work"]


async def test_a_day_across_calendars_is_read_in_tz_and_calendar_slug_counts_as_required() -> None:
    api = FakeApi(complete=True)
    result = await run(api, "calmesh_check_availability", {
        "calendar_slug": "work", "calendar_slugs": ["bob", "work"], "duration_minutes": 45,
        "date": "2026-03-29", "tz": "Europe/Amsterdam"})  # a 23-hour day
    assert not result.is_error, result.text
    [find] = [r for r in api.requests if r.url.path == "/api/v1/availability/find"]
    body = json.loads(find.content)
    assert body["calendars"] == [{"slug": "work", "required": True}, {"slug": "bob", "required": True}]
    assert (body["start"], body["end"]) == ("2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z")


async def test_one_calendar_slug_is_still_its_availability() -> None:
    api = FakeApi(complete=True)
    result = await run(api, "calmesh_check_availability", {"calendar_slug": "work", "date": "2026-12-08",
                                                           "explain": True})
    assert not result.is_error
    [req] = [r for r in api.requests if r.url.path.endswith("/availability")]
    assert req.url.path == "/api/v1/calendars/work/availability"
    assert dict(req.url.params) == {"date": "2026-12-08", "explain": "true"}
    assert result.text.startswith("Availability of work ")


@pytest.mark.parametrize("args,field", [
    ({}, "arguments.calendar_slug"),
    ({"calendar_slugs": ["bob"], **WINDOW}, "arguments.duration_minutes"),
    ({"optional_calendar_slugs": ["bob"], "duration_minutes": 30, **WINDOW}, "arguments.calendar_slugs"),
    ({"calendar_slugs": ["bob"], "duration_minutes": 30, "date": "2026-12-08"}, "arguments.tz"),
    ({"calendar_slugs": ["bob"], "duration_minutes": 30, "explain": True, **WINDOW}, "arguments.explain"),
    ({"calendar_slugs": ["../me"], "duration_minutes": 30, **WINDOW}, "arguments.calendar_slugs.0"),
])
async def test_arguments_that_do_not_fit_together_are_named_and_nothing_is_sent(args: dict[str, Any], field: str) -> None:
    api = FakeApi()
    result = await run(api, "calmesh_check_availability", args)
    assert result.is_error
    assert field in [e["field"] for e in result.structured["error"]["errors"]], result.text
    assert api.requests == []
