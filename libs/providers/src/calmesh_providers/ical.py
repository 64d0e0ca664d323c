"""iCalendar parsing and recurrence expansion: pure functions without I/O.

They are CPU-bound (icalendar and recurring-ical-events are pure Python), so the sync runs them off
the event loop with ``asyncio.to_thread``. Every bound that keeps a hostile or broken feed from
hurting a worker lives here: an instance cap, a cap on the steps an RRULE may take to reach the
window, and a wall-clock deadline.

What a feed says is read as follows:
- recurring series are expanded by recurring-ical-events (RRULE, RDATE, EXDATE, RECURRENCE-ID
  overrides, RANGE=THISANDFUTURE, VTIMEZONE) across the window;
- a feed with ``X-WR-TIMEZONE`` (Google's exports) is read the way Google means it, through
  x-wr-timezone; the remaining floating times are read in the feed's X-WR-TIMEZONE, else in the
  user's timezone;
- a VEVENT without UID gets a stable one derived from its content; one without DTSTART cannot be
  placed in time and is skipped (and counted);
- a file with several VCALENDARs is read as one; a bare VEVENT (no VCALENDAR) is read leniently.
"""

from __future__ import annotations

import hashlib
import time
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

import icalendar
import recurring_ical_events
import x_wr_timezone

from calmesh_common.timefmt import rfc3339

ALL_DAY_LEAD = timedelta(hours=14)  # the earliest timezone is UTC+14
ALL_DAY_LAG = timedelta(hours=12)  # the latest is UTC-12

#: An RRULE that needs more iteration steps than this to cross the window is refused: dateutil
#: walks from DTSTART, so FREQ=SECONDLY since 1970 would never finish.
MAX_RRULE_STEPS = 2_000_000

#: Longest description kept for one instance (the rest is cut, with an ellipsis).
MAX_DESCRIPTION_CHARS = 32_768

_FREQ_SECONDS = {
    "SECONDLY": 1,
    "MINUTELY": 60,
    "HOURLY": 3600,
    "DAILY": 86400,
    "WEEKLY": 7 * 86400,
    "MONTHLY": 28 * 86400,
    "YEARLY": 365 * 86400,
}


class SourceError(Exception):
    """The source cannot be used as it is; the message is fit for a connection's ``last_error``."""


class ExpansionLimitError(SourceError):
    """The source expands to more than the limits allow."""


@dataclass(frozen=True, slots=True)
class Window:
    """The synced time window (UTC, half-open)."""

    start: datetime
    end: datetime

    @classmethod
    def around(cls, anchor: date, back_days: int, ahead_days: int) -> Window:
        start = datetime.combine(anchor - timedelta(days=back_days), datetime.min.time(), UTC)
        end = datetime.combine(anchor + timedelta(days=ahead_days), datetime.min.time(), UTC)
        return cls(start, end)


@dataclass(slots=True)
class Instance:
    """One occurrence of an event, ready to become a projection row."""

    uid: str
    recurrence_id: str
    recurring: bool
    title: str
    description: str | None
    location: str | None
    start_at: datetime
    end_at: datetime
    all_day: bool
    start_date: date | None
    end_date: date | None
    status: str
    transparency: str


@dataclass(slots=True)
class Expansion:
    """What a calendar expands to in a window."""

    instances: list[Instance] = field(default_factory=list)
    #: Components left out because they cannot be placed in time (no DTSTART).
    skipped: int = 0
    #: UIDs seen in the source (also those with no instance in the window).
    uids: set[str] = field(default_factory=set)
    #: Why series were left out, one line each ("uid: reason").
    problems: list[str] = field(default_factory=list)

    def warning(self) -> str | None:
        """A short note for the user when something was left out, else None."""
        if not self.skipped:
            return None
        text = f"{self.skipped} event(s) could not be read and were left out"
        if self.problems:
            text += f" (first: {self.problems[0]})"
        return text


# --- parsing -----------------------------------------------------------------------------------


def _snippet(data: bytes) -> str:
    head = data[:40].decode("utf-8", "replace").strip().replace("\n", " ").replace("\r", "")
    return head[:30]


def parse_ical(data: bytes) -> icalendar.Calendar:
    """Parse an iCalendar body into one VCALENDAR; raises SourceError with a readable reason."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.strip():
        raise SourceError("the feed is empty")
    # icalendar warns about odd TZIDs it guesses; the service silences those once at start-up
    # (warnings.catch_warnings is not thread-safe, and this runs in worker threads).
    try:
        components = icalendar.Calendar.from_ical(data, multiple=True)
    except Exception as exc:  # noqa: BLE001 - icalendar raises many types on bad input
        raise SourceError(f"the feed is not valid iCalendar: {_short(exc)} (it starts with {_snippet(data)!r})") from None
    if not components:
        raise SourceError(f"the feed holds no iCalendar data (it starts with {_snippet(data)!r})")
    calendars = [c for c in components if c.name == "VCALENDAR"]
    if len(calendars) == 1 and len(components) == 1:
        return calendars[0]
    # Several VCALENDARs, or bare components: read them as one calendar, in file order.
    merged = icalendar.Calendar()
    merged.add("PRODID", "-//CalMesh//merged//EN")
    merged.add("VERSION", "2.0")
    for component in components:
        if component.name == "VCALENDAR":
            for key, value in component.items():
                if key.startswith("X-WR-") and key not in merged:
                    merged[key] = value
            for sub in component.subcomponents:
                merged.add_component(sub)
        else:
            merged.add_component(component)
    return merged


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def calendar_name(cal: icalendar.Calendar) -> str | None:
    name = cal.get("X-WR-CALNAME")
    return str(name).strip() or None if name is not None else None


def feed_timezone(cal: icalendar.Calendar) -> str | None:
    """The feed's X-WR-TIMEZONE when it names a timezone this machine knows."""
    value = cal.get("X-WR-TIMEZONE")
    if value is None:
        return None
    name = str(value).strip()
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None
    return name


# --- expansion ---------------------------------------------------------------------------------


def _text(component: icalendar.cal.Component, name: str) -> str | None:
    value = component.get(name)
    if value is None:
        return None
    if isinstance(value, list):  # a property given twice: take the first
        value = value[0] if value else ""
    text = str(value)
    return text


def _status(component: icalendar.cal.Component) -> str:
    value = (_text(component, "STATUS") or "").strip().upper()
    return {"TENTATIVE": "tentative", "CANCELLED": "cancelled"}.get(value, "confirmed")


def _transparency(component: icalendar.cal.Component) -> str:
    return "free" if (_text(component, "TRANSP") or "").strip().upper() == "TRANSPARENT" else "busy"


def to_utc(value: datetime, floating: tzinfo) -> datetime:
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        return value.replace(tzinfo=floating).astimezone(UTC)
    return value.astimezone(UTC)


def format_recurrence_id(value: date | datetime, floating: tzinfo) -> str:
    """A recurrence id as the projection keeps it: RFC 3339 UTC, or a date."""
    if isinstance(value, datetime):
        return rfc3339(to_utc(value, floating))
    return value.isoformat()


def all_day_span(start: date, end: date) -> tuple[datetime, datetime]:
    """The widest UTC span of the dates [start, end): start 00:00 at UTC+14 to end 00:00 at UTC-12."""
    return (
        datetime.combine(start, datetime.min.time(), UTC) - ALL_DAY_LEAD,
        datetime.combine(end, datetime.min.time(), UTC) + ALL_DAY_LAG,
    )


def _stable_uid(component: icalendar.cal.Component, seen: dict[str, int]) -> str:
    digest = hashlib.sha256(component.to_ical()).hexdigest()[:24]
    count = seen.get(digest, 0)
    seen[digest] = count + 1
    return f"calmesh-nouid-{digest}" + (f"-{count}" if count else "")


def _has_usable_start(component: icalendar.cal.Component) -> bool:
    start = component.get("DTSTART")
    if start is None:
        return False
    try:
        return isinstance(start.dt, date)
    except Exception:  # noqa: BLE001 - icalendar keeps unparsable values as broken properties
        return False


def prepare(cal: icalendar.Calendar) -> tuple[icalendar.Calendar, int]:
    """Give UID-less VEVENTs a stable UID and drop the ones without DTSTART; returns the calendar
    and how many were dropped. Mutates `cal`."""
    skipped = 0
    seen: dict[str, int] = {}

    def clean(component: icalendar.cal.Component) -> None:
        nonlocal skipped
        kept = []
        for sub in component.subcomponents:
            if sub.name == "VEVENT":
                if not _has_usable_start(sub):
                    skipped += 1
                    continue
                if not str(sub.get("UID", "")).strip():
                    sub["UID"] = _stable_uid(sub, seen)
            else:
                clean(sub)
            kept.append(sub)
        component.subcomponents[:] = kept

    clean(cal)
    return cal, skipped


_FILTERS = ("BYSECOND", "BYMINUTE", "BYHOUR", "BYDAY", "BYMONTHDAY", "BYYEARDAY", "BYWEEKNO", "BYMONTH", "BYSETPOS")


def _check_rrule_steps(
    core: icalendar.cal.Component, uid: str, window: Window, floating: tzinfo, max_instances: int | None = None
) -> None:
    """Refuse an RRULE whose iteration from DTSTART to the window would not end in time, or that
    is sure to give more than `max_instances` occurrences inside the window (no BY* part to thin
    it out): dateutil would list them all before the cap could stop it."""
    window_end = window.end
    rules = core.get("RRULE")
    if rules is None:
        return
    start: date = core.decoded("DTSTART")  # the same object as the property's .dt
    start_utc = (
        to_utc(start, floating) if isinstance(start, datetime) else datetime.combine(start, datetime.min.time(), UTC)
    )
    for rule in rules if isinstance(rules, list) else [rules]:
        freq = (rule.get("FREQ") or [""])[0]
        seconds = _FREQ_SECONDS.get(str(freq).upper())
        if seconds is None:
            continue
        interval = max(1, int((rule.get("INTERVAL") or [1])[0] or 1))
        horizon = window_end
        until = (rule.get("UNTIL") or [None])[0]
        if isinstance(until, datetime):
            horizon = min(horizon, to_utc(until, floating))
        elif isinstance(until, date):
            horizon = min(horizon, datetime.combine(until, datetime.min.time(), UTC))
        steps = max(0.0, (horizon - start_utc).total_seconds()) / (seconds * interval)
        count = (rule.get("COUNT") or [None])[0]
        if count is not None:
            steps = min(steps, abs(int(count)))
        if steps > MAX_RRULE_STEPS:
            raise ExpansionLimitError(
                f"the recurring event {uid!r} (FREQ={freq}, since {start_utc:%Y-%m-%d}) would take more than "
                f"{MAX_RRULE_STEPS:,} steps to expand into the sync window; it was not synced"
            )
        if max_instances is not None and not any(rule.get(f) for f in _FILTERS):
            inside = max(0.0, (horizon - max(start_utc, window.start)).total_seconds()) / (seconds * interval)
            if count is not None:
                inside = min(inside, abs(int(count)))
            if inside > max_instances:
                raise ExpansionLimitError(
                    f"the calendar expands to more than {max_instances:,} event instances in the sync window (the "
                    f"recurring event {uid!r}, FREQ={freq}, alone gives about {int(inside):,}); nothing was synced. "
                    f"Shorten the recurrence or raise CALMESH_SYNC_MAX_INSTANCES"
                )


def _series_is_recurring(series: object) -> bool:
    recurrence: Any = getattr(series, "recurrence", None)  # recurring-ical-events is untyped
    if getattr(recurrence, "has_core", False) and (recurrence.core.rrules or recurrence.core.rdates):
        return True
    return bool(getattr(series, "modifications", None))


def expand(
    cal: icalendar.Calendar,
    window: Window,
    *,
    default_timezone: str,
    max_instances: int,
    timeout: float | None = None,
) -> Expansion:
    """Expand the VEVENTs of `cal` into the instances that overlap `window`.

    Floating times are read in the feed's X-WR-TIMEZONE, else in `default_timezone`. Raises
    ExpansionLimitError past `max_instances` instances, a runaway RRULE, or `timeout` seconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    cal, skipped = prepare(cal)
    result = Expansion(skipped=skipped)
    feed_tz = feed_timezone(cal)
    if feed_tz is not None:
        cal = x_wr_timezone.to_standard(cal)
    floating: tzinfo = zoneinfo.ZoneInfo(feed_tz or default_timezone or "UTC")
    # Ask for a day more on either side: floating times may sit up to 14 hours off UTC. The exact
    # overlap test is made below, in UTC.
    query_start = window.start - timedelta(days=1)
    query_end = window.end + timedelta(days=1)
    try:
        query = recurring_ical_events.of(cal, skip_bad_series=True)
    except Exception as exc:  # noqa: BLE001 - a broken calendar is the source's problem
        raise SourceError(f"the calendar cannot be expanded: {_short(exc)}") from None
    count = 0
    cache: dict[int, _Static] = {}
    for series in query.series:
        uid = str(getattr(series, "_uid", None) or series.components[0].uid)
        result.uids.add(uid)
        recurrence: Any = getattr(series, "recurrence", None)  # recurring-ical-events is untyped
        if getattr(recurrence, "has_core", False):
            _check_rrule_steps(  # noqa: SLF001
                recurrence.core._component, uid, Window(query_start, query_end), floating, max_instances - count
            )
        recurring = _series_is_recurring(series)
        try:
            occurrences = series.between(query_start, query_end)
            for occurrence in occurrences:
                instance = _instance(occurrence, uid, recurring, floating, window, cache)
                if instance is None:
                    continue
                result.instances.append(instance)
                count += 1
                if count > max_instances:
                    raise ExpansionLimitError(
                        f"the calendar expands to more than {max_instances:,} event instances in the sync "
                        f"window (the recurring event {uid!r} among them); nothing was synced. Shorten the "
                        f"recurrence or raise CALMESH_SYNC_MAX_INSTANCES"
                    )
                if deadline is not None and count % 512 == 0 and time.monotonic() > deadline:
                    raise ExpansionLimitError(f"expanding the calendar took longer than {timeout:g} s")
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken series must not sink the feed
            # recurring-ical-events could not expand this series (mixed floating and zoned
            # times, a broken RRULE...): it is left out and reported, the rest is synced.
            result.skipped += 1
            result.problems.append(f"{uid}: {_short(exc)}")
        if deadline is not None and time.monotonic() > deadline:
            raise ExpansionLimitError(f"expanding the calendar took longer than {timeout:g} s")
    return result


_Static = tuple[str, "str | None", "str | None", str, str]


def _static_fields(component: icalendar.cal.Component) -> _Static:
    """What every occurrence of one component shares: title, description, location, status,
    transparency."""
    description = _text(component, "DESCRIPTION")
    if description is not None and len(description) > MAX_DESCRIPTION_CHARS:
        description = description[: MAX_DESCRIPTION_CHARS - 1] + "…"
    return (_text(component, "SUMMARY") or "", description, _text(component, "LOCATION"), _status(component), _transparency(component))


def _source_component(occurrence: object) -> icalendar.cal.Component:
    """The VEVENT an occurrence comes from (the series' master or an override). Read from
    recurring-ical-events' adapter, which spares a copy of the component per occurrence (the copy
    is most of the expansion's time); its public copy is the fallback."""
    component: icalendar.cal.Component | None = getattr(getattr(occurrence, "_adapter", None), "_component", None)
    if component is None:
        component = occurrence.as_component(False)  # type: ignore[attr-defined]
    return component


def _instance(
    occurrence: object,
    uid: str,
    recurring: bool,
    floating: tzinfo,
    window: Window,
    cache: dict[int, _Static] | None = None,
) -> Instance | None:
    start = occurrence.start  # type: ignore[attr-defined]
    end = occurrence.end  # type: ignore[attr-defined]
    if isinstance(start, datetime):
        all_day = False
        start_at = to_utc(start, floating)
        end_at = to_utc(end, floating) if isinstance(end, datetime) else start_at
        if end_at < start_at:
            end_at = start_at
        start_date = end_date = None
    else:
        all_day = True
        start_date = start
        end_date = end.date() if isinstance(end, datetime) else end
        if end_date < start_date:
            end_date = start_date
        start_at, end_at = all_day_span(start_date, end_date)
    if not (start_at < window.end and end_at > window.start) and not (start_at == end_at and window.start <= start_at < window.end):
        return None
    component = _source_component(occurrence)
    key = id(component)
    static = cache.get(key) if cache is not None else None
    if static is None:
        static = _static_fields(component)
        if cache is not None:
            cache[key] = static
    title, description, location, status, transparency = static
    recurrence_id = _recurrence_id(occurrence, component, floating) if recurring else ""
    return Instance(
        uid=uid,
        recurrence_id=recurrence_id,
        recurring=recurring,
        title=title,
        description=description,
        location=location,
        start_at=start_at,
        end_at=end_at,
        all_day=all_day,
        start_date=start_date,
        end_date=end_date,
        status=status,
        transparency=transparency,
    )


def _recurrence_id(occurrence: object, component: icalendar.cal.Component, floating: tzinfo) -> str:
    """The original start of the instance: the override's RECURRENCE-ID, else the occurrence's
    start. An occurrence generated from a RANGE=THISANDFUTURE override is computed back from its
    start and the override's shift (recurring-ical-events would give it the override's own
    RECURRENCE-ID)."""
    adapter = getattr(occurrence, "_adapter", None)
    start = occurrence.start  # type: ignore[attr-defined]
    if adapter is not None and getattr(adapter, "this_and_future", False) and start != adapter.start:
        return format_recurrence_id(start - adapter.move_recurrences_by, floating)
    rid = component.get("RECURRENCE-ID")
    if isinstance(rid, list):
        rid = rid[0] if rid else None
    value = rid.dt if rid is not None else start
    return format_recurrence_id(value, floating)


def dedupe(instances: Iterable[Instance]) -> dict[tuple[str, str], Instance]:
    """Instances by (uid, recurrence_id); a later duplicate replaces an earlier one."""
    return {(i.uid, i.recurrence_id): i for i in instances}
