"""A connection's calendars as each provider lists them: one reading for the connections service
(discovering a new connection) and the sync workers (refreshing the list on every sync)."""

from __future__ import annotations

from dataclasses import dataclass

from . import calendar_id_for
from .caldav import CalDAVClient
from .google import GoogleClient, google_calendar_info
from .graph import GraphClient


@dataclass(frozen=True, slots=True)
class ListedCalendar:
    """One provider calendar: `ref` is the provider's reference (a CalDAV collection URL, a Google
    or Graph calendar id), `id` the public id it has in the connection."""

    id: str
    name: str
    color: str | None
    read_only: bool
    ref: str


async def caldav_calendars(client: CalDAVClient, connection_id: str) -> list[ListedCalendar]:
    return [
        ListedCalendar(id=calendar_id_for(connection_id, c.url), name=c.name, color=c.color, read_only=c.read_only, ref=c.url) for c in await client.discover()
    ]


async def google_calendars(client: GoogleClient, connection_id: str) -> tuple[list[ListedCalendar], str | None]:
    """(the calendars one can read events of, the account's address: the primary calendar's id)."""
    found = []
    account = None
    for item in await client.calendars():
        if item.get("primary"):
            account = item.get("id")
        if item.get("accessRole") == "freeBusyReader" or item.get("deleted"):
            continue
        ref, name, color, read_only = google_calendar_info(item)
        found.append(ListedCalendar(id=calendar_id_for(connection_id, ref), name=name, color=color, read_only=read_only, ref=ref))
    return found, account


async def graph_calendars(client: GraphClient, connection_id: str) -> list[ListedCalendar]:
    return [
        ListedCalendar(
            id=calendar_id_for(connection_id, item["id"]),
            name=item.get("name") or "Calendar",
            color=item.get("hexColor") or None,
            read_only=not item.get("canEdit", True),
            ref=item["id"],
        )
        for item in await client.calendars()
    ]
