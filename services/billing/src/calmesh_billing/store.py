"""asyncpg: the billing event streams, the accounts projection, usage counters."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from calmesh_common.events import Envelope, Event, decode_event
from calmesh_common.eventstore import EventStore

from .domain import BillingState, fold, initial, stream_id


async def lock_user(conn: asyncpg.Connection, schema: str, user_id: str) -> None:
    """Serialise billing commands of one user until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", zlib.crc32(f"calmesh-billing:{schema}:{user_id}".encode()))


async def load(conn: asyncpg.Connection, events: EventStore, user_id: str) -> BillingState:
    envelopes = await events.load(conn, stream_id(user_id))
    state = fold(initial(user_id), [decode_event(e) for e in envelopes])
    version = envelopes[-1].version if envelopes else 0
    return BillingState(**{**{f: getattr(state, f) for f in state.__struct_fields__}, "version": version})


async def append(
    conn: asyncpg.Connection, events: EventStore, schema: str, state: BillingState, new: Sequence[Event]
) -> BillingState:
    """Append `new` after `state.version` and update the account row, in the open transaction."""
    envelopes: list[Envelope] = await events.append(conn, stream_id(state.user_id), state.version, list(new),
                                                    user_id=state.user_id)
    after = fold(state, list(new))
    await save_account(conn, schema, after, envelopes[-1].version if envelopes else state.version)
    return after


async def save_account(conn: asyncpg.Connection, schema: str, state: BillingState, version: int) -> None:
    await conn.execute(
        f"INSERT INTO {schema}.accounts (user_id, plan, status, current_period_end, grace_until, customer_id,"
        " mollie_subscription_id, version, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())"
        " ON CONFLICT (user_id) DO UPDATE SET plan = EXCLUDED.plan, status = EXCLUDED.status,"
        " current_period_end = EXCLUDED.current_period_end, grace_until = EXCLUDED.grace_until,"
        " customer_id = EXCLUDED.customer_id, mollie_subscription_id = EXCLUDED.mollie_subscription_id,"
        " version = EXCLUDED.version, updated_at = now()",
        state.user_id, state.plan, state.status, state.current_period_end, state.grace_until, state.customer_id,
        state.mollie_subscription_id, version,
    )


async def user_of_customer(conn: asyncpg.Connection, schema: str, customer_id: str) -> str | None:
    value: str | None = await conn.fetchval(f"SELECT user_id FROM {schema}.accounts WHERE customer_id = $1", customer_id)
    return value


async def due_accounts(conn: asyncpg.Connection, schema: str, now: datetime) -> list[str]:
    """Users whose paid period (after a cancel) or grace period (past due) has run out."""
    rows = await conn.fetch(
        f"SELECT user_id FROM {schema}.accounts WHERE plan = 'pro' AND ("
        " (status = 'canceled' AND (current_period_end IS NULL OR current_period_end <= $1))"
        " OR (status = 'past_due' AND grace_until <= $1)) LIMIT 500",
        now,
    )
    return [r["user_id"] for r in rows]


async def usage(conn: asyncpg.Connection, schema: str, user_id: str) -> dict[str, int]:
    rows = await conn.fetch(f"SELECT counter, value FROM {schema}.usage WHERE user_id = $1", user_id)
    return {r["counter"]: r["value"] for r in rows}


async def count_item(conn: asyncpg.Connection, schema: str, counter: str, item_id: str, user_id: str, delta: int) -> None:
    """+1 when an item appears, -1 when it goes; each item counts once whatever the repeats."""
    if delta > 0:
        added = await conn.fetchval(
            f"INSERT INTO {schema}.usage_items (counter, item_id, user_id) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            counter, item_id, user_id,
        )
        if not added:
            return
    else:
        removed = await conn.fetchval(
            f"DELETE FROM {schema}.usage_items WHERE counter = $1 AND item_id = $2 RETURNING 1", counter, item_id
        )
        if not removed:
            return
    await conn.execute(
        f"INSERT INTO {schema}.usage (user_id, counter, value) VALUES ($1, $2, greatest($3, 0))"
        f" ON CONFLICT (user_id, counter) DO UPDATE SET value = greatest({schema}.usage.value + $3, 0)",
        user_id, counter, delta,
    )
