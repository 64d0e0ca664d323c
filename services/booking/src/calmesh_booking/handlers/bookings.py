"""Command handlers of the booking context: load state, decide with the domain, store and append.

Each public function takes the `BookingContext` (what the lifespan built) and a command, and returns
a plain resource dict or raises `Problem`. They know nothing of HTTP beyond status codes, so the
tests can call them directly, and the API module stays thin.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from calmesh_common.cursors import AwareDatetime, decode_cursor, encode_cursor
from calmesh_common.eventstore import EventStore
from calmesh_common.events.booking import (
    BookingCancelled,
    BookingCreated,
    BookingPageCreated,
    BookingPageDeleted,
    BookingPageUpdated,
    BookingRescheduled,
    BookingVerificationRequested,
    PollCreated,
    PollDecided,
    PollVoted,
)
from calmesh_common.idempotency import Answer, check_key
from calmesh_common.ids import new_id
from calmesh_common.logging import get_logger
from calmesh_common.problems import PROBLEM_JSON, FieldError, Problem, not_found
from calmesh_common.retryafter import retry_after
from calmesh_common.service import Caller
from calmesh_common.settings import Settings
from calmesh_common.timefmt import parse_date_or_instant, parse_instant, rfc3339, rfc3339_epoch, rfc3339_or_none

from .. import domain
from ..busy import ProjectionCache
from ..clients import CalendarInfo, CalendarNotFound, Calendars, DependencyUnavailable, PermanentFailure, SyncEvents
from ..domain import Booking, BusyTime, RuleError, SlotRules
from ..store import (
    BookingStore,
    parse_json,
)

log = get_logger(__name__)

_json = msgspec.json.Encoder()


def link_secret(settings: Settings) -> bytes:
    """The key of visitors' cancel links: its own setting, else derived from the session secret."""
    if settings.booking_link_secret:
        return settings.booking_link_secret.encode()
    if not settings.session_secret:
        raise RuntimeError("CALMESH_BOOKING_LINK_SECRET or CALMESH_SESSION_SECRET must be set to sign cancel links")
    return hmac.new(settings.session_secret.encode(), b"calmesh-booking-cancel-links", hashlib.sha256).digest()


@dataclass
class BookingContext:
    """Everything the handlers use, built once by the lifespan (tests build their own)."""

    settings: Settings
    pool: asyncpg.Pool
    events: EventStore
    store: BookingStore
    calendars: Calendars
    sync: SyncEvents
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    #: Enforces a plan limit inside the creating transaction (calmesh_common.plans), if wired.
    enforce_page_limit: Callable[[asyncpg.Connection, Caller, int], Awaitable[None]] | None = None
    _rules: dict[tuple[str, datetime], SlotRules] = field(default_factory=dict, repr=False)
    _link_secret: bytes = field(default=b"", repr=False)
    #: Busy time for the slot listing (None: read the projection every time).
    busy_cache: ProjectionCache | None = None
    #: Expires holds (and settles pending bookings); poked when a hold is made.
    hold_timer: HoldTimer = field(default_factory=lambda: HoldTimer())
    #: Counts booking mails by kind and outcome (sent | suppressed), if metrics are wired.
    count_mail: Callable[[str, str], None] | None = None

    @property
    def busy(self) -> ProjectionCache | BookingStore:
        """What the slot listing reads calendar busy time from (both answer `spans(...)`)."""
        return self.busy_cache if self.busy_cache is not None else self.store

    @property
    def link_secret(self) -> bytes:
        if not self._link_secret:
            self._link_secret = link_secret(self.settings)
        return self._link_secret

    def rules(self, page: asyncpg.Record) -> SlotRules:
        """The slot rules of a stored page, parsed once per page version."""
        key = (page["id"], page["updated_at"])
        found = self._rules.get(key)
        if found is None:
            if len(self._rules) > 10_000:
                self._rules.clear()
            found = self._rules[key] = rules_of(page)
        return found

    def public_url(self, *parts: str) -> str:
        return "/".join([self.settings.public_base_url.rstrip("/"), *parts])


def answer(status: int, doc: Any) -> Answer:
    return Answer(status, _json.encode(doc))


# --- scopes and problems -------------------------------------------------------------------------

READ_SCOPES = frozenset({"read", "write", "book", "full"})
BOOK_SCOPES = frozenset({"book", "full"})
FULL_SCOPES = frozenset({"full"})


def require_scope(caller: Caller, allowed: frozenset[str], required: str) -> None:
    if caller.scope not in allowed:
        raise Problem(403, "insufficient_scope", f"This needs the {required} scope.", required_scope=required)


def rule_problem(exc: RuleError) -> Problem:
    return Problem(422, "validation_error", str(exc), errors=[FieldError(exc.field, exc.message)])


def unavailable(exc: Exception) -> Problem:
    log.warning("dependency_unavailable", error=str(exc))
    return Problem(503, "dependency_unavailable", "A service this request needs did not answer; try again shortly.",
                   headers=retry_after(2))


def _range_problem(start: date | datetime, end: date | datetime, *, inclusive_days: bool) -> None:
    if end < start:
        raise Problem(422, "invalid_range", "`end` is before `start`.")
    span = (end - start).days + (1 if inclusive_days else 0)  # type: ignore[operator]
    if span > domain.MAX_RANGE_DAYS or (not inclusive_days and end - start > timedelta(days=domain.MAX_RANGE_DAYS)):  # type: ignore[operator]
        raise Problem(422, "range_too_long", f"A range spans at most {domain.MAX_RANGE_DAYS} days.")


# --- idempotency ---------------------------------------------------------------------------------


async def idempotent(
    ctx: BookingContext,
    *,
    scope: str,
    key: str | None,
    request_hash: str,
    work: Callable[[asyncpg.Connection], Awaitable[Answer]],
    conn: asyncpg.Connection | None = None,
) -> Answer:
    """Run `work` in one transaction (on `conn`, else a pooled connection) under the request's
    Idempotency-Key (calmesh_common.idempotency): its answer is kept with the key, a repeat gets
    it back. A Problem raised by `work` rolls back and is not kept."""
    if conn is None:
        async with ctx.pool.acquire() as pooled:
            return await ctx.store.keys.run_in(pooled, scope, key, request_hash, work)
    return await ctx.store.keys.run_in(conn, scope, key, request_hash, work)


def _in_flight() -> Problem:
    """A verification whose booking is between its two transactions (another click of the link)."""
    return Problem(409, "request_in_progress", "The first request for this booking is still being answered; "
                   "retry in a moment.", headers=retry_after(1))


# --- pages ---------------------------------------------------------------------------------------

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


def rules_of(page: asyncpg.Record | dict[str, Any]) -> SlotRules:
    """The slot rules of a stored page (stored pages were validated when written)."""
    return domain.build_rules(
        timezone=page["timezone"],
        duration_minutes=page["duration_minutes"],
        slot_interval_minutes=page["slot_interval_minutes"],
        weekly_hours=parse_json(page["weekly_hours"]),
        date_overrides=parse_json(page["date_overrides"]),
        buffer_before_minutes=page["buffer_before_minutes"],
        buffer_after_minutes=page["buffer_after_minutes"],
        min_notice_minutes=page["min_notice_minutes"],
        max_days_ahead=page["max_days_ahead"],
    )


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


def _problems(found: list[tuple[str, str]]) -> Problem:
    errors = [FieldError(f, m) for f, m in found]
    return Problem(422, "validation_error", "; ".join(f"{e.field} {e.message}" for e in errors), errors=errors)


def _normalise_questions(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate a page's `questions` (422 naming each broken rule's field) in canonical form."""
    questions, found = domain.parse_questions(raw)
    if found:
        raise _problems(found)
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


async def _check_calendar(ctx: BookingContext, user_id: str, slug: str) -> CalendarInfo:
    """The page's calendar, read fresh from connections. A calendar with no writable source (only
    iCal feeds or read-only calendars) is 422 `no_writable_source`: its bookings could never reach
    the provider."""
    try:
        calendar = await ctx.calendars.get(user_id, slug, fresh=True)
    except CalendarNotFound:
        raise Problem(
            422, "calendar_not_found", f"You have no unified calendar {slug!r}.",
            errors=[FieldError("calendar_slug", "names none of your unified calendars")],
        ) from None
    except DependencyUnavailable as exc:
        raise unavailable(exc) from None
    if calendar.write_target() is None:
        raise Problem(
            422, "no_writable_source",
            f"The unified calendar {slug!r} has no writable source (iCal subscriptions and read-only calendars "
            "cannot take a booking's event); add a writable calendar to it first.",
            errors=[FieldError("calendar_slug", "has no writable source")],
        )
    return calendar


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
    calendar = await _check_calendar(ctx, caller.user_id, fields["calendar_slug"])

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


def page_limit(limit: int | None) -> int:
    if limit is None:
        return 50
    if not 1 <= limit <= 200:
        raise Problem(400, "validation_error", "limit must be between 1 and 200.",
                      errors=[FieldError("limit", "must be between 1 and 200")])
    return limit


def _cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """The (instant, id) a list goes on after; a bad cursor is booking's 400 ``validation_error``."""
    return decode_cursor(cursor, tuple[AwareDatetime, str], code="validation_error") if cursor else None


def _created_position(row: Any) -> tuple[Any, str]:
    return row["created_at"], row["id"]


async def _list_page(
    ctx: BookingContext, caller: Caller, limit: int | None, cursor: str | None,
    fetch: Callable[[asyncpg.Connection, tuple[datetime, str] | None, int], Awaitable[Sequence[Any]]],
    render: Callable[[Any], Any], position: Callable[[Any], tuple[Any, str]] = _created_position,
) -> dict[str, Any]:
    """A page of one of the owner's lists: `fetch` is asked for one row more than the page holds,
    to know whether a cursor to the rest is due."""
    require_scope(caller, READ_SCOPES, "read")
    n = page_limit(limit)
    after = _cursor(cursor)
    async with ctx.pool.acquire() as conn:
        rows = await fetch(conn, after, n + 1)
    page = rows[:n]
    return {
        "data": [render(r) for r in page],
        "next_cursor": encode_cursor(*position(page[-1])) if len(rows) > n and page else None,
    }


async def list_pages(ctx: BookingContext, caller: Caller, limit: int | None, cursor: str | None) -> dict[str, Any]:
    return await _list_page(ctx, caller, limit, cursor, lambda conn, after, n: ctx.store.list_pages(conn, caller.user_id, after, n),
                            lambda r: page_resource(ctx, r))


async def update_page(ctx: BookingContext, caller: Caller, slug: str, changes: dict[str, Any]) -> dict[str, Any]:
    require_scope(caller, FULL_SCOPES, "full")
    calendar: CalendarInfo | None = None
    if "questions" in changes:
        changes = {**changes, "questions": _normalise_questions(changes["questions"])}
    if "calendar_slug" in changes:
        calendar = await _check_calendar(ctx, caller.user_id, changes["calendar_slug"])
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


# --- slots ---------------------------------------------------------------------------------------


async def _public_page(ctx: BookingContext, conn: asyncpg.Connection, handle: str | None, slug: str, caller: Caller | None) -> asyncpg.Record:
    if handle:
        row = await ctx.store.public_page(conn, handle.lower(), slug)
    elif caller is not None:
        row = await ctx.store.page_by_slug(conn, caller.user_id, slug)
    else:
        raise Problem(400, "validation_error", "The `handle` query parameter is required.",
                      errors=[FieldError("handle", "is required")])
    if row is None:
        raise not_found("booking page")
    return row


async def calendar_of_page(ctx: BookingContext, page: asyncpg.Record) -> CalendarInfo:
    """The page's calendar from connections (cached), else the copy kept on the page."""
    try:
        return await ctx.calendars.get(page["user_id"], page["calendar_slug"])
    except CalendarNotFound:
        raise Problem(409, "calendar_not_found",
                      "This booking page's calendar no longer exists; its owner must choose another.") from None
    except DependencyUnavailable as exc:
        snapshot = parse_json(page["calendar_snapshot"])
        if snapshot:
            log.warning("calendar_from_snapshot", page_id=page["id"], error=str(exc))
            return CalendarInfo.from_json(snapshot)
        raise unavailable(exc) from None


def _zone_param(name: str | None, default: str, field_name: str = "tz") -> Any:
    try:
        return domain.zone(name or default, field_name)
    except RuleError as exc:
        raise Problem(422, "invalid_timezone", str(exc), errors=[FieldError(exc.field, exc.message)]) from None


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
    _range_problem(first, last, inclusive_days=True)
    if not handle and caller is None:
        raise Problem(400, "validation_error", "The `handle` query parameter is required.",
                      errors=[FieldError("handle", "is required")])
    around = (datetime.combine(first, datetime.min.time(), UTC) - _BOOKINGS_MARGIN,
              datetime.combine(last, datetime.min.time(), UTC) + _BOOKINGS_MARGIN)
    async with ctx.pool.acquire() as conn:
        page = await ctx.store.page_with_bookings(
            conn, slug=slug, handle=handle.lower() if handle else None,
            user_id=None if handle else caller.user_id,  # type: ignore[union-attr]
            start=around[0], end=around[1], now=ctx.clock(),
        )
        if page is None:
            raise not_found("booking page")
        visitor_tz = _zone_param(tz, page["timezone"])
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


# --- bookings ------------------------------------------------------------------------------------


def booking_resource(b: Booking, ctx: BookingContext | None = None) -> dict[str, Any]:
    doc = {
        "id": b.id,
        "status": b.status,
        "page_slug": b.page_slug,
        "calendar_slug": b.calendar_slug,
        "title": b.title,
        "start": rfc3339(b.start),
        "end": rfc3339(b.end),
        "name": b.name,
        "email": b.email,
        "notes": b.notes,
        "timezone": b.timezone,
        "event_id": b.event_id,
        "calendar_write": b.calendar_write,
        "calendar_write_error": b.calendar_write_error,
        "created_at": rfc3339(b.created_at),
        "cancelled_at": rfc3339_or_none(b.cancelled_at),
        "cancelled_by": b.cancelled_by,
        "cancel_reason": b.cancel_reason,
        "answers": {a.id: a.value for a in b.answers},
    }
    if ctx is not None:
        doc["cancel_url"] = cancel_url(ctx, b)
        doc["reschedule_url"] = reschedule_url(ctx, b)
    return doc


def _link_expiry(ctx: BookingContext, b: Booking) -> int:
    return domain.cancel_link_expiry(b.end, b.created_at, timedelta(seconds=ctx.settings.cancel_link_ttl_seconds))


def cancel_url(ctx: BookingContext, b: Booking) -> str:
    """The visitor's signed link to cancel (this booking's cancel endpoint with `exp` and `sig`)."""
    exp = _link_expiry(ctx, b)
    sig = domain.cancel_signature(ctx.link_secret, b.id, exp)
    return ctx.public_url("api", "v1", "bookings", b.id, "cancel") + f"?exp={exp}&sig={sig}"


def reschedule_url(ctx: BookingContext, b: Booking) -> str:
    """The visitor's signed link to reschedule: the reschedule endpoint with `exp` and `sig`, an
    HMAC of its own purpose (a cancel link's signature is refused here, and this one there)."""
    exp = _link_expiry(ctx, b)
    sig = domain.reschedule_signature(ctx.link_secret, b.id, exp)
    return ctx.public_url("api", "v1", "bookings", b.id, "reschedule") + f"?exp={exp}&sig={sig}"


def cancel_page_url(ctx: BookingContext, b: Booking, handle: str) -> str:
    """The page that asks before cancelling (the public booking page with the signed parameters):
    what mails link to, since a link opens with GET and mail scanners follow links."""
    signed = cancel_url(ctx, b).split("?", 1)[1]
    return ctx.public_url(handle, b.page_slug) + f"?booking={b.id}&{signed}"


def reschedule_page_url(ctx: BookingContext, b: Booking, handle: str) -> str:
    """The booking page opened to move this booking (the reschedule link's signed parameters): what
    the visitor's mails link to; picking a time there POSTs to the reschedule endpoint."""
    signed = reschedule_url(ctx, b).split("?", 1)[1]
    return ctx.public_url(handle, b.page_slug) + f"?reschedule={b.id}&{signed}"


@dataclass(frozen=True)
class BookSlot:
    handle: str | None
    slug: str
    start: str
    name: str
    email: str
    notes: str = ""
    timezone: str | None = None
    #: The hold this booking confirms (its slot stays taken throughout).
    hold_id: str | None = None
    #: question id -> a string, or a boolean for a checkbox (checked against the page's questions).
    answers: Mapping[str, Any] = field(default_factory=dict)


SLOT_UNAVAILABLE = Problem(409, "slot_unavailable", "This time is no longer available; pick another slot.")
VERIFICATION_EXPIRED = Problem(409, "verification_expired",
                               "This verification link has expired and the time was released; book again.")
#: Bookings that were never answered as booked (pending), or never verified: nobody's booking.
UNANSWERED = frozenset({"pending", "pending_verification", "expired"})
HOLD_EXPIRED = Problem(409, "hold_expired", "The hold on this slot has expired; pick a slot again.")


def _invalid_hold() -> Problem:
    return Problem(422, "invalid_hold", "hold_id names no hold of this slot.",
                   errors=[FieldError("hold_id", "names no hold of this slot")])


def _refusal(problem: Problem) -> Answer:
    return Answer(problem.status, _json.encode(problem.body()), PROBLEM_JSON)


def booking_description(b: Booking) -> str:
    """The calendar event's description: who booked, their notes, and one "label: value" line per
    answered question."""
    description = f"Booked by {b.name} <{b.email}> via CalMesh."
    if b.notes:
        description += f"\n\n{b.notes}"
    if b.answers:
        description += "\n\n" + "\n".join(f"{a.label}: {a.text()}" for a in b.answers)
    return description


def booking_event_title(b: Booking) -> str:
    return f"{b.title}: {b.name}"


def _confirmation(ctx: BookingContext, b: Booking) -> dict[str, Any]:
    return {"id": b.id, "status": "confirmed", "start": rfc3339(b.start), "end": rfc3339(b.end),
            "cancel_url": cancel_url(ctx, b), "reschedule_url": reschedule_url(ctx, b)}


def _booking_created(b: Booking) -> BookingCreated:
    return BookingCreated(
        booking_id=b.id, page_id=b.page_id, page_slug=b.page_slug, user_id=b.user_id, calendar_slug=b.calendar_slug,
        title=b.title, start=b.start, end=b.end, name=b.name, email=b.email, notes=b.notes, timezone=b.timezone,
        created_at=b.created_at, answers={a.id: a.value for a in b.answers},
    )


def reserve_key(b: Booking) -> str:
    """The Idempotency-Key of entering `b` at its current time: the same for a repeat of that step,
    another for a reschedule (a new sequence, or a new time under a sequence given back)."""
    return f"booking-reserve:{b.id}:{b.sequence}:{rfc3339(b.start)}"


async def _reserve(ctx: BookingContext, calendar: CalendarInfo, b: Booking, *, key: str,
                   replaces: list[str] | None = None) -> None:
    """Enter the booking's time into the projection through sync (no transaction is open here)."""
    target = calendar.write_target()
    if target is None:
        log.warning("booking_without_write_target", booking_id=b.id, calendar_slug=b.calendar_slug)
        return
    await ctx.sync.reserve(b.id, user_id=b.user_id, connection_id=target.connection_id,
                           calendar_id=target.calendar_id, title=booking_event_title(b), start=b.start, end=b.end,
                           description=booking_description(b), replaces=replaces, idempotency_key=key)


async def confirm_booking(ctx: BookingContext, conn: asyncpg.Connection, booking_id: str) -> Booking | None:
    """Pending → confirmed, with its booking.created event and the answer kept for its
    Idempotency-Key (the request's second transaction, or the reaper's). None: not pending."""
    async with conn.transaction():
        row = await ctx.store.confirm_pending(conn, booking_id)
        if row is None:
            return None
        b = await ctx.store.get_booking(conn, booking_id)
        assert b is not None
        # A verified booking's stream starts with its booking.verification_requested.
        verified = row["verify_until"] is not None
        await ctx.events.append(conn, b.id, None if verified else 0, [_booking_created(b)], user_id=b.user_id)
        # A verified booking's request was answered "pending_verification", and that answer stays
        # what its key replays: the cancel links are the mailbox owner's, not the requester's.
        if row["request_key"] is not None and not verified:
            await ctx.store.keys.complete(conn, row["request_scope"], row["request_key"],
                                          answer(201, _confirmation(ctx, b)))
    return b


async def release_booking(ctx: BookingContext, conn: asyncpg.Connection, booking_id: str,
                          hold_id: str | None = None) -> None:
    """Forget a pending booking that was never answered (its key with it; its hold active again)."""
    async with conn.transaction():
        row = await ctx.store.release_pending(conn, booking_id)
        if row is not None and row["request_key"] is not None and not row["verified"]:
            await ctx.store.keys.release(conn, row["request_scope"], row["request_key"])
        if hold_id is not None:
            await ctx.store.set_hold_status(conn, hold_id, "active", only_from="confirmed")


async def book(ctx: BookingContext, cmd: BookSlot, caller: Caller | None, *, key: str | None, request_hash: str) -> Answer:
    """Book a slot: exactly one of any number of racing requests for it wins (201); the others get
    409 `slot_unavailable`. Bookings that could clash are serialised by transaction-level advisory
    locks on the owner's hours, and the slot is re-checked against live busy time under them.

    Busy at once: the first transaction stores the booking as pending (this context's own slot
    checks count it from then on); then, with no transaction open, sync enters its time into the
    merged-events projection (every other read path sees it from then on); a second transaction
    confirms it and appends booking.created. Only then the 201. If sync cannot be reached, the
    pending booking is released and the answer is 503 with Retry-After."""
    if caller is not None:
        require_scope(caller, BOOK_SCOPES, "book")
    errors = []
    try:
        start = parse_instant(cmd.start)
    except ValueError as exc:
        raise Problem(400, "validation_error", str(exc), errors=[FieldError("start", str(exc))]) from None
    # A name is one line (it goes into mail headers and calendar invitations).
    name, email, notes = " ".join(cmd.name.split()), cmd.email.strip(), cmd.notes.strip()
    if not 1 <= len(name) <= 200:
        errors.append(FieldError("name", "must be 1 to 200 characters"))
    if not domain.valid_email(email):
        errors.append(FieldError("email", "is not an email address"))
    if len(notes) > 5000:
        errors.append(FieldError("notes", "must be at most 5000 characters"))
    hold_id = cmd.hold_id
    # One pooled connection for the whole request (each release costs a round trip to reset it).
    async with ctx.pool.acquire() as conn:
        if cmd.handle:
            page = await ctx.store.public_page_for_booking(conn, cmd.handle.lower(), cmd.slug, start)
            if page is None:
                raise not_found("booking page")
            taken = page["taken"]
        else:
            page = await _public_page(ctx, conn, cmd.handle, cmd.slug, caller)
            taken = False
        # The answers are checked against the page's questions (with name and email, in one 422).
        answers, found = domain.check_answers(domain.questions_of(parse_json(page["questions"])), cmd.answers)
        errors.extend(FieldError(f, m) for f, m in found)
        if errors:
            raise Problem(422, "validation_error", "; ".join(f"{e.field} {e.message}" for e in errors), errors=errors)
        if start.second or start.microsecond:
            if hold_id:
                raise _invalid_hold()
            return _refusal(SLOT_UNAVAILABLE)
        visitor_tz = _zone_param(cmd.timezone, page["timezone"], "timezone")
        rules = ctx.rules(page)
        end = start + rules.duration
        # Fast refusal outside the locks for the losers of a race (a keyed retry must see its answer).
        if taken and key is None and hold_id is None:
            return _refusal(SLOT_UNAVAILABLE)
        calendar = await calendar_of_page(ctx, page)
        q_lo, q_hi = domain.busy_query_range(rules, start, start + timedelta(seconds=1))
        starts_after = None
        if ctx.busy_cache is not None:
            starts_after = await ctx.busy_cache.earliest_start(
                conn, user_id=page["user_id"], sources=calendar.source_keys, start=q_lo, end=q_hi)
        scope = f"book:{page['id']}"

        async def reserve(conn: asyncpg.Connection) -> Answer | Booking | Unverified:
            await ctx.store.lock_owner_time(conn, page["user_id"], start - rules.buffer_before,
                                            end + rules.buffer_after)
            now = ctx.clock()
            if hold_id is not None:
                hold = await ctx.store.get_hold(conn, hold_id, lock=True)
                if hold is None or hold["page_id"] != page["id"] or hold["start_at"] != start \
                        or hold["status"] == "released":
                    raise _invalid_hold()
                if hold["status"] == "confirmed":
                    return _refusal(SLOT_UNAVAILABLE)
                if hold["status"] == "expired" or hold["expires_at"] <= now:
                    return _refusal(HOLD_EXPIRED)
                if hold["booking_id"] is not None:  # it keeps the slot of a booking awaiting verification
                    return _refusal(SLOT_UNAVAILABLE)
            spans = await ctx.store.busy_spans(
                conn, user_id=page["user_id"], sources=calendar.source_keys, calendar_tz=calendar.tz,
                start=q_lo, end=q_hi, starts_after=starts_after, now=now, excluding=[hold_id] if hold_id else (),
            )
            if not domain.is_offered(rules, start, now, BusyTime(spans=spans)):
                return _refusal(SLOT_UNAVAILABLE)
            verify_until = None
            if page["require_email_verification"]:
                verify_until = (now + timedelta(seconds=ctx.settings.booking_verification_seconds)).replace(microsecond=0)
            booking = Booking(
                id=new_id("bk"), page_id=page["id"], page_slug=page["slug"], user_id=page["user_id"],
                calendar_slug=page["calendar_slug"], title=page["title"], start=start, end=end, name=name,
                email=email, notes=notes, timezone=visitor_tz.key,
                status="pending" if verify_until is None else "pending_verification",
                created_at=now.replace(microsecond=0), verify_until=verify_until, answers=answers,
            )
            await ctx.store.insert_booking(conn, booking, request_scope=scope if key else None, request_key=key)
            if verify_until is not None:
                # The slot is kept by a hold (busy everywhere at once, freed by the hold timer)
                # until the visitor verifies; the visitor's own hold, if they booked with one.
                kept = hold_id or new_id("hold")
                if hold_id is None:
                    await ctx.store.insert_hold(conn, {"id": kept, "page_id": page["id"], "user_id": page["user_id"],
                                                       "start_at": start, "end_at": end, "expires_at": verify_until,
                                                       "created_at": now})
                await ctx.store.keep_hold_for(conn, kept, booking.id, verify_until)
                return Unverified(booking, kept, fresh=hold_id is None)
            if hold_id is not None:
                await ctx.store.set_hold_status(conn, hold_id, "confirmed", booking_id=booking.id)
            return booking

        async def first_transaction() -> Answer | Booking | Unverified:
            # The key is claimed here and answered in the second transaction (confirm_booking): a
            # repeat in between is 409 idempotency_in_progress.
            check_key(key)
            async with conn.transaction():
                if key is not None:
                    stored = await ctx.store.keys.claim(conn, scope, key, request_hash)
                    if stored is not None:
                        return stored
                result = await reserve(conn)
                if isinstance(result, Answer) and key is not None:
                    await ctx.store.keys.settle(conn, scope, key, result)
                return result

        result: Answer | Booking | Unverified | None = None
        for attempt in range(3):
            try:
                result = await first_transaction()
                break
            except asyncpg.UniqueViolationError:
                # The locks make this unreachable; the unique index is the belt behind the braces.
                return _refusal(SLOT_UNAVAILABLE)
            except asyncpg.DeadlockDetectedError:
                # Only possible when two owners' lock keys collide by hash; the transaction rolled back.
                log.warning("booking_deadlock_retry", attempt=attempt, page_id=page["id"])
        if result is None:
            raise Problem(503, "busy", "Too many bookings at once; try again.", headers=retry_after(1))
        if isinstance(result, Answer):
            return result
        if isinstance(result, Unverified):
            return await _await_verification(ctx, conn, calendar, page, result, scope=scope, key=key)
        booking = result
        try:
            await _reserve(ctx, calendar, booking, key=reserve_key(booking), replaces=[hold_id] if hold_id else None)
        except (DependencyUnavailable, PermanentFailure) as exc:
            try:
                # The entry may have landed with its answer lost: take it back before forgetting.
                await ctx.sync.release(booking.id, user_id=booking.user_id,
                                       idempotency_key=f"booking-release:{booking.id}:unconfirmed")
            except (DependencyUnavailable, PermanentFailure):
                log.warning("booking_left_pending", booking_id=booking.id)  # the reaper settles it
                raise unavailable(exc) from None
            await release_booking(ctx, conn, booking.id, hold_id)
            raise unavailable(exc) from None
        confirmed = await confirm_booking(ctx, conn, booking.id)
        if confirmed is None:  # the reaper was quicker (a very slow request): it confirmed or released
            current = await ctx.store.get_booking(conn, booking.id)
            if current is None:
                raise unavailable(RuntimeError("the booking was released meanwhile"))
            confirmed = current
        return answer(201, _confirmation(ctx, confirmed))


# --- visitor e-mail verification -------------------------------------------------------------------


@dataclass(frozen=True)
class Unverified:
    """A booking stored as pending_verification, and the hold keeping its slot (`fresh`: made for it)."""

    booking: Booking
    hold_id: str
    fresh: bool


def verify_url(ctx: BookingContext, b: Booking) -> str:
    """The signed link the verification mail carries: the verify endpoint with `exp` (when the
    slot's hold ends) and `sig`, an HMAC of its own purpose (no cancel or reschedule link works here)."""
    assert b.verify_until is not None
    exp = int(b.verify_until.timestamp())
    sig = domain.cancel_signature(ctx.link_secret, b.id, exp, "verify")
    return ctx.public_url("api", "v1", "bookings", b.id, "verify") + f"?exp={exp}&sig={sig}"


def _pending_answer(b: Booking) -> dict[str, Any]:
    assert b.verify_until is not None
    return {"id": b.id, "status": "pending_verification", "start": rfc3339(b.start), "end": rfc3339(b.end),
            "expires_at": rfc3339(b.verify_until)}


async def _await_verification(ctx: BookingContext, conn: asyncpg.Connection, calendar: CalendarInfo,
                              page: asyncpg.Record, pending: Unverified, *, scope: str, key: str | None) -> Answer:
    """Second half of a booking on a page that requires verification: the hold's time enters the
    projection through sync (busy everywhere before the answer), then booking.verification_requested
    (the verification mail) is appended with the 201 `pending_verification` answer."""
    b = pending.booking
    target = calendar.write_target()
    try:
        if pending.fresh and target is not None:
            await ctx.sync.reserve(pending.hold_id, user_id=b.user_id, connection_id=target.connection_id,
                                   calendar_id=target.calendar_id, title=f"Held: {page['title']}", start=b.start,
                                   end=b.end, idempotency_key=f"hold-reserve:{pending.hold_id}")
    except (DependencyUnavailable, PermanentFailure) as exc:
        try:
            await ctx.sync.release(pending.hold_id, user_id=b.user_id, idempotency_key=f"hold-release:{pending.hold_id}")
        except (DependencyUnavailable, PermanentFailure):
            pass  # the hold expires anyway; the timer releases it again
        async with conn.transaction():
            row = await ctx.store.forget_unverified(conn, b.id)
            if pending.fresh:
                await ctx.store.set_hold_status(conn, pending.hold_id, "released", only_from="active")
            else:
                await ctx.store.keep_hold_for(conn, pending.hold_id, None, b.verify_until)  # type: ignore[arg-type]
            if row is not None and row["request_key"] is not None:
                await ctx.store.keys.release(conn, row["request_scope"], row["request_key"])
        raise unavailable(exc) from None
    result = answer(201, _pending_answer(b))
    async with conn.transaction():
        assert b.verify_until is not None
        await ctx.events.append(conn, b.id, 0, [BookingVerificationRequested(
            booking_id=b.id, page_id=b.page_id, user_id=b.user_id, start=b.start, end=b.end,
            expires_at=b.verify_until)], user_id=b.user_id)
        if key is not None:
            await ctx.store.keys.complete(conn, scope, key, result)
    ctx.hold_timer.poke()
    return result


async def _drop_unverified(ctx: BookingContext, conn: asyncpg.Connection, b: Booking) -> None:
    """An unverified booking that can no longer be verified: `expired`, its slot free at once."""
    hold = await ctx.store.hold_of_booking(conn, b.id)
    if hold is not None and hold["status"] == "active":
        try:
            await ctx.sync.release(hold["id"], user_id=b.user_id, idempotency_key=f"hold-release:{hold['id']}")
        except (DependencyUnavailable, PermanentFailure) as exc:
            log.warning("hold_release_failed", hold_id=hold["id"], error=str(exc))  # the hold timer retries
        else:
            await ctx.store.set_hold_status(conn, hold["id"], "expired", only_from="active")
    await ctx.store.expire_unverified(conn, b.id)


async def verify_booking(ctx: BookingContext, booking_id: str, *, sig: str | None, exp: str | None) -> dict[str, Any]:
    """The visitor opened the verification link: the held booking is confirmed as any booking is
    (its time moves from the hold to the booking in the projection, then booking.created: the
    provider event, the confirmation mails, the webhook). A second call answers the same; a wrong
    signature is 403; an expired link or hold is 409 `verification_expired` (and the slot is free)."""
    if sig is None and exp is None:
        raise Problem(401, "unauthorized", "Use the verification link from the mail.")
    why = domain.verify_cancel_signature(ctx.link_secret, booking_id, exp or "", sig or "", ctx.clock(), "verify")
    if why is not None and why != "expired":
        raise Problem(403, "invalid_signature", "This verification link is not valid.")
    async with ctx.pool.acquire() as conn:
        b = await ctx.store.get_booking(conn, booking_id)
        if b is None or b.verify_until is None:
            raise not_found("booking")
        if b.status == "confirmed":
            return _confirmation(ctx, b)  # a second click on the link
        if b.status == "cancelled":
            raise Problem(409, "booking_cancelled", "This booking is cancelled.")
        if b.status == "pending":
            raise _in_flight()
        if b.status == "expired" or why == "expired":
            await _drop_unverified(ctx, conn, b)
            raise VERIFICATION_EXPIRED
        page = await ctx.store.page_by_id(conn, b.page_id)
        if page is None:
            await _drop_unverified(ctx, conn, b)
            raise Problem(409, "slot_unavailable", "The booking's page no longer exists.")
        rules = ctx.rules(page)
        calendar = await calendar_of_page(ctx, page)
        q_lo, q_hi = domain.busy_query_range(rules, b.start, b.start + timedelta(seconds=1))
        outcome, hold_id = "verified", ""
        async with conn.transaction():
            await ctx.store.lock_owner_time(conn, b.user_id, b.start - rules.buffer_before, b.end + rules.buffer_after)
            current = await ctx.store.get_booking(conn, b.id, lock=True)
            hold = await ctx.store.hold_of_booking(conn, b.id, lock=True)
            now = ctx.clock()
            if current is None or current.status != "pending_verification":
                outcome = "raced"
            elif hold is None or hold["status"] != "active" or hold["expires_at"] <= now:
                outcome = "expired"
            else:
                hold_id = hold["id"]
                spans = await ctx.store.busy_spans(
                    conn, user_id=b.user_id, sources=calendar.source_keys, calendar_tz=calendar.tz, start=q_lo,
                    end=q_hi, now=now, excluding=[hold_id],
                )
                if not domain.is_offered(rules, b.start, now, BusyTime(spans=spans)):
                    outcome = "unavailable"
                else:
                    await ctx.store.start_verified(conn, b.id)
                    await ctx.store.set_hold_status(conn, hold_id, "confirmed", only_from="active")
        if outcome == "raced":
            return await verify_booking(ctx, booking_id, sig=sig, exp=exp)  # answers what the other one did
        if outcome != "verified":
            await _drop_unverified(ctx, conn, b)
            raise VERIFICATION_EXPIRED if outcome == "expired" else SLOT_UNAVAILABLE
        # A verification that fails here may be tried again (the booking waits for it again): each
        # try is its own step, so a later try never gets an earlier try's answer.
        attempt = new_id("try")
        try:
            await _reserve(ctx, calendar, b, key=f"{reserve_key(b)}:{attempt}", replaces=[hold_id])
        except (DependencyUnavailable, PermanentFailure) as exc:
            try:
                await ctx.sync.release(b.id, user_id=b.user_id, idempotency_key=f"booking-release:{b.id}:{attempt}")
            except (DependencyUnavailable, PermanentFailure):
                log.warning("booking_left_pending", booking_id=b.id)  # the reaper settles it
                raise unavailable(exc) from None
            await release_booking(ctx, conn, b.id, hold_id)  # waiting for verification again
            raise unavailable(exc) from None
        confirmed = await confirm_booking(ctx, conn, b.id)
        if confirmed is None:
            confirmed = await ctx.store.get_booking(conn, b.id)
            if confirmed is None or confirmed.status != "confirmed":
                raise unavailable(RuntimeError("the booking was settled meanwhile"))
        log.info("booking_verified", booking_id=b.id)
        return _confirmation(ctx, confirmed)


async def settle_pending_bookings(ctx: BookingContext) -> int:
    """The reaper: a booking left pending by a process that died between its two transactions is
    confirmed when its time reached the projection, else released. Returns how many it settled."""
    older_than = ctx.clock() - timedelta(seconds=ctx.settings.booking_pending_timeout_seconds)
    settled = 0
    async with ctx.pool.acquire() as conn:
        for b in await ctx.store.stale_pending(conn, older_than):
            try:
                row = await ctx.sync.reservation(b.id, user_id=b.user_id)
            except (DependencyUnavailable, PermanentFailure) as exc:
                log.warning("pending_booking_unsettled", booking_id=b.id, error=str(exc))
                continue
            if row is not None:
                await confirm_booking(ctx, conn, b.id)
                log.info("pending_booking_confirmed", booking_id=b.id)
            else:
                hold = await conn.fetchval(f"SELECT id FROM {ctx.store.schema}.holds WHERE booking_id = $1", b.id)
                await release_booking(ctx, conn, b.id, hold)
                log.info("pending_booking_released", booking_id=b.id)
            settled += 1
    return settled


async def get_booking(ctx: BookingContext, caller: Caller, booking_id: str) -> dict[str, Any]:
    require_scope(caller, READ_SCOPES, "read")
    async with ctx.pool.acquire() as conn:
        b = await ctx.store.get_booking(conn, booking_id)
    if b is None or b.user_id != caller.user_id or b.status in UNANSWERED:
        raise not_found("booking")
    return booking_resource(b, ctx)


def _instant_param(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        when = parse_date_or_instant(value)
    except ValueError:
        raise Problem(400, "validation_error", f"`{name}` must be an RFC 3339 date-time.",
                      errors=[FieldError(name, "must be an RFC 3339 date-time")]) from None
    return when if isinstance(when, datetime) else datetime.combine(when, datetime.min.time(), tzinfo=UTC)


async def list_bookings(
    ctx: BookingContext, caller: Caller, *, status: str | None, start: str | None, end: str | None,
    limit: int | None, cursor: str | None,
) -> dict[str, Any]:
    require_scope(caller, READ_SCOPES, "read")
    if status is not None and status not in ("confirmed", "cancelled"):
        raise Problem(400, "validation_error", "status must be confirmed or cancelled.",
                      errors=[FieldError("status", "must be confirmed or cancelled")])
    s, e = _instant_param(start, "start"), _instant_param(end, "end")
    if s is not None and e is not None:
        _range_problem(s, e, inclusive_days=False)
    return await _list_page(
        ctx, caller, limit, cursor,
        lambda conn, after, n: ctx.store.list_bookings(conn, caller.user_id, status=status, start=s, end=e, after=after, limit=n),
        lambda b: booking_resource(b, ctx), lambda b: (b.start, b.id),
    )


def _link_actor(ctx: BookingContext, booking_id: str, caller: Caller | None, sig: str | None, exp: str | None,
                purpose: str) -> str:
    """Who acts on a booking: the visitor holding a signed link of `purpose`, or the owner."""
    if sig is not None or exp is not None:
        why = domain.verify_cancel_signature(ctx.link_secret, booking_id, exp or "", sig or "", ctx.clock(), purpose)
        if why is not None:
            raise Problem(403, "invalid_signature",
                          f"This {purpose} link is expired or not valid." if why == "expired"
                          else f"This {purpose} link is not valid.")
        return "visitor"
    if caller is not None:
        require_scope(caller, BOOK_SCOPES, "book")
        return "owner"
    raise Problem(401, "unauthorized", f"Sign in, use an API key, or use the {purpose} link from the confirmation.")


async def cancel_booking(
    ctx: BookingContext, booking_id: str, *, caller: Caller | None, sig: str | None, exp: str | None, reason: str
) -> dict[str, Any]:
    """Cancel as the owner, or as the visitor holding the signed link; a second cancel answers the
    same. The time is free everywhere before the answer: the booking's row in the projection is
    released through sync (the provider event is deleted later, by the calendar consumer)."""
    by = _link_actor(ctx, booking_id, caller, sig, exp, "cancel")
    if len(reason) > 1000:
        raise Problem(422, "validation_error", "reason must be at most 1000 characters.",
                      errors=[FieldError("reason", "must be at most 1000 characters")])
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            b = await ctx.store.get_booking(conn, booking_id, lock=True)
            if b is None or b.status in UNANSWERED or (by == "owner" and caller is not None and b.user_id != caller.user_id):
                raise not_found("booking")
            if b.status != "cancelled":
                now = ctx.clock().replace(microsecond=0)
                b = await ctx.store.mark_cancelled(conn, b.id, now, by, reason)
                await ctx.events.append(
                    conn, b.id, None,
                    [BookingCancelled(
                        booking_id=b.id, page_id=b.page_id, page_slug=b.page_slug, user_id=b.user_id,
                        calendar_slug=b.calendar_slug, title=b.title, start=b.start, end=b.end, name=b.name,
                        email=b.email, cancelled_by=by, reason=reason, timezone=b.timezone, cancelled_at=now,
                    )],
                    user_id=b.user_id,
                )
        if ctx.busy_cache is not None:
            ctx.busy_cache.forget_user(b.user_id)  # this replica at once; the others on the event
        # Repeated on a second cancel too: the release is idempotent, and a first answer may have
        # been a 503 that left the row in place.
        try:
            await ctx.sync.release(b.id, user_id=b.user_id, idempotency_key=f"booking-release:{b.id}:cancelled")
        except (DependencyUnavailable, PermanentFailure) as exc:
            raise unavailable(exc) from None
    return booking_resource(b, ctx)


async def cancel_link_booking(ctx: BookingContext, booking_id: str, sig: str, exp: str,
                              purpose: str = "cancel") -> Booking:
    """The booking a (valid) cancel or reschedule link names, for the page a mail link opens."""
    why = domain.verify_cancel_signature(ctx.link_secret, booking_id, exp, sig, ctx.clock(), purpose)
    if why is not None:
        raise Problem(403, "invalid_signature", f"This {purpose} link is expired or not valid.")
    async with ctx.pool.acquire() as conn:
        b = await ctx.store.get_booking(conn, booking_id)
    if b is None or b.status in UNANSWERED:
        raise not_found("booking")
    return b


# --- rescheduling --------------------------------------------------------------------------------


async def reschedule_booking(
    ctx: BookingContext, booking_id: str, *, caller: Caller | None, sig: str | None, exp: str | None, start_text: str,
) -> dict[str, Any]:
    """Move a booking to another offered slot (its own old time counts as free): same id, new start
    and end. The projection row moves before the answer (old time free, new busy); the provider
    event is moved in place by the calendar consumer, on booking.rescheduled."""
    by = _link_actor(ctx, booking_id, caller, sig, exp, "reschedule")
    try:
        start = parse_instant(start_text)
    except ValueError as exc:
        raise Problem(400, "validation_error", str(exc), errors=[FieldError("start", str(exc))]) from None
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            b = await ctx.store.get_booking(conn, booking_id, lock=True)
            if b is None or b.status in UNANSWERED or (by == "owner" and caller is not None and b.user_id != caller.user_id):
                raise not_found("booking")
            if b.status == "cancelled":
                raise Problem(409, "booking_cancelled", "This booking is cancelled; it cannot be rescheduled.")
            page = await ctx.store.page_by_id(conn, b.page_id)
            if page is None:
                raise Problem(409, "slot_unavailable", "The booking's page no longer exists; no slot can be offered.")
            if start == b.start:
                return booking_resource(b, ctx)
            rules = ctx.rules(page)
            end = start + rules.duration
            if start.second or start.microsecond:
                raise SLOT_UNAVAILABLE
            calendar = await calendar_of_page(ctx, page)
            await ctx.store.lock_owner_time(conn, b.user_id, start - rules.buffer_before, end + rules.buffer_after)
            now = ctx.clock()
            q_lo, q_hi = domain.busy_query_range(rules, start, start + timedelta(seconds=1))
            spans = await ctx.store.busy_spans(
                conn, user_id=b.user_id, sources=calendar.source_keys, calendar_tz=calendar.tz, start=q_lo, end=q_hi,
                now=now, excluding=[b.id],
            )
            if not domain.is_offered(rules, start, now, BusyTime(spans=spans)):
                raise SLOT_UNAVAILABLE
            previous = b
            try:
                b = await ctx.store.move_booking(conn, b.id, start, end, b.sequence + 1)
            except asyncpg.UniqueViolationError:
                raise SLOT_UNAVAILABLE from None
        try:
            await _reserve(ctx, calendar, b, key=reserve_key(b))
        except (DependencyUnavailable, PermanentFailure) as exc:
            async with conn.transaction():
                current = await ctx.store.get_booking(conn, b.id, lock=True)
                if current is not None and current.start == start and current.sequence == b.sequence:
                    await ctx.store.move_booking(conn, b.id, previous.start, previous.end, previous.sequence)
            raise unavailable(exc) from None
        if ctx.busy_cache is not None:
            ctx.busy_cache.forget_user(b.user_id)
        async with conn.transaction():
            await ctx.events.append(
                conn, b.id, None,
                [BookingRescheduled(
                    booking_id=b.id, page_id=b.page_id, page_slug=b.page_slug, user_id=b.user_id,
                    calendar_slug=b.calendar_slug, title=b.title, start=b.start, end=b.end, name=b.name,
                    email=b.email, timezone=b.timezone, previous_start=previous.start, previous_end=previous.end,
                    rescheduled_by=by, sequence=b.sequence, rescheduled_at=ctx.clock().replace(microsecond=0),
                )],
                user_id=b.user_id,
            )
    return booking_resource(b, ctx)


# --- holds ---------------------------------------------------------------------------------------


def hold_resource(hold: asyncpg.Record) -> dict[str, Any]:
    return {"id": hold["id"], "start": rfc3339(hold["start_at"]), "end": rfc3339(hold["end_at"]),
            "expires_at": rfc3339(hold["expires_at"])}


def hold_lifetime(ctx: BookingContext, page: asyncpg.Record) -> timedelta:
    if ctx.settings.hold_seconds_override > 0:
        return timedelta(seconds=ctx.settings.hold_seconds_override)
    return timedelta(minutes=page["hold_minutes"])


async def create_hold(ctx: BookingContext, *, handle: str | None, slug: str, start_text: str, caller: Caller | None,
                      key: str | None, request_hash: str) -> Answer:
    """Hold an offered slot for the page's hold_minutes: busy everywhere at once, like a booking."""
    if caller is not None:
        require_scope(caller, BOOK_SCOPES, "book")
    try:
        start = parse_instant(start_text)
    except ValueError as exc:
        raise Problem(400, "validation_error", str(exc), errors=[FieldError("start", str(exc))]) from None
    async with ctx.pool.acquire() as conn:
        page = await _public_page(ctx, conn, handle, slug, caller)
        rules = ctx.rules(page)
        end = start + rules.duration
        if start.second or start.microsecond:
            return _refusal(SLOT_UNAVAILABLE)
        calendar = await calendar_of_page(ctx, page)
        q_lo, q_hi = domain.busy_query_range(rules, start, start + timedelta(seconds=1))
        hold_id = new_id("hold")

        async def work(conn: asyncpg.Connection) -> Answer:
            await ctx.store.lock_owner_time(conn, page["user_id"], start - rules.buffer_before,
                                            end + rules.buffer_after)
            now = ctx.clock()
            spans = await ctx.store.busy_spans(conn, user_id=page["user_id"], sources=calendar.source_keys,
                                               calendar_tz=calendar.tz, start=q_lo, end=q_hi, now=now)
            if not domain.is_offered(rules, start, now, BusyTime(spans=spans)):
                return _refusal(SLOT_UNAVAILABLE)
            hold = {"id": hold_id, "page_id": page["id"], "user_id": page["user_id"], "start_at": start,
                    "end_at": end, "expires_at": (now + hold_lifetime(ctx, page)).replace(microsecond=0),
                    "created_at": now}
            await ctx.store.insert_hold(conn, hold)
            return answer(201, hold_resource(hold))  # type: ignore[arg-type]

        result = await idempotent(ctx, scope=f"hold:{page['id']}", key=key, request_hash=request_hash, work=work,
                                  conn=conn)
        if result.status != 201 or result.replayed:
            return result
        target = calendar.write_target()
        try:
            if target is not None:
                await ctx.sync.reserve(hold_id, user_id=page["user_id"], connection_id=target.connection_id,
                                       calendar_id=target.calendar_id, title=f"Held: {page['title']}", start=start,
                                       end=end, idempotency_key=f"hold-reserve:{hold_id}")
        except (DependencyUnavailable, PermanentFailure) as exc:
            try:
                await ctx.sync.release(hold_id, user_id=page["user_id"], idempotency_key=f"hold-release:{hold_id}")
            except (DependencyUnavailable, PermanentFailure):
                pass  # the hold expires anyway; the expiry timer releases it again
            await ctx.store.set_hold_status(conn, hold_id, "released", only_from="active")
            raise unavailable(exc) from None
        ctx.hold_timer.poke()
        return result


async def release_hold(ctx: BookingContext, *, handle: str | None, slug: str, hold_id: str,
                       caller: Caller | None) -> None:
    """Release a hold (204); an unknown id, or a hold of another page, is 404."""
    if caller is not None:
        require_scope(caller, BOOK_SCOPES, "book")
    async with ctx.pool.acquire() as conn:
        page = await _public_page(ctx, conn, handle, slug, caller)
        async with conn.transaction():
            hold = await ctx.store.get_hold(conn, hold_id, lock=True)
            if hold is None or hold["page_id"] != page["id"]:
                raise not_found("hold")
            if hold["status"] != "active":
                return  # confirmed holds are the booking's now; released and expired ones are free
            await ctx.store.set_hold_status(conn, hold_id, "released")
        try:
            await ctx.sync.release(hold_id, user_id=hold["user_id"], idempotency_key=f"hold-release:{hold_id}")
        except (DependencyUnavailable, PermanentFailure) as exc:
            raise unavailable(exc) from None


async def expire_due_holds(ctx: BookingContext) -> int:
    """Free the time of every hold past its expiry (its row leaves the projection); how many."""
    expired = 0
    async with ctx.pool.acquire() as conn:
        for hold in await ctx.store.due_holds(conn, ctx.clock()):
            try:
                await ctx.sync.release(hold["id"], user_id=hold["user_id"], idempotency_key=f"hold-release:{hold['id']}")
            except (DependencyUnavailable, PermanentFailure) as exc:
                log.warning("hold_release_failed", hold_id=hold["id"], error=str(exc))
                continue
            if await ctx.store.set_hold_status(conn, hold["id"], "expired", only_from="active"):
                expired += 1
            if hold["booking_id"] is not None and await ctx.store.expire_unverified(conn, hold["booking_id"]):
                log.info("unverified_booking_expired", booking_id=hold["booking_id"])
    return expired


class HoldTimer:
    """One timer for every hold: it sleeps until the earliest expiry in the expiry index (or until
    a new hold pokes it), expires what is due, and sleeps again. No polling loop per hold. The
    same timer settles bookings left pending by a dead process (the reaper)."""

    def __init__(self, max_sleep: float = 10.0) -> None:
        self.max_sleep = max_sleep
        self._wake = asyncio.Event()

    def poke(self) -> None:
        self._wake.set()

    async def run(self, ctx: BookingContext) -> None:
        while True:
            sleep = self.max_sleep
            try:
                await expire_due_holds(ctx)
                await settle_pending_bookings(ctx)
                async with ctx.pool.acquire() as conn:
                    nxt = await ctx.store.next_hold_expiry(conn)
                if nxt is not None:
                    sleep = min(sleep, max(0.05, (nxt - ctx.clock()).total_seconds()))
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                log.warning("hold_timer_failed", error=repr(exc))
            except Exception:  # noqa: BLE001 - the one timer must outlive any one failure; it says so
                log.exception("hold_timer_error")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=sleep)
            except TimeoutError:
                pass


# --- polls ---------------------------------------------------------------------------------------


def poll_resource(ctx: BookingContext, poll: asyncpg.Record, options: list[Any]) -> dict[str, Any]:
    return {
        "id": poll["id"],
        "title": poll["title"],
        "status": poll["status"],
        "duration_minutes": poll["duration_minutes"],
        "calendar_slug": poll["calendar_slug"],
        "deadline": rfc3339_or_none(poll["deadline"]),
        "options": [{"id": o["id"], "start": rfc3339(o["start_at"]), "end": rfc3339(o["end_at"])} for o in options],
        "vote_url": ctx.public_url("api", "v1", "polls", poll["id"], "votes") + f"?token={poll['token']}",
        "vote_page_url": ctx.public_url("polls", poll["id"], "vote") + f"?token={poll['token']}",
        "decided_option_id": poll["decided_option_id"],
        "event_id": poll["event_id"],
        "created_at": rfc3339(poll["created_at"]),
    }


async def create_poll(ctx: BookingContext, caller: Caller, fields: dict[str, Any], *, key: str | None, request_hash: str) -> Answer:
    require_scope(caller, BOOK_SCOPES, "book")
    errors: list[FieldError] = []
    duration = timedelta(minutes=fields["duration_minutes"])
    options: list[tuple[str, datetime, datetime]] = []
    if not 1 <= len(fields["options"]) <= 100:
        errors.append(FieldError("options", "must hold 1 to 100 options"))
    for i, o in enumerate(fields["options"]):
        try:
            s = parse_instant(o["start"])
            e = parse_instant(o["end"]) if o.get("end") else s + duration
        except ValueError as exc:
            raise Problem(400, "validation_error", f"options[{i}]: {exc}",
                          errors=[FieldError(f"options[{i}]", str(exc))]) from None
        if e <= s:
            errors.append(FieldError(f"options[{i}].end", "is not after start"))
        options.append((new_id("opt"), s, e))
    if len({(s, e) for _, s, e in options}) != len(options):
        errors.append(FieldError("options", "holds the same option twice"))
    deadline = None
    if fields.get("deadline"):
        try:
            deadline = parse_instant(fields["deadline"])
        except ValueError as exc:
            raise Problem(400, "validation_error", str(exc), errors=[FieldError("deadline", str(exc))]) from None
    if errors:
        raise Problem(422, "validation_error", "; ".join(f"{e.field} {e.message}" for e in errors), errors=errors)
    if fields.get("calendar_slug"):
        await _check_calendar(ctx, caller.user_id, fields["calendar_slug"])

    async def work(conn: asyncpg.Connection) -> Answer:
        poll_id = new_id("poll")
        poll = {"id": poll_id, "user_id": caller.user_id, "title": fields["title"],
                "duration_minutes": fields["duration_minutes"], "calendar_slug": fields.get("calendar_slug"),
                "deadline": deadline, "token": secrets.token_urlsafe(24)}
        await ctx.store.insert_poll(conn, poll, options)
        await ctx.events.append(
            conn, poll_id, 0,
            [PollCreated(poll_id=poll_id, user_id=caller.user_id, title=poll["title"],
                         duration_minutes=poll["duration_minutes"], option_ids=[o[0] for o in options],
                         calendar_slug=poll["calendar_slug"], deadline=deadline)],
            user_id=caller.user_id,
        )
        row = await ctx.store.get_poll(conn, poll_id)
        return answer(201, poll_resource(ctx, row, await ctx.store.poll_options(conn, poll_id)))

    return await idempotent(ctx, scope=f"poll:{caller.user_id}", key=key, request_hash=request_hash, work=work)


async def _owned_poll(ctx: BookingContext, conn: asyncpg.Connection, caller: Caller, poll_id: str, *, lock: bool = False) -> asyncpg.Record:
    poll = await ctx.store.get_poll(conn, poll_id, lock=lock)
    if poll is None or poll["user_id"] != caller.user_id:
        raise not_found("poll")
    return poll


async def get_poll(ctx: BookingContext, caller: Caller | None, poll_id: str, token: str | None) -> dict[str, Any]:
    async with ctx.pool.acquire() as conn:
        poll = await ctx.store.get_poll(conn, poll_id)
        if poll is None:
            raise not_found("poll")
        if token is not None and hmac.compare_digest(token.encode(), poll["token"].encode()):
            pass  # a voter holding the link
        elif caller is None:
            raise Problem(401, "unauthorized", "Authentication or the poll's token is required.")
        else:
            require_scope(caller, READ_SCOPES, "read")
            if poll["user_id"] != caller.user_id:
                raise not_found("poll")
        return poll_resource(ctx, poll, await ctx.store.poll_options(conn, poll_id))


async def list_polls(ctx: BookingContext, caller: Caller, limit: int | None, cursor: str | None) -> dict[str, Any]:
    options: dict[str, list[Any]] = {}

    async def fetch(conn: asyncpg.Connection, after: tuple[datetime, str] | None, n: int) -> list[Any]:
        rows = await ctx.store.list_polls(conn, caller.user_id, after, n)
        for o in await ctx.store.poll_options_many(conn, [r["id"] for r in rows[:n - 1]]):
            options.setdefault(o["poll_id"], []).append(o)
        return rows

    return await _list_page(ctx, caller, limit, cursor, fetch, lambda r: poll_resource(ctx, r, options.get(r["id"], [])))


def _poll_closed() -> Problem:
    return Problem(409, "poll_closed", "This poll is decided (or past its deadline) and takes no more votes.")


async def vote(
    ctx: BookingContext, poll_id: str, *, caller: Caller | None, token: str | None, name: str, email: str | None,
    choices: dict[str, str], key: str | None, request_hash: str,
) -> Answer:
    name = name.strip()
    email = email.strip() if email else None
    errors = []
    if not 1 <= len(name) <= 200:
        errors.append(FieldError("name", "must be 1 to 200 characters"))
    if email is not None and not domain.valid_email(email):
        errors.append(FieldError("email", "is not an email address"))
    bad = [c for c in choices.values() if c not in domain.CHOICES]
    if bad:
        raise Problem(400, "validation_error", "Each choice is yes, maybe or no.",
                      errors=[FieldError("choices", "each choice is yes, maybe or no")])

    async def work(conn: asyncpg.Connection) -> Answer:
        poll = await conn.fetchrow(
            f"SELECT id, user_id, token, status, deadline FROM {ctx.store.schema}.polls WHERE id = $1 FOR SHARE", poll_id
        )
        if poll is None:
            raise not_found("poll")
        if token is not None:
            if not hmac.compare_digest(token.encode(), poll["token"].encode()):
                raise Problem(403, "invalid_token", "This poll link is not valid.")
        elif caller is None:
            raise Problem(401, "unauthorized", "Authentication or the poll's token is required.")
        else:
            require_scope(caller, BOOK_SCOPES, "book")
            if caller.user_id != poll["user_id"]:
                raise not_found("poll")
        if poll["status"] != "open" or (poll["deadline"] is not None and poll["deadline"] <= ctx.clock()):
            raise _poll_closed()
        option_ids = {o["id"] for o in await ctx.store.poll_options(conn, poll_id)}
        unknown = sorted(set(choices) - option_ids)
        if unknown:
            errors.append(FieldError(f"choices.{unknown[0]}", "is not an option of this poll"))
        if errors:
            raise Problem(422, "validation_error", "; ".join(f"{e.field} {e.message}" for e in errors), errors=errors)
        voter_key = (email or name).lower()
        row = await ctx.store.upsert_vote(conn, vote_id=new_id("vote"), poll_id=poll_id, voter_key=voter_key,
                                          name=name, email=email, choices=choices)
        await ctx.events.append(
            conn, poll_id, None,
            [PollVoted(poll_id=poll_id, user_id=poll["user_id"], vote_id=row["id"], name=name, email=email,
                       choices=dict(choices))],
            user_id=poll["user_id"],
        )
        return answer(201, {"id": row["id"], "poll_id": poll_id, "name": row["name"], "email": row["email"],
                            "choices": parse_json(row["choices"]), "created_at": rfc3339(row["created_at"]),
                            "updated_at": rfc3339(row["updated_at"])})

    return await idempotent(ctx, scope=f"vote:{poll_id}", key=key, request_hash=request_hash, work=work)


async def _calendar_busy(ctx: BookingContext, conn: asyncpg.Connection, user_id: str, calendar_slug: str | None,
                         start: datetime, end: datetime) -> BusyTime:
    if not calendar_slug:
        return BusyTime()
    try:
        calendar = await ctx.calendars.get(user_id, calendar_slug)
    except CalendarNotFound:
        return BusyTime()
    except DependencyUnavailable as exc:
        raise unavailable(exc) from None
    spans = await ctx.store.busy_spans(conn, user_id=user_id, sources=calendar.source_keys, calendar_tz=calendar.tz,
                                       start=start, end=end)
    return BusyTime(spans=spans)


async def overlap(ctx: BookingContext, caller: Caller, poll_id: str) -> dict[str, Any]:
    require_scope(caller, READ_SCOPES, "read")
    async with ctx.pool.acquire() as conn:
        poll = await _owned_poll(ctx, conn, caller, poll_id)
        option_rows = await ctx.store.poll_options(conn, poll_id)
        votes = await ctx.store.poll_votes(conn, poll_id)
        options = [domain.PollOption(o["id"], o["start_at"], o["end_at"]) for o in option_rows]
        busy = BusyTime()
        if options:
            busy = await _calendar_busy(ctx, conn, caller.user_id, poll["calendar_slug"],
                                        min(o.start for o in options), max(o.end for o in options))
    tallies = domain.tally(options, [domain.Vote(v["name"], parse_json(v["choices"])) for v in votes], busy)
    return {
        "poll_id": poll_id,
        "status": poll["status"],
        "options": [
            {"option_id": t.option_id, "start": rfc3339(t.start), "end": rfc3339(t.end), "yes": t.yes,
             "maybe": t.maybe, "no": t.no, "available": t.available, "if_need_be": t.if_need_be,
             "calendar_busy": t.calendar_busy}
            for t in tallies
        ],
        "best_option_id": domain.best_option(tallies),
    }


async def decide(ctx: BookingContext, caller: Caller, poll_id: str, option_id: str) -> dict[str, Any]:
    """Choose an option: the event is created on the poll's calendar and the poll closes. Deciding
    again on the same option answers the same; on another option, 409 `poll_closed`.

    No transaction is open while sync writes the event: the poll is read (and checked) in one
    transaction, the event written under an Idempotency-Key derived from poll and option (a repeat
    of the decision writes nothing twice), and the decision recorded in a second transaction. A
    racing decision for another option that recorded first wins; this one's event is deleted."""
    require_scope(caller, BOOK_SCOPES, "book")
    async with ctx.pool.acquire() as conn:
        async with conn.transaction():
            poll = await _owned_poll(ctx, conn, caller, poll_id, lock=True)
            if poll["status"] == "decided":
                if poll["decided_option_id"] == option_id:
                    return {"status": "decided", "option_id": option_id, "event_id": poll["event_id"]}
                raise _poll_closed()
            option = next((o for o in await ctx.store.poll_options(conn, poll_id) if o["id"] == option_id), None)
            if option is None:
                raise Problem(422, "validation_error", "option_id is not an option of this poll.",
                              errors=[FieldError("option_id", "is not an option of this poll")])
            votes = await ctx.store.poll_votes(conn, poll_id) if poll["calendar_slug"] else []
        event_id = None
        if poll["calendar_slug"]:
            attendees = sorted({v["email"] for v in votes if v["email"]
                                and parse_json(v["choices"]).get(option_id) in ("yes", "maybe")}, key=str.lower)
            event_id = await _write_poll_event(ctx, caller, poll, option, attendees)
        async with conn.transaction():
            current = await _owned_poll(ctx, conn, caller, poll_id, lock=True)
            if current["status"] == "decided":
                if current["decided_option_id"] == option_id:
                    return {"status": "decided", "option_id": option_id, "event_id": current["event_id"]}
                lost = True
            else:
                lost = False
                now = ctx.clock()
                await ctx.store.mark_poll_decided(conn, poll_id, option_id, event_id, now)
                await ctx.events.append(
                    conn, poll_id, None,
                    [PollDecided(poll_id=poll_id, user_id=caller.user_id, option_id=option_id,
                                 start=option["start_at"], end=option["end_at"], title=poll["title"],
                                 calendar_slug=poll["calendar_slug"], event_id=event_id)],
                    user_id=caller.user_id,
                )
    if lost:
        if event_id is not None:
            try:
                await ctx.sync.delete(user_id=caller.user_id, event_id=event_id,
                                      idempotency_key=f"poll-event-delete:{poll_id}:{option_id}")
            except (DependencyUnavailable, PermanentFailure) as exc:
                log.warning("poll_event_left_behind", poll_id=poll_id, event_id=event_id, error=str(exc))
        raise _poll_closed()
    return {"status": "decided", "option_id": option_id, "event_id": event_id}


async def _write_poll_event(ctx: BookingContext, caller: Caller, poll: asyncpg.Record, option: asyncpg.Record,
                            attendees: list[str]) -> str:
    try:
        calendar = await ctx.calendars.get(caller.user_id, poll["calendar_slug"], fresh=True)
    except CalendarNotFound:
        raise Problem(409, "calendar_not_found", "The poll's calendar no longer exists.") from None
    except DependencyUnavailable as exc:
        raise unavailable(exc) from None
    target = calendar.write_target()
    if target is None:
        raise Problem(409, "calendar_read_only", "The poll's calendar has no writable source.")
    try:
        event = await ctx.sync.create(
            user_id=caller.user_id, connection_id=target.connection_id, calendar_id=target.calendar_id,
            title=poll["title"], start=option["start_at"], end=option["end_at"],
            description=f"Decided by poll {poll['id']}.", attendees=attendees or None, timezone=calendar.timezone,
            idempotency_key=f"poll-event:{poll['id']}:{option['id']}",
        )
    except DependencyUnavailable as exc:
        raise unavailable(exc) from None
    except PermanentFailure as exc:
        raise Problem(409, "calendar_write_failed", f"The calendar refused the event: {exc.detail}") from None
    return str(event["id"])
