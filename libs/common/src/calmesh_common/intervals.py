"""The interval engine: busy/free arithmetic and conflict detection on integer epoch seconds.

Pure and fast. Every function works on half-open spans ``[start, end)`` of whole epoch seconds and
expects its input **sorted by start** (the projection returns rows that way), so each is a single
linear sweep: no sorting, no minute grids, no datetimes on the hot path. Unsorted input is refused
with :class:`NotSortedError` rather than answered wrongly.

- :func:`merge_spans` merges overlapping *and touching* spans.
- :func:`merge_busy` does the same for items ``(start, end, source_id, payload)``, keeping for each
  merged block the sources behind it and the slice of items that made it (:func:`block_items`).
- :func:`free_spans` inverts merged busy time within a window, dropping gaps shorter than a minimum.
- :func:`clip_blocks` cuts merged blocks to a window.
- :func:`dedupe_mirrors` folds copies of one meeting (the same iCalendar UID, or the same provider
  event, seen through two sources) into one :class:`Meeting`.
- :func:`find_conflicts` reports every pair of overlapping meetings from different sources with an
  active-set sweep: O(n + k) for n meetings and k overlapping pairs while few meetings are open at
  any one instant, which is what real calendars look like. :func:`iter_conflicts` yields them
  lazily, from a starting point and within a budget of comparisons, for callers that need a page.

:func:`merge_busy` returns columns (:class:`BusyBlocks`) rather than one object per block: on
100,000 items that keeps the garbage collector out of the way, which is most of its cost.

Local-time helpers (:func:`local_day_window`, :func:`local_date_span`) turn dates read in an IANA
time zone into epoch spans, so day boundaries are right on 23- and 25-hour DST days.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from collections.abc import Hashable, Iterable, Iterator, Sequence
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

__all__ = [
    "BusyBlock",
    "BusyBlocks",
    "BusyItem",
    "Conflict",
    "Meeting",
    "NotSortedError",
    "TooDenseError",
    "block_items",
    "clip_blocks",
    "dedupe_mirrors",
    "find_conflicts",
    "free_spans",
    "iter_conflicts",
    "local_date_span",
    "local_day_window",
    "merge_busy",
    "merge_spans",
]

#: What an item says it comes from: a source id, or a number standing for one (availability passes
#: 1-based positions into its list of source ids). The engine only hashes and compares it.
Source = Any

#: An item for :func:`merge_busy` / :func:`dedupe_mirrors`: ``(start, end, source, payload)``.
BusyItem = tuple[int, int, Source, Any]


class NotSortedError(ValueError):
    """The input was not sorted by start; the sweep would give a wrong answer, so it refuses."""


@dataclass(slots=True, repr=False)
class BusyBlock:
    """One merged busy block ``[start, end)``.

    ``sources`` are the source ids behind it in first-seen order, without duplicates. Because the
    input is sorted by start, every block is made by one contiguous run ``items[lo:hi]`` of it.
    """

    start: int
    end: int
    sources: tuple[Source, ...]
    lo: int = 0
    hi: int = 0

    def __repr__(self) -> str:
        return f"BusyBlock({self.start}, {self.end}, {self.sources!r}, items[{self.lo}:{self.hi}])"


class BusyBlocks:
    """The result of :func:`merge_busy`, as parallel columns; iterating yields :class:`BusyBlock`s."""

    __slots__ = ("ends", "his", "los", "sources", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.sources: list[tuple[Source, ...]] = []
        self.los: list[int] = []
        self.his: list[int] = []

    def __len__(self) -> int:
        return len(self.starts)

    def add(self, start: int, end: int, sources: tuple[str, ...], lo: int, hi: int) -> None:
        """Append one block: its span, its sources and the run ``items[lo:hi]`` that made it."""
        self.starts.append(start)
        self.ends.append(end)
        self.sources.append(sources)
        self.los.append(lo)
        self.his.append(hi)

    def __getitem__(self, i: int) -> BusyBlock:
        return BusyBlock(self.starts[i], self.ends[i], self.sources[i], self.los[i], self.his[i])

    def __iter__(self) -> Iterator[BusyBlock]:
        for row in zip(self.starts, self.ends, self.sources, self.los, self.his, strict=True):
            yield BusyBlock(*row)

    def spans(self) -> list[tuple[int, int]]:
        return list(zip(self.starts, self.ends, strict=True))


class Meeting:
    """One meeting, possibly seen through several sources.

    ``copies`` is ``[(source_id, payload), ...]`` in input order: the first copy is the primary.
    The meeting spans from the earliest start to the latest end of its copies. A meeting seen once
    (the usual case) keeps no lists, which is most of the cost on large inputs.
    """

    __slots__ = ("_copies", "end", "payload", "source", "start")

    def __init__(self, start: int, end: int, source: Source, payload: Any) -> None:
        self.start = start
        self.end = end
        self.source = source  # the primary copy's
        self.payload = payload
        self._copies: list[tuple[Source, Any]] | None = None

    @property
    def primary(self) -> Any:
        return self.payload

    @property
    def copies(self) -> list[tuple[Source, Any]]:
        return self._copies if self._copies is not None else [(self.source, self.payload)]

    @property
    def sources(self) -> list[Source]:
        if self._copies is None:
            return [self.source]
        out: list[Source] = []
        for src, _ in self._copies:
            if src not in out:
                out.append(src)
        return out

    def add_copy(self, start: int, end: int, source: Source, payload: Any) -> None:
        if start < self.start:
            self.start = start
        if end > self.end:
            self.end = end
        if self._copies is None:
            self._copies = [(self.source, self.payload)]
        self._copies.append((source, payload))

    def __repr__(self) -> str:
        return f"Meeting({self.start}, {self.end}, {self.sources!r})"


@dataclass(slots=True, repr=False, eq=False)
class Conflict:
    """Two meetings seen through different sources that overlap on ``[overlap_start, overlap_end)``.

    ``first``/``second`` are the copies shown for the pair, chosen so that their sources differ
    (primaries preferred); ``first`` belongs to the meeting that started first.
    """

    first: Any
    first_source: Source
    second: Any
    second_source: Source
    overlap_start: int
    overlap_end: int

    def __repr__(self) -> str:
        return (
            f"Conflict({self.first_source}:{self.first!r}, {self.second_source}:{self.second!r},"
            f" {self.overlap_start}, {self.overlap_end})"
        )


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge spans sorted by start into disjoint spans; overlapping and touching ones join.

    Empty spans (``end <= start``) are ignored. Raises :class:`NotSortedError` on unsorted input.
    """
    out: list[tuple[int, int]] = []
    append = out.append
    cur_s = cur_e = 0
    have = False
    for s, e in spans:
        if have and s <= cur_e:
            if s < cur_s:
                raise NotSortedError(f"span starting at {s} comes after one starting at {cur_s}")
            if e > cur_e:
                cur_e = e
        elif e > s:
            if have:
                append((cur_s, cur_e))
            cur_s, cur_e, have = s, e, True
    if have:
        append((cur_s, cur_e))
    return out


def merge_busy(items: Iterable[BusyItem]) -> BusyBlocks:
    """Merge ``(start, end, source_id, payload)`` items sorted by start into busy blocks.

    Overlapping and touching items join one block, which keeps the source ids behind it (first
    seen first) and the run ``items[lo:hi]`` that made it. Empty items (``end <= start``) neither
    start nor extend a block nor add a source. Raises :class:`NotSortedError` on unsorted input.
    """
    out = BusyBlocks()
    add = out.add
    # Source tuples are shared: one per distinct source, one per (tuple, new source) step.
    single: dict[Source, tuple[Source, ...]] = {}
    grown: dict[tuple[tuple[Source, ...], Source], tuple[Source, ...]] = {}
    cur: tuple[Source, ...] | None = None
    cur_s = cur_e = 0
    lo = i = 0
    for s, e, src, _payload in items:
        if cur is not None and s <= cur_e:
            if s < cur_s:
                raise NotSortedError(f"item {i} starts at {s}, before its block's start {cur_s}")
            if e > cur_e:
                cur_e = e
            if src not in cur and e > s:
                nxt = grown.get((cur, src))
                if nxt is None:
                    nxt = grown[(cur, src)] = (*cur, src)
                cur = nxt
        elif e > s:
            if cur is not None:
                add(cur_s, cur_e, cur, lo, i)
            cur = single.get(src)
            if cur is None:
                cur = single[src] = (src,)
            cur_s, cur_e, lo = s, e, i
        i += 1
    if cur is not None:
        add(cur_s, cur_e, cur, lo, i)
    return out


def block_items(items: Sequence[BusyItem], block: BusyBlock) -> list[BusyItem]:
    """The non-empty items behind `block` (a block :func:`merge_busy` made from `items`)."""
    return [it for it in items[block.lo : block.hi] if it[1] > it[0]]


def clip_blocks(blocks: BusyBlocks | Iterable[BusyBlock], start: int, end: int) -> list[BusyBlock]:
    """The blocks that overlap ``[start, end)``, cut to it (sources and item run kept)."""
    out: list[BusyBlock] = []
    if end <= start:
        return out
    if isinstance(blocks, BusyBlocks):
        # Disjoint and sorted, so ends ascend: jump to the first block ending after `start`.
        columns = blocks
        first = bisect_right(columns.ends, start)
        last = bisect_left(columns.starts, end, lo=first)
        blocks = [columns[i] for i in range(first, last)]
    for b in blocks:
        if b.end <= start:
            continue
        if b.start >= end:
            break
        if b.start < start or b.end > end:
            b = BusyBlock(max(b.start, start), min(b.end, end), b.sources, b.lo, b.hi)
        out.append(b)
    return out


def free_spans(
    busy: BusyBlocks | Iterable[BusyBlock] | Iterable[tuple[int, int]],
    start: int,
    end: int,
    min_duration: int = 0,
) -> list[tuple[int, int]]:
    """The free spans of ``[start, end)`` around `busy` (merged and sorted), as ``(start, end)``.

    `busy` is a :class:`BusyBlocks`, :class:`BusyBlock`s or ``(start, end)`` spans. Gaps shorter
    than `min_duration` seconds are dropped.
    """
    out: list[tuple[int, int]] = []
    if end <= start:
        return out
    pairs: Iterable[tuple[int, int]]
    if isinstance(busy, BusyBlocks):
        pairs = zip(busy.starts, busy.ends, strict=True)
    else:
        # One kind throughout (the first item tells which), so only the first is looked at.
        items: list[Any] = list(busy)
        if items and isinstance(items[0], BusyBlock):
            pairs = [(b.start, b.end) for b in items]
        else:
            pairs = items
    need = min_duration if min_duration > 0 else 1
    append = out.append
    cursor = start
    for bs, be in pairs:
        if be <= cursor:
            continue
        if bs >= end:
            break
        if bs - cursor >= need:
            append((cursor, bs))
        cursor = be
        if cursor >= end:
            return out
    if end - cursor >= need:
        append((cursor, end))
    return out


def dedupe_mirrors(items: Sequence[BusyItem], keys: Sequence[Sequence[Hashable]]) -> list[Meeting]:
    """Fold copies of one meeting into one :class:`Meeting`, keeping input order.

    ``keys[i]`` lists the identities of ``items[i]`` (for instance ``("uid", uid, recurrence_id)``
    and ``("provider", provider_event_id, recurrence_id)``); items that share an identity, directly
    or through others, are one meeting. An item with no keys is a meeting of its own; empty items
    are dropped. Meetings come out in the order of their first copy, so sorted by start when the
    items were.
    """
    if len(items) != len(keys):
        raise ValueError("items and keys must have the same length")
    parent: list[int] | None = None  # union-find over item indices, made at the first shared key

    def root(x: int) -> int:
        assert parent is not None
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first: dict[Hashable, int] = {}
    claim = first.setdefault
    for i, ks in enumerate(keys):
        if not ks:
            continue
        it = items[i]
        if it[1] <= it[0]:
            continue
        for k in ks:
            j = claim(k, i)
            if j == i:
                continue
            if parent is None:
                parent = list(range(len(items)))
            ri, rj = root(i), root(j)
            if ri != rj:  # the earlier item stays the root, so the primary is the first copy
                if ri < rj:
                    parent[rj] = ri
                else:
                    parent[ri] = rj
    if parent is None:  # no two items share a key: every item is a meeting
        return [Meeting(s, e, src, payload) for s, e, src, payload in items if e > s]
    meetings: list[Meeting] = []
    by_root: dict[int, Meeting] = {}
    for i, (s, e, src, payload) in enumerate(items):
        if e <= s:
            continue
        if parent[i] == i:  # a root: the first copy of its meeting
            m = Meeting(s, e, src, payload)
            meetings.append(m)
            if keys[i]:
                by_root[i] = m
        else:
            by_root[root(i)].add_copy(s, e, src, payload)
    return meetings


def _pick_pair(a: Meeting, b: Meeting) -> tuple[str, Any, str, Any] | None:
    """Copies of `a` and `b` from different sources, primaries first; None when there are none."""
    if a._copies is None and b._copies is None:  # the usual case: each seen once
        return (a.source, a.payload, b.source, b.payload) if a.source != b.source else None
    for sa, pa in a.copies:
        for sb, pb in b.copies:
            if sa != sb:
                return sa, pa, sb, pb
    return None


class TooDenseError(ValueError):
    """A conflict sweep would compare more pairs than its budget allows (see :func:`iter_conflicts`)."""

    def __init__(self, checks: int, budget: int) -> None:
        super().__init__(f"more than {budget} pair comparisons needed (stopped at {checks})")
        self.checks = checks
        self.budget = budget


def find_conflicts(meetings: Iterable[Meeting]) -> list[Conflict]:
    """Every pair of overlapping meetings (sorted by start) seen through different sources.

    Touching meetings do not conflict. A meeting seen through sources {A, B} conflicts with one in
    A alone (its copy in B clashes with it); two meetings in the same single source do not. The
    sweep keeps only the meetings still open, so it is linear in meetings plus conflicts found.
    Conflicts come out ordered by overlap start. (A caller that needs one page of them should use
    :func:`iter_conflicts`, which need not find them all.)
    """
    return list(iter_conflicts(meetings))


def iter_conflicts(
    meetings: Iterable[Meeting], *, since: int | None = None, until: int | None = None,
    max_checks: int | None = None,
) -> Iterator[Conflict]:
    """The conflicts of :func:`find_conflicts`, lazily, in the same order (by overlap start, which
    is the start of the later meeting, so nondecreasing): a consumer that has what it needs stops.

    - `since`: pairs whose overlap starts before it are not wanted; meetings starting before it are
      only tracked, never compared (a later page of results costs no comparison of earlier pages).
    - `until`: the sweep ends at the first meeting starting at or after it.
    - `max_checks`: a budget of pair comparisons; past it :class:`TooDenseError` is raised, so that
      a dense input costs bounded work.

    Meetings of one single source open together are never compared with each other (they cannot
    conflict), so a dense calendar of one source costs no comparisons at all.
    """
    active: list[Meeting] = []
    soonest_end = 0  # the earliest end among `active`: nothing needs dropping before it
    last_start: int | None = None
    # How many of `active` are seen once, per source, and how many through several sources: a
    # meeting seen once meets a candidate only in `active` outside its own source.
    plain: dict[str, int] = {}
    multi = 0
    checks = 0
    for m in meetings:
        s = m.start
        if m.end <= s:
            continue
        if last_start is not None and s < last_start:
            raise NotSortedError(f"meeting starting at {s} comes after one starting at {last_start}")
        last_start = s
        if until is not None and s >= until:
            return
        if active:
            if soonest_end <= s:
                # Drop what has ended; every survivor started no later than m and ends after s.
                active = [a for a in active if a.end > s]
                soonest_end = min((a.end for a in active), default=m.end)
                plain.clear()
                multi = 0
                for a in active:
                    if a._copies is None:
                        plain[a.source] = plain.get(a.source, 0) + 1
                    else:
                        multi += 1
            wanted = since is None or s >= since
            if wanted and (m._copies is not None or multi or plain.get(m.source, 0) != len(active)):
                checks += len(active)
                if max_checks is not None and checks > max_checks:
                    raise TooDenseError(checks, max_checks)
                for a in active:
                    pair = _pick_pair(a, m)
                    if pair is not None:
                        sa, pa, sb, pb = pair
                        yield Conflict(pa, sa, pb, sb, s, a.end if a.end < m.end else m.end)
        if not active or m.end < soonest_end:
            soonest_end = m.end
        active.append(m)
        if m._copies is None:
            plain[m.source] = plain.get(m.source, 0) + 1
        else:
            multi += 1


# --- time zones -------------------------------------------------------------------------------


def local_day_window(day: date, tz: ZoneInfo) -> tuple[int, int]:
    """``[start, end)`` in epoch seconds of calendar day `day` in `tz` (23 or 25 hours on DST days)."""
    return local_date_span(day, day + timedelta(days=1), tz)


def local_date_span(start: date, end: date, tz: ZoneInfo) -> tuple[int, int]:
    """Epoch span from local midnight of `start` to local midnight of `end` (exclusive) in `tz`.

    Midnights are read with ``fold=0`` (PEP 495): an ambiguous one is its first occurrence, and one
    at the start of a DST gap (the only kind real zones have) is the transition instant. The same
    rule on both ends makes consecutive days tile the time line without gaps or overlaps.
    """
    s = datetime(start.year, start.month, start.day, tzinfo=tz)
    e = datetime(end.year, end.month, end.day, tzinfo=tz)
    return int(s.timestamp()), int(e.timestamp())
