"""What the dashboard's browser tests share: Debian's Chromium under Playwright, screenshots as
artifacts, a sign-up through the page, and the calendar feeds they serve on loopback.

The `browser` fixture lives in tests/conftest.py (one Chromium per module); the helpers here are
plain functions the test modules import."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.async_api import Page, expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def artifacts() -> Path:
    path = Path(os.environ.get("CALMESH_TEST_ARTIFACTS", "test-artifacts")) / "dashboard"
    path.mkdir(parents=True, exist_ok=True)
    return path


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(artifacts() / f"{name}.png"), full_page=True)


def this_week_at(weekday: int, hour: int, minute: int = 0) -> datetime:
    """An instant of the current week (Monday first) in UTC, the new account's time zone."""
    now = datetime.now(UTC)
    monday = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    return monday + timedelta(days=weekday, hours=hour, minutes=minute)


def ics(*events: tuple[str, str, datetime, datetime], name: str | None = None) -> str:
    """A feed of `events` (uid, title, start, end), named `name` (X-WR-CALNAME) when given."""
    fmt = "%Y%m%dT%H%M%SZ"
    body = "".join(
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:{start.strftime(fmt)}\r\n"
        f"DTEND:{end.strftime(fmt)}\r\nSUMMARY:{title}\r\nEND:VEVENT\r\n"
        for uid, title, start, end in events
    )
    header = f"X-WR-CALNAME:{name}\r\n" if name else ""
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calmesh tests//EN\r\n{header}{body}END:VCALENDAR\r\n"


async def sign_up(page: Page, base: str, prefix: str = "dash") -> str:
    """A new account (time zone UTC) through the sign-up page; its handle."""
    handle = f"{prefix}-{uuid.uuid4().hex[:8]}"
    await page.goto(f"{base}/app/signup")
    await page.get_by_label("Email").fill(f"{handle}@example.com")
    await page.get_by_label("Password").fill("a long enough passphrase")
    await page.get_by_label("Handle").fill(handle)
    await page.get_by_label("Time zone").select_option("UTC")
    await page.get_by_role("button", name="Create account").click()
    await page.wait_for_url(f"{base}/app/connections")
    return handle


async def reload_until(page: Page, done: Callable[[], Awaitable[bool]], seconds: float = 60) -> None:
    """Reload the page until `done()` holds (what the server shows is filled in asynchronously:
    a sync, a delivery); fails with the page's HTML after `seconds`."""
    deadline = time.monotonic() + seconds
    while not await done():
        assert time.monotonic() < deadline, await page.content()
        await page.wait_for_timeout(500)
        await page.reload()


async def book_first_slot(page: Page, public_url: str, name: str, email: str,
                          choices: dict[str, str] | None = None) -> None:
    """Book the first offered time on a public booking page, as a visitor: the first open day, its
    first slot, name and email (and the `choices`, select questions by label), then confirm."""
    await page.goto(public_url)
    day = page.locator("#days button:not([disabled])").first
    await expect(day).to_be_visible(timeout=15_000)
    await day.click()
    await page.locator("#slots button").first.click()
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Email").fill(email)
    for label, option in (choices or {}).items():
        await page.get_by_label(label).select_option(option)
    await page.get_by_role("button", name="Confirm booking").click()
    await expect(page.locator("#step-done")).to_be_visible(timeout=15_000)
