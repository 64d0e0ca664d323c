"""Retry-After (RFC 9110 §10.2.3), both ways: the header CalMesh sends and the one it is sent.

Sending: `retry_after(seconds)` is the header for a problem's ``headers`` (``{"Retry-After": "2"}``),
in whole seconds rounded up and never below 1 — a client told ``0`` would come straight back.
`retry_after_seconds` is the bare value, for raw ASGI headers.

Reading (a provider's or a webhook receiver's answer): `parse_retry_after` takes delta-seconds or an
HTTP-date and returns the seconds to wait, capped at `cap` (a day unless the caller says otherwise)
so that a server cannot park a sync or a delivery for years; None when there is no usable value.

Pure: no I/O, safe to import from a ``domain`` module.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["DEFAULT_CAP_SECONDS", "HEADER", "parse_retry_after", "retry_after", "retry_after_seconds"]

HEADER = "Retry-After"
#: The longest wait a Retry-After is believed for, unless the caller gives its own cap.
DEFAULT_CAP_SECONDS = 86400.0


def retry_after_seconds(wait: float) -> str:
    """The header's value for a wait of `wait` seconds: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait)))


def retry_after(wait: float) -> dict[str, str]:
    """``{"Retry-After": …}`` for a wait of `wait` seconds (see `retry_after_seconds`)."""
    return {HEADER: retry_after_seconds(wait)}


def parse_retry_after(
    value: str | None, *, now: datetime | None = None, cap: float = DEFAULT_CAP_SECONDS
) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or an HTTP-date), at most `cap`;
    None for a missing or unreadable value. A date in the past is 0."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), cap)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(cap, max(0.0, (when - (now or datetime.now(UTC))).total_seconds()))
