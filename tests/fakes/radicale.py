"""A real CalDAV server for the tests: Radicale on a free loopback port, htpasswd (plain) auth,
file storage in a temporary directory."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from .servers import free_port


@dataclass
class Radicale:
    url: str
    username: str
    password: str
    folder: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(self.username, self.password), timeout=30)

    def make_calendar(self, name: str, display: str | None = None) -> str:
        """MKCALENDAR /<user>/<name>/; returns the collection URL."""
        path = f"/{self.username}/{name}/"
        body = None
        if display:
            body = (
                '<?xml version="1.0" encoding="utf-8"?><C:mkcalendar xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
                f"<D:set><D:prop><D:displayname>{display}</D:displayname></D:prop></D:set></C:mkcalendar>"
            )
        with self.client() as c:
            r = c.request("MKCALENDAR", path, content=body)
            assert r.status_code in (201, 405), r.text  # 405: exists
        return self.url + path

    def put(self, calendar: str, name: str, ics: str) -> str:
        with self.client() as c:
            r = c.put(f"/{self.username}/{calendar}/{name}", content=ics.encode(), headers={"Content-Type": "text/calendar"})
            assert r.status_code in (201, 204), r.text
            return r.headers.get("etag", "")

    def get(self, calendar: str, name: str) -> httpx.Response:
        with self.client() as c:
            return c.get(f"/{self.username}/{calendar}/{name}")

    def delete(self, calendar: str, name: str) -> None:
        with self.client() as c:
            r = c.delete(f"/{self.username}/{calendar}/{name}")
            assert r.status_code in (200, 204), r.text

    def objects(self, calendar: str) -> dict[str, str]:
        """Every object of a calendar: {name: data} (read straight from Radicale's storage)."""
        folder = self.folder / "collection-root" / self.username / calendar
        return {p.name: p.read_text() for p in folder.iterdir() if p.suffix == ".ics"} if folder.exists() else {}


@contextlib.contextmanager
def radicale(username: str = "alice", password: str = "wonderland") -> Iterator[Radicale]:
    with tempfile.TemporaryDirectory(prefix="calmesh-radicale-") as tmp:
        folder = Path(tmp)
        users = folder / "users"
        users.write_text(f"{username}:{password}\n")
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable, "-m", "radicale",
                f"--server-hosts=127.0.0.1:{port}",
                "--auth-type=htpasswd",
                f"--auth-htpasswd-filename={users}",
                "--auth-htpasswd-encryption=plain",
                f"--storage-filesystem-folder={folder / 'store'}",
                "--logging-level=warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError("radicale exited at start-up")
                try:
                    httpx.get(url + "/.web/", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            yield Radicale(url=url, username=username, password=password, folder=folder / "store")
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
