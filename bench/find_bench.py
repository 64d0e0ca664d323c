"""Find a time: ``POST /api/v1/availability/find`` over 5 calendars of 5,000 events each, through
the gateway, with a one-calendar baseline measured in the same run.

    .venv/bin/python bench/find_bench.py [--calendars 5] [--events 5000] [--days 14] [--count 1000]

Starts what it needs itself: embedded PostgreSQL and NATS and every service as a process (the
devstack `Stack`, with the rate limit, the daily quota and the plan's connections raised for the
run), and a small HTTP server on loopback serving one iCal feed per calendar, each of --events
events spread over the synced window (90 days back to 400 ahead; workday meetings of 15 minutes
to 2 hours in Berlin, some all-day, a few transparent — the generator of availability_bench.py).
A user subscribes to every feed (real sync workers import them into the projection) and makes a
unified calendar of each; the bench waits until every event is projected.

Then, with a `read` key, one request at a time on a keep-alive connection (after a warm-up):
- **find a time** over all the calendars — the first three required, the others optional (ranked
  by how many of them are free) — 30-minute meetings on the 30-minute grid, Monday to Friday
  08:00–18:00 Europe/Berlin, over the next --days days: p50 and p99;
- **the baseline**: the same question over one calendar: p50 and p99, and the ratio of the p50s.

Target: p50 <= 15 ms for the five calendars. Exits non-zero when the target is missed or an answer
is not 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).parent))
from availability_bench import ics, make_events  # noqa: E402  (one event generator for the benches)

from calmesh_common.devstack.embedded import free_port  # noqa: E402
from calmesh_common.devstack.supervisor import Stack  # noqa: E402

from benchkit import record

BENCH = "find"

TZ = "Europe/Berlin"
TARGET_P50_MS = 15.0
REQUIRED = 3
WEEKDAY_HOURS = {d: [["08:00", "18:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}


# --- the feeds ----------------------------------------------------------------------------------


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def write_feeds(folder: Path, calendars: int, events: int, now: datetime) -> int:
    """One .ics per calendar; returns the number of events written (all inside the synced window)."""
    folder.mkdir(parents=True)
    total = 0
    for c in range(calendars):
        evs = make_events(c, events, now)
        body = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//CalMesh find bench//EN", f"X-WR-CALNAME:Person {c}"]
        for ev in evs:
            lines = ics(ev).split("\r\n")
            body += lines[lines.index("BEGIN:VEVENT"): lines.index("END:VEVENT") + 1]
        body += ["END:VCALENDAR", ""]
        (folder / f"person{c}.ics").write_text("\r\n".join(body), newline="")
        total += len(evs)
    return total


def serve_folder(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# --- the platform -------------------------------------------------------------------------------


async def set_up(stack: Stack, feed_url: str, calendars: int, expected: int, timeout: float) -> str:
    """Sign up, subscribe to every feed, make a unified calendar of each, wait for the projection;
    returns a read key."""
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as gw:
        r = await gw.post("/api/v1/auth/signup", json={"email": "find-bench@example.com", "password": "benchmark passphrase",
                                                       "handle": "find-bench", "timezone": TZ})
        r.raise_for_status()
        csrf = {"X-CSRF-Token": gw.cookies["calmesh_csrf"]}
        connections = []
        for c in range(calendars):
            r = await gw.post("/api/v1/connections/ical", headers=csrf, json={"url": f"{feed_url}/person{c}.ics"})
            if r.status_code != 201:
                raise SystemExit(f"POST /connections/ical answered {r.status_code}: {r.text[:300]}")
            connections.append(r.json()["id"])
        deadline = time.monotonic() + timeout
        for c, cid in enumerate(connections):
            while True:
                conn = (await gw.get(f"/api/v1/connections/{cid}")).json()
                if conn.get("status") == "active" and conn.get("last_synced_at"):
                    break
                if conn.get("status") == "error":
                    raise SystemExit(f"feed {c} failed: {conn.get('last_error')}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"feed {c} was not synced within {timeout:.0f} s: {conn}")
                await asyncio.sleep(0.5)
            r = await gw.post("/api/v1/calendars", headers=csrf, json={
                "slug": f"person{c}", "name": f"Person {c}", "timezone": TZ, "sources": [{"connection_id": cid}]})
            if r.status_code != 201:
                raise SystemExit(f"POST /calendars answered {r.status_code}: {r.text[:300]}")
        db = await asyncpg.connect(stack.database_url)
        try:
            while True:
                n = await db.fetchval("SELECT count(*) FROM sync.event_instances WHERE connection_id = ANY($1::text[])",
                                      connections)
                if n >= expected:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {n:,} of {expected:,} events were projected within {timeout:.0f} s")
                await asyncio.sleep(1)
        finally:
            await db.close()
        r = await gw.post("/api/v1/api-keys", headers=csrf, json={"name": "bench", "scope": "read"})
        r.raise_for_status()
        return str(r.json()["key"])


class Connection:
    """One keep-alive HTTP/1.1 connection (a small client, so the load costs the machine little)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def post(self, target: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        lines = [f"POST {target} HTTP/1.1", f"Host: {self.host}:{self.port}", "Content-Type: application/json",
                 f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        return int(head[9:12]), (await self.reader.readexactly(length) if length else b"")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(gateway: str, key: str, body: dict, count: int) -> tuple[list[float], set[int], dict]:
    parts = urlsplit(gateway)
    conn = await Connection(parts.hostname or "127.0.0.1", parts.port or 80).open()
    payload = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}"}
    statuses: set[int] = set()
    for _ in range(50):  # warm-up
        status, data = await conn.post("/api/v1/availability/find", payload, headers)
        statuses.add(status)
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        status, data = await conn.post("/api/v1/availability/find", payload, headers)
        samples.append((time.perf_counter() - t0) * 1000.0)
        statuses.add(status)
    await conn.close()
    return samples, statuses, json.loads(data) if data else {}


def find_body(calendars: int, start: datetime, days: int) -> dict:
    return {
        "calendars": [{"slug": f"person{c}", "required": c < REQUIRED} for c in range(calendars)],
        "duration_minutes": 30, "slot_interval_minutes": 30, "tz": TZ, "hours": WEEKDAY_HOURS,
        "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": (start + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calendars", type=int, default=5)
    parser.add_argument("--events", type=int, default=5000, help="events per calendar")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--count", type=int, default=1000, help="requests timed for each figure")
    parser.add_argument("--sync-timeout", type=float, default=600.0)
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    signal.signal(signal.SIGTERM, _interrupt)  # unwinds like Ctrl-C: the platform and its data go
    now = datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="calmesh-find-bench-") as tmp:
        expected = write_feeds(Path(tmp) / "feeds", args.calendars, args.events, now)
        feeds, feed_url = serve_folder(Path(tmp) / "feeds")
        stack = Stack(
            data_dir=Path(tmp) / "stack", http_port=free_port(), sync_workers=2, fixed_ports=False, quiet=True,
            restart=False,
            extra_env={"CALMESH_LOG_LEVEL": "warning", "CALMESH_ALLOW_PRIVATE_NETWORKS": "1",
                       "CALMESH_RATE_LIMIT_PER_MINUTE": "100000000", "CALMESH_RATE_LIMIT_BURST": "10000000",
                       "CALMESH_PLAN_FREE_API_REQUESTS_PER_DAY": "100000000",
                       "CALMESH_PLAN_FREE_CONNECTIONS": str(max(3, args.calendars))},
        )
        try:
            print("starting the platform (embedded PostgreSQL and NATS, every service)…", flush=True)
            stack.start(timeout=180)
            t0 = time.monotonic()
            print(f"syncing {args.calendars} iCal feeds x {args.events:,} events…", flush=True)
            key = asyncio.run(set_up(stack, feed_url, args.calendars, expected, args.sync_timeout))
            print(f"  {expected:,} events projected in {time.monotonic() - t0:.0f} s", flush=True)
            start = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0)
            many = find_body(args.calendars, start, args.days)
            one = {**find_body(1, start, args.days), "calendars": [{"slug": "person0", "required": True}]}
            samples, statuses, answer = asyncio.run(measure(stack.gateway_url, key, many, args.count))
            base, base_statuses, base_answer = asyncio.run(measure(stack.gateway_url, key, one, args.count))
        finally:
            stack.stop()
            feeds.shutdown()
    p50, p99 = statistics.median(samples), pct(samples, 0.99)
    b50, b99 = statistics.median(base), pct(base, 0.99)
    print()
    print(f"find a time, {args.days} days, 30-minute slots on a 30-minute grid, weekdays 08-18 {TZ}, through the gateway:")
    print(f"  {args.calendars} calendars x {args.events:,} events ({min(REQUIRED, args.calendars)} required): "
          f"p50 {p50:6.2f} ms (target <= {TARGET_P50_MS:.0f})  p99 {p99:6.2f} ms   "
          f"{len(answer.get('slots', []))} slots, statuses {sorted(statuses)}")
    print(f"  1 calendar  x {args.events:,} events (baseline):      p50 {b50:6.2f} ms                p99 {b99:6.2f} ms   "
          f"{len(base_answer.get('slots', []))} slots, statuses {sorted(base_statuses)}")
    print(f"  ratio of the p50s: {p50 / b50:.2f}x for {args.calendars}x the calendars"
          f"  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)", flush=True)
    ok = record(BENCH, f"p50, {args.calendars} calendars", f"<= {TARGET_P50_MS:.0f} ms", f"{p50:.2f} ms", p50 <= TARGET_P50_MS)
    ok &= record(BENCH, "answers", "all 200", f"{sorted(statuses | base_statuses)}", statuses == {200} and base_statuses == {200})
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
