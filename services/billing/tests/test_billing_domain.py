"""The billing aggregate without a database: decide and evolve."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from calmesh_billing.domain import (
    ActivateSubscription,
    AlreadySubscribed,
    CancelSubscription,
    EndIfDue,
    FailCheckout,
    NothingToCancel,
    RecordRecurringPayment,
    StartCheckout,
    add_month,
    decide,
    fold,
    initial,
)
from calmesh_common.events.billing import PlanChanged

T0 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
GRACE = timedelta(days=7)


def run(state, command):  # type: ignore[no-untyped-def]
    events = decide(command, state)
    return fold(state, events), events


def pro():  # type: ignore[no-untyped-def]
    state = initial("usr_1")
    state, _ = run(state, StartCheckout("pro", "cst_1", "tr_first", "https://pay/x", T0))
    state, _ = run(state, ActivateSubscription("tr_first", "cst_1", "sub_1", T0))
    return state


def test_months_are_calendar_months_clamped_to_the_last_day() -> None:
    assert add_month(T0) == datetime(2026, 2, 28, 12, 0, tzinfo=UTC)
    assert add_month(datetime(2026, 12, 15, tzinfo=UTC)) == datetime(2027, 1, 15, tzinfo=UTC)


def test_a_paid_first_payment_makes_the_plan_pro_for_a_month_once() -> None:
    state = initial("usr_1")
    state, events = run(state, StartCheckout("pro", "cst_1", "tr_first", "https://pay/x", T0))
    assert (state.plan, state.status) == ("free", "pending")
    assert isinstance(events[-1], PlanChanged) and events[-1].status == "pending"
    state, events = run(state, ActivateSubscription("tr_first", "cst_1", "sub_1", T0))
    assert (state.plan, state.status, state.current_period_end) == ("pro", "active", add_month(T0))
    assert events[-1] == PlanChanged(user_id="usr_1", plan="pro", status="active",
                                     current_period_end=add_month(T0), previous_plan="free", at=T0)
    # The same payment again: nothing, however often.
    assert decide(ActivateSubscription("tr_first", "cst_1", "sub_1", T0 + timedelta(hours=1)), state) == []
    with pytest.raises(AlreadySubscribed):
        decide(StartCheckout("pro", "cst_1", "tr_again", "https://pay/y", T0), state)


def test_recurring_payments_extend_and_a_failure_starts_one_grace_period() -> None:
    state = pro()
    end = state.current_period_end
    state, _ = run(state, RecordRecurringPayment("tr_r1", "paid", end, GRACE))
    assert state.current_period_end == add_month(end)
    failed_at = state.current_period_end
    state, events = run(state, RecordRecurringPayment("tr_r2", "failed", failed_at, GRACE))
    assert (state.plan, state.status, state.grace_until) == ("pro", "past_due", failed_at + GRACE)
    state, _ = run(state, RecordRecurringPayment("tr_r3", "failed", failed_at + timedelta(days=3), GRACE))
    assert state.grace_until == failed_at + GRACE  # a later failure does not extend it
    assert decide(RecordRecurringPayment("tr_r4", "open", failed_at, GRACE), state) == []
    assert decide(EndIfDue(failed_at + GRACE - timedelta(seconds=1)), state) == []
    state, events = run(state, EndIfDue(failed_at + GRACE))
    assert (state.plan, state.status) == ("free", "canceled")
    assert events[0].reason == "grace_expired" and events[-1].plan == "free"


def test_a_paid_retry_during_grace_makes_the_account_active_again() -> None:
    state = pro()
    state, _ = run(state, RecordRecurringPayment("tr_r1", "failed", state.current_period_end, GRACE))
    state, _ = run(state, RecordRecurringPayment("tr_r2", "paid", state.current_period_end, GRACE))
    assert (state.status, state.grace_until) == ("active", None)


def test_cancel_lasts_until_the_period_end_and_twice_is_the_same() -> None:
    state = pro()
    state, events = run(state, CancelSubscription(T0 + timedelta(days=3)))
    assert (state.plan, state.status, state.current_period_end) == ("pro", "canceled", add_month(T0))
    assert decide(CancelSubscription(T0 + timedelta(days=4)), state) == []
    assert decide(EndIfDue(add_month(T0) - timedelta(seconds=1)), state) == []
    state, events = run(state, EndIfDue(add_month(T0)))
    assert state.plan == "free" and events[0].reason == "period_ended"
    with pytest.raises(NothingToCancel):
        decide(CancelSubscription(T0), initial("usr_2"))


def test_an_unpaid_checkout_goes_back_to_none_and_plan_changed_only_follows_changes() -> None:
    state = initial("usr_1")
    state, _ = run(state, StartCheckout("pro", "cst_1", "tr_first", "https://pay/x", T0))
    state, events = run(state, FailCheckout("tr_first", "expired", T0))
    assert state.status == "none" and isinstance(events[-1], PlanChanged)
    # An old checkout failing after a newer one started changes no status: no PlanChanged.
    state, _ = run(state, StartCheckout("pro", "cst_1", "tr_second", "https://pay/y", T0))
    state, events = run(state, FailCheckout("tr_stale", "canceled", T0))
    assert state.status == "pending" and not any(isinstance(e, PlanChanged) for e in events)
