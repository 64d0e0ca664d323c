"""Durable consumers of the booking service (exactly-once effects, retries, dead letters).

- ``booking-calendar``: writes a confirmed booking's event to its calendar's write target through
  sync (and deletes it when the booking is cancelled), storing sync's event id on the booking.
- ``booking-mail``: mails the visitor and the owner a confirmation (iCalendar REQUEST) or a
  cancellation (CANCEL).
- ``booking-verify-mail``: mails the visitor of a page with ``require_email_verification`` the signed
  link that confirms their booking (booking.verification_requested).

Mails to a visitor's address count against ``CALMESH_MAIL_PER_PAGE_PER_HOUR`` and
``CALMESH_MAIL_PER_RECIPIENT_PER_DAY``: past either, the mail is suppressed (logged and counted),
the booking is not touched.
- ``booking-users``: keeps handle, email, name and timezone of users from the gateway's
  ``user.signed_up`` events (the owner's address for mails, the handle for public pages).

None of them is on a booking's request path: a booking is confirmed, and blocks its time, before any
of them runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg

from calmesh_common.consumer import ConsumerSpec, Handler, PoisonMessage
from calmesh_common.events import Envelope, decode_event, subject_for
from calmesh_common.events.booking import (
    BookingCalendarEventWritten,
    BookingCalendarWriteFailed,
    BookingCancelled,
    BookingCreated,
    BookingRescheduled,
    BookingVerificationRequested,
)
from calmesh_common.events.gateway import UserSignedUp
from calmesh_common.logging import get_logger
from calmesh_common.streams import stream_name

from .clients import FOR_GOOD, CalendarNotFound, PermanentFailure
from .domain import Booking
from .handlers.bookings import (
    booking_description,
    booking_event_title,
    cancel_page_url,
    cancel_url,
    reschedule_page_url,
    reschedule_url,
    verify_url,
)
from .handlers.context import BookingContext
from .mail import Mail, Mailer, Person, UndeliverableAddress, booking_mails, verification_mail

log = get_logger(__name__)

BOOKING_SUBJECTS = (
    subject_for(BookingCreated.type_name(), "booking"),
    subject_for(BookingCancelled.type_name(), "booking"),
    subject_for(BookingRescheduled.type_name(), "booking"),
)


class ContextRef:
    """The consumers are declared before the lifespan has built the context; they wait for it here."""

    def __init__(self, ctx: BookingContext | None = None) -> None:
        self._ctx = ctx
        self._ready = asyncio.Event()
        if ctx is not None:
            self._ready.set()

    def set(self, ctx: BookingContext) -> None:
        self._ctx = ctx
        self._ready.set()

    async def get(self) -> BookingContext:
        await self._ready.wait()
        assert self._ctx is not None
        return self._ctx


def calendar_consumer(ref: ContextRef, schema: str, name: str = "booking-calendar") -> tuple[ConsumerSpec, Handler]:
    # Not transactional: a handler waits on sync and the provider, and holds no transaction or row
    # lock meanwhile; every sync call it makes is idempotent (Idempotency-Key, derived UID), so a
    # redelivery after a crash finds the existing event instead of writing a second one.
    # A short ack_wait: a booking service that crashed mid-write leaves its messages to another
    # replica (or its restart) after 6 s, not 60; a live handler keeps its message with in-progress
    # acks however long sync takes.
    spec = ConsumerSpec(name=name, stream=stream_name("booking"), filter_subjects=BOOKING_SUBJECTS,
                        schema=schema, batch=4, ack_wait=6.0, max_deliver=10,
                        backoff=(1.0, 2.0, 5.0, 15.0, 60.0, 300.0), transactional=False)

    async def handle(conn: asyncpg.Connection, envelope: Envelope) -> None:
        ctx = await ref.get()
        event = decode_event(envelope)
        if isinstance(event, BookingCreated):
            await write_booking_event(ctx, conn, event.booking_id)
        elif isinstance(event, BookingCancelled):
            await remove_booking_event(ctx, conn, event.booking_id)
        elif isinstance(event, BookingRescheduled):
            await move_booking_event(ctx, conn, event.booking_id)

    return spec, handle


async def write_booking_event(ctx: BookingContext, conn: asyncpg.Connection, booking_id: str) -> None:
    """Create the calendar event of a confirmed booking that has none yet.

    The provider is called with no transaction open; "written" (the event id on the booking, and
    booking.calendar_event_written) is recorded only after it answered, in a short transaction that
    re-reads the booking under its row lock: a booking cancelled meanwhile has its event deleted at
    once instead (the cancellation found none to delete)."""
    b = await ctx.store.get_booking(conn, booking_id)
    if b is None:
        raise PoisonMessage(f"booking {booking_id} does not exist here")
    if b.status != "confirmed" or b.event_id:
        return
    if b.calendar_write_error:
        return  # failed for good already: not retried
    try:
        calendar = await ctx.calendars.get(b.user_id, b.calendar_slug)
    except CalendarNotFound:
        await record_write_failure(ctx, conn, b, "calendar_gone",
                                   f"The unified calendar {b.calendar_slug!r} no longer exists.")
        return
    target = calendar.write_target()
    if target is None:
        # Read fresh before giving up: a source added a moment ago counts.
        calendar = await ctx.calendars.get(b.user_id, b.calendar_slug, fresh=True)
        target = calendar.write_target()
    if target is None:
        await record_write_failure(ctx, conn, b, "no_writable_source",
                                   f"The unified calendar {b.calendar_slug!r} has no writable source.")
        return
    try:
        # The UID derives from the booking, and the key makes a repeat (a redelivery, a crash after
        # the provider answered) get the first answer: one provider event.
        event = await ctx.sync.create(
            user_id=b.user_id, connection_id=target.connection_id, calendar_id=target.calendar_id,
            title=booking_event_title(b), start=b.start, end=b.end, description=booking_description(b),
            attendees=[b.email], timezone=calendar.timezone, booking_id=b.id,
            idempotency_key=f"booking-event:{b.id}:{b.sequence}",
        )
    except PermanentFailure as exc:
        kind = FOR_GOOD.get(exc.code, "refused")
        await record_write_failure(ctx, conn, b, kind, exc.detail, connection_id=target.connection_id,
                                   calendar_id=target.calendar_id)
        return
    event_id = str(event["id"])
    async with conn.transaction():
        current = await ctx.store.get_booking(conn, b.id, lock=True)
        cancelled = current is None or current.status != "confirmed"
        if not cancelled and current is not None and not current.event_id:
            await ctx.store.set_event_id(conn, b.id, event_id)
            await ctx.events.append(conn, b.id, None, [BookingCalendarEventWritten(
                booking_id=b.id, user_id=b.user_id, event_id=event_id)], user_id=b.user_id)
    if cancelled:
        try:
            await ctx.sync.delete(user_id=b.user_id, event_id=event_id,
                                  idempotency_key=f"booking-event-delete:{b.id}:{event_id}")
        except PermanentFailure as exc:
            raise PoisonMessage(f"sync refused to delete the event of cancelled booking {b.id}: {exc}") from None
        log.info("booking_event_removed_after_cancel", booking_id=b.id, event_id=event_id)
        return
    log.info("booking_event_written", booking_id=b.id, event_id=event_id)


async def record_write_failure(ctx: BookingContext, conn: asyncpg.Connection, b: Booking, kind: str, reason: str,
                               *, connection_id: str = "", calendar_id: str = "") -> None:
    """The provider write can never succeed: `calendar_write: failed` with the reason, and
    booking.calendar_write_failed (webhook connection.error when a connection refused). The message
    is then acknowledged: no retries. The booking stands; its reservation keeps its time busy."""
    async with conn.transaction():
        current = await ctx.store.get_booking(conn, b.id, lock=True)
        if current is None or current.event_id or current.calendar_write_error:
            return
        at = datetime.now(UTC)
        await ctx.store.set_calendar_write_failed(conn, b.id, reason, at)
        await ctx.events.append(conn, b.id, None, [BookingCalendarWriteFailed(
            booking_id=b.id, user_id=b.user_id, calendar_slug=b.calendar_slug, kind=kind, reason=reason[:500],
            connection_id=connection_id, calendar_id=calendar_id, at=at)], user_id=b.user_id)
    log.warning("booking_event_write_failed", booking_id=b.id, kind=kind, reason=reason[:200],
                connection_id=connection_id or None)


async def remove_booking_event(ctx: BookingContext, conn: asyncpg.Connection, booking_id: str) -> None:
    """Delete the calendar event of a cancelled booking, if it has one (a repeat delete is a no-op)."""
    b = await ctx.store.get_booking(conn, booking_id)
    if b is None:
        raise PoisonMessage(f"booking {booking_id} does not exist here")
    if b.status != "cancelled":
        return
    try:
        if not b.event_id:
            # Never written (or a write in flight, which deletes its own event on seeing the
            # cancellation): the reservation row goes if no provider event fills it.
            await ctx.sync.release(b.id, user_id=b.user_id, idempotency_key=f"booking-release:{b.id}:cancelled")
            return
        await ctx.sync.delete(user_id=b.user_id, event_id=b.event_id,
                              idempotency_key=f"booking-event-delete:{b.id}:{b.event_id}")
    except PermanentFailure as exc:
        raise PoisonMessage(f"sync refused to delete the event of booking {b.id}: {exc}") from None
    log.info("booking_event_removed", booking_id=b.id, event_id=b.event_id)


async def move_booking_event(ctx: BookingContext, conn: asyncpg.Connection, booking_id: str) -> None:
    """Move the calendar event of a rescheduled booking in place (same UID) to its current time."""
    b = await ctx.store.get_booking(conn, booking_id)
    if b is None:
        raise PoisonMessage(f"booking {booking_id} does not exist here")
    if b.status != "confirmed" or not b.event_id:
        return  # not written yet: the write takes the booking's current time
    try:
        # Keyed by the booking's current sequence and time: a redelivery moves nothing twice.
        moved = await ctx.sync.move(user_id=b.user_id, event_id=b.event_id, start=b.start, end=b.end,
                                    idempotency_key=f"booking-event-move:{b.id}:{b.sequence}:{b.start.isoformat()}")
    except PermanentFailure as exc:
        raise PoisonMessage(f"sync refused to move the event of booking {b.id}: {exc}") from None
    log.info("booking_event_moved", booking_id=b.id, event_id=b.event_id, found=moved is not None)


def mail_consumer(ref: ContextRef, schema: str, mailer: Mailer, name: str = "booking-mail") -> tuple[ConsumerSpec, Handler]:
    spec = ConsumerSpec(name=name, stream=stream_name("booking"), filter_subjects=BOOKING_SUBJECTS,
                        schema=schema, batch=16, ack_wait=60.0, max_deliver=10,
                        backoff=(2.0, 5.0, 15.0, 60.0, 300.0, 900.0))

    async def handle(conn: asyncpg.Connection, envelope: Envelope) -> None:
        ctx = await ref.get()
        event = decode_event(envelope)
        if not isinstance(event, BookingCreated | BookingCancelled | BookingRescheduled):
            return
        b = await ctx.store.get_booking(conn, event.booking_id)
        if b is None:
            raise PoisonMessage(f"booking {event.booking_id} does not exist here")
        previous = None
        # A cancellation's mail carries neither link.
        link: str | None = None
        move: str | None = None
        if isinstance(event, BookingRescheduled):
            # The mail tells the move this event made (a later one mails its own).
            b = replace(_as_confirmed(b), start=event.start, end=event.end, sequence=event.sequence)
            previous = (event.previous_start, event.previous_end)
            page = await ctx.store.page_by_id(conn, b.page_id)
            link = cancel_page_url(ctx, b, page["handle"]) if page else cancel_url(ctx, b)
            move = reschedule_page_url(ctx, b, page["handle"]) if page else reschedule_url(ctx, b)
        elif isinstance(event, BookingCreated):
            # The mail tells what was booked, even if it was cancelled meanwhile (a cancellation follows).
            b = _as_confirmed(b)
            page = await ctx.store.page_by_id(conn, b.page_id)
            link = cancel_page_url(ctx, b, page["handle"]) if page else cancel_url(ctx, b)
            move = reschedule_page_url(ctx, b, page["handle"]) if page else reschedule_url(ctx, b)
        user = await ctx.store.get_user(conn, b.user_id)
        owner = Person(
            name=(user["name"] or user["handle"] or "your host") if user else "your host",
            email=(user["email"] or "") if user else "",
            timezone=(user["timezone"] or "") if user else "",
        )
        if not owner.timezone:
            page = await ctx.store.page_by_id(conn, b.page_id)
            owner = Person(owner.name, owner.email, page["timezone"] if page else "UTC")
        if not owner.email:
            log.warning("booking_owner_email_unknown", booking_id=b.id, user_id=b.user_id)
        try:
            mails = booking_mails(b, owner=owner, settings=ctx.settings, cancel_url=link,
                                  reschedule_url=move, cause_id=envelope.id, now=envelope.occurred_at or datetime.now(UTC),
                                  previous=previous)
        except UndeliverableAddress as exc:
            log.warning("booking_mail_undeliverable", booking_id=b.id, error=str(exc))
            return
        for mail in mails:
            await send_limited(ctx, conn, mailer, mail, page_id=b.page_id, booking_id=b.id)

    return spec, handle


def verification_mail_consumer(ref: ContextRef, schema: str, mailer: Mailer,
                               name: str = "booking-verify-mail") -> tuple[ConsumerSpec, Handler]:
    """The verification mail of a booking awaiting it (a durable consumer of its own: one subject)."""
    spec = ConsumerSpec(name=name, stream=stream_name("booking"),
                        filter_subjects=(subject_for(BookingVerificationRequested.type_name(), "booking"),),
                        schema=schema, batch=16, ack_wait=60.0, max_deliver=10,
                        backoff=(2.0, 5.0, 15.0, 60.0, 300.0, 900.0))

    async def handle(conn: asyncpg.Connection, envelope: Envelope) -> None:
        ctx = await ref.get()
        event = decode_event(envelope)
        if not isinstance(event, BookingVerificationRequested):
            return
        b = await ctx.store.get_booking(conn, event.booking_id)
        if b is None:
            return  # never answered (its hold could not be entered): nothing to verify
        if b.status != "pending_verification" or b.verify_until is None:
            return  # verified, expired or cancelled meanwhile: the link would not work
        user = await ctx.store.get_user(conn, b.user_id)
        owner_name = (user["name"] or user["handle"] or "your host") if user else "your host"
        try:
            mail = verification_mail(b, owner_name=owner_name, settings=ctx.settings, verify_url=verify_url(ctx, b),
                                     expires_at=b.verify_until, cause_id=envelope.id,
                                     now=envelope.occurred_at or datetime.now(UTC))
        except UndeliverableAddress as exc:
            log.warning("booking_mail_undeliverable", booking_id=b.id, error=str(exc))
            return
        await send_limited(ctx, conn, mailer, mail, page_id=b.page_id, booking_id=b.id)

    return spec, handle


async def send_limited(ctx: BookingContext, conn: asyncpg.Connection, mailer: Mailer, mail: Mail, *,
                       page_id: str, booking_id: str) -> bool:
    """Send `mail`, unless it goes to a visitor's address and the page's hourly or the address's
    daily count is spent: then it is suppressed (logged, counted) and False. Runs in the consumer's
    transaction: the count row commits with the event's tracking row, and a failed send rolls both
    back. A redelivered event finds its mail counted already and sends it again."""
    if not mail.visitor:
        await mailer.send(mail)
        _count(ctx, mail.kind, "sent")
        return True
    s = ctx.settings
    recipient = mail.to.strip().lower()
    await ctx.store.lock_mail_counts(conn, page_id, recipient)
    if not await ctx.store.mail_sent(conn, mail.stem):
        now = ctx.clock()
        per_page, per_recipient = await ctx.store.mail_counts(
            conn, page_id=page_id, recipient=recipient, page_since=now - timedelta(hours=1),
            recipient_since=now - timedelta(days=1))
        over = None
        if s.mail_per_page_per_hour and per_page >= s.mail_per_page_per_hour:
            over = "per_page_per_hour"
        elif s.mail_per_recipient_per_day and per_recipient >= s.mail_per_recipient_per_day:
            over = "per_recipient_per_day"
        if over is not None:
            log.warning("booking_mail_suppressed", booking_id=booking_id, page_id=page_id, kind=mail.kind, limit=over)
            _count(ctx, mail.kind, "suppressed")
            return False
        await ctx.store.record_mail(conn, mail_id=mail.stem, page_id=page_id, recipient=recipient, kind=mail.kind,
                                    at=now)
    await mailer.send(mail)
    _count(ctx, mail.kind, "sent")
    return True


def _count(ctx: BookingContext, kind: str, outcome: str) -> None:
    if ctx.count_mail is not None:
        ctx.count_mail(kind, outcome)


def _as_confirmed(b: Booking) -> Booking:
    return replace(b, status="confirmed", cancelled_at=None, cancelled_by=None, cancel_reason=None)


def users_consumer(ref: ContextRef, schema: str, name: str = "booking-users") -> tuple[ConsumerSpec, Handler]:
    spec = ConsumerSpec(name=name, stream=stream_name("gateway"),
                        filter_subjects=(subject_for(UserSignedUp.type_name(), "gateway"),), schema=schema)

    async def handle(conn: asyncpg.Connection, envelope: Envelope) -> None:
        ctx = await ref.get()
        event = decode_event(envelope)
        if isinstance(event, UserSignedUp):
            await ctx.store.upsert_user(conn, event.user_id, handle=event.handle, email=event.email,
                                        name=event.name or None, timezone=event.timezone or None)

    return spec, handle
