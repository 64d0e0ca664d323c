"""The public routes of the availability service (the gateway forwards them at the same path).

- ``GET /api/v1/calendars/{slug}/events``: merged events of every source, paged by keyset.
- ``POST|DELETE /api/v1/calendars/{slug}/events``: event writes through sync's internal API.
- ``GET /api/v1/calendars/{slug}/availability``: busy/free (with ``explain``).
- ``GET /api/v1/calendars/{slug}/conflicts``: overlapping busy events of different sources.

Reads are one indexed query on the projection plus a cached calendar lookup; no provider is called.
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import Executor
from functools import partial
from typing import Annotated, Any
from urllib.parse import quote

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.params import Parameter

from calmesh_common.idempotency import HEADER as IDEMPOTENCY_HEADER
from calmesh_common.idempotency import Answer, Keys, canonical_json, check_key
from calmesh_common.idempotency import response as kit_response
from calmesh_common.logging import get_logger
from calmesh_common.problems import FieldError, Problem, ProblemDocument
from calmesh_common.service import SECRET_HEADER, Caller, ServiceDeps, caller_from_headers
from calmesh_common.tracing import inject_headers

from . import domain, store
from .calendars import CalendarDirectory
from .timeline import Timelines
from .domain import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Availability,
    Calendar,
    ConflictOut,
    EventCreate,
    EventOut,
    SourceFreshness,
)

log = get_logger(__name__)

#: Event writes reach the provider (CalDAV, Google, Graph): allow them time.
WRITE_TIMEOUT_SECONDS = 30.0
IDEMPOTENCY = Keys("availability")
WRITE_SCOPES = ("write", "full")

Q = Parameter  # keeps the signatures readable


class EventPage(msgspec.Struct, kw_only=True):
    data: list[EventOut]
    next_cursor: str | None
    #: False when a source's connection is not active or never synced (docs/api-guide.md, Freshness).
    complete: bool = True
    sources: list[SourceFreshness] = msgspec.field(default_factory=list)


class ConflictPage(msgspec.Struct, kw_only=True):
    data: list[ConflictOut]
    next_cursor: str | None
    complete: bool = True
    sources: list[SourceFreshness] = msgspec.field(default_factory=list)


def _directory(request: Request[Any, Any, State]) -> CalendarDirectory:
    directory: CalendarDirectory = request.app.state.deps.extras["calendars"]
    return directory


def _who(request: Request[Any, Any, State]) -> tuple[Caller, ServiceDeps]:
    """The caller and the service's dependencies, read straight off the request on the read paths:
    litestar's injection of these two (an async provider among them) cost about 0.35 ms a request
    when measured, a third of this service's own CPU per free/busy answer. Same rules as the
    `caller` dependency: no identity headers, 401."""
    caller = caller_from_headers(request.headers)
    if caller is None:
        raise Problem(401, "unauthorized", "Authentication is required.")
    return caller, request.app.state.deps


def _cpu(deps: ServiceDeps) -> Executor:
    """The bounded thread pool for CPU-bound answers (see app.py)."""
    cpu: Executor = deps.extras["cpu"]
    return cpu


def _reads(deps: ServiceDeps) -> Any:
    """The read-only pool for projection queries (see app.py)."""
    return deps.extras["read_pool"]


def _tz_for(raw: str | None, cal: Calendar | None = None) -> tuple[Any, str]:
    if raw:
        return domain.zone(raw), raw
    assert cal is not None
    return cal.tz, cal.tz_name


async def _calendar_in(
    request: Request[Any, Any, State], caller: Caller, slug: str, tz: str | None,
) -> tuple[CalendarDirectory, Calendar, Any, str]:
    """The caller's calendar `slug` and the zone the query's local times are in: `tz` when given
    (checked before the calendar is looked up), else the calendar's own."""
    if tz:
        domain.zone(tz)
    directory = _directory(request)
    cal = await directory.get(caller.user_id, slug)
    zone, zone_name = _tz_for(tz, cal)
    return directory, cal, zone, zone_name


def _event_filter_source(cal: Calendar, source_id: str | None) -> domain.Source | None:
    if not source_id:
        return None
    source = cal.by_id.get(source_id)
    if source is None:
        raise Problem(404, "not_found", f"No source {source_id!r} in calendar {cal.slug!r}.")
    return source


def _require_write(caller: Caller) -> None:
    if caller.scope not in WRITE_SCOPES:
        raise Problem(403, "insufficient_scope", "This API key may not create or delete events.",
                      required_scope="write")


class CalendarRoutes(Controller):
    """Events, availability and conflicts of one unified calendar."""

    path = "/api/v1/calendars/{slug:str}"
    tags = ["events"]

    @get("/events", summary="Query merged events from all sources in a unified calendar")
    async def list_events(
        self,
        request: Request[Any, Any, State],
        slug: str,
        start: Annotated[str | None, Q(description="RFC 3339; events ending after it", required=False)] = None,
        end: Annotated[str | None, Q(description="RFC 3339; events starting before it (≤ 366 days after start)",
                                     required=False)] = None,
        source_id: Annotated[str | None, Q(description="Only this source", required=False)] = None,
        include_cancelled: Annotated[str | None, Q(description="true: also cancelled instances",
                                                   required=False)] = None,
        limit: Annotated[str | None, Q(description="1..200, default 50", required=False)] = None,
        cursor: Annotated[str | None, Q(description="next_cursor of the previous page", required=False)] = None,
        tz: Annotated[str | None, Q(description="IANA zone for start/end given without an offset",
                                    required=False)] = None,
    ) -> EventPage:
        """Every source's instances overlapping ``[start, end)`` (recurring series expanded), in
        start order, with their provenance. Cancelled instances only with ``include_cancelled``."""
        caller, deps = _who(request)
        cancelled = domain.parse_bool(include_cancelled, "include_cancelled")
        page_size = domain.parse_int(limit, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        directory, cal, zone, _ = await _calendar_in(request, caller, slug, tz)
        win_start, win_end = domain.parse_window(start, end, zone)
        only = _event_filter_source(cal, source_id)
        fp = domain.query_fingerprint(slug, win_start, win_end, source_id or "", cancelled)
        after: tuple[int, str] | None = None
        if cursor:
            pos = domain.decode_cursor(cursor, "events", fp)
            if len(pos) != 2 or not domain.in_supported_range(pos[0] // 1_000_000 if isinstance(pos[0], int) else None) \
                    or not isinstance(pos[1], str):
                raise domain.bad_param("cursor", "not a cursor this endpoint gave out", code="invalid_cursor")
            after = (pos[0], pos[1])
        conn_ids, cal_ids = cal.source_columns(only)
        rows = await store.event_rows(_reads(deps), caller.user_id, conn_ids, cal_ids, win_start, win_end,
                                      tz_name=cal.tz_name, include_cancelled=cancelled, after=after,
                                      limit=page_size + 1)
        page = rows[:page_size]
        next_cursor = None
        if len(rows) > page_size:
            last = page[-1]
            next_cursor = domain.encode_cursor("events", fp, [last["k"], last["event_id"]])
        fresh = directory.freshness(cal, (only,) if only is not None else None)
        return EventPage(data=[domain.event_out(r, cal) for r in page], next_cursor=next_cursor,
                         complete=fresh.complete, sources=fresh.sources)

    @get("/availability", summary="Query free/busy availability for a unified calendar", tags=["availability"])
    async def availability(
        self,
        request: Request[Any, Any, State],
        slug: str,
        date: Annotated[str | None, Q(description="YYYY-MM-DD: that day in tz (else the calendar's zone)",
                                      required=False)] = None,
        start: Annotated[str | None, Q(description="RFC 3339 (with end, instead of date)", required=False)] = None,
        end: Annotated[str | None, Q(description="RFC 3339 (≤ 366 days after start)", required=False)] = None,
        tz: Annotated[str | None, Q(description="IANA zone; default the calendar's", required=False)] = None,
        min_duration: Annotated[str | None, Q(description="Minutes: shorter free gaps are left out",
                                              required=False)] = None,
        explain: Annotated[str | None, Q(description="true: the events behind each busy interval",
                                         required=False)] = None,
    ) -> Availability:
        """Busy time merged across sources (overlapping and touching intervals join) and the free
        time around it. Transparent and cancelled events are not busy; all-day events block their
        days in the calendar's zone. ``complete`` is false when a source's connection is not active
        or never synced: then ``free`` is empty (time nobody could check is never free) and
        ``busy`` is what is known; ``sources`` says where each source stands."""
        caller, deps = _who(request)
        min_seconds = domain.parse_int(min_duration, "min_duration", 0, 0, 366 * 1440) * 60
        with_events = domain.parse_bool(explain, "explain")
        if tz:
            domain.zone(tz)
        if date:
            domain.parse_date(date, "date")
        directory = _directory(request)
        cal = await directory.get(caller.user_id, slug)
        zone, zone_name = _tz_for(tz, cal)
        win_start, win_end = domain.availability_window(date, start, end, zone)
        conn_ids, cal_ids = cal.source_columns()
        if with_events:
            rows = await store.busy_rows(_reads(deps), caller.user_id, conn_ids, cal_ids, win_start, win_end)
            return domain.availability(domain.busy_items(rows, cal), cal, zone_name, win_start, win_end,
                                       min_duration=min_seconds, explain=True, fresh=directory.freshness(cal))
        # The hot path: the calendar's busy timeline in memory, checked against the projection's
        # versions of its sources on this very read (timeline.py); a calendar too big to keep is
        # read for the window alone, the engine's items as three columns.
        source_ids = cal.source_ids_for(conn_ids, cal_ids)
        timelines: Timelines | None = deps.extras.get("timelines")
        blocks = None
        if timelines is not None:
            blocks = await timelines.blocks(_reads(deps), caller.user_id, slug, cal.tz_name, conn_ids, cal_ids,
                                            win_start, win_end)
        if blocks is not None:
            return domain.shape_availability(blocks, cal, zone_name, win_start, win_end, min_duration=min_seconds,
                                             source_ids=source_ids, fresh=directory.freshness(cal))
        starts, ends, sources = await store.busy_columns(_reads(deps), caller.user_id, conn_ids, cal_ids,
                                                         win_start, win_end, cal.tz_name)
        return domain.availability(domain.items_from_columns(starts, ends, sources), cal, zone_name, win_start,
                                   win_end, min_duration=min_seconds, source_ids=source_ids,
                                   fresh=directory.freshness(cal))

    @get("/conflicts", summary="Detect overlapping events across different sources", tags=["availability"],
         responses={422: ResponseSpec(
             ProblemDocument, generate_examples=False, media_type="application/problem+json",
             description="`invalid_range` (end before start), `range_too_long` (over 366 days), or "
                         "`range_too_dense`: the range holds more busy events than CALMESH_CONFLICTS_MAX_ROWS "
                         "(default 20,000) or would need more pair comparisons than "
                         "CALMESH_CONFLICTS_MAX_CHECKS (default 2,000,000); ask for a shorter range.")})
    async def conflicts(
        self,
        request: Request[Any, Any, State],
        slug: str,
        start: Annotated[str | None, Q(description="RFC 3339", required=False)] = None,
        end: Annotated[str | None, Q(description="RFC 3339 (≤ 366 days after start)", required=False)] = None,
        limit: Annotated[str | None, Q(description="1..200, default 50", required=False)] = None,
        cursor: Annotated[str | None, Q(description="next_cursor of the previous page", required=False)] = None,
        tz: Annotated[str | None, Q(description="IANA zone for start/end given without an offset",
                                    required=False)] = None,
    ) -> ConflictPage:
        """Pairs of busy events from different sources that overlap in the window, ordered by the
        start of their overlap. The same meeting seen through two accounts is not a conflict.

        The work of one query is capped: a range holding more busy events than
        `CALMESH_CONFLICTS_MAX_ROWS`, or whose events would need more pair comparisons than
        `CALMESH_CONFLICTS_MAX_CHECKS`, is answered 422 `range_too_dense`: ask for a shorter range."""
        caller, deps = _who(request)
        page_size = domain.parse_int(limit, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        directory, cal, zone, _ = await _calendar_in(request, caller, slug, tz)
        win_start, win_end = domain.parse_window(start, end, zone)
        fp = domain.query_fingerprint(slug, win_start, win_end)
        after: tuple[int, str, str] | None = None
        if cursor:
            pos = domain.decode_cursor(cursor, "conflicts", fp)
            if len(pos) != 3 or not domain.in_supported_range(pos[0]):
                raise domain.bad_param("cursor", "not a cursor this endpoint gave out", code="invalid_cursor")
            after = (pos[0], str(pos[1]), str(pos[2]))
        conn_ids, cal_ids = cal.source_columns()
        settings = deps.settings
        rows = await store.busy_rows(_reads(deps), caller.user_id, conn_ids, cal_ids, win_start, win_end,
                                     limit=settings.conflicts_max_rows + 1)
        if len(rows) > settings.conflicts_max_rows:
            raise domain.too_dense(f"This range holds more than {settings.conflicts_max_rows} busy events.")
        # The sweep is CPU work: it runs on the service's bounded pool of threads, so that the event
        # loop goes on answering everyone else meanwhile.
        page, last = await asyncio.get_running_loop().run_in_executor(
            _cpu(deps), partial(domain.conflicts, rows, cal, win_start, win_end, after=after, limit=page_size,
                                max_checks=settings.conflicts_max_checks))
        next_cursor = domain.encode_cursor("conflicts", fp, list(last)) if last is not None else None
        fresh = directory.freshness(cal)
        return ConflictPage(data=page, next_cursor=next_cursor, complete=fresh.complete, sources=fresh.sources)

    @post("/events", summary="Create an event on a connected calendar (for AI agents/MCP)", status_code=201)
    async def create_event(
        self,
        request: Request[Any, Any, State],
        slug: str,
        caller: Caller,
        deps: ServiceDeps,
        data: EventCreate,
        idempotency_key: Annotated[str | None, Q(header="Idempotency-Key", required=False,
                                                 description="Repeat-safe creation")] = None,
    ) -> Response[EventOut]:
        """Writes the event to ``source_id`` or the default write target (the first writable source)
        on the provider, then answers 201 with it; the next query shows it. ``start``/``end`` as two
        dates make an all-day event."""
        _require_write(caller)
        check_key(idempotency_key)
        assert deps.pool is not None
        body_digest = hashlib.sha256(canonical_json(await request.body())).hexdigest()
        req_hash = domain.query_fingerprint(request.url.path) + body_digest

        async def create() -> Answer:
            status, body = await self._create(request, slug, caller, deps, data, idempotency_key)
            return Answer(status, body)

        # Response[EventOut] names the body for the OpenAPI document; the kit answers it encoded.
        return kit_response(await IDEMPOTENCY.run(deps.pool, caller.user_id, idempotency_key, req_hash, create))  # type: ignore[return-value]

    async def _create(
        self, request: Request[Any, Any, State], slug: str, caller: Caller, deps: ServiceDeps, data: EventCreate,
        idempotency_key: str | None,
    ) -> tuple[int, bytes]:
        cal = await _directory(request).get(caller.user_id, slug)
        new = domain.validate_new_event(data, cal.tz)
        if data.source_id:
            source = cal.by_id.get(data.source_id)
            if source is None:
                raise Problem(422, "unknown_source", f"Calendar {slug!r} has no source {data.source_id!r}.",
                              errors=[FieldError("source_id", "not a source of this calendar")])
        else:
            source = cal.default_write_target()
            if source is None:
                raise Problem(422, "read_only_source",
                              f"Calendar {slug!r} has no writable source (iCal subscriptions are read-only).")
        if source.read_only:
            raise Problem(422, "read_only_source",
                          f"Source {source.id!r} ({source.name or source.calendar_id}) is read-only.",
                          errors=[FieldError("source_id", "read-only source")])
        payload: dict[str, Any] = {
            "user_id": caller.user_id,
            "connection_id": source.connection_id,
            "calendar_id": source.calendar_id,
            "title": new.title,
            "start": new.start,
            "end": new.end,
            "all_day": new.all_day,
            "timezone": cal.tz_name,
        }
        for name in ("description", "location"):
            if getattr(new, name) is not None:
                payload[name] = getattr(new, name)
        if new.attendees:
            payload["attendees"] = new.attendees
        # The caller's key, passed on: a retry of this request is one write at the provider.
        response = await _sync_call(request, deps, "POST", "/internal/events", json=payload,
                                    key=f"availability:{idempotency_key}" if idempotency_key else None)
        if response.status_code != 201:
            raise _problem_from(response, "The event could not be created")
        try:
            doc = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            raise Problem(502, "bad_gateway", "The sync service answered with something unreadable.") from None
        event = _event_from_sync(doc, source)
        return 201, msgspec.json.encode(event)

    @delete("/events", summary="Delete an event from a connected calendar", status_code=204)
    async def delete_event(
        self,
        request: Request[Any, Any, State],
        slug: str,
        caller: Caller,
        deps: ServiceDeps,
        event_id: Annotated[str | None, Q(description="The event's id", required=False)] = None,
    ) -> None:
        """Deletes the event on the provider and from every later query. 404 if it is not an event
        of this calendar."""
        _require_write(caller)
        if not event_id:
            raise domain.bad_param("event_id", "required")
        cal = await _directory(request).get(caller.user_id, slug)
        conn_ids, cal_ids = cal.source_columns()
        found = await store.find_event(_reads(deps), caller.user_id, conn_ids, cal_ids, event_id)
        if found is None:
            raise Problem(404, "not_found", f"No event {event_id!r} in calendar {slug!r}.")
        source = cal.by_key[(found["connection_id"], found["calendar_id"])]
        if source.read_only:
            raise Problem(422, "read_only_source",
                          f"The event belongs to a read-only source ({source.name or source.calendar_id}).")
        response = await _sync_call(request, deps, "DELETE", f"/internal/events/{quote(event_id, safe='')}",
                                    params={"user_id": caller.user_id},
                                    # this row's deletion: an event of the same id written again later is another
                                    key=f"availability-delete:{event_id}:{found['updated_at'].isoformat()}")
        if response.status_code not in (200, 204):
            raise _problem_from(response, "The event could not be deleted")


async def _sync_call(request: Request[Any, Any, State], deps: ServiceDeps, method: str, path: str,
                     key: str | None = None, **kwargs: Any) -> Any:
    """A call of sync's internal write API; `key` (its Idempotency-Key) makes a repeat one write."""
    assert deps.http is not None
    headers = {SECRET_HEADER: deps.settings.internal_secret}
    if key:
        headers[IDEMPOTENCY_HEADER] = key[:255]
    request_id = request.headers.get("x-request-id")
    if request_id:
        headers["x-request-id"] = request_id
    inject_headers(headers)
    url = deps.settings.service_url("sync") + path
    try:
        return await deps.http.request(method, url, headers=headers, timeout=WRITE_TIMEOUT_SECONDS, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any transport failure is a 502 for the client
        log.warning("sync_call_failed", method=method, path=path, error=repr(exc))
        raise Problem(502, "bad_gateway", "The calendar could not be reached; try again.") from None


def _problem_from(response: Any, what: str) -> Problem:
    """Pass a 4xx of sync's through (its code and detail); anything else is a 502."""
    status = response.status_code
    doc: dict[str, Any] = {}
    try:
        decoded = msgspec.json.decode(response.content)
        if isinstance(decoded, dict):
            doc = decoded
    except msgspec.DecodeError:
        pass
    if 400 <= status < 500:
        code = str(doc.get("code") or ("not_found" if status == 404 else "bad_request"))
        detail = str(doc.get("detail") or f"{what}.")
        return Problem(status, code, detail)
    log.warning("sync_error", status=status, code=doc.get("code"))
    return Problem(502, "bad_gateway", f"{what}: the calendar provider did not accept it; try again.")


def _event_from_sync(doc: Any, source: domain.Source) -> EventOut:
    """sync answers in the API's event shape; give it this calendar's source id."""
    if not isinstance(doc, dict):
        raise Problem(502, "bad_gateway", "The sync service answered with something unreadable.")
    try:
        return EventOut(
            id=str(doc["id"]),
            source_id=source.id,
            connection_id=str(doc.get("connection_id") or source.connection_id),
            title=str(doc.get("title") or ""),
            description=doc.get("description"),
            location=doc.get("location"),
            start=str(doc["start"]),
            end=str(doc["end"]),
            all_day=bool(doc.get("all_day", False)),
            status=str(doc.get("status") or "confirmed"),
            transparency=str(doc.get("transparency") or "busy"),
            recurring_event_id=doc.get("recurring_event_id"),
            booking_id=doc.get("booking_id"),
            updated_at=str(doc.get("updated_at") or ""),
        )
    except KeyError as exc:
        raise Problem(502, "bad_gateway", f"The sync service's event lacks {exc}.") from None
