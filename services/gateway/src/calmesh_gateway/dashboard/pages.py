"""The dashboard's pages (GET only): each one asks the public API as the signed-in user and renders
a template. Changes are made by the page's script, which calls the public API with the CSRF token.

Every page carries a strict Content-Security-Policy (no inline script or style, nothing from
another origin, no framing) and is never cached; the fingerprinted assets are cached for a year.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from litestar import Request, Response, get
from litestar.response import Redirect

from calmesh_common.problems import Problem
from calmesh_common.timefmt import parse_instant, rfc3339

from ..front import RequestContext, request_context
from .assets import asset_url, assets
from .client import ApiError, DashboardApi, SignedOut

TEMPLATES = Path(__file__).parent / "templates"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
ASSET_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=31536000, immutable"}

NAV = (
    ("/app/connections", "Connections"),
    ("/app/calendars", "Calendars"),
    ("/app/booking-pages", "Booking pages"),
    ("/app/bookings", "Bookings"),
    ("/app/polls", "Polls"),
    ("/app/api-keys", "API keys"),
    ("/app/webhooks", "Webhooks"),
    ("/app/billing", "Billing"),
)
SCOPES = ("read", "write", "book", "full")
#: How many pages of a list a dashboard page follows (200 rows each) before it stops.
MAX_PAGES = 5
SLOTS_PER_DAY = 96  # quarter hours: the week grid's rows
MAX_LANES = 4
SOURCE_COLOURS = 8


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.globals.update(asset=asset_url, nav=NAV)
    env.filters["when"] = _when
    return env


@cache
def timezones() -> tuple[str, ...]:
    return ("UTC", *sorted(z for z in zoneinfo.available_timezones() if z != "UTC" and "/" in z))


def _ctx(request: Request[Any, Any, Any]) -> RequestContext:
    return request_context(request.scope)


def _api(request: Request[Any, Any, Any]) -> DashboardApi:
    api: DashboardApi = request.app.state.gw.dashboard
    return api


def _when(value: str | None, tz: str = "UTC") -> str:
    """An API instant as the user reads it: '2026-03-15 10:00' in `tz`, or '—'."""
    if not value:
        return "—"
    try:
        instant = parse_instant(value)
    except ValueError:
        return value
    return instant.astimezone(_zone(tz)).strftime("%Y-%m-%d %H:%M")


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def render(template: str, http_status: int = 200, **context: Any) -> Response[str]:
    html = environment().get_template(template).render(**context)
    return Response(html, status_code=http_status, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def _to_login() -> Redirect:
    return Redirect("/app/login", status_code=303, headers=PAGE_HEADERS)


@dataclass
class Session:
    """A signed-in visitor: the session token (to call the API as them) and who they are."""

    token: str
    me: dict[str, Any]
    api: DashboardApi
    request_id: str

    async def get(self, path: str, **params: Any) -> Any:
        return await self.api.get(self.token, path, params or None, self.request_id)

    async def all(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every row of a list endpoint (a few pages of 200 at most)."""
        rows: list[dict[str, Any]] = []
        cursor = None
        for _ in range(MAX_PAGES):
            query = {"limit": 200, **params, **({"cursor": cursor} if cursor else {})}
            page = await self.get(path, **query)
            rows += page.get("data", [])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return rows


async def _session(request: Request[Any, Any, Any]) -> Session | None:
    ctx = _ctx(request)
    if ctx.identity is None or ctx.session_token is None:
        return None
    api = _api(request)
    try:
        me = await api.get(ctx.session_token, "/me", request_id=ctx.request_id)
    except SignedOut:
        return None
    return Session(ctx.session_token, me, api, ctx.request_id)


#: What a signed-in page loads for its template, and the handler that renders it.
PageLoad = Callable[[Request[Any, Any, Any], Session], Awaitable[dict[str, Any]]]
PageHandler = Callable[[Request[Any, Any, Any]], Awaitable[Response[Any]]]


def _signed_in_page(template: str, title: str, active: str) -> Callable[[PageLoad], PageHandler]:
    """Decorator body shared by the signed-in pages: sign-in redirect, API errors shown as a page."""

    def wrap(load: PageLoad) -> PageHandler:
        async def handler(request: Request[Any, Any, Any]) -> Response[Any]:
            session = await _session(request)
            if session is None:
                return _to_login()
            try:
                context = await load(request, session)
            except SignedOut:
                return _to_login()
            except ApiError as exc:
                return render("error.html", http_status=exc.status if exc.status in (404, 422) else 502,
                              title=title, me=session.me, active=active, detail=exc.detail)
            return render(template, title=title, me=session.me, active=active, **context)

        handler.__name__ = load.__name__
        handler.__qualname__ = load.__qualname__
        return handler

    return wrap


# Signed-out pages ------------------------------------------------------------------------------

@get("/app", include_in_schema=False)
async def home(request: Request[Any, Any, Any]) -> Response[Any]:
    session = await _session(request)
    return Redirect("/app/connections" if session else "/app/login", status_code=303, headers=PAGE_HEADERS)


@get("/app/login", include_in_schema=False)
async def login_page(request: Request[Any, Any, Any]) -> Response[Any]:
    return render("login.html", title="Sign in", me=None, active="")


@get("/app/signup", include_in_schema=False)
async def signup_page(request: Request[Any, Any, Any]) -> Response[Any]:
    return render("signup.html", title="Create account", me=None, active="", timezones=timezones())


@get("/app/assets/{name:str}", include_in_schema=False)
async def asset(name: str) -> Response[bytes]:
    found = assets().get(name)
    if found is None:
        raise Problem(404, "not_found", "No such dashboard asset.")
    return Response(found.body, media_type=found.content_type, headers=ASSET_HEADERS)


# Signed-in pages -------------------------------------------------------------------------------

@_signed_in_page("profile.html", "Profile", "/app/profile")
async def _profile(request: Request[Any, Any, Any], session: Session) -> dict[str, Any]:
    return {}


@_signed_in_page("api_keys.html", "API keys", "/app/api-keys")
async def _api_keys(request: Request[Any, Any, Any], session: Session) -> dict[str, Any]:
    return {"keys": await session.all("/api-keys"), "scopes": SCOPES}


@_signed_in_page("connections.html", "Connections", "/app/connections")
async def _connections(request: Request[Any, Any, Any], session: Session) -> dict[str, Any]:
    # Back from Google's or Microsoft's consent screen: the callback says how it went.
    outcome, error = request.query_params.get("status"), request.query_params.get("error") or ""
    notice = {"connected": ("ok", "Calendar connected. Its events are syncing now."),
              "error": ("error", f"The calendar could not be connected: {error or 'the provider refused'}."),
              }.get(outcome or "")
    return {"connections": await session.all("/connections"), "notice": notice}


@_signed_in_page("calendars.html", "Calendars", "/app/calendars")
async def _calendars(request: Request[Any, Any, Any], session: Session) -> dict[str, Any]:
    connections = await session.all("/connections")
    choices: list[dict[str, Any]] = [
        {"value": {"connection_id": c["id"], "calendar_id": cal["id"]},
         "label": f"{cal.get('name') or cal['id']} ({c.get('display_name') or c['provider']})"}
        for c in connections for cal in c.get("calendars") or []
    ]
    read_only = {(c["id"], cal["id"]): bool(cal.get("read_only")) for c in connections for cal in c.get("calendars") or []}
    calendars = await session.all("/calendars")
    for cal in calendars:
        sources = cal.get("sources") or []
        cal["ordered"] = _source_moves(sources, read_only)
        present = {(s.get("connection_id"), s.get("calendar_id")) for s in sources}
        cal["addable"] = [c for c in choices
                          if (c["value"]["connection_id"], c["value"]["calendar_id"]) not in present]
    return {"calendars": calendars, "choices": choices, "timezones": timezones()}


def _source_moves(sources: list[dict[str, Any]],
                  read_only: Mapping[tuple[str, str], bool]) -> list[dict[str, Any]]:
    """A calendar's sources in their order, each with the reorder body that moves it one place up
    (None for the first: `PUT /calendars/:slug/sources/reorder` takes the whole new order) and
    whether it is the default write target (the first writable source takes new events)."""
    ordered = sorted(sources, key=lambda s: s.get("sort_order") or 0)
    ids = [s["id"] for s in ordered]
    target = next((s["id"] for s in ordered
                   if not read_only.get((s.get("connection_id") or "", s.get("calendar_id") or ""), False)), None)
    moves: list[dict[str, Any]] = []
    for i, source in enumerate(ordered):
        up = None if i == 0 else {"source_ids": ids[:i - 1] + [ids[i], ids[i - 1]] + ids[i + 1:]}
        writable = not read_only.get((source.get("connection_id") or "", source.get("calendar_id") or ""), False)
        # A writable source that is not the target yet becomes it by going first.
        first = {"source_ids": [ids[i], *ids[:i], *ids[i + 1:]]} if writable and source["id"] != target else None
        moves.append({"source": source, "up": up, "first": first, "default": source["id"] == target,
                      "name": source.get("name") or source.get("calendar_id") or source["id"]})
    return moves


profile = get("/app/profile", include_in_schema=False)(_profile)
api_keys = get("/app/api-keys", include_in_schema=False)(_api_keys)
connections = get("/app/connections", include_in_schema=False)(_connections)
calendars = get("/app/calendars", include_in_schema=False)(_calendars)


# The week view ---------------------------------------------------------------------------------

@dataclass
class Placed:
    """One event as the week grid draws it (a part of it, when it crosses midnight)."""

    event: dict[str, Any]
    day: int
    start_slot: int
    end_slot: int
    colour: int
    source: str
    conflict: bool
    label: str
    when: str = ""
    lane: int = 0
    lanes: int = 1


@dataclass
class Week:
    monday: date
    tz: str
    days: list[date]
    timed: list[Placed] = field(default_factory=list)
    all_day: list[Placed] = field(default_factory=list)

    @property
    def previous(self) -> str:
        return (self.monday - timedelta(days=7)).isoformat()

    @property
    def next(self) -> str:
        return (self.monday + timedelta(days=7)).isoformat()


def build_week(monday: date, tz: str, events: list[dict[str, Any]], conflicted: set[str],
               sources: Mapping[str, tuple[int, str]]) -> Week:
    """Place `events` on the week grid of `monday` in `tz`: timed events by quarter hour, split at
    midnight, side by side where they overlap; all-day events in the row on top."""
    zone = _zone(tz)
    days = [monday + timedelta(days=i) for i in range(7)]
    week = Week(monday, tz, days)
    for ev in events:
        colour, source = sources.get(ev.get("source_id") or "", (0, ""))
        conflict = ev["id"] in conflicted
        title = ev.get("title") or "(no title)"
        if ev.get("all_day"):
            first, last = date.fromisoformat(ev["start"][:10]), date.fromisoformat(ev["end"][:10])
            for i, day in enumerate(days):
                if first <= day < last:
                    label = _label(title, "all day", source, conflict)
                    when = f"{first.isoformat()} (all day)" if last - first <= timedelta(days=1) else \
                        f"{first.isoformat()} – {(last - timedelta(days=1)).isoformat()} (all day)"
                    week.all_day.append(Placed(ev, i, 0, 0, colour, source, conflict, label, when))
            continue
        start, end = parse_instant(ev["start"]).astimezone(zone), parse_instant(ev["end"]).astimezone(zone)
        span = _span(start, end)
        label = _label(title, span, source, conflict)
        when = f"{start.strftime('%a %-d %b %H:%M')} – {end.strftime('%H:%M' if start.date() == end.date() else '%a %-d %b %H:%M')} ({tz})"
        for i, first_slot, last_slot in _day_slots(start, end, days, zone):
            week.timed.append(Placed(ev, i, first_slot, last_slot, colour, source, conflict, label, when))
    _assign_lanes(week.timed)
    return week


def _span(start: datetime, end: datetime) -> str:
    return f"{start.strftime('%a %H:%M')}–{end.strftime('%H:%M' if start.date() == end.date() else '%a %H:%M')}"


def _day_slots(start: datetime, end: datetime, days: list[date],
               zone: zoneinfo.ZoneInfo) -> Iterator[tuple[int, int, int]]:
    """The part of [start, end) on each day of the grid: (day index, first quarter hour, end quarter
    hour), split at midnight; an instant of no length still takes one quarter hour."""
    for i, day in enumerate(days):
        day_start = datetime.combine(day, datetime.min.time(), zone)
        day_end = datetime.combine(day + timedelta(days=1), datetime.min.time(), zone)
        lo, hi = max(start, day_start), min(end, day_end)
        if lo >= hi and not (start == end and day_start <= start < day_end):
            continue
        first_slot = int((lo - day_start).total_seconds() // 900)
        last_slot = max(first_slot + 1, min(SLOTS_PER_DAY, -int(-(hi - day_start).total_seconds() // 900)))
        yield i, min(first_slot, SLOTS_PER_DAY - 1), last_slot


@dataclass
class Band:
    """A busy or free interval of the calendar's availability, in the strip beside each day; a busy
    one carries the events behind it (`explain=true`) with their sources' names."""

    kind: str  # "busy" | "free"
    day: int
    start_slot: int
    end_slot: int
    label: str
    index: int
    why: list[dict[str, str]] = field(default_factory=list)


def build_bands(monday: date, tz: str, availability: dict[str, Any],
                sources: Mapping[str, tuple[int, str]]) -> list[Band]:
    zone = _zone(tz)
    days = [monday + timedelta(days=i) for i in range(7)]
    bands: list[Band] = []
    for kind in ("busy", "free"):
        for interval in availability.get(kind) or []:
            start = parse_instant(interval["start"]).astimezone(zone)
            end = parse_instant(interval["end"]).astimezone(zone)
            why = []
            for ev in interval.get("events") or []:
                ev_when = (f"{ev['start'][:10]} (all day)" if ev.get("all_day") else
                           _span(parse_instant(ev["start"]).astimezone(zone), parse_instant(ev["end"]).astimezone(zone)))
                why.append({"title": ev.get("title") or "(no title)", "when": ev_when,
                            "source": sources.get(ev.get("source_id") or "", (0, ""))[1]})
            label = f"{'Busy' if kind == 'busy' else 'Free'} {_span(start, end)}"
            if kind == "busy":
                label += f", {len(why)} event{'s' if len(why) != 1 else ''}" if why else ""
            index = len(bands)
            for i, first_slot, last_slot in _day_slots(start, end, days, zone):
                bands.append(Band(kind, i, first_slot, last_slot, label, index, why))
    return bands


def _label(title: str, when: str, source: str, conflict: bool) -> str:
    parts = [title, when]
    if source:
        parts.append(f"from {source}")
    if conflict:
        parts.append("conflict")
    return ", ".join(parts)


def _assign_lanes(placed: list[Placed]) -> None:
    """Overlapping events of a day sit side by side: each cluster of overlaps gets as many lanes
    as it needs at once (at most MAX_LANES; more share the last)."""
    for day in range(7):
        items = sorted((p for p in placed if p.day == day), key=lambda p: (p.start_slot, -p.end_slot))
        cluster: list[Placed] = []
        cluster_end = -1
        lane_ends: list[int] = []

        def close() -> None:  # called within this day's iteration only
            width = min(MAX_LANES, max(len(lane_ends), 1))  # noqa: B023
            for p in cluster:  # noqa: B023
                p.lanes = width

        for p in items:
            if cluster and p.start_slot >= cluster_end:
                close()
                cluster, lane_ends = [], []
            lane = next((i for i, e in enumerate(lane_ends) if e <= p.start_slot), None)
            if lane is None:
                lane_ends.append(p.end_slot)
                lane = len(lane_ends) - 1
            else:
                lane_ends[lane] = p.end_slot
            p.lane = min(lane, MAX_LANES - 1)
            cluster.append(p)
            cluster_end = max(cluster_end, p.end_slot)
        if cluster:
            close()


def _monday(raw: str | None, tz: str) -> date:
    try:
        day = date.fromisoformat(raw) if raw else datetime.now(_zone(tz)).date()
    except ValueError:
        raise Problem(422, "invalid_week", "week must be a date, YYYY-MM-DD.") from None
    return day - timedelta(days=day.weekday())


@get("/app/calendars/{slug:str}", include_in_schema=False)
async def week_view(request: Request[Any, Any, Any], slug: str) -> Response[Any]:
    session = await _session(request)
    if session is None:
        return _to_login()
    me = session.me
    wanted = request.query_params.get("tz") or ""
    tz = wanted if wanted in timezones() else (me.get("timezone") or "UTC")
    try:
        monday = _monday(request.query_params.get("week"), tz)
    except Problem as exc:
        return render("error.html", http_status=422, title="Calendar", me=me, active="/app/calendars", detail=exc.detail)
    zone = _zone(tz)
    start = datetime.combine(monday, datetime.min.time(), zone).astimezone(UTC)
    end = datetime.combine(monday + timedelta(days=7), datetime.min.time(), zone).astimezone(UTC)
    span = {"start": rfc3339(start), "end": rfc3339(end)}
    try:
        calendar = await session.get(f"/calendars/{slug}")
        events = await session.all(f"/calendars/{slug}/events", **span)
        conflicts = await session.all(f"/calendars/{slug}/conflicts", **span)
        availability = await session.get(f"/calendars/{slug}/availability", explain="true", **span)
    except SignedOut:
        return _to_login()
    except ApiError as exc:
        return render("error.html", http_status=exc.status if exc.status in (404, 422) else 502, title="Calendar",
                      me=me, active="/app/calendars", detail=exc.detail)
    sources = {s["id"]: (i % SOURCE_COLOURS, s.get("name") or s["id"])
               for i, s in enumerate(calendar.get("sources") or [])}
    conflicted = {e["id"] for c in conflicts for e in c.get("events") or []}
    week = build_week(monday, tz, events, conflicted, sources)
    bands = build_bands(monday, tz, availability, sources)
    today = datetime.now(zone).date()
    return render("week.html", title=calendar.get("name") or slug, me=me, active="/app/calendars",
                  calendar=calendar, week=week, today=today, tz=tz, tz_given=bool(wanted),
                  bands=bands, complete=availability.get("complete", True),
                  timezones=timezones(), conflicts=len(conflicts),
                  legend=[(colour, name) for colour, name in sources.values()])


# Booking pages, bookings, webhooks, billing ----------------------------------------------------

WEEKDAYS = (("mon", "Monday"), ("tue", "Tuesday"), ("wed", "Wednesday"), ("thu", "Thursday"),
            ("fri", "Friday"), ("sat", "Saturday"), ("sun", "Sunday"))
WEBHOOK_EVENT_TYPES = (
    "booking.created", "booking.cancelled", "booking.rescheduled", "calendar.event.created",
    "calendar.event.updated", "calendar.event.deleted", "calendar.conflict.detected", "connection.synced",
    "connection.error", "connection.revoked", "poll.voted", "poll.decided", "subscription.updated",
)
BOOKING_STATUSES = ("confirmed", "cancelled")
LIMIT_NAMES = (("connections", "Connections", "connections"), ("booking_pages", "Booking pages", "booking_pages"),
               ("api_requests_per_day", "API requests today", "api_requests_today"))


def _embed_snippet(page: dict[str, Any], handle: str) -> str:
    public = page.get("public_url") or ""
    origin = public[: -len(f"/{handle}/{page['slug']}")] if public.endswith(f"/{handle}/{page['slug']}") else ""
    return (f'<div data-calmesh-handle="{handle}" data-calmesh-slug="{page["slug"]}" data-mode="inline"></div>\n'
            f'<script src="{origin}/embed.js" defer></script>')


@_signed_in_page("booking_pages.html", "Booking pages", "/app/booking-pages")
async def _booking_pages(request: Request[Any, Any, Any], session: Session) -> dict[str, Any]:
    pages = await session.all("/booking-pages")
    handle = session.me.get("handle") or ""
    defaults = {"handle": handle, "duration_minutes": 30, "timezone": session.me.get("timezone") or "UTC",
                "weekly_hours": {day: [["09:00", "17:00"]] for day in ("mon", "tue", "wed", "thu", "fri")},
                "buffer_before_minutes": 0, "buffer_after_minutes": 0, "min_notice_minutes": 60, "max_days_ahead": 60}
    return {"pages": [{**p, "embed": _embed_snippet(p, handle)} for p in pages], "defaults": defaults,
            "calendars": await session.all("/calendars"), "weekdays": WEEKDAYS, "timezones": timezones()}


@get("/app/booking-pages/{slug:str}", include_in_schema=False)
async def booking_page_detail(request: Request[Any, Any, Any], slug: str) -> Response[Any]:
    """One booking page: its public link, embed snippet and preview, and every setting to edit
    (PATCH /booking-pages/:slug) — hours, overrides, buffers, notice, horizon, duration, questions."""

    async def load(request: Request[Any, Any, Any], session: Session) -> dict[str, Any]:
        page = await session.get(f"/booking-pages/{slug}")
        return {"page": page, "embed": _embed_snippet(page, session.me.get("handle") or ""),
                "calendars": await session.all("/calendars"), "weekdays": WEEKDAYS, "timezones": timezones(),
                "saved": request.query_params.get("saved") == "1"}

    return await _signed_in_page("booking_page.html", "Booking page", "/app/booking-pages")(load)(request)


@_signed_in_page("bookings.html", "Bookings", "/app/bookings")
async def _bookings(request: Request[Any, Any, Any], session: Session) -> dict[str, Any]:
    """Bookings, filtered by status and date range (the API's filters, the dates read in the user's
    time zone) and by booking page (here: the API has no page filter)."""
    status = request.query_params.get("status") or ""
    page = request.query_params.get("page_slug") or ""
    zone = _zone(session.me.get("timezone") or "UTC")
    filters: dict[str, str] = {"status": status} if status in BOOKING_STATUSES else {}
    dates: dict[str, str] = {}
    for name, shift in (("from", 0), ("until", 1)):
        raw = request.query_params.get(name) or ""
        try:
            day = date.fromisoformat(raw) if raw else None
        except ValueError:
            day = None
        if day is not None:
            dates[name] = day.isoformat()
            instant = datetime.combine(day + timedelta(days=shift), datetime.min.time(), zone).astimezone(UTC)
            filters["start" if name == "from" else "end"] = rfc3339(instant)
    rows = await session.all("/bookings", **filters)
    pages = sorted({b.get("page_slug") or "" for b in rows} - {""})
    if page:
        rows = [b for b in rows if b.get("page_slug") == page]
    rows.sort(key=lambda b: b.get("start") or "", reverse=True)
    return {"bookings": rows, "status_filter": status if status in BOOKING_STATUSES else "", "page_slug": page,
            "statuses": BOOKING_STATUSES, "pages": pages, "dates": dates}


@get("/app/bookings/{booking_id:str}", include_in_schema=False)
async def booking_detail(request: Request[Any, Any, Any], booking_id: str) -> Response[Any]:
    async def load(request: Request[Any, Any, Any], session: Session) -> dict[str, Any]:
        booking = await session.get(f"/bookings/{booking_id}")
        labels: dict[str, str] = {}
        if booking.get("answers"):
            try:  # each answer under its question's label, as the page asks it now (else its id)
                page = await session.get(f"/booking-pages/{booking.get('page_slug')}")
                labels = {q["id"]: q.get("label") or q["id"] for q in page.get("questions") or []}
            except ApiError:
                pass
        return {"b": booking, "labels": labels}

    return await _signed_in_page("booking.html", "Booking", "/app/bookings")(load)(request)


@_signed_in_page("webhooks.html", "Webhooks", "/app/webhooks")
async def _webhooks(request: Request[Any, Any, Any], session: Session) -> dict[str, Any]:
    return {"webhooks": await session.all("/webhooks"), "event_types": WEBHOOK_EVENT_TYPES}


@get("/app/webhooks/{webhook_id:str}", include_in_schema=False)
async def webhook_detail(request: Request[Any, Any, Any], webhook_id: str) -> Response[Any]:
    async def load(request: Request[Any, Any, Any], session: Session) -> dict[str, Any]:
        hook = await session.get(f"/webhooks/{webhook_id}")
        deliveries = await session.get(f"/webhooks/{webhook_id}/deliveries", limit=100)
        return {"hook": hook, "deliveries": deliveries.get("data", []), "event_types": WEBHOOK_EVENT_TYPES,
                "saved": request.query_params.get("saved") == "1"}

    return await _signed_in_page("webhook.html", "Webhook", "/app/webhooks")(load)(request)


@_signed_in_page("billing.html", "Billing", "/app/billing")
async def _billing(request: Request[Any, Any, Any], session: Session) -> dict[str, Any]:
    billing = await session.get("/billing")
    limits, usage = billing.get("limits") or {}, billing.get("usage") or {}
    bars = []
    for key, label, used_key in LIMIT_NAMES:
        limit = limits.get(key)
        used = usage.get(used_key)
        percent = min(100, round(100 * used / limit)) if isinstance(used, int) and limit else 0
        bars.append({"key": key, "label": label, "used": used, "limit": limit, "step": min(10, -(-percent // 10))})
    return {"billing": billing, "bars": bars}


POLL_OPTION_ROWS = 5


@_signed_in_page("polls.html", "Polls", "/app/polls")
async def _polls(request: Request[Any, Any, Any], session: Session) -> dict[str, Any]:
    polls = await session.all("/polls")
    polls.sort(key=lambda p: p.get("created_at") or "", reverse=True)
    return {"polls": polls, "calendars": await session.all("/calendars"), "option_rows": POLL_OPTION_ROWS}


@get("/app/polls/{poll_id:str}", include_in_schema=False)
async def poll_detail(request: Request[Any, Any, Any], poll_id: str) -> Response[Any]:
    async def load(request: Request[Any, Any, Any], session: Session) -> dict[str, Any]:
        poll = await session.get(f"/polls/{poll_id}")
        overlap = await session.get(f"/polls/{poll_id}/overlap")
        return {"poll": poll, "overlap": overlap.get("options") or [], "best": overlap.get("best_option_id")}

    return await _signed_in_page("poll.html", "Poll", "/app/polls")(load)(request)


booking_pages = get("/app/booking-pages", include_in_schema=False)(_booking_pages)
bookings = get("/app/bookings", include_in_schema=False)(_bookings)
webhooks = get("/app/webhooks", include_in_schema=False)(_webhooks)
billing = get("/app/billing", include_in_schema=False)(_billing)

polls = get("/app/polls", include_in_schema=False)(_polls)


DASHBOARD_HANDLERS = [home, login_page, signup_page, asset, profile, api_keys, connections, calendars,
                      week_view, booking_pages, booking_page_detail, bookings, booking_detail, polls, poll_detail,
                      webhooks, webhook_detail, billing]
