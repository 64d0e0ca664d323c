"""The gateway's tables (schema ``gateway``) on asyncpg. Every state change appends its event to
the event store in the same transaction. The only module that writes SQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from calmesh_common.events.gateway import (
    ApiKeyCreated,
    ApiKeyRevoked,
    SessionEnded,
    SessionStarted,
    UserSignedUp,
)
from calmesh_common.events import Envelope
from calmesh_common.eventstore import EventStore
from calmesh_common.plans import apply_plan_changed

from .schemas import Plan, Scope

SCHEMA = "gateway"


class EmailTaken(Exception):
    pass


class HandleTaken(Exception):
    pass


@dataclass(frozen=True, slots=True)
class UserRow:
    id: str
    email: str
    handle: str
    name: str
    timezone: str
    plan: Plan  # the column's CHECK keeps it 'free' or 'pro'
    created_at: datetime
    password_hash: str = ""


@dataclass(frozen=True, slots=True)
class KeyRow:
    """An API key as the auth cache needs it (with its owner's profile)."""

    id: str
    user_id: str
    scope: Scope
    key_hash: str
    expires_at: datetime | None
    revoked: bool
    handle: str
    timezone: str
    plan: str


@dataclass(frozen=True, slots=True)
class SessionRow:
    id: str
    user_id: str
    expires_at: datetime
    handle: str
    timezone: str
    plan: str


_USER_COLUMNS = "id, email, handle, name, timezone, plan, created_at, password_hash"


def _user(row: asyncpg.Record) -> UserRow:
    return UserRow(**dict(row))


class GatewayStore:
    def __init__(self, pool: asyncpg.Pool, events: EventStore | None = None) -> None:
        self.pool = pool
        self.events = events or EventStore(SCHEMA, context="gateway")

    async def ping(self) -> None:
        """Answer when the database does (health and readiness checks)."""
        await self.pool.fetchval("SELECT 1")

    # Users ---------------------------------------------------------------------------------

    async def email_or_handle_taken(self, email: str, handle: str) -> str | None:
        row = await self.pool.fetchrow(
            "SELECT lower(email) = lower($1) AS email, handle = $2 AS handle FROM gateway.users"
            " WHERE lower(email) = lower($1) OR handle = $2 LIMIT 1", email, handle,
        )
        if row is None:
            return None
        return "email" if row["email"] else "handle"

    async def create_user_with_session(
        self, user: UserRow, session_id: str, session_token_hash: str, session_expires_at: datetime,
    ) -> UserRow:
        """Insert the user and its first session; raises EmailTaken / HandleTaken."""
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    f"INSERT INTO gateway.users (id, email, handle, name, timezone, password_hash)"
                    f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_USER_COLUMNS}",
                    user.id, user.email, user.handle, user.name, user.timezone, user.password_hash,
                )
            except asyncpg.UniqueViolationError as exc:
                if "email" in (exc.constraint_name or ""):
                    raise EmailTaken from None
                raise HandleTaken from None
            created = _user(row)
            await self.events.append(conn, created.id, 0, [UserSignedUp(
                user_id=created.id, email=created.email, handle=created.handle, name=created.name,
                timezone=created.timezone,
            )], user_id=created.id)
            await self._insert_session(conn, session_id, created.id, session_token_hash, session_expires_at)
            return created

    async def user_by_email(self, email: str) -> UserRow | None:
        row = await self.pool.fetchrow(f"SELECT {_USER_COLUMNS} FROM gateway.users WHERE lower(email) = lower($1)", email)
        return _user(row) if row else None

    async def user_by_id(self, user_id: str) -> UserRow | None:
        row = await self.pool.fetchrow(f"SELECT {_USER_COLUMNS} FROM gateway.users WHERE id = $1", user_id)
        return _user(row) if row else None

    # Sessions ------------------------------------------------------------------------------

    async def _insert_session(self, conn: asyncpg.Connection, session_id: str, user_id: str, token_hash: str,
                              expires_at: datetime) -> None:
        await conn.execute(
            "INSERT INTO gateway.sessions (id, user_id, token_hash, expires_at) VALUES ($1, $2, $3, $4)",
            session_id, user_id, token_hash, expires_at,
        )
        await self.events.append(conn, session_id, 0, [SessionStarted(
            user_id=user_id, session_hash=token_hash, expires_at=expires_at,
        )], user_id=user_id)

    async def create_session(self, session_id: str, user_id: str, token_hash: str, expires_at: datetime) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._insert_session(conn, session_id, user_id, token_hash, expires_at)

    async def session_by_hash(self, token_hash: str) -> SessionRow | None:
        """A live session (not ended, not expired) with its user's profile."""
        row = await self.pool.fetchrow(
            "SELECT s.id, s.user_id, s.expires_at, u.handle, u.timezone, u.plan"
            " FROM gateway.sessions s JOIN gateway.users u ON u.id = s.user_id"
            " WHERE s.token_hash = $1 AND s.ended_at IS NULL AND s.expires_at > now()", token_hash,
        )
        return SessionRow(**dict(row)) if row else None

    async def end_session(self, token_hash: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE gateway.sessions SET ended_at = now() WHERE token_hash = $1 AND ended_at IS NULL"
                " RETURNING id, user_id", token_hash,
            )
            if row is None:
                return False
            await self.events.append(conn, row["id"], None, [SessionEnded(
                user_id=row["user_id"], session_hash=token_hash,
            )], user_id=row["user_id"])
            return True

    # API keys ------------------------------------------------------------------------------

    async def create_key(self, *, key_id: str, user_id: str, name: str, scope: str, prefix: str, key_hash: str,
                         expires_at: datetime | None) -> asyncpg.Record:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO gateway.api_keys (id, user_id, name, scope, prefix, key_hash, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " RETURNING id, name, scope, prefix, created_at, expires_at, last_used_at",
                key_id, user_id, name, scope, prefix, key_hash, expires_at,
            )
            await self.events.append(conn, key_id, 0, [ApiKeyCreated(
                key_id=key_id, user_id=user_id, name=name, scope=scope, prefix=prefix, key_hash=key_hash,
                expires_at=expires_at,
            )], user_id=user_id)
            return row

    async def list_keys(self, user_id: str, limit: int, after: tuple[datetime, str] | None) -> list[asyncpg.Record]:
        """The user's keys that are not revoked, oldest first, `limit` after the cursor position."""
        args: list[Any] = [user_id, limit]
        where = "user_id = $1 AND revoked_at IS NULL"
        if after is not None:
            where += " AND (created_at, id) > ($3, $4)"
            args += list(after)
        rows: list[asyncpg.Record] = await self.pool.fetch(
            f"SELECT id, name, scope, prefix, created_at, last_used_at, expires_at FROM gateway.api_keys"
            f" WHERE {where} ORDER BY created_at, id LIMIT $2", *args,
        )
        return rows

    async def revoke_key(self, user_id: str, key_id: str) -> str | None:
        """Revoke the user's key; returns its hash (also when it was revoked already), or None when
        the user has no such key."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT key_hash, revoked_at FROM gateway.api_keys WHERE id = $1 AND user_id = $2 FOR UPDATE",
                key_id, user_id,
            )
            if row is None:
                return None
            if row["revoked_at"] is None:
                await conn.execute("UPDATE gateway.api_keys SET revoked_at = now() WHERE id = $1", key_id)
                await self.events.append(conn, key_id, None, [ApiKeyRevoked(
                    key_id=key_id, user_id=user_id, key_hash=row["key_hash"],
                )], user_id=user_id)
            return str(row["key_hash"])

    _KEY_SELECT = (
        "SELECT k.id, k.user_id, k.scope, k.key_hash, k.expires_at, k.revoked_at IS NOT NULL AS revoked,"
        " u.handle, u.timezone, u.plan FROM gateway.api_keys k JOIN gateway.users u ON u.id = k.user_id"
    )

    async def all_keys(self) -> list[KeyRow]:
        rows = await self.pool.fetch(self._KEY_SELECT)
        return [KeyRow(**dict(r)) for r in rows]

    async def key_by_hash(self, key_hash: str) -> KeyRow | None:
        row = await self.pool.fetchrow(self._KEY_SELECT + " WHERE k.key_hash = $1", key_hash)
        return KeyRow(**dict(row)) if row else None

    async def apply_plan_changed(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        """Billing's ``plan.changed``: keep the user's plan (``user_plans``, newest version wins) and
        the plan on the users row that /me and the internal headers show."""
        event = await apply_plan_changed(conn, SCHEMA, envelope)  # raises PoisonMessage for another type
        await conn.execute(
            "UPDATE gateway.users u SET plan = p.plan FROM gateway.user_plans p"
            " WHERE p.user_id = u.id AND u.id = $1 AND p.plan IN ('free', 'pro') AND u.plan <> p.plan",
            event.user_id,
        )

    async def add_usage(self, counts: list[tuple[str, Any, int]]) -> list[tuple[str, Any, int]]:
        """Add API-request counts per (user, day); returns the totals after adding."""
        rows = await self.pool.fetch(
            "INSERT INTO gateway.api_usage AS a (user_id, day, requests)"
            " SELECT * FROM unnest($1::text[], $2::date[], $3::bigint[])"
            " ON CONFLICT (user_id, day) DO UPDATE SET requests = a.requests + EXCLUDED.requests"
            " RETURNING user_id, day, requests",
            [c[0] for c in counts], [c[1] for c in counts], [c[2] for c in counts],
        )
        return [(r["user_id"], r["day"], int(r["requests"])) for r in rows]

    # Rate-limit buckets shared by the replicas (limits.SharedLimiter) -------------------------

    async def take_tokens(self, name: str, want: int, burst: float, rate: float) -> tuple[int, float]:
        """Take up to `want` tokens from bucket `name`; (granted, tokens left)."""
        row = await self.pool.fetchrow("SELECT o_granted, o_left FROM gateway.take_tokens($1, $2, $3, $4)",
                                       name, want, burst, rate)
        return int(row["o_granted"]), float(row["o_left"])

    async def give_back_tokens(self, counts: dict[str, int], burst: float, rate: float) -> None:
        """Return leased tokens that were not spent."""
        if counts:
            names = sorted(counts)
            await self.pool.execute("SELECT gateway.give_back_tokens($1::text[], $2::integer[], $3, $4)",
                                    names, [counts[n] for n in names], burst, rate)

    async def prune_buckets(self) -> int:
        """Forget buckets that are full again (a missing bucket is a full one)."""
        result = await self.pool.execute("DELETE FROM gateway.rate_buckets WHERE full_at < clock_timestamp()")
        return int(result.split()[-1])

    async def touch_keys(self, used: dict[str, datetime]) -> None:
        """Record when keys were last used (batched, off the hot path)."""
        if not used:
            return
        ids = list(used)
        await self.pool.execute(
            "UPDATE gateway.api_keys k SET last_used_at = greatest(coalesce(k.last_used_at, v.at), v.at)"
            " FROM unnest($1::text[], $2::timestamptz[]) AS v(id, at) WHERE k.id = v.id",
            ids, [used[i] for i in ids],
        )
