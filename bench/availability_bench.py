"""Availability: the interval engine alone, 30-day free/busy through the gateway, and a CalDAV server
answering the same question.

Three parts, printed with their targets:

1. **The engine alone** on 100,000 intervals sorted by start: merge (overlapping and touching) and
   invert within the window, plain spans and busy blocks that keep their source ids (what the
   service does); plus mirror dedupe and the conflict sweep on the same items. Target: merge and
   invert under 50 ms.
2. **The platform**: every service as a process (the devstack `Stack`, embedded PostgreSQL and NATS),
   plus a second availability replica on the same port (SO_REUSEPORT). A Radicale server holds three
   calendars of N events each (default 5,000) spread over the synced window; a CalDAV connection to
   it syncs them through the real sync workers into the projection; a unified calendar takes the
   three as sources. Then ``GET /api/v1/calendars/{slug}/availability`` for the next 30 days, with a
   `read` key, through the gateway: p50/p99 at one connection (warm), and queries per second at
   `--concurrency` connections. Targets: p50 <= 10 ms, p99 <= 30 ms, >= 300 queries/s.
   **The dense workload**, in the same run (another user): three iCal feeds served from a local HTTP
   server, each of --dense-events events (5,000) over the next 60 days — 100 weekly series of 9
   instances and single 30-minute meetings at scattered times (any 5-minute step of the day), built
   deterministically — synced by the real workers into one unified calendar; the same 30 days asked
   (8,608 busy rows in the window, merging into 15 busy intervals). Targets: p50 <= 4 ms, p99 <= 10 ms, >= 500 queries/s.
   ``--no-timelines`` starts availability without its in-memory timelines (the uncached read: the
   baseline); ``--only sparse|dense`` measures one workload. Exits non-zero when a target is missed.
3. **Radicale**, holding the same events, answers a CalDAV ``free-busy-query`` REPORT for the same
   window on each of the three calendars (what a client would otherwise have to ask): p50 of the
   three requests together, and the ratio to CalMesh's one answer.

The per-key rate limit and the daily request quota are raised for the run (still checked on every
request). The load generator is a small keep-alive HTTP/1.1 client on asyncio streams.

Usage: ``python bench/availability_bench.py [--events 5000] [--seconds 10] [--concurrency 16]
[--dense-events 5000] [--only sparse|dense] [--no-timelines] [--engine-only]``. Takes a few minutes: Radicale parses every event once and the sync imports them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import threading
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

import httpx

from calmesh_common.devstack.embedded import free_port
from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.radicale import Radicale
from calmesh_common.intervals import (
    clip_blocks,
    dedupe_mirrors,
    find_conflicts,
    free_spans,
    merge_busy,
    merge_spans,
)

from benchkit import record

BENCH = "availability"

TZ = "Europe/Berlin"
SOURCES = 3
SLUG = "bench"


# --- 1. the engine ---------------------------------------------------------------------------------


def _timed(fn, repeat: int = 15) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(best, median) wall time in ms of `fn()`, garbage collector left on as in the service."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return min(samples), statistics.median(samples)


def engine_bench(n: int = 100_000) -> dict[str, float]:
    rnd = random.Random(42)
    t = 1_790_000_000
    items = []
    for i in range(n):
        t += rnd.randint(0, 3600)
        items.append((t, t + rnd.randint(5, 120) * 60, f"src_{i % SOURCES}", i))
    spans = [(s, e) for s, e, _, _ in items]
    start, end = items[0][0], items[-1][1]
    gc.collect()

    def plain() -> None:
        free_spans(merge_spans(spans), start, end, 15 * 60)

    def with_sources() -> None:
        blocks = merge_busy(items)
        free_spans(blocks, start, end, 15 * 60)

    blocks = merge_busy(items)
    middle = (start + end) // 2

    def cut() -> None:
        clip_blocks(blocks, middle, middle + 30 * 86400)

    keys = [[("uid", i if i % 50 else i - 1, "")] for i in range(n)]  # one mirror pair in fifty

    def conflicts() -> None:
        find_conflicts(dedupe_mirrors(items, keys))

    out = {}
    for name, fn in (("merge+invert (spans)", plain), ("merge+invert (blocks with source ids)", with_sources),
                     ("cut the blocks to a 30-day window", cut), ("mirror dedupe + conflict sweep", conflicts)):
        best, med = _timed(fn, 15 if name != "mirror dedupe + conflict sweep" else 5)
        out[name] = med
        print(f"  {name:40s} best {best:6.1f} ms   median {med:6.1f} ms   ({n:,} intervals)", flush=True)
    print(f"  ({len(blocks):,} busy blocks, {len(find_conflicts(dedupe_mirrors(items, keys))):,} conflicts)")
    return out


# --- the events: one generator for Radicale (and so for the projection) -----------------------------


@dataclass(frozen=True)
class Ev:
    uid: str
    start: datetime | date
    end: datetime | date
    title: str
    transparent: bool = False


def make_events(calendar: int, count: int, now: datetime) -> list[Ev]:
    """`count` events over the synced window (90 days back, 400 ahead): workday meetings in Berlin
    (15 min to 2 h), some all-day, a few transparent."""
    rnd = random.Random(1000 + calendar)
    tz = ZoneInfo(TZ)
    first = (now - timedelta(days=89)).date()
    out = []
    for i in range(count):
        day = first + timedelta(days=rnd.randrange(485))
        if rnd.random() < 0.02:
            out.append(Ev(f"c{calendar}-{i}@bench", day, day + timedelta(days=rnd.choice([1, 1, 2])), f"Off {i}"))
            continue
        local = datetime(day.year, day.month, day.day, rnd.randrange(7, 19), rnd.choice([0, 15, 30, 45]), tzinfo=tz)
        start = local.astimezone(UTC)
        out.append(Ev(f"c{calendar}-{i}@bench", start, start + timedelta(minutes=rnd.choice([15, 30, 45, 60, 90, 120])),
                      f"Meeting {i}", transparent=rnd.random() < 0.03))
    return out


def ics(ev: Ev) -> str:
    def fmt(v: datetime | date) -> str:
        if isinstance(v, datetime):
            return ":" + v.strftime("%Y%m%dT%H%M%SZ")
        return ";VALUE=DATE:" + v.strftime("%Y%m%d")

    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//CalMesh bench//EN", "BEGIN:VEVENT", f"UID:{ev.uid}",
             "DTSTAMP:20261101T000000Z", f"DTSTART{fmt(ev.start)}", f"DTEND{fmt(ev.end)}", f"SUMMARY:{ev.title}"]
    if ev.transparent:
        lines.append("TRANSP:TRANSPARENT")
    lines += ["END:VEVENT", "END:VCALENDAR", ""]
    return "\r\n".join(lines)


BENCH_USER, BENCH_PASSWORD = "bench", "bench-password"


def write_calendars(radicale: Radicale, calendars: list[list[Ev]]) -> None:
    """Write the calendars straight into Radicale's storage (one .ics per event), before it starts."""
    for index, events in enumerate(calendars):
        folder = radicale.collection(f"cal{index}")
        folder.mkdir(parents=True)
        (folder / ".Radicale.props").write_text(json.dumps({
            "tag": "VCALENDAR", "D:displayname": f"Bench {index}", "C:supported-calendar-component-set": "VEVENT"}))
        for n, ev in enumerate(events):
            (folder / f"e{n}.ics").write_text(ics(ev), newline="")


def warm_radicale(radicale: Radicale) -> None:
    """Have Radicale read every item once (it caches them), so that neither CalMesh's first sync
    nor the measured free-busy answers pay for parsing files Radicale has never seen."""
    with httpx.Client(auth=radicale.auth, timeout=1800) as client:
        for cal in range(SOURCES):
            r = client.request("REPORT", radicale.calendar_url(f"cal{cal}"), headers={
                "Content-Type": "application/xml", "Depth": "1"}, content=FREE_BUSY.format(
                    start="19700101T000000Z", end="20991231T000000Z"))
            r.raise_for_status()
        client.request("PROPFIND", f"{radicale.url}/{radicale.username}/", headers={"Depth": "1"}).raise_for_status()


FREE_BUSY = """<?xml version="1.0" encoding="utf-8"?>
<C:free-busy-query xmlns:C="urn:ietf:params:xml:ns:caldav"><C:time-range start="{start}" end="{end}"/></C:free-busy-query>"""


# --- the dense workload: three iCal feeds on a local HTTP server -----------------------------------

DENSE_SLUG = "dense"
DENSE_DAYS = 60
DENSE_SERIES = 100
DENSE_WEEKS = 9  # each weekly series: 9 instances, covering the 60 days


def dense_feed(feed: int, count: int, first: date) -> tuple[str, int]:
    """One iCal feed of `count` VEVENTs from `first` over 60 days, built deterministically: 100
    weekly series (30 or 60 minutes, 9 weeks) and single 30-minute meetings at scattered times (any
    minute of the day in steps of 5, UTC). Returns the feed's text and its number of instances."""
    rnd = random.Random(7000 + feed)
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//CalMesh bench//EN", f"X-WR-CALNAME:Dense {feed}"]
    base = datetime(first.year, first.month, first.day, tzinfo=UTC)
    instances = 0

    def event(uid: str, start: datetime, minutes: int, title: str, rrule: str | None = None) -> None:
        end = start + timedelta(minutes=minutes)
        lines.extend(["BEGIN:VEVENT", f"UID:{uid}", "DTSTAMP:20261101T000000Z",
                      f"DTSTART:{start.strftime('%Y%m%dT%H%M%SZ')}", f"DTEND:{end.strftime('%Y%m%dT%H%M%SZ')}",
                      f"SUMMARY:{title}"] + ([f"RRULE:{rrule}"] if rrule else []) + ["END:VEVENT"])

    series = min(DENSE_SERIES, count)
    for i in range(series):
        start = base + timedelta(days=rnd.randrange(7), minutes=5 * rnd.randrange(7 * 12, 19 * 12))
        event(f"d{feed}-s{i}@bench", start, rnd.choice([30, 60]), f"Weekly {i}", f"FREQ=WEEKLY;COUNT={DENSE_WEEKS}")
        instances += DENSE_WEEKS
    for i in range(count - series):
        start = base + timedelta(minutes=5 * rnd.randrange(DENSE_DAYS * 288))
        event(f"d{feed}-{i}@bench", start, 30, f"Meeting {i}")
        instances += 1
    lines += ["END:VCALENDAR", ""]
    return "\r\n".join(lines), instances


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def serve_feeds(folder: Path, count: int, first: date) -> tuple[ThreadingHTTPServer, str, int]:
    """The three dense feeds as files served on loopback; returns the server, its URL and the
    number of instances the feeds hold."""
    folder.mkdir(parents=True)
    total = 0
    for feed in range(SOURCES):
        text, n = dense_feed(feed, count, first)
        (folder / f"dense{feed}.ics").write_text(text, newline="")
        total += n
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", total


def set_up_dense(gateway: str, feed_url: str, expected: int, timeout: float) -> str:
    """Another user subscribes to the three feeds (the real sync workers import them) and makes a
    unified calendar of them; waits until every instance is projected; returns a read key."""
    client = httpx.Client(base_url=gateway, timeout=60)
    r = client.post("/api/v1/auth/signup", json={"email": "dense-bench@example.com", "password": "benchmark passphrase",
                                                  "handle": "dense-bench", "timezone": TZ})
    r.raise_for_status()
    csrf = {"X-CSRF-Token": client.cookies["calmesh_csrf"]}
    ids = []
    for feed in range(SOURCES):
        r = client.post("/api/v1/connections/ical", headers=csrf, json={"url": f"{feed_url}/dense{feed}.ics"})
        if r.status_code != 201:
            raise RuntimeError(f"POST /connections/ical answered {r.status_code}: {r.text[:300]}")
        ids.append(r.json()["id"])
    deadline = time.monotonic() + timeout
    for cid in ids:
        while True:
            conn = client.get(f"/api/v1/connections/{cid}").json()
            if conn.get("status") == "active" and conn.get("last_synced_at"):
                break
            if conn.get("status") == "error":
                raise RuntimeError(f"a dense feed failed: {conn.get('last_error')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"a dense feed was not synced within {timeout:.0f} s: {conn}")
            time.sleep(0.5)
    r = client.post("/api/v1/calendars", headers=csrf, json={
        "slug": DENSE_SLUG, "name": "Dense", "timezone": TZ, "sources": [{"connection_id": c} for c in ids]})
    if r.status_code != 201:
        raise RuntimeError(f"POST /calendars answered {r.status_code}: {r.text[:300]}")
    now = datetime.now(UTC).replace(microsecond=0)
    seen = 0
    while time.monotonic() < deadline:
        seen = count_events(client, now - timedelta(days=2), now + timedelta(days=DENSE_DAYS + 7 * DENSE_WEEKS), DENSE_SLUG)
        if seen >= expected:
            break
        time.sleep(1)
    else:
        raise RuntimeError(f"only {seen} of {expected} dense instances reached the projection within {timeout:.0f} s")
    r = client.post("/api/v1/api-keys", headers=csrf, json={"name": "bench", "scope": "read"})
    r.raise_for_status()
    return str(r.json()["key"])


def radicale_free_busy(radicale: Radicale, start: datetime, end: datetime, rounds: int) -> tuple[list[float], int]:
    """ms per answer for the three calendars (three REPORTs in a row), and the busy periods seen."""
    body = FREE_BUSY.format(start=start.strftime("%Y%m%dT%H%M%SZ"), end=end.strftime("%Y%m%dT%H%M%SZ"))
    samples = []
    periods = 0
    with httpx.Client(auth=radicale.auth, timeout=600) as client:
        for i in range(rounds + 1):
            t0 = time.perf_counter()
            periods = 0
            for cal in range(SOURCES):
                r = client.request("REPORT", radicale.calendar_url(f"cal{cal}"), content=body,
                                   headers={"Content-Type": "application/xml", "Depth": "1"})
                r.raise_for_status()
                periods += r.text.count("FREEBUSY;")
            if i:  # the first answer builds Radicale's caches: not counted
                samples.append((time.perf_counter() - t0) * 1000)
    return samples, periods


# --- 2. the platform ----------------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection sending a fixed GET."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def get(self) -> int:
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return int(head[9:12])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def build_request(url: str, headers: dict[str, str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}"] + [f"{k}: {v}" for k, v in headers.items()]
    return parts.hostname or "127.0.0.1", parts.port or 80, ("\r\n".join(lines) + "\r\n\r\n").encode()


async def latency(url: str, headers: dict[str, str], count: int) -> tuple[list[float], set[int]]:
    conn = Connection(*build_request(url, headers))
    await conn.open()
    for _ in range(100):  # warm-up
        await conn.get()
    samples, statuses = [], set()
    for _ in range(count):
        t0 = time.perf_counter()
        statuses.add(await conn.get())
        samples.append((time.perf_counter() - t0) * 1000)
    await conn.close()
    return samples, statuses


async def throughput(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> tuple[float, set[int]]:
    host, port, request = build_request(url, headers)
    conns = [Connection(host, port, request) for _ in range(concurrency)]
    for c in conns:
        await c.open()
    statuses: set[int] = set()
    done = 0
    stop_at = time.perf_counter() + 1.0  # warm-up

    async def worker(c: Connection) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            statuses.add(await c.get())
            done += 1

    await asyncio.gather(*(worker(c) for c in conns))
    done = 0
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        await c.close()
    return done / elapsed, statuses


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc); 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postgres_pids(data_dir: Path) -> list[int]:
    """The embedded PostgreSQL's postmaster (found by its data directory) and its backends."""
    procs: list[tuple[int, int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs.append((int(entry), ppid, cmd))
    masters = [pid for pid, _, cmd in procs if "postgres" in cmd and str(data_dir) in cmd]
    return masters + [pid for pid, ppid, _ in procs if ppid in masters]


def cpu_snapshot(pids: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(_cpu_seconds(p) for p in group) for name, group in pids.items()}


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def set_up_calendar(gateway: str, radicale: Radicale, expected: int, timeout: float) -> str:
    """Sign up, connect Radicale over CalDAV, make the unified calendar, wait for the sync; a read key."""
    client = httpx.Client(base_url=gateway, timeout=60)
    r = client.post("/api/v1/auth/signup", json={"email": "avail-bench@example.com", "password": "benchmark passphrase",
                                                  "handle": "avail-bench", "timezone": TZ})
    r.raise_for_status()
    csrf = {"X-CSRF-Token": client.cookies["calmesh_csrf"]}
    r = client.post("/api/v1/connections/caldav", headers=csrf, json={
        "url": f"{radicale.url}/{radicale.username}/", "username": radicale.username, "password": radicale.password})
    if r.status_code != 201:
        raise RuntimeError(f"POST /connections/caldav answered {r.status_code}: {r.text[:300]}")
    connection_id = r.json()["id"]
    deadline = time.monotonic() + timeout
    conn: dict = {}
    while time.monotonic() < deadline:
        conn = client.get(f"/api/v1/connections/{connection_id}").json()
        if conn.get("status") == "active" and len(conn.get("calendars") or []) >= SOURCES:
            break
        if conn.get("status") == "error":
            raise RuntimeError(f"the CalDAV connection failed: {conn.get('last_error')}")
        time.sleep(1)
    else:
        raise RuntimeError(f"the CalDAV connection was not synced within {timeout:.0f} s: {conn}")
    r = client.post("/api/v1/calendars", headers=csrf, json={
        "slug": SLUG, "name": "Bench", "timezone": TZ, "sources": [{"connection_id": connection_id}]})
    if r.status_code != 201:
        raise RuntimeError(f"POST /calendars answered {r.status_code}: {r.text[:300]}")
    # Wait until the projection holds every event of the synced window (counted through the API, in
    # two queries: one may span at most 366 days).
    now = datetime.now(UTC).replace(microsecond=0)
    lo, mid, hi = now - timedelta(days=92), now + timedelta(days=270), now + timedelta(days=402)
    seen = 0
    while time.monotonic() < deadline:
        seen = count_events(client, lo, mid) + count_events(client, mid, hi)
        if seen >= expected:
            break
        time.sleep(2)
    else:
        raise RuntimeError(f"only {seen} of {expected} events reached the projection within {timeout:.0f} s")
    r = client.post("/api/v1/api-keys", headers=csrf, json={"name": "bench", "scope": "read"})
    r.raise_for_status()
    return str(r.json()["key"])


def count_events(client: httpx.Client, start: datetime, end: datetime, slug: str = SLUG) -> int:
    params = {"start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": end.strftime("%Y-%m-%dT%H:%M:%SZ"), "limit": 200}
    total = 0
    while True:
        page = client.get(f"/api/v1/calendars/{slug}/events", params=params).json()
        total += len(page["data"])
        if not page["next_cursor"]:
            return total
        params["cursor"] = page["next_cursor"]


def start_second_replica(stack: Stack) -> subprocess.Popen[bytes]:
    """Another availability process with the first one's environment: the same port (SO_REUSEPORT)."""
    first = next(c for c in stack.children if c.name == "availability")
    process = subprocess.Popen(first.argv, env={**first.env, "CALMESH_WORKER_ID": "availability-2"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)
    if process.poll() is not None:
        raise RuntimeError("the second availability replica did not start")
    return process


@dataclass
class Figures:
    p50: float
    p99: float
    rps: float
    statuses: list[int]
    cpu: dict[str, float]
    busy: int
    free: int


def measure(url: str, headers: dict[str, str], args: argparse.Namespace, groups: dict[str, list[int]]) -> Figures:
    """p50/p99 at one warm connection, queries/s at --concurrency connections, CPU per query."""
    answer = httpx.get(url, headers=headers, timeout=30).json()
    samples, statuses = asyncio.run(latency(url, headers, args.count))
    before = cpu_snapshot(groups)
    rps, statuses2 = asyncio.run(throughput(url, headers, args.concurrency, args.seconds))
    after = cpu_snapshot(groups)
    served = rps * (args.seconds + 1.0)  # the warm-up second too
    cpu = {name: (after[name] - before[name]) / served * 1000 for name in groups}
    return Figures(statistics.median(samples), pct(samples, 0.99), rps, sorted(statuses | statuses2), cpu,
                   len(answer["busy"]), len(answer["free"]))


def report(name: str, f: Figures, targets: tuple[float, float, float], load: float) -> bool:
    t50, t99, trps = targets
    print(f"  {name}: p50 {f.p50:6.2f} ms (target <= {t50:g})   p99 {f.p99:6.2f} ms (target <= {t99:g})   "
          f"{f.rps:6.0f} queries/s (target >= {trps:g})   statuses {f.statuses}   load average {load:.1f}")
    print("    CPU per query: " + ", ".join(f"{n} {ms:.2f} ms" for n, ms in f.cpu.items())
          + f"   ({f.busy} busy intervals, {f.free} free in the answer)")
    label = name.split()[0]
    ok = record(BENCH, f"{label} p50", f"<= {t50:g} ms", f"{f.p50:.2f} ms", f.p50 <= t50)
    ok &= record(BENCH, f"{label} p99", f"<= {t99:g} ms", f"{f.p99:.2f} ms", f.p99 <= t99)
    ok &= record(BENCH, f"{label} queries/s @16", f">= {trps:g}", f"{f.rps:.0f}", f.rps >= trps)
    return record(BENCH, f"{label} answers", "all 200", str(f.statuses), f.statuses == [200]) and ok


SPARSE_TARGETS = (10.0, 30.0, 300.0)
DENSE_TARGETS = (4.0, 10.0, 500.0)


def platform_bench(args: argparse.Namespace) -> bool:
    now = datetime.now(UTC).replace(microsecond=0)
    sparse = args.only in (None, "sparse")
    dense = args.only in (None, "dense")
    calendars = [make_events(i, args.events, now) for i in range(SOURCES)] if sparse else []
    expected = sum(len(cal) for cal in calendars)  # all inside the synced window (90 days back, 400 ahead)
    first = (now + timedelta(days=1)).date()
    with tempfile.TemporaryDirectory(prefix="calmesh-avail-bench-") as tmp:
        radicale = Radicale(Path(tmp) / "radicale", BENCH_USER, BENCH_PASSWORD)
        feeds = None
        if sparse:
            write_calendars(radicale, calendars)
            radicale.start()
            print(f"Radicale: {SOURCES} calendars x {args.events:,} events written; warming its cache…", flush=True)
            warm_radicale(radicale)
        if dense:
            feeds, feed_url, dense_expected = serve_feeds(Path(tmp) / "feeds", args.dense_events, first)
        stack = Stack(
            data_dir=Path(tmp) / "stack", http_port=free_port(), sync_workers=2, fixed_ports=False, quiet=True,
            restart=False,
            extra_env={"CALMESH_LOG_LEVEL": "warning", "CALMESH_ALLOW_PRIVATE_NETWORKS": "1",
                       "CALMESH_RATE_LIMIT_PER_MINUTE": "100000000", "CALMESH_RATE_LIMIT_BURST": "10000000",
                       "CALMESH_PLAN_FREE_API_REQUESTS_PER_DAY": "100000000",
                       "CALMESH_AVAILABILITY_TIMELINES": "0" if args.no_timelines else "1"},
        )
        replica = None
        results: dict[str, Figures] = {}
        try:
            print("starting the platform (embedded PostgreSQL and NATS, every service)…", flush=True)
            stack.start(timeout=180)
            keys = {}
            if sparse:
                print(f"syncing {SOURCES} CalDAV calendars x {args.events:,} events from Radicale…", flush=True)
                t0 = time.monotonic()
                keys[SLUG] = set_up_calendar(stack.gateway_url, radicale, expected, args.sync_timeout)
                print(f"  synced {expected:,} events in the window in {time.monotonic() - t0:.0f} s", flush=True)
            if dense:
                print(f"syncing {SOURCES} iCal feeds x {args.dense_events:,} events over {DENSE_DAYS} days…", flush=True)
                t0 = time.monotonic()
                keys[DENSE_SLUG] = set_up_dense(stack.gateway_url, feed_url, dense_expected, args.sync_timeout)
                print(f"  projected {dense_expected:,} instances in {time.monotonic() - t0:.0f} s", flush=True)
            replica = start_second_replica(stack)
            start = now.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            end = start + timedelta(days=30)
            query = urlencode({"start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": end.strftime("%Y-%m-%dT%H:%M:%SZ")})
            groups = {"gateway": [c.process.pid for c in stack.children if c.name == "gateway" and c.process],
                      "availability x2": [c.process.pid for c in stack.children if c.name == "availability" and c.process]
                      + [replica.pid],
                      "postgres": _postgres_pids(Path(tmp) / "stack"),
                      "load generator": [os.getpid()]}
            loads = {}
            for slug, key in keys.items():
                url = f"{stack.gateway_url}/api/v1/calendars/{slug}/availability?{query}"
                results[slug] = measure(url, {"Authorization": f"Bearer {key}"}, args, groups)
                loads[slug] = os.getloadavg()[0]
            if sparse:
                rad, periods = radicale_free_busy(radicale, start, end, args.radicale_rounds)
                rad50 = statistics.median(rad)
        finally:
            if replica is not None:
                replica.terminate()
                replica.wait(10)
            stack.stop()
            radicale.stop()
            if feeds is not None:
                feeds.shutdown()
    print()
    print(f"30-day availability through the gateway, 2 replicas, one connection (p50/p99) and {args.concurrency} "
          f"connections (queries/s), on {os.cpu_count()} cores:")
    ok = True
    if sparse:
        ok &= report(f"sparse ({SOURCES} CalDAV calendars x {args.events:,} events over 485 days)", results[SLUG],
                     SPARSE_TARGETS, loads[SLUG])
    if dense:
        ok &= report(f"dense  ({SOURCES} iCal feeds x {args.dense_events:,} events over {DENSE_DAYS} days, "
                     f"{DENSE_SERIES} weekly series each)", results[DENSE_SLUG], DENSE_TARGETS, loads[DENSE_SLUG])
    if sparse and dense:
        print(f"  dense / sparse: p50 {results[DENSE_SLUG].p50 / results[SLUG].p50:.2f}x, "
              f"queries/s {results[DENSE_SLUG].rps / results[SLUG].rps:.2f}x")
    if sparse:
        print(f"Radicale free-busy REPORT, same window, {SOURCES} calendars ({periods} busy periods):")
        print(f"  p50 {rad50:8.1f} ms for the three  ->  CalMesh answers {rad50 / results[SLUG].p50:,.0f}x faster (p50 ratio)")
    return ok


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000, help="events per source calendar")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--count", type=int, default=2000, help="requests for the latency figures")
    parser.add_argument("--radicale-rounds", type=int, default=5)
    parser.add_argument("--sync-timeout", type=float, default=900.0)
    parser.add_argument("--dense-events", type=int, default=5000, help="events per dense iCal feed")
    parser.add_argument("--no-timelines", action="store_true",
                        help="availability without its in-memory timelines (every read queries its window)")
    parser.add_argument("--only", choices=["sparse", "dense"], help="measure one workload only")
    parser.add_argument("--engine-only", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    # SIGTERM unwinds like Ctrl-C, so the platform, Radicale and their data are cleaned up.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print("The interval engine alone (target: merge+invert of 100,000 sorted intervals < 50 ms):", flush=True)
    engine = engine_bench()
    engine_ok = record(BENCH, "engine merge+invert 100,000", "< 50 ms",
                       f"{engine['merge+invert (blocks with source ids)']:.1f} ms",
                       engine["merge+invert (blocks with source ids)"] < 50)
    if args.engine_only:
        return
    print()
    ok = platform_bench(args)
    print(f"Engine: merge+invert 100,000 intervals with source ids, median {engine['merge+invert (blocks with source ids)']:.1f} ms")
    sys.exit(0 if ok and engine_ok else 1)


if __name__ == "__main__":
    main()
