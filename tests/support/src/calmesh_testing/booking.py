"""The booking service in-process against fakes of connections and sync, and a platform owner
whose calendar is a Radicale calendar (`sign_up_with_caldav`).

`BookingHarness` starts, in the test's event loop:
- a NATS server of its own (so its durable consumers share nothing with a platform stack that runs
  in the same test session),
- the booking app under uvicorn on a free port, on a schema of its own (migrated here) and reading
  busy time from a projection table of its own with the columns of docs/contracts.md,
- `FakeCalendarServices`: connections' ``GET /internal/calendars/{slug}`` and sync's
  ``POST /internal/events`` / ``DELETE /internal/events/{id}``, which write that projection table as
  sync would.

Requests go straight to the service with the internal headers the gateway would add.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import nats
from litestar import Litestar, Request, Response, delete, get, patch, post, put

from calmesh_booking.app import create_app
from calmesh_common.devstack.embedded import EmbeddedNats
from calmesh_common.events import Envelope, encode_envelope, new_event_id
from calmesh_common.ids import booking_uid, event_id_for, new_id
from calmesh_common.migrations import apply_migrations, package_migrations
from calmesh_common.service import SECRET_HEADER
from calmesh_common.settings import Settings
from calmesh_common.streams import ensure_streams

from .radicale import Radicale
from .servers import Served

PROJECTION_SQL = """
CREATE TABLE {table} (
    event_id            text NOT NULL,
    user_id             text NOT NULL,
    connection_id       text NOT NULL,
    calendar_id         text NOT NULL,
    uid                 text NOT NULL,
    recurrence_id       text NOT NULL DEFAULT '',
    recurring_event_id  text,
    provider_event_id   text,
    title               text NOT NULL DEFAULT '',
    description         text NOT NULL DEFAULT '',
    location            text NOT NULL DEFAULT '',
    start_at            timestamptz NOT NULL,
    end_at              timestamptz NOT NULL,
    all_day             boolean NOT NULL DEFAULT false,
    start_date          date,
    end_date            date,
    status              text NOT NULL DEFAULT 'confirmed',
    transparency        text NOT NULL DEFAULT 'busy',
    updated_at          timestamptz NOT NULL DEFAULT now(),
    booking_id          text,
    PRIMARY KEY (connection_id, calendar_id, uid, recurrence_id)
);
CREATE INDEX ON {table} (connection_id, calendar_id, start_at);
"""


@dataclass
class FakeCalendar:
    user_id: str
    slug: str
    timezone: str
    sources: list[dict[str, Any]]


@dataclass
class FakeCalendarServices:
    """connections' and sync's internal APIs, as far as booking uses them."""

    pool: asyncpg.Pool
    projection: str
    calendars: dict[tuple[str, str], FakeCalendar] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    #: Set to make the next event writes fail with this status (a flaky provider), or with
    #: (status, problem code), e.g. (409, "connection_unavailable") as sync answers refused credentials.
    fail_writes: list[int | tuple[int, str]] = field(default_factory=list)
    #: Every POST /internal/events seen (failed ones too).
    write_attempts: int = 0
    #: Set to make the next reservation entries fail with this status (sync away).
    fail_reservations: list[int] = field(default_factory=list)
    moved: list[dict[str, Any]] = field(default_factory=list)
    #: Where to announce projection changes, as sync does (set by the harness).
    nc: Any = None

    async def announce(self, user_id: str, connection_id: str, calendar_id: str) -> None:
        """Publish what sync publishes after changing a source's rows (source_events.upserted)."""
        if self.nc is None:
            return
        envelope = Envelope(
            id=new_event_id(), stream_id=f"{connection_id}:{calendar_id}", version=1, occurred_at=datetime.now(UTC),
            type="source_events.upserted.v1", user_id=user_id,
            event=msgspec.Raw(msgspec.json.encode({"connection_id": connection_id, "calendar_id": calendar_id})),
        )
        await self.nc.publish("calmesh.sync.source_events.upserted", encode_envelope(envelope))
        await self.nc.flush()

    def add_calendar(self, user_id: str, slug: str, timezone: str = "UTC", *, read_only: bool = False) -> FakeCalendar:
        """A unified calendar with one source (`read_only`: an iCal feed, say)."""
        conn_id = new_id("conn")
        cal = FakeCalendar(user_id, slug, timezone, [
            {"id": new_id("src"), "connection_id": conn_id, "calendar_id": "personal", "name": "Personal",
             "sort_order": 0, "read_only": read_only},
        ])
        self.calendars[(user_id, slug)] = cal
        return cal

    async def add_event(self, cal: FakeCalendar, start: datetime, end: datetime, *, all_day: bool = False,
                        start_date: date | None = None, end_date: date | None = None, status: str = "confirmed",
                        transparency: str = "busy", title: str = "Busy") -> str:
        src = cal.sources[0]
        uid = uuid.uuid4().hex
        eid = event_id_for(src["connection_id"], src["calendar_id"], uid)
        async with self.pool.acquire() as conn:
            await conn.execute(
                f"INSERT INTO {self.projection} (event_id, user_id, connection_id, calendar_id, uid, title, start_at,"
                " end_at, all_day, start_date, end_date, status, transparency)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                eid, cal.user_id, src["connection_id"], src["calendar_id"], uid, title, start, end, all_day,
                start_date, end_date, status, transparency,
            )
        await self.announce(cal.user_id, src["connection_id"], src["calendar_id"])
        return eid

    def app(self, secret: str) -> Litestar:
        fake = self

        def check(request: Request[Any, Any, Any]) -> Response[Any] | None:
            if request.headers.get(SECRET_HEADER) != secret:
                return Response({"code": "unauthorized"}, status_code=401)
            return None

        @get("/internal/calendars/{slug:str}")
        async def calendar(request: Request[Any, Any, Any], slug: str, user_id: str) -> Response[Any]:
            if (refused := check(request)) is not None:
                return refused
            cal = fake.calendars.get((user_id, slug))
            if cal is None:
                return Response({"code": "not_found"}, status_code=404)
            return Response({"slug": cal.slug, "name": cal.slug, "timezone": cal.timezone, "user_id": cal.user_id,
                             "sources": cal.sources})

        @post("/internal/events", status_code=201)
        async def create_event(request: Request[Any, Any, Any]) -> Response[Any]:
            if (refused := check(request)) is not None:
                return refused
            fake.write_attempts += 1
            if fake.fail_writes:
                failure = fake.fail_writes.pop(0)
                status, code = failure if isinstance(failure, tuple) else (failure, "provider_error")
                return Response({"code": code, "detail": f"fake sync: {code}"}, status_code=status)
            body = msgspec.json.decode(await request.body())
            booking_id = body.get("booking_id")
            uid = booking_uid(booking_id) if booking_id else uuid.uuid4().hex
            eid = event_id_for(body["connection_id"], body["calendar_id"], uid)
            start = datetime.fromisoformat(body["start"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(body["end"].replace("Z", "+00:00"))
            async with fake.pool.acquire() as conn:
                # A booking's event fills in its reservation row (same UID): one row, as sync does.
                await conn.execute(
                    f"INSERT INTO {fake.projection} AS t (event_id, user_id, connection_id, calendar_id, uid, title,"
                    " start_at, end_at, provider_event_id, booking_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                    " ON CONFLICT (connection_id, calendar_id, uid, recurrence_id) DO UPDATE SET"
                    " provider_event_id = EXCLUDED.provider_event_id, title = EXCLUDED.title",
                    eid, body["user_id"], body["connection_id"], body["calendar_id"], uid, body["title"], start, end,
                    f"/fake/{uid}.ics", booking_id,
                )
            await fake.announce(body["user_id"], body["connection_id"], body["calendar_id"])
            event = {"id": eid, **body}
            fake.created.append(event)
            return Response(event, status_code=201)

        @delete("/internal/events/{event_id:str}", status_code=204)
        async def delete_event(request: Request[Any, Any, Any], event_id: str, user_id: str) -> None:
            if check(request) is not None:
                raise PermissionError("no secret")
            async with fake.pool.acquire() as conn:
                row = await conn.fetchrow(
                    f"DELETE FROM {fake.projection} WHERE event_id = $1 AND user_id = $2"
                    " RETURNING connection_id, calendar_id", event_id, user_id)
            if row is not None:
                await fake.announce(user_id, row["connection_id"], row["calendar_id"])
            fake.deleted.append(event_id)

        def row_doc(row: Any) -> dict[str, Any]:
            return {"id": row["event_id"], "connection_id": row["connection_id"], "booking_id": row["booking_id"],
                    "start": row["start_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "end": row["end_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "status": row["status"]}

        @put("/internal/reservations/{reservation_id:str}")
        async def put_reservation(request: Request[Any, Any, Any], reservation_id: str) -> Response[Any]:
            if (refused := check(request)) is not None:
                return refused
            if fake.fail_reservations:
                return Response({"code": "unavailable"}, status_code=fake.fail_reservations.pop(0))
            body = msgspec.json.decode(await request.body())
            uid = booking_uid(reservation_id)
            start = datetime.fromisoformat(body["start"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(body["end"].replace("Z", "+00:00"))
            async with fake.pool.acquire() as conn, conn.transaction():
                await conn.execute(f"DELETE FROM {fake.projection} WHERE booking_id = ANY($1::text[])"
                                   " AND booking_id <> $2", body.get("replaces") or [], reservation_id)
                row = await conn.fetchrow(
                    f"UPDATE {fake.projection} SET start_at = $2, end_at = $3 WHERE booking_id = $1 RETURNING *",
                    reservation_id, start, end)
                if row is None:
                    row = await conn.fetchrow(
                        f"INSERT INTO {fake.projection} (event_id, user_id, connection_id, calendar_id, uid, title,"
                        " start_at, end_at, booking_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
                        event_id_for(body["connection_id"], body["calendar_id"], uid), body["user_id"],
                        body["connection_id"], body["calendar_id"], uid, body["title"], start, end, reservation_id)
            await fake.announce(body["user_id"], body["connection_id"], body["calendar_id"])
            return Response(row_doc(row), status_code=201)

        @delete("/internal/reservations/{reservation_id:str}", status_code=204)
        async def delete_reservation(request: Request[Any, Any, Any], reservation_id: str, user_id: str) -> None:
            if check(request) is not None:
                raise PermissionError("no secret")
            async with fake.pool.acquire() as conn:
                await conn.execute(f"DELETE FROM {fake.projection} WHERE booking_id = $1 AND user_id = $2"
                                   " AND provider_event_id IS NULL", reservation_id, user_id)
                await conn.execute(f"UPDATE {fake.projection} SET status = 'cancelled' WHERE booking_id = $1"
                                   " AND user_id = $2", reservation_id, user_id)

        @get("/internal/reservations/{reservation_id:str}")
        async def get_reservation(request: Request[Any, Any, Any], reservation_id: str, user_id: str) -> Response[Any]:
            if (refused := check(request)) is not None:
                return refused
            async with fake.pool.acquire() as conn:
                row = await conn.fetchrow(f"SELECT * FROM {fake.projection} WHERE booking_id = $1 AND user_id = $2",
                                          reservation_id, user_id)
            if row is None:
                return Response({"code": "not_found"}, status_code=404)
            return Response(row_doc(row))

        @patch("/internal/events/{event_id:str}")
        async def move_event(request: Request[Any, Any, Any], event_id: str) -> Response[Any]:
            if (refused := check(request)) is not None:
                return refused
            body = msgspec.json.decode(await request.body())
            start = datetime.fromisoformat(body["start"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(body["end"].replace("Z", "+00:00"))
            async with fake.pool.acquire() as conn:
                row = await conn.fetchrow(f"UPDATE {fake.projection} SET start_at = $2, end_at = $3"
                                          " WHERE event_id = $1 RETURNING *", event_id, start, end)
            if row is None:
                return Response({"code": "not_found"}, status_code=404)
            fake.moved.append({"id": event_id, **body})
            return Response(row_doc(row))

        return Litestar([calendar, create_event, delete_event, put_reservation, delete_reservation, get_reservation,
                         move_event], debug=False)


@dataclass
class BookingHarness:
    """The booking service with fake neighbours; see the module docstring."""

    database_url: str
    schema: str = field(default_factory=lambda: f"bk_{uuid.uuid4().hex[:10]}")
    clock: Callable[[], datetime] | None = None
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    session_secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    public_base_url: str = "http://calmesh.test"
    #: Holds last this many seconds instead of their page's hold_minutes (0: the page's).
    hold_seconds_override: int = 0
    #: A booking pending longer than this is the reaper's to settle.
    booking_pending_timeout_seconds: int = 30
    #: The mail limits (0: off). Off unless a test sets them: the tests of a module share one
    #: harness and book for the same few addresses, and only the tests of the limits count mails.
    mail_per_page_per_hour: int = 0
    mail_per_recipient_per_day: int = 0
    #: How long an unverified booking holds its slot.
    booking_verification_seconds: int = 900

    def __post_init__(self) -> None:
        self.projection = f"{self.schema}_sync.event_instances"
        self._tmp = tempfile.TemporaryDirectory(prefix="calmesh-booking-test-")
        self.data_dir = Path(self._tmp.name)
        self.mail_dir = self.data_dir / "mail"
        self.nats = EmbeddedNats(self.data_dir / "nats")
        self.pool: asyncpg.Pool
        self.fake: FakeCalendarServices
        self.client: httpx.AsyncClient

    async def start(self) -> BookingHarness:
        nats_url = await asyncio.to_thread(self.nats.start)
        nc = await nats.connect(nats_url)
        try:
            await ensure_streams(nc.jetstream())
        finally:
            await nc.drain()
        conn = await asyncpg.connect(self.database_url)
        try:
            await apply_migrations(conn, self.schema, package_migrations("calmesh_booking"))
            await conn.execute(f"CREATE SCHEMA {self.schema}_sync")
            await conn.execute(PROJECTION_SQL.format(table=self.projection))
        finally:
            await conn.close()
        self.pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=5)
        self.fake = FakeCalendarServices(self.pool, self.projection)
        self.fake.nc = await nats.connect(nats_url)
        self.neighbours = Served(self.fake.app(self.secret))
        await self.neighbours.start()
        self.settings = Settings(
            database_url=self.database_url, nats_url=nats_url, data_dir=str(self.data_dir), service_name="booking",
            internal_secret=self.secret, session_secret=self.session_secret, public_base_url=self.public_base_url,
            service_urls={"connections": self.neighbours.url, "sync": self.neighbours.url},
            db_pool_max=20, log_level="warning", hold_seconds_override=self.hold_seconds_override,
            booking_pending_timeout_seconds=self.booking_pending_timeout_seconds,
            mail_per_page_per_hour=self.mail_per_page_per_hour,
            mail_per_recipient_per_day=self.mail_per_recipient_per_day,
            booking_verification_seconds=self.booking_verification_seconds,
        )
        self.app = create_app(self.settings, schema=self.schema, projection=self.projection, clock=self.clock)
        self.service = Served(self.app)
        await self.service.start()
        self.client = httpx.AsyncClient(base_url=self.service.url, headers={SECRET_HEADER: self.secret}, timeout=60)
        return self

    async def stop(self) -> None:
        await self.client.aclose()
        # Close (not drain) the service's NATS connection first: a drain waits up to 30 s for pull
        # subscriptions whose fetch was cancelled mid-flight, and a test has nothing left to flush.
        deps = self.app.state.deps
        if deps.nc is not None and deps.nc.is_connected:
            await deps.nc.close()
        await self.service.stop()
        await self.neighbours.stop()
        await self.fake.nc.close()
        await self.pool.close()
        await asyncio.to_thread(self.nats.stop)
        self._tmp.cleanup()

    async def new_user(self, *, scope: str = "full", timezone: str = "Europe/Amsterdam", email: bool = True) -> User:
        """A user as the gateway would announce them, with one unified calendar."""
        user_id = new_id("usr")
        handle = f"u{uuid.uuid4().hex[:10]}"
        async with self.pool.acquire() as conn:
            await conn.execute(
                f"INSERT INTO {self.schema}.users (user_id, handle, email, name, timezone) VALUES ($1, $2, $3, $4, $5)",
                user_id, handle, f"{handle}@example.com" if email else None, f"Owner {handle}", timezone,
            )
        cal = self.fake.add_calendar(user_id, "work", timezone)
        return User(user_id, handle, scope, timezone, cal)


@dataclass
class User:
    user_id: str
    handle: str
    scope: str
    timezone: str
    calendar: FakeCalendar

    @property
    def headers(self) -> dict[str, str]:
        """The identity headers the gateway adds for this user."""
        return {
            "x-calmesh-user-id": self.user_id,
            "x-calmesh-auth": "session" if self.scope == "full" else "key",
            "x-calmesh-scope": self.scope,
            "x-calmesh-user-handle": self.handle,
            "x-calmesh-user-timezone": self.timezone,
        }

    def with_scope(self, scope: str) -> User:
        return User(self.user_id, self.handle, scope, self.timezone, self.calendar)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class PlatformOwner:
    """A user of a running platform with keys, a CalDAV connection to a Radicale calendar and a
    unified calendar `work` whose write target is that Radicale calendar."""

    gateway_url: str
    handle: str
    email: str
    key: str  # full scope
    book_key: str
    connection_id: str
    radicale: Radicale
    calendar: str  # the Radicale calendar's name

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def book_auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.book_key}"}

    def radicale_starts(self) -> list[str]:
        """DTSTART of every event on the Radicale calendar, as UTC RFC 3339 text."""
        out = []
        for text in self.radicale.event_files(self.calendar):
            for line in text.splitlines():
                if line.startswith("DTSTART"):
                    value = line.split(":", 1)[1].strip()
                    if value.endswith("Z"):
                        value = datetime.strptime(value, "%Y%m%dT%H%M%SZ").strftime("%Y-%m-%dT%H:%M:%SZ")
                    out.append(value)
        return out


async def sign_up_with_caldav(gateway_url: str, radicale: Radicale, *, timezone: str = "Europe/Amsterdam",
                              sync_timeout: float = 60.0) -> PlatformOwner:
    """Sign up through the gateway, connect a fresh Radicale calendar over CalDAV, make the unified
    calendar `work` of it, and wait for the first sync."""
    suffix = uuid.uuid4().hex[:8]
    calendar = f"work-{suffix}"
    radicale.make_calendar(calendar, calendar)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as gw:
        handle, email = f"owner-{suffix}", f"owner-{suffix}@example.com"
        r = await gw.post("/api/v1/auth/signup", json={"email": email, "password": "a long enough passphrase",
                                                       "handle": handle, "name": "Olga Owner", "timezone": timezone})
        assert r.status_code == 201, r.text
        csrf = gw.cookies["calmesh_csrf"]
        keys = {}
        for scope in ("full", "book"):
            k = await gw.post("/api/v1/api-keys", json={"name": scope, "scope": scope}, headers={"X-CSRF-Token": csrf})
            assert k.status_code == 201, k.text
            keys[scope] = k.json()["key"]
        gw.cookies.clear()
        auth = {"Authorization": f"Bearer {keys['full']}"}
        c = await gw.post("/api/v1/connections/caldav", headers=auth, json={
            "url": radicale.calendar_url(calendar), "username": radicale.username, "password": radicale.password})
        assert c.status_code == 201, c.text
        connection = c.json()
        chosen = [cal for cal in connection["calendars"] if cal["name"] == calendar]
        assert chosen, connection
        u = await gw.post("/api/v1/calendars", headers=auth, json={
            "slug": "work", "name": "Work", "timezone": timezone,
            "sources": [{"connection_id": connection["id"], "calendar_id": chosen[0]["id"]}]})
        assert u.status_code == 201, u.text
        deadline = time.monotonic() + sync_timeout
        while True:
            got = (await gw.get(f"/api/v1/connections/{connection['id']}", headers=auth)).json()
            if got["status"] == "active" and got["last_synced_at"] is not None:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the first sync did not finish: {got}")
            await asyncio.sleep(0.1)
    return PlatformOwner(gateway_url, handle, email, keys["full"], keys["book"], connection["id"], radicale, calendar)
