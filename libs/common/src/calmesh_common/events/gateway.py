"""Events published by the gateway context."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from . import Event


class UserSignedUp(Event, tag="user.signed_up.v1"):
    context: ClassVar[str] = "gateway"
    user_id: str
    email: str
    handle: str
    name: str
    timezone: str


class ApiKeyCreated(Event, tag="api_key.created.v1"):
    context: ClassVar[str] = "gateway"
    key_id: str
    user_id: str
    name: str
    scope: str
    prefix: str
    key_hash: str
    expires_at: datetime | None = None


class ApiKeyRevoked(Event, tag="api_key.revoked.v1"):
    context: ClassVar[str] = "gateway"
    key_id: str
    user_id: str
    key_hash: str


class SessionEnded(Event, tag="session.ended.v1"):
    context: ClassVar[str] = "gateway"
    user_id: str
    session_hash: str


class SessionStarted(Event, tag="session.started.v1"):
    context: ClassVar[str] = "gateway"
    user_id: str
    session_hash: str
    expires_at: datetime
