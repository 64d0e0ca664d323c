"""The booking service: wiring and lifespan.

`create_app` builds the litestar app around the service kit (`calmesh_common.service`): routes,
the durable consumers, and a start-up hook that builds the `BookingContext` the handlers use.
Tests call it with their own schema, projection table and clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from litestar import Litestar
from prometheus_client import Counter
from litestar.di import Provide

from calmesh_common.logging import get_logger
from calmesh_common.plans import enforce_limit, plan_consumer
from calmesh_common.service import Caller, ServiceDeps, create_service_app, run_service
from calmesh_common.settings import Settings

from .api import ROUTES, provide_ctx
from .busy import ProjectionCache
from .clients import Calendars, SyncEvents
from .consumers import ContextRef, calendar_consumer, mail_consumer, users_consumer, verification_mail_consumer
from .handlers.bookings import run_hold_timer
from .handlers.context import BookingContext
from .mail import Mailer
from .store import BookingStore

log = get_logger(__name__)

NAME = "booking"
SCHEMA = "booking"
PROJECTION = "sync.event_instances"
#: Concurrent pullers of the calendar-write consumer (each holds a database connection while the
#: provider answers).
CALENDAR_WRITERS = 3


def create_app(
    settings: Settings,
    *,
    schema: str = SCHEMA,
    projection: str = PROJECTION,
    clock: Callable[[], datetime] | None = None,
    consumer_prefix: str = NAME,
) -> Litestar:
    """The booking service on `schema`, reading busy time from `projection`."""
    store = BookingStore(schema, projection)
    ref = ContextRef()
    mailer = Mailer(settings)

    async def enforce_page_limit(conn: asyncpg.Connection, caller: Caller, used: int) -> None:
        await enforce_limit(conn, schema=schema, user_id=caller.user_id, limit="booking_pages",
                            settings=settings, used=used)

    async def build_context(deps: ServiceDeps) -> None:
        assert deps.pool is not None and deps.http is not None
        busy_cache = ProjectionCache(store)
        ctx = BookingContext(
            settings=settings,
            pool=deps.pool,
            events=deps.store,
            store=store,
            calendars=Calendars(deps.http, settings),
            sync=SyncEvents(deps.http, settings),
            clock=clock or (lambda: datetime.now(UTC)),
            enforce_page_limit=enforce_page_limit,
            busy_cache=busy_cache,
            count_mail=_mail_counter(deps),
        )
        _ = ctx.link_secret  # fail at start-up, not on the first booking, when no secret is set
        assert deps.nc is not None
        await ctx.calendars.subscribe(deps.nc)
        await busy_cache.subscribe(deps.nc)
        deps.extras["booking"] = ctx
        ref.set(ctx)
        deps.closing.append(mailer.close)  # QUIT the SMTP connection the mail consumers opened
        deps.tasks.append(asyncio.create_task(forget_old_idempotency_keys(ctx), name="booking-idempotency-sweep"))
        deps.tasks.append(asyncio.create_task(run_hold_timer(ctx), name="booking-hold-timer"))

    # Calendar writes wait on the provider (a CalDAV PUT takes tens of milliseconds), so several
    # pullers share the one durable consumer; per-booking locks keep a write and its removal in order.
    writer = calendar_consumer(ref, schema, f"{consumer_prefix}-calendar")
    consumers = [
        *[writer] * CALENDAR_WRITERS,
        mail_consumer(ref, schema, mailer, f"{consumer_prefix}-mail"),
        verification_mail_consumer(ref, schema, mailer, f"{consumer_prefix}-verify-mail"),
        users_consumer(ref, schema, f"{consumer_prefix}-users"),
        plan_consumer(schema, consumer_name=consumer_prefix),
    ]
    return create_service_app(
        settings,
        name=NAME,
        schema=schema,
        route_handlers=ROUTES,
        consumers=consumers,
        # The consumers start before this hook runs; they wait for the context it builds.
        on_startup=[build_context],
        dependencies={"ctx": Provide(provide_ctx, sync_to_thread=False)},
        title="CalMesh booking",
        description="Booking pages, bookings and polls.",
    )


def _mail_counter(deps: ServiceDeps) -> Callable[[str, str], None] | None:
    """``calmesh_booking_mails_total{kind, outcome}``: booking mails sent, and suppressed by the
    mail limits, in this process's metrics."""
    if deps.metrics is None:
        return None
    counter = Counter("calmesh_booking_mails", "Booking mails, by kind and outcome (sent | suppressed)",
                      ["kind", "outcome"], registry=deps.metrics.registry)

    def count(kind: str, outcome: str) -> None:
        counter.labels(kind, outcome).inc()

    return count


async def forget_old_idempotency_keys(ctx: BookingContext, every: float = 3600.0) -> None:
    """Hourly, drop the answers kept for Idempotency-Keys older than a day, and the mail counts
    older than the limits look."""
    while True:
        try:
            async with ctx.pool.acquire() as conn:
                await ctx.store.keys.expire(conn, ctx.clock())
                # The mail limits look back a day at most.
                await ctx.store.forget_mail_sends(conn, ctx.clock() - timedelta(days=2))
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("idempotency_sweep_failed", error=repr(exc))
        await asyncio.sleep(every)


def main() -> None:
    run_service(NAME, create_app)


if __name__ == "__main__":
    main()
