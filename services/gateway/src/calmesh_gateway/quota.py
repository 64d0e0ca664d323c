"""The daily API-request quota of each plan (``api_requests_per_day``: free 10,000, pro 1,000,000).

Requests made with a user's API keys are counted in memory on the hot path and added to
``gateway.api_usage`` in batches; each batch's answer tells this replica what every replica has
counted so far. A replica can therefore let through at most what other replicas counted since the
last batch (a couple of seconds' worth) beyond the quota. Past it: 429 `daily_quota_exceeded` with
`Retry-After` until midnight UTC.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from calmesh_common.plans import limits_for
from calmesh_common.settings import Settings

DAY = 86400


class DailyQuota:
    def __init__(self, settings: Settings, store: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self._allowed = {plan: limits_for(plan, settings).api_requests_per_day for plan in ("free", "pro")}
        self._known: dict[tuple[str, int], int] = {}  # (user, day) -> requests every replica had recorded
        self._pending: dict[tuple[str, int], int] = {}  # counted here, not yet recorded

    def allowed(self, plan: str) -> int:
        return self._allowed.get(plan, self._allowed["free"])

    def hit(self, user_id: str, plan: str) -> float:
        """Count one request; 0.0 if within the quota, else the seconds until the quota resets."""
        now = self.clock()
        day = int(now // DAY)
        slot = (user_id, day)
        used = self._known.get(slot, 0) + self._pending.get(slot, 0)
        if used >= self.allowed(plan):
            return (day + 1) * DAY - now
        self._pending[slot] = self._pending.get(slot, 0) + 1
        return 0.0

    async def flush(self) -> int:
        """Record the pending counts; learn the totals of every replica."""
        today = int(self.clock() // DAY)
        # Yesterday's totals are no use any more.
        self._known = {k: v for k, v in self._known.items() if k[1] >= today}
        if not self._pending or self.store is None:
            return 0
        batch, self._pending = self._pending, {}
        try:
            totals = await self.store.add_usage(
                [(user, datetime.fromtimestamp(day * DAY, UTC).date(), n) for (user, day), n in batch.items()]
            )
        except Exception:
            for k, n in batch.items():
                self._pending[k] = self._pending.get(k, 0) + n
            raise
        for user, day_date, total in totals:
            self._known[(user, _day_number(day_date))] = total
        return len(batch)


def _day_number(value: date) -> int:
    return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp() // DAY)
