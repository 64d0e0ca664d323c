"""Find a time (docs/api-guide.md, "Find a time"), without I/O: the request, its rules, and the slot search.

``POST /api/v1/availability/find`` asks for slots of ``duration_minutes`` across several unified
calendars: every *required* calendar free in each slot, ranked by how many *optional* calendars are
free too, then by start. The service reads each calendar's busy time in one query for the whole set
(``store.busy_spans_by_source``), merges it per calendar, and hands it here as sorted disjoint spans
with whether the calendar is complete (every source's connection active and synced).

The search never walks the slots one calendar at a time:

1. the spans where a slot may lie are the working hours (wall-clock, day by day in ``tz``, so DST
   changes come out right) intersected with the free time of every required calendar — a required
   calendar that is not complete has no free time, so then there are no slots;
2. the candidates are the grid points ``start + k·interval`` whose slot fits wholly inside one of
   those spans;
3. each optional calendar's free gaps are turned into index ranges of candidates (two bisections
   per gap) and counted with a difference array: O(candidates + gaps·log) in all;
4. the best ``limit`` candidates by (free optional calendars desc, start asc) are picked, and only
   they are labelled free / busy / unknown per calendar.

A calendar is *busy* in a slot when known busy time overlaps it (whatever else is unknown), else
*unknown* when it is not complete, else *free*; each slug is in exactly one of the three lists.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from zoneinfo import ZoneInfo

import msgspec

from calmesh_common.hours import WEEKDAYS, Hours, HoursError, parse_weekly, working_spans
from calmesh_common.intervals import free_spans
from calmesh_common.problems import FieldError, Problem
from calmesh_common.timefmt import rfc3339_epoch

from . import domain

MAX_CALENDARS = 20
MAX_RANGE_DAYS = 62
MAX_LIMIT = 100
DEFAULT_LIMIT = 20
DEFAULT_INTERVAL_MINUTES = 15
MAX_INTERVAL_MINUTES = 24 * 60
#: A slot longer than the longest range could never fit.
MAX_DURATION_MINUTES = MAX_RANGE_DAYS * 24 * 60

Span = tuple[int, int]


# --- the request --------------------------------------------------------------------------------


class FindCalendar(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A calendar to consider: required (free in every slot) unless ``required`` is false."""

    slug: str
    required: bool = True


class FindHours(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Wall-clock hours per weekday in ``tz``, like a booking page's ``weekly_hours``; a day not
    given has no hours."""

    mon: list[list[str]] | None = None
    tue: list[list[str]] | None = None
    wed: list[list[str]] | None = None
    thu: list[list[str]] | None = None
    fri: list[list[str]] | None = None
    sat: list[list[str]] | None = None
    sun: list[list[str]] | None = None


class FindRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /availability/find``."""

    calendars: list[FindCalendar]
    duration_minutes: int
    start: str
    end: str
    tz: str | None = None
    hours: FindHours | None = None
    slot_interval_minutes: int = DEFAULT_INTERVAL_MINUTES
    limit: int = DEFAULT_LIMIT


@dataclass(frozen=True)
class FindQuery:
    """A validated request: instants as epoch seconds, durations in seconds."""

    calendars: tuple[tuple[str, bool], ...]  # (slug, required), in the request's order
    duration: int
    interval: int
    start: int
    end: int
    tz: ZoneInfo
    tz_name: str
    weekly: tuple[Hours, ...] | None
    limit: int


def _invalid(field: str, message: str, code: str = "validation_error") -> Problem:
    return Problem(422, code, f"{field}: {message}", errors=[FieldError(field, message)])


def resolve_zone(raw: str | None, user_timezone: str | None) -> tuple[ZoneInfo, str]:
    """``tz`` (400 when unknown), else the user's zone, else UTC."""
    if raw:
        return domain.zone(raw), raw
    if user_timezone:
        try:
            return domain.zone(user_timezone), user_timezone
        except Problem:
            pass  # a profile zone this machine lacks: answer in UTC rather than fail
    return ZoneInfo("UTC"), "UTC"


def validate(body: FindRequest, user_timezone: str | None) -> FindQuery:
    """The request's rules: 400 for malformed values (instants, zone), 422 for the rest."""
    tz, tz_name = resolve_zone(body.tz, user_timezone)
    if not body.calendars:
        raise _invalid("calendars", "name at least one calendar")
    if len(body.calendars) > MAX_CALENDARS:
        raise _invalid("calendars", f"at most {MAX_CALENDARS} calendars", code="too_many_calendars")
    seen: set[str] = set()
    for i, c in enumerate(body.calendars):
        if not c.slug:
            raise _invalid(f"calendars[{i}].slug", "must not be empty")
        if c.slug in seen:
            raise _invalid(f"calendars[{i}].slug", f"{c.slug!r} is named twice")
        seen.add(c.slug)
    if not any(c.required for c in body.calendars):
        raise _invalid("calendars", "at least one calendar must be required", code="no_required_calendar")
    if not 1 <= body.duration_minutes <= MAX_DURATION_MINUTES:
        raise _invalid("duration_minutes", f"between 1 and {MAX_DURATION_MINUTES}")
    if not 1 <= body.slot_interval_minutes <= MAX_INTERVAL_MINUTES:
        raise _invalid("slot_interval_minutes", f"between 1 and {MAX_INTERVAL_MINUTES}")
    if not 1 <= body.limit <= MAX_LIMIT:
        raise _invalid("limit", f"between 1 and {MAX_LIMIT}")
    start = domain.parse_instant(body.start, "start", tz)
    end = domain.parse_instant(body.end, "end", tz)
    if end <= start:
        raise _invalid("end", "must be after start", code="invalid_range")
    # 62 days of 24 hours, or 62 days on the wall clock of `tz` (an hour longer over an autumn
    # change): whichever is longer.
    wall = datetime.fromtimestamp(start, UTC).astimezone(tz) + timedelta(days=MAX_RANGE_DAYS)
    if end > max(start + MAX_RANGE_DAYS * 86400, int(wall.timestamp())):
        raise _invalid("end", f"at most {MAX_RANGE_DAYS} days after start", code="range_too_long")
    weekly = None
    if body.hours is not None:
        try:
            weekly = parse_weekly({d: getattr(body.hours, d) for d in WEEKDAYS})
        except HoursError as exc:
            raise _invalid(exc.field, exc.message) from None
    return FindQuery(
        calendars=tuple((c.slug, c.required) for c in body.calendars),
        duration=body.duration_minutes * 60,
        interval=body.slot_interval_minutes * 60,
        start=start,
        end=end,
        tz=tz,
        tz_name=tz_name,
        weekly=weekly,
        limit=body.limit,
    )


# --- the search ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalendarBusy:
    """One calendar's merged busy time (sorted, disjoint, not touching) and whether it is complete."""

    slug: str
    required: bool
    busy: Sequence[Span]
    complete: bool


@dataclass(frozen=True)
class Slot:
    start: int
    end: int
    free: list[str]
    busy: list[str]
    unknown: list[str]


def intersect(a: Sequence[Span], b: Sequence[Span]) -> list[Span]:
    """The intersection of two sorted lists of disjoint spans."""
    out: list[Span] = []
    i = j = 0
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if s < e:
            out.append((s, e))
        if a[i][1] <= b[j][1]:
            i += 1
        else:
            j += 1
    return out


def candidates(spans: Sequence[Span], origin: int, interval: int, duration: int) -> list[int]:
    """Grid points ``origin + k·interval`` (k ≥ 0) whose slot ``[t, t + duration)`` lies wholly
    inside one of `spans` (sorted, disjoint), ascending."""
    out: list[int] = []
    for a, b in spans:
        k = max(0, -((origin - a) // interval))  # ceil((a - origin) / interval)
        t = origin + k * interval
        last = b - duration
        if t <= last:
            out.extend(range(t, last + 1, interval))
    return out


def _is_busy(starts: Sequence[int], ends: Sequence[int], t: int, u: int) -> bool:
    i = bisect_right(ends, t)  # the first block ending after t
    return i < len(starts) and starts[i] < u


def search(
    calendars: Sequence[CalendarBusy], start: int, end: int, duration: int, interval: int,
    working: Sequence[Span] | None, limit: int,
) -> list[Slot]:
    """The best `limit` slots (see the module's docstring). `working` None: any time of day."""
    allowed: list[Span] = list(working) if working is not None else [(start, end)]
    allowed = intersect(allowed, [(start, end)])
    for cal in calendars:
        if not cal.required:
            continue
        if not cal.complete:
            return []  # an unknown required calendar is never free
        allowed = intersect(allowed, free_spans(cal.busy, start, end))
        if not allowed:
            return []
    cands = candidates(allowed, start, interval, duration)
    n = len(cands)
    if n == 0:
        return []
    diff = [0] * (n + 1)
    for cal in calendars:
        if cal.required or not cal.complete:
            continue
        for a, b in free_spans(cal.busy, start, end, duration):
            lo, hi = bisect_left(cands, a), bisect_right(cands, b - duration)
            if lo < hi:
                diff[lo] += 1
                diff[hi] -= 1
    counts = list(accumulate(diff[:n]))
    best = heapq.nsmallest(limit, range(n), key=lambda i: (-counts[i], cands[i]))
    columns = [([s for s, _ in c.busy], [e for _, e in c.busy]) for c in calendars]
    out: list[Slot] = []
    for i in best:
        t = cands[i]
        u = t + duration
        free, busy, unknown = [], [], []
        for cal, (starts, ends) in zip(calendars, columns, strict=True):
            if _is_busy(starts, ends, t, u):
                busy.append(cal.slug)
            elif not cal.complete:
                unknown.append(cal.slug)
            else:
                free.append(cal.slug)
        out.append(Slot(t, u, free, busy, unknown))
    return out


def find(query: FindQuery, calendars: Sequence[CalendarBusy]) -> list[Slot]:
    """The slots of a validated query over the calendars' busy time."""
    working = working_spans(query.weekly, query.start, query.end, query.tz) if query.weekly is not None else None
    return search(calendars, query.start, query.end, query.duration, query.interval, working, query.limit)


# --- the answer ---------------------------------------------------------------------------------


class SlotOut(msgspec.Struct, kw_only=True):
    start: str
    end: str
    #: Every calendar free in the slot (the required ones always), in the request's order.
    free: list[str]
    #: Calendars with known busy time in the slot.
    busy: list[str]
    #: Calendars not busy as far as is known, but whose sources are not all known.
    unknown: list[str]


class FindResult(msgspec.Struct, kw_only=True):
    timezone: str
    slots: list[SlotOut]
    #: False when a calendar's sources are not all known (docs/api-guide.md, Freshness): such a calendar never
    #: counts as free.
    complete: bool


def result(query: FindQuery, calendars: Sequence[CalendarBusy], slots: Sequence[Slot]) -> FindResult:
    return FindResult(
        timezone=query.tz_name,
        slots=[SlotOut(start=rfc3339_epoch(s.start), end=rfc3339_epoch(s.end), free=s.free, busy=s.busy, unknown=s.unknown)
               for s in slots],
        complete=all(c.complete for c in calendars),
    )
