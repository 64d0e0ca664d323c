"""Booking questions end to end: the whole platform as processes (gateway, connections, sync workers,
availability, booking, webhooks) and a real CalDAV server (Radicale) behind the unified calendar.

What a user relies on (docs/api-guide.md, "Questions"): a page's questions are checked when it is created or
changed (422 naming the broken field); a visitor reads them without credentials from the page's
public part; a booking's answers are checked against them (422 naming ``answers.<id>``), kept on the
booking, written into the calendar event's description on the CalDAV server, sent in the
``booking.created`` webhook and in the owner's confirmation mail; a booking that confirms a hold is
held to the same questions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import icalendar
import pytest

from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.booking import PlatformOwner, sign_up_with_caldav
from calmesh_testing.radicale import Radicale
from calmesh_testing.receiver import Receiver
from calmesh_testing.servers import serve
from calmesh_testing.wait import wait_for

pytestmark = pytest.mark.timeout(300)

AMS = ZoneInfo("Europe/Amsterdam")
ALL_WEEK = {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}

QUESTIONS = [
    {"id": "company", "label": "Company", "type": "text", "required": True},
    {"id": "agenda", "label": "What would you like to discuss?", "type": "textarea"},
    {"id": "work_email", "label": "Work email", "type": "email"},
    {"id": "phone", "label": "Phone", "type": "phone"},
    {"id": "team_size", "label": "Team size", "type": "select", "required": True, "options": ["1-10", "11-50", "51+"]},
    {"id": "consent", "label": "I agree to be recorded", "type": "checkbox", "required": True},
]
GOOD_ANSWERS = {"company": "Acme BV", "agenda": "Pricing\nand the API", "work_email": "quinn@acme.example",
                "phone": "+31 20 123 4567", "team_size": "11-50", "consent": True}


@pytest.fixture(scope="module")
def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Radicale]:
    server = Radicale(tmp_path_factory.mktemp("radicale-questions")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def owner(stack: Stack, radicale: Radicale) -> PlatformOwner:
    return await sign_up_with_caldav(stack.gateway_url, radicale)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    r = Receiver()
    async with serve(r) as url:
        yield r, url

def on(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=AMS)


def z(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def future_day(days: int) -> date:
    return (datetime.now(AMS) + timedelta(days=days)).date()


def page_body(slug: str, **extra: Any) -> dict[str, Any]:
    return {"slug": slug, "calendar_slug": "work", "title": "Discovery call", "duration_minutes": 30,
            "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK, "description": "A first talk.", **extra}


def fields_of(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, r.text
    body = r.json()
    assert r.headers["content-type"].startswith("application/problem+json") and body["code"] == "validation_error"
    return [e["field"] for e in body["errors"]]


def descriptions(owner: PlatformOwner, booking_id: str) -> list[str]:
    """DESCRIPTION of the booking's event(s) on the Radicale calendar (read from its storage)."""
    out = []
    for text in owner.radicale.event_files(owner.calendar):
        for event in icalendar.Calendar.from_ical(text).walk("VEVENT"):
            if booking_id in str(event.get("UID")):
                out.append(str(event.get("DESCRIPTION", "")))
    return out


async def test_questions_are_checked_on_the_page_and_shown_to_anyone_with_the_handle(
        stack: Stack, owner: PlatformOwner) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        bad = [
            ({"id": "Company", "label": "Company", "type": "text"}, "questions[0].id"),
            ({"id": "x" * 41, "label": "Company", "type": "text"}, "questions[0].id"),
            ({"id": "size", "label": "Size", "type": "select"}, "questions[0].options"),
            ({"id": "size", "label": "Size", "type": "select", "options": []}, "questions[0].options"),
            ({"id": "size", "label": "Size", "type": "select", "options": [f"o{i}" for i in range(51)]},
             "questions[0].options"),
            ({"id": "size", "label": "Size", "type": "text", "options": ["a"]}, "questions[0].options"),
            ({"id": "size", "label": "Size", "type": "radio"}, "questions[0].type"),
            ({"id": "size", "label": "", "type": "text"}, "questions[0].label"),
            ({"id": "size", "label": "L" * 201, "type": "text"}, "questions[0].label"),
        ]
        for question, field in bad:
            r = await gw.post("/api/v1/booking-pages", headers=owner.auth, json=page_body("q-bad", questions=[question]))
            assert fields_of(r) == [field], (question, r.text)
        dup = [{"id": "a", "label": "A", "type": "text"}, {"id": "b", "label": "B", "type": "text"},
               {"id": "a", "label": "A again", "type": "text"}]
        r = await gw.post("/api/v1/booking-pages", headers=owner.auth, json=page_body("q-bad", questions=dup))
        assert fields_of(r) == ["questions[2].id"]
        many = [{"id": f"q{i}", "label": f"Q {i}", "type": "text"} for i in range(21)]
        r = await gw.post("/api/v1/booking-pages", headers=owner.auth, json=page_body("q-bad", questions=many))
        assert fields_of(r) == ["questions"]
        # None of those made a page.
        assert (await gw.get("/api/v1/booking-pages/q-bad", headers=owner.auth)).status_code == 404

        r = await gw.post("/api/v1/booking-pages", headers=owner.auth, json=page_body("discovery", questions=QUESTIONS))
        assert r.status_code == 201, r.text
        page = r.json()
        assert page["questions"] == [{"required": False, **q} for q in QUESTIONS]

        # A PATCH is held to the same rules, and leaves the page as it was when refused.
        r = await gw.patch("/api/v1/booking-pages/discovery", headers=owner.auth,
                           json={"questions": [*QUESTIONS, {"id": "extra", "label": "Extra", "type": "checkbox",
                                                            "options": ["yes"]}]})
        assert fields_of(r) == [f"questions[{len(QUESTIONS)}].options"]
        assert (await gw.get("/api/v1/booking-pages/discovery", headers=owner.auth)).json()["questions"] == \
            page["questions"]

        # Anyone, without credentials: the page's public part, questions included.
        r = await gw.get("/api/v1/booking-pages/discovery", params={"handle": owner.handle})
        assert r.status_code == 200, r.text
        assert r.json() == {"title": "Discovery call", "description": "A first talk.", "duration_minutes": 30,
                            "timezone": "Europe/Amsterdam", "questions": page["questions"]}
        assert (await gw.get("/api/v1/booking-pages/nope", params={"handle": owner.handle})).status_code == 404
        # Without the handle the page is the owner's business.
        assert (await gw.get("/api/v1/booking-pages/discovery")).status_code == 401

        # The public HTML page asks them as labelled form fields.
        html = (await gw.get(f"/{owner.handle}/discovery")).text
        assert '<label for="q-company">Company' in html and 'id="q-company"' in html
        assert '<select id="q-team_size" name="team_size" required' in html and '<option value="51+">51+</option>' in html
        assert 'type="checkbox" id="q-consent" name="consent" required' in html
        assert '<textarea id="q-agenda" name="agenda"' in html and 'type="email" id="q-work_email"' in html


async def test_answers_are_checked_kept_written_to_the_caldav_event_and_sent_in_booking_created(
        stack: Stack, owner: PlatformOwner, receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    day = future_day(10)
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        if (await gw.get("/api/v1/booking-pages/discovery", headers=owner.auth)).status_code == 404:
            r = await gw.post("/api/v1/booking-pages", headers=owner.auth,
                              json=page_body("discovery", questions=QUESTIONS))
            assert r.status_code == 201, r.text
        w = await gw.post("/api/v1/webhooks", headers=owner.auth,
                          json={"url": f"{url}/hooks", "event_types": ["booking.created"]})
        assert w.status_code == 201, w.text

        async def book(start: str, answers: Any, **extra: Any) -> httpx.Response:
            return await gw.post("/api/v1/booking-pages/discovery/book", params={"handle": owner.handle},
                                 json={"start": start, "name": "Quinn Questioned", "email": "quinn@example.org",
                                       "answers": answers, **extra})

        s = z(on(day, 10))
        cases = [
            ({k: v for k, v in GOOD_ANSWERS.items() if k != "company"}, ["answers.company"]),  # required, missing
            ({**GOOD_ANSWERS, "company": "   "}, ["answers.company"]),  # required, blank
            ({**GOOD_ANSWERS, "consent": False}, ["answers.consent"]),  # a required checkbox left unchecked
            ({**GOOD_ANSWERS, "shoe_size": "44"}, ["answers.shoe_size"]),  # not a question of the page
            ({**GOOD_ANSWERS, "consent": "yes"}, ["answers.consent"]),  # a checkbox takes a boolean
            ({**GOOD_ANSWERS, "company": True}, ["answers.company"]),  # text takes a string
            ({**GOOD_ANSWERS, "company": 42}, ["answers.company"]),
            ({**GOOD_ANSWERS, "team_size": "12"}, ["answers.team_size"]),  # outside the options
            ({**GOOD_ANSWERS, "work_email": "not-an-address"}, ["answers.work_email"]),
            ({**GOOD_ANSWERS, "phone": "call me maybe"}, ["answers.phone"]),
            ({**GOOD_ANSWERS, "company": "x" * 1001}, ["answers.company"]),  # text: at most 1000
            ({**GOOD_ANSWERS, "agenda": "x" * 5001}, ["answers.agenda"]),  # textarea: at most 5000
            ({"company": "", "team_size": "nope", "consent": False, "other": 1},
             ["answers.company", "answers.team_size", "answers.consent", "answers.other"]),
        ]
        for answers, expected in cases:
            assert fields_of(await book(s, answers)) == expected, answers
        # Name and email are reported with the answers, in one answer.
        assert fields_of(await book(s, {}, email="nope")) == ["email", "answers.company", "answers.team_size",
                                                              "answers.consent"]
        # None of the refusals took the slot.
        offered = (await gw.get("/api/v1/booking-pages/discovery/slots", params={
            "handle": owner.handle, "start": day.isoformat(), "end": day.isoformat()})).json()["slots"]
        assert s in [x["start"] for x in offered]
        # The longest allowed answers are fine (and kept in full).
        r = await book(z(on(day, 15)), {**GOOD_ANSWERS, "company": "c" * 1000, "agenda": "a" * 5000})
        assert r.status_code == 201, r.text

        r = await book(s, GOOD_ANSWERS)
        assert r.status_code == 201, r.text
        booking_id = r.json()["id"]
        got = (await gw.get(f"/api/v1/bookings/{booking_id}", headers=owner.auth)).json()
        assert got["answers"] == {**GOOD_ANSWERS, "agenda": "Pricing\nand the API"}
        listed = (await gw.get("/api/v1/bookings", headers=owner.auth)).json()["data"]
        assert next(b for b in listed if b["id"] == booking_id)["answers"] == got["answers"]

        # The CalDAV event's description: one "label: value" line per answer.
        found = await wait_for(lambda: _async(descriptions(owner, booking_id)), what="the booking's event on Radicale")
        assert len(found) == 1
        description = found[0]
        for line in ("Company: Acme BV", "What would you like to discuss?: Pricing\nand the API",
                     "Work email: quinn@acme.example", "Phone: +31 20 123 4567", "Team size: 11-50",
                     "I agree to be recorded: Yes"):
            assert line in description, description
        assert "Booked by Quinn Questioned <quinn@example.org>" in description

        # The booking.created webhook carries them.
        def created() -> list[dict[str, Any]]:
            return [b for b in rec.bodies if b["type"] == "booking.created" and b["data"]["id"] == booking_id]

        await wait_for(lambda: _async(created()), what="the booking.created webhook")
        assert created()[0]["data"]["answers"] == got["answers"]

        # And the owner's confirmation mail.
        mail = stack.data_dir / "mail" / f"{booking_id}-confirmed-owner.eml"
        await wait_for(lambda: _async(mail.exists()), what="the owner's confirmation mail")
        import email
        import email.policy
        message = email.message_from_bytes(mail.read_bytes(), policy=email.policy.default)
        text = next(p for p in message.walk() if p.get_content_type() == "text/plain").get_content()
        assert "Company: Acme BV" in text and "Team size: 11-50" in text and "I agree to be recorded: Yes" in text


async def test_a_booking_that_confirms_a_hold_answers_the_same_questions(stack: Stack, owner: PlatformOwner) -> None:
    day = future_day(11)
    s = z(on(day, 11))
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        if (await gw.get("/api/v1/booking-pages/discovery", headers=owner.auth)).status_code == 404:
            r = await gw.post("/api/v1/booking-pages", headers=owner.auth,
                              json=page_body("discovery", questions=QUESTIONS))
            assert r.status_code == 201, r.text
        h = await gw.post("/api/v1/booking-pages/discovery/holds", params={"handle": owner.handle}, json={"start": s})
        assert h.status_code == 201, h.text
        hold_id = h.json()["id"]
        body = {"start": s, "name": "Hana Held", "email": "hana@example.org", "hold_id": hold_id}
        r = await gw.post("/api/v1/booking-pages/discovery/book", params={"handle": owner.handle},
                          json={**body, "answers": {"company": "Held Inc"}})
        assert fields_of(r) == ["answers.team_size", "answers.consent"]
        r = await gw.post("/api/v1/booking-pages/discovery/book", params={"handle": owner.handle},
                          json={**body, "answers": {"company": "Held Inc", "team_size": "51+", "consent": True}})
        assert r.status_code == 201, r.text
        got = (await gw.get(f"/api/v1/bookings/{r.json()['id']}", headers=owner.auth)).json()
        assert got["answers"] == {"company": "Held Inc", "team_size": "51+", "consent": True}


async def _async(value: Any) -> Any:
    return value


async def test_the_booking_tool_passes_answers_and_names_a_missing_one(stack: Stack, owner: PlatformOwner) -> None:
    """An agent books through calmesh_create_booking: its answer items become the booking's answers,
    and a missing required answer comes back as an error naming answers.<id>."""
    day = future_day(12)
    s = z(on(day, 9, 30))
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        if (await gw.get("/api/v1/booking-pages/discovery", headers=owner.auth)).status_code == 404:
            r = await gw.post("/api/v1/booking-pages", headers=owner.auth,
                              json=page_body("discovery", questions=QUESTIONS))
            assert r.status_code == 201, r.text
        args = {"booking_page_slug": "discovery", "handle": owner.handle, "start": s, "name": "Ada Agent",
                "email": "ada@example.org"}
        r = await gw.post("/api/v1/tools/calmesh_create_booking/call", headers=owner.book_auth, json={"arguments": {
            **args, "answers": [{"question_id": "company", "value": "Agents Ltd"}]}})
        assert r.status_code == 200, r.text
        assert r.json()["is_error"] is True and "answers.team_size" in r.json()["content"][0]["text"]
        r = await gw.post("/api/v1/tools/calmesh_create_booking/call", headers=owner.book_auth, json={"arguments": {
            **args, "answers": [{"question_id": "company", "value": "Agents Ltd"},
                                {"question_id": "team_size", "value": "1-10"},
                                {"question_id": "consent", "checked": True}]}})
        assert r.status_code == 200 and r.json()["is_error"] is False, r.text
        booking_id = r.json()["structured"]["id"]
        got = (await gw.get(f"/api/v1/bookings/{booking_id}", headers=owner.auth)).json()
        assert got["answers"] == {"company": "Agents Ltd", "team_size": "1-10", "consent": True}
