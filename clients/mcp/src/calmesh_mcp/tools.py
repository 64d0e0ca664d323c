"""The 19 CalMesh tools of the reference, each a thin, typed call of the REST API.

Every tool returns structured content (the API's JSON) and a short text a model reads well, with
times shown in the calendar's timezone next to UTC. API problems come back as tool errors
(``isError``) carrying the problem detail and what to do next.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from .api import ApiError, CalMeshAPI

# --- argument types, each described for the model ------------------------------------------------

CalendarSlug = Annotated[
    str,
    Field(description="Slug of a unified calendar, as calmesh_list_calendars shows it.", examples=["work"]),
]
Instant = Annotated[
    str,
    Field(
        description="An instant in RFC 3339 with an offset, e.g. 2026-03-15T09:00:00Z or 2026-03-15T10:00:00+01:00.",
        examples=["2026-03-15T09:00:00Z"],
    ),
]
DateStr = Annotated[str, Field(description="A calendar date, YYYY-MM-DD.", examples=["2026-03-15"])]
TimeZoneName = Annotated[
    str,
    Field(description="An IANA timezone name.", examples=["Europe/Amsterdam", "America/New_York"]),
]
Limit = Annotated[int, Field(ge=1, le=200, description="How many items per page, 1–200. Default 50.")]
Cursor = Annotated[
    str | None,
    Field(description="The next_cursor of a previous page, to get the page after it. Omit for the first page."),
]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    fn: Callable[..., Awaitable[CallToolResult]]
    scopes: tuple[str, ...]
    read_only: bool
    destructive: bool = False
    idempotent: bool = False

    def annotations(self) -> ToolAnnotations:
        return ToolAnnotations(
            title=self.title,
            read_only_hint=self.read_only,
            destructive_hint=self.destructive,
            idempotent_hint=self.idempotent,
            open_world_hint=True,
        )

    def describe(self, key_scope: str | None) -> str:
        """The description, with a warning when the key's scope cannot use the tool."""
        needs = " or ".join(self.scopes)
        text = f"{self.description} Needs an API key with scope {needs}."
        if key_scope and key_scope not in self.scopes:
            text += f" NOTE: the configured key has scope {key_scope}, so this tool will be refused."
        return text


# --- formatting -----------------------------------------------------------------------------------


def _zone(tz: str | None) -> ZoneInfo | None:
    if not tz:
        return None
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def when(value: str | None, tz: str | None) -> str:
    """`2026-03-15T09:00:00Z` → `Sun 15 Mar 2026 10:00 CET (09:00 UTC)`; dates stay dates."""
    if not value:
        return "?"
    if len(value) == 10:
        try:
            return date.fromisoformat(value).strftime("%a %d %b %Y") + " (all day)"
        except ValueError:
            return value
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    utc = instant.strftime("%H:%M UTC")
    zone = _zone(tz)
    if zone is None:
        return instant.strftime("%a %d %b %Y %H:%M UTC")
    local = instant.astimezone(zone)
    return f"{local.strftime('%a %d %b %Y %H:%M')} {local.tzname()} ({utc})"


def span(start: str | None, end: str | None, tz: str | None) -> str:
    return f"{when(start, tz)} → {when(end, tz)}"


def ok(text: str, data: Any) -> CallToolResult:
    structured = data if isinstance(data, dict) else {"result": data}
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)


_NEXT_STEPS = {
    "insufficient_scope": "Use an API key with the scope named above (create one in the dashboard), or ask the user to.",
    "invalid_api_key": "The configured CALMESH_API_KEY is mistyped or truncated: set the whole key.",
    "api_key_revoked": "The configured key was revoked: create a new key and update CALMESH_API_KEY.",
    "api_key_expired": "The configured key has expired: create a new key and update CALMESH_API_KEY.",
    "not_found": "Check the id or slug: list the resources first (e.g. calmesh_list_calendars).",
    "slot_unavailable": "That slot was just taken or is not offered: call calmesh_get_slots and pick another.",
    "rate_limited": "Too many requests: wait for the Retry-After seconds, then try again.",
    "daily_quota_exceeded": "The plan's daily API quota is used up: wait until tomorrow or upgrade the plan.",
    "plan_limit_reached": "The plan's limit is reached: remove something or upgrade the plan.",
    "poll_closed": "The poll is decided; it takes no more votes.",
    "range_too_long": "Ask for a window of at most 366 days.",
    "read_only_source": "That source is read-only (an iCal feed): pick a writable source_id.",
    "validation_error": "Fix the arguments named in the errors and call again.",
    "api_unreachable": "Check CALMESH_API_URL and the network, then try again.",
}


def tool_error(exc: ApiError, *, key_scope: str | None, needs: tuple[str, ...]) -> CallToolResult:
    problem = dict(exc.problem)
    code = exc.code
    status = f" {exc.status}" if exc.status else ""
    lines = [f"CalMesh API error{status} ({code or 'error'}): {problem.get('detail') or problem.get('title')}"]
    if code == "insufficient_scope":
        required = problem.get("required_scope") or " or ".join(needs)
        have = key_scope or "another scope"
        lines.append(f"This key has scope {have}; this action needs {required}.")
    for err in problem.get("errors") or []:
        if isinstance(err, dict):
            lines.append(f"- {err.get('field')}: {err.get('message')}")
    step = _NEXT_STEPS.get(code)
    if step:
        lines.append(f"Next: {step}")
    if problem.get("retry_after"):
        lines.append(f"Retry after {problem['retry_after']} s.")
    return CallToolResult(
        content=[TextContent(type="text", text="\n".join(lines))],
        structured_content={"error": problem},
        is_error=True,
    )


# --- the tools ----------------------------------------------------------------------------------


class Tools:
    """The tool functions, bound to one API client; `specs()` lists them in the reference's order."""

    def __init__(self, api: CalMeshAPI) -> None:
        self.api = api
        self.key_scope: str | None = None
        self._calendar_tz: dict[str, str] = {}

    async def _tz(self, slug: str) -> str | None:
        if slug not in self._calendar_tz:
            try:
                cal = await self.api.request("GET", ("calendars", slug))
            except ApiError:
                return None
            self._calendar_tz[slug] = cal.get("timezone") or "UTC"
        return self._calendar_tz[slug]

    # Calendars and events -------------------------------------------------------------------------

    async def list_calendars(self) -> CallToolResult:
        data = await self.api.request("GET", ("calendars",), params={"limit": 200})
        items = data.get("data", [])
        for cal in items:
            self._calendar_tz[cal["slug"]] = cal.get("timezone") or "UTC"
        lines = [f"{len(items)} unified calendar(s):"]
        for cal in items:
            sources = ", ".join(s.get("name") or s.get("id", "") for s in cal.get("sources", []))
            lines.append(f"- {cal['slug']}: {cal.get('name')} ({cal.get('timezone')}); sources: {sources or 'none'}")
        return ok("\n".join(lines), data)

    async def get_events(
        self,
        calendar_slug: CalendarSlug,
        start: Instant,
        end: Instant,
        source_id: Annotated[str | None, Field(description="Only events of this source (src_…).")] = None,
        include_cancelled: Annotated[bool, Field(description="Also list cancelled instances.")] = False,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> CallToolResult:
        data = await self.api.request("GET", ("calendars", calendar_slug, "events"),
            params={"start": start, "end": end, "source_id": source_id, "include_cancelled": include_cancelled or None,
                    "limit": limit, "cursor": cursor},
        )
        tz = await self._tz(calendar_slug)
        items = data.get("data", [])
        lines = [f"{len(items)} event(s) in {calendar_slug} ({tz}):"]
        for ev in items:
            flag = "" if ev.get("transparency", "busy") == "busy" else " [free]"
            status = "" if ev.get("status") == "confirmed" else f" [{ev.get('status')}]"
            lines.append(f"- {span(ev.get('start'), ev.get('end'), tz)}: {ev.get('title') or '(no title)'}{flag}{status} "
                         f"id={ev.get('id')}")
        if data.get("next_cursor"):
            lines.append(f"More: call again with cursor={data['next_cursor']}")
        return ok("\n".join(lines), data)

    async def check_availability(
        self,
        calendar_slug: CalendarSlug,
        date: Annotated[DateStr | None, Field(description="A whole day (YYYY-MM-DD) read in tz. Or give start and end.")] = None,
        start: Annotated[Instant | None, Field(description="Window start (RFC 3339), with end, instead of date.")] = None,
        end: Annotated[Instant | None, Field(description="Window end (RFC 3339), with start.")] = None,
        tz: Annotated[TimeZoneName | None, Field(description="Timezone to read date in; default the calendar's.")] = None,
        min_duration: Annotated[int | None, Field(ge=1, le=1440, description="Drop free gaps shorter than this many minutes.")] = None,
        explain: Annotated[bool, Field(description="List the events behind each busy interval.")] = False,
    ) -> CallToolResult:
        data = await self.api.request("GET", ("calendars", calendar_slug, "availability"),
            params={"date": date, "start": start, "end": end, "tz": tz, "min_duration": min_duration,
                    "explain": explain or None},
        )
        zone = tz or data.get("timezone")
        lines = [f"Availability of {calendar_slug} {span(data.get('start'), data.get('end'), zone)}:"]
        lines.append(f"Busy ({len(data.get('busy', []))}):")
        for b in data.get("busy", []):
            lines.append(f"- {span(b['start'], b['end'], zone)}")
            for ev in b.get("events", []) or []:
                lines.append(f"    because of: {ev.get('title') or '(no title)'} ({span(ev.get('start'), ev.get('end'), zone)})")
        lines.append(f"Free ({len(data.get('free', []))}):")
        for f in data.get("free", []):
            lines.append(f"- {span(f['start'], f['end'], zone)}")
        return ok("\n".join(lines), data)

    async def find_conflicts(self, calendar_slug: CalendarSlug, start: Instant, end: Instant) -> CallToolResult:
        data = await self.api.request("GET", ("calendars", calendar_slug, "conflicts"), params={"start": start, "end": end})
        tz = await self._tz(calendar_slug)
        items = data.get("data", []) if isinstance(data, dict) else data
        lines = [f"{len(items)} conflict(s) in {calendar_slug}:"]
        for c in items:
            a, b = c["events"][0], c["events"][1]
            lines.append(f"- {a.get('title') or '(no title)'} × {b.get('title') or '(no title)'}: overlap "
                         f"{span(c.get('overlap_start'), c.get('overlap_end'), tz)}")
        return ok("\n".join(lines), data if isinstance(data, dict) else {"data": data})

    # Bookings ---------------------------------------------------------------------------------------

    async def get_slots(
        self,
        booking_page_slug: Annotated[str, Field(description="Slug of the booking page.", examples=["intro-call"])],
        handle: Annotated[str, Field(description="Handle of the page's owner (the user's public handle).", examples=["ada"])],
        start: Annotated[DateStr, Field(description="First day (YYYY-MM-DD, inclusive), read in tz.")],
        end: Annotated[DateStr, Field(description="Last day (YYYY-MM-DD, inclusive), read in tz.")],
        tz: Annotated[TimeZoneName | None, Field(description="The visitor's timezone; default the page's.")] = None,
    ) -> CallToolResult:
        data = await self.api.request("GET", ("booking-pages", booking_page_slug, "slots"), params={"handle": handle, "start": start, "end": end, "tz": tz}
        )
        zone = tz or data.get("timezone")
        slots = data.get("slots", [])
        lines = [f"{len(slots)} open slot(s) on {booking_page_slug} ({zone}):"]
        lines += [f"- {span(s['start'], s['end'], zone)}  start={s['start']}" for s in slots[:100]]
        if len(slots) > 100:
            lines.append(f"… and {len(slots) - 100} more (see the structured result)")
        return ok("\n".join(lines), data)

    async def create_booking(
        self,
        booking_page_slug: Annotated[str, Field(description="Slug of the booking page.", examples=["intro-call"])],
        handle: Annotated[str, Field(description="Handle of the page's owner.", examples=["ada"])],
        start: Annotated[Instant, Field(description="Start of a slot exactly as calmesh_get_slots returned it.")],
        name: Annotated[str, Field(min_length=1, description="The visitor's name.")],
        email: Annotated[str, Field(description="The visitor's email; the confirmation goes there.", examples=["bob@example.com"])],
        notes: Annotated[str | None, Field(description="Anything the visitor wants the host to know.")] = None,
        timezone: Annotated[TimeZoneName | None, Field(description="The visitor's timezone, for the confirmation.")] = None,
    ) -> CallToolResult:
        body = {"start": start, "name": name, "email": email, "notes": notes, "timezone": timezone}
        data = await self.api.request("POST", ("booking-pages", booking_page_slug, "book"), params={"handle": handle},
            json={k: v for k, v in body.items() if v is not None},
        )
        text = (f"Booked {data.get('id')}: {span(data.get('start'), data.get('end'), timezone)} "
                f"({data.get('status')}). Cancel link: {data.get('cancel_url')}")
        return ok(text, data)

    async def cancel_booking(
        self,
        booking_id: Annotated[str, Field(description="The booking's id (bk_…).", examples=["bk_4f2…"])],
        reason: Annotated[str | None, Field(description="Why, for the visitor's email.")] = None,
    ) -> CallToolResult:
        data = await self.api.request("POST", ("bookings", booking_id, "cancel"), json={"reason": reason} if reason else {})
        return ok(f"Booking {booking_id} is {data.get('status', 'cancelled')}.", data)

    async def list_bookings(
        self,
        status: Annotated[Literal["confirmed", "cancelled"] | None, Field(description="Only bookings in this state.")] = None,
        start: Annotated[Instant | None, Field(description="Only bookings ending after this instant.")] = None,
        end: Annotated[Instant | None, Field(description="Only bookings starting before this instant.")] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> CallToolResult:
        data = await self.api.request("GET", ("bookings",), params={"status": status, "start": start, "end": end, "limit": limit, "cursor": cursor}
        )
        items = data.get("data", [])
        lines = [f"{len(items)} booking(s):"]
        for b in items:
            who = b.get("name") or b.get("visitor", {}).get("name") or ""
            lines.append(f"- {b.get('id')} {b.get('status')}: {span(b.get('start'), b.get('end'), b.get('timezone'))} {who}")
        if data.get("next_cursor"):
            lines.append(f"More: call again with cursor={data['next_cursor']}")
        return ok("\n".join(lines), data)

    # Polls ------------------------------------------------------------------------------------------

    async def create_poll(
        self,
        title: Annotated[str, Field(min_length=1, description="What the meeting is.", examples=["Project kick-off"])],
        duration_minutes: Annotated[int, Field(ge=5, le=1440, description="Length of the meeting in minutes.")],
        options: Annotated[
            list[dict[str, str]],
            Field(min_length=1, description="Candidate times: a list of {start, end} in RFC 3339.",
                  examples=[[{"start": "2026-03-16T09:00:00Z", "end": "2026-03-16T10:00:00Z"}]]),
        ],
        calendar_slug: Annotated[str | None, Field(description="Calendar to check clashes against and to write the decided event to.")] = None,
        deadline: Annotated[Instant | None, Field(description="When voting closes.")] = None,
    ) -> CallToolResult:
        body: dict[str, Any] = {"title": title, "duration_minutes": duration_minutes, "options": options}
        if calendar_slug:
            body["calendar_slug"] = calendar_slug
        if deadline:
            body["deadline"] = deadline
        data = await self.api.request("POST", ("polls",), json=body)
        lines = [f"Poll {data.get('id')} '{data.get('title')}' is {data.get('status')}. Share: {data.get('vote_url')}"]
        lines += [f"- option {o['id']}: {span(o['start'], o['end'], None)}" for o in data.get("options", [])]
        return ok("\n".join(lines), data)

    async def list_polls(self, limit: Limit = 50, cursor: Cursor = None) -> CallToolResult:
        data = await self.api.request("GET", ("polls",), params={"limit": limit, "cursor": cursor})
        items = data.get("data", [])
        lines = [f"{len(items)} poll(s):"]
        lines += [f"- {p.get('id')} '{p.get('title')}' {p.get('status')}, {len(p.get('options', []))} option(s)" for p in items]
        return ok("\n".join(lines), data)

    async def get_poll_overlap(
        self, poll_id: Annotated[str, Field(description="The poll's id (poll_…).")]
    ) -> CallToolResult:
        data = await self.api.request("GET", ("polls", poll_id, "overlap"))
        lines = [f"Poll {poll_id}: best option {data.get('best_option_id')}"]
        for o in data.get("options", []):
            clash = " (clashes with the calendar)" if o.get("calendar_busy") else ""
            lines.append(f"- {o['option_id']} {span(o.get('start'), o.get('end'), None)}: yes {o.get('yes')}, "
                         f"maybe {o.get('maybe')}, no {o.get('no')}{clash}")
        return ok("\n".join(lines), data)

    async def decide_poll(
        self,
        poll_id: Annotated[str, Field(description="The poll's id (poll_…).")],
        option_id: Annotated[str, Field(description="The chosen option (opt_…), e.g. best_option_id from calmesh_get_poll_overlap.")],
    ) -> CallToolResult:
        data = await self.api.request("POST", ("polls", poll_id, "decide"), json={"option_id": option_id})
        return ok(f"Poll {poll_id} decided on {data.get('option_id')}; event {data.get('event_id')} created.", data)

    # Connections and calendars ----------------------------------------------------------------------

    async def start_oauth_connection(
        self,
        provider: Annotated[Literal["google", "microsoft"], Field(description="Which account to connect.")],
        redirect_uri: Annotated[str | None, Field(description="Where to send the user after consent; default the dashboard.")] = None,
    ) -> CallToolResult:
        data = await self.api.request("POST", ("connections", provider), json={"redirect_uri": redirect_uri} if redirect_uri else {})
        text = (f"Connection {data.get('id')} is {data.get('status')}. Ask the user to open this link and approve "
                f"access: {data.get('authorization_url')} — then check with calmesh_check_connection_status.")
        return ok(text, data)

    async def start_credential_connection(
        self,
        provider: Annotated[Literal["icloud", "caldav", "ical"], Field(description="icloud (app password), caldav (any server) or ical (a subscription URL).")],
        url: Annotated[str | None, Field(description="caldav: the server URL; ical: the .ics or webcal:// URL. Not for icloud.")] = None,
        username: Annotated[str | None, Field(description="icloud/caldav: the account name (Apple ID for iCloud).")] = None,
        password: Annotated[str | None, Field(description="caldav: the password; icloud: an app-specific password.")] = None,
    ) -> CallToolResult:
        if provider == "icloud":
            body: dict[str, Any] = {"username": username, "app_password": password}
        elif provider == "caldav":
            body = {"url": url, "username": username, "password": password}
        else:
            body = {"url": url}
        data = await self.api.request("POST", ("connections", provider), json={k: v for k, v in body.items() if v is not None})
        return ok(f"Connection {data.get('id')} ({provider}) is {data.get('status')}; it syncs in the background.", data)

    async def check_connection_status(
        self, connection_id: Annotated[str, Field(description="The connection's id (conn_…).")]
    ) -> CallToolResult:
        data = await self.api.request("GET", ("connections", connection_id))
        cals = ", ".join(c.get("name", c.get("id", "")) for c in data.get("calendars", []))
        text = (f"{data.get('id')} {data.get('provider')} '{data.get('display_name')}': {data.get('status')}; "
                f"last synced {data.get('last_synced_at') or 'never'}"
                + (f"; last error: {data['last_error']}" if data.get("last_error") else "")
                + (f"; calendars: {cals}" if cals else ""))
        return ok(text, data)

    async def list_connections(self) -> CallToolResult:
        data = await self.api.request("GET", ("connections",), params={"limit": 200})
        items = data.get("data", [])
        lines = [f"{len(items)} connection(s):"]
        lines += [f"- {c.get('id')} {c.get('provider')} '{c.get('display_name')}': {c.get('status')}" for c in items]
        return ok("\n".join(lines), data)

    async def remove_connection(
        self, connection_id: Annotated[str, Field(description="The connection's id (conn_…). Its cached events and calendar sources go too.")]
    ) -> CallToolResult:
        await self.api.request("DELETE", ("connections", connection_id))
        return ok(f"Connection {connection_id} removed, with its cached events and its sources.", {"id": connection_id, "removed": True})

    async def create_calendar(
        self,
        slug: Annotated[str, Field(description="Short name used in URLs, unique among your calendars.", examples=["work"])],
        name: Annotated[str, Field(description="Display name.", examples=["Work"])],
        timezone: TimeZoneName,
        sources: Annotated[
            list[dict[str, str]],
            Field(description="Connections to merge: [{connection_id, calendar_id?}]; without calendar_id every calendar of the connection.",
                  examples=[[{"connection_id": "conn_…"}]]),
        ],
    ) -> CallToolResult:
        data = await self.api.request("POST", ("calendars",), json={"slug": slug, "name": name, "timezone": timezone, "sources": sources})
        self._calendar_tz[data["slug"]] = data.get("timezone") or timezone
        names = ", ".join(s.get("name") or s.get("id", "") for s in data.get("sources", []))
        return ok(f"Calendar {data['slug']} created ({data.get('timezone')}) with sources: {names or 'none'}.", data)

    async def manage_calendar(
        self,
        calendar_slug: CalendarSlug,
        action: Annotated[
            Literal["update", "add_source", "remove_source", "delete"],
            Field(description="update: change name/timezone/slug; add_source: merge a connection's calendar; "
                              "remove_source: drop a source; delete: delete the unified calendar (not the connections)."),
        ],
        name: Annotated[str | None, Field(description="update: the new display name.")] = None,
        timezone: Annotated[TimeZoneName | None, Field(description="update: the new timezone.")] = None,
        new_slug: Annotated[str | None, Field(description="update: a new slug.")] = None,
        connection_id: Annotated[str | None, Field(description="add_source: the connection (conn_…).")] = None,
        calendar_id: Annotated[str | None, Field(description="add_source: one calendar of that connection; omit for all.")] = None,
        source_id: Annotated[str | None, Field(description="remove_source: the source (src_…).")] = None,
    ) -> CallToolResult:
        if action == "update":
            body = {k: v for k, v in {"name": name, "timezone": timezone, "slug": new_slug}.items() if v is not None}
            if not body:
                return argument_error("update needs at least one of name, timezone, new_slug")
            data = await self.api.request("PATCH", ("calendars", calendar_slug), json=body)
            self._calendar_tz.pop(calendar_slug, None)
            return ok(f"Calendar {data.get('slug')} updated.", data)
        if action == "add_source":
            if not connection_id:
                return argument_error("add_source needs connection_id")
            body = {"connection_id": connection_id, **({"calendar_id": calendar_id} if calendar_id else {})}
            data = await self.api.request("POST", ("calendars", calendar_slug, "sources"), json=body)
            return ok(f"Source {data.get('id')} added to {calendar_slug}.", data)
        if action == "remove_source":
            if not source_id:
                return argument_error("remove_source needs source_id")
            await self.api.request("DELETE", ("calendars", calendar_slug, "sources", source_id))
            return ok(f"Source {source_id} removed from {calendar_slug}.", {"slug": calendar_slug, "removed_source_id": source_id})
        await self.api.request("DELETE", ("calendars", calendar_slug))
        self._calendar_tz.pop(calendar_slug, None)
        return ok(f"Calendar {calendar_slug} deleted.", {"slug": calendar_slug, "deleted": True})

    def specs(self) -> list[ToolSpec]:
        R, W, B, F = "read", "write", "book", "full"  # noqa: N806
        any_scope = (R, W, B, F)
        return [
            ToolSpec("calmesh_list_calendars", "List calendars", "List all unified calendars with their timezone and sources.", self.list_calendars, any_scope, True, idempotent=True),
            ToolSpec("calmesh_get_events", "Get events", "Get events within a date range from a unified calendar, merged across its sources, sorted, with the source of each.", self.get_events, any_scope, True, idempotent=True),
            ToolSpec("calmesh_check_availability", "Check availability", "Check available time: busy and free intervals of a unified calendar for a day or a window; explain=true says which events make each busy interval.", self.check_availability, any_scope, True, idempotent=True),
            ToolSpec("calmesh_find_conflicts", "Find conflicts", "Find overlapping events from different sources of a unified calendar, with the overlap.", self.find_conflicts, any_scope, True, idempotent=True),
            ToolSpec("calmesh_get_slots", "Get booking slots", "Get available booking slots of a booking page for a range of days.", self.get_slots, ("book", "full"), True, idempotent=True),
            ToolSpec("calmesh_create_booking", "Create booking", "Create a new booking on a booking page for a slot from calmesh_get_slots; the visitor and host get a confirmation email.", self.create_booking, ("book", "full"), False),
            ToolSpec("calmesh_cancel_booking", "Cancel booking", "Cancel a booking: the calendar event is removed and the slot freed; both sides are told.", self.cancel_booking, ("book", "full"), False, destructive=True, idempotent=True),
            ToolSpec("calmesh_list_bookings", "List bookings", "List bookings with pagination, optionally by status and time window.", self.list_bookings, any_scope, True, idempotent=True),
            ToolSpec("calmesh_create_poll", "Create poll", "Create a scheduling poll with candidate times; returns the link to share for voting.", self.create_poll, ("book", "full"), False),
            ToolSpec("calmesh_list_polls", "List polls", "List all polls.", self.list_polls, any_scope, True, idempotent=True),
            ToolSpec("calmesh_get_poll_overlap", "Get poll overlap", "Get participant overlap of a poll: votes per option, who can attend, calendar clashes and the best option.", self.get_poll_overlap, any_scope, True, idempotent=True),
            ToolSpec("calmesh_decide_poll", "Decide poll", "Finalize a poll with the chosen time: the event is created on the poll's calendar and voting closes.", self.decide_poll, ("book", "full"), False),
            ToolSpec("calmesh_start_oauth_connection", "Connect Google or Microsoft", "Connect a Google or Microsoft calendar: returns an authorization link for the user to approve.", self.start_oauth_connection, ("full",), False),
            ToolSpec("calmesh_start_credential_connection", "Connect CalDAV or iCal", "Connect an iCloud or CalDAV calendar with credentials, or an iCal subscription URL.", self.start_credential_connection, ("full",), False),
            ToolSpec("calmesh_check_connection_status", "Check connection status", "Check a connection's sync status, last sync, last error and calendars.", self.check_connection_status, any_scope, True, idempotent=True),
            ToolSpec("calmesh_list_connections", "List connections", "List all calendar connections and their status.", self.list_connections, any_scope, True, idempotent=True),
            ToolSpec("calmesh_remove_connection", "Remove connection", "Remove a connection, its cached events and its sources in every unified calendar.", self.remove_connection, ("full",), False, destructive=True, idempotent=True),
            ToolSpec("calmesh_create_calendar", "Create calendar", "Create a unified calendar that merges sources from your connections.", self.create_calendar, ("full",), False),
            ToolSpec("calmesh_manage_calendar", "Manage calendar", "Update a unified calendar (name, timezone, slug), add or remove sources, or delete it.", self.manage_calendar, ("full",), False, destructive=True),
        ]


def argument_error(message: str) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=f"Invalid arguments: {message}.")],
        structured_content={"error": {"code": "validation_error", "detail": message}},
        is_error=True,
    )
