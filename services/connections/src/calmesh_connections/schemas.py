"""Request and response structs of the connections service (docs/api-guide.md: Connections, Unified
calendars), and the checks of their values."""

from __future__ import annotations

import re
import zoneinfo
from datetime import datetime
from functools import cache
from typing import Annotated

import msgspec

from calmesh_common.problems import FieldError, Problem

PROVIDERS = ("google", "microsoft", "icloud", "caldav", "ical")
STATUSES = ("pending", "syncing", "active", "error", "revoked")

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")

Text = Annotated[str, msgspec.Meta(max_length=2000)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


# --- requests --------------------------------------------------------------------------------


class OAuthStart(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Start Google / Microsoft authorization. `redirect_uri`: where the user's browser is sent
    once the provider sent it back to us (with ``connection_id`` and ``status`` or ``error``)."""

    redirect_uri: Text | None = None


class ICloudCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    username: Name
    app_password: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class CalDAVCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: Text
    username: Annotated[str, msgspec.Meta(max_length=500)]
    password: Annotated[str, msgspec.Meta(max_length=500)]


class ICalCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: Text


class SourceRef(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    connection_id: Annotated[str, msgspec.Meta(max_length=100)]
    calendar_id: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class CalendarCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    slug: Annotated[str, msgspec.Meta(max_length=100)]
    name: Name
    #: IANA name; default: the user's timezone.
    timezone: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    sources: list[SourceRef] = msgspec.field(default_factory=list)


class CalendarUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    slug: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    name: Name | None = None
    timezone: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class SourcesReorder(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    source_ids: list[Annotated[str, msgspec.Meta(max_length=100)]]


class AccessTokenRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    force_refresh: bool = False


# --- responses -------------------------------------------------------------------------------


class ConnectionCalendarOut(msgspec.Struct, kw_only=True):
    id: str
    name: str
    color: str | None = None
    read_only: bool = False


class SyncProgress(msgspec.Struct, kw_only=True):
    """The sync running now."""

    sync_id: str
    started_at: datetime | None = None
    calendars_done: int = 0
    calendars_total: int = 0
    events_changed: int = 0


class ConnectionOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    provider: str
    display_name: str
    status: str
    last_synced_at: str | None
    last_error: str | None
    calendars: list[ConnectionCalendarOut]
    #: The sync running now (null when none is).
    progress: SyncProgress | None
    created_at: str
    #: Only when the connection was just created with OAuth: where to send the user.
    authorization_url: str | None = None


class ConnectionPage(msgspec.Struct, kw_only=True):
    data: list[ConnectionOut]
    next_cursor: str | None


class SyncAccepted(msgspec.Struct, kw_only=True):
    sync_id: str


class SourceOut(msgspec.Struct, kw_only=True):
    id: str
    connection_id: str
    calendar_id: str
    name: str
    sort_order: int
    read_only: bool = False


class CalendarOut(msgspec.Struct, kw_only=True):
    slug: str
    name: str
    timezone: str
    sources: list[SourceOut]
    #: The first writable source: where POST .../events writes without a source_id.
    default_source_id: str | None
    created_at: str
    updated_at: str


class CalendarPage(msgspec.Struct, kw_only=True):
    data: list[CalendarOut]
    next_cursor: str | None


class InternalConnectionState(msgspec.Struct, kw_only=True):
    """Where a source's connection stands (its status and last successful sync), for the readers'
    freshness (docs/api-guide.md, Freshness)."""

    id: str
    status: str
    last_synced_at: str | None


class InternalCalendar(msgspec.Struct, kw_only=True):
    slug: str
    name: str
    timezone: str
    user_id: str
    sources: list[SourceOut]
    #: One entry per connection the sources read from.
    connections: list[InternalConnectionState] = msgspec.field(default_factory=list)


# --- checks ----------------------------------------------------------------------------------


def check_slug(slug: str) -> str:
    if not _SLUG.match(slug):
        raise Problem(
            422,
            "invalid_slug",
            "slug: use 1 to 64 lowercase letters, digits and dashes, not starting or ending with a dash.",
            errors=[FieldError("slug", "lowercase letters, digits and dashes")],
        )
    return slug


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timezone(name: str, field: str = "timezone") -> str:
    if name not in _zones():
        raise Problem(
            422,
            "invalid_timezone",
            f"{field}: {name!r} is not an IANA timezone name (like Europe/Amsterdam).",
            errors=[FieldError(field, "unknown IANA timezone")],
        )
    return name


def user_timezone(header_value: str | None) -> str:
    """The caller's timezone as the gateway sent it, when valid; else UTC."""
    if header_value and header_value in _zones():
        return header_value
    return "UTC"
