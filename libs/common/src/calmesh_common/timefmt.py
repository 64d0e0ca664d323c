"""RFC 3339 as the API speaks it: one formatter and one parser for every service.

Responses give instants in UTC to the whole second, ``2026-03-15T09:00:00Z`` (no fraction, ``Z``);
`rfc3339` writes that for a datetime and `rfc3339_epoch` for epoch seconds. Requests may use any
offset: `parse_instant` reads ``YYYY-MM-DD[T| ]HH:MM[:SS[.fraction]]`` followed by ``Z`` or
``±HH:MM`` (``±HHMM`` too; ``t``/``z`` in lower case too), the forms the query parameters
``start``/``end`` have accepted from the start. A date-time without an offset is read in
`default_tz` when the caller has one (a query's ``tz``), else refused. `parse_date` reads
``YYYY-MM-DD``. Both raise `ValueError` with a message fit for a problem's ``detail``; each service
maps it to its own problem (code and field), as its API documents.

Pure: no I/O, safe to import from a ``domain`` module.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, tzinfo
from functools import lru_cache

__all__ = ["is_date", "parse_date", "parse_date_or_instant", "parse_instant", "rfc3339", "rfc3339_epoch", "rfc3339_or_none"]

_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}:?\d{2})?$")
#: Python 3.11 reads at most 6 fraction digits; the rest cannot matter at one-second precision.
_LONG_FRACTION = re.compile(r"(\.\d{6})\d+")


def rfc3339(value: datetime) -> str:
    """``2026-03-15T09:00:00Z``: `value` in UTC to the whole second (a naive `value` is UTC)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime(_FORMAT)


def rfc3339_or_none(value: datetime | None) -> str | None:
    """`rfc3339` of `value`, or None for None (optional instants in responses)."""
    return None if value is None else rfc3339(value)


@lru_cache(maxsize=1 << 16)
def rfc3339_epoch(ts: int) -> str:
    """``2026-03-15T09:00:00Z`` for epoch second `ts` (memoised: calendars repeat their instants)."""
    return time.strftime(_FORMAT, time.gmtime(ts))


def is_date(text: str) -> bool:
    """Whether `text` has the shape of a date ``YYYY-MM-DD`` (not whether the date exists)."""
    return bool(_DATE.match(text))


def parse_date(text: str) -> date:
    """A calendar date ``YYYY-MM-DD``; ValueError for any other shape or an impossible date."""
    if not _DATE.match(text):
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid date") from None


def parse_instant(text: str, *, default_tz: tzinfo | None = None) -> datetime:
    """An RFC 3339 date-time as an aware datetime in UTC (fractions of a second kept).

    Without an offset it is read in `default_tz`, or refused when there is none. Surrounding white
    space is ignored. ValueError names what is wrong: the shape, an impossible value, no offset.
    """
    raw = text = text.strip()
    if not _INSTANT.match(text):
        raise ValueError(f"{raw!r} is not an RFC 3339 date-time (like 2026-03-15T09:00:00Z)")
    text = _LONG_FRACTION.sub(r"\1", text.replace("z", "Z").replace("t", "T").replace(" ", "T"))
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{raw!r} is not a valid date-time") from None
    if value.tzinfo is None:
        if default_tz is None:
            raise ValueError(f"{raw!r} has no offset (add Z or +hh:mm)")
        value = value.replace(tzinfo=default_tz)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{raw!r} is out of range") from None


def parse_date_or_instant(text: str, *, default_tz: tzinfo | None = None) -> date | datetime:
    """A `date` for ``YYYY-MM-DD``, else `parse_instant` (for parameters that take either)."""
    stripped = text.strip()
    if is_date(stripped):
        return parse_date(stripped)
    return parse_instant(text, default_tz=default_tz)
