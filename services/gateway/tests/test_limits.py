"""Rate limits shared by gateway replicas: leased token buckets, in memory and in PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from calmesh_gateway.limits import SharedLimiter
from calmesh_gateway.store import GatewayStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryBuckets:
    """The shared table, in memory, on the test's clock (what every replica of a test shares)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rows: dict[str, tuple[float, float]] = {}
        self.calls = 0
        self.fail = False

    async def take_tokens(self, name: str, want: int, burst: float, rate: float) -> tuple[int, float]:
        self.calls += 1
        if self.fail:
            raise ConnectionError("database down")
        tokens, at = self.rows.get(name, (burst, self.clock.now))
        tokens = min(burst, tokens + (self.clock.now - at) * rate)
        granted = min(want, int(tokens))
        self.rows[name] = (tokens - granted, self.clock.now)
        return granted, tokens - granted

    async def give_back_tokens(self, counts: dict[str, int], burst: float, rate: float) -> None:
        for name, n in counts.items():
            tokens, at = self.rows.get(name, (burst, self.clock.now))
            self.rows[name] = (min(burst, tokens + (self.clock.now - at) * rate + n), self.clock.now)


def replicas(n: int, clock: Clock, store: Any, **kw: Any) -> list[SharedLimiter]:
    return [SharedLimiter("key", 60, 40, store=store, clock=clock, **kw) for _ in range(n)]


async def test_two_replicas_together_allow_the_limit_not_twice_it() -> None:
    clock = Clock()
    store = MemoryBuckets(clock)
    a, b = replicas(2, clock, store)
    allowed = 0
    for i in range(200):
        if await (a if i % 2 else b).take("key_1") == 0.0:
            allowed += 1
    # Leases take tokens before they are spent: never more than the bucket, at most a batch per
    # replica short of it (tokens leased to one replica while the other is refused).
    assert 40 - 2 * a.max_batch <= allowed <= 40
    # Without leases (one replica per call) it would have been 40 as well; with separate buckets 80.


async def test_the_hot_path_asks_the_database_once_per_batch() -> None:
    clock = Clock()
    store = MemoryBuckets(clock)
    limiter = SharedLimiter("key", 6000, 1000, store=store, clock=clock)
    for _ in range(500):
        assert await limiter.take("busy") == 0.0
        await asyncio.sleep(0)  # lets a background refill land, as requests do
    assert store.calls < 500 / 20, store.calls
    assert limiter.hit("busy") == 0.0  # a leased token: no await at all


async def test_unspent_leases_go_back_so_another_replica_can_spend_them() -> None:
    clock = Clock()
    store = MemoryBuckets(clock)
    a, b = replicas(2, clock, store, max_batch=5)
    for _ in range(35):  # a spends 35 in growing batches and holds the rest of its last batch
        assert await a.take("k") == 0.0
    await asyncio.sleep(0)  # a's background refill lands
    held = 40 - 35 - int(store.rows[a.prefix + "k"][0])
    assert held > 0
    clock.now += 1.0  # a's lease idles: flushed back (plus one token refilled in that second)
    await a.flush()
    got = [await b.take("k") for _ in range(10)].count(0.0)
    assert got == 40 - 35 + 1


async def test_an_empty_bucket_answers_locally_with_the_time_to_the_next_token() -> None:
    clock = Clock()
    store = MemoryBuckets(clock)
    limiter = SharedLimiter("addr", 60, 3, store=store, clock=clock)
    assert [await limiter.take("1.2.3.4") for _ in range(3)] == [0.0] * 3
    wait = await limiter.take("1.2.3.4")
    assert 0.9 <= wait <= 1.0
    calls = store.calls
    assert limiter.hit("1.2.3.4") > 0 and limiter.denied("1.2.3.4") > 0
    assert store.calls == calls  # known empty: no database call for the next refusals
    headers = dict(limiter.headers("1.2.3.4"))
    assert headers[b"ratelimit-limit"] == b"3" and headers[b"ratelimit-remaining"] == b"0"
    assert headers[b"ratelimit-reset"] == b"3"  # 3 tokens at one a second: full in 3 s
    clock.now += 1.0
    assert await limiter.take("1.2.3.4") == 0.0


async def test_a_database_outage_falls_back_to_a_bucket_per_replica() -> None:
    clock = Clock()
    store = MemoryBuckets(clock)
    store.fail = True
    limiter = SharedLimiter("key", 60, 3, store=store, clock=clock)
    results = [await limiter.take("k") for _ in range(5)]
    assert results[:3] == [0.0] * 3 and results[3] > 0 and results[4] > 0
    assert store.calls == 1  # asked once, then limited alone for a while


async def test_a_refund_gives_the_token_back_to_the_shared_bucket() -> None:
    clock = Clock()
    store = MemoryBuckets(clock)
    a, b = (SharedLimiter("login", 1, 2, store=store, clock=clock, lease_seconds=0.0, max_batch=1) for _ in range(2))
    assert await a.take("alice@example.com") == 0.0
    assert await b.take("alice@example.com") == 0.0
    assert await a.take("alice@example.com") > 0  # empty for both replicas
    await a.refund("alice@example.com")  # say that sign-in succeeded after all
    assert await b.take("alice@example.com") == 0.0
    assert await a.take("alice@example.com") > 0


@pytest.fixture
async def gateway_store(migrated: str) -> Any:
    pool = await asyncpg.create_pool(migrated, min_size=1, max_size=8)
    yield GatewayStore(pool)
    await pool.close()


async def test_replicas_on_postgresql_share_one_bucket_under_concurrency(gateway_store: GatewayStore) -> None:
    a, b = (SharedLimiter("test", 1, 50, store=gateway_store) for _ in range(2))
    name = uuid.uuid4().hex
    results = await asyncio.gather(*((a if i % 2 else b).take(name) for i in range(150)))
    allowed = sum(1 for r in results if r == 0.0)
    assert 50 - 2 * a.max_batch <= allowed <= 50
    # What is not spent goes back, and full buckets are pruned from the table.
    granted, left = await gateway_store.take_tokens("test-fresh:" + name, 3, 5.0, 100.0)
    assert (granted, left) == (3, 2.0)
    await gateway_store.give_back_tokens({"test-fresh:" + name: 3}, 5.0, 100.0)
    granted, _ = await gateway_store.take_tokens("test-fresh:" + name, 10, 5.0, 100.0)
    assert granted == 5
    await asyncio.sleep(0.1)  # 100 tokens a second: full again
    assert await gateway_store.prune_buckets() >= 1
    rows = await gateway_store.pool.fetchval("SELECT count(*) FROM gateway.rate_buckets WHERE name = $1",
                                             "test-fresh:" + name)
    assert rows == 0
