"""The interval engine against a brute-force oracle that looks at every minute.

Intervals are whole minutes on a small time line; the oracle marks each busy minute, reads merged
blocks as runs of busy minutes (which is exactly "overlapping and touching intervals join"), free
time as runs of non-busy minutes in the window, and conflicts by comparing every pair. Local-time
cases build the intervals from wall-clock times in America/New_York and Europe/Berlin around their
DST transitions, so 23- and 25-hour days are exercised too.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from calmesh_common.intervals import (
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

M = 60
BASE = 1_790_000_000 // M * M  # a whole minute in 2026
SOURCES = ("src_a", "src_b", "src_c")
PROFILE = settings(max_examples=150, deadline=None)


# --- the oracle -----------------------------------------------------------------------------------


def busy_minutes(items: list[tuple[int, int, str, int]]) -> dict[int, set[int]]:
    """Minute index -> indices of the items busy during it."""
    minutes: dict[int, set[int]] = {}
    for idx, (s, e, _src, _p) in enumerate(items):
        for m in range(s // M, e // M):
            minutes.setdefault(m, set()).add(idx)
    return minutes


def runs(minutes: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive minute indices as (start, end) epoch seconds."""
    out: list[tuple[int, int]] = []
    for m in sorted(minutes):
        if out and out[-1][1] == m * M:
            out[-1] = (out[-1][0], (m + 1) * M)
        else:
            out.append((m * M, (m + 1) * M))
    return out


def oracle_free(minutes: dict[int, set[int]], start: int, end: int, min_duration: int) -> list[tuple[int, int]]:
    idle = [m for m in range(start // M, end // M) if m not in minutes]
    return [r for r in runs(idle) if r[1] - r[0] >= max(min_duration, 1)]


def oracle_groups(items: list[tuple[int, int, str, int]], keys: list[list[tuple[str, int]]]) -> list[int]:
    """Union-find over shared keys: the index of each item's first copy."""
    root = list(range(len(items)))

    def find(x: int) -> int:
        while root[x] != x:
            x = root[x]
        return x

    live = [i for i, it in enumerate(items) if it[1] > it[0]]
    for i in live:
        for j in live:
            if j < i and set(keys[i]) & set(keys[j]):
                a, b = find(i), find(j)
                root[max(a, b)] = min(a, b)
    return [find(i) for i in range(len(items))]


# --- strategies -----------------------------------------------------------------------------------


@st.composite
def minute_items(draw: st.DrawFn, max_items: int = 25, horizon: int = 600) -> list[tuple[int, int, str, int]]:
    """Items sorted by start on a time line of `horizon` minutes; some empty, many touching."""
    n = draw(st.integers(0, max_items))
    raw = []
    for _ in range(n):
        s = draw(st.integers(0, horizon))
        length = draw(st.one_of(st.integers(0, 90), st.integers(0, horizon)))
        raw.append((BASE + s * M, BASE + (s + length) * M, draw(st.sampled_from(SOURCES))))
    raw.sort(key=lambda t: t[0])
    return [(s, e, src, i) for i, (s, e, src) in enumerate(raw)]


# --- merging and inverting ------------------------------------------------------------------------


@PROFILE
@given(minute_items())
def test_merged_blocks_are_the_runs_of_busy_minutes(items: list[tuple[int, int, str, int]]) -> None:
    minutes = busy_minutes(items)
    expected = runs(list(minutes))
    assert merge_spans([(s, e) for s, e, _, _ in items]) == expected
    blocks = list(merge_busy(items))
    assert [(b.start, b.end) for b in blocks] == expected
    for b in blocks:
        behind = {i for m in range(b.start // M, b.end // M) for i in minutes[m]}
        assert {it[3] for it in block_items(items, b)} == behind
        assert sorted(b.sources) == sorted({items[i][2] for i in behind})
        assert len(set(b.sources)) == len(b.sources)


@PROFILE
@given(
    minute_items(),
    st.integers(-60, 700),
    st.integers(0, 700),
    st.sampled_from([0, 1, 15, 30, 60]),
)
def test_free_time_is_every_idle_minute_of_the_window(
    items: list[tuple[int, int, str, int]], window_start: int, window_len: int, min_minutes: int
) -> None:
    start = BASE + window_start * M
    end = start + window_len * M
    minutes = busy_minutes(items)
    expected = oracle_free(minutes, start, end, min_minutes * M)
    blocks = merge_busy(items)
    assert free_spans(blocks, start, end, min_minutes * M) == expected
    assert free_spans(blocks.spans(), start, end, min_minutes * M) == expected
    clipped = clip_blocks(blocks, start, end)
    busy_in_window = runs([m for m in minutes if start // M <= m < end // M])
    assert [(b.start, b.end) for b in clipped] == busy_in_window
    # Busy and free (before dropping short gaps) tile the window exactly.
    tiles = sorted([(b.start, b.end) for b in clipped] + free_spans(blocks, start, end))
    assert sum(e - s for s, e in tiles) == max(0, end - start)
    assert all(a[1] == b[0] for a, b in zip(tiles, tiles[1:], strict=False))


# --- conflicts and mirrors ------------------------------------------------------------------------


@PROFILE
@given(
    minute_items(max_items=18, horizon=300),
    st.data(),
)
def test_conflicts_are_every_overlapping_pair_of_meetings_from_different_sources(
    items: list[tuple[int, int, str, int]], data: st.DataObject
) -> None:
    # A few shared keys make mirrors (and chains of mirrors) appear.
    keys = [data.draw(st.lists(st.sampled_from([("uid", k) for k in range(6)]), max_size=2)) for _ in items]
    groups = oracle_groups(items, keys)
    live = [i for i, it in enumerate(items) if it[1] > it[0]]
    members: dict[int, list[int]] = {}
    for i in live:
        members.setdefault(groups[i], []).append(i)
    hull = {r: (min(items[i][0] for i in ms), max(items[i][1] for i in ms)) for r, ms in members.items()}
    srcs = {r: {items[i][2] for i in ms} for r, ms in members.items()}
    expected = set()
    roots = sorted(members)
    for x in roots:
        for y in roots:
            if x < y:
                s, e = max(hull[x][0], hull[y][0]), min(hull[x][1], hull[y][1])
                different = any(a != b for a in srcs[x] for b in srcs[y])
                if s < e and different:
                    expected.add((x, y, s, e))

    meetings = dedupe_mirrors(items, keys)
    assert sorted(m.primary for m in meetings) == roots
    assert [m.start for m in meetings] == sorted(m.start for m in meetings)
    found = set()
    for c in find_conflicts(meetings):
        assert c.first_source != c.second_source
        assert items[c.first][2] == c.first_source and items[c.second][2] == c.second_source
        x, y = sorted((groups[c.first], groups[c.second]))
        found.add((x, y, c.overlap_start, c.overlap_end))
    assert found == expected
    overlaps = [c.overlap_start for c in find_conflicts(meetings)]
    assert overlaps == sorted(overlaps)


# --- local time and DST ---------------------------------------------------------------------------

DST_DAYS = [
    ("America/New_York", date(2026, 3, 8)),
    ("America/New_York", date(2026, 11, 1)),
    ("Europe/Berlin", date(2026, 3, 29)),
    ("Europe/Berlin", date(2026, 10, 25)),
]


@st.composite
def local_items(draw: st.DrawFn) -> tuple[str, date, list[tuple[int, int, str, int]]]:
    """Items from wall-clock times around a DST transition (nonexistent and repeated times too)."""
    zone, day = draw(st.sampled_from(DST_DAYS))
    tz = ZoneInfo(zone)
    raw = []
    for _ in range(draw(st.integers(0, 14))):
        d = day + timedelta(days=draw(st.integers(-1, 1)))
        minute = draw(st.integers(0, 24 * 60 - 1))
        wall = datetime(d.year, d.month, d.day, minute // 60, minute % 60, tzinfo=tz, fold=draw(st.integers(0, 1)))
        s = int(wall.timestamp())
        e = s + draw(st.integers(0, 6 * 60)) * M
        raw.append((s, e, draw(st.sampled_from(SOURCES))))
    raw.sort(key=lambda t: t[0])
    return zone, day, [(s, e, src, i) for i, (s, e, src) in enumerate(raw)]


@PROFILE
@given(local_items(), st.sampled_from([0, 30]))
def test_a_local_day_around_a_dst_change_is_busy_and_free_as_the_minutes_say(
    case: tuple[str, date, list[tuple[int, int, str, int]]], min_minutes: int
) -> None:
    zone, day, items = case
    tz = ZoneInfo(zone)
    start, end = local_day_window(day, tz)
    assert end - start in (23 * 3600, 25 * 3600)  # every chosen day is a transition day
    minutes = busy_minutes(items)
    blocks = merge_busy(items)
    assert free_spans(blocks, start, end, min_minutes * M) == oracle_free(minutes, start, end, min_minutes * M)
    assert [(b.start, b.end) for b in clip_blocks(blocks, start, end)] == runs(
        [m for m in minutes if start // M <= m < end // M]
    )


@PROFILE
@given(
    st.sampled_from(["America/New_York", "Europe/Berlin", "America/Santiago", "Australia/Lord_Howe", "UTC"]),
    st.dates(min_value=date(2025, 1, 1), max_value=date(2027, 12, 31)),
    st.integers(1, 40),
)
def test_local_days_tile_the_time_line(zone: str, first: date, days: int) -> None:
    tz = ZoneInfo(zone)
    windows = [local_day_window(first + timedelta(days=i), tz) for i in range(days)]
    for (_, e), (s, _) in zip(windows, windows[1:], strict=False):
        assert e == s
    span = local_date_span(first, first + timedelta(days=days), tz)
    assert span == (windows[0][0], windows[-1][1])
    for s, e in windows:
        assert 23 * 3600 <= e - s <= 25 * 3600
        local = datetime.fromtimestamp(s, tz)
        assert (local.hour, local.minute) in ((0, 0), (1, 0))  # 01:00 only where midnight is skipped
