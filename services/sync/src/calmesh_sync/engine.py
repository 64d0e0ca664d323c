"""Syncing one connection: per provider, fetch what changed, expand it, diff it against the
projection and write the difference with its events, one transaction per calendar.

The functions here know nothing of JetStream: ``worker.py`` feeds them jobs and acks, and tests
call them directly.
"""

from __future__ import annotations

import abc

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
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
from calmesh_providers import ICAL_CALENDAR_REF, NotFoundError, SourceError, SyncTokenExpired, calendar_id_for, ical
from calmesh_providers.caldav import CalDAVClient
from calmesh_providers.feed import fetch_feed
from calmesh_providers.google import GoogleClient, google_calendar_info, google_instance
from calmesh_providers.graph import GraphClient, graph_instance

from .connections_api import ConnectionDetails, ConnectionsAPI, ProviderCalendar
from .projection import (
    ChangeSet,
    Key,
    diff,
    load_existing,
    lock_connection,
    purge_calendar,
    row_for,
    stream_id_for,
    write_changes,
)

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
class CalendarResult:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    not_modified: bool = False
    warning: str | None = None
    name: str | None = None


@dataclass
class SyncResult:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    not_modified: bool = True
    warning: str | None = None
    calendars: list[CalendarInfo] | None = field(default_factory=list)

    def add(self, result: CalendarResult) -> None:
        self.created += result.created
        self.updated += result.updated
        self.deleted += result.deleted
        self.not_modified = self.not_modified and result.not_modified
        self.warning = self.warning or result.warning


@dataclass
class CalendarState:
    cursor: dict[str, Any]
    window_start: datetime | None
    window_end: datetime | None


async def load_state(conn: asyncpg.Connection | asyncpg.Pool, connection_id: str, calendar_id: str) -> CalendarState:
    row = await conn.fetchrow(
        "SELECT cursor, window_start, window_end FROM sync.calendar_state WHERE connection_id = $1 AND calendar_id = $2",
        connection_id,
        calendar_id,
    )
    if row is None:
        return CalendarState({}, None, None)
    cursor = row["cursor"]
    return CalendarState(msgspec.json.decode(cursor) if isinstance(cursor, str | bytes) else dict(cursor), row["window_start"], row["window_end"])


async def save_state(conn: asyncpg.Connection, connection_id: str, calendar_id: str, cursor: dict[str, Any], window: ical.Window) -> None:
    await conn.execute(
        "INSERT INTO sync.calendar_state (connection_id, calendar_id, cursor, window_start, window_end, synced_at)"
        " VALUES ($1, $2, $3::jsonb, $4, $5, now())"
        " ON CONFLICT (connection_id, calendar_id) DO UPDATE SET cursor = EXCLUDED.cursor,"
        " window_start = EXCLUDED.window_start, window_end = EXCLUDED.window_end, synced_at = now()",
        connection_id,
        calendar_id,
        msgspec.json.encode(cursor).decode(),
        window.start,
        window.end,
    )


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


class Syncer(abc.ABC):
    """Syncs the calendars of one connection of one provider."""

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

    @abc.abstractmethod
    async def calendars(self) -> list[ProviderCalendar]:
        """The provider calendars of the connection."""

    @abc.abstractmethod
    async def sync_calendar(self, calendar: ProviderCalendar) -> CalendarResult:
        """Sync one calendar incrementally and write what changed."""

    async def close(self) -> None:
        return None

    async def expand(self, body: bytes | str, window: ical.Window) -> tuple[list[ical.Instance], ical.Expansion, str | None]:
        return await asyncio.to_thread(
            expand_ical_body,
            body,
            window,
            timezone=self.timezone,
            max_instances=self.instances_budget,
            timeout=self.settings.sync_expand_timeout_seconds,
        )

    async def apply(
        self,
        calendar_id: str,
        rows: dict[Key, Any],
        *,
        window: ical.Window,
        cursor: dict[str, Any],
        provider_ids: list[str] | None = None,
        provider_prefixes: list[str] | None = None,
        full: bool,
        extra: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    ) -> ChangeSet:
        """One calendar's transaction: lock, diff against the projection, write rows + events +
        cursor. `full`: `rows` is the whole calendar (rows not in it go); else only rows of
        `provider_ids` (and `provider_prefixes`) are in question."""
        async with self.deps.pool.acquire() as conn, conn.transaction():
            if not await lock_connection(conn, self.connection_id):
                raise ConnectionGone(self.connection_id)
            if full:
                existing = await load_existing(conn, self.connection_id, calendar_id)
                scope = None
            else:
                existing = await load_existing(
                    conn,
                    self.connection_id,
                    calendar_id,
                    provider_ids=provider_ids or [],
                    provider_prefixes=provider_prefixes or [],
                    uids=sorted({k[0] for k in rows}),
                )
                wanted = set(provider_ids or [])
                prefixes = tuple(f"{p}_" for p in provider_prefixes or [])
                scope = [
                    k for k, e in existing.items()
                    if e.provider_event_id in wanted or (prefixes and (e.provider_event_id or "").startswith(prefixes))
                ]
            changes = diff(rows, existing, in_scope=scope, keep_newer_than=self.started)
            reason = "deleted"
            await write_changes(
                conn,
                self.deps.store,
                user_id=self.user_id,
                connection_id=self.connection_id,
                calendar_id=calendar_id,
                sync_id=self.sync_id,
                changes=changes,
                reason=reason,
            )
            if extra is not None:
                await extra(conn)
            await save_state(conn, self.connection_id, calendar_id, cursor, window)
        return changes


# --- iCal feeds --------------------------------------------------------------------------------


class ICalSyncer(Syncer):
    async def calendars(self) -> list[ProviderCalendar]:
        known = {c.ref: c for c in self.details.calendars}
        existing = known.get(ICAL_CALENDAR_REF)
        return [
            ProviderCalendar(
                id=calendar_id_for(self.connection_id, ICAL_CALENDAR_REF),
                name=existing.name if existing else (self.details.display_name or "iCal feed"),
                color=existing.color if existing else None,
                read_only=True,
                ref=ICAL_CALENDAR_REF,
            )
        ]

    async def sync_calendar(self, calendar: ProviderCalendar) -> CalendarResult:
        url = self.details.credentials.get("url") or self.details.settings.get("url", "")
        state = await load_state(self.deps.pool, self.connection_id, calendar.id)
        window, moved = window_for(self.settings, state, self.deps.now())
        cursor = dict(state.cursor)
        fetched = await fetch_feed(
            self.deps.guarded,
            url,
            etag=None if moved else cursor.get("etag"),
            last_modified=None if moved else cursor.get("last_modified"),
            max_bytes=self.settings.ical_max_bytes,
        )
        if fetched.not_modified:
            return CalendarResult(not_modified=True)
        assert fetched.body is not None
        digest = hashlib.sha256(fetched.body).hexdigest()
        new_cursor = {"etag": fetched.etag, "last_modified": fetched.last_modified, "body_hash": digest}
        if digest == cursor.get("body_hash") and not moved:
            if (fetched.etag, fetched.last_modified) != (cursor.get("etag"), cursor.get("last_modified")):
                async with self.deps.pool.acquire() as conn, conn.transaction():
                    await save_state(conn, self.connection_id, calendar.id, new_cursor, window)
            return CalendarResult(not_modified=True)
        instances, expansion, name = await self.expand(fetched.body, window)
        await self.heartbeat()
        rows = build_rows(instances, connection_id=self.connection_id, calendar_id=calendar.id, provider_event_id=None, now=self.deps.now())
        changes = await self.apply(calendar.id, rows, window=window, cursor=new_cursor, full=True)
        return CalendarResult(
            len(changes.created), len(changes.updated), len(changes.deleted), warning=expansion.warning(), name=name
        )


# --- CalDAV (iCloud and any server) --------------------------------------------------------------


class CalDAVSyncer(Syncer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = self.details.settings
        url = settings.get("url") or self.deps.settings.icloud_caldav_url
        self.client = CalDAVClient(self.deps.guarded, url, settings.get("username", ""), self.details.credentials.get("password", ""))

    async def close(self) -> None:
        await self.client.aclose()

    async def calendars(self) -> list[ProviderCalendar]:
        if not self.rediscover:
            return list(self.details.calendars)
        found = await self.client.discover()
        return [
            ProviderCalendar(id=calendar_id_for(self.connection_id, c.url), name=c.name, color=c.color, read_only=c.read_only, ref=c.url)
            for c in found
        ]

    async def _stored(self, calendar_id: str, hrefs: list[str] | None = None) -> dict[str, str | None]:
        """The ETags of the objects last seen (all of them, or those of `hrefs`)."""
        if hrefs is None:
            rows = await self.deps.pool.fetch(
                "SELECT href, etag FROM sync.source_objects WHERE connection_id = $1 AND calendar_id = $2", self.connection_id, calendar_id
            )
        else:
            rows = await self.deps.pool.fetch(
                "SELECT href, etag FROM sync.source_objects WHERE connection_id = $1 AND calendar_id = $2 AND href = ANY($3::text[])",
                self.connection_id, calendar_id, hrefs,
            )
        return {r["href"]: r["etag"] for r in rows}

    async def sync_calendar(self, calendar: ProviderCalendar) -> CalendarResult:
        url = calendar.ref
        state = await load_state(self.deps.pool, self.connection_id, calendar.id)
        window, moved = window_for(self.settings, state, self.deps.now())
        cursor = dict(state.cursor)
        mode = cursor.get("mode")
        token = cursor.get("sync_token") if mode == "sync" and not moved else None
        ctag = None
        full = True
        changed: dict[str, str | None] = {}
        deleted: list[str] = []
        new_token: str | None = None
        if token:
            # RFC 6578: the collection says what changed since our token (nothing: one request).
            try:
                changed, deleted, new_token = await self.client.changes_since(url, token)
                full = False
            except SyncTokenExpired:
                token = None
            except SourceError:
                token = None  # the server stopped doing sync-collection: list ETags below
        elif mode == "etag" and not moved:
            # No sync-collection here: the CTag says whether anything changed.
            ctag = (await self.client.state(url)).ctag
            if ctag and ctag == cursor.get("ctag"):
                return CalendarResult(not_modified=True)
        stored = await self._stored(calendar.id, None if full else sorted(changed))
        if not full:
            # Our own writes come back as changes with the ETag we stored: nothing to fetch.
            changed = {h: e for h, e in changed.items() if not (e and stored.get(h) == e)}
            if not changed and not deleted:
                if new_token != cursor.get("sync_token"):
                    async with self.deps.pool.acquire() as conn, conn.transaction():
                        await save_state(conn, self.connection_id, calendar.id, {**cursor, "sync_token": new_token}, window)
                return CalendarResult(not_modified=True)
        else:
            try:
                listing, _, new_token = await self.client.changes_since(url, None)
                mode = "sync"
            except SourceError:
                listing = await self.client.etags(url)
                mode, new_token = "etag", None
                ctag = ctag or (await self.client.state(url)).ctag
            changed = {h: e for h, e in listing.items() if h not in stored or stored[h] != e or e is None}
            deleted = [h for h in stored if h not in listing]
        await self.heartbeat()
        objects = await self.client.fetch(url, sorted(changed)) if changed else []
        fetched_hrefs = {o.href for o in objects}
        deleted = sorted(set(deleted) | (set(changed) - fetched_hrefs))
        await self.heartbeat()

        # Expand what changed; on a full pass, also what did not (from the stored copies).
        to_expand: list[tuple[str, str]] = [(o.href, o.data) for o in objects]
        if full:
            unchanged = set(stored) - fetched_hrefs - set(deleted)
            if unchanged:
                rows_ = await self.deps.pool.fetch(
                    "SELECT href, data FROM sync.source_objects WHERE connection_id = $1 AND calendar_id = $2 AND href = ANY($3::text[])",
                    self.connection_id, calendar.id, sorted(unchanged),
                )
                to_expand += [(r["href"], r["data"]) for r in rows_]
        now = self.deps.now()
        rows, warning = await asyncio.to_thread(self._expand_objects, to_expand, window, calendar.id, now)
        await self.heartbeat()
        new_cursor = {"mode": mode, "sync_token": new_token, "ctag": ctag}

        async def store_objects(conn: asyncpg.Connection) -> None:
            if objects:
                await conn.executemany(
                    "INSERT INTO sync.source_objects (connection_id, calendar_id, href, etag, data) VALUES ($1, $2, $3, $4, $5)"
                    " ON CONFLICT (connection_id, calendar_id, href) DO UPDATE SET etag = EXCLUDED.etag, data = EXCLUDED.data",
                    [(self.connection_id, calendar.id, o.href, o.etag, o.data) for o in objects],
                )
            if deleted:
                await conn.execute(
                    "DELETE FROM sync.source_objects WHERE connection_id = $1 AND calendar_id = $2 AND href = ANY($3::text[])",
                    self.connection_id, calendar.id, deleted,
                )

        changes = await self.apply(
            calendar.id,
            rows,
            window=window,
            cursor=new_cursor,
            provider_ids=sorted(fetched_hrefs | set(deleted)),
            full=full,
            extra=store_objects,
        )
        nothing = not objects and not deleted and changes.empty
        return CalendarResult(len(changes.created), len(changes.updated), len(changes.deleted), not_modified=nothing, warning=warning)

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


# --- Google Calendar ---------------------------------------------------------------------------


class GoogleSyncer(Syncer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client = GoogleClient(
            self.deps.http,
            self.settings.google_api_url,
            self._token,
            max_inline_wait=self.settings.sync_retry_after_max_seconds,
        )

    async def _token(self, force: bool) -> str:
        return await self.deps.connections.access_token(self.connection_id, force_refresh=force)

    async def calendars(self) -> list[ProviderCalendar]:
        if not self.rediscover:
            return list(self.details.calendars)
        found = []
        for item in await self.client.calendars():
            if item.get("accessRole") == "freeBusyReader" or item.get("deleted"):
                continue
            ref, name, color, read_only = google_calendar_info(item)
            found.append(ProviderCalendar(id=calendar_id_for(self.connection_id, ref), name=name, color=color, read_only=read_only, ref=ref))
        return found

    async def sync_calendar(self, calendar: ProviderCalendar) -> CalendarResult:
        state = await load_state(self.deps.pool, self.connection_id, calendar.id)
        window, moved = window_for(self.settings, state, self.deps.now())
        token = None if moved else state.cursor.get("sync_token")
        full = token is None
        page = None
        if token:
            try:
                page = await self.client.list_events(calendar.ref, sync_token=token)
            except SyncTokenExpired:
                # 410 Gone: the token is void; the calendar is synced again from scratch and
                # whatever is not in the new listing is wiped.
                full = True
        if page is None:
            page = await self.client.list_events(calendar.ref, time_min=window.start, time_max=window.end)
        await self.heartbeat()
        if not full and not page.items:
            if page.next_sync_token and page.next_sync_token != token:
                async with self.deps.pool.acquire() as conn, conn.transaction():
                    await save_state(conn, self.connection_id, calendar.id, {"sync_token": page.next_sync_token}, window)
            return CalendarResult(not_modified=True)
        now = self.deps.now()
        rows: dict[Key, Any] = {}
        ids: list[str] = []
        gone_masters: list[str] = []
        for item in page.items:
            ids.append(item["id"])
            inst = google_instance(item)
            if inst is None:
                if not item.get("recurringEventId"):
                    gone_masters.append(item["id"])  # a whole series: its instances are "<id>_<start>"
                continue
            if not (inst.start_at < window.end and inst.end_at > window.start):
                continue
            rows[(inst.uid, inst.recurrence_id)] = row_for(
                inst, connection_id=self.connection_id, calendar_id=calendar.id, provider_event_id=item["id"], updated_at=now
            )
        changes = await self.apply(
            calendar.id,
            rows,
            window=window,
            cursor={"sync_token": page.next_sync_token},
            provider_ids=ids,
            provider_prefixes=gone_masters,
            full=full,
        )
        return CalendarResult(len(changes.created), len(changes.updated), len(changes.deleted), not_modified=changes.empty and not full)


# --- Microsoft Graph ---------------------------------------------------------------------------


class GraphSyncer(Syncer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client = GraphClient(
            self.deps.http,
            self.settings.microsoft_graph_url,
            self._token,
            max_inline_wait=self.settings.sync_retry_after_max_seconds,
        )

    async def _token(self, force: bool) -> str:
        return await self.deps.connections.access_token(self.connection_id, force_refresh=force)

    async def calendars(self) -> list[ProviderCalendar]:
        if not self.rediscover:
            return list(self.details.calendars)
        found = []
        for item in await self.client.calendars():
            ref = item["id"]
            color = item.get("hexColor") or None
            found.append(
                ProviderCalendar(
                    id=calendar_id_for(self.connection_id, ref),
                    name=item.get("name") or "Calendar",
                    color=color,
                    read_only=not item.get("canEdit", True),
                    ref=ref,
                )
            )
        return found

    async def sync_calendar(self, calendar: ProviderCalendar) -> CalendarResult:
        state = await load_state(self.deps.pool, self.connection_id, calendar.id)
        window, moved = window_for(self.settings, state, self.deps.now())
        link = None if moved else state.cursor.get("delta_link")
        masters: dict[str, str] = dict(state.cursor.get("master_uids") or {})
        full = link is None
        round_ = None
        if link:
            try:
                round_ = await self.client.delta(calendar.ref, delta_link=link)
            except SyncTokenExpired:
                full = True
        if round_ is None:
            round_ = await self.client.delta(calendar.ref, start=window.start, end=window.end)
        await self.heartbeat()
        if not full and not round_.items:
            if round_.delta_link and round_.delta_link != link:
                async with self.deps.pool.acquire() as conn, conn.transaction():
                    await save_state(conn, self.connection_id, calendar.id, {"delta_link": round_.delta_link, "master_uids": masters}, window)
            return CalendarResult(not_modified=True)
        for item in round_.items:
            master = item.get("seriesMasterId")
            if master and master not in masters and "@removed" not in item:
                try:
                    uid = await self.client.event_uid(master)
                except NotFoundError:
                    uid = None
                masters[master] = uid or item.get("iCalUId") or master
        now = self.deps.now()
        rows: dict[Key, Any] = {}
        ids = []
        for item in round_.items:
            ids.append(item["id"])
            inst = graph_instance(item, masters)
            if inst is None or not (inst.start_at < window.end and inst.end_at > window.start):
                continue
            rows[(inst.uid, inst.recurrence_id)] = row_for(
                inst, connection_id=self.connection_id, calendar_id=calendar.id, provider_event_id=item["id"], updated_at=now
            )
        changes = await self.apply(
            calendar.id,
            rows,
            window=window,
            cursor={"delta_link": round_.delta_link, "master_uids": masters},
            provider_ids=ids,
            full=full,
        )
        return CalendarResult(len(changes.created), len(changes.updated), len(changes.deleted), not_modified=changes.empty and not full)


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
    known = await deps.pool.fetch(
        "SELECT DISTINCT calendar_id FROM sync.calendar_state WHERE connection_id = $1", details.id
    )
    gone = [r["calendar_id"] for r in known if r["calendar_id"] not in keep]
    for calendar_id in gone:
        async with deps.pool.acquire() as conn, conn.transaction():
            if not await lock_connection(conn, details.id):
                raise ConnectionGone(details.id)
            await purge_calendar(conn, details.id, calendar_id)
            await conn.execute("DELETE FROM sync.calendar_state WHERE connection_id = $1 AND calendar_id = $2", details.id, calendar_id)
            await conn.execute("DELETE FROM sync.source_objects WHERE connection_id = $1 AND calendar_id = $2", details.id, calendar_id)
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
            result.calendars = None  # type: ignore[assignment]
        return result
    finally:
        await syncer.close()
