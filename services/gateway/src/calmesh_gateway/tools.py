"""`GET /api/v1/tools` and `POST /api/v1/tools/{name}/call`: the 19 agent tools for function calling.

The tools come from `calmesh_tools`, the one definition the MCP servers use too. A call runs in the
gateway: the executor sends the tool's REST request back into the gateway's own front (in process,
no socket) with the caller's credentials, so the same authentication, scope rules, rate limits and
forwarding apply as to any request the caller makes itself. A scope the key lacks therefore comes
back as `is_error: true` naming the scope, exactly as through MCP.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
from litestar import Request, Response, get, post

from calmesh_common.problems import FieldError, Problem
from calmesh_tools import BY_NAME, FORMATS, Executor, tool_list, validate
from calmesh_tools.executor import clean_arguments

from .api import decode_json
from .front import RequestContext, request_context

#: Headers of the caller that carry its credentials into the tool's own requests.
_CREDENTIALS = ("authorization", "cookie", "x-csrf-token")
_INTERNAL_BASE = "http://calmesh-gateway.internal/api/v1/"


class ToolCall(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


def _ctx(request: Request[Any, Any, Any]) -> RequestContext:
    return request_context(request.scope)


def _scope(request: Request[Any, Any, Any]) -> str | None:
    identity = _ctx(request).identity
    return identity.scope if identity is not None else None


def _json(data: Any) -> Response[bytes]:
    return Response(msgspec.json.encode(data), media_type="application/json")


@get("/api/v1/tools")
async def list_tools(request: Request[Any, Any, Any]) -> Response[bytes]:
    fmt = request.query_params.get("format", "mcp")
    if fmt not in FORMATS:
        raise Problem(422, "unknown_format", f"format must be one of {', '.join(FORMATS)}.",
                      errors=[FieldError("format", f"one of {', '.join(FORMATS)}")])
    return _json({"data": tool_list(fmt, _scope(request))})


@post("/api/v1/tools/{name:str}/call", status_code=200)
async def call_tool(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    # A malformed body (bad JSON, NUL characters, nesting too deep) is a 400 whichever tool it names.
    body = await request.body()
    call = decode_json(body, request.headers.get("content-type"), ToolCall) if body.strip() else ToolCall()
    tool = BY_NAME.get(name)
    if tool is None:
        raise Problem(404, "tool_not_found", f"There is no tool {name!r}; GET /api/v1/tools lists them.")
    arguments = clean_arguments(call.arguments)
    errors = validate(tool, arguments)
    if errors:
        raise Problem(422, "validation_error", "The arguments do not fit the tool's input schema.",
                      errors=[FieldError(e.field, e.message) for e in errors])
    ctx = _ctx(request)
    headers = {k: v for k in _CREDENTIALS if (v := request.headers.get(k)) is not None}
    headers["x-request-id"] = ctx.request_id
    front = request.app.state.gw.front
    transport = httpx.ASGITransport(app=front, client=(request.client.host if request.client else "127.0.0.1", 0))
    async with httpx.AsyncClient(transport=transport, base_url=_INTERNAL_BASE, headers=headers,
                                 timeout=httpx.Timeout(60.0)) as client:
        executor = Executor(client, key_scope=_scope(request), api_url="CalMesh")
        result = await executor.run(tool, arguments)
    return _json(result.as_json())


TOOL_HANDLERS = [list_tools, call_tool]
