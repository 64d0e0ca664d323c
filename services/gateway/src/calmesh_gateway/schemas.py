"""Request and response bodies of the gateway's own endpoints (msgspec structs; also the source of
their OpenAPI schemas). Unknown fields are refused: a typo is a 400, not silently ignored."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

Scope = Literal["read", "write", "book", "full"]
Plan = Literal["free", "pro"]
Handle = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9-]{3,40}$", description="3 to 40 of a-z, 0-9 and -")]
Email = Annotated[str, msgspec.Meta(min_length=3, max_length=254)]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=1024)]


class SignupRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    email: Email
    password: Password
    handle: Handle
    name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    timezone: Annotated[str, msgspec.Meta(max_length=64, description="IANA name, e.g. Europe/Amsterdam")] | None = None


class LoginRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    email: Annotated[str, msgspec.Meta(max_length=254)]
    password: Annotated[str, msgspec.Meta(max_length=1024)]


class Auth(msgspec.Struct, kw_only=True):
    """How the current request authenticated: a session, or a key and its scope."""

    type: Literal["session", "key"]
    scope: Scope | Literal["full"]
    key_id: str | None = None


class User(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    email: str
    handle: str
    name: str
    timezone: str
    plan: Plan
    created_at: str
    auth: Auth | None = None


class ApiKeyCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    scope: Scope
    expires_at: datetime | None = None


class ApiKeyCreated(msgspec.Struct, kw_only=True):
    id: str
    name: str
    scope: Scope
    prefix: str
    key: Annotated[str, msgspec.Meta(description="The key itself: shown this once, never again")]
    created_at: str
    expires_at: str | None


class ApiKey(msgspec.Struct, kw_only=True):
    id: str
    name: str
    scope: Scope
    prefix: str
    created_at: str
    last_used_at: str | None
    expires_at: str | None


class ApiKeyList(msgspec.Struct, kw_only=True):
    data: list[ApiKey]
    next_cursor: str | None


class Health(msgspec.Struct, kw_only=True):
    status: Literal["ok"]
    checks: dict[str, str]


class ToolList(msgspec.Struct, kw_only=True):
    """The tools in the requested format: OpenAI `{type, function: {name, description, parameters}}`,
    Anthropic `{name, description, input_schema}`, Gemini `{name, description, parameters}` (its
    OpenAPI subset), or MCP `{name, title, description, inputSchema, annotations}` (the default)."""

    data: list[dict[str, Any]]


class ToolCallRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    arguments: Annotated[dict[str, Any], msgspec.Meta(description="The tool's arguments, as its input schema says")] = {}


class ToolText(msgspec.Struct, kw_only=True):
    type: Literal["text"]
    text: str


class ToolCallResult(msgspec.Struct, kw_only=True):
    """What the MCP tool answers: a text for the model, the API's JSON (or `{error}`), and whether
    it failed (a scope the key lacks, a problem from the API: the text says what to do next). An
    availability, events, conflicts or find-a-time answer with `complete: false` has a text that
    opens with `INCOMPLETE ANSWER: could not check …`, naming each source not checked with its
    connection's status and last error."""

    content: list[ToolText]
    structured: dict[str, Any]
    is_error: bool
