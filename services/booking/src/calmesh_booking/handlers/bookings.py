"""Bookings: book (pending, reserved through sync, confirmed), visitor e-mail verification, the
reaper of pending bookings, read and list, cancel, reschedule, the signed links, holds and the
one hold timer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from calmesh_common.events.booking import (
    BookingCancelled,
    BookingCreated,
    BookingRescheduled,
    BookingVerificationRequested,
)
from calmesh_common.idempotency import Answer, check_key
from calmesh_common.ids import new_id
from calmesh_common.logging import get_logger
from calmesh_common.problems import FieldError, Problem, not_found
from calmesh_common.retryafter import retry_after
from calmesh_common.service import Caller
from calmesh_common.timefmt import parse_date_or_instant, rfc3339, rfc3339_or_none

from .. import domain
from ..clients import CalendarInfo, DependencyUnavailable, PermanentFailure
from ..domain import Booking, BusyTime
from ..store import parse_json
from .context import (
    BOOK_SCOPES,
    READ_SCOPES,
    BookingContext,
    answer,
    calendar_of_page,
    idempotent,
    instant_param,
    list_page,
    range_problem,
    refusal,
    require_scope,
    unavailable,
    validation_problem,
    zone_param,
)

log = get_logger(__name__)


def _in_flight() -> Problem:
    """A verification whose booking is between its two transactions (another click of the link)."""
    return Problem(409, "request_in_progress", "The first request for this booking is still being answered; "
                   "retry in a moment.", headers=retry_after(1))


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
        b = ctx.store.booking_of(row)
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
    start = instant_param(cmd.start, "start")
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
            raise validation_problem(errors)
        if start.second or start.microsecond:
            if hold_id:
                raise _invalid_hold()
            return refusal(SLOT_UNAVAILABLE)
        visitor_tz = zone_param(cmd.timezone, page["timezone"], "timezone")
        rules = ctx.rules(page)
        end = start + rules.duration
        # Fast refusal outside the locks for the losers of a race (a keyed retry must see its answer).
        if taken and key is None and hold_id is None:
            return refusal(SLOT_UNAVAILABLE)
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
                    return refusal(SLOT_UNAVAILABLE)
                if hold["status"] == "expired" or hold["expires_at"] <= now:
                    return refusal(HOLD_EXPIRED)
                if hold["booking_id"] is not None:  # it keeps the slot of a booking awaiting verification
                    return refusal(SLOT_UNAVAILABLE)
            spans = await ctx.store.busy_spans(
                conn, user_id=page["user_id"], sources=calendar.source_keys, calendar_tz=calendar.tz,
                start=q_lo, end=q_hi, starts_after=starts_after, now=now, excluding=[hold_id] if hold_id else (),
            )
            if not domain.is_offered(rules, start, now, BusyTime(spans=spans)):
                return refusal(SLOT_UNAVAILABLE)
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
                return refusal(SLOT_UNAVAILABLE)
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
                hold = await ctx.store.hold_of_booking(conn, b.id)
                await release_booking(ctx, conn, b.id, hold["id"] if hold is not None else None)
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


def _date_or_instant_param(value: str | None, name: str) -> datetime | None:
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
    s, e = _date_or_instant_param(start, "start"), _date_or_instant_param(end, "end")
    if s is not None and e is not None:
        range_problem(s, e, inclusive_days=False)
    return await list_page(
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


async def reschedule_booking(
    ctx: BookingContext, booking_id: str, *, caller: Caller | None, sig: str | None, exp: str | None, start_text: str,
) -> dict[str, Any]:
    """Move a booking to another offered slot (its own old time counts as free): same id, new start
    and end. The projection row moves before the answer (old time free, new busy); the provider
    event is moved in place by the calendar consumer, on booking.rescheduled."""
    by = _link_actor(ctx, booking_id, caller, sig, exp, "reschedule")
    start = instant_param(start_text, "start")
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
    start = instant_param(start_text, "start")
    async with ctx.pool.acquire() as conn:
        page = await _public_page(ctx, conn, handle, slug, caller)
        rules = ctx.rules(page)
        end = start + rules.duration
        if start.second or start.microsecond:
            return refusal(SLOT_UNAVAILABLE)
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
                return refusal(SLOT_UNAVAILABLE)
            hold = {"id": hold_id, "page_id": page["id"], "user_id": page["user_id"], "start_at": start,
                    "end_at": end, "expires_at": (now + hold_lifetime(ctx, page)).replace(microsecond=0),
                    "created_at": now}
            await ctx.store.insert_hold(conn, hold)
            return answer(201, hold_resource(hold))

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


async def run_hold_timer(ctx: BookingContext) -> None:
    """The one timer for every hold: expire what is due, settle bookings left pending by a dead
    process (the reaper), then sleep until the earliest expiry in the expiry index (or until a new
    hold pokes `ctx.hold_timer`), and again."""
    timer = ctx.hold_timer
    while True:
        sleep = timer.max_sleep
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
        await timer.sleep(sleep)
