"""The README's function-calling examples (examples/function_calling_openai.py and
examples/function_calling_anthropic.py) run against the local stack, with a scripted stand-in for
the model: a client object with the SDK's call surface (`chat.completions.create` /
`messages.create`) that asks for CalMesh tools, as a real model would, and then answers. No network,
no SDK installed: the stand-in records what the example sent it (the tools, the tool results)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from types import SimpleNamespace as NS
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.booking import PlatformOwner, sign_up_with_caldav
from calmesh_testing.radicale import Radicale
from calmesh_tools import TOOLS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = [t.name for t in TOOLS]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radicale]:
    server = Radicale(tmp_path_factory.mktemp("radicale-examples")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def owner(stack: Stack, radicale: Radicale) -> PlatformOwner:
    return await sign_up_with_caldav(stack.gateway_url, radicale)


@pytest.fixture
def day_with_a_meeting(stack: Stack, owner: PlatformOwner) -> str:
    day = (datetime.now(ZoneInfo("Europe/Amsterdam")) + timedelta(days=4)).date()
    start = datetime(day.year, day.month, day.day, 10, tzinfo=ZoneInfo("Europe/Amsterdam"))
    r = httpx.post(f"{stack.gateway_url}/api/v1/calendars/work/events", headers=owner.auth, json={
        "title": "Dentist", "start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()})
    assert r.status_code == 201, r.text
    return day.isoformat()


# The script both stand-ins follow: list the calendars, check the day's availability, a call with a
# bad argument (the example must hand the 422 back to the model), then answer.
def _script(day: str) -> list[tuple[str, dict[str, Any]] | str]:
    return [
        ("calmesh_list_calendars", {}),
        ("calmesh_check_availability", {"calendar_slug": "work", "date": day, "explain": True}),
        ("calmesh_remove_connection", {"connection_id": "../webhooks/wh_x"}),
        "You are busy 10:00-11:00 (Dentist); the rest of the day is free.",
    ]


class OpenAIStandIn:
    """`client.chat.completions.create(...)` answering from the script, in the SDK's shapes."""

    def __init__(self, script: list[Any]) -> None:
        self.script, self.requests = list(script), []
        self.chat = NS(completions=NS(create=self.create))

    def create(self, *, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Any:
        self.requests.append({"model": model, "messages": json.loads(json.dumps(messages)), "tools": tools})
        step = self.script.pop(0)
        if isinstance(step, str):
            message = NS(content=step, tool_calls=None)
        else:
            call = NS(id=f"call_{len(self.requests)}", type="function",
                      function=NS(name=step[0], arguments=json.dumps(step[1])))
            message = NS(content=None, tool_calls=[call])
        return NS(choices=[NS(message=message, finish_reason="tool_calls" if message.tool_calls else "stop")])


class AnthropicStandIn:
    """`client.messages.create(...)` answering from the script, in the SDK's shapes."""

    def __init__(self, script: list[Any]) -> None:
        self.script, self.requests = list(script), []
        self.messages = NS(create=self.create)

    def create(self, *, model: str, max_tokens: int, tools: list[dict[str, Any]], messages: list[dict[str, Any]],
               system: str) -> Any:
        self.requests.append({"model": model, "messages": list(messages), "tools": tools})
        step = self.script.pop(0)
        if isinstance(step, str):
            return NS(stop_reason="end_turn", content=[NS(type="text", text=step)])
        return NS(stop_reason="tool_use",
                  content=[NS(type="tool_use", id=f"toolu_{len(self.requests)}", name=step[0], input=step[1])])


def test_the_openai_example_runs_the_tools_the_model_asks_for(stack: Stack, owner: PlatformOwner,
                                                              day_with_a_meeting: str) -> None:
    example = _load("function_calling_openai")
    model = OpenAIStandIn(_script(day_with_a_meeting))
    with example.calmesh_client(f"{stack.gateway_url}/api/v1", owner.key) as calmesh:
        answer = example.run("When am I free?", client=model, calmesh=calmesh)
    assert answer.startswith("You are busy 10:00-11:00")
    first = model.requests[0]["tools"]
    assert [t["function"]["name"] for t in first] == NAMES and first[0]["type"] == "function"
    results = [m for m in model.requests[-1]["messages"] if m["role"] == "tool"]
    assert [r["tool_call_id"] for r in results] == ["call_1", "call_2", "call_3"]
    assert "work: Work" in results[0]["content"]
    assert "because of: Dentist" in results[1]["content"]
    assert results[2]["content"].startswith("ERROR:") and "arguments.connection_id" in results[2]["content"]


def test_the_anthropic_example_runs_the_tools_the_model_asks_for(stack: Stack, owner: PlatformOwner,
                                                                 day_with_a_meeting: str) -> None:
    example = _load("function_calling_anthropic")
    model = AnthropicStandIn(_script(day_with_a_meeting))
    with example.calmesh_client(f"{stack.gateway_url}/api/v1", owner.key) as calmesh:
        answer = example.run("When am I free?", client=model, calmesh=calmesh)
    assert answer.startswith("You are busy 10:00-11:00")
    assert [t["name"] for t in model.requests[0]["tools"]] == NAMES and "input_schema" in model.requests[0]["tools"][0]
    results = [block for m in model.requests[-1]["messages"] if m["role"] == "user" and isinstance(m["content"], list)
               for block in m["content"]]
    assert [r["tool_use_id"] for r in results] == ["toolu_1", "toolu_2", "toolu_3"]
    assert "work: Work" in results[0]["content"] and not results[0]["is_error"]
    assert "because of: Dentist" in results[1]["content"]
    assert results[2]["is_error"] and "arguments.connection_id" in results[2]["content"]
