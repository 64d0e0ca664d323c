"""Command handlers: load the user's billing stream, talk to Mollie, decide, append.

Mollie calls that create something carry idempotency keys derived from our ids, so a handler that
dies after Mollie answered and before our commit repeats the call harmlessly when retried. Notices
from Mollie are applied under a per-user lock, so concurrent repeats of the same notice apply once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from calmesh_common.eventstore import EventStore
from calmesh_common.ids import new_id
from calmesh_common.logging import get_logger
from calmesh_common.settings import Settings

from . import store
from .domain import (
    ActivateSubscription,
    AlreadySubscribed,
    BillingState,
    CancelSubscription,
    EndIfDue,
    FailCheckout,
    RecordRecurringPayment,
    StartCheckout,
    UNPAID_FINAL,
    UnknownPlan,
    decide,
    next_period_end,
)
from .mollie import MollieClient, MollieError, MollieNotFound, Payment

log = get_logger(__name__)

PAYMENT_ID = re.compile(r"^tr_[A-Za-z0-9]{1,64}$")


@dataclass
class Billing:
    pool: asyncpg.Pool
    events: EventStore
    schema: str
    mollie: MollieClient
    settings: Settings
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    @property
    def webhook_url(self) -> str:
        return self.settings.mollie_webhook_url or f"{self.settings.public_base_url}/api/v1/billing/mollie/webhook"

    async def state(self, user_id: str) -> BillingState:
        async with self.pool.acquire() as conn:
            return await store.load(conn, self.events, user_id)

    # --- subscribe --------------------------------------------------------------------------------

    async def subscribe(
        self, user_id: str, plan: str, redirect_url: str, name: str | None, *, idempotency_key: str | None = None
    ) -> str:
        """Create (or reuse) the Mollie customer and a first payment; returns its checkout URL.
        With the caller's Idempotency-Key, Mollie gets a key derived from it: a repeat (even a
        concurrent one) gets the same payment back."""
        state = await self.state(user_id)
        if plan != "pro":
            raise UnknownPlan(f"There is no plan {plan!r} to subscribe to; the paid plan is pro.")
        if state.plan == "pro" and state.status == "active":
            raise AlreadySubscribed("You are on the pro plan already.")
        customer_id = state.customer_id or await self.mollie.create_customer(
            name=name or user_id, metadata={"user_id": user_id}, idempotency_key=f"calmesh-customer-{user_id}"
        )
        checkout = (
            f"chk_{hashlib.sha256(f'{user_id}:{idempotency_key}'.encode()).hexdigest()[:26]}"
            if idempotency_key
            else new_id("chk")
        )
        payment = await self.mollie.create_first_payment(
            customer_id=customer_id,
            amount=self.settings.billing_pro_price,
            currency=self.settings.billing_currency,
            description="CalMesh pro, first month",
            redirect_url=redirect_url,
            webhook_url=self.webhook_url,
            metadata={"user_id": user_id, "plan": plan, "checkout": checkout},
            idempotency_key=f"calmesh-{checkout}",
        )
        if not payment.checkout_url:
            raise MollieError("Mollie gave the first payment no checkout URL")
        async with self.pool.acquire() as conn, conn.transaction():
            await store.lock_user(conn, self.schema, user_id)
            state = await store.load(conn, self.events, user_id)
            new = decide(StartCheckout(plan, customer_id, payment.id, payment.checkout_url, self.clock()), state)
            await store.append(conn, self.events, self.schema, state, new)
        return payment.checkout_url

    # --- Mollie's notices ---------------------------------------------------------------------------

    async def on_notice(self, payment_id: str) -> str:
        """Apply what Mollie says about payment `payment_id` (fetched from Mollie: the notice itself
        is not trusted). Returns what happened, for the log."""
        if not PAYMENT_ID.match(payment_id):
            return "ignored: not a payment id"
        try:
            payment = await self.mollie.get_payment(payment_id)
        except MollieNotFound:
            log.warning("mollie_notice_unknown_payment", payment_id=payment_id)
            return "ignored: unknown to Mollie"
        async with self.pool.acquire() as conn:
            user_id = await self._owner(conn, payment)
        if user_id is None:
            log.warning("mollie_notice_no_owner", payment_id=payment_id, customer_id=payment.customer_id)
            return "ignored: no account for this payment"
        async with self.pool.acquire() as conn, conn.transaction():
            await store.lock_user(conn, self.schema, user_id)
            state = await store.load(conn, self.events, user_id)
            if payment.id in state.settled_payments:
                return "duplicate"
            command = await self._command_for(payment, state)
            if command is None:
                return f"waiting: payment is {payment.status}"
            new = decide(command, state)
            await store.append(conn, self.events, self.schema, state, new)
        return f"applied: {', '.join(e.type_name() for e in new) or 'nothing'}"

    async def _owner(self, conn: asyncpg.Connection, payment: Payment) -> str | None:
        """The user a payment belongs to: by its customer (ours), checked against its metadata."""
        if not payment.customer_id:
            return None
        owner = await store.user_of_customer(conn, self.schema, payment.customer_id)
        meta_user = payment.metadata.get("user_id")
        if owner is None:
            return None
        if meta_user is not None and meta_user != owner:
            log.error("mollie_payment_owner_mismatch", payment_id=payment.id)
            return None
        return owner

    async def _command_for(
        self, payment: Payment, state: BillingState
    ) -> ActivateSubscription | FailCheckout | RecordRecurringPayment | None:
        now = self.clock()
        if payment.sequence_type == "first":
            if payment.status == "paid":
                subscription_id = await self._ensure_mollie_subscription(payment, state)
                return ActivateSubscription(payment.id, payment.customer_id or "", subscription_id, now)
            if payment.status in UNPAID_FINAL:
                return FailCheckout(payment.id, payment.status, now)
            return None
        if payment.sequence_type == "recurring":
            if payment.status == "paid" or payment.status in UNPAID_FINAL:
                grace = timedelta(seconds=self.settings.billing_grace_period_seconds)
                return RecordRecurringPayment(payment.id, payment.status, now, grace)
            return None
        return None

    async def _ensure_mollie_subscription(self, payment: Payment, state: BillingState) -> str:
        """The monthly Mollie subscription of this first payment: found if it exists already (a
        notice handled before, up to Mollie's answer), else created."""
        customer_id = payment.customer_id or ""
        for existing in await self.mollie.list_subscriptions(customer_id):
            meta = existing.get("metadata") or {}
            if isinstance(meta, dict) and meta.get("first_payment_id") == payment.id:
                return str(existing["id"])
        if state.mollie_subscription_id and state.status in ("active", "past_due"):
            # Re-subscribing while an old subscription still charges: end it, never bill twice.
            await self.mollie.cancel_subscription(customer_id, state.mollie_subscription_id)
        start = next_period_end(state.current_period_end if state.plan == "pro" else None, self.clock())
        return await self.mollie.create_subscription(
            customer_id=customer_id,
            amount=self.settings.billing_pro_price,
            currency=self.settings.billing_currency,
            interval="1 month",
            start_date=start.date().isoformat(),
            description=f"CalMesh pro ({state.user_id}, {payment.id})",
            webhook_url=self.webhook_url,
            metadata={"user_id": state.user_id, "first_payment_id": payment.id},
            idempotency_key=f"calmesh-subscription-{payment.id}",
        )

    # --- cancel and expiry ----------------------------------------------------------------------------

    async def cancel(self, user_id: str) -> BillingState:
        """Cancel the Mollie subscription; the plan lasts until the end of the paid period."""
        async with self.pool.acquire() as conn, conn.transaction():
            await store.lock_user(conn, self.schema, user_id)
            state = await store.load(conn, self.events, user_id)
            new = decide(CancelSubscription(self.clock()), state)
            if not new:
                return state
            if state.mollie_subscription_id and state.customer_id:
                await self.mollie.cancel_subscription(state.customer_id, state.mollie_subscription_id)
            return await store.append(conn, self.events, self.schema, state, new)

    async def sweep(self) -> int:
        """End the paid plans whose paid period (after a cancel) or grace period has run out."""
        now = self.clock()
        async with self.pool.acquire() as conn:
            due = await store.due_accounts(conn, self.schema, now)
        ended = 0
        for user_id in due:
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    await store.lock_user(conn, self.schema, user_id)
                    state = await store.load(conn, self.events, user_id)
                    new = decide(EndIfDue(now), state)
                    if not new:
                        continue
                    if state.status == "past_due" and state.mollie_subscription_id and state.customer_id:
                        # A free account must not be charged again.
                        await self.mollie.cancel_subscription(state.customer_id, state.mollie_subscription_id)
                    await store.append(conn, self.events, self.schema, state, new)
                    ended += 1
            except MollieError as exc:
                log.warning("billing_sweep_mollie_failed", user_id=user_id, error=str(exc))
        return ended
