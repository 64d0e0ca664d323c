"""HTTP plumbing shared by the providers: the guarded client for user-given URLs, and how its
failures read to a user."""

from __future__ import annotations

from calmesh_common.guarded import FetchError, GuardedClient
from calmesh_common.settings import Settings

from .ical import SourceError
from . import TransientError

#: FetchError messages that no retry will change: the address or scheme is refused, the answer is
#: too big, or there are too many redirects.
_PERMANENT_MARKERS = ("refused to fetch", "only http", "has no host", "larger than", "redirects", "URL is empty")


def guarded_client(settings: Settings, *, max_bytes: int | None = None) -> GuardedClient:
    """The one client through which user-given URLs (iCal feeds, CalDAV servers) are fetched."""
    return GuardedClient(
        allow_private_networks=settings.allow_private_networks,
        allowed_endpoints=settings.allow_private_endpoints,
        max_bytes=max_bytes or settings.caldav_max_bytes,
        timeout=settings.fetch_timeout_seconds,
    )


def fetch_failure(exc: FetchError, what: str) -> Exception:
    """Turn a FetchError into a SourceError (permanent) or a TransientError (try again)."""
    text = str(exc)
    if any(marker in text for marker in _PERMANENT_MARKERS):
        return SourceError(f"{what}: {text}")
    return TransientError(f"{what}: {text}")
