"""Events published by the billing context: the plan and subscription of each user.

Subjects are ``calmesh.billing.<name>`` on the stream ``CALMESH_BILLING``; the stream id of every
event is ``billing-<user_id>`` (one aggregate per user). The facts (`CheckoutStarted`,
`SubscriptionActivated`, `RecurringPaymentReceived`, …) are billing's own; `PlanChanged` is the one
other contexts consume: it follows every change of the user's plan, status or period end, carries
the whole new snapshot, and is delivered to webhook subscribers as ``subscription.updated``.
Instants are UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from . import Event


class CheckoutStarted(Event, tag="checkout.started.v1"):
    """A Mollie first payment (sequenceType first) was created; the user is sent to its checkout."""

    context: ClassVar[str] = "billing"
    user_id: str
    plan: str
    customer_id: str
    payment_id: str
    checkout_url: str
    at: datetime


class CheckoutFailed(Event, tag="checkout.failed.v1"):
    """The first payment ended without being paid (failed, canceled or expired)."""

    context: ClassVar[str] = "billing"
    user_id: str
    payment_id: str
    payment_status: str
    at: datetime


class SubscriptionActivated(Event, tag="paid_subscription.activated.v1"):
    """The first payment was paid and the monthly Mollie subscription created: the plan starts."""

    context: ClassVar[str] = "billing"
    user_id: str
    plan: str
    customer_id: str
    payment_id: str
    mollie_subscription_id: str
    current_period_end: datetime
    at: datetime


class RecurringPaymentReceived(Event, tag="recurring_payment.received.v1"):
    """A monthly payment was paid: the period is extended."""

    context: ClassVar[str] = "billing"
    user_id: str
    payment_id: str
    current_period_end: datetime
    at: datetime


class RecurringPaymentFailed(Event, tag="recurring_payment.failed.v1"):
    """A monthly payment failed: the account is past due until `grace_until`."""

    context: ClassVar[str] = "billing"
    user_id: str
    payment_id: str
    payment_status: str
    grace_until: datetime
    at: datetime


class SubscriptionCanceled(Event, tag="paid_subscription.canceled.v1"):
    """The user canceled; the plan lasts until `ends_at` (the end of the paid period)."""

    context: ClassVar[str] = "billing"
    user_id: str
    mollie_subscription_id: str | None
    ends_at: datetime | None
    at: datetime


class SubscriptionEnded(Event, tag="paid_subscription.ended.v1"):
    """The paid plan is over: `reason` is ``period_ended`` (after a cancel) or ``grace_expired``."""

    context: ClassVar[str] = "billing"
    user_id: str
    reason: str
    at: datetime


class PlanChanged(Event, tag="plan.changed.v1"):
    """The user's plan, status or period end changed; the whole new snapshot.

    Consumed by `calmesh_common.plans` (every service that enforces limits) and delivered to
    webhooks as ``subscription.updated``."""

    context: ClassVar[str] = "billing"
    user_id: str
    plan: str  # "free" | "pro"
    status: str  # "none" | "pending" | "active" | "past_due" | "canceled"
    current_period_end: datetime | None
    previous_plan: str
    at: datetime
