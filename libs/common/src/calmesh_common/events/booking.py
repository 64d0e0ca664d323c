"""Events published by the booking context: booking pages, bookings and polls.

Subjects are ``calmesh.booking.<name>`` on the stream ``CALMESH_BOOKING``. The names of the booking
and poll events match the webhook event types (``booking.created``, ``booking.cancelled``,
``booking.rescheduled``,
``poll.voted``, ``poll.decided``) and each carries the resource, so the webhook dispatcher can
deliver ``data`` without asking the booking service. Instants are UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from . import Event


class _BookingEvent(Event, tag=False, frozen=True):
    """The base of the booking context's events (no tag of its own: not an event by itself)."""

    context: ClassVar[str] = "booking"


class _PageEvent(_BookingEvent, tag=False, frozen=True):
    page_id: str
    user_id: str
    slug: str


class _BookingFacts(_BookingEvent, tag=False, frozen=True):
    """What a webhook shows of a booking: the booking, its page and calendar, slot and visitor."""

    booking_id: str
    page_id: str
    page_slug: str
    user_id: str
    calendar_slug: str
    title: str
    start: datetime
    end: datetime
    name: str
    email: str


class _PollEvent(_BookingEvent, tag=False, frozen=True):
    poll_id: str
    user_id: str


class BookingPageCreated(_PageEvent, tag="booking_page.created.v1", frozen=True):
    calendar_slug: str
    title: str
    duration_minutes: int
    timezone: str


class BookingPageUpdated(_PageEvent, tag="booking_page.updated.v1", frozen=True):
    #: The names of the fields that changed.
    changed: list[str] = []


class BookingPageDeleted(_PageEvent, tag="booking_page.deleted.v1", frozen=True):
    """The owner deleted the booking page."""


class BookingCreated(_BookingFacts, tag="booking.created.v1", frozen=True):
    """A visitor booked a slot; the time is blocked from this moment."""

    notes: str = ""
    timezone: str = "UTC"
    status: str = "confirmed"
    created_at: datetime | None = None
    #: The visitor's answers to the page's questions: question id -> a string, or a boolean for a
    #: checkbox (empty for a page without questions, and in events written before questions).
    answers: dict[str, str | bool] = {}


class BookingVerificationRequested(_BookingEvent, tag="booking.verification_requested.v1", frozen=True):
    """A visitor asked to book on a page that requires e-mail verification: the slot is held until
    `expires_at` and the visitor is mailed a signed link (nothing is booked, written or webhooked
    until they open it; then booking.created follows). Not a webhook event."""

    booking_id: str
    page_id: str
    user_id: str
    start: datetime
    end: datetime
    expires_at: datetime


class BookingCancelled(_BookingFacts, tag="booking.cancelled.v1", frozen=True):
    """The owner or the visitor cancelled a booking; its time is free again."""

    cancelled_by: str  # "owner" | "visitor"
    reason: str = ""
    timezone: str = "UTC"
    status: str = "cancelled"
    cancelled_at: datetime | None = None


class BookingRescheduled(_BookingFacts, tag="booking.rescheduled.v1", frozen=True):
    """A booking moved to another slot (same id); its old time is free, the new one busy. The
    provider event is moved in place (same UID)."""

    previous_start: datetime
    previous_end: datetime
    rescheduled_by: str  # "owner" | "visitor"
    timezone: str = "UTC"
    status: str = "confirmed"
    #: The invitation's SEQUENCE after this change (1 for the first reschedule).
    sequence: int = 1
    rescheduled_at: datetime | None = None


class BookingCalendarEventWritten(_BookingEvent, tag="booking.calendar_event_written.v1", frozen=True):
    """The booking's event now exists on the calendar's write target (sync's event id)."""

    booking_id: str
    user_id: str
    event_id: str


class BookingCalendarWriteFailed(_BookingEvent, tag="booking.calendar_write_failed.v1", frozen=True):
    """The booking's provider event can never be written: the provider refused the credentials
    (401/403), the calendar is gone (404), or the calendar has no writable source left. The booking
    stands (its time stays busy in CalMesh) with ``calendar_write: "failed"`` and `reason`; webhook
    ``connection.error`` when a connection is to blame (`connection_id` set)."""

    booking_id: str
    user_id: str
    calendar_slug: str
    #: ``credentials_refused`` | ``calendar_gone`` | ``no_writable_source`` | ``refused``
    kind: str
    reason: str
    connection_id: str = ""
    calendar_id: str = ""
    at: datetime | None = None


class PollCreated(_PollEvent, tag="poll.created.v1", frozen=True):
    title: str
    duration_minutes: int
    option_ids: list[str]
    calendar_slug: str | None = None
    deadline: datetime | None = None


class PollVoted(_PollEvent, tag="poll.voted.v1", frozen=True):
    vote_id: str
    name: str
    email: str | None
    #: option id -> "yes" | "maybe" | "no"
    choices: dict[str, str]


class PollDecided(_PollEvent, tag="poll.decided.v1", frozen=True):
    option_id: str
    start: datetime
    end: datetime
    title: str
    calendar_slug: str | None = None
    event_id: str | None = None
