"""`calmesh-mcp`: the CalMesh MCP server.

    CALMESH_API_KEY=cm_live_… calmesh-mcp                       # stdio (default)
    CALMESH_API_KEY=cm_live_… CALMESH_HTTP_SECRET=… calmesh-mcp --transport http --port 3100

Configuration: CALMESH_API_KEY (required), CALMESH_API_URL (default https://calmesh.xyz/api/v1),
CALMESH_HTTP_SECRET (required with --transport http; clients send it as a Bearer token).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hmac
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult

from .api import ApiError, CalMeshAPI, Config, ConfigError, argument_errors
from .tools import Tools, ToolSpec, argument_error, tool_error

INSTRUCTIONS = (
    "CalMesh merges a person's Google, Microsoft, iCloud/CalDAV calendars and iCal feeds into unified calendars. "
    "Start with calmesh_list_calendars to learn the calendar slugs and timezones. Times in answers are shown in the "
    "calendar's timezone with UTC beside them; send instants in RFC 3339 with an offset."
)


def _guard(spec: ToolSpec, tools: Tools) -> Callable[..., Awaitable[CallToolResult]]:
    """Wrap a tool so an API problem becomes a tool error (isError), never a protocol error."""

    @functools.wraps(spec.fn)
    async def call(*args: Any, **kwargs: Any) -> CallToolResult:
        errors = argument_errors(kwargs)
        if errors:
            return argument_error("; ".join(f"{name} {message}" for name, message in errors))
        try:
            return await spec.fn(*args, **kwargs)
        except ApiError as exc:
            return tool_error(exc, key_scope=tools.key_scope, needs=spec.scopes)

    return call


async def read_key_scope(api: CalMeshAPI) -> str | None:
    """The configured key's scope, from /me (None when it cannot be read)."""
    try:
        me = await api.request("GET", ("me",))
    except ApiError:
        return None
    if not isinstance(me, dict):
        return None
    auth = me.get("auth") if isinstance(me.get("auth"), dict) else {}
    scope = me.get("scope") or auth.get("scope")
    return scope if scope in ("read", "write", "book", "full") else None


def build_server(api: CalMeshAPI, key_scope: str | None) -> MCPServer:
    tools = Tools(api)
    tools.key_scope = key_scope
    server = MCPServer(name="calmesh", title="CalMesh", version="0.1.0", instructions=INSTRUCTIONS)
    for spec in tools.specs():
        server.add_tool(
            _guard(spec, tools),
            name=spec.name,
            title=spec.title,
            description=spec.describe(key_scope),
            annotations=spec.annotations(),
            structured_output=False,
        )
    return server


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


def http_app(server: MCPServer, secret: str) -> Any:
    return BearerSecret(server.streamable_http_app(streamable_http_path="/mcp"), secret)


def _fail(message: str) -> None:
    print(f"calmesh-mcp: {message}", file=sys.stderr)
    raise SystemExit(2)


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
    api = CalMeshAPI(config)
    key_scope = asyncio.run(read_key_scope(api))
    # The scope probe ran on its own event loop; the server gets a fresh client on its own.
    api = CalMeshAPI(config)
    server = build_server(api, key_scope)
    if args.transport == "stdio":
        server.run("stdio")
        return
    import uvicorn

    uvicorn.run(http_app(server, secret), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
