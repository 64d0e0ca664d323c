"""The merged-events projection ``sync.event_instances``: building rows, diffing, and writing them
together with the events that carry them.

The same three write primitives (upsert rows, delete keys, purge) apply a sync's changes and replay
the stream in ``rebuild-projection``, so a rebuild gives identical rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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

Key = tuple[str, str]  # (uid, recurrence_id)

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


@dataclass(frozen=True, slots=True)
class Existing:
    event_id: str
    fingerprint: str
    provider_event_id: str | None
    updated_at: datetime
    booking_id: str | None = None

    @property
    def reserved(self) -> bool:
        """A booking's or hold's time whose provider event does not exist (yet): no provider read
        can know of it, so no sync deletes it (its booking's writes and releases do)."""
        return self.booking_id is not None and self.provider_event_id is None


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


# --- reading -----------------------------------------------------------------------------------


async def load_existing(
    conn: asyncpg.Connection,
    connection_id: str,
    calendar_id: str,
    *,
    provider_ids: Sequence[str] | None = None,
    provider_prefixes: Sequence[str] | None = None,
    uids: Sequence[str] | None = None,
    table: str = "sync.event_instances",
) -> dict[Key, Existing]:
    """Rows of one calendar: all of them, or those of the given provider ids / uids."""
    base = (
        f"SELECT uid, recurrence_id, event_id, fingerprint, provider_event_id, updated_at, booking_id FROM {table}"
        " WHERE connection_id = $1 AND calendar_id = $2"
    )
    if provider_ids is None and uids is None and provider_prefixes is None:
        rows = await conn.fetch(base, connection_id, calendar_id)
    else:
        rows = await conn.fetch(
            base
            + " AND (provider_event_id = ANY($3::text[]) OR uid = ANY($4::text[])"
            " OR provider_event_id LIKE ANY($5::text[]))",
            connection_id,
            calendar_id,
            list(provider_ids or []),
            list(uids or []),
            [_like_prefix(p) for p in provider_prefixes or []],
        )
    return {
        (r["uid"], r["recurrence_id"]): Existing(r["event_id"], r["fingerprint"], r["provider_event_id"], r["updated_at"],
                                                 r["booking_id"])
        for r in rows
    }


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "\\_%"


# --- writing -----------------------------------------------------------------------------------

# A row read from the provider carries no booking id: the row keeps the one it has, and a booking's
# row its booking cancelled stays cancelled until the booking's provider event is deleted (a sync
# that still sees the event in between must not make the time busy again). A rebuild replays the
# same statement, so it gives the same rows.
_UPSERT = """
INSERT INTO {table} AS t (event_id, user_id, connection_id, calendar_id, uid, recurrence_id, recurring_event_id,
    provider_event_id, title, description, location, start_at, end_at, all_day, start_date, end_date, status,
    transparency, updated_at, fingerprint, booking_id)
SELECT u.event_id, $1, $2, $3, u.uid, u.recurrence_id, u.recurring_event_id, u.provider_event_id, u.title,
    u.description, u.location, u.start_at, u.end_at, u.all_day, u.start_date, u.end_date, u.status,
    u.transparency, u.updated_at, u.fingerprint, u.booking_id
FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
    $12::timestamptz[], $13::timestamptz[], $14::bool[], $15::date[], $16::date[], $17::text[], $18::text[],
    $19::timestamptz[], $20::text[], $21::text[])
    AS u(event_id, uid, recurrence_id, recurring_event_id, provider_event_id, title, description, location,
         start_at, end_at, all_day, start_date, end_date, status, transparency, updated_at, fingerprint, booking_id)
ON CONFLICT (connection_id, calendar_id, uid, recurrence_id) DO UPDATE SET
    event_id = EXCLUDED.event_id, user_id = EXCLUDED.user_id, recurring_event_id = EXCLUDED.recurring_event_id,
    provider_event_id = EXCLUDED.provider_event_id, title = EXCLUDED.title, description = EXCLUDED.description,
    location = EXCLUDED.location, start_at = EXCLUDED.start_at, end_at = EXCLUDED.end_at,
    all_day = EXCLUDED.all_day, start_date = EXCLUDED.start_date, end_date = EXCLUDED.end_date,
    status = CASE WHEN EXCLUDED.booking_id IS NULL AND t.booking_id IS NOT NULL AND t.status = 'cancelled'
                  THEN t.status ELSE EXCLUDED.status END,
    transparency = EXCLUDED.transparency, updated_at = EXCLUDED.updated_at,
    fingerprint = EXCLUDED.fingerprint, booking_id = coalesce(EXCLUDED.booking_id, t.booking_id)
"""


async def upsert_rows(
    conn: asyncpg.Connection,
    user_id: str,
    connection_id: str,
    calendar_id: str,
    rows: Sequence[InstanceRow],
    *,
    table: str = "sync.event_instances",
) -> None:
    if not rows:
        return
    cols: list[list[Any]] = [[] for _ in range(18)]
    for r in rows:
        for i, value in enumerate(
            (
                r.event_id, r.uid, r.recurrence_id, r.recurring_event_id, r.provider_event_id, r.title,
                r.description, r.location, r.start_at, r.end_at, r.all_day, r.start_date, r.end_date, r.status,
                r.transparency, r.updated_at, r.fingerprint, r.booking_id,
            )
        ):
            cols[i].append(value)
    await conn.execute(_UPSERT.format(table=table), user_id, connection_id, calendar_id, *cols)


_COPY_COLUMNS = (
    "event_id", "user_id", "connection_id", "calendar_id", "uid", "recurrence_id", "recurring_event_id", "provider_event_id",
    "title", "description", "location", "start_at", "end_at", "all_day", "start_date", "end_date", "status", "transparency",
    "updated_at", "fingerprint", "booking_id",
)


async def insert_new_rows(
    conn: asyncpg.Connection, user_id: str, connection_id: str, calendar_id: str, rows: Sequence[InstanceRow]
) -> None:
    """Rows known not to exist yet (the caller loaded every row they could collide with), with COPY:
    several times faster than an upsert for a big first sync."""
    if not rows:
        return
    if len(rows) < 200:
        await upsert_rows(conn, user_id, connection_id, calendar_id, rows)
        return
    await conn.copy_records_to_table(
        "event_instances",
        schema_name="sync",
        columns=_COPY_COLUMNS,
        records=[
            (r.event_id, user_id, connection_id, calendar_id, r.uid, r.recurrence_id, r.recurring_event_id, r.provider_event_id,
             r.title, r.description, r.location, r.start_at, r.end_at, r.all_day, r.start_date, r.end_date, r.status,
             r.transparency, r.updated_at, r.fingerprint, r.booking_id)
            for r in rows
        ],
    )


async def delete_keys(
    conn: asyncpg.Connection,
    connection_id: str,
    calendar_id: str,
    keys: Sequence[InstanceKey],
    *,
    table: str = "sync.event_instances",
) -> None:
    if not keys:
        return
    await conn.execute(
        f"DELETE FROM {table} t USING unnest($3::text[], $4::text[]) AS k(uid, recurrence_id)"
        " WHERE t.connection_id = $1 AND t.calendar_id = $2 AND t.uid = k.uid AND t.recurrence_id = k.recurrence_id",
        connection_id,
        calendar_id,
        [k.uid for k in keys],
        [k.recurrence_id for k in keys],
    )


async def purge_calendar(conn: asyncpg.Connection, connection_id: str, calendar_id: str, *, table: str = "sync.event_instances") -> int:
    result = await conn.execute(f"DELETE FROM {table} WHERE connection_id = $1 AND calendar_id = $2", connection_id, calendar_id)
    return int(result.split()[-1])


async def purge_connection(conn: asyncpg.Connection, connection_id: str, *, table: str = "sync.event_instances") -> int:
    result = await conn.execute(f"DELETE FROM {table} WHERE connection_id = $1", connection_id)
    return int(result.split()[-1])


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


async def lock_connection(conn: asyncpg.Connection, connection_id: str) -> bool:
    """Serialise every projection write of one connection (sync, event-write routes, purge) for the
    rest of the transaction; returns False when the connection was removed meanwhile."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('calmesh-sync-write:' || $1, 0))", connection_id)
    removed = await conn.fetchval("SELECT 1 FROM sync.removed_connections WHERE connection_id = $1", connection_id)
    return removed is None


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
