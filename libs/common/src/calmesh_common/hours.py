"""Weekly hours read as wall-clock time in an IANA zone: ``{mon: [["09:00","17:00"]], …}``.

The shape booking pages use (``weekly_hours``) and find-a-time takes (``hours``). Days are read one
by one in the zone, so the hours stay on the wall clock across DST changes: 09:00–17:00 is 07:00Z to
15:00Z on a summer day in Amsterdam and 08:00Z to 16:00Z on a winter one, and a day that loses an
hour at 02:00 has a 01:00–04:00 window of two real hours.

A wall time that does not exist (the hour skipped in spring) is read with the offset before the
change (PEP 495 ``fold=0``), so 02:30 on a skipped 02:00–03:00 is 03:30 of the new offset; an
ambiguous one (autumn) is its first occurrence.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from .intervals import merge_spans

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_MINUTES = 24 * 60

#: Minutes after local midnight, ``(from, to)`` pairs, sorted and merged.
Hours = tuple[tuple[int, int], ...]

_HHMM = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


class HoursError(ValueError):
    """A malformed hours value, naming the field it is in."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_hhmm(value: object, field: str) -> int:
    """``"HH:MM"`` (00:00..24:00) to minutes after midnight."""
    m = _HHMM.match(value) if isinstance(value, str) else None
    if not m or (m.group(1) == "24" and m.group(2) != "00"):
        raise HoursError(field, f"{value!r} is not a time of day HH:MM between 00:00 and 24:00")
    return int(m.group(1)) * 60 + int(m.group(2))


def parse_hours(raw: Sequence[Sequence[str]], field: str) -> Hours:
    """``[["09:00","12:00"], …]`` to sorted, merged minute pairs; each pair must run forwards."""
    pairs: list[tuple[int, int]] = []
    for i, pair in enumerate(raw):
        where = f"{field}[{i}]"
        if len(pair) != 2:
            raise HoursError(where, "each range is a pair [from, to]")
        start, end = parse_hhmm(pair[0], where), parse_hhmm(pair[1], where)
        if end <= start:
            raise HoursError(where, f"{pair[1]} is not after {pair[0]}")
        pairs.append((start, end))
    return tuple(merge_spans(sorted(pairs)))


def parse_weekly(raw: Mapping[str, Sequence[Sequence[str]] | None], field: str = "hours") -> tuple[Hours, ...]:
    """A week of hours (Monday first); a day not named has no hours."""
    unknown = sorted(set(raw) - set(WEEKDAYS))
    if unknown:
        raise HoursError(f"{field}.{unknown[0]}", f"not a day; use {', '.join(WEEKDAYS)}")
    return tuple(parse_hours(raw.get(day) or (), f"{field}.{day}") for day in WEEKDAYS)


def local_instant(day: date, minutes: int, tz: ZoneInfo) -> int:
    """Epoch second of wall-clock `minutes` after midnight of `day` in `tz` (24:00 is the next
    day's midnight)."""
    if minutes >= DAY_MINUTES:
        day, minutes = day + timedelta(days=minutes // DAY_MINUTES), minutes % DAY_MINUTES
    return int(datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=tz).timestamp())


def working_spans(weekly: Sequence[Hours], start: int, end: int, tz: ZoneInfo) -> list[tuple[int, int]]:
    """The hours of every local day that meets ``[start, end)``, as epoch spans cut to it, sorted,
    with overlapping and touching ones (a day's 24:00 and the next day's 00:00) joined."""
    if end <= start:
        return []
    first = datetime.fromtimestamp(start, UTC).astimezone(tz).date() - timedelta(days=1)
    last = datetime.fromtimestamp(end, UTC).astimezone(tz).date()
    spans: list[tuple[int, int]] = []
    day = first
    while day <= last:
        for a, b in weekly[day.weekday()]:
            s, e = max(local_instant(day, a, tz), start), min(local_instant(day, b, tz), end)
            if e > s:
                spans.append((s, e))
        day += timedelta(days=1)
    spans.sort()
    return merge_spans(spans)
