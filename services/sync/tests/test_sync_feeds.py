"""Hand-written feeds (`calmesh_testing.feeds.ICAL_FEEDS`, see its README) through the sync path's own functions: parse,
expand in the window, build the projection rows. Expectations are worked out by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from calmesh_providers import ical
from calmesh_sync.engine import build_rows, expand_ical_body
from calmesh_testing.feeds import ICAL_FEEDS

FEEDS = ICAL_FEEDS
WINDOW = ical.Window.around(date(2026, 11, 25), 90, 400)


def z(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def expand(name: str, tz: str = "Europe/Amsterdam", max_instances: int = 200_000) -> tuple[list[ical.Instance], ical.Expansion, str | None]:
    return expand_ical_body((FEEDS / name).read_bytes(), WINDOW, timezone=tz, max_instances=max_instances, timeout=30)


def timed(instances: list[ical.Instance]) -> list[tuple[str, str, datetime, datetime, str, str]]:
    return sorted((i.uid, i.recurrence_id, i.start_at, i.end_at, i.status, i.title) for i in instances)


def test_simple_feed() -> None:
    instances, expansion, name = expand("simple.ics")
    assert name == "Simple"
    by_uid = {i.uid: i for i in instances}
    planning = by_uid["simple-1@test"]
    assert (planning.start_at, planning.end_at, planning.all_day) == (z("2026-12-01T10:00:00Z"), z("2026-12-01T11:30:00Z"), False)
    assert planning.location == "Room 4" and planning.description == "Quarterly planning, with coffee"
    assert planning.recurrence_id == "" and not planning.recurring
    eve = by_uid["simple-2@test"]
    assert eve.all_day and (eve.start_date, eve.end_date) == (date(2026, 12, 24), date(2026, 12, 25))
    # All-day rows span the widest UTC reading of their dates (UTC+14 .. UTC-12).
    assert (eve.start_at, eve.end_at) == (z("2026-12-23T10:00:00Z"), z("2026-12-25T12:00:00Z"))
    untitled = by_uid["simple-3@test"]
    assert untitled.title == "" and untitled.end_at - untitled.start_at == (z("2026-12-02T09:45:00Z") - z("2026-12-02T09:00:00Z"))
    assert expansion.warning() is None


@pytest.mark.parametrize(("tz", "first_utc_hour", "spring"), [("Europe/Amsterdam", 8, (8, 7)), ("America/New_York", 14, (13, 13))])
def test_floating_times_read_in_the_users_timezone(tz: str, first_utc_hour: int, spring: tuple[int, int]) -> None:
    instances, _, _ = expand("floating.ics", tz=tz)
    daily = sorted(i.start_at for i in instances if i.uid == "floating-1@test")
    assert [d.hour for d in daily] == [first_utc_hour] * 3
    assert [d.day for d in daily] == [3, 4, 5]
    # Amsterdam springs forward on 28 March 2027 (New York already did on the 14th).
    weekly = sorted(i.start_at for i in instances if i.uid == "floating-2@test")
    assert [(d.day, d.hour) for d in weekly] == [(21, spring[0]), (28, spring[1])]
    rows = build_rows(instances, connection_id="conn_x", calendar_id="cal_x", provider_event_id=None, now=datetime.now(UTC))
    assert {k[1] for k in rows if k[0] == "floating-1@test"} == {
        d.strftime("%Y-%m-%dT%H:%M:%SZ") for d in daily
    }


def test_custom_vtimezones() -> None:
    instances, _, _ = expand("custom_vtimezone.ics")
    fancy = [i for i in instances if i.uid == "fancy-1@test"]
    assert [(i.start_at, i.end_at) for i in fancy] == [(z("2026-12-05T06:30:00Z"), z("2026-12-05T07:30:00Z"))]
    own = sorted(i.start_at for i in instances if i.uid == "customdst-1@test")
    # 7 March: +02:00; 14 March (second Sunday, after 02:00): +03:00.
    assert own == [z("2027-03-07T08:00:00Z"), z("2027-03-14T07:00:00Z")]


def test_bysetpos_last_weekday_of_the_month() -> None:
    instances, _, _ = expand("bysetpos.ics")
    assert sorted(i.start_at for i in instances) == [
        z("2026-11-30T16:00:00Z"), z("2026-12-31T16:00:00Z"), z("2027-01-29T16:00:00Z"), z("2027-02-26T16:00:00Z"),
    ]


def test_series_with_overrides_exdate_and_rdate() -> None:
    instances, _, _ = expand("overrides.ics")
    assert timed(instances) == sorted([
        ("series-o@test", "2026-12-02T09:00:00Z", z("2026-12-02T09:00:00Z"), z("2026-12-02T10:00:00Z"), "confirmed", "Weekly review"),
        ("series-o@test", "2026-12-09T09:00:00Z", z("2026-12-10T13:00:00Z"), z("2026-12-10T14:00:00Z"), "confirmed", "Weekly review (moved)"),
        ("series-o@test", "2026-12-16T09:00:00Z", z("2026-12-16T09:00:00Z"), z("2026-12-16T10:00:00Z"), "cancelled", "Weekly review"),
        ("series-o@test", "2026-12-25T09:00:00Z", z("2026-12-25T09:00:00Z"), z("2026-12-25T10:00:00Z"), "confirmed", "Weekly review"),
        ("series-o@test", "2026-12-30T09:00:00Z", z("2026-12-30T09:00:00Z"), z("2026-12-30T10:00:00Z"), "confirmed", "Weekly review"),
        ("series-o@test", "2027-01-06T09:00:00Z", z("2027-01-06T09:00:00Z"), z("2027-01-06T10:00:00Z"), "confirmed", "Weekly review"),
    ])
    rows = build_rows(instances, connection_id="conn_x", calendar_id="cal_x", provider_event_id=None, now=datetime.now(UTC))
    assert len({r.recurring_event_id for r in rows.values()}) == 1
    assert len({r.event_id for r in rows.values()}) == 6


def test_google_export_with_x_wr_timezone() -> None:
    instances, _, name = expand("google_xwr.ics", tz="Asia/Tokyo")  # the feed's zone wins over the user's
    assert name == "Team (Google)"
    weekly = sorted(i.start_at for i in instances if i.uid == "google-weekly@google.com")
    # Nine in New York each week: EDT before 1 November, EST after.
    assert weekly == [z("2026-10-28T13:00:00Z"), z("2026-11-04T14:00:00Z"), z("2026-11-11T14:00:00Z")]
    floating = [i.start_at for i in instances if i.uid == "google-floating@google.com"]
    assert floating == [z("2026-12-01T14:00:00Z")]


def test_events_without_uid_get_distinct_stable_uids() -> None:
    first, _, _ = expand("nouid.ics")
    second, _, _ = expand("nouid.ics")
    assert len({i.uid for i in first}) == 2
    assert sorted(i.uid for i in first) == sorted(i.uid for i in second)
    assert all(i.uid.startswith("calmesh-nouid-") for i in first)


def test_event_without_dtstart_is_left_out_and_reported() -> None:
    instances, expansion, _ = expand("no_dtstart.ics")
    assert [i.uid for i in instances] == ["good@test"]
    assert expansion.skipped == 1 and "could not be read" in (expansion.warning() or "")


def test_several_vcalendars_and_a_bare_vevent_are_read_leniently() -> None:
    instances, _, _ = expand("multiple_vcalendars.ics")
    assert sorted(i.uid for i in instances) == ["first@test", "second@test"]
    instances, _, _ = expand("bare_vevent.ics")
    assert [(i.uid, i.start_at) for i in instances] == [("bare@test", z("2026-12-09T10:00:00Z"))]


def test_thisandfuture_instances_keep_their_own_recurrence_ids() -> None:
    instances, _, _ = expand("thisandfuture.ics")
    got = sorted((i.recurrence_id, i.start_at) for i in instances)
    assert got == [
        ("2026-12-01T09:00:00Z", z("2026-12-01T09:00:00Z")),
        ("2026-12-02T09:00:00Z", z("2026-12-02T09:00:00Z")),
        ("2026-12-03T09:00:00Z", z("2026-12-03T11:00:00Z")),
        ("2026-12-04T09:00:00Z", z("2026-12-04T11:00:00Z")),
        ("2026-12-05T09:00:00Z", z("2026-12-05T11:00:00Z")),
    ]


def test_a_series_that_cannot_be_expanded_is_left_out_and_the_rest_syncs() -> None:
    instances, expansion, _ = expand("mixed_series.ics")
    assert "fine@test" in {i.uid for i in instances}
    assert "mixed@test" not in {i.uid for i in instances}
    assert expansion.skipped >= 1 and "mixed@test" in (expansion.warning() or "")


def test_an_endless_secondly_rule_is_refused_before_expanding() -> None:
    with pytest.raises(ical.ExpansionLimitError, match="steps to expand"):
        expand("endless.ics")


def test_a_minutely_rule_without_end_stops_at_the_instance_cap() -> None:
    with pytest.raises(ical.ExpansionLimitError, match="more than 10,000 event instances"):
        expand("minutely.ics", max_instances=10_000)


def test_an_html_page_is_not_a_feed() -> None:
    with pytest.raises(ical.SourceError, match="not valid iCalendar|no iCalendar data"):
        expand("not_ical.ics")


def test_empty_feed_is_an_error() -> None:
    with pytest.raises(ical.SourceError, match="empty"):
        expand_ical_body(b"   ", WINDOW, timezone="UTC", max_instances=10, timeout=5)


def test_instances_without_their_series_master() -> None:
    instances, _, _ = expand("only_overrides.ics")
    assert timed(instances) == [
        ("invite@test", "2026-12-07T15:00:00Z", z("2026-12-07T16:00:00Z"), z("2026-12-07T17:00:00Z"), "confirmed",
         "One instance of someone else's series (moved)"),
        ("invite@test", "2026-12-14T15:00:00Z", z("2026-12-14T15:00:00Z"), z("2026-12-14T16:00:00Z"), "confirmed", "Another instance of it"),
    ]
    assert all(i.recurring for i in instances)


def test_an_unreadable_dtstart_is_left_out_and_reported() -> None:
    instances, expansion, _ = expand("broken_dtstart.ics")
    assert [i.uid for i in instances] == ["readable@test"]
    assert expansion.skipped == 1 and expansion.warning()
