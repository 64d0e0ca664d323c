"""Busy time of calendar sources for the public slot pages, kept in memory between requests.

Slots are read far more often than calendars change, and reading a busy calendar's month from the
projection costs milliseconds. So each replica keeps, per source (connection, provider calendar),
the busy events of a window loaded once, and drops them when the source changes: every replica
listens (a plain NATS subscription, no queue group) to

- the sync context's events (``calmesh.sync.>``): rows of a source upserted or deleted, a source or
  a connection purged;
- this context's ``booking.cancelled`` (a cancelled booking frees its time at once, before sync
  has deleted its calendar event).

A load raced by such an event is not kept; while the subscription is down (or was, since the last
load) nothing is kept; a time-to-live bounds the age of anything kept. The owner's own bookings are
not cached: they are read fresh with every request.

This cache only ever serves the slot *listing*. A booking re-checks its slot against the projection
itself, inside its transaction, so a stale entry can at worst offer a slot that then answers 409.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from calmesh_common.events import decode_envelope
from calmesh_common.logging import get_logger

from .domain import all_day_interval
from .store import BookingStore

log = get_logger(__name__)

SYNC_SUBJECT = "calmesh.sync.>"
CANCELLED_SUBJECT = "calmesh.booking.booking.cancelled"

Source = tuple[str, str]  # (connection_id, calendar_id)


@dataclass
class _Entry:
    """The busy rows of one source that overlap [lo, hi), sorted by start."""

    user_id: str
    lo: int
    hi: int
    expires: float
    starts: list[int]
    ends: list[int]
    longest: int
    all_day: list[tuple[Any, Any]]  # (start_date, end_date): read in the calendar's timezone
    #: The longest row as stored (all-day rows are stored widened): a lower bound for start_at.
    longest_stored: int = 0

    def spans(self, lo: int, hi: int, tz: ZoneInfo, out: list[tuple[int, int]]) -> None:
        # Rows are sorted by start; none lasts longer than `longest`, so rows that can reach `lo`
        # start at or after lo - longest.
        starts, ends = self.starts, self.ends
        i = bisect_left(starts, lo - self.longest)
        n = len(starts)
        while i < n and starts[i] < hi:
            if ends[i] > lo:
                out.append((starts[i], ends[i]))
            i += 1
        for start_date, end_date in self.all_day:
            a, b = all_day_interval(start_date, end_date or start_date, tz)
            a_ts, b_ts = int(a.timestamp()), int(b.timestamp())
            if a_ts < hi and b_ts > lo:
                out.append((a_ts, b_ts))


class ProjectionCache:
    """Per-source busy rows for the slot listing; see the module docstring."""

    def __init__(self, store: BookingStore, *, ttl: float = 60.0, window_days: int = 120,
                 max_entries: int = 5000) -> None:
        self.store = store
        self.ttl = ttl
        self.window = int(timedelta(days=window_days).total_seconds())
        self.max_entries = max_entries
        self._entries: dict[Source, _Entry] = {}
        self._generation = 0
        self._source_gen: dict[Source, int] = {}
        self._user_gen: dict[str, int] = {}
        self._nc: Any = None
        self._subs: list[Any] = []
        self._reconnects = 0

    # --- reading ---------------------------------------------------------------------------------

    async def spans(
        self,
        conn: asyncpg.Connection,
        *,
        user_id: str,
        sources: Sequence[Source],
        calendar_tz: ZoneInfo,
        start: datetime,
        end: datetime,
    ) -> list[tuple[int, int]]:
        """Busy time of `sources` overlapping [start, end), as epoch-second spans (unsorted)."""
        lo, hi = int(start.timestamp()), int(end.timestamp()) + 1
        listening = self._listening()
        now = time.monotonic()
        out: list[tuple[int, int]] = []
        for source in sources:
            entry = self._entries.get(source) if listening else None
            if entry is None or entry.expires < now or entry.lo > lo or entry.hi < hi or entry.user_id != user_id:
                entry = await self._load(conn, user_id, source, lo, max(hi, lo + self.window), keep=listening)
            entry.spans(lo, hi, calendar_tz, out)
        return out

    async def earliest_start(self, conn: asyncpg.Connection, *, user_id: str, sources: Sequence[Source],
                             start: datetime, end: datetime) -> datetime | None:
        """A bound below which no projection row of `sources` that overlaps [start, end) starts
        (from the longest row known around that time), or None when it is not known.

        The booking re-check reads the projection itself inside its transaction; this bound only
        lets it use the (connection, calendar, start_at) index from both ends instead of scanning
        every earlier row. It is as current as the cache: a row longer than any before, written by
        sync in the few milliseconds before its event arrives, could be missed."""
        if not self._listening() or not sources:
            return None
        lo, hi = int(start.timestamp()), int(end.timestamp()) + 1
        now = time.monotonic()
        longest = 0
        for source in sources:
            entry = self._entries.get(source)
            if entry is None or entry.expires < now or entry.lo > lo or entry.hi < hi or entry.user_id != user_id:
                entry = await self._load(conn, user_id, source, lo, max(hi, lo + self.window), keep=True)
            longest = max(longest, entry.longest_stored)
        return datetime.fromtimestamp(lo - longest - 1, UTC)

    async def _load(self, conn: asyncpg.Connection, user_id: str, source: Source, lo: int, hi: int,
                    *, keep: bool) -> _Entry:
        generation = (self._generation, self._source_gen.get(source, 0), self._user_gen.get(user_id, 0))
        rows = await self.store.source_busy_rows(conn, user_id, source, datetime.fromtimestamp(lo, UTC),
                                                 datetime.fromtimestamp(hi, UTC))
        starts: list[int] = []
        ends: list[int] = []
        all_day: list[tuple[Any, Any]] = []
        longest = longest_stored = 0
        for s, e, is_all_day, start_date, end_date in rows:
            if e - s > longest_stored:
                longest_stored = e - s
            if is_all_day and start_date is not None:
                all_day.append((start_date, end_date))
                continue
            starts.append(s)
            ends.append(e)
            if e - s > longest:
                longest = e - s
        entry = _Entry(user_id, lo, hi, time.monotonic() + self.ttl, starts, ends, longest, all_day, longest_stored)
        unchanged = generation == (self._generation, self._source_gen.get(source, 0), self._user_gen.get(user_id, 0))
        if keep and unchanged:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[source] = entry
        return entry

    # --- invalidation ----------------------------------------------------------------------------

    def forget_source(self, source: Source) -> None:
        self._source_gen[source] = self._source_gen.get(source, 0) + 1
        self._entries.pop(source, None)

    def forget_connection(self, connection_id: str) -> None:
        for source in [s for s in self._entries if s[0] == connection_id]:
            self.forget_source(source)
        self._generation += 1  # a load in flight for this connection is not kept

    def forget_user(self, user_id: str) -> None:
        self._user_gen[user_id] = self._user_gen.get(user_id, 0) + 1
        for source in [s for s, e in self._entries.items() if e.user_id == user_id]:
            del self._entries[source]

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()

    def _listening(self) -> bool:
        nc = self._nc
        if nc is None or not self._subs or not nc.is_connected:
            return False
        reconnects = nc.stats.get("reconnects", 0)
        if reconnects != self._reconnects:
            self._reconnects = reconnects  # we were away and may have missed changes
            self.clear()
        return True

    async def subscribe(self, nc: Any) -> None:
        self._nc = nc
        self._reconnects = nc.stats.get("reconnects", 0)
        self._subs = [
            await nc.subscribe(SYNC_SUBJECT, cb=self._on_message),
            await nc.subscribe(CANCELLED_SUBJECT, cb=self._on_message),
        ]

    async def _on_message(self, msg: Any) -> None:
        self.apply_event(msg.data)

    def apply_event(self, data: bytes) -> None:
        """Forget what an event may have changed."""
        try:
            envelope = decode_envelope(data)
            doc = msgspec.json.decode(bytes(envelope.event))
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("busy_cache_event_undecodable")
            self.clear()
            return
        if not isinstance(doc, dict):
            self.clear()
            return
        kind = envelope.type
        if kind.startswith("booking.cancelled."):
            if isinstance(doc.get("user_id"), str):
                self.forget_user(doc["user_id"])
            else:
                self.clear()
        elif kind.startswith("source_events.upserted.") and _reservations_only(doc):
            pass  # rows of bookings and holds, which this cache never holds (they are read fresh)
        elif kind.startswith(("source_events.", "source_calendar.")):
            if isinstance(doc.get("connection_id"), str) and isinstance(doc.get("calendar_id"), str):
                self.forget_source((doc["connection_id"], doc["calendar_id"]))
            else:
                self.clear()
        elif kind.startswith("connection_events."):
            if isinstance(doc.get("connection_id"), str):
                self.forget_connection(doc["connection_id"])
            else:
                self.clear()
        # sync.started / progressed / completed / failed change no rows by themselves.


def _reservations_only(doc: dict[str, Any]) -> bool:
    """Whether an upsert carries only rows of this context's bookings and holds (``booking_id``
    set): the cache leaves those out, so such an event changes nothing it holds. Every booking
    and hold makes one; forgetting the source for it would reload the calendar's busy rows on the
    next booking of the page."""
    rows = [*(doc.get("created") or ()), *(doc.get("updated") or ())]
    return bool(rows) and all(isinstance(r, dict) and r.get("booking_id") for r in rows)

