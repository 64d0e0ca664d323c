"""A poll's voting page in a real browser (Debian's Chromium), against the running platform: the
owner makes a poll in the dashboard and shares its link; a person who gets it (another browser,
not signed in, in another time zone) sees the times in their own zone, is told beside the field
what is missing, and votes; the owner's overlap shows that vote; once the owner decides, the link
shows the chosen time and no form. The page carries its strict CSP and asks no other origin for
anything; a link with a wrong token gets a plain 404 page. Screenshots go to
$CALMESH_TEST_ARTIFACTS/dashboard (poll-vote-*.png)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Browser, expect

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.dashboard import Recorder, shot, sign_up

pytestmark = pytest.mark.timeout(480)  # the first test starts the session stack too

VOTER_TZ = "America/New_York"


async def test_a_person_given_the_share_link_votes_in_their_time_zone_and_then_sees_the_decision(
        stack: Stack, browser: Browser) -> None:
    base = stack.gateway_url
    owner_context = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
    owner = await owner_context.new_page()

    async def accept(dialog: Any) -> None:
        await dialog.accept()

    owner.on("dialog", accept)
    await sign_up(owner, base, "vote")

    # The owner makes a poll of two options in the dashboard; its share link is the voting page.
    day = (datetime.now(UTC) + timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    first, second = day + timedelta(hours=15), day + timedelta(days=1, hours=18)
    await owner.get_by_role("link", name="Polls", exact=True).click()
    await owner.get_by_role("button", name="New poll").click()
    form = owner.locator("#new-poll")
    await form.get_by_label("Title").fill("Board dinner")
    await form.get_by_label("Duration").fill("60")
    await form.get_by_label("Option 1").fill(first.strftime("%Y-%m-%dT%H:%M"))
    await form.get_by_label("Option 2").fill(second.strftime("%Y-%m-%dT%H:%M"))
    await form.get_by_role("button", name="Create poll").click()
    await owner.get_by_role("row").filter(has_text="Board dinner").get_by_role("link").click()
    share = await owner.get_by_label("Voting link").text_content()
    assert share and share.startswith(f"{base}/polls/") and "/vote?token=" in share, share
    await expect(owner.get_by_role("button", name="Copy link")).to_be_visible()
    poll_url = owner.url

    # Someone else opens it: no session, another time zone; the times are theirs, the zone named.
    voter_context = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id=VOTER_TZ,
                                              locale="en-GB")
    voter = await voter_context.new_page()
    seen = Recorder(voter)
    response = await voter.goto(share)
    assert response is not None and response.status == 200
    csp = response.headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"):
        assert directive in csp, csp
    await expect(voter.get_by_role("heading", name="Board dinner")).to_be_visible()
    await expect(voter.locator("#tz-name")).to_have_text("America/New York")
    zone = ZoneInfo(VOTER_TZ)
    option1, option2 = voter.get_by_role("group", name="Option 1"), voter.get_by_role("group", name="Option 2")
    for group, start in ((option1, first), (option2, second)):
        local = start.astimezone(zone)
        await expect(group.locator("legend")).to_contain_text(f"{local.day} {local:%B %Y} at {local:%H:%M}")
    await shot(voter, "poll-vote-open")

    # Without a name: told so beside the field, the focus put there, nothing sent.
    await voter.get_by_role("button", name="Send vote").click()
    name = voter.get_by_label("Name")
    await expect(voter.locator("#name-error")).to_have_text("Enter your name.")
    await expect(name).to_have_attribute("aria-invalid", "true")
    await expect(name).to_be_focused()
    await name.fill("Vera Voter")
    await voter.get_by_label("Email").fill("vera@example.com")
    await option1.get_by_label("Yes").check()
    await option2.get_by_label("If need be").check()
    await voter.get_by_role("button", name="Send vote").click()
    await expect(voter.get_by_role("status")).to_contain_text("Thank you, Vera Voter: your vote is in")
    await expect(voter.locator("#name-error")).to_be_hidden()

    # The owner's overlap counts it: available for the first option, "if need be" for the second.
    await owner.goto(poll_url)
    row1 = owner.get_by_role("row").filter(has_text=first.strftime("%Y-%m-%d %H:%M"))
    row2 = owner.get_by_role("row").filter(has_text=second.strftime("%Y-%m-%d %H:%M"))
    await expect(row1.locator("td").nth(4)).to_have_text("Vera Voter")
    await expect(row2.locator("td").nth(4)).to_contain_text("if need be: Vera Voter")
    await row1.get_by_role("button", name="Decide").click()
    await expect(owner.locator(".facts")).to_contain_text("decided")

    # Decided: the link shows the chosen time in the voter's zone, and no form.
    await voter.reload()
    decided = voter.get_by_role("region", name="This poll is decided")
    local = first.astimezone(zone)
    await expect(decided).to_contain_text(f"{local.day} {local:%B %Y} at {local:%H:%M}")
    await expect(voter.locator("form")).to_have_count(0)
    await expect(voter.get_by_role("button", name="Send vote")).to_have_count(0)
    await shot(voter, "poll-vote-decided")
    foreign = [u for u in seen.urls if not u.startswith(base + "/")]
    assert not foreign, foreign

    # A wrong token: a clear 404 page, no stack trace.
    wrong = await voter.goto(share.split("token=")[0] + "token=not-the-token")
    assert wrong is not None and wrong.status == 404
    await expect(voter.get_by_role("heading", name="Poll not found")).to_be_visible()
    assert "Traceback" not in await voter.content()
    await voter_context.close()
    await owner_context.close()
