"""Microsoft Graph: calendars, ``calendarView/delta`` (follow ``@odata.nextLink`` to the
``@odata.deltaLink``; 410 / syncStateNotFound means start again; ``@removed`` is a deletion), event
writes and change-notification subscriptions (with ``clientState``)."""

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

_RESYNC_CODES = {"syncstatenotfound", "syncstateinvalid", "resyncrequired", "invaliddeltatoken"}
PREFER = 'odata.maxpagesize=200, outlook.timezone="UTC"'


@dataclass
class DeltaRound:
    items: list[dict[str, Any]]
    delta_link: str | None
    pages: int


def parse_graph_time(value: dict[str, Any] | None) -> datetime | None:
    """A Graph dateTimeTimeZone (asked for in UTC) as an aware datetime."""
    if not value or not value.get("dateTime"):
        return None
    text = value["dateTime"]
    if "." in text:  # Graph gives 7 fraction digits
        head, frac = text.split(".", 1)
        text = head + "." + frac[:6].rstrip("Z")
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        zone = (value.get("timeZone") or "UTC").strip()
        if zone.upper() in ("UTC", "ETC/UTC", "Z", ""):
            parsed = parsed.replace(tzinfo=UTC)
        else:
            import zoneinfo

            try:
                parsed = parsed.replace(tzinfo=zoneinfo.ZoneInfo(zone))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                parsed = parsed.replace(tzinfo=UTC)
    return parsed


def graph_time(value: datetime) -> dict[str, str]:
    """`value` as a Graph dateTimeTimeZone in UTC (what `parse_graph_time` reads back)."""
    return {"dateTime": value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}


class GraphClient(ApiClient):
    provider = "Microsoft Graph"

    def is_sync_token_error(self, response: httpx.Response, body: Any) -> bool:
        if response.status_code == 410:
            return True
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return str(body["error"].get("code", "")).lower() in _RESYNC_CODES
        return False

    async def me(self) -> dict[str, Any]:
        _, body = await self.request("GET", "/me")
        return body or {}

    async def calendars(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        url: str | None = "/me/calendars"
        while url:
            _, body = await self.request("GET", url)
            body = body or {}
            items.extend(body.get("value") or [])
            url = body.get("@odata.nextLink")
        return items

    async def delta(
        self, calendar_id: str, *, delta_link: str | None = None, start: datetime | None = None, end: datetime | None = None
    ) -> DeltaRound:
        """One delta round: from `delta_link` (incremental) or from scratch over [start, end)."""
        if delta_link:
            url: str | None = delta_link
            params: dict[str, Any] | None = None
        else:
            assert start is not None and end is not None
            url = f"/me/calendars/{quote(calendar_id, safe='')}/calendarView/delta"
            params = {"startDateTime": rfc3339(start), "endDateTime": rfc3339(end)}
        items: list[dict[str, Any]] = []
        pages = 0
        while url:
            _, body = await self.request("GET", url, params=params, headers={"Prefer": PREFER})
            params = None  # the links carry the query
            pages += 1
            body = body or {}
            items.extend(body.get("value") or [])
            if body.get("@odata.deltaLink"):
                return DeltaRound(items, body["@odata.deltaLink"], pages)
            url = body.get("@odata.nextLink")
            if pages > 10_000:
                raise ProviderError("Microsoft Graph kept paging without end")
        return DeltaRound(items, None, pages)

    async def event_uid(self, event_id: str) -> str | None:
        _, body = await self.request("GET", f"/me/events/{quote(event_id, safe='')}", params={"$select": "iCalUId"})
        return (body or {}).get("iCalUId")

    async def create_event(self, calendar_id: str, event: dict[str, Any]) -> dict[str, Any]:
        _, body = await self.request(
            "POST", f"/me/calendars/{quote(calendar_id, safe='')}/events", json=event, headers={"Prefer": PREFER}
        )
        return body or {}

    async def update_event(self, event_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """PATCH /me/events/{id}: change fields of an event in place."""
        _, body = await self.request("PATCH", f"/me/events/{quote(event_id, safe='')}", json=changes)
        return body or {}

    async def delete_event(self, event_id: str) -> None:
        await self.request("DELETE", f"/me/events/{quote(event_id, safe='')}", ok_statuses=(404, 410))

    async def subscribe(self, resource: str, notification_url: str, client_state: str, expires: datetime) -> dict[str, Any]:
        body = {
            "changeType": "created,updated,deleted",
            "notificationUrl": notification_url,
            "resource": resource,
            "expirationDateTime": rfc3339(expires),
            "clientState": client_state,
        }
        _, answer = await self.request("POST", "/subscriptions", json=body)
        return answer or {}

    async def renew(self, subscription_id: str, expires: datetime) -> dict[str, Any]:
        _, answer = await self.request(
            "PATCH", f"/subscriptions/{quote(subscription_id, safe='')}", json={"expirationDateTime": rfc3339(expires)}
        )
        return answer or {}

    async def unsubscribe(self, subscription_id: str) -> None:
        await self.request("DELETE", f"/subscriptions/{quote(subscription_id, safe='')}", ok_statuses=(404,))


def graph_instance(item: dict[str, Any], master_uids: dict[str, str]) -> Instance | None:
    """A Graph event from calendarView/delta as an Instance; None for a removal or a series master
    (calendarView gives the occurrences themselves)."""
    if "@removed" in item or item.get("type") == "seriesMaster":
        return None
    start = parse_graph_time(item.get("start"))
    end = parse_graph_time(item.get("end"))
    if start is None:
        return None
    end = end or start
    kind = item.get("type") or "singleInstance"
    recurring = kind in ("occurrence", "exception")
    uid = item.get("iCalUId") or item["id"]
    rid = ""
    if recurring:
        uid = master_uids.get(item.get("seriesMasterId") or "", uid)
        original = item.get("originalStart")
        rid = format_recurrence_id(parse_instant(original, default_tz=UTC), UTC) if original else format_recurrence_id(start, UTC)
    start_date: date | None
    end_date: date | None
    if item.get("isAllDay"):
        start_date = start.date()
        end_date = max(start_date, end.date())
        start_at, end_at = all_day_span(start_date, end_date)
        all_day = True
    else:
        start_at, end_at = start.astimezone(UTC), max(end, start).astimezone(UTC)
        start_date = end_date = None
        all_day = False
    show_as = (item.get("showAs") or "busy").lower()
    status = "cancelled" if item.get("isCancelled") else ("tentative" if show_as == "tentative" else "confirmed")
    body = item.get("body") or {}
    description = body.get("content") if body.get("contentType", "text").lower() == "text" else item.get("bodyPreview")
    location = (item.get("location") or {}).get("displayName") or None
    return Instance(
        uid=uid,
        recurrence_id=rid,
        recurring=recurring,
        title=item.get("subject") or "",
        description=description or None,
        location=location,
        start_at=start_at,
        end_at=end_at,
        all_day=all_day,
        start_date=start_date,
        end_date=end_date,
        status=status,
        transparency="free" if show_as == "free" else "busy",
    )
