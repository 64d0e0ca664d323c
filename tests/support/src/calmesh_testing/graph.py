"""A fake of Microsoft Graph's calendar API, faithful to what the sync relies on:

- ``GET /me``, ``GET /me/calendars``;
- ``GET /me/calendars/{id}/calendarView/delta?startDateTime&endDateTime``: the first round lists
  the occurrences, exceptions and single instances in the window, page by page (``Prefer:
  odata.maxpagesize``, ``@odata.nextLink`` with a ``$skiptoken``), and ends with an
  ``@odata.deltaLink`` (``$deltatoken``); the delta link gives what changed since, a removal as
  ``{"id": …, "@removed": {"reason": "deleted"}}``; an invalidated token answers 410 with
  ``SyncStateNotFound``;
- occurrences carry ``type``, ``seriesMasterId``, ``originalStart``; ``GET /me/events/{id}`` gives
  a series master's ``iCalUId``;
- event create/delete; ``/subscriptions`` with the ``validationToken`` handshake and
  ``clientState``; notices sent on demand;
- event update, ``PATCH /me/events/{id}`` or ``PATCH /me/calendars/{calendarId}/events/{id}``: the
  properties given replace the stored ones (a complex property such as ``start`` as a whole),
  the others keep their values; the answer is 200 with the event; ``id`` and ``iCalUId`` stay,
  ``changeKey`` and ``lastModifiedDateTime`` change on each write; times given in ``UTC`` are
  stored as Graph answers them (``…T09:00:00.0000000``); an updated occurrence becomes an
  ``exception``; an unknown id is 404 ``ErrorItemNotFound``;
- bearer tokens checked against the fake OAuth server; canned failures.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
from litestar import Litestar, Request, Response, delete, get, patch, post

from .oauth import OAuthFake


def _graph_time(value: datetime) -> dict[str, str]:
    return {"dateTime": value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": "UTC"}


#: Properties of an event a client cannot change.
_READ_ONLY_FIELDS = frozenset({"id", "iCalUId", "changeKey", "createdDateTime", "lastModifiedDateTime", "type",
                               "seriesMasterId", "originalStart", "@odata.etag", "@odata.context"})


def _stored_time(value: dict[str, Any]) -> dict[str, Any]:
    """A dateTimeTimeZone as Graph keeps it: a UTC time with seven decimal places."""
    if value.get("timeZone") != "UTC" or not isinstance(value.get("dateTime"), str):
        return dict(value)
    moment = datetime.fromisoformat(value["dateTime"].rstrip("Z")[:26]).replace(tzinfo=UTC)
    return _graph_time(moment)


@dataclass
class GCal:
    id: str
    name: str
    can_edit: bool = True
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)


@dataclass
class GraphFake:
    oauth: OAuthFake
    base_url: str = ""
    calendars: dict[str, GCal] = field(default_factory=dict)
    masters: dict[str, dict[str, Any]] = field(default_factory=dict)
    sequence: int = 0
    token_floor: int = 0
    failures: list[tuple[int, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    notify_headers: dict[str, str] = field(default_factory=dict)
    mail: str = "ada@contoso.example"

    # -- what the tests do ---------------------------------------------------------------------

    def calendar(self, cal_id: str, name: str, *, can_edit: bool = True) -> GCal:
        cal = GCal(cal_id, name, can_edit)
        self.calendars[cal_id] = cal
        return cal

    def _touch(self, cal: GCal, event: dict[str, Any]) -> None:
        self.sequence += 1
        event["lastModifiedDateTime"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event["changeKey"] = base64.b64encode(secrets.token_bytes(12)).decode()
        cal.events[event["id"]] = event
        cal.seq[event["id"]] = self.sequence
        cal.removed.discard(event["id"])

    def add(self, cal_id: str, subject: str, start: datetime, end: datetime, **extra: Any) -> dict[str, Any]:
        event_id = extra.pop("id", None) or "AAMk" + uuid.uuid4().hex[:20]
        event = {
            "id": event_id, "subject": subject, "start": _graph_time(start), "end": _graph_time(end), "isAllDay": False,
            "isCancelled": False, "showAs": "busy", "type": "singleInstance", "iCalUId": "040000008200E00074C5B7101A82E008" + uuid.uuid4().hex,
            "body": {"contentType": "text", "content": ""}, "location": {"displayName": ""}, **extra,
        }
        self._touch(self.calendars[cal_id], event)
        return event

    def add_series(self, cal_id: str, subject: str, first: datetime, count: int, every: timedelta, length: timedelta) -> list[dict[str, Any]]:
        master_id = "AAMkMASTER" + uuid.uuid4().hex[:12]
        uid = "040000008200E00074C5B7101A82E008" + uuid.uuid4().hex
        self.masters[master_id] = {"id": master_id, "iCalUId": uid, "type": "seriesMaster"}
        out = []
        for n in range(count):
            start = first + n * every
            out.append(self.add(
                cal_id, subject, start, start + length, id=f"{master_id}-OCC{n}", type="occurrence", seriesMasterId=master_id,
                originalStart=start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), iCalUId="occ-" + uuid.uuid4().hex,
            ))
        return out

    def update(self, cal_id: str, event_id: str, **changes: Any) -> None:
        cal = self.calendars[cal_id]
        event = dict(cal.events[event_id])
        event.update(changes)
        if event.get("type") == "occurrence":
            event["type"] = "exception"
        self._touch(cal, event)

    def find(self, event_id: str) -> tuple[GCal, dict[str, Any]] | None:
        for cal in self.calendars.values():
            if event_id in cal.events:
                return cal, cal.events[event_id]
        return None

    def events_of(self, cal_id: str) -> list[dict[str, Any]]:
        """The calendar's events as stored (for assertions)."""
        return list(self.calendars[cal_id].events.values())

    def patch(self, cal_id: str, event_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Graph's update semantics on a stored event; returns the event as it is now."""
        changes = {k: v for k, v in changes.items() if k not in _READ_ONLY_FIELDS}
        for key in ("start", "end"):
            if isinstance(changes.get(key), dict):
                changes[key] = _stored_time(changes[key])
        self.update(cal_id, event_id, **changes)
        return self.calendars[cal_id].events[event_id]

    def remove(self, cal_id: str, event_id: str) -> None:
        cal = self.calendars[cal_id]
        cal.events.pop(event_id, None)
        self.sequence += 1
        cal.seq[event_id] = self.sequence
        cal.removed.add(event_id)

    def invalidate_delta_tokens(self) -> None:
        self.token_floor = self.sequence + 1

    def fail_next(self, status: int, headers: dict[str, str] | None = None, body: dict[str, Any] | None = None, times: int = 1) -> None:
        self.failures.extend([(status, headers or {}, body or {"error": {"code": "TooManyRequests", "message": "slow down"}})] * times)

    async def notify(self, cal_id: str, *, client_state: str | None = None) -> list[int]:
        statuses = []
        async with httpx.AsyncClient(timeout=10) as client:
            for sub in self.subscriptions.values():
                if sub["calendar"] != cal_id:
                    continue
                body = {"value": [{"subscriptionId": sub["id"], "clientState": client_state if client_state is not None else sub["clientState"],
                                   "changeType": "updated", "resource": sub["resource"], "tenantId": "t"}]}
                r = await client.post(sub["notificationUrl"], json=body, headers=self.notify_headers)
                statuses.append(r.status_code)
        return statuses

    # -- the server ----------------------------------------------------------------------------

    def app(self) -> Litestar:
        fake = self

        def guard(request: Request[Any, Any, Any]) -> Response[Any] | None:
            fake.requests.append(f"{request.method} {request.url.path}?{request.url.query}")
            if fake.failures:
                status, headers, body = fake.failures.pop(0)
                return Response(body, status_code=status, headers=headers)
            if not fake.oauth.valid(request.headers.get("authorization")):
                return Response({"error": {"code": "InvalidAuthenticationToken", "message": "Access token has expired or is not yet valid."}},
                                status_code=401)
            return None

        def enc(payload: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()

        def dec(text: str) -> dict[str, Any]:
            return json.loads(base64.urlsafe_b64decode(text.encode()))

        @get("/me")
        async def me(request: Request[Any, Any, Any]) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            return Response({"mail": fake.mail, "userPrincipalName": fake.mail, "displayName": "Ada"})

        @get("/me/calendars")
        async def calendars(request: Request[Any, Any, Any]) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            return Response({"value": [{"id": c.id, "name": c.name, "hexColor": "#3366ff", "canEdit": c.can_edit} for c in fake.calendars.values()]})

        @get("/me/calendars/{calendar_id:str}/calendarView/delta")
        async def delta(request: Request[Any, Any, Any], calendar_id: str) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            cal = fake.calendars.get(calendar_id)
            if cal is None:
                return Response({"error": {"code": "ErrorItemNotFound", "message": "not found"}}, status_code=404)
            q = request.query_params
            prefer = request.headers.get("prefer", "")
            size = 200
            if "odata.maxpagesize=" in prefer:
                size = int(prefer.split("odata.maxpagesize=", 1)[1].split(",", 1)[0].strip())
            size = min(size, 2)  # small pages, so that paging is exercised
            if q.get("$skiptoken"):
                state = dec(q["$skiptoken"])
            elif q.get("$deltatoken"):
                token = dec(q["$deltatoken"])
                if token["at"] < fake.token_floor:
                    return Response({"error": {"code": "SyncStateNotFound", "message": "The sync state generation is not found."}}, status_code=410)
                state = {**token, "since": token["at"], "at": fake.sequence, "offset": 0}
            else:
                if not q.get("startDateTime") or not q.get("endDateTime"):
                    return Response({"error": {"code": "ErrorInvalidParameter", "message": "startDateTime and endDateTime are required"}}, status_code=400)
                state = {"start": q["startDateTime"], "end": q["endDateTime"], "since": -1, "at": fake.sequence, "offset": 0}
            window_start, window_end = state["start"], state["end"]

            def in_window(event: dict[str, Any]) -> bool:
                start = event["start"]["dateTime"][:19] + "Z"
                end = event["end"]["dateTime"][:19] + "Z"
                return start < window_end and end > window_start

            items: list[dict[str, Any]] = []
            for event_id in sorted(cal.seq, key=lambda i: cal.seq[i]):
                if not (state["since"] < cal.seq[event_id] <= state["at"]):
                    continue
                if event_id in cal.removed:
                    if state["since"] >= 0:
                        items.append({"@odata.type": "#microsoft.graph.event", "id": event_id, "@removed": {"reason": "deleted"}})
                    continue
                event = cal.events[event_id]
                if in_window(event):
                    items.append(event)
            page = items[state["offset"] : state["offset"] + size]
            base = f"{fake.base_url}/me/calendars/{calendar_id}/calendarView/delta"
            body: dict[str, Any] = {"@odata.context": "fake", "value": page}
            if state["offset"] + size < len(items):
                body["@odata.nextLink"] = base + "?" + urlencode({"$skiptoken": enc({**state, "offset": state["offset"] + size})})
            else:
                body["@odata.deltaLink"] = base + "?" + urlencode({"$deltatoken": enc({"start": window_start, "end": window_end, "at": state["at"]})})
            return Response(body)

        @get("/me/events/{event_id:str}")
        async def get_event(request: Request[Any, Any, Any], event_id: str) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            if event_id in fake.masters:
                return Response(fake.masters[event_id])
            for cal in fake.calendars.values():
                if event_id in cal.events:
                    return Response(cal.events[event_id])
            return Response({"error": {"code": "ErrorItemNotFound", "message": "not found"}}, status_code=404)

        @post("/me/calendars/{calendar_id:str}/events", status_code=201)
        async def create(request: Request[Any, Any, Any], calendar_id: str) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            cal = fake.calendars.get(calendar_id)
            if cal is None:
                return Response({"error": {"code": "ErrorItemNotFound", "message": "not found"}}, status_code=404)
            body = await request.json()
            start = datetime.fromisoformat(body["start"]["dateTime"]).replace(tzinfo=UTC)
            end = datetime.fromisoformat(body["end"]["dateTime"]).replace(tzinfo=UTC)
            extra = {k: v for k, v in body.items() if k in ("body", "location", "attendees", "isAllDay")}
            event = fake.add(calendar_id, body.get("subject", ""), start, end, **extra)
            return Response(event, status_code=201)

        async def _update(request: Request[Any, Any, Any], event_id: str, calendar_id: str | None) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            found = fake.find(event_id)
            if found is None or (calendar_id is not None and found[0].id != calendar_id):
                return Response({"error": {"code": "ErrorItemNotFound", "message": "The specified object was not found in the store."}},
                                status_code=404)
            cal, _ = found
            if not cal.can_edit:
                return Response({"error": {"code": "ErrorAccessDenied", "message": "Access is denied."}}, status_code=403)
            changes = await request.json()
            if not isinstance(changes, dict):
                return Response({"error": {"code": "BadRequest", "message": "Empty Payload. JSON content expected."}},
                                status_code=400)
            return Response(fake.patch(cal.id, event_id, changes), status_code=200)

        @patch("/me/events/{event_id:str}")
        async def update_event(request: Request[Any, Any, Any], event_id: str) -> Response[Any]:
            return await _update(request, event_id, None)

        @patch("/me/calendars/{calendar_id:str}/events/{event_id:str}")
        async def update_calendar_event(request: Request[Any, Any, Any], calendar_id: str, event_id: str) -> Response[Any]:
            return await _update(request, event_id, calendar_id)

        @delete("/me/events/{event_id:str}", status_code=200)
        async def remove(request: Request[Any, Any, Any], event_id: str) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            for cal in fake.calendars.values():
                if event_id in cal.events:
                    fake.remove(cal.id, event_id)
                    return Response(b"", status_code=204)
            return Response({"error": {"code": "ErrorItemNotFound", "message": "not found"}}, status_code=404)

        @post("/subscriptions", status_code=201)
        async def subscribe(request: Request[Any, Any, Any]) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            body = await request.json()
            # The handshake: the notification URL must echo the token as text/plain, now.
            token = secrets.token_urlsafe(12)
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.post(body["notificationUrl"], params={"validationToken": token}, headers=fake.notify_headers)
            if r.status_code != 200 or r.text != token or not r.headers.get("content-type", "").startswith("text/plain"):
                return Response({"error": {"code": "InvalidRequest", "message": "Subscription validation request failed."}}, status_code=400)
            sub_id = str(uuid.uuid4())
            calendar = body["resource"].split("/")[2] if body["resource"].startswith("me/calendars/") else ""
            fake.subscriptions[sub_id] = {**body, "id": sub_id, "calendar": calendar}
            return Response({**body, "id": sub_id}, status_code=201)

        @patch("/subscriptions/{sub_id:str}")
        async def renew(request: Request[Any, Any, Any], sub_id: str) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            if sub_id not in fake.subscriptions:
                return Response({"error": {"code": "ResourceNotFound", "message": "not found"}}, status_code=404)
            body = await request.json()
            fake.subscriptions[sub_id]["expirationDateTime"] = body["expirationDateTime"]
            return Response(fake.subscriptions[sub_id])

        @delete("/subscriptions/{sub_id:str}", status_code=200)
        async def unsubscribe(request: Request[Any, Any, Any], sub_id: str) -> Response[Any]:
            if (refused := guard(request)) is not None:
                return refused
            fake.subscriptions.pop(sub_id, None)
            return Response(b"", status_code=204)

        return Litestar([me, calendars, delta, get_event, create, update_event, update_calendar_event, remove, subscribe, renew,
                        unsubscribe], debug=False)
