"""`calmesh-up --demo` (`make demo`): a first run that needs nothing else.

One real `calmesh-up --demo` process on free ports: within a minute of the gateway answering it
prints a sign-in, an API key and curl lines, and through the public API with that key the demo
calendar holds events of both its sources (the loopback iCal feed and the Radicale calendar), a
conflict, busy time, and its booking page offers slots; a feed pointed at another loopback port is
still refused. SIGTERM stops everything it started, its
Radicale too. A second run on the same data directory reuses the demo user, revokes the first key and
makes the demo calendars again.

The guarded client lets exactly the demo servers' address:port pairs through
(`CALMESH_ALLOW_PRIVATE_ENDPOINTS`), no other loopback port, and no redirect from one of them to
another loopback port.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from calmesh_common.devstack.embedded import free_port
from calmesh_common.guarded import FetchError, GuardedClient
from calmesh_common.settings import Settings, SettingsError
from calmesh_testing.calmesh_up import using
from calmesh_testing.servers import serve

CALMESH_UP = Path(sys.executable).parent / "calmesh-up"
#: The stack's own start on a busy 2-core machine; the demo's part is held to a minute below.
START_TIMEOUT = 240
KEY = re.compile(r"API key\s+(cm_live_[A-Za-z0-9_-]+)")


class DemoRun:
    """One `calmesh-up --demo` on a data directory and a port, its output in a log file."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = data_dir.parent / f"demo-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> tuple[str, float]:
        """Start it; returns the printed key and the seconds from a healthy gateway to the key."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CALMESH_", "DATABASE_URL", "NATS_URL"))}
        env.update(
            CALMESH_DATA_DIR=str(self.data_dir), CALMESH_HTTP_PORT=str(self.port), CALMESH_SYNC_WORKERS="1",
            # A small pool, as the stack tests use: the sync worker runs no more jobs than it can carry
            # (two jobs and the outbox relay once each held a connection of 3 and waited for ever).
            CALMESH_DB_POOL_MAX="3",
            CALMESH_START_TIMEOUT_SECONDS=str(START_TIMEOUT), CALMESH_LOG_LEVEL="warning",
            CALMESH_DEMO_TIMEZONE="Europe/Amsterdam",
        )
        self.log.write_bytes(b"")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([str(CALMESH_UP), "--demo"], env=env, stdout=log, stderr=subprocess.STDOUT)
        healthy_at = None
        deadline = time.monotonic() + START_TIMEOUT + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"calmesh-up --demo exited with {self.process.returncode}:\n{self.tail()}"
            if healthy_at is None:
                try:
                    if httpx.get(f"{self.base}/api/health", timeout=2).status_code == 200:
                        healthy_at = time.monotonic()
                except httpx.HTTPError:
                    pass
            found = KEY.search(self.text())
            if found:
                return found.group(1), time.monotonic() - (healthy_at or time.monotonic())
            time.sleep(0.25)
        raise AssertionError(f"no demo key printed:\n{self.tail()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self) -> str:
        return self.text()[-4000:]

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="demotest-") as tmp:
        path = Path(tmp) / "data"
        try:
            yield path
        finally:
            for leftover in using(path):
                leftover.kill()


def check_the_demo(run: DemoRun, key: str) -> None:
    text = run.text()
    curls = re.findall(r'curl "([^"]+)" -H "Authorization: Bearer (cm_live_[^"]+)"', text[text.rindex("The demo is ready"):])
    assert len(curls) == 3 and {k for _, k in curls} == {key}, text[-2000:]
    events_url, availability_url, conflicts_url = (url for url, _ in curls)
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=30, headers=auth) as api:
        calendar = api.get(f"{run.base}/api/v1/calendars/demo")
        assert calendar.status_code == 200, calendar.text
        sources = {s["id"]: s["connection_id"] for s in calendar.json()["sources"]}
        connections = {c["id"]: c for c in api.get(f"{run.base}/api/v1/connections").json()["data"]}
        assert sorted(connections[c]["provider"] for c in sources.values()) == ["caldav", "ical"]
        # Both have synced and neither is in error (one may be "syncing" again: a scheduled sync).
        states = {c: (connections[c]["status"], connections[c]["last_synced_at"]) for c in sources.values()}
        assert all(status in ("active", "syncing") and synced for status, synced in states.values()), states

        # The three printed curl lines, as printed.
        events = api.get(events_url)
        assert events.status_code == 200, events.text
        assert events.json()["data"] and events.json()["complete"] is True
        assert {e["source_id"] for e in events.json()["data"]} == set(sources), "events of both sources"
        titles = {e["title"] for e in events.json()["data"]}
        assert {"Team stand-up", "Design review", "Customer call"} <= titles

        availability = api.get(availability_url)
        assert availability.status_code == 200, availability.text
        assert availability.json()["busy"], availability.text

        conflicts = api.get(conflicts_url)
        assert conflicts.status_code == 200, conflicts.text
        pairs = conflicts.json()["data"]
        assert pairs, conflicts.text
        assert {pairs[0]["events"][0]["source_id"], pairs[0]["events"][1]["source_id"]} == set(sources)

    # The booking page, public: slots in the coming week, none inside a demo event.
    page = re.search(r"booking\s+(\S+)", text[text.rindex("The demo is ready"):]).group(1)
    assert page.endswith("/demo-call")
    today = time.strftime("%Y-%m-%d")
    end = time.strftime("%Y-%m-%d", time.localtime(time.time() + 7 * 86400))
    slots = httpx.get(f"{run.base}/api/v1/booking-pages/demo-call/slots",
                      params={"handle": "demo", "start": today, "end": end}, timeout=30)
    assert slots.status_code == 200, slots.text
    assert slots.json()["slots"], slots.text


def refused_inside_the_demo(run: DemoRun, key: str) -> None:
    """Even in demo mode a user's URL reaches no other loopback port: a feed pointed at the gateway
    itself ends in `error`, refused as a loopback address."""
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=f"{run.base}/api/v1", timeout=30, headers=auth) as api:
        made = api.post("/connections/ical", json={"url": f"{run.base}/api/health"})
        assert made.status_code == 201, made.text
        deadline = time.monotonic() + 60
        while (c := api.get(f"/connections/{made.json()['id']}").json())["status"] in ("pending", "syncing"):
            assert time.monotonic() < deadline, c
            time.sleep(0.5)
        assert c["status"] == "error" and "loopback" in (c["last_error"] or ""), c
        assert api.delete(f"/connections/{made.json()['id']}").status_code == 204


@pytest.mark.timeout(2 * (START_TIMEOUT + 150))
def test_make_demo_gives_merged_events_a_conflict_and_slots_then_stops_cleanly(data_dir: Path) -> None:
    run = DemoRun(data_dir, free_port())
    try:
        key, seconds = run.start()
        print(f"demo ready {seconds:.1f} s after the gateway answered")
        assert seconds < 60, f"the demo took {seconds:.0f} s after the stack was healthy"
        assert "(a new demo user)" in run.text()
        assert run.text().index("/app") < run.text().index("API key"), "the dashboard's address comes first"
        check_the_demo(run, key)
        refused_inside_the_demo(run, key)
        radicale = [p for p in using(data_dir) if "radicale" in " ".join(p.cmdline())]
        assert len(radicale) == 1, "Radicale runs as a child of calmesh-up"
        assert radicale[0].ppid() == run.process.pid
        assert run.stop() == 0
        assert not using(data_dir), [p.cmdline() for p in using(data_dir)]

        # A second `make demo` on the same data directory: the same user, a new key, the demo made again.
        again = DemoRun(data_dir, free_port())
        try:
            new_key, _ = again.start()
            assert "the demo user of this data directory" in again.text()
            assert new_key != key
            assert httpx.get(f"{again.base}/api/v1/me", headers={"Authorization": f"Bearer {key}"}).status_code == 401
            check_the_demo(again, new_key)
            connections = httpx.get(f"{again.base}/api/v1/connections", headers={"Authorization": f"Bearer {new_key}"}).json()
            assert len(connections["data"]) == 2, "the first run's demo connections were removed"
            assert again.stop() == 0
        finally:
            if again.process is not None and again.process.poll() is None:
                again.process.kill()
        assert not using(data_dir)
    finally:
        if run.process is not None and run.process.poll() is None:
            run.process.kill()


# --- the narrow opening in the guarded client -------------------------------------------------

class _Answer:
    """A loopback server: / answers a feed, /away redirects to another loopback port."""

    def __init__(self, other: int) -> None:
        self.other = other

    async def __call__(self, scope, receive, send) -> None:  # ASGI
        if scope["type"] != "http":
            return
        if scope["path"] == "/away":
            await send({"type": "http.response.start", "status": 302,
                        "headers": [(b"location", f"http://127.0.0.1:{self.other}/".encode())]})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/calendar")]})
        await send({"type": "http.response.body", "body": b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"})


async def test_only_the_named_loopback_endpoints_pass_the_guard() -> None:
    async with serve(_Answer(other=1), lifespan="off") as allowed_base, serve(_Answer(other=1), lifespan="off") as other_base:
        allowed = int(allowed_base.rsplit(":", 1)[1])
        other = int(other_base.rsplit(":", 1)[1])
        client = GuardedClient(allowed_endpoints={("127.0.0.1", allowed)}, timeout=10)
        try:
            assert (await client.fetch(f"{allowed_base}/team.ics")).status == 200
            with pytest.raises(FetchError, match="loopback"):
                await client.fetch(f"{other_base}/team.ics")
        finally:
            await client.aclose()
        # A redirect from the allowed endpoint to another loopback port is checked like any hop.
        async with serve(_Answer(other=other), lifespan="off") as redirecting_base:
            port = int(redirecting_base.rsplit(":", 1)[1])
            client = GuardedClient(allowed_endpoints={("127.0.0.1", port)}, timeout=10)
            try:
                with pytest.raises(FetchError, match="loopback"):
                    await client.fetch(f"{redirecting_base}/away")
            finally:
                await client.aclose()


def test_the_endpoint_setting_is_checked_and_off_by_default() -> None:
    assert Settings.from_env({}).allow_private_endpoints == ()
    parsed = Settings.from_env({"CALMESH_ALLOW_PRIVATE_ENDPOINTS": "127.0.0.1:5232, [::1]:8000"})
    assert parsed.allow_private_endpoints == (("127.0.0.1", 5232), ("::1", 8000))
    for bad in ("localhost:5232", "127.0.0.1", "127.0.0.1:0", "10.0.0.0/8:80"):
        with pytest.raises(SettingsError, match="CALMESH_ALLOW_PRIVATE_ENDPOINTS"):
            Settings.from_env({"CALMESH_ALLOW_PRIVATE_ENDPOINTS": bad})


# --- the sample calendars ----------------------------------------------------------------------

@pytest.mark.parametrize("today", ["2026-11-30", "2026-12-06", "2027-03-28"])  # a Monday, a Sunday, a DST change
def test_every_day_of_this_week_has_a_clash_between_the_two_sample_calendars(today: str) -> None:
    from datetime import date

    import icalendar

    from calmesh_common.devstack.demo import caldav_objects, feed_ics, week_of

    day = date.fromisoformat(today)
    feed = [e for e in icalendar.Calendar.from_ical(feed_ics("Europe/Amsterdam", day)).walk("VEVENT")]
    dav = [e for ics in caldav_objects("Europe/Amsterdam", day).values()
           for e in icalendar.Calendar.from_ical(ics).walk("VEVENT")]
    for d in week_of(day):
        ours = [(e["DTSTART"].dt, e["DTEND"].dt) for e in feed if e["DTSTART"].dt.date() == d]
        theirs = [(e["DTSTART"].dt, e["DTEND"].dt) for e in dav if e["DTSTART"].dt.date() == d]
        assert any(a < y and b > x for a, b in ours for x, y in theirs), f"no clash on {d}"
        assert all(str(s.tzinfo) == "Europe/Amsterdam" for s, _ in ours + theirs)
    assert day in week_of(day)
