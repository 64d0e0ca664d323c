"""Events published by the sync context (the sync workers and the sync service's event-write routes).

Two families:

- the life of a sync run (``sync.started``, ``sync.progressed``, ``sync.completed``,
  ``sync.failed``), which the connections service turns into a connection's status;
- what changed at a source (``source_events.upserted``, ``source_events.deleted``,
  ``source_calendar.purged``, ``connection_events.purged``). These carry the full rows of the
  merged-events projection ``sync.event_instances``, so the projection can be rebuilt from the
  stream alone (``calmesh-sync rebuild-projection``) with identical rows.

Changes are batched: one event carries up to a few hundred rows (a chunk of one calendar's changes);
every event of one calendar's sync is appended in the same transaction as the projection rows.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import ClassVar

import msgspec

from . import Event


class InstanceRow(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One row of ``sync.event_instances`` (minus the ids the event carries once for the chunk:
    ``user_id``, ``connection_id``, ``calendar_id``)."""

    event_id: str
    uid: str
    recurrence_id: str = ""
    recurring_event_id: str | None = None
    provider_event_id: str | None = None
    title: str = ""
    description: str | None = None
    location: str | None = None
    start_at: datetime
    end_at: datetime
    all_day: bool = False
    start_date: date | None = None
    end_date: date | None = None
    status: str = "confirmed"
    transparency: str = "busy"
    updated_at: datetime
    #: Digest of the row's content (everything but updated_at): unchanged content, no write.
    fingerprint: str = ""
    #: The booking (``bk_``) or hold (``hold_``) this row was written for, else None. A row with a
    #: booking id and no provider id is a booking's time entered before its provider event exists.
    booking_id: str | None = None


class InstanceKey(msgspec.Struct, frozen=True, array_like=True):
    """The key of a projection row within one calendar, with its event id."""

    event_id: str
    uid: str
    recurrence_id: str = ""


class CalendarInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A provider calendar as a sync found it (``ref`` is the provider's own reference: a CalDAV
    collection URL, a Google calendar id, a Graph calendar id, a feed URL; never a secret)."""

    id: str
    name: str
    color: str | None = None
    read_only: bool = False
    ref: str = ""


class _SyncEvent(Event, tag=False, frozen=True):
    """The base of the sync context's events (no tag of its own: not an event by itself)."""

    context: ClassVar[str] = "sync"


class _SyncRunEvent(_SyncEvent, tag=False, frozen=True):
    """An event in the life of one sync run of a connection."""

    sync_id: str
    connection_id: str
    user_id: str


class _ConnectionChange(_SyncEvent, tag=False, frozen=True):
    """A change to the rows of one connection."""

    user_id: str
    connection_id: str


class _CalendarChange(_ConnectionChange, tag=False, frozen=True):
    """A change to the rows of one calendar of the connection."""

    calendar_id: str


class _CalendarChunk(_CalendarChange, tag=False, frozen=True):
    """A chunk of one calendar's changes, from the sync `sync_id` (None: not from a sync)."""

    sync_id: str | None = None


class SyncStarted(_SyncRunEvent, tag="sync.started.v1", kw_only=True, frozen=True):
    reason: str
    worker_id: str = ""
    started_at: datetime
    calendars_total: int = 0


class SyncProgressed(_SyncRunEvent, tag="sync.progressed.v1", kw_only=True, frozen=True):
    calendars_done: int
    calendars_total: int
    events_changed: int = 0


class SyncCompleted(_SyncRunEvent, tag="sync.completed.v1", kw_only=True, frozen=True):
    finished_at: datetime
    created: int = 0
    updated: int = 0
    deleted: int = 0
    #: True when nothing had changed at the source (a 304, an unchanged ctag or sync token).
    not_modified: bool = False
    #: The provider calendars as found by this sync (None: not looked up this time).
    calendars: list[CalendarInfo] | None = None
    #: A calendar-level warning that did not fail the sync (e.g. a series that was skipped).
    warning: str | None = None


class SyncFailed(_SyncRunEvent, tag="sync.failed.v1", kw_only=True, frozen=True):
    failed_at: datetime
    #: Fit for a user's ``last_error``: says what went wrong and, where it can, what to do.
    error: str
    #: ``auth`` (credentials refused: no retry until the user acts), ``revoked`` (the OAuth grant
    #: is gone), ``source`` (the source is unusable as it is: bad feed, too big, refused address),
    #: ``transient`` (network, 5xx, 429: retried).
    kind: str
    retry_at: datetime | None = None


class SourceEventsUpserted(_CalendarChunk, tag="source_events.upserted.v1", kw_only=True, frozen=True):
    """Rows created or changed in one calendar of a connection (a chunk of one sync's changes)."""

    created: list[InstanceRow] = msgspec.field(default_factory=list)
    updated: list[InstanceRow] = msgspec.field(default_factory=list)


class SourceEventsDeleted(_CalendarChunk, tag="source_events.deleted.v1", kw_only=True, frozen=True):
    """Rows removed from one calendar: deleted or cancelled at the source (``deleted``), or moved
    out of the synced window (``window``)."""

    keys: list[InstanceKey] = msgspec.field(default_factory=list)
    reason: str = "deleted"


class SourceCalendarPurged(_CalendarChange, tag="source_calendar.purged.v1", kw_only=True, frozen=True):
    """Every row of one provider calendar removed (the calendar is gone at the provider)."""

    reason: str = "calendar_removed"


class ConnectionEventsPurged(_ConnectionChange, tag="connection_events.purged.v1", kw_only=True, frozen=True):
    """Every row of a connection removed, after the connection was deleted."""



#: The events that change the projection, in the order a rebuild applies them (stream order).
PROJECTION_EVENT_TYPES: tuple[str, ...] = (
    "source_events.upserted.v1",
    "source_events.deleted.v1",
    "source_calendar.purged.v1",
    "connection_events.purged.v1",
)
