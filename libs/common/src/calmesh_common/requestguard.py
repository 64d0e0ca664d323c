"""Input that no CalMesh endpoint accepts, refused where requests are decoded, before any handler.

- **NUL characters** (U+0000) in a query string, a path, a JSON string (``"\\u0000"``) or a form
  field: PostgreSQL cannot store them in ``text`` (``CharacterNotInRepertoireError``), so without
  this check any string field was a 500.
- **JSON nested deeper than** `MAX_JSON_DEPTH` levels: msgspec (and every recursive decoder) raises
  ``RecursionError`` near 1,000 levels; no CalMesh body nests more than a handful.

Both are a 400 problem (`invalid_character`, `json_too_deep`). The checks are byte scans that cost
next to nothing on ordinary requests: the precise work runs only when a cheap test has matched.
The gateway's front applies them to everything it forwards and to its own endpoints' bodies;
`RequestGuardMiddleware` applies them again in every service (calmesh_common.service), so a caller
that reaches a service some other way meets the same rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec

from .problems import PROBLEM_JSON, FieldError, Problem, problem_bytes

#: Deepest nesting of objects and arrays a JSON body may have (the deepest CalMesh body has 4).
MAX_JSON_DEPTH = 32

_NUL_ESCAPE = b"\\u0000"
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")
_FORM_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data")


def nul_character(field: str) -> Problem:
    return Problem(400, "invalid_character", f"{field}: contains a NUL character (U+0000), which no field accepts.",
                   errors=[FieldError(field, "contains a NUL character (U+0000)")])


def json_too_deep() -> Problem:
    return Problem(400, "json_too_deep", f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.",
                   errors=[FieldError("body", f"nests deeper than {MAX_JSON_DEPTH} levels")])


def check_target(path: str, query_string: bytes) -> None:
    """Raise a 400 Problem when the request's path or query string holds a NUL (raw or ``%00``)."""
    if "\x00" in path:
        raise nul_character("path")
    if b"%00" in query_string or b"\x00" in query_string:
        name = _query_field(query_string)
        raise nul_character(name)


def _query_field(query_string: bytes) -> str:
    for pair in query_string.split(b"&"):
        if b"%00" in pair or b"\x00" in pair:
            name = pair.split(b"=", 1)[0].decode("latin-1")
            return name if name and "%" not in name and "\x00" not in name else "query"
    return "query"


def check_body(body: bytes, content_type: bytes | str | None = None) -> None:
    """Raise a 400 Problem for a body with a NUL character or JSON nested too deep.

    A form body (urlencoded) is checked for ``%00``; any other body is treated as the JSON it should
    be (services decode bodies as JSON whatever they are labelled).
    """
    if not body:
        return
    ctype = content_type.encode("latin-1") if isinstance(content_type, str) else (content_type or b"")
    ctype = ctype.split(b";", 1)[0].strip().lower()
    if ctype in _FORM_TYPES:
        if b"\x00" in body or (ctype == _FORM_TYPES[0] and b"%00" in body):
            raise nul_character(_query_field(body) if ctype == _FORM_TYPES[0] else "body")
        return
    # A raw NUL byte is not valid JSON at all: the decoder already answers 400 for it.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and json_depth(body) > MAX_JSON_DEPTH:
        raise json_too_deep()
    if _NUL_ESCAPE in body and _has_nul_escape(body):
        raise nul_character(_nul_field(body))


def json_depth(body: bytes, stop_above: int = MAX_JSON_DEPTH) -> int:
    """How deep the objects and arrays of a JSON text nest (brackets inside strings do not count);
    stops counting once past `stop_above`."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_JSON_STRING.sub(b'""', body)):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_above:
                    return deepest
        else:
            depth -= 1
    return deepest


def _has_nul_escape(body: bytes) -> bool:
    """Whether a ``\\u0000`` escape is a real one (an odd run of backslashes), not ``\\\\u0000`` text."""
    at = body.find(_NUL_ESCAPE)
    while at != -1:
        run = 0
        while at - run - 1 >= 0 and body[at - run - 1] == 0x5C:
            run += 1
        if run % 2 == 0:
            return True
        at = body.find(_NUL_ESCAPE, at + 1)
    return False


def _nul_field(body: bytes) -> str:
    """The path of the first field holding a NUL (``sources[0].name``), else ``body``."""
    try:
        doc = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return "body"
    for path in _nul_paths(doc, ""):
        return path or "body"
    return "body"


def _nul_paths(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, str):
        if "\x00" in value:
            yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if "\x00" in k:
                yield sub
            yield from _nul_paths(v, sub)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _nul_paths(v, f"{path}[{i}]")


class RequestGuardMiddleware:
    """ASGI middleware: the checks above on every HTTP request of a service, before litestar
    decodes anything. Bodies up to `max_body` bytes are read, checked and handed on whole; a larger
    one is left to litestar's own 413."""

    def __init__(self, app: Any, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            check_target(scope["path"], scope.get("query_string", b""))
        except Problem as problem:
            await _send(send, problem)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        messages: list[Any] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body or not message.get("more_body", False):
                break
        if size <= self.max_body and messages and messages[-1]["type"] == "http.request" \
                and not messages[-1].get("more_body", False):
            body = b"".join(m.get("body", b"") for m in messages)
            ctype = next((v for k, v in scope["headers"] if k == b"content-type"), None)
            try:
                check_body(body, ctype)
            except Problem as problem:
                await _send(send, problem)
                return
            messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Any:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)


async def _send(send: Any, problem: Problem) -> None:
    body = problem_bytes(problem)
    await send({"type": "http.response.start", "status": problem.status,
                "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


__all__ = ["MAX_JSON_DEPTH", "RequestGuardMiddleware", "check_body", "check_target", "json_depth"]
