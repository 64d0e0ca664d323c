"""Billing against a local fake of Mollie (tests/fakes/mollie.py): subscribe, the first payment
paid, recurring payments, a failed one and its grace period, cancel, repeated and forged notices.

The billing service runs in-process (uvicorn on a free port) on a schema of its own; Mollie's
notices go straight to it, with the internal secret the gateway would add."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn

from litestar import post

from calmesh_common.devstack.embedded import free_port
from calmesh_common.migrations import Migration, apply_migrations, common_migrations, package_migrations, shared_sql
from calmesh_common.plans import enforce_limit, plan_consumer
from calmesh_common.service import Caller, ServiceDeps, create_service_app
from calmesh_common.settings import Settings
from calmesh_billing.app import create_app

_spec = importlib.util.spec_from_file_location("calmesh_test_fake_mollie", Path(__file__).parent / "fakes" / "mollie.py")
assert _spec and _spec.loader
fake_mollie = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(fake_mollie)
FakeMollie = fake_mollie.FakeMollie

SECRET = "test-internal-secret"


@dataclass
class Served:
    server: uvicorn.Server
    task: asyncio.Task[None]
    url: str

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


async def serve(app: Any, port: int | None = None) -> Served:
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 20
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the server stopped during start-up")
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        await asyncio.sleep(0.02)
    return Served(server, task, f"http://127.0.0.1:{port}")


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.05)


@dataclass
class Billing:
    api: httpx.AsyncClient
    url: str
    mollie: Any
    pool: asyncpg.Pool
    schema: str
    app: Any

    def headers(self, user_id: str) -> dict[str, str]:
        return {"x-calmesh-internal-secret": SECRET, "x-calmesh-user-id": user_id, "x-calmesh-auth": "session",
                "x-calmesh-scope": "full", "x-calmesh-user-handle": "ada"}

    async def status(self, user_id: str) -> dict[str, Any]:
        r = await self.api.get("/api/v1/billing", headers=self.headers(user_id))
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def subscribe(self, user_id: str) -> str:
        """Subscribe; returns the first payment's id (from the checkout URL)."""
        r = await self.api.post("/api/v1/billing/subscribe", headers=self.headers(user_id),
                                json={"plan": "pro", "redirect_url": "https://app.example/billing/done"})
        assert r.status_code == 201, r.text
        return r.json()["checkout_url"].rsplit("/", 1)[1]  # type: ignore[no-any-return]

    async def events(self, user_id: str) -> list[str]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(f"SELECT type FROM {self.schema}.events WHERE stream_id = $1 ORDER BY version",
                                    f"billing-{user_id}")
        return [r["type"] for r in rows]

    def set_clock(self, now: datetime) -> None:
        self.app.state.deps.extras["billing"].clock = lambda: now


@pytest.fixture
async def billing(migrated: str, nats_server_url: str, unique: str) -> AsyncIterator[Billing]:
    schema = f"billing_{unique}"
    conn = await asyncpg.connect(migrated)
    try:
        await apply_migrations(conn, schema, package_migrations("calmesh_billing"))
    finally:
        await conn.close()
    mollie = FakeMollie(webhook_headers={"x-calmesh-internal-secret": SECRET})
    mollie_served = await serve(mollie)
    mollie.base_url = mollie_served.url
    port = free_port()
    settings = Settings(
        database_url=migrated,
        nats_url=nats_server_url,
        internal_secret=SECRET,
        mollie_api_base=mollie_served.url + "/v2",
        mollie_api_key=mollie.api_key,
        mollie_webhook_url=f"http://127.0.0.1:{port}/api/v1/billing/mollie/webhook",
        billing_grace_period_seconds=1.0,
        billing_sweep_interval_seconds=0.2,
        log_level="warning",
    )
    app = create_app(settings, schema=schema)
    served = await serve(app, port)
    pool = await asyncpg.create_pool(migrated, min_size=1, max_size=3)
    api = httpx.AsyncClient(base_url=served.url, timeout=30)
    try:
        yield Billing(api, served.url, mollie, pool, schema, app)
    finally:
        await api.aclose()
        await served.stop()
        await mollie_served.stop()
        await pool.close()


def user() -> str:
    return f"usr_{uuid.uuid4().hex[:20]}"


def parse(instant: str) -> datetime:
    return datetime.fromisoformat(instant.replace("Z", "+00:00"))


async def test_subscribe_pay_renew_fail_grace_and_back_to_free(billing: Billing) -> None:
    owner = user()
    start = await billing.status(owner)
    assert start == {"plan": "free", "status": "none", "current_period_end": None,
                     "limits": {"connections": 3, "booking_pages": 2, "api_requests_per_day": 10_000},
                     "usage": {"connections": 0, "booking_pages": 0, "api_requests_today": None}}

    payment_id = await billing.subscribe(owner)
    payment = billing.mollie.payments[payment_id]
    assert payment["sequenceType"] == "first" and payment["status"] == "open"
    assert payment["customerId"] in billing.mollie.customers
    assert (await billing.status(owner))["status"] == "pending"
    assert (await billing.status(owner))["plan"] == "free"

    # The customer pays; Mollie notifies; billing fetches, creates the monthly subscription.
    assert await billing.mollie.complete_checkout(payment_id, "paid") == 200
    paid = await billing.status(owner)
    assert paid["plan"] == "pro" and paid["status"] == "active"
    assert paid["limits"] == {"connections": 50, "booking_pages": 100, "api_requests_per_day": 1_000_000}
    first_end = parse(paid["current_period_end"])
    assert timedelta(days=27) < first_end - datetime.now(UTC) < timedelta(days=32)
    [subscription] = billing.mollie.active_subscriptions(payment["customerId"])
    assert subscription["interval"] == "1 month" and subscription["amount"] == {"currency": "EUR", "value": "9.00"}

    # Mollie calls again, twice at once: applied once, no second subscription.
    events_before = await billing.events(owner)
    assert await asyncio.gather(billing.mollie.notify(payment_id), billing.mollie.notify(payment_id)) == [200, 200]
    assert await billing.events(owner) == events_before
    assert len(billing.mollie.active_subscriptions(payment["customerId"])) == 1
    assert sum(1 for c in billing.mollie.calls if c == ("POST", f"/v2/customers/{payment['customerId']}/subscriptions")) == 1

    # A recurring payment extends the period by a month.
    renewal, code = await billing.mollie.charge(subscription["id"], "paid")
    assert code == 200
    renewed = await billing.status(owner)
    assert renewed["status"] == "active"
    assert timedelta(days=27) < parse(renewed["current_period_end"]) - first_end < timedelta(days=32)
    assert await billing.mollie.notify(renewal) == 200
    assert (await billing.status(owner))["current_period_end"] == renewed["current_period_end"]

    # A failed one: past due, still pro; after the grace period, free and the subscription ended.
    _failed, code = await billing.mollie.charge(subscription["id"], "failed")
    assert code == 200
    past_due = await billing.status(owner)
    assert past_due["plan"] == "pro" and past_due["status"] == "past_due"
    ended = await eventually(lambda: _free(billing, owner), timeout=5)
    assert ended["status"] == "canceled" and ended["limits"]["connections"] == 3
    assert billing.mollie.subscriptions[subscription["id"]]["status"] == "canceled"

    assert await billing.events(owner) == [
        "checkout.started.v1", "plan.changed.v1",
        "paid_subscription.activated.v1", "plan.changed.v1",
        "recurring_payment.received.v1", "plan.changed.v1",
        "recurring_payment.failed.v1", "plan.changed.v1",
        "paid_subscription.ended.v1", "plan.changed.v1",
    ]


async def _free(billing: Billing, owner: str) -> dict[str, Any] | None:
    status = await billing.status(owner)
    return status if status["plan"] == "free" else None


async def test_cancel_keeps_pro_until_the_period_ends(billing: Billing) -> None:
    owner = user()
    payment_id = await billing.subscribe(owner)
    assert await billing.mollie.complete_checkout(payment_id, "paid") == 200
    active = await billing.status(owner)
    customer = billing.mollie.payments[payment_id]["customerId"]
    [subscription] = billing.mollie.active_subscriptions(customer)

    r = await billing.api.post("/api/v1/billing/cancel", headers=billing.headers(owner))
    assert r.status_code == 200, r.text
    assert r.json()["plan"] == "pro" and r.json()["status"] == "canceled"
    assert r.json()["current_period_end"] == active["current_period_end"]
    assert billing.mollie.subscriptions[subscription["id"]]["status"] == "canceled"
    again = await billing.api.post("/api/v1/billing/cancel", headers=billing.headers(owner))
    assert again.status_code == 200 and again.json() == r.json()

    await asyncio.sleep(0.5)  # sweeps run: the period has not ended
    assert (await billing.status(owner))["plan"] == "pro"
    billing.set_clock(parse(active["current_period_end"]) + timedelta(seconds=1))
    ended = await eventually(lambda: _free(billing, owner), timeout=5)
    assert ended["status"] == "canceled" and ended["current_period_end"] is None


async def test_unpaid_checkouts_and_forged_notices_change_nothing(billing: Billing) -> None:
    owner = user()
    payment_id = await billing.subscribe(owner)
    assert await billing.mollie.complete_checkout(payment_id, "expired") == 200
    assert (await billing.status(owner))["status"] == "none"
    assert billing.mollie.subscriptions == {}

    events_before = await billing.events(owner)
    status_before = await billing.status(owner)
    for forged in ("tr_forged123", "not-a-payment", payment_id + "x", ""):
        r = await billing.api.post("/api/v1/billing/mollie/webhook", data={"id": forged},
                                   headers={"x-calmesh-internal-secret": SECRET})
        assert r.status_code == 200, r.text
        assert r.content == b""
    assert await billing.events(owner) == events_before
    assert await billing.status(owner) == status_before
    # A forged id was asked of Mollie (404 there) and nothing followed.
    assert ("GET", "/v2/payments/tr_forged123") in billing.mollie.calls

    # Idempotency-Key: the same checkout again, one payment at Mollie.
    key = {"Idempotency-Key": uuid.uuid4().hex, **billing.headers(owner)}
    body = {"plan": "pro", "redirect_url": "https://app.example/done"}
    payments = len(billing.mollie.payments)
    answers = await asyncio.gather(*(billing.api.post("/api/v1/billing/subscribe", json=body, headers=key) for _ in range(3)))
    assert {r.status_code for r in answers} == {201} and len({r.json()["checkout_url"] for r in answers}) == 1
    assert len(billing.mollie.payments) == payments + 1
    other = await billing.api.post("/api/v1/billing/subscribe", json={**body, "redirect_url": "https://x.example/"},
                                   headers=key)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"

    # Cancelling with nothing to cancel, subscribing to an unknown plan: named problems.
    r = await billing.api.post("/api/v1/billing/cancel", headers=billing.headers(owner))
    assert r.status_code == 409 and r.json()["code"] == "no_active_subscription"
    r = await billing.api.post("/api/v1/billing/subscribe", headers=billing.headers(owner),
                               json={"plan": "gold", "redirect_url": "https://app.example/"})
    assert r.status_code == 422 and r.json()["code"] == "unknown_plan"


# --- plan limits: the calmesh_common.plans mechanism in a small service -----------------------------


def widget_app(settings: Settings, schema: str) -> Any:
    """A service wired as plans.py tells owners to: the plan consumer, and enforce_limit in the
    transaction that creates. Its "widgets" stand for booking pages."""
    @post("/api/v1/widgets", status_code=201)
    async def create_widget(deps: ServiceDeps, caller: Caller) -> dict[str, str]:
        async with deps.pool.acquire() as conn, conn.transaction():  # type: ignore[union-attr]
            await enforce_limit(
                conn, schema=schema, user_id=caller.user_id, limit="booking_pages", settings=deps.settings,
                used=lambda c: c.fetchval(f"SELECT count(*) FROM {schema}.widgets WHERE user_id = $1", caller.user_id),
            )
            widget_id = f"wdg_{uuid.uuid4().hex[:12]}"
            await conn.execute(f"INSERT INTO {schema}.widgets (id, user_id) VALUES ($1, $2)", widget_id, caller.user_id)
        return {"id": widget_id}

    return create_service_app(settings, name="widgets", schema=schema, route_handlers=[create_widget],
                              consumers=[plan_consumer(schema, consumer_name=schema)])


async def test_plan_limits_refuse_with_402_and_an_upgrade_lifts_them_at_once(
    billing: Billing, migrated: str, nats_server_url: str, unique: str
) -> None:
    schema = f"widgets_{unique}"
    conn = await asyncpg.connect(migrated)
    try:
        await apply_migrations(conn, schema, common_migrations() + [
            Migration("widgets/0001_user_plans", shared_sql("user_plans")),
            Migration("widgets/0002_widgets", "CREATE TABLE {schema}.widgets (id text PRIMARY KEY, user_id text NOT NULL);"),
        ])
    finally:
        await conn.close()
    settings = Settings(database_url=migrated, nats_url=nats_server_url, internal_secret=SECRET, log_level="warning")
    served = await serve(widget_app(settings, schema))
    try:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as widgets:
            owner = user()
            h = billing.headers(owner)
            assert [(await widgets.post("/api/v1/widgets", headers=h)).status_code for _ in range(2)] == [201, 201]
            refused = await widgets.post("/api/v1/widgets", headers=h)
            assert refused.status_code == 402
            assert refused.headers["content-type"].startswith("application/problem+json")
            problem = refused.json()
            assert problem["code"] == "plan_limit_reached" and problem["limit"] == "booking_pages"
            assert problem["plan"] == "free" and problem["allowed"] == 2 and "booking pages" in problem["detail"]

            # Concurrent creations of another user cannot overshoot the limit.
            racer = billing.headers(user())
            codes = await asyncio.gather(*(widgets.post("/api/v1/widgets", headers=racer) for _ in range(5)))
            assert sorted(r.status_code for r in codes) == [201, 201, 402, 402, 402]

            # Upgrade through billing and Mollie: the limit lifts as soon as plan.changed arrives.
            payment_id = await billing.subscribe(owner)
            assert await billing.mollie.complete_checkout(payment_id, "paid") == 200
            paid_at = time.monotonic()

            async def created() -> bool:
                return (await widgets.post("/api/v1/widgets", headers=h)).status_code == 201

            await eventually(created, timeout=5)
            assert time.monotonic() - paid_at < 3
    finally:
        await served.stop()


async def test_through_the_gateway_billing_is_for_sessions_and_mollie_reaches_it_without_auth(stack: Any) -> None:
    suffix = uuid.uuid4().hex[:10]
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        r = await gw.post("/api/v1/auth/signup", json={"email": f"bill-{suffix}@example.com",
                                                       "password": "a long enough passphrase", "handle": f"bill-{suffix}"})
        assert r.status_code == 201, r.text
        r = await gw.get("/api/v1/billing")
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["plan"], body["status"], body["current_period_end"]) == ("free", "none", None)
        assert body["limits"] == {"connections": 3, "booking_pages": 2, "api_requests_per_day": 10_000}
        k = await gw.post("/api/v1/api-keys", json={"name": "k", "scope": "full"},
                          headers={"X-CSRF-Token": gw.cookies["calmesh_csrf"]})
        assert k.status_code == 201, k.text
        gw.cookies.clear()
        r = await gw.get("/api/v1/billing", headers={"Authorization": f"Bearer {k.json()['key']}"})
        assert r.status_code == 403 and r.json()["code"] == "insufficient_scope", r.text  # session only

        # Mollie's notice needs no credentials; the platform under test has no Mollie account, so
        # billing cannot ask Mollie and answers 503: Mollie calls again later, nothing changed.
        r = await gw.post("/api/v1/billing/mollie/webhook", data={"id": "tr_e2eforged"})
        assert r.status_code == 503 and r.json()["code"] == "payment_provider_unavailable", r.text


async def test_usage_counts_connections_and_booking_pages_from_their_events(billing: Billing, unique: str) -> None:
    from calmesh_common.events.booking import BookingPageCreated, BookingPageDeleted
    from calmesh_common.events.connections import ConnectionCreated, ConnectionRemoved
    from calmesh_common.eventstore import EventStore
    from calmesh_common.relay import OutboxRelay

    source = f"usage_src_{unique}"
    async with billing.pool.acquire() as c:
        await apply_migrations(c, source, common_migrations())
    owner, now = user(), datetime.now(UTC)
    events = [
        ("connections", ConnectionCreated(connection_id="conn_a", user_id=owner, provider="ical", display_name="a",
                                          status="pending", created_at=now)),
        ("connections", ConnectionCreated(connection_id="conn_b", user_id=owner, provider="ical", display_name="b",
                                          status="pending", created_at=now)),
        ("connections", ConnectionRemoved(connection_id="conn_a", user_id=owner, provider="ical", at=now)),
        ("booking", BookingPageCreated(page_id="bp_1", user_id=owner, slug="intro", calendar_slug="work",
                                       title="Intro", duration_minutes=30, timezone="UTC")),
        ("booking", BookingPageCreated(page_id="bp_2", user_id=owner, slug="demo", calendar_slug="work",
                                       title="Demo", duration_minutes=30, timezone="UTC")),
        ("booking", BookingPageDeleted(page_id="bp_9", user_id=owner, slug="never-counted")),
    ]
    async with billing.pool.acquire() as c, c.transaction():
        for n, (context, event) in enumerate(events):
            await EventStore(source, context=context).append(c, f"usage-{unique}-{n}", 0, [event], user_id=owner)
    import nats

    nc = await nats.connect(billing.app.state.deps.settings.nats_url)
    try:
        while await OutboxRelay(billing.pool, nc.jetstream(), source).publish_pending():
            pass
    finally:
        await nc.close()

    async def counted() -> dict[str, Any] | None:
        usage = (await billing.status(owner))["usage"]
        return usage if usage["connections"] == 1 and usage["booking_pages"] == 2 else None

    usage = await eventually(counted, timeout=10)
    assert usage == {"connections": 1, "booking_pages": 2, "api_requests_today": None}
