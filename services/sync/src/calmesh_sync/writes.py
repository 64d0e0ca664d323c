"""The internal event-write routes (docs/contracts.md): create and delete an event on the
provider, then upsert / delete its projection row and append the event, before answering — so
the caller reads its own write.

- CalDAV: PUT with ``If-None-Match: *`` (a new object), DELETE with ``If-Match`` (a recurring
  instance becomes an EXDATE on its series, PUT with ``If-Match``); a changed ETag is re-read and
  tried once more.
- Google: events.insert / events.delete (an instance id deletes that instance).
- Graph: POST /me/calendars/{id}/events, DELETE /me/events/{id}.
- iCal subscriptions are read-only: 422 ``read_only_source``.

Exactly once: every route here takes an ``Idempotency-Key`` (calmesh_common.idempotency, scoped by
the user: a repeat with the same request gets the first answer and writes nothing again, another
request 422, one while the first is in flight 409; a repeat DELETE is a no-op answering 204). An event written for a booking (``booking_id``) has the
UID derived from the booking id, so a repeat whose first answer was lost finds the same object
(CalDAV: the PUT with ``If-None-Match: *`` answers 412, and the object is read back; Google: the
same iCalUID; Graph: the key as ``transactionId``), and its row is the booking's reservation row
(reservations.py) with the provider's ids filled in. ``PATCH /internal/events/{id}`` moves an event
in place (same UID: a PUT of the same CalDAV object with SEQUENCE + 1, a PATCH on Google and Graph).
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

import icalendar
import msgspec
from litestar import Request, Response, delete, patch, post
from litestar.params import Parameter

from calmesh_common.idempotency import HEADER, Answer, json_answer
from calmesh_common.ids import booking_uid
from calmesh_common.problems import FieldError, Problem
from calmesh_common.retryafter import retry_after
from calmesh_common.service import ServiceDeps
from calmesh_common.timefmt import parse_date, parse_date_or_instant, rfc3339

from calmesh_providers import ical
from .connections_api import ConnectionDetails, ProviderCalendar
from .engine import SyncDeps
from .internal_keys import keyed_delete, keyed_write
from .reservations import TimeOnCalendar
from .projection import ChangeSet, InstanceKey, load_existing, lock_connection, row_for, write_changes
from calmesh_providers import AuthError, NotFoundError, PreconditionFailed, ProviderError, SourceError, TransientError
from calmesh_providers.caldav import CalDAVClient
from calmesh_providers.google import GoogleClient, google_instance
from calmesh_providers.graph import GraphClient, graph_instance, graph_time


class Attendee(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    name: str | None = None


class EventCreate(TimeOnCalendar, kw_only=True):
    all_day: bool = False
    location: str | None = None
    attendees: list[Attendee | str] | None = None
    timezone: str | None = None
    #: The booking this event is written for: its UID is derived from it, and its projection row
    #: is the booking's reservation row.
    booking_id: str | None = None


class EventMove(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    user_id: str
    start: str
    end: str
    title: str | None = None
    description: str | None = None


_create = msgspec.json.Decoder(EventCreate)
_move = msgspec.json.Decoder(EventMove)


def _parse_when(value: str, field: str, all_day: bool) -> date | datetime:
    """A date (all-day) or an RFC 3339 instant with an offset, in UTC; 400 for anything else."""
    try:
        return parse_date(value[:10]) if all_day else parse_date_or_instant(value)
    except ValueError as exc:
        raise Problem(400, "validation_error", f"{field}: {exc}", errors=[FieldError(field, str(exc))]) from None


def event_body(row: Any, connection_id: str, calendar_id: str) -> dict[str, Any]:
    """An event in the shape of docs/api-guide.md (source_id is the caller's to fill in)."""
    all_day = row.all_day
    return {
        "id": row.event_id,
        "source_id": None,
        "connection_id": connection_id,
        "calendar_id": calendar_id,
        "title": row.title,
        "description": row.description,
        "location": row.location,
        "start": row.start_date.isoformat() if all_day else rfc3339(row.start_at),
        "end": row.end_date.isoformat() if all_day else rfc3339(row.end_at),
        "all_day": all_day,
        "status": row.status,
        "transparency": row.transparency,
        "recurring_event_id": row.recurring_event_id,
        "booking_id": row.booking_id,
        "updated_at": rfc3339(row.updated_at),
    }


async def _connection(sync: SyncDeps, connection_id: str, user_id: str) -> ConnectionDetails:
    try:
        details = await sync.connections.connection(connection_id)
    except NotFoundError:
        raise Problem(404, "not_found", "No such connection.") from None
    except TransientError:
        raise Problem(503, "service_unavailable", "The connections service cannot be reached; try again.", headers=retry_after(5)) from None
    if details.user_id != user_id:
        raise Problem(404, "not_found", "No such connection.")
    return details


def _calendar(details: ConnectionDetails, calendar_id: str) -> ProviderCalendar:
    for calendar in details.calendars:
        if calendar.id == calendar_id:
            return calendar
    raise Problem(404, "not_found", "No such calendar in this connection.")


def _provider_problem(exc: Exception) -> Problem:
    if isinstance(exc, AuthError):
        return Problem(409, "connection_unavailable", f"The provider refused the connection's credentials: {exc}")
    if isinstance(exc, TransientError):
        return Problem(503, "provider_unavailable", f"The provider is not answering: {exc}", headers=retry_after(exc.retry_after or 5))
    if isinstance(exc, PreconditionFailed):
        return Problem(409, "conflict", "The event changed at the provider meanwhile; try again.")
    if isinstance(exc, NotFoundError):
        return Problem(422, "calendar_gone", f"The calendar is gone at the provider: {exc}")
    return Problem(502, "provider_error", f"The provider refused the change: {exc}")


def _ical_text(cal: icalendar.Calendar) -> str:
    """The calendar as the text a CalDAV server is sent (icalendar leaves to_ical unannotated)."""
    data: bytes = cal.to_ical()
    return data.decode()


def _ical_event(uid: str, data: EventCreate, start: date | datetime, end: date | datetime) -> str:
    cal = icalendar.Calendar()
    cal.add("PRODID", "-//CalMesh//calmesh.xyz//EN")
    cal.add("VERSION", "2.0")
    event = icalendar.Event()
    event.add("UID", uid)
    event.add("DTSTAMP", datetime.now(UTC))
    event.add("DTSTART", start)
    event.add("DTEND", end)
    event.add("SUMMARY", data.title)
    if data.description:
        event.add("DESCRIPTION", data.description)
    if data.location:
        event.add("LOCATION", data.location)
    for attendee in data.attendees or []:
        email = attendee if isinstance(attendee, str) else attendee.email
        prop = icalendar.vCalAddress(f"mailto:{email}")
        if not isinstance(attendee, str) and attendee.name:
            prop.params["CN"] = attendee.name
        prop.params["ROLE"] = "REQ-PARTICIPANT"
        event.add("ATTENDEE", prop, encode=False)
    cal.add_component(event)
    return _ical_text(cal)


@post("/internal/events", include_in_schema=False)
async def create_event(request: Request[Any, Any, Any], deps: ServiceDeps) -> Response[bytes]:
    """Write an event to a source, project it and append it; answer the event."""
    key = request.headers.get(HEADER)
    return await keyed_write(request, deps, _create, lambda sync, event: _create_event(sync, event, key))


async def _create_event(sync: SyncDeps, event: EventCreate, key: str | None) -> Answer:
    start = _parse_when(event.start, "start", event.all_day)
    end = _parse_when(event.end, "end", event.all_day)
    if type(start) is not type(end):
        raise Problem(400, "validation_error", "start and end must both be dates or both be instants")
    if end <= start:
        raise Problem(422, "end_before_start", "end must be after start.")
    if not event.title.strip():
        raise Problem(400, "validation_error", "title: must not be empty", errors=[FieldError("title", "empty")])
    details = await _connection(sync, event.connection_id, event.user_id)
    calendar = _calendar(details, event.calendar_id)
    if details.provider == "ical" or calendar.read_only:
        raise Problem(422, "read_only_source", "This source is read-only (an iCal subscription or a read-only calendar).")
    now = sync.now()
    href = None
    etag = None
    body_text = None
    try:
        if details.provider in ("caldav", "icloud"):
            uid = booking_uid(event.booking_id) if event.booking_id else f"{uuid.uuid4()}@calmesh.xyz"
            body_text = _ical_event(uid, event, start, end)
            href = calendar.ref.rstrip("/") + "/" + quote(uid, safe="@.-") + ".ics"
            client = _caldav(sync, details)
            try:
                try:
                    etag = await client.put(href, body_text)
                except PreconditionFailed:
                    if not event.booking_id:
                        raise
                    # Written already by a try whose answer was lost: that object is the event.
                    current = await client.get(href)
                    etag, body_text = current.etag, current.data
            finally:
                await client.aclose()
            instance = _single_instance(uid, event, start, end)
            provider_event_id = href
        elif details.provider == "google":
            google = GoogleClient(sync.http, sync.settings.google_api_url, _token(sync, details.id))
            google_body = _google_body(event, start, end)
            if event.booking_id:
                google_body["iCalUID"] = booking_uid(event.booking_id)
            item = await google.insert_event(calendar.ref, google_body)
            instance = google_instance(item) or _single_instance(item.get("iCalUID") or item["id"], event, start, end)
            provider_event_id = item["id"]
        elif details.provider == "microsoft":
            graph = GraphClient(sync.http, sync.settings.microsoft_graph_url, _token(sync, details.id))
            graph_body = _graph_body(event, start, end)
            if key:
                graph_body["transactionId"] = key[:255]  # Graph answers a repeat with the first event
            item = await graph.create_event(calendar.ref, graph_body)
            instance = graph_instance(item, {}) or _single_instance(item.get("iCalUId") or item["id"], event, start, end)
            provider_event_id = item["id"]
        else:
            raise Problem(422, "read_only_source", "This source cannot be written to.")
    except (ProviderError, SourceError) as exc:
        raise _provider_problem(exc) from None
    row = row_for(instance, connection_id=details.id, calendar_id=calendar.id, provider_event_id=provider_event_id, updated_at=now)
    if event.booking_id:
        row = msgspec.structs.replace(row, booking_id=event.booking_id)
    async with sync.pool.acquire() as conn, conn.transaction():
        if not await lock_connection(conn, details.id):
            raise Problem(404, "not_found", "No such connection.")
        existing = await load_existing(conn, details.id, calendar.id, provider_ids=[], uids=[row.uid])
        changes = ChangeSet([], [row], []) if (row.uid, row.recurrence_id) in existing else ChangeSet([row], [], [])
        if event.booking_id:
            row = await _take_over_reservation(conn, sync, details.user_id, event.booking_id, row, details.id,
                                               calendar.id, changes)
        await write_changes(
            conn, sync.store, user_id=details.user_id, connection_id=details.id, calendar_id=calendar.id,
            sync_id=None, changes=changes,
        )
        if href is not None and body_text is not None:
            await conn.execute(
                "INSERT INTO sync.source_objects (connection_id, calendar_id, href, etag, data) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (connection_id, calendar_id, href) DO UPDATE SET etag = EXCLUDED.etag, data = EXCLUDED.data",
                details.id, calendar.id, href, etag, body_text,
            )
    return json_answer(201, event_body(row, details.id, calendar.id))


async def _take_over_reservation(conn: Any, sync: SyncDeps, user_id: str, booking_id: str, row: Any,
                                 connection_id: str, calendar_id: str, changes: ChangeSet) -> Any:
    """The provider event of a booking becomes its reservation row: the same row when the UIDs agree
    (CalDAV, Google), else the reservation's row is replaced by the provider's (Graph mints its own
    UID). A reservation released meanwhile (its booking cancelled) keeps the row cancelled: the
    booking's cancellation then deletes the provider event."""
    from .reservations import reservation_rows

    released = False
    for other in await reservation_rows(conn, [booking_id]):
        if other["user_id"] != user_id:
            continue
        released = released or other["status"] == "cancelled"
        same = (other["connection_id"], other["calendar_id"], other["uid"], other["recurrence_id"]) == (
            connection_id, calendar_id, row.uid, row.recurrence_id)
        if same:
            continue
        deletion = ChangeSet([], [], [InstanceKey(other["event_id"], other["uid"], other["recurrence_id"])])
        if (other["connection_id"], other["calendar_id"]) == (connection_id, calendar_id):
            changes.deleted.extend(deletion.deleted)
        else:
            await lock_connection(conn, other["connection_id"])
            await write_changes(conn, sync.store, user_id=user_id, connection_id=other["connection_id"],
                                calendar_id=other["calendar_id"], sync_id=None, changes=deletion, reason="reservation")
    if released:
        row = msgspec.structs.replace(row, status="cancelled")
        for bucket in (changes.created, changes.updated):
            bucket[:] = [row if r.uid == row.uid and r.recurrence_id == row.recurrence_id else r for r in bucket]
    return row


def _single_instance(uid: str, data: EventCreate, start: date | datetime, end: date | datetime) -> ical.Instance:
    if isinstance(start, datetime):
        start_at, end_at = start, end
        start_date = end_date = None
        all_day = False
    else:
        start_date, end_date = start, end
        start_at, end_at = ical.all_day_span(start, end)
        all_day = True
    return ical.Instance(
        uid=uid, recurrence_id="", recurring=False, title=data.title, description=data.description, location=data.location,
        start_at=start_at, end_at=end_at, all_day=all_day, start_date=start_date, end_date=end_date,  # type: ignore[arg-type]
        status="confirmed", transparency="busy",
    )


def _caldav(sync: SyncDeps, details: ConnectionDetails) -> CalDAVClient:
    url = details.settings.get("url") or sync.settings.icloud_caldav_url
    return CalDAVClient(sync.guarded, url, details.settings.get("username", ""), details.credentials.get("password", ""))


def _token(sync: SyncDeps, connection_id: str):  # type: ignore[no-untyped-def]
    async def provide(force: bool) -> str:
        return await sync.connections.access_token(connection_id, force_refresh=force)

    return provide


def _google_body(data: EventCreate, start: date | datetime, end: date | datetime) -> dict[str, Any]:
    def when(value: date | datetime) -> dict[str, str]:
        if isinstance(value, datetime):
            return {"dateTime": rfc3339(value), **({"timeZone": data.timezone} if data.timezone else {})}
        return {"date": value.isoformat()}

    body: dict[str, Any] = {"summary": data.title, "start": when(start), "end": when(end)}
    if data.description:
        body["description"] = data.description
    if data.location:
        body["location"] = data.location
    if data.attendees:
        body["attendees"] = [
            {"email": a} if isinstance(a, str) else {"email": a.email, **({"displayName": a.name} if a.name else {})}
            for a in data.attendees
        ]
    return body


def _graph_body(data: EventCreate, start: date | datetime, end: date | datetime) -> dict[str, Any]:
    def when(value: date | datetime) -> dict[str, str]:
        if isinstance(value, datetime):
            return graph_time(value)
        return {"dateTime": f"{value.isoformat()}T00:00:00", "timeZone": "UTC"}

    body: dict[str, Any] = {
        "subject": data.title,
        "start": when(start),
        "end": when(end),
        "isAllDay": not isinstance(start, datetime),
    }
    if data.description:
        body["body"] = {"contentType": "text", "content": data.description}
    if data.location:
        body["location"] = {"displayName": data.location}
    if data.attendees:
        body["attendees"] = [
            {
                "emailAddress": {"address": a} if isinstance(a, str) else {"address": a.email, **({"name": a.name} if a.name else {})},
                "type": "required",
            }
            for a in data.attendees
        ]
    return body


@delete("/internal/events/{event_id:str}", status_code=204, include_in_schema=False)
async def delete_event(event_id: str, request: Request[Any, Any, Any], deps: ServiceDeps,
                       user_id: str = Parameter(query="user_id")) -> Response[None]:
    """Delete an event at its provider, then from the projection (with its event). With an
    Idempotency-Key a repeat is a no-op answering the first result."""
    return await keyed_delete(request, deps, user_id, lambda sync: _delete_event(sync, event_id, user_id))


async def _delete_event(sync: SyncDeps, event_id: str, user_id: str) -> None:
    row = await sync.pool.fetchrow(
        "SELECT event_id, user_id, connection_id, calendar_id, uid, recurrence_id, provider_event_id"
        " FROM sync.event_instances WHERE event_id = $1",
        event_id,
    )
    if row is None or row["user_id"] != user_id:
        raise Problem(404, "not_found", "No such event.")
    details = await _connection(sync, row["connection_id"], user_id)
    calendar = _calendar(details, row["calendar_id"])
    if details.provider == "ical" or calendar.read_only:
        raise Problem(422, "read_only_source", "This source is read-only (an iCal subscription or a read-only calendar).")
    new_object: tuple[str, str | None, str] | None = None  # (href, etag, data) after an EXDATE
    try:
        if details.provider in ("caldav", "icloud"):
            new_object = await _caldav_delete(sync, details, row)
        elif details.provider == "google":
            google = GoogleClient(sync.http, sync.settings.google_api_url, _token(sync, details.id))
            if row["provider_event_id"]:
                await google.delete_event(calendar.ref, row["provider_event_id"])
        elif details.provider == "microsoft":
            graph = GraphClient(sync.http, sync.settings.microsoft_graph_url, _token(sync, details.id))
            if row["provider_event_id"]:
                await graph.delete_event(row["provider_event_id"])
    except (ProviderError, SourceError) as exc:
        raise _provider_problem(exc) from None
    async with sync.pool.acquire() as conn, conn.transaction():
        if not await lock_connection(conn, details.id):
            return
        still = await conn.fetchval("SELECT 1 FROM sync.event_instances WHERE event_id = $1", event_id)
        if still:
            await write_changes(
                conn, sync.store, user_id=user_id, connection_id=details.id, calendar_id=calendar.id, sync_id=None,
                changes=ChangeSet([], [], [InstanceKey(event_id, row["uid"], row["recurrence_id"])]),
            )
        href = row["provider_event_id"]
        if details.provider in ("caldav", "icloud") and href:
            if new_object is None:
                await conn.execute(
                    "DELETE FROM sync.source_objects WHERE connection_id = $1 AND calendar_id = $2 AND href = $3",
                    details.id, calendar.id, href,
                )
            else:
                await conn.execute(
                    "UPDATE sync.source_objects SET etag = $4, data = $5 WHERE connection_id = $1 AND calendar_id = $2 AND href = $3",
                    details.id, calendar.id, new_object[0], new_object[1], new_object[2],
                )


async def _caldav_delete(sync: SyncDeps, details: ConnectionDetails, row: Any) -> tuple[str, str | None, str] | None:
    href = row["provider_event_id"]
    if not href:
        return None
    stored = await sync.pool.fetchrow(
        "SELECT etag, data FROM sync.source_objects WHERE connection_id = $1 AND calendar_id = $2 AND href = $3",
        details.id, row["calendar_id"], href,
    )
    client = _caldav(sync, details)
    try:
        etag = stored["etag"] if stored else None
        data = stored["data"] if stored else None
        for attempt in range(2):
            if etag is None or data is None or attempt:
                try:
                    current = await client.get(href)
                except NotFoundError:
                    return None
                etag, data = current.etag, current.data
            try:
                if not row["recurrence_id"]:
                    await client.delete(href, etag)
                    return None
                new_data = _with_exdate(data, row["uid"], row["recurrence_id"])
                new_etag = await client.put(href, new_data, etag=etag)
                return (href, new_etag, new_data)
            except PreconditionFailed:
                if attempt:
                    raise
        return None
    finally:
        await client.aclose()


def _with_exdate(data: str, uid: str, recurrence_id: str) -> str:
    """The object with one instance of its series excluded (EXDATE) and its override removed."""
    cal = ical.parse_ical(data.encode())
    value = parse_date_or_instant(recurrence_id)
    kept = []
    for component in cal.subcomponents:
        if component.name == "VEVENT" and str(component.get("UID", "")) == uid and component.get("RECURRENCE-ID") is not None:
            rid = component.get("RECURRENCE-ID").dt
            same = (rid == value) if isinstance(value, date) and not isinstance(value, datetime) else (
                isinstance(rid, datetime) and ical.to_utc(rid, UTC) == value
            )
            if same:
                continue
        kept.append(component)
    cal.subcomponents[:] = kept
    for component in cal.walk("VEVENT"):
        if str(component.get("UID", "")) == uid and component.get("RECURRENCE-ID") is None:
            start = component.get("DTSTART").dt
            if isinstance(start, datetime) and isinstance(value, datetime) and start.tzinfo is not None:
                value = value.astimezone(start.tzinfo)
            component.add("EXDATE", value)
    return _ical_text(cal)


@patch("/internal/events/{event_id:str}", include_in_schema=False)
async def move_event(event_id: str, request: Request[Any, Any, Any], deps: ServiceDeps) -> Response[bytes]:
    """Move a single event in place at its provider (same UID, same object), then its row. With an
    Idempotency-Key a repeat gets the first answer and moves nothing again."""
    return await keyed_write(request, deps, _move, lambda sync, move: _move_event(sync, event_id, move))


async def _move_event(sync: SyncDeps, event_id: str, move: EventMove) -> Answer:
    from .reservations import as_row, instance_record, instant_span

    start, end = instant_span(move.start, move.end)

    record = await instance_record(sync.pool, event_id)
    if record is None or record["user_id"] != move.user_id:
        raise Problem(404, "not_found", "No such event.")
    if record["recurrence_id"] or record["recurring_event_id"] or record["all_day"]:
        raise Problem(422, "not_movable", "Only a single, timed event can be moved.")
    details = await _connection(sync, record["connection_id"], move.user_id)
    calendar = _calendar(details, record["calendar_id"])
    if details.provider == "ical" or calendar.read_only:
        raise Problem(422, "read_only_source", "This source is read-only (an iCal subscription or a read-only calendar).")
    title = move.title if move.title is not None else record["title"]
    description = move.description if move.description is not None else record["description"]
    stored_object: tuple[str, str | None, str] | None = None
    pid = record["provider_event_id"]
    try:
        if details.provider in ("caldav", "icloud") and pid:
            stored_object = await _caldav_move(sync, details, record, start, end, title, description)
        elif details.provider == "google" and pid:
            google = GoogleClient(sync.http, sync.settings.google_api_url, _token(sync, details.id))
            await google.patch_event(calendar.ref, pid, {
                "start": {"dateTime": rfc3339(start)},
                "end": {"dateTime": rfc3339(end)},
                "summary": title, **({"description": description} if description else {}),
            })
        elif details.provider == "microsoft" and pid:
            graph = GraphClient(sync.http, sync.settings.microsoft_graph_url, _token(sync, details.id))
            await graph.update_event(pid, {
                "start": graph_time(start),
                "end": graph_time(end),
                "subject": title,
            })
    except (ProviderError, SourceError) as exc:
        raise _provider_problem(exc) from None
    now = sync.now()
    async with sync.pool.acquire() as conn, conn.transaction():
        if not await lock_connection(conn, details.id):
            raise Problem(404, "not_found", "No such connection.")
        current = await instance_record(conn, event_id)
        if current is None:
            raise Problem(404, "not_found", "No such event.")
        instance = ical.Instance(
            uid=current["uid"], recurrence_id="", recurring=False, title=title, description=description,
            location=current["location"], start_at=start, end_at=end, all_day=False, start_date=None,
            end_date=None, status=current["status"], transparency=current["transparency"],
        )
        row = row_for(instance, connection_id=details.id, calendar_id=calendar.id,
                      provider_event_id=current["provider_event_id"], updated_at=now)
        row = msgspec.structs.replace(row, booking_id=as_row(current).booking_id)
        await write_changes(conn, sync.store, user_id=move.user_id, connection_id=details.id, calendar_id=calendar.id,
                            sync_id=None, changes=ChangeSet([], [row], []))
        if stored_object is not None:
            await conn.execute(
                "UPDATE sync.source_objects SET etag = $4, data = $5 WHERE connection_id = $1 AND calendar_id = $2"
                " AND href = $3",
                details.id, calendar.id, *stored_object,
            )
    return json_answer(200, event_body(row, details.id, calendar.id))


async def _caldav_move(sync: SyncDeps, details: ConnectionDetails, record: Any, start: datetime, end: datetime,
                       title: str, description: str | None) -> tuple[str, str | None, str] | None:
    """PUT the same CalDAV object with new DTSTART/DTEND and SEQUENCE + 1 (If-Match its ETag)."""
    href = record["provider_event_id"]
    client = _caldav(sync, details)
    try:
        for attempt in range(2):
            try:
                current = await client.get(href)
            except NotFoundError:
                raise Problem(404, "not_found", "The event is gone at the provider.") from None
            new_data = _moved(current.data, record["uid"], start, end, title, description)
            try:
                new_etag = await client.put(href, new_data, etag=current.etag)
                return (href, new_etag, new_data)
            except PreconditionFailed:
                if attempt:
                    raise
        return None
    finally:
        await client.aclose()


def _moved(data: str, uid: str, start: datetime, end: datetime, title: str, description: str | None) -> str:
    cal = ical.parse_ical(data.encode())
    for component in cal.walk("VEVENT"):
        if str(component.get("UID", "")) != uid:
            continue
        sequence = int(component.get("SEQUENCE", 0) or 0)
        for name in ("DTSTART", "DTEND", "DURATION", "SEQUENCE", "DTSTAMP", "SUMMARY"):
            component.pop(name, None)
        component.add("DTSTART", start)
        component.add("DTEND", end)
        component.add("DTSTAMP", datetime.now(UTC))
        component.add("SEQUENCE", sequence + 1)
        component.add("SUMMARY", title)
        if description is not None:
            component.pop("DESCRIPTION", None)
            component.add("DESCRIPTION", description)
    return _ical_text(cal)


ROUTES = [create_event, delete_event, move_event]

