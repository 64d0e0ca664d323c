"""Fixtures of the browser tests in this folder (the session's servers are in ../conftest.py)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from litestar import Litestar, Response, get, post
from playwright.async_api import Browser, async_playwright

from calmesh_booking.testing import Radicale, Served

sys.path.insert(0, str(Path(__file__).parent))
from fakes.dashboard import CHROMIUM, CHROMIUM_ARGS, ics, this_week_at  # noqa: E402


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium driven by Playwright (its own browser download cannot work here)."""
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radicale]:
    """A real CalDAV server (Radicale) on loopback."""
    server = Radicale(tmp_path_factory.mktemp("radicale-dashboard")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def feed() -> AsyncIterator[str]:
    """A feed on loopback with a meeting on Wednesday 10:00–11:00 and lunch on Thursday (UTC, this
    week); its server also answers webhook deliveries at /hook with 204."""
    body = ics(("team-sync@test", "Team sync", this_week_at(2, 10), this_week_at(2, 11)),
               ("lunch@test", "Lunch with Ana", this_week_at(3, 12), this_week_at(3, 13)))

    @get("/team.ics", media_type="text/calendar")
    async def team() -> Response[str]:
        return Response(body, media_type="text/calendar")

    @post("/hook", status_code=204)
    async def hook() -> None:
        return None

    served = Served(Litestar([team, hook]))
    await served.start()
    yield f"{served.url}/team.ics"
    await served.stop()
