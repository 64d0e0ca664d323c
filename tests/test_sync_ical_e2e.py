"""iCal subscriptions end to end (connections + a sync worker in this process, a feed server on
loopback): one conditional request and no writes for an unchanged feed, `last_synced_at` moved by a
304 too, a diff by UID and RECURRENCE-ID, floating times in the user's timezone, a 5,000-event feed,
the size cap, a broken feed and its recovery, the schedule with one leader, and a rebuild of the
projection from the stream that gives identical rows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from calmesh_sync.rebuild import rebuild_projection
from calmesh_testing.backends import private_nats
from calmesh_testing.feeds import FeedServer
from calmesh_testing.platform import Platform, private_platform, running
from calmesh_testing.servers import serve
from calmesh_testing.wait import wait_for

PROJECTION_TYPES = ("source_events.upserted.v1", "source_events.deleted.v1", "source_calendar.purged.v1")


def stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def feed(*events: str, extra: str = "") -> str:
    body = "\r\n".join(e.strip().replace("\n", "\r\n") for e in events)
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calmesh tests//EN\r\n{extra}{body}\r\nEND:VCALENDAR\r\n"


def event(uid: str, start: datetime, minutes: int = 60, summary: str = "Event", extra: str = "") -> str:
    return (f"BEGIN:VEVENT\nUID:{uid}\nDTSTAMP:20260101T000000Z\nDTSTART:{stamp(start)}\n"
            f"DTEND:{stamp(start + timedelta(minutes=minutes))}\nSUMMARY:{summary}\n{extra}END:VEVENT")


def day(n: int, hour: int = 9) -> datetime:
    return datetime.now(UTC).replace(hour=hour, minute=0, second=0, microsecond=0) + timedelta(days=n)


@dataclass
class Env:
    platform: Platform
    feeds: FeedServer
    base: str
    db: asyncpg.Pool
    n: int = 0

    def user(self, tz: str = "Europe/Amsterdam") -> httpx.AsyncClient:
        self.n += 1
        return self.platform.client(f"usr_ical{self.n}", tz=tz)

    async def connect(self, api: httpx.AsyncClient, path: str) -> str:
        r = await api.post("/api/v1/connections/ical", json={"url": f"{self.base}{path}"})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def runs(self, cid: str) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM sync.sync_runs WHERE connection_id = $1 AND outcome IS NOT NULL", cid))

    async def synced(self, api: httpx.AsyncClient, cid: str, after: int = 0) -> dict[str, Any]:
        async def done() -> dict[str, Any] | None:
            if await self.runs(cid) <= after:
                return None
            body = (await api.get(f"/api/v1/connections/{cid}")).json()
            return body if body["status"] not in ("pending", "syncing") and body["progress"] is None else None

        return await wait_for(done, 30, what=f"a sync of {cid}")

    async def sync(self, api: httpx.AsyncClient, cid: str) -> dict[str, Any]:
        n = await self.runs(cid)
        r = await api.post(f"/api/v1/connections/{cid}/sync")
        assert r.status_code == 202, r.text
        return await self.synced(api, cid, n)

    async def rows(self, cid: str) -> dict[tuple[str, str], asyncpg.Record]:
        rows = await self.db.fetch("SELECT * FROM sync.event_instances WHERE connection_id = $1", cid)
        return {(r["uid"], r["recurrence_id"]): r for r in rows}

    async def source_events(self, cid: str) -> int:
        return int(await self.db.fetchval(
            "SELECT count(*) FROM sync.events WHERE stream_id LIKE $1 AND type = ANY($2::text[])", f"source:{cid}:%", list(PROJECTION_TYPES)
        ))


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    feeds = FeedServer()
    with private_nats() as nats_url:
        async with private_platform(database_url, nats_url) as platform, serve(feeds) as base:
            async with running(platform, CALMESH_ALLOW_PRIVATE_NETWORKS="1", CALMESH_ICAL_MAX_BYTES="2000000"):
                pool = await asyncpg.create_pool(platform.database_url, min_size=1, max_size=4)
                try:
                    yield Env(platform, feeds, base, pool)
                finally:
                    await pool.close()


async def test_unchanged_feed_costs_one_conditional_request_and_no_writes(env: Env) -> None:
    env.feeds.put("/a.ics", feed(event("a1", day(1)), event("a2", day(2))))
    async with env.user() as api:
        cid = await env.connect(api, "/a.ics")
        first = await env.synced(api, cid)
        assert first["status"] == "active" and first["last_synced_at"]
        writes = await env.source_events(cid)
        rows = await env.rows(cid)
        assert len(rows) == 2 and writes == 1
        await asyncio.sleep(1.1)  # last_synced_at has whole seconds
        requests = len(env.feeds.requests_to("/a.ics"))
        second = await env.sync(api, cid)
        log = env.feeds.requests_to("/a.ics")[requests:]
        assert len(log) == 1 and log[0][3] == 304 and log[0][2].get("if-none-match")
        assert await env.source_events(cid) == writes
        assert {k: dict(v) for k, v in (await env.rows(cid)).items()} == {k: dict(v) for k, v in rows.items()}
        assert second["last_synced_at"] > first["last_synced_at"]  # a 304 is a successful sync too

        # No ETag, only Last-Modified: If-Modified-Since does the same.
        env.feeds.put("/b.ics", feed(event("b1", day(1))), etag=False)
        cid_b = await env.connect(api, "/b.ics")
        await env.synced(api, cid_b)
        await env.sync(api, cid_b)
        last = env.feeds.requests_to("/b.ics")[-1]
        assert last[3] == 304 and last[2].get("if-modified-since")
        # Neither: the body is fetched, found identical, and nothing is written.
        env.feeds.put("/c.ics", feed(event("c1", day(1))), etag=False, last_modified=False)
        cid_c = await env.connect(api, "/c.ics")
        await env.synced(api, cid_c)
        writes = await env.source_events(cid_c)
        await env.sync(api, cid_c)
        assert env.feeds.requests_to("/c.ics")[-1][3] == 200 and await env.source_events(cid_c) == writes


async def test_changes_are_diffed_by_uid_and_recurrence_id(env: Env) -> None:
    series_start = day(1, 7)
    series = event("s", series_start, 30, "Daily", "RRULE:FREQ=DAILY;COUNT=5\n")
    env.feeds.put("/d.ics", feed(series, event("keep", day(3)), event("change", day(4)), event("drop", day(5))))
    async with env.user() as api:
        cid = await env.connect(api, "/d.ics")
        await env.synced(api, cid)
        before = await env.rows(cid)
        assert len(before) == 5 + 3
        moved = series_start + timedelta(days=2)
        override = (f"BEGIN:VEVENT\nUID:s\nDTSTAMP:20260101T000000Z\nRECURRENCE-ID:{stamp(moved)}\n"
                    f"DTSTART:{stamp(moved + timedelta(hours=3))}\nDTEND:{stamp(moved + timedelta(hours=3, minutes=30))}\n"
                    "SUMMARY:Daily (later)\nEND:VEVENT")
        env.feeds.put("/d.ics", feed(series, override, event("keep", day(3)), event("change", day(4), summary="Changed"),
                                     event("new", day(6))))
        await env.sync(api, cid)
        after = await env.rows(cid)
        rid = moved.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert set(before) - set(after) == {("drop", "")}
        assert set(after) - set(before) == {("new", "")}
        changed = {k for k in after if k in before and dict(after[k]) != dict(before[k])}
        assert changed == {("change", ""), ("s", rid)}
        assert after[("s", rid)]["title"] == "Daily (later)" and after[("s", rid)]["start_at"] == moved + timedelta(hours=3)
        assert after[("keep", "")]["updated_at"] == before[("keep", "")]["updated_at"]


async def test_floating_times_follow_the_users_timezone(env: Env) -> None:
    start = day(2).replace(tzinfo=None, hour=9)
    floating = f"BEGIN:VEVENT\nUID:f\nDTSTAMP:20260101T000000Z\nDTSTART:{start:%Y%m%dT%H%M%S}\nDTEND:{start:%Y%m%d}T100000\nSUMMARY:F\nEND:VEVENT"
    env.feeds.put("/f.ics", feed(floating))
    env.feeds.put("/fx.ics", feed(floating, extra="X-WR-TIMEZONE:Asia/Tokyo\r\n"))
    async with env.user(tz="America/Los_Angeles") as api:
        cid = await env.connect(api, "/f.ics")
        cid_x = await env.connect(api, "/fx.ics")
        await env.synced(api, cid)
        await env.synced(api, cid_x)
        from zoneinfo import ZoneInfo

        la = (await env.rows(cid))[("f", "")]["start_at"]
        assert la == start.replace(tzinfo=ZoneInfo("America/Los_Angeles")).astimezone(UTC)
        tokyo = (await env.rows(cid_x))[("f", "")]["start_at"]
        assert tokyo == start.replace(tzinfo=ZoneInfo("Asia/Tokyo")).astimezone(UTC)


async def test_a_5000_event_feed_and_a_one_event_change(env: Env) -> None:
    events = [event(f"big-{n}", day(n % 300, 8 + n % 9), 30, f"Item {n}") for n in range(5000)]
    env.feeds.put("/big.ics", feed(*events))
    async with env.user() as api:
        started = time.monotonic()
        cid = await env.connect(api, "/big.ics")
        body = await env.synced(api, cid)
        took = time.monotonic() - started
        assert body["status"] == "active", body
        assert len(await env.rows(cid)) == 5000
        events[1234] = event("big-1234", day(7, 13), 30, "Item 1234, moved")
        env.feeds.put("/big.ics", feed(*events))
        writes = await env.source_events(cid)
        await env.sync(api, cid)
        assert await env.source_events(cid) == writes + 1
        row = (await env.rows(cid))[("big-1234", "")]
        assert row["start_at"] == day(7, 13)
        assert took < 120


async def test_size_cap_broken_feed_and_recovery(env: Env) -> None:
    env.feeds.put("/huge.ics", "X" * 2_500_000)
    env.feeds.put("/broken.ics", "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART:2026\r\n")
    async with env.user() as api:
        huge = await env.synced(api, await env.connect(api, "/huge.ics"))
        assert huge["status"] == "error" and "larger than the 2,000,000 byte limit" in huge["last_error"]
        cid = await env.connect(api, "/broken.ics")
        broken = await env.synced(api, cid)
        assert broken["status"] == "error" and "iCalendar" in broken["last_error"]
        env.feeds.put("/broken.ics", feed(event("fixed", day(1))))
        fixed = await env.sync(api, cid)
        assert fixed["status"] == "active" and fixed["last_error"] is None
        assert set(await env.rows(cid)) == {("fixed", "")}


async def test_schedule_syncs_on_its_own_with_one_leader(env: Env) -> None:
    env.feeds.put("/sched.ics", feed(event("x", day(1))))
    fast = {"CALMESH_ALLOW_PRIVATE_NETWORKS": "1", "CALMESH_SYNC_INTERVAL_ICAL_SECONDS": "1", "CALMESH_SYNC_SCHEDULER_TICK_SECONDS": "0.3"}
    async with env.user() as api:
        cid = await env.connect(api, "/sched.ics")
        await env.synced(api, cid)
        await env.db.execute("UPDATE connections.connections SET next_sync_at = now() WHERE id = $1", cid)
        # Two connections services, each with a scheduler: one leads, the other waits.
        async with running(env.platform, sync=False, scheduler=True, **fast), running(env.platform, sync=False, scheduler=True, **fast):
            # (Only the first is certain: whichever connections process consumes the sync's completion
            # sets the next due time with its own interval, and the module's is the default 30 min.)
            await wait_for(lambda: env.db.fetchval(
                "SELECT count(*) > $2 FROM sync.sync_runs WHERE connection_id = $1 AND outcome IS NOT NULL AND reason = 'schedule'",
                cid, 0), 20, what="a scheduled sync")
            leaders = await env.db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = "
                "(hashtextextended('calmesh-connections-scheduler', 0) & 4294967295)::oid"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            assert leaders == 1
        jobs = await env.db.fetch("SELECT reason FROM sync.sync_runs WHERE connection_id = $1", cid)
        assert "schedule" in {j["reason"] for j in jobs}


async def test_a_reservation_survives_syncs_that_cannot_know_it(env: Env) -> None:
    """A booking's time entered before its provider event exists: no sync of the source deletes it
    (the feed does not hold it), a release removes it, and the rebuild below brings back the rest."""
    env.feeds.put("/res.ics", feed(event("r1", day(4))))
    async with env.user() as api:
        cid = await env.connect(api, "/res.ics")
        await env.synced(api, cid)
        user_id = api.headers["x-calmesh-user-id"]
        calendar_id = (await env.db.fetchval("SELECT calendar_id FROM sync.event_instances WHERE connection_id = $1", cid))
        async with httpx.AsyncClient(base_url=env.platform.sync_url, headers=env.platform.internal(), timeout=30) as sync:
            body = {"user_id": user_id, "connection_id": cid, "calendar_id": calendar_id, "title": "Intro: Vera",
                    "start": day(5).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "end": (day(5) + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")}
            kept = await sync.put("/internal/reservations/bk_keptinrebuild", json=body)
            assert kept.status_code == 201, kept.text
            assert kept.json()["booking_id"] == "bk_keptinrebuild"
            again = await sync.put("/internal/reservations/bk_keptinrebuild", json=body)
            assert again.status_code == 200 and again.json()["id"] == kept.json()["id"]
            held = await sync.put("/internal/reservations/hold_movedthenreleased", json=body)
            assert held.status_code == 201
            assert (await sync.delete("/internal/reservations/hold_movedthenreleased",
                                      params={"user_id": user_id})).status_code == 204
            assert (await sync.delete("/internal/reservations/hold_movedthenreleased",
                                      params={"user_id": user_id})).status_code == 204  # a repeat: no-op
            assert (await sync.get("/internal/reservations/hold_movedthenreleased",
                                   params={"user_id": user_id})).status_code == 404
        env.feeds.put("/res.ics", feed(event("r1", day(4)), event("r2", day(6))))
        await env.sync(api, cid)
        rows = {r["booking_id"]: r for r in (await env.rows(cid)).values()}
        assert set(rows) == {None, "bk_keptinrebuild"}
        assert rows["bk_keptinrebuild"]["provider_event_id"] is None and rows["bk_keptinrebuild"]["status"] == "confirmed"


async def test_concurrent_reservations_of_a_calendar_share_commits_and_keep_their_own_answers(env: Env) -> None:
    """Thirty visitors' holds entering one calendar at once: each gets its own 201 and row, a
    repeat of a key its first answer, a key reused for another slot 422, another user's
    reservation 404; and they go in shared transactions (fewer projection events than reservations)."""
    env.feeds.put("/group.ics", feed(event("g1", day(4))))
    async with env.user() as api:
        cid = await env.connect(api, "/group.ics")
        await env.synced(api, cid)
        user_id = api.headers["x-calmesh-user-id"]
        calendar_id = (await env.db.fetchval("SELECT calendar_id FROM sync.event_instances WHERE connection_id = $1", cid))
        stream = f"source:{cid}:{calendar_id}"

        def body(n: int) -> dict[str, str]:
            start = day(8) + timedelta(minutes=30 * n)
            return {"user_id": user_id, "connection_id": cid, "calendar_id": calendar_id, "title": f"Hold {n}",
                    "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "end": (start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")}

        async with httpx.AsyncClient(base_url=env.platform.sync_url, headers=env.platform.internal(), timeout=30) as sync:
            await sync.put("/internal/reservations/bk_grp_0", json=body(0), headers={"Idempotency-Key": "grp-0"})
            events_before = await env.db.fetchval("SELECT count(*) FROM sync.events WHERE stream_id = $1", stream)
            calls = [sync.put(f"/internal/reservations/bk_grp_{n}", json=body(n), headers={"Idempotency-Key": f"grp-{n}"})
                     for n in range(1, 31)]
            calls.append(sync.put("/internal/reservations/bk_grp_0", json=body(0), headers={"Idempotency-Key": "grp-0"}))
            calls.append(sync.put("/internal/reservations/bk_grp_x", json=body(40), headers={"Idempotency-Key": "grp-1"}))
            calls.append(sync.put("/internal/reservations/bk_grp_0", json={**body(0), "user_id": "usr_someoneelse"}))
            answers = await asyncio.gather(*calls)
            events_after = await env.db.fetchval("SELECT count(*) FROM sync.events WHERE stream_id = $1", stream)
        *fresh, repeat, reused, gone = answers
        assert [a.status_code for a in fresh] == [201] * 30, [a.text for a in fresh if a.status_code != 201]
        assert [a.json()["booking_id"] for a in fresh] == [f"bk_grp_{n}" for n in range(1, 31)]
        assert [a.json()["title"] for a in fresh] == [f"Hold {n}" for n in range(1, 31)]
        assert repeat.status_code == 201 and repeat.headers.get("idempotent-replayed") == "true"
        assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused", reused.text
        assert gone.status_code == 404  # another user's reservation
        rows = {r["booking_id"] for r in (await env.rows(cid)).values()}
        assert {f"bk_grp_{n}" for n in range(31)} <= rows and "bk_grp_x" not in rows
        assert 0 < events_after - events_before < 30, (events_before, events_after)


async def test_rebuild_from_the_stream_gives_identical_rows(env: Env) -> None:
    # Whatever the tests above left in this platform's projection, rebuilt from JetStream alone.
    await asyncio.sleep(0.5)
    settings = env.platform.settings("sync")
    report = await rebuild_projection(settings, check=True)
    assert report.live_rows > 0 and report.events > 0
    assert report.identical, report
    replaced = await rebuild_projection(settings, check=False)
    assert replaced.identical and replaced.replaced


async def test_a_feeds_secret_token_is_nowhere_in_the_logs(env: Env, caplog: pytest.LogCaptureFixture,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    """issue 10, item 8: httpx logs "HTTP Request: GET <url>" at INFO (litestar sets the root
    logger to INFO), which wrote private feed URLs, ?token= and all, into the log."""
    import logging

    import structlog

    from calmesh_common.logging import setup_logging

    secret = "s3cr3t-feed-token-4f9a1c"
    setup_logging("sync", "debug", json=True)  # as run_service does, at the most talkative level
    structlog.configure(cache_logger_on_first_use=False)
    caplog.set_level(logging.DEBUG)
    try:
        env.feeds.put("/private.ics", feed(event("p1", day(1))))
        async with env.user() as api:
            cid = await env.connect(api, f"/private.ics?token={secret}")
            assert (await env.synced(api, cid))["status"] == "active"
            assert (await env.sync(api, cid))["status"] == "active"
            missing = await env.connect(api, f"/gone.ics?token={secret}")  # a failing one logs too
            assert (await env.synced(api, missing))["status"] == "error"
        assert len(env.feeds.requests_to("/private.ics")) >= 2
        captured = capfd.readouterr()
        logged = caplog.text + captured.out + captured.err
        assert secret not in logged
        assert secret not in "".join(r.getMessage() for r in caplog.records)
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
