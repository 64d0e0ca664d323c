"""The billing aggregate: one per user, event-sourced, pure.

``decide(command, state) -> events`` and ``evolve(state, event) -> state`` do no I/O. The handlers
load the events of ``billing-<user_id>``, fold them with `evolve`, `decide`, and append; talking
to Mollie happens in the handlers, before `decide`, and its results come in as command fields.

Plans: ``free`` by default; ``pro`` from a paid first payment until the paid period ends after a
cancel, or until the grace period after a failed recurring payment runs out.

Statuses (docs/api-guide.md): ``none`` (never subscribed), ``pending`` (a checkout is open), ``active``,
``past_due`` (a recurring payment failed; still pro until ``grace_until``), ``canceled`` (pro
until ``current_period_end`` after a cancel; free afterwards, still ``canceled``).

Every Mollie payment is applied at most once (``settled_payments``), whatever the number of
notices; every change of (plan, status, current_period_end) is followed by a `PlanChanged`.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from calmesh_common.events import Event
from calmesh_common.events.billing import (
    CheckoutFailed,
    CheckoutStarted,
    PlanChanged,
    RecurringPaymentFailed,
    RecurringPaymentReceived,
    SubscriptionActivated,
    SubscriptionCanceled,
    SubscriptionEnded,
)

FREE = "free"
PRO = "pro"
PAID_PLANS = (PRO,)
#: Mollie payment statuses that end a payment without money.
UNPAID_FINAL = frozenset({"failed", "canceled", "expired"})


def stream_id(user_id: str) -> str:
    return f"billing-{user_id}"


class BillingState(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    version: int = 0
    plan: str = FREE
    status: str = "none"
    current_period_end: datetime | None = None
    grace_until: datetime | None = None
    customer_id: str | None = None
    mollie_subscription_id: str | None = None
    pending_payment_id: str | None = None
    settled_payments: frozenset[str] = frozenset()

    def snapshot(self) -> tuple[str, str, datetime | None]:
        return (self.plan, self.status, self.current_period_end)


# --- commands ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartCheckout:
    plan: str
    customer_id: str
    payment_id: str
    checkout_url: str
    at: datetime


@dataclass(frozen=True)
class ActivateSubscription:
    """The first payment is paid; `mollie_subscription_id` was created for it."""

    payment_id: str
    customer_id: str
    mollie_subscription_id: str
    at: datetime
    plan: str = PRO


@dataclass(frozen=True)
class FailCheckout:
    payment_id: str
    payment_status: str
    at: datetime


@dataclass(frozen=True)
class RecordRecurringPayment:
    payment_id: str
    payment_status: str
    at: datetime
    grace_period: timedelta


@dataclass(frozen=True)
class CancelSubscription:
    at: datetime


@dataclass(frozen=True)
class EndIfDue:
    """The sweeper's command: end a paid plan whose paid period or grace period has run out."""

    at: datetime


Command = StartCheckout | ActivateSubscription | FailCheckout | RecordRecurringPayment | CancelSubscription | EndIfDue


class BillingError(Exception):
    """A command that cannot apply to the current state; `code` names it for the API."""

    code = "billing_error"
    status = 409


class AlreadySubscribed(BillingError):
    code = "already_subscribed"


class NothingToCancel(BillingError):
    code = "no_active_subscription"


class UnknownPlan(BillingError):
    code = "unknown_plan"
    status = 422


# --- time ---------------------------------------------------------------------------------------


def add_month(when: datetime) -> datetime:
    """The same day and time next month, clamped to the month's last day (Jan 31 -> Feb 28)."""
    year, month = (when.year + 1, 1) if when.month == 12 else (when.year, when.month + 1)
    day = min(when.day, calendar.monthrange(year, month)[1])
    return when.replace(year=year, month=month, day=day)


def next_period_end(previous_end: datetime | None, paid_at: datetime) -> datetime:
    """A paid month after the current period (or after `paid_at` when none runs), never ending
    before `paid_at`."""
    end = add_month(previous_end if previous_end is not None and previous_end > paid_at else paid_at)
    while end <= paid_at:
        end = add_month(end)
    return end


# --- decide -------------------------------------------------------------------------------------


def _facts(command: Command, state: BillingState) -> list[Event]:
    user = state.user_id
    match command:
        case StartCheckout():
            if command.plan not in PAID_PLANS:
                raise UnknownPlan(f"There is no plan {command.plan!r} to subscribe to; the paid plan is pro.")
            if state.plan == PRO and state.status == "active":
                raise AlreadySubscribed("You are on the pro plan already.")
            return [CheckoutStarted(user_id=user, plan=command.plan, customer_id=command.customer_id,
                                    payment_id=command.payment_id, checkout_url=command.checkout_url, at=command.at)]
        case ActivateSubscription():
            if command.payment_id in state.settled_payments:
                return []
            end = next_period_end(state.current_period_end if state.plan == PRO else None, command.at)
            return [SubscriptionActivated(user_id=user, plan=command.plan, customer_id=command.customer_id,
                                          payment_id=command.payment_id,
                                          mollie_subscription_id=command.mollie_subscription_id,
                                          current_period_end=end, at=command.at)]
        case FailCheckout():
            if command.payment_id in state.settled_payments:
                return []
            return [CheckoutFailed(user_id=user, payment_id=command.payment_id,
                                   payment_status=command.payment_status, at=command.at)]
        case RecordRecurringPayment():
            if command.payment_id in state.settled_payments:
                return []
            if command.payment_status == "paid":
                end = next_period_end(state.current_period_end, command.at)
                return [RecurringPaymentReceived(user_id=user, payment_id=command.payment_id,
                                                 current_period_end=end, at=command.at)]
            if command.payment_status in UNPAID_FINAL:
                # The grace period runs from the first failure; later failures do not extend it.
                grace = state.grace_until if state.status == "past_due" and state.grace_until else (
                    command.at + command.grace_period)
                return [RecurringPaymentFailed(user_id=user, payment_id=command.payment_id,
                                               payment_status=command.payment_status, grace_until=grace,
                                               at=command.at)]
            return []  # open, pending, authorized: not settled yet; Mollie calls again
        case CancelSubscription():
            if state.status == "canceled":
                return []  # cancelling twice is the same result
            if state.plan != PRO or state.status not in ("active", "past_due"):
                raise NothingToCancel("There is no paid subscription to cancel.")
            return [SubscriptionCanceled(user_id=user, mollie_subscription_id=state.mollie_subscription_id,
                                         ends_at=state.current_period_end, at=command.at)]
        case EndIfDue():
            if state.plan != PRO:
                return []
            if state.status == "canceled" and (state.current_period_end is None or state.current_period_end <= command.at):
                return [SubscriptionEnded(user_id=user, reason="period_ended", at=command.at)]
            if state.status == "past_due" and state.grace_until is not None and state.grace_until <= command.at:
                return [SubscriptionEnded(user_id=user, reason="grace_expired", at=command.at)]
            return []
    raise TypeError(f"unknown command {command!r}")


def decide(command: Command, state: BillingState) -> list[Event]:
    """The events `command` produces in `state`; a `PlanChanged` follows when the plan, status or
    period end changed. Raises a BillingError when the command cannot apply."""
    facts = _facts(command, state)
    if not facts:
        return []
    after = fold(state, facts)
    if after.snapshot() != state.snapshot():
        at = getattr(command, "at")  # noqa: B009 - every command carries its instant
        facts.append(PlanChanged(user_id=state.user_id, plan=after.plan, status=after.status,
                                 current_period_end=after.current_period_end, previous_plan=state.plan, at=at))
    return facts


# --- evolve -------------------------------------------------------------------------------------


def evolve(state: BillingState, event: Event) -> BillingState:
    """The state after `event` (an event of another kind leaves it as it is)."""
    s = state
    match event:
        case CheckoutStarted():
            return msgspec.structs.replace(
                s, customer_id=event.customer_id, pending_payment_id=event.payment_id,
                status="pending" if s.plan == FREE else s.status,
            )
        case CheckoutFailed():
            pending = s.pending_payment_id == event.payment_id
            return msgspec.structs.replace(
                s, settled_payments=s.settled_payments | {event.payment_id},
                pending_payment_id=None if pending else s.pending_payment_id,
                status="none" if pending and s.status == "pending" else s.status,
            )
        case SubscriptionActivated():
            return msgspec.structs.replace(
                s, plan=event.plan, status="active", current_period_end=event.current_period_end,
                grace_until=None, customer_id=event.customer_id, mollie_subscription_id=event.mollie_subscription_id,
                pending_payment_id=None, settled_payments=s.settled_payments | {event.payment_id},
            )
        case RecurringPaymentReceived():
            return msgspec.structs.replace(
                s, plan=PRO, status="canceled" if s.status == "canceled" else "active",
                current_period_end=event.current_period_end, grace_until=None,
                settled_payments=s.settled_payments | {event.payment_id},
            )
        case RecurringPaymentFailed():
            paid = s.plan == PRO and s.status in ("active", "past_due")
            return msgspec.structs.replace(
                s, status="past_due" if paid else s.status, grace_until=event.grace_until if paid else s.grace_until,
                settled_payments=s.settled_payments | {event.payment_id},
            )
        case SubscriptionCanceled():
            return msgspec.structs.replace(s, status="canceled", grace_until=None)
        case SubscriptionEnded():
            return msgspec.structs.replace(
                s, plan=FREE, status="canceled", current_period_end=None, grace_until=None,
                mollie_subscription_id=None,
            )
    return s


def fold(state: BillingState, events: list[Event]) -> BillingState:
    for event in events:
        state = evolve(state, event)
    return state


def initial(user_id: str) -> BillingState:
    return BillingState(user_id=user_id)
