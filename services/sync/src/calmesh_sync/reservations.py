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

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response, delete, get, put
from litestar.params import Parameter

from calmesh_common.events.sync import InstanceRow
from calmesh_common.idempotency import Answer, json_answer, problem_answer, response
from calmesh_common.ids import booking_uid
from calmesh_common.problems import FieldError, Problem
from calmesh_common.service import ServiceDeps, json_response
from calmesh_common.timefmt import parse_instant
from calmesh_providers.ical import Instance

from .engine import SyncDeps
from .internal_keys import HEADER, KEYS, decoded, fingerprint_of, in_transaction, scope_of
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
    the rows and the answer are one transaction, shared by the reservations of the same
    connection that arrive meanwhile (`GroupCommit`)."""
    raw = await request.body()
    body = decoded(raw, _put)
    start, end = instant_span(body.start, body.end)
    sync = _sync(deps)
    group = deps.extras.get("reservation_group")
    if group is None:
        group = deps.extras["reservation_group"] = GroupCommit(sync)
    entry = _Entry(reservation_id, body, start, end, request.headers.get(HEADER), fingerprint_of(request, raw))
    answer = await group.enter(entry)
    if answer is None:  # its rows are on another connection too: alone, with every lock it needs
        answer = await _enter_alone(request, raw, sync, entry)
    return response(answer)


async def _enter_alone(request: Request[Any, Any, Any], raw: bytes, sync: SyncDeps, entry: _Entry) -> Answer:
    body = entry.body
    others = [r for r in body.replaces if r != entry.reservation_id]
    async with sync.pool.acquire() as conn:
        # The rows live on the request's connection but for a booking moved across connections:
        # lock that one, read under the lock, and start over with every connection the rows name
        # when that was not enough (locks are taken in order, never one more while holding some).
        locked = [body.connection_id]
        while True:
            try:
                return await in_transaction(
                    request, body.user_id, raw, conn,
                    partial(_enter_locked, sync=sync, body=body, reservation_id=entry.reservation_id,
                            others=others, locked=locked, start=entry.start, end=entry.end))
            except _MoreLocks as more:
                locked = more.needed


@dataclass
class _Entry:
    """One PUT waiting for its group's transaction."""

    reservation_id: str
    body: ReservationPut
    start: datetime
    end: datetime
    key: str | None
    fingerprint: str
    done: asyncio.Future[Answer | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def ids(self) -> set[str]:
        return {self.reservation_id, *self.body.replaces}


class GroupCommit:
    """Group commit of the reservations of one connection: while one transaction holds the
    connection's write lock, the PUTs that arrive queue up, and the next transaction takes them all
    (up to `limit`): one lock, one read of their rows, one commit and one projection event for the
    lot, each request still with its own Idempotency-Key and its own answer. A request whose rows
    name another connection (a booking moved across connections) is answered None and goes alone."""

    def __init__(self, sync: SyncDeps, limit: int = 64) -> None:
        self.sync = sync
        self.limit = limit
        self._queues: dict[tuple[str, str], list[_Entry]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def enter(self, entry: _Entry) -> Answer | None:
        group = (entry.body.connection_id, entry.body.user_id)
        queue = self._queues.get(group)
        if queue is None:
            self._queues[group] = [entry]
            # A task of its own: the group goes on when the request that started it is cancelled.
            task = asyncio.create_task(self._drain(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            queue.append(entry)
        return await asyncio.shield(entry.done)

    async def _drain(self, group: tuple[str, str]) -> None:
        queue = self._queues[group]
        try:
            while queue:
                batch: list[_Entry] = []
                ids: set[str] = set()
                for entry in list(queue):
                    # A reservation appears once in a transaction; a second PUT of it waits for the next.
                    if len(batch) < self.limit and not entry.ids & ids:
                        batch.append(entry)
                        ids |= entry.ids
                        queue.remove(entry)
                try:
                    answers = await self._commit(group[0], batch)
                except Exception as exc:  # noqa: BLE001 - every request of the group gets the error
                    for entry in batch:
                        if not entry.done.done():
                            entry.done.set_exception(exc)
                    continue
                for entry, answer in zip(batch, answers, strict=True):
                    if not entry.done.done():
                        entry.done.set_result(answer)
        finally:
            del self._queues[group]
            for entry in queue:  # only when cancelled at shutdown
                if not entry.done.done():
                    entry.done.set_exception(RuntimeError("sync is stopping"))

    async def _commit(self, connection_id: str, batch: list[_Entry]) -> list[Answer | None]:
        answers: list[Answer | None] = [None] * len(batch)
        user_id = batch[0].body.user_id
        scope = scope_of(user_id)
        claimed: list[int] = []
        async with self.sync.pool.acquire() as conn, conn.transaction():
            # The keys first (in key order: two groups claiming the same keys wait, never deadlock),
            # then the connection's write lock, held only for the rows.
            live = []
            for i in sorted(range(len(batch)), key=lambda i: batch[i].key or ""):
                key = batch[i].key
                if key is not None:
                    try:
                        first = await KEYS.claim(conn, scope, key, batch[i].fingerprint)
                    except Problem as problem:  # the key of another request (422), or in flight (409)
                        answers[i] = problem_answer(problem)
                        continue
                    if first is not None:  # a repeat: the first answer, nothing written
                        answers[i] = first
                        continue
                    claimed.append(i)
                live.append(i)
            live.sort()
            found: list[asyncpg.Record] = []
            try:
                if live:
                    found = await _locked_rows(conn, [connection_id], sorted({r for i in live for r in batch[i].ids}))
            except Problem as problem:  # the connection was removed
                for i in live:
                    answers[i] = problem_answer(problem)
                live = []
            rows: dict[str, list[asyncpg.Record]] = {}
            for record in found:
                rows.setdefault(record["booking_id"], []).append(record)
            changes: Changes = {}
            now = self.sync.now()
            for i in live:
                entry = batch[i]
                mine = [r for rid in sorted(entry.ids) for r in rows.get(rid, [])]
                if any(r["connection_id"] != connection_id for r in mine):
                    if i in claimed:  # it goes alone (answer None), and claims its key there
                        claimed.remove(i)
                        await KEYS.release(conn, scope, entry.key or "")
                    continue
                try:
                    answers[i] = _plan(entry.body, entry.reservation_id, mine, entry.start, entry.end, now, changes)
                except Problem as problem:
                    answers[i] = problem_answer(problem)
            await _write(conn, self.sync, user_id, changes)
            for i in claimed:
                answer = answers[i]
                assert answer is not None
                await KEYS.settle(conn, scope, batch[i].key or "", answer)
        return answers


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


Changes = dict[tuple[str, str], ChangeSet]


async def _enter(conn: asyncpg.Connection, sync: SyncDeps, body: ReservationPut, reservation_id: str,
                 found: list[asyncpg.Record], start: datetime, end: datetime) -> Answer:
    changes: Changes = {}
    answer = _plan(body, reservation_id, found, start, end, sync.now(), changes)
    await _write(conn, sync, body.user_id, changes)
    return answer


async def _write(conn: asyncpg.Connection, sync: SyncDeps, user_id: str, changes: Changes) -> None:
    for (connection_id, calendar_id), change in sorted(changes.items()):
        await write_changes(conn, sync.store, user_id=user_id, connection_id=connection_id,
                            calendar_id=calendar_id, sync_id=None, changes=change, reason="reservation")


def _plan(body: ReservationPut, reservation_id: str, found: list[asyncpg.Record], start: datetime, end: datetime,
          now: datetime, changes: Changes) -> Answer:
    """Add what entering `reservation_id` changes to `changes` and return its answer; a Problem
    is raised before anything is added."""
    if any(r["user_id"] != body.user_id for r in found):
        raise Problem(404, "not_found", "No such reservation.")
    own = next((r for r in found if r["booking_id"] == reservation_id), None)
    if own is not None and own["status"] == "cancelled":
        raise Problem(409, "reservation_released", "This reservation was released; make a new one.")

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
