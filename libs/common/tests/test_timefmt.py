"""RFC 3339 as every service writes and reads it: what API clients see and may send."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from calmesh_common.timefmt import (
    is_date,
    parse_date,
    parse_date_or_instant,
    parse_instant,
    rfc3339,
    rfc3339_epoch,
    rfc3339_or_none,
)

BERLIN = ZoneInfo("Europe/Berlin")


def test_instants_are_written_in_utc_to_the_whole_second_with_a_z() -> None:
    value = datetime(2026, 3, 15, 10, 0, 0, 987654, tzinfo=BERLIN)
    assert rfc3339(value) == "2026-03-15T09:00:00Z"
    assert rfc3339(datetime(2026, 3, 15, 9, 0, tzinfo=timezone(timedelta(hours=-5)))) == "2026-03-15T14:00:00Z"
    # A naive datetime is UTC (what the database drivers give for UTC columns), not the host's zone.
    assert rfc3339(datetime(2026, 3, 15, 9, 0)) == "2026-03-15T09:00:00Z"


def test_optional_instants_stay_null_and_epoch_seconds_read_the_same() -> None:
    assert rfc3339_or_none(None) is None
    assert rfc3339_or_none(datetime(2026, 3, 15, 9, tzinfo=UTC)) == "2026-03-15T09:00:00Z"
    assert rfc3339_epoch(1773565200) == "2026-03-15T09:00:00Z"
    assert rfc3339_epoch(1773565200) == rfc3339(datetime.fromtimestamp(1773565200, UTC))


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-03-15T09:00:00Z", datetime(2026, 3, 15, 9, tzinfo=UTC)),
    ("2026-03-15t09:00:00z", datetime(2026, 3, 15, 9, tzinfo=UTC)),
    ("2026-03-15 10:00:00+01:00", datetime(2026, 3, 15, 9, tzinfo=UTC)),
    ("2026-03-15T10:00:00+0100", datetime(2026, 3, 15, 9, tzinfo=UTC)),
    ("2026-03-15T04:00-05:00", datetime(2026, 3, 15, 9, tzinfo=UTC)),
    ("  2026-03-15T09:00:00Z ", datetime(2026, 3, 15, 9, tzinfo=UTC)),
    # Graph writes 7 fraction digits; more than Python reads is cut, not refused.
    ("2026-03-15T09:00:00.1234567Z", datetime(2026, 3, 15, 9, 0, 0, 123456, tzinfo=UTC)),
    ("2026-03-15T09:00:00.5+00:00", datetime(2026, 3, 15, 9, 0, 0, 500000, tzinfo=UTC)),
])
def test_rfc3339_instants_with_any_offset_are_read_in_utc(text: str, expected: datetime) -> None:
    parsed = parse_instant(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


def test_a_time_without_offset_is_refused_unless_the_caller_has_a_zone() -> None:
    with pytest.raises(ValueError, match="no offset"):
        parse_instant("2026-03-15T10:00:00")
    assert parse_instant("2026-03-15T10:00:00", default_tz=BERLIN) == datetime(2026, 3, 15, 9, tzinfo=UTC)
    # An offset in the text wins over the default zone.
    assert parse_instant("2026-03-15T10:00:00Z", default_tz=BERLIN) == datetime(2026, 3, 15, 10, tzinfo=UTC)


@pytest.mark.parametrize("text", [
    "", "tomorrow", "2026-03-15", "2026-03-15T09", "2026-3-15T09:00:00Z", "20260315T090000Z",
    "2026-W11-7T09:00:00Z", "2026-03-15T09:00:00+01", "2026-03-15T09:00:00,5Z", "2026-03-15T09:00:00ZZ",
])
def test_what_is_not_rfc3339_is_refused_with_a_message_that_shows_the_shape(text: str) -> None:
    with pytest.raises(ValueError, match="is not an RFC 3339 date-time"):
        parse_instant(text)


@pytest.mark.parametrize("text", ["2026-13-01T09:00:00Z", "2026-02-30T09:00:00Z", "2026-03-15T25:00:00Z"])
def test_impossible_date_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a valid date-time"):
        parse_instant(text)


def test_dates_are_year_month_day_only() -> None:
    assert parse_date("2026-03-15") == date(2026, 3, 15)
    assert is_date("2026-03-15") and not is_date("2026-03-15T09:00:00Z") and not is_date("20260315")
    with pytest.raises(ValueError, match="not a date"):
        parse_date("20260315")
    with pytest.raises(ValueError, match="not a valid date"):
        parse_date("2026-02-30")


def test_a_parameter_that_takes_either_gives_a_date_or_an_instant() -> None:
    assert parse_date_or_instant("2026-03-15") == date(2026, 3, 15)
    assert parse_date_or_instant(" 2026-03-15 ") == date(2026, 3, 15)
    assert parse_date_or_instant("2026-03-15T09:00:00Z") == datetime(2026, 3, 15, 9, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_date_or_instant("2026-03-15T09:00:00")
