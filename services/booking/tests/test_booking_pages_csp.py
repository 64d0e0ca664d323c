"""The public booking page, the cancel page and booking's message pages run no inline script and
load nothing from another origin, under a Content-Security-Policy that says so and still lets any
site embed the page; their scripts and styles are fingerprinted files cached for a year (issue 10,
item 8)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from calmesh_booking import assets as booking_assets
from calmesh_booking.assets import ASSETS, Assets, fingerprinted
from calmesh_testing.booking import BookingHarness, User

pytestmark = pytest.mark.timeout(120)

ALL_WEEK = {d: [["09:00", "12:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
STATIC = Path(booking_assets.__file__).parent / "static"


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text inside each <script> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.scripts: list[tuple[dict[str, str], str]] = []
        self.styles: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.tags.append((tag, attributes))
        if tag == "script":
            self.scripts.append((attributes, ""))
            self._open = "script"
        elif tag == "style":
            self.styles.append("")
            self._open = "style"

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open == "script":
            attributes, text = self.scripts[-1]
            self.scripts[-1] = (attributes, text + data)
        elif self._open == "style":
            self.styles[-1] += data


def parse(html: str) -> Elements:
    parser = Elements()
    parser.feed(html)
    return parser


def assert_self_contained(response: httpx.Response) -> list[str]:
    """The page's policy, and that it needs no exception to it: no inline script, style or event
    handler, nothing from another origin. Returns the same-origin files the page loads."""
    assert response.headers["content-type"].startswith("text/html")
    csp = {d.split()[0]: d.split()[1:] for d in response.headers["content-security-policy"].split("; ")}
    assert csp["default-src"] == ["'none'"] and csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"] and csp["base-uri"] == ["'none'"] and csp["form-action"] == ["'self'"]
    assert csp["frame-ancestors"] == ["*"], "embeds (embed.js) must stay possible on any site"
    assert response.headers["x-content-type-options"] == "nosniff"
    page = parse(response.text)
    loaded: list[str] = []
    for attributes, text in page.scripts:
        if "src" in attributes:
            assert text.strip() == "", "a script with src has no inline body"
            assert attributes["src"].startswith("/") and not attributes["src"].startswith("//"), attributes
            loaded.append(attributes["src"])
        else:
            # The only inline <script> is data: browsers never execute application/json.
            assert attributes.get("type") == "application/json", (attributes, text[:80])
    assert page.styles == [], "no inline <style>"
    for tag, attributes in page.tags:
        assert "style" not in attributes, f"<{tag} style=…>"
        assert not [a for a in attributes if a.startswith("on")], f"<{tag}> has an inline event handler"
        for attr in ("src", "href"):
            ref = attributes.get(attr)
            if ref is None or (tag == "a" and attr == "href") or tag == "script":
                continue
            assert ref.startswith("/") and not ref.startswith("//"), f"<{tag} {attr}={ref}> is another origin"
            loaded.append(ref)
    assert "javascript:" not in response.text
    return loaded


async def make_page(bk: BookingHarness, user: User) -> None:
    r = await bk.client.post("/api/v1/booking-pages", headers=user.headers, json={
        "slug": "intro", "calendar_slug": "work", "title": "Intro call", "duration_minutes": 30,
        "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK})
    assert r.status_code == 201, r.text


async def book_one(bk: BookingHarness, user: User) -> dict[str, str]:
    day = (datetime.now(UTC) + timedelta(days=12)).date().isoformat()
    r = await bk.client.get("/api/v1/booking-pages/intro/slots", params={"handle": user.handle, "start": day, "end": day})
    start = r.json()["slots"][0]["start"]
    r = await bk.client.post("/api/v1/booking-pages/intro/book", params={"handle": user.handle},
                             json={"start": start, "name": "Vera Visitor", "email": "vera@example.org"})
    assert r.status_code == 201, r.text
    return r.json()


async def test_the_booking_cancel_and_message_pages_run_no_inline_script(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    await make_page(bk, ann)
    page = await bk.client.get(f"/{ann.handle}/intro", params={"embed": "1", "color": "#f97316"})
    assert page.status_code == 200
    loaded = assert_self_contained(page)
    assert sorted(loaded) == sorted([ASSETS.url("booking.css"), ASSETS.url("booking-page.js")])
    assert '"color": "#f97316"' in page.text  # the accent reaches the script as data, not as a style

    booking = await book_one(bk, ann)
    query = booking["cancel_url"].split("?", 1)[1]
    cancel = await bk.client.get(f"/{ann.handle}/intro?booking={booking['id']}&{query}")
    assert cancel.status_code == 200 and 'id="cancel-form"' in cancel.text
    assert sorted(assert_self_contained(cancel)) == sorted([ASSETS.url("booking.css"), ASSETS.url("cancel-page.js")])
    done = await bk.client.post(f"/api/v1/bookings/{booking['id']}/cancel?{query}", json={})
    assert done.status_code == 200, done.text
    cancelled = await bk.client.get(f"/{ann.handle}/intro?booking={booking['id']}&{query}")
    assert "already cancelled" in cancelled.text
    assert_self_contained(cancelled)

    for missing in (f"/{ann.handle}/nope", f"/{ann.handle}/intro?booking={booking['id']}&exp=1&sig=bad"):
        r = await bk.client.get(missing)
        assert r.status_code in (403, 404)
        assert assert_self_contained(r) == [ASSETS.url("booking.css")]


async def test_a_polls_share_link_opens_its_voting_page_until_it_is_decided(bk: BookingHarness) -> None:
    ann = await bk.new_user()
    start = (datetime.now(UTC) + timedelta(days=3)).replace(hour=9, minute=0, second=0, microsecond=0)
    r = await bk.client.post("/api/v1/polls", headers=ann.headers, json={
        "title": "Offsite <planning>", "duration_minutes": 60,
        "options": [{"start": f"{start + timedelta(days=d):%Y-%m-%dT%H:%M:%SZ}"} for d in (0, 1)]})
    assert r.status_code == 201, r.text
    poll = r.json()
    token = poll["vote_url"].split("token=")[1]
    assert poll["vote_page_url"] == f"{bk.public_base_url}/polls/{poll['id']}/vote?token={token}"
    path = poll["vote_page_url"].removeprefix(bk.public_base_url)

    page = await bk.client.get(path)
    assert page.status_code == 200
    assert sorted(assert_self_contained(page)) == sorted([ASSETS.url("booking.css"), ASSETS.url("poll-page.js")])
    assert "Offsite &lt;planning&gt;" in page.text  # escaped, never markup
    tags = parse(page.text).tags
    radios = [a for t, a in tags if t == "input" and a.get("type") == "radio"]
    assert sorted((a["data-option"], a["value"]) for a in radios) == sorted(
        (o["id"], v) for o in poll["options"] for v in ("yes", "maybe", "no"))
    assert all(any(t == "label" and la.get("for") == a["id"] for t, la in tags) for a in radios)  # each labelled
    assert f'"api": "/api/v1/polls/{poll["id"]}/votes?token={token}"' in page.text
    assert 'id="vote-form"' in page.text and "Send vote" in page.text

    for wrong in (f"/polls/{poll['id']}/vote?token=wrong", f"/polls/{poll['id']}/vote", "/polls/poll_nope/vote?token=x"):
        missing = await bk.client.get(wrong)
        assert missing.status_code == 404 and "Poll not found" in missing.text, wrong
        assert assert_self_contained(missing) == [ASSETS.url("booking.css")]

    chosen = poll["options"][1]
    d = await bk.client.post(f"/api/v1/polls/{poll['id']}/decide", json={"option_id": chosen["id"]}, headers=ann.headers)
    assert d.status_code == 200, d.text
    decided = await bk.client.get(path)
    assert decided.status_code == 200 and "This poll is decided" in decided.text
    assert 'id="vote-form"' not in decided.text and 'type="radio"' not in decided.text
    assert f'<time datetime="{chosen["start"]}"' in decided.text
    assert_self_contained(decided)


async def test_every_asset_a_page_loads_is_served_immutable_under_its_content_hash(bk: BookingHarness) -> None:
    assert set(ASSETS.by_source) == {"booking-page.js", "cancel-page.js", "questions.js", "poll-page.js", "booking.css"}
    for source, asset in ASSETS.by_source.items():
        r = await bk.client.get(asset.url)
        assert r.status_code == 200, asset.url
        assert r.content == (STATIC / source).read_bytes()
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert r.headers["x-content-type-options"] == "nosniff"
        kind = "text/css" if source.endswith(".css") else "text/javascript"
        assert r.headers["content-type"].split(";")[0] == kind
        stem, _, ext = source.rpartition(".")
        assert asset.name == f"{stem}.{hashlib.sha256(r.content).hexdigest()[:16]}.{ext}"
    for unknown in ("booking-page.js", "booking-page.0000000000000000.js", "..%2Fapi.py"):
        r = await bk.client.get(f"/assets/booking/{unknown}")
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json"), unknown


def test_a_changed_script_gets_a_new_name_and_an_unchanged_one_keeps_its_name() -> None:
    body = (STATIC / "booking-page.js").read_bytes()
    same = Assets({"booking-page.js": body})
    changed = Assets({"booking-page.js": body + b"\n// next release\n"})
    assert same.url("booking-page.js") == ASSETS.url("booking-page.js")
    assert changed.url("booking-page.js") != ASSETS.url("booking-page.js")
    assert changed.get(ASSETS.by_source["booking-page.js"].name) is None  # the old name is gone with it
    assert fingerprinted("booking.css", b"a") != fingerprinted("booking.css", b"b")
