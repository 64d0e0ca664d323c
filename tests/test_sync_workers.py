"""Three sync worker processes share one durable pull consumer on the work-queue stream: every
connection is synced once per round and never by two workers at once (a PostgreSQL advisory lock
per connection; runs are recorded in sync.sync_runs, whose intervals must not overlap); a worker
killed with SIGKILL in the middle of syncs loses nothing: its jobs come back to the others after
the ack wait, and the projection ends with no duplicate and no missing row. The stream then
rebuilds the projection with identical rows."""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from calmesh_sync.rebuild import rebuild_projection
from calmesh_testing.backends import private_nats
from calmesh_testing.feeds import FeedServer
from calmesh_testing.platform import private_platform, running
from calmesh_testing.servers import free_port, serve
from calmesh_testing.wait import wait_for

CONNECTIONS = 12


def feed(n: int, version: int) -> str:
    base = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0)
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//calmesh tests//EN"]
    for k in range(12):
        start = base + timedelta(days=k + 1, hours=n % 5)
        lines += ["BEGIN:VEVENT", f"UID:f{n}-e{k}", "DTSTAMP:20260101T000000Z", f"DTSTART:{start:%Y%m%dT%H%M%SZ}",
                  f"DTEND:{start + timedelta(minutes=30):%Y%m%dT%H%M%SZ}", f"SUMMARY:feed {n} item {k} v{version}", "END:VEVENT"]
    start = base + timedelta(days=1, hours=18)
    count = 5 + version  # each version has one more instance
    lines += ["BEGIN:VEVENT", f"UID:f{n}-series", "DTSTAMP:20260101T000000Z", f"DTSTART:{start:%Y%m%dT%H%M%SZ}",
              f"DTEND:{start + timedelta(hours=1):%Y%m%dT%H%M%SZ}", f"RRULE:FREQ=DAILY;COUNT={count}", "SUMMARY:series", "END:VEVENT",
              "END:VCALENDAR"]
    return "\r\n".join(lines) + "\r\n"


def expected_keys(n: int, version: int) -> set[tuple[str, str]]:
    base = datetime.now(UTC).replace(hour=8, minute=0, second=0, microsecond=0)
    keys = {(f"f{n}-e{k}", "") for k in range(12)}
    start = base + timedelta(days=1, hours=18)
    keys |= {(f"f{n}-series", (start + timedelta(days=d)).strftime("%Y-%m-%dT%H:%M:%SZ")) for d in range(5 + version)}
    return keys


def assert_no_overlap(runs: list[asyncpg.Record], killed_at: float | None = None) -> None:
    by_connection: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for run in runs:
        end = run["finished_at"] or (datetime.fromtimestamp(killed_at, UTC) if killed_at else datetime.now(UTC))
        by_connection[run["connection_id"]].append((run["started_at"], end))
    for spans in by_connection.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"two syncs of one connection overlapped: {spans}"


async def test_three_workers_share_the_work_and_survive_a_kill(database_url: str) -> None:
    feeds = FeedServer()
    for n in range(CONNECTIONS):
        feeds.put(f"/f{n}.ics", feed(n, 1), delay=0.2)
    workers: dict[str, Any] = {}
    with private_nats() as nats_url:
        async with private_platform(database_url, nats_url) as platform, serve(feeds) as base:
            async with running(platform, sync=False, CALMESH_ALLOW_PRIVATE_NETWORKS="1", CALMESH_PLAN_FREE_CONNECTIONS="1000"):
                db = await asyncpg.create_pool(platform.database_url, min_size=1, max_size=4)
                try:
                    ports = {}
                    for name in ("w0", "w1", "w2"):
                        ports[name] = free_port()
                        workers[name] = platform.spawn_sync_worker(
                            name, ports[name], CALMESH_ALLOW_PRIVATE_NETWORKS="1", CALMESH_SYNC_JOB_ACK_WAIT_SECONDS="3",
                            CALMESH_SYNC_CONCURRENCY="3",
                        )
                    async with httpx.AsyncClient(timeout=2) as probe:
                        for port in ports.values():
                            async def up(port: int = port) -> bool:
                                try:
                                    return (await probe.get(f"http://127.0.0.1:{port}/health")).status_code == 200
                                except httpx.HTTPError:
                                    return False

                            await wait_for(up, 90, 0.2, what="a worker to start")

                    async with platform.client("usr_workers") as api:
                        ids = []
                        for n in range(CONNECTIONS):
                            r = await api.post("/api/v1/connections/ical", json={"url": f"{base}/f{n}.ics"})
                            assert r.status_code == 201, r.text
                            ids.append(r.json()["id"])

                        async def all_done(minimum: int) -> bool:
                            counts = await db.fetch(
                                "SELECT connection_id, count(*) AS n FROM sync.sync_runs WHERE outcome = 'completed'"
                                " AND connection_id = ANY($1::text[]) GROUP BY connection_id", ids)
                            return len(counts) == CONNECTIONS and all(c["n"] >= minimum for c in counts)

                        # Round 1: the first sync of each connection.
                        await wait_for(lambda: all_done(1), 90, 0.1, what="round 1")
                        runs = await db.fetch("SELECT * FROM sync.sync_runs WHERE connection_id = ANY($1::text[])", ids)
                        assert len(runs) == CONNECTIONS and all(r["outcome"] == "completed" for r in runs)
                        assert len({r["worker_id"] for r in runs}) >= 2, "the work was not shared"

                        # Round 2: one request per connection (as a scheduler round makes), two more for the
                        # first connection while it syncs: each synced once per request it had to honour,
                        # and never twice at once (checked over every run below).
                        feeds.feeds["/f0.ics"].delay = 3.0
                        started = datetime.now(UTC)
                        for cid in ids:
                            await api.post(f"/api/v1/connections/{cid}/sync")
                        await wait_for(lambda: db.fetchval(
                            "SELECT 1 FROM sync.sync_runs WHERE connection_id = $1 AND started_at >= $2 AND finished_at IS NULL",
                            ids[0], started), 30, 0.02, what="the first connection syncing")
                        await api.post(f"/api/v1/connections/{ids[0]}/sync")
                        await api.post(f"/api/v1/connections/{ids[0]}/sync")
                        await wait_for(lambda: all_done(2), 90, 0.1, what="round 2")
                        await wait_for(lambda: db.fetchval(
                            "SELECT count(*) >= 2 FROM sync.sync_runs WHERE connection_id = $1 AND started_at >= $2 AND outcome = 'completed'",
                            ids[0], started), 30, 0.1, what="the extra requests")
                        round2 = await db.fetch(
                            "SELECT connection_id, count(*) AS n FROM sync.sync_runs WHERE started_at >= $1 AND connection_id = ANY($2::text[])"
                            " GROUP BY connection_id", started, ids)
                        counts = {r["connection_id"]: r["n"] for r in round2}
                        assert all(counts[cid] == 1 for cid in ids[1:]), counts
                        assert counts[ids[0]] == 2  # the two extra requests came while it ran: one more sync covers both
                        assert_no_overlap(await db.fetch("SELECT * FROM sync.sync_runs WHERE connection_id = ANY($1::text[])", ids))

                        # Round 3: new content, slow feeds; kill a worker while it is syncing.
                        for n in range(CONNECTIONS):
                            feeds.put(f"/f{n}.ics", feed(n, 2), delay=1.5)
                        started = datetime.now(UTC)
                        for cid in ids:
                            await api.post(f"/api/v1/connections/{cid}/sync")
                        victim = await wait_for(lambda: db.fetchval(
                            "SELECT worker_id FROM sync.sync_runs WHERE started_at >= $1 AND finished_at IS NULL AND worker_id = 'w0' LIMIT 1",
                            started), 60, 0.05, what="w0 in the middle of a sync")
                        workers[victim].send_signal(signal.SIGKILL)
                        workers[victim].wait(10)
                        killed_at = time.time()
                        await wait_for(lambda: all_done(3), 120, 0.2, what="round 3 after the kill")
                        interrupted = await db.fetch(
                            "SELECT * FROM sync.sync_runs WHERE started_at >= $1 AND worker_id = $2 AND finished_at IS NULL", started, victim)
                        assert interrupted, "the killed worker had nothing in flight"
                        for run in interrupted:
                            redone = await db.fetchval(
                                "SELECT worker_id FROM sync.sync_runs WHERE sync_id = $1 AND outcome = 'completed'", run["sync_id"])
                            assert redone and redone != victim  # the same job, finished by another worker
                        assert_no_overlap(await db.fetch("SELECT * FROM sync.sync_runs WHERE connection_id = ANY($1::text[])", ids), killed_at)

                        # The projection: exactly what the feeds say now, nothing twice, nothing missing.
                        for n, cid in enumerate(ids):
                            rows = await db.fetch("SELECT uid, recurrence_id, title FROM sync.event_instances WHERE connection_id = $1", cid)
                            keys = [(r["uid"], r["recurrence_id"]) for r in rows]
                            assert len(keys) == len(set(keys))
                            assert set(keys) == expected_keys(n, 2), cid
                            assert all(r["title"].endswith("v2") or r["title"] == "series" for r in rows)
                            body = (await api.get(f"/api/v1/connections/{cid}")).json()
                            assert body["status"] == "active", body

                    report = await rebuild_projection(platform.settings("sync"), check=True)
                    assert report.identical, report
                finally:
                    for process in workers.values():
                        if process.poll() is None:
                            process.terminate()
                    for process in workers.values():
                        try:
                            process.wait(15)
                        except Exception:  # noqa: BLE001
                            process.kill()
                    await db.close()
    assert os.getpid()
