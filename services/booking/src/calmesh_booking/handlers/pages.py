"""Booking pages: create, read (the owner's page or anyone's public part), list, update, delete,
the internal "pages on a calendar" question, and the slots a page offers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from calmesh_common.events.booking import (
    BookingPageCreated,
    BookingPageDeleted,
    BookingPageUpdated,
)
from calmesh_common.idempotency import Answer
from calmesh_common.ids import new_id
from calmesh_common.logging import get_logger
from calmesh_common.problems import FieldError, Problem, not_found
from calmesh_common.service import Caller
from calmesh_common.timefmt import rfc3339, rfc3339_epoch

from .. import domain
from ..clients import CalendarInfo
from ..domain import BusyTime, RuleError
from ..store import parse_json
from .context import (
    FULL_SCOPES,
    READ_SCOPES,
    BookingContext,
    answer,
    calendar_of_page,
    check_calendar,
    idempotent,
    list_page,
    range_problem,
    require_scope,
    rule_problem,
    validation_problem,
    zone_param,
)

log = get_logger(__name__)


PAGE_DEFAULTS: dict[str, Any] = {
    "description": "",
    "date_overrides": [],
    "buffer_before_minutes": 0,
    "buffer_after_minutes": 0,
    "min_notice_minutes": 0,
    "max_days_ahead": 60,
    "slot_interval_minutes": None,
    "hold_minutes": 10,
    "require_email_verification": False,
    "questions": [],
}


def _normalise_rules(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate the rule fields and put hours in canonical form (sorted, merged, HH:MM)."""
    try:
        rules = domain.build_rules(
            timezone=fields["timezone"],
            duration_minutes=fields["duration_minutes"],
            slot_interval_minutes=fields["slot_interval_minutes"],
            weekly_hours=fields["weekly_hours"],
            date_overrides=fields["date_overrides"],
            buffer_before_minutes=fields["buffer_before_minutes"],
            buffer_after_minutes=fields["buffer_after_minutes"],
            min_notice_minutes=fields["min_notice_minutes"],
            max_days_ahead=fields["max_days_ahead"],
        )
    except RuleError as exc:
        raise rule_problem(exc) from None
    out = dict(fields)
    out["slot_interval_minutes"] = int(rules.interval.total_seconds() // 60)
    out["weekly_hours"] = {d: domain.format_hours(h) for d, h in zip(domain.WEEKDAYS, rules.weekly, strict=True) if h}
    out["date_overrides"] = [
        {"date": day.isoformat(), "hours": domain.format_hours(hours)} for day, hours in sorted(rules.overrides.items())
    ]
    return out


def _normalise_questions(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate a page's `questions` (422 naming each broken rule's field) in canonical form."""
    questions, found = domain.parse_questions(raw)
    if found:
        raise validation_problem([FieldError(f, m) for f, m in found])
    return [q.to_json() for q in questions]


def page_resource(ctx: BookingContext, page: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": page["id"],
        "slug": page["slug"],
        "calendar_slug": page["calendar_slug"],
        "title": page["title"],
        "description": page["description"],
        "duration_minutes": page["duration_minutes"],
        "slot_interval_minutes": page["slot_interval_minutes"],
        "timezone": page["timezone"],
        "weekly_hours": parse_json(page["weekly_hours"]),
        "date_overrides": parse_json(page["date_overrides"]),
        "buffer_before_minutes": page["buffer_before_minutes"],
        "buffer_after_minutes": page["buffer_after_minutes"],
        "min_notice_minutes": page["min_notice_minutes"],
        "max_days_ahead": page["max_days_ahead"],
        "hold_minutes": page["hold_minutes"],
        "require_email_verification": page["require_email_verification"],
        "questions": parse_json(page["questions"]),
        "public_url": ctx.public_url(page["handle"], page["slug"]),
        "created_at": rfc3339(page["created_at"]),
        "updated_at": rfc3339(page["updated_at"]),
    }


async def _handle_of(ctx: BookingContext, conn: asyncpg.Connection, caller: Caller) -> str:
    if caller.handle:
        await ctx.store.upsert_user(conn, caller.user_id, handle=caller.handle, timezone=caller.timezone)
        return caller.handle
    user = await ctx.store.get_user(conn, caller.user_id)
    if user is None or not user["handle"]:
        raise Problem(409, "handle_unknown", "Your account has no handle yet; try again in a moment.")
    return str(user["handle"])


async def create_page(
    ctx: BookingContext, caller: Caller, fields: dict[str, Any], *, key: str | None, request_hash: str
) -> Answer:
    require_scope(caller, FULL_SCOPES, "full")
    fields = _normalise_rules({**PAGE_DEFAULTS, **fields})
    fields["questions"] = _normalise_questions(fields["questions"])
    calendar = await check_calendar(ctx, caller.user_id, fields["calendar_slug"])

    async def work(conn: asyncpg.Connection) -> Answer:
        handle = await _handle_of(ctx, conn, caller)
        if ctx.enforce_page_limit is not None:
            await ctx.enforce_page_limit(conn, caller, await ctx.store.count_pages(conn, caller.user_id))
        page_id = new_id("bp")
        row = await ctx.store.insert_page(
            conn, {**fields, "id": page_id, "user_id": caller.user_id, "handle": handle,
                   "calendar_snapshot": calendar.to_json()},
        )
        if row is None:
            raise Problem(409, "slug_taken", f"You have a booking page {fields['slug']!r} already.",
                          errors=[FieldError("slug", "is taken")])
        await ctx.events.append(
            conn, page_id, 0,
            [BookingPageCreated(page_id=page_id, user_id=caller.user_id, slug=row["slug"],
                                calendar_slug=row["calendar_slug"], title=row["title"],
                                duration_minutes=row["duration_minutes"], timezone=row["timezone"])],
            user_id=caller.user_id,
        )
        return answer(201, page_resource(ctx, row))

    return await idempotent(ctx, scope=f"page:{caller.user_id}", key=key, request_hash=request_hash, work=work)


def public_page_resource(page: asyncpg.Record) -> dict[str, Any]:
    """What a visitor may read of a page: enough to show its booking form."""
    return {
        "title": page["title"],
        "description": page["description"],
        "duration_minutes": page["duration_minutes"],
        "timezone": page["timezone"],
        "questions": parse_json(page["questions"]),
    }


async def get_page(ctx: BookingContext, caller: Caller | None, slug: str, handle: str | None = None) -> dict[str, Any]:
    """The owner's page; with `handle`, anyone's public part of the page named by handle and slug."""
    if handle is not None:
        async with ctx.pool.acquire() as conn:
            row = await ctx.store.public_page(conn, handle.lower(), slug)
        if row is None:
            raise not_found("booking page")
        return public_page_resource(row)
    if caller is None:
        raise Problem(401, "unauthorized", "Authentication is required; a visitor names the page with `handle`.")
    require_scope(caller, READ_SCOPES, "read")
    async with ctx.pool.acquire() as conn:
        row = await ctx.store.page_by_slug(conn, caller.user_id, slug)
    if row is None:
        raise not_found("booking page")
    return page_resource(ctx, row)


async def list_pages(ctx: BookingContext, caller: Caller, limit: int | None, cursor: str | None) -> dict[str, Any]:
    return await list_page(ctx, caller, limit, cursor, lambda conn, after, n: ctx.store.list_pages(conn, caller.user_id, after, n),
                            lambda r: page_resource(ctx, r))


async def update_page(ctx: BookingContext, caller: Caller, slug: str, changes: dict[str, Any]) -> dict[str, Any]:
    require_scope(caller, FULL_SCOPES, "full")
    calendar: CalendarInfo | None = None
    if "questions" in changes:
        changes = {**changes, "questions": _normalise_questions(changes["questions"])}
    if "calendar_slug" in changes:
        calendar = await check_calendar(ctx, caller.user_id, changes["calendar_slug"])
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await ctx.store.page_by_slug(conn, caller.user_id, slug, lock=True)
        if row is None:
            raise not_found("booking page")
        current = {k: row[k] for k in ("timezone", "duration_minutes", "slot_interval_minutes", "buffer_before_minutes",
                                       "buffer_after_minutes", "min_notice_minutes", "max_days_ahead")}
        current["weekly_hours"] = parse_json(row["weekly_hours"])
        current["date_overrides"] = parse_json(row["date_overrides"])
        if "duration_minutes" in changes and "slot_interval_minutes" not in changes:
            # An interval that was the old duration follows the new one.
            if row["slot_interval_minutes"] == row["duration_minutes"]:
                current["slot_interval_minutes"] = None
        merged = _normalise_rules({**current, **{k: v for k, v in changes.items() if k in current}})
        columns = {k: merged[k] for k in current if merged[k] != current[k]}
        for k in ("slug", "calendar_slug", "title", "description", "hold_minutes", "require_email_verification"):
            if k in changes and changes[k] != row[k]:
                columns[k] = changes[k]
        if "questions" in changes and changes["questions"] != parse_json(row["questions"]):
            columns["questions"] = changes["questions"]
        if "slug" in columns and await ctx.store.page_by_slug(conn, caller.user_id, columns["slug"]) is not None:
            raise Problem(409, "slug_taken", f"You have a booking page {columns['slug']!r} already.",
                          errors=[FieldError("slug", "is taken")])
        if calendar is not None:
            columns["calendar_snapshot"] = calendar.to_json()
        if not columns:
            return page_resource(ctx, row)
        try:
            updated = await ctx.store.update_page(conn, row["id"], columns)
        except asyncpg.UniqueViolationError:
            raise Problem(409, "slug_taken", "That slug is taken.", errors=[FieldError("slug", "is taken")]) from None
        await ctx.events.append(
            conn, row["id"], None,
            [BookingPageUpdated(page_id=row["id"], user_id=caller.user_id, slug=updated["slug"],
                                changed=sorted(c for c in columns if c != "calendar_snapshot"))],
            user_id=caller.user_id,
        )
    return page_resource(ctx, updated)


async def pages_on_calendar(ctx: BookingContext, user_id: str, calendar_slug: str) -> dict[str, Any]:
    """Internal (connections asks before a calendar's last writable source goes): the user's pages
    on that calendar."""
    async with ctx.pool.acquire() as conn:
        slugs = await ctx.store.pages_on_calendar(conn, user_id, calendar_slug)
    return {"data": [{"slug": slug} for slug in slugs]}


async def delete_page(ctx: BookingContext, caller: Caller, slug: str) -> None:
    require_scope(caller, FULL_SCOPES, "full")
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await ctx.store.page_by_slug(conn, caller.user_id, slug, lock=True)
        if row is None:
            raise not_found("booking page")
        await ctx.store.delete_page(conn, row["id"])
        await ctx.events.append(
            conn, row["id"], None, [BookingPageDeleted(page_id=row["id"], user_id=caller.user_id, slug=slug)],
            user_id=caller.user_id,
        )


def _date_param(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise Problem(400, "validation_error", f"`{name}` must be a date YYYY-MM-DD.",
                      errors=[FieldError(name, "must be a date YYYY-MM-DD")]) from None


#: How far around the visitor's dates the owner's bookings are read with the page: any timezone
#: (±14 h), a day of buffer and a day-long meeting all fit in it.
_BOOKINGS_MARGIN = timedelta(days=3)


async def slots(
    ctx: BookingContext, *, slug: str, handle: str | None, start: str, end: str, tz: str | None, caller: Caller | None
) -> dict[str, Any]:
    """The offered slots of a page for the visitor's dates: its rules minus the calendar's busy
    time (from the busy cache) and the owner's bookings (read fresh, with the page)."""
    first, last = _date_param(start, "start"), _date_param(end, "end")
    range_problem(first, last, inclusive_days=True)
    if not handle and caller is None:
        raise Problem(400, "validation_error", "The `handle` query parameter is required.",
                      errors=[FieldError("handle", "is required")])
    around = (datetime.combine(first, datetime.min.time(), UTC) - _BOOKINGS_MARGIN,
              datetime.combine(last, datetime.min.time(), UTC) + _BOOKINGS_MARGIN)
    async with ctx.pool.acquire() as conn:
        page = await ctx.store.page_with_bookings(
            conn, slug=slug, handle=handle.lower() if handle else None,
            user_id=None if handle or caller is None else caller.user_id,
            start=around[0], end=around[1], now=ctx.clock(),
        )
        if page is None:
            raise not_found("booking page")
        visitor_tz = zone_param(tz, page["timezone"])
        rules = ctx.rules(page)
        calendar = await calendar_of_page(ctx, page)
        now = ctx.clock()
        window_start, window_end = domain.day_window(first, last, visitor_tz)
        # Only busy time that can touch an offerable slot is read.
        lo = max(window_start, now + rules.min_notice)
        hi = min(window_end, now + timedelta(days=rules.max_days_ahead))
        found: list[tuple[int, int]] = []
        if hi > lo:
            q_lo, q_hi = domain.busy_query_range(rules, lo, hi)
            spans = await ctx.busy.spans(
                conn, user_id=page["user_id"], sources=calendar.source_keys, calendar_tz=calendar.tz,
                start=q_lo, end=q_hi,
            )
            spans.extend((s, e) for s, e in page["booked"])
            found = domain.compute_slot_spans(rules, window_start, window_end, now, BusyTime(spans=spans))
    text = rfc3339_epoch
    return {
        "timezone": visitor_tz.key,
        "slots": [{"start": text(s), "end": text(e)} for s, e in found],
    }
