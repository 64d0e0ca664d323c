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


class _BillingEvent(Event, tag=False, frozen=True):
    """The fields every billing event starts with (no tag of its own: not an event by itself)."""

    context: ClassVar[str] = "billing"
    user_id: str


class _PaymentEvent(_BillingEvent, tag=False, frozen=True):
    """What Mollie said of one of the user's payments."""

    payment_id: str


class _PaymentNotPaid(_PaymentEvent, tag=False, frozen=True):
    #: Mollie's status of the payment (``failed``, ``canceled``, ``expired``).
    payment_status: str


class CheckoutStarted(_BillingEvent, tag="checkout.started.v1", frozen=True):
    """A Mollie first payment (sequenceType first) was created; the user is sent to its checkout."""

    plan: str
    customer_id: str
    payment_id: str
    checkout_url: str
    at: datetime


class CheckoutFailed(_PaymentNotPaid, tag="checkout.failed.v1", frozen=True):
    """The first payment ended without being paid (failed, canceled or expired)."""

    at: datetime


class SubscriptionActivated(_BillingEvent, tag="paid_subscription.activated.v1", frozen=True):
    """The first payment was paid and the monthly Mollie subscription created: the plan starts."""

    plan: str
    customer_id: str
    payment_id: str
    mollie_subscription_id: str
    current_period_end: datetime
    at: datetime


class RecurringPaymentReceived(_PaymentEvent, tag="recurring_payment.received.v1", frozen=True):
    """A monthly payment was paid: the period is extended."""

    current_period_end: datetime
    at: datetime


class RecurringPaymentFailed(_PaymentNotPaid, tag="recurring_payment.failed.v1", frozen=True):
    """A monthly payment failed: the account is past due until `grace_until`."""

    grace_until: datetime
    at: datetime


class SubscriptionCanceled(_BillingEvent, tag="paid_subscription.canceled.v1", frozen=True):
    """The user canceled; the plan lasts until `ends_at` (the end of the paid period)."""

    mollie_subscription_id: str | None
    ends_at: datetime | None
    at: datetime


class SubscriptionEnded(_BillingEvent, tag="paid_subscription.ended.v1", frozen=True):
    """The paid plan is over: `reason` is ``period_ended`` (after a cancel) or ``grace_expired``."""

    reason: str
    at: datetime


class PlanChanged(_BillingEvent, tag="plan.changed.v1", frozen=True):
    """The user's plan, status or period end changed; the whole new snapshot.

    Consumed by `calmesh_common.plans` (every service that enforces limits) and delivered to
    webhooks as ``subscription.updated``."""

    plan: str  # "free" | "pro"
    status: str  # "none" | "pending" | "active" | "past_due" | "canceled"
    current_period_end: datetime | None
    previous_plan: str
    at: datetime
