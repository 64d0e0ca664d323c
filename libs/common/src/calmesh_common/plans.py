"""Plans, their limits, and the small mechanism every owning service uses to enforce them.

Billing owns plans and subscriptions. Whenever a user's plan, status or period end changes it
publishes ``plan.changed.v1`` (`calmesh_common.events.billing.PlanChanged`, subject
``calmesh.billing.plan.changed``). A service that must enforce a limit keeps its own copy of each
user's plan from those events — a ``user_plans`` row per user in *its own* schema, written by a
durable consumer — and checks the limit in the transaction that creates the resource. An upgrade
lifts the limits as soon as the event is consumed (milliseconds), a downgrade lowers them the same
way; nothing is read from billing's tables.

Limits per plan come from the settings (``CALMESH_PLAN_FREE_CONNECTIONS`` …):

========  ===========  =============  ======================
plan      connections  booking_pages  api_requests_per_day
========  ===========  =============  ======================
free      3            2              10,000
pro       50           100            1,000,000
========  ===========  =============  ======================

How to wire it into a service (connections, booking, gateway — done by their owners)
------------------------------------------------------------------------------------
1. **Table.** Add a migration to the service's ``migrations/`` folder, e.g.
   ``0005_user_plans.sql``, that includes the shared table (``migrations/shared/user_plans.sql``
   of this package; the migration runner reads it in, into the service's schema)::

       \\include user_plans

2. **Consumer.** Pass the plan consumer to the service kit, named after the service so that every
   service has its own durable consumer::

       from calmesh_common.plans import plan_consumer
       create_service_app(settings, name=NAME, schema=SCHEMA, route_handlers=[...],
                          consumers=[plan_consumer(SCHEMA, consumer_name=NAME)])

3. **Check.** In the handler that creates the resource, inside the transaction that inserts it,
   count what the user has and call `enforce_limit`. It serialises concurrent creations of one
   user (a transaction-level advisory lock), so two racing requests cannot both take the last
   slot; over the limit it raises ``Problem(402, "plan_limit_reached", …)`` naming the limit::

       async with pool.acquire() as conn, conn.transaction():
           await enforce_limit(
               conn, schema=SCHEMA, user_id=caller.user_id, limit="connections",
               settings=settings,
               used=lambda c: c.fetchval(
                   "SELECT count(*) FROM connections WHERE user_id = $1 AND status <> 'revoked'",
                   caller.user_id),
           )
           ... insert the connection, append its event ...

   connections counts ``"connections"``, booking counts ``"booking_pages"``. The gateway keeps the
   same table for ``"api_requests_per_day"`` (`limits_for(plan, settings).api_requests_per_day`)
   and answers 429 `daily_quota_exceeded` with `Retry-After` past it (`daily_quota_exceeded`);
   it also sends the plan in ``x-calmesh-user-plan`` (`current_plan`).

A user without a row is on ``free``.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec

from .consumer import ConsumerSpec, Handler, PoisonMessage
from .events import Envelope, decode_event, subject_for
from .events.billing import PlanChanged
from .problems import Problem
from .retryafter import retry_after
from .settings import Settings
from .streams import stream_name

PLANS: tuple[str, ...] = ("free", "pro")
LimitName = Literal["connections", "booking_pages", "api_requests_per_day"]
LIMIT_NAMES: tuple[str, ...] = ("connections", "booking_pages", "api_requests_per_day")
_LIMIT_WORDS = {
    "connections": "connections",
    "booking_pages": "booking pages",
    "api_requests_per_day": "API requests a day",
}

#: The subject the plan consumer reads.
PLAN_CHANGED_SUBJECT = subject_for(PlanChanged.type_name(), PlanChanged.context)


class Limits(msgspec.Struct, frozen=True):
    """What a plan allows."""

    connections: int
    booking_pages: int
    api_requests_per_day: int


class UserPlan(msgspec.Struct, frozen=True):
    plan: str = "free"
    status: str = "none"
    current_period_end: datetime | None = None


def limits_for(plan: str, settings: Settings) -> Limits:
    """The limits of `plan` (an unknown plan gets free's: the safe side)."""
    if plan == "pro":
        return Limits(
            settings.plan_pro_connections, settings.plan_pro_booking_pages, settings.plan_pro_api_requests_per_day
        )
    return Limits(
        settings.plan_free_connections, settings.plan_free_booking_pages, settings.plan_free_api_requests_per_day
    )


def plan_consumer(schema: str, *, consumer_name: str) -> tuple[ConsumerSpec, Handler]:
    """The durable consumer (spec, handler) that keeps `schema`.user_plans from billing's events."""
    spec = ConsumerSpec(
        name=f"{consumer_name}-plans",
        stream=stream_name("billing"),
        filter_subjects=(PLAN_CHANGED_SUBJECT,),
        schema=schema,
    )

    async def handle(conn: asyncpg.Connection, envelope: Envelope) -> None:
        await apply_plan_changed(conn, schema, envelope)

    return spec, handle


async def apply_plan_changed(conn: asyncpg.Connection, schema: str, envelope: Envelope) -> PlanChanged:
    """Record the plan of a ``plan.changed`` event, unless a newer one is recorded already; returns
    the event."""
    event = decode_event(envelope)
    if not isinstance(event, PlanChanged):
        raise PoisonMessage(f"expected plan.changed, got {envelope.type}")
    await conn.execute(
        f"INSERT INTO {schema}.user_plans (user_id, plan, status, current_period_end, source_version, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, now())"
        " ON CONFLICT (user_id) DO UPDATE SET plan = EXCLUDED.plan, status = EXCLUDED.status,"
        " current_period_end = EXCLUDED.current_period_end, source_version = EXCLUDED.source_version,"
        " updated_at = now()"
        f" WHERE {schema}.user_plans.source_version < EXCLUDED.source_version",
        event.user_id,
        event.plan,
        event.status,
        event.current_period_end,
        envelope.version,
    )
    return event


async def current_plan(conn: asyncpg.Connection, schema: str, user_id: str) -> UserPlan:
    """The plan `schema` knows for `user_id` (free when billing never said otherwise)."""
    row = await conn.fetchrow(
        f"SELECT plan, status, current_period_end FROM {schema}.user_plans WHERE user_id = $1", user_id
    )
    if row is None:
        return UserPlan()
    return UserPlan(row["plan"], row["status"], row["current_period_end"])


def plan_limit_reached(limit: str, plan: str, allowed: int) -> Problem:
    """The 402 a creating request gets over its plan's limit."""
    words = _LIMIT_WORDS.get(limit, limit)
    upgrade = " Upgrade to pro for more." if plan != "pro" else ""
    return Problem(
        402,
        "plan_limit_reached",
        f"The {plan} plan allows {allowed:,} {words}; you have reached that limit.{upgrade}",
        limit=limit,
        plan=plan,
        allowed=allowed,
    )


def daily_quota_exceeded(plan: str, allowed: int, retry_after_seconds: int) -> Problem:
    """The 429 past a plan's daily API requests (for the gateway)."""
    return Problem(
        429,
        "daily_quota_exceeded",
        f"The {plan} plan allows {allowed:,} API requests a day; try again after midnight UTC.",
        headers=retry_after(retry_after_seconds),
        limit="api_requests_per_day",
        plan=plan,
        allowed=allowed,
    )


UsedCount = int | Callable[[asyncpg.Connection], Awaitable[int]]


async def enforce_limit(
    conn: asyncpg.Connection,
    *,
    schema: str,
    user_id: str,
    limit: LimitName,
    settings: Settings,
    used: UsedCount,
) -> UserPlan:
    """Refuse (402 `plan_limit_reached`) one more `limit` for `user_id` when the plan is full.

    `used` is how many the user has now, or a coroutine function counting them on `conn`. Inside
    a transaction the check holds an advisory lock on (schema, user, limit) until it ends, so the
    count and the insert that follows are not raced by another request of the same user.
    Returns the plan it checked against."""
    if limit not in LIMIT_NAMES:
        raise ValueError(f"unknown limit {limit!r}; one of {', '.join(LIMIT_NAMES)}")
    if conn.is_in_transaction():
        key = zlib.crc32(f"calmesh-plan-limit:{schema}:{user_id}:{limit}".encode())
        await conn.execute("SELECT pg_advisory_xact_lock($1)", key)
    plan = await current_plan(conn, schema, user_id)
    allowed = getattr(limits_for(plan.plan, settings), limit)
    count = used if isinstance(used, int) else int(await used(conn))
    if count >= allowed:
        raise plan_limit_reached(limit, plan.plan, allowed)
    return plan
