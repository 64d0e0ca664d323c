"""`GET /api/v1/tools` and `POST /api/v1/tools/{name}/call` through the gateway, as a
function-calling agent uses them: valid schemas in every vendor's format, clear 4xx answers for bad
requests, and the key's scope rules applied to each tool."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.booking import PlatformOwner, sign_up_with_caldav
from calmesh_testing.radicale import Radicale
from calmesh_tools import TOOLS

NAMES = [t.name for t in TOOLS]
GEMINI_TYPES = {"string", "number", "integer", "boolean", "array", "object"}
NOT_GEMINI = {"$ref", "$defs", "$schema", "additionalProperties", "const", "oneOf", "allOf", "examples"}


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radicale]:
    server = Radicale(tmp_path_factory.mktemp("radicale-tools")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def owner(stack: Stack, radicale: Radicale) -> PlatformOwner:
    return await sign_up_with_caldav(stack.gateway_url, radicale)


@pytest.fixture
def api(stack: Stack, owner: PlatformOwner) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{stack.gateway_url}/api/v1/", headers=owner.auth, timeout=60) as client:
        yield client


def _gemini_problems(node: Any, path: str = "") -> list[str]:
    out = []
    if isinstance(node, dict):
        out += [f"{path}.{k}" for k in node.keys() & NOT_GEMINI]
        if "type" in node and node["type"] not in GEMINI_TYPES:
            out.append(f"{path}.type")
        for name, sub in (node.get("properties") or {}).items():
            out += _gemini_problems(sub, f"{path}.{name}")
        if "items" in node:
            out += _gemini_problems(node["items"], f"{path}[]")
    return out


def test_openai_and_anthropic_formats_carry_valid_json_schemas(api: httpx.Client) -> None:
    openai = api.get("tools", params={"format": "openai"})
    assert openai.status_code == 200, openai.text
    data = openai.json()["data"]
    assert [t["function"]["name"] for t in data] == NAMES
    for tool in data:
        assert tool["type"] == "function" and set(tool["function"]) == {"name", "description", "parameters"}
        Draft202012Validator.check_schema(tool["function"]["parameters"])
    anthropic = api.get("tools", params={"format": "anthropic"}).json()["data"]
    assert [t["name"] for t in anthropic] == NAMES
    for tool in anthropic:
        assert set(tool) == {"name", "description", "input_schema"}
        Draft202012Validator.check_schema(tool["input_schema"])
        assert tool["input_schema"]["type"] == "object"


def test_gemini_format_is_its_openapi_subset(api: httpx.Client) -> None:
    data = api.get("tools", params={"format": "gemini"}).json()["data"]
    assert [t["name"] for t in data] == NAMES
    for tool in data:
        assert set(tool) == {"name", "description", "parameters"}
        assert tool["parameters"]["type"] == "object"
        assert _gemini_problems(tool["parameters"]) == [], tool["name"]


def test_any_key_may_list_and_descriptions_name_its_scope(stack: Stack, api: httpx.Client) -> None:
    read_key = api.post("api-keys", json={"name": "read", "scope": "read"}).json()["key"]
    listed = httpx.get(f"{stack.gateway_url}/api/v1/tools", params={"format": "anthropic"},
                       headers={"Authorization": f"Bearer {read_key}"})
    assert listed.status_code == 200
    described = {t["name"]: t["description"] for t in listed.json()["data"]}
    assert "configured key has scope read" in described["calmesh_create_booking"]
    assert httpx.get(f"{stack.gateway_url}/api/v1/tools").status_code == 401


def test_unknown_format_is_422(api: httpx.Client) -> None:
    r = api.get("tools", params={"format": "cohere"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == "format"


def test_unknown_tool_is_404(api: httpx.Client) -> None:
    r = api.post("tools/calmesh_make_coffee/call", json={"arguments": {}})
    assert r.status_code == 404 and r.json()["code"] == "tool_not_found"


@pytest.mark.parametrize("name,arguments,field", [
    ("calmesh_remove_connection", {"connection_id": "../webhooks/wh_x"}, "arguments.connection_id"),
    ("calmesh_get_events", {"calendar_slug": "work", "start": "soon"}, "arguments.end"),
    ("calmesh_list_polls", {"limit": 0}, "arguments.limit"),
    ("calmesh_list_calendars", {"sort": "name"}, "arguments.sort"),
])
def test_arguments_that_fail_the_schema_are_422_naming_them(api: httpx.Client, name: str, arguments: dict[str, Any],
                                                            field: str) -> None:
    r = api.post(f"tools/{name}/call", json={"arguments": arguments})
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]]


def test_a_body_that_is_not_a_tool_call_is_400(api: httpx.Client) -> None:
    assert api.post("tools/calmesh_list_calendars/call", json={"args": {}}).status_code == 400
    assert api.post("tools/calmesh_list_calendars/call", content=b"{nope",
                    headers={"content-type": "application/json"}).status_code == 400


def test_a_call_answers_text_structured_and_is_error(api: httpx.Client) -> None:
    r = api.post("tools/calmesh_list_calendars/call", json={"arguments": {}})
    assert r.status_code == 200
    body = r.json()
    assert body["is_error"] is False and body["content"][0]["type"] == "text" and "work" in body["content"][0]["text"]
    assert body["structured"] == api.get("calendars", params={"limit": 200}).json()


def test_a_read_key_calling_a_booking_tool_gets_is_error_naming_book(stack: Stack, api: httpx.Client,
                                                                   owner: PlatformOwner) -> None:
    read_key = api.post("api-keys", json={"name": "read", "scope": "read"}).json()["key"]
    start = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = httpx.post(f"{stack.gateway_url}/api/v1/tools/calmesh_create_booking/call",
                   headers={"Authorization": f"Bearer {read_key}"},
                   json={"arguments": {"booking_page_slug": "anything", "handle": owner.handle, "start": start,
                                       "name": "Rae", "email": "rae@example.org"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["is_error"] is True
    text = body["content"][0]["text"]
    assert "insufficient_scope" in text and "needs book" in text and "This key has scope read" in text
    assert body["structured"]["error"]["required_scope"] == "book"
