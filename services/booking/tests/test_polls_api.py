"""Scheduling polls over HTTP (as the gateway calls the booking service), with fakes of
connections and sync: votes, overlap, decide, and a vote after the decision refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from calmesh_testing.booking import BookingHarness, User

pytestmark = pytest.mark.timeout(120)


def at(days: int, hour: int) -> datetime:
    base = (datetime.now(UTC) + timedelta(days=days)).replace(hour=hour, minute=0, second=0, microsecond=0)
    return base


def z(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


async def make_poll(bk: BookingHarness, owner: User, **extra: Any) -> dict[str, Any]:
    body = {
        "title": "Team offsite planning",
        "duration_minutes": 60,
        "calendar_slug": "work",
        "options": [{"start": z(at(5, 9)), "end": z(at(5, 10))},
                    {"start": z(at(6, 14)), "end": z(at(6, 15))},
                    {"start": z(at(7, 9))}],
        **extra,
    }
    r = await bk.client.post("/api/v1/polls", json=body, headers=owner.headers)
    assert r.status_code == 201, r.text
    return r.json()


async def vote(bk: BookingHarness, poll: dict[str, Any], name: str, choices: dict[str, str], *,
               email: str | None = None, token: str | None = "from-url", headers: dict[str, str] | None = None):
    if token == "from-url":
        token = parse_qs(urlsplit(poll["vote_url"]).query)["token"][0]
    params = {"token": token} if token else {}
    body: dict[str, Any] = {"name": name, "choices": choices}
    if email:
        body["email"] = email
    return await bk.client.post(f"/api/v1/polls/{poll['id']}/votes", params=params, json=body, headers=headers or {})


async def test_votes_overlap_decide_and_no_vote_after(bk: BookingHarness) -> None:
    owner = await bk.new_user()
    poll = await make_poll(bk, owner)
    a, b, c = (o["id"] for o in poll["options"])
    assert poll["status"] == "open" and poll["id"].startswith("poll_") and a.startswith("opt_")
    assert poll["vote_url"].startswith(f"{bk.public_base_url}/api/v1/polls/{poll['id']}/votes?token=")
    assert poll["options"][2]["end"] == z(at(7, 10))  # end defaults to start + duration

    # Public votes with the poll's token; a voter who votes again replaces their vote.
    assert (await vote(bk, poll, "Ann", {a: "yes", b: "yes", c: "no"}, email="ann@example.org")).status_code == 201
    assert (await vote(bk, poll, "Bob", {a: "maybe", b: "yes", c: "yes"})).status_code == 201
    assert (await vote(bk, poll, "Cy", {a: "no", b: "no", c: "yes"}, email="cy@example.org")).status_code == 201
    changed = await vote(bk, poll, "Cy", {a: "yes", b: "maybe", c: "yes"}, email="CY@example.org")
    assert changed.status_code == 201
    # The owner may vote without the token.
    own = await vote(bk, poll, "Owner", {b: "maybe"}, token=None, headers=owner.headers)
    assert own.status_code == 201, own.text

    # Refusals: wrong token, no token and no credentials, an option of no such poll, a bad choice.
    assert (await vote(bk, poll, "Eve", {a: "yes"}, token="wrong")).status_code == 403
    assert (await vote(bk, poll, "Eve", {a: "yes"}, token=None)).status_code == 401
    unknown = await vote(bk, poll, "Eve", {"opt_nope": "yes"})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "choices.opt_nope"
    assert (await vote(bk, poll, "Eve", {a: "perhaps"})).status_code == 400

    # The owner's calendar is busy during option b.
    await bk.fake.add_event(owner.calendar, at(6, 14) + timedelta(minutes=30), at(6, 16))
    r = await bk.client.get(f"/api/v1/polls/{poll['id']}/overlap", headers=owner.headers)
    assert r.status_code == 200, r.text
    overlap = r.json()
    by_id = {o["option_id"]: o for o in overlap["options"]}
    assert (by_id[a]["yes"], by_id[a]["maybe"], by_id[a]["no"]) == (2, 1, 0)
    assert by_id[a]["available"] == ["Ann", "Cy"] and by_id[a]["if_need_be"] == ["Bob"]
    assert (by_id[b]["yes"], by_id[b]["maybe"], by_id[b]["no"]) == (2, 2, 0)
    assert by_id[b]["calendar_busy"] is True and by_id[a]["calendar_busy"] is False
    assert (by_id[c]["yes"], by_id[c]["no"]) == (2, 1)
    # a and b tie on yes (2); b has more maybes (2 against 1) and wins despite its clash.
    assert overlap["best_option_id"] == b

    # Decide: the event is created on the poll's calendar, the poll closes.
    d = await bk.client.post(f"/api/v1/polls/{poll['id']}/decide", json={"option_id": a}, headers=owner.headers)
    assert d.status_code == 200, d.text
    decision = d.json()
    assert decision["status"] == "decided" and decision["option_id"] == a and decision["event_id"].startswith("evt_")
    event = next(e for e in bk.fake.created if e["id"] == decision["event_id"])
    assert event["title"] == "Team offsite planning" and event["start"] == z(at(5, 9))
    assert event["attendees"] == ["ann@example.org", "CY@example.org"]  # who said yes or maybe, as last given
    again = await bk.client.post(f"/api/v1/polls/{poll['id']}/decide", json={"option_id": a}, headers=owner.headers)
    assert again.status_code == 200 and again.json() == decision
    other = await bk.client.post(f"/api/v1/polls/{poll['id']}/decide", json={"option_id": b}, headers=owner.headers)
    assert other.status_code == 409 and other.json()["code"] == "poll_closed"

    late = await vote(bk, poll, "Late Larry", {a: "yes"})
    assert late.status_code == 409 and late.json()["code"] == "poll_closed"
    got = await bk.client.get(f"/api/v1/polls/{poll['id']}", headers=owner.headers)
    assert got.json()["status"] == "decided" and got.json()["decided_option_id"] == a
    assert len([e for e in bk.fake.created if e["title"] == "Team offsite planning"]) == 1


async def test_polls_belong_to_their_owner(bk: BookingHarness) -> None:
    owner, stranger = await bk.new_user(), await bk.new_user()
    poll = await make_poll(bk, owner)
    for path in (f"/api/v1/polls/{poll['id']}", f"/api/v1/polls/{poll['id']}/overlap"):
        assert (await bk.client.get(path, headers=stranger.headers)).status_code == 404
    decide = await bk.client.post(f"/api/v1/polls/{poll['id']}/decide", json={"option_id": poll["options"][0]["id"]},
                                  headers=stranger.headers)
    assert decide.status_code == 404
    # A voter holding the link may read the poll.
    token = parse_qs(urlsplit(poll["vote_url"]).query)["token"][0]
    assert (await bk.client.get(f"/api/v1/polls/{poll['id']}", params={"token": token})).status_code == 200
    listed = await bk.client.get("/api/v1/polls", headers=owner.headers)
    assert [p["id"] for p in listed.json()["data"]] == [poll["id"]]
    assert (await bk.client.get("/api/v1/polls", headers=stranger.headers)).json()["data"] == []
    # A read key may look but not decide.
    read = owner.with_scope("read")
    assert (await bk.client.get(f"/api/v1/polls/{poll['id']}/overlap", headers=read.headers)).status_code == 200
    denied = await bk.client.post(f"/api/v1/polls/{poll['id']}/decide", json={"option_id": poll["options"][0]["id"]},
                                  headers=read.headers)
    assert denied.status_code == 403


async def test_poll_input_and_idempotency(bk: BookingHarness) -> None:
    owner = await bk.new_user()
    bad = await bk.client.post("/api/v1/polls", headers=owner.headers, json={
        "title": "x", "duration_minutes": 30, "options": [{"start": z(at(3, 10)), "end": z(at(3, 9))}]})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "options[0].end"
    none = await bk.client.post("/api/v1/polls", headers=owner.headers,
                                json={"title": "x", "duration_minutes": 30, "options": []})
    assert none.status_code == 422
    no_cal = await bk.client.post("/api/v1/polls", headers=owner.headers, json={
        "title": "x", "duration_minutes": 30, "calendar_slug": "nope", "options": [{"start": z(at(3, 9))}]})
    assert no_cal.status_code == 422 and no_cal.json()["code"] == "calendar_not_found"

    body = {"title": "Idempotent", "duration_minutes": 30, "options": [{"start": z(at(3, 9))}]}
    h = {**owner.headers, "Idempotency-Key": "poll-key-1"}
    first = await bk.client.post("/api/v1/polls", headers=h, json=body)
    second = await bk.client.post("/api/v1/polls", headers=h, json=body)
    assert first.status_code == second.status_code == 201 and first.json() == second.json()
    changed = await bk.client.post("/api/v1/polls", headers=h, json={**body, "title": "Other"})
    assert changed.status_code == 422

    # Past its deadline a poll takes no votes; without a calendar a decision writes no event.
    late = await make_poll(bk, owner, deadline=z(datetime.now(UTC) - timedelta(minutes=1)), calendar_slug=None)
    assert (await vote(bk, late, "Ann", {late["options"][0]["id"]: "yes"})).status_code == 409
    d = await bk.client.post(f"/api/v1/polls/{late['id']}/decide", json={"option_id": late["options"][0]["id"]},
                             headers=owner.headers)
    assert d.status_code == 200 and d.json()["event_id"] is None


async def test_the_openapi_document_names_both_links_of_a_poll(bk: BookingHarness) -> None:
    r = await bk.client.get("/schema/openapi.json")
    assert r.status_code == 200, r.text
    poll = r.json()["components"]["schemas"]["Poll"]
    assert {"vote_url", "vote_page_url"} <= set(poll["required"])
    assert poll["properties"]["vote_page_url"]["type"] == "string"
