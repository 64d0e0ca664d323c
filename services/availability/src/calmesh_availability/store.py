"""asyncpg: the reads of the merged-events projection ``sync.event_instances`` (owned and written by
the sync service; this service only reads it); this service's own ``idempotency_keys`` are calmesh_common.idempotency's.

Every read is one statement, so it sees one snapshot: a sync applies one calendar's changes in one
transaction, so a read never sees half of a sync. Each source is read through the projection's
index ``(connection_id, calendar_id, start_at)``: a ``LATERAL`` range scan per source, merged in
start order.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg

from .domain import to_epoch_datetime

PROJECTION = "sync.event_instances"

# Instants as whole epoch seconds, the interval engine's unit (date_part gives float8, which is
# cheaper than extract's numeric).
def _epoch(column: str) -> str:
    return f"floor(date_part('epoch', {column}))::int8"


_TIMES = f"""{_epoch("ei.start_at")} AS s, {_epoch("ei.end_at")} AS e,
           ei.all_day, ei.start_date, ei.end_date, ei.status, ei.transparency"""

FULL_COLUMNS = f"""ei.event_id, ei.connection_id, ei.calendar_id, ei.uid, ei.recurrence_id, ei.recurring_event_id,
           ei.provider_event_id, ei.booking_id, ei.title, ei.description, ei.location, {_TIMES},
           {_epoch("ei.updated_at")} AS u"""

# Free/busy alone needs only the engine's items, and the query makes them, as three parallel
# arrays in one row — starts, ends (whole epoch seconds) and the 1-based position of the row's
# source in the arrays passed in — sorted by start: no per-row records to build on either side. An
# all-day row is placed on its dates in the calendar's zone ($6) here, so the order is where rows
# really start.
_LOCAL_START = "(ei.start_date::timestamp AT TIME ZONE {tz})"
_LOCAL_END = "(ei.end_date::timestamp AT TIME ZONE {tz})"
_ALL_DAY = "ei.all_day AND ei.start_date IS NOT NULL AND ei.end_date IS NOT NULL"
_SPAN_COLUMNS = f"""
           CASE WHEN {_ALL_DAY} THEN {_epoch(_LOCAL_START.format(tz="$6"))} ELSE {_epoch("ei.start_at")} END AS s,
           CASE WHEN {_ALL_DAY} THEN {_epoch(_LOCAL_END.format(tz="$6"))} ELSE {_epoch("ei.end_at")} END AS e,
           src.ord::int4 AS o"""


def _per_source(columns: str, where: str) -> str:
    return f"""
        SELECT x.* FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS src(connection_id, calendar_id, ord)
        CROSS JOIN LATERAL (
            SELECT {columns}
            FROM {PROJECTION} ei
            WHERE ei.connection_id = src.connection_id AND ei.calendar_id = src.calendar_id
              AND ei.user_id = $1 AND ei.start_at < $5 AND ei.end_at > $4 {where}
            OFFSET 0  -- keeps the planner from flattening this into a hash join over a full scan
        ) x
        ORDER BY x.s, x.e"""


_BUSY = "AND ei.status <> 'cancelled' AND ei.transparency <> 'free'"
BUSY_FULL_SQL = _per_source(FULL_COLUMNS, _BUSY)
BUSY_FULL_LIMITED_SQL = BUSY_FULL_SQL + "\n        LIMIT $6"
BUSY_COLUMNS_SQL = f"""
    SELECT coalesce(array_agg(b.s ORDER BY b.s, b.e), '{{}}') AS starts,
           coalesce(array_agg(b.e ORDER BY b.s, b.e), '{{}}') AS ends,
           coalesce(array_agg(b.o ORDER BY b.s, b.e), '{{}}') AS sources
    FROM ({_per_source(_SPAN_COLUMNS, _BUSY)}) b"""

# The events list is ordered by where each event starts for the reader: an all-day event at local
# midnight of its first date in the calendar's zone ($6), not at its widest-span start_at; and it
# selects all-day events by their dates in that zone. The keyset is (that start, event_id).
_SORT_AT = f"CASE WHEN {_ALL_DAY} THEN {_LOCAL_START.format(tz='$6')} ELSE ei.start_at END"


def _events_sql(include_cancelled: bool, keyset: bool) -> str:
    local_start, local_end = _LOCAL_START.format(tz="$6"), _LOCAL_END.format(tz="$6")
    where = f"""AND (NOT ({_ALL_DAY}) OR ({local_start} < $5 AND {local_end} > $4))"""
    if not include_cancelled:
        where += " AND ei.status <> 'cancelled'"
    if keyset:
        # A row's place (its local start) is never before its start_at and at most 26 hours after
        # (an all-day row's widest span starts at UTC+14): the keyset bounds the index range too.
        where += f" AND ei.start_at >= $7::timestamptz - interval '26 hours' AND ({_SORT_AT}, ei.event_id) > ($7, $8)"
    limit = "$9" if keyset else "$7"
    return f"""
        SELECT x.* FROM unnest($2::text[], $3::text[]) AS src(connection_id, calendar_id)
        CROSS JOIN LATERAL (
            SELECT {FULL_COLUMNS}, {_SORT_AT} AS sort_at,
                   (extract(epoch FROM {_SORT_AT}) * 1000000)::bigint AS k
            FROM {PROJECTION} ei
            WHERE ei.connection_id = src.connection_id AND ei.calendar_id = src.calendar_id
              AND ei.user_id = $1 AND ei.start_at < $5 AND ei.end_at > $4 {where}
            ORDER BY sort_at, ei.event_id
            LIMIT {limit}
        ) x
        ORDER BY x.sort_at, x.event_id
        LIMIT {limit}"""


EVENTS_SQL = {(c, k): _events_sql(c, k) for c in (False, True) for k in (False, True)}

FIND_EVENT_SQL = f"""
    SELECT ei.event_id, ei.connection_id, ei.calendar_id, ei.updated_at
    FROM unnest($2::text[], $3::text[]) AS src(connection_id, calendar_id)
    JOIN {PROJECTION} ei ON ei.connection_id = src.connection_id AND ei.calendar_id = src.calendar_id
    WHERE ei.user_id = $1 AND ei.event_id = $4
    LIMIT 1"""


async def busy_rows(
    pool: asyncpg.Pool, user_id: str, connection_ids: list[str], calendar_ids: list[str],
    start: int, end: int, *, limit: int | None = None,
) -> list[asyncpg.Record]:
    """Busy (not cancelled, not transparent) rows of the sources overlapping ``[start, end)``,
    every column (explain, conflicts), by start_at; at most `limit` of them when given (a caller
    that asks for one more than it accepts learns that there are too many)."""
    args: list[Any] = [user_id, connection_ids, calendar_ids, to_epoch_datetime(start), to_epoch_datetime(end)]
    if limit is None:
        rows: list[Any] = await pool.fetch(BUSY_FULL_SQL, *args)
        return rows
    rows = await pool.fetch(BUSY_FULL_LIMITED_SQL, *args, limit)
    return rows


async def busy_columns(
    pool: asyncpg.Pool, user_id: str, connection_ids: list[str], calendar_ids: list[str],
    start: int, end: int, tz_name: str,
) -> tuple[list[int], list[int], list[int]]:
    """The busy rows of the sources overlapping ``[start, end)`` as three parallel lists sorted by
    start: starts, ends, and each row's source as its 1-based position in `connection_ids`.
    All-day rows are placed on their dates in zone `tz_name`."""
    row = await pool.fetchrow(BUSY_COLUMNS_SQL, user_id, connection_ids, calendar_ids,
                              to_epoch_datetime(start), to_epoch_datetime(end), tz_name)
    assert row is not None
    return row[0], row[1], row[2]


# The projection's version of each source (sync's triggers bump it with every change of its rows),
# as an array in the order of the sources passed in; 0 for a source never written.
_VERSIONS = """
    SELECT coalesce(array_agg(coalesce(v.version, 0) ORDER BY src.ord), '{}')
    FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS src(connection_id, calendar_id, ord)
    LEFT JOIN sync.projection_versions v ON v.connection_id = src.connection_id AND v.calendar_id = src.calendar_id"""
VERSIONS_SQL = _VERSIONS.replace("$2", "$1").replace("$3", "$2")
BUSY_COLUMNS_VERSIONED_SQL = f"""
    SELECT ({_VERSIONS}) AS versions, b.starts, b.ends, b.sources FROM ({BUSY_COLUMNS_SQL}) b"""


async def source_versions(pool: asyncpg.Pool, connection_ids: list[str], calendar_ids: list[str]) -> list[int]:
    """The projection's version of each source, in order (0: never written)."""
    return list(await pool.fetchval(VERSIONS_SQL, connection_ids, calendar_ids))


async def busy_columns_versioned(
    pool: asyncpg.Pool, user_id: str, connection_ids: list[str], calendar_ids: list[str],
    start: int, end: int, tz_name: str,
) -> tuple[list[int], list[int], list[int], list[int]]:
    """:func:`busy_columns` and the sources' versions (:func:`source_versions`), read in one
    statement, so the rows are exactly those of the versions."""
    row = await pool.fetchrow(BUSY_COLUMNS_VERSIONED_SQL, user_id, connection_ids, calendar_ids,
                              to_epoch_datetime(start), to_epoch_datetime(end), tz_name)
    assert row is not None
    return list(row[0]), row[1], row[2], row[3]


# Find a time reads several calendars at once: one statement over every (connection, calendar,
# zone) the calendars' sources name, each entry a LATERAL range scan like the others, the busy rows
# grouped per entry as two arrays sorted by start. An all-day row is placed in the zone of its
# entry (its calendar's), so a provider calendar in two unified calendars of different zones is two
# entries.
BUSY_BY_SOURCE_SQL = f"""
    SELECT src.ord::int4 AS o,
           coalesce(array_agg(x.s ORDER BY x.s, x.e) FILTER (WHERE x.s IS NOT NULL), '{{}}') AS starts,
           coalesce(array_agg(x.e ORDER BY x.s, x.e) FILTER (WHERE x.s IS NOT NULL), '{{}}') AS ends
    FROM unnest($2::text[], $3::text[], $6::text[]) WITH ORDINALITY AS src(connection_id, calendar_id, tz, ord)
    LEFT JOIN LATERAL (
        SELECT CASE WHEN {_ALL_DAY} THEN {_epoch(_LOCAL_START.format(tz="src.tz"))} ELSE {_epoch("ei.start_at")} END AS s,
               CASE WHEN {_ALL_DAY} THEN {_epoch(_LOCAL_END.format(tz="src.tz"))} ELSE {_epoch("ei.end_at")} END AS e
        FROM {PROJECTION} ei
        WHERE ei.connection_id = src.connection_id AND ei.calendar_id = src.calendar_id
          AND ei.user_id = $1 AND ei.start_at < $5 AND ei.end_at > $4 {_BUSY}
        OFFSET 0
    ) x ON true
    GROUP BY src.ord
    ORDER BY src.ord"""


async def busy_spans_by_source(
    pool: asyncpg.Pool, user_id: str, connection_ids: list[str], calendar_ids: list[str], zones: list[str],
    start: int, end: int,
) -> list[tuple[list[int], list[int]]]:
    """For each (connection, calendar, zone) entry, in order, its busy rows overlapping
    ``[start, end)`` as (starts, ends) sorted by start; all-day rows placed in the entry's zone.
    One statement, so one snapshot, for any number of calendars."""
    rows = await pool.fetch(BUSY_BY_SOURCE_SQL, user_id, connection_ids, calendar_ids,
                            to_epoch_datetime(start), to_epoch_datetime(end), zones)
    return [(r[1], r[2]) for r in rows]


async def event_rows(
    pool: asyncpg.Pool, user_id: str, connection_ids: list[str], calendar_ids: list[str],
    start: int, end: int, *, tz_name: str, include_cancelled: bool, after: tuple[int, str] | None, limit: int,
) -> list[asyncpg.Record]:
    """Rows overlapping ``[start, end)`` (all-day ones by their dates in zone `tz_name`) in the
    order of (local start, event_id), after the keyset `after` (``k``: that start in microseconds,
    and event_id), at most `limit`."""
    args: list[Any] = [user_id, connection_ids, calendar_ids, to_epoch_datetime(start), to_epoch_datetime(end),
                       tz_name]
    if after is not None:
        args += [_from_micros(after[0]), after[1]]
    args.append(limit)
    rows: list[Any] = await pool.fetch(EVENTS_SQL[(include_cancelled, after is not None)], *args)
    return rows


async def find_event(
    pool: asyncpg.Pool, user_id: str, connection_ids: list[str], calendar_ids: list[str], event_id: str,
) -> asyncpg.Record | None:
    """The source of event `event_id` if it belongs to one of the given sources."""
    return await pool.fetchrow(FIND_EVENT_SQL, user_id, connection_ids, calendar_ids, event_id)


def _from_micros(us: int) -> datetime:
    return to_epoch_datetime(0) + timedelta(microseconds=us)
