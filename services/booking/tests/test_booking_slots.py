"""Slot rules against hand-computed expectations (pure domain, fixed clock)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from calmesh_booking.domain import (
    BusyTime,
    RuleError,
    all_day_interval,
    best_option,
    build_rules,
    cancel_signature,
    compute_slots,
    day_window,
    is_offered,
    tally,
    PollOption,
    Vote,
    verify_cancel_signature,
)

AMS = "Europe/Amsterdam"
MONDAY = date(2026, 12, 7)  # Amsterdam is UTC+1 in December
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def z(text: str) -> datetime:
    """'2026-12-07T08:00' read as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def starts(slots: list[tuple[datetime, datetime]]) -> list[str]:
    return [s.strftime("%Y-%m-%dT%H:%M") for s, _ in slots]


def rules(**overrides: object):
    base: dict[str, object] = dict(
        timezone=AMS,
        duration_minutes=30,
        slot_interval_minutes=None,
        weekly_hours={"mon": [["09:00", "12:00"]]},
    )
    base.update(overrides)
    return build_rules(**base)  # type: ignore[arg-type]


def slots_on(r, day: date, tz: str = AMS, now: datetime = NOW, busy=()) -> list[str]:
    ws, we = day_window(day, day, ZoneInfo(tz))
    return starts(compute_slots(r, ws, we, now, busy))


def test_weekly_hours_give_slots_in_the_pages_timezone() -> None:
    assert slots_on(rules(), MONDAY) == [
        "2026-12-07T08:00", "2026-12-07T08:30", "2026-12-07T09:00",
        "2026-12-07T09:30", "2026-12-07T10:00", "2026-12-07T10:30",
    ]
    # Tuesday has no hours.
    assert slots_on(rules(), MONDAY + timedelta(days=1)) == []


def test_slot_interval_differs_from_duration() -> None:
    r = rules(duration_minutes=60, slot_interval_minutes=45)
    # 09:00, 09:45, 10:30 local; 11:15 would end at 12:15, past closing.
    assert slots_on(r, MONDAY) == ["2026-12-07T08:00", "2026-12-07T08:45", "2026-12-07T09:30"]


def test_date_override_replaces_or_closes_a_day() -> None:
    r = rules(
        date_overrides=[
            {"date": "2026-12-07", "hours": []},
            {"date": "2026-12-08", "hours": [["14:00", "15:00"]]},
        ]
    )
    assert slots_on(r, MONDAY) == []
    assert slots_on(r, date(2026, 12, 8)) == ["2026-12-08T13:00", "2026-12-08T13:30"]
    # The following Monday keeps its weekly hours.
    assert len(slots_on(r, date(2026, 12, 14))) == 6


def test_busy_event_removes_overlapping_slots_only() -> None:
    busy = [(z("2026-12-07T09:00"), z("2026-12-07T09:30"))]  # 10:00–10:30 local
    assert slots_on(rules(), MONDAY, busy=busy) == [
        "2026-12-07T08:00", "2026-12-07T08:30", "2026-12-07T09:30", "2026-12-07T10:00", "2026-12-07T10:30",
    ]


def test_buffers_apply_around_busy_time() -> None:
    busy = [(z("2026-12-07T09:00"), z("2026-12-07T09:30"))]
    r = rules(buffer_before_minutes=15, buffer_after_minutes=15)
    # 08:30Z: [08:15, 09:15) hits it; 09:30Z: [09:15, 10:15) hits it; 10:00Z: [09:45, …) is clear.
    assert slots_on(r, MONDAY, busy=busy) == ["2026-12-07T08:00", "2026-12-07T10:00", "2026-12-07T10:30"]
    # An asymmetric buffer: only time after a slot is protected.
    r = rules(buffer_after_minutes=30)
    assert slots_on(r, MONDAY, busy=busy) == [
        "2026-12-07T08:00", "2026-12-07T09:30", "2026-12-07T10:00", "2026-12-07T10:30",
    ]


def test_minimum_notice_and_maximum_days_ahead() -> None:
    now = z("2026-12-07T08:10")
    r = rules(min_notice_minutes=60)
    # Earliest start 09:10Z: the next aligned slot is 09:30Z.
    assert slots_on(r, MONDAY, now=now) == ["2026-12-07T09:30", "2026-12-07T10:00", "2026-12-07T10:30"]
    # max_days_ahead=12 from 2026-11-25T12:00Z ends at 2026-12-07T12:00Z: every Monday slot starts before.
    assert len(slots_on(rules(max_days_ahead=12), MONDAY)) == 6
    # max 11 days ends on 2026-12-06T12:00Z: nothing on Monday.
    assert slots_on(rules(max_days_ahead=11), MONDAY) == []


def test_dst_spring_forward_in_the_pages_timezone() -> None:
    # 2027-03-28: Amsterdam skips 02:00–03:00 (CET → CEST).
    r = rules(weekly_hours={"sun": [["01:00", "04:00"], ["09:00", "10:00"]]}, max_days_ahead=365)
    got = slots_on(r, date(2027, 3, 28))
    # 01:00 CET = 00:00Z; 04:00 CEST = 02:00Z: two real hours. 09:00 CEST = 07:00Z.
    assert got == [
        "2027-03-28T00:00", "2027-03-28T00:30", "2027-03-28T01:00", "2027-03-28T01:30",
        "2027-03-28T07:00", "2027-03-28T07:30",
    ]
    # The Sunday before, 09:00 is still CET = 08:00Z.
    assert slots_on(r, date(2027, 3, 21))[-2:] == ["2027-03-21T08:00", "2027-03-21T08:30"]


def test_dst_fall_back_in_the_pages_timezone() -> None:
    # 2027-10-31: 03:00 CEST → 02:00 CET, so 01:00–04:00 lasts four real hours.
    r = rules(weekly_hours={"sun": [["01:00", "04:00"]]}, duration_minutes=60, max_days_ahead=365)
    assert slots_on(r, date(2027, 10, 31)) == [
        "2027-10-30T23:00", "2027-10-31T00:00", "2027-10-31T01:00", "2027-10-31T02:00",
    ]


def test_visitor_in_another_timezone_sees_slots_on_their_own_days() -> None:
    r = rules(weekly_hours={"mon": [["09:00", "13:00"]]})  # 08:00Z–12:00Z = 21:00–01:00 in Auckland (UTC+13)
    nz = "Pacific/Auckland"
    assert slots_on(r, MONDAY, tz=nz) == [
        "2026-12-07T08:00", "2026-12-07T08:30", "2026-12-07T09:00",
        "2026-12-07T09:30", "2026-12-07T10:00", "2026-12-07T10:30",
    ]
    assert slots_on(r, MONDAY + timedelta(days=1), tz=nz) == ["2026-12-07T11:00", "2026-12-07T11:30"]


def test_visitor_day_on_a_dst_change_in_the_visitors_timezone() -> None:
    # New York springs forward on 2027-03-14: that day is 23 hours long, 05:00Z to 04:00Z.
    every_hour = {d: [["00:00", "24:00"]] for d in ("sat", "sun", "mon")}
    r = rules(timezone="UTC", weekly_hours=every_hour, duration_minutes=60, max_days_ahead=365)
    got = slots_on(r, date(2027, 3, 14), tz="America/New_York")
    assert len(got) == 23
    assert got[0] == "2027-03-14T05:00" and got[-1] == "2027-03-15T03:00"


def test_all_day_event_blocks_the_day_in_the_calendars_timezone() -> None:
    blocked = all_day_interval(MONDAY, MONDAY + timedelta(days=1), ZoneInfo(AMS))
    assert blocked == (z("2026-12-06T23:00"), z("2026-12-07T23:00"))
    assert slots_on(rules(), MONDAY, busy=[blocked]) == []


def test_is_offered_only_for_aligned_free_slots() -> None:
    r = rules()
    busy = BusyTime([(z("2026-12-07T09:00"), z("2026-12-07T09:30"))])
    assert is_offered(r, z("2026-12-07T08:30"), NOW, busy)
    assert not is_offered(r, z("2026-12-07T08:15"), NOW, busy)  # not on the grid
    assert not is_offered(r, z("2026-12-07T09:00"), NOW, busy)  # busy
    assert not is_offered(r, z("2026-12-07T11:00"), NOW, busy)  # ends after closing


def test_bad_rules_are_refused_with_the_field() -> None:
    with pytest.raises(RuleError) as err:
        rules(weekly_hours={"mon": [["12:00", "09:00"]]})
    assert err.value.field == "weekly_hours.mon[0]"
    with pytest.raises(RuleError):
        rules(weekly_hours={"mon": [["9am", "12:00"]]})
    with pytest.raises(RuleError):
        rules(weekly_hours={"funday": []})
    with pytest.raises(RuleError):
        rules(timezone="Mars/Olympus")


def test_cancel_signature_good_tampered_expired() -> None:
    secret = b"k" * 32
    exp = int((NOW + timedelta(days=1)).timestamp())
    sig = cancel_signature(secret, "bk_1", exp)
    assert verify_cancel_signature(secret, "bk_1", exp, sig, NOW) is None
    assert verify_cancel_signature(secret, "bk_2", exp, sig, NOW) == "bad_signature"
    assert verify_cancel_signature(secret, "bk_1", exp + 1, sig, NOW) == "bad_signature"
    assert verify_cancel_signature(secret, "bk_1", exp, sig, NOW + timedelta(days=2)) == "expired"


def test_best_poll_option_ordering() -> None:
    a = PollOption("opt_a", z("2026-12-01T10:00"), z("2026-12-01T11:00"))
    b = PollOption("opt_b", z("2026-12-02T10:00"), z("2026-12-02T11:00"))
    c = PollOption("opt_c", z("2026-12-03T10:00"), z("2026-12-03T11:00"))
    votes = [Vote("Ann", {"opt_a": "yes", "opt_b": "yes", "opt_c": "yes"}), Vote("Bo", {"opt_b": "maybe", "opt_c": "maybe"})]
    # b and c tie on yes and maybe; b clashes with the calendar, so c wins.
    t = tally([a, b, c], votes, [(z("2026-12-02T10:30"), z("2026-12-02T12:00"))])
    assert [x.calendar_busy for x in t] == [False, True, False]
    assert t[1].available == ["Ann"] and t[1].if_need_be == ["Bo"]
    assert best_option(t) == "opt_c"
    # Without a clash the earliest of the tie wins.
    assert best_option(tally([a, b, c], votes, [])) == "opt_b"
