"""The daily API-request quota: counted in memory, recorded in batches, shared by replicas."""

from __future__ import annotations

from datetime import date
from typing import Any

from calmesh_common.settings import Settings
from calmesh_gateway.quota import DAY, DailyQuota


class FakeUsage:
    """The api_usage table, shared by the replicas of a test."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, date], int] = {}

    async def add_usage(self, counts: list[tuple[str, date, int]]) -> list[tuple[str, date, int]]:
        out = []
        for user, day, n in counts:
            self.rows[(user, day)] = self.rows.get((user, day), 0) + n
            out.append((user, day, self.rows[(user, day)]))
        return out


def settings(**kw: Any) -> Settings:
    return Settings.from_env({}, plan_free_api_requests_per_day=5, plan_pro_api_requests_per_day=8, **kw)


async def test_the_quota_of_the_plan_then_a_429_until_midnight_utc() -> None:
    now = [100 * DAY + 3600.0]  # 01:00 UTC
    quota = DailyQuota(settings(), FakeUsage(), clock=lambda: now[0])
    assert [quota.hit("usr_1", "free") for _ in range(5)] == [0.0] * 5
    wait = quota.hit("usr_1", "free")
    assert wait == 23 * 3600
    assert quota.hit("usr_2", "free") == 0.0  # per user
    assert quota.hit("usr_1", "pro") == 0.0  # an upgrade lifts it at once
    now[0] += 23 * 3600  # the next UTC day
    assert quota.hit("usr_1", "free") == 0.0


async def test_replicas_learn_each_others_counts_from_the_batches() -> None:
    usage = FakeUsage()
    clock = lambda: 100 * DAY + 60.0  # noqa: E731
    a, b = DailyQuota(settings(), usage, clock=clock), DailyQuota(settings(), usage, clock=clock)
    for _ in range(3):
        assert a.hit("usr_1", "free") == 0.0
    assert await a.flush() == 1
    assert await b.flush() == 0
    b.hit("usr_1", "free")
    await b.flush()  # b now knows 4 were made
    assert b.hit("usr_1", "free") == 0.0
    assert b.hit("usr_1", "free") > 0  # the 6th of the day, made on another replica than most
    assert sum(usage.rows.values()) == 4


async def test_counts_that_could_not_be_recorded_are_kept() -> None:
    class Down:
        async def add_usage(self, counts: Any) -> Any:
            raise ConnectionError("database restarting")

    quota = DailyQuota(settings(), Down(), clock=lambda: 100 * DAY)
    quota.hit("usr_1", "free")
    try:
        await quota.flush()
    except ConnectionError:
        pass
    quota.store = FakeUsage()
    assert await quota.flush() == 1
    assert list(quota.store.rows.values()) == [1]
