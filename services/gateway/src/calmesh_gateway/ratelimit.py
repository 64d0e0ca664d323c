"""Token-bucket rate limiting, in memory, per key (or per user, or per client address)."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucketLimiter:
    """`per_minute` tokens a minute refill a bucket of `burst` tokens; a request takes one.

    `hit(name)` returns 0.0 when the request may go on, else the seconds until a token is back
    (the Retry-After). Buckets that have filled up again are dropped by `prune()`.
    """

    __slots__ = ("rate", "burst", "clock", "_buckets")

    def __init__(self, per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1 or burst < 1:
            raise ValueError("a rate limit needs at least 1 request a minute and a burst of at least 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}

    def hit(self, name: str) -> float:
        now = self.clock()
        bucket = self._buckets.get(name)
        if bucket is None:
            self._buckets[name] = [self.burst - 1.0, now]
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def tokens(self, name: str) -> float:
        """Tokens bucket `name` holds now (a missing bucket is full)."""
        bucket = self._buckets.get(name)
        if bucket is None:
            return self.burst
        return min(self.burst, bucket[0] + (self.clock() - bucket[1]) * self.rate)

    def wait(self, name: str) -> float:
        """Seconds until bucket `name` has a token again (0.0 if it has one), without taking it."""
        tokens = self.tokens(name)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def refund(self, name: str, count: int = 1) -> None:
        """Put back `count` tokens taken for a request that does not count."""
        bucket = self._buckets.get(name)
        if bucket is not None:
            bucket[0] = min(self.burst, self.tokens(name) + count)
            bucket[1] = self.clock()

    def prune(self) -> int:
        """Forget buckets that are full again (they behave exactly like new ones)."""
        now = self.clock()
        full = [k for k, (tokens, at) in self._buckets.items() if tokens + (now - at) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        return len(full)

    def __len__(self) -> int:
        return len(self._buckets)
