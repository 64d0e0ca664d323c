"""The dashboard's second round of flows in a real browser (Debian's Chromium), against the
session's running platform: a unified calendar's sources added and removed after it is made, the
week's busy and free time with the events behind a busy block (availability's `explain`); a booking
page edited after creation (hours, overrides, buffers, notice, horizon, duration, questions) with its
link, embed snippet and preview, then booked by its owner in the very browser they are signed in
with; bookings filtered by date and page, a booking's details and its cancellation; a webhook's
event types edited, and the events since an instant delivered again ("replay since"); and, over
HTTP, that a session cookie on the public booking POST is not looked at while every
session-authenticated write still needs the CSRF token.

The account, its three connections (a CalDAV calendar on Radicale and two iCal feeds on loopback),
a calendar and a booking page are made once through the public API (setup, not under test here);
each test then drives the pages. Screenshots go to $CALMESH_TEST_ARTIFACTS/dashboard."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from litestar import Litestar, Request, Response, get, post
from playwright.async_api import Browser, BrowserContext, Page, expect

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.dashboard import book_first_slot, ics, reload_until, shot, this_week_at
from calmesh_testing.radicale import Radicale
from calmesh_testing.servers import Served

pytestmark = pytest.mark.timeout(480)  # the first test starts the session stack too


@dataclass
class Owner:
    """A signed-in account (its cookies in `http`) with its connections by name."""

    base: str
    handle: str
    http: httpx.AsyncClient
    connections: dict[str, str]
    hooks: list[dict[str, Any]] = field(default_factory=list)
    hook_url: str = ""

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """The public API as this user's session (with the CSRF token), for the tests' setup."""
        r = await self.http.request(method, f"/api/v1{path}", json=body,
                                    headers={"X-CSRF-Token": self.http.cookies.get("calmesh_csrf") or ""})
        assert r.status_code < 300, (method, path, r.status_code, r.text)
        return r.json() if r.content else None

    async def browser_page(self, browser: Browser) -> tuple[BrowserContext, Page]:
        """A browser signed in as this user (the session's cookies), dialogs accepted."""
        context = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
        await context.add_cookies([{"name": k, "value": v, "url": self.base} for k, v in self.http.cookies.items()])
        page = await context.new_page()
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        return context, page


@pytest.fixture(scope="module")
async def owner(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Owner]:
    radicale = Radicale(tmp_path_factory.mktemp("radicale-flows")).start()
    radicale.make_calendar("office", "Office")
    radicale.make_calendar("home", "Home")
    feeds = {
        "a.ics": ics(("standup@a", "Standup", this_week_at(2, 10), this_week_at(2, 11)), name="Team A"),
        "b.ics": ics(("review@b", "Review", this_week_at(2, 10, 30), this_week_at(2, 11, 30)), name="Team B"),
    }
    received: list[dict[str, Any]] = []

    @get("/{name:str}", media_type="text/calendar")
    async def feed(name: str) -> Response[str]:
        return Response(feeds[name], media_type="text/calendar")

    @post("/hook", status_code=204)
    async def hook(request: Request[Any, Any, Any]) -> None:
        received.append(await request.json())

    served = Served(Litestar([feed, hook]))
    await served.start()
    base = stack.gateway_url
    handle = f"flows-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        r = await http.post("/api/v1/auth/signup", json={"email": f"{handle}@example.com", "handle": handle,
                                                         "password": "a long enough passphrase", "timezone": "UTC"})
        assert r.status_code == 201, r.text
        who = Owner(base, handle, http, {}, received, f"{served.url}/hook")
        # The account's URL: one connection with both of its calendars (Office and Home).
        who.connections["office"] = (await who.call("POST", "/connections/caldav", {
            "url": f"{radicale.url}/{radicale.username}/", "username": radicale.username, "password": radicale.password}))["id"]
        for name in ("a", "b"):
            who.connections[name] = (await who.call("POST", "/connections/ical", {"url": f"{served.url}/{name}.ics"}))["id"]
        deadline = time.monotonic() + 90
        while {c["status"] for c in (await who.call("GET", "/connections"))["data"]} != {"active"}:
            assert time.monotonic() < deadline, await who.call("GET", "/connections")
            await asyncio.sleep(0.5)
        office = next(c for c in (await who.call("GET", f"/connections/{who.connections['office']}"))["calendars"]
                      if c["name"] == "Office")
        await who.call("POST", "/calendars", {"slug": "office", "name": "Office", "timezone": "UTC", "sources": [
            {"connection_id": who.connections["office"], "calendar_id": office["id"]}]})
        await who.call("POST", "/booking-pages", {
            "slug": "intro", "calendar_slug": "office", "title": "Intro call", "duration_minutes": 30,
            "timezone": "UTC", "weekly_hours": {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")},
            "min_notice_minutes": 0, "max_days_ahead": 30})
        try:
            yield who
        finally:
            await served.stop()
            radicale.stop()


async def test_sources_are_added_and_removed_and_the_week_explains_its_busy_time(
        owner: Owner, browser: Browser) -> None:
    await owner.call("POST", "/calendars", {"slug": "teams", "name": "Teams", "timezone": "UTC",
                                            "sources": [{"connection_id": owner.connections["a"]}]})
    context, page = await owner.browser_page(browser)
    await page.goto(f"{owner.base}/app/calendars")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="Teams", exact=True))
    sources = page.get_by_role("list", name="Sources of Teams").get_by_role("listitem")
    await expect(sources).to_have_count(1)

    # Add the second feed to the existing calendar: it joins at the end of the list.
    pick = row.get_by_label("Add a source to Teams")
    label = await pick.locator("option", has_text="Team B").text_content()
    await pick.select_option(label=(label or "").strip())
    await row.get_by_role("button", name="Add source").click()
    await expect(sources).to_have_count(2)
    await expect(sources.nth(1)).to_contain_text("Team B")
    # The office calendar's writable CalDAV source is where new events go; read-only feeds never are.
    office = page.get_by_role("list", name="Sources of Office").get_by_role("listitem")
    await expect(office.first).to_contain_text("new events go here")
    await expect(sources.filter(has_text="new events go here")).to_have_count(0)
    await expect(page.get_by_role("button", name="Use for new events: Team B")).to_have_count(0)
    # Another writable calendar added to Office can be made the default write target: it goes first.
    office_pick = page.get_by_label("Add a source to Office")
    await office_pick.select_option(label=((await office_pick.locator("option", has_text="Home").text_content()) or "").strip())
    await page.get_by_role("row").filter(has=page.get_by_role("link", name="Office", exact=True)).get_by_role(
        "button", name="Add source").click()
    await expect(office).to_have_count(2)
    await expect(office.filter(has_text="new events go here")).to_contain_text("Office")
    await page.get_by_role("button", name="Use for new events: Home in Office").click()
    await expect(office.first).to_contain_text("Home")
    await expect(office.first).to_contain_text("new events go here")
    await expect(office.nth(1)).not_to_contain_text("new events go here")
    assert [s["name"] for s in sorted((await owner.call("GET", "/calendars/office"))["sources"],
                                      key=lambda s: s["sort_order"])] == ["Home", "Office"]
    await shot(page, "f1-calendar-sources")

    # The week: Wednesday 10:00–11:30 is one busy block made of both meetings; a click says why.
    await page.get_by_role("link", name="Teams", exact=True).click()
    busy = page.get_by_role("button", name=re.compile(r"^Busy Wed 10:00–11:30"))
    await reload_until(page, lambda: busy.count())
    await expect(busy).to_have_accessible_name(re.compile("2 events"))
    await busy.click()
    why = page.locator("#busy-detail")
    await expect(why).to_be_visible()
    await expect(why.get_by_role("listitem").filter(has_text="Standup")).to_contain_text("from Team A")
    await expect(why.get_by_role("listitem").filter(has_text="Review")).to_contain_text("from Team B")
    await shot(page, "f2-week-busy-explained")
    # The time after it is free, and says so.
    await page.get_by_role("button", name=re.compile(r"^Free Wed 11:30")).first.click()
    await expect(why).to_contain_text("this time is free")
    await expect(why.get_by_text("Standup")).to_be_hidden()
    # An event's details name its source and what it counts as.
    await page.get_by_role("button", name=re.compile(r"^Review,")).click()
    await expect(page.locator("#detail-source")).to_have_text("Team B")
    await expect(page.locator("#detail-shows")).to_have_text("busy")

    # Remove the second feed again (after a confirmation): its meeting leaves the week.
    await page.goto(f"{owner.base}/app/calendars")
    await page.get_by_role("button", name="Remove Team B from Teams").click()
    await expect(sources).to_have_count(1)
    await page.goto(f"{owner.base}/app/calendars/teams")
    await expect(page.get_by_role("button", name=re.compile(r"^Standup,"))).to_be_visible()
    await expect(page.get_by_role("button", name=re.compile(r"^Review,"))).to_have_count(0)
    await expect(page.get_by_role("button", name=re.compile(r"^Busy Wed 10:00–11:00"))).to_be_visible()
    await context.close()


async def test_a_booking_page_is_edited_with_questions_and_its_owner_books_it_in_the_same_browser(
        owner: Owner, browser: Browser) -> None:
    # A day with three ranges and an override with two (set through the API) come back whole from
    # the editor.
    friday = [["08:00", "09:00"], ["10:00", "11:00"], ["13:00", "17:00"]]
    christmas = {"date": "2030-12-24", "hours": [["09:00", "10:00"], ["15:00", "16:00"]]}
    hours = (await owner.call("GET", "/booking-pages/intro"))["weekly_hours"]
    await owner.call("PATCH", "/booking-pages/intro", {"weekly_hours": {**hours, "fri": friday},
                                                       "date_overrides": [christmas]})
    context, page = await owner.browser_page(browser)
    await context.grant_permissions(["clipboard-read", "clipboard-write"])
    public_url = f"{owner.base}/{owner.handle}/intro"
    await page.goto(f"{owner.base}/app/booking-pages")
    await page.get_by_role("link", name="Edit Intro call").click()
    await page.wait_for_url(f"{owner.base}/app/booking-pages/intro")

    # The public link, the embed snippet with a copy button, and a preview of the public page.
    await expect(page.locator("#public-link")).to_have_text(public_url)
    await expect(page.get_by_label("Embed snippet")).to_contain_text(f'data-calmesh-handle="{owner.handle}"')
    await page.get_by_role("button", name="Copy snippet").click()
    await expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert 'data-calmesh-slug="intro"' in await page.evaluate("navigator.clipboard.readText()")
    await expect(page.get_by_role("link", name="Preview the public page")).to_have_attribute("href", public_url)

    # Edit it: 45 minutes, a buffer, a horizon, Saturday mornings, a closed day, and two questions.
    form = page.locator("#edit-page")
    closed = (datetime.now(UTC) + timedelta(days=1)).date()
    await form.get_by_label("Duration").fill("45")
    await form.get_by_label("Buffer before").fill("15")
    await form.get_by_label("Days ahead").fill("14")
    await form.get_by_label("Saturday", exact=True).check()
    await form.get_by_label("Saturday from", exact=True).fill("10:00")
    await form.get_by_label("Saturday until", exact=True).fill("12:00")
    await form.get_by_label("Override 2 date").fill(closed.isoformat())
    await form.get_by_label("Question 1 label").fill("Topic")
    await form.get_by_label("Question 1 id").fill("Bad id!")
    await form.get_by_label("Question 1 type").select_option("select")
    await form.get_by_label("Question 1 options").fill("Sales\nSupport")
    await form.get_by_label("Question 1 required").check()
    await form.get_by_label("Question 2 label").fill("Company")
    await form.get_by_role("button", name="Save changes").click()
    # The API's error for questions[0].id is shown beside that field.
    bad = form.get_by_label("Question 1 id")
    await expect(bad).to_have_attribute("aria-invalid", "true")
    await expect(form.locator('[data-field="questions[0]"] .field-error')).to_be_visible()
    await shot(page, "f3-booking-page-error")
    await bad.fill("topic")
    await form.get_by_role("button", name="Save changes").click()
    await page.wait_for_url(f"{owner.base}/app/booking-pages/intro?saved=1")
    await expect(page.get_by_role("status")).to_contain_text("Changes saved")
    await expect(form.get_by_label("Duration")).to_have_value("45")
    await expect(form.get_by_label("Question 2 id")).to_have_value("company")
    saved = await owner.call("GET", "/booking-pages/intro")
    assert saved["duration_minutes"] == 45 and saved["buffer_before_minutes"] == 15 and saved["max_days_ahead"] == 14
    assert saved["weekly_hours"]["sat"] == [["10:00", "12:00"]]
    assert saved["weekly_hours"]["fri"] == friday
    assert sorted(saved["date_overrides"], key=lambda o: o["date"]) == [{"date": closed.isoformat(), "hours": []},
                                                                        christmas]
    assert [(q["id"], q["type"], q["required"]) for q in saved["questions"]] == [
        ("topic", "select", True), ("company", "text", False)]
    assert saved["questions"][0]["options"] == ["Sales", "Support"]
    await shot(page, "f4-booking-page-saved")

    # Its owner books it on the public page, in this same signed-in browser (no CSRF refusal).
    await book_first_slot(page, public_url, "Olga Owner", "olga@example.com", {"Topic": "Support"})
    await shot(page, "f5-owner-booked")

    # Bookings: the date range and page filters, then the booking's details and cancelling it.
    booking = (await owner.call("GET", "/bookings"))["data"][0]
    day_of = booking["start"][:10]
    before = (datetime.fromisoformat(day_of) - timedelta(days=1)).date().isoformat()
    await page.goto(f"{owner.base}/app/bookings")
    await page.get_by_label("From").fill(day_of)
    await page.get_by_label("Until").fill(day_of)
    await page.get_by_label("Booking page").select_option("intro")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(rf"from={day_of}&until={day_of}"))
    row = page.get_by_role("row").filter(has_text="Olga Owner")
    await expect(row).to_have_count(1)
    await page.get_by_label("Until").fill(before)
    await page.get_by_label("From").fill(before)
    await page.get_by_role("button", name="Filter").click()
    await expect(page.get_by_role("row").filter(has_text="Olga Owner")).to_have_count(0)
    await page.goto(f"{owner.base}/app/bookings")
    await page.get_by_role("link", name="booking of Olga Owner").click()
    await page.wait_for_url(f"{owner.base}/app/bookings/{booking['id']}")
    details = page.get_by_label("Booking details")
    await expect(details).to_contain_text("olga@example.com")
    await expect(details).to_contain_text("Support")
    await expect(details).to_contain_text("Topic")
    await shot(page, "f6-booking-details")
    await page.get_by_role("button", name="Cancel booking").click()
    await expect(details).to_contain_text("cancelled")
    await expect(page.get_by_role("button", name="Cancel booking")).to_have_count(0)
    assert (await owner.call("GET", f"/bookings/{booking['id']}"))["status"] == "cancelled"
    await context.close()


async def test_a_webhooks_event_types_are_edited_and_past_events_are_replayed(owner: Owner, browser: Browser) -> None:
    hook = await owner.call("POST", "/webhooks", {"url": owner.hook_url, "event_types": ["booking.cancelled"]})
    context, page = await owner.browser_page(browser)
    await page.goto(f"{owner.base}/app/webhooks/{hook['id']}")
    await page.get_by_text("Edit this webhook").click()
    form = page.locator("#edit-webhook")
    await expect(form.get_by_label("booking.cancelled")).to_be_checked()
    # A URL the API refuses is shown beside the URL field.
    await form.get_by_label("URL").fill("ftp://example.com/hook")
    await form.get_by_role("button", name="Save changes").click()
    await expect(form.get_by_label("URL")).to_have_attribute("aria-invalid", "true")
    await expect(form.locator('[data-field="url"] .field-error')).to_be_visible()
    await form.get_by_label("URL").fill(owner.hook_url)
    await form.get_by_label("booking.created").check()
    await form.get_by_role("button", name="Save changes").click()
    await page.wait_for_url(re.compile(r"\?saved=1$"))
    await expect(page.locator(".facts")).to_contain_text("booking.created")
    await expect(page.locator(".facts")).to_contain_text("booking.cancelled")

    # A visitor books (the public API): the new event type is delivered.
    async with httpx.AsyncClient(base_url=owner.base, timeout=30) as visitor:
        today = datetime.now(UTC).date()
        # (the other test may have given the page a required question: answer what it asks)
        public = (await visitor.get("/api/v1/booking-pages/intro", params={"handle": owner.handle})).json()
        slots = (await visitor.get("/api/v1/booking-pages/intro/slots", params={
            "handle": owner.handle, "start": today.isoformat(), "end": (today + timedelta(days=13)).isoformat()})).json()
        r = await visitor.post("/api/v1/booking-pages/intro/book", params={"handle": owner.handle}, json={
            "start": slots["slots"][-1]["start"], "name": "Vic", "email": "vic@example.com",
            "answers": {q["id"]: (q.get("options") or ["yes"])[0] for q in public["questions"] if q["required"]}})
        assert r.status_code == 201, r.text
        booked = r.json()["id"]
    created = page.get_by_role("row").filter(has_text="booking.created")
    await reload_until(page, lambda: created.filter(has_text="succeeded").count())
    await expect(created).to_have_count(1)

    # Replay since ten minutes ago: the booking's event is delivered again.
    since = (datetime.now(UTC) - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M")
    await page.get_by_label("Replay events since").fill(since)
    await page.get_by_role("button", name="Replay").click()
    await expect(page.get_by_role("alert").filter(has_text="Replay started")).to_be_visible()

    async def twice() -> bool:
        return await created.count() >= 2

    await reload_until(page, twice)
    await shot(page, "f7-webhook-replayed")
    # The receiver got the booking's event twice, the second time from the replay.
    again = [h for h in owner.hooks if h.get("type") == "booking.created" and h["data"]["id"] == booked]
    assert len(again) >= 2, owner.hooks
    await context.close()


async def test_a_session_cookie_on_the_public_booking_post_is_not_looked_at_and_session_writes_keep_csrf(
        owner: Owner) -> None:
    """The fix behind the owner booking in their own browser, and what it must not loosen."""
    today = datetime.now(UTC).date()
    public = (await owner.http.get("/api/v1/booking-pages/intro", params={"handle": owner.handle})).json()
    answers = {q["id"]: (q.get("options") or ["yes"])[0] for q in public["questions"] if q["required"]}
    slots = (await owner.http.get("/api/v1/booking-pages/intro/slots", params={
        "handle": owner.handle, "start": today.isoformat(), "end": (today + timedelta(days=13)).isoformat()})).json()
    # The owner's cookies ride along, without the CSRF token: the public booking is made all the same.
    booked = await owner.http.post("/api/v1/booking-pages/intro/book", params={"handle": owner.handle}, json={
        "start": slots["slots"][0]["start"], "name": "Sam Self", "email": "sam@example.com", "answers": answers})
    assert booked.status_code == 201, booked.text
    # Every write the session authorizes still needs the token: cancelling as the owner, editing the page.
    for method, path, body in (("POST", f"/api/v1/bookings/{booked.json()['id']}/cancel", {}),
                               ("PATCH", "/api/v1/booking-pages/intro", {"title": "Taken over"})):
        refused = await owner.http.request(method, path, json=body)
        assert refused.status_code == 403 and refused.json()["code"] == "csrf_failed", refused.text
    # A key sent to the public booking is still held to its scope.
    key = (await owner.call("POST", "/api-keys", {"name": "reader", "scope": "read"}))["key"]
    async with httpx.AsyncClient(base_url=owner.base, timeout=30) as keyed:
        r = await keyed.post("/api/v1/booking-pages/intro/book", params={"handle": owner.handle},
                             headers={"Authorization": f"Bearer {key}"},
                             json={"start": slots["slots"][1]["start"], "name": "K", "email": "k@example.com",
                                   "answers": answers})
        assert r.status_code == 403 and r.json()["code"] == "insufficient_scope", r.text
    await owner.call("POST", f"/bookings/{booked.json()['id']}/cancel", {})
