"""Finding a new connection's calendars (and checking its credentials) at the provider."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from calmesh_common.guarded import FetchError, GuardedClient, normalise_url
from calmesh_common.problems import FieldError, Problem
from calmesh_providers import ICAL_CALENDAR_REF, AuthError, ProviderError, SourceError, TransientError, calendar_id_for, listing
from calmesh_providers.caldav import CalDAVClient
from calmesh_providers.google import GoogleClient
from calmesh_providers.graph import GraphClient


def check_url(url: str, field: str = "url") -> str:
    """A fetchable http(s) URL (webcal:// is read as https://); 422 otherwise."""
    try:
        return normalise_url(url)
    except FetchError as exc:
        raise Problem(422, "invalid_url", f"{field}: {exc}", errors=[FieldError(field, str(exc))]) from None


def ical_calendars(connection_id: str, url: str) -> list[dict[str, Any]]:
    host = urlsplit(url).hostname or "iCal feed"
    return [{"id": calendar_id_for(connection_id, ICAL_CALENDAR_REF), "name": host, "color": None, "read_only": True, "ref": ICAL_CALENDAR_REF}]


async def caldav_calendars(guarded: GuardedClient, connection_id: str, url: str, username: str, password: str) -> list[dict[str, Any]]:
    client = CalDAVClient(guarded, url, username, password)
    try:
        found = await listing.caldav_calendars(client, connection_id)
    except AuthError:
        raise Problem(422, "invalid_credentials", "The CalDAV server refused the username or password.") from None
    except (SourceError, TransientError, ProviderError) as exc:
        raise Problem(422, "connection_failed", f"The CalDAV server could not be used: {exc}") from None
    finally:
        await client.aclose()
    if not found:
        raise Problem(422, "connection_failed", "The CalDAV server lists no event calendar for this account.")
    return [asdict(c) for c in found]


async def google_calendars(client: GoogleClient, connection_id: str) -> tuple[list[dict[str, Any]], str | None]:
    """(calendars, the account's address: the primary calendar's id)."""
    found, account = await listing.google_calendars(client, connection_id)
    return [asdict(c) for c in found], account


async def graph_calendars(client: GraphClient, connection_id: str) -> tuple[list[dict[str, Any]], str | None]:
    found = await listing.graph_calendars(client, connection_id)
    try:
        me = await client.me()
        account = me.get("mail") or me.get("userPrincipalName")
    except ProviderError:
        account = None
    return [asdict(c) for c in found], account
