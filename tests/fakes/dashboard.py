"""What the dashboard's browser tests share: Debian's Chromium and how to launch it, where the
screenshots go, a newcomer signing up through the form, and a loopback iCal feed with this week's
meetings (the `browser` and `feed` fixtures in tests/conftest.py use these)."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from playwright.async_api import Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGE_BUDGET = 100_000  # bytes of HTML + JS + CSS per page (issue 13)


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


def ics(*events: tuple[str, str, datetime, datetime]) -> str:
    fmt = "%Y%m%dT%H%M%SZ"
    body = "".join(
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:{start.strftime(fmt)}\r\n"
        f"DTEND:{end.strftime(fmt)}\r\nSUMMARY:{title}\r\nEND:VEVENT\r\n"
        for uid, title, start, end in events
    )
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calmesh tests//EN\r\n{body}END:VCALENDAR\r\n"


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
