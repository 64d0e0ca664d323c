"""Events published by the connections context: connections (never their secrets) and unified
calendars with their sources.

Every calendar event carries the whole calendar after the change (``calendar``), so a consumer
needs no other source to keep its own copy; the change itself is named by the event type and its
extra fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import msgspec

from . import Event


class ConnectionCalendar(msgspec.Struct, frozen=True, kw_only=True):
    """A provider calendar of a connection, as the API shows it."""

    id: str
    name: str
    color: str | None = None
    read_only: bool = False


class CalendarSource(msgspec.Struct, frozen=True, kw_only=True):
    """A source of a unified calendar: one provider calendar of one connection."""

    id: str
    connection_id: str
    calendar_id: str
    name: str
    sort_order: int
    read_only: bool = False


class UnifiedCalendar(msgspec.Struct, frozen=True, kw_only=True):
    """A unified calendar in full, sources in their order (the first writable is the default
    write target)."""

    id: str
    user_id: str
    slug: str
    name: str
    timezone: str
    sources: list[CalendarSource]
    created_at: datetime
    updated_at: datetime


# --- connections -----------------------------------------------------------------------------


class ConnectionCreated(Event, tag="connection.created.v1", kw_only=True):
    context: ClassVar[str] = "connections"
    connection_id: str
    user_id: str
    provider: str
    display_name: str
    status: str
    calendars: list[ConnectionCalendar] = msgspec.field(default_factory=list)
    created_at: datetime


class ConnectionAuthorized(Event, tag="connection.authorized.v1", kw_only=True):
    """An OAuth connection completed its authorization (the callback exchanged the code)."""

    context: ClassVar[str] = "connections"
    connection_id: str
    user_id: str
    provider: str
    display_name: str
    calendars: list[ConnectionCalendar] = msgspec.field(default_factory=list)


class ConnectionCalendarsChanged(Event, tag="connection.calendars_changed.v1", kw_only=True):
    """The provider calendars of a connection changed (found by a sync)."""

    context: ClassVar[str] = "connections"
    connection_id: str
    user_id: str
    calendars: list[ConnectionCalendar]


class ConnectionCredentialsRefreshed(Event, tag="connection.credentials_refreshed.v1", kw_only=True):
    """An OAuth access token was refreshed (the token itself is never in an event)."""

    context: ClassVar[str] = "connections"
    connection_id: str
    user_id: str
    expires_at: datetime | None = None


class ConnectionSyncRequested(Event, tag="connection.sync_requested.v1", kw_only=True):
    context: ClassVar[str] = "connections"
    connection_id: str
    user_id: str
    sync_id: str
    #: ``manual`` (POST .../sync), ``created``, ``schedule``, ``push``.
    reason: str


class ConnectionSynced(Event, tag="connection.synced.v1", kw_only=True):
    """A sync finished successfully (webhook ``connection.synced``)."""

    context: ClassVar[str] = "connections"
    connection_id: str
    user_id: str
    sync_id: str
    synced_at: datetime
    created: int = 0
    updated: int = 0
    deleted: int = 0
    not_modified: bool = False


class ConnectionErrored(Event, tag="connection.errored.v1", kw_only=True):
    """A sync failed; the connection shows ``status: error`` (webhook ``connection.error``)."""

    context: ClassVar[str] = "connections"
    connection_id: str
    user_id: str
    error: str
    kind: str
    at: datetime


class ConnectionRevoked(Event, tag="connection.revoked.v1", kw_only=True):
    """The provider no longer honours the grant (webhook ``connection.revoked``)."""

    context: ClassVar[str] = "connections"
    connection_id: str
    user_id: str
    provider: str
    at: datetime


class ConnectionRemoved(Event, tag="connection.removed.v1", kw_only=True):
    """The user deleted the connection: its cached events and sources go with it."""

    context: ClassVar[str] = "connections"
    connection_id: str
    user_id: str
    provider: str
    at: datetime


# --- unified calendars -----------------------------------------------------------------------


class CalendarCreated(Event, tag="calendar.created.v1", kw_only=True):
    context: ClassVar[str] = "connections"
    calendar: UnifiedCalendar


class CalendarUpdated(Event, tag="calendar.updated.v1", kw_only=True):
    context: ClassVar[str] = "connections"
    calendar: UnifiedCalendar
    #: The slug before the change, when the change renamed it.
    previous_slug: str | None = None


class CalendarDeleted(Event, tag="calendar.deleted.v1", kw_only=True):
    context: ClassVar[str] = "connections"
    calendar: UnifiedCalendar


class CalendarSourceAdded(Event, tag="calendar.source_added.v1", kw_only=True):
    context: ClassVar[str] = "connections"
    calendar: UnifiedCalendar
    source: CalendarSource


class CalendarSourceRemoved(Event, tag="calendar.source_removed.v1", kw_only=True):
    context: ClassVar[str] = "connections"
    calendar: UnifiedCalendar
    source: CalendarSource
    #: ``user`` (DELETE .../sources/:id) or ``connection_removed``.
    reason: str = "user"


class CalendarSourcesReordered(Event, tag="calendar.sources_reordered.v1", kw_only=True):
    context: ClassVar[str] = "connections"
    calendar: UnifiedCalendar


# --- sync jobs (not domain events: work items on the CALMESH_SYNC_JOBS work queue) ---------------

SYNC_JOBS_STREAM = "CALMESH_SYNC_JOBS"
SYNC_JOB_SUBJECT_PREFIX = "calmesh.jobs.sync"


class SyncJob(msgspec.Struct, frozen=True, kw_only=True):
    """One request to sync a connection, published on ``calmesh.jobs.sync.<connection_id>`` with
    ``Nats-Msg-Id`` = ``sync_id``. A worker that finds a sync of the connection started after
    `requested_at` treats the job as done (requests coalesce)."""

    sync_id: str
    connection_id: str
    user_id: str
    #: ``manual``, ``created``, ``schedule``, ``push``.
    reason: str
    requested_at: datetime
    #: A push notice names the provider calendar that changed (its ref); None: every calendar.
    calendar_ref: str | None = None


def sync_job_subject(connection_id: str) -> str:
    return f"{SYNC_JOB_SUBJECT_PREFIX}.{connection_id}"
