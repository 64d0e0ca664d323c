"""The 19 CalMesh tools of the reference, defined once.

Each `Tool` holds everything every face needs: its name, title, description, input schema (JSON
Schema), MCP annotations, the key scopes that may use it, and its REST mapping — `request(args)`,
a pure function from the (validated) arguments to one API call — plus `render`, which turns the
API's answer into a short text a model reads well (times in the calendar's timezone with UTC
beside). The MCP servers, `GET /api/v1/tools` and `POST /api/v1/tools/{name}/call` are all made
from this table; nothing about a tool is written anywhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import schema as s

READ, WRITE, BOOK, FULL = "read", "write", "book", "full"
ANY_SCOPE = (READ, WRITE, BOOK, FULL)
BOOKING = (BOOK, FULL)
ONLY_FULL = (FULL,)


@dataclass(frozen=True)
class ApiCall:
    """One request of the REST API: the path as segments (each is quoted when the URL is made)."""

    method: str
    path: tuple[str, ...]
    params: Mapping[str, Any] | None = None
    json: Any = None


class ArgumentError(Exception):
    """Arguments that pass the schema but do not make sense together (e.g. update with nothing)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Context(Protocol):
    """What `render` may ask for: the timezone of a calendar (fetched once per executor), and for an
    incomplete answer the calendar and connection documents that say which source failed and why."""

    async def calendar_timezone(self, slug: str) -> str | None: ...

    def remember_timezone(self, slug: str, tz: str | None) -> None: ...

    async def calendar(self, slug: str) -> dict[str, Any] | None: ...

    async def connection(self, connection_id: str) -> dict[str, Any] | None: ...


Render = Callable[[Context, dict[str, Any], Any], Awaitable[tuple[str, Any]]]


@dataclass(frozen=True)
class Tool:
    name: str
    title: str
    description: str
    scopes: tuple[str, ...]
    input_schema: dict[str, Any]
    request: Callable[[dict[str, Any]], ApiCall]
    render: Render
    read_only: bool
    destructive: bool = False
    idempotent: bool = False

    def describe(self, key_scope: str | None) -> str:
        """The description, naming the scopes it needs, and warning when the key's scope lacks them."""
        text = f"{self.description} Needs an API key with scope {' or '.join(self.scopes)}."
        if key_scope and key_scope not in self.scopes:
            text += f" NOTE: the configured key has scope {key_scope}, so this tool will be refused."
        return text

    def annotations(self) -> dict[str, Any]:
        return {"title": self.title, "readOnlyHint": self.read_only, "destructiveHint": self.destructive,
                "idempotentHint": self.idempotent, "openWorldHint": True}


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
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    utc = moment.strftime("%H:%M UTC")
    zone = _zone(tz)
    if zone is None:
        return moment.strftime("%a %d %b %Y %H:%M UTC")
    local = moment.astimezone(zone)
    return f"{local.strftime('%a %d %b %Y %H:%M')} {local.tzname()} ({utc})"


def span(start: str | None, end: str | None, tz: str | None) -> str:
    return f"{when(start, tz)} → {when(end, tz)}"


def _items(data: Any) -> list[dict[str, Any]]:
    return list(data.get("data", [])) if isinstance(data, dict) else list(data or [])


def _more(data: Any) -> list[str]:
    cursor = data.get("next_cursor") if isinstance(data, dict) else None
    return [f"More: call again with cursor={cursor}"] if cursor else []


def _answers(items: Any) -> dict[str, Any] | None:
    """The tool's answer items ({question_id, value | checked}) as the book body's `answers`."""
    if not items:
        return None
    return {i["question_id"]: i["checked"] if "checked" in i else i.get("value") for i in items}


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# --- freshness ------------------------------------------------------------------------------------
# docs/api-guide.md, Freshness: an answer over a source whose connection is not active, or never synced, says
# `complete: false`. A model must not read such an answer as "free", so the text opens with a line
# that says so and names each source that could not be checked, with its status and last error
# (looked up only then: the answer carries ids, the calendar and connection documents the words).


def _not_known(status: str | None, last_synced_at: str | None) -> bool:
    return status != "active" or not last_synced_at


def _source_words(slug: str, source: Mapping[str, Any] | None, source_id: str | None, connection_id: str | None,
                  connection: Mapping[str, Any] | None, status: str | None, last_synced_at: str | None) -> str:
    name = (source or {}).get("name")
    label = f"'{name}'" if name else f"source {source_id or '?'}"
    conn = connection or {}
    kind = f"{conn['provider']} connection" if conn.get("provider") else "connection"
    facts = [f"status {status or 'unknown'}"]
    if conn.get("last_error"):
        facts.append(f"last error: {conn['last_error']}")
    facts.append(f"last synced {last_synced_at or 'never'}")
    return f"{label} of calendar {slug} ({kind} {connection_id or '?'}: {'; '.join(facts)})"


def _headline(failed: list[str], consequence: str) -> str:
    if not failed:
        return ("INCOMPLETE ANSWER: some sources were not synced when this was answered — "
                f"{consequence.format(its='their')}.")
    return (f"INCOMPLETE ANSWER: could not check {'; '.join(failed)} — "
            f"{consequence.format(its='its' if len(failed) == 1 else 'their')}.")


FREE_CONSEQUENCE = "do not treat {its} time as free"
EVENTS_CONSEQUENCE = "{its} events may be missing; do not treat {its} time as free"


async def _incomplete(ctx: Context, slug: str, data: Any, consequence: str = FREE_CONSEQUENCE) -> list[str]:
    """The opening line of a one-calendar answer with `complete: false` (else nothing), naming the
    sources the answer lists as not known."""
    if not isinstance(data, dict) or data.get("complete") is not False:
        return []
    cal = await ctx.calendar(slug)
    by_id = {src.get("id"): src for src in (cal or {}).get("sources", []) or []}
    failed = []
    for src in data.get("sources") or []:
        if not _not_known(src.get("status"), src.get("last_synced_at")):
            continue
        conn_id = src.get("connection_id")
        conn = await ctx.connection(conn_id) if conn_id else None
        failed.append(_source_words(slug, by_id.get(src.get("id")), src.get("id"), conn_id, conn,
                                    src.get("status"), src.get("last_synced_at")))
    return [_headline(failed, consequence)]


async def _incomplete_calendars(ctx: Context, slugs: list[str], data: Any) -> list[str]:
    """The opening line of a find-a-time answer with `complete: false`: that answer names no
    sources, so each calendar's sources are looked up with their connections' state."""
    if not isinstance(data, dict) or data.get("complete") is not False:
        return []
    failed = []
    for slug in slugs:
        cal = await ctx.calendar(slug)
        if cal is None:
            failed.append(f"calendar {slug} (it could not be looked up)")
            continue
        for src in cal.get("sources", []) or []:
            conn_id = src.get("connection_id")
            conn = await ctx.connection(conn_id) if conn_id else None
            status = (conn or {}).get("status")
            synced = (conn or {}).get("last_synced_at")
            if conn is None or _not_known(status, synced):
                failed.append(_source_words(slug, src, src.get("id"), conn_id, conn, status, synced))
    return [_headline(failed, FREE_CONSEQUENCE)]


# --- calendars and events -------------------------------------------------------------------------


async def _list_calendars(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    items = _items(data)
    lines = [f"{len(items)} unified calendar(s):"]
    for cal in items:
        ctx.remember_timezone(cal["slug"], cal.get("timezone"))
        sources = ", ".join(src.get("name") or src.get("id", "") for src in cal.get("sources", []))
        lines.append(f"- {cal['slug']}: {cal.get('name')} ({cal.get('timezone')}); sources: {sources or 'none'}")
    return "\n".join(lines), data


async def _get_events(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    slug = args["calendar_slug"]
    tz = await ctx.calendar_timezone(slug)
    items = _items(data)
    lines = await _incomplete(ctx, slug, data, EVENTS_CONSEQUENCE)
    lines.append(f"{len(items)} event(s) in {slug} ({tz}):")
    for ev in items:
        flag = "" if ev.get("transparency", "busy") == "busy" else " [free]"
        status = "" if ev.get("status") == "confirmed" else f" [{ev.get('status')}]"
        lines.append(f"- {span(ev.get('start'), ev.get('end'), tz)}: {ev.get('title') or '(no title)'}{flag}{status} "
                     f"id={ev.get('id')}")
    return "\n".join(lines + _more(data)), data


def _find_calendars(args: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The required and the optional calendars of a check_availability call across calendars."""
    required: list[str] = []
    for slug in [args.get("calendar_slug"), *(args.get("calendar_slugs") or [])]:
        if slug and slug not in required:
            required.append(slug)
    optional: list[str] = []
    for slug in args.get("optional_calendar_slugs") or []:
        if slug not in required and slug not in optional:
            optional.append(slug)
    return required, optional


def _finds(args: Mapping[str, Any]) -> bool:
    """check_availability finds a time (POST /availability/find) when given several calendars or a
    meeting length; with one calendar_slug alone it answers that calendar's busy and free time."""
    return bool(args.get("calendar_slugs") or args.get("optional_calendar_slugs")
                or args.get("duration_minutes") is not None)


def _day_window(day: str, tz: str) -> tuple[str, str]:
    """A whole day in `tz` as UTC instants (23 or 25 hours on a DST change)."""
    zone = _zone(tz)
    if zone is None:
        raise ArgumentError("tz", f"{tz!r} is not an IANA timezone (e.g. Europe/Amsterdam)")
    first = datetime.combine(date.fromisoformat(day), time(0), zone)
    after = datetime.combine(date.fromisoformat(day) + timedelta(days=1), time(0), zone)
    start, end = (v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for v in (first, after))
    return start, end


def _availability_request(args: dict[str, Any]) -> ApiCall:
    if not _finds(args):
        if not args.get("calendar_slug"):
            raise ArgumentError("calendar_slug", "is required (or calendar_slugs, to find a time across calendars)")
        return ApiCall("GET", ("calendars", args["calendar_slug"], "availability"), {
            "date": args.get("date"), "start": args.get("start"), "end": args.get("end"), "tz": args.get("tz"),
            "min_duration": args.get("min_duration"), "explain": args.get("explain") or None})
    required, optional = _find_calendars(args)
    if not required:
        raise ArgumentError("calendar_slugs", "name at least one calendar that must be free (calendar_slug or "
                                              "calendar_slugs); optional_calendar_slugs only rank the times")
    if args.get("duration_minutes") is None:
        raise ArgumentError("duration_minutes", "is required to find a time across calendars")
    for name in ("min_duration", "explain"):
        if args.get(name):
            raise ArgumentError(name, "applies to one calendar_slug only, not to finding a time across calendars")
    if args.get("start") and args.get("end"):
        start, end = args["start"], args["end"]
    elif args.get("date"):
        if not args.get("tz"):
            raise ArgumentError("tz", "is required with date when finding a time across calendars (or give start and end)")
        start, end = _day_window(args["date"], args["tz"])
    else:
        raise ArgumentError("start", "give start and end, or date and tz")
    body = {"calendars": [{"slug": s, "required": True} for s in required]
            + [{"slug": s, "required": False} for s in optional],
            "duration_minutes": args["duration_minutes"], "start": start, "end": end}
    if args.get("tz"):
        body["tz"] = args["tz"]
    return ApiCall("POST", ("availability", "find"), json=body)


async def _find_a_time(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    required, optional = _find_calendars(args)
    zone = data.get("timezone") or args.get("tz")
    lines = await _incomplete_calendars(ctx, required + optional, data)
    slots = data.get("slots", [])
    who = ", ".join(required)
    head = f"{len(slots)} time(s) of {args['duration_minutes']} min when {who} {'is' if len(required) == 1 else 'are'} free"
    if optional:
        head += f" (optional: {', '.join(optional)})"
    lines.append(f"{head}, in {zone}:")
    for slot in slots:
        line = f"- {span(slot['start'], slot['end'], zone)}  start={slot['start']}"
        free_optional = [x for x in slot.get("free", []) if x in optional]
        extra = [f"optional free: {', '.join(free_optional) or 'none'}"] if optional else []
        if slot.get("busy"):
            extra.append(f"busy: {', '.join(slot['busy'])}")
        if slot.get("unknown"):
            extra.append(f"not checked: {', '.join(slot['unknown'])}")
        lines.append(line + (f" ({'; '.join(extra)})" if extra else ""))
    return "\n".join(lines), data


async def _check_availability(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    if _finds(args):
        return await _find_a_time(ctx, args, data)
    zone = args.get("tz") or data.get("timezone")
    lines = await _incomplete(ctx, args["calendar_slug"], data)
    lines.append(f"Availability of {args['calendar_slug']} {span(data.get('start'), data.get('end'), zone)}:")
    lines.append(f"Busy ({len(data.get('busy', []))}):")
    for b in data.get("busy", []):
        lines.append(f"- {span(b['start'], b['end'], zone)}")
        for ev in b.get("events", []) or []:
            lines.append(f"    because of: {ev.get('title') or '(no title)'} ({span(ev.get('start'), ev.get('end'), zone)})")
    lines.append(f"Free ({len(data.get('free', []))}):")
    lines += [f"- {span(f['start'], f['end'], zone)}" for f in data.get("free", [])]
    return "\n".join(lines), data


async def _find_conflicts(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    slug = args["calendar_slug"]
    tz = await ctx.calendar_timezone(slug)
    items = _items(data)
    lines = await _incomplete(ctx, slug, data)
    lines.append(f"{len(items)} conflict(s) in {slug}:")
    for c in items:
        a, b = c["events"][0], c["events"][1]
        lines.append(f"- {a.get('title') or '(no title)'} × {b.get('title') or '(no title)'}: overlap "
                     f"{span(c.get('overlap_start'), c.get('overlap_end'), tz)}")
    return "\n".join(lines), data if isinstance(data, dict) else {"data": data}


# --- bookings -------------------------------------------------------------------------------------


async def _get_slots(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    zone = args.get("tz") or data.get("timezone")
    slots = data.get("slots", [])
    lines = [f"{len(slots)} open slot(s) on {args['booking_page_slug']} ({zone}):"]
    lines += [f"- {span(x['start'], x['end'], zone)}  start={x['start']}" for x in slots[:100]]
    if len(slots) > 100:
        lines.append(f"… and {len(slots) - 100} more (see the structured result)")
    return "\n".join(lines), data


async def _create_booking(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    text = (f"Booked {data.get('id')}: {span(data.get('start'), data.get('end'), args.get('timezone'))} "
            f"({data.get('status')}). Cancel link: {data.get('cancel_url')}")
    return text, data


async def _cancel_booking(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    return f"Booking {args['booking_id']} is {data.get('status', 'cancelled')}.", data


async def _list_bookings(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    items = _items(data)
    lines = [f"{len(items)} booking(s):"]
    for b in items:
        lines.append(f"- {b.get('id')} {b.get('status')}: {span(b.get('start'), b.get('end'), b.get('timezone'))} "
                     f"{b.get('name') or ''}")
    return "\n".join(lines + _more(data)), data


# --- polls ----------------------------------------------------------------------------------------


async def _create_poll(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    share = data.get("vote_page_url") or data.get("vote_url")  # the voting page; the API endpoint before it
    lines = [f"Poll {data.get('id')} '{data.get('title')}' is {data.get('status')}. Share: {share}"]
    lines += [f"- option {o['id']}: {span(o['start'], o['end'], None)}" for o in data.get("options", [])]
    return "\n".join(lines), data


async def _list_polls(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    items = _items(data)
    lines = [f"{len(items)} poll(s):"]
    lines += [f"- {p.get('id')} '{p.get('title')}' {p.get('status')}, {len(p.get('options', []))} option(s)" for p in items]
    return "\n".join(lines + _more(data)), data


async def _get_poll_overlap(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    lines = [f"Poll {args['poll_id']}: best option {data.get('best_option_id')}"]
    for o in data.get("options", []):
        clash = " (clashes with the calendar)" if o.get("calendar_busy") else ""
        lines.append(f"- {o['option_id']} {span(o.get('start'), o.get('end'), None)}: yes {o.get('yes')}, "
                     f"maybe {o.get('maybe')}, no {o.get('no')}{clash}")
    return "\n".join(lines), data


async def _decide_poll(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    return f"Poll {args['poll_id']} decided on {data.get('option_id')}; event {data.get('event_id')} created.", data


# --- connections and calendars --------------------------------------------------------------------


async def _start_oauth(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    return (f"Connection {data.get('id')} is {data.get('status')}. Ask the user to open this link and approve "
            f"access: {data.get('authorization_url')} — then check with calmesh_check_connection_status."), data


async def _start_credential(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    return f"Connection {data.get('id')} ({args['provider']}) is {data.get('status')}; it syncs in the background.", data


def _credential_request(args: dict[str, Any]) -> ApiCall:
    provider = args["provider"]
    needed: tuple[str, ...]
    if provider == "icloud":
        needed, body = ("username", "password"), {"username": args.get("username"), "app_password": args.get("password")}
    elif provider == "caldav":
        needed = ("url", "username", "password")
        body = {"url": args.get("url"), "username": args.get("username"), "password": args.get("password")}
    else:
        needed, body = ("url",), {"url": args.get("url")}
    for name in needed:
        if not args.get(name):
            raise ArgumentError(name, f"is required for provider {provider}")
    return ApiCall("POST", ("connections", provider), json=_drop_none(body))


async def _connection_status(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    cals = ", ".join(c.get("name", c.get("id", "")) for c in data.get("calendars", []))
    text = (f"{data.get('id')} {data.get('provider')} '{data.get('display_name')}': {data.get('status')}; "
            f"last synced {data.get('last_synced_at') or 'never'}"
            + (f"; last error: {data['last_error']}" if data.get("last_error") else "")
            + (f"; calendars: {cals}" if cals else ""))
    return text, data


async def _list_connections(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    items = _items(data)
    lines = [f"{len(items)} connection(s):"]
    lines += [f"- {c.get('id')} {c.get('provider')} '{c.get('display_name')}': {c.get('status')}" for c in items]
    return "\n".join(lines), data


async def _remove_connection(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    cid = args["connection_id"]
    return f"Connection {cid} removed, with its cached events and its sources.", {"id": cid, "removed": True}


async def _create_calendar(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    ctx.remember_timezone(data["slug"], data.get("timezone"))
    names = ", ".join(src.get("name") or src.get("id", "") for src in data.get("sources", []))
    return f"Calendar {data['slug']} created ({data.get('timezone')}) with sources: {names or 'none'}.", data


def _manage_request(args: dict[str, Any]) -> ApiCall:
    slug, action = args["calendar_slug"], args["action"]
    if action == "update":
        body = _drop_none({"name": args.get("name"), "timezone": args.get("timezone"), "slug": args.get("new_slug")})
        if not body:
            raise ArgumentError("name", "update needs at least one of name, timezone, new_slug")
        return ApiCall("PATCH", ("calendars", slug), json=body)
    if action == "add_source":
        if not args.get("connection_id"):
            raise ArgumentError("connection_id", "add_source needs connection_id")
        return ApiCall("POST", ("calendars", slug, "sources"),
                       json=_drop_none({"connection_id": args["connection_id"], "calendar_id": args.get("calendar_id")}))
    if action == "remove_source":
        if not args.get("source_id"):
            raise ArgumentError("source_id", "remove_source needs source_id")
        return ApiCall("DELETE", ("calendars", slug, "sources", args["source_id"]))
    return ApiCall("DELETE", ("calendars", slug))


async def _manage_calendar(ctx: Context, args: dict[str, Any], data: Any) -> tuple[str, Any]:
    slug, action = args["calendar_slug"], args["action"]
    ctx.remember_timezone(slug, None)
    if action == "update":
        return f"Calendar {data.get('slug')} updated.", data
    if action == "add_source":
        return f"Source {data.get('id')} added to {slug}.", data
    if action == "remove_source":
        return f"Source {args['source_id']} removed from {slug}.", {"slug": slug, "removed_source_id": args["source_id"]}
    return f"Calendar {slug} deleted.", {"slug": slug, "deleted": True}


# --- the table ------------------------------------------------------------------------------------

TOOLS: tuple[Tool, ...] = (
    Tool(
        "calmesh_list_calendars", "List calendars", "List all unified calendars with their timezone and sources.",
        ANY_SCOPE, s.obj({}),
        lambda a: ApiCall("GET", ("calendars",), {"limit": 200}),
        _list_calendars, read_only=True, idempotent=True,
    ),
    Tool(
        "calmesh_get_events", "Get events",
        "Get events within a date range from a unified calendar, merged across its sources, sorted, with the source of each.",
        ANY_SCOPE,
        s.obj({
            "calendar_slug": s.CALENDAR_SLUG,
            "start": s.instant("Range start, RFC 3339 with an offset (e.g. 2026-03-15T00:00:00Z)."),
            "end": s.instant("Range end, RFC 3339 with an offset; at most 366 days after start."),
            "source_id": s.ident("src", "Only events of this source (src_…)."),
            "include_cancelled": s.boolean("Also list cancelled instances."),
            "limit": s.LIMIT,
            "cursor": s.CURSOR,
        }, ("calendar_slug", "start", "end")),
        lambda a: ApiCall("GET", ("calendars", a["calendar_slug"], "events"), {
            "start": a["start"], "end": a["end"], "source_id": a.get("source_id"),
            "include_cancelled": a.get("include_cancelled") or None, "limit": a.get("limit", 50), "cursor": a.get("cursor")}),
        _get_events, read_only=True, idempotent=True,
    ),
    Tool(
        "calmesh_check_availability", "Check availability",
        "Check available time: busy and free intervals of a unified calendar (calendar_slug) for a day or a "
        "window; explain=true says which events make each busy interval. To find a meeting time across "
        "several calendars, give calendar_slugs (all must be free), optionally optional_calendar_slugs "
        "(ranked by how many are free), and duration_minutes: the answer is the candidate start times. "
        "An answer that starts with INCOMPLETE ANSWER could not check some source: never present its "
        "time as free.",
        ANY_SCOPE,
        s.obj({
            "calendar_slug": s.slug("Slug of a unified calendar, as calmesh_list_calendars shows it (e.g. work). "
                                    "Required unless calendar_slugs is given."),
            "calendar_slugs": s.slugs("Find a time: calendars that must all be free (with calendar_slug, if given)."),
            "optional_calendar_slugs": s.slugs("Find a time: calendars that should be free if possible; times "
                                               "come ranked by how many of them are free."),
            "duration_minutes": s.integer("Find a time: the meeting's length in minutes. Required with calendar_slugs.",
                                          1, 1440),
            "date": s.day("A whole day (YYYY-MM-DD) read in tz. Or give start and end."),
            "start": s.instant("Window start (RFC 3339), with end, instead of date."),
            "end": s.instant("Window end (RFC 3339), with start; to find a time, at most 62 days after start."),
            "tz": s.timezone("IANA timezone to read date in (e.g. Europe/Amsterdam); default the calendar's "
                             "(the user's when finding a time, and then required with date)."),
            "min_duration": s.integer("One calendar: drop free gaps shorter than this many minutes.", 1, 1440),
            "explain": s.boolean("One calendar: list the events behind each busy interval."),
        }),
        _availability_request,
        _check_availability, read_only=True, idempotent=True,
    ),
    Tool(
        "calmesh_find_conflicts", "Find conflicts",
        "Find overlapping events from different sources of a unified calendar, with the overlap.",
        ANY_SCOPE,
        s.obj({"calendar_slug": s.CALENDAR_SLUG, "start": s.instant("Range start, RFC 3339 with an offset."),
               "end": s.instant("Range end, RFC 3339 with an offset.")}, ("calendar_slug", "start", "end")),
        lambda a: ApiCall("GET", ("calendars", a["calendar_slug"], "conflicts"), {"start": a["start"], "end": a["end"]}),
        _find_conflicts, read_only=True, idempotent=True,
    ),
    Tool(
        "calmesh_get_slots", "Get booking slots", "Get available booking slots of a booking page for a range of days.",
        BOOKING,
        s.obj({
            "booking_page_slug": s.PAGE_SLUG,
            "handle": s.handle("Handle of the page's owner (the user's public handle, e.g. ada)."),
            "start": s.day("First day (YYYY-MM-DD, inclusive), read in tz."),
            "end": s.day("Last day (YYYY-MM-DD, inclusive), read in tz."),
            "tz": s.timezone("The visitor's IANA timezone; default the page's."),
        }, ("booking_page_slug", "handle", "start", "end")),
        lambda a: ApiCall("GET", ("booking-pages", a["booking_page_slug"], "slots"),
                          {"handle": a["handle"], "start": a["start"], "end": a["end"], "tz": a.get("tz")}),
        _get_slots, read_only=True, idempotent=True,
    ),
    Tool(
        "calmesh_create_booking", "Create booking",
        "Create a new booking on a booking page for a slot from calmesh_get_slots; the visitor and host get a confirmation "
        "email. If the page asks questions, give the visitor's answers; a missing or wrong one is refused naming "
        "answers.<question id>.",
        BOOKING,
        s.obj({
            "booking_page_slug": s.PAGE_SLUG,
            "handle": s.handle("Handle of the page's owner."),
            "start": s.instant("Start of a slot exactly as calmesh_get_slots returned it."),
            "name": s.string("The visitor's name.", minLength=1, maxLength=200),
            "email": s.string("The visitor's email; the confirmation goes there (e.g. bob@example.com).",
                              minLength=3, maxLength=254),
            "notes": s.string("Anything the visitor wants the host to know.", maxLength=5000),
            "timezone": s.timezone("The visitor's IANA timezone, for the confirmation."),
            "answers": {
                "type": "array", "maxItems": 20,
                "description": "The visitor's answers to the page's questions (GET /booking-pages/{slug}?handle lists "
                               "them): one item per question, `checked` for a checkbox question, `value` otherwise.",
                "items": {
                    "type": "object",
                    "properties": {
                        "question_id": s.string("The question's id (e.g. company).", pattern=r"^[a-z0-9_]{1,40}$"),
                        "value": s.string("The answer (text, email, phone, or one of a select's options).",
                                          maxLength=5000),
                        "checked": {"type": "boolean", "description": "The answer to a checkbox question."},
                    },
                    "required": ["question_id"],
                    "additionalProperties": False,
                },
            },
        }, ("booking_page_slug", "handle", "start", "name", "email")),
        lambda a: ApiCall("POST", ("booking-pages", a["booking_page_slug"], "book"), {"handle": a["handle"]},
                          _drop_none({"start": a["start"], "name": a["name"], "email": a["email"],
                                      "notes": a.get("notes"), "timezone": a.get("timezone"),
                                      "answers": _answers(a.get("answers"))})),
        _create_booking, read_only=False,
    ),
    Tool(
        "calmesh_cancel_booking", "Cancel booking",
        "Cancel a booking: the calendar event is removed and the slot freed; both sides are told.",
        BOOKING,
        s.obj({"booking_id": s.ident("bk", "The booking's id (bk_…)."),
               "reason": s.string("Why, for the visitor's email.", maxLength=1000)}, ("booking_id",)),
        lambda a: ApiCall("POST", ("bookings", a["booking_id"], "cancel"), json=_drop_none({"reason": a.get("reason")})),
        _cancel_booking, read_only=False, destructive=True, idempotent=True,
    ),
    Tool(
        "calmesh_list_bookings", "List bookings", "List bookings with pagination, optionally by status and time window.",
        ANY_SCOPE,
        s.obj({
            "status": s.choice("Only bookings in this state.", "confirmed", "cancelled"),
            "start": s.instant("Only bookings ending after this instant."),
            "end": s.instant("Only bookings starting before this instant."),
            "limit": s.LIMIT,
            "cursor": s.CURSOR,
        }),
        lambda a: ApiCall("GET", ("bookings",), {"status": a.get("status"), "start": a.get("start"), "end": a.get("end"),
                                                 "limit": a.get("limit", 50), "cursor": a.get("cursor")}),
        _list_bookings, read_only=True, idempotent=True,
    ),
    Tool(
        "calmesh_create_poll", "Create poll",
        "Create a scheduling poll with candidate times; returns the link to share for voting.",
        BOOKING,
        s.obj({
            "title": s.string("What the meeting is (e.g. Project kick-off).", minLength=1, maxLength=200),
            "duration_minutes": s.integer("Length of the meeting in minutes.", 5, 1440),
            "options": {"type": "array", "description": "Candidate times, each {start, end} in RFC 3339.",
                        "items": s.ref("TimeRange"), "minItems": 1, "maxItems": 50},
            "calendar_slug": s.slug("Calendar to check clashes against and to write the decided event to."),
            "deadline": s.instant("When voting closes."),
        }, ("title", "duration_minutes", "options"), defs={"TimeRange": s.TIME_RANGE}),
        lambda a: ApiCall("POST", ("polls",), json=_drop_none({
            "title": a["title"], "duration_minutes": a["duration_minutes"], "options": a["options"],
            "calendar_slug": a.get("calendar_slug"), "deadline": a.get("deadline")})),
        _create_poll, read_only=False,
    ),
    Tool(
        "calmesh_list_polls", "List polls", "List all polls.", ANY_SCOPE,
        s.obj({"limit": s.LIMIT, "cursor": s.CURSOR}),
        lambda a: ApiCall("GET", ("polls",), {"limit": a.get("limit", 50), "cursor": a.get("cursor")}),
        _list_polls, read_only=True, idempotent=True,
    ),
    Tool(
        "calmesh_get_poll_overlap", "Get poll overlap",
        "Get participant overlap of a poll: votes per option, who can attend, calendar clashes and the best option.",
        ANY_SCOPE,
        s.obj({"poll_id": s.ident("poll", "The poll's id (poll_…).")}, ("poll_id",)),
        lambda a: ApiCall("GET", ("polls", a["poll_id"], "overlap")),
        _get_poll_overlap, read_only=True, idempotent=True,
    ),
    Tool(
        "calmesh_decide_poll", "Decide poll",
        "Finalize a poll with the chosen time: the event is created on the poll's calendar and voting closes.",
        BOOKING,
        s.obj({"poll_id": s.ident("poll", "The poll's id (poll_…)."),
               "option_id": s.ident("opt", "The chosen option (opt_…), e.g. best_option_id from calmesh_get_poll_overlap.")},
              ("poll_id", "option_id")),
        lambda a: ApiCall("POST", ("polls", a["poll_id"], "decide"), json={"option_id": a["option_id"]}),
        _decide_poll, read_only=False,
    ),
    Tool(
        "calmesh_start_oauth_connection", "Connect Google or Microsoft",
        "Connect a Google or Microsoft calendar: returns an authorization link for the user to approve.",
        ONLY_FULL,
        s.obj({"provider": s.choice("Which account to connect.", "google", "microsoft"),
               "redirect_uri": s.string("Where to send the user after consent; default the dashboard.", maxLength=2000)},
              ("provider",)),
        lambda a: ApiCall("POST", ("connections", a["provider"]), json=_drop_none({"redirect_uri": a.get("redirect_uri")})),
        _start_oauth, read_only=False,
    ),
    Tool(
        "calmesh_start_credential_connection", "Connect CalDAV or iCal",
        "Connect an iCloud or CalDAV calendar with credentials, or an iCal subscription URL.",
        ONLY_FULL,
        s.obj({
            "provider": s.choice("icloud (app password), caldav (any server) or ical (a subscription URL).",
                                 "icloud", "caldav", "ical"),
            "url": s.string("caldav: the server URL; ical: the .ics or webcal:// URL. Not for icloud.", maxLength=2000),
            "username": s.string("icloud/caldav: the account name (Apple ID for iCloud).", maxLength=320),
            "password": s.string("caldav: the password; icloud: an app-specific password.", maxLength=1024),
        }, ("provider",)),
        _credential_request, _start_credential, read_only=False,
    ),
    Tool(
        "calmesh_check_connection_status", "Check connection status",
        "Check a connection's sync status, last sync, last error and calendars.", ANY_SCOPE,
        s.obj({"connection_id": s.ident("conn", "The connection's id (conn_…).")}, ("connection_id",)),
        lambda a: ApiCall("GET", ("connections", a["connection_id"])),
        _connection_status, read_only=True, idempotent=True,
    ),
    Tool(
        "calmesh_list_connections", "List connections", "List all calendar connections and their status.", ANY_SCOPE,
        s.obj({}),
        lambda a: ApiCall("GET", ("connections",), {"limit": 200}),
        _list_connections, read_only=True, idempotent=True,
    ),
    Tool(
        "calmesh_remove_connection", "Remove connection",
        "Remove a connection, its cached events and its sources in every unified calendar.", ONLY_FULL,
        s.obj({"connection_id": s.ident("conn", "The connection's id (conn_…). Its cached events and calendar sources go too.")},
              ("connection_id",)),
        lambda a: ApiCall("DELETE", ("connections", a["connection_id"])),
        _remove_connection, read_only=False, destructive=True, idempotent=True,
    ),
    Tool(
        "calmesh_create_calendar", "Create calendar", "Create a unified calendar that merges sources from your connections.",
        ONLY_FULL,
        s.obj({
            "slug": s.slug("Short name used in URLs, unique among your calendars (e.g. work)."),
            "name": s.string("Display name (e.g. Work).", minLength=1, maxLength=200),
            "timezone": s.timezone("IANA timezone of the calendar (e.g. Europe/Amsterdam)."),
            "sources": {"type": "array", "description": "Connections to merge; without calendar_id every calendar of "
                        "the connection.", "items": s.ref("SourceRef"), "maxItems": 50},
        }, ("slug", "name", "timezone", "sources"), defs={"SourceRef": s.SOURCE_REF}),
        lambda a: ApiCall("POST", ("calendars",), json={"slug": a["slug"], "name": a["name"], "timezone": a["timezone"],
                                                        "sources": a["sources"]}),
        _create_calendar, read_only=False,
    ),
    Tool(
        "calmesh_manage_calendar", "Manage calendar",
        "Update a unified calendar (name, timezone, slug), add or remove sources, or delete it.", ONLY_FULL,
        s.obj({
            "calendar_slug": s.CALENDAR_SLUG,
            "action": s.choice("update: change name/timezone/slug; add_source: merge a connection's calendar; "
                               "remove_source: drop a source; delete: delete the unified calendar (not the connections).",
                               "update", "add_source", "remove_source", "delete"),
            "name": s.string("update: the new display name.", minLength=1, maxLength=200),
            "timezone": s.timezone("update: the new IANA timezone."),
            "new_slug": s.slug("update: a new slug."),
            "connection_id": s.ident("conn", "add_source: the connection (conn_…)."),
            "calendar_id": s.string("add_source: one calendar of that connection; omit for all.", maxLength=100),
            "source_id": s.ident("src", "remove_source: the source (src_…)."),
        }, ("calendar_slug", "action")),
        _manage_request, _manage_calendar, read_only=False, destructive=True,
    ),
)

BY_NAME: dict[str, Tool] = {tool.name: tool for tool in TOOLS}
