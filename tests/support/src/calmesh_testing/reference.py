"""What recurring-ical-events itself expands from a calendar: the yardstick the sync tests compare
the projection with. Written apart from the sync code on purpose (whole-calendar ``between()``,
its own time conversion), so a bug there does not hide behind the same bug here."""

from __future__ import annotations

import warnings
import zoneinfo
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import icalendar
import recurring_ical_events
import x_wr_timezone

Key = tuple[datetime, datetime, bool, str, str]  # start, end (UTC; all-day: widened), all_day, status, recurrence id


def _utc(value: datetime, tz: zoneinfo.ZoneInfo) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def _span(start: Any, end: Any, tz: zoneinfo.ZoneInfo) -> tuple[datetime, datetime, bool]:
    if isinstance(start, datetime):
        s = _utc(start, tz)
        e = _utc(end, tz) if isinstance(end, datetime) else s
        return s, max(s, e), False
    end_date = end.date() if isinstance(end, datetime) else end
    s = datetime(start.year, start.month, start.day, tzinfo=UTC) - timedelta(hours=14)
    e = datetime(end_date.year, end_date.month, end_date.day, tzinfo=UTC) + timedelta(hours=12)
    return s, max(s, e), True


def _rid(value: Any, tz: zoneinfo.ZoneInfo) -> str:
    if isinstance(value, datetime):
        return _utc(value, tz).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    return ""


def reference(
    calendars: list[icalendar.Calendar], start: datetime, end: datetime, default_tz: str, *, with_rid: bool = True
) -> Counter[Key]:
    """Instances overlapping [start, end) as recurring-ical-events gives them, keyed for comparing."""
    out: Counter[Key] = Counter()
    for cal in calendars:
        feed_tz = cal.get("X-WR-TIMEZONE")
        if feed_tz is not None:
            cal = x_wr_timezone.to_standard(cal)
        tz = zoneinfo.ZoneInfo(str(feed_tz) if feed_tz is not None else default_tz)
        recurring = {
            str(c.get("UID")) for c in cal.walk("VEVENT") if c.get("RRULE") or c.get("RDATE") or c.get("RECURRENCE-ID")
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            occurrences = recurring_ical_events.of(cal, skip_bad_series=True).between(start - timedelta(days=1), end + timedelta(days=1))
        for c in occurrences:
            s, e, all_day = _span(c["DTSTART"].dt, c["DTEND"].dt if "DTEND" in c else c["DTSTART"].dt, tz)
            if not (s < end and e > start) and not (s == e and start <= s < end):
                continue
            status = str(c.get("STATUS", "")).upper()
            status = {"TENTATIVE": "tentative", "CANCELLED": "cancelled"}.get(status, "confirmed")
            rid = ""
            if with_rid and str(c.get("UID")) in recurring and "RECURRENCE-ID" in c:
                rid = _rid(c["RECURRENCE-ID"].dt, tz)
            out[(s, e, all_day, status, rid)] += 1
    return out


def rows_key(row: Any, *, with_rid: bool = True) -> Key:
    return (row["start_at"], row["end_at"], row["all_day"], row["status"], row["recurrence_id"] if with_rid else "")


def overlapping(rows: list[Any], start: datetime, end: datetime) -> list[Any]:
    return [r for r in rows if (r["start_at"] < end and r["end_at"] > start) or (r["start_at"] == r["end_at"] and start <= r["start_at"] < end)]
