"""asyncpg access for the booking context: its own tables, and reads of the merged-events projection.

Only this module speaks SQL. Every table lives in the service's schema (``booking`` in production;
tests use a schema of their own). The projection (``sync.event_instances``) is read, never written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from calmesh_common.idempotency import TTL, Keys
from calmesh_common.rows import same_named
from calmesh_common.sqlwhere import Where

from .domain import AnswerLine, Booking, all_day_interval

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?$")

PAGE_COLUMNS = (
    "id, user_id, handle, slug, calendar_slug, title, description, duration_minutes, slot_interval_minutes,"
    " timezone, weekly_hours, date_overrides, buffer_before_minutes, buffer_after_minutes,"
    " min_notice_minutes, max_days_ahead, calendar_snapshot, created_at, updated_at, hold_minutes,"
    " require_email_verification, questions"
)
BOOKING_COLUMNS = (
    "id, page_id, page_slug, user_id, calendar_slug, title, start_at, end_at, status, name, email, notes,"
    " timezone, event_id, created_at, cancelled_at, cancelled_by, cancel_reason, sequence, verify_until, answers,"
    " calendar_write_error"
)
HOLD_COLUMNS = "id, page_id, user_id, start_at, end_at, expires_at, status, booking_id, created_at"
POLL_COLUMNS = ("id, user_id, title, duration_minutes, calendar_slug, deadline, token, status, decided_option_id,"
                " event_id, created_at, decided_at")


def _booking(row: asyncpg.Record) -> Booking:
    return Booking(
        **same_named(
            row, "id", "page_id", "page_slug", "user_id", "calendar_slug", "title", "name", "email", "notes", "timezone",
            "status", "created_at", "event_id", "cancelled_at", "cancelled_by", "cancel_reason", "sequence",
            "verify_until", "calendar_write_error",
        ),
        start=row["start_at"],
        end=row["end_at"],
        answers=_answers(row["answers"]),
    )


def _answers(value: Any) -> tuple[AnswerLine, ...]:
    return tuple(AnswerLine(a["id"], a["label"], a["type"], a["value"]) for a in parse_json(value) or ())


def answers_json(answers: Sequence[AnswerLine]) -> str:
    return _encoder.encode([{"id": a.id, "label": a.label, "type": a.type, "value": a.value} for a in answers]).decode()


class BookingStore:
    """SQL of the booking context. `schema` is this service's; `projection` the table to read busy
    time from (``sync.event_instances``)."""

    def __init__(self, schema: str, projection: str = "sync.event_instances") -> None:
        for name in (schema, projection):
            if not _IDENT.match(name):
                raise ValueError(f"bad SQL identifier {name!r}")
        self.schema = schema
        self.projection = projection
        #: This schema's Idempotency-Keys (calmesh_common.idempotency). A booking's key stays in
        #: flight until its second transaction or the reaper answers it: never taken over meanwhile.
        self.keys = Keys(schema, stale_after=TTL)
        calendar_rows = (
            "SELECT extract(epoch FROM p.start_at)::bigint AS s, extract(epoch FROM p.end_at)::bigint AS e,"
            " p.all_day, p.start_date, p.end_date"
            f" FROM {projection} p"
            " JOIN unnest($2::text[], $3::text[]) AS src(connection_id, calendar_id)"
            "   ON p.connection_id = src.connection_id AND p.calendar_id = src.calendar_id"
            " WHERE p.user_id = $1 AND p.start_at < $5 AND p.end_at > $4{bound}"
            "   AND p.status <> 'cancelled' AND p.transparency <> 'free'"
            # The rows of this context's own bookings and holds: read from its own tables below
            # (they know pending bookings, expiry, and what a reschedule or a held booking excludes).
            "   AND p.booking_id IS NULL"
            # A cancelled booking frees its time at once, before its calendar event is deleted.
            f"   AND NOT EXISTS (SELECT 1 FROM {schema}.bookings c WHERE c.user_id = $1 AND c.status = 'cancelled'"
            "       AND c.event_id = p.event_id AND c.start_at < $5 AND c.end_at > $4)"
        )
        # $6: now (holds expire), $7: booking and hold ids that do not count (a reschedule's own
        # booking, a booking's own hold).
        own_bookings = (
            " UNION ALL"
            " SELECT extract(epoch FROM b.start_at)::bigint, extract(epoch FROM b.end_at)::bigint, false, NULL, NULL"
            f" FROM {schema}.bookings b WHERE b.user_id = $1 AND b.status IN ('pending', 'confirmed')"
            "   AND b.start_at < $5 AND b.end_at > $4 AND b.id <> ALL($7::text[])"
            " UNION ALL"
            " SELECT extract(epoch FROM h.start_at)::bigint, extract(epoch FROM h.end_at)::bigint, false, NULL, NULL"
            f" FROM {schema}.holds h WHERE h.user_id = $1 AND h.status = 'active' AND h.expires_at > $6"
            "   AND h.start_at < $5 AND h.end_at > $4 AND h.id <> ALL($7::text[])"
        )
        # Sorted in SQL: the merge in Python is then one pass.
        self._calendar_busy_sql = calendar_rows.format(bound="") + " ORDER BY 1"
        self._busy_sql = calendar_rows.format(bound="") + own_bookings + " ORDER BY 1"
        # With a known bound below which no overlapping row starts, the (connection, calendar,
        # start_at) index is read as a range rather than from the calendar's first row (its own SQL
        # text, so that a generic plan cannot lose the range).
        self._busy_sql_bounded = calendar_rows.format(bound=" AND p.start_at > $8") + own_bookings + " ORDER BY 1"
        # The busy cache's load: one source's rows over a wide window (busy.ProjectionCache).
        self._source_busy_sql = (
            "SELECT extract(epoch FROM p.start_at)::bigint AS s, extract(epoch FROM p.end_at)::bigint AS e,"
            " p.all_day, p.start_date, p.end_date"
            f" FROM {projection} p"
            " WHERE p.connection_id = $2 AND p.calendar_id = $3 AND p.user_id = $1"
            "   AND p.start_at < $5 AND p.end_at > $4"
            "   AND p.status <> 'cancelled' AND p.transparency <> 'free'"
            # Rows of this context's own bookings and holds: the slot listing reads those fresh.
            "   AND p.booking_id IS NULL"
            f"   AND NOT EXISTS (SELECT 1 FROM {schema}.bookings c WHERE c.user_id = $1"
            "       AND c.status = 'cancelled' AND c.event_id = p.event_id)"
            " ORDER BY 1"
        )

    # --- users -------------------------------------------------------------------------------

    async def upsert_user(
        self, conn: asyncpg.Connection, user_id: str, *, handle: str | None = None, email: str | None = None,
        name: str | None = None, timezone: str | None = None,
    ) -> None:
        """Remember what we learn about a user; a None leaves what is known."""
        await conn.execute(
            f"INSERT INTO {self.schema}.users (user_id, handle, email, name, timezone) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (user_id) DO UPDATE SET"
            f" handle = coalesce(EXCLUDED.handle, {self.schema}.users.handle),"
            f" email = coalesce(EXCLUDED.email, {self.schema}.users.email),"
            f" name = coalesce(EXCLUDED.name, {self.schema}.users.name),"
            f" timezone = coalesce(EXCLUDED.timezone, {self.schema}.users.timezone), updated_at = now()",
            user_id, handle, email, name, timezone,
        )

    async def get_user(self, conn: asyncpg.Connection, user_id: str) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT user_id, handle, email, name, timezone FROM {self.schema}.users WHERE user_id = $1", user_id
        )

    # --- pages -------------------------------------------------------------------------------

    async def insert_page(self, conn: asyncpg.Connection, page: dict[str, Any]) -> asyncpg.Record | None:
        """Insert a page; None when the user has a page with that slug already."""
        return await conn.fetchrow(
            f"INSERT INTO {self.schema}.pages (id, user_id, handle, slug, calendar_slug, title, description,"
            " duration_minutes, slot_interval_minutes, timezone, weekly_hours, date_overrides,"
            " buffer_before_minutes, buffer_after_minutes, min_notice_minutes, max_days_ahead, calendar_snapshot,"
            " hold_minutes, require_email_verification, questions)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12::jsonb, $13, $14, $15, $16, $17::jsonb,"
            " $18, $19, $20::jsonb)"
            f" ON CONFLICT (user_id, slug) DO NOTHING RETURNING {PAGE_COLUMNS}",
            page["id"], page["user_id"], page["handle"], page["slug"], page["calendar_slug"], page["title"],
            page["description"], page["duration_minutes"], page["slot_interval_minutes"], page["timezone"],
            _json(page["weekly_hours"]), _json(page["date_overrides"]), page["buffer_before_minutes"],
            page["buffer_after_minutes"], page["min_notice_minutes"], page["max_days_ahead"],
            _json(page.get("calendar_snapshot")), page.get("hold_minutes") or 10,
            bool(page.get("require_email_verification")), _json(page.get("questions") or []),
        )

    async def update_page(self, conn: asyncpg.Connection, page_id: str, changes: dict[str, Any]) -> asyncpg.Record:
        """Apply `changes` (column -> value); the caller checked the slug is free."""
        sets: list[str] = []
        args: list[Any] = [page_id]
        for column, value in changes.items():
            args.append(_json(value) if column in _JSON_COLUMNS else value)
            cast = "::jsonb" if column in _JSON_COLUMNS else ""
            sets.append(f"{column} = ${len(args)}{cast}")
        sets.append("updated_at = now()")
        return await conn.fetchrow(
            f"UPDATE {self.schema}.pages SET {', '.join(sets)} WHERE id = $1 RETURNING {PAGE_COLUMNS}", *args
        )

    async def set_calendar_snapshot(self, conn: asyncpg.Connection, page_id: str, snapshot: dict[str, Any]) -> None:
        await conn.execute(
            f"UPDATE {self.schema}.pages SET calendar_snapshot = $2::jsonb WHERE id = $1", page_id, _json(snapshot)
        )

    async def page_by_slug(self, conn: asyncpg.Connection, user_id: str, slug: str, *, lock: bool = False) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {PAGE_COLUMNS} FROM {self.schema}.pages WHERE user_id = $1 AND slug = $2"
            + (" FOR UPDATE" if lock else ""),
            user_id, slug,
        )

    async def page_by_id(self, conn: asyncpg.Connection, page_id: str) -> asyncpg.Record | None:
        return await conn.fetchrow(f"SELECT {PAGE_COLUMNS} FROM {self.schema}.pages WHERE id = $1", page_id)

    async def public_page_for_booking(self, conn: asyncpg.Connection, handle: str, slug: str,
                                      start: datetime) -> asyncpg.Record | None:
        """The page, and in `taken` whether a confirmed booking of its owner already clashes with a
        slot at `start` (with the page's duration and buffers): a cheap refusal outside the locks."""
        return await conn.fetchrow(
            f"SELECT {PAGE_COLUMNS}, EXISTS (SELECT 1 FROM {self.schema}.bookings b"
            "   WHERE b.user_id = p.user_id AND b.status IN ('pending', 'confirmed')"
            "   AND b.start_at < $3::timestamptz + make_interval(mins => p.duration_minutes + p.buffer_after_minutes)"
            "   AND b.end_at > $3::timestamptz - make_interval(mins => p.buffer_before_minutes)) AS taken"
            f" FROM {self.schema}.pages p WHERE p.handle = $1 AND p.slug = $2",
            handle, slug, start,
        )

    async def page_with_bookings(self, conn: asyncpg.Connection, *, slug: str, handle: str | None = None,
                                 user_id: str | None = None, start: datetime, end: datetime,
                                 now: datetime | None = None) -> asyncpg.Record | None:
        """The page (by handle, else by owner) and, in `booked`, its owner's pending and confirmed
        bookings and unexpired holds that overlap [start, end) as [start, end] epoch-second pairs:
        one round trip for the slot listing."""
        where = "p.handle = $1 AND p.slug = $2" if handle is not None else "p.user_id = $1 AND p.slug = $2"
        return await conn.fetchrow(
            f"SELECT {PAGE_COLUMNS}, (SELECT coalesce(array_agg(ARRAY[x.s, x.e]), '{{}}') FROM ("
            "   SELECT extract(epoch FROM b.start_at)::bigint AS s, extract(epoch FROM b.end_at)::bigint AS e"
            f"   FROM {self.schema}.bookings b WHERE b.user_id = p.user_id AND b.status IN ('pending', 'confirmed')"
            "   AND b.start_at < $4 AND b.end_at > $3"
            "   UNION ALL SELECT extract(epoch FROM h.start_at)::bigint, extract(epoch FROM h.end_at)::bigint"
            f"   FROM {self.schema}.holds h WHERE h.user_id = p.user_id AND h.status = 'active' AND h.expires_at > $5"
            "   AND h.start_at < $4 AND h.end_at > $3) x) AS booked"
            f" FROM {self.schema}.pages p WHERE {where}",
            handle if handle is not None else user_id, slug, start, end, now or datetime.now(UTC),
        )

    async def public_page(self, conn: asyncpg.Connection, handle: str, slug: str) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {PAGE_COLUMNS} FROM {self.schema}.pages WHERE handle = $1 AND slug = $2", handle, slug
        )

    async def list_pages(self, conn: asyncpg.Connection, user_id: str, after: tuple[datetime, str] | None, limit: int) -> list[asyncpg.Record]:
        return await self._owner_list(conn, f"SELECT {PAGE_COLUMNS} FROM {self.schema}.pages", user_id, after, limit)

    async def _owner_list(self, conn: asyncpg.Connection, select: str, user_id: str,
                          after: tuple[datetime, str] | None, limit: int) -> list[asyncpg.Record]:
        """`select` (``SELECT … FROM table``) of the user's rows, in (created_at, id) order after `after`."""
        if after is None:
            rows: list[asyncpg.Record] = await conn.fetch(f"{select} WHERE user_id = $1 ORDER BY created_at, id LIMIT $2", user_id, limit)
            return rows
        rows = await conn.fetch(
            f"{select} WHERE user_id = $1 AND (created_at, id) > ($2, $3) ORDER BY created_at, id LIMIT $4",
            user_id, after[0], after[1], limit,
        )
        return rows

    async def count_pages(self, conn: asyncpg.Connection, user_id: str) -> int:
        return int(await conn.fetchval(f"SELECT count(*) FROM {self.schema}.pages WHERE user_id = $1", user_id))

    async def delete_page(self, conn: asyncpg.Connection, page_id: str) -> None:
        await conn.execute(f"DELETE FROM {self.schema}.pages WHERE id = $1", page_id)

    # --- busy time -----------------------------------------------------------------------------

    async def spans(self, conn: asyncpg.Connection, *, user_id: str, sources: Sequence[tuple[str, str]],
                    calendar_tz: ZoneInfo, start: datetime, end: datetime) -> list[tuple[int, int]]:
        """The calendar's busy time alone (no bookings), read from the projection now."""
        return await self.busy_spans(conn, user_id=user_id, sources=sources, calendar_tz=calendar_tz,
                                     start=start, end=end, with_bookings=False)

    async def source_busy_rows(self, conn: asyncpg.Connection, user_id: str, source: tuple[str, str],
                               start: datetime, end: datetime) -> list[asyncpg.Record]:
        """The busy projection rows of one source (connection, calendar) overlapping [start, end),
        sorted by start: `(s, e, all_day, start_date, end_date)`, `s` and `e` in epoch seconds.
        Rows of this context's bookings and holds are left out (read fresh from its own tables)."""
        rows: list[asyncpg.Record] = await conn.fetch(self._source_busy_sql, user_id, source[0], source[1], start, end)
        return rows

    async def busy_spans(
        self,
        conn: asyncpg.Connection,
        *,
        user_id: str,
        sources: Sequence[tuple[str, str]],
        calendar_tz: ZoneInfo,
        start: datetime,
        end: datetime,
        with_bookings: bool = True,
        starts_after: datetime | None = None,
        now: datetime | None = None,
        excluding: Sequence[str] = (),
    ) -> list[tuple[int, int]]:
        """Busy time in [start, end) as epoch-second spans: the calendar's busy events (all-day
        ones as their dates in `calendar_tz`) and, unless told otherwise, the owner's pending and
        confirmed bookings and unexpired holds (at `now`) but those named in `excluding`."""
        args: list[Any] = [user_id, [s[0] for s in sources], [s[1] for s in sources], start, end]
        if with_bookings:
            args += [now or datetime.now(UTC), list(excluding)]
        if starts_after is not None and with_bookings:
            sql = self._busy_sql_bounded
            args.append(starts_after)
        else:
            sql = self._busy_sql if with_bookings else self._calendar_busy_sql
        rows = await conn.fetch(sql, *args)
        spans: list[tuple[int, int]] = []
        append = spans.append
        for s, e, all_day, start_date, end_date in rows:
            if all_day and start_date is not None:
                a, b = all_day_interval(start_date, end_date or start_date, calendar_tz)
                append((int(a.timestamp()), int(b.timestamp())))
            else:
                append((s, e))
        return spans

    # --- bookings ------------------------------------------------------------------------------

    async def lock_owner_time(self, conn: asyncpg.Connection, user_id: str, start: datetime, end: datetime) -> None:
        """Until the transaction ends, hold the owner's hour locks that [start, end) touches.

        A booking locks the hours of its guarded time [start − buffer before, end + buffer after).
        Two bookings that could clash have overlapping guarded times, so they share an hour and
        run one after the other; bookings of one owner far apart run side by side. Hours are taken
        in ascending order, so two transactions never wait on each other in a circle. The owner's
        bookings of all pages share the locks: one person, one diary."""
        first = int(start.timestamp()) // LOCK_BUCKET_SECONDS
        last = (int(end.timestamp()) - 1) // LOCK_BUCKET_SECONDS
        await conn.execute(
            "SELECT count(pg_advisory_xact_lock(hashtext($1), b)) FROM unnest($2::int[]) AS b",
            user_id, list(range(first, last + 1)),
        )

    async def insert_booking(self, conn: asyncpg.Connection, b: Booking, *, request_scope: str | None = None,
                             request_key: str | None = None) -> None:
        await conn.execute(
            f"INSERT INTO {self.schema}.bookings (id, page_id, page_slug, user_id, calendar_slug, title, start_at,"
            " end_at, status, name, email, notes, timezone, created_at, request_scope, request_key, verify_until,"
            " answers)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18::jsonb)",
            b.id, b.page_id, b.page_slug, b.user_id, b.calendar_slug, b.title, b.start, b.end, b.status, b.name,
            b.email, b.notes, b.timezone, b.created_at, request_scope, request_key, b.verify_until,
            answers_json(b.answers),
        )

    async def confirm_pending(self, conn: asyncpg.Connection, booking_id: str) -> asyncpg.Record | None:
        """Pending → confirmed; None when it was not pending (confirmed or released already). The
        row has every column of a booking (`booking_of`), its request's key and scope beside."""
        return await conn.fetchrow(
            f"UPDATE {self.schema}.bookings SET status = 'confirmed' WHERE id = $1 AND status = 'pending'"
            f" RETURNING {BOOKING_COLUMNS}, request_scope, request_key",
            booking_id,
        )

    async def release_pending(self, conn: asyncpg.Connection, booking_id: str) -> asyncpg.Record | None:
        """Forget a pending booking whose time never reached the projection (it was never answered).
        A verified booking (`verify_until` set) goes back to waiting for its verification instead:
        its visitor was answered, and holds the link."""
        row = await conn.fetchrow(
            f"UPDATE {self.schema}.bookings SET status = 'pending_verification'"
            " WHERE id = $1 AND status = 'pending' AND verify_until IS NOT NULL"
            " RETURNING id, request_scope, request_key, true AS verified",
            booking_id,
        )
        if row is not None:
            return row
        return await self._forget(conn, booking_id, was="pending")

    # --- visitor e-mail verification -----------------------------------------------------------

    async def start_verified(self, conn: asyncpg.Connection, booking_id: str) -> bool:
        """pending_verification -> pending (then confirmed as any booking); False: not waiting."""
        return await self._change_status(conn, booking_id, "pending", was="pending_verification")

    async def forget_unverified(self, conn: asyncpg.Connection, booking_id: str) -> asyncpg.Record | None:
        """Drop an unverified booking that was never answered (its hold could not be entered)."""
        return await self._forget(conn, booking_id, was="pending_verification")

    async def expire_unverified(self, conn: asyncpg.Connection, booking_id: str) -> bool:
        """pending_verification -> expired (never verified); False: not waiting."""
        return await self._change_status(conn, booking_id, "expired", was="pending_verification")

    async def _forget(self, conn: asyncpg.Connection, booking_id: str, *, was: str) -> asyncpg.Record | None:
        """Delete a booking that was never answered as booked, if its status is `was`: its id, its
        request's Idempotency-Key (`request_scope`, `request_key`) and `verified` (false)."""
        return await conn.fetchrow(
            f"DELETE FROM {self.schema}.bookings WHERE id = $1 AND status = $2"
            " RETURNING id, request_scope, request_key, false AS verified",
            booking_id, was,
        )

    async def _change_status(self, conn: asyncpg.Connection, booking_id: str, status: str, *, was: str) -> bool:
        """The booking's status `was` -> `status`; False when it was not `was`."""
        result: str = await conn.execute(f"UPDATE {self.schema}.bookings SET status = $2 WHERE id = $1 AND status = $3",
                                    booking_id, status, was)
        return result.split()[-1] != "0"

    async def hold_of_booking(self, conn: asyncpg.Connection, booking_id: str, *,
                              lock: bool = False) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {HOLD_COLUMNS} FROM {self.schema}.holds WHERE booking_id = $1 ORDER BY created_at DESC LIMIT 1"
            + (" FOR UPDATE" if lock else ""), booking_id,
        )

    async def keep_hold_for(self, conn: asyncpg.Connection, hold_id: str, booking_id: str | None,
                            expires_at: datetime) -> None:
        """An active hold now keeps its slot for an unverified booking, until `expires_at`."""
        await conn.execute(
            f"UPDATE {self.schema}.holds SET booking_id = $2, expires_at = $3 WHERE id = $1 AND status = 'active'",
            hold_id, booking_id, expires_at,
        )

    # --- mail limits ---------------------------------------------------------------------------

    async def lock_mail_counts(self, conn: asyncpg.Connection, page_id: str, recipient: str) -> None:
        """Count one page's, then one address's mails at a time, until the transaction ends (always
        in this order: no lock cycle)."""
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1)), pg_advisory_xact_lock(hashtext($2))",
                           f"calmesh-mail-page:{page_id}", f"calmesh-mail-to:{recipient}")

    async def mail_sent(self, conn: asyncpg.Connection, mail_id: str) -> bool:
        return bool(await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {self.schema}.mail_sends WHERE id = $1)",
                                        mail_id))

    async def mail_counts(self, conn: asyncpg.Connection, *, page_id: str, recipient: str, page_since: datetime,
                          recipient_since: datetime) -> tuple[int, int]:
        """Mails sent to visitors of `page_id` since `page_since`, and to `recipient` since
        `recipient_since` (any page, any owner)."""
        row = await conn.fetchrow(
            f"SELECT (SELECT count(*) FROM {self.schema}.mail_sends WHERE page_id = $1 AND sent_at > $2) AS page,"
            f" (SELECT count(*) FROM {self.schema}.mail_sends WHERE recipient = $3 AND sent_at > $4) AS recipient",
            page_id, page_since, recipient, recipient_since,
        )
        return int(row["page"]), int(row["recipient"])

    async def record_mail(self, conn: asyncpg.Connection, *, mail_id: str, page_id: str, recipient: str, kind: str,
                          at: datetime) -> None:
        await conn.execute(
            f"INSERT INTO {self.schema}.mail_sends (id, page_id, recipient, kind, sent_at) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (id) DO NOTHING",
            mail_id, page_id, recipient, kind, at,
        )

    async def forget_mail_sends(self, conn: asyncpg.Connection, older_than: datetime) -> None:
        await conn.execute(f"DELETE FROM {self.schema}.mail_sends WHERE sent_at < $1", older_than)

    async def stale_pending(self, conn: asyncpg.Connection, older_than: datetime, limit: int = 100) -> list[Booking]:
        rows = await conn.fetch(
            f"SELECT {BOOKING_COLUMNS} FROM {self.schema}.bookings WHERE status = 'pending' AND created_at < $1"
            " ORDER BY created_at LIMIT $2",
            older_than, limit,
        )
        return [_booking(r) for r in rows]

    async def move_booking(self, conn: asyncpg.Connection, booking_id: str, start: datetime, end: datetime,
                           sequence: int) -> Booking:
        row = await conn.fetchrow(
            f"UPDATE {self.schema}.bookings SET start_at = $2, end_at = $3, sequence = $4 WHERE id = $1"
            f" RETURNING {BOOKING_COLUMNS}",
            booking_id, start, end, sequence,
        )
        return _booking(row)

    # --- holds ---------------------------------------------------------------------------------

    async def insert_hold(self, conn: asyncpg.Connection, hold: dict[str, Any]) -> None:
        await conn.execute(
            f"INSERT INTO {self.schema}.holds (id, page_id, user_id, start_at, end_at, expires_at, status, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, 'active', $7)",
            hold["id"], hold["page_id"], hold["user_id"], hold["start_at"], hold["end_at"], hold["expires_at"],
            hold["created_at"],
        )

    async def get_hold(self, conn: asyncpg.Connection, hold_id: str, *, lock: bool = False) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {HOLD_COLUMNS} FROM {self.schema}.holds WHERE id = $1" + (" FOR UPDATE" if lock else ""), hold_id
        )

    async def set_hold_status(self, conn: asyncpg.Connection, hold_id: str, status: str, *,
                              booking_id: str | None = None, only_from: str | None = None) -> bool:
        result: str = await conn.execute(
            f"UPDATE {self.schema}.holds SET status = $2, booking_id = coalesce($3, booking_id) WHERE id = $1"
            + (" AND status = $4" if only_from else ""),
            hold_id, status, booking_id, *([only_from] if only_from else []),
        )
        return result.split()[-1] != "0"

    async def due_holds(self, conn: asyncpg.Connection, now: datetime, limit: int = 200) -> list[asyncpg.Record]:
        """Active holds past their expiry (read from the expiry index)."""
        rows: list[asyncpg.Record] = await conn.fetch(
            f"SELECT {HOLD_COLUMNS} FROM {self.schema}.holds WHERE status = 'active' AND expires_at <= $1"
            " ORDER BY expires_at LIMIT $2",
            now, limit,
        )
        return rows

    async def next_hold_expiry(self, conn: asyncpg.Connection) -> datetime | None:
        expiry: datetime | None = await conn.fetchval(f"SELECT min(expires_at) FROM {self.schema}.holds WHERE status = 'active'")
        return expiry

    @staticmethod
    def booking_of(row: asyncpg.Record) -> Booking:
        """The booking of a row that has every booking column (confirm_pending's)."""
        return _booking(row)

    async def get_booking(self, conn: asyncpg.Connection, booking_id: str, *, lock: bool = False) -> Booking | None:
        row = await conn.fetchrow(
            f"SELECT {BOOKING_COLUMNS} FROM {self.schema}.bookings WHERE id = $1" + (" FOR UPDATE" if lock else ""),
            booking_id,
        )
        return _booking(row) if row else None

    async def mark_cancelled(self, conn: asyncpg.Connection, booking_id: str, at: datetime, by: str, reason: str) -> Booking:
        row = await conn.fetchrow(
            f"UPDATE {self.schema}.bookings SET status = 'cancelled', cancelled_at = $2, cancelled_by = $3,"
            f" cancel_reason = $4 WHERE id = $1 RETURNING {BOOKING_COLUMNS}",
            booking_id, at, by, reason,
        )
        return _booking(row)

    async def set_event_id(self, conn: asyncpg.Connection, booking_id: str, event_id: str | None) -> None:
        await conn.execute(f"UPDATE {self.schema}.bookings SET event_id = $2, calendar_write_error = NULL,"
                           " calendar_write_failed_at = NULL WHERE id = $1", booking_id, event_id)

    async def set_calendar_write_failed(self, conn: asyncpg.Connection, booking_id: str, reason: str,
                                        at: datetime) -> None:
        """The provider write failed for good: `calendar_write: failed` with `reason`."""
        await conn.execute(f"UPDATE {self.schema}.bookings SET calendar_write_error = $2,"
                           " calendar_write_failed_at = $3 WHERE id = $1", booking_id, reason[:500], at)

    async def pages_on_calendar(self, conn: asyncpg.Connection, user_id: str, calendar_slug: str) -> list[str]:
        """The slugs of the user's booking pages on the unified calendar `calendar_slug`."""
        rows = await conn.fetch(f"SELECT slug FROM {self.schema}.pages WHERE user_id = $1 AND calendar_slug = $2"
                                " ORDER BY slug", user_id, calendar_slug)
        return [r["slug"] for r in rows]

    async def list_bookings(
        self,
        conn: asyncpg.Connection,
        user_id: str,
        *,
        status: str | None,
        start: datetime | None,
        end: datetime | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Booking]:
        # A pending booking was never answered yet, and an unverified one never verified: neither
        # is anybody's booking until confirmed.
        w = Where("user_id = $1", "status IN ('confirmed', 'cancelled')", args=[user_id])
        w.add_if(status or None, "status = {}")
        w.add_if(end, "start_at < {}")
        w.add_if(start, "end_at > {}")
        w.add_if(after, "(start_at, id) > ({}, {})")
        rows = await conn.fetch(
            f"SELECT {BOOKING_COLUMNS} FROM {self.schema}.bookings WHERE {w} ORDER BY start_at, id LIMIT {w.param(limit)}",
            *w.args,
        )
        return [_booking(r) for r in rows]

    # --- polls ---------------------------------------------------------------------------------

    async def insert_poll(self, conn: asyncpg.Connection, poll: dict[str, Any], options: Sequence[tuple[str, datetime, datetime]]) -> None:
        await conn.execute(
            f"INSERT INTO {self.schema}.polls (id, user_id, title, duration_minutes, calendar_slug, deadline, token, status)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, 'open')",
            poll["id"], poll["user_id"], poll["title"], poll["duration_minutes"], poll["calendar_slug"],
            poll["deadline"], poll["token"],
        )
        await conn.executemany(
            f"INSERT INTO {self.schema}.poll_options (id, poll_id, position, start_at, end_at) VALUES ($1, $2, $3, $4, $5)",
            [(oid, poll["id"], i, s, e) for i, (oid, s, e) in enumerate(options)],
        )

    async def get_poll(self, conn: asyncpg.Connection, poll_id: str, *, lock: bool = False) -> asyncpg.Record | None:
        return await conn.fetchrow(
            f"SELECT {POLL_COLUMNS} FROM {self.schema}.polls WHERE id = $1" + (" FOR UPDATE" if lock else ""),
            poll_id,
        )

    async def poll_options(self, conn: asyncpg.Connection, poll_id: str) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await conn.fetch(
            f"SELECT id, start_at, end_at FROM {self.schema}.poll_options WHERE poll_id = $1 ORDER BY position", poll_id
        )
        return rows

    async def poll_options_many(self, conn: asyncpg.Connection, poll_ids: Sequence[str]) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await conn.fetch(
            f"SELECT poll_id, id, start_at, end_at FROM {self.schema}.poll_options WHERE poll_id = ANY($1::text[])"
            " ORDER BY poll_id, position",
            list(poll_ids),
        )
        return rows

    async def poll_votes(self, conn: asyncpg.Connection, poll_id: str) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await conn.fetch(
            f"SELECT id, name, email, choices, created_at, updated_at FROM {self.schema}.poll_votes WHERE poll_id = $1"
            " ORDER BY created_at, id",
            poll_id,
        )
        return rows

    async def upsert_vote(
        self, conn: asyncpg.Connection, *, vote_id: str, poll_id: str, voter_key: str, name: str, email: str | None,
        choices: dict[str, str],
    ) -> asyncpg.Record:
        return await conn.fetchrow(
            f"INSERT INTO {self.schema}.poll_votes (id, poll_id, voter_key, name, email, choices)"
            " VALUES ($1, $2, $3, $4, $5, $6::jsonb)"
            " ON CONFLICT (poll_id, voter_key) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email,"
            " choices = EXCLUDED.choices, updated_at = now()"
            " RETURNING id, name, email, choices, created_at, updated_at",
            vote_id, poll_id, voter_key, name, email, _json(choices),
        )

    async def list_polls(self, conn: asyncpg.Connection, user_id: str, after: tuple[datetime, str] | None, limit: int) -> list[asyncpg.Record]:
        return await self._owner_list(conn, f"SELECT {POLL_COLUMNS} FROM {self.schema}.polls", user_id, after, limit)

    async def mark_poll_decided(self, conn: asyncpg.Connection, poll_id: str, option_id: str, event_id: str | None, at: datetime) -> None:
        await conn.execute(
            f"UPDATE {self.schema}.polls SET status = 'decided', decided_option_id = $2, event_id = $3, decided_at = $4"
            " WHERE id = $1",
            poll_id, option_id, event_id, at,
        )

    async def poll_for_vote(self, conn: asyncpg.Connection, poll_id: str) -> asyncpg.Record | None:
        """What a vote checks of its poll, share-locked (a decision waits for the vote, and the vote
        for a decision in flight)."""
        return await conn.fetchrow(
            f"SELECT id, user_id, token, status, deadline FROM {self.schema}.polls WHERE id = $1 FOR SHARE", poll_id
        )

    async def lock_poll(self, conn: asyncpg.Connection, poll_id: str) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_NS_POLL, poll_id)


#: Granularity of the owner's time locks (an hour index fits the lock's int4 key).
LOCK_BUCKET_SECONDS = 3600

# Namespaces of the two-key advisory locks (the one-key space is used by the relay and migrations).
_LOCK_NS_POLL = 0x506C  # "Pl"

_encoder = msgspec.json.Encoder()
_JSON_COLUMNS = frozenset({"weekly_hours", "date_overrides", "calendar_snapshot", "questions"})


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return _encoder.encode(value).decode()


def parse_json(value: Any) -> Any:
    """A jsonb column as Python (asyncpg returns jsonb as text without a codec)."""
    if value is None or not isinstance(value, str | bytes):
        return value
    return msgspec.json.decode(value)


def as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))
