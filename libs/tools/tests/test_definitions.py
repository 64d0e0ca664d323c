"""The one definition of the 19 tools: every format is made from it and is valid for its vendor,
arguments are checked against the schema, and no argument can change the path a tool calls."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from calmesh_tools import BY_NAME, TOOLS, tool_list, validate
from calmesh_tools.executor import api_path

REFERENCE = [
    "calmesh_list_calendars", "calmesh_get_events", "calmesh_check_availability", "calmesh_find_conflicts",
    "calmesh_get_slots", "calmesh_create_booking", "calmesh_cancel_booking", "calmesh_list_bookings",
    "calmesh_create_poll", "calmesh_list_polls", "calmesh_get_poll_overlap", "calmesh_decide_poll",
    "calmesh_start_oauth_connection", "calmesh_start_credential_connection", "calmesh_check_connection_status",
    "calmesh_list_connections", "calmesh_remove_connection", "calmesh_create_calendar", "calmesh_manage_calendar",
]
GEMINI_TYPES = {"string", "number", "integer", "boolean", "array", "object"}
FORBIDDEN_FOR_GEMINI = {"$ref", "$defs", "$schema", "additionalProperties", "const", "oneOf", "allOf", "examples"}


def test_the_reference_s_19_tools_in_its_order() -> None:
    assert [t.name for t in TOOLS] == REFERENCE


@pytest.mark.parametrize("fmt", ["openai", "anthropic", "mcp"])
def test_json_schema_formats_are_valid_json_schema(fmt: str) -> None:
    tools = tool_list(fmt)
    assert len(tools) == 19
    for tool in tools:
        schema = {"openai": lambda t: t["function"]["parameters"], "anthropic": lambda t: t["input_schema"],
                  "mcp": lambda t: t["inputSchema"]}[fmt](tool)
        Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object"
        for name, prop in schema["properties"].items():
            assert prop.get("description") or "$ref" in prop, name


def _walk(node: Any, path: str = "") -> list[str]:
    problems = []
    if isinstance(node, dict):
        for key in node.keys() & FORBIDDEN_FOR_GEMINI:
            problems.append(f"{path}.{key}")
        if "type" in node and node["type"] not in GEMINI_TYPES:
            problems.append(f"{path}.type={node['type']!r}")
        for key, value in node.items():
            if key == "properties":
                for name, sub in value.items():
                    problems += _walk(sub, f"{path}.{name}")
            elif key == "items":
                problems += _walk(value, f"{path}[]")
    return problems


def test_gemini_gets_its_openapi_subset_with_refs_inlined() -> None:
    tools = {t["name"]: t for t in tool_list("gemini")}
    assert list(tools) == REFERENCE
    for name, tool in tools.items():
        assert set(tool) == {"name", "description", "parameters"}
        assert _walk(tool["parameters"]) == [], name
    poll = tools["calmesh_create_poll"]["parameters"]
    assert poll["properties"]["options"]["items"]["properties"]["start"]["type"] == "string"  # $ref inlined
    assert tools["calmesh_create_calendar"]["parameters"]["properties"]["sources"]["items"]["required"] == ["connection_id"]


def test_descriptions_name_the_scope_and_warn_a_key_that_lacks_it() -> None:
    plain = {t["function"]["name"]: t["function"]["description"] for t in tool_list("openai")}
    assert "Needs an API key with scope book or full." in plain["calmesh_create_booking"]
    read = {t["function"]["name"]: t["function"]["description"] for t in tool_list("openai", "read")}
    assert "configured key has scope read" in read["calmesh_create_booking"]
    assert "configured key has scope read" not in read["calmesh_list_calendars"]


@pytest.mark.parametrize("name,args,field", [
    ("calmesh_remove_connection", {"connection_id": "../webhooks/wh_x"}, "arguments.connection_id"),
    ("calmesh_cancel_booking", {"booking_id": "bk_a/../../me"}, "arguments.booking_id"),
    ("calmesh_get_events", {"calendar_slug": "work", "start": "yesterday", "end": "2026-03-02T00:00:00Z"},
     "arguments.start"),
    ("calmesh_create_booking", {"booking_page_slug": "chat", "handle": "ada", "start": "2026-03-02T09:00:00Z",
                                "name": "Bo"}, "arguments.email"),
    ("calmesh_list_calendars", {"colour": "red"}, "arguments.colour"),
    ("calmesh_create_poll", {"title": "T", "duration_minutes": 30, "options": [{"start": "2026-03-02T09:00:00Z"}]},
     "arguments.options.0.end"),
])
def test_arguments_outside_the_schema_are_named(name: str, args: dict[str, Any], field: str) -> None:
    errors = validate(BY_NAME[name], args)
    assert field in [e.field for e in errors], errors


def test_ids_are_refused_in_words() -> None:
    [error] = validate(BY_NAME["calmesh_remove_connection"], {"connection_id": "../api-keys/key_x"})
    assert error.message == "must be a connection id (conn_…)"


def test_every_path_segment_is_quoted() -> None:
    assert api_path(("calendars", "a/b", "events")) == "calendars/a%2Fb/events"
    assert api_path(("connections", "%2e%2e")) == "connections/%252e%252e"
    with pytest.raises(Exception):
        api_path(("connections", ".."))


async def test_a_new_poll_is_shared_by_its_voting_page_not_the_api_endpoint() -> None:
    data = {"id": "poll_1", "title": "Kick-off", "status": "open", "options": [],
            "vote_url": "https://cal.example/api/v1/polls/poll_1/votes?token=t",
            "vote_page_url": "https://cal.example/polls/poll_1/vote?token=t"}
    text, _ = await BY_NAME["calmesh_create_poll"].render(None, {}, data)  # type: ignore[arg-type]
    assert text == "Poll poll_1 'Kick-off' is open. Share: https://cal.example/polls/poll_1/vote?token=t"
