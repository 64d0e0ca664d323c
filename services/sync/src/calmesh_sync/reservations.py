"""Reservations: a booking's or a hold's time in the merged-events projection, before (or without)
a provider event (docs/contracts.md, "Reservations").

The booking service enters a booking's time here before it answers 201, so that every read path
(availability, conflicts, events, every page's slots) sees it busy at once. The row is an ordinary
projection row marked with ``booking_id`` and carried by the ordinary sync events, so a rebuild
gives it back. Its UID is derived from the booking id (`calmesh_common.ids.booking_uid`), the UID
the provider event is later written with: that write fills the provider's ids into the same row.

Both writes take an ``Idempotency-Key`` (calmesh_common.idempotency, as the event writes in
writes.py): a repeat with the same request gets the first answer and changes nothing.

- ``PUT /internal/reservations/{id}`` enters or moves the row (idempotent: a repeat changes nothing);
  ``replaces`` names reservations (a hold) removed in the same transaction, so a held slot stays
  taken while its booking takes it over.
- ``DELETE /internal/reservations/{id}?user_id`` frees the time at once: a row with a provider event
  is marked cancelled (the provider event is deleted later, with ``DELETE /internal/events/{id}``,
  which removes the row); a row with no provider event is removed. A repeat is a no-op.
  A row a provider event filled in is never dropped before that event's deletion, or the event
  would be left behind.
- ``GET /internal/reservations/{id}?user_id`` → the row, or 404 (a reaper's question: did the
  entry of a booking whose process died land?).
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response, delete, get, put
from litestar.params import Parameter

from calmesh_common.events.sync import InstanceRow
from calmesh_common.idempotency import Answer, json_answer, response
from calmesh_common.ids import booking_uid
from calmesh_common.problems import FieldError, Problem
from calmesh_common.service import ServiceDeps, json_response
from calmesh_common.timefmt import parse_instant
from calmesh_providers.ical import Instance

from .engine import SyncDeps
from .internal_keys import decoded, in_transaction
from .projection import ChangeSet, InstanceKey, fingerprint, lock_connection, row_for, write_changes

_ROW_COLUMNS = (
    "event_id, user_id, connection_id, calendar_id, uid, recurrence_id, recurring_event_id, provider_event_id, title,"
    " description, location, start_at, end_at, all_day, start_date, end_date, status, transparency, updated_at,"
    " fingerprint, booking_id"
)


class TimeOnCalendar(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A user's time on a calendar of a connection: what a reservation and an event write name."""

    user_id: str
    connection_id: str
    calendar_id: str
    title: str
    start: str
    end: str
    description: str | None = None


class ReservationPut(TimeOnCalendar, kw_only=True):
    #: Reservations (holds) whose rows go in the same transaction.
    replaces: list[str] = []


_put = msgspec.json.Decoder(ReservationPut)


def _sync(deps: ServiceDeps) -> SyncDeps:
    return deps.extras["sync"]  # type: ignore[no-any-return]


def instant_field(value: str, field: str) -> datetime:
    """The RFC 3339 instant (with an offset) of request field `field`, in UTC; 400 otherwise."""
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise Problem(400, "validation_error", f"{field}: {exc}", errors=[FieldError(field, str(exc))]) from None


def instant_span(start: str, end: str) -> tuple[datetime, datetime]:
    """A request's ``start``/``end`` in UTC: 400 for either that is not an instant, 422 when end is
    not after start."""
    first, last = instant_field(start, "start"), instant_field(end, "end")
    if last <= first:
        raise Problem(422, "end_before_start", "end must be after start.")
    return first, last


def as_row(record: asyncpg.Record) -> InstanceRow:
    """A stored projection row as the event struct that carries it."""
    return InstanceRow(
        event_id=record["event_id"], uid=record["uid"], recurrence_id=record["recurrence_id"],
        recurring_event_id=record["recurring_event_id"], provider_event_id=record["provider_event_id"],
        title=record["title"], description=record["description"], location=record["location"],
        start_at=record["start_at"], end_at=record["end_at"], all_day=record["all_day"],
        start_date=record["start_date"], end_date=record["end_date"], status=record["status"],
        transparency=record["transparency"], updated_at=record["updated_at"], fingerprint=record["fingerprint"],
        booking_id=record["booking_id"],
    )


async def instance_record(conn: asyncpg.Connection | asyncpg.Pool, event_id: str) -> asyncpg.Record | None:
    """The projection row `event_id`, every column `as_row` needs (None: no such row)."""
    return await conn.fetchrow(f"SELECT {_ROW_COLUMNS} FROM sync.event_instances WHERE event_id = $1", event_id)


async def reservation_rows(conn: asyncpg.Connection, ids: list[str]) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_ROW_COLUMNS} FROM sync.event_instances WHERE booking_id = ANY($1::text[])", ids
    )
    return rows


def reservation_body(row: InstanceRow, connection_id: str, calendar_id: str) -> dict[str, Any]:
    from .writes import event_body

    return event_body(row, connection_id, calendar_id)


def _refingerprint(row: InstanceRow) -> InstanceRow:
    instance = Instance(
        uid=row.uid, recurrence_id=row.recurrence_id, recurring=row.recurring_event_id is not None, title=row.title,
        description=row.description, location=row.location, start_at=row.start_at, end_at=row.end_at,
        all_day=row.all_day, start_date=row.start_date, end_date=row.end_date, status=row.status,
        transparency=row.transparency,
    )
    return msgspec.structs.replace(row, fingerprint=fingerprint(instance, row.provider_event_id, row.recurring_event_id))


@put("/internal/reservations/{reservation_id:str}", include_in_schema=False)
async def put_reservation(reservation_id: str, request: Request[Any, Any, Any], deps: ServiceDeps) -> Any:
    """Enter (or move) a booking's or hold's time in the projection; answer its row as an event.
    With an Idempotency-Key a repeat gets the first answer and changes nothing. The key's claim,
    the rows and the answer are one transaction."""
    raw = await request.body()
    body = decoded(raw, _put)
    start, end = instant_span(body.start, body.end)
    others = [r for r in body.replaces if r != reservation_id]
    sync = _sync(deps)
    async with sync.pool.acquire() as conn:
        # The rows live on the request's connection but for a booking moved across connections:
        # lock that one, read under the lock, and start over with every connection the rows name
        # when that was not enough (locks are taken in order, never one more while holding some).
        locked = [body.connection_id]
        while True:
            try:
                return response(await in_transaction(
                    request, body.user_id, raw, conn,
                    partial(_enter_locked, sync=sync, body=body, reservation_id=reservation_id, others=others,
                            locked=locked, start=start, end=end)))
            except _MoreLocks as more:
                locked = more.needed


class _MoreLocks(Exception):
    """The rows name connections whose locks were not taken: start over with all of them."""

    def __init__(self, needed: list[str]) -> None:
        super().__init__(needed)
        self.needed = needed


async def _enter_locked(conn: asyncpg.Connection, sync: SyncDeps, body: ReservationPut, reservation_id: str,
                        others: list[str], locked: list[str], start: datetime, end: datetime) -> Answer:
    found = await _locked_rows(conn, locked, [reservation_id, *others])
    needed = sorted({*locked, *(r["connection_id"] for r in found)})
    if needed != locked:
        raise _MoreLocks(needed)
    return await _enter(conn, sync, body, reservation_id, found, start, end)


async def _locked_rows(conn: asyncpg.Connection, connections: list[str], ids: list[str]) -> list[asyncpg.Record]:
    """Take the write locks of `connections` (in order), then read the reservations' rows under
    them (a provider write may have filled one in meanwhile); 404 when a connection was removed."""
    for connection_id in connections:
        await lock_connection(conn, connection_id, check_removed=False)
    found: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_ROW_COLUMNS}, false AS removed FROM sync.event_instances WHERE booking_id = ANY($1::text[])"
        " UNION ALL SELECT " + ", ".join(["NULL"] * len(_ROW_COLUMNS.split(","))) + ", true"
        " FROM sync.removed_connections WHERE connection_id = ANY($2::text[])",
        ids, connections,
    )
    if any(r["removed"] for r in found):
        raise Problem(404, "not_found", "No such connection.")
    return found


async def _enter(conn: asyncpg.Connection, sync: SyncDeps, body: ReservationPut, reservation_id: str,
                 found: list[asyncpg.Record], start: datetime, end: datetime) -> Answer:
    now = sync.now()
    if any(r["user_id"] != body.user_id for r in found):
        raise Problem(404, "not_found", "No such reservation.")
    own = next((r for r in found if r["booking_id"] == reservation_id), None)
    if own is not None and own["status"] == "cancelled":
        raise Problem(409, "reservation_released", "This reservation was released; make a new one.")
    changes: dict[tuple[str, str], ChangeSet] = {}

    def change_set(connection_id: str, calendar_id: str) -> ChangeSet:
        return changes.setdefault((connection_id, calendar_id), ChangeSet([], [], []))

    if own is None:
        uid = booking_uid(reservation_id)
        instance = Instance(
            uid=uid, recurrence_id="", recurring=False, title=body.title, description=body.description,
            location=None, start_at=start, end_at=end, all_day=False, start_date=None, end_date=None,
            status="confirmed", transparency="busy",
        )
        row = row_for(instance, connection_id=body.connection_id, calendar_id=body.calendar_id,
                      provider_event_id=None, updated_at=now)
        row = msgspec.structs.replace(row, booking_id=reservation_id)
        change_set(body.connection_id, body.calendar_id).created.append(row)
        where = (body.connection_id, body.calendar_id)
    else:
        row = as_row(own)
        where = (own["connection_id"], own["calendar_id"])
        if (row.start_at, row.end_at, row.title) != (start, end, body.title):
            row = _refingerprint(msgspec.structs.replace(row, start_at=start, end_at=end, title=body.title,
                                                         updated_at=now))
            change_set(*where).updated.append(row)
    for other in found:
        if other["booking_id"] == reservation_id:
            continue
        # A hold taken over by its booking: gone in the same transaction the booking's row comes in.
        change_set(other["connection_id"], other["calendar_id"]).deleted.append(
            InstanceKey(other["event_id"], other["uid"], other["recurrence_id"]))
    for (connection_id, calendar_id), change in sorted(changes.items()):
        await write_changes(conn, sync.store, user_id=body.user_id, connection_id=connection_id,
                            calendar_id=calendar_id, sync_id=None, changes=change, reason="reservation")
    return json_answer(200 if own is not None else 201, reservation_body(row, *where))


@delete("/internal/reservations/{reservation_id:str}", status_code=204, include_in_schema=False)
async def delete_reservation(reservation_id: str, request: Request[Any, Any, Any], deps: ServiceDeps,
                             user_id: str = Parameter(query="user_id")) -> Response[None]:
    """Free a reservation's time at once; a repeat (or an unknown id) is a no-op. The key's claim,
    the change and the answer are one transaction."""
    sync = _sync(deps)

    async def work(conn: asyncpg.Connection) -> Answer:
        await _delete_reservation(conn, sync, reservation_id, user_id)
        return Answer(204, b"")

    async with sync.pool.acquire() as conn:
        return response(await in_transaction(request, user_id, b"", conn, work))  # type: ignore[return-value]


async def _delete_reservation(conn: asyncpg.Connection, sync: SyncDeps, reservation_id: str, user_id: str) -> None:
    now = sync.now()
    found = await reservation_rows(conn, [reservation_id])
    for connection_id in sorted({r["connection_id"] for r in found}):
        await lock_connection(conn, connection_id)
    for record in await reservation_rows(conn, [reservation_id]):
        if record["user_id"] != user_id:
            continue
        row = as_row(record)
        if row.provider_event_id is None:
            change = ChangeSet([], [], [InstanceKey(row.event_id, row.uid, row.recurrence_id)])
        elif row.status != "cancelled":
            change = ChangeSet([], [_refingerprint(msgspec.structs.replace(row, status="cancelled", updated_at=now))], [])
        else:
            continue
        await write_changes(conn, sync.store, user_id=user_id, connection_id=record["connection_id"],
                            calendar_id=record["calendar_id"], sync_id=None, changes=change, reason="released")


@get("/internal/reservations/{reservation_id:str}", include_in_schema=False)
async def get_reservation(reservation_id: str, deps: ServiceDeps, user_id: str = Parameter(query="user_id")) -> Any:
    sync = _sync(deps)
    async with sync.pool.acquire() as conn:
        found = [r for r in await reservation_rows(conn, [reservation_id]) if r["user_id"] == user_id]
    if not found:
        raise Problem(404, "not_found", "No such reservation.")
    record = found[0]
    return json_response(reservation_body(as_row(record), record["connection_id"], record["calendar_id"]))


ROUTES = [put_reservation, delete_reservation, get_reservation]
