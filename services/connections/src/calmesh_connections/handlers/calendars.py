"""Unified calendars and their sources: create, list, read, update, delete; add, reorder and
remove sources (the last writable source of a calendar a booking page uses stays)."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from calmesh_common.events.connections import (
    CalendarCreated,
    CalendarDeleted,
    CalendarSource,
    CalendarSourceAdded,
    CalendarSourceRemoved,
    CalendarSourcesReordered,
    CalendarUpdated,
)
from calmesh_common.ids import new_id
from calmesh_common.problems import FieldError, Problem
from calmesh_common.retryafter import retry_after
from calmesh_common.service import SECRET_HEADER, Caller
from calmesh_common.settings import SettingsError
from calmesh_common.tracing import inject_headers

from .. import store
from ..core import Context, append, calendar_out, calendar_view, calendars_of, page_of, source_views
from ..domain import last_writable_problem, no_writable_left, reordered, slug_taken
from ..schemas import (
    CalendarCreate,
    CalendarOut,
    CalendarPage,
    CalendarUpdate,
    SourceOut,
    SourceRef,
    SourcesReorder,
    check_slug,
    check_timezone,
    user_timezone,
)


def source_event(view: SourceOut) -> CalendarSource:
    """A source as the calendar events carry it (the answer's fields, the same ones)."""
    return CalendarSource(**msgspec.structs.asdict(view))


async def _calendar(conn: Any, caller: Caller, slug: str, *, for_update: bool = False) -> Any:
    """The caller's calendar `slug`; 404 when they have none of that slug."""
    row = await store.get_calendar(conn, caller.user_id, slug, for_update=for_update)
    if row is None:
        raise Problem(404, "not_found", "No such calendar.")
    return row


async def create(ctx: Context, data: CalendarCreate, caller: Caller) -> CalendarOut:
    slug = check_slug(data.slug)
    tz = check_timezone(data.timezone) if data.timezone else user_timezone(caller.timezone)
    calendar_id = new_id("ucal")
    async with ctx.pool.acquire() as conn, conn.transaction():
        if await store.get_calendar(conn, caller.user_id, slug) is not None:
            raise slug_taken(slug)
        try:
            row = await store.insert_calendar(conn, calendar_id=calendar_id, user_id=caller.user_id, slug=slug, name=data.name, timezone=tz)
        except Exception as exc:  # noqa: BLE001 - a racing create of the same slug
            if type(exc).__name__ == "UniqueViolationError":
                raise slug_taken(slug) from None
            raise
        await _add_sources(conn, caller.user_id, calendar_id, data.sources, start_order=0)
        out, full = await calendar_view(conn, row)
        await append(ctx, conn, f"calendar:{calendar_id}", [CalendarCreated(calendar=full)], caller.user_id)
    return out


async def list_page(ctx: Context, caller: Caller, limit: int, cursor: str | None) -> CalendarPage:
    rows, next_cursor = await page_of(store.list_calendars, ctx, caller.user_id, cursor, limit)
    sources = await store.sources_of(ctx.pool, [r["id"] for r in rows])
    conns = await store.connections_of(ctx.pool, caller.user_id, list({s["connection_id"] for ss in sources.values() for s in ss}))
    data = [calendar_out(r, source_views(sources[r["id"]], conns)) for r in rows]
    return CalendarPage(data=data, next_cursor=next_cursor)


async def get(ctx: Context, caller: Caller, slug: str) -> CalendarOut:
    row = await _calendar(ctx.pool, caller, slug)
    out, _ = await calendar_view(ctx.pool, row)
    return out


async def update(ctx: Context, slug: str, data: CalendarUpdate, caller: Caller) -> CalendarOut:
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await _calendar(conn, caller, slug, for_update=True)
        new_slug = check_slug(data.slug) if data.slug is not None else row["slug"]
        new_tz = check_timezone(data.timezone) if data.timezone is not None else row["timezone"]
        new_name = data.name if data.name is not None else row["name"]
        if new_slug != row["slug"] and await store.get_calendar(conn, caller.user_id, new_slug) is not None:
            raise slug_taken(new_slug)
        row = await store.update_calendar(conn, row["id"], slug=new_slug, name=new_name, timezone=new_tz)
        out, full = await calendar_view(conn, row)
        await append(ctx, conn, f"calendar:{row['id']}", [CalendarUpdated(
            calendar=full, previous_slug=slug if new_slug != slug else None,
        )], caller.user_id)
    return out


async def delete(ctx: Context, slug: str, caller: Caller) -> None:
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await _calendar(conn, caller, slug, for_update=True)
        _, full = await calendar_view(conn, row)
        await store.delete_calendar(conn, row["id"])
        await append(ctx, conn, f"calendar:{row['id']}", [CalendarDeleted(calendar=full)], caller.user_id)


async def add_source(ctx: Context, slug: str, data: SourceRef, caller: Caller) -> Any:
    """The new source as itself, or a whole connection's calendars as a list (plain data)."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await _calendar(conn, caller, slug, for_update=True)
        existing = (await store.sources_of(conn, [row["id"]]))[row["id"]]
        added = await _add_sources(conn, caller.user_id, row["id"], [data], start_order=len(existing))
        if not added:
            raise Problem(409, "source_exists", "That calendar is a source of this unified calendar already.")
        row = await store.touch_calendar(conn, row["id"])
        out, full = await calendar_view(conn, row)
        new = [v for v in out.sources if v.id in added]
        await append(ctx, conn, f"calendar:{row['id']}", [
            CalendarSourceAdded(calendar=full, source=source_event(v)) for v in new
        ], caller.user_id)
    return msgspec.to_builtins(new[0]) if len(new) == 1 else {"data": msgspec.to_builtins(new), "next_cursor": None}


async def reorder(ctx: Context, slug: str, data: SourcesReorder, caller: Caller) -> CalendarOut:
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await _calendar(conn, caller, slug, for_update=True)
        current = [s["id"] for s in (await store.sources_of(conn, [row["id"]]))[row["id"]]]
        await store.set_sort_orders(conn, reordered(current, list(data.source_ids)))
        row = await store.touch_calendar(conn, row["id"])
        out, full = await calendar_view(conn, row)
        await append(ctx, conn, f"calendar:{row['id']}", [CalendarSourcesReordered(calendar=full)], caller.user_id)
    return out


def _writable(views: list[SourceOut]) -> list[str]:
    return [v.id for v in views if not v.read_only]


async def remove_source(ctx: Context, slug: str, source_id: str, caller: Caller) -> None:
    """The last writable source of a calendar that a booking page uses cannot be removed: 409
    `last_writable_source`, naming the pages. Booking is asked with no transaction open; when the
    source became the last writable one meanwhile, it is asked first (three tries, then 409)."""
    checked = False
    for _ in range(3):
        if not checked and await _leaves_no_writable(ctx, caller.user_id, slug, source_id):
            pages = await _pages_on(ctx, caller.user_id, slug)
            if pages:
                raise last_writable_problem(slug, pages)
            checked = True
        async with ctx.pool.acquire() as conn, conn.transaction():
            row = await _calendar(conn, caller, slug, for_update=True)
            sources = (await store.sources_of(conn, [row["id"]]))[row["id"]]
            if not any(s["id"] == source_id for s in sources):
                raise Problem(404, "not_found", "No such source in this calendar.")
            everyone = await store.connections_of(conn, caller.user_id, list({s["connection_id"] for s in sources}))
            views = source_views(sources, everyone)
            if not checked and no_writable_left(_writable(views), source_id):
                continue  # it became the last writable one meanwhile: ask booking first
            view = next(v for v in views if v.id == source_id)
            await store.delete_source(conn, source_id)
            await store.set_sort_orders(conn, [s["id"] for s in sources if s["id"] != source_id])
            row = await store.touch_calendar(conn, row["id"])
            _, full = await calendar_view(conn, row)
            await append(ctx, conn, f"calendar:{row['id']}", [CalendarSourceRemoved(calendar=full, source=source_event(view))],
                         caller.user_id)
            return
    raise Problem(409, "conflict", "The calendar's sources keep changing; try again.", headers=retry_after(1))


async def _leaves_no_writable(ctx: Context, user_id: str, slug: str, source_id: str) -> bool:
    async with ctx.pool.acquire() as conn:
        row = await store.get_calendar(conn, user_id, slug)
        if row is None:
            return False
        sources = (await store.sources_of(conn, [row["id"]]))[row["id"]]
        everyone = await store.connections_of(conn, user_id, list({s["connection_id"] for s in sources}))
        return no_writable_left(_writable(source_views(sources, everyone)), source_id)


async def _pages_on(ctx: Context, user_id: str, slug: str) -> list[str]:
    """The slugs of the user's booking pages on calendar `slug`, from booking's internal API
    (`GET /internal/pages`); 503 when booking cannot be asked (nothing is removed then)."""
    try:
        base = ctx.settings.service_url("booking")
    except SettingsError:
        return []  # no booking service in this deployment: no pages
    try:
        response = await ctx.http.get(f"{base}/internal/pages", params={"user_id": user_id, "calendar_slug": slug},
                                      headers=inject_headers({SECRET_HEADER: ctx.settings.internal_secret}), timeout=5.0)
    except httpx.HTTPError:
        response = None
    if response is None or response.status_code != 200:
        raise Problem(503, "service_unavailable", "Cannot tell whether a booking page uses this calendar; try again.",
                      headers=retry_after(5))
    return [str(p["slug"]) for p in response.json().get("data", [])]


async def _add_sources(conn: Any, user_id: str, calendar_id: str, refs: list[SourceRef], *, start_order: int) -> list[str]:
    """Insert the sources named by `refs` (a connection's every calendar when calendar_id is left
    out); returns the new source ids. 422 for a connection or calendar the user does not have."""
    if not refs:
        return []
    conns = await store.connections_of(conn, user_id, [r.connection_id for r in refs])
    order = start_order
    added: list[str] = []
    for index, ref in enumerate(refs):
        connection = conns.get(ref.connection_id)
        field = f"sources[{index}]" if len(refs) > 1 or start_order == 0 else "connection_id"
        if connection is None:
            raise Problem(422, "unknown_connection", f"{field}: no connection {ref.connection_id!r}.",
                          errors=[FieldError(f"{field}.connection_id", "unknown connection")])
        calendars = calendars_of(connection)
        if ref.calendar_id is not None:
            chosen = [c for c in calendars if c["id"] == ref.calendar_id]
            if not chosen:
                raise Problem(422, "unknown_calendar", f"{field}: connection {ref.connection_id!r} has no calendar {ref.calendar_id!r}.",
                              errors=[FieldError(f"{field}.calendar_id", "unknown calendar")])
        else:
            chosen = calendars
            if not chosen:
                raise Problem(409, "connection_not_ready",
                              f"{field}: connection {ref.connection_id!r} has no calendars yet (it has not completed its authorization or first sync); try again shortly.")
        for cal in chosen:
            inserted = await store.insert_source(
                conn, source_id=new_id("src"), calendar_id=calendar_id, connection_id=ref.connection_id,
                provider_calendar_id=cal["id"], name=cal.get("name") or "", sort_order=order,
            )
            if inserted is not None:
                added.append(inserted["id"])
                order += 1
    return added
