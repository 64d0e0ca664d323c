"""The availability domain without I/O: windows, events in the API's shape, busy/free, conflicts."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import msgspec
import pytest

from calmesh_availability import domain
from calmesh_availability.domain import Calendar, CalendarDoc, Source
from calmesh_common.problems import Problem
from calmesh_common.timefmt import rfc3339_epoch

WORK = Source(id="src_work", connection_id="conn_g", calendar_id="primary", name="Work", sort_order=0)
HOME = Source(id="src_home", connection_id="conn_c", calendar_id="home", name="Home", sort_order=1)
FEED = Source(id="src_feed", connection_id="conn_i", calendar_id="feed", name="Holidays", sort_order=2, read_only=True)


def calendar(tz: str = "Europe/Berlin", sources: tuple[Source, ...] = (WORK, HOME, FEED)) -> Calendar:
    return Calendar.from_doc(CalendarDoc(slug="work", user_id="usr_1", timezone=tz, sources=list(sources)))


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


_n = 0


def row(source: Source, start: str, end: str, *, title: str = "", uid: str | None = None, all_day: bool = False,
        status: str = "confirmed", transparency: str = "busy", provider_event_id: str | None = None,
        recurrence_id: str = "") -> dict[str, Any]:
    global _n
    _n += 1
    if all_day:
        sd, ed = date.fromisoformat(start), date.fromisoformat(end)
        s = int(datetime(sd.year, sd.month, sd.day, tzinfo=UTC).timestamp()) - 14 * 3600
        e = int(datetime(ed.year, ed.month, ed.day, tzinfo=UTC).timestamp()) + 12 * 3600
    else:
        sd = ed = None
        s, e = ts(start), ts(end)
    return {
        "event_id": f"evt_{_n:04d}", "connection_id": source.connection_id, "calendar_id": source.calendar_id,
        "uid": uid or f"uid-{_n}", "recurrence_id": recurrence_id, "recurring_event_id": None,
        "provider_event_id": provider_event_id, "title": title or f"event {_n}", "description": None,
        "location": None, "s": s, "e": e, "all_day": all_day, "start_date": sd, "end_date": ed,
        "status": status, "transparency": transparency, "u": ts("2026-03-01T12:00:00Z"), "k": s * 1_000_000,
    }


def sorted_rows(*rows: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["s"], r["event_id"]))


# --- query parameters -----------------------------------------------------------------------------


def test_instants_with_any_offset_are_read_to_the_second() -> None:
    berlin = domain.zone("Europe/Berlin")
    assert domain.parse_instant("2026-03-15T09:00:00Z", "start", berlin) == ts("2026-03-15T09:00:00Z")
    assert domain.parse_instant("2026-03-15T10:00:00+01:00", "start", berlin) == ts("2026-03-15T09:00:00Z")
    assert domain.parse_instant("2026-03-15T09:00:00.999999999Z", "start", berlin) == ts("2026-03-15T09:00:00Z")
    # No offset: read in the zone the query is in.
    assert domain.parse_instant("2026-03-15T10:00:00", "start", berlin) == ts("2026-03-15T09:00:00Z")
    assert domain.parse_instant("2026-03-15", "start", berlin) == ts("2026-03-14T23:00:00Z")


@pytest.mark.parametrize("raw", ["tomorrow", "2026-13-01T00:00:00Z", "2026-02-30T10:00:00Z", "2026-03-15T25:00Z", ""])
def test_malformed_instants_are_a_400_naming_the_parameter(raw: str) -> None:
    with pytest.raises(Problem) as caught:
        domain.parse_window(raw or None, "2026-03-16T00:00:00Z", domain.zone("UTC"))
    assert caught.value.status == 400
    assert "start" in caught.value.detail


def test_end_before_start_is_422_and_more_than_366_days_is_range_too_long() -> None:
    utc = domain.zone("UTC")
    with pytest.raises(Problem) as backwards:
        domain.parse_window("2026-03-15T10:00:00Z", "2026-03-15T09:00:00Z", utc)
    assert (backwards.value.status, backwards.value.code) == (422, "invalid_range")
    with pytest.raises(Problem) as too_long:
        domain.parse_window("2026-01-01T00:00:00Z", "2027-01-02T00:00:01Z", utc)
    assert (too_long.value.status, too_long.value.code) == (422, "range_too_long")
    assert domain.parse_window("2026-01-01T00:00:00Z", "2027-01-02T00:00:00Z", utc)[1] == ts("2027-01-02T00:00:00Z")


def test_unknown_time_zones_are_refused_with_a_clear_message() -> None:
    for name in ("Mars/Olympus_Mons", "../../etc/passwd", "Europe/Berlin\\x"):
        with pytest.raises(Problem) as caught:
            domain.zone(name)
        assert caught.value.status == 400
        assert caught.value.code == "invalid_timezone"
        assert "IANA" in caught.value.detail


def test_a_date_is_the_local_day_including_dst_days() -> None:
    ny = domain.zone("America/New_York")
    start, end = domain.availability_window("2026-03-08", None, None, ny)
    assert (rfc3339_epoch(start), rfc3339_epoch(end)) == ("2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z")
    with pytest.raises(Problem) as caught:
        domain.availability_window("2026-02-30", None, None, ny)
    assert caught.value.status == 400


def test_limit_and_flags_are_checked() -> None:
    assert domain.parse_int(None, "limit", 50, 1, 200) == 50
    for bad in ("0", "201", "ten"):
        with pytest.raises(Problem):
            domain.parse_int(bad, "limit", 50, 1, 200)
    assert domain.parse_bool("true", "explain") is True
    with pytest.raises(Problem):
        domain.parse_bool("maybe", "explain")


def test_cursors_are_opaque_and_bound_to_their_query() -> None:
    cursor = domain.encode_cursor("events", "fp1", [123, "evt_x"])
    assert domain.decode_cursor(cursor, "events", "fp1") == [123, "evt_x"]
    for bad, fp in ((cursor, "fp2"), ("bm90IGEgY3Vyc29y", "fp1"), ("%%%", "fp1")):
        with pytest.raises(Problem) as caught:
            domain.decode_cursor(bad, "events", fp)
        assert caught.value.code == "invalid_cursor"


# --- events ---------------------------------------------------------------------------------------


def test_events_come_in_the_api_shape_with_provenance() -> None:
    cal = calendar()
    timed = domain.event_out(row(HOME, "2026-03-15T09:00:00Z", "2026-03-15T10:00:00Z", title="Dentist"), cal)
    doc = msgspec.to_builtins(timed)
    assert list(doc) == ["id", "source_id", "connection_id", "title", "description", "location", "start", "end",
                         "all_day", "status", "transparency", "recurring_event_id", "booking_id", "updated_at"]
    assert (doc["source_id"], doc["connection_id"], doc["start"], doc["end"], doc["all_day"]) == (
        "src_home", "conn_c", "2026-03-15T09:00:00Z", "2026-03-15T10:00:00Z", False)
    assert doc["updated_at"] == "2026-03-01T12:00:00Z"
    all_day = msgspec.to_builtins(domain.event_out(row(FEED, "2026-03-15", "2026-03-16", all_day=True), cal))
    assert (all_day["start"], all_day["end"], all_day["all_day"]) == ("2026-03-15", "2026-03-16", True)


def test_all_day_events_overlap_by_their_dates_in_the_calendars_zone() -> None:
    cal = calendar("America/New_York")
    holiday = row(FEED, "2026-03-15", "2026-03-16", all_day=True)
    # 2026-03-15 in New York is 04:00Z on the 15th to 04:00Z on the 16th.
    assert domain.overlaps(holiday, cal, ts("2026-03-16T03:00:00Z"), ts("2026-03-16T05:00:00Z"))
    assert not domain.overlaps(holiday, cal, ts("2026-03-15T00:00:00Z"), ts("2026-03-15T04:00:00Z"))


# --- availability ---------------------------------------------------------------------------------


def test_busy_merges_overlapping_and_touching_events_across_sources_and_free_is_the_rest() -> None:
    cal = calendar("UTC")
    rows = sorted_rows(
        row(WORK, "2026-03-15T09:00:00Z", "2026-03-15T10:00:00Z"),
        row(HOME, "2026-03-15T09:30:00Z", "2026-03-15T10:30:00Z"),
        row(HOME, "2026-03-15T10:30:00Z", "2026-03-15T11:00:00Z"),  # touches: same block
        row(WORK, "2026-03-15T14:00:00Z", "2026-03-15T15:00:00Z"),
        row(WORK, "2026-03-15T16:00:00Z", "2026-03-15T17:00:00Z", transparency="free"),
        row(HOME, "2026-03-15T18:00:00Z", "2026-03-15T19:00:00Z", status="cancelled"),
    )
    start, end = domain.local_day_window(date(2026, 3, 15), cal.tz)
    doc = msgspec.to_builtins(domain.availability(domain.busy_items(rows, cal), cal, "UTC", start, end))
    assert doc["slug"] == "work" and doc["timezone"] == "UTC"
    assert (doc["start"], doc["end"]) == ("2026-03-15T00:00:00Z", "2026-03-16T00:00:00Z")
    assert doc["busy"] == [
        {"start": "2026-03-15T09:00:00Z", "end": "2026-03-15T11:00:00Z", "source_ids": ["src_work", "src_home"]},
        {"start": "2026-03-15T14:00:00Z", "end": "2026-03-15T15:00:00Z", "source_ids": ["src_work"]},
    ]
    assert doc["free"] == [
        {"start": "2026-03-15T00:00:00Z", "end": "2026-03-15T09:00:00Z"},
        {"start": "2026-03-15T11:00:00Z", "end": "2026-03-15T14:00:00Z"},
        {"start": "2026-03-15T15:00:00Z", "end": "2026-03-16T00:00:00Z"},
    ]


def test_min_duration_drops_short_gaps_and_busy_is_cut_to_the_window() -> None:
    cal = calendar("UTC")
    rows = sorted_rows(
        row(WORK, "2026-03-14T22:00:00Z", "2026-03-15T08:00:00Z"),
        row(HOME, "2026-03-15T08:20:00Z", "2026-03-15T12:00:00Z"),
    )
    start, end = ts("2026-03-15T00:00:00Z"), ts("2026-03-15T13:00:00Z")
    doc = msgspec.to_builtins(domain.availability(domain.busy_items(rows, cal), cal, "UTC", start, end, min_duration=30 * 60))
    assert doc["busy"][0]["start"] == "2026-03-15T00:00:00Z"
    assert doc["free"] == [{"start": "2026-03-15T12:00:00Z", "end": "2026-03-15T13:00:00Z"}]


def test_all_day_events_block_their_whole_local_day() -> None:
    cal = calendar("Europe/Berlin")
    rows = sorted_rows(row(FEED, "2026-03-29", "2026-03-30", all_day=True))  # a 23-hour day in Berlin
    start, end = domain.local_day_window(date(2026, 3, 29), cal.tz)
    doc = msgspec.to_builtins(domain.availability(domain.busy_items(rows, cal), cal, "Europe/Berlin", start, end))
    assert doc["busy"] == [{"start": "2026-03-28T23:00:00Z", "end": "2026-03-29T22:00:00Z", "source_ids": ["src_feed"]}]
    assert doc["free"] == []


def test_explain_lists_each_meeting_behind_a_busy_interval_once() -> None:
    cal = calendar("UTC")
    standup_work = row(WORK, "2026-03-15T09:00:00Z", "2026-03-15T09:30:00Z", title="Stand-up", uid="standup-1")
    standup_home = row(HOME, "2026-03-15T09:00:00Z", "2026-03-15T09:30:00Z", title="Stand-up", uid="standup-1")
    review = row(HOME, "2026-03-15T09:15:00Z", "2026-03-15T10:00:00Z", title="Review")
    rows = sorted_rows(standup_work, standup_home, review)
    doc = msgspec.to_builtins(domain.availability(domain.busy_items(rows, cal), cal, "UTC", ts("2026-03-15T00:00:00Z"),
                                                  ts("2026-03-16T00:00:00Z"), explain=True))
    (busy,) = doc["busy"]
    assert busy["source_ids"] == ["src_work", "src_home"]
    assert [(e["title"], e["source_id"]) for e in busy["events"]] == [("Stand-up", "src_work"), ("Review", "src_home")]
    assert busy["events"][1] == {"id": review["event_id"], "title": "Review", "start": "2026-03-15T09:15:00Z",
                                 "end": "2026-03-15T10:00:00Z", "source_id": "src_home", "all_day": False}


def test_rows_of_a_source_no_longer_in_the_calendar_are_ignored() -> None:
    cal = calendar("UTC", sources=(WORK,))
    rows = sorted_rows(row(HOME, "2026-03-15T09:00:00Z", "2026-03-15T10:00:00Z"))
    doc = msgspec.to_builtins(domain.availability(domain.busy_items(rows, cal), cal, "UTC", ts("2026-03-15T00:00:00Z"), ts("2026-03-16T00:00:00Z")))
    assert doc["busy"] == []


# --- conflicts ------------------------------------------------------------------------------------


def test_conflicts_are_overlapping_busy_events_of_different_sources() -> None:
    cal = calendar("UTC")
    a = row(WORK, "2026-03-15T09:00:00Z", "2026-03-15T10:00:00Z", title="Planning")
    b = row(HOME, "2026-03-15T09:30:00Z", "2026-03-15T11:00:00Z", title="Dentist")
    same_source = row(WORK, "2026-03-15T09:45:00Z", "2026-03-15T10:15:00Z", title="Also work")
    free = row(HOME, "2026-03-15T09:00:00Z", "2026-03-15T12:00:00Z", transparency="free")
    touching = row(HOME, "2026-03-15T08:00:00Z", "2026-03-15T09:00:00Z")
    mirror_a = row(WORK, "2026-03-15T13:00:00Z", "2026-03-15T14:00:00Z", uid="shared")
    mirror_b = row(HOME, "2026-03-15T13:00:00Z", "2026-03-15T14:00:00Z", uid="shared")
    rows = sorted_rows(a, b, same_source, free, touching, mirror_a, mirror_b)
    window = ts("2026-03-15T00:00:00Z"), ts("2026-03-16T00:00:00Z")
    found, last = domain.conflicts(rows, cal, *window)
    pairs = [([e.title for e in c.events], c.overlap_start, c.overlap_end) for c in found]
    assert pairs == [
        (["Planning", "Dentist"], "2026-03-15T09:30:00Z", "2026-03-15T10:00:00Z"),
        (["Dentist", "Also work"], "2026-03-15T09:45:00Z", "2026-03-15T10:15:00Z"),
    ]
    assert last is None
    assert [e.source_id for e in found[0].events] == ["src_work", "src_home"]
    first_page, position = domain.conflicts(rows, cal, *window, limit=1)
    assert [c.events[0].title for c in first_page] == ["Planning"]
    assert position == (ts("2026-03-15T09:30:00Z"), a["event_id"], b["event_id"])
    second_page, end = domain.conflicts(rows, cal, *window, after=position, limit=1)
    assert ([c.events[0].title for c in second_page], end) == (["Dentist"], None)


# --- writes ---------------------------------------------------------------------------------------


def test_new_events_are_normalised_to_utc_and_two_dates_make_an_all_day_event() -> None:
    berlin = domain.zone("Europe/Berlin")
    timed = domain.validate_new_event(domain.EventCreate(title="Call", start="2026-03-15T10:00:00+01:00",
                                                         end="2026-03-15T10:30:00+01:00",
                                                         attendees=["a@example.com", domain.Attendee(email="b@example.com", name="B")]), berlin)
    assert (timed.start, timed.end, timed.all_day) == ("2026-03-15T09:00:00Z", "2026-03-15T09:30:00Z", False)
    assert timed.attendees == [{"email": "a@example.com"}, {"email": "b@example.com", "name": "B"}]
    all_day = domain.validate_new_event(domain.EventCreate(title="Off", start="2026-03-15", end="2026-03-17"), berlin)
    assert (all_day.start, all_day.end, all_day.all_day) == ("2026-03-15", "2026-03-17", True)
    with pytest.raises(Problem) as backwards:
        domain.validate_new_event(domain.EventCreate(title="x", start="2026-03-15T10:00:00Z",
                                                     end="2026-03-15T09:00:00Z"), berlin)
    assert backwards.value.status == 422
    with pytest.raises(Problem) as bad_mail:
        domain.validate_new_event(domain.EventCreate(title="x", start="2026-03-15T10:00:00Z",
                                                     end="2026-03-15T11:00:00Z", attendees=["nobody"]), berlin)
    assert bad_mail.value.status == 400


def test_the_default_write_target_is_the_first_writable_source() -> None:
    assert calendar(sources=(FEED, HOME, WORK)).default_write_target() == WORK  # sort_order puts WORK first
    reordered = (
        Source(id="src_feed", connection_id="c", calendar_id="f", sort_order=0, read_only=True),
        Source(id="src_home", connection_id="c2", calendar_id="h", sort_order=1),
    )
    assert calendar(sources=reordered).default_write_target().id == "src_home"
    assert calendar(sources=reordered[:1]).default_write_target() is None


# --- conflicts: bounded, and equal to a brute-force oracle ----------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ORACLE_BASE = ts("2026-05-04T00:00:00Z")
ORACLE_SOURCES = (WORK, HOME, FEED)


def oracle_conflicts(rows: list[dict[str, Any]], cal: Calendar, start: int, end: int) -> list[tuple[Any, ...]]:
    """Every pair of meetings compared with every other: a meeting is its rows sharing a UID
    (mirrors), spanning from its first row's start to its latest end; two meetings conflict when
    they overlap and have copies in different sources (the earlier meeting's first such copy and
    the later's first shown). Keyed and ordered as the endpoint orders them."""
    meetings: list[list[tuple[int, int, str, dict[str, Any]]]] = []
    by_uid: dict[str, list[tuple[int, int, str, dict[str, Any]]]] = {}
    for it in domain.busy_items(rows, cal):
        group = by_uid.get(it[3]["uid"])
        if group is None:
            group = by_uid[it[3]["uid"]] = []
            meetings.append(group)
        group.append(it)
    out = []
    for i, a in enumerate(meetings):
        for b in meetings[i + 1:]:
            a_start, a_end = a[0][0], max(x[1] for x in a)
            b_start, b_end = b[0][0], max(x[1] for x in b)
            o_start, o_end = max(a_start, b_start), min(a_end, b_end)
            if o_start >= o_end or o_start >= end or o_end <= start:
                continue
            pair = next(((x, y) for x in a for y in b if x[2] != y[2]), None)
            if pair is None:
                continue
            out.append((o_start, pair[0][3]["event_id"], pair[1][3]["event_id"], o_end))
    return sorted(out)


def all_pages(rows: list[dict[str, Any]], cal: Calendar, start: int, end: int, limit: int) -> list[tuple[Any, ...]]:
    seen: list[tuple[Any, ...]] = []
    after = None
    while True:
        page, after = domain.conflicts(rows, cal, start, end, after=after, limit=limit)
        seen += [(ts(c.overlap_start), c.events[0].id, c.events[1].id, ts(c.overlap_end)) for c in page]
        if after is None:
            return seen


@hypothesis_settings(max_examples=120, deadline=None)
@given(
    events=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 12), st.integers(0, 2), st.integers(0, 30)),
                    min_size=0, max_size=30),
    window=st.tuples(st.integers(0, 30), st.integers(1, 40)),
    limit=st.integers(1, 5),
)
def test_conflict_pages_equal_a_brute_force_oracle(events: list[tuple[int, int, int, int]],
                                                    window: tuple[int, int], limit: int) -> None:
    """Whatever the events (mirrors across sources included), paging through the conflicts with
    the cursor gives exactly the pairs that comparing every meeting with every other gives."""
    cal = calendar("UTC")
    rows = []
    for start, length, src, uid in events:
        s = ORACLE_BASE + start * 900
        r = row(ORACLE_SOURCES[src], format_iso(s), format_iso(s + length * 900), uid=f"u{uid}")
        rows.append(r)
    rows.sort(key=lambda r: (r["s"], r["event_id"]))
    # Copies of one UID share one span (the same meeting seen twice), as providers show it.
    first: dict[str, dict[str, Any]] = {}
    for r in rows:
        f = first.setdefault(r["uid"], r)
        r["s"], r["e"] = f["s"], f["e"]
    w_start = ORACLE_BASE + window[0] * 900
    w_end = w_start + window[1] * 900
    assert all_pages(rows, cal, w_start, w_end, limit) == oracle_conflicts(rows, cal, w_start, w_end)


def format_iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dense_rows() -> list[dict[str, Any]]:
    """The red team's calendar: 200 long events in one source and 5,000 short ones in another over
    366 days: a million overlapping pairs."""
    start = ts("2026-01-01T00:00:00Z")
    rows = [row(WORK, format_iso(start + i * 60), format_iso(start + 366 * 86400 - i * 60)) for i in range(200)]
    rows += [row(HOME, format_iso(start + 3600 + i * 6300), format_iso(start + 3600 + i * 6300 + 1800))
             for i in range(5000)]
    return sorted_rows(*rows)


def test_a_dense_conflicts_query_keeps_only_its_page_and_stops_early() -> None:
    import time
    import tracemalloc

    cal = calendar("UTC")
    rows = dense_rows()
    window = ts("2026-01-01T00:00:00Z"), ts("2027-01-01T00:00:00Z") + 86400
    tracemalloc.start()
    began = time.perf_counter()
    page, after = domain.conflicts(rows, cal, *window, limit=200)
    elapsed = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(page) == 200 and after is not None
    assert elapsed < 1.0 and peak < 20_000_000  # the unbounded sweep: 9 s and 200 MB
    # A later page costs no comparison of what came before: still quick, and it follows on.
    deep_after = (ts("2026-12-01T00:00:00Z"), "", "")
    began = time.perf_counter()
    later, _ = domain.conflicts(rows, cal, *window, after=deep_after, limit=200)
    assert time.perf_counter() - began < 1.0
    assert ts(later[0].overlap_start) >= deep_after[0]


def test_too_many_comparisons_is_a_422_range_too_dense() -> None:
    cal = calendar("UTC")
    with pytest.raises(Problem) as refused:
        domain.conflicts(dense_rows(), cal, ts("2026-01-01T00:00:00Z"), ts("2027-01-01T00:00:00Z"),
                         limit=200, max_checks=300)  # the first page alone compares about 400 pairs
    assert (refused.value.status, refused.value.code) == (422, "range_too_dense")


def test_many_overlapping_events_of_one_source_cost_no_comparisons() -> None:
    """Events of one source never conflict with each other: a calendar of thousands of
    simultaneous events in one source is answered (no conflicts), not refused."""
    cal = calendar("UTC")
    start = ts("2026-01-01T00:00:00Z")
    rows = sorted_rows(*[row(WORK, format_iso(start + i * 60), format_iso(start + 86400 * 30)) for i in range(3000)])
    page, after = domain.conflicts(rows, cal, start, start + 86400 * 31, max_checks=1)
    assert (page, after) == ([], None)
