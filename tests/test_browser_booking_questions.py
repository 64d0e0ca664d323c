"""A real browser (Playwright driving Debian's Chromium) answers a booking page's questions on the
public page, through the gateway of the running platform, on a CalDAV (Radicale) calendar: what it
misses is shown beside the field before anything is sent, what the server refuses (422
``answers.<id>``) is shown beside its field, and the booking made keeps the answers. Screenshots go
to $CALMESH_TEST_ARTIFACTS."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, expect

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.booking import PlatformOwner, sign_up_with_caldav
from calmesh_testing.browser import artifacts
from calmesh_testing.radicale import Radicale

pytestmark = pytest.mark.timeout(180)

ALL_WEEK = {d: [["08:00", "20:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
QUESTIONS = [
    {"id": "company", "label": "Company", "type": "text", "required": True},
    {"id": "team_size", "label": "Team size", "type": "select", "required": True, "options": ["1-10", "11-50", "51+"]},
    {"id": "phone", "label": "Phone", "type": "phone"},
    {"id": "agenda", "label": "Agenda", "type": "textarea"},
    {"id": "consent", "label": "I agree to be recorded", "type": "checkbox", "required": True},
]



@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radicale]:
    server = Radicale(tmp_path_factory.mktemp("radicale-browser-questions")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def owner(stack: Stack, radicale: Radicale) -> PlatformOwner:
    owner = await sign_up_with_caldav(stack.gateway_url, radicale)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        r = await gw.post("/api/v1/booking-pages", headers=owner.auth, json={
            "slug": "asks", "calendar_slug": "work", "title": "Discovery call", "duration_minutes": 30,
            "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK, "min_notice_minutes": 60,
            "questions": QUESTIONS})
    assert r.status_code == 201, r.text
    return owner


async def bookings_of(stack: Stack, owner: PlatformOwner) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        r = await gw.get("/api/v1/bookings", headers=owner.auth, params={"limit": 200})
    assert r.status_code == 200, r.text
    return r.json()["data"]


async def test_a_visitor_answers_the_questions_and_sees_what_is_wrong_beside_each_field(
        stack: Stack, owner: PlatformOwner, browser: Browser) -> None:
    context = await browser.new_context(timezone_id="Europe/Amsterdam", viewport={"width": 390, "height": 900})
    page = await context.new_page()
    await page.goto(f"{stack.gateway_url}/{owner.handle}/asks")
    day = page.locator("#days button:not([disabled])").first
    await expect(day).to_be_visible(timeout=15_000)
    await day.click()
    await page.locator("#slots button").first.click()
    await page.get_by_label("Name").fill("Bea Browser")
    await page.get_by_label("Email", exact=True).fill("bea@example.org")

    # The questions are labelled form fields: each found by its label.
    company = page.get_by_label("Company")
    await expect(company).to_be_visible()
    await expect(company).to_have_attribute("required", "")
    await expect(page.get_by_label("Team size")).to_have_attribute("required", "")
    await expect(page.get_by_label("I agree to be recorded")).to_have_attribute("type", "checkbox")

    # A required answer left out is shown beside its field, and nothing is sent.
    await page.get_by_role("button", name="Confirm booking").click()
    await expect(page.locator("#q-company-error")).to_be_visible()
    await expect(company).to_be_focused()
    await expect(company).to_have_attribute("aria-invalid", "true")
    assert not [b for b in await bookings_of(stack, owner) if b["email"] == "bea@example.org"]

    await company.fill("Acme BV")
    await page.get_by_label("Team size").select_option("11-50")
    await page.get_by_label("Agenda").fill("Pricing\nThe API")
    await page.get_by_label("I agree to be recorded").check()
    # What only the server checks (a phone number) comes back as a 422 shown beside its field.
    await page.get_by_label("Phone").fill("call me maybe")
    await page.get_by_role("button", name="Confirm booking").click()
    phone_error = page.locator("#q-phone-error")
    await expect(phone_error).to_be_visible(timeout=15_000)
    await expect(phone_error).to_have_text("This answer is not a phone number.")
    await expect(page.locator("#status")).to_have_text("Please check the answers marked above.")
    await expect(page.get_by_label("Phone")).to_be_focused()
    await expect(page.locator("#q-company-error")).to_be_hidden()
    await page.screenshot(path=str(artifacts("browser") / "questions-error.png"), full_page=True)

    await page.get_by_label("Phone").fill("+31 20 123 4567")
    await page.get_by_role("button", name="Confirm booking").click()
    await expect(page.locator("#step-done")).to_be_visible(timeout=15_000)
    await page.screenshot(path=str(artifacts("browser") / "questions-booked.png"), full_page=True)

    mine = [b for b in await bookings_of(stack, owner) if b["email"] == "bea@example.org"]
    assert len(mine) == 1
    assert mine[0]["answers"] == {"company": "Acme BV", "team_size": "11-50", "phone": "+31 20 123 4567",
                                  "agenda": "Pricing\nThe API", "consent": True}
    await context.close()
