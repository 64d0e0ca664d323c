"""Which domain events become which public webhook events: one table.

`EVENT_MAP` maps a domain event tag (``"booking.created.v1"``) to the public type of the API guide (docs/api-guide.md) and a
function that builds the delivery's ``data`` (the resource) from the decoded event. The dispatcher
subscribes to exactly the subjects this table names, per context stream, so adding a row is all it
takes to deliver a new kind of event (the durable consumer's filter is updated at start-up).

Public types whose producers do not publish events yet are listed in `AWAITING_PRODUCER`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import msgspec

from calmesh_common.events import Envelope, Event, subject_for
from calmesh_common.timefmt import rfc3339, rfc3339_or_none

#: Every public event type of the API guide (docs/api-guide.md) (webhook.test is sent by POST /webhooks/{id}/test only).
PUBLIC_EVENT_TYPES: tuple[str, ...] = (
    "booking.created",
    "booking.cancelled",
    "booking.rescheduled",
    "calendar.event.created",
    "calendar.event.updated",
    "calendar.event.deleted",
    "calendar.conflict.detected",
    "connection.synced",
    "connection.error",
    "connection.revoked",
    "poll.voted",
    "poll.decided",
    "subscription.updated",
)
TEST_EVENT_TYPE = "webhook.test"

DataBuilder = Callable[[Event, Envelope], dict[str, Any]]


@dataclass(frozen=True)
class PublicEvent:
    """One public event to deliver: `id` is its webhook-id (stable across retries and replays)."""

    id: str
    type: str
    data: dict[str, Any]


Explode = Callable[[Event, Envelope], list[PublicEvent]]


@dataclass(frozen=True)
class Mapping:
    """How one domain event type becomes public events (usually one; a sync batch gives many)."""

    context: str
    public_types: tuple[str, ...]
    explode: Explode


def one(public_type: str, context: str, build: DataBuilder) -> Mapping:
    """The common case: one public event per domain event, with the domain event's id."""

    def explode(event: Event, envelope: Envelope) -> list[PublicEvent]:
        return [PublicEvent(envelope.id, public_type, build(event, envelope))]

    return Mapping(context, (public_type,), explode)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, msgspec.Struct):
        return {f: _plain(getattr(value, f)) for f in value.__struct_fields__}
    return value


def resource(id_field: str, *, rename: dict[str, str] | None = None, drop: Iterable[str] = ()) -> DataBuilder:
    """A builder giving every field of the event, its `id_field` as ``id`` (first), instants in
    the API guide's form. New fields of an event reach subscribers without touching this table."""
    renamed = rename or {}
    dropped = set(drop) | {id_field}

    def build(event: Event, _envelope: Envelope) -> dict[str, Any]:
        data: dict[str, Any] = {"id": getattr(event, id_field)}
        for name in event.__struct_fields__:
            if name not in dropped:
                data[renamed.get(name, name)] = _plain(getattr(event, name))
        return data

    return build


def _subscription(event: Event, _envelope: Envelope) -> dict[str, Any]:
    return {
        "plan": getattr(event, "plan"),  # noqa: B009 - builders read the decoded struct
        "status": getattr(event, "status"),  # noqa: B009
        "current_period_end": rfc3339_or_none(getattr(event, "current_period_end")),  # noqa: B009
        "previous_plan": getattr(event, "previous_plan"),  # noqa: B009
    }


def _instance(row: Any, connection_id: str, calendar_id: str) -> dict[str, Any]:
    """A calendar event as the API guide (docs/api-guide.md) shows it (all-day events with dates, end exclusive)."""
    all_day = bool(row.all_day)
    return {
        "id": row.event_id,
        "connection_id": connection_id,
        "calendar_id": calendar_id,
        "uid": row.uid,
        "recurrence_id": row.recurrence_id or None,
        "title": row.title,
        "description": row.description,
        "location": row.location,
        "start": row.start_date.isoformat() if all_day and row.start_date else rfc3339_or_none(row.start_at),
        "end": row.end_date.isoformat() if all_day and row.end_date else rfc3339_or_none(row.end_at),
        "all_day": all_day,
        "status": row.status,
        "transparency": row.transparency,
        "recurring_event_id": row.recurring_event_id,
        "updated_at": rfc3339_or_none(row.updated_at),
    }


def _source_events_upserted(event: Event, envelope: Envelope) -> list[PublicEvent]:
    ev: Any = event
    found: list[PublicEvent] = []
    for public_type, rows in (("calendar.event.created", ev.created), ("calendar.event.updated", ev.updated)):
        for row in rows:
            data = _instance(row, ev.connection_id, ev.calendar_id)
            found.append(PublicEvent(f"{envelope.id}.{len(found)}", public_type, data))
    return found


def _source_events_deleted(event: Event, envelope: Envelope) -> list[PublicEvent]:
    ev: Any = event
    return [
        PublicEvent(
            f"{envelope.id}.{n}",
            "calendar.event.deleted",
            {
                "id": key.event_id,
                "connection_id": ev.connection_id,
                "calendar_id": ev.calendar_id,
                "uid": key.uid,
                "recurrence_id": key.recurrence_id or None,
                "reason": ev.reason,
            },
        )
        for n, key in enumerate(ev.keys)
    ]


def _calendar_write_failed(event: Event, envelope: Envelope) -> list[PublicEvent]:
    """A booking's provider write refused for good by a connection (credentials, calendar gone):
    ``connection.error`` naming the connection and the booking. A calendar with no writable source
    left names no connection: nothing to deliver."""
    ev: Any = event
    if not ev.connection_id:
        return []
    return [PublicEvent(envelope.id, "connection.error", {
        "id": ev.connection_id, "connection_id": ev.connection_id, "calendar_id": ev.calendar_id or None,
        "user_id": ev.user_id, "kind": ev.kind, "error": ev.reason, "booking_id": ev.booking_id,
        "calendar_slug": ev.calendar_slug, "at": rfc3339_or_none(ev.at),
    })]


#: domain event tag -> how it becomes public events. Add a row when a producer lands.
EVENT_MAP: dict[str, Mapping] = {
    # billing
    "plan.changed.v1": one("subscription.updated", "billing", _subscription),
    # booking
    "booking.created.v1": one("booking.created", "booking", resource("booking_id")),
    "booking.cancelled.v1": one("booking.cancelled", "booking", resource("booking_id")),
    "booking.rescheduled.v1": one("booking.rescheduled", "booking", resource("booking_id")),
    "booking.calendar_write_failed.v1": Mapping("booking", ("connection.error",), _calendar_write_failed),
    "poll.voted.v1": one("poll.voted", "booking", resource("poll_id")),
    "poll.decided.v1": one("poll.decided", "booking", resource("poll_id")),
    # connections
    "connection.synced.v1": one("connection.synced", "connections", resource("connection_id")),
    "connection.errored.v1": one("connection.error", "connections", resource("connection_id")),
    "connection.revoked.v1": one("connection.revoked", "connections", resource("connection_id")),
    # sync: one event per changed instance of a batch
    "source_events.upserted.v1": Mapping(
        "sync", ("calendar.event.created", "calendar.event.updated"), _source_events_upserted
    ),
    "source_events.deleted.v1": Mapping("sync", ("calendar.event.deleted",), _source_events_deleted),
}

#: Public types with no producing domain event yet: add a row to EVENT_MAP when the producer lands.
AWAITING_PRODUCER: tuple[str, ...] = tuple(
    t for t in PUBLIC_EVENT_TYPES if t not in {p for m in EVENT_MAP.values() for p in m.public_types}
)


def subjects_by_context(event_map: dict[str, Mapping] | None = None) -> dict[str, tuple[str, ...]]:
    """The JetStream subjects to consume, per context, for the mapped events."""
    found: dict[str, list[str]] = {}
    for tag, mapping in (event_map or EVENT_MAP).items():
        found.setdefault(mapping.context, []).append(subject_for(tag, mapping.context))
    return {ctx: tuple(sorted(set(subjects))) for ctx, subjects in found.items()}


_body_encoder = msgspec.json.Encoder()


def message_body(public_type: str, occurred_at: datetime, data: dict[str, Any]) -> bytes:
    """The delivery body ``{type, timestamp, data}``, encoded once (these bytes are signed)."""
    return _body_encoder.encode({"type": public_type, "timestamp": rfc3339(occurred_at), "data": data})
