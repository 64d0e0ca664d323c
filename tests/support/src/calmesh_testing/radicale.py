"""A real CalDAV server for tests and benchmarks: Radicale on a free loopback port, one user with
htpasswd (plain) auth, file storage under `root`.

    with radicale() as dav:                          # in a temporary directory, stopped after
        url = dav.make_calendar("work", "Work")
    server = Radicale(tmp_path / "dav").start()      # a module-scoped fixture; server.stop() after

Files written into `collection(name)` before `start()` are served as that calendar (benchmarks fill
calendars that way, far faster than PUT).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import httpx

from calmesh_common.devstack.embedded import free_port, stop_process


class Radicale:
    """One Radicale process; see the module docstring."""

    def __init__(self, root: Path, username: str = "owner", password: str = "s3cret-pass") -> None:
        self.root = root
        self.username = username
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    @property
    def store(self) -> Path:
        """Radicale's filesystem folder."""
        return self.root / "collections"

    def collection(self, calendar: str) -> Path:
        """Where Radicale keeps `calendar`'s objects, one .ics file each."""
        return self.store / "collection-root" / self.username / calendar

    def start(self, timeout: float = 30.0) -> Radicale:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "users").write_text(f"{self.username}:{self.password}\n")
        config = self.root / "config"
        config.write_text(
            "[server]\n"
            f"hosts = 127.0.0.1:{self.port}\n"
            "[auth]\ntype = htpasswd\n"
            f"htpasswd_filename = {self.root / 'users'}\nhtpasswd_encryption = plain\n"
            "[rights]\ntype = owner_only\n"
            f"[storage]\nfilesystem_folder = {self.store}\n"
            "[logging]\nlevel = warning\n"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "radicale", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Radicale exited at start-up ({self.process.returncode})")
            try:
                httpx.get(self.url + "/.web/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("Radicale did not start")

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> Radicale:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=self.auth, timeout=30)

    def calendar_url(self, name: str) -> str:
        return f"{self.url}/{self.username}/{name}/"

    def make_calendar(self, name: str, display: str | None = None) -> str:
        """MKCALENDAR /<user>/<name>/ (an existing one is kept); returns the collection URL."""
        body = None
        if display:  # built with ElementTree: the name is escaped, whatever it holds
            root = ET.Element("{urn:ietf:params:xml:ns:caldav}mkcalendar")
            prop = ET.SubElement(ET.SubElement(root, "{DAV:}set"), "{DAV:}prop")
            ET.SubElement(prop, "{DAV:}displayname").text = display
            body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        with self.client() as c:
            r = c.request("MKCALENDAR", self.calendar_url(name), content=body,
                          headers={"Content-Type": "application/xml"} if body else None)
        if r.status_code not in (201, 405):  # 405: it exists
            raise RuntimeError(f"MKCALENDAR answered {r.status_code}: {r.text[:200]}")
        return self.calendar_url(name)

    def put(self, calendar: str, name: str, ics: str) -> str:
        """PUT one object; returns its ETag."""
        with self.client() as c:
            r = c.put(f"{self.calendar_url(calendar)}{name}", content=ics.encode(),
                      headers={"Content-Type": "text/calendar; charset=utf-8"})
        if r.status_code not in (201, 204):
            raise RuntimeError(f"PUT answered {r.status_code}: {r.text[:200]}")
        return r.headers.get("etag", "")

    def put_event(self, calendar: str, uid: str, start: datetime, end: datetime, summary: str = "Busy") -> None:
        """PUT a plain timed event `<uid>.ics`."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.put(calendar, f"{uid}.ics", (
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//CalMesh tests//EN\r\nBEGIN:VEVENT\r\n"
            f"UID:{uid}\r\nDTSTAMP:{stamp}\r\nDTSTART:{start.astimezone(UTC):%Y%m%dT%H%M%SZ}\r\n"
            f"DTEND:{end.astimezone(UTC):%Y%m%dT%H%M%SZ}\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        ))

    def get(self, calendar: str, name: str) -> httpx.Response:
        with self.client() as c:
            return c.get(f"{self.calendar_url(calendar)}{name}")

    def delete(self, calendar: str, name: str) -> None:
        with self.client() as c:
            r = c.delete(f"{self.calendar_url(calendar)}{name}")
        if r.status_code not in (200, 204):
            raise RuntimeError(f"DELETE answered {r.status_code}: {r.text[:200]}")

    def objects(self, calendar: str) -> dict[str, str]:
        """Every object of `calendar`: {file name: iCalendar text}, read straight from the storage."""
        folder = self.collection(calendar)
        return {p.name: p.read_text() for p in sorted(folder.glob("*.ics"))} if folder.is_dir() else {}

    def event_files(self, calendar: str) -> list[str]:
        """The iCalendar objects stored in `calendar`, as text."""
        return list(self.objects(calendar).values())


@contextlib.contextmanager
def radicale(username: str = "alice", password: str = "wonderland") -> Iterator[Radicale]:
    """A Radicale in a temporary directory, stopped and removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="calmesh-radicale-") as tmp, Radicale(Path(tmp), username, password) as server:
        yield server
