"""The MCP server's configuration and its streamable HTTP transport, through the official SDK client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from calmesh_common.devstack.embedded import free_port

BIN = str(Path(sys.executable).parent / "calmesh-mcp")
GOOD_KEY = "cm_live_" + "A1b2C3d4E5f6G7h8J9k0LmNoPqRsTu"


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CALMESH_")}
    return subprocess.run([BIN, *args], env={**clean, **env}, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_missing_key_exits_2_with_a_clear_message() -> None:
    result = _run({})
    assert result.returncode == 2
    assert "CALMESH_API_KEY is not set" in result.stderr


def test_malformed_key_exits_2_with_a_clear_message() -> None:
    result = _run({"CALMESH_API_KEY": "sk_live_nope"})
    assert result.returncode == 2
    assert "does not look like a CalMesh API key" in result.stderr


def test_http_transport_refuses_to_start_without_a_secret() -> None:
    result = _run({"CALMESH_API_KEY": GOOD_KEY}, "--transport", "http", "--port", str(free_port()))
    assert result.returncode == 2
    assert "CALMESH_HTTP_SECRET" in result.stderr


@pytest.fixture(scope="module")
def http_server() -> tuple[str, str]:
    port = free_port()
    secret = "s3cret-for-the-mcp-http-test"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CALMESH_")}
    env = {**clean, "CALMESH_API_KEY": GOOD_KEY, "CALMESH_HTTP_SECRET": secret,
           # Nothing listens there: tools answer with a tool error, which is what one test checks.
           "CALMESH_API_URL": f"http://127.0.0.1:{free_port()}/api/v1"}
    proc = subprocess.Popen([BIN, "--transport", "http", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url, secret
    proc.terminate()
    proc.wait(10)


def test_http_without_secret_is_401(http_server: tuple[str, str]) -> None:
    url, _ = http_server
    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert r.status_code == 401


def test_http_with_wrong_secret_is_401(http_server: tuple[str, str]) -> None:
    url, _ = http_server
    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                   headers={"Authorization": "Bearer not-the-secret"})
    assert r.status_code == 401


async def test_http_with_the_secret_lists_and_calls_tools(http_server: tuple[str, str]) -> None:
    url, secret = http_server
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {secret}"})
    async with client, streamable_http_client(url, http_client=client) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            assert len(tools) == 19
            result = await session.call_tool("calmesh_list_calendars", {})
            # The API is unreachable here: the call must come back as a tool error saying so.
            assert result.is_error
            assert "Could not reach" in result.content[0].text
