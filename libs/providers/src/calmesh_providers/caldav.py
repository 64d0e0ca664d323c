"""CalDAV (RFC 4791) for iCloud and any server, on caldav's async client (``caldav.aio``).

caldav builds the WebDAV requests (the REPORT bodies too, from its element builders, every value
XML-escaped by lxml: no XML is written by hand) and parses the multistatus answers; the bytes travel
through CalMesh's GuardedClient (the only way to reach a user-given URL): ``GuardedDAVClient`` swaps
the client's HTTP session for one that calls ``GuardedClient.fetch``, so every request, redirect
included, is held to the address rules and the size and time caps. Credentials go as HTTP Basic
(what iCloud and most servers take).

Incremental sync uses ``sync-collection`` (RFC 6578) where the server answers it, else ETags from a
Depth-1 PROPFIND; the collection's sync-token or CTag is checked first, so an unchanged calendar
costs one request.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from caldav.aio import AsyncDAVClient
from caldav.elements import cdav, dav
from caldav.elements.base import BaseElement
from caldav.lib import error as dav_error
from lxml import etree

from calmesh_common.guarded import FetchError, GuardedClient
from calmesh_common.retryafter import parse_retry_after

from . import AuthError, NotFoundError, PreconditionFailed, SourceError, SyncTokenExpired, TransientError
from .http import fetch_failure

DAV = "{DAV:}"
CALDAV = "{urn:ietf:params:xml:ns:caldav}"
CS = "{http://calendarserver.org/ns/}"
APPLE = "{http://apple.com/ns/ical/}"

_LIST_PROPS = [
    f"{DAV}resourcetype",
    f"{DAV}displayname",
    f"{APPLE}calendar-color",
    f"{CS}getctag",
    f"{DAV}sync-token",
    f"{CALDAV}supported-calendar-component-set",
    f"{DAV}current-user-privilege-set",
]

#: Listing calendars without their sync-token / CTag: a server may have to look at every object of
#: a collection to give those, and the sync asks the collection itself (sync-collection) anyway.
_LISTING_PROPS = [
    f"{DAV}resourcetype",
    f"{DAV}displayname",
    f"{APPLE}calendar-color",
    f"{CALDAV}supported-calendar-component-set",
    f"{DAV}current-user-privilege-set",
]

MULTIGET_CHUNK = 200


class _Response:
    """What caldav reads from an HTTP response, built from a GuardedClient FetchResult."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body
        self.text = body.decode("utf-8", "replace")
        self.reason = httpx.codes.get_reason_phrase(status)


class _GuardedSession:
    """The session caldav's async client talks to, sending everything through GuardedClient."""

    def __init__(self, guarded: GuardedClient) -> None:
        self.guarded = guarded

    async def request(
        self, method: str, url: str, data: bytes | str | None = None, headers: Mapping[str, str] | None = None, **_: Any
    ) -> _Response:
        body = data.encode() if isinstance(data, str) else data
        result = await self.guarded.fetch(url, method=method, headers=dict(headers or {}), content=body)
        return _Response(result.status, result.headers, result.body)

    async def close(self) -> None:  # the GuardedClient belongs to the worker
        return None


class GuardedDAVClient(AsyncDAVClient):
    """caldav's AsyncDAVClient whose requests go through GuardedClient."""

    def __init__(self, guarded: GuardedClient, **kwargs: Any) -> None:
        self._guarded = guarded
        super().__init__(**kwargs)

    def _create_session(self) -> None:
        self.session = _GuardedSession(self._guarded)


@dataclass(frozen=True)
class DavCalendar:
    url: str
    name: str
    color: str | None
    read_only: bool
    ctag: str | None
    sync_token: str | None


@dataclass(frozen=True)
class DavObject:
    href: str
    etag: str | None
    data: str


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _color(value: Any) -> str | None:
    if not isinstance(value, str) or not value.startswith("#"):
        return None
    return value[:7]  # Apple sends #RRGGBBAA


def _is_calendar(props: Mapping[str, Any]) -> bool:
    kinds = props.get(f"{DAV}resourcetype") or []
    if isinstance(kinds, str):
        kinds = [kinds]
    return f"{CALDAV}calendar" in kinds


def _holds_events(props: Mapping[str, Any]) -> bool:
    components = props.get(f"{CALDAV}supported-calendar-component-set")
    if not components:
        return True  # a server that does not say supports events
    if isinstance(components, str):
        components = [components]
    return any("VEVENT" in str(c).upper() for c in components)


def _read_only(props: Mapping[str, Any]) -> bool:
    privileges = props.get(f"{DAV}current-user-privilege-set")
    if not privileges:
        return False
    text = " ".join(map(str, privileges if isinstance(privileges, list) else [privileges])).lower()
    return not any(word in text for word in ("write", "all", "bind"))


class CalDAVClient:
    """One account on one CalDAV server."""

    def __init__(self, guarded: GuardedClient, url: str, username: str, password: str) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.guarded = guarded
        self.client = GuardedDAVClient(
            guarded,
            url=self.url,
            headers={"Authorization": _basic(username, password)},
            enable_rfc6764=False,
            rate_limit_handle=False,
        )

    async def aclose(self) -> None:
        await self.client.close()

    # --- plumbing ----------------------------------------------------------------------------

    def _abs(self, href: str) -> str:
        return urljoin(self.url, href)

    async def _call(self, coro: Any, what: str) -> Any:
        try:
            return await coro
        except FetchError as exc:
            raise fetch_failure(exc, f"the CalDAV server could not be reached ({what})") from None
        except dav_error.AuthorizationError:
            raise AuthError("the CalDAV server refused the username or password") from None
        except dav_error.RateLimitError as exc:
            raise TransientError("the CalDAV server asks to slow down", getattr(exc, "retry_after_seconds", None)) from None
        except dav_error.DAVError as exc:
            raise TransientError(f"the CalDAV server failed ({what}): {str(exc)[:160]}") from None

    @staticmethod
    def _check(response: Any, what: str) -> None:
        status = response.status
        if status in (401, 403):
            raise AuthError("the CalDAV server refused the username or password")
        if status == 404:
            raise NotFoundError(f"the CalDAV server has no such resource ({what})")
        if status == 412:
            raise PreconditionFailed(f"the CalDAV object changed meanwhile ({what})")
        if status == 429 or status >= 500:
            retry = parse_retry_after(response.headers.get("Retry-After") if response.headers else None)
            raise TransientError(f"the CalDAV server answered {status} ({what})", retry)
        if status >= 400:
            raise SourceError(f"the CalDAV server answered {status} to {what}")

    async def _propfind(self, url: str, props: list[str], depth: int) -> Any:
        response = await self._call(self.client.propfind(url, props=props, depth=depth), "PROPFIND")
        self._check(response, "PROPFIND")
        return response

    # --- discovery -----------------------------------------------------------------------------

    async def discover(self) -> list[DavCalendar]:
        """The event calendars of the account (the URL may also be one calendar's own URL)."""
        own = await self._propfind(self.url, _LISTING_PROPS + [f"{DAV}current-user-principal"], 0)
        first = own.results[0] if own.results else None
        if first is not None and _is_calendar(first.properties):
            return [self._calendar(self.url, first.properties)]
        principal = (first.properties.get(f"{DAV}current-user-principal") if first else None) or self.url
        home_resp = await self._propfind(self._abs(str(principal)), [f"{CALDAV}calendar-home-set"], 0)
        homes = [r.properties.get(f"{CALDAV}calendar-home-set") for r in home_resp.results or []]
        home = next((h for h in homes if h), None)
        if not home:
            raise SourceError("this server did not name a calendar home: is it a CalDAV server, and is the URL right?")
        listing = await self._propfind(self._abs(str(home)), _LISTING_PROPS, 1)
        calendars = []
        for result in listing.results or []:
            if result.status == 200 and _is_calendar(result.properties) and _holds_events(result.properties):
                calendars.append(self._calendar(self._abs(result.href), result.properties))
        return calendars

    @staticmethod
    def _calendar(url: str, props: Mapping[str, Any]) -> DavCalendar:
        name = props.get(f"{DAV}displayname") or urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or "Calendar"
        return DavCalendar(
            url=url,
            name=str(name),
            color=_color(props.get(f"{APPLE}calendar-color")),
            read_only=_read_only(props),
            ctag=props.get(f"{CS}getctag"),
            sync_token=props.get(f"{DAV}sync-token"),
        )

    async def state(self, calendar_url: str) -> DavCalendar:
        """The collection's current sync-token and CTag (one PROPFIND, Depth 0)."""
        response = await self._propfind(calendar_url, _LIST_PROPS, 0)
        if not response.results:
            raise NotFoundError("the calendar is gone from the CalDAV server")
        return self._calendar(calendar_url, response.results[0].properties)

    # --- reading -------------------------------------------------------------------------------

    async def changes_since(self, calendar_url: str, sync_token: str | None) -> tuple[dict[str, str | None], list[str], str | None]:
        """RFC 6578 sync-collection: ({href: etag} changed, [href] deleted, new token).

        Raises SyncTokenExpired when the server no longer knows `sync_token`, and SourceError
        (caught by the caller, which falls back to ETags) when it does not do sync-collection."""
        changed: dict[str, str | None] = {}
        deleted: list[str] = []
        token = sync_token
        for _ in range(100):  # a truncated answer (RFC 6578 3.6) is continued from its token
            try:
                # caldav types the body as str, but sends bytes as they are (to_wire).
                response = await self._call(self.client.report(calendar_url, sync_collection_body(token), depth=None),  # type: ignore[arg-type]
                                            "sync-collection")
            except AuthError:
                # caldav raises on a 403, which is also how servers refuse a stale token
                # (DAV:valid-sync-token); the PROPFIND just before passed the same credentials.
                if token:
                    raise SyncTokenExpired("the CalDAV sync token expired") from None
                raise
            if response.status in (403, 409) and token:
                raise SyncTokenExpired("the CalDAV sync token expired")
            if response.status in (400, 403, 405, 501):
                raise SourceError(f"sync-collection is not supported here ({response.status})")
            self._check(response, "sync-collection")
            parsed = response.parse_sync_collection()
            for item in parsed.changed:
                if item.href.rstrip("/") == urlsplit(calendar_url).path.rstrip("/"):
                    continue
                changed[self._abs(item.href)] = item.etag
            for href in parsed.deleted:
                deleted.append(self._abs(href))
                changed.pop(self._abs(href), None)
            token = parsed.sync_token or token
            if not parsed.truncated:
                break
        return changed, deleted, token

    async def etags(self, calendar_url: str) -> dict[str, str | None]:
        """Every object's ETag (Depth-1 PROPFIND): the fallback when sync-collection is missing."""
        response = await self._propfind(calendar_url, [f"{DAV}getetag", f"{DAV}resourcetype"], 1)
        base = urlsplit(calendar_url).path.rstrip("/")
        found = {}
        for result in response.results or []:
            if result.href.rstrip("/") == base or result.status != 200:
                continue
            found[self._abs(result.href)] = result.properties.get(f"{DAV}getetag")
        return found

    async def fetch(self, calendar_url: str, hrefs: list[str]) -> list[DavObject]:
        """The calendar data of `hrefs` (calendar-multiget in chunks)."""
        objects: list[DavObject] = []
        for i in range(0, len(hrefs), MULTIGET_CHUNK):
            chunk = hrefs[i : i + MULTIGET_CHUNK]
            body = multiget_body([urlsplit(h).path for h in chunk])
            # caldav types the body as str, but sends bytes as they are (to_wire).
            response = await self._call(self.client.report(calendar_url, body, depth=1), "calendar-multiget")  # type: ignore[arg-type]
            self._check(response, "calendar-multiget")
            for result in response.parse_calendar_query():
                if result.status == 200 and result.calendar_data:
                    objects.append(DavObject(self._abs(result.href), result.etag, result.calendar_data))
        return objects

    # --- writing -------------------------------------------------------------------------------

    async def put(self, href: str, data: str, *, etag: str | None = None) -> str | None:
        """Create (If-None-Match: *) or replace (If-Match: etag) an object; returns its new ETag."""
        headers = {"Content-Type": "text/calendar; charset=utf-8"}
        if etag:
            headers["If-Match"] = etag
        else:
            headers["If-None-Match"] = "*"
        response = await self._call(self.client.put(href, data, headers), "PUT")
        if response.status == 409 and not etag:
            # RFC 4918 9.7.1: a PUT whose parent collection does not exist is a 409.
            raise NotFoundError("the calendar is gone from the CalDAV server (PUT answered 409)")
        self._check(response, "PUT")
        return response.headers.get("ETag") if response.headers else None

    async def delete(self, href: str, etag: str | None) -> None:
        """Delete an object, only if it is still at `etag` (If-Match); gone already is fine."""
        headers = {"If-Match": etag} if etag else {}
        response = await self._call(self.client.delete(href, headers), "DELETE")
        if response.status in (404, 410):
            return
        self._check(response, "DELETE")

    async def get(self, href: str) -> DavObject:
        response = await self._call(self.client.request(href, "GET"), "GET")
        self._check(response, "GET")
        raw = response._raw_body or (response._raw if isinstance(response._raw, bytes) else b"")  # noqa: SLF001
        return DavObject(href, response.headers.get("ETag"), raw.decode("utf-8", "replace"))


def _xml(element: BaseElement) -> bytes:
    return etree.tostring(element.xmlelement(), encoding="utf-8", xml_declaration=True)


def sync_collection_body(token: str | None) -> bytes:
    """The RFC 6578 sync-collection REPORT asking what changed since `token` (None: everything),
    ETags only: built with caldav's elements, so the token is XML-escaped whatever it holds."""
    return _xml(dav.SyncCollection() + [
        dav.SyncToken(value=token or ""), dav.SyncLevel(value="1"), dav.Prop() + dav.GetEtag()])


def multiget_body(hrefs: list[str]) -> bytes:
    """The RFC 4791 calendar-multiget REPORT for `hrefs` (their ETags and calendar data)."""
    return _xml(cdav.CalendarMultiGet() + [
        dav.Prop() + [dav.GetEtag(), cdav.CalendarData()], *(dav.Href(value=h) for h in hrefs)])


def content_tag(data: str) -> str:
    """A digest of an object's data, for servers that send no ETag."""
    return hashlib.sha256(data.encode()).hexdigest()[:32]
