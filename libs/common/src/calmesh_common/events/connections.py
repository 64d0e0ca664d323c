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


class _ConnectionsEvent(Event, tag=False, frozen=True):
    """The base of the connections context's events (no tag of its own: not an event by itself)."""

    context: ClassVar[str] = "connections"


class _ConnectionEvent(_ConnectionsEvent, tag=False, frozen=True):
    """An event of one connection."""

    connection_id: str
    user_id: str


class _ConnectionGone(_ConnectionEvent, tag=False, frozen=True):
    """The connection is no longer usable: which provider, and since when."""

    provider: str
    at: datetime


class ConnectionCreated(_ConnectionEvent, tag="connection.created.v1", kw_only=True, frozen=True):
    provider: str
    display_name: str
    status: str
    calendars: list[ConnectionCalendar] = msgspec.field(default_factory=list)
    created_at: datetime


class ConnectionAuthorized(_ConnectionEvent, tag="connection.authorized.v1", kw_only=True, frozen=True):
    """An OAuth connection completed its authorization (the callback exchanged the code)."""

    provider: str
    display_name: str
    calendars: list[ConnectionCalendar] = msgspec.field(default_factory=list)


class ConnectionCalendarsChanged(_ConnectionEvent, tag="connection.calendars_changed.v1", kw_only=True, frozen=True):
    """The provider calendars of a connection changed (found by a sync)."""

    calendars: list[ConnectionCalendar]


class ConnectionCredentialsRefreshed(_ConnectionEvent, tag="connection.credentials_refreshed.v1", kw_only=True, frozen=True):
    """An OAuth access token was refreshed (the token itself is never in an event)."""

    expires_at: datetime | None = None


class ConnectionSyncRequested(_ConnectionEvent, tag="connection.sync_requested.v1", kw_only=True, frozen=True):
    sync_id: str
    #: ``manual`` (POST .../sync), ``created``, ``schedule``, ``push``.
    reason: str


class ConnectionSynced(_ConnectionEvent, tag="connection.synced.v1", kw_only=True, frozen=True):
    """A sync finished successfully (webhook ``connection.synced``)."""

    sync_id: str
    synced_at: datetime
    created: int = 0
    updated: int = 0
    deleted: int = 0
    not_modified: bool = False


class ConnectionErrored(_ConnectionEvent, tag="connection.errored.v1", kw_only=True, frozen=True):
    """A sync failed; the connection shows ``status: error`` (webhook ``connection.error``)."""

    error: str
    kind: str
    at: datetime


class ConnectionRevoked(_ConnectionGone, tag="connection.revoked.v1", kw_only=True, frozen=True):
    """The provider no longer honours the grant (webhook ``connection.revoked``)."""


class ConnectionRemoved(_ConnectionGone, tag="connection.removed.v1", kw_only=True, frozen=True):
    """The user deleted the connection: its cached events and sources go with it."""


# --- unified calendars -----------------------------------------------------------------------


class _CalendarEvent(_ConnectionsEvent, tag=False, frozen=True):
    """An event of one unified calendar: the whole calendar after the change."""

    calendar: UnifiedCalendar


class _CalendarSourceEvent(_CalendarEvent, tag=False, frozen=True):
    source: CalendarSource


class CalendarCreated(_CalendarEvent, tag="calendar.created.v1", kw_only=True, frozen=True):
    """A unified calendar was made."""


class CalendarUpdated(_CalendarEvent, tag="calendar.updated.v1", kw_only=True, frozen=True):
    #: The slug before the change, when the change renamed it.
    previous_slug: str | None = None


class CalendarDeleted(_CalendarEvent, tag="calendar.deleted.v1", kw_only=True, frozen=True):
    """A unified calendar was deleted (``calendar``: as it was before)."""


class CalendarSourceAdded(_CalendarSourceEvent, tag="calendar.source_added.v1", kw_only=True, frozen=True):
    """A source was added to the calendar."""


class CalendarSourceRemoved(_CalendarSourceEvent, tag="calendar.source_removed.v1", kw_only=True, frozen=True):
    #: ``user`` (DELETE .../sources/:id) or ``connection_removed``.
    reason: str = "user"


class CalendarSourcesReordered(_CalendarEvent, tag="calendar.sources_reordered.v1", kw_only=True, frozen=True):
    """The calendar's sources were put in another order."""


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
