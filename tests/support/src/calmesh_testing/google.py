"""A fake of the Google Calendar API v3, faithful to what the sync relies on:

- ``calendarList.list`` (paged);
- ``events.list`` with ``singleEvents=true``: a full listing is bounded by timeMin/timeMax, leaves
  cancelled events out and is paged by ``nextPageToken`` (pages are small here, on purpose); the
  last page carries ``nextSyncToken``. With ``syncToken`` it returns every event changed since,
  cancelled ones included (``status: cancelled``), refuses timeMin/timeMax (400), and answers
  410 Gone once the token is invalidated;
- instances of a recurring event carry ``recurringEventId`` and ``originalStartTime``, their ids
  are ``<series id>_<UTC start>`` and they share the series' ``iCalUID``;
- ``events.insert``, ``events.delete``, ``events.watch``, ``channels.stop``;
- ``events.patch`` (``PATCH /calendars/{calendarId}/events/{eventId}``), with Google's patch
  semantics: the fields given replace the stored ones (objects merge field by field, arrays are
  replaced whole, ``null`` clears a field), every other field stays; the id and ``iCalUID`` never
  change; ``etag`` and ``updated`` change on each write, and ``sequence`` goes up by one when the
  time (``start``/``end``/``recurrence``) moves; an unknown event is 404, a deleted one 410;
- every write gives a new ``etag``;
- bearer tokens checked against the fake OAuth server; canned failures (429 with Retry-After, 5xx).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import httpx
from litestar import Litestar, Request, Response, delete, get, patch, post

from .oauth import OAuthFake


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Fields of an event resource a client cannot change (Google ignores them in a patch body).
_READ_ONLY_FIELDS = frozenset({"kind", "id", "iCalUID", "etag", "updated", "created", "htmlLink", "sequence",
                               "recurringEventId", "originalStartTime", "creator", "organizer"})


def _merge(stored: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Patch semantics: objects merge field by field, anything else (arrays too) replaces, null clears."""
    out = dict(stored)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class GCalendar:
    id: str
    summary: str
    access_role: str = "owner"
    color: str = "#9fc6e7"
    primary: bool = False
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)  # event id -> change sequence


@dataclass
class GoogleFake:
    oauth: OAuthFake
    page_size: int = 3
    calendars: dict[str, GCalendar] = field(default_factory=dict)
    sequence: int = 0
    #: Sync tokens issued before this sequence answer 410 Gone.
    token_floor: int = 0
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    #: Extra headers the fake sends with its push notices (the gateway's, in a real deployment).
    notify_headers: dict[str, str] = field(default_factory=dict)

    # -- what the tests do ---------------------------------------------------------------------

    def calendar(self, cal_id: str, summary: str, *, primary: bool = False, access_role: str = "owner") -> GCalendar:
        cal = GCalendar(cal_id, summary, access_role=access_role, primary=primary)
        self.calendars[cal_id] = cal
        return cal

    def _touch(self, cal: GCalendar, event: dict[str, Any]) -> None:
        self.sequence += 1
        event["updated"] = _rfc3339(datetime.now(UTC))
        event["etag"] = f'"{3180000000000000 + self.sequence}"'
        cal.events[event["id"]] = event
        cal.seq[event["id"]] = self.sequence

    def add(self, cal_id: str, summary: str, start: datetime, end: datetime, **extra: Any) -> dict[str, Any]:
        event_id = extra.pop("id", None) or uuid.uuid4().hex[:20]
        event = {
            "kind": "calendar#event", "id": event_id, "status": "confirmed", "summary": summary,
            "start": {"dateTime": _rfc3339(start)}, "end": {"dateTime": _rfc3339(end)},
            "iCalUID": f"{event_id}@google.com", "sequence": 0, **extra,
        }
        self._touch(self.calendars[cal_id], event)
        return event

    def events_of(self, cal_id: str, *, include_cancelled: bool = False) -> list[dict[str, Any]]:
        """The calendar's events as stored (for assertions)."""
        return [e for e in self.calendars[cal_id].events.values() if include_cancelled or e["status"] != "cancelled"]

    def patch(self, cal_id: str, event_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """events.patch's semantics on a stored event; returns the event as it is now."""
        cal = self.calendars[cal_id]
        before = cal.events[event_id]
        after = _merge(before, {k: v for k, v in changes.items() if k not in _READ_ONLY_FIELDS})
        if any(after.get(k) != before.get(k) for k in ("start", "end", "recurrence")):
            after["sequence"] = int(before.get("sequence") or 0) + 1
        self._touch(cal, after)
        return after

    def add_all_day(self, cal_id: str, summary: str, day: str, end_day: str) -> dict[str, Any]:
        event = self.add(cal_id, summary, datetime.now(UTC), datetime.now(UTC))
        event.update(start={"date": day}, end={"date": end_day})
        return event

    def add_series(self, cal_id: str, summary: str, first: datetime, count: int, every: timedelta, length: timedelta) -> list[dict[str, Any]]:
        series_id = uuid.uuid4().hex[:16]
        out = []
        for n in range(count):
            start = first + n * every
            out.append(self.add(
                cal_id, summary, start, start + length, id=f"{series_id}_{start.strftime('%Y%m%dT%H%M%SZ')}",
                recurringEventId=series_id, originalStartTime={"dateTime": _rfc3339(start)}, iCalUID=f"{series_id}@google.com",
            ))
        return out

    def update(self, cal_id: str, event_id: str, **changes: Any) -> None:
        cal = self.calendars[cal_id]
        event = dict(cal.events[event_id])
        event.update(changes)
        self._touch(cal, event)

    def cancel(self, cal_id: str, event_id: str) -> None:
        cal = self.calendars[cal_id]
        self._touch(cal, {"kind": "calendar#event", "id": event_id, "status": "cancelled",
                          **{k: v for k, v in cal.events[event_id].items() if k in ("recurringEventId", "originalStartTime", "iCalUID")}})

    def invalidate_sync_tokens(self) -> None:
        self.token_floor = self.sequence + 1

    def fail_next(self, status: int, headers: dict[str, str] | None = None, times: int = 1) -> None:
        self.failures.extend([(status, headers or {})] * times)

    async def notify(self, cal_id: str) -> list[int]:
        """Send a push notice to every channel watching `cal_id`; returns the HTTP statuses."""
        statuses = []
        async with httpx.AsyncClient(timeout=10) as client:
            for channel in self.channels.values():
                if channel["calendar"] != cal_id:
                    continue
                channel["number"] += 1
                r = await client.post(channel["address"], headers={
                    **self.notify_headers,
                    "X-Goog-Channel-ID": channel["id"], "X-Goog-Channel-Token": channel["token"] or "",
                    "X-Goog-Resource-ID": channel["resourceId"], "X-Goog-Resource-State": "exists",
                    "X-Goog-Message-Number": str(channel["number"]),
                })
                statuses.append(r.status_code)
        return statuses

    # -- the server ----------------------------------------------------------------------------

    def app(self) -> Litestar:
        fake = self

        def guard(request: Request[Any, Any, Any]) -> Response[Any] | None:
            fake.requests.append(f"{request.method} {request.url.path}?{request.url.query}")
            if fake.failures:
                status, headers = fake.failures.pop(0)
                reason = "rateLimitExceeded" if status in (403, 429) else "backendError"
                return Response({"error": {"code": status, "errors": [{"reason": reason}], "message": reason}}, status_code=status, headers=headers)
            if not fake.oauth.valid(request.headers.get("authorization")):
                return Response({"error": {"code": 401, "message": "Invalid Credentials", "errors": [{"reason": "authError"}]}}, status_code=401)
            return None

        def token(payload: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()

        def untoken(text: str) -> dict[str, Any]:
            return json.loads(base64.urlsafe_b64decode(text.encode()))

        @get("/users/me/calendarList")
        async def calendar_list(request: Request[Any, Any, Any]) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            items = [
                {"kind": "calendar#calendarListEntry", "id": c.id, "summary": c.summary, "backgroundColor": c.color,
                 "accessRole": c.access_role, **({"primary": True} if c.primary else {})}
                for c in fake.calendars.values()
            ]
            offset = int(request.query_params.get("pageToken") or 0)
            page = items[offset : offset + 2]
            body: dict[str, Any] = {"kind": "calendar#calendarList", "items": page}
            if offset + 2 < len(items):
                body["nextPageToken"] = str(offset + 2)
            return Response(body)

        @get("/calendars/{calendar_id:str}/events")
        async def list_events(request: Request[Any, Any, Any], calendar_id: str) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            cal = fake.calendars.get(unquote(calendar_id))
            if cal is None:
                return Response({"error": {"code": 404, "message": "Not Found"}}, status_code=404)
            q = request.query_params
            if q.get("singleEvents") != "true":
                return Response({"error": {"code": 400, "message": "this fake only serves singleEvents=true"}}, status_code=400)
            if q.get("pageToken"):
                state = untoken(q["pageToken"])
            elif q.get("syncToken"):
                if q.get("timeMin") or q.get("timeMax"):
                    return Response({"error": {"code": 400, "errors": [{"reason": "invalid"}],
                                               "message": "Sync token cannot be used with other request restrictions."}}, status_code=400)
                since = int(q["syncToken"].split(":", 1)[1])
                if since < fake.token_floor:
                    return Response({"error": {"code": 410, "errors": [{"domain": "calendar", "reason": "fullSyncRequired"}],
                                               "message": "Sync token is no longer valid, a full sync is required."}}, status_code=410)
                state = {"mode": "since", "since": since, "at": fake.sequence, "offset": 0}
            else:
                state = {"mode": "full", "min": q.get("timeMin"), "max": q.get("timeMax"), "at": fake.sequence, "offset": 0}
            if state["mode"] == "since":
                ids = sorted((i for i, s in cal.seq.items() if state["since"] < s <= state["at"]), key=lambda i: cal.seq[i])
                items = [cal.events[i] for i in ids]
            else:
                items = []
                for event_id in sorted(cal.events, key=lambda i: cal.seq[i]):
                    event = cal.events[event_id]
                    if event["status"] == "cancelled" or cal.seq[event_id] > state["at"]:
                        continue
                    start = event["start"].get("dateTime") or event["start"].get("date") + "T00:00:00Z"
                    end = event["end"].get("dateTime") or event["end"].get("date") + "T00:00:00Z"
                    if (state["max"] and start >= state["max"]) or (state["min"] and end <= state["min"]):
                        continue
                    items.append(event)
            size = min(fake.page_size, int(q.get("maxResults") or 250))
            page = items[state["offset"] : state["offset"] + size]
            body: dict[str, Any] = {"kind": "calendar#events", "summary": cal.summary, "items": page}
            if state["offset"] + size < len(items):
                body["nextPageToken"] = token({**state, "offset": state["offset"] + size})
            else:
                body["nextSyncToken"] = f"seq:{state['at']}"
            return Response(body)

        @post("/calendars/{calendar_id:str}/events")
        async def insert(request: Request[Any, Any, Any], calendar_id: str) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            cal = fake.calendars.get(unquote(calendar_id))
            if cal is None:
                return Response({"error": {"code": 404, "message": "Not Found"}}, status_code=404)
            if cal.access_role not in ("owner", "writer"):
                return Response({"error": {"code": 403, "message": "Forbidden", "errors": [{"reason": "forbidden"}]}}, status_code=403)
            body = await request.json()
            event_id = uuid.uuid4().hex[:20]
            event = {"kind": "calendar#event", "id": event_id, "status": "confirmed", "iCalUID": f"{event_id}@google.com",
                     "sequence": 0, **body}
            fake._touch(cal, event)
            return Response(event, status_code=200)

        @patch("/calendars/{calendar_id:str}/events/{event_id:str}")
        async def patch_event(request: Request[Any, Any, Any], calendar_id: str, event_id: str) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            cal = fake.calendars.get(unquote(calendar_id))
            event = cal.events.get(unquote(event_id)) if cal else None
            if cal is None or event is None:
                return Response({"error": {"code": 404, "message": "Not Found", "errors": [{"reason": "notFound"}]}},
                                status_code=404)
            if cal.access_role not in ("owner", "writer"):
                return Response({"error": {"code": 403, "message": "Forbidden", "errors": [{"reason": "forbidden"}]}}, status_code=403)
            if event["status"] == "cancelled":
                return Response({"error": {"code": 410, "message": "Resource has been deleted",
                                           "errors": [{"reason": "deleted"}]}}, status_code=410)
            changes = await request.json()
            if not isinstance(changes, dict):
                return Response({"error": {"code": 400, "message": "Bad Request", "errors": [{"reason": "badRequest"}]}},
                                status_code=400)
            return Response(fake.patch(cal.id, event["id"], changes), status_code=200)

        @delete("/calendars/{calendar_id:str}/events/{event_id:str}", status_code=200)
        async def remove(request: Request[Any, Any, Any], calendar_id: str, event_id: str) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            cal = fake.calendars.get(unquote(calendar_id))
            event = cal.events.get(unquote(event_id)) if cal else None
            if event is None:
                return Response({"error": {"code": 404, "message": "Not Found"}}, status_code=404)
            if event["status"] == "cancelled":
                return Response({"error": {"code": 410, "message": "Resource has been deleted"}}, status_code=410)
            fake.cancel(cal.id, event["id"])  # type: ignore[union-attr]
            return Response(b"", status_code=204)

        @post("/calendars/{calendar_id:str}/events/watch")
        async def watch(request: Request[Any, Any, Any], calendar_id: str) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            body = await request.json()
            resource_id = secrets.token_hex(8)
            expiration = int((time.time() + int((body.get("params") or {}).get("ttl", 604800))) * 1000)
            fake.channels[body["id"]] = {"id": body["id"], "token": body.get("token"), "address": body["address"],
                                         "calendar": unquote(calendar_id), "resourceId": resource_id, "number": 0}
            return Response({"kind": "api#channel", "id": body["id"], "resourceId": resource_id,
                             "resourceUri": f"/calendars/{calendar_id}/events", "expiration": str(expiration)})

        @post("/channels/stop", status_code=200)
        async def stop(request: Request[Any, Any, Any]) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            body = await request.json()
            fake.channels.pop(body.get("id"), None)
            return Response(b"", status_code=204)

        return Litestar([calendar_list, list_events, insert, patch_event, remove, watch, stop], debug=False)

