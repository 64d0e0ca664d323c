"""`calmesh-mcp`: the CalMesh MCP server, a thin reader of `calmesh_tools`.

    CALMESH_API_KEY=cm_live_… calmesh-mcp                       # stdio (default)
    CALMESH_API_KEY=cm_live_… CALMESH_HTTP_SECRET=… calmesh-mcp --transport http --port 3100

Configuration: CALMESH_API_KEY (required), CALMESH_API_URL (default https://calmesh.xyz/api/v1),
CALMESH_HTTP_SECRET (required with --transport http; clients send it as a Bearer token).

The tools — names, descriptions, input schemas, annotations, what each calls — come from
`calmesh_tools`, the same definition `GET /api/v1/tools` and `@calmesh/mcp-server` serve.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import sys
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from calmesh_tools import Executor, ToolResult, tool_list
from calmesh_tools.executor import ApiProblem

from .api import Config, ConfigError, api_client

VERSION = "0.2.0"
INSTRUCTIONS = (
    "CalMesh merges a person's Google, Microsoft, iCloud/CalDAV calendars and iCal feeds into unified calendars. "
    "Start with calmesh_list_calendars to learn the calendar slugs and timezones. Times in answers are shown in the "
    "calendar's timezone with UTC beside them; send instants in RFC 3339 with an offset."
)


async def read_key_scope(executor: Executor) -> str | None:
    """The configured key's scope, from /me (None when it cannot be read)."""
    try:
        me = await executor.request("GET", ("me",))
    except ApiProblem:
        return None
    if not isinstance(me, dict):
        return None
    auth = me.get("auth")
    if not isinstance(auth, dict):
        auth = {}
    scope = me.get("scope") or auth.get("scope")
    return scope if scope in ("read", "write", "book", "full") else None


def to_mcp(result: ToolResult) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=result.text)],
                                structured_content=result.structured, is_error=result.is_error)


def build_server(executor: Executor) -> Server[Any]:
    """The MCP server for one API client; the tools are described for the executor's key scope."""
    tools = [types.Tool.model_validate(t) for t in tool_list("mcp", executor.key_scope)]

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return to_mcp(await executor.call(params.name, params.arguments))

    return Server("calmesh", version=VERSION, title="CalMesh", instructions=INSTRUCTIONS,
                  on_list_tools=list_tools, on_call_tool=call_tool)


class BearerSecret:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <secret>`."""

    def __init__(self, app: Any, secret: str) -> None:
        self.app = app
        self.expected = f"Bearer {secret}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = json.dumps({"error": "unauthorized", "detail": "Send CALMESH_HTTP_SECRET as a Bearer token."}).encode()
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="calmesh-mcp"'),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def http_app(server: Server[Any], secret: str) -> Any:
    return BearerSecret(server.streamable_http_app(streamable_http_path="/mcp"), secret)


def _fail(message: str) -> None:
    print(f"calmesh-mcp: {message}", file=sys.stderr)
    raise SystemExit(2)


async def _serve_stdio(config: Config) -> None:
    async with api_client(config) as client:
        executor = Executor(client, api_url=config.api_url)
        executor.key_scope = await read_key_scope(executor)
        server = build_server(executor)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="calmesh-mcp", description="CalMesh MCP server: 19 calendar tools.")
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--port", type=int, default=3100, help="HTTP port (with --transport http)")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address to bind (with --transport http)")
    args = parser.parse_args(argv)
    try:
        config = Config.from_env(dict(os.environ))
    except ConfigError as exc:
        _fail(str(exc))
        return
    secret = os.environ.get("CALMESH_HTTP_SECRET", "")
    if args.transport == "http" and len(secret) < 16:
        _fail("--transport http needs CALMESH_HTTP_SECRET (at least 16 characters); MCP clients send it as a Bearer token.")
    if args.transport == "stdio":
        asyncio.run(_serve_stdio(config))
        return

    async def probe() -> str | None:
        async with api_client(config) as client:
            return await read_key_scope(Executor(client, api_url=config.api_url))

    key_scope = asyncio.run(probe())
    # The scope probe ran on its own event loop; the server gets a fresh client on uvicorn's.
    executor = Executor(api_client(config), key_scope=key_scope, api_url=config.api_url)
    import uvicorn

    uvicorn.run(http_app(build_server(executor), secret), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
