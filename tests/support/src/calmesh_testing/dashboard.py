"""What the dashboard's browser tests share (Chromium and the screenshots folder: `browser`): a
screenshot of a page, a newcomer signing up through the form, and a loopback iCal feed with this week's
meetings (the `browser` and `feed` fixtures in tests/conftest.py use these)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from playwright.async_api import Page, expect

from .browser import artifacts

PAGE_BUDGET = 100_000  # bytes of HTML + JS + CSS per page (issue 13)


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(artifacts("dashboard") / f"{name}.png"), full_page=True)


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


async def sign_up(page: Page, base: str, prefix: str = "prov") -> str:
    """A new account made through /app/signup (time zone UTC); answers the suffix of its handle,
    `{prefix}-{suffix}`, and of its email, `{prefix}-{suffix}@example.com`."""
    suffix = uuid.uuid4().hex[:8]
    await page.goto(f"{base}/app/signup")
    await page.get_by_label("Email").fill(f"{prefix}-{suffix}@example.com")
    await page.get_by_label("Password").fill("a long enough passphrase")
    await page.get_by_label("Handle").fill(f"{prefix}-{suffix}")
    await page.get_by_label("Time zone").select_option("UTC")
    await page.get_by_role("button", name="Create account").click()
    await page.wait_for_url(f"{base}/app/connections")
    return suffix


class Recorder:
    """Every request the page makes, and the bytes of each HTML, script and style answer."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.sizes: dict[str, int] = {}
        page.on("request", lambda request: self.urls.append(request.url))
        page.on("response", self._on_response)

    async def _on_response(self, response: Any) -> None:
        kind = response.headers.get("content-type", "")
        if any(t in kind for t in ("text/html", "javascript", "text/css")):
            try:
                self.sizes[response.url] = len(await response.body())
            except Exception:  # noqa: BLE001 - a redirect has no body to measure
                pass


async def reload_until(page: Page, done: Callable[[], Awaitable[Any]], seconds: float = 60) -> None:
    """Reload the page until `done()` is truthy (what the server shows is filled in asynchronously:
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
