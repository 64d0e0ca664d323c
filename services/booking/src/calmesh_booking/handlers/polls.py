"""Scheduling polls: create, read, list, vote, the owner's overlap (tallies with calendar busy
time) and the decision that writes the chosen option's event."""

from __future__ import annotations

import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from calmesh_common.events.booking import (
    PollCreated,
    PollDecided,
    PollVoted,
)
from calmesh_common.idempotency import Answer
from calmesh_common.ids import new_id
from calmesh_common.logging import get_logger
from calmesh_common.problems import FieldError, Problem, not_found
from calmesh_common.service import Caller
from calmesh_common.timefmt import parse_instant, rfc3339, rfc3339_or_none

from .. import domain
from ..clients import CalendarNotFound, DependencyUnavailable, PermanentFailure
from ..domain import BusyTime
from ..store import parse_json
from .context import (
    BOOK_SCOPES,
    READ_SCOPES,
    BookingContext,
    answer,
    check_calendar,
    idempotent,
    instant_param,
    list_page,
    require_scope,
    unavailable,
    validation_problem,
)

log = get_logger(__name__)


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
        deadline = instant_param(fields["deadline"], "deadline")
    if errors:
        raise validation_problem(errors)
    if fields.get("calendar_slug"):
        await check_calendar(ctx, caller.user_id, fields["calendar_slug"])

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

    return await list_page(ctx, caller, limit, cursor, fetch, lambda r: poll_resource(ctx, r, options.get(r["id"], [])))


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
        poll = await ctx.store.poll_for_vote(conn, poll_id)
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
            raise validation_problem(errors)
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
