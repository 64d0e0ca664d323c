"""NUL characters and deep JSON are refused where requests are decoded: a 400 problem, not a 500."""

from __future__ import annotations

import httpx
import msgspec
import pytest
from litestar import Litestar, get, post

from calmesh_common.problem_handler import problem_handler
from calmesh_common.problems import Problem
from calmesh_common.requestguard import MAX_JSON_DEPTH, RequestGuardMiddleware, check_body, check_target, json_depth


def deep(levels: int) -> bytes:
    return b'{"a":' + b"[" * levels + b"]" * levels + b"}"


@pytest.mark.parametrize("body", [
    b'{"name": "a\\u0000b"}',
    b'{"sources": [{"name": "x"}, {"name": "\\u0000"}]}',
    b'{"a\\u0000": 1}',
    b'{"name": "\\\\\\u0000"}',  # an escaped backslash, then a real NUL escape
])
def test_a_nul_in_any_json_string_is_a_400_naming_the_field(body: bytes) -> None:
    with pytest.raises(Problem) as caught:
        check_body(body, b"application/json")
    assert caught.value.status == 400 and caught.value.code == "invalid_character"
    assert caught.value.errors


def test_the_field_holding_the_nul_is_named() -> None:
    with pytest.raises(Problem) as caught:
        check_body(b'{"sources": [{"name": "x"}, {"name": "a\\u0000"}]}', "application/json")
    assert caught.value.errors is not None and caught.value.errors[0].field == "sources[1].name"


@pytest.mark.parametrize("body", [
    b'{"name": "a\\\\u0000b"}',  # the text \u0000, not a NUL
    b'{"weekly_hours": {"mon": [["09:00", "17:00"]]}}',
    b'{"note": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}',
    b"",
])
def test_ordinary_bodies_pass(body: bytes) -> None:
    check_body(body, "application/json")


def test_json_nested_past_the_limit_is_a_400_and_at_the_limit_passes() -> None:
    check_body(deep(MAX_JSON_DEPTH - 1), None)
    for levels in (MAX_JSON_DEPTH, 1_000, 100_000):
        with pytest.raises(Problem) as caught:
            check_body(deep(levels), None)
        assert caught.value.status == 400 and caught.value.code == "json_too_deep"
    # A wide, flat body with many brackets is not deep.
    flat = msgspec.json.encode({"items": [[1], [2]] * 5_000})
    assert json_depth(flat) == 3
    check_body(flat, "application/json")


def test_form_bodies_and_query_strings_with_nul_are_400s() -> None:
    with pytest.raises(Problem) as caught:
        check_body(b"id=tr_%00x", "application/x-www-form-urlencoded")
    assert caught.value.errors is not None and caught.value.errors[0].field == "id"
    check_body(b"id=tr_abc", "application/x-www-form-urlencoded")
    with pytest.raises(Problem) as caught:
        check_target("/api/v1/bookings", b"status=confirmed&start=2026%00")
    assert caught.value.status == 400 and caught.value.errors is not None
    assert caught.value.errors[0].field == "start"
    with pytest.raises(Problem):
        check_target("/api/v1/calendars/a\x00b", b"")
    check_target("/api/v1/calendars/work", b"start=2026-03-01T00%3A00%3A00Z")


@post("/things")
async def create_thing(data: dict[str, object]) -> dict[str, object]:
    return data


@get("/things")
async def list_things(name: str = "") -> dict[str, str]:
    return {"name": name}


async def test_the_middleware_answers_problems_before_litestar_decodes() -> None:
    app = Litestar([create_thing, list_things], middleware=[lambda app: RequestGuardMiddleware(app, 1_048_576)],
                   exception_handlers={Exception: problem_handler})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.post("/things", content=deep(2_000), headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == "json_too_deep"
        assert r.headers["content-type"].startswith("application/problem+json")
        r = await client.post("/things", content=b'{"name": "\\u0000"}', headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == "invalid_character"
        r = await client.get("/things", params={"name": "a\x00"})
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "name"
        # Good requests reach the handler with their body intact.
        r = await client.post("/things", json={"name": "fine", "nested": [[1, 2]]})
        assert r.status_code == 201 and r.json() == {"name": "fine", "nested": [[1, 2]]}
        assert (await client.get("/things", params={"name": "ok"})).json() == {"name": "ok"}
