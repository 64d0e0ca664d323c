"""Resolving ``slug`` + user to a unified calendar and its sources, with a cache that events keep true.

The calendar comes from connections' internal API (``GET /internal/calendars/{slug}?user_id=``) and
is kept in memory, so the read path pays no hop. Every replica subscribes (plain NATS, no queue
group: each replica must hear every change) to the connections context's events; a change to a
user's calendars or connections drops that user's entries at once, so a removed source is gone from
the next read that follows the event. What a fetch started before such an event brought back is not
stored. While the subscription is down (NATS away, or reconnected and possibly having missed
events) the cache is bypassed, and a time-to-live bounds any entry's age in any case.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from calmesh_common.events import decode_envelope
from calmesh_common.logging import get_logger
from calmesh_common.problems import Problem

from .domain import Calendar, CalendarDoc

log = get_logger(__name__)

#: Where the connections context publishes (see docs/contracts.md, "Streams and subjects").
CONNECTIONS_SUBJECT = "calmesh.connections.>"

#: Connections events that never change what a calendar reads (status and bookkeeping only).
IRRELEVANT_TYPES = frozenset({
    "connection.synced.v1",
    "connection.sync_requested.v1",
    "connection.credentials_refreshed.v1",
    "connection.errored.v1",
    "connection.created.v1",
})


class ConnectionsUnavailable(Exception):
    """connections did not answer the calendar lookup."""


Fetcher = Callable[[str, str], Awaitable[CalendarDoc | None]]


class CalendarDirectory:
    """``(user_id, slug) -> Calendar`` with event-driven invalidation.

    `fetch` returns the calendar document, or None when that user has no such calendar (which is
    cached too: the event that creates it invalidates the entry).
    """

    def __init__(
        self,
        fetch: Fetcher,
        *,
        ttl_seconds: float = 60.0,
        stale_seconds: float = 3600.0,
        max_entries: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.ttl = ttl_seconds
        self.stale = stale_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[Calendar | None, float]] = OrderedDict()
        self._user_gen: dict[str, int] = {}
        self._gen = 0
        self._inflight: dict[tuple[str, str], asyncio.Future[Calendar | None]] = {}
        self._nc: NATS | None = None
        self._sub: Subscription | None = None
        self._reconnects = 0
        self.hits = 0
        self.misses = 0

    # --- reads ------------------------------------------------------------------------------------

    async def get(self, user_id: str, slug: str) -> Calendar:
        """The calendar, or 404 (unknown slug, or another user's: never a hint which)."""
        cal = await self.lookup(user_id, slug)
        if cal is None:
            raise Problem(404, "not_found", f"No calendar {slug!r}.")
        return cal

    async def lookup(self, user_id: str, slug: str) -> Calendar | None:
        key = (user_id, slug)
        now = self._clock()
        live = self._listening()
        entry = self._entries.get(key)
        if entry is not None and live and now - entry[1] < self.ttl:
            self.hits += 1
            return entry[0]
        self.misses += 1
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Calendar | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        gen, user_gen = self._gen, self._user_gen.get(user_id, 0)
        try:
            try:
                doc = await self._fetch(user_id, slug)
            except ConnectionsUnavailable:
                # connections is away: a recent entry no event has invalidated is still the truth.
                if entry is not None and now - entry[1] < self.stale:
                    log.warning("calendar_lookup_stale", slug=slug)
                    future.set_result(entry[0])
                    return entry[0]
                raise Problem(503, "dependency_unavailable",
                              "Calendars cannot be looked up right now; try again shortly.",
                              headers={"Retry-After": "2"}) from None
            cal = Calendar.from_doc(doc) if doc is not None else None
            if cal is not None and cal.user_id and cal.user_id != user_id:
                cal = None  # never serve another user's calendar, whatever answered
            if live and self._listening() and gen == self._gen and user_gen == self._user_gen.get(user_id, 0):
                self._store(key, cal, now)
            future.set_result(cal)
            return cal
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved here, so an unawaited future does not warn
            raise
        finally:
            self._inflight.pop(key, None)

    def _store(self, key: tuple[str, str], cal: Calendar | None, now: float) -> None:
        self._entries[key] = (cal, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    # --- invalidation -----------------------------------------------------------------------------

    def invalidate_user(self, user_id: str) -> None:
        self._user_gen[user_id] = self._user_gen.get(user_id, 0) + 1
        for key in [k for k in self._entries if k[0] == user_id]:
            del self._entries[key]

    def clear(self) -> None:
        self._gen += 1
        self._user_gen.clear()
        self._entries.clear()

    def _listening(self) -> bool:
        """The cache may be trusted only while invalidations can reach us."""
        nc = self._nc
        if nc is None or self._sub is None or not nc.is_connected:
            return False
        reconnects = nc.stats.get("reconnects", 0)
        if reconnects != self._reconnects:
            # We were away: events may have been missed. Start over.
            self._reconnects = reconnects
            self.clear()
        return True

    async def subscribe(self, nc: NATS) -> None:
        self._nc = nc
        self._reconnects = nc.stats.get("reconnects", 0)
        self._sub = await nc.subscribe(CONNECTIONS_SUBJECT, cb=self._on_message)

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # noqa: BLE001 - shutting down: the connection may be gone
                log.debug("calendar_unsubscribe_failed", error=repr(exc))
            self._sub = None

    async def _on_message(self, msg: Msg) -> None:
        self.apply_event(msg.data)

    def apply_event(self, data: bytes) -> None:
        """Drop what a connections event may have changed (the user's entries; all if unsure)."""
        try:
            envelope = decode_envelope(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("calendar_event_undecodable")
            self.clear()
            return
        if envelope.type in IRRELEVANT_TYPES:
            return
        user_id = envelope.user_id or _user_of(bytes(envelope.event))
        if user_id:
            self.invalidate_user(user_id)
        else:
            self.clear()


def _user_of(raw_event: bytes) -> str | None:
    try:
        doc: Any = msgspec.json.decode(raw_event)
    except msgspec.DecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("user_id"), str):
        return doc["user_id"]
    calendar = doc.get("calendar")
    if isinstance(calendar, dict) and isinstance(calendar.get("user_id"), str):
        return calendar["user_id"]
    return None


_calendar_decoder = msgspec.json.Decoder(CalendarDoc)


def http_fetcher(client: Any, base_url: str, secret: str, header: str) -> Fetcher:
    """A fetcher on connections' internal API through an httpx.AsyncClient."""

    async def fetch(user_id: str, slug: str) -> CalendarDoc | None:
        try:
            response = await client.get(
                f"{base_url}/internal/calendars/{quote(slug, safe='')}", params={"user_id": user_id}, headers={header: secret},
                timeout=5.0,
            )
        except Exception as exc:  # noqa: BLE001 - any transport failure means "unavailable"
            raise ConnectionsUnavailable(repr(exc)) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ConnectionsUnavailable(f"status {response.status_code}")
        try:
            return _calendar_decoder.decode(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ConnectionsUnavailable(f"unreadable calendar: {exc}") from exc

    return fetch
