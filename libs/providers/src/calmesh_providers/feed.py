"""iCal subscription feeds: one conditional GET (If-None-Match / If-Modified-Since) through the
GuardedClient; a 304 costs nothing more."""

from __future__ import annotations

from dataclasses import dataclass

from calmesh_common.guarded import FetchError, GuardedClient
from calmesh_common.retryafter import parse_retry_after

from . import AuthError, SourceError, TransientError
from .http import fetch_failure


@dataclass(frozen=True)
class FeedFetch:
    not_modified: bool
    body: bytes | None
    etag: str | None
    last_modified: str | None


async def fetch_feed(
    guarded: GuardedClient, url: str, *, etag: str | None, last_modified: str | None, max_bytes: int
) -> FeedFetch:
    """Fetch `url` unless it is unchanged since (`etag`, `last_modified`)."""
    headers = {"Accept": "text/calendar, application/calendar+xml;q=0.5, */*;q=0.1"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    try:
        result = await guarded.fetch(url, headers=headers, max_bytes=max_bytes)
    except FetchError as exc:
        failure = fetch_failure(exc, "the feed could not be fetched")
        if "larger than" in str(exc):
            failure = SourceError(f"the feed is larger than the {max_bytes:,} byte limit (CALMESH_ICAL_MAX_BYTES)")
        raise failure from None
    status = result.status
    if status == 304:
        return FeedFetch(True, None, etag, last_modified)
    if status in (401, 403):
        raise AuthError(f"the feed refused access (HTTP {status}); the link may have been revoked")
    if status == 429 or status >= 500:
        raise TransientError(f"the feed server answered {status}", parse_retry_after(result.headers.get("Retry-After")))
    if status >= 400:
        raise SourceError(f"the feed URL answered HTTP {status}")
    if status >= 300:
        raise SourceError(f"the feed URL answered HTTP {status} without a usable redirect")
    return FeedFetch(False, result.body, result.headers.get("ETag"), result.headers.get("Last-Modified"))
