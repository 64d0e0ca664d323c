"""`calmesh-up --demo`: the platform plus something to look at, with nothing else to install.

Besides the stack of `calmesh-up`, the demo runs two calendar servers on loopback — an iCal feed
served from inside calmesh-up (`team.ics`) and a CalDAV calendar (Radicale, a supervised child with
its data under ``<data dir>/demo/radicale``) — both holding this week's events, generated for today
in the demo user's time zone, so that they overlap (a conflict every day). Once the stack is
healthy it signs up (or signs in) the demo user, makes an API key, connects both calendars through
the public API, merges them into the unified calendar ``demo`` and opens the booking page
``demo-call`` on it; then it prints the sign-in, the key and three curl lines.

Only these two servers' address:port pairs are let past the guarded client's private-address rule
(``CALMESH_ALLOW_PRIVATE_ENDPOINTS``); every other loopback or private address stays refused.

A rerun on the same data directory reuses the demo user (its password is kept in
``<data dir>/demo/account.env``, 0600) and makes its demo things again: the previous demo key is
revoked and a new one printed; the previous demo connections, calendar and booking page are removed
and made anew against this run's servers and this week's events.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, time as dtime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from calmesh_common.timefmt import rfc3339

if TYPE_CHECKING:
    from icalendar import Calendar

    from .supervisor import Stack

DEMO_EMAIL = "demo@example.com"
DEMO_HANDLE = "demo"
CALENDAR_SLUG = "demo"
PAGE_SLUG = "demo-call"
KEY_NAME = "demo"
RADICALE_USER = "demo"
RADICALE_CALENDAR = "work"
FEED_PATH = "/team.ics"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class DemoError(RuntimeError):
    """The demo could not be set up; the message says what failed."""


class DemoCancelled(DemoError):
    """calmesh-up was asked to stop while the demo was being set up."""


def demo_timezone(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The demo user's time zone: ``CALMESH_DEMO_TIMEZONE``, else this machine's (``TZ``,
    ``/etc/localtime``), else UTC."""
    candidates = [env.get("CALMESH_DEMO_TIMEZONE", ""), env.get("TZ", "").lstrip(":")]
    try:
        link = os.readlink("/etc/localtime")
        candidates.append(link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else "")
    except OSError:
        pass
    for name in candidates:
        if not name:
            continue
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            if name == env.get("CALMESH_DEMO_TIMEZONE"):
                raise DemoError(f"CALMESH_DEMO_TIMEZONE={name!r} is not an IANA time zone name") from None
            continue
        return name
    return "UTC"


def week_of(today: date) -> list[date]:
    """Monday to Sunday of the week that holds `today`."""
    monday = today - timedelta(days=today.weekday())
    return [monday + timedelta(days=i) for i in range(7)]


def week_range(tz: str, today: date) -> tuple[str, str]:
    """This week (Monday 00:00 to the next Monday 00:00 in `tz`) as RFC 3339 UTC instants."""
    zone = ZoneInfo(tz)
    monday = week_of(today)[0]
    start = datetime.combine(monday, dtime(0), zone).astimezone(UTC)
    end = datetime.combine(monday + timedelta(days=7), dtime(0), zone).astimezone(UTC)
    return rfc3339(start), rfc3339(end)


def _event(uid: str, summary: str, day: date, start: str, end: str, zone: ZoneInfo, location: str = "") -> Any:
    from icalendar import Event

    event = Event()
    event.add("uid", uid)
    event.add("summary", summary)
    # A stable stamp: the feed is made per request, and an unchanged week must read unchanged.
    event.add("dtstamp", datetime.combine(week_of(day)[0], dtime(0), UTC))
    event.add("dtstart", datetime.combine(day, dtime.fromisoformat(start), zone))
    event.add("dtend", datetime.combine(day, dtime.fromisoformat(end), zone))
    if location:
        event.add("location", location)
    return event


def _calendar(name: str, events: list[Any]) -> Calendar:
    from icalendar import Calendar

    cal = Calendar()
    cal.add("prodid", "-//CalMesh//demo//EN")
    cal.add("version", "2.0")
    cal.add("x-wr-calname", name)
    for event in events:
        cal.add_component(event)
    cal.add_missing_timezones()
    return cal


def feed_ics(tz: str, today: date) -> bytes:
    """The iCal feed: a stand-up every morning and a design review every afternoon of this week."""
    zone = ZoneInfo(tz)
    events = []
    for day in week_of(today):
        events.append(_event(f"standup-{day}@demo.calmesh", "Team stand-up", day, "09:30", "10:00", zone))
        events.append(_event(f"review-{day}@demo.calmesh", "Design review", day, "14:00", "15:00", zone, "Room 2"))
    ics: bytes = _calendar("Team (demo feed)", events).to_ical()  # icalendar leaves to_ical unannotated
    return ics


def caldav_objects(tz: str, today: date) -> dict[str, bytes]:
    """The CalDAV calendar, one object per event: a customer call every afternoon of this week
    that overlaps the feed's design review (14:30–15:00), and two 1:1s."""
    zone = ZoneInfo(tz)
    objects: dict[str, bytes] = {}
    for day in week_of(today):
        uid = f"call-{day}@demo.calmesh"
        objects[f"{uid}.ics"] = _calendar("Work", [_event(uid, "Customer call", day, "14:30", "15:30", zone)]).to_ical()
        if day.weekday() in (1, 3):
            uid = f"one-on-one-{day}@demo.calmesh"
            objects[f"{uid}.ics"] = _calendar("Work", [_event(uid, "1:1 with Sam", day, "11:00", "11:30", zone)]).to_ical()
    return objects


class _FeedHandler(BaseHTTPRequestHandler):
    server: _FeedServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] != FEED_PATH:
            self.send_error(404)
            return
        body = self.server.body()
        self.send_response(200)
        self.send_header("Content-Type", "text/calendar; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # the sync workers log their fetches


class _FeedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, tz: str) -> None:
        super().__init__(("127.0.0.1", port), _FeedHandler)
        self.tz = tz

    def body(self) -> bytes:
        # Made per request: a demo left running into next week still shows that week.
        return feed_ics(self.tz, datetime.now(ZoneInfo(self.tz)).date())


@dataclass
class DemoResult:
    base_url: str
    email: str
    password: str
    user: str  # "created" or "reused"
    key: str
    timezone: str
    feed_url: str
    caldav_url: str
    public_url: str
    start: str
    end: str
    today: str

    def curl_lines(self) -> list[str]:
        api = f"{self.base_url}/api/v1/calendars/{CALENDAR_SLUG}"
        auth = f'-H "Authorization: Bearer {self.key}"'
        return [
            f'curl "{api}/events?start={self.start}&end={self.end}" {auth}',
            f'curl "{api}/availability?date={self.today}&explain=true" {auth}',
            f'curl "{api}/conflicts?start={self.start}&end={self.end}" {auth}',
        ]

    def banner(self) -> str:
        user = "a new demo user" if self.user == "created" else "the demo user of this data directory, its demo calendars made again"
        lines = "\n".join(f"    {line}" for line in self.curl_lines())
        return f"""
  The demo is ready ({user}):
    sign in   {self.base_url}/app/login   {self.email} / {self.password}
    API key   {self.key}
              (shown once; the next `make demo` revokes it and prints a new one)
    calendar  {self.base_url}/app/calendars/{CALENDAR_SLUG}   this week in {self.timezone}, merged from
              the iCal feed {self.feed_url} and the CalDAV calendar {self.caldav_url}
    booking   {self.public_url}

  Try it:
{lines}
"""


class Demo:
    """The demo's servers and its seeding. `prepare(stack)` before `stack.start()`, `seed()` after."""

    def __init__(self, data_dir: Path, timezone: str | None = None) -> None:
        self.dir = data_dir / "demo"
        self.timezone = timezone or demo_timezone()
        self.feed: _FeedServer | None = None
        self.feed_port = 0
        self.radicale_port = 0
        self.radicale_password = secrets.token_urlsafe(16)

    @property
    def feed_url(self) -> str:
        return f"http://127.0.0.1:{self.feed_port}{FEED_PATH}"

    @property
    def radicale_url(self) -> str:
        return f"http://127.0.0.1:{self.radicale_port}"

    def prepare(self, stack: Stack) -> None:
        """Start the feed server and Radicale (a supervised child of `stack`) on free ports that
        the stack will not take, and let exactly these two through the guarded client."""
        try:
            import icalendar  # noqa: F401
            import radicale  # noqa: F401
        except ImportError as exc:
            raise DemoError(f"the demo needs icalendar and radicale ({exc}); run `make install`") from None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.feed_port = stack.free_port()
        self.radicale_port = stack.free_port()
        allowed = ",".join(f"127.0.0.1:{p}" for p in (self.feed_port, self.radicale_port))
        stack.extra_env["CALMESH_ALLOW_PRIVATE_ENDPOINTS"] = allowed

        self.feed = _FeedServer(self.feed_port, self.timezone)
        threading.Thread(target=self.feed.serve_forever, name="demo-feed", daemon=True).start()

        # Radicale's storage is made afresh each run: its events are this week's.
        folder = self.dir / "radicale"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        users = folder / "users"
        users.write_text(f"{RADICALE_USER}:{self.radicale_password}\n")
        users.chmod(0o600)
        argv = [
            sys.executable, "-m", "radicale",
            f"--server-hosts=127.0.0.1:{self.radicale_port}",
            "--auth-type=htpasswd",
            f"--auth-htpasswd-filename={users}",
            "--auth-htpasswd-encryption=plain",
            f"--storage-filesystem-folder={folder / 'collections'}",
            "--logging-level=warning",
        ]
        stack.run_alongside("radicale", argv)

    def stop(self) -> None:
        if self.feed is not None:
            self.feed.shutdown()
            self.feed.server_close()

    # --- seeding, through the public API ------------------------------------------------------

    def _fill_radicale(self, today: date, timeout: float) -> str:
        auth = (RADICALE_USER, self.radicale_password)
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.radicale_url, auth=auth, timeout=10) as dav:
            while True:
                try:
                    dav.get("/.web/")
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise DemoError(f"Radicale did not answer on {self.radicale_url}") from None
                    time.sleep(0.2)
            path = f"/{RADICALE_USER}/{RADICALE_CALENDAR}/"
            body = (
                '<?xml version="1.0" encoding="utf-8"?><C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
                "<D:set><D:prop><D:displayname>Work (demo CalDAV)</D:displayname></D:prop></D:set></C:mkcalendar>"
            )
            r = dav.request("MKCALENDAR", path, content=body)
            if r.status_code not in (201, 405):
                raise DemoError(f"Radicale refused to make the demo calendar: {r.status_code} {r.text[:200]}")
            for name, ics in caldav_objects(self.timezone, today).items():
                r = dav.put(path + name, content=ics, headers={"Content-Type": "text/calendar"})
                if r.status_code not in (201, 204):
                    raise DemoError(f"Radicale refused a demo event: {r.status_code} {r.text[:200]}")
        return self.radicale_url + path

    def _account(self) -> tuple[str, str]:
        """The demo user's email and password, kept in the data directory across runs."""
        path = self.dir / "account.env"
        if path.exists():
            stored = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
            if stored.get("email") and stored.get("password"):
                return stored["email"], stored["password"]
        password = secrets.token_urlsafe(12)
        path.write_text(f"# the demo user of calmesh-up --demo\nemail={DEMO_EMAIL}\npassword={password}\n")
        path.chmod(0o600)
        return DEMO_EMAIL, password

    def _state(self) -> dict[str, Any]:
        path = self.dir / "state.json"
        try:
            state: dict[str, Any] = json.loads(path.read_text())
            return state
        except (OSError, ValueError):
            return {}

    def seed(self, base_url: str, timeout: float = 90.0, stopping: threading.Event | None = None) -> DemoResult:
        """Make the demo user, key, connections, calendar and booking page; returns once the
        calendar's events come from both sources (or raises DemoError after `timeout` s, and
        DemoCancelled as soon as `stopping` is set)."""
        deadline = time.monotonic() + timeout
        email, password = self._account()
        with httpx.Client(base_url=base_url + "/api/v1", timeout=30) as session:
            r = session.post("/auth/signup", json={"email": email, "password": password, "handle": DEMO_HANDLE,
                                                   "name": "Demo", "timezone": self.timezone})
            user = "created"
            if r.status_code == 409:
                user = "reused"
                r = session.post("/auth/login", json={"email": email, "password": password})
            if r.status_code not in (200, 201):
                raise DemoError(f"could not sign up or sign in {email}: {r.status_code} {r.text[:300]} "
                                f"(its password is in {self.dir / 'account.env'})")
            csrf = {"X-CSRF-Token": session.cookies.get("calmesh_csrf") or ""}
            if user == "reused":
                # The events are made in the demo user's time zone, whatever it was changed to.
                self.timezone = r.json().get("timezone") or self.timezone
                for old in _data(_ok(session.get("/api-keys"), "list the API keys")):
                    if old.get("name") == KEY_NAME:
                        session.delete(f"/api-keys/{old['id']}", headers=csrf)
            key = _ok(session.post("/api-keys", json={"name": KEY_NAME, "scope": "full"}, headers=csrf), "create the API key")["key"]
        if self.feed is not None:
            self.feed.tz = self.timezone
        today = datetime.now(ZoneInfo(self.timezone)).date()
        caldav_url = self._fill_radicale(today, max(5.0, deadline - time.monotonic()))
        with httpx.Client(base_url=base_url + "/api/v1", timeout=30, headers={"Authorization": f"Bearer {key}"}) as api:
            # What a previous run made goes first (its servers had other ports, its events another week).
            api.delete(f"/booking-pages/{PAGE_SLUG}")
            api.delete(f"/calendars/{CALENDAR_SLUG}")
            for connection_id in self._state().get("connections", []):
                api.delete(f"/connections/{connection_id}")
            caldav = _ok(api.post("/connections/caldav", json={"url": self.radicale_url, "username": RADICALE_USER,
                                                                "password": self.radicale_password}), "connect the CalDAV calendar")
            feed = _ok(api.post("/connections/ical", json={"url": self.feed_url}), "connect the iCal feed")
            (self.dir / "state.json").write_text(json.dumps({"connections": [caldav["id"], feed["id"]]}))
            calendar = _ok(api.post("/calendars", json={
                "slug": CALENDAR_SLUG, "name": "Demo week", "timezone": self.timezone,
                "sources": [{"connection_id": caldav["id"]}, {"connection_id": feed["id"]}],
            }), "create the unified calendar")
            page = _ok(api.post("/booking-pages", json={
                "slug": PAGE_SLUG, "calendar_slug": CALENDAR_SLUG, "title": "A 30-minute call", "duration_minutes": 30,
                "timezone": self.timezone, "weekly_hours": {day: [["09:00", "17:00"]] for day in WEEKDAYS},
                "description": "The demo booking page: its slots avoid every event of the demo calendar.",
            }), "create the booking page")
            start, end = week_range(self.timezone, today)
            wanted = {s["id"] for s in calendar["sources"]}
            seen: set[str] = set()
            while True:
                r = api.get(f"/calendars/{CALENDAR_SLUG}/events", params={"start": start, "end": end})
                if r.status_code == 200:
                    body = r.json()
                    seen = {e["source_id"] for e in body["data"]}
                    if seen >= wanted and body.get("complete"):
                        break
                if stopping is not None and stopping.is_set():
                    raise DemoCancelled("stopped while the demo was being set up")
                if time.monotonic() > deadline:
                    states = [(c["provider"], c["status"], c.get("last_error")) for c in _data(api.get("/connections").json())]
                    raise DemoError(f"the demo calendar did not show events of both sources within {timeout:.0f} s "
                                    f"(sources with events: {len(seen)} of {len(wanted)}; connections: {states})")
                time.sleep(0.5)
        return DemoResult(
            base_url=base_url, email=email, password=password, user=user, key=key, timezone=self.timezone,
            feed_url=self.feed_url, caldav_url=caldav_url, public_url=page.get("public_url", ""),
            start=start, end=end, today=today.isoformat(),
        )


def _ok(response: httpx.Response, what: str) -> Any:
    if response.status_code not in (200, 201):
        raise DemoError(f"could not {what}: {response.status_code} {response.text[:300]}")
    return response.json()


def _data(body: Any) -> list[Any]:
    items: list[Any] = body["data"] if isinstance(body, dict) and "data" in body else body
    return items
