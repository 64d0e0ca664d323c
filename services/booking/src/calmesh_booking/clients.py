"""The internal APIs booking calls: connections (unified calendars) and sync (event writes).

See docs/contracts.md. Calendars are cached briefly in memory: a slot request must not pay a hop to
connections every time, and a page keeps working from its last known calendar when connections is
away for a moment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import msgspec

from calmesh_common.events import decode_envelope
from calmesh_common.idempotency import HEADER as IDEMPOTENCY_HEADER
from calmesh_common.service import SECRET_HEADER
from calmesh_common.settings import Settings
from calmesh_common.timefmt import rfc3339
from calmesh_common.tracing import inject_headers

from .domain import RuleError, zone


class CalendarNotFound(Exception):
    """The user has no unified calendar with that slug."""


class DependencyUnavailable(Exception):
    """Another service did not answer (or answered 5xx): worth retrying later."""


class PermanentFailure(Exception):
    """Another service refused for good (4xx): retrying will not help. `code` is the problem's code."""

    def __init__(self, status: int, detail: str, code: str = "") -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.code = code


#: Sync's refusals of an event write that no retry can change (docs/contracts.md): the provider
#: refused the connection's credentials (401/403), the calendar is gone at the provider (404), the
#: connection is gone, or the source cannot be written.
FOR_GOOD = {"connection_unavailable": "credentials_refused", "calendar_gone": "calendar_gone",
            "not_found": "calendar_gone", "read_only_source": "no_writable_source"}


@dataclass(frozen=True, slots=True)
class CalendarSource:
    id: str
    connection_id: str
    calendar_id: str
    name: str
    sort_order: int
    read_only: bool


@dataclass(frozen=True, slots=True)
class CalendarInfo:
    slug: str
    name: str
    timezone: str
    user_id: str
    sources: tuple[CalendarSource, ...]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CalendarInfo:
        sources = tuple(
            CalendarSource(
                id=str(s.get("id", "")),
                connection_id=str(s["connection_id"]),
                calendar_id=str(s["calendar_id"]),
                name=str(s.get("name") or ""),
                sort_order=int(s.get("sort_order") or 0),
                read_only=bool(s.get("read_only", False)),
            )
            for s in doc.get("sources", [])
        )
        return cls(
            slug=str(doc["slug"]),
            name=str(doc.get("name") or doc["slug"]),
            timezone=str(doc.get("timezone") or "UTC"),
            user_id=str(doc.get("user_id") or ""),
            sources=tuple(sorted(sources, key=lambda s: (s.sort_order, s.id))),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "name": self.name,
            "timezone": self.timezone,
            "user_id": self.user_id,
            "sources": [
                {"id": s.id, "connection_id": s.connection_id, "calendar_id": s.calendar_id, "name": s.name,
                 "sort_order": s.sort_order, "read_only": s.read_only}
                for s in self.sources
            ],
        }

    @property
    def source_keys(self) -> list[tuple[str, str]]:
        return [(s.connection_id, s.calendar_id) for s in self.sources]

    @property
    def tz(self) -> Any:
        try:
            return zone(self.timezone)
        except RuleError:
            return zone("UTC")

    def write_target(self) -> CalendarSource | None:
        """The default write target: the first writable source in sort order."""
        return next((s for s in self.sources if not s.read_only), None)


def _headers(settings: Settings) -> dict[str, str]:
    return inject_headers({SECRET_HEADER: settings.internal_secret})


def _detail(response: httpx.Response) -> str:
    try:
        doc = response.json()
        return str(doc.get("detail") or doc.get("code") or response.text[:200])
    except ValueError:
        return response.text[:200]


def _code(response: httpx.Response) -> str:
    try:
        doc = response.json()
        return str(doc.get("code") or "") if isinstance(doc, dict) else ""
    except ValueError:
        return ""


def _refusal(response: httpx.Response) -> Exception:
    """A 4xx that a retry cannot change is a PermanentFailure (so is sync's 409
    `connection_unavailable`: the provider refused the credentials); anything else is worth retrying."""
    code = _code(response)
    status = response.status_code
    if code in FOR_GOOD or (400 <= status < 500 and status not in (408, 409, 425, 429)):
        return PermanentFailure(status, _detail(response), code)
    return DependencyUnavailable(f"sync answered {status}: {_detail(response)}")


#: Where the connections context publishes; every replica listens (no queue group).
CONNECTIONS_SUBJECT = "calmesh.connections.>"
#: Connections events that never change a calendar's sources or timezone.
_IRRELEVANT = frozenset({"connection.synced.v1", "connection.sync_requested.v1",
                         "connection.credentials_refreshed.v1", "connection.errored.v1", "connection.created.v1"})


class Calendars:
    """Unified calendars from connections' internal API, cached for at most `ttl` seconds.

    A change to a user's calendars or connections (an event of the connections context, heard by
    every replica on a plain subscription) drops that user's entries at once; the time-to-live
    bounds what a missed event can leave behind."""

    def __init__(self, http: httpx.AsyncClient, settings: Settings, ttl: float = 30.0) -> None:
        self.http = http
        self.settings = settings
        self.ttl = ttl
        self._cache: dict[tuple[str, str], tuple[float, CalendarInfo]] = {}
        self._generation: dict[str, int] = {}
        self._sub: Any = None

    async def subscribe(self, nc: Any) -> None:
        self._sub = await nc.subscribe(CONNECTIONS_SUBJECT, cb=self._on_message)

    async def _on_message(self, msg: Any) -> None:
        self.apply_event(msg.data)

    def apply_event(self, data: bytes) -> None:
        """Forget what a connections event may have changed: that user's calendars (all if unsure)."""
        try:
            envelope = decode_envelope(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self._cache.clear()
            return
        if envelope.type in _IRRELEVANT:
            return
        user_id = envelope.user_id
        if not user_id:
            self._cache.clear()
            return
        self._generation[user_id] = self._generation.get(user_id, 0) + 1
        for key in [k for k in self._cache if k[0] == user_id]:
            del self._cache[key]

    async def get(self, user_id: str, slug: str, *, fresh: bool = False) -> CalendarInfo:
        """The calendar `slug` of `user_id`. Raises CalendarNotFound, or DependencyUnavailable when
        connections cannot be asked (a cached copy, even stale, is returned instead if there is one)."""
        key = (user_id, slug)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached and not fresh and cached[0] > now:
            return cached[1]
        generation = self._generation.get(user_id, 0)
        try:
            base = self.settings.service_url("connections")
            response = await self.http.get(
                f"{base}/internal/calendars/{slug}", params={"user_id": user_id}, headers=_headers(self.settings),
                timeout=5.0,
            )
        except (httpx.HTTPError, ValueError) as exc:
            if cached and not fresh:
                return cached[1]
            raise DependencyUnavailable(f"connections: {exc!r}") from exc
        if response.status_code == 404:
            self._cache.pop(key, None)
            raise CalendarNotFound(slug)
        if response.status_code != 200:
            if cached and not fresh:
                return cached[1]
            raise DependencyUnavailable(f"connections answered {response.status_code}: {_detail(response)}")
        info = CalendarInfo.from_json(response.json())
        if self._generation.get(user_id, 0) == generation:  # no change was announced meanwhile
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[key] = (now + self.ttl, info)
        return info

    def forget(self, user_id: str, slug: str) -> None:
        self._cache.pop((user_id, slug), None)


class SyncEvents:
    """Event writes through sync's internal API (written on the provider and in the projection)."""

    def __init__(self, http: httpx.AsyncClient, settings: Settings) -> None:
        self.http = http
        self.settings = settings

    async def create(
        self,
        *,
        user_id: str,
        connection_id: str,
        calendar_id: str,
        title: str,
        start: datetime,
        end: datetime,
        description: str = "",
        location: str = "",
        attendees: list[str] | None = None,
        timezone: str | None = None,
        booking_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Create the event; returns sync's event (its `id` is the projection's evt_ id). With
        `booking_id` the event's UID derives from the booking and its row is the booking's
        reservation; with `idempotency_key` a repeat gets the first answer."""
        body: dict[str, Any] = {
            "user_id": user_id,
            "connection_id": connection_id,
            "calendar_id": calendar_id,
            "title": title,
            "start": rfc3339(start),
            "end": rfc3339(end),
        }
        if description:
            body["description"] = description
        if location:
            body["location"] = location
        if attendees:
            body["attendees"] = attendees
        if timezone:
            body["timezone"] = timezone
        if booking_id:
            body["booking_id"] = booking_id
        headers = _headers(self.settings)
        if idempotency_key:
            headers[IDEMPOTENCY_HEADER] = idempotency_key[:255]
        try:
            response = await self.http.post(
                f"{self.settings.service_url('sync')}/internal/events", json=body, headers=headers, timeout=30.0,
            )
        except httpx.HTTPError as exc:
            raise DependencyUnavailable(f"sync: {exc!r}") from exc
        if response.status_code in (200, 201):
            return dict(response.json())
        raise _refusal(response)

    async def delete(self, *, user_id: str, event_id: str, idempotency_key: str) -> None:
        """Delete the event on the provider and from the projection; one already gone is fine. A
        repeat with the same key is a no-op answering the first result."""
        response = await self._call("DELETE", f"/internal/events/{event_id}", params={"user_id": user_id},
                                    timeout=30.0, key=idempotency_key)
        if response.status_code in (200, 204, 404, 410):
            return
        raise _refusal(response)


    # --- reservations: a booking's or hold's time in the projection (docs/contracts.md) ------------

    async def reserve(self, reservation_id: str, *, user_id: str, connection_id: str, calendar_id: str, title: str,
                      start: datetime, end: datetime, idempotency_key: str, description: str = "",
                      replaces: list[str] | None = None) -> dict[str, Any]:
        """Enter (or move) the reservation's row in the projection; a repeat with the same key gets
        the first answer and changes nothing."""
        body: dict[str, Any] = {"user_id": user_id, "connection_id": connection_id, "calendar_id": calendar_id,
                                "title": title, "start": rfc3339(start), "end": rfc3339(end)}
        if description:
            body["description"] = description
        if replaces:
            body["replaces"] = replaces
        response = await self._call("PUT", f"/internal/reservations/{reservation_id}", json=body, key=idempotency_key)
        if response.status_code in (200, 201):
            return dict(response.json())
        raise self._failure(response)

    async def release(self, reservation_id: str, *, user_id: str, idempotency_key: str) -> None:
        """Free the reservation's time at once (a repeat is a no-op): its row goes, or, when a
        provider event filled it in, is marked cancelled until that event is deleted."""
        params = {"user_id": user_id}
        response = await self._call("DELETE", f"/internal/reservations/{reservation_id}", params=params,
                                    key=idempotency_key)
        if response.status_code in (200, 204, 404):
            return
        raise self._failure(response)

    async def reservation(self, reservation_id: str, *, user_id: str) -> dict[str, Any] | None:
        """The reservation's row, or None when there is none."""
        response = await self._call("GET", f"/internal/reservations/{reservation_id}", params={"user_id": user_id})
        if response.status_code == 200:
            return dict(response.json())
        if response.status_code == 404:
            return None
        raise self._failure(response)

    async def move(self, *, user_id: str, event_id: str, start: datetime, end: datetime, idempotency_key: str,
                   title: str | None = None) -> dict[str, Any] | None:
        """Move the provider event in place (same UID); None when the event is gone. A repeat with
        the same key moves nothing again."""
        body: dict[str, Any] = {"user_id": user_id, "start": rfc3339(start), "end": rfc3339(end)}
        if title is not None:
            body["title"] = title
        response = await self._call("PATCH", f"/internal/events/{event_id}", json=body, timeout=30.0,
                                    key=idempotency_key)
        if response.status_code == 200:
            return dict(response.json())
        if response.status_code == 404:
            return None
        raise self._failure(response)

    async def _call(self, method: str, path: str, *, timeout: float = 10.0, key: str | None = None,
                    **kwargs: Any) -> httpx.Response:
        """One call of sync's internal API; `key` is its Idempotency-Key (derived from the step the
        caller takes, so a retry or a redelivery repeats it)."""
        headers = _headers(self.settings)
        if key:
            headers[IDEMPOTENCY_HEADER] = key[:255]
        try:
            return await self.http.request(method, f"{self.settings.service_url('sync')}{path}",
                                           headers=headers, timeout=timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise DependencyUnavailable(f"sync: {exc!r}") from exc

    @staticmethod
    def _failure(response: httpx.Response) -> Exception:
        return _refusal(response)
