"""What several handler modules share: the `BookingContext` the lifespan builds, scopes and the
problems they raise, the Idempotency-Key wrapper, a page's slot rules and calendar, list pages."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import msgspec

from calmesh_common.cursors import AwareDatetime, decode_cursor, encode_cursor
from calmesh_common.eventstore import EventStore
from calmesh_common.idempotency import Answer
from calmesh_common.logging import get_logger
from calmesh_common.problems import PROBLEM_JSON, FieldError, Problem
from calmesh_common.retryafter import retry_after
from calmesh_common.service import Caller
from calmesh_common.settings import Settings
from calmesh_common.timefmt import parse_instant

from .. import domain
from ..busy import ProjectionCache
from ..clients import CalendarInfo, CalendarNotFound, Calendars, DependencyUnavailable, SyncEvents
from ..domain import RuleError, SlotRules
from ..store import BookingStore, parse_json

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


class HoldTimer:
    """The wake-up of the one hold timer (`bookings.run_hold_timer`): it sleeps until the earliest
    expiry in the expiry index, or until a new hold pokes it. No polling loop per hold."""

    def __init__(self, max_sleep: float = 10.0) -> None:
        self.max_sleep = max_sleep
        self._wake = asyncio.Event()

    def poke(self) -> None:
        self._wake.set()

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds`, or until the next poke (a poke before this call is already served)."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass


def answer(status: int, doc: Any) -> Answer:
    return Answer(status, _json.encode(doc))


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


#: Both ends of a range: two dates or two instants.
When = TypeVar("When", date, datetime)


def range_problem(start: When, end: When, *, inclusive_days: bool) -> None:
    if end < start:
        raise Problem(422, "invalid_range", "`end` is before `start`.")
    span = (end - start).days + (1 if inclusive_days else 0)
    if span > domain.MAX_RANGE_DAYS or (not inclusive_days and end - start > timedelta(days=domain.MAX_RANGE_DAYS)):
        raise Problem(422, "range_too_long", f"A range spans at most {domain.MAX_RANGE_DAYS} days.")


def validation_problem(errors: Sequence[FieldError]) -> Problem:
    """422 `validation_error` naming the field of every broken rule."""
    return Problem(422, "validation_error", "; ".join(f"{e.field} {e.message}" for e in errors), errors=list(errors))


def instant_param(text: str, field_name: str) -> datetime:
    """An RFC 3339 instant of the request; else 400 `validation_error` naming its field."""
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise Problem(400, "validation_error", str(exc), errors=[FieldError(field_name, str(exc))]) from None


def refusal(problem: Problem) -> Answer:
    return Answer(problem.status, _json.encode(problem.body()), PROBLEM_JSON)


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


async def check_calendar(ctx: BookingContext, user_id: str, slug: str) -> CalendarInfo:
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


def zone_param(name: str | None, default: str, field_name: str = "tz") -> Any:
    try:
        return domain.zone(name or default, field_name)
    except RuleError as exc:
        raise Problem(422, "invalid_timezone", str(exc), errors=[FieldError(exc.field, exc.message)]) from None


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


async def list_page(
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
