"""The fault suite (issue 12, item 4): the whole platform as real processes under `calmesh-up`, a
real CalDAV server (Radicale) and a webhook receiver, under a steady stream of bookings, while every
service process is SIGKILLed in turn at seeded moments and nats-server and PostgreSQL are killed
(and restarted by the supervisor). Afterwards:

- every booking that was acknowledged (201) is confirmed and has exactly one event on Radicale
  (its UID derives from the booking id), written: `calendar_write: "written"`;
- no Radicale event lacks a booking;
- every `booking.created` was delivered to the webhook receiver, each under one `webhook-id`
  (a delivery may repeat, always with the same id).

Visitors retry with the same Idempotency-Key while the platform answers 502/503/504 or drops the
connection, as a client following `Retry-After` would. Bounded: a few minutes, seeded.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psutil
import pytest

from calmesh_common.devstack.embedded import free_port
from calmesh_testing.booking import sign_up_with_caldav
from calmesh_testing.calmesh_up import CalmeshUp, alive, using
from calmesh_testing.radicale import Radicale
from calmesh_testing.receiver import Receiver
from calmesh_testing.servers import serve

pytestmark = pytest.mark.timeout(480)

SEED = 12
AMS = ZoneInfo("Europe/Amsterdam")
ALL_WEEK = {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
SERVICES = ("gateway", "connections", "availability", "booking", "billing", "webhooks", "sync")


@pytest.fixture(scope="module")
def radicale() -> Iterator[Radicale]:
    with tempfile.TemporaryDirectory(prefix="faults-radicale-") as tmp:
        server = Radicale(Path(tmp)).start()
        yield server
        server.stop()


@pytest.fixture
def platform() -> Iterator[CalmeshUp]:
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        p = CalmeshUp(Path(tmp) / "data", free_port())
        try:
            yield p
        finally:
            if p.process is not None and p.process.poll() is None:
                p.process.terminate()
                try:
                    p.process.wait(60)
                except Exception:  # noqa: BLE001
                    p.process.kill()
            for leftover in using(p.data_dir):
                leftover.kill()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    r = Receiver()
    async with serve(r) as url:
        yield r, url


def victim(platform: CalmeshUp, name: str) -> psutil.Process | None:
    """The running process of `name` (a service, nats-server or the postmaster) of this stack."""
    assert platform.process is not None
    for p in psutil.Process(platform.process.pid).children():
        try:
            cmd = " ".join(p.cmdline())
        except psutil.NoSuchProcess:
            continue
        if not alive(p):
            continue
        if name in ("nats-server", "postgres") and p.name() == name:
            return p
        if f"calmesh-{name}" in cmd:
            return p
    return None


def supervisor_lines(platform: CalmeshUp) -> str:
    """What calmesh-up itself said (exits and restarts), and each service's last lines."""
    text = platform.log.read_text(errors="replace") if platform.log.exists() else ""
    ours = [line for line in text.splitlines() if "calmesh " in line[:30] or "Traceback" in line or "Error" in line[:200]]
    return "\n".join(ours[-80:])


def slots(count: int) -> list[str]:
    """`count` distinct half-hour slots, days ahead, 09:00–17:00 in Amsterdam."""
    out = []
    day = datetime.now(AMS).date() + timedelta(days=3)
    while len(out) < count:
        for half in range(16):
            start = datetime(day.year, day.month, day.day, 9, tzinfo=AMS) + timedelta(minutes=30 * half)
            out.append(start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        day += timedelta(days=1)
    return out[:count]


async def book(gw: httpx.AsyncClient, handle: str, start: str, key: str, stop_at: float) -> tuple[int, dict[str, Any]]:
    """Book with one Idempotency-Key, retrying through outages; (status, body) of the last answer."""
    last: tuple[int, dict[str, Any]] = (0, {})
    while time.monotonic() < stop_at:
        try:
            r = await gw.post("/api/v1/booking-pages/intro/book", params={"handle": handle},
                              json={"start": start, "name": "Fault Tester", "email": "faults@example.org"},
                              headers={"Idempotency-Key": key}, timeout=35)
        except httpx.HTTPError:
            await asyncio.sleep(0.5)
            continue
        last = (r.status_code, r.json() if r.content else {})
        if r.status_code in (201, 409, 422):
            return last
        assert r.status_code in (429, 502, 503, 504), r.text  # never a 500 or a stack trace
        if r.status_code in (502, 503, 504):
            assert r.headers.get("retry-after"), r.headers
        await asyncio.sleep(0.5)
    return last


async def test_every_acknowledged_booking_survives_every_process_being_killed(
        platform: CalmeshUp, radicale: Radicale, receiver: tuple[Receiver, str]) -> None:
    rng = random.Random(SEED)
    rec, url = receiver
    platform.extra_env = {"CALMESH_ALLOW_PRIVATE_NETWORKS": "1"}  # Radicale and the receiver are on loopback
    platform.start()
    owner = await sign_up_with_caldav(platform_url := f"http://127.0.0.1:{platform.port}", radicale)
    async with httpx.AsyncClient(base_url=platform_url, timeout=35) as gw:
        hook = await gw.post("/api/v1/webhooks", headers=owner.auth,
                             json={"url": f"{url}/hooks", "event_types": ["booking.created"]})
        assert hook.status_code == 201, hook.text
        page = await gw.post("/api/v1/booking-pages", headers=owner.auth, json={
            "slug": "intro", "calendar_slug": "work", "title": "Faults", "duration_minutes": 30,
            "timezone": "Europe/Amsterdam", "weekly_hours": ALL_WEEK})
        assert page.status_code == 201, page.text

        plan = [*SERVICES, "nats-server", "postgres"]
        rng.shuffle(plan)
        wanted = slots(40)
        acknowledged: dict[str, str] = {}
        killed: list[str] = []
        stop_at = time.monotonic() + 150

        async def visitors() -> None:
            for n, start in enumerate(wanted):
                status, body = await book(gw, owner.handle, start, f"fault-{SEED}-{n}", stop_at)
                if status == 201:
                    acknowledged[body["id"]] = start
                await asyncio.sleep(rng.uniform(0.05, 0.3))

        async def killer() -> None:
            for name in plan:
                await asyncio.sleep(rng.uniform(2.0, 5.0))
                process = await asyncio.to_thread(victim, platform, name)
                if process is None:
                    continue
                process.kill()
                killed.append(name)

        await asyncio.gather(visitors(), killer())
        assert sorted(killed) == sorted(plan), killed
        assert len(acknowledged) >= len(wanted) * 0.8, (len(acknowledged), platform.tail())

        # Everything acknowledged reaches the provider, once.
        async def settled() -> dict[str, Any]:
            # One list request a second (a GET per booking would meet the per-key rate limit).
            try:
                r = await gw.get("/api/v1/bookings", headers=owner.auth, params={"limit": 200})
            except httpx.HTTPError as exc:
                last_error[0] = repr(exc)
                return {}
            if r.status_code != 200:
                last_error[0] = f"{r.status_code} {r.text[:300]}"
                return {}
            listed = {b["id"]: b for b in r.json()["data"]}
            if not set(acknowledged) <= set(listed):
                last_error[0] = f"missing: {sorted(set(acknowledged) - set(listed))}"
                return {}
            return {b: listed[b] for b in acknowledged}

        last_error = [""]

        deadline = time.monotonic() + 120
        while True:
            docs = await settled()
            if docs and all(d["calendar_write"] == "written" for d in docs.values()):
                break
            if time.monotonic() > deadline:
                Path("/tmp/faults-last-failure.txt").write_text(
                    f"{last_error[0]}\n{ {k: d.get('calendar_write') for k, d in docs.items()} }\n"
                    f"{supervisor_lines(platform)}\n---\n{platform.tail()}")
                raise AssertionError(f"not settled: {last_error[0]} (see /tmp/faults-last-failure.txt)")
            await asyncio.sleep(1.0)
        assert all(d["status"] == "confirmed" for d in docs.values())

        uids: dict[str, int] = defaultdict(int)
        for text in radicale.event_files(owner.calendar):
            for line in text.replace("\r\n ", "").splitlines():
                if line.startswith("UID:"):
                    uids[line[4:].strip()] += 1
        existing = {b["id"] for b in (await gw.get("/api/v1/bookings", headers=owner.auth,
                                                   params={"limit": 200})).json()["data"]}
        for booking_id in acknowledged:
            assert uids.get(f"{booking_id}@calmesh.xyz") == 1, booking_id
        strays = [u for u in uids if u.split("@", 1)[0] not in existing]
        assert strays == [], strays  # no provider event without a booking

        # Every booking.created reached the receiver, under one webhook-id each.
        async def all_delivered() -> bool:
            seen = {body["data"]["id"] for _, body in rec.deliveries if body["type"] == "booking.created"}
            return set(acknowledged) <= seen

        deadline = time.monotonic() + 90
        while not await all_delivered():
            assert time.monotonic() < deadline, "not every booking.created was delivered"
            await asyncio.sleep(0.5)
        ids_by_booking: dict[str, set[str]] = defaultdict(set)
        for webhook_id, body in rec.deliveries:
            if body["type"] == "booking.created":
                ids_by_booking[body["data"]["id"]].add(webhook_id)
        assert all(len(ids_by_booking[b]) == 1 for b in acknowledged), ids_by_booking
