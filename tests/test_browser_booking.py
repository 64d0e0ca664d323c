"""A real browser (Playwright driving Debian's Chromium) books through the public page, and through
a host page that uses /embed.js inline and as a popup — all through the gateway of the running
platform, on a page whose calendar is a CalDAV calendar (Radicale). Screenshots go to
$CALMESH_TEST_ARTIFACTS."""

from __future__ import annotations

import email
import email.policy
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from litestar import Litestar, Response, get
from playwright.async_api import Browser, Frame, FrameLocator, Page, expect

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.booking import PlatformOwner, sign_up_with_caldav
from calmesh_testing.browser import artifacts
from calmesh_testing.radicale import Radicale
from calmesh_testing.servers import Served

pytestmark = pytest.mark.timeout(180)

ALL_WEEK = {d: [["08:00", "20:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}



@dataclass
class Site:
    """Where the booking page lives (the gateway) and whose it is."""

    base_url: str
    owner: PlatformOwner


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radicale]:
    server = Radicale(tmp_path_factory.mktemp("radicale-browser")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def site(stack: Stack, radicale: Radicale) -> Site:
    owner = await sign_up_with_caldav(stack.gateway_url, radicale)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        r = await gw.post("/api/v1/booking-pages", headers=owner.auth, json={
            "slug": "intro", "calendar_slug": "work", "title": "Intro call", "duration_minutes": 30,
            "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK, "min_notice_minutes": 60,
            "description": "Thirty minutes to get to know each other."})
    assert r.status_code == 201, r.text
    return Site(stack.gateway_url, owner)


#: Reports each Content-Security-Policy violation of any frame to the console (the page's CSP
#: allows no inline script; a violation would mean part of the page silently does not run).
CSP_PROBE = """document.addEventListener("securitypolicyviolation", function (e) {
  console.error("CSP violation: " + e.violatedDirective + " blocked " + (e.blockedURI || "inline"));
});"""
_PROBLEMS: dict[int, list[str]] = {}


async def new_page(browser: Browser, **options: Any) -> Page:
    """A page in a fresh context that records CSP violations and uncaught errors of every frame."""
    context = await browser.new_context(**options)
    await context.add_init_script(CSP_PROBE)
    page = await context.new_page()
    problems = _PROBLEMS.setdefault(id(page), [])

    def on_console(message: Any) -> None:
        if message.type == "error" and ("Content Security Policy" in message.text or "CSP violation" in message.text):
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    return page


async def assert_no_inline_script_and_no_csp_violation(page: Page, scope: Page | FrameLocator, *,
                                                       config: bool = True) -> None:
    """What the visitor's browser ran: only CalMesh's own script files, each allowed by the page's
    policy (an inline <script> carries data only, as application/json)."""
    inline = scope.locator("script:not([src]):not([type='application/json'])")
    assert await inline.count() == 0, "the booking page holds an inline executable script"
    assert await scope.locator("script[type='application/json']#calmesh-config").count() == (1 if config else 0)
    sources = await scope.locator("script[src]").evaluate_all(
        "els => els.map(e => [e.src, location.origin])")
    assert sources and all(src.startswith(f"{origin}/assets/booking/") for src, origin in sources), sources
    assert _PROBLEMS.get(id(page)) == [], _PROBLEMS.get(id(page))


async def book_in(scope: Page | Frame | FrameLocator, *, name: str, email: str, keyboard_page: Page | None = None) -> str:
    """Pick the first day with times, its first time, fill the form, confirm; returns the time text."""
    day = scope.locator("#days button:not([disabled])").first
    await expect(day).to_be_visible(timeout=15_000)
    if keyboard_page is not None:
        await day.focus()
        await keyboard_page.keyboard.press("Enter")
    else:
        await day.click()
    slot = scope.locator("#slots button").first
    await expect(slot).to_be_visible()
    chosen = await slot.get_attribute("aria-label") or ""
    if keyboard_page is not None:
        await slot.focus()
        await keyboard_page.keyboard.press("Enter")
        await expect(scope.locator("#name")).to_be_focused()
        await keyboard_page.keyboard.type(name)
        await keyboard_page.keyboard.press("Tab")
        await keyboard_page.keyboard.type(email)
        await scope.locator("#book-btn").focus()
        await keyboard_page.keyboard.press("Enter")
    else:
        await slot.click()
        await scope.get_by_label("Name").fill(name)
        await scope.get_by_label("Email").fill(email)
        await scope.get_by_role("button", name="Confirm booking").click()
    done = scope.locator("#step-done")
    await expect(done).to_be_visible(timeout=15_000)
    await expect(scope.locator("#done-email")).to_have_text(email)
    await expect(scope.locator("#status")).to_contain_text("Booked")
    return chosen


async def bookings_of(site: Site) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=site.base_url, timeout=30) as gw:
        r = await gw.get("/api/v1/bookings", headers=site.owner.auth, params={"limit": 200})
    assert r.status_code == 200, r.text
    return r.json()["data"]


async def test_public_page_books_a_slot_by_keyboard(browser: Browser, site: Site) -> None:
    page = await new_page(browser, timezone_id="America/New_York", viewport={"width": 390, "height": 844})
    await page.goto(f"{site.base_url}/{site.owner.handle}/intro")
    await expect(page.get_by_role("heading", name="Intro call")).to_be_visible()
    await expect(page.get_by_role("main")).to_be_visible()
    # The visitor's timezone is detected, and can be changed.
    await expect(page.get_by_label("Your time zone")).to_have_value("America/New_York")
    await page.screenshot(path=str(artifacts("browser") / "page-days.png"), full_page=True)

    chosen = await book_in(page, name="Kim Keyboard", email="kim@example.org", keyboard_page=page)
    await expect(page.locator("#done-heading")).to_be_focused()
    await assert_no_inline_script_and_no_csp_violation(page, page)
    cancel_href = await page.locator("#cancel-link").get_attribute("href")
    assert cancel_href and "?booking=bk_" in cancel_href and "&sig=" in cancel_href
    await page.screenshot(path=str(artifacts("browser") / "page-confirmed.png"), full_page=True)

    mine = [b for b in await bookings_of(site) if b["email"] == "kim@example.org"]
    assert len(mine) == 1 and mine[0]["status"] == "confirmed" and mine[0]["timezone"] == "America/New_York"
    assert "EST" in chosen or "New York" in chosen or "GMT-5" in chosen

    # The cancel link opens a page that asks first, then cancels.
    await page.goto(f"{site.base_url}{cancel_href}")
    # cancel-page.js ran: the booked time reads in the visitor's words, not as the raw UTC text.
    when = page.locator("#when")
    await expect(when).not_to_have_text(re.compile(r"^\d{4}-\d{2}-\d{2}"))
    assert (await when.get_attribute("datetime") or "").endswith("Z")
    await page.get_by_role("button", name="Cancel booking").click()
    await expect(page.locator("#status")).to_contain_text("cancelled")
    await assert_no_inline_script_and_no_csp_violation(page, page, config=False)
    await page.screenshot(path=str(artifacts("browser") / "page-cancelled.png"), full_page=True)
    mine = [b for b in await bookings_of(site) if b["email"] == "kim@example.org"]
    assert mine[0]["status"] == "cancelled" and mine[0]["cancelled_by"] == "visitor"
    await page.context.close()


def host_page(base_url: str, handle: str, mode: str) -> str:
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Host site</title></head>
<body><h1>Acme consulting</h1><p>Book a call below.</p>
<div data-calmesh-handle="{handle}" data-calmesh-slug="intro" data-mode="{mode}" data-color="#f97316"></div>
<script src="{base_url}/embed.js" defer></script></body></html>"""


@pytest.fixture(scope="module")
async def host(site: Site) -> AsyncIterator[str]:
    """Another origin serving pages that embed the booking page."""

    @get("/{mode:str}")
    async def page(mode: str) -> Response[str]:
        return Response(host_page(site.base_url, site.owner.handle, mode), media_type="text/html")

    served = Served(Litestar([page]))
    await served.start()
    yield served.url
    await served.stop()


async def test_embed_inline_books_and_fits_its_content(browser: Browser, site: Site, host: str) -> None:
    page = await new_page(browser, timezone_id="Europe/Amsterdam")
    await page.goto(f"{host}/inline")
    iframe = page.locator("iframe")
    await expect(iframe).to_have_count(1)
    frame = page.frame_locator("iframe")
    await expect(frame.locator("#days button:not([disabled])").first).to_be_visible(timeout=15_000)
    # The iframe takes the height the page posts (not the 640px it starts with).
    await expect(iframe).not_to_have_attribute("style", "640px", timeout=1)
    await page.wait_for_function("document.querySelector('iframe').style.height !== '640px'")
    await book_in(frame, name="Ines Inline", email="ines@example.org")
    await assert_no_inline_script_and_no_csp_violation(page, frame)
    # The host's data-color reaches the page (booking-page.js sets it; the CSP allows no inline style).
    accent = await frame.locator("html").evaluate("e => getComputedStyle(e).getPropertyValue('--accent').trim()")
    assert accent == "#f97316"
    content_height = await frame.locator("html").evaluate("e => Math.ceil(e.getBoundingClientRect().height)")
    await page.wait_for_function(
        "h => Math.abs(parseInt(document.querySelector('iframe').style.height) - h) <= 2", arg=content_height)
    await page.screenshot(path=str(artifacts("browser") / "embed-inline-confirmed.png"), full_page=True)
    assert [b["status"] for b in await bookings_of(site) if b["email"] == "ines@example.org"] == ["confirmed"]
    await page.context.close()


async def test_embed_popup_opens_a_modal_that_books(browser: Browser, site: Site, host: str) -> None:
    page = await new_page(browser, timezone_id="Asia/Tokyo")
    await page.goto(f"{host}/popup")
    button = page.get_by_role("button", name="Book a time")
    await expect(button).to_be_visible()
    assert await button.evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(249, 115, 22)"
    await expect(page.get_by_role("dialog")).to_have_count(0)
    await button.click()
    dialog = page.get_by_role("dialog", name="Book a time")
    await expect(dialog).to_be_visible()
    await page.screenshot(path=str(artifacts("browser") / "embed-popup-open.png"))
    frame = page.frame_locator("[role=dialog] iframe")
    await expect(frame.get_by_label("Your time zone")).to_have_value("Asia/Tokyo")
    await book_in(frame, name="Pat Popup", email="pat@example.org")
    await assert_no_inline_script_and_no_csp_violation(page, frame)
    await page.screenshot(path=str(artifacts("browser") / "embed-popup-confirmed.png"))
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(button).to_be_focused()
    assert [b["status"] for b in await bookings_of(site) if b["email"] == "pat@example.org"] == ["confirmed"]
    await page.context.close()


async def test_a_page_that_requires_verification_holds_the_time_until_the_mailed_link_is_confirmed(
        browser: Browser, site: Site, stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=site.base_url, timeout=30) as gw:
        r = await gw.post("/api/v1/booking-pages", headers=site.owner.auth, json={
            "slug": "checked", "calendar_slug": "work", "title": "Checked call", "duration_minutes": 30,
            "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK, "min_notice_minutes": 60,
            "require_email_verification": True})
    assert r.status_code == 201, r.text
    address = f"vera-{uuid.uuid4().hex[:8]}@example.org"
    page = await new_page(browser, timezone_id="Europe/Amsterdam")
    await page.goto(f"{site.base_url}/{site.owner.handle}/checked")
    day = page.locator("#days button:not([disabled])").first
    await expect(day).to_be_visible(timeout=15_000)
    await day.click()
    await page.locator("#slots button").first.click()
    await page.get_by_label("Name").fill("Vera Visitor")
    await page.get_by_label("Email").fill(address)
    await page.get_by_role("button", name="Confirm booking").click()
    await expect(page.locator("#done-heading")).to_have_text("Check your email", timeout=15_000)
    await expect(page.locator("#done-verify-email")).to_have_text(address)
    await expect(page.locator("#done-cancel")).to_be_hidden()
    await page.screenshot(path=str(artifacts("browser") / "page-verify-pending.png"), full_page=True)
    assert not [b for b in await bookings_of(site) if b["email"] == address]

    # The mailed link opens a page without a script; its button confirms.
    mail_dir = stack.data_dir / "mail"
    deadline = time.monotonic() + 30
    while not (found := list(mail_dir.glob("*-verify-visitor.eml"))) or not any(
            address in p.read_text(errors="replace") for p in found):
        assert time.monotonic() < deadline, "no verification mail"
        await page.wait_for_timeout(100)
    mail = next(p for p in found if address in p.read_text(errors="replace"))
    text = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default).get_content()  # type: ignore[attr-defined]
    link = re.search(r"https?://\S+(/api/v1/bookings/\S+/verify\?exp=\d+&sig=\S+)", text).group(1)  # type: ignore[union-attr]
    await page.goto(f"{site.base_url}{link}")
    await expect(page.get_by_role("heading", name="Confirm your booking")).to_be_visible()
    await page.get_by_role("button", name="Confirm booking").click()
    await expect(page.get_by_role("heading", name="Booking confirmed")).to_be_visible(timeout=15_000)
    await page.screenshot(path=str(artifacts("browser") / "page-verified.png"), full_page=True)
    mine = [b for b in await bookings_of(site) if b["email"] == address]
    assert len(mine) == 1 and mine[0]["status"] == "confirmed"
    await page.context.close()


async def test_the_mailed_reschedule_link_moves_the_booking_on_the_public_page(
        browser: Browser, site: Site, stack: Stack) -> None:
    address = f"rita-{uuid.uuid4().hex[:8]}@example.org"
    page = await new_page(browser, timezone_id="Europe/Amsterdam")
    await page.goto(f"{site.base_url}/{site.owner.handle}/intro")
    await book_in(page, name="Rita Visitor", email=address)
    booking = next(b for b in await bookings_of(site) if b["email"] == address)

    mail = stack.data_dir / "mail" / f"{booking['id']}-confirmed-visitor.eml"
    deadline = time.monotonic() + 30
    while not mail.exists():
        assert time.monotonic() < deadline, "no confirmation mail"
        await page.wait_for_timeout(100)
    text = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default).get_body(  # type: ignore[attr-defined]
        preferencelist=("plain",)).get_content()
    link = re.search(r"Need to reschedule\? https?://[^/\s]+(/\S+)", text).group(1)  # type: ignore[union-attr]
    assert f"?reschedule={booking['id']}&" in link

    await page.goto(f"{site.base_url}{link}")
    await expect(page.get_by_role("heading", name="Reschedule your booking")).to_be_visible()
    await expect(page.locator("#move-current")).not_to_be_empty()
    await page.locator("#next").click()  # a day of next week: not the booking's own time
    day = page.locator("#days button:not([disabled])").first
    await expect(day).to_be_visible(timeout=15_000)
    await day.click()
    slot = page.locator("#slots button").first
    new_start = await slot.get_attribute("data-start")
    await slot.click()
    await page.get_by_role("button", name="Move booking").click()
    await expect(page.get_by_role("heading", name="Your booking has moved")).to_be_visible(timeout=15_000)
    await page.screenshot(path=str(artifacts("browser") / "page-rescheduled.png"), full_page=True)
    await assert_no_inline_script_and_no_csp_violation(page, page)

    moved = next(b for b in await bookings_of(site) if b["email"] == address)
    assert (moved["id"], moved["status"]) == (booking["id"], "confirmed")
    assert moved["start"] == new_start != booking["start"]
    await page.context.close()
