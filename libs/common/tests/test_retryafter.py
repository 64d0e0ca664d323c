"""Retry-After both ways: what clients are told, and how long a provider or receiver can make us wait."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from calmesh_common.problem_handler import to_problem
from calmesh_common.problems import Problem
from calmesh_common.retryafter import DEFAULT_CAP_SECONDS, parse_retry_after, retry_after, retry_after_seconds

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_the_header_is_whole_seconds_rounded_up_and_never_zero() -> None:
    assert retry_after(2) == {"Retry-After": "2"}
    assert retry_after_seconds(0) == "1"
    assert retry_after_seconds(0.01) == "1"
    assert retry_after_seconds(2.2) == "3"
    assert retry_after_seconds(86400) == "86400"


def test_a_problem_carries_the_header_to_the_response() -> None:
    problem = to_problem(Problem(503, "busy", "Try again.", headers=retry_after(1)))
    assert problem.headers == {"Retry-After": "1"}


@pytest.mark.parametrize(("value", "expected"), [
    ("30", 30.0),
    (" 7 ", 7.0),
    ("0", 0.0),
    ("Wed, 25 Nov 2026 12:01:00 GMT", 60.0),
    ("Wed, 25 Nov 2026 11:00:00 GMT", 0.0),  # a date in the past: go now
])
def test_delta_seconds_and_http_dates_are_read(value: str, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "²", "Wed, 99 Foo 2026"])
def test_an_unusable_value_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


def test_a_server_cannot_park_us_for_years() -> None:
    assert parse_retry_after("999999999", now=NOW) == DEFAULT_CAP_SECONDS
    assert parse_retry_after("Fri, 25 Nov 2089 12:00:00 GMT", now=NOW) == DEFAULT_CAP_SECONDS
    assert parse_retry_after("120", now=NOW, cap=60) == 60
    assert parse_retry_after("999999999", now=NOW, cap=math.inf) == 999999999
