"""Booking benchmark: public slots over 30 days on a page whose calendar holds 15,000 events, and
booking, hold and reschedule throughput for distinct slots, all end to end through the gateway.

    .venv/bin/python bench/booking_bench.py [--events 15000] [--count 600] [--bookings 1500] [--holds 500]
                                            [--reschedules 500] [--concurrency 32]

Starts what it needs itself: embedded PostgreSQL and NATS and every service as a process (the
devstack `Stack`, with the public rate limit raised for the run), and a Radicale CalDAV server whose
calendar is filled with --events events (files written straight into Radicale's storage), spread
over the sync window (90 days back to 400 days ahead), 15 to 90 minutes long, between 07:00 and
22:00 Amsterdam time. A user connects it over CalDAV, makes a unified calendar of it and a booking
page on that calendar; the bench waits until sync has projected every event.

Then it measures, through the gateway (no credentials, as a visitor's browser would call it):
- ``GET /api/v1/booking-pages/{slug}/slots?handle&start&end`` for 30 days, one request at a time
  on a keep-alive connection: p50 and p99 latency;
- ``POST /api/v1/booking-pages/{slug}/book`` for distinct free slots with --concurrency clients:
  bookings a second (every answer must be 201). Each booking is also written to Radicale through
  sync and mailed, by the booking service's consumers, while the run goes on;
- ``POST /api/v1/booking-pages/{slug}/holds?handle`` for other distinct free slots, same clients,
  once sync has written the bookings to Radicale: holds a second (every answer must be 201);
- ``POST`` of the bookings' own ``reschedule_url`` (the visitor's signed link) to yet other free
  slots, same clients: reschedules a second (every answer must be 200). Each one also moves the
  CalDAV event in place and sends the updated invitation, by consumers, while the run goes on.

Targets: slots p50 <= 15 ms and p99 <= 40 ms; >= 200 bookings/s. Holds and reschedules per second
are printed beside bookings per second (same stack, same run), with no target of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import psutil

from calmesh_booking.testing import Radicale
from calmesh_common.devstack.embedded import free_port
from calmesh_common.devstack.supervisor import Stack

from benchkit import record

BENCH = "booking"

AMS = ZoneInfo("Europe/Amsterdam")
SLUG = "consult"
WEEKDAYS_ALL = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def fill_radicale(radicale: Radicale, calendar: str, count: int, seed: int = 7) -> None:
    """Write `count` events into Radicale's storage for `calendar` (Radicale must not run yet)."""
    folder = radicale.root / "collections" / "collection-root" / radicale.user / calendar
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".Radicale.props").write_text(json.dumps({"tag": "VCALENDAR", "D:displayname": calendar}))
    rnd = random.Random(seed)
    today = datetime.now(AMS).replace(hour=0, minute=0, second=0, microsecond=0)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for i in range(count):
        day = today + timedelta(days=rnd.randrange(-89, 399))
        start = day.replace(hour=rnd.randrange(7, 21), minute=rnd.choice((0, 15, 30, 45)))
        end = start + timedelta(minutes=rnd.choice((15, 30, 45, 60, 90)))
        uid = f"bench-{i}@calmesh"
        (folder / f"bench-{i}.ics").write_text(
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//CalMesh bench//EN\r\nBEGIN:VEVENT\r\n"
            f"UID:{uid}\r\nDTSTAMP:{stamp}\r\nDTSTART:{start.astimezone(UTC):%Y%m%dT%H%M%SZ}\r\n"
            f"DTEND:{end.astimezone(UTC):%Y%m%dT%H%M%SZ}\r\nSUMMARY:Meeting {i}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        )


class Connection:
    """One keep-alive HTTP/1.1 connection (a small client, so the load costs the machine little)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def request(self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        data = await self.reader.readexactly(length) if length else b""
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class CpuMeter:
    """CPU seconds used by each process of the platform (with their children), between two reads."""

    def __init__(self, stack: Stack, radicale: Radicale) -> None:
        self.procs: dict[str, psutil.Process] = {}
        for child in stack.children:
            if child.process is not None:
                self.procs[child.name] = psutil.Process(child.process.pid)
        pid_file = stack.data_dir / "postgres" / "postmaster.pid"
        if pid_file.exists():
            self.procs["postgres"] = psutil.Process(int(pid_file.read_text().split()[0]))
        if radicale.process is not None:
            self.procs["radicale"] = psutil.Process(radicale.process.pid)
        self.procs["bench client"] = psutil.Process()

    def read(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            try:
                # The bench itself is the parent of every other process: only its own time counts.
                family = [proc] if name == "bench client" else [proc, *proc.children(recursive=True)]
                total = sum(sum(p.cpu_times()[:2]) for p in family)
            except psutil.Error:
                total = 0.0
            out[name] = total
        return out

    @staticmethod
    def report(before: dict[str, float], after: dict[str, float], per: int, what: str) -> None:
        used = {k: after[k] - before.get(k, 0.0) for k in after}
        busy = sorted(((v, k) for k, v in used.items() if v > 0.005), reverse=True)
        print(f"  CPU per {what}: " + ", ".join(f"{k} {v / per * 1000:.2f} ms" for v, k in busy), flush=True)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def setup(stack: Stack, radicale: Radicale, calendar: str, events: int) -> tuple[str, str]:
    """Sign up, connect Radicale, make the unified calendar and the page; wait for the projection.
    Returns (handle, full key)."""
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=60) as gw:
        suffix = uuid.uuid4().hex[:6]
        handle = f"bench-{suffix}"
        r = await gw.post("/api/v1/auth/signup", json={"email": f"{handle}@example.com", "password": "benchmark passphrase",
                                                       "handle": handle, "name": "Bench Owner",
                                                       "timezone": "Europe/Amsterdam"})
        r.raise_for_status()
        r = await gw.post("/api/v1/api-keys", json={"name": "bench", "scope": "full"},
                          headers={"X-CSRF-Token": gw.cookies["calmesh_csrf"]})
        r.raise_for_status()
        key = r.json()["key"]
        gw.cookies.clear()
        auth = {"Authorization": f"Bearer {key}"}
        r = await gw.post("/api/v1/connections/caldav", headers=auth, json={
            "url": radicale.calendar_url(calendar), "username": radicale.user, "password": radicale.password})
        if r.status_code != 201:
            raise SystemExit(f"connecting Radicale failed: {r.status_code} {r.text}")
        connection = r.json()
        source = next(c for c in connection["calendars"] if c["name"] == calendar)
        r = await gw.post("/api/v1/calendars", headers=auth, json={
            "slug": "work", "name": "Work", "timezone": "Europe/Amsterdam",
            "sources": [{"connection_id": connection["id"], "calendar_id": source["id"]}]})
        r.raise_for_status()
        r = await gw.post("/api/v1/booking-pages", headers=auth, json={
            "slug": SLUG, "calendar_slug": "work", "title": "Consultation", "duration_minutes": 30,
            "timezone": "Europe/Amsterdam", "weekly_hours": {d: [["08:00", "20:00"]] for d in WEEKDAYS_ALL},
            "max_days_ahead": 365})
        r.raise_for_status()
    pool = await asyncpg.connect(stack.database_url)
    try:
        t0 = time.monotonic()
        last = -1
        while True:
            n = await pool.fetchval("SELECT count(*) FROM sync.event_instances WHERE connection_id = $1",
                                    connection["id"])
            if n != last:
                print(f"  projected {n:,} of {events:,} events ({time.monotonic() - t0:.0f} s)", flush=True)
                last = n
            if n >= events:
                break
            if time.monotonic() - t0 > 900:
                raise SystemExit(f"sync projected only {n} of {events} events in 15 minutes")
            await asyncio.sleep(2)
    finally:
        await pool.close()
    return handle, key


async def slot_latency(gateway: str, handle: str, count: int) -> tuple[list[float], int]:
    parts = urlsplit(gateway)
    first = (datetime.now(AMS) + timedelta(days=1)).date()
    query = urlencode({"handle": handle, "start": first.isoformat(), "end": (first + timedelta(days=29)).isoformat()})
    target = f"/api/v1/booking-pages/{SLUG}/slots?{query}"
    conn = await Connection(parts.hostname or "127.0.0.1", parts.port or 80).open()
    for _ in range(50):  # warm-up
        status, body = await conn.request("GET", target)
        assert status == 200, body[:300]
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        status, body = await conn.request("GET", target)
        samples.append((time.perf_counter() - t0) * 1000.0)
        assert status == 200, body[:300]
    await conn.close()
    return samples, len(json.loads(body)["slots"])


async def free_slots(gateway: str, handle: str, wanted: int) -> list[str]:
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as gw:
        first = (datetime.now(AMS) + timedelta(days=2)).date()
        out: list[str] = []
        while len(out) < wanted:
            r = await gw.get(f"/api/v1/booking-pages/{SLUG}/slots", params={
                "handle": handle, "start": first.isoformat(), "end": (first + timedelta(days=29)).isoformat()})
            r.raise_for_status()
            found = [s["start"] for s in r.json()["slots"]]
            if not found and first > (datetime.now(AMS) + timedelta(days=360)).date():
                break
            out += found
            first += timedelta(days=30)
    return out[:wanted]


async def throughput(gateway: str, requests: list[tuple[str, bytes]], concurrency: int
                     ) -> tuple[float, dict[int, int], list[bytes]]:
    """POST each (target, body) once, with `concurrency` keep-alive clients: requests a second, the
    answers' statuses counted, and the bodies of the successful answers."""
    parts = urlsplit(gateway)
    conns = [await Connection(parts.hostname or "127.0.0.1", parts.port or 80).open() for _ in range(concurrency)]
    queue = list(reversed(requests))
    statuses: dict[int, int] = {}
    answers: list[bytes] = []

    async def worker(conn: Connection) -> None:
        while queue:
            target, body = queue.pop()
            status, data = await conn.request("POST", target, body)
            statuses[status] = statuses.get(status, 0) + 1
            if status < 300:
                answers.append(data)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        await c.close()
    return len(requests) / elapsed, statuses, answers


async def settle(stack: Stack, written: int, timeout: float = 300.0) -> float:
    """Wait until sync has written `written` bookings' events to the provider (so the next figure
    does not pay for the previous one's background work); the seconds it took."""
    db = await asyncpg.connect(stack.database_url)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            n = await db.fetchval("SELECT count(*) FROM sync.event_instances"
                                  " WHERE booking_id IS NOT NULL AND provider_event_id IS NOT NULL")
            if n >= written:
                break
            await asyncio.sleep(0.5)
    finally:
        await db.close()
    return time.monotonic() - t0


def book_requests(handle: str, starts: list[str]) -> list[tuple[str, bytes]]:
    target = f"/api/v1/booking-pages/{SLUG}/book?handle={handle}"
    return [(target, json.dumps({"start": s, "name": f"Visitor {n}", "email": f"visitor{n}@example.org"}).encode())
            for n, s in enumerate(starts)]


def hold_requests(handle: str, starts: list[str]) -> list[tuple[str, bytes]]:
    target = f"/api/v1/booking-pages/{SLUG}/holds?handle={handle}"
    return [(target, json.dumps({"start": s}).encode()) for s in starts]


def reschedule_requests(bookings: list[dict], starts: list[str]) -> list[tuple[str, bytes]]:
    """Each booking moved to its own new slot through its signed reschedule_url (path and query)."""
    out = []
    for booking, start in zip(bookings, starts):
        url = urlsplit(booking["reschedule_url"])
        out.append((f"{url.path}?{url.query}", json.dumps({"start": start}).encode()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=15_000)
    parser.add_argument("--count", type=int, default=600, help="slot requests to time")
    parser.add_argument("--bookings", type=int, default=1500)
    parser.add_argument("--holds", type=int, default=500)
    parser.add_argument("--reschedules", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix="calmesh-booking-bench-") as tmp:
        radicale = Radicale(Path(tmp) / "radicale")
        calendar = "bench"
        print(f"writing {args.events:,} events into Radicale's storage…", flush=True)
        radicale.root.mkdir(parents=True, exist_ok=True)
        fill_radicale(radicale, calendar, args.events)
        radicale.start()
        t0 = time.monotonic()
        # Radicale indexes a collection on first listing; do it now, not inside the connect request.
        warm = httpx.request("PROPFIND", radicale.calendar_url(calendar), auth=radicale.auth,
                             headers={"Depth": "1"}, timeout=900)
        print(f"Radicale indexed the calendar in {time.monotonic() - t0:.0f} s ({warm.status_code})", flush=True)
        stack = Stack(
            data_dir=Path(tmp) / "stack", http_port=free_port(), sync_workers=2, fixed_ports=False, quiet=True,
            restart=False,
            extra_env={"CALMESH_LOG_LEVEL": "warning", "CALMESH_PUBLIC_RATE_LIMIT_PER_MINUTE": "100000000",
                       "CALMESH_ALLOW_PRIVATE_NETWORKS": "1"},
        )
        print("starting the platform (embedded PostgreSQL and NATS, every service)…", flush=True)
        stack.start(timeout=180)
        try:
            handle, _ = asyncio.run(setup(stack, radicale, calendar, args.events))
            meter = CpuMeter(stack, radicale)
            before = meter.read()
            samples, offered = asyncio.run(slot_latency(stack.gateway_url, handle, args.count))
            meter.report(before, meter.read(), args.count + 50, "slot request")
            p50, p99 = statistics.median(samples), pct(samples, 0.99)
            print(f"slots, 30 days, calendar of {args.events:,} events ({offered} slots offered), "
                  f"{args.count} requests: p50 {p50:.1f} ms, p99 {p99:.1f} ms  (targets 15 / 40 ms)", flush=True)
            wanted = args.bookings + args.holds + args.reschedules
            free = asyncio.run(free_slots(stack.gateway_url, handle, wanted))
            n_book, n_hold = args.bookings, args.holds
            if len(free) < wanted:  # a dense calendar: each kind gets its share of the free slots
                n_book, n_hold = len(free) * args.bookings // wanted, len(free) * args.holds // wanted
                print(f"  {len(free)} free slots for {wanted} requests: {n_book} bookings, {n_hold} holds, "
                      f"{len(free) - n_book - n_hold} reschedules", flush=True)
            starts = free[:n_book]
            hold_starts = free[n_book:n_book + n_hold]
            moves = free[n_book + n_hold:]
            before = meter.read()
            rate, statuses, answers = asyncio.run(throughput(
                stack.gateway_url, book_requests(handle, starts), args.concurrency))
            meter.report(before, meter.read(), len(starts), "booking (while the run lasted; writes and mails go on after)")
            print(f"bookings of {len(starts)} distinct slots with {args.concurrency} clients: {rate:.0f} bookings/s, "
                  f"answers {dict(sorted(statuses.items()))}  (target 200/s)", flush=True)
            waited = asyncio.run(settle(stack, statuses.get(201, 0)))
            print(f"  (waited {waited:.0f} s for sync to write the bookings to Radicale before the next figure)", flush=True)
            before = meter.read()
            hold_rate, hold_statuses, _ = asyncio.run(throughput(
                stack.gateway_url, hold_requests(handle, hold_starts), args.concurrency))
            meter.report(before, meter.read(), len(hold_starts), "hold")
            print(f"holds of {len(hold_starts)} other distinct slots with {args.concurrency} clients: "
                  f"{hold_rate:.0f} holds/s, answers {dict(sorted(hold_statuses.items()))}", flush=True)
            booked = [json.loads(a) for a in answers][:len(moves)]
            before = meter.read()
            move_rate, move_statuses, _ = asyncio.run(throughput(
                stack.gateway_url, reschedule_requests(booked, moves), args.concurrency))
            meter.report(before, meter.read(), len(booked), "reschedule (while the run lasted; moves and mails go on after)")
            print(f"reschedules of {len(booked)} bookings to other distinct slots with {args.concurrency} clients: "
                  f"{move_rate:.0f} reschedules/s, answers {dict(sorted(move_statuses.items()))}", flush=True)
            print(f"per second, same stack, same run: {rate:.0f} bookings, {hold_rate:.0f} holds, "
                  f"{move_rate:.0f} reschedules", flush=True)
        finally:
            stack.stop()
            radicale.stop()
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    size = f"{args.events:,} events"
    want = 250 if args.events <= 1000 else 200  # the cost of a booking must not grow with the calendar
    ok = record(BENCH, f"slots p50 ({size})", "<= 15 ms", f"{p50:.1f} ms", p50 <= 15)
    ok &= record(BENCH, f"slots p99 ({size})", "<= 40 ms", f"{p99:.1f} ms", p99 <= 40)
    ok &= record(BENCH, f"bookings/s, 32 clients ({size})", f">= {want}", f"{rate:.0f}", rate >= want)
    ok &= record(BENCH, "answers (bookings, holds, reschedules)", "201, 201, 200",
                 f"{sorted(statuses)}, {sorted(hold_statuses)}, {sorted(move_statuses)}",
                 set(statuses) == {201} and set(hold_statuses) == {201} and set(move_statuses) == {200})
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
