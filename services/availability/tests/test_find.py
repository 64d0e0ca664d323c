"""Find a time, the pure part: the request's rules, wall-clock hours across DST changes, and the slot
search checked against a brute-force oracle that walks every grid point and every raw interval."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from calmesh_availability.find import (
    CalendarBusy,
    FindRequest,
    Slot,
    candidates,
    find,
    search,
    validate,
)
from calmesh_common.hours import parse_weekly, working_spans
from calmesh_common.intervals import merge_spans
from calmesh_common.problems import Problem

AMS = ZoneInfo("Europe/Amsterdam")


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def z(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def request(**kw: object) -> FindRequest:
    body = {"calendars": [{"slug": "a"}], "duration_minutes": 30, "start": "2027-03-26T00:00:00Z",
            "end": "2027-03-30T00:00:00Z", **kw}
    return msgspec.convert(body, FindRequest)


# --- wall-clock hours ---------------------------------------------------------------------------


def test_hours_stay_on_the_wall_clock_across_the_spring_change() -> None:
    """Amsterdam, Sunday 28 March 2027: 02:00 CET becomes 03:00 CEST (01:00Z)."""
    weekly = parse_weekly({"fri": [["09:00", "17:00"]], "sun": [["01:00", "04:00"]], "mon": [["09:00", "17:00"]]})
    spans = working_spans(weekly, ts("2027-03-26T00:00:00Z"), ts("2027-03-30T00:00:00Z"), AMS)
    assert [(z(a), z(b)) for a, b in spans] == [
        ("2027-03-26T08:00:00Z", "2027-03-26T16:00:00Z"),  # Friday, UTC+1
        ("2027-03-28T00:00:00Z", "2027-03-28T02:00:00Z"),  # 01:00 CET to 04:00 CEST: two real hours
        ("2027-03-29T07:00:00Z", "2027-03-29T15:00:00Z"),  # Monday, UTC+2
    ]


def test_the_autumn_change_gives_a_longer_night_and_midnight_hours_join() -> None:
    """Amsterdam, Sunday 31 October 2027: 03:00 CEST becomes 02:00 CET (01:00Z)."""
    weekly = parse_weekly({"sat": [["22:00", "24:00"]], "sun": [["00:00", "04:00"]]})
    spans = working_spans(weekly, ts("2027-10-29T00:00:00Z"), ts("2027-11-02T00:00:00Z"), AMS)
    # Saturday 22:00 CEST (20:00Z) through Sunday 04:00 CET (03:00Z): seven real hours, one span.
    assert [(z(a), z(b)) for a, b in spans] == [("2027-10-30T20:00:00Z", "2027-10-31T03:00:00Z")]


def test_slots_over_a_dst_change_are_the_hand_computed_ones() -> None:
    query = validate(request(tz="Europe/Amsterdam", hours={"sun": [["01:00", "04:00"]]},
                             slot_interval_minutes=30, limit=100), None)
    slots = find(query, [CalendarBusy("a", True, [(ts("2027-03-28T00:30:00Z"), ts("2027-03-28T01:00:00Z"))], True)])
    assert [z(s.start) for s in slots] == ["2027-03-28T00:00:00Z", "2027-03-28T01:00:00Z", "2027-03-28T01:30:00Z"]


def test_the_grid_counts_from_start() -> None:
    assert candidates([(100, 200)], origin=7, interval=30, duration=30) == [127, 157]
    assert candidates([(0, 100)], origin=10, interval=30, duration=30) == [10, 40, 70]


# --- the request's rules ------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "code"), [
    ({"calendars": []}, "validation_error"),
    ({"calendars": [{"slug": f"c{i}"} for i in range(21)]}, "too_many_calendars"),
    ({"calendars": [{"slug": "a", "required": False}, {"slug": "b", "required": False}]}, "no_required_calendar"),
    ({"calendars": [{"slug": "a"}, {"slug": "a"}]}, "validation_error"),
    ({"limit": 0}, "validation_error"),
    ({"limit": 101}, "validation_error"),
    ({"duration_minutes": 0}, "validation_error"),
    ({"slot_interval_minutes": 0}, "validation_error"),
    ({"end": "2027-03-25T00:00:00Z"}, "invalid_range"),
    ({"start": "2027-01-01T00:00:00Z", "end": "2027-03-04T00:00:01Z"}, "range_too_long"),
    ({"hours": {"mon": [["09:00"]]}}, "validation_error"),
    ({"hours": {"mon": [["17:00", "09:00"]]}}, "validation_error"),
    ({"hours": {"mon": [["25:00", "26:00"]]}}, "validation_error"),
])
def test_semantic_mistakes_are_422(changes: dict[str, object], code: str) -> None:
    with pytest.raises(Problem) as caught:
        validate(request(**changes), "Europe/Amsterdam")
    assert (caught.value.status, caught.value.code) == (422, code)


def test_62_days_are_allowed_by_the_hour_or_on_the_wall_clock_of_tz() -> None:
    # 1 Mar to 2 May 2027 in Amsterdam is 62 days, one hour short of 62 × 24 h (the spring change).
    q = validate(request(start="2027-03-01T00:00:00", end="2027-05-02T00:00:00", tz="Europe/Amsterdam"), None)
    assert q.end - q.start == 62 * 86400 - 3600
    validate(request(start="2027-03-01T00:00:00", end="2027-05-02T01:00:00", tz="Europe/Amsterdam"), None)
    # 1 Sep to 2 Nov 2027 is 62 wall-clock days and an hour over 62 × 24 h (the autumn change).
    q = validate(request(start="2027-09-01T00:00:00", end="2027-11-02T00:00:00", tz="Europe/Amsterdam"), None)
    assert q.end - q.start == 62 * 86400 + 3600
    validate(request(start="2027-01-01T00:00:00Z", end="2027-03-04T00:00:00Z"), None)
    with pytest.raises(Problem):
        validate(request(start="2027-09-01T00:00:00", end="2027-11-02T00:00:01", tz="Europe/Amsterdam"), None)


def test_bad_instants_and_zones_are_400_and_the_default_zone_is_the_users() -> None:
    for changes in ({"start": "tomorrow"}, {"tz": "Atlantis/Capital"}):
        with pytest.raises(Problem) as caught:
            validate(request(**changes), None)
        assert caught.value.status == 400
    assert validate(request(), "Europe/Amsterdam").tz_name == "Europe/Amsterdam"
    assert validate(request(), None).tz_name == "UTC"
    assert validate(request(tz="Asia/Tokyo"), "Europe/Amsterdam").tz_name == "Asia/Tokyo"


# --- ranking and labels -------------------------------------------------------------------------


def test_required_must_be_free_and_slots_rank_by_free_optional_calendars_then_start() -> None:
    cals = [
        CalendarBusy("alice", True, [(0, 30)], True),
        CalendarBusy("bob", False, [(60, 120)], True),
        CalendarBusy("carol", False, [(90, 150)], True),
        CalendarBusy("dana", False, [], False),
    ]
    slots = search(cals, 0, 180, 30, 30, None, 10)
    assert slots == [
        Slot(30, 60, ["alice", "bob", "carol"], [], ["dana"]),
        Slot(150, 180, ["alice", "bob", "carol"], [], ["dana"]),
        Slot(60, 90, ["alice", "carol"], ["bob"], ["dana"]),  # one optional free: earliest first
        Slot(120, 150, ["alice", "bob"], ["carol"], ["dana"]),
        Slot(90, 120, ["alice"], ["bob", "carol"], ["dana"]),
    ]
    assert search(cals, 0, 180, 30, 30, None, 2) == slots[:2]


def test_a_required_calendar_not_all_known_leaves_no_slot() -> None:
    assert search([CalendarBusy("a", True, [], False), CalendarBusy("b", True, [], True)], 0, 100, 10, 10, None, 5) == []


def test_known_busy_time_is_busy_even_when_the_rest_is_unknown() -> None:
    slots = search([CalendarBusy("a", True, [], True), CalendarBusy("b", False, [(0, 10)], False)], 0, 20, 10, 10,
                   None, 5)
    assert [(s.start, s.busy, s.unknown) for s in slots] == [(0, ["b"], []), (10, [], ["b"])]


# --- the oracle ---------------------------------------------------------------------------------


def oracle(raw: list[tuple[str, bool, list[tuple[int, int]], bool]], start: int, end: int, duration: int,
           interval: int, working: list[tuple[int, int]] | None, limit: int) -> list[Slot]:
    """Every grid point, every raw (unmerged, overlapping) interval, every point of every slot."""
    found = []
    t = start
    while t + duration <= end:
        u = t + duration
        inside = working is None or all(any(a <= x < b for a, b in working) for x in range(t, u))
        if inside:
            free, busy, unknown = [], [], []
            for slug, _, intervals, complete in raw:
                if any(s < u and e > t for s, e in intervals):
                    busy.append(slug)
                elif not complete:
                    unknown.append(slug)
                else:
                    free.append(slug)
            if all(slug in free for slug, required, _, _ in raw if required):
                optional_free = sum(1 for slug, required, _, _ in raw if not required and slug in free)
                found.append((-optional_free, t, Slot(t, u, free, busy, unknown)))
        t += interval
    found.sort(key=lambda f: (f[0], f[1]))
    return [f[2] for f in found[:limit]]


# Mostly on a 5-unit lattice, so slot edges meet interval edges exactly (where off-by-ones live).
unit = st.sampled_from([5, 5, 5, 1])
interval_st = st.tuples(st.integers(-4, 48), st.integers(1, 12), unit).map(
    lambda p: (p[0] * p[2], (p[0] + p[1]) * p[2]))


@st.composite
def problems(draw: st.DrawFn) -> tuple:
    n = draw(st.integers(1, 4))
    raw = []
    for i in range(n):
        raw.append((f"c{i}", draw(st.booleans()), draw(st.lists(interval_st, max_size=8)), draw(st.booleans())))
    if not any(r[1] for r in raw):
        raw[0] = (raw[0][0], True, raw[0][2], raw[0][3])
    start = draw(st.integers(0, 6)) * 5
    end = start + draw(st.integers(1, 40)) * draw(unit)
    working = draw(st.none() | st.lists(interval_st, max_size=6))
    duration = draw(st.integers(1, 10)) * draw(unit)
    interval = draw(st.sampled_from([5, 5, 5, 10, 15, 7]))
    return raw, start, end, duration, interval, working, draw(st.integers(1, 12) | st.just(1000))


@settings(max_examples=600, deadline=None)
@given(problems())
@example(([("a", True, [], True), ("b", False, [(50, 60)], True)], 0, 100, 10, 10, None, 100))  # a gap's last slot
def test_the_search_agrees_with_the_brute_force_oracle(problem: tuple) -> None:
    raw, start, end, duration, interval, working, limit = problem
    cals = [CalendarBusy(slug, req, merge_spans(sorted(iv)), complete) for slug, req, iv, complete in raw]
    merged_working = merge_spans(sorted(working)) if working is not None else None
    assert search(cals, start, end, duration, interval, merged_working, limit) == oracle(
        raw, start, end, duration, interval, working, limit)
