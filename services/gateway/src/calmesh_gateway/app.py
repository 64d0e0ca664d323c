"""The gateway: wiring and lifespan.

`create_app(settings)` returns the ASGI app uvicorn serves: the front (route table, auth, scopes,
rate limits, forwarding) around a litestar app for the gateway's own endpoints. The litestar
lifespan owns the asyncpg pool, the NATS connection (the auth cache's event subscription and the
outbox relay), the aiohttp session used for forwarding, and the background jobs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import nats
from litestar import Litestar
from nats.aio.client import Client as NATS

from calmesh_common.consumer import DurableConsumer
from calmesh_common.logging import get_logger
from calmesh_common.metrics import ConsumerRef, Metrics, MetricsSampler
from calmesh_common.plans import PLAN_CHANGED_SUBJECT, plan_consumer
from calmesh_common.problem_handler import problem_handler
from calmesh_common.relay import OutboxRelay
from calmesh_common.service import create_pool, run_service
from calmesh_common.settings import Settings

from .api import ROUTE_HANDLERS
from .authcache import AuthCache, periodic
from .dashboard.client import DashboardApi
from .dashboard.pages import DASHBOARD_HANDLERS
from .forward import Forwarder
from .limits import SharedLimiter
from .front import GatewayFront
from .openapi import OpenAPIBuilder
from .quota import DailyQuota
from .routes import RouteTable
from .security import Passwords
from .store import SCHEMA, GatewayStore
from .tools import TOOL_HANDLERS

NAME = "gateway"
EVENTS_SUBJECT = "calmesh.gateway.>"
LAST_USED_FLUSH_SECONDS = 2.0
PRUNE_SECONDS = 60.0
#: How often unspent rate-limit leases go back to the shared buckets (limits.py).
LEASE_SECONDS = 1.0

log = get_logger(__name__)


@dataclass
class GatewayState:
    """What the gateway's handlers and the front share; filled in by the lifespan."""

    settings: Settings
    cache: AuthCache
    openapi: OpenAPIBuilder
    quota: DailyQuota
    passwords: Passwords = field(default_factory=Passwords)
    #: Failed sign-ins per account (the email) and per client address, shared by the replicas.
    login_by_account: SharedLimiter | None = None
    login_by_address: SharedLimiter | None = None
    pool: asyncpg.Pool | None = None
    store: GatewayStore | None = None
    nc: NATS | None = None
    forwarder: Forwarder | None = None
    #: The dashboard's client of the public API (the pages at /app).
    dashboard: DashboardApi | None = None
    front: Any = None  # the GatewayFront itself: tool calls send their requests back through it
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    metrics: Metrics = field(default_factory=lambda: Metrics(NAME))
    started: bool = False
    #: (monotonic time, result) of the last database check of /readyz: probes and callers of a
    #: public path must not turn into a query each.
    db_checked: tuple[float, bool] = (0.0, False)


def create_app(settings: Settings) -> GatewayFront:
    """The gateway's ASGI app for `settings` (nothing connects until the lifespan starts)."""
    table = RouteTable()
    cache = AuthCache(store=None, internal_secret=settings.internal_secret)  # type: ignore[arg-type]
    state = GatewayState(
        settings=settings,
        cache=cache,
        openapi=OpenAPIBuilder(table, settings.public_base_url, settings.internal_secret,
                               service_urls=dict(settings.service_urls)),
        quota=DailyQuota(settings),
        # Every sign-in asks the shared bucket (no lease: there are few, and each costs an argon2 check).
        login_by_account=SharedLimiter("login-account", settings.login_failures_per_minute,
                                       settings.login_failures_burst, lease_seconds=0.0, max_batch=1),
        login_by_address=SharedLimiter("login-address", settings.login_address_failures_per_minute,
                                       settings.login_address_failures_burst, lease_seconds=0.0, max_batch=1),
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.gw = state
        state.pool = await create_pool(settings, SCHEMA)
        state.store = GatewayStore(state.pool)
        cache.store = state.store
        state.quota.store = state.store
        for limiter in _limiters(front, state):
            limiter.store = state.store
        state.forwarder = Forwarder(settings.service_urls, timeout=settings.forward_timeout_seconds)
        state.openapi.fetch = state.forwarder.get_json_status
        state.dashboard = DashboardApi(settings.dashboard_api_url or f"http://127.0.0.1:{settings.port}",
                                       timeout=settings.forward_timeout_seconds)

        def reload_later() -> None:
            state.tasks.append(asyncio.create_task(cache.reload(), name="gateway-cache-reload"))

        async def on_reconnect() -> None:
            # Events sent while we were away were missed: take the database's view again.
            log.info("nats_reconnected_reloading_auth_cache")
            reload_later()

        state.nc = await nats.connect(
            settings.nats_url, name="calmesh-gateway", max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            connect_timeout=5, reconnected_cb=on_reconnect,
        )
        # Subscribe before loading, so nothing falls between the snapshot and the first event.
        await state.nc.subscribe(EVENTS_SUBJECT, cb=cache.on_message)
        # Every replica's cache hears plan changes; one replica records each in the database.
        await state.nc.subscribe(PLAN_CHANGED_SUBJECT, cb=cache.on_message)
        await cache.reload()
        js = state.nc.jetstream()
        relay = OutboxRelay(state.pool, js, SCHEMA)
        spec, _ = plan_consumer(SCHEMA, consumer_name=NAME)
        plans = DurableConsumer(state.pool, js, spec, state.store.apply_plan_changed)
        await plans.subscribe()
        sampler = MetricsSampler(state.metrics, js, state.pool, SCHEMA, [ConsumerRef(spec.stream, spec.name)])
        stop_metrics = state.metrics.serve(settings.host, settings.metrics_port) if settings.metrics_port else None
        state.tasks += [
            asyncio.create_task(sampler.run(), name="gateway-metrics"),
            asyncio.create_task(relay.run(), name="gateway-relay"),
            asyncio.create_task(plans.run(), name="gateway-plans"),
            asyncio.create_task(periodic(LAST_USED_FLUSH_SECONDS, cache.flush_last_used, "last_used"),
                                name="gateway-last-used"),
            asyncio.create_task(periodic(LAST_USED_FLUSH_SECONDS, state.quota.flush, "api_usage"),
                                name="gateway-api-usage"),
            asyncio.create_task(periodic(LEASE_SECONDS, _flush_leases(front, state), "rate_limit_leases"),
                                name="gateway-leases"),
            asyncio.create_task(periodic(PRUNE_SECONDS, state.store.prune_buckets, "prune"), name="gateway-prune"),
        ]
        state.started = True
        log.info("service_started", service=NAME, port=settings.port)
        try:
            yield
        finally:
            state.started = False
            if stop_metrics is not None:
                stop_metrics()
            for task in state.tasks:
                task.cancel()
            await asyncio.gather(*state.tasks, return_exceptions=True)
            state.tasks.clear()
            for flush in (cache.flush_last_used, state.quota.flush, _flush_leases(front, state)):
                try:
                    await flush()
                except Exception as exc:  # noqa: BLE001 - shutting down: report and go on
                    log.warning("flush_failed", job=flush.__qualname__, error=repr(exc))
            await state.forwarder.close()
            await state.dashboard.close()
            if state.nc.is_connected:
                await state.nc.drain()
            await state.pool.close()

    inner = Litestar(
        route_handlers=[*ROUTE_HANDLERS, *TOOL_HANDLERS, *DASHBOARD_HANDLERS],
        lifespan=[lifespan],
        exception_handlers={Exception: problem_handler},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=None,
        debug=False,
    )
    front = GatewayFront(settings, inner, cache, lambda: state.forwarder, table, state.quota)
    front.state = state
    front.metrics = state.metrics
    front.readiness = lambda: _ready(state)
    state.front = front
    return front


def _limiters(front: GatewayFront, state: GatewayState) -> list[SharedLimiter]:
    return [front.key_limiter, front.public_limiter, front.bad_key_limiter,
            *(x for x in (state.login_by_account, state.login_by_address) if x is not None)]


async def _ready(state: GatewayState) -> bool:
    """Readiness of this replica: started, NATS connected, its loops (relay, plan consumer, cache
    jobs) running, and the database answering (checked at most once a second)."""
    if not state.started or state.nc is None or not state.nc.is_connected or state.store is None:
        return False
    if any(task.done() for task in state.tasks if not task.get_name().startswith("gateway-cache-reload")):
        return False
    now = time.monotonic()
    checked_at, ok = state.db_checked
    if now - checked_at >= 1.0:
        try:
            async with asyncio.timeout(state.settings.health_timeout_seconds):
                await state.store.ping()
            ok = True
        except Exception as exc:  # noqa: BLE001 - not ready; the cause goes to the log
            log.warning("readiness_database_down", error=repr(exc))
            ok = False
        state.db_checked = (time.monotonic(), ok)
    return ok


def _flush_leases(front: GatewayFront, state: GatewayState) -> Any:
    async def flush() -> None:
        for limiter in _limiters(front, state):
            await limiter.flush()

    return flush


def main() -> None:
    def factory(settings: Settings) -> Any:
        settings.require("session_secret")
        return create_app(settings)

    run_service(NAME, factory)


if __name__ == "__main__":
    main()
