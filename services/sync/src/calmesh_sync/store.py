"""Every SQL statement of the sync service's own schema ``sync`` (the projection
``event_instances``, per-calendar sync state, CalDAV source objects, sync runs, removed
connections), as functions over an asyncpg connection or pool; the event-write and reservation
routes (``writes.py``, ``reservations.py``) still carry their own statements.

Nothing here decides anything: the engine, the worker, the consumers and the rebuild call these in
their transactions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import msgspec

from calmesh_common.events.sync import InstanceKey, InstanceRow
from calmesh_providers import ical

Key = tuple[str, str]  # (uid, recurrence_id)

DB: TypeAlias = asyncpg.Connection | asyncpg.Pool

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


async def lock_connection(conn: asyncpg.Connection, connection_id: str, *, check_removed: bool = True) -> bool:
    """Serialise every projection write of one connection (sync, event-write routes, purge) for the
    rest of the transaction; returns False when the connection was removed meanwhile (with
    `check_removed=False` the caller asks ``sync.removed_connections`` itself, in its next statement)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('calmesh-sync-write:' || $1, 0))", connection_id)
    if not check_removed:
        return True
    removed = await conn.fetchval("SELECT 1 FROM sync.removed_connections WHERE connection_id = $1", connection_id)
    return removed is None


async def mark_connection_removed(conn: asyncpg.Connection, connection_id: str, user_id: str) -> bool:
    """Take the connection's write lock and remember it is gone (a running sync writes no more);
    True the first time."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('calmesh-sync-write:' || $1, 0))", connection_id)
    inserted = await conn.fetchval(
        "INSERT INTO sync.removed_connections (connection_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
        connection_id,
        user_id,
    )
    return bool(inserted)


async def connection_removed(conn: DB, connection_id: str) -> bool:
    return await conn.fetchval("SELECT 1 FROM sync.removed_connections WHERE connection_id = $1", connection_id) is not None


async def forget_connection(conn: asyncpg.Connection, connection_id: str) -> None:
    """A removed connection's sync state and source objects go (its rows: `purge_connection`)."""
    await conn.execute("DELETE FROM sync.source_objects WHERE connection_id = $1", connection_id)
    await conn.execute("DELETE FROM sync.calendar_state WHERE connection_id = $1", connection_id)


# --- per-calendar sync state ---------------------------------------------------------------------


@dataclass
class CalendarState:
    cursor: dict[str, Any]
    window_start: datetime | None
    window_end: datetime | None


async def load_state(conn: DB, connection_id: str, calendar_id: str) -> CalendarState:
    row = await conn.fetchrow(
        "SELECT cursor, window_start, window_end FROM sync.calendar_state WHERE connection_id = $1 AND calendar_id = $2",
        connection_id,
        calendar_id,
    )
    if row is None:
        return CalendarState({}, None, None)
    cursor = row["cursor"]
    return CalendarState(msgspec.json.decode(cursor) if isinstance(cursor, str | bytes) else dict(cursor), row["window_start"], row["window_end"])


async def save_state(conn: asyncpg.Connection, connection_id: str, calendar_id: str, cursor: dict[str, Any], window: ical.Window) -> None:
    await conn.execute(
        "INSERT INTO sync.calendar_state (connection_id, calendar_id, cursor, window_start, window_end, synced_at)"
        " VALUES ($1, $2, $3::jsonb, $4, $5, now())"
        " ON CONFLICT (connection_id, calendar_id) DO UPDATE SET cursor = EXCLUDED.cursor,"
        " window_start = EXCLUDED.window_start, window_end = EXCLUDED.window_end, synced_at = now()",
        connection_id,
        calendar_id,
        msgspec.json.encode(cursor).decode(),
        window.start,
        window.end,
    )


async def synced_calendar_ids(conn: DB, connection_id: str) -> list[str]:
    """The calendars of the connection that have a sync state."""
    rows = await conn.fetch("SELECT DISTINCT calendar_id FROM sync.calendar_state WHERE connection_id = $1", connection_id)
    return [r["calendar_id"] for r in rows]


async def forget_calendar(conn: asyncpg.Connection, connection_id: str, calendar_id: str) -> None:
    """A vanished calendar's sync state and source objects go (its rows: `purge_calendar`)."""
    await conn.execute("DELETE FROM sync.calendar_state WHERE connection_id = $1 AND calendar_id = $2", connection_id, calendar_id)
    await conn.execute("DELETE FROM sync.source_objects WHERE connection_id = $1 AND calendar_id = $2", connection_id, calendar_id)


# --- CalDAV source objects -----------------------------------------------------------------------


async def object_etags(conn: DB, connection_id: str, calendar_id: str, hrefs: list[str] | None = None) -> dict[str, str | None]:
    """The ETags of the objects last seen (all of them, or those of `hrefs`)."""
    if hrefs is None:
        rows = await conn.fetch(
            "SELECT href, etag FROM sync.source_objects WHERE connection_id = $1 AND calendar_id = $2", connection_id, calendar_id
        )
    else:
        rows = await conn.fetch(
            "SELECT href, etag FROM sync.source_objects WHERE connection_id = $1 AND calendar_id = $2 AND href = ANY($3::text[])",
            connection_id, calendar_id, hrefs,
        )
    return {r["href"]: r["etag"] for r in rows}


async def object_bodies(conn: DB, connection_id: str, calendar_id: str, hrefs: list[str]) -> list[tuple[str, str]]:
    """(href, iCalendar data) of the stored copies of `hrefs`."""
    rows = await conn.fetch(
        "SELECT href, data FROM sync.source_objects WHERE connection_id = $1 AND calendar_id = $2 AND href = ANY($3::text[])",
        connection_id, calendar_id, hrefs,
    )
    return [(r["href"], r["data"]) for r in rows]


async def save_objects(
    conn: asyncpg.Connection, connection_id: str, calendar_id: str, objects: Sequence[Any], deleted: Sequence[str]
) -> None:
    """Store the fetched `objects` (href, etag, data) and drop the `deleted` hrefs."""
    if objects:
        await conn.executemany(
            "INSERT INTO sync.source_objects (connection_id, calendar_id, href, etag, data) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (connection_id, calendar_id, href) DO UPDATE SET etag = EXCLUDED.etag, data = EXCLUDED.data",
            [(connection_id, calendar_id, o.href, o.etag, o.data) for o in objects],
        )
    if deleted:
        await conn.execute(
            "DELETE FROM sync.source_objects WHERE connection_id = $1 AND calendar_id = $2 AND href = ANY($3::text[])",
            connection_id, calendar_id, list(deleted),
        )


# --- sync runs (the worker) ----------------------------------------------------------------------

_JOB_LOCK_KEY = "hashtextextended('calmesh-sync:' || $1, 0)"


async def try_job_lock(conn: asyncpg.Connection, connection_id: str) -> bool:
    """The session lock one sync job of a connection holds while it runs."""
    return bool(await conn.fetchval(f"SELECT pg_try_advisory_lock({_JOB_LOCK_KEY})", connection_id))


async def release_job_lock(conn: asyncpg.Connection, connection_id: str) -> None:
    await conn.execute(f"SELECT pg_advisory_unlock({_JOB_LOCK_KEY})", connection_id)


async def finished_later(conn: DB, connection_id: str, sync_id: str, requested_at: datetime) -> bool:
    """Whether another sync of the connection started after `requested_at` and has finished."""
    found = await conn.fetchval(
        "SELECT 1 FROM sync.sync_runs WHERE connection_id = $1 AND sync_id <> $2 AND started_at > $3"
        " AND outcome IN ('completed', 'failed') LIMIT 1",
        connection_id,
        sync_id,
        requested_at,
    )
    return found is not None


async def start_run(
    conn: DB, *, sync_id: str, connection_id: str, worker_id: str, reason: str, requested_at: datetime, started_at: datetime
) -> int:
    value: int = await conn.fetchval(
        "INSERT INTO sync.sync_runs (sync_id, connection_id, worker_id, reason, requested_at, started_at)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        sync_id, connection_id, worker_id, reason, requested_at, started_at,
    )
    return value


async def finish_run(conn: DB, run_id: int, outcome: str, error: str | None) -> None:
    connection_id = await conn.fetchval(
        "UPDATE sync.sync_runs SET finished_at = now(), outcome = $2, error = $3 WHERE id = $1 RETURNING connection_id",
        run_id, outcome, error,
    )
    # The record of runs is for operations and coalescing: a week of it is plenty.
    await conn.execute(
        "DELETE FROM sync.sync_runs WHERE connection_id = $1 AND started_at < now() - interval '7 days'", connection_id
    )


# --- rebuilding the projection -------------------------------------------------------------------

#: The scratch table a rebuild replays the stream into.
SCRATCH = "sync.event_instances_rebuild"
_COLUMNS = ", ".join(_COPY_COLUMNS)


async def unpublished_outbox(conn: DB) -> int:
    value: int = await conn.fetchval("SELECT count(*) FROM sync.outbox WHERE published_at IS NULL")
    return value


async def lock_projection(conn: asyncpg.Connection) -> None:
    """Writers wait until the transaction ends; reads go on."""
    await conn.execute("LOCK TABLE sync.event_instances IN EXCLUSIVE MODE")


async def create_scratch(conn: asyncpg.Connection) -> None:
    await conn.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
    await conn.execute(f"CREATE TABLE {SCRATCH} (LIKE sync.event_instances INCLUDING ALL)")


async def compare_scratch(conn: asyncpg.Connection) -> tuple[int, int, int, int]:
    """(live rows, rebuilt rows, live rows the rebuild lacks, rebuilt rows the live table lacks)."""
    live = await conn.fetchval("SELECT count(*) FROM sync.event_instances")
    rebuilt = await conn.fetchval(f"SELECT count(*) FROM {SCRATCH}")
    missing = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT {_COLUMNS} FROM sync.event_instances EXCEPT SELECT {_COLUMNS} FROM {SCRATCH}) d"
    )
    extra = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT {_COLUMNS} FROM {SCRATCH} EXCEPT SELECT {_COLUMNS} FROM sync.event_instances) d"
    )
    return live, rebuilt, missing, extra


async def replace_with_scratch(conn: asyncpg.Connection) -> None:
    await conn.execute("DELETE FROM sync.event_instances")
    await conn.execute(f"INSERT INTO sync.event_instances ({_COLUMNS}) SELECT {_COLUMNS} FROM {SCRATCH}")


async def drop_scratch(conn: asyncpg.Connection) -> None:
    await conn.execute(f"DROP TABLE {SCRATCH}")
