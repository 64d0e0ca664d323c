"""The dashboard at /app in a real browser (Playwright driving Debian's Chromium), against the
running platform: a newcomer signs up, makes an API key (shown once), connects an iCal feed and a
CalDAV calendar (Radicale) through the forms, builds a unified calendar of both and sees the week
with the overlap marked as a conflict. Every request the browser makes stays on CalMesh's origin;
every page carries the CSP; a cookie-authenticated POST without the CSRF token is refused.
Screenshots of each page go to $CALMESH_TEST_ARTIFACTS/dashboard."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, expect

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.dashboard import PAGE_BUDGET, Recorder, book_first_slot, shot, this_week_at
from calmesh_testing.radicale import Radicale

pytestmark = pytest.mark.timeout(480)  # the first test starts the session stack too


async def test_a_newcomer_signs_up_connects_two_calendars_and_sees_the_merged_week(
        stack: Stack, browser: Browser, radicale: Radicale, feed: str) -> None:
    base = stack.gateway_url
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
    page = await context.new_page()
    seen = Recorder(page)
    dialogs: list[str] = []

    async def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.accept()

    page.on("dialog", accept)
    suffix = uuid.uuid4().hex[:8]

    # Signed out, /app sends the visitor to sign in; the page carries the CSP.
    response = await page.goto(f"{base}/app")
    assert page.url == f"{base}/app/login"
    csp = response.headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "form-action 'self'"):
        assert directive in csp, csp
    await shot(page, "01-login")

    # Sign up: a handle the API refuses is shown beside the Handle field; then the account is made.
    await page.get_by_role("link", name="Create an account").click()
    await page.get_by_label("Email").fill(f"dash-{suffix}@example.com")
    await page.get_by_label("Password").fill("a long enough passphrase")
    await page.get_by_label("Handle").fill("No Spaces Allowed")
    await page.get_by_label("Time zone").select_option("UTC")
    await page.get_by_role("button", name="Create account").click()
    handle_field = page.get_by_label("Handle")
    await expect(handle_field).to_have_attribute("aria-invalid", "true")
    await expect(page.locator('[data-field="handle"] .field-error')).to_be_visible()
    await shot(page, "02-signup-error")
    await handle_field.fill(f"dash-{suffix}")
    await page.get_by_role("button", name="Create account").click()
    await page.wait_for_url(f"{base}/app/connections")
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    for name in ("Connections", "Calendars", "Booking pages", "Bookings", "Polls", "API keys", "Webhooks", "Billing"):
        await expect(page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)).to_be_visible()

    # A cookie-authenticated POST without the CSRF token is refused with 403, not a redirect.
    refused = await context.request.post(f"{base}/api/v1/api-keys", data={"name": "x", "scope": "read"},
                                         max_redirects=0)
    assert refused.status == 403 and (await refused.json())["code"] == "csrf_failed"

    # An API key, by keyboard: shown once with a warning, gone after a reload; listed by prefix.
    await page.get_by_role("link", name="API keys").click()
    await page.get_by_label("Name").focus()
    await page.keyboard.type("laptop")
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Scope")).to_be_focused()
    await page.get_by_label("Scope").select_option("full")
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("button", name="Create key")).to_be_focused()
    await page.keyboard.press("Enter")
    new_key = page.get_by_label("New API key")
    await expect(new_key).to_have_text(re.compile(r"^cm_live_\S{20,}$"))
    key = await new_key.text_content()
    await expect(page.get_by_text("shown only once")).to_be_visible()
    row = page.get_by_role("row").filter(has_text="laptop")
    await expect(row).to_contain_text("full")
    await expect(row).to_contain_text(key[:12])
    await shot(page, "03-api-key-shown-once")
    await page.reload()
    await expect(page.get_by_label("New API key")).to_be_hidden()
    assert key not in await page.content()

    # Connections: a bad URL is refused beside the field; then the feed and the CalDAV calendar.
    await page.get_by_role("link", name="Connections").click()
    ical = page.locator("#add-ical")
    await ical.get_by_label("iCal URL").fill("not a url")
    await ical.get_by_role("button", name="Add iCal feed").click()
    await expect(ical.get_by_label("iCal URL")).to_have_attribute("aria-invalid", "true")
    await shot(page, "04-ical-error")
    await ical.get_by_label("iCal URL").fill(feed)
    await ical.get_by_role("button", name="Add iCal feed").click()
    await expect(page.get_by_role("row").filter(has_text="127.0.0.1")).to_have_count(1)

    calendar = f"home-{suffix}"
    radicale.make_calendar(calendar, "Home")
    radicale.put_event(calendar, "dentist@test", this_week_at(2, 10, 30), this_week_at(2, 11, 30), "Dentist")
    caldav = page.locator("#add-caldav")
    await caldav.get_by_label("CalDAV URL").fill(radicale.calendar_url(calendar))
    await caldav.get_by_label("Username").fill(radicale.username)
    await caldav.get_by_label("Password").fill("wrong password")
    await caldav.get_by_role("button", name="Add CalDAV").click()
    await expect(caldav.locator(".field-error, .form-alert:not([hidden])").first).to_be_visible()
    await caldav.get_by_label("Password").fill(radicale.password)
    await caldav.get_by_role("button", name="Add CalDAV").click()
    rows = page.get_by_role("row").filter(has=page.get_by_role("button", name="Sync now"))
    await expect(rows).to_have_count(2)
    deadline = time.monotonic() + 60
    while await page.get_by_role("row").filter(has_text="active").count() < 2:
        assert time.monotonic() < deadline, await page.content()
        await page.wait_for_timeout(500)
        await page.reload()
    await page.get_by_role("row").filter(has_text="ical").get_by_role("button", name="Sync now").click()
    await expect(page.get_by_role("alert").filter(has_text="Sync started")).to_be_visible()
    await shot(page, "05-connections")

    # A unified calendar of both sources, then its week: both meetings, the overlap marked.
    await page.get_by_role("link", name="Calendars").click()
    await page.get_by_role("button", name="New calendar").click()
    form = page.locator("#new-calendar")
    await form.get_by_label("Name").fill("Everything")
    await form.get_by_label("Slug").fill("everything")
    await form.get_by_label("Time zone").select_option("UTC")
    boxes = form.get_by_role("checkbox")
    await expect(boxes).to_have_count(2)
    for i in range(2):
        await boxes.nth(i).check()
    await shot(page, "06-new-calendar")
    await form.get_by_role("button", name="Create calendar").click()
    # Its sources in order (the first writable takes new events): move the second up; rename it.
    cal_row = page.get_by_role("row").filter(has_text="everything")
    sources = cal_row.locator("ol.sources li")
    await expect(sources).to_have_count(2)
    names = await sources.locator(".source-name").all_text_contents()
    await cal_row.get_by_role("button", name=f"Move up {names[1]}").click()
    await expect(sources.first).to_contain_text(names[1])
    await expect(sources.nth(1)).to_contain_text(names[0])
    await cal_row.get_by_label("New name for").fill("Everything merged")
    await cal_row.get_by_role("button", name="Rename").click()
    await expect(page.get_by_role("link", name="Everything merged")).to_be_visible()
    await page.reload()
    await expect(sources.first).to_contain_text(names[1])
    await page.get_by_role("link", name="Everything").click()
    await page.wait_for_url(f"{base}/app/calendars/everything")
    team = page.get_by_role("button", name="Team sync")
    deadline = time.monotonic() + 60
    while not (await team.count() and await page.get_by_role("button", name="Dentist").count()):
        assert time.monotonic() < deadline, await page.content()
        await page.wait_for_timeout(500)
        await page.reload()
    await expect(team).to_have_accessible_name(re.compile("conflict"))
    await expect(page.get_by_role("button", name="Dentist")).to_have_accessible_name(re.compile("conflict"))
    lunch = page.get_by_role("button", name="Lunch with Ana")
    await expect(lunch).to_be_visible()
    assert "conflict" not in (await lunch.get_attribute("aria-label") or "")
    await team.click()
    await expect(page.locator("#event-detail")).to_contain_text("Wed")
    await expect(page.locator("#detail-conflict")).to_be_visible()
    await shot(page, "07-week")

    # Previous / next / today change the URL; ?week= opens the week holding that day.
    await page.get_by_role("link", name="Next week").click()
    await expect(page).to_have_url(re.compile(r"\?week=\d{4}-\d{2}-\d{2}"))
    await expect(page.get_by_role("button", name="Team sync")).to_have_count(0)
    await page.get_by_role("link", name="Today").click()
    await expect(page.get_by_role("button", name="Team sync")).to_be_visible()
    await page.goto(f"{base}/app/calendars/everything?week={this_week_at(4, 0).date().isoformat()}&tz=Asia/Tokyo")
    # Wednesday 10:00 UTC is 19:00 in Tokyo.
    await expect(page.get_by_role("button", name="Team sync")).to_have_accessible_name(re.compile("19:00"))

    # A booking page on the unified calendar: its public link and embed snippet are listed.
    await page.get_by_role("link", name="Booking pages").click()
    await page.get_by_role("button", name="New booking page").click()
    form = page.locator("#new-page")
    await form.get_by_label("Title").fill("Intro call")
    await form.get_by_label("Slug").fill("intro")
    await form.get_by_label("Calendar").select_option("everything")
    await form.get_by_label("Duration").fill("30")
    for day in ("Saturday", "Sunday"):
        await form.get_by_label(day, exact=True).check()
    await form.get_by_label("Days ahead").fill("0")
    await form.get_by_role("button", name="Create booking page").click()
    await expect(form.locator('[data-field="max_days_ahead"] .field-error')).to_be_visible()
    await form.get_by_label("Days ahead").fill("30")
    await form.get_by_label("Minimum notice").fill("0")
    await form.get_by_role("button", name="Create booking page").click()
    public_url = f"{base}/dash-{suffix}/intro"
    page_row = page.get_by_role("row").filter(has_text="Intro call")
    await expect(page_row.get_by_role("link", name=public_url)).to_be_visible()
    await expect(page_row.locator("code")).to_contain_text('data-calmesh-slug="intro"')
    await shot(page, "08-booking-pages")

    # A visitor (another browser, not signed in) books it on the public page; the owner sees the
    # booking and cancels it.
    visitor_context = await browser.new_context(timezone_id="UTC")
    visitor = await visitor_context.new_page()
    await book_first_slot(visitor, public_url, "Vera Visitor", "vera@example.com")
    await visitor_context.close()
    await page.get_by_role("link", name="Bookings").click()
    booking = page.get_by_role("row").filter(has_text="Vera Visitor")
    await expect(booking).to_contain_text("confirmed")
    await shot(page, "09-bookings")
    await booking.get_by_role("button", name="Cancel").click()
    await expect(page.get_by_role("row").filter(has_text="Vera Visitor")).to_contain_text("cancelled")
    await page.get_by_label("Status").select_option("confirmed")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"status=confirmed"))
    await expect(page.get_by_role("row").filter(has_text="Vera Visitor")).to_have_count(0)

    # A poll with two options on the unified calendar: a bad one is shown beside the options; two
    # people vote through the share link; the overlap names the best option; deciding closes it.
    await page.get_by_role("link", name="Polls", exact=True).click()
    await page.get_by_role("button", name="New poll").click()
    form = page.locator("#new-poll")
    await form.get_by_label("Title").fill("Team offsite")
    await form.get_by_label("Duration").fill("60")
    await form.get_by_label("Calendar").select_option("everything")
    await form.get_by_role("button", name="Create poll").click()
    await expect(form.locator('[data-field="options"] .field-error')).to_be_visible()
    first, second = this_week_at(7, 9), this_week_at(8, 14)
    await form.get_by_label("Option 1").fill(first.strftime("%Y-%m-%dT%H:%M"))
    await form.get_by_label("Option 2").fill(second.strftime("%Y-%m-%dT%H:%M"))
    await form.get_by_role("button", name="Create poll").click()
    await page.get_by_role("row").filter(has_text="Team offsite").get_by_role("link").click()
    share = await page.get_by_label("Voting link").text_content()
    assert share and share.startswith(f"{base}/polls/")  # the voting page (tests/test_browser_poll_page.py)
    options = page.get_by_role("row").filter(has=page.get_by_role("button", name="Decide"))
    await expect(options).to_have_count(2)
    poll_id = share.split("/polls/")[1].split("/")[0]
    async with httpx.AsyncClient(timeout=10) as voter:
        got = (await voter.get(f"{base}/api/v1/polls/{poll_id}", params={"token": share.split("token=")[1]})).json()
        a, b = (o["id"] for o in got["options"])
        for name, choices in (("Ann", {a: "no", b: "yes"}), ("Bo", {a: "yes", b: "yes"})):
            r = await voter.post(got["vote_url"], json={"name": name, "choices": choices})
            assert r.status_code == 201, r.text
    await page.reload()
    best = page.get_by_role("row").filter(has_text="best")
    await expect(best).to_contain_text("Ann, Bo")
    await expect(best).to_contain_text(second.strftime("%Y-%m-%d %H:%M"))
    await shot(page, "10-poll")
    await best.get_by_role("button", name="Decide").click()
    await expect(page.locator(".facts")).to_contain_text("decided")
    await expect(page.get_by_role("button", name="Decide")).to_have_count(0)

    # A webhook: the secret shown once; a test delivery is listed with its response code.
    hook_url = feed.replace("/team.ics", "/hook")
    await page.get_by_role("link", name="Webhooks").click()
    await page.get_by_label("URL").fill(hook_url)
    await page.get_by_label("booking.created").check()
    await page.get_by_role("button", name="Create webhook").click()
    secret = page.get_by_label("Signing secret")
    await expect(secret).to_have_text(re.compile(r"^whsec_"))
    await page.get_by_role("row").filter(has_text=hook_url).get_by_role("link").click()
    await page.get_by_role("button", name="Send test").click()
    deadline = time.monotonic() + 30
    while not await page.get_by_role("row").filter(has_text="webhook.test").filter(has_text="204").count():
        assert time.monotonic() < deadline, await page.content()
        await page.wait_for_timeout(500)
        await page.reload()
    await shot(page, "11-webhook")
    # Retry a delivery; rotate the secret (after a confirmation): the new one is shown once.
    await page.get_by_role("row").filter(has_text="webhook.test").first.get_by_role("button", name="Retry").click()
    await expect(page.get_by_role("alert").filter(has_text="Retry sent")).to_be_visible()
    old_secret = await secret.text_content() if await secret.count() else ""
    await page.get_by_role("button", name="Rotate secret").click()
    rotated = page.get_by_label("Signing secret")
    await expect(rotated).to_have_text(re.compile(r"^whsec_"))
    assert await rotated.text_content() != old_secret
    await page.reload()
    await expect(page.get_by_label("Signing secret")).to_be_hidden()

    # Billing: the plan and each limit's usage as "N of M".
    await page.get_by_role("link", name="Billing").click()
    await expect(page.locator(".plan")).to_have_text("free")
    await expect(page.locator(".usage")).to_contain_text("2 of 3")
    await expect(page.locator(".usage")).to_contain_text("1 of 2")
    await shot(page, "12-billing")

    # The other pages render with the navigation; the profile says what cannot be changed yet.
    for path in ("profile", "booking-pages", "bookings", "polls", "webhooks", "billing"):
        await page.goto(f"{base}/app/{path}")
        await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    await shot(page, "13-last-page")

    # Revoke the key (after a confirmation), then sign out.
    await page.goto(f"{base}/app/api-keys")
    await page.get_by_role("row").filter(has_text="laptop").get_by_role("button", name="Revoke").click()
    await expect(page.get_by_role("row").filter(has_text="laptop")).to_have_count(0)
    assert any("Revoke" in d for d in dialogs)
    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{base}/app/login")
    await page.goto(f"{base}/app/api-keys")
    assert page.url == f"{base}/app/login"

    # A wrong password is an alert on the sign-in page.
    await page.get_by_label("Email").fill(f"dash-{suffix}@example.com")
    await page.get_by_label("Password").fill("not the passphrase")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#login .form-alert")).to_be_visible()
    await shot(page, "14-login-error")

    # Nothing but CalMesh's own origin was ever asked; every page stayed under the budget.
    foreign = [u for u in seen.urls if not (u.startswith(base + "/") or u.startswith("data:"))]
    assert not foreign, foreign
    pages = {u: n for u, n in seen.sizes.items() if "/app" in u}
    assets = sum(n for u, n in pages.items() if "/app/assets/" in u)
    for url, size in pages.items():
        if "/app/assets/" not in url:
            assert size + assets < PAGE_BUDGET, (url, size, assets)
    await context.close()


async def test_the_assets_are_fingerprinted_and_cached_and_unknown_ones_are_404(stack: Stack) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as http:
        login = await http.get("/app/login")
        assert login.status_code == 200
        names = re.findall(r'(/app/assets/[a-z]+\.[0-9a-f]{12}\.(?:js|css))', login.text)
        assert len(names) == 2, login.text
        for name in names:
            r = await http.get(name)
            assert r.status_code == 200
            assert "immutable" in r.headers["cache-control"]
            assert r.headers["x-content-type-options"] == "nosniff"
        missing = await http.get("/app/assets/app.000000000000.js")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
        # Keys are not for the dashboard's pages: a key is refused there, not rendered.
        keyed = await http.get("/app/connections", headers={"Authorization": "Bearer cm_live_" + "x" * 40})
        assert keyed.status_code == 401
