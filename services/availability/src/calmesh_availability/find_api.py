"""``POST /api/v1/availability/find``: find a time across unified calendars (docs/api-guide.md, "Find a time").

The calendars come from the directory (memory, like every read); their busy time from ONE query on
the projection for the whole set (``store.busy_spans_by_source``), whatever the number of slots;
the search itself is pure (``find.py``).
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Any

from litestar import Controller, Request, post
from litestar.datastructures import State

from calmesh_common.intervals import merge_spans

from . import find, store
from .api import _directory, _reads, _who
from .domain import Calendar
from .find import CalendarBusy, FindRequest, FindResult


def _entries(cals: list[Calendar]) -> tuple[list[str], list[str], list[str], list[list[int]]]:
    """The distinct (connection, calendar, zone) entries the calendars read, as query columns, and
    for each calendar the positions of its entries."""
    index: dict[tuple[str, str, str], int] = {}
    per_calendar: list[list[int]] = []
    for cal in cals:
        mine = []
        for s in cal.by_key.values():
            key = (s.connection_id, s.calendar_id, cal.tz_name)
            if key not in index:
                index[key] = len(index)
            mine.append(index[key])
        per_calendar.append(mine)
    keys = list(index)
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], per_calendar


class FindRoutes(Controller):
    """Find a time across several unified calendars."""

    path = "/api/v1/availability"
    tags = ["availability"]

    @post("/find", summary="Find times when several calendars are free", status_code=200)
    async def find_a_time(self, request: Request[Any, Any, State], data: FindRequest) -> FindResult:
        """Slots of ``duration_minutes`` wholly inside ``[start, end)`` and inside ``hours`` (wall
        clock in ``tz``, default the user's zone; no ``hours``: any time of day), on the
        ``slot_interval_minutes`` grid counted from ``start``, in which every required calendar is
        free; ranked by the number of free optional calendars, then earliest start. Each slot names
        the calendars ``free``, ``busy`` (known busy time in the slot) and ``unknown`` (not known
        busy, but not all its sources known: a connection not active, or never synced). Such a
        calendar never counts as free: a required one leaves no slots. ``complete`` is false when
        any calendar's sources are not all known. Unknown slug 404; more than 20 calendars, no
        required calendar, a range over 62 days, ``limit`` outside 1..100: 422."""
        caller, deps = _who(request)
        query = find.validate(data, caller.timezone)
        directory = _directory(request)
        cals = list(await asyncio.gather(*(directory.get(caller.user_id, slug) for slug, _ in query.calendars)))
        conn_ids, cal_ids, zones, per_calendar = _entries(cals)
        columns = await store.busy_spans_by_source(_reads(deps), caller.user_id, conn_ids, cal_ids, zones,
                                                   query.start, query.end) if conn_ids else []
        busy: list[CalendarBusy] = []
        for (slug, required), cal, mine in zip(query.calendars, cals, per_calendar, strict=True):
            if len(mine) == 1:
                starts, ends = columns[mine[0]]
                spans = merge_spans(zip(starts, ends, strict=True))
            else:
                spans = merge_spans(heapq.merge(*(zip(*columns[i], strict=True) for i in mine)))
            busy.append(CalendarBusy(slug, required, spans, directory.freshness(cal).complete))
        return find.result(query, busy, find.find(query, busy))


ROUTES = [FindRoutes]
