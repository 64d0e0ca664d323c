"""Running a tool: arguments checked against its input schema, one REST request with the caller's
credentials, and a result of text + structured content + is_error.

Both MCP servers and `POST /api/v1/tools/{name}/call` run tools through `Executor`, so a tool gives
the same answer whichever face it is called through. API problems become tool errors that say what
to do next; they are never raised to the caller.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from .definitions import BY_NAME, ArgumentError, Tool
from .schema import PATTERN_WORDS

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


@dataclass(frozen=True)
class ToolResult:
    text: str
    structured: Any
    is_error: bool = False

    def as_json(self) -> dict[str, Any]:
        """The shape `POST /api/v1/tools/{name}/call` answers."""
        return {"content": [{"type": "text", "text": self.text}], "structured": self.structured, "is_error": self.is_error}


_VALIDATORS: dict[str, Draft202012Validator] = {}
_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _is_instant(value: object) -> bool:
    """RFC 3339 with an offset (jsonschema's own check needs a package we do not ship)."""
    if not isinstance(value, str):
        return True
    if not _RFC3339.match(value):
        return False
    moment = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    return moment.tzinfo is not None


def _validator(tool: Tool) -> Draft202012Validator:
    v = _VALIDATORS.get(tool.name)
    if v is None:
        v = _VALIDATORS[tool.name] = Draft202012Validator(tool.input_schema, format_checker=_FORMATS)
    return v


def _message(error: ValidationError) -> tuple[str, str]:
    path = [str(p) for p in error.absolute_path]
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        return ".".join([*path, missing]), "is required"
    if error.validator == "additionalProperties":
        extra = error.message.split("'")[1] if "'" in error.message else ""
        return ".".join([*path, extra]), "is not an argument of this tool"
    if error.validator == "pattern":
        words = PATTERN_WORDS.get(str(error.validator_value))
        return ".".join(path), f"must be {words}" if words else f"must match {error.validator_value}"
    if error.validator == "format" and error.validator_value == "date-time":
        return ".".join(path), "must be an instant in RFC 3339 with an offset, e.g. 2026-03-15T09:00:00Z"
    return ".".join(path), error.message


def clean_arguments(arguments: Mapping[str, Any] | None) -> dict[str, Any]:
    """The arguments without nulls: a model that sends `"cursor": null` means "no cursor"."""
    return {k: v for k, v in (arguments or {}).items() if v is not None}


def validate(tool: Tool, arguments: Mapping[str, Any]) -> list[FieldError]:
    """What is wrong with `arguments` for `tool`, as `arguments.<name>` field errors (empty: fine)."""
    errors = []
    for error in sorted(_validator(tool).iter_errors(dict(arguments)), key=lambda e: list(map(str, e.absolute_path))):
        where, message = _message(error)
        errors.append(FieldError(f"arguments.{where}" if where else "arguments", message))
    return errors


def api_path(segments: Sequence[str]) -> str:
    """The relative URL of an API path given as segments, each one percent-quoted: no argument can
    add a '/' or climb with '..' (the one place where tool arguments become a URL)."""
    parts = []
    for segment in segments:
        if not isinstance(segment, str) or segment in ("", ".", ".."):
            raise ArgumentError("path", f"not a path segment: {segment!r}")
        parts.append(quote(segment, safe=""))
    return "/".join(parts)


class ApiProblem(Exception):
    """The API answered with a problem (RFC 9457), or could not be reached (status 0)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(problem.get("detail") or problem.get("title") or f"HTTP {status}")

    @property
    def code(self) -> str:
        return str(self.problem.get("code") or "")


NEXT_STEPS = {
    "insufficient_scope": "Use an API key with the scope named above (create one in the dashboard), or ask the user to.",
    "invalid_api_key": "The configured CALMESH_API_KEY is mistyped or truncated: set the whole key.",
    "api_key_revoked": "The configured key was revoked: create a new key and update CALMESH_API_KEY.",
    "api_key_expired": "The configured key has expired: create a new key and update CALMESH_API_KEY.",
    "unauthorized": "Send a CalMesh API key (CALMESH_API_KEY=cm_live_…).",
    "not_found": "Check the id or slug: list the resources first (e.g. calmesh_list_calendars).",
    "slot_unavailable": "That slot was just taken or is not offered: call calmesh_get_slots and pick another.",
    "rate_limited": "Too many requests: wait for the Retry-After seconds, then try again.",
    "daily_quota_exceeded": "The plan's daily API quota is used up: wait until tomorrow or upgrade the plan.",
    "plan_limit_reached": "The plan's limit is reached: remove something or upgrade the plan.",
    "poll_closed": "The poll is decided; it takes no more votes.",
    "range_too_long": "Ask for a window of at most 366 days.",
    "read_only_source": "That source is read-only (an iCal feed): pick a writable source_id.",
    "validation_error": "Fix the arguments named in the errors and call again.",
    "service_unavailable": "CalMesh is briefly unavailable: wait a few seconds and try again.",
    "api_unreachable": "Check CALMESH_API_URL and the network, then try again.",
}


def problem_result(status: int, problem: Mapping[str, Any], *, key_scope: str | None,
                   needs: tuple[str, ...]) -> ToolResult:
    """An API problem as a tool error: what went wrong, and what to do next."""
    problem = dict(problem)
    code = str(problem.get("code") or "")
    shown = f" {status}" if status else ""
    lines = [f"CalMesh API error{shown} ({code or 'error'}): {problem.get('detail') or problem.get('title')}"]
    if code == "insufficient_scope":
        required = problem.get("required_scope") or " or ".join(needs)
        lines.append(f"This key has scope {key_scope or 'another scope'}; this action needs {required}.")
    for err in problem.get("errors") or []:
        if isinstance(err, dict):
            lines.append(f"- {err.get('field')}: {err.get('message')}")
    step = NEXT_STEPS.get(code) or (NEXT_STEPS["not_found"] if status == 404 else None)
    if step:
        lines.append(f"Next: {step}")
    if problem.get("retry_after"):
        lines.append(f"Retry after {problem['retry_after']} s.")
    return ToolResult("\n".join(lines), {"error": problem}, is_error=True)


def argument_result(errors: Sequence[FieldError]) -> ToolResult:
    """Arguments that fail the tool's input schema, as a tool error."""
    listed = "\n".join(f"- {e.field}: {e.message}" for e in errors)
    return ToolResult(
        f"Invalid arguments:\n{listed}\nNext: {NEXT_STEPS['validation_error']}",
        {"error": {"code": "validation_error", "detail": "The arguments do not fit the tool's input schema.",
                   "errors": [{"field": e.field, "message": e.message} for e in errors]}},
        is_error=True,
    )


@dataclass
class Executor:
    """Runs tools against the REST API through `client` (its base URL is the API's /api/v1/, its
    headers carry the caller's credentials). `key_scope` is the caller's scope, for messages."""

    client: httpx.AsyncClient
    key_scope: str | None = None
    api_url: str = ""
    _timezones: dict[str, str | None] = field(default_factory=dict)
    _calendars: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    _connections: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    async def request(self, method: str, path: Sequence[str], *, params: Mapping[str, Any] | None = None,
                      json: Any = None, headers: Mapping[str, str] | None = None) -> Any:
        """One API request; the decoded JSON (None for 204), or ApiProblem."""
        url = api_path(path)
        query = {}
        for k, v in (params or {}).items():
            if v is not None:
                query[k] = ("true" if v else "false") if isinstance(v, bool) else v
        try:
            response = await self.client.request(method, url, params=query, json=json, headers=headers)
        except httpx.HTTPError as exc:
            where = self.api_url or str(self.client.base_url)
            raise ApiProblem(0, {"title": "CalMesh API unreachable", "code": "api_unreachable",
                                 "detail": f"Could not reach {where}: {type(exc).__name__}. "
                                           "Check CALMESH_API_URL and your network."}) from exc
        if response.is_success and (response.status_code == 204 or not response.content):
            return None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success:
            return body
        problem = body if isinstance(body, dict) else {"title": response.reason_phrase, "detail": response.text[:500]}
        problem.setdefault("status", response.status_code)
        if "retry-after" in response.headers:
            problem.setdefault("retry_after", response.headers["retry-after"])
        raise ApiProblem(response.status_code, problem)

    # Context for render -------------------------------------------------------------------------

    async def calendar(self, slug: str) -> dict[str, Any] | None:
        """The calendar document (`GET /calendars/{slug}`), once per executor; None if it cannot be read."""
        return await self._document(self._calendars, "calendars", slug)

    async def connection(self, connection_id: str) -> dict[str, Any] | None:
        """The connection document (`GET /connections/{id}`: status, last error), once per executor."""
        return await self._document(self._connections, "connections", connection_id)

    async def _document(self, cache: dict[str, dict[str, Any] | None], collection: str,
                        key: str) -> dict[str, Any] | None:
        """``GET /{collection}/{key}``, kept in `cache`; None if it cannot be read (not kept then)."""
        if key not in cache:
            try:
                doc = await self.request("GET", (collection, key))
            except (ApiProblem, ArgumentError):
                return None
            cache[key] = doc if isinstance(doc, dict) else None
        return cache[key]

    async def calendar_timezone(self, slug: str) -> str | None:
        if self._timezones.get(slug) is None:
            cal = await self.calendar(slug)
            if cal is None:
                return None
            self._timezones[slug] = cal.get("timezone") or "UTC"
        return self._timezones[slug]

    def remember_timezone(self, slug: str, tz: str | None) -> None:
        self._timezones[slug] = tz
        if tz is None:
            self._calendars.pop(slug, None)

    # Running tools ------------------------------------------------------------------------------

    async def call(self, name: str, arguments: Mapping[str, Any] | None) -> ToolResult:
        """Run tool `name`: a tool error for an unknown tool, bad arguments or an API problem."""
        tool = BY_NAME.get(name)
        if tool is None:
            return ToolResult(f"There is no tool {name!r}. Tools: {', '.join(BY_NAME)}.",
                              {"error": {"code": "tool_not_found", "detail": f"No tool {name!r}."}}, is_error=True)
        args = clean_arguments(arguments)
        errors = validate(tool, args)
        if errors:
            return argument_result(errors)
        return await self.run(tool, args)

    async def run(self, tool: Tool, args: dict[str, Any]) -> ToolResult:
        """Run `tool` with arguments that passed its schema."""
        try:
            call = tool.request(args)
            data = await self.request(call.method, call.path, params=call.params, json=call.json)
            text, structured = await tool.render(self, args, data)
        except ArgumentError as exc:
            return argument_result([FieldError(f"arguments.{exc.field}", exc.message)])
        except ApiProblem as exc:
            return problem_result(exc.status, exc.problem, key_scope=self.key_scope, needs=tool.scopes)
        if not isinstance(structured, dict):
            structured = {"result": structured}
        return ToolResult(text, structured)
