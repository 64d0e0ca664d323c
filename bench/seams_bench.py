"""Seams benchmark (issue 12): what putting a booking's time into the projection before the 201
costs, and what it buys, end to end through the gateway on a real Radicale calendar.

    .venv/bin/python bench/seams_bench.py [--events 1000] [--bookings 300] [--checks 200] [--one-by-one 10]
                                          [--concurrency 32] [--bare-puts 30] [--baseline-tree DIR]

Starts what it needs itself, as bench/booking_bench.py does (and with its helpers): embedded
PostgreSQL and NATS and every service as a process (the devstack `Stack`, rate limits raised), and a
Radicale CalDAV server whose calendar holds --events meetings. A user connects it, makes a unified
calendar "work" of it and a booking page on it; the bench waits until sync has projected them all.

1. Booking throughput: --bookings bookings of distinct free slots with --concurrency visitors
   (keep-alive clients, no credentials), every answer 201: bookings/s. Run last, so that no
   provider write of the other parts is still queued; its own writes are not waited for.
   The baseline. The issue's target is bookings/s against the code before the hold entered the
   projection (before the `seams` merge, 8a7cfe3; its first parent is fef55b3). That code is not
   in this tree, so the like-for-like baseline needs a checkout of it with its own .venv:
       git worktree add /tmp/pre-hold fef55b3 && make -C /tmp/pre-hold install
       .venv/bin/python bench/seams_bench.py --baseline-tree /tmp/pre-hold
   Then, once this run's platform has stopped, the same workload (same calendar, same page, same
   bookings, same visitors) runs on a platform started from that tree (this script, run by that
   tree's interpreter with --throughput-only), and ratio = bookings/s here / bookings/s there, target
   >= 0.90. Without --baseline-tree no ratio is judged, and the summary says so.
   What the run itself measures of the step, printed either way: sync-0's own Prometheus histogram
   for ``PUT /internal/reservations/{id}`` over the run (read from its /metrics before and after)
   gives the time sync took to enter each booking's row under that load, its wait for the
   connection's write lock included; the client side of the call (httpx and the loopback hop) is
   measured by the bench making the same call with the booking service's body and headers, with
   --concurrency clients in one event loop, on the quiet stack (client time minus sync's): H. The
   share (L - H) / L of the visitors' mean answer time L, and the CPU of all processes but Radicale
   per booking against per hold step alone (which counts the fan-out of the step's projection
   event too), are NOT baselines: on the shared machine, checked against the pre-hold code, both
   were far off, and not even on one side (the step's cost is not all on the request path: it is
   CPU that every other process waits for, the booking's second transaction comes with it, and the
   fan-out of one more projection event per booking).
2. 201 -> busy: right after each 201 (no sleep: the next request on the same connection) the
   owner's key asks ``GET /api/v1/calendars/work/availability?start&end`` for that slot, which was
   free before: the share of slots busy on that first read, for the --one-by-one and the --checks
   bookings below (target 100%: a delay of 0, measured for every booking).
3. 201 -> provider event: the time from each 201 until the booking's CalDAV object (its UID derives
   from the booking id, and so does its href) is in Radicale's storage, p50 and p99, for
   --one-by-one bookings made each once the previous one's event exists (nothing queued), then for
   the burst of --checks bookings made by --concurrency visitors (Radicale's queue). The storage
   folder is polled every 5 ms from a thread: that costs Radicale nothing, so the bench does not
   slow the server it times. At the end every one of these bookings' objects is read back with a
   GET and its UID checked, and every object of the calendar counted by UID: exactly one per booking.
   Beside it: provider writes/s during the burst, sync's own time per write (its histogram for
   ``POST /internal/events``), and a bare PUT loop (--bare-puts new objects one after the other into
   the same calendar, dated where no slot is offered) before and after: Radicale's PUT costs more
   the more objects the collection holds, so the loop goes into the bookings' own calendar.

Exits non-zero when a target is missed: a booking answer other than 201, busy at once below 100%,
the throughput ratio below 0.90 (with --baseline-tree), or a booking without exactly one provider event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import subprocess

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from booking_bench import (  # noqa: E402  (one set of booking helpers for the benches)
    Connection, CpuMeter, book_requests, fill_radicale, free_slots, pct, settle, setup, throughput,
)

from calmesh_booking.testing import Radicale  # noqa: E402
from calmesh_common.devstack.embedded import free_port  # noqa: E402
from calmesh_common.devstack.supervisor import Stack  # noqa: E402
from calmesh_common.service import SECRET_HEADER  # noqa: E402

try:  # absent from the code before the hold step, which --throughput-only also runs on
    from calmesh_common.ids import booking_uid
except ImportError:
    booking_uid = None  # type: ignore[assignment]

RESERVE_ROUTE = "/internal/reservations/"
WRITE_ROUTE = "/internal/events"
TARGET_RATIO = 0.90
WARM_UP = 5  # bookings before anything is timed


def parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def route_seconds(metrics_text: str, route: str, method: str) -> tuple[float, float]:
    """(sum of seconds, count) of one route's request-duration histogram in a /metrics answer."""
    from prometheus_client.parser import text_string_to_metric_families

    total = count = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "calmesh_http_request_duration_seconds":
            continue
        for sample in family.samples:
            # The route label is litestar's path template (its parameter's spelling may vary): match its prefix.
            if sample.labels.get("route", "").startswith(route) and sample.labels.get("method") == method:
                if sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
    return total, count


def scrape(url: str, route: str, method: str) -> tuple[float, float]:
    r = httpx.get(f"{url}/metrics", timeout=10)
    r.raise_for_status()
    return route_seconds(r.text, route, method)


class StorageWatch:
    """When each expected CalDAV object appears in Radicale's storage folder (a thread polling the
    folder every 5 ms: no request to Radicale, so the timing does not load the server it times)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.expected: dict[str, float] = {}  # file name -> monotonic time the 201 came
        self.seen: dict[str, float] = {}  # file name -> monotonic time it was first seen
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> StorageWatch:
        self._thread.start()
        return self

    def expect(self, name: str, answered_at: float) -> None:
        with self._lock:
            self.expected[name] = answered_at

    def outstanding(self) -> int:
        with self._lock:
            return len(self.expected) - len(self.seen)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                waiting = [n for n in self.expected if n not in self.seen]
            if waiting:
                present = set(os.listdir(self.folder))
                with self._lock:
                    for name in waiting:
                        if name in present:
                            self.seen[name] = now
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def lags(self, names: list[str]) -> list[float]:
        """Seconds from each 201 to its object, for the names seen (a poll's start counts, so the
        figure is at most 5 ms plus one folder scan early, never late)."""
        with self._lock:
            return [self.seen[n] - self.expected[n] for n in names if n in self.seen]


def object_name(booking_id: str) -> str:
    """The file Radicale stores a booking's object in: sync PUTs it at <calendar>/<quoted UID>.ics."""
    return booking_uid(booking_id) + ".ics"


async def bare_put_loop(radicale: Radicale, count: int) -> float:
    """PUTs/s of `count` new objects, one after the other, into the bookings' own calendar (Radicale's
    cost of a PUT grows with the collection), dated three years back, where no slot is offered."""
    url = radicale.calendar_url("bench")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    async with httpx.AsyncClient(auth=radicale.auth, timeout=60) as client:
        t0 = time.perf_counter()
        for i in range(count):
            uid = f"bare-{uuid.uuid4().hex}"
            start = datetime.now(UTC) - timedelta(days=3 * 365, minutes=30 * i)
            body = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//CalMesh bench//EN\r\nBEGIN:VEVENT\r\n"
                    f"UID:{uid}\r\nDTSTAMP:{stamp}\r\nDTSTART:{start:%Y%m%dT%H%M%SZ}\r\n"
                    f"DTEND:{start + timedelta(minutes=30):%Y%m%dT%H%M%SZ}\r\nSUMMARY:Bare {i}\r\n"
                    "END:VEVENT\r\nEND:VCALENDAR\r\n")
            r = await client.put(f"{url.rstrip('/')}/{uid}.ics", content=body,
                                 headers={"Content-Type": "text/calendar; charset=utf-8", "If-None-Match": "*"})
            if r.status_code not in (201, 204):
                raise SystemExit(f"bare PUT answered {r.status_code}: {r.text[:200]}")
        return count / (time.perf_counter() - t0)


async def timed_bookings(gateway: str, handle: str, starts: list[str], concurrency: int
                         ) -> tuple[float, dict[int, int], list[float], list[dict]]:
    """Book each start once with `concurrency` clients: (bookings/s, statuses, each answer's
    seconds, the 201 bodies)."""
    parts = urlsplit(gateway)
    conns = [await Connection(parts.hostname or "127.0.0.1", parts.port or 80).open() for _ in range(concurrency)]
    queue = list(reversed(book_requests(handle, starts)))
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    answers: list[dict] = []

    async def worker(conn: Connection) -> None:
        while queue:
            target, body = queue.pop()
            t0 = time.perf_counter()
            status, data = await conn.request("POST", target, body)
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 201:
                answers.append(json.loads(data))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        await c.close()
    return len(starts) / elapsed, statuses, latencies, answers


def reservation_body(target: dict, start: str, n: int) -> bytes:
    """What the booking service sends sync for a booking (clients.SyncEvents.reserve)."""
    begin = parse_instant(start)
    return json.dumps({
        "user_id": target["user_id"], "connection_id": target["connection_id"], "calendar_id": target["calendar_id"],
        "title": f"Consultation: Visitor {n}", "start": start,
        "end": (begin + timedelta(minutes=30)).isoformat().replace("+00:00", "Z"),
        "description": f"Booked by Visitor {n} <visitor{n}@example.org> via CalMesh.",
    }).encode()


@dataclass(frozen=True)
class HoldStep:
    """The hold step made alone, straight to sync (seconds per call)."""

    server_single: float  #: sync's histogram, one call at a time
    client_single: float  #: the client side and loopback beyond it, one call at a time
    server_concurrent: float  #: sync's histogram, `concurrency` clients
    client_concurrent: float  #: the client side and loopback beyond it, `concurrency` clients in one event loop
    rate: float  #: reservations/s with `concurrency` clients
    cpu: float  #: CPU seconds per call with `concurrency` clients, every process but Radicale


async def hold_step_alone(sync_url: str, secret: str, target: dict, starts: list[str], sequential: int,
                          concurrency: int, meter: CpuMeter) -> HoldStep:
    """The booking's hold step made straight to sync with the booking service's body and headers,
    through httpx as the booking service makes it: first `sequential` calls one at a time, then the
    rest with `concurrency` clients in one event loop. Every reservation is released afterwards."""
    headers = {SECRET_HEADER: secret, "Content-Type": "application/json"}
    ids = [f"bk_bench{uuid.uuid4().hex[:20]}" for _ in starts]
    seconds: list[float] = []
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def put(i: int) -> None:
            t0 = time.perf_counter()
            r = await client.put(f"{sync_url}/internal/reservations/{ids[i]}", content=reservation_body(target, starts[i], i),
                                 headers=headers)
            seconds.append(time.perf_counter() - t0)
            if r.status_code != 201:
                raise SystemExit(f"sync answered the hold step {r.status_code}: {r.text[:300]}")

        async def timed(indexes: list[int], clients: int) -> tuple[float, float, float]:
            """(client seconds per call, sync's seconds per call, calls/s)"""
            queue = list(reversed(indexes))

            async def worker() -> None:
                while queue:
                    await put(queue.pop())

            seconds.clear()
            before = scrape(sync_url, RESERVE_ROUTE, "PUT")
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            elapsed = time.perf_counter() - t0
            after = scrape(sync_url, RESERVE_ROUTE, "PUT")
            return statistics.fmean(seconds), (after[0] - before[0]) / max(1.0, after[1] - before[1]), len(indexes) / elapsed

        await put(0)  # opens the connection
        single, server_single, _ = await timed(list(range(1, sequential + 1)), 1)
        cpu_before = meter.read()
        rest = list(range(sequential + 1, len(starts)))
        concurrent, server_concurrent, rate = await timed(rest, concurrency)
        cpu = cpu_seconds(cpu_before, meter.read()) / len(rest)
        for i in range(len(starts)):
            r = await client.delete(f"{sync_url}/internal/reservations/{ids[i]}", params={"user_id": target["user_id"]},
                                    headers=headers)
            if r.status_code != 204:
                raise SystemExit(f"releasing a bench reservation answered {r.status_code}")
    return HoldStep(server_single, max(0.0, single - server_single), server_concurrent,
                    max(0.0, concurrent - server_concurrent), rate, cpu)


def cpu_seconds(before: dict[str, float], after: dict[str, float]) -> float:
    """CPU seconds the platform's processes and the bench used between two reads, Radicale's left
    out (the provider's work is not ours, and Radicale's writes of earlier bookings go on meanwhile)."""
    return sum(after[k] - before.get(k, 0.0) for k in after if k != "radicale")


def covered(busy: list[dict], start: datetime, end: datetime) -> bool:
    return any(parse_instant(b["start"]) <= start and parse_instant(b["end"]) >= end for b in busy)


async def book_then_read(gateway: str, handle: str, key: str, starts: list[str], concurrency: int,
                         watch: StorageWatch, one_by_one: bool = False) -> tuple[dict[int, int], int, int, list[str]]:
    """Each visitor books, and on the 201 the very next request (same connection) asks availability
    for that slot with the owner's key: (booking statuses, busy on the first read, reads, booking ids).
    `one_by_one`: one visitor, who books again only once the previous booking's event exists."""
    parts = urlsplit(gateway)
    workers = 1 if one_by_one else concurrency
    conns = [await Connection(parts.hostname or "127.0.0.1", parts.port or 80).open() for _ in range(workers)]
    queue = list(reversed(book_requests(handle, starts)))
    statuses: dict[int, int] = {}
    booked: list[str] = []
    busy_first = reads = 0
    auth = {"Authorization": f"Bearer {key}"}

    async def worker(conn: Connection) -> None:
        nonlocal busy_first, reads
        while queue:
            target, body = queue.pop()
            status, data = await conn.request("POST", target, body)
            answered = time.monotonic()
            statuses[status] = statuses.get(status, 0) + 1
            if status == 201:
                booking = json.loads(data)
                watch.expect(object_name(booking["id"]), answered)
                booked.append(booking["id"])
                start, end = parse_instant(booking["start"]), parse_instant(booking["end"])
                query = urlencode({"start": booking["start"], "end": booking["end"]})
                got, answer = await conn.request("GET", f"/api/v1/calendars/work/availability?{query}", headers=auth)
                reads += 1
                if got == 200 and covered(json.loads(answer)["busy"], start, end):
                    busy_first += 1
                elif got != 200:
                    print(f"  availability answered {got}: {answer[:200]!r}", flush=True)
            if one_by_one:
                await wait_written(watch, 60)

    await asyncio.gather(*(worker(c) for c in conns))
    for c in conns:
        await c.close()
    return statuses, busy_first, reads, booked


async def wait_written(watch: StorageWatch, timeout: float) -> float:
    t0 = time.monotonic()
    while watch.outstanding() and time.monotonic() - t0 < timeout:
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def verify_objects(radicale: Radicale, folder: Path, booking_ids: list[str]) -> tuple[int, int]:
    """(bookings whose object Radicale serves with the booking's UID, bookings with exactly one
    object of their UID among all the calendar's objects)."""
    served = 0
    async with httpx.AsyncClient(auth=radicale.auth, timeout=30) as client:
        for booking_id in booking_ids:
            uid = booking_uid(booking_id)
            r = await client.get(radicale.calendar_url("bench") + quote(uid, safe="@.-") + ".ics")
            if r.status_code == 200 and f"UID:{uid}" in r.text.replace("\r\n ", ""):
                served += 1
    counts: dict[str, int] = {}
    for path in folder.glob("*.ics"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("UID:"):
                counts[line[4:].strip()] = counts.get(line[4:].strip(), 0) + 1
    once = sum(1 for b in booking_ids if counts.get(booking_uid(b)) == 1)
    return served, once


async def write_target(stack: Stack) -> dict:
    """The owner, connection and calendar the page's bookings enter the projection with."""
    db = await asyncpg.connect(stack.database_url)
    try:
        row = await db.fetchrow("SELECT user_id, connection_id, calendar_id FROM sync.event_instances"
                                " WHERE booking_id IS NOT NULL LIMIT 1")
    finally:
        await db.close()
    assert row is not None, "no booking row in the projection"
    return dict(row)


def lag_line(name: str, lags: list[float], expected: int) -> str:
    if not lags:
        return f"  {name}: no provider event seen"
    return (f"  {name}: {len(lags)}/{expected} seen, p50 {statistics.median(lags) * 1000:.0f} ms, "
            f"p99 {pct(lags, 0.99) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms")


def start_platform(tmp: Path, events: int) -> tuple[Radicale, Stack]:
    """Radicale with `events` meetings in its calendar "bench", and the platform, started."""
    radicale = Radicale(tmp / "radicale")
    radicale.root.mkdir(parents=True, exist_ok=True)
    fill_radicale(radicale, "bench", events)
    radicale.start()
    warm = httpx.request("PROPFIND", radicale.calendar_url("bench"), auth=radicale.auth,
                         headers={"Depth": "1"}, timeout=300)
    print(f"Radicale holds {events:,} meetings ({warm.status_code})", flush=True)
    stack = Stack(
        data_dir=tmp / "stack", http_port=free_port(), sync_workers=2, fixed_ports=False, quiet=True, restart=False,
        extra_env={"CALMESH_LOG_LEVEL": "warning", "CALMESH_PUBLIC_RATE_LIMIT_PER_MINUTE": "100000000",
                   "CALMESH_RATE_LIMIT_PER_MINUTE": "100000000", "CALMESH_RATE_LIMIT_BURST": "100000",
                   "CALMESH_ALLOW_PRIVATE_NETWORKS": "1"},
    )
    print("starting the platform (embedded PostgreSQL and NATS, every service)…", flush=True)
    stack.start(timeout=180)
    return radicale, stack


def throughput_only(events: int, bookings: int, concurrency: int) -> None:
    """Part 1's workload alone, on whatever code this interpreter's packages are (--baseline-tree
    runs it with the other tree's): a JSON line {rate, statuses} on stdout at the end."""
    with tempfile.TemporaryDirectory(prefix="calmesh-seams-baseline-") as tmp:
        radicale, stack = start_platform(Path(tmp), events)
        try:
            handle, _ = asyncio.run(setup(stack, radicale, "bench", events))
            free = asyncio.run(free_slots(stack.gateway_url, handle, WARM_UP + bookings))
            asyncio.run(throughput(stack.gateway_url, book_requests(handle, free[:WARM_UP]), 4))
            meter = CpuMeter(stack, radicale)
            before = meter.read()
            rate, statuses, _, _ = asyncio.run(timed_bookings(stack.gateway_url, handle, free[WARM_UP:], concurrency))
            after = meter.read()
        finally:
            stack.stop()
            radicale.stop()
    cpu = {k: (after[k] - before.get(k, 0.0)) / bookings for k in after}
    print(json.dumps({"rate": rate, "statuses": statuses, "cpu": cpu}), flush=True)


def baseline_rate(tree: Path, events: int, bookings: int, concurrency: int) -> tuple[float, dict[str, int]]:
    """Bookings/s of part 1's workload on the code checked out at `tree` (with its own .venv): this
    script run by that tree's interpreter, so the platform it starts is that tree's."""
    python = tree / ".venv" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} does not exist: run `make install` in {tree}")
    print(f"the baseline: the same workload on the code at {tree}…", flush=True)
    done = subprocess.run(
        [str(python), str(Path(__file__).resolve()), "--throughput-only", "--events", str(events),
         "--bookings", str(bookings), "--concurrency", str(concurrency)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": ""},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the baseline run failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    answer = json.loads(lines[-1])
    busy = sorted(((v, k) for k, v in answer["cpu"].items() if v > 0.000005), reverse=True)
    print("  CPU per booking there (while the run lasted): "
          + ", ".join(f"{k} {v * 1000:.2f} ms" for v, k in busy), flush=True)
    return float(answer["rate"]), {str(k): int(v) for k, v in answer["statuses"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="meetings on the Radicale calendar")
    parser.add_argument("--bookings", type=int, default=300, help="bookings timed for throughput")
    parser.add_argument("--checks", type=int, default=200, help="bookings in a burst, each followed by an availability read")
    parser.add_argument("--one-by-one", type=int, default=10, help="bookings each made once the previous one's event exists")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bare-puts", type=int, default=30)
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="a checkout of the code before the hold step, with its .venv: part 1's workload is "
                             "run on it too, and the ratio judged")
    parser.add_argument("--throughput-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.throughput_only:
        throughput_only(args.events, args.bookings, args.concurrency)
        return
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    summary: list[tuple[str, str, str, bool | None]] = []
    holds_alone, warm_up = 150, WARM_UP
    with tempfile.TemporaryDirectory(prefix="calmesh-seams-bench-") as tmp:
        radicale, stack = start_platform(Path(tmp), args.events)
        folder = radicale.root / "collections" / "collection-root" / radicale.user / "bench"
        watch = StorageWatch(folder).start()
        try:
            handle, key = asyncio.run(setup(stack, radicale, "bench", args.events))
            sync_url = stack.service_urls["sync"]
            secret = stack.children[0].env["CALMESH_INTERNAL_SECRET"]
            wanted = warm_up + holds_alone + args.one_by_one + args.checks + args.bookings
            free = asyncio.run(free_slots(stack.gateway_url, handle, wanted))
            if len(free) < wanted:
                raise SystemExit(f"only {len(free)} free slots for {wanted}: lower --bookings or --checks")
            sizes = [warm_up, holds_alone, args.one_by_one, args.checks, args.bookings]
            cuts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
            warm_starts, hold_starts, single_starts, check_starts, throughput_starts = (
                free[a:b] for a, b in zip(cuts, cuts[1:]))
            meter = CpuMeter(stack, radicale)

            # The hold step alone, on the quiet stack: its client side, its pace, its CPU.
            asyncio.run(throughput(stack.gateway_url, book_requests(handle, warm_starts), 4))
            asyncio.run(settle(stack, warm_up))
            step = asyncio.run(hold_step_alone(sync_url, secret, asyncio.run(write_target(stack)), hold_starts, 50,
                                               args.concurrency, meter))
            print(f"the hold step alone, straight to sync with the booking service's body: one at a time sync takes "
                  f"{step.server_single * 1000:.1f} ms (its histogram) and the client side {step.client_single * 1000:.1f} ms "
                  f"more; with {args.concurrency} clients {step.server_concurrent * 1000:.1f} + "
                  f"{step.client_concurrent * 1000:.1f} ms, {step.rate:.0f} reservations/s, {step.cpu * 1000:.1f} ms CPU each",
                  flush=True)

            # 3a. 201 -> provider event with nothing queued: each booking once the previous one's event exists.
            bare_before = asyncio.run(bare_put_loop(radicale, args.bare_puts))
            writes_before = scrape(sync_url, WRITE_ROUTE, "POST")
            statuses1, busy1, reads1, single_ids = asyncio.run(book_then_read(
                stack.gateway_url, handle, key, single_starts, 1, watch, one_by_one=True))
            writes_after = scrape(sync_url, WRITE_ROUTE, "POST")
            single_write = (writes_after[0] - writes_before[0]) / max(1.0, writes_after[1] - writes_before[1])
            print(f"bookings of {len(single_starts)} slots one by one (each once the previous one's event existed): "
                  f"answers {dict(sorted(statuses1.items()))}, busy on the first read {busy1}/{reads1}", flush=True)

            # 2 and 3b. Busy on the very next read, in a burst; the burst's provider events.
            t_burst = time.monotonic()
            statuses2, busy2, reads2, burst_ids = asyncio.run(book_then_read(
                stack.gateway_url, handle, key, check_starts, args.concurrency, watch))
            print(f"bookings of {len(check_starts)} slots with {args.concurrency} visitors, each followed at once by an "
                  f"availability read: answers {dict(sorted(statuses2.items()))}, busy on the first read "
                  f"{busy2}/{reads2}", flush=True)
            writes_before = scrape(sync_url, WRITE_ROUTE, "POST")
            drained = asyncio.run(wait_written(watch, 600))
            writes_after = scrape(sync_url, WRITE_ROUTE, "POST")
            burst_write = (writes_after[0] - writes_before[0]) / max(1.0, writes_after[1] - writes_before[1])
            bare_after = asyncio.run(bare_put_loop(radicale, args.bare_puts))
            names = [object_name(b) for b in burst_ids]
            seen_at = sorted(watch.seen[n] for n in names if n in watch.seen)
            provider_rate = (len(seen_at) - 1) / (seen_at[-1] - seen_at[0]) if len(seen_at) > 1 else 0.0
            print(f"  the burst's provider events all existed {time.monotonic() - t_burst:.0f} s after its first booking "
                  f"({drained:.0f} s after the last)", flush=True)
            print("201 -> the booking's event exists on Radicale:", flush=True)
            single_lags, burst_lags = watch.lags([object_name(b) for b in single_ids]), watch.lags(names)
            print(lag_line(f"one by one, {len(single_ids)}", single_lags, len(single_ids))
                  + f"; sync took {single_write * 1000:.0f} ms of each (its histogram: Radicale's PUT and the projection)")
            print(lag_line(f"burst of {len(burst_ids)} at {args.concurrency} visitors", burst_lags, len(burst_ids))
                  + f"; sync took {burst_write * 1000:.0f} ms a write")
            print(f"  provider writes during the burst: {provider_rate:.1f}/s; a bare PUT loop into the same calendar: "
                  f"{bare_before:.1f} PUTs/s before the bookings, {bare_after:.1f} after", flush=True)
            all_ids = single_ids + burst_ids
            served, once = asyncio.run(verify_objects(radicale, folder, all_ids))
            print(f"  read back: {served}/{len(all_ids)} served by Radicale with the booking's UID, "
                  f"{once}/{len(all_ids)} with exactly one object of that UID", flush=True)

            reads, busy = reads1 + reads2, busy1 + busy2
            booked_ok = set(statuses1) == {201} and set(statuses2) == {201}
            summary.append(("busy in availability on the first read after the 201", "100% (delay 0)",
                            f"{busy / max(1, reads):.1%} of {reads}", busy == reads and reads > 0 and booked_ok))
            summary.append(("201 -> provider event, one by one", "reported",
                            f"p50 {statistics.median(single_lags) * 1000:.0f} ms, p99 {pct(single_lags, 0.99) * 1000:.0f} ms"
                            if single_lags else "none seen", None))
            summary.append((f"201 -> provider event, burst of {len(burst_ids)}", "reported",
                            f"p50 {statistics.median(burst_lags):.1f} s, p99 {pct(burst_lags, 0.99):.1f} s; "
                            f"{provider_rate:.1f} writes/s vs bare {bare_before:.1f} / {bare_after:.1f} PUTs/s"
                            if burst_lags else "none seen", None))
            summary.append(("one provider event per booking", f"{len(all_ids)}", f"{once} (served {served})",
                            once == served == len(all_ids)))

            # 1. Throughput (last: its provider writes are not waited for), and the hold step's time in it.
            cpu_before = meter.read()
            sync_before = scrape(sync_url, RESERVE_ROUTE, "PUT")
            rate, statuses, latencies, _ = asyncio.run(
                timed_bookings(stack.gateway_url, handle, throughput_starts, args.concurrency))
            sync_after = scrape(sync_url, RESERVE_ROUTE, "PUT")
            cpu_after = meter.read()
            calls = sync_after[1] - sync_before[1]
            server_hold = (sync_after[0] - sync_before[0]) / max(1.0, calls)
            hold = server_hold + step.client_concurrent
            mean_answer = statistics.fmean(latencies)
            modelled = (mean_answer - hold) / mean_answer
            booking_cpu = cpu_seconds(cpu_before, cpu_after) / len(throughput_starts)
            print(f"bookings of {len(throughput_starts)} distinct slots with {args.concurrency} visitors: "
                  f"{rate:.1f} bookings/s, answers {dict(sorted(statuses.items()))}, answer p50 "
                  f"{statistics.median(latencies) * 1000:.0f} ms, mean {mean_answer * 1000:.0f} ms", flush=True)
            CpuMeter.report(cpu_before, cpu_after, len(throughput_starts), "booking (while the run lasted)")
            print(f"  the hold step in that run: {calls:.0f} calls, sync took {server_hold * 1000:.1f} ms each (its "
                  f"histogram), + {step.client_concurrent * 1000:.1f} ms client side = H {hold * 1000:.1f} ms of the "
                  f"L {mean_answer * 1000:.0f} ms a visitor waited: (L - H) / L = {modelled:.3f}", flush=True)
            print(f"  CPU: {booking_cpu * 1000:.1f} ms per booking in the run (Radicale left out), {step.cpu * 1000:.1f} ms "
                  f"per hold step alone (with the fan-out of its projection event): 1 - {step.cpu * 1000:.1f} / "
                  f"{booking_cpu * 1000:.1f} = {1 - step.cpu / booking_cpu:.3f}", flush=True)
            statuses_ok = set(statuses) == {201}
        finally:
            watch.stop()
            stack.stop()
            radicale.stop()
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)

    if args.baseline_tree is not None:
        before_rate, before_statuses = baseline_rate(args.baseline_tree, args.events, args.bookings, args.concurrency)
        ratio = rate / before_rate
        print(f"bookings/s: {rate:.1f} here, {before_rate:.1f} on {args.baseline_tree} (answers {before_statuses}), "
              f"same workload, one after the other: ratio {ratio:.3f}  (target >= {TARGET_RATIO:.2f})", flush=True)
        summary.insert(0, ("bookings/s against the code before the hold step", f">= {TARGET_RATIO:.2f}",
                           f"{ratio:.3f} ({rate:.1f} vs {before_rate:.1f} bookings/s)",
                           ratio >= TARGET_RATIO and statuses_ok and set(before_statuses) == {"201"}))
    else:
        summary.insert(0, ("bookings/s against the code before the hold step", f">= {TARGET_RATIO:.2f}",
                           f"no like-for-like baseline in this run (--baseline-tree); {rate:.1f} bookings/s, hold "
                           f"step {hold * 1000:.0f} ms of {mean_answer * 1000:.0f} ms ((L - H) / L {modelled:.3f}), "
                           f"{step.cpu * 1000:.1f} of {booking_cpu * 1000:.1f} ms CPU", None if statuses_ok else False))
    print("summary:")
    for name, target_text, measured, met in summary:
        verdict = "reported" if met is None else ("met" if met else "MISSED")
        print(f"  {name}: target {target_text}, measured {measured}: {verdict}")
    sys.exit(0 if all(met is not False for *_, met in summary) else 1)


if __name__ == "__main__":
    main()
