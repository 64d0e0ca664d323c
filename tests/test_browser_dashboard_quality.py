"""The dashboard's quality a user feels, page by page, in a real browser (Debian's Chromium), on an
account with something on every page (a feed and a CalDAV calendar, a unified calendar of both
with this week's meetings and a conflict, a booking page with a booking, a poll with votes and its public voting page, an API key, a webhook with a delivery):

- axe-core (the npm package of tests/npm/package.json, its source handed to the page by the test,
  nothing fetched from elsewhere) finds no violation of impact "serious" or "critical";
- at a phone's width (375×740) no page scrolls sideways and every navigation link is on screen;
- the keyboard alone reaches each form's submit button, through the form's own fields, and the
  focused control is outlined;
- each page's HTML + JS + CSS, as the browser fetches them with an empty cache, stays ≤ 100 KB.

Full-page screenshots of every page, desktop and phone, go to $CALMESH_TEST_ARTIFACTS/dashboard
(quality-desktop-*.png, quality-phone-*.png)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing import npm
from calmesh_testing.browser import artifacts
from calmesh_testing.dashboard import PAGE_BUDGET, Recorder, shot, sign_up, this_week_at
from calmesh_testing.radicale import Radicale

pytestmark = pytest.mark.timeout(480)

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}
NAV_LINKS = ("Connections", "Calendars", "Booking pages", "Bookings", "Polls", "API keys", "Webhooks", "Billing")
#: Pages opened without a session, and without the dashboard's navigation: the sign-up and sign-in
#: pages, and the public page a poll's share link opens (booking's, for whoever holds the link).
SIGNED_OUT = ("signup", "login", "vote")


@dataclass
class Account:
    base: str
    state: Any  # the signed-in browser's storage state (its session and CSRF cookies)
    pages: dict[str, str]  # a short name → the page's path


@pytest.fixture(scope="module")
async def account(stack: Stack, browser: Browser, feed: str, radicale: Radicale) -> AsyncIterator[Account]:
    """A new account with content on every page, made through the public API as the signed-in user."""
    base = stack.gateway_url
    context = await browser.new_context(viewport=DESKTOP, timezone_id="UTC")
    page = await context.new_page()
    suffix = await sign_up(page, base, "qa")
    handle = f"qa-{suffix}"
    csrf = next(c["value"] for c in await context.cookies() if c["name"] == "calmesh_csrf")

    async def call(method: str, path: str, body: Any = None) -> Any:
        r = await context.request.fetch(f"{base}/api/v1{path}", method=method, data=body,
                                        headers={"X-CSRF-Token": csrf})
        assert r.status < 300, (method, path, r.status, await r.text())
        return await r.json() if r.status != 204 else None

    # A feed and a CalDAV calendar (writable, for the booking page) whose meetings overlap.
    radicale.make_calendar(handle, "Home")
    radicale.put_event(handle, "dentist@test", this_week_at(2, 10, 30), this_week_at(2, 11, 30), "Dentist")
    connections = [await call("POST", "/connections/ical", {"url": feed}),
                   await call("POST", "/connections/caldav", {"url": radicale.calendar_url(handle),
                                                              "username": radicale.username, "password": radicale.password})]
    deadline = time.monotonic() + 60
    for connection in connections:
        while (await call("GET", f"/connections/{connection['id']}"))["status"] != "active":
            assert time.monotonic() < deadline, f"{connection['provider']} never synced"
            await asyncio.sleep(0.5)
    await call("POST", "/calendars", {"slug": "work", "name": "Work", "timezone": "UTC",
                                     "sources": [{"connection_id": c["id"]} for c in connections]})
    await call("POST", "/api-keys", {"name": "laptop", "scope": "read"})
    every_day = {day: [["00:00", "23:45"]] for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
    await call("POST", "/booking-pages", {
        "slug": "intro", "calendar_slug": "work", "title": "Intro call", "duration_minutes": 30, "timezone": "UTC",
        "weekly_hours": every_day, "min_notice_minutes": 0, "max_days_ahead": 30,
        "date_overrides": [{"date": this_week_at(13, 0).date().isoformat(), "hours": []}]})
    monday = this_week_at(7, 0).date()
    week = this_week_at(0, 0)
    async with httpx.AsyncClient(base_url=f"{base}/api/v1", timeout=15) as public:
        slots = (await public.get("/booking-pages/intro/slots", params={
            "handle": handle, "start": monday.isoformat(), "end": (monday + timedelta(days=6)).isoformat()})).json()
        booked = await public.post("/booking-pages/intro/book", params={"handle": handle}, json={
            "start": slots["slots"][0]["start"], "name": "Vera Visitor", "email": "vera@example.com",
            "notes": "About the offsite."})
        assert booked.status_code == 201, booked.text
        poll = await call("POST", "/polls", {"title": "Team offsite", "duration_minutes": 60, "calendar_slug": "work",
                                             "options": [{"start": f"{d:%Y-%m-%dT%H:%M:%SZ}",
                                                          "end": f"{d + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}"}
                                                         for d in (week + timedelta(days=8, hours=9),
                                                                   week + timedelta(days=9, hours=14))]})
        a, b = (o["id"] for o in poll["options"])
        for name, choices in (("Ann", {a: "no", b: "yes"}), ("Bo", {a: "maybe", b: "yes"})):
            voted = await public.post(poll["vote_url"], json={"name": name, "choices": choices})
            assert voted.status_code == 201, voted.text
    hook = await call("POST", "/webhooks", {"url": feed.replace("/team.ics", "/hook"),
                                           "event_types": ["booking.created"], "description": "CRM"})
    await call("POST", f"/webhooks/{hook['id']}/test")
    deadline = time.monotonic() + 30
    while not (await call("GET", f"/webhooks/{hook['id']}/deliveries"))["data"]:
        assert time.monotonic() < deadline, "the test delivery never showed"
        await asyncio.sleep(0.5)
    pages = {"signup": "/app/signup", "login": "/app/login", "connections": "/app/connections",
             "calendars": "/app/calendars", "week": "/app/calendars/work", "booking-pages": "/app/booking-pages",
             "bookings": "/app/bookings", "polls": "/app/polls", "poll": f"/app/polls/{poll['id']}",
             "api-keys": "/app/api-keys", "webhooks": "/app/webhooks", "webhook": f"/app/webhooks/{hook['id']}",
             "billing": "/app/billing", "profile": "/app/profile", "booking-page": "/app/booking-pages/intro",
             "booking": f"/app/bookings/{booked.json()['id']}", "vote": poll["vote_page_url"].removeprefix(base)}
    state = await context.storage_state()
    await context.close()
    yield Account(base, state, pages)


async def open_page(browser: Browser, account: Account, name: str,
                    viewport: dict[str, int]) -> tuple[BrowserContext, Page]:
    """A fresh context (an empty cache; signed in unless the page is a signed-out one) and its page."""
    state = None if name in SIGNED_OUT else account.state
    context = await browser.new_context(viewport=viewport, timezone_id="UTC", storage_state=state)
    page = await context.new_page()
    return context, page


async def show_everything(page: Page, name: str) -> None:
    """Every collapsed form opened and, on the week, an event's details shown: all of it is checked."""
    for toggle in await page.locator("[data-toggle][aria-expanded='false']").all():
        await toggle.click()
    if name == "week":
        event = page.get_by_role("button", name="Team sync")
        await expect(event).to_have_accessible_name(re.compile("conflict"))  # with the Dentist, from Home
        await event.click()
        await expect(page.locator("#event-detail")).to_be_visible()
    if name not in SIGNED_OUT:
        await expect(page.get_by_role("button", name="Sign out")).to_be_visible()


async def serious_violations(page: Page, axe: str) -> list[str]:
    """axe-core's violations of impact serious or critical on the page as it is now."""
    # The page's CSP (script-src 'self') refuses an inline <script>; Playwright's evaluation runs
    # beside the page's policy, so neither the product's CSP nor the context's needs loosening.
    if not await page.evaluate("() => 'axe' in window"):
        await page.evaluate(axe)
    result = await page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [f"{v['id']} ({v['impact']}): {v['help']} — " + "; ".join(n["html"][:160] for n in v["nodes"][:3])
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


async def test_axe_finds_nothing_serious_or_critical_on_any_page(browser: Browser, account: Account) -> None:
    axe = npm.axe_core()
    found: dict[str, list[str]] = {}
    for name, path in account.pages.items():
        context, page = await open_page(browser, account, name, DESKTOP)
        await page.goto(account.base + path)
        await show_everything(page, name)
        found[name] = await serious_violations(page, axe)
        if name == "signup":  # and with the API's errors shown beside the fields
            await page.get_by_label("Email").fill("someone@example.com")
            await page.get_by_label("Password").fill("a long enough passphrase")
            await page.get_by_label("Handle").fill("No Spaces Allowed")
            await page.get_by_role("button", name="Create account").click()
            await expect(page.get_by_label("Handle")).to_have_attribute("aria-invalid", "true")
            found["signup with errors"] = await serious_violations(page, axe)
        await context.close()
    found = {name: lines for name, lines in found.items() if lines}
    assert not found, "\n".join(f"{name}: {line}" for name, lines in found.items() for line in lines)


async def test_at_a_phone_width_no_page_scrolls_sideways_and_the_navigation_is_on_screen(
        browser: Browser, account: Account) -> None:
    wide: dict[str, tuple[int, int]] = {}
    for name, path in account.pages.items():
        context, page = await open_page(browser, account, name, PHONE)
        await page.goto(account.base + path)
        await show_everything(page, name)
        widths = await page.evaluate("() => [document.scrollingElement.scrollWidth, window.innerWidth]")
        if widths[0] > widths[1] + 1:
            wide[name] = tuple(widths)
        if name not in SIGNED_OUT:
            nav = page.get_by_role("navigation", name="Main")
            for label in NAV_LINKS:
                link = nav.get_by_role("link", name=label, exact=True)
                await expect(link).to_be_visible()
                box = await link.bounding_box()
                assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (name, label, box)
        await shot(page, f"quality-phone-{name}")
        await context.close()
    assert not wide, f"pages wider than the phone (scrollWidth, innerWidth): {wide}"
    # A link of the navigation works from the phone too.
    context, page = await open_page(browser, account, "bookings", PHONE)
    await page.goto(account.base + "/app/bookings")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Billing").click()
    await page.wait_for_url(account.base + "/app/billing")
    await context.close()
    print(f"\nphone screenshots: {artifacts('dashboard')}/quality-phone-*.png")


#: A page → how its main form is reached: the button that opens it (None: the form is shown) and
#: the form's submit button.
FORMS = {
    "signup": (None, "#signup", "Create account"),
    "login": (None, "#login", "Sign in"),
    "connections": (None, "#add-ical", "Add iCal feed"),
    "calendars": ("New calendar", "#new-calendar", "Create calendar"),
    "booking-pages": ("New booking page", "#new-page", "Create booking page"),
    "bookings": (None, "form.filters", "Filter"),
    "polls": ("New poll", "#new-poll", "Create poll"),
    "api-keys": (None, "#create-key", "Create key"),
    "webhooks": (None, "#new-webhook", "Create webhook"),
    "webhook": (None, "#replay", "Replay"),
    "week": (None, "form.tzform", "Show"),
    "vote": (None, "#vote-form", "Send vote"),
}


async def test_the_keyboard_alone_reaches_each_forms_submit_button_with_a_visible_focus(
        browser: Browser, account: Account) -> None:
    for name, (opener, selector, submit) in FORMS.items():
        context, page = await open_page(browser, account, name, DESKTOP)
        await page.goto(account.base + account.pages[name])
        form = page.locator(selector)
        if opener:
            await page.get_by_role("button", name=opener).focus()
            await page.keyboard.press("Enter")
            await expect(form).to_be_visible()
            inside = await form.evaluate("f => f.contains(document.activeElement)")
            assert inside, f"{name}: opening the form did not move the focus into it"
        else:
            await form.locator("input:not([type=hidden]), select").first.focus()
        button = form.get_by_role("button", name=submit)
        for presses in range(200):  # a time or date field is a stop for each of its parts
            if await button.evaluate("b => b === document.activeElement"):
                break
            inside = await form.evaluate("f => f.contains(document.activeElement)")
            assert inside, f"{name}: Tab left the form after {presses} presses, before {submit!r}"
            await page.keyboard.press("Tab")
        else:
            raise AssertionError(f"{name}: 200 Tabs never reached {submit!r}")
        outline = await button.evaluate(
            "b => { const s = getComputedStyle(b); return [s.outlineStyle, parseFloat(s.outlineWidth)]; }")
        assert outline[0] != "none" and outline[1] >= 2, (name, outline)
        await context.close()


async def test_every_page_weighs_at_most_100_kb_of_html_js_and_css(browser: Browser, account: Account) -> None:
    weights: dict[str, int] = {}
    for name, path in account.pages.items():
        context, page = await open_page(browser, account, name, DESKTOP)
        seen = Recorder(page)
        await page.goto(account.base + path, wait_until="networkidle")
        await show_everything(page, name)
        await shot(page, f"quality-desktop-{name}")
        foreign = [u for u in seen.urls if not (u.startswith(account.base + "/") or u.startswith("data:"))]
        assert not foreign, (name, foreign)
        assert len(seen.sizes) >= 3, (name, seen.sizes)  # the page, its script and its style sheet
        weights[name] = sum(seen.sizes.values())
        await context.close()
    print(f"\nbytes of HTML + JS + CSS per page: {weights}\ndesktop screenshots: {artifacts('dashboard')}/quality-desktop-*.png")
    assert all(n > 0 for n in weights.values()), weights
    heavy = {name: n for name, n in weights.items() if n > PAGE_BUDGET}
    assert not heavy, heavy
