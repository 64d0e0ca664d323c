"""Google Calendar API v3: calendar list, events (full sync following every nextPageToken with
``singleEvents=true``, then ``syncToken``; 410 Gone means start again), writes, watch channels."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

import httpx

from calmesh_common.timefmt import parse_instant, rfc3339

from .ical import Instance, all_day_span, format_recurrence_id
from . import ProviderError
from .api import ApiClient


@dataclass
class EventPage:
    """What one events.list round returned: changed items, cancelled ids, the next sync token."""

    items: list[dict[str, Any]]
    next_sync_token: str | None
    pages: int


class GoogleClient(ApiClient):
    provider = "Google Calendar"

    def is_rate_limit(self, response: httpx.Response, body: Any) -> bool:
        if response.status_code == 429:
            return True
        if response.status_code == 403 and isinstance(body, dict):
            reasons = [e.get("reason") for e in (body.get("error") or {}).get("errors") or [] if isinstance(e, dict)]
            return any(r in ("rateLimitExceeded", "userRateLimitExceeded") for r in reasons)
        return False

    @staticmethod
    def _cal(calendar_id: str) -> str:
        return quote(calendar_id, safe="")

    async def calendars(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        page_token = None
        while True:
            params = {"maxResults": 250, **({"pageToken": page_token} if page_token else {})}
            _, body = await self.request("GET", "/users/me/calendarList", params=params)
            items.extend((body or {}).get("items") or [])
            page_token = (body or {}).get("nextPageToken")
            if not page_token:
                return items

    async def list_events(
        self, calendar_id: str, *, sync_token: str | None = None, time_min: datetime | None = None, time_max: datetime | None = None
    ) -> EventPage:
        """A full round (time-bounded, deleted ones left out) or an incremental one (syncToken,
        deletions included as status=cancelled), following every nextPageToken."""
        base: dict[str, Any] = {"singleEvents": "true", "maxResults": 2500}
        if sync_token:
            base["syncToken"] = sync_token
        else:
            if time_min:
                base["timeMin"] = rfc3339(time_min)
            if time_max:
                base["timeMax"] = rfc3339(time_max)
        items: list[dict[str, Any]] = []
        page_token = None
        pages = 0
        while True:
            params = dict(base)
            if page_token:
                params["pageToken"] = page_token
            _, body = await self.request("GET", f"/calendars/{self._cal(calendar_id)}/events", params=params)
            pages += 1
            body = body or {}
            items.extend(body.get("items") or [])
            page_token = body.get("nextPageToken")
            if not page_token:
                return EventPage(items, body.get("nextSyncToken"), pages)
            if pages > 10_000:
                raise ProviderError("Google Calendar kept paging without end")

    async def insert_event(self, calendar_id: str, event: dict[str, Any]) -> dict[str, Any]:
        _, body = await self.request("POST", f"/calendars/{self._cal(calendar_id)}/events", json=event)
        return body or {}

    async def patch_event(self, calendar_id: str, event_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """events.patch: change fields of an event in place (same id, same iCalUID)."""
        _, body = await self.request(
            "PATCH", f"/calendars/{self._cal(calendar_id)}/events/{quote(event_id, safe='')}", json=changes
        )
        return body or {}

    async def delete_event(self, calendar_id: str, event_id: str) -> None:
        await self.request(
            "DELETE", f"/calendars/{self._cal(calendar_id)}/events/{quote(event_id, safe='')}", ok_statuses=(404, 410)
        )

    async def watch(self, calendar_id: str, channel_id: str, address: str, token: str, ttl_seconds: int) -> dict[str, Any]:
        body = {"id": channel_id, "type": "web_hook", "address": address, "token": token, "params": {"ttl": str(ttl_seconds)}}
        _, answer = await self.request("POST", f"/calendars/{self._cal(calendar_id)}/events/watch", json=body)
        return answer or {}

    async def stop_channel(self, channel_id: str, resource_id: str) -> None:
        await self.request("POST", "/channels/stop", json={"id": channel_id, "resourceId": resource_id}, ok_statuses=(404,))


def google_instance(item: dict[str, Any]) -> Instance | None:
    """A Google event (one instance, as singleEvents=true gives them) as an Instance; None for a
    cancelled one (which the caller turns into a deletion)."""
    if item.get("status") == "cancelled":
        return None
    start = item.get("start") or {}
    end = item.get("end") or {}
    recurring = bool(item.get("recurringEventId"))
    rid = ""
    if recurring:
        original = item.get("originalStartTime") or start
        if original.get("dateTime"):
            rid = format_recurrence_id(parse_instant(original["dateTime"], default_tz=UTC), UTC)
        elif original.get("date"):
            rid = original["date"]
    start_date: date | None
    end_date: date | None
    if start.get("date"):
        start_date = date.fromisoformat(start["date"])
        end_date = date.fromisoformat(end["date"]) if end.get("date") else start_date
        start_at, end_at = all_day_span(start_date, max(start_date, end_date))
        all_day = True
    elif start.get("dateTime"):
        start_at = parse_instant(start["dateTime"], default_tz=UTC)
        end_at = parse_instant(end["dateTime"], default_tz=UTC) if end.get("dateTime") else start_at
        start_date = end_date = None
        all_day = False
    else:
        return None
    status = item.get("status") or "confirmed"
    return Instance(
        uid=item.get("iCalUID") or item["id"],
        recurrence_id=rid,
        recurring=recurring,
        title=item.get("summary") or "",
        description=item.get("description"),
        location=item.get("location"),
        start_at=start_at,
        end_at=max(end_at, start_at),
        all_day=all_day,
        start_date=start_date,
        end_date=end_date,
        status=status if status in ("confirmed", "tentative", "cancelled") else "confirmed",
        transparency="free" if item.get("transparency") == "transparent" else "busy",
    )


def google_calendar_info(item: dict[str, Any]) -> tuple[str, str, str | None, bool]:
    """(ref, name, color, read_only) of a calendarList entry."""
    role = item.get("accessRole") or "reader"
    return (
        item["id"],
        item.get("summaryOverride") or item.get("summary") or item["id"],
        item.get("backgroundColor"),
        role not in ("owner", "writer"),
    )
