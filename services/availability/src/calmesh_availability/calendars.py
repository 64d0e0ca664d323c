"""Resolving ``slug`` + user to a unified calendar and its sources, with a cache that events keep true.

The calendar comes from connections' internal API (``GET /internal/calendars/{slug}?user_id=``) and
is kept in memory, so the read path pays no hop. Every replica subscribes (plain NATS, no queue
group: each replica must hear every change) to the connections context's events; a change to a
user's calendars or connections drops that user's entries at once, so a removed source is gone from
the next read that follows the event. What a fetch started before such an event brought back is not
stored. While the subscription is down (NATS away, or reconnected and possibly having missed
events) the cache is bypassed, and a time-to-live bounds any entry's age in any case.

It also knows where each source's connection stands (docs/api-guide.md, Freshness): the calendar document
brings each connection's status and last successful sync, and from then on the directory follows
the connection's sync runs itself — ``sync.started``, ``sync.completed`` and ``sync.failed`` on the
sync context's subjects, the very events from which connections derives the status, so this copy is
never behind connections' own (it hears them at the same moment connections does, and connections
still has a transaction to commit) — plus ``connection.errored`` and ``connection.revoked``, which
connections decides on its own. A connection going to ``error`` is in the very next answer, with no
request to connections on the read path.
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

from calmesh_common.events import Envelope, decode_envelope, decode_event
from calmesh_common.events.connections import ConnectionErrored, ConnectionRevoked, ConnectionSynced
from calmesh_common.events.sync import SyncCompleted, SyncFailed, SyncStarted
from calmesh_common.logging import get_logger
from calmesh_common.problems import Problem
from calmesh_common.retryafter import retry_after
from calmesh_common.timefmt import rfc3339_epoch

from .domain import Calendar, CalendarDoc, ConnectionState, Freshness, Source, freshness

log = get_logger(__name__)

#: Where the connections context publishes (see docs/contracts.md, "Streams and subjects").
CONNECTIONS_SUBJECT = "calmesh.connections.>"
#: The life of sync runs (sync context): what a connection's status follows.
SYNC_RUNS_SUBJECT = "calmesh.sync.sync.>"

#: Events that change neither what a calendar reads nor a connection's status as followed here
#: (a new connection is in no calendar yet).
IRRELEVANT_TYPES = frozenset({
    "connection.sync_requested.v1",
    "connection.credentials_refreshed.v1",
    "connection.created.v1",
    "sync.progressed.v1",
})

#: Events that move a connection's status (applied to the state the directory holds).
STATUS_TYPES = frozenset({
    "sync.started.v1",
    "sync.completed.v1",
    "sync.failed.v1",
    "connection.synced.v1",
    "connection.errored.v1",
    "connection.revoked.v1",
})


def next_state(state: ConnectionState, run: str | None, event: object) -> tuple[ConnectionState, str | None]:
    """The connection's state after `event`, by the rules connections applies to its own row
    (services/connections consumers.py), and the sync run last seen starting (`run`): a revoked
    connection stays revoked; a run that starts makes it ``syncing`` (an ``active`` one stays active:
    its projection is current until the run changes it), one that completes ``active``
    with its finish as the last sync, one that fails ``error`` (``revoked`` when the grant is gone).
    connections' echoes of a run (``connection.synced``, ``connection.errored``) change nothing once
    a newer run is seen starting; they set the state when the run's own events were not seen here."""
    revoked = state.status == "revoked"
    if isinstance(event, SyncStarted):
        if revoked or state.status == "active":
            return state, event.sync_id
        return ConnectionState(id=state.id, status="syncing", last_synced_at=state.last_synced_at), event.sync_id
    if isinstance(event, SyncCompleted | ConnectionSynced):
        if isinstance(event, ConnectionSynced) and run is not None and event.sync_id != run:
            return state, run
        finished = event.finished_at if isinstance(event, SyncCompleted) else event.synced_at
        return ConnectionState(id=state.id, status="revoked" if revoked else "active",
                               last_synced_at=rfc3339_epoch(int(finished.timestamp()))), run
    if isinstance(event, SyncFailed):
        status = "revoked" if revoked or event.kind == "revoked" else "error"
        return ConnectionState(id=state.id, status=status, last_synced_at=state.last_synced_at), run
    if isinstance(event, ConnectionErrored):
        # connections' own refusal (an OAuth callback), or the echo of a sync.failed: stale while
        # a run seen starting here is going.
        if revoked or (state.status == "syncing" and run is not None):
            return state, run
        return ConnectionState(id=state.id, status="error", last_synced_at=state.last_synced_at), run
    if isinstance(event, ConnectionRevoked):
        return ConnectionState(id=state.id, status="revoked", last_synced_at=state.last_synced_at), run
    return state, run


class _User:
    """What the directory holds for one user: cached calendar keys and followed connection states."""

    __slots__ = ("conns", "keys")

    def __init__(self) -> None:
        self.keys: set[tuple[str, str]] = set()
        #: connection id -> (state, monotonic time it was last set by a fetch or an event, the sync
        #: run last seen starting)
        self.conns: dict[str, tuple[ConnectionState, float, str | None]] = {}


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
        self._users: dict[str, _User] = {}
        self._status_gen: dict[str, int] = {}
        self._nc: NATS | None = None
        self._sub: Subscription | None = None
        self._runs_sub: Subscription | None = None
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
        status_gen = self._status_gen.get(user_id, 0)
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
                              headers=retry_after(2)) from None
            cal = Calendar.from_doc(doc) if doc is not None else None
            if cal is not None and cal.user_id and cal.user_id != user_id:
                cal = None  # never serve another user's calendar, whatever answered
            if (live and self._listening() and gen == self._gen and user_gen == self._user_gen.get(user_id, 0)
                    and status_gen == self._status_gen.get(user_id, 0)):
                # (A status event during the fetch may be newer than what it brought: not stored.)
                self._store(key, cal, now)
                if cal is not None:
                    self._seed_states(user_id, cal, now)
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
        self._users.setdefault(key[0], _User()).keys.add(key)
        while len(self._entries) > self.max_entries:
            old, _ = self._entries.popitem(last=False)
            user = self._users.get(old[0])
            if user is not None:
                user.keys.discard(old)
                if not user.keys:
                    del self._users[old[0]]

    def _seed_states(self, user_id: str, cal: Calendar, now: float) -> None:
        """Take the connections' states from a fetched calendar where none is followed yet, or where
        no event has touched the followed one for a time-to-live (a safety net: events keep it)."""
        user = self._users.get(user_id)
        if user is None:
            return
        for conn_id, state in cal.connection_states.items():
            held = user.conns.get(conn_id)
            if held is None or now - held[1] >= self.ttl:
                user.conns[conn_id] = (state, now, None)

    # --- freshness --------------------------------------------------------------------------------

    def freshness(self, cal: Calendar, sources: tuple[Source, ...] | None = None) -> Freshness:
        """Whether an answer over `sources` (default: all of `cal`'s) is complete, and each source's
        connection state: the one followed by events while listening, else the calendar's own."""
        states = cal.connection_states
        user = self._users.get(cal.user_id) if self._listening() else None
        state_of: Callable[[str], ConnectionState | None] = states.get
        if user is not None and user.conns:
            followed = user.conns

            def followed_or_own(conn_id: str) -> ConnectionState | None:
                held = followed.get(conn_id)
                return held[0] if held is not None else states.get(conn_id)

            state_of = followed_or_own
        return freshness(cal.sources if sources is None else sources, state_of)

    # --- invalidation -----------------------------------------------------------------------------

    def invalidate_user(self, user_id: str) -> None:
        self._user_gen[user_id] = self._user_gen.get(user_id, 0) + 1
        user = self._users.pop(user_id, None)
        if user is not None:
            for key in user.keys:
                self._entries.pop(key, None)

    def clear(self) -> None:
        self._gen += 1
        self._user_gen.clear()
        self._status_gen.clear()
        self._entries.clear()
        self._users.clear()

    def _listening(self) -> bool:
        """The cache may be trusted only while invalidations can reach us."""
        nc = self._nc
        if nc is None or self._sub is None or self._runs_sub is None or not nc.is_connected:
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
        self._runs_sub = await nc.subscribe(SYNC_RUNS_SUBJECT, cb=self._on_message)

    async def close(self) -> None:
        for sub in (self._sub, self._runs_sub):
            if sub is None:
                continue
            try:
                await sub.unsubscribe()
            except Exception as exc:  # noqa: BLE001 - shutting down: the connection may be gone
                log.debug("calendar_unsubscribe_failed", error=repr(exc))
        self._sub = self._runs_sub = None

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
        if envelope.type in STATUS_TYPES:
            self._apply_status(envelope)
            return
        user_id = envelope.user_id or _user_of(bytes(envelope.event))
        if user_id:
            self.invalidate_user(user_id)
        else:
            self.clear()


    def _apply_status(self, envelope: Envelope) -> None:
        try:
            event = decode_event(envelope)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("connection_status_event_undecodable", type=envelope.type)
            self.clear()
            return
        user_id = getattr(event, "user_id", None) or envelope.user_id
        conn_id = getattr(event, "connection_id", None)
        if not user_id or not conn_id:
            self.clear()
            return
        user = self._users.get(user_id)
        if user is not None or any(k[0] == user_id for k in self._inflight):
            # A fetch running now may bring an older state than this event's: it is not stored.
            self._status_gen[user_id] = self._status_gen.get(user_id, 0) + 1
        if user is None:
            return  # nothing of this user's is held: the next fetch brings the state
        held = user.conns.get(conn_id)
        if held is None:
            # A calendar of this user is held without this connection's state: fetch it afresh.
            if any(conn_id in entry[0].connection_states for k in user.keys
                   if (entry := self._entries.get(k)) is not None and entry[0] is not None):
                self.invalidate_user(user_id)
            return
        state, run = next_state(held[0], held[2], event)
        user.conns[conn_id] = (state, self._clock(), run)


def _user_of(raw_event: bytes) -> str | None:
    try:
        doc: Any = msgspec.json.decode(raw_event)
    except msgspec.DecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    user_id = doc.get("user_id")
    if isinstance(user_id, str):
        return user_id
    calendar = doc.get("calendar")
    user_id = calendar.get("user_id") if isinstance(calendar, dict) else None
    return user_id if isinstance(user_id, str) else None


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
