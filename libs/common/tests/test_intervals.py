"""The interval engine on hand-made cases: what a reader of a busy/free answer relies on."""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

import pytest

from calmesh_common.intervals import (
    BusyBlock,
    NotSortedError,
    block_items,
    clip_blocks,
    dedupe_mirrors,
    find_conflicts,
    free_spans,
    local_date_span,
    local_day_window,
    merge_busy,
    merge_spans,
)
from calmesh_common.timefmt import rfc3339_epoch

H = 3600


def test_overlapping_and_touching_spans_merge_but_gaps_do_not() -> None:
    assert merge_spans([(0, 10), (5, 20), (20, 30), (31, 40)]) == [(0, 30), (31, 40)]


def test_a_span_inside_another_does_not_shorten_it() -> None:
    assert merge_spans([(0, 100), (10, 20), (30, 40)]) == [(0, 100)]


def test_empty_spans_are_ignored() -> None:
    assert merge_spans([(5, 5), (10, 9), (10, 20)]) == [(10, 20)]
    assert merge_spans([]) == []


def test_unsorted_input_is_refused_not_answered_wrongly() -> None:
    with pytest.raises(NotSortedError):
        merge_spans([(10, 20), (30, 40), (0, 5)])
    with pytest.raises(NotSortedError):
        merge_busy([(10, 20, "a", 1), (30, 40, "a", 2), (0, 5, "a", 3)])


def test_busy_blocks_keep_their_sources_once_each_and_their_items() -> None:
    items = [
        (0, 10, "src_a", "e1"),
        (5, 15, "src_b", "e2"),
        (15, 20, "src_a", "e3"),  # touches: same block
        (30, 40, "src_c", "e4"),
    ]
    blocks = merge_busy(items)
    assert len(blocks) == 2
    first, second = list(blocks)
    assert (first.start, first.end, first.sources) == (0, 20, ("src_a", "src_b"))
    assert [it[3] for it in block_items(items, first)] == ["e1", "e2", "e3"]
    assert (second.start, second.end, second.sources) == (30, 40, ("src_c",))
    assert [it[3] for it in block_items(items, second)] == ["e4"]


def test_an_empty_item_inside_a_block_adds_no_source_and_no_item() -> None:
    items = [(0, 10, "a", 1), (5, 5, "b", 2), (8, 12, "a", 3)]
    (block,) = list(merge_busy(items))
    assert block.sources == ("a",)
    assert [it[3] for it in block_items(items, block)] == [1, 3]


def test_free_time_is_the_window_minus_busy_time() -> None:
    busy = merge_spans([(9 * H, 10 * H), (10 * H, 11 * H), (13 * H, 14 * H)])
    assert free_spans(busy, 8 * H, 18 * H) == [(8 * H, 9 * H), (11 * H, 13 * H), (14 * H, 18 * H)]


def test_free_gaps_shorter_than_the_minimum_are_dropped() -> None:
    busy = merge_spans([(9 * H, 10 * H), (10 * H + 900, 11 * H)])
    assert free_spans(busy, 9 * H, 12 * H, min_duration=1800) == [(11 * H, 12 * H)]
    assert free_spans(busy, 9 * H, 12 * H, min_duration=900) == [(10 * H, 10 * H + 900), (11 * H, 12 * H)]


def test_busy_time_outside_the_window_does_not_matter_and_covering_busy_leaves_nothing() -> None:
    assert free_spans([(0, 5), (100, 200)], 10, 50) == [(10, 50)]
    assert free_spans([(0, 100)], 10, 50) == []
    assert free_spans(merge_busy([(0, 100, "a", None)]), 10, 50) == []
    assert free_spans([], 10, 50) == [(10, 50)]


def test_clipping_cuts_blocks_to_the_window_and_keeps_their_sources() -> None:
    blocks = merge_busy([(0, 20, "a", 1), (30, 60, "b", 2), (70, 80, "c", 3)])
    clipped = clip_blocks(blocks, 10, 50)
    assert [(b.start, b.end, b.sources) for b in clipped] == [(10, 20, ("a",)), (30, 50, ("b",))]
    assert clipped[0] == BusyBlock(10, 20, ("a",), 0, 1)


def test_mirrored_meetings_are_one_meeting_not_a_conflict() -> None:
    items = [
        (0, 60, "work", "standup@work"),
        (0, 60, "personal", "standup@personal"),  # the same invitation, seen through a second account
        (30, 90, "personal", "dentist"),
    ]
    keys = [[("uid", "standup", "")], [("uid", "standup", "")], [("uid", "dentist", "")]]
    meetings = dedupe_mirrors(items, keys)
    assert [m.sources for m in meetings] == [["work", "personal"], ["personal"]]
    conflicts = find_conflicts(meetings)
    # The stand-up (through work) clashes with the dentist (personal): reported once, not twice.
    assert len(conflicts) == 1
    c = conflicts[0]
    assert (c.first, c.second, c.overlap_start, c.overlap_end) == ("standup@work", "dentist", 30, 60)


def test_the_same_provider_event_through_two_accounts_is_one_meeting() -> None:
    items = [(0, 60, "a", "x"), (0, 60, "b", "y")]
    keys = [[("uid", "u1", ""), ("provider", "g123", "")], [("uid", "u2", ""), ("provider", "g123", "")]]
    assert len(dedupe_mirrors(items, keys)) == 1
    assert find_conflicts(dedupe_mirrors(items, keys)) == []


def test_instances_of_a_series_are_different_meetings() -> None:
    items = [(0, 60, "a", 1), (30, 90, "b", 2)]
    keys = [[("uid", "series", "2026-03-01T09:00:00Z")], [("uid", "series", "2026-03-02T09:00:00Z")]]
    assert len(find_conflicts(dedupe_mirrors(items, keys))) == 1


def test_same_source_overlaps_and_touching_events_are_not_conflicts() -> None:
    items = [(0, 60, "a", 1), (30, 90, "a", 2), (90, 120, "b", 3)]
    assert find_conflicts(dedupe_mirrors(items, [[], [], []])) == []


def test_a_long_event_conflicts_with_each_event_it_covers() -> None:
    items = [(0, 1000, "a", "long"), (10, 20, "b", 1), (30, 40, "b", 2), (990, 1010, "b", 3)]
    conflicts = find_conflicts(dedupe_mirrors(items, [[]] * 4))
    assert [(c.second, c.overlap_start, c.overlap_end) for c in conflicts] == [(1, 10, 20), (2, 30, 40), (3, 990, 1000)]


def test_day_windows_follow_the_calendar_on_dst_days() -> None:
    ny = ZoneInfo("America/New_York")
    berlin = ZoneInfo("Europe/Berlin")
    assert _hours(local_day_window(date(2026, 3, 8), ny)) == 23
    assert _hours(local_day_window(date(2026, 11, 1), ny)) == 25
    assert _hours(local_day_window(date(2026, 3, 29), berlin)) == 23
    assert _hours(local_day_window(date(2026, 10, 25), berlin)) == 25
    assert _hours(local_day_window(date(2026, 3, 15), ny)) == 24
    start, _ = local_day_window(date(2026, 3, 8), ny)
    assert rfc3339_epoch(start) == "2026-03-08T05:00:00Z"
    assert rfc3339_epoch(local_day_window(date(2026, 3, 9), ny)[0]) == "2026-03-09T04:00:00Z"


def test_a_midnight_inside_a_dst_gap_starts_the_day_at_the_transition() -> None:
    # Chile springs forward at 24:00 on 2026-09-05: 2026-09-06 00:00 does not exist; the day
    # starts at 01:00 -03, which is the instant the clocks jumped.
    santiago = ZoneInfo("America/Santiago")
    start, end = local_day_window(date(2026, 9, 6), santiago)
    assert rfc3339_epoch(start) == "2026-09-06T04:00:00Z"
    assert end - start == 23 * H
    assert local_day_window(date(2026, 9, 5), santiago)[1] == start


def test_all_day_spans_cover_whole_local_days() -> None:
    ny = ZoneInfo("America/New_York")
    s, e = local_date_span(date(2026, 3, 7), date(2026, 3, 10), ny)
    assert (e - s) == (24 + 23 + 24) * H


def _hours(span: tuple[int, int]) -> float:
    return (span[1] - span[0]) / H
