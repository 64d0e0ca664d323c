"""The merged-events projection ``sync.event_instances``: building rows, diffing, and writing them
together with the events that carry them.

Its SQL is in ``store``; the same three write primitives there (upsert rows, delete keys, purge) apply a sync's changes and replay
the stream in ``rebuild-projection``, so a rebuild gives identical rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import msgspec

from calmesh_common.events import Envelope, Event, decode_event
from calmesh_common.events.sync import (
    ConnectionEventsPurged,
    InstanceKey,
    InstanceRow,
    SourceCalendarPurged,
    SourceEventsDeleted,
    SourceEventsUpserted,
)
from calmesh_common.eventstore import EventStore
from calmesh_common.ids import event_id_for
from calmesh_providers.ical import Instance

from .store import (  # noqa: F401  (the projection's SQL, re-exported for its writers)
    Existing,
    Key,
    delete_keys,
    insert_new_rows,
    load_existing,
    lock_connection,
    purge_calendar,
    purge_connection,
    upsert_rows,
)

#: Rows per event, and the rough payload size at which a chunk is closed early.
CHUNK_ROWS = 400
CHUNK_BYTES = 256 * 1024

_fp_encoder = msgspec.json.Encoder()


def fingerprint(instance: Instance, provider_event_id: str | None, recurring_event_id: str | None) -> str:
    """A digest of everything a reader sees of the row, updated_at aside."""
    payload = _fp_encoder.encode(
        (
            instance.title,
            instance.description,
            instance.location,
            instance.start_at,
            instance.end_at,
            instance.all_day,
            instance.start_date,
            instance.end_date,
            instance.status,
            instance.transparency,
            provider_event_id,
            recurring_event_id,
        )
    )
    return hashlib.blake2b(payload, digest_size=12).hexdigest()


#: Longest title / location / description kept in a row (the rest is cut with an ellipsis): a row
#: travels in an event, and one event must stay well under NATS's 1 MB message limit.
MAX_TEXT = {"title": 2_000, "location": 2_000, "description": 32_768}


def _cut(value: str | None, limit: int) -> str | None:
    if value is None or len(value) <= limit:
        return value
    return value[: limit - 1] + "…"


def row_for(
    instance: Instance, *, connection_id: str, calendar_id: str, provider_event_id: str | None, updated_at: datetime
) -> InstanceRow:
    if (
        len(instance.title) > MAX_TEXT["title"]
        or len(instance.location or "") > MAX_TEXT["location"]
        or len(instance.description or "") > MAX_TEXT["description"]
    ):
        instance = dataclasses.replace(
            instance,
            title=_cut(instance.title, MAX_TEXT["title"]) or "",
            location=_cut(instance.location, MAX_TEXT["location"]),
            description=_cut(instance.description, MAX_TEXT["description"]),
        )
    recurring_event_id = event_id_for(connection_id, calendar_id, instance.uid, "") if instance.recurring else None
    return InstanceRow(
        event_id=event_id_for(connection_id, calendar_id, instance.uid, instance.recurrence_id),
        uid=instance.uid,
        recurrence_id=instance.recurrence_id,
        recurring_event_id=recurring_event_id,
        provider_event_id=provider_event_id,
        title=instance.title,
        description=instance.description,
        location=instance.location,
        start_at=instance.start_at,
        end_at=instance.end_at,
        all_day=instance.all_day,
        start_date=instance.start_date,
        end_date=instance.end_date,
        status=instance.status,
        transparency=instance.transparency,
        updated_at=updated_at,
        fingerprint=fingerprint(instance, provider_event_id, recurring_event_id),
    )


@dataclass
class ChangeSet:
    created: list[InstanceRow]
    updated: list[InstanceRow]
    deleted: list[InstanceKey]

    @property
    def empty(self) -> bool:
        return not (self.created or self.updated or self.deleted)

    def __len__(self) -> int:
        return len(self.created) + len(self.updated) + len(self.deleted)


def diff(
    new_rows: dict[Key, InstanceRow],
    existing: dict[Key, Existing],
    *,
    in_scope: Iterable[Key] | None = None,
    keep_newer_than: datetime | None = None,
) -> ChangeSet:
    """What turns `existing` into `new_rows`: rows to create, to update (content changed), and the
    keys of `in_scope` (default: all existing) that are no longer there. Rows written after
    `keep_newer_than` (by an event-write route while this sync was reading) are not deleted, nor
    are reserved rows (a booking's time before its provider event exists)."""
    created: list[InstanceRow] = []
    updated: list[InstanceRow] = []
    for key, row in new_rows.items():
        old = existing.get(key)
        if old is None:
            created.append(row)
        elif old.fingerprint != row.fingerprint:
            updated.append(row)
    deleted = []
    for key in existing if in_scope is None else in_scope:
        old = existing.get(key)
        if old is None or key in new_rows:
            continue
        if keep_newer_than is not None and old.updated_at > keep_newer_than:
            continue
        if old.reserved:
            continue
        deleted.append(InstanceKey(old.event_id, key[0], key[1]))
    return ChangeSet(created, updated, deleted)


async def apply_event(conn: asyncpg.Connection, event: Event, user_id: str | None = None, *, table: str = "sync.event_instances") -> bool:
    """Apply one projection event (a rebuild replays them in stream order); False if not one."""
    if isinstance(event, SourceEventsUpserted):
        await upsert_rows(conn, event.user_id, event.connection_id, event.calendar_id, [*event.created, *event.updated], table=table)
    elif isinstance(event, SourceEventsDeleted):
        await delete_keys(conn, event.connection_id, event.calendar_id, event.keys, table=table)
    elif isinstance(event, SourceCalendarPurged):
        await purge_calendar(conn, event.connection_id, event.calendar_id, table=table)
    elif isinstance(event, ConnectionEventsPurged):
        await purge_connection(conn, event.connection_id, table=table)
    else:
        return False
    return True


def _approx_size(row: InstanceRow) -> int:
    return 360 + len(row.title) + len(row.description or "") + len(row.location or "") + len(row.uid) * 2


def chunk_events(
    user_id: str, connection_id: str, calendar_id: str, sync_id: str | None, changes: ChangeSet, reason: str = "deleted"
) -> list[Event]:
    """The events that carry `changes`: upserts in chunks, then deletions in chunks."""
    events: list[Event] = []
    created: list[InstanceRow] = []
    updated: list[InstanceRow] = []
    size = 0

    def flush() -> None:
        nonlocal created, updated, size
        if created or updated:
            events.append(
                SourceEventsUpserted(
                    user_id=user_id, connection_id=connection_id, calendar_id=calendar_id, sync_id=sync_id,
                    created=created, updated=updated,
                )
            )
        created, updated, size = [], [], 0

    for is_new, rows in ((True, changes.created), (False, changes.updated)):
        for row in rows:
            (created if is_new else updated).append(row)
            size += _approx_size(row)
            if len(created) + len(updated) >= CHUNK_ROWS or size >= CHUNK_BYTES:
                flush()
    flush()
    for i in range(0, len(changes.deleted), CHUNK_ROWS * 4):
        events.append(
            SourceEventsDeleted(
                user_id=user_id, connection_id=connection_id, calendar_id=calendar_id, sync_id=sync_id,
                keys=changes.deleted[i : i + CHUNK_ROWS * 4], reason=reason,
            )
        )
    return events


def stream_id_for(connection_id: str, calendar_id: str) -> str:
    return f"source:{connection_id}:{calendar_id}"


async def write_changes(
    conn: asyncpg.Connection,
    store: EventStore,
    *,
    user_id: str,
    connection_id: str,
    calendar_id: str,
    sync_id: str | None,
    changes: ChangeSet,
    reason: str = "deleted",
) -> None:
    """Write `changes` to the projection and append the events that carry them, in the caller's
    transaction (which holds lock_connection)."""
    if changes.empty:
        return
    await delete_keys(conn, connection_id, calendar_id, changes.deleted)
    await insert_new_rows(conn, user_id, connection_id, calendar_id, changes.created)
    await upsert_rows(conn, user_id, connection_id, calendar_id, changes.updated)
    events = chunk_events(user_id, connection_id, calendar_id, sync_id, changes, reason)
    await store.append(conn, stream_id_for(connection_id, calendar_id), None, events, user_id=user_id)


def decode_projection_event(envelope: Envelope) -> Event | None:
    try:
        return decode_event(envelope)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
