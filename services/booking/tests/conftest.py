"""The booking service in-process (`calmesh_testing.booking.BookingHarness`) on the session's
PostgreSQL, one per test module; a module that needs other settings defines its own `bk`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from calmesh_testing.booking import BookingHarness


@pytest.fixture(scope="module")
async def bk(database_url: str) -> AsyncIterator[BookingHarness]:
    harness = await BookingHarness(database_url).start()
    yield harness
    await harness.stop()
