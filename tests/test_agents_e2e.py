"""Agents everywhere (issue 16), against the whole platform with a Radicale-backed calendar:

- the MCP Inspector CLI (an independent MCP client) lists the same 19 tools — names, descriptions,
  input schemas — from the Python server `calmesh-mcp` and from `npx @calmesh/mcp-server` (packed with
  `npm pack`, installed from the tarball), over stdio and streamable HTTP (401 without the secret);
- every tool is called on both servers and what each returns is what the REST API says;
- `POST /api/v1/tools/{name}/call` gives the Python MCP tool's result for every tool.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from calmesh_common.devstack.embedded import free_port
from calmesh_common.devstack.supervisor import Stack
from calmesh_testing import npm
from calmesh_testing.booking import PlatformOwner, sign_up_with_caldav
from calmesh_testing.radicale import Radicale
from calmesh_tools import TOOLS

pytestmark = pytest.mark.timeout(900)

PY_SERVER = str(Path(sys.executable).parent / "calmesh-mcp")
AMS = ZoneInfo("Europe/Amsterdam")
NAMES = [t.name for t in TOOLS]


def z(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radicale]:
    server = Radicale(tmp_path_factory.mktemp("radicale-agents")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def owner(stack: Stack, radicale: Radicale) -> PlatformOwner:
    return await sign_up_with_caldav(stack.gateway_url, radicale)


@pytest.fixture(scope="module")
def inspector_cmd() -> list[str]:
    return npm.inspector()


@pytest.fixture(scope="module")
def node_prefix() -> Path:
    return npm.packed_server()


class Inspector:
    """Runs the MCP Inspector CLI against one server (a stdio command, or an HTTP URL)."""

    def __init__(self, cmd: list[str], target: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.cmd, self.target, self.env, self.cwd = cmd, target, env, cwd

    def run(self, *args: str) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALMESH_")}
        env.update(npm_config_cache=str(npm.cache_root() / "npm-cache"), npm_config_update_notifier="false")
        server_env = [a for k, v in self.env.items() for a in ("-e", f"{k}={v}")]
        cwd = ["--cwd", str(self.cwd)] if self.cwd else []
        done = subprocess.run([*self.cmd, *server_env, *cwd, *self.target, *args], env=env, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)
        try:
            answer, _ = json.JSONDecoder().raw_decode(done.stdout.lstrip())
        except ValueError:
            raise AssertionError(f"inspector said: {done.stdout[-2000:]}\n{done.stderr[-2000:]}") from None
        return answer

    def tools(self) -> list[dict[str, Any]]:
        return self.run("--method", "tools/list")["tools"]

    def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        pairs = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in arguments.items()]
        return self.run("--method", "tools/call", "--tool-name", name, *(["--tool-arg", *pairs] if pairs else []))


def python_server(cmd: list[str], stack: Stack, key: str) -> Inspector:
    return Inspector(cmd, [PY_SERVER], {"CALMESH_API_KEY": key, "CALMESH_API_URL": f"{stack.gateway_url}/api/v1"})


def node_server(cmd: list[str], prefix: Path, stack: Stack, key: str) -> Inspector:
    return Inspector(cmd, ["npx", "@calmesh/mcp-server"],
                     {"CALMESH_API_KEY": key, "CALMESH_API_URL": f"{stack.gateway_url}/api/v1"}, cwd=prefix)


def _shape(tool: dict[str, Any]) -> tuple[str, str, str, Any]:
    return tool["name"], tool.get("title"), tool["description"], tool["inputSchema"]


def test_both_servers_list_the_same_19_tools(stack: Stack, owner: PlatformOwner, inspector_cmd: list[str],
                                             node_prefix: Path) -> None:
    py = python_server(inspector_cmd, stack, owner.key).tools()
    node = node_server(inspector_cmd, node_prefix, stack, owner.key).tools()
    assert [t["name"] for t in py] == NAMES
    assert [_shape(t) for t in node] == [_shape(t) for t in py]
    assert [t.get("annotations") for t in node] == [t.get("annotations") for t in py]
    served = httpx.get(f"{stack.gateway_url}/api/v1/tools", params={"format": "mcp"}, headers=owner.auth).json()["data"]
    assert [_shape(t) for t in served] == [_shape(t) for t in py]

    # The scope of the key is in the descriptions of both.
    made = httpx.post(f"{stack.gateway_url}/api/v1/api-keys", json={"name": "read", "scope": "read"}, headers=owner.auth)
    read_key = made.json()["key"]
    py_read = {t["name"]: t["description"] for t in python_server(inspector_cmd, stack, read_key).tools()}
    node_read = {t["name"]: t["description"] for t in node_server(inspector_cmd, node_prefix, stack, read_key).tools()}
    assert py_read == node_read
    assert "configured key has scope read" in node_read["calmesh_create_booking"]
    assert "configured key has scope read" not in node_read["calmesh_list_calendars"]


def test_the_bundled_tool_list_is_the_definition(node_prefix: Path) -> None:
    from calmesh_tools.__main__ import render

    bundled = (npm.NODE_PACKAGE / "tools.json").read_text()
    assert bundled == render("mcp"), "regenerate it: python -m calmesh_tools mcp > clients/mcp-node/tools.json"
    installed = node_prefix / "node_modules" / "@calmesh" / "mcp-server"
    assert (installed / "tools.json").read_text() == bundled
    package = json.loads((installed / "package.json").read_text())
    assert package["name"] == "@calmesh/mcp-server" and package["bin"] and package["engines"]["node"]
    assert package["license"] and package["repository"]["url"]
    assert all(v[0].isdigit() for v in package["dependencies"].values()), "dependency versions are exact"


def test_node_server_over_http_needs_the_secret(stack: Stack, owner: PlatformOwner, inspector_cmd: list[str],
                                                node_prefix: Path) -> None:
    port, secret = free_port(), "a-secret-of-the-http-test"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALMESH_")}
    env.update(CALMESH_API_KEY=owner.key, CALMESH_API_URL=f"{stack.gateway_url}/api/v1", CALMESH_HTTP_SECRET=secret,
               npm_config_cache=str(npm.cache_root() / "npm-cache"))
    no_secret = subprocess.run(["npx", "@calmesh/mcp-server", "--transport", "http", "--port", str(port)], cwd=node_prefix,
                               env={k: v for k, v in env.items() if k != "CALMESH_HTTP_SECRET"}, capture_output=True,
                               text=True, timeout=60)
    assert no_secret.returncode == 2 and "CALMESH_HTTP_SECRET" in no_secret.stderr
    proc = subprocess.Popen(["npx", "@calmesh/mcp-server", "--transport", "http", "--port", str(port)], cwd=node_prefix,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the HTTP server never listened"
                time.sleep(0.2)
        assert r.status_code == 401
        wrong = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                           headers={"Authorization": "Bearer not-it"})
        assert wrong.status_code == 401
        over_http = Inspector(inspector_cmd, ["--transport", "http", "--server-url", url, "--header",
                                              f"Authorization: Bearer {secret}"], {})
        tools = over_http.tools()
        assert [t["name"] for t in tools] == NAMES
        stdio = python_server(inspector_cmd, stack, owner.key).tools()
        assert [_shape(t) for t in tools] == [_shape(t) for t in stdio]
        result = over_http.call("calmesh_list_calendars", {})
        assert not result.get("isError") and "work" in result["content"][0]["text"]
    finally:
        proc.terminate()
        proc.wait(10)


def _flow(call: Callable[[str, dict[str, Any]], dict[str, Any]], rest: httpx.Client, owner: PlatformOwner,
          day_offset: int) -> set[str]:
    """Call every tool through `call` and check each answer against the REST API."""
    called: set[str] = set()

    def tool(name: str, args: dict[str, Any]) -> dict[str, Any]:
        called.add(name)
        return call(name, args)

    def ok(result: dict[str, Any]) -> dict[str, Any]:
        assert not result.get("isError"), result["content"][0]["text"]
        return result.get("structuredContent") or {}

    day = (datetime.now(AMS) + timedelta(days=day_offset)).date()
    day_start = datetime(day.year, day.month, day.day, tzinfo=AMS)
    window = {"start": z(day_start), "end": z(day_start + timedelta(days=1))}
    created = rest.post("calendars/work/events", json={"title": f"Review {day_offset}", "start": z(day_start + timedelta(hours=10)),
                                                       "end": z(day_start + timedelta(hours=11))})
    assert created.status_code == 201, created.text

    assert ok(tool("calmesh_list_calendars", {})) == rest.get("calendars", params={"limit": 200}).json()
    assert ok(tool("calmesh_get_events", {"calendar_slug": "work", **window})) == \
        rest.get("calendars/work/events", params=window).json()
    r = tool("calmesh_check_availability", {"calendar_slug": "work", "date": day.isoformat(), "explain": True})
    assert ok(r) == rest.get("calendars/work/availability", params={"date": day.isoformat(), "explain": "true"}).json()
    assert f"because of: Review {day_offset}" in r["content"][0]["text"]
    assert ok(tool("calmesh_find_conflicts", {"calendar_slug": "work", **window})) == \
        rest.get("calendars/work/conflicts", params=window).json()

    stable = ("id", "provider", "display_name", "calendars")
    listed = ok(tool("calmesh_list_connections", {}))
    assert [{k: c[k] for k in stable} for c in listed["data"]] == \
        [{k: c[k] for k in stable} for c in rest.get("connections", params={"limit": 200}).json()["data"]]
    got = ok(tool("calmesh_check_connection_status", {"connection_id": owner.connection_id}))
    assert {k: got[k] for k in stable} == {k: v for k, v in rest.get(f"connections/{owner.connection_id}").json().items()
                                           if k in stable}
    second = ok(tool("calmesh_start_credential_connection", {
        "provider": "caldav", "url": owner.radicale.calendar_url(owner.calendar),
        "username": owner.radicale.username, "password": owner.radicale.password}))["id"]
    assert rest.get(f"connections/{second}").json()["provider"] == "caldav"
    r = tool("calmesh_start_oauth_connection", {"provider": "google"})
    direct = rest.post("connections/google", json={})
    if direct.status_code == 201:
        assert ok(r)["authorization_url"].startswith("http")
    else:  # Google is not configured on this stack: the tool says what the API says.
        assert r.get("isError") and direct.json()["detail"] in r["content"][0]["text"]

    slug = f"agent-{uuid.uuid4().hex[:6]}"
    made = ok(tool("calmesh_create_calendar", {"slug": slug, "name": "Via agent", "timezone": "Europe/Amsterdam",
                                               "sources": [{"connection_id": second}]}))
    assert made["slug"] == slug and made["sources"] == rest.get(f"calendars/{slug}").json()["sources"]
    ok(tool("calmesh_manage_calendar", {"calendar_slug": slug, "action": "update", "name": "Renamed"}))
    assert rest.get(f"calendars/{slug}").json()["name"] == "Renamed"
    source_id = rest.get(f"calendars/{slug}").json()["sources"][0]["id"]
    ok(tool("calmesh_manage_calendar", {"calendar_slug": slug, "action": "remove_source", "source_id": source_id}))
    assert rest.get(f"calendars/{slug}").json()["sources"] == []
    ok(tool("calmesh_remove_connection", {"connection_id": second}))
    assert rest.get(f"connections/{second}").status_code == 404
    ok(tool("calmesh_manage_calendar", {"calendar_slug": slug, "action": "delete"}))
    assert rest.get(f"calendars/{slug}").status_code == 404

    page = f"agent-{uuid.uuid4().hex[:6]}"
    made = rest.post("booking-pages", json={
        "slug": page, "calendar_slug": "work", "title": "Chat", "duration_minutes": 30, "timezone": "Europe/Amsterdam",
        "weekly_hours": {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}})
    assert made.status_code == 201, made.text
    slot_args = {"handle": owner.handle, "start": day.isoformat(), "end": day.isoformat()}
    slots = ok(tool("calmesh_get_slots", {"booking_page_slug": page, **slot_args}))
    assert slots == rest.get(f"booking-pages/{page}/slots", params=slot_args).json()
    first = slots["slots"][0]["start"]
    booking = ok(tool("calmesh_create_booking", {"booking_page_slug": page, "handle": owner.handle, "start": first,
                                                 "name": "Ada Agent", "email": "ada@example.org"}))
    assert booking["start"] == first and rest.get(f"bookings/{booking['id']}").json()["status"] == "confirmed"
    deadline = time.monotonic() + 60
    while not rest.get(f"bookings/{booking['id']}").json().get("event_id"):
        assert time.monotonic() < deadline, "the booking's event was never written"
        time.sleep(0.1)
    assert ok(tool("calmesh_list_bookings", {"status": "confirmed"})) == \
        rest.get("bookings", params={"status": "confirmed", "limit": 50}).json()
    ok(tool("calmesh_cancel_booking", {"booking_id": booking["id"], "reason": "testing"}))
    assert rest.get(f"bookings/{booking['id']}").json()["status"] == "cancelled"

    options = [{"start": z(day_start + timedelta(hours=h)), "end": z(day_start + timedelta(hours=h + 1))} for h in (13, 15)]
    poll = ok(tool("calmesh_create_poll", {"title": "Kick-off", "duration_minutes": 60, "options": options,
                                           "calendar_slug": "work"}))
    assert rest.get(f"polls/{poll['id']}").json()["status"] == "open"
    assert ok(tool("calmesh_list_polls", {})) == rest.get("polls", params={"limit": 50}).json()
    assert ok(tool("calmesh_get_poll_overlap", {"poll_id": poll["id"]})) == rest.get(f"polls/{poll['id']}/overlap").json()
    ok(tool("calmesh_decide_poll", {"poll_id": poll["id"], "option_id": poll["options"][0]["id"]}))
    assert rest.get(f"polls/{poll['id']}").json()["status"] == "decided"
    return called


@pytest.mark.parametrize("face", ["python", "node"])
def test_every_tool_on_both_servers_answers_what_the_rest_api_says(
        face: str, stack: Stack, owner: PlatformOwner, inspector_cmd: list[str], node_prefix: Path) -> None:
    server = (python_server(inspector_cmd, stack, owner.key) if face == "python"
              else node_server(inspector_cmd, node_prefix, stack, owner.key))
    with httpx.Client(base_url=f"{stack.gateway_url}/api/v1/", headers=owner.auth, timeout=30) as rest:
        called = _flow(server.call, rest, owner, day_offset=6 if face == "python" else 8)
    assert called == set(NAMES)


async def test_tools_call_gives_the_mcp_tool_s_result_for_every_tool(stack: Stack, owner: PlatformOwner) -> None:
    """The Python MCP server (SDK client over stdio) and POST /tools/{name}/call, tool by tool:
    read tools on the owner's data, and writing tools where both answers are fixed (a resource that
    is not there, a scope the key lacks), so that calling twice changes nothing."""
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    day = (datetime.now(AMS) + timedelta(days=7)).date()
    start = datetime(day.year, day.month, day.day, tzinfo=AMS)
    window = {"start": z(start), "end": z(start + timedelta(days=1))}
    missing_page = {"booking_page_slug": "no-such-page", "handle": owner.handle}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("calmesh_list_calendars", {}, "key"),
        ("calmesh_get_events", {"calendar_slug": "work", **window}, "key"),
        ("calmesh_check_availability", {"calendar_slug": "work", "date": day.isoformat()}, "key"),
        ("calmesh_find_conflicts", {"calendar_slug": "work", **window}, "key"),
        ("calmesh_get_slots", {**missing_page, "start": day.isoformat(), "end": day.isoformat()}, "key"),
        ("calmesh_create_booking", {**missing_page, "start": z(start + timedelta(hours=9)), "name": "N",
                                    "email": "n@example.org"}, "key"),
        ("calmesh_cancel_booking", {"booking_id": "bk_doesnotexist"}, "key"),
        ("calmesh_list_bookings", {}, "key"),
        ("calmesh_create_poll", {"title": "T", "duration_minutes": 30, "options": [window]}, "read"),
        ("calmesh_list_polls", {}, "key"),
        ("calmesh_get_poll_overlap", {"poll_id": "poll_doesnotexist"}, "key"),
        ("calmesh_decide_poll", {"poll_id": "poll_doesnotexist", "option_id": "opt_x"}, "key"),
        ("calmesh_start_oauth_connection", {"provider": "microsoft"}, "book"),
        ("calmesh_start_credential_connection", {"provider": "ical", "url": "https://example.org/a.ics"}, "book"),
        ("calmesh_check_connection_status", {"connection_id": owner.connection_id}, "key"),
        ("calmesh_list_connections", {}, "key"),
        ("calmesh_remove_connection", {"connection_id": "conn_doesnotexist"}, "key"),
        ("calmesh_create_calendar", {"slug": "never", "name": "N", "timezone": "UTC", "sources": []}, "book"),
        ("calmesh_manage_calendar", {"calendar_slug": "no-such-calendar", "action": "delete"}, "key"),
    ]
    assert [c[0] for c in cases] == NAMES
    async with httpx.AsyncClient(base_url=f"{stack.gateway_url}/api/v1/", headers=owner.auth, timeout=60) as rest:
        read_key = (await rest.post("api-keys", json={"name": "read", "scope": "read"})).json()["key"]
        keys = {"key": owner.key, "book": owner.book_key, "read": read_key}
        for which, key in keys.items():
            env = {k: v for k, v in os.environ.items() if not k.startswith("CALMESH_")}
            env.update(CALMESH_API_KEY=key, CALMESH_API_URL=f"{stack.gateway_url}/api/v1")
            params = StdioServerParameters(command=PY_SERVER, args=[], env=env)
            with open(os.devnull, "w") as errlog:
                async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
                    await session.initialize()
                    for name, args, who in cases:
                        if who != which:
                            continue
                        # A scheduled sync may move a connection's last_synced_at between the two
                        # calls: ask both again then (the answers must agree on a quiet moment).
                        for _attempt in range(3):
                            via_mcp = await session.call_tool(name, args)
                            via_rest = await rest.post(f"tools/{name}/call", json={"arguments": args},
                                                       headers={"Authorization": f"Bearer {key}"})
                            assert via_rest.status_code == 200, via_rest.text
                            body = via_rest.json()
                            expected = {"content": [{"type": "text", "text": via_mcp.content[0].text}],
                                        "structured": via_mcp.structured_content, "is_error": via_mcp.is_error}
                            if body == expected or "connection" not in name:
                                break
                        assert body == expected, name
                        if who in ("book", "read"):
                            assert body["is_error"] and "insufficient_scope" in body["content"][0]["text"], name
