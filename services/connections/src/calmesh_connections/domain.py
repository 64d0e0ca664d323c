"""The connections rules, without I/O: a connection's states and what they allow, the sync schedule,
the OAuth state's validity, and the rules of a unified calendar's sources (their order, the last
writable one). The handlers load rows, ask these, and write what they say.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from calmesh_common.problems import FieldError, Problem

if TYPE_CHECKING:  # the settings module reaches for httpx: only its type is needed here
    from calmesh_common.settings import Settings

#: The providers that authorize with OAuth 2 (the others with credentials or a URL).
OAUTH = ("google", "microsoft")

#: A connection's states (README "Status"): ``pending`` until its first sync starts (OAuth: until
#: the callback), ``syncing`` while the first one (or the one after an error) runs, ``active`` after
#: a success, ``error`` after a failure, ``revoked`` when the grant is gone.
STATUSES = ("pending", "syncing", "active", "error", "revoked")

#: The name an OAuth connection has until the provider names the account.
OAUTH_DISPLAY_NAMES = {"google": "Google Calendar", "microsoft": "Microsoft Outlook"}


def sync_refusal(status: str, provider: str) -> Problem | None:
    """Why a connection in `status` cannot be synced on request (409), or None."""
    if status == "revoked":
        return Problem(409, "connection_revoked", "Access to this calendar was revoked; connect it again.")
    if status == "pending" and provider in OAUTH:
        return Problem(409, "not_authorized", "This connection has not completed its authorization yet.")
    return None


# --- the sync schedule -----------------------------------------------------------------------


def interval_for(settings: Settings, provider: str) -> float:
    """Seconds between two scheduled syncs of a connection of `provider`."""
    return {
        "ical": settings.sync_interval_ical_seconds,
        "caldav": settings.sync_interval_caldav_seconds,
        "icloud": settings.sync_interval_caldav_seconds,
        "google": settings.sync_interval_google_seconds,
        "microsoft": settings.sync_interval_microsoft_seconds,
    }.get(provider, settings.sync_interval_caldav_seconds)


def next_sync_at(settings: Settings, provider: str, after: datetime | None = None) -> datetime:
    """When the next scheduled sync is due: one interval after `after` (now), spread by the jitter."""
    base = interval_for(settings, provider)
    spread = base * settings.sync_jitter
    return (after or datetime.now(UTC)) + timedelta(seconds=base + random.uniform(-spread, spread))


# --- the OAuth flow --------------------------------------------------------------------------


def state_problem(saved: Any, provider: str, now: datetime) -> Problem | None:
    """Why a stored state cannot be used (unknown, another provider's, used, expired), else None."""
    if saved is None or saved["provider"] != provider:
        return Problem(400, "invalid_state", "This authorization request is unknown; start again.")
    if saved["used_at"] is not None:
        return Problem(400, "invalid_state", "This authorization request was used already; start again.")
    if saved["expires_at"] < now:
        return Problem(400, "invalid_state", "This authorization request expired; start again.")
    return None


def authorize_problem(saved: Any, provider: str, now: datetime, auth: str | None, user_id: str | None) -> Problem | None:
    """Why the start page of a flow may not be opened by this caller (`auth` "session" and its
    `user_id`, or None when signed out), else None: only the user who started it, signed in."""
    problem = state_problem(saved, provider, now)
    if problem is not None:
        return problem
    if auth != "session":
        return Problem(
            401, "sign_in_required",
            "Sign in to CalMesh in this browser, as the account that started this connection, then open this "
            "link again.",
        )
    if user_id != saved["user_id"]:
        return Problem(
            403, "oauth_wrong_account",
            "This link was made for another CalMesh account: nothing was connected. If someone sent it to you, "
            "do not continue.",
        )
    return None


def callback_failure(provider_name: str, code: str | None, error: str | None, error_description: str | None) -> str | None:
    """Why the provider's answer to the consent screen completes nothing, or None (a code came)."""
    if error:
        return f"authorization was not granted at {provider_name}: {error_description or error}"
    if not code:
        return "the provider sent no authorization code"
    return None


# --- sources of a unified calendar -----------------------------------------------------------


def reordered(current: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """The sources in their new order: `wanted` first, those left out after them in their order.
    422 ``invalid_order`` for an id listed twice or not a source of the calendar."""
    if len(set(wanted)) != len(wanted):
        raise Problem(422, "invalid_order", "source_ids: an id is listed twice.", errors=[FieldError("source_ids", "duplicate")])
    unknown = [s for s in wanted if s not in current]
    if unknown:
        raise Problem(422, "invalid_order", f"source_ids: not sources of this calendar: {', '.join(unknown)}",
                      errors=[FieldError("source_ids", "unknown source")])
    return list(wanted) + [s for s in current if s not in wanted]


def no_writable_left(writable: Sequence[str], removed: str) -> bool:
    """Removing `removed` takes the calendar's last writable source away (`writable`: the ids of
    its writable sources)."""
    return list(writable) == [removed]


def last_writable_problem(slug: str, pages: Sequence[str]) -> Problem:
    """409 ``last_writable_source``: booking pages (`pages`, their slugs) use calendar `slug`."""
    names = ", ".join(pages[:10]) + (" …" if len(pages) > 10 else "")
    return Problem(409, "last_writable_source",
                   f"This is the last writable source of calendar {slug!r}, and booking pages use it ({names}); "
                   "their bookings could not be written anywhere. Add another writable source, or move or delete "
                   "those pages, first.")


def slug_taken(slug: str) -> Problem:
    """409 ``slug_taken``: the user has a calendar of that slug."""
    return Problem(409, "slug_taken", f"You already have a calendar with the slug {slug!r}.")
