"""Events published by the gateway context."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from . import Event


class _GatewayEvent(Event, tag=False, frozen=True):
    """The base of the gateway's events (no tag of its own: not an event by itself)."""

    context: ClassVar[str] = "gateway"


class UserSignedUp(_GatewayEvent, tag="user.signed_up.v1", frozen=True):
    user_id: str
    email: str
    handle: str
    name: str
    timezone: str


class ApiKeyCreated(_GatewayEvent, tag="api_key.created.v1", frozen=True):
    key_id: str
    user_id: str
    name: str
    scope: str
    prefix: str
    key_hash: str
    expires_at: datetime | None = None


class ApiKeyRevoked(_GatewayEvent, tag="api_key.revoked.v1", frozen=True):
    key_id: str
    user_id: str
    key_hash: str


class SessionEnded(_GatewayEvent, tag="session.ended.v1", frozen=True):
    user_id: str
    session_hash: str


class SessionStarted(_GatewayEvent, tag="session.started.v1", frozen=True):
    user_id: str
    session_hash: str
    expires_at: datetime
