"""What the availability service computes, without I/O: query windows read in time zones, events in
the API's shape, busy/free and conflicts (with the interval engine), and opaque cursors.

Projection rows arrive as mappings (asyncpg records in the service, dicts in tests) with the columns
`store.py` selects: instants as whole epoch seconds (``s``, ``e``, ``u``) next to the row's own
columns. All-day rows are placed on their dates in the calendar's time zone here, never by their
widest-span ``start_at``/``end_at``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from heapq import heappush, heapreplace
from itertools import repeat
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from calmesh_common import cursors, timefmt
from calmesh_common.intervals import (
    BusyBlock,
    BusyItem,
    Conflict,
    TooDenseError,
    block_items,
    clip_blocks,
    dedupe_mirrors,
    free_spans,
    iter_conflicts,
    local_date_span,
    local_day_window,
    merge_busy,
)
from calmesh_common.problems import FieldError, Problem

#: Longest window any query may span (docs/api-guide.md: 366 days, else 422 range_too_long).
MAX_RANGE_SECONDS = 366 * 86400
DEFAULT_LIMIT = 50
MAX_LIMIT = 200

Row = Mapping[str, Any]


# --- the calendar as the read path needs it -------------------------------------------------------


class Source(msgspec.Struct, frozen=True, kw_only=True):
    """A source of a unified calendar (connections' internal API shape)."""

    id: str
    connection_id: str
    calendar_id: str
    name: str = ""
    sort_order: int = 0
    read_only: bool = False


class ConnectionState(msgspec.Struct, frozen=True, kw_only=True):
    """A connection's status and its last successful sync (RFC 3339, None if it never synced)."""

    id: str
    status: str
    last_synced_at: str | None = None

    @property
    def known(self) -> bool:
        """What its sources hold can be trusted: the connection is active and has synced."""
        return self.status == "active" and self.last_synced_at is not None


#: What a source whose connection's state nobody told us about shows (it is never complete).
UNKNOWN_STATE_STATUS = "unknown"


class CalendarDoc(msgspec.Struct, frozen=True, kw_only=True):
    """connections ``GET /internal/calendars/{slug}?user_id=``."""

    slug: str
    user_id: str
    timezone: str = "UTC"
    name: str = ""
    sources: list[Source] = msgspec.field(default_factory=list)
    #: The state of each connection the sources read, as connections saw it when it answered.
    connections: list[ConnectionState] = msgspec.field(default_factory=list)


@dataclass(frozen=True)
class Calendar:
    """A unified calendar resolved for reading: its zone and its sources in order."""

    slug: str
    user_id: str
    name: str
    tz_name: str
    tz: ZoneInfo
    sources: tuple[Source, ...]
    by_key: dict[tuple[str, str], Source] = field(repr=False)
    by_id: dict[str, Source] = field(repr=False)
    rank: dict[str, int] = field(repr=False)
    #: Connection id -> its state when the calendar was fetched (the directory may know newer).
    connection_states: dict[str, ConnectionState] = field(default_factory=dict, repr=False)

    @classmethod
    def from_doc(cls, doc: CalendarDoc) -> Calendar:
        sources = tuple(sorted(doc.sources, key=lambda s: (s.sort_order, s.id)))
        by_key: dict[tuple[str, str], Source] = {}
        for s in sources:
            by_key.setdefault((s.connection_id, s.calendar_id), s)
        try:
            tz = zone(doc.timezone)
        except Problem:
            tz = ZoneInfo("UTC")  # a calendar stored with a zone this machine lacks still answers
        return cls(
            slug=doc.slug,
            user_id=doc.user_id,
            name=doc.name,
            tz_name=doc.timezone if tz.key == doc.timezone else "UTC",
            tz=tz,
            sources=sources,
            by_key=by_key,
            by_id={s.id: s for s in sources},
            rank={s.id: i for i, s in enumerate(sources)},
            connection_states={c.id: c for c in doc.connections},
        )

    def source_columns(self, only: Source | None = None) -> tuple[list[str], list[str]]:
        """(connection ids, calendar ids) of the sources to read, for the projection query."""
        chosen = (only,) if only is not None else tuple(self.by_key.values())
        return [s.connection_id for s in chosen], [s.calendar_id for s in chosen]

    def source_ids_for(self, connection_ids: Sequence[str], calendar_ids: Sequence[str]) -> list[str]:
        """The source ids of (connection, calendar) pairs, as :meth:`source_columns` gave them."""
        return [self.by_key[k].id for k in zip(connection_ids, calendar_ids, strict=True)]

    def default_write_target(self) -> Source | None:
        """The first writable source by sort order (docs/api-guide.md: the default write target)."""
        return next((s for s in self.sources if not s.read_only), None)


# --- freshness -------------------------------------------------------------------------------------


class SourceFreshness(msgspec.Struct, frozen=True, kw_only=True):
    """docs/api-guide.md, Freshness: one source of an answer, its connection's status and last successful sync."""

    id: str
    connection_id: str
    status: str
    last_synced_at: str | None


@dataclass(frozen=True, slots=True)
class Freshness:
    """Whether an answer is complete (every source's connection active and synced) and why."""

    complete: bool
    sources: list[SourceFreshness]


def freshness(sources: Iterable[Source], state_of: Callable[[str], ConnectionState | None]) -> Freshness:
    """The freshness of an answer over `sources`, with each connection's state from `state_of`
    (None: nobody said, which is never complete)."""
    out: list[SourceFreshness] = []
    complete = True
    for s in sources:
        state = state_of(s.connection_id)
        if state is None:
            out.append(SourceFreshness(id=s.id, connection_id=s.connection_id, status=UNKNOWN_STATE_STATUS,
                                       last_synced_at=None))
            complete = False
            continue
        out.append(SourceFreshness(id=s.id, connection_id=s.connection_id, status=state.status,
                                   last_synced_at=state.last_synced_at))
        if not state.known:
            complete = False
    return Freshness(complete, out)


# --- query parameters -----------------------------------------------------------------------------


def bad_param(name: str, message: str, status: int = 400, code: str = "validation_error") -> Problem:
    return Problem(status, code, f"{name}: {message}", errors=[FieldError(name, message)])


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def zone(name: str, param: str = "tz") -> ZoneInfo:
    """The IANA zone `name`, or a 400 that says what is wrong with it."""
    if not name or len(name) > 64 or ".." in name or name.startswith("/") or "\\" in name:
        raise bad_param(param, f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin",
                        code="invalid_timezone")
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise bad_param(param, f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin",
                        code="invalid_timezone") from None


#: Dates and instants outside these years are refused (400) rather than carried to overflows.
MIN_YEAR, MAX_YEAR = 1900, 2199
_MIN_TS = -2_208_988_800  # 1900-01-01T00:00:00Z
_MAX_TS = 7_258_118_400  # 2200-01-01T00:00:00Z


def parse_date(raw: str, param: str) -> date:
    try:
        return _in_years(timefmt.parse_date(raw), raw, param)
    except ValueError as exc:
        raise bad_param(param, str(exc)) from None


def _in_years(value: date, raw: str, param: str) -> date:
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise bad_param(param, f"{raw!r} is out of range (years {MIN_YEAR} to {MAX_YEAR})")
    return value


def parse_instant(raw: str, param: str, tz: ZoneInfo) -> int:
    """Epoch seconds of an RFC 3339 instant; a date or a time without offset is read in `tz`.

    Fractions of a second are dropped (responses are to the second anyway).
    """
    try:
        value = timefmt.parse_date_or_instant(raw, default_tz=tz)
    except ValueError as exc:
        raise bad_param(param, str(exc)) from None
    if not isinstance(value, datetime):
        d = _in_years(value, raw.strip(), param)
        return local_date_span(d, d, tz)[0]
    ts = math.floor(value.timestamp())
    if not _MIN_TS <= ts < _MAX_TS:
        raise bad_param(param, f"{raw.strip()!r} is out of range (years {MIN_YEAR} to {MAX_YEAR})")
    return ts


def in_supported_range(ts: object) -> bool:
    """Whether `ts` (from a cursor, say) is an epoch second this service can work with."""
    return isinstance(ts, int) and not isinstance(ts, bool) and _MIN_TS <= ts < _MAX_TS


def check_range(start: int, end: int) -> None:
    """422 when the window is empty or backwards, or longer than 366 days."""
    if end <= start:
        raise Problem(422, "invalid_range", "end must be after start.",
                      errors=[FieldError("end", "must be after start")])
    if end - start > MAX_RANGE_SECONDS:
        raise Problem(422, "range_too_long", "A time range may span at most 366 days.",
                      errors=[FieldError("end", "at most 366 days after start")])


def parse_window(start: str | None, end: str | None, tz: ZoneInfo) -> tuple[int, int]:
    """The ``start``/``end`` window of a query (both required)."""
    missing = [n for n, v in (("start", start), ("end", end)) if not v]
    if missing:
        raise Problem(400, "validation_error", f"{' and '.join(missing)} required (RFC 3339 date-times).",
                      errors=[FieldError(n, "required") for n in missing])
    assert start is not None and end is not None
    s, e = parse_instant(start, "start", tz), parse_instant(end, "end", tz)
    check_range(s, e)
    return s, e


def availability_window(
    date_raw: str | None, start: str | None, end: str | None, tz: ZoneInfo
) -> tuple[int, int]:
    """``date=YYYY-MM-DD`` (the local day in `tz`, 23 or 25 hours on DST days), or ``start&end``."""
    if date_raw:
        if start or end:
            raise Problem(400, "validation_error", "Give either date or start and end, not both.",
                          errors=[FieldError("date", "not with start/end")])
        return local_day_window(parse_date(date_raw, "date"), tz)
    if not start and not end:
        raise Problem(400, "validation_error", "date (YYYY-MM-DD) or start and end are required.",
                      errors=[FieldError("date", "required unless start and end are given")])
    return parse_window(start, end, tz)


def parse_bool(raw: str | None, param: str) -> bool:
    if raw is None or raw == "":
        return False
    low = raw.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise bad_param(param, f"{raw!r} is not true or false")


def parse_int(raw: str | None, param: str, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_param(param, f"{raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise bad_param(param, f"must be between {low} and {high}")
    return value


# --- cursors --------------------------------------------------------------------------------------


def query_fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def encode_cursor(kind: str, fingerprint: str, position: Sequence[Any]) -> str:
    """An opaque cursor: the position after which the next page starts, bound to its query."""
    return cursors.encode_cursor(kind, fingerprint, list(position))


def decode_cursor(cursor: str, kind: str, fingerprint: str) -> list[Any]:
    got_kind, got_fp, position = cursors.decode_cursor(cursor, tuple[str, str, list[Any]])
    if got_kind != kind:
        raise cursors.bad_cursor(detail="not a cursor this endpoint gave out")
    if got_fp != fingerprint:
        raise cursors.bad_cursor(detail="belongs to a query with other parameters; repeat them unchanged")
    return position


# --- events in the API's shape --------------------------------------------------------------------


class EventOut(msgspec.Struct, kw_only=True):
    """An event of a unified calendar (docs/api-guide.md)."""

    id: str
    source_id: str
    connection_id: str
    title: str
    description: str | None
    location: str | None
    start: str
    end: str
    all_day: bool
    status: str
    transparency: str
    recurring_event_id: str | None
    #: The booking the event was written for (a booking's time is listed from its 201 on), else None.
    booking_id: str | None = None
    updated_at: str


def event_out(row: Row, cal: Calendar) -> EventOut:
    source = cal.by_key.get((row["connection_id"], row["calendar_id"]))
    if row["all_day"]:
        start, end = row["start_date"].isoformat(), row["end_date"].isoformat()
    else:
        start, end = timefmt.rfc3339_epoch(row["s"]), timefmt.rfc3339_epoch(row["e"])
    return EventOut(
        id=row["event_id"],
        source_id=source.id if source is not None else "",
        connection_id=row["connection_id"],
        title=row["title"] or "",
        description=row["description"],
        location=row["location"],
        start=start,
        end=end,
        all_day=row["all_day"],
        status=row["status"],
        transparency=row["transparency"],
        recurring_event_id=row["recurring_event_id"],
        booking_id=row.get("booking_id"),
        updated_at=timefmt.rfc3339_epoch(row["u"]),
    )


def event_span(row: Row, tz: ZoneInfo) -> tuple[int, int]:
    """Where a row lies on the time line: all-day rows cover their dates in the calendar's zone."""
    if row["all_day"] and row["start_date"] is not None and row["end_date"] is not None:
        return local_date_span(row["start_date"], row["end_date"], tz)
    return row["s"], row["e"]


def overlaps(row: Row, cal: Calendar, start: int, end: int) -> bool:
    """The range rule of docs/api-guide.md (Conventions), with all-day rows placed in the calendar's zone."""
    s, e = event_span(row, cal.tz)
    return s < end and e > start


def mirror_keys(row: Row) -> list[tuple[str, str, str]]:
    """Identities that make two rows one meeting: the iCalendar UID (per instance), and the
    provider's event id where it is an id and not a CalDAV href (hrefs repeat across servers)."""
    rid = row["recurrence_id"] or ""
    keys = []
    if row["uid"]:
        keys.append(("uid", row["uid"], rid))
    pid = row["provider_event_id"]
    if pid and "/" not in pid and not pid.endswith(".ics"):
        keys.append(("provider", pid, rid))
    return keys


def busy_items(rows: Sequence[Row], cal: Calendar) -> list[BusyItem]:
    """Busy rows as engine items ``(start, end, source_id, row)`` sorted by start.

    Cancelled and transparent rows are not busy (the query leaves them out; this checks again so
    the function stands alone). Rows of no current source are dropped.
    """
    items: list[BusyItem] = []
    append = items.append
    by_key = cal.by_key
    tz = cal.tz
    resort = False
    for row in rows:
        if row["status"] == "cancelled" or row["transparency"] == "free":
            continue
        source = by_key.get((row["connection_id"], row["calendar_id"]))
        if source is None:
            continue
        if row["all_day"]:
            s, e = event_span(row, tz)
            resort = True
        else:
            s, e = row["s"], row["e"]
        if e > s:
            append((s, e, source.id, row))
    if resort:
        items.sort(key=itemgetter(0))
    return items


# --- availability ---------------------------------------------------------------------------------


class ExplainedEvent(msgspec.Struct, kw_only=True):
    id: str
    title: str
    start: str
    end: str
    source_id: str
    all_day: bool = False


class BusyInterval(msgspec.Struct, kw_only=True, omit_defaults=True):
    start: str
    end: str
    source_ids: list[str]
    events: list[ExplainedEvent] | None = None


class FreeInterval(msgspec.Struct, kw_only=True):
    start: str
    end: str


class Availability(msgspec.Struct, kw_only=True):
    slug: str
    timezone: str
    start: str
    end: str
    busy: list[BusyInterval]
    free: list[FreeInterval]
    complete: bool = True
    sources: list[SourceFreshness] = msgspec.field(default_factory=list)


def availability(
    items: Iterable[BusyItem], cal: Calendar, tz_name: str, start: int, end: int,
    *, min_duration: int = 0, explain: bool = False, source_ids: Sequence[str] | None = None,
    fresh: Freshness | None = None,
) -> Availability:
    """Busy time merged across sources (overlapping and touching intervals join) and the free time
    around it, both cut to ``[start, end)``; free gaps shorter than `min_duration` seconds dropped.

    `items` are engine items sorted by start: from :func:`busy_items` (source ids, rows as payloads,
    which `explain` needs), or :func:`items_from_columns` over what the projection query returns
    (sources as 1-based positions in `source_ids`).

    With `fresh` incomplete (a source's connection not active, or never synced), ``free`` is empty:
    time nobody could check is never reported free; ``busy`` is what is known."""
    if explain and not isinstance(items, Sequence):
        raise ValueError("explain needs the items as a sequence (their rows are looked up by position)")
    # Only what overlaps the window counts: an all-day row read by its widest UTC span may lie, once
    # placed on its dates in the calendar's zone, just outside (and would otherwise lend its source
    # to a block it only touches).
    items = [it for it in items if it[1] > start and it[0] < end]
    blocks = merge_busy(items)
    clipped = clip_blocks(blocks, start, end)
    return shape_availability(clipped, cal, tz_name, start, end, min_duration=min_duration,
                              source_ids=source_ids, fresh=fresh, explained=items if explain else None)


def shape_availability(
    clipped: Sequence[BusyBlock], cal: Calendar, tz_name: str, start: int, end: int, *, min_duration: int = 0,
    source_ids: Sequence[str] | None = None, fresh: Freshness | None = None,
    explained: Sequence[BusyItem] | None = None,
) -> Availability:
    """The answer from the merged busy blocks cut to ``[start, end)`` (sources as ids, or as
    1-based positions in `source_ids`); `explained`: the items the blocks index, to explain them."""
    rank = cal.rank
    busy: list[BusyInterval] = []
    for b in clipped:
        ids = [source_ids[o - 1] for o in b.sources] if source_ids is not None else list(b.sources)
        if len(ids) > 1:
            ids.sort(key=rank.__getitem__)
        interval = BusyInterval(start=timefmt.rfc3339_epoch(b.start), end=timefmt.rfc3339_epoch(b.end), source_ids=ids)
        if explained is not None:
            interval.events = _explain(block_items(explained, b))
        busy.append(interval)
    complete = fresh.complete if fresh is not None else True
    free = [FreeInterval(start=timefmt.rfc3339_epoch(s), end=timefmt.rfc3339_epoch(e)) for s, e in free_spans(clipped, start, end, min_duration)] \
        if complete else []
    return Availability(slug=cal.slug, timezone=tz_name, start=timefmt.rfc3339_epoch(start), end=timefmt.rfc3339_epoch(end),
                        busy=busy, free=free, complete=complete, sources=fresh.sources if fresh is not None else [])


def items_from_columns(starts: Sequence[int], ends: Sequence[int], sources: Sequence[int]) -> Iterator[BusyItem]:
    """Engine items over parallel columns (no list of tuples is built)."""
    return zip(starts, ends, sources, repeat(None), strict=False)


def _explain(items: Sequence[BusyItem]) -> list[ExplainedEvent]:
    """The meetings behind one busy interval, each once (a mirrored meeting by its first copy)."""
    out: list[ExplainedEvent] = []
    seen: set[tuple[str, str, str]] = set()
    for s, e, source_id, row in items:
        keys = mirror_keys(row)
        if any(k in seen for k in keys):
            continue
        seen.update(keys)
        if row["all_day"]:
            ev_start, ev_end = row["start_date"].isoformat(), row["end_date"].isoformat()
        else:
            ev_start, ev_end = timefmt.rfc3339_epoch(s), timefmt.rfc3339_epoch(e)
        out.append(ExplainedEvent(id=row["event_id"], title=row["title"] or "", start=ev_start, end=ev_end,
                                  source_id=source_id, all_day=row["all_day"]))
    return out


# --- conflicts ------------------------------------------------------------------------------------


class ConflictOut(msgspec.Struct, kw_only=True):
    events: list[EventOut]
    overlap_start: str
    overlap_end: str


ConflictKey = tuple[int, str, str]

#: The most busy rows one conflicts query reads, and the most pairs of meetings it compares: past
#: either, 422 `range_too_dense` (settings `conflicts_max_rows`, `conflicts_max_checks`).
CONFLICTS_MAX_ROWS = 20_000
CONFLICTS_MAX_CHECKS = 2_000_000


def too_dense(detail: str) -> Problem:
    return Problem(422, "range_too_dense",
                   f"{detail} Ask for a shorter range (start/end) and page through it.")


def conflicts(
    rows: Sequence[Row], cal: Calendar, start: int, end: int, *, after: ConflictKey | None = None, limit: int = 50,
    max_checks: int | None = CONFLICTS_MAX_CHECKS,
) -> tuple[list[ConflictOut], ConflictKey | None]:
    """One page of the pairs of busy events from different sources that overlap inside
    ``[start, end)``, ordered by ``(overlap_start, first id, second id)``, after `after`; and the
    position of the page's last pair when more follow. A meeting seen through two sources (mirrors)
    is one meeting, not a conflict with itself. Only the page's pairs are shaped for the API.

    Bounded: the sweep yields pairs by overlap start, so only the `limit` + 1 smallest keys are
    kept (a max-heap), and the sweep stops once the next overlap start is past the largest key kept;
    pairs before `after` are never compared. More than `max_checks` comparisons: 422
    `range_too_dense`."""
    items = busy_items(rows, cal)
    meetings = dedupe_mirrors(items, [mirror_keys(it[3]) for it in items])
    keep = limit + 1
    # Max-heap by key of the best `keep` pairs so far, as (negated key, tiebreak, conflict): the
    # ids are strings, so the key is negated by sorting on a wrapper.
    heap: list[tuple[_Desc, int, Conflict]] = []
    n = 0
    try:
        for c in iter_conflicts(meetings, since=after[0] if after is not None else None, until=end,
                                max_checks=max_checks):
            if c.overlap_end <= start:
                continue
            if len(heap) == keep and c.overlap_start > heap[0][0].key[0]:
                break  # every later pair starts its overlap later still: none can enter the page
            key = (c.overlap_start, c.first["event_id"], c.second["event_id"])
            if after is not None and key <= after:
                continue
            n += 1
            entry = (_Desc(key), n, c)
            if len(heap) < keep:
                heappush(heap, entry)
            elif key < heap[0][0].key:
                heapreplace(heap, entry)
    except TooDenseError:
        raise too_dense("This range holds too many overlapping events to compare.") from None
    ordered = sorted(((d.key, c) for d, _, c in heap), key=itemgetter(0))
    page = ordered[:limit]
    out = [
        ConflictOut(events=[event_out(c.first, cal), event_out(c.second, cal)],
                    overlap_start=timefmt.rfc3339_epoch(c.overlap_start), overlap_end=timefmt.rfc3339_epoch(c.overlap_end))
        for _, c in page
    ]
    return out, (page[-1][0] if len(ordered) > limit and page else None)


class _Desc:
    """A key that sorts in reverse, so that `heapq` (a min-heap) keeps the largest on top."""

    __slots__ = ("key",)

    def __init__(self, key: ConflictKey) -> None:
        self.key = key

    def __lt__(self, other: _Desc) -> bool:
        return self.key > other.key


# --- event writes ---------------------------------------------------------------------------------


class Attendee(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    email: str
    name: str | None = None


class EventCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /calendars/{slug}/events``: RFC 3339 instants, or two dates for an all-day event."""

    title: str
    start: str
    end: str
    description: str | None = None
    location: str | None = None
    attendees: list[str | Attendee] | None = None
    source_id: str | None = None


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class NewEvent:
    """A validated event to write: instants as UTC text, or dates for an all-day event."""

    title: str
    start: str
    end: str
    all_day: bool
    description: str | None
    location: str | None
    attendees: list[dict[str, str]]


def validate_new_event(body: EventCreate, tz: ZoneInfo) -> NewEvent:
    """Check a create request (400 for malformed values, 422 for a backwards or over-long range)."""
    if not body.title.strip():
        raise bad_param("title", "must not be empty")
    if len(body.title) > 1024:
        raise bad_param("title", "at most 1024 characters")
    all_day = timefmt.is_date(body.start.strip()) and timefmt.is_date(body.end.strip())
    if all_day:
        ds, de = parse_date(body.start.strip(), "start"), parse_date(body.end.strip(), "end")
        if de <= ds:
            raise Problem(422, "invalid_range", "end must be after start (all-day end is exclusive).",
                          errors=[FieldError("end", "must be after start")])
        if (de - ds).days > 366:
            raise Problem(422, "range_too_long", "An event may span at most 366 days.",
                          errors=[FieldError("end", "at most 366 days after start")])
        start, end = ds.isoformat(), de.isoformat()
    else:
        s, e = parse_instant(body.start, "start", tz), parse_instant(body.end, "end", tz)
        check_range(s, e)
        start, end = timefmt.rfc3339_epoch(s), timefmt.rfc3339_epoch(e)
    attendees = []
    for i, a in enumerate(body.attendees or []):
        entry = {"email": a} if isinstance(a, str) else {"email": a.email, **({"name": a.name} if a.name else {})}
        if not _EMAIL.match(entry["email"]):
            raise bad_param(f"attendees[{i}]", f"{entry['email']!r} is not an email address")
        attendees.append(entry)
    return NewEvent(title=body.title, start=start, end=end, all_day=all_day, description=body.description,
                    location=body.location, attendees=attendees)


def to_epoch_datetime(ts: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=ts)
