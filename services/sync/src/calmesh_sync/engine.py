"""Syncing one connection: per provider, fetch what changed, expand it, diff it against the
projection and write the difference with its events, one transaction per calendar.

The loop is written once, in `Syncer.sync_calendar` (state → window → incremental or full listing
→ rows → apply); each provider is a small adapter that says how to list its calendars, how to list
what changed since its cursor or the whole window, and how to turn what it listed into rows. The
SQL is in ``store``.

The functions here know nothing of JetStream: ``worker.py`` feeds them jobs and acks, and tests
call them directly.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec

from calmesh_common.events.sync import CalendarInfo, SourceCalendarPurged
from calmesh_common.eventstore import EventStore
from calmesh_common.guarded import GuardedClient
from calmesh_common.logging import get_logger
from calmesh_common.metrics import Metrics
from calmesh_common.settings import Settings
from calmesh_providers import ICAL_CALENDAR_REF, NotFoundError, SourceError, SyncTokenExpired, calendar_id_for, ical, listing
from calmesh_providers.caldav import CalDAVClient
from calmesh_providers.feed import fetch_feed
from calmesh_providers.google import GoogleClient, google_instance
from calmesh_providers.graph import GraphClient, graph_instance

from . import store as db
from .connections_api import ConnectionDetails, ConnectionsAPI, ProviderCalendar
from .projection import ChangeSet, diff, row_for, stream_id_for, write_changes
from .store import CalendarState, Key

log = get_logger(__name__)


class ConnectionGone(Exception):
    """The connection was deleted while it was being synced."""


@dataclass
class SyncDeps:
    settings: Settings
    pool: asyncpg.Pool
    store: EventStore
    guarded: GuardedClient
    http: httpx.AsyncClient
    connections: ConnectionsAPI
    worker_id: str = ""
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    #: Sync runs and errors per provider are counted here (the process's /metrics).
    metrics: Metrics | None = None


@dataclass
class _Outcome:
    """What a sync changed: rows created, updated, deleted; whether nothing had changed at all."""

    created: int = 0
    updated: int = 0
    deleted: int = 0
    not_modified: bool = False
    warning: str | None = None


@dataclass
class CalendarResult(_Outcome):
    """One calendar's sync (`name`: the calendar's name as the source gave it, if it did)."""

    name: str | None = None


@dataclass
class SyncResult(_Outcome):
    """A connection's sync: the sum of its calendars' (unchanged only if every one was)."""

    not_modified: bool = True
    calendars: list[CalendarInfo] | None = field(default_factory=list)

    def add(self, result: CalendarResult) -> None:
        self.created += result.created
        self.updated += result.updated
        self.deleted += result.deleted
        self.not_modified = self.not_modified and result.not_modified
        self.warning = self.warning or result.warning


def window_for(settings: Settings, state: CalendarState, now: datetime) -> tuple[ical.Window, bool]:
    """The window to sync and whether it moved (then everything is expanded again). The window
    reaches `sync_window_reanchor_days` beyond what is needed, so it moves only that often."""
    need_start = now - timedelta(days=settings.sync_window_back_days)
    need_end = now + timedelta(days=settings.sync_window_ahead_days)
    if state.window_start and state.window_end and state.window_start <= need_start and state.window_end >= need_end:
        return ical.Window(state.window_start, state.window_end), False
    window = ical.Window.around(
        now.date(), settings.sync_window_back_days, settings.sync_window_ahead_days + settings.sync_window_reanchor_days
    )
    return window, True


def build_rows(
    instances: list[ical.Instance],
    *,
    connection_id: str,
    calendar_id: str,
    provider_event_id: str | None,
    now: datetime,
) -> dict[Key, Any]:
    rows = {}
    for inst in instances:
        rows[(inst.uid, inst.recurrence_id)] = row_for(
            inst, connection_id=connection_id, calendar_id=calendar_id, provider_event_id=provider_event_id, updated_at=now
        )
    return rows


def expand_ical_body(
    body: bytes | str,
    window: ical.Window,
    *,
    timezone: str,
    max_instances: int,
    timeout: float | None,
) -> tuple[list[ical.Instance], ical.Expansion, str | None]:
    """Parse and expand one iCalendar body (CPU-bound: run it in a thread)."""
    data = body.encode() if isinstance(body, str) else body
    cal = ical.parse_ical(data)
    name = ical.calendar_name(cal)
    expansion = ical.expand(cal, window, default_timezone=timezone, max_instances=max_instances, timeout=timeout)
    return expansion.instances, expansion, name


@dataclass
class Listing:
    """What a provider listed for one calendar: since the cursor (`full` False: only the rows of
    `provider_ids` / `provider_prefixes` are in question) or the whole window (`full`: rows not in
    it go). `unchanged`: nothing to write, only `cursor` to save when it is not None. `rows()` may
    complete it (prefixes, cursor, warning, the calendar's name)."""

    items: list[Any] = field(default_factory=list)
    cursor: dict[str, Any] | None = None
    full: bool = True
    unchanged: bool = False
    provider_ids: list[str] = field(default_factory=list)
    provider_prefixes: list[str] = field(default_factory=list)
    #: An empty diff counts as "not modified" (the provider itself said something changed otherwise).
    quiet: bool = False
    #: Written in the calendar's transaction, after its rows (CalDAV: the source objects).
    extra: Callable[[asyncpg.Connection], Awaitable[None]] | None = None
    warning: str | None = None
    name: str | None = None

    @classmethod
    def nothing(cls, cursor: dict[str, Any] | None = None) -> Listing:
        return cls(cursor=cursor, full=False, unchanged=True)


class Syncer(abc.ABC):
    """Syncs the calendars of one connection of one provider: the loop, once; the adapters below
    say how their provider lists calendars and changes and how its items become rows."""

    def __init__(
        self,
        deps: SyncDeps,
        details: ConnectionDetails,
        sync_id: str,
        heartbeat: Callable[[], Awaitable[None]],
        rediscover: bool = True,
    ) -> None:
        self.deps = deps
        #: Ask the provider for its list of calendars (else the list the connection knows is used).
        self.rediscover = rediscover or not details.calendars
        self.settings = deps.settings
        self.details = details
        self.sync_id = sync_id
        self.heartbeat = heartbeat
        self.connection_id = details.id
        self.user_id = details.user_id
        self.timezone = details.user_timezone or "UTC"
        self.started = deps.now()
        self.instances_budget = deps.settings.sync_max_instances

    # --- what an adapter says ---------------------------------------------------------------------

    async def calendars(self) -> list[ProviderCalendar]:
        """The provider calendars of the connection."""
        if not self.rediscover:
            return list(self.details.calendars)
        return await self.listed_calendars()

    async def listed_calendars(self) -> list[ProviderCalendar]:
        return [ProviderCalendar(id=c.id, name=c.name, color=c.color, read_only=c.read_only, ref=c.ref)
                for c in await self.list_calendars()]

    @abc.abstractmethod
    async def list_calendars(self) -> Sequence[listing.ListedCalendar]:
        """The calendars as the provider lists them now."""

    @abc.abstractmethod
    async def list_changes(self, calendar: ProviderCalendar, cursor: dict[str, Any], window: ical.Window) -> Listing | None:
        """What changed since `cursor` (the window did not move); None: the cursor cannot say
        (none yet, expired), list the whole window."""

    @abc.abstractmethod
    async def list_all(self, calendar: ProviderCalendar, cursor: dict[str, Any], window: ical.Window) -> Listing:
        """Everything of the calendar in `window`."""

    @abc.abstractmethod
    async def rows(self, calendar: ProviderCalendar, found: Listing, window: ical.Window) -> dict[Key, Any]:
        """The projection rows of what `found` lists."""

    async def close(self) -> None:
        return None

    # --- the loop -------------------------------------------------------------------------------

    async def sync_calendar(self, calendar: ProviderCalendar) -> CalendarResult:
        """Sync one calendar incrementally (or in full when it must) and write what changed."""
        state = await db.load_state(self.deps.pool, self.connection_id, calendar.id)
        window, moved = window_for(self.settings, state, self.deps.now())
        found = None if moved else await self.list_changes(calendar, state.cursor, window)
        if found is None:
            found = await self.list_all(calendar, state.cursor, window)
        await self.heartbeat()
        if found.unchanged:
            if found.cursor is not None:
                async with self.deps.pool.acquire() as conn, conn.transaction():
                    await db.save_state(conn, self.connection_id, calendar.id, found.cursor, window)
            return CalendarResult(not_modified=True)
        rows = await self.rows(calendar, found, window)
        await self.heartbeat()
        changes = await self.apply(calendar.id, rows, window=window, found=found)
        return CalendarResult(
            len(changes.created),
            len(changes.updated),
            len(changes.deleted),
            not_modified=found.quiet and changes.empty,
            warning=found.warning,
            name=found.name,
        )

    async def expand(self, body: bytes | str, window: ical.Window) -> tuple[list[ical.Instance], ical.Expansion, str | None]:
        return await asyncio.to_thread(
            expand_ical_body,
            body,
            window,
            timezone=self.timezone,
            max_instances=self.instances_budget,
            timeout=self.settings.sync_expand_timeout_seconds,
        )

    async def apply(self, calendar_id: str, rows: dict[Key, Any], *, window: ical.Window, found: Listing) -> ChangeSet:
        """One calendar's transaction: lock, diff against the projection, write rows + events +
        cursor. A full listing: `rows` is the whole calendar (rows not in it go); else only rows
        of its provider ids (and prefixes) are in question."""
        async with self.deps.pool.acquire() as conn, conn.transaction():
            if not await db.lock_connection(conn, self.connection_id):
                raise ConnectionGone(self.connection_id)
            if found.full:
                existing = await db.load_existing(conn, self.connection_id, calendar_id)
                scope = None
            else:
                existing = await db.load_existing(
                    conn,
                    self.connection_id,
                    calendar_id,
                    provider_ids=found.provider_ids,
                    provider_prefixes=found.provider_prefixes,
                    uids=sorted({k[0] for k in rows}),
                )
                wanted = set(found.provider_ids)
                prefixes = tuple(f"{p}_" for p in found.provider_prefixes)
                scope = [
                    k for k, e in existing.items()
                    if e.provider_event_id in wanted or (prefixes and (e.provider_event_id or "").startswith(prefixes))
                ]
            changes = diff(rows, existing, in_scope=scope, keep_newer_than=self.started)
            await write_changes(
                conn,
                self.deps.store,
                user_id=self.user_id,
                connection_id=self.connection_id,
                calendar_id=calendar_id,
                sync_id=self.sync_id,
                changes=changes,
                reason="deleted",
            )
            if found.extra is not None:
                await found.extra(conn)
            await db.save_state(conn, self.connection_id, calendar_id, found.cursor or {}, window)
        return changes


# --- iCal feeds --------------------------------------------------------------------------------


class ICalSyncer(Syncer):
    """One calendar, always read whole: the feed's ETag / Last-Modified and the body's digest say
    whether it changed."""

    async def calendars(self) -> list[ProviderCalendar]:
        return await self.listed_calendars()  # the one feed calendar, known without asking the feed

    async def list_calendars(self) -> Sequence[listing.ListedCalendar]:
        known = {c.ref: c for c in self.details.calendars}
        existing = known.get(ICAL_CALENDAR_REF)
        return [
            listing.ListedCalendar(
                id=calendar_id_for(self.connection_id, ICAL_CALENDAR_REF),
                name=existing.name if existing else (self.details.display_name or "iCal feed"),
                color=existing.color if existing else None,
                read_only=True,
                ref=ICAL_CALENDAR_REF,
            )
        ]

    async def list_changes(self, calendar: ProviderCalendar, cursor: dict[str, Any], window: ical.Window) -> Listing | None:
        return await self._fetch(cursor, conditional=True)

    async def list_all(self, calendar: ProviderCalendar, cursor: dict[str, Any], window: ical.Window) -> Listing:
        return await self._fetch(cursor, conditional=False)

    async def _fetch(self, cursor: dict[str, Any], *, conditional: bool) -> Listing:
        url = self.details.credentials.get("url") or self.details.settings.get("url", "")
        fetched = await fetch_feed(
            self.deps.guarded,
            url,
            etag=cursor.get("etag") if conditional else None,
            last_modified=cursor.get("last_modified") if conditional else None,
            max_bytes=self.settings.ical_max_bytes,
        )
        if fetched.not_modified:
            return Listing.nothing()
        assert fetched.body is not None
        digest = hashlib.sha256(fetched.body).hexdigest()
        new_cursor = {"etag": fetched.etag, "last_modified": fetched.last_modified, "body_hash": digest}
        if conditional and digest == cursor.get("body_hash"):
            same_headers = (fetched.etag, fetched.last_modified) == (cursor.get("etag"), cursor.get("last_modified"))
            return Listing.nothing(None if same_headers else new_cursor)
        return Listing(items=[fetched.body], cursor=new_cursor)

    async def rows(self, calendar: ProviderCalendar, found: Listing, window: ical.Window) -> dict[Key, Any]:
        instances, expansion, found.name = await self.expand(found.items[0], window)
        found.warning = expansion.warning()
        return build_rows(instances, connection_id=self.connection_id, calendar_id=calendar.id, provider_event_id=None, now=self.deps.now())


# --- CalDAV (iCloud and any server) --------------------------------------------------------------


class CalDAVSyncer(Syncer):
    """RFC 6578 sync-collection where the server has it, else ETags (and the CTag to skip an
    unchanged calendar). Every object's body is kept, so a full pass expands unchanged objects
    without fetching them again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = self.details.settings
        url = settings.get("url") or self.deps.settings.icloud_caldav_url
        self.client = CalDAVClient(self.deps.guarded, url, settings.get("username", ""), self.details.credentials.get("password", ""))

    async def close(self) -> None:
        await self.client.aclose()

    async def list_calendars(self) -> Sequence[listing.ListedCalendar]:
        return await listing.caldav_calendars(self.client, self.connection_id)

    async def list_changes(self, calendar: ProviderCalendar, cursor: dict[str, Any], window: ical.Window) -> Listing | None:
        url = calendar.ref
        mode = cursor.get("mode")
        token = cursor.get("sync_token") if mode == "sync" else None
        if mode == "etag":
            # No sync-collection here: the CTag says whether anything changed.
            ctag = (await self.client.state(url)).ctag
            if ctag and ctag == cursor.get("ctag"):
                return Listing.nothing()
            return await self._full(calendar, ctag)
        if not token:
            return None
        # RFC 6578: the collection says what changed since our token (nothing: one request).
        try:
            changed, deleted, new_token = await self.client.changes_since(url, token)
        except SyncTokenExpired:
            return None
        except SourceError:
            return None  # the server stopped doing sync-collection: list ETags
        stored = await db.object_etags(self.deps.pool, self.connection_id, calendar.id, sorted(changed))
        # Our own writes come back as changes with the ETag we stored: nothing to fetch.
        changed = {h: e for h, e in changed.items() if not (e and stored.get(h) == e)}
        if not changed and not deleted:
            return Listing.nothing({**cursor, "sync_token": new_token} if new_token != cursor.get("sync_token") else None)
        return await self._objects(calendar, changed, deleted, {"mode": mode, "sync_token": new_token, "ctag": None})

    async def list_all(self, calendar: ProviderCalendar, cursor: dict[str, Any], window: ical.Window) -> Listing:
        return await self._full(calendar, None)

    async def _full(self, calendar: ProviderCalendar, ctag: str | None) -> Listing:
        url = calendar.ref
        stored = await db.object_etags(self.deps.pool, self.connection_id, calendar.id)
        try:
            found, _, new_token = await self.client.changes_since(url, None)
            mode = "sync"
        except SourceError:
            found = await self.client.etags(url)
            mode, new_token = "etag", None
            ctag = ctag or (await self.client.state(url)).ctag
        changed = {h: e for h, e in found.items() if h not in stored or stored[h] != e or e is None}
        deleted = [h for h in stored if h not in found]
        return await self._objects(calendar, changed, deleted, {"mode": mode, "sync_token": new_token, "ctag": ctag}, stored=stored)

    async def _objects(
        self,
        calendar: ProviderCalendar,
        changed: dict[str, str | None],
        deleted: list[str],
        cursor: dict[str, Any],
        *,
        stored: dict[str, str | None] | None = None,
    ) -> Listing:
        """Fetch what changed; a full pass (`stored`: every object last seen) also takes the
        unchanged objects' stored copies, so the whole calendar is expanded."""
        full = stored is not None
        await self.heartbeat()
        objects = await self.client.fetch(calendar.ref, sorted(changed)) if changed else []
        fetched_hrefs = {o.href for o in objects}
        gone = sorted(set(deleted) | (set(changed) - fetched_hrefs))
        await self.heartbeat()
        items: list[tuple[str, str]] = [(o.href, o.data) for o in objects]
        unchanged = set(stored or ()) - fetched_hrefs - set(gone)
        if unchanged:
            items += await db.object_bodies(self.deps.pool, self.connection_id, calendar.id, sorted(unchanged))

        async def store_objects(conn: asyncpg.Connection) -> None:
            await db.save_objects(conn, self.connection_id, calendar.id, objects, gone)

        return Listing(
            items=items,
            cursor=cursor,
            full=full,
            provider_ids=sorted(fetched_hrefs | set(gone)),
            quiet=not objects and not gone,
            extra=store_objects,
        )

    async def rows(self, calendar: ProviderCalendar, found: Listing, window: ical.Window) -> dict[Key, Any]:
        rows, found.warning = await asyncio.to_thread(self._expand_objects, found.items, window, calendar.id, self.deps.now())
        return rows

    def _expand_objects(self, objects: list[tuple[str, str]], window: ical.Window, calendar_id: str, now: datetime) -> tuple[dict[Key, Any], str | None]:
        rows: dict[Key, Any] = {}
        budget = self.instances_budget
        deadline = time.monotonic() + self.settings.sync_expand_timeout_seconds
        skipped = 0
        first_problem: str | None = None
        for href, data in sorted(objects):
            try:
                instances, expansion, _ = expand_ical_body(
                    data, window, timezone=self.timezone, max_instances=budget, timeout=max(0.1, deadline - time.monotonic())
                )
            except ical.ExpansionLimitError:
                raise
            except SourceError as exc:
                skipped += 1
                first_problem = first_problem or f"{href.rsplit('/', 1)[-1]}: {exc}"
                continue
            skipped += expansion.skipped
            first_problem = first_problem or (expansion.problems[0] if expansion.problems else None)
            budget -= len(instances)
            rows.update(build_rows(instances, connection_id=self.connection_id, calendar_id=calendar_id, provider_event_id=href, now=now))
        warning = None
        if skipped:
            warning = f"{skipped} event(s) could not be read and were left out" + (f" (first: {first_problem})" if first_problem else "")
        return rows, warning


# --- Google Calendar and Microsoft Graph ---------------------------------------------------------


class OAuthSyncer(Syncer):
    """A JSON API with an incremental cursor (Google's sync token, Graph's delta link) and one
    item per event instance: the adapters say how to call it and read an item."""

    #: The cursor's key of the provider's incremental token.
    token_key: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client = self.make_client()

    @abc.abstractmethod
    def make_client(self) -> Any: ...

    @abc.abstractmethod
    async def since(self, ref: str, token: str) -> tuple[list[dict[str, Any]], str | None]:
        """(items changed since `token`, the next token); raises SyncTokenExpired."""

    @abc.abstractmethod
    async def within(self, ref: str, window: ical.Window) -> tuple[list[dict[str, Any]], str | None]:
        """(every item in `window`, the token to go on from)."""

    @abc.abstractmethod
    async def instance(self, item: dict[str, Any], found: Listing) -> ical.Instance | None:
        """The instance an item is (None: a deletion or nothing to show)."""

    def cursor_for(self, token: str | None, cursor: dict[str, Any]) -> dict[str, Any]:
        return {self.token_key: token}

    async def _token(self, force: bool) -> str:
        return await self.deps.connections.access_token(self.connection_id, force_refresh=force)

    async def list_changes(self, calendar: ProviderCalendar, cursor: dict[str, Any], window: ical.Window) -> Listing | None:
        token = cursor.get(self.token_key)
        if not token:
            return None
        try:
            items, next_token = await self.since(calendar.ref, token)
        except SyncTokenExpired:
            # The token is void: the calendar is synced again from scratch and whatever is not in
            # the new listing is wiped.
            return None
        if not items:
            return Listing.nothing(self.cursor_for(next_token, cursor) if next_token and next_token != token else None)
        return Listing(
            items=items, cursor=self.cursor_for(next_token, cursor), full=False, provider_ids=[i["id"] for i in items], quiet=True
        )

    async def list_all(self, calendar: ProviderCalendar, cursor: dict[str, Any], window: ical.Window) -> Listing:
        items, next_token = await self.within(calendar.ref, window)
        return Listing(items=items, cursor=self.cursor_for(next_token, cursor), provider_ids=[i["id"] for i in items])

    async def rows(self, calendar: ProviderCalendar, found: Listing, window: ical.Window) -> dict[Key, Any]:
        now = self.deps.now()
        rows: dict[Key, Any] = {}
        for item in found.items:
            inst = await self.instance(item, found)
            if inst is None or not (inst.start_at < window.end and inst.end_at > window.start):
                continue
            rows[(inst.uid, inst.recurrence_id)] = row_for(
                inst, connection_id=self.connection_id, calendar_id=calendar.id, provider_event_id=item["id"], updated_at=now
            )
        return rows


class GoogleSyncer(OAuthSyncer):
    token_key = "sync_token"

    def make_client(self) -> GoogleClient:
        return GoogleClient(self.deps.http, self.settings.google_api_url, self._token, max_inline_wait=self.settings.sync_retry_after_max_seconds)

    async def list_calendars(self) -> Sequence[listing.ListedCalendar]:
        return (await listing.google_calendars(self.client, self.connection_id))[0]

    async def since(self, ref: str, token: str) -> tuple[list[dict[str, Any]], str | None]:
        page = await self.client.list_events(ref, sync_token=token)
        return page.items, page.next_sync_token

    async def within(self, ref: str, window: ical.Window) -> tuple[list[dict[str, Any]], str | None]:
        page = await self.client.list_events(ref, time_min=window.start, time_max=window.end)
        return page.items, page.next_sync_token

    async def instance(self, item: dict[str, Any], found: Listing) -> ical.Instance | None:
        inst = google_instance(item)
        if inst is None and not item.get("recurringEventId"):
            found.provider_prefixes.append(item["id"])  # a whole series: its instances are "<id>_<start>"
        return inst


class GraphSyncer(OAuthSyncer):
    token_key = "delta_link"

    def make_client(self) -> GraphClient:
        return GraphClient(
            self.deps.http, self.settings.microsoft_graph_url, self._token, max_inline_wait=self.settings.sync_retry_after_max_seconds
        )

    async def list_calendars(self) -> Sequence[listing.ListedCalendar]:
        return await listing.graph_calendars(self.client, self.connection_id)

    def cursor_for(self, token: str | None, cursor: dict[str, Any]) -> dict[str, Any]:
        # The series masters' iCalendar UIDs, learnt once each (an occurrence names only its master's id).
        return {"delta_link": token, "master_uids": dict(cursor.get("master_uids") or {})}

    async def since(self, ref: str, token: str) -> tuple[list[dict[str, Any]], str | None]:
        round_ = await self.client.delta(ref, delta_link=token)
        return round_.items, round_.delta_link

    async def within(self, ref: str, window: ical.Window) -> tuple[list[dict[str, Any]], str | None]:
        round_ = await self.client.delta(ref, start=window.start, end=window.end)
        return round_.items, round_.delta_link

    async def rows(self, calendar: ProviderCalendar, found: Listing, window: ical.Window) -> dict[Key, Any]:
        assert found.cursor is not None
        masters: dict[str, str] = found.cursor["master_uids"]
        for item in found.items:
            master = item.get("seriesMasterId")
            if master and master not in masters and "@removed" not in item:
                try:
                    uid = await self.client.event_uid(master)
                except NotFoundError:
                    uid = None
                masters[master] = uid or item.get("iCalUId") or master
        return await super().rows(calendar, found, window)

    async def instance(self, item: dict[str, Any], found: Listing) -> ical.Instance | None:
        assert found.cursor is not None
        return graph_instance(item, found.cursor["master_uids"])


SYNCERS: dict[str, type[Syncer]] = {
    "ical": ICalSyncer,
    "caldav": CalDAVSyncer,
    "icloud": CalDAVSyncer,
    "google": GoogleSyncer,
    "microsoft": GraphSyncer,
}


async def purge_vanished_calendars(deps: SyncDeps, details: ConnectionDetails, current: list[ProviderCalendar]) -> int:
    """Calendars the provider no longer lists: their rows go (one event each)."""
    keep = {c.id for c in current}
    gone = [c for c in await db.synced_calendar_ids(deps.pool, details.id) if c not in keep]
    for calendar_id in gone:
        async with deps.pool.acquire() as conn, conn.transaction():
            if not await db.lock_connection(conn, details.id):
                raise ConnectionGone(details.id)
            await db.purge_calendar(conn, details.id, calendar_id)
            await db.forget_calendar(conn, details.id, calendar_id)
            await deps.store.append(
                conn,
                stream_id_for(details.id, calendar_id),
                None,
                [SourceCalendarPurged(user_id=details.user_id, connection_id=details.id, calendar_id=calendar_id)],
                user_id=details.user_id,
            )
    return len(gone)


ProgressHook = Callable[[int, int, int], Awaitable[None]]


async def sync_connection(
    deps: SyncDeps,
    details: ConnectionDetails,
    sync_id: str,
    *,
    heartbeat: Callable[[], Awaitable[None]] | None = None,
    progress: ProgressHook | None = None,
    only_ref: str | None = None,
    rediscover: bool = True,
) -> SyncResult:
    """Sync every calendar of `details` (or only `only_ref`); raises provider errors. Without
    `rediscover`, the calendars the connection knows are synced (the other syncs refresh the
    list; push syncs go straight to the events)."""

    async def noop() -> None:
        return None

    syncer = SYNCERS[details.provider](deps, details, sync_id, heartbeat or noop, rediscover)
    try:
        calendars = await syncer.calendars()
        result = SyncResult()
        todo = [c for c in calendars if only_ref is None or c.ref == only_ref] or calendars
        changed = 0
        for index, calendar in enumerate(todo, start=1):
            outcome = await syncer.sync_calendar(calendar)
            result.add(outcome)
            changed += outcome.created + outcome.updated + outcome.deleted
            if outcome.name and details.provider == "ical":
                calendar = msgspec.structs.replace(calendar, name=outcome.name)
                calendars = [calendar if c.id == calendar.id else c for c in calendars]
            if progress is not None:
                await progress(index, len(todo), changed)
        if only_ref is None and syncer.rediscover:
            await purge_vanished_calendars(deps, details, calendars)
        if syncer.rediscover or details.provider == "ical":
            result.calendars = [CalendarInfo(id=c.id, name=c.name, color=c.color, read_only=c.read_only, ref=c.ref) for c in calendars]
        else:
            result.calendars = None
        return result
    finally:
        await syncer.close()
