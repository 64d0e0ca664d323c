"""Busy timelines of unified calendars kept in memory, checked against the projection on every read.

A free/busy read of a dense calendar spent most of its time having PostgreSQL gather and ship
thousands of rows and then merging them again. Each replica now keeps, per calendar (its user,
slug, zone and sources), every busy row of its sources as the engine's sorted items and their
merged blocks, loaded once, together with the **version** of each source in the projection
(``sync.projection_versions``, bumped by triggers in the transaction of every statement that
changes a source's rows: a sync, an event write, a booking's rows, a purge, a rebuild).

Every read asks PostgreSQL for the versions of the calendar's sources (one small indexed query, one
round trip) and answers from memory only when they are the ones the timeline was loaded at; else it
loads the calendar again, rows and versions in one statement (one snapshot). So an answer is never
older than the projection at the moment of the read: a booking's rows show on the very next read
(docs/api-guide.md, "Consistency"), whichever replica answers, with no reliance on events arriving in time.

A window is answered by bisecting the merged blocks; the blocks cut by the window's edges get their
sources from the items that overlap the window, so the answer is the one a query of the window alone
gives (proved by a property test). Reads that find the same calendar changed at once share one
load when its versions are the ones they saw. Calendars with more rows than `max_rows` are not kept; at most
`max_entries` calendars are kept (least recently used dropped first).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from calmesh_common.intervals import BusyBlock, BusyBlocks, merge_busy

from . import store
from .domain import items_from_columns

#: Whole epoch seconds around every row the projection can hold (the sync window is far inside).
_ALL_FROM = -2_208_988_800  # 1900-01-01
_ALL_TO = 7_258_118_400  # 2200-01-01

Key = tuple[str, str, str, tuple[str, ...], tuple[str, ...]]


@dataclass(slots=True)
class Entry:
    versions: list[int]
    starts: list[int]
    ends: list[int]
    ords: list[int]
    blocks: BusyBlocks

    def window(self, start: int, end: int) -> list[BusyBlock]:
        """The merged blocks overlapping ``[start, end)``, cut to it; a block cut by an edge keeps
        only the sources of its items that overlap the window (first-seen order, as a query of the
        window alone would give)."""
        blocks = self.blocks
        first = bisect_right(blocks.ends, start)
        last = bisect_left(blocks.starts, end, lo=first)
        out: list[BusyBlock] = []
        bstarts, bends, bsources, los, his = blocks.starts, blocks.ends, blocks.sources, blocks.los, blocks.his
        for k in range(first, last):
            bs, be = bstarts[k], bends[k]
            if bs >= start and be <= end:
                out.append(BusyBlock(bs, be, bsources[k]))
                continue
            seen: list[int] = []
            starts, ends, ords = self.starts, self.ends, self.ords
            for i in range(los[k], his[k]):
                if ends[i] > start and starts[i] < end and ends[i] > starts[i] and ords[i] not in seen:
                    seen.append(ords[i])
            out.append(BusyBlock(max(bs, start), min(be, end), tuple(seen)))
        return out


class Timelines:
    """The per-replica store of calendar timelines (see the module docstring)."""

    def __init__(self, *, max_entries: int = 1000, max_rows: int = 200_000) -> None:
        self.max_entries = max_entries
        self.max_rows = max_rows
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._too_big: OrderedDict[Key, None] = OrderedDict()
        self._pending: dict[Key, asyncio.Future[Entry | None]] = {}
        self.loads = 0  # for tests and the README's figures: how often a calendar was (re)loaded

    async def blocks(self, pool: Any, user_id: str, slug: str, tz_name: str, connection_ids: list[str],
                     calendar_ids: list[str], start: int, end: int) -> list[BusyBlock] | None:
        """The busy blocks of ``[start, end)`` as of now, with sources as 1-based positions in
        `connection_ids`; None when the calendar is too big to keep (the caller reads the window)."""
        key: Key = (user_id, slug, tz_name, tuple(connection_ids), tuple(calendar_ids))
        if key in self._too_big:
            return None
        entry = self._entries.get(key)
        pending = self._pending.get(key)
        if entry is not None or pending is not None:
            versions = await store.source_versions(pool, connection_ids, calendar_ids)
            if entry is not None and versions == entry.versions:
                self._entries.move_to_end(key)
                return entry.window(start, end)
            pending = self._pending.get(key)  # (again: one may have begun while we asked)
            if pending is not None:
                # Another read is loading this calendar: its rows serve this read too if they are
                # of the versions this read saw (then they are exactly the projection's now).
                loaded = await asyncio.shield(pending)
                if loaded is not None and loaded.versions == versions:
                    return loaded.window(start, end)
        future: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            entry = await self._load(pool, user_id, tz_name, connection_ids, calendar_ids)
        except BaseException:
            future.set_result(None)
            raise
        finally:
            if self._pending.get(key) is future:
                del self._pending[key]
        future.set_result(entry)
        if len(entry.starts) > self.max_rows:
            self._too_big[key] = None
            while len(self._too_big) > self.max_entries:
                self._too_big.popitem(last=False)
            return entry.window(start, end)
        self._entries[key] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return entry.window(start, end)

    async def _load(self, pool: Any, user_id: str, tz_name: str, connection_ids: list[str],
                    calendar_ids: list[str]) -> Entry:
        versions, starts, ends, ords = await store.busy_columns_versioned(
            pool, user_id, connection_ids, calendar_ids, _ALL_FROM, _ALL_TO, tz_name)
        self.loads += 1
        return Entry(versions, starts, ends, ords, merge_busy(items_from_columns(starts, ends, ords)))

    def clear(self) -> None:
        self._entries.clear()
        self._too_big.clear()
