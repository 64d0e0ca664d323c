"""The in-memory busy timelines (timeline.py) answer exactly what a query of the window alone
answers, over random calendars, random windows and random changes to the projection — a change
arriving between two reads included — and they are really kept (no reload while nothing changed).

Runs on real PostgreSQL with sync's migrations, so the versions come from sync's triggers."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest

from calmesh_availability import domain, store
from calmesh_availability.timeline import Timelines

BASE = int(datetime(2027, 3, 20, tzinfo=UTC).timestamp())  # a DST change in Europe and the US nearby
ZONES = ["UTC", "Europe/Berlin", "Pacific/Kiritimati", "America/Los_Angeles"]
STATUSES = ["confirmed", "confirmed", "confirmed", "tentative", "cancelled"]


def dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


async def insert(conn: Any, rnd: random.Random, user_id: str, connection_id: str, calendar_id: str) -> None:
    """A random row as sync writes it: a timed event on the 15-minute grid (some touching,
    overlapping, long), or an all-day event stored by its widest UTC span; some cancelled or
    transparent."""
    uid = uuid.uuid4().hex
    if rnd.random() < 0.15:
        d = date(2027, 3, 20) + timedelta(days=rnd.randrange(-2, 12))
        d2 = d + timedelta(days=rnd.choice([1, 1, 2]))
        s = datetime(d.year, d.month, d.day, tzinfo=UTC) - timedelta(hours=14)
        e = datetime(d2.year, d2.month, d2.day, tzinfo=UTC) + timedelta(hours=12)
        all_day, sd, ed = True, d, d2
    else:
        start = BASE + 900 * rnd.randrange(-200, 1200)
        s, e = dt(start), dt(start + 900 * rnd.choice([1, 2, 2, 4, 8, 40]))
        all_day, sd, ed = False, None, None
    await conn.execute(
        """INSERT INTO sync.event_instances (event_id, user_id, connection_id, calendar_id, uid, title, start_at,
               end_at, all_day, start_date, end_date, status, transparency, updated_at)
           VALUES ($1, $2, $3, $4, $5, 'x', $6, $7, $8, $9, $10, $11, $12, now())""",
        f"ev_{uid}", user_id, connection_id, calendar_id, uid, s, e, all_day, sd, ed, rnd.choice(STATUSES),
        "free" if rnd.random() < 0.1 else "busy")


async def change(conn: Any, rnd: random.Random, user_id: str, sources: list[tuple[str, str]]) -> str:
    """One random change to one source's rows: an insert, a delete, a move, a cancellation."""
    connection_id, calendar_id = rnd.choice(sources)
    kind = rnd.choice(["insert", "insert", "delete", "move", "cancel"])
    if kind == "insert":
        await insert(conn, rnd, user_id, connection_id, calendar_id)
        return kind
    row = await conn.fetchrow(
        "SELECT event_id FROM sync.event_instances WHERE connection_id = $1 AND calendar_id = $2"
        " ORDER BY event_id OFFSET $3 LIMIT 1", connection_id, calendar_id, rnd.randrange(5))
    if row is None:
        await insert(conn, rnd, user_id, connection_id, calendar_id)
        return "insert"
    if kind == "delete":
        await conn.execute("DELETE FROM sync.event_instances WHERE event_id = $1", row[0])
    elif kind == "move":
        shift = timedelta(seconds=900 * rnd.randrange(-8, 9))
        # (an all-day row moves by whole days, its widest UTC span with its dates, as sync stores it)
        await conn.execute(
            "UPDATE sync.event_instances SET"
            " start_at = start_at + CASE WHEN all_day THEN $3::int * interval '1 day' ELSE $2::interval END,"
            " end_at = end_at + CASE WHEN all_day THEN $3::int * interval '1 day' ELSE $2::interval END,"
            " start_date = start_date + $3::int, end_date = end_date + $3::int WHERE event_id = $1",
            row[0], shift, rnd.randrange(-1, 2))
    else:
        await conn.execute("UPDATE sync.event_instances SET status = 'cancelled' WHERE event_id = $1", row[0])
    return kind


def calendar(user_id: str, sources: list[tuple[str, str]], tz: str) -> domain.Calendar:
    return domain.Calendar.from_doc(domain.CalendarDoc(slug="cal", user_id=user_id, timezone=tz, sources=[
        domain.Source(id=f"src_{i}", connection_id=c, calendar_id=k, sort_order=i) for i, (c, k) in enumerate(sources)]))


async def uncached(pool: Any, cal: domain.Calendar, start: int, end: int, min_duration: int) -> bytes:
    conn_ids, cal_ids = cal.source_columns()
    starts, ends, ords = await store.busy_columns(pool, cal.user_id, conn_ids, cal_ids, start, end, cal.tz_name)
    return msgspec.json.encode(domain.availability(
        domain.items_from_columns(starts, ends, ords), cal, cal.tz_name, start, end, min_duration=min_duration,
        source_ids=cal.source_ids_for(conn_ids, cal_ids)))


async def cached(timelines: Timelines, pool: Any, cal: domain.Calendar, start: int, end: int,
                 min_duration: int) -> bytes:
    conn_ids, cal_ids = cal.source_columns()
    blocks = await timelines.blocks(pool, cal.user_id, cal.slug, cal.tz_name, conn_ids, cal_ids, start, end)
    assert blocks is not None
    return msgspec.json.encode(domain.shape_availability(
        blocks, cal, cal.tz_name, start, end, min_duration=min_duration,
        source_ids=cal.source_ids_for(conn_ids, cal_ids)))


def window(rnd: random.Random) -> tuple[int, int, int]:
    start = BASE + 300 * rnd.randrange(-600, 3000)
    return start, start + 300 * rnd.randrange(1, 4000), rnd.choice([0, 0, 900, 3600])


@pytest.fixture
async def db(migrated: str) -> Any:
    pool = await asyncpg.create_pool(migrated, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def test_the_timeline_answers_what_a_query_of_the_window_answers_through_random_changes(db: Any) -> None:
    rnd = random.Random(20261203)
    for _ in range(25):
        user_id = f"usr_{uuid.uuid4().hex[:8]}"
        sources = [(f"con_{uuid.uuid4().hex[:8]}", f"cal{i}") for i in range(rnd.randrange(1, 4))]
        if len(sources) > 1 and rnd.random() < 0.3:
            sources[1] = (sources[0][0], "other")  # two calendars of one connection
        async with db.acquire() as conn:
            for _ in range(rnd.randrange(0, 60)):
                await insert(conn, rnd, user_id, *rnd.choice(sources))
        cal = calendar(user_id, sources, rnd.choice(ZONES))
        timelines = Timelines()
        for _ in range(12):
            start, end, min_duration = window(rnd)
            await same(timelines, db, cal, start, end, min_duration)
            # A change between two reads: the very next read shows it.
            if rnd.random() < 0.6:
                async with db.acquire() as conn:
                    await change(conn, rnd, user_id, sources)
                await same(timelines, db, cal, start, end, min_duration)


async def same(timelines: Timelines, db: Any, cal: domain.Calendar, start: int, end: int, min_duration: int) -> None:
    got = await cached(timelines, db, cal, start, end, min_duration)
    want = await uncached(db, cal, start, end, min_duration)
    if got != want:
        rows = await db.fetch("SELECT connection_id, calendar_id, start_at, end_at, all_day, start_date, end_date,"
                              " status, transparency FROM sync.event_instances WHERE user_id = $1 ORDER BY start_at",
                              cal.user_id)
        pytest.fail(f"cached {got!r}\n != uncached {want!r}\nwindow {start} {end} {min_duration} {cal.tz_name}\n"
                    + "\n".join(map(str, rows)))


async def test_a_booked_time_is_busy_on_the_very_next_read_and_nothing_reloads_while_nothing_changes(db: Any) -> None:
    user_id = f"usr_{uuid.uuid4().hex[:8]}"
    sources = [(f"con_{uuid.uuid4().hex[:8]}", "primary")]
    cal = calendar(user_id, sources, "Europe/Berlin")
    timelines = Timelines()
    start, end = BASE, BASE + 86400
    first = msgspec.json.decode(await cached(timelines, db, cal, start, end, 0))
    assert first["busy"] == [] and timelines.loads == 1
    for _ in range(3):
        await cached(timelines, db, cal, start, end, 0)
    assert timelines.loads == 1  # kept: answered from memory after one version check each
    # Another connection writes a row (a booking's, say) and commits; the next read shows it.
    async with db.acquire() as conn:
        await conn.execute(
            """INSERT INTO sync.event_instances (event_id, user_id, connection_id, calendar_id, uid, start_at, end_at,
                   updated_at, booking_id) VALUES ('ev_' || $1, $2, $3, $4, $1, $5, $6, now(), 'bk_1')""",
            uuid.uuid4().hex, user_id, sources[0][0], sources[0][1], dt(BASE + 3600), dt(BASE + 5400))
    after = msgspec.json.decode(await cached(timelines, db, cal, start, end, 0))
    assert [(b["start"], b["end"]) for b in after["busy"]] == [("2027-03-20T01:00:00Z", "2027-03-20T01:30:00Z")]
    assert timelines.loads == 2


async def test_every_kind_of_write_moves_the_sources_version(db: Any) -> None:
    connection_id = f"con_{uuid.uuid4().hex[:8]}"
    other = f"con_{uuid.uuid4().hex[:8]}"
    rnd = random.Random(7)

    async def versions() -> list[int]:
        return await store.source_versions(db, [connection_id, other], ["a", "a"])

    seen = [await versions()]
    assert seen[0] == [0, 0]
    async with db.acquire() as conn:
        await insert(conn, rnd, "usr_v", connection_id, "a")
        seen.append(await versions())
        # COPY, as a first sync writes its rows
        await conn.copy_records_to_table(
            "event_instances", schema_name="sync",
            columns=["event_id", "user_id", "connection_id", "calendar_id", "uid", "start_at", "end_at", "updated_at"],
            records=[(f"ev_{uuid.uuid4().hex}", "usr_v", connection_id, "a", uuid.uuid4().hex, dt(BASE), dt(BASE + 60),
                      dt(BASE)) for _ in range(3)])
        seen.append(await versions())
        await conn.execute("UPDATE sync.event_instances SET title = 'moved' WHERE connection_id = $1", connection_id)
        seen.append(await versions())
        await conn.execute("DELETE FROM sync.event_instances WHERE connection_id = $1", connection_id)
        seen.append(await versions())
        # A statement that changes no row of the source leaves its version alone.
        await conn.execute("DELETE FROM sync.event_instances WHERE connection_id = $1", connection_id)
        seen.append(await versions())
    mine = [v[0] for v in seen]
    assert len(set(mine[:5])) == 5 and mine[5] == mine[4]
    assert all(v[1] == 0 for v in seen)  # the other source was never touched


async def test_reads_arriving_together_after_a_change_share_one_load_and_all_see_the_change(db: Any) -> None:
    rnd = random.Random(11)
    user_id = f"usr_{uuid.uuid4().hex[:8]}"
    sources = [(f"con_{uuid.uuid4().hex[:8]}", "a"), (f"con_{uuid.uuid4().hex[:8]}", "b")]
    async with db.acquire() as conn:
        for _ in range(40):
            await insert(conn, rnd, user_id, *rnd.choice(sources))
    cal = calendar(user_id, sources, "Europe/Berlin")
    timelines = Timelines()
    start, end = BASE - 86400, BASE + 10 * 86400
    await cached(timelines, db, cal, start, end, 0)
    async with db.acquire() as conn:
        await insert(conn, rnd, user_id, *sources[0])
    before = timelines.loads
    answers = await asyncio.gather(*(cached(timelines, db, cal, start, end, 0) for _ in range(8)))
    expected = await uncached(db, cal, start, end, 0)
    assert all(a == expected for a in answers)
    assert timelines.loads - before < 8  # the reads that found a load under way waited for it
