"""The connections rules without a database, the web or the bus (`calmesh_connections.domain`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from calmesh_common.problems import Problem
from calmesh_connections.domain import (
    authorize_problem,
    callback_failure,
    interval_for,
    last_writable_problem,
    next_sync_at,
    no_writable_left,
    reordered,
    state_problem,
    sync_refusal,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
SETTINGS = SimpleNamespace(
    sync_interval_ical_seconds=3600.0, sync_interval_caldav_seconds=900.0, sync_interval_google_seconds=600.0,
    sync_interval_microsoft_seconds=300.0, sync_jitter=0.1,
)


def saved(**values):  # type: ignore[no-untyped-def]
    return {"provider": "google", "used_at": None, "expires_at": NOW + timedelta(minutes=5), "user_id": "usr_a", **values}


def test_a_revoked_or_unauthorized_connection_is_not_synced_on_request() -> None:
    assert sync_refusal("revoked", "caldav").code == "connection_revoked"  # type: ignore[union-attr]
    assert sync_refusal("pending", "google").code == "not_authorized"  # type: ignore[union-attr]
    assert sync_refusal("pending", "ical") is None, "a credentialed connection is pending only until its first sync"
    assert sync_refusal("error", "microsoft") is None and sync_refusal("active", "google") is None


def test_each_provider_has_its_interval_and_the_jitter_spreads_the_next_sync() -> None:
    assert [interval_for(SETTINGS, p) for p in ("ical", "caldav", "icloud", "google", "microsoft", "other")] == [
        3600.0, 900.0, 900.0, 600.0, 300.0, 900.0,
    ]
    for _ in range(50):
        due = next_sync_at(SETTINGS, "google", NOW)
        assert NOW + timedelta(seconds=540) <= due <= NOW + timedelta(seconds=660)


def test_a_state_is_used_once_before_it_runs_out_and_by_its_provider() -> None:
    assert state_problem(saved(), "google", NOW) is None
    assert "unknown" in state_problem(None, "google", NOW).detail  # type: ignore[union-attr]
    assert "unknown" in state_problem(saved(), "microsoft", NOW).detail  # type: ignore[union-attr]
    assert "used already" in state_problem(saved(used_at=NOW), "google", NOW).detail  # type: ignore[union-attr]
    assert "expired" in state_problem(saved(expires_at=NOW - timedelta(seconds=1)), "google", NOW).detail  # type: ignore[union-attr]


def test_only_the_signed_in_user_who_started_the_flow_opens_its_start_page() -> None:
    assert authorize_problem(saved(), "google", NOW, "session", "usr_a") is None
    assert authorize_problem(saved(), "google", NOW, None, None).status == 401  # type: ignore[union-attr]
    assert authorize_problem(saved(), "google", NOW, "api_key", "usr_a").code == "sign_in_required"  # type: ignore[union-attr]
    assert authorize_problem(saved(), "google", NOW, "session", "usr_b").code == "oauth_wrong_account"  # type: ignore[union-attr]
    assert authorize_problem(saved(used_at=NOW), "google", NOW, "session", "usr_a").code == "invalid_state"  # type: ignore[union-attr]


def test_a_callback_without_a_code_completes_nothing() -> None:
    assert callback_failure("Google", "code-1", None, None) is None
    assert callback_failure("Google", None, "access_denied", "The user said no") == (
        "authorization was not granted at Google: The user said no"
    )
    assert callback_failure("Google", None, "access_denied", None) == "authorization was not granted at Google: access_denied"
    assert callback_failure("Google", None, None, None) == "the provider sent no authorization code"


def test_sources_left_out_of_a_reorder_follow_the_listed_ones_in_their_order() -> None:
    assert reordered(["a", "b", "c", "d"], ["c", "a"]) == ["c", "a", "b", "d"]
    with pytest.raises(Problem) as twice:
        reordered(["a", "b"], ["a", "a"])
    assert twice.value.code == "invalid_order" and twice.value.errors[0].field == "source_ids"
    with pytest.raises(Problem) as unknown:
        reordered(["a", "b"], ["x"])
    assert unknown.value.status == 422 and "x" in unknown.value.detail


def test_the_last_writable_source_and_the_pages_that_need_it() -> None:
    assert no_writable_left(["a"], "a")
    assert not no_writable_left(["a", "b"], "a") and not no_writable_left(["b"], "a") and not no_writable_left([], "a")
    problem = last_writable_problem("work", [f"page-{i}" for i in range(12)])
    assert problem.status == 409 and problem.code == "last_writable_source"
    assert "page-9 …" in problem.detail and "page-10" not in problem.detail
