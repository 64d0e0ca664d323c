"""A small iCal feed server (raw ASGI) with ETag / Last-Modified / If-None-Match, redirects, error
statuses, slow and endless bodies, and a log of every request, for the sync tests; and the
hand-written regression feeds (`ICAL_FEEDS`, see its README)."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

from .asgi import lifespan

#: The hand-written iCalendar feeds (README.md there says what each checks).
ICAL_FEEDS = Path(__file__).with_name("ical")


@dataclass
class Feed:
    body: bytes = b""
    status: int = 200
    etag: bool = True
    last_modified: bool = True
    content_type: str = "text/calendar; charset=utf-8"
    location: str | None = None
    #: Stream this many bytes of filler instead of `body` (a huge answer, never held in memory).
    stream_bytes: int = 0
    declare_length: bool = True
    delay: float = 0.0
    extra_headers: dict[str, str] = field(default_factory=dict)
    version: int = 0


class FeedServer:
    def __init__(self) -> None:
        self.feeds: dict[str, Feed] = {}
        self.log: list[tuple[str, str, dict[str, str], int]] = []

    def put(self, path: str, body: bytes | str, **options: Any) -> Feed:
        old = self.feeds.get(path)
        feed = Feed(body=body.encode() if isinstance(body, str) else body, **options)
        feed.version = (old.version + 1) if old else 1
        self.feeds[path] = feed
        return feed

    def requests_to(self, path: str) -> list[tuple[str, str, dict[str, str], int]]:
        return [r for r in self.log if r[1] == path]

    @staticmethod
    def etag_of(feed: Feed) -> str:
        return '"' + hashlib.sha256(feed.body).hexdigest()[:16] + '"'

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        path = scope["path"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        feed = self.feeds.get(path)
        if feed is None:
            await self._answer(send, 404, [(b"content-type", b"text/plain")], b"not found")
            self.log.append((scope["method"], path, headers, 404))
            return
        if feed.delay:
            await asyncio.sleep(feed.delay)
        out: list[tuple[bytes, bytes]] = [(k.encode(), v.encode()) for k, v in feed.extra_headers.items()]
        if feed.location:
            out.append((b"location", feed.location.encode()))
            self.log.append((scope["method"], path, headers, feed.status))
            await self._answer(send, feed.status, out, b"")
            return
        etag = self.etag_of(feed)
        modified = formatdate(1_700_000_000 + feed.version * 60, usegmt=True)
        if feed.etag:
            out.append((b"etag", etag.encode()))
        if feed.last_modified:
            out.append((b"last-modified", modified.encode()))
        not_modified = (feed.etag and headers.get("if-none-match") == etag) or (
            not feed.etag and feed.last_modified and headers.get("if-modified-since") == modified
        )
        if not_modified and feed.status == 200:
            self.log.append((scope["method"], path, headers, 304))
            await self._answer(send, 304, out, b"")
            return
        self.log.append((scope["method"], path, headers, feed.status))
        out.append((b"content-type", feed.content_type.encode()))
        if feed.stream_bytes:
            if feed.declare_length:
                out.append((b"content-length", str(feed.stream_bytes).encode()))
            await send({"type": "http.response.start", "status": feed.status, "headers": out})
            chunk = b"X" * 65536
            sent = 0
            try:
                while sent < feed.stream_bytes:
                    piece = chunk[: min(len(chunk), feed.stream_bytes - sent)]
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                    sent += len(piece)
                await send({"type": "http.response.body", "body": b""})
            except Exception:  # noqa: BLE001 - the client hung up (as it should past its cap)
                return
            return
        await self._answer(send, feed.status, out, feed.body)

    @staticmethod
    async def _answer(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
