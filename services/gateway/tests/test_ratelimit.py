"""The token bucket: a burst, then the steady rate, and an honest Retry-After."""

from __future__ import annotations

from calmesh_common.retryafter import retry_after_seconds
from calmesh_gateway.ratelimit import TokenBucketLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_allowed_then_requests_wait_for_tokens() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(per_minute=60, burst=5, clock=clock)
    assert [limiter.hit("k") for _ in range(5)] == [0.0] * 5
    wait = limiter.hit("k")
    assert 0.9 <= wait <= 1.0
    assert retry_after_seconds(wait) == "1"
    clock.now += 1.0
    assert limiter.hit("k") == 0.0
    assert limiter.hit("k") > 0


def test_buckets_are_per_name() -> None:
    limiter = TokenBucketLimiter(per_minute=60, burst=1, clock=Clock())
    assert limiter.hit("a") == 0.0
    assert limiter.hit("a") > 0
    assert limiter.hit("b") == 0.0


def test_the_steady_rate_is_per_minute_and_never_exceeds_the_burst() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(per_minute=120, burst=10, clock=clock)
    allowed = 0
    for _ in range(600):  # one minute in 0.1 s steps, trying 1 request each step
        clock.now += 0.1
        allowed += limiter.hit("k") == 0.0
    assert 120 <= allowed <= 130  # 2/s for 60 s, plus the first burst
    clock.now += 3600
    assert sum(limiter.hit("k") == 0.0 for _ in range(50)) == 10


def test_retry_after_is_never_zero_and_rounds_up() -> None:
    assert retry_after_seconds(0.01) == "1"
    assert retry_after_seconds(2.2) == "3"


def test_full_buckets_are_pruned() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(per_minute=60, burst=2, clock=clock)
    limiter.hit("a")
    limiter.hit("b")
    limiter.hit("b")
    clock.now += 1.5
    assert limiter.prune() == 1  # "a" is full again; "b" is not
    assert len(limiter) == 1
