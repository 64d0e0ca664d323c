"""HTTP: litestar controllers and the request/response structs of booking pages, bookings and polls.

Bodies are decoded strictly (a string where a number belongs is a 400, as are unknown fields);
errors are problem details. The handlers module does the work; this one maps HTTP onto it.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.exceptions import ValidationException

from calmesh_common.idempotency import HEADER as IDEMPOTENCY_HEADER
from calmesh_common.idempotency import Answer, request_hash, response
from calmesh_common.problem_handler import problem_handler
from calmesh_common.problems import FieldError, Problem
from calmesh_common.service import Caller, caller_from_headers
from calmesh_common.timefmt import rfc3339

from .assets import ASSETS, IMMUTABLE
from .domain import verify_cancel_signature
from .handlers import bookings, pages, polls
from .handlers.context import BookingContext
from .mail import when_text
from .views import (
    EMBED_JS,
    PAGE_CSP,
    booking_page_html,
    cancel_page_html,
    message_page_html,
    poll_page_html,
    verify_page_html,
)

T = TypeVar("T")

SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
Slug = Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN, description="lowercase letters, digits and dashes")]
Minutes = Annotated[int, msgspec.Meta(ge=0)]
Hours = list[list[str]]


# --- request structs -----------------------------------------------------------------------------


class DateOverride(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    date: date
    #: Empty closes the day.
    hours: Hours = []


class QuestionIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A field the page asks the visitor for. Its rules (checked by the service, 422 naming the
    field, e.g. ``questions[2].id``): `id` 1 to 40 of ``[a-z0-9_]``, unique on the page; `label` 1
    to 200 characters; `options` 1 to 50 strings, for `select` only; at most 20 questions."""

    id: Annotated[str, msgspec.Meta(description="[a-z0-9_]{1,40}, unique on the page; the key of its answer")]
    label: Annotated[str, msgspec.Meta(description="What the visitor is asked (1 to 200 characters)")]
    type: Annotated[str, msgspec.Meta(description="text | textarea | email | phone | select | checkbox")]
    required: bool = False
    #: The choices of a select question (only there).
    options: list[str] | None = None


#: A string, or a boolean for a checkbox question (null: no answer).
AnswerValue = Annotated[str | bool | int | float | None,
                        msgspec.Meta(description="a string, or a boolean for a checkbox question")]


class BookingPageCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    slug: Slug
    calendar_slug: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    duration_minutes: Annotated[int, msgspec.Meta(ge=5, le=1440)]
    timezone: str
    weekly_hours: dict[str, Hours]
    date_overrides: list[DateOverride] = []
    buffer_before_minutes: Minutes = 0
    buffer_after_minutes: Minutes = 0
    min_notice_minutes: Minutes = 0
    max_days_ahead: Annotated[int, msgspec.Meta(ge=1, le=730)] = 60
    #: Default: the duration.
    slot_interval_minutes: Annotated[int, msgspec.Meta(ge=5, le=1440)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=5000)] = ""
    #: How long a hold of this page keeps its slot (POST /booking-pages/{slug}/holds).
    hold_minutes: Annotated[int, msgspec.Meta(ge=1, le=60)] = 10
    #: Bookings wait (status pending_verification, slot held) until the visitor opens the signed
    #: link mailed to the address they gave (POST /bookings/{id}/verify).
    require_email_verification: bool = False
    #: What the booking form asks besides name, email and notes.
    questions: list[QuestionIn] = []


class BookingPageUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    slug: Slug | msgspec.UnsetType = msgspec.UNSET
    calendar_slug: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | msgspec.UnsetType = msgspec.UNSET
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | msgspec.UnsetType = msgspec.UNSET
    duration_minutes: Annotated[int, msgspec.Meta(ge=5, le=1440)] | msgspec.UnsetType = msgspec.UNSET
    timezone: str | msgspec.UnsetType = msgspec.UNSET
    weekly_hours: dict[str, Hours] | msgspec.UnsetType = msgspec.UNSET
    date_overrides: list[DateOverride] | msgspec.UnsetType = msgspec.UNSET
    buffer_before_minutes: Minutes | msgspec.UnsetType = msgspec.UNSET
    buffer_after_minutes: Minutes | msgspec.UnsetType = msgspec.UNSET
    min_notice_minutes: Minutes | msgspec.UnsetType = msgspec.UNSET
    max_days_ahead: Annotated[int, msgspec.Meta(ge=1, le=730)] | msgspec.UnsetType = msgspec.UNSET
    slot_interval_minutes: Annotated[int, msgspec.Meta(ge=5, le=1440)] | msgspec.UnsetType = msgspec.UNSET
    description: Annotated[str, msgspec.Meta(max_length=5000)] | msgspec.UnsetType = msgspec.UNSET
    hold_minutes: Annotated[int, msgspec.Meta(ge=1, le=60)] | msgspec.UnsetType = msgspec.UNSET
    require_email_verification: bool | msgspec.UnsetType = msgspec.UNSET
    #: Replaces the page's questions (bookings keep the answers and labels they were made with).
    questions: list[QuestionIn] | msgspec.UnsetType = msgspec.UNSET


class BookRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: RFC 3339, any offset; must be the start of an offered slot.
    start: str
    name: str
    email: str
    notes: str = ""
    #: The visitor's IANA timezone (for their mails); default the page's.
    timezone: str | None = None
    #: The hold this booking confirms (POST /booking-pages/{slug}/holds): only that hold's id works.
    hold_id: str | None = None
    #: question id -> answer, checked against the page's questions (422 naming ``answers.<id>``:
    #: a missing required answer, an unknown id, a wrong type, a value outside a select's options,
    #: a bad email or phone number, text over 1000 or textarea over 5000 characters).
    answers: Annotated[dict[str, AnswerValue], msgspec.Meta(
        description="question id -> a string, or a boolean for a checkbox question (null or absent: no answer)")] = {}


class HoldRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: RFC 3339, any offset; must be the start of an offered slot.
    start: str


class RescheduleRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    #: RFC 3339, any offset; must be the start of a slot the booking's page offers (its own old
    #: time counts as free).
    start: str


class CancelRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class PollOptionIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    start: str
    #: Default: start + the poll's duration.
    end: str | None = None


class PollCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    duration_minutes: Annotated[int, msgspec.Meta(ge=5, le=1440)]
    options: list[PollOptionIn]
    calendar_slug: str | None = None
    deadline: str | None = None


class VoteRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    choices: dict[str, Literal["yes", "maybe", "no"]]
    email: str | None = None


class DecideRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    option_id: str


# --- response structs (documentation of the JSON the handlers build) -----------------------------


class BookingPage(msgspec.Struct):
    id: str
    slug: str
    calendar_slug: str
    title: str
    description: str
    duration_minutes: int
    slot_interval_minutes: int
    timezone: str
    weekly_hours: dict[str, Hours]
    date_overrides: list[DateOverride]
    buffer_before_minutes: int
    buffer_after_minutes: int
    min_notice_minutes: int
    max_days_ahead: int
    hold_minutes: int
    require_email_verification: bool
    questions: list[QuestionIn]
    public_url: str
    created_at: str
    updated_at: str


class PublicBookingPage(msgspec.Struct):
    """What anyone may read of a page (GET with `handle`): enough to show its booking form."""

    title: str
    description: str
    duration_minutes: int
    timezone: str
    questions: list[QuestionIn]


class BookingPageList(msgspec.Struct):
    data: list[BookingPage]
    next_cursor: str | None


class Slot(msgspec.Struct):
    start: str
    end: str


class Slots(msgspec.Struct):
    timezone: str
    slots: list[Slot]


class BookingConfirmation(msgspec.Struct):
    """`confirmed` with the visitor's signed links; or, on a page with require_email_verification,
    `pending_verification` with `expires_at` (when the held slot is released unless verified)."""

    id: str
    status: Literal["confirmed", "pending_verification"]
    start: str
    end: str
    cancel_url: str | msgspec.UnsetType = msgspec.UNSET
    reschedule_url: str | msgspec.UnsetType = msgspec.UNSET
    expires_at: str | msgspec.UnsetType = msgspec.UNSET


class Hold(msgspec.Struct):
    id: str
    start: str
    end: str
    expires_at: str


class Booking(msgspec.Struct):
    id: str
    status: Literal["confirmed", "cancelled"]
    page_slug: str
    calendar_slug: str
    title: str
    start: str
    end: str
    name: str
    email: str
    notes: str
    timezone: str
    event_id: str | None
    #: The provider event: "written", "pending" (not yet; retried), or "failed" for good (see
    #: calendar_write_error; the booking stands, its time stays busy in CalMesh).
    calendar_write: Literal["written", "pending", "failed"]
    calendar_write_error: str | None
    created_at: str
    cancelled_at: str | None
    cancelled_by: str | None
    cancel_reason: str | None
    #: question id -> the visitor's answer (a string, or a boolean for a checkbox).
    answers: dict[str, str | bool]
    cancel_url: str
    reschedule_url: str


class BookingList(msgspec.Struct):
    data: list[Booking]
    next_cursor: str | None


class PollOption(msgspec.Struct):
    id: str
    start: str
    end: str


class Poll(msgspec.Struct):
    id: str
    title: str
    status: Literal["open", "decided"]
    duration_minutes: int
    calendar_slug: str | None
    deadline: str | None
    options: list[PollOption]
    #: The API endpoint a vote is POSTed to (with the poll's token).
    vote_url: str
    #: The public page where a person given the link votes in the browser (the link to share).
    vote_page_url: str
    decided_option_id: str | None
    event_id: str | None
    created_at: str


class PollList(msgspec.Struct):
    data: list[Poll]
    next_cursor: str | None


class VoteOut(msgspec.Struct):
    id: str
    poll_id: str
    name: str
    email: str | None
    choices: dict[str, str]
    created_at: str
    updated_at: str


class OptionOverlap(msgspec.Struct):
    option_id: str
    start: str
    end: str
    yes: int
    maybe: int
    no: int
    available: list[str]
    if_need_be: list[str]
    calendar_busy: bool


class Overlap(msgspec.Struct):
    poll_id: str
    status: str
    options: list[OptionOverlap]
    best_option_id: str | None


class Decision(msgspec.Struct):
    status: Literal["decided"]
    option_id: str
    event_id: str | None


# --- helpers ---------------------------------------------------------------------------------------

_AT = re.compile(r" - at `\$\.?([^`]*)`$")


def decode(raw: bytes, typ: type[T], *, empty_ok: bool = False) -> T:
    """Strictly decode a JSON body into `typ`; 400 with the field on any mismatch."""
    if not raw.strip():
        if empty_ok:
            raw = b"{}"
        else:
            raise Problem(400, "validation_error", "A JSON body is required.")
    try:
        return msgspec.json.decode(raw, type=typ)
    except msgspec.ValidationError as exc:
        error = _field_error(str(exc), "body")
        raise Problem(400, "validation_error", f"{error.field}: {error.message}", errors=[error]) from None
    except msgspec.DecodeError as exc:
        raise Problem(400, "malformed_json", f"The body is not valid JSON: {exc}") from None


def _field_error(message: str, fallback: str) -> FieldError:
    """A msgspec message ("Expected `int`, got `str` - at `$.x`") as a field error on `x`."""
    m = _AT.search(message)
    where = (m.group(1) or "") if m else ""
    text = _AT.sub("", message)
    named = re.match(r"Object (?:missing required|contains unknown) field `([^`]+)`", text)
    if named:
        where = f"{where}.{named.group(1)}" if where else named.group(1)
    return FieldError(where or fallback, text)


def validation_problem(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    """Body errors found by litestar before a handler runs, named by their field (not `data`)."""
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(item, dict):
            continue
        message, key = str(item.get("message", "invalid value")), str(item.get("key") or "body")
        errors.append(_field_error(message, "body") if key == "data" else FieldError(key, message))
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors) or str(exc.detail or "The request is not valid.")
    return problem_handler(request, Problem(400, "validation_error", detail, errors=errors or None))


EXCEPTION_HANDLERS: dict[Any, Any] = {ValidationException: validation_problem}


def respond(result: Answer) -> Response[bytes]:
    return response(result)


def json_response(doc: Any, status: int = 200) -> Response[bytes]:
    return Response(msgspec.json.encode(doc), status_code=status, media_type="application/json")


def _key(request: Request[Any, Any, Any]) -> str | None:
    return request.headers.get(IDEMPOTENCY_HEADER)


async def _keyed(request: Request[Any, Any, Any], typ: type[T], *scope: str) -> tuple[T, dict[str, Any]]:
    """The body decoded as `typ`, and the write's idempotency arguments: the request's key, and
    the hash of the raw body with `scope` (who or where the key counts)."""
    raw = await request.body()
    return decode(raw, typ), {"key": _key(request), "request_hash": request_hash(*scope, raw)}


def provide_ctx(state: State) -> BookingContext:
    ctx: BookingContext = state.deps.extras["booking"]
    return ctx


# --- controllers -----------------------------------------------------------------------------------


class BookingPageController(Controller):
    exception_handlers = EXCEPTION_HANDLERS
    path = "/api/v1/booking-pages"
    tags = ["Booking pages"]

    @post("/", summary="Create a booking page", status_code=201)
    async def create(self, request: Request[Any, Any, Any], ctx: BookingContext, caller: Caller,
                     data: BookingPageCreate) -> Response[BookingPage]:
        """`calendar_slug` must name a unified calendar with a writable source: one with only iCal
        subscriptions or read-only calendars is 422 `no_writable_source` (a booking's event could
        never be written), as is 422 `calendar_not_found` for no such calendar. While a page uses
        a calendar, its last writable source cannot be removed (409 `last_writable_source`)."""
        body, keyed = await _keyed(request, BookingPageCreate, caller.user_id)
        return respond(await pages.create_page(ctx, caller, msgspec.to_builtins(body), **keyed))  # type: ignore[return-value]

    @get("/", summary="List booking pages")
    async def list(self, ctx: BookingContext, caller: Caller, limit: int | None = None,
                   cursor: str | None = None) -> Response[BookingPageList]:
        return json_response(await pages.list_pages(ctx, caller, limit, cursor))  # type: ignore[return-value]

    @get("/{slug:str}", summary="Get a booking page (the owner's), or with handle its public part (anyone)")
    async def get_one(self, ctx: BookingContext, optional_caller: Caller | None, slug: str,
                      handle: str | None = None) -> Response[BookingPage | PublicBookingPage]:
        """Without `handle`: the owner's page (read scope). With `handle` (no credentials needed):
        `{title, description, duration_minutes, timezone, questions}` of that user's page."""
        return json_response(await pages.get_page(ctx, optional_caller, slug, handle))  # type: ignore[return-value]

    @patch("/{slug:str}", summary="Update a booking page")
    async def update(self, request: Request[Any, Any, Any], ctx: BookingContext, caller: Caller, slug: str,
                     data: BookingPageUpdate) -> Response[BookingPage]:
        """A new `calendar_slug` is held to what creation asks: 422 `no_writable_source` for a
        calendar with no writable source."""
        body = decode(await request.body(), BookingPageUpdate)
        changes = msgspec.to_builtins(body)
        return json_response(await pages.update_page(ctx, caller, slug, changes))  # type: ignore[return-value]

    @delete("/{slug:str}", summary="Delete a booking page", status_code=204)
    async def remove(self, ctx: BookingContext, caller: Caller, slug: str) -> None:
        await pages.delete_page(ctx, caller, slug)

    # The two public hot paths read the context and the caller off the request: litestar's
    # injection of them (an async provider among them) costs a few tenths of a millisecond.

    @get("/{slug:str}/slots", summary="Available slots of a booking page (public)")
    async def slots(
        self, request: Request[Any, Any, Any], slug: str, start: str, end: str, handle: str | None = None,
        tz: str | None = None,
    ) -> Response[Slots]:
        ctx = request.app.state.deps.extras["booking"]
        return json_response(await pages.slots(ctx, slug=slug, handle=handle, start=start, end=end, tz=tz,  # type: ignore[return-value]
                                           caller=caller_from_headers(request.headers)))

    @post("/{slug:str}/book", summary="Book a slot (public)", status_code=201)
    async def book(self, request: Request[Any, Any, Any], slug: str, data: BookRequest,
                   handle: str | None = None) -> Response[BookingConfirmation]:
        ctx = request.app.state.deps.extras["booking"]
        body, keyed = await _keyed(request, BookRequest, handle or "", slug)
        cmd = bookings.BookSlot(handle=handle, slug=slug, start=body.start, name=body.name, email=body.email,
                         notes=body.notes, timezone=body.timezone, hold_id=body.hold_id, answers=body.answers)
        return respond(await bookings.book(ctx, cmd, caller_from_headers(request.headers), **keyed))  # type: ignore[return-value]

    @post("/{slug:str}/holds", summary="Hold a slot for the page's hold_minutes (public)", status_code=201)
    async def hold(self, request: Request[Any, Any, Any], slug: str, data: HoldRequest,
                   handle: str | None = None) -> Response[Hold]:
        """The slot leaves every page's slots and is busy in availability at once, until the hold
        expires, is released, or is confirmed by booking with its `hold_id`. A slot that is not
        offered (booked, or held by someone else) is 409 `slot_unavailable`."""
        ctx = request.app.state.deps.extras["booking"]
        body, keyed = await _keyed(request, HoldRequest, handle or "", slug)
        return respond(await bookings.create_hold(ctx, handle=handle, slug=slug, start_text=body.start,  # type: ignore[return-value]
                                           caller=caller_from_headers(request.headers), **keyed))

    @delete("/{slug:str}/holds/{hold_id:str}", summary="Release a hold (public)", status_code=204)
    async def release(self, request: Request[Any, Any, Any], slug: str, hold_id: str,
                      handle: str | None = None) -> None:
        """The slot is free again at once; an unknown hold is 404."""
        ctx = request.app.state.deps.extras["booking"]
        await bookings.release_hold(ctx, handle=handle, slug=slug, hold_id=hold_id,
                             caller=caller_from_headers(request.headers))


class BookingController(Controller):
    exception_handlers = EXCEPTION_HANDLERS
    path = "/api/v1/bookings"
    tags = ["Bookings"]

    @get("/", summary="List bookings")
    async def list(self, ctx: BookingContext, caller: Caller, status: str | None = None, start: str | None = None,
                   end: str | None = None, limit: int | None = None, cursor: str | None = None) -> Response[BookingList]:
        return json_response(await bookings.list_bookings(ctx, caller, status=status, start=start, end=end,  # type: ignore[return-value]
                                                   limit=limit, cursor=cursor))

    @get("/{booking_id:str}", summary="Get a booking")
    async def get_one(self, ctx: BookingContext, caller: Caller, booking_id: str) -> Response[Booking]:
        """`calendar_write` tells where the booking's provider event stands: `written` (event_id
        set), `pending` (being written; passing failures are retried), or `failed` when the provider
        refused for good (credentials refused, the calendar gone at the provider, no writable source
        left), with the reason in `calendar_write_error`; a `connection.error` webhook is sent and
        the write is not retried. The booking stands and its time stays busy in CalMesh."""
        return json_response(await bookings.get_booking(ctx, caller, booking_id))  # type: ignore[return-value]

    @post("/{booking_id:str}/cancel", summary="Cancel a booking (owner, or visitor with sig and exp)", status_code=200)
    async def cancel(self, request: Request[Any, Any, Any], ctx: BookingContext, optional_caller: Caller | None,
                     booking_id: str, sig: str | None = None, exp: str | None = None) -> Response[Booking]:
        body = decode(await request.body(), CancelRequest, empty_ok=True)
        return json_response(await bookings.cancel_booking(ctx, booking_id, caller=optional_caller, sig=sig, exp=exp,  # type: ignore[return-value]
                                                    reason=body.reason.strip()))

    @post("/{booking_id:str}/reschedule", summary="Reschedule a booking (owner, or visitor with reschedule_url's sig and exp)",
          status_code=200)
    async def reschedule(self, request: Request[Any, Any, Any], ctx: BookingContext, optional_caller: Caller | None,
                         booking_id: str, data: RescheduleRequest, sig: str | None = None,
                         exp: str | None = None) -> Response[Booking]:
        """Same booking, new start and end. 409 `slot_unavailable` (nothing changes) when the new slot
        is not offered, 409 `booking_cancelled` for a cancelled booking; without credentials or a
        signature 401, with a wrong or expired signature (the cancel link's among them) 403."""
        body = decode(await request.body(), RescheduleRequest)
        return json_response(await bookings.reschedule_booking(ctx, booking_id, caller=optional_caller, sig=sig,  # type: ignore[return-value]
                                                        exp=exp, start_text=body.start))

    @post("/{booking_id:str}/verify", summary="Verify the visitor's address (the signed link of the verification mail)",
          status_code=200)
    async def verify(self, request: Request[Any, Any, Any], ctx: BookingContext, booking_id: str,
                     sig: str | None = None, exp: str | None = None) -> Response[BookingConfirmation]:
        """Public: `sig` and `exp` of the link mailed to the visitor of a page with
        require_email_verification. Confirms the booking (the calendar event, the confirmation mails
        and booking.created follow) and answers as booking does; a second call answers the same.
        A wrong signature is 403 `invalid_signature`, an expired link 409 `verification_expired`
        (the held slot is free again). A browser's form post (Accept: text/html) gets a page."""
        try:
            doc = await bookings.verify_booking(ctx, booking_id, sig=sig, exp=exp)
        except Problem as exc:
            if not _wants_html(request):
                raise
            text = {403: "This verification link is not valid.", 404: "There is no such booking.",
                    409: exc.body().get("detail", "This booking can no longer be confirmed.")}.get(
                exc.status, "Something went wrong; try again in a moment.")
            return _html(message_page_html("Not confirmed", str(text)), exc.status, _VERIFY_HEADERS)  # type: ignore[return-value]
        if _wants_html(request):
            return _html(message_page_html("Booking confirmed",  # type: ignore[return-value]
                                           "Your booking is confirmed. A calendar invitation is on its way."),
                         200, _VERIFY_HEADERS)
        return json_response(doc)  # type: ignore[return-value]

    @get("/{booking_id:str}/verify", summary="The page a verification link opens (HTML)", include_in_schema=False)
    async def verify_page(self, ctx: BookingContext, booking_id: str, sig: str = "", exp: str = "") -> Response[str]:
        """Asks before confirming: only the page's button (a POST) verifies, never the GET a mail
        scanner makes."""
        why = verify_cancel_signature(ctx.link_secret, booking_id, exp, sig, ctx.clock(), "verify")
        if why is not None and why != "expired":
            return _html(message_page_html("Link not valid", "This verification link is not valid."), 403,
                         _VERIFY_HEADERS)
        async with ctx.pool.acquire() as conn:
            b = await ctx.store.get_booking(conn, booking_id)
            user = await ctx.store.get_user(conn, b.user_id) if b else None
        if b is None or b.verify_until is None:
            return _html(message_page_html("Not found", "There is no such booking."), 404, _VERIFY_HEADERS)
        if b.status == "confirmed":
            return _html(message_page_html("Booking confirmed", "This booking is confirmed already."), 200,
                         _VERIFY_HEADERS)
        if why == "expired" or b.status != "pending_verification":
            return _html(message_page_html("Link expired", "This verification link has expired; book again."), 409,
                         _VERIFY_HEADERS)
        owner = (user["name"] or user["handle"] or "your host") if user else "your host"
        action = f"/api/v1/bookings/{b.id}/verify?exp={exp}&sig={sig}"
        return _html(verify_page_html(title=b.title, owner_name=owner, when=when_text(b, b.timezone), action=action),
                     200, _VERIFY_HEADERS)


class PollController(Controller):
    exception_handlers = EXCEPTION_HANDLERS
    path = "/api/v1/polls"
    tags = ["Polls"]

    @post("/", summary="Create a scheduling poll", status_code=201)
    async def create(self, request: Request[Any, Any, Any], ctx: BookingContext, caller: Caller,
                     data: PollCreate) -> Response[Poll]:
        body, keyed = await _keyed(request, PollCreate, caller.user_id)
        return respond(await polls.create_poll(ctx, caller, msgspec.to_builtins(body), **keyed))  # type: ignore[return-value]

    @get("/", summary="List polls")
    async def list(self, ctx: BookingContext, caller: Caller, limit: int | None = None,
                   cursor: str | None = None) -> Response[PollList]:
        return json_response(await polls.list_polls(ctx, caller, limit, cursor))  # type: ignore[return-value]

    @get("/{poll_id:str}", summary="Get a poll (owner, or anyone with its token)")
    async def get_one(self, ctx: BookingContext, optional_caller: Caller | None, poll_id: str,
                      token: str | None = None) -> Response[Poll]:
        return json_response(await polls.get_poll(ctx, optional_caller, poll_id, token))  # type: ignore[return-value]

    @post("/{poll_id:str}/votes", summary="Vote (public with the poll's token, or authenticated)", status_code=201)
    async def vote(self, request: Request[Any, Any, Any], ctx: BookingContext, optional_caller: Caller | None,
                   poll_id: str, data: VoteRequest, token: str | None = None) -> Response[VoteOut]:
        body, keyed = await _keyed(request, VoteRequest, poll_id)
        return respond(await polls.vote(ctx, poll_id, caller=optional_caller, token=token, name=body.name,  # type: ignore[return-value]
                                    email=body.email, choices=dict(body.choices), **keyed))

    @get("/{poll_id:str}/overlap", summary="Who can make each option, and the best one")
    async def overlap(self, ctx: BookingContext, caller: Caller, poll_id: str) -> Response[Overlap]:
        return json_response(await polls.overlap(ctx, caller, poll_id))  # type: ignore[return-value]

    @post("/{poll_id:str}/decide", summary="Choose an option: creates the event and closes the poll", status_code=200)
    async def decide(self, request: Request[Any, Any, Any], ctx: BookingContext, caller: Caller, poll_id: str,
                     data: DecideRequest) -> Response[Decision]:
        body = decode(await request.body(), DecideRequest)
        return json_response(await polls.decide(ctx, caller, poll_id, body.option_id))  # type: ignore[return-value]


# --- public pages ----------------------------------------------------------------------------------

_HANDLE = re.compile(r"^[a-z0-9-]{3,40}$")
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    # Scripts, styles and API calls from this origin only (no inline script: the pages link
    # /assets/booking/...); the page is meant to be embedded anywhere (embed.js), so any site may frame it.
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}


#: The verification pages: a form and the pages' stylesheet, no script; never framed.
_VERIFY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> Response[str]:
    return Response(body, status_code=status, media_type="text/html; charset=utf-8",
                    headers=headers or _PAGE_HEADERS)


def _wants_html(request: Request[Any, Any, Any]) -> bool:
    """A browser's form post (it accepts HTML first), not an API client."""
    accept = request.headers.get("accept", "")
    return accept.startswith("text/html")


@get("/embed.js", summary="The embed script", include_in_schema=False)
async def embed_js() -> Response[str]:
    return Response(EMBED_JS, media_type="text/javascript; charset=utf-8",
                    headers={"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*",
                             "X-Content-Type-Options": "nosniff"})


@get("/assets/booking/{name:str}", summary="A script or style of the public pages", include_in_schema=False)
async def page_asset(name: str) -> Response[bytes]:
    """A file of ``static/`` under its fingerprinted name: the name changes with the content, so
    browsers keep it for a year."""
    asset = ASSETS.get(name)
    if asset is None:
        raise Problem(404, "not_found", "No such asset.")
    return Response(asset.body, media_type=asset.content_type,
                    headers={"Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"})


@get("/{handle:str}/{slug:str}", summary="The public booking page (HTML)", include_in_schema=False)
async def booking_page(ctx: BookingContext, handle: str, slug: str, embed: str | None = None,
                       color: str | None = None, booking: str | None = None, exp: str = "",
                       sig: str = "", reschedule: str | None = None) -> Response[str]:
    """The booking page; with ``booking``, ``exp`` and ``sig`` (a visitor's cancel link from the
    confirmation or the mail) the page that asks before cancelling that booking; with
    ``reschedule`` instead of ``booking`` (the mail's reschedule link) the page that moves it."""
    if not _HANDLE.match(handle):
        return _html(message_page_html("Not found", "There is no booking page here."), 404)
    moving = None
    if reschedule is not None and booking is None:
        try:
            b = await bookings.cancel_link_booking(ctx, reschedule, sig, exp, purpose="reschedule")
        except Problem as exc:
            text = ("This reschedule link is expired or not valid." if exc.status == 403
                    else "There is no such booking.")
            return _html(message_page_html("Link not valid", text), exc.status)
        if b.page_slug != slug:
            return _html(message_page_html("Not found", "There is no such booking."), 404)
        if b.status != "confirmed":
            return _html(message_page_html("Booking cancelled", "This booking was cancelled; it cannot be moved."),
                         409)
        moving = {"id": b.id, "start": rfc3339(b.start), "end": rfc3339(b.end),
                  "api": f"/api/v1/bookings/{b.id}/reschedule?exp={exp}&sig={sig}"}
    if booking is not None:
        try:
            b = await bookings.cancel_link_booking(ctx, booking, sig, exp)
        except Problem as exc:
            text = "This cancel link is expired or not valid." if exc.status == 403 else "There is no such booking."
            return _html(message_page_html("Link not valid", text), exc.status)
        api_url = f"/api/v1/bookings/{b.id}/cancel?exp={exp}&sig={sig}"
        return _html(cancel_page_html(title=b.title, when_utc=rfc3339(b.start), status=b.status, api_url=api_url))
    async with ctx.pool.acquire() as conn:
        page = await ctx.store.public_page(conn, handle, slug)
        user = await ctx.store.get_user(conn, page["user_id"]) if page else None
    if page is None:
        return _html(message_page_html("Not found", "There is no booking page here."), 404)
    owner = (user["name"] or handle) if user else handle
    return _html(booking_page_html(dict(page), owner_name=owner, embed=embed == "1", color=color, reschedule=moving))


@get("/polls/{poll_id:str}/vote", summary="A poll's public voting page (HTML)", include_in_schema=False)
async def poll_page(ctx: BookingContext, poll_id: str, token: str = "") -> Response[str]:
    """The page a poll's share link (``vote_page_url``) opens: the options in the visitor's time
    zone and a yes/maybe/no form that posts to the public votes endpoint; a decided (or past its
    deadline) poll shows the chosen time and no form. Without the poll's token: a 404 page."""
    try:
        poll = await polls.get_poll(ctx, None, poll_id, token)
    except Problem:
        return _html(message_page_html("Poll not found", "This poll link is not valid. Ask its owner for the link again."),
                     404)
    deadline = poll["deadline"]
    closed = poll["status"] != "open" or (deadline is not None and datetime.fromisoformat(deadline) <= ctx.clock())
    return _html(poll_page_html(poll, closed=closed, api_url=f"/api/v1/polls/{poll_id}/votes?token={token}"))


@get("/internal/pages", include_in_schema=False)
async def internal_pages(ctx: BookingContext, user_id: str, calendar_slug: str) -> Response[bytes]:
    """Internal (docs/contracts.md): the user's booking pages on a unified calendar."""
    return json_response(await pages.pages_on_calendar(ctx, user_id, calendar_slug))


ROUTES = [BookingPageController, BookingController, PollController, embed_js, internal_pages, page_asset, poll_page,
          booking_page]
