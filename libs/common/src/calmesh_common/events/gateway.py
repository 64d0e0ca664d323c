"""Events published by the gateway context."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from . import Event


class _GatewayEvent(Event, tag=False):
    """The base of the gateway's events (no tag of its own: not an event by itself)."""

    context: ClassVar[str] = "gateway"


class _ApiKeyEvent(_GatewayEvent, tag=False):
    key_id: str
    user_id: str


class _SessionEvent(_GatewayEvent, tag=False):
    user_id: str
    session_hash: str


class UserSignedUp(_GatewayEvent, tag="user.signed_up.v1"):
    user_id: str
    email: str
    handle: str
    name: str
    timezone: str


class ApiKeyCreated(_ApiKeyEvent, tag="api_key.created.v1"):
    name: str
    scope: str
    prefix: str
    key_hash: str
    expires_at: datetime | None = None


class ApiKeyRevoked(_ApiKeyEvent, tag="api_key.revoked.v1"):
    key_hash: str


class SessionEnded(_SessionEvent, tag="session.ended.v1"):
    """A signed-in session ended."""


class SessionStarted(_SessionEvent, tag="session.started.v1"):
    expires_at: datetime
