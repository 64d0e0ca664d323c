"""asyncpg: subscriptions, messages, the delivery state machine, attempts and replays.

Every function takes a connection (or pool) and the schema, so the same code serves the service's
``webhooks`` schema and the isolated schemas of tests. SQL is plain and parameterised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from calmesh_common.ids import new_id
from calmesh_common.sqlwhere import Where

SUBSCRIPTION_COLUMNS = (
    "id, user_id, url, event_types, description, status, disabled_reason, created_at, updated_at"
)
ATTEMPT_COLUMNS = (
    "seq, id, delivery_id, event_id, event_type, attempt, status, response_status, duration_ms, error,"
    " next_attempt_at, created_at"
)


def wake_channel(schema: str) -> str:
    """The NOTIFY channel that wakes the dispatchers when deliveries are due at once."""
    return f"{schema}_deliveries"


# --- subscriptions -------------------------------------------------------------------------------


async def insert_subscription(
    conn: asyncpg.Connection,
    schema: str,
    *,
    user_id: str,
    url: str,
    event_types: list[str],
    description: str,
    secret: bytes,
) -> asyncpg.Record:
    return await conn.fetchrow(
        f"INSERT INTO {schema}.subscriptions (id, user_id, url, event_types, description, status, secret)"
        f" VALUES ($1, $2, $3, $4, $5, 'active', $6) RETURNING {SUBSCRIPTION_COLUMNS}",
        new_id("wh"),
        user_id,
        url,
        event_types,
        description,
        secret,
    )


async def get_subscription(
    conn: asyncpg.Connection, schema: str, webhook_id: str, user_id: str, *, for_update: bool = False
) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        f"SELECT {SUBSCRIPTION_COLUMNS}, secret, previous_secret, previous_secret_until"
        f" FROM {schema}.subscriptions WHERE id = $1 AND user_id = $2{lock}",
        webhook_id,
        user_id,
    )


async def list_subscriptions(
    conn: asyncpg.Connection, schema: str, user_id: str, *, after: tuple[datetime, str] | None, limit: int
) -> list[asyncpg.Record]:
    if after is None:
        rows: list[asyncpg.Record] = await conn.fetch(
            f"SELECT {SUBSCRIPTION_COLUMNS} FROM {schema}.subscriptions WHERE user_id = $1"
            " ORDER BY created_at, id LIMIT $2",
            user_id,
            limit,
        )
        return rows
    rows = await conn.fetch(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM {schema}.subscriptions WHERE user_id = $1"
        " AND (created_at, id) > ($2, $3) ORDER BY created_at, id LIMIT $4",
        user_id,
        after[0],
        after[1],
        limit,
    )
    return rows


async def update_subscription(
    conn: asyncpg.Connection, schema: str, webhook_id: str, changes: dict[str, Any]
) -> asyncpg.Record:
    """Apply `changes` (url, event_types, description, status); re-enabling clears the failure
    clock and the reason."""
    sets = [f"{name} = ${i}" for i, name in enumerate(changes, start=2)]
    if changes.get("status") == "active":
        sets += ["failing_since = NULL", "disabled_reason = NULL"]
    elif changes.get("status") == "disabled":
        sets.append("disabled_reason = 'disabled by its owner'")
    sets.append("updated_at = now()")
    return await conn.fetchrow(
        f"UPDATE {schema}.subscriptions SET {', '.join(sets)} WHERE id = $1 RETURNING {SUBSCRIPTION_COLUMNS}",
        webhook_id,
        *changes.values(),
    )


async def delete_subscription(conn: asyncpg.Connection, schema: str, webhook_id: str) -> None:
    await conn.execute(f"DELETE FROM {schema}.subscriptions WHERE id = $1", webhook_id)


async def rotate_secret(
    conn: asyncpg.Connection, schema: str, webhook_id: str, new_secret: bytes, overlap_seconds: float
) -> datetime:
    """Make `new_secret` current; the current one signs beside it for `overlap_seconds`."""
    until: datetime = await conn.fetchval(
        f"UPDATE {schema}.subscriptions SET previous_secret = secret, secret = $2,"
        " previous_secret_until = now() + $3 * interval '1 second', updated_at = now()"
        " WHERE id = $1 RETURNING previous_secret_until",
        webhook_id,
        new_secret,
        overlap_seconds,
    )
    return until


# --- intake --------------------------------------------------------------------------------------


async def track_processed(conn: asyncpg.Connection, schema: str, consumer: str, event_ids: Sequence[str]) -> set[str]:
    """Record that ``consumer`` processed ``event_ids`` (the tracking rows of `DurableConsumer`);
    the ids it had not processed before."""
    rows = await conn.fetch(
        f"INSERT INTO {schema}.processed_messages (consumer, event_id)"
        " SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        list(event_ids),
    )
    return {r["event_id"] for r in rows}


async def enqueue_event(
    conn: asyncpg.Connection,
    schema: str,
    *,
    user_id: str,
    occurred_at: datetime,
    items: Sequence[tuple[str, str, bytes]],
) -> int:
    """Queue each public event (webhook id, type, body) of one domain event to every active
    subscription of `user_id` that wants its type and existed when it occurred; stores a body only
    when some subscription wants it. One round trip. Returns how many deliveries were queued."""
    if not items:
        return 0
    count = await conn.fetchval(
        f"""
        WITH items AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) AS i(event_id, event_type, body)
        ), subs AS (
            SELECT id, event_types FROM {schema}.subscriptions
            WHERE user_id = $4 AND status = 'active' AND created_at <= $5
        ), pairs AS (
            SELECT s.id AS subscription_id, i.event_id, i.event_type
            FROM items i JOIN subs s ON s.event_types && ARRAY[i.event_type, '*']
        ), msg AS (
            INSERT INTO {schema}.messages (event_id, user_id, event_type, occurred_at, body)
            SELECT i.event_id, $4, i.event_type, $5, i.body FROM items i
            WHERE EXISTS (SELECT 1 FROM pairs p WHERE p.event_id = i.event_id)
            ON CONFLICT (event_id) DO NOTHING
        ), queued AS (
            INSERT INTO {schema}.deliveries (subscription_id, event_id, event_type, status, next_attempt_at)
            SELECT subscription_id, event_id, event_type, 'pending', now() FROM pairs
            RETURNING 1
        )
        SELECT count(*) FROM queued
        """,
        [i[0] for i in items],
        [i[1] for i in items],
        [i[2] for i in items],
        user_id,
        occurred_at,
    )
    if count:
        await conn.execute(f"NOTIFY {wake_channel(schema)}")
    return int(count)


async def enqueue_for_subscription(
    conn: asyncpg.Connection,
    schema: str,
    subscription_id: str,
    messages: Sequence[tuple[str, str | None, str, datetime, bytes]],
    *,
    due: bool = True,
) -> list[int]:
    """Queue the given messages (event_id, user_id, type, occurred_at, body) to one subscription,
    again (replay, test); returns the delivery ids. `due=False` leaves them for `claim_one`."""
    if not messages:
        return []
    await conn.executemany(
        f"INSERT INTO {schema}.messages (event_id, user_id, event_type, occurred_at, body)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
        messages,
    )
    ids = await conn.fetch(
        f"INSERT INTO {schema}.deliveries (subscription_id, event_id, event_type, status, next_attempt_at)"
        " SELECT $1, e.event_id, e.event_type, 'pending', CASE WHEN $4 THEN now() END"
        " FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS e(event_id, event_type, n) ORDER BY e.n"
        " RETURNING id",
        subscription_id,
        [m[0] for m in messages],
        [m[2] for m in messages],
        due,
    )
    if due:
        await conn.execute(f"NOTIFY {wake_channel(schema)}")
    return [r["id"] for r in ids]


# --- the delivery state machine --------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """A delivery this process holds a lease on, with everything needed to send it."""

    delivery_id: int
    attempt_id: str
    attempt: int
    subscription_id: str
    user_id: str
    url: str
    event_id: str
    event_type: str
    body: bytes
    secret: bytes
    previous_secret: bytes | None
    previous_secret_until: datetime | None


_CLAIM_RETURNING = """
    interrupted AS (
        UPDATE {schema}.attempts a
        SET status = 'failed', error = 'interrupted: the dispatcher stopped during this attempt',
            finished_at = now()
        FROM claimed c WHERE a.delivery_id = c.id AND a.status = 'pending'
        RETURNING 1
    ),
    started AS (
        INSERT INTO {schema}.attempts (id, delivery_id, subscription_id, event_id, event_type, attempt, status)
        SELECT 'dlv_' || replace(gen_random_uuid()::text, '-', ''), id, subscription_id, event_id, event_type,
               attempts, 'pending'
        FROM claimed
        RETURNING id, delivery_id
    )
    SELECT c.id AS delivery_id, st.id AS attempt_id, c.attempts AS attempt, c.subscription_id, s.user_id, s.url,
           c.event_id, c.event_type, m.body, s.secret, s.previous_secret, s.previous_secret_until
    FROM claimed c
    JOIN started st ON st.delivery_id = c.id
    JOIN {schema}.subscriptions s ON s.id = c.subscription_id
    JOIN {schema}.messages m ON m.event_id = c.event_id
    ORDER BY c.id
"""


def _claimed(rows: list[asyncpg.Record]) -> list[Claimed]:
    return [
        Claimed(
            r["delivery_id"], r["attempt_id"], r["attempt"], r["subscription_id"], r["user_id"], r["url"],
            r["event_id"], r["event_type"], bytes(r["body"]), bytes(r["secret"]),
            bytes(r["previous_secret"]) if r["previous_secret"] is not None else None, r["previous_secret_until"],
        )
        for r in rows
    ]


async def claim_due(
    conn: asyncpg.Connection,
    schema: str,
    *,
    limit: int,
    per_subscription: int,
    busy: dict[str, int],
    lease_seconds: float,
) -> list[Claimed]:
    """Lease up to `limit` due deliveries of active subscriptions, at most `per_subscription` in
    flight per subscription counting `busy` (this process's deliveries in flight), oldest first
    within each subscription, so that one subscription's backlog never holds back another's.
    Starts an attempt row for each. Safe against other dispatchers: a leased row is skipped."""
    rows = await conn.fetch(
        f"""
        WITH candidates AS (
            SELECT d.id, d.subscription_id, d.next_attempt_at,
                   row_number() OVER (PARTITION BY d.subscription_id ORDER BY d.next_attempt_at, d.id) AS rn
            FROM {schema}.deliveries d
            JOIN {schema}.subscriptions s ON s.id = d.subscription_id AND s.status = 'active'
            WHERE d.status = 'pending' AND d.next_attempt_at <= now()
              AND (d.locked_until IS NULL OR d.locked_until < now())
        ), picked AS (
            SELECT c.id FROM candidates c
            LEFT JOIN unnest($1::text[], $2::int[]) AS b(subscription_id, n) ON b.subscription_id = c.subscription_id
            WHERE c.rn <= $3 - coalesce(b.n, 0)
            ORDER BY c.rn, c.next_attempt_at
            LIMIT $4
        ), claimed AS (
            UPDATE {schema}.deliveries d
            SET locked_until = now() + $5 * interval '1 second', attempts = d.attempts + 1, updated_at = now()
            FROM picked p
            WHERE d.id = p.id AND d.status = 'pending' AND (d.locked_until IS NULL OR d.locked_until < now())
            RETURNING d.id, d.subscription_id, d.event_id, d.event_type, d.attempts
        ),
        """
        + _CLAIM_RETURNING.format(schema=schema),
        list(busy.keys()),
        list(busy.values()),
        per_subscription,
        limit,
        lease_seconds,
    )
    return _claimed(rows)


async def claim_one(conn: asyncpg.Connection, schema: str, delivery_id: int, lease_seconds: float) -> Claimed | None:
    """Lease one pending delivery now, whatever its schedule (POST /webhooks/{id}/test)."""
    rows = await conn.fetch(
        f"""
        WITH claimed AS (
            UPDATE {schema}.deliveries d
            SET locked_until = now() + $2 * interval '1 second', attempts = d.attempts + 1, updated_at = now(),
                next_attempt_at = coalesce(d.next_attempt_at, now())
            WHERE d.id = $1 AND d.status = 'pending' AND (d.locked_until IS NULL OR d.locked_until < now())
            RETURNING d.id, d.subscription_id, d.event_id, d.event_type, d.attempts
        ),
        """
        + _CLAIM_RETURNING.format(schema=schema),
        delivery_id,
        lease_seconds,
    )
    found = _claimed(rows)
    return found[0] if found else None


@dataclass(frozen=True)
class Finished:
    """The result of one attempt, ready to be written."""

    delivery_id: int
    attempt_id: str
    subscription_id: str
    succeeded: bool
    final: bool  # no attempt follows (succeeded, gone, or the schedule is spent)
    response_status: int | None
    duration_ms: int
    error: str | None
    next_delay: float | None  # seconds until the next attempt, when not final
    gone: bool = False


async def record_results(conn: asyncpg.Connection, schema: str, results: Sequence[Finished]) -> None:
    """Write attempt outcomes and move their deliveries on, in the caller's transaction."""
    if not results:
        return
    attempt_ids = [r.attempt_id for r in results]
    statuses = ["succeeded" if r.succeeded else "failed" for r in results]
    codes = [r.response_status for r in results]
    durations = [r.duration_ms for r in results]
    errors = [r.error for r in results]
    delays = [None if r.final else r.next_delay for r in results]
    # An attempt another dispatcher already marked interrupted (our lease ran out) is left alone,
    # and so is its delivery: that dispatcher owns it now.
    written = await conn.fetch(
        f"""
        UPDATE {schema}.attempts a
        SET status = u.status, response_status = u.code, duration_ms = u.duration, error = u.error,
            next_attempt_at = CASE WHEN u.delay IS NULL THEN NULL ELSE now() + u.delay * interval '1 second' END,
            finished_at = now()
        FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::text[], $6::float8[])
             AS u(id, status, code, duration, error, delay)
        WHERE a.id = u.id AND a.status = 'pending'
        RETURNING a.id
        """,
        attempt_ids,
        statuses,
        codes,
        durations,
        errors,
        delays,
    )
    if len(written) != len(results):
        kept = {r["id"] for r in written}
        results = [r for r in results if r.attempt_id in kept]
        if not results:
            return
        delays = [None if r.final else r.next_delay for r in results]
    delivery_ids = [r.delivery_id for r in results]
    delivery_status = ["succeeded" if r.succeeded else ("failed" if r.final else "pending") for r in results]
    await conn.execute(
        f"""
        UPDATE {schema}.deliveries d
        SET status = u.status, locked_until = NULL, updated_at = now(),
            next_attempt_at = CASE WHEN u.delay IS NULL THEN NULL ELSE now() + u.delay * interval '1 second' END
        FROM unnest($1::bigint[], $2::text[], $3::float8[]) AS u(id, status, delay)
        WHERE d.id = u.id
        """,
        delivery_ids,
        delivery_status,
        delays,
    )
    succeeded = [r.delivery_id for r in results if r.succeeded]
    if succeeded:
        # "next_attempt_at null once one succeeded": on every attempt row of the delivery.
        await conn.execute(
            f"UPDATE {schema}.attempts SET next_attempt_at = NULL"
            " WHERE delivery_id = ANY($1::bigint[]) AND next_attempt_at IS NOT NULL",
            succeeded,
        )
        await conn.execute(
            f"UPDATE {schema}.subscriptions SET failing_since = NULL"
            " WHERE id = ANY($1::text[]) AND failing_since IS NOT NULL",
            list({r.subscription_id for r in results if r.succeeded}),
        )
    failed_subs = list({r.subscription_id for r in results if not r.succeeded} - {r.subscription_id for r in results if r.succeeded})
    if failed_subs:
        await conn.execute(
            f"UPDATE {schema}.subscriptions SET failing_since = now()"
            " WHERE id = ANY($1::text[]) AND failing_since IS NULL",
            failed_subs,
        )


async def disable_subscriptions(
    conn: asyncpg.Connection,
    schema: str,
    *,
    gone: Sequence[str],
    failing_for_seconds: float,
    candidates: Sequence[str],
) -> list[asyncpg.Record]:
    """Disable the subscriptions that answered 410 (`gone`) and those among `candidates` that have
    failed without a success for `failing_for_seconds`. Returns what was disabled, with why."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"""
        UPDATE {schema}.subscriptions
        SET status = 'disabled', updated_at = now(),
            disabled_reason = CASE WHEN id = ANY($1::text[]) THEN 'gone' ELSE 'failing' END
        WHERE status = 'active'
          AND (id = ANY($1::text[])
               OR (id = ANY($2::text[]) AND failing_since <= now() - $3 * interval '1 second'))
        RETURNING id, user_id, url, disabled_reason, failing_since
        """,
        list(gone),
        list(candidates),
        failing_for_seconds,
    )
    return rows


async def release(conn: asyncpg.Connection, schema: str, delivery_ids: Sequence[int]) -> None:
    """Give leases back without an outcome (a dispatcher shutting down cleanly)."""
    if delivery_ids:
        await conn.execute(
            f"UPDATE {schema}.deliveries SET locked_until = NULL WHERE id = ANY($1::bigint[]) AND status = 'pending'",
            list(delivery_ids),
        )


# --- listing and manual retry ----------------------------------------------------------------------


async def list_attempts(
    conn: asyncpg.Connection, schema: str, subscription_id: str, *, before_seq: int | None, limit: int,
    status: str | None = None, event_id: str | None = None,
) -> list[asyncpg.Record]:
    """Attempt rows of a subscription, newest first."""
    w = Where("subscription_id = $1", args=[subscription_id])
    w.add_if(before_seq, "seq < {}")
    w.add_if(status, "status = {}")
    w.add_if(event_id, "event_id = {}")
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {ATTEMPT_COLUMNS} FROM {schema}.attempts WHERE {w} ORDER BY seq DESC LIMIT {w.param(limit)}",
        *w.args,
    )
    return rows


async def get_attempt(conn: asyncpg.Connection, schema: str, subscription_id: str, attempt_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {ATTEMPT_COLUMNS} FROM {schema}.attempts WHERE id = $1 AND subscription_id = $2",
        attempt_id,
        subscription_id,
    )


async def reschedule_now(conn: asyncpg.Connection, schema: str, delivery_id: int) -> str | None:
    """Make a delivery due at once (manual retry). None when it is in flight right now."""
    status: str | None = await conn.fetchval(
        f"UPDATE {schema}.deliveries SET status = 'pending', next_attempt_at = now(), updated_at = now()"
        " WHERE id = $1 AND (locked_until IS NULL OR locked_until < now()) RETURNING status",
        delivery_id,
    )
    if status is not None:
        await conn.execute(f"NOTIFY {wake_channel(schema)}")
    return status


# --- replays -------------------------------------------------------------------------------------------


async def insert_replay(conn: asyncpg.Connection, schema: str, subscription_id: str, since: datetime) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"INSERT INTO {schema}.replays (id, subscription_id, since, status) VALUES ($1, $2, $3, 'pending')"
        " RETURNING id, subscription_id, since, status, created_at",
        new_id("rpl"),
        subscription_id,
        since,
    )
    await conn.execute(f"NOTIFY {wake_channel(schema)}")
    return row


async def claim_replay(conn: asyncpg.Connection, schema: str, lease_seconds: float) -> asyncpg.Record | None:
    """Lease the oldest replay that is pending, or running under an expired lease (its dispatcher
    died: it is run again from the start; deliveries repeat with the same webhook-id)."""
    return await conn.fetchrow(
        f"""
        UPDATE {schema}.replays r SET status = 'running', locked_until = now() + $1 * interval '1 second'
        FROM (
            SELECT id FROM {schema}.replays
            WHERE status = 'pending' OR (status = 'running' AND locked_until < now())
            ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED
        ) p
        WHERE r.id = p.id
        RETURNING r.id, r.subscription_id, r.since
        """,
        lease_seconds,
    )


async def extend_replay(conn: asyncpg.Connection, schema: str, replay_id: str, lease_seconds: float, enqueued: int) -> None:
    await conn.execute(
        f"UPDATE {schema}.replays SET locked_until = now() + $2 * interval '1 second', enqueued = $3 WHERE id = $1",
        replay_id,
        lease_seconds,
        enqueued,
    )


async def finish_replay(
    conn: asyncpg.Connection, schema: str, replay_id: str, *, enqueued: int, error: str | None = None
) -> None:
    await conn.execute(
        f"UPDATE {schema}.replays SET status = $2, enqueued = $3, error = $4, finished_at = now(), locked_until = NULL"
        " WHERE id = $1",
        replay_id,
        "failed" if error else "done",
        enqueued,
        error,
    )


async def subscription_for_replay(conn: asyncpg.Connection, schema: str, subscription_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT id, user_id, event_types FROM {schema}.subscriptions WHERE id = $1", subscription_id
    )
