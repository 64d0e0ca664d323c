"""Provider clients of the connections context: CalDAV (iCloud and any server), iCal feeds, Google
Calendar API v3 and Microsoft Graph, with the iCalendar reading code (`calmesh_providers.ical`).
A library, not a service: the sync workers use it to read and write events, the connections service
to discover a new connection's calendars; neither imports the other.

Every provider failure is one of the exceptions below, each carrying a message fit for a user's
``last_error`` (never a secret, never a stack trace).
"""

from __future__ import annotations

from .ical import ExpansionLimitError, SourceError


#: The provider reference of an iCal subscription's one calendar (its id is ``calendar_id_for(connection, "feed")``).
ICAL_CALENDAR_REF = "feed"


class ProviderError(Exception):
    """Base of the failures a provider call can end in."""


class AuthError(ProviderError):
    """The provider refused the credentials: the user must act (new password, reconnect)."""


class RevokedError(AuthError):
    """The OAuth grant is gone (invalid_grant): the connection is ``revoked``."""


class TransientError(ProviderError):
    """A passing failure (network, 5xx, 429): try again later, after `retry_after` when known."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFoundError(ProviderError):
    """The resource is gone at the provider."""


class PreconditionFailed(ProviderError):
    """An If-Match / If-None-Match precondition failed (the object changed or exists)."""


class ReadOnlyError(ProviderError):
    """The source cannot be written to."""


class SyncTokenExpired(ProviderError):
    """The incremental cursor is no longer valid (Google 410, Graph syncStateNotFound, CalDAV
    invalid sync token): a full sync is needed."""


__all__ = [
    "AuthError",
    "ExpansionLimitError",
    "ICAL_CALENDAR_REF",
    "NotFoundError",
    "PreconditionFailed",
    "ProviderError",
    "ReadOnlyError",
    "RevokedError",
    "SourceError",
    "SyncTokenExpired",
    "TransientError",
]


def calendar_id_for(connection_id: str, ref: str) -> str:
    """The public id (``cal_…``) of a provider calendar: stable for the connection's lifetime.
    `ref` is the provider's reference (a CalDAV collection URL, whose path is what counts; a Google
    or Graph calendar id; ``feed`` for an iCal subscription)."""
    from urllib.parse import urlsplit

    from calmesh_common.ids import derived_id

    if ref.startswith(("http://", "https://")):
        ref = urlsplit(ref).path.rstrip("/") or "/"
    return derived_id("cal", connection_id, ref)
