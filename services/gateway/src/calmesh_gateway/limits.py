"""Rate limits that hold across gateway replicas: token buckets in PostgreSQL, leased in batches.

A bucket (`per_minute` tokens a minute into a bucket of `burst`) lives in ``gateway.rate_buckets``
and is shared by every replica. A replica does not ask the database for each request: it takes a
*lease* of a few tokens at once (``take_tokens``), spends them in memory, and fetches the next batch
in the background when the lease runs low. What it has not spent after `lease_seconds` it gives back.

Tokens are taken before they are spent, so all replicas together never let more through than the
bucket holds: the combined allowance is the limit. The price is on the strict side: tokens leased to
a replica that the caller is not using wait there for up to `lease_seconds`, so with R replicas a
caller may be refused at most (R - 1) × `max_batch` requests early. `max_batch` is an eighth of the
burst (1 for bursts under 16, when every request asks the database), and a lease grows from 1 only
while a caller spends its batches faster than `lease_seconds`.

When the database cannot be reached the limiter falls back to a bucket of its own in this replica
(the limit per replica, as before) and tries the database again a few seconds later.

Each answer tells the client its state in the IETF RateLimit header fields: ``RateLimit-Limit`` (the
burst), ``RateLimit-Remaining`` (tokens left, as this replica last learnt them) and
``RateLimit-Reset`` (seconds until the bucket is full again); a 429 adds ``Retry-After`` (seconds
until the next request may go).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from calmesh_common.logging import get_logger

from .ratelimit import TokenBucketLimiter

log = get_logger(__name__)

#: After a database error, how long the replica limits on its own before asking again.
DEGRADED_SECONDS = 5.0


class BucketStore(Protocol):
    async def take_tokens(self, name: str, want: int, burst: float, rate: float) -> tuple[int, float]: ...

    async def give_back_tokens(self, counts: dict[str, int], burst: float, rate: float) -> None: ...


@dataclass(slots=True)
class _Lease:
    tokens: int = 0  # leased here, not yet spent
    batch: int = 1  # how many to ask for next
    left: float = 0.0  # tokens the shared bucket had left at the last take (a hint)
    learnt_at: float = 0.0
    used_at: float = 0.0
    denied_until: float = 0.0
    refill: asyncio.Future[None] | None = None
    waiting: int = 0  # requests of this replica waiting for the next batch


class SharedLimiter:
    """One kind of limit (per key, per address, …): `hit` on the hot path, `acquire` when it says so."""

    def __init__(self, kind: str, per_minute: int, burst: int, *, store: BucketStore | None = None,
                 clock: Callable[[], float] = time.monotonic, lease_seconds: float = 1.0,
                 max_batch: int | None = None) -> None:
        if per_minute < 1 or burst < 1:
            raise ValueError("a rate limit needs at least 1 request a minute and a burst of at least 1")
        self.rate = per_minute / 60.0
        self.burst = burst
        # Buckets of another configuration are other buckets: a replica started with other
        # limits (or a changed setting) never reads tokens counted under different rules.
        self.prefix = f"{kind}:{per_minute}/{burst}:"
        self.store = store
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.max_batch = max_batch if max_batch is not None else max(1, burst // 8)
        self.local = TokenBucketLimiter(per_minute, burst, clock)
        self._leases: dict[str, _Lease] = {}
        self._degraded_until = 0.0

    # The hot path ---------------------------------------------------------------------------

    def hit(self, name: str) -> float | None:
        """Spend a leased token: 0.0 when the request may go, the seconds to wait when the bucket is
        known to be empty, None when the lease is spent (then ``await acquire(name)``)."""
        now = self.clock()
        if self.store is None or now < self._degraded_until:
            return self.local.hit(name)
        lease = self._leases.get(name)
        if lease is None:
            return None
        if lease.tokens > 0:
            lease.tokens -= 1
            lease.used_at = now
            if lease.refill is None and lease.batch > 1 and lease.tokens * 2 < lease.batch:
                self._start_refill(name, lease)  # the next batch arrives before this one is spent
            return 0.0
        if now < lease.denied_until:
            return lease.denied_until - now
        return None

    async def acquire(self, name: str) -> float:
        """Spend a token when the lease had none: take a batch from the shared bucket first."""
        for _ in range(8):
            lease = self._leases.get(name)
            if lease is None:
                lease = self._leases[name] = _Lease()
            if lease.refill is None:
                self._start_refill(name, lease)
            assert lease.refill is not None
            lease.waiting += 1
            try:
                await asyncio.shield(lease.refill)
            finally:
                lease.waiting -= 1
            wait = self.hit(name)
            if wait is not None:
                return wait
        return 1.0 / self.rate  # callers raced for every token that came in: come back for the next one

    async def take(self, name: str) -> float:
        """`hit`, asking the shared bucket when needed: 0.0 or the seconds to wait."""
        wait = self.hit(name)
        return await self.acquire(name) if wait is None else wait

    def denied(self, name: str) -> float:
        """The seconds to wait if this bucket is known to be empty (no database call), else 0.0."""
        now = self.clock()
        if self.store is None or now < self._degraded_until:
            return self.local.wait(name)
        lease = self._leases.get(name)
        if lease is None or lease.tokens > 0 or now >= lease.denied_until:
            return 0.0
        return lease.denied_until - now

    async def refund(self, name: str, count: int = 1) -> None:
        """Give back tokens spent on a request that turned out not to count (a successful sign-in)."""
        if self.store is None or self.clock() < self._degraded_until:
            self.local.refund(name, count)
            return
        lease = self._leases.get(name)
        if lease is not None:
            lease.denied_until = 0.0
        try:
            await self.store.give_back_tokens({self.prefix + name: count}, float(self.burst), self.rate)
        except Exception as exc:  # noqa: BLE001 - a refund lost errs on the strict side
            log.warning("rate_limit_refund_failed", error=repr(exc))

    def _start_refill(self, name: str, lease: _Lease) -> None:
        lease.refill = asyncio.ensure_future(self._refill(name, lease))

    async def _refill(self, name: str, lease: _Lease) -> None:
        now = self.clock()
        if lease.learnt_at and now - lease.learnt_at < self.lease_seconds:
            lease.batch = min(self.max_batch, lease.batch * 2)  # drawn down within the lease: ask for more
        # Requests already waiting are spent as soon as the batch arrives (no slack for other replicas):
        # a burst of first requests asks for all of them at once instead of growing from 1.
        want = max(1, min(lease.batch, self.max_batch), min(lease.waiting, self.burst))
        try:
            assert self.store is not None
            granted, left = await self.store.take_tokens(self.prefix + name, want, float(self.burst), self.rate)
        except Exception as exc:  # noqa: BLE001 - limit here alone rather than fail every request
            self._degraded_until = self.clock() + DEGRADED_SECONDS
            log.warning("rate_limit_store_unreachable", error=repr(exc), seconds=DEGRADED_SECONDS)
            return
        finally:
            lease.refill = None
        now = self.clock()
        lease.tokens += granted
        lease.left = left
        lease.learnt_at = lease.used_at = now
        lease.denied_until = 0.0 if granted or left >= 1.0 else now + (1.0 - left) / self.rate

    # Headers -------------------------------------------------------------------------------------

    def headers(self, name: str) -> list[tuple[bytes, bytes]]:
        """RateLimit-Limit, -Remaining and -Reset for bucket `name`, as this replica knows it."""
        now = self.clock()
        if self.store is None or now < self._degraded_until:
            tokens = self.local.tokens(name)
        else:
            lease = self._leases.get(name)
            if lease is None:
                tokens = float(self.burst)
            else:
                tokens = lease.tokens + min(self.burst, lease.left + (now - lease.learnt_at) * self.rate)
        tokens = min(float(self.burst), max(0.0, tokens))
        reset = math.ceil((self.burst - tokens) / self.rate)
        return [(b"ratelimit-limit", str(self.burst).encode()),
                (b"ratelimit-remaining", str(int(tokens)).encode()),
                (b"ratelimit-reset", str(reset).encode())]

    # Background ----------------------------------------------------------------------------------

    async def flush(self) -> int:
        """Give back what leases idle for `lease_seconds` did not spend; forget idle leases."""
        now = self.clock()
        back: dict[str, int] = {}
        for name, lease in list(self._leases.items()):
            if lease.refill is not None or now - lease.used_at < self.lease_seconds:
                continue
            if lease.tokens:
                back[self.prefix + name] = lease.tokens
                lease.tokens = 0
                lease.batch = max(1, lease.batch // 2)
            if lease.denied_until <= now:
                del self._leases[name]
        if back and self.store is not None:
            await self.store.give_back_tokens(back, float(self.burst), self.rate)
        self.local.prune()
        return len(back)

    def __len__(self) -> int:
        return len(self._leases)


def client_address(scope: Mapping[str, Any]) -> str:
    """The client's address as uvicorn gives it (proxy headers only from trusted proxies)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


__all__ = ["BucketStore", "SharedLimiter", "client_address"]
