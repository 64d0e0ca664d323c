"""The route table: every public endpoint of CalMesh, one row each, and nothing is served that is
not in it. A row says who owns the path (the gateway or a service, which gets the request at the
same path), which kinds of authentication it accepts and which API-key scopes may call it.

Scopes are capabilities, not a hierarchy (docs/api-guide.md): `read` reads; `write` also writes calendar
events; `book` also books, cancels and runs polls; `full` does everything, including connections,
calendars and their sources, booking pages, webhooks and API keys. A signed-in session may do what
`full` may, and also the session-only endpoints (billing). Public endpoints need no credentials, but
a request that does send a key is held to the row's scopes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PUBLIC = "public"
SESSION = "session"
KEY = "key"

ALL_SCOPES = ("read", "write", "book", "full")
READ = frozenset(ALL_SCOPES)
EVENTS = frozenset({"write", "full"})
BOOK = frozenset({"book", "full"})
FULL = frozenset({"full"})
NO_KEYS: frozenset[str] = frozenset()

SESSION_OR_KEY = frozenset({SESSION, KEY})
SESSION_ONLY = frozenset({SESSION})
PUBLIC_ONLY = frozenset({PUBLIC})
ANYONE = frozenset({PUBLIC, SESSION, KEY})
#: Public writes a session adds nothing to (booking a slot, holding one): a session cookie there is
#: not looked at, so it never makes them a CSRF-checked session request (the owner can book their
#: own page in the browser they are signed in with); a key is still held to its scope.
PUBLIC_OR_KEY = frozenset({PUBLIC, KEY})

GATEWAY = "gateway"
SERVICES = ("connections", "availability", "booking", "billing", "webhooks")

_PARAM = re.compile(r"^\{([a-z_]+)\}$")
#: First path segments that are never a user's handle (the public page is /{handle}/{slug}).
RESERVED_HANDLES = frozenset({
    "api", "schema", "embed", "embed-js", "static", "assets", "health", "admin", "www", "app", "login",
    "logout", "signup", "auth", "me", "docs", "help", "support", "dashboard", "settings", "billing",
    "calmesh", "root", "system", "webhooks", "oauth", "mcp",
})
_HANDLE = re.compile(r"^[a-z0-9-]{3,40}$")
_SLUG = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
#: A fingerprinted script or style of the public booking pages (calmesh_booking.assets).
_PAGE_ASSET = re.compile(r"^[a-z0-9-]{1,40}\.[0-9a-f]{16}\.(?:js|css)$")


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint: method, path template, owner, accepted authentication and key scopes."""

    method: str
    path: str
    service: str
    auth: frozenset[str]
    scopes: frozenset[str]
    summary: str
    tag: str
    rate_limited: bool = True
    #: Extra constraints on path parameters (name -> compiled pattern).
    constraints: tuple[tuple[str, re.Pattern[str]], ...] = ()
    #: Name prefixes of the request cookies passed on to the service (none by default: the
    #: session cookie never leaves the gateway).
    cookies: tuple[str, ...] = ()
    #: For the gateway's own rows, what the OpenAPI document shows.
    doc: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def public(self) -> bool:
        return PUBLIC in self.auth

    @property
    def required_scope(self) -> str:
        """The scope named in a 403: the narrowest scope that may call this endpoint."""
        if not self.scopes:
            return SESSION
        if self.scopes == READ:
            return "read"
        for scope in ("write", "book", "full"):
            if scope in self.scopes:
                return scope
        return "full"

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.strip("/").split("/"))

    @property
    def param_names(self) -> list[str]:
        return [m.group(1) for s in self.segments if (m := _PARAM.match(s))]

    def allows_key_scope(self, scope: str) -> bool:
        return KEY in self.auth and scope in self.scopes


def _r(method: str, path: str, service: str, summary: str, *, auth: frozenset[str] = SESSION_OR_KEY,
       scopes: frozenset[str] = READ, tag: str = "", rate_limited: bool = True,
       constraints: dict[str, re.Pattern[str]] | None = None, doc: dict[str, Any] | None = None,
       cookies: tuple[str, ...] = ()) -> Route:
    return Route(method, path, service, auth, scopes if KEY in auth or PUBLIC in auth else NO_KEYS, summary,
                 tag or service, rate_limited, tuple((constraints or {}).items()), cookies, doc or {})


#: The OAuth flow's browser-binding cookies (calmesh_connections.oauth): set by the start page,
#: read by the callback.
OAUTH_BINDING_COOKIES = ("__Host-calmesh_oauth_", "calmesh_oauth_")


V1 = "/api/v1"

#: The dashboard's pages: public (a signed-out visitor is sent to sign in) or a session; no keys.
DASHBOARD = frozenset({PUBLIC, SESSION})
DASHBOARD_PAGES = (
    ("/app", "home (sends to the connections or the sign-in page)"),
    ("/app/signup", "sign up"),
    ("/app/login", "sign in"),
    ("/app/profile", "profile"),
    ("/app/connections", "connections"),
    ("/app/calendars", "unified calendars"),
    ("/app/calendars/{slug}", "a unified calendar's week"),
    ("/app/booking-pages", "booking pages"),
    ("/app/booking-pages/{slug}", "a booking page: its links, embed and preview, and its settings to edit"),
    ("/app/bookings", "bookings"),
    ("/app/bookings/{id}", "a booking's details, and cancel"),
    ("/app/polls", "polls"),
    ("/app/polls/{id}", "a poll: its share link, the overlap and decide"),
    ("/app/api-keys", "API keys"),
    ("/app/webhooks", "webhooks"),
    ("/app/webhooks/{id}", "a webhook and its deliveries"),
    ("/app/billing", "billing"),
)

ROUTES: tuple[Route, ...] = (
    # The gateway: accounts, sessions, API keys, health, the OpenAPI document.
    _r("POST", f"{V1}/auth/signup", GATEWAY, "Create an account (sets the session and CSRF cookies)",
       auth=PUBLIC_ONLY, scopes=NO_KEYS, tag="auth",
       doc={"request": "SignupRequest", "response": "User", "status": 201}),
    _r("POST", f"{V1}/auth/login", GATEWAY, "Sign in (sets the session and CSRF cookies)",
       auth=PUBLIC_ONLY, scopes=NO_KEYS, tag="auth", doc={"request": "LoginRequest", "response": "User", "status": 200}),
    _r("POST", f"{V1}/auth/logout", GATEWAY, "Sign out: ends the session and clears its cookies",
       auth=frozenset({PUBLIC, SESSION}), scopes=NO_KEYS, tag="auth", doc={"status": 204}),
    _r("GET", f"{V1}/me", GATEWAY, "Get current user profile", tag="account", doc={"response": "User", "status": 200}),
    _r("POST", f"{V1}/api-keys", GATEWAY, "Create a new API key (returns the full key once)", scopes=FULL,
       tag="api-keys", doc={"request": "ApiKeyCreate", "response": "ApiKeyCreated", "status": 201}),
    _r("GET", f"{V1}/api-keys", GATEWAY, "List all API keys (prefix and metadata only)", scopes=FULL,
       tag="api-keys", doc={"response": "ApiKeyList", "status": 200, "list": True}),
    _r("DELETE", f"{V1}/api-keys/{{id}}", GATEWAY, "Revoke an API key", scopes=FULL, tag="api-keys", doc={"status": 204}),
    # The 19 agent tools for function calling (any key; each tool's own request is held to the key's scope).
    _r("GET", f"{V1}/tools", GATEWAY, "List the 19 agent tools in a function-calling format (format=openai|anthropic|gemini|mcp)",
       tag="tools", doc={"response": "ToolList", "status": 200, "query": {"format": ["mcp", "openai", "anthropic", "gemini"]},
                         "problems": {422: "unknown_format"}}),
    _r("POST", f"{V1}/tools/{{name}}/call", GATEWAY, "Run one agent tool with the caller's key, as the MCP tool does",
       tag="tools", doc={"request": "ToolCallRequest", "response": "ToolCallResult", "status": 200,
                         "problems": {404: "tool_not_found", 422: "validation_error: errors name arguments.<name>"}}),
    # Rate-limited per address like every public route: each call fans out to every service.
    _r("GET", "/api/health", GATEWAY, "Health check endpoint", auth=PUBLIC_ONLY, scopes=NO_KEYS, tag="health",
       doc={"response": "Health", "status": 200}),
    _r("GET", "/schema/openapi.json", GATEWAY, "This OpenAPI document", auth=PUBLIC_ONLY, scopes=NO_KEYS,
       tag="docs", rate_limited=False, doc={"status": 200}),
    _r("GET", "/schema", GATEWAY, "Interactive API documentation (HTML)", auth=PUBLIC_ONLY, scopes=NO_KEYS,
       tag="docs", rate_limited=False, doc={"status": 200, "html": True}),
    _r("GET", "/schema/assets/{name}", GATEWAY, "Scripts and styles of the interactive documentation (served here)",
       auth=PUBLIC_ONLY, scopes=NO_KEYS, tag="docs", rate_limited=False, doc={"status": 200}),

    # The dashboard (calmesh_gateway.dashboard): HTML pages for a browser, GET only. A page with a
    # session cookie renders what the public API answers to that user; without one it sends the
    # visitor to sign in. Changes go from the page's script to the API rows above and below.
    *(_r("GET", path, GATEWAY, f"Dashboard: {summary} (HTML)", auth=DASHBOARD, scopes=NO_KEYS, tag="dashboard",
         doc={"status": 200, "html": True})
      for path, summary in DASHBOARD_PAGES),
    _r("GET", "/app/assets/{name}", GATEWAY, "Dashboard: scripts and styles (fingerprinted, served here)",
       auth=PUBLIC_ONLY, scopes=NO_KEYS, tag="dashboard", rate_limited=False, doc={"status": 200}),

    # connections: connections and the OAuth / push-notification callbacks of the providers.
    _r("GET", f"{V1}/connections", "connections", "List all calendar connections for the authenticated user"),
    _r("POST", f"{V1}/connections/google", "connections", "Initiate Google Calendar OAuth flow", scopes=FULL),
    _r("POST", f"{V1}/connections/microsoft", "connections", "Initiate Microsoft Outlook/365 OAuth flow", scopes=FULL),
    _r("POST", f"{V1}/connections/icloud", "connections", "Connect Apple iCloud Calendar via CalDAV", scopes=FULL),
    _r("POST", f"{V1}/connections/caldav", "connections", "Connect any CalDAV server", scopes=FULL),
    _r("POST", f"{V1}/connections/ical", "connections", "Subscribe to an iCal (.ics / webcal://) URL", scopes=FULL),
    _r("GET", f"{V1}/connections/{{id}}", "connections", "Get connection details and status"),
    _r("DELETE", f"{V1}/connections/{{id}}", "connections",
       "Disconnect a calendar (deletes connection and cached events)", scopes=FULL),
    _r("POST", f"{V1}/connections/{{id}}/sync", "connections", "Trigger a manual sync for a connection", scopes=FULL),
    # The authorization_url of POST /connections/{provider}: a browser page, for the signed-in user who
    # started the flow (the service checks that); it sets the binding cookie and redirects to the provider.
    _r("GET", f"{V1}/connections/{{provider}}/authorize", "connections",
       "Open the provider's consent screen (binds this browser to the flow)",
       auth=frozenset({PUBLIC, SESSION}), scopes=NO_KEYS, cookies=OAUTH_BINDING_COOKIES),
    _r("GET", f"{V1}/connections/{{provider}}/callback", "connections", "OAuth 2 redirect target (Google, Microsoft)",
       auth=PUBLIC_ONLY, scopes=NO_KEYS, cookies=OAUTH_BINDING_COOKIES),
    _r("POST", f"{V1}/connections/google/notifications", "connections", "Google Calendar push notifications",
       auth=PUBLIC_ONLY, scopes=NO_KEYS),
    _r("POST", f"{V1}/connections/microsoft/notifications", "connections", "Microsoft Graph change notifications",
       auth=PUBLIC_ONLY, scopes=NO_KEYS),

    # connections: unified calendars and their sources.
    _r("POST", f"{V1}/calendars", "connections", "Create a unified calendar", scopes=FULL, tag="calendars"),
    _r("GET", f"{V1}/calendars", "connections", "List all unified calendars", tag="calendars"),
    _r("GET", f"{V1}/calendars/{{slug}}", "connections", "Get unified calendar details", tag="calendars"),
    _r("PATCH", f"{V1}/calendars/{{slug}}", "connections", "Update a unified calendar", scopes=FULL, tag="calendars"),
    _r("DELETE", f"{V1}/calendars/{{slug}}", "connections", "Delete a unified calendar", scopes=FULL, tag="calendars"),
    _r("POST", f"{V1}/calendars/{{slug}}/sources", "connections", "Add a connection to a unified calendar",
       scopes=FULL, tag="calendars"),
    _r("PUT", f"{V1}/calendars/{{slug}}/sources/reorder", "connections",
       "Reorder sources within a unified calendar (sort_order determines default write target)", scopes=FULL,
       tag="calendars"),
    _r("DELETE", f"{V1}/calendars/{{slug}}/sources/{{source_id}}", "connections",
       "Remove a connection from a unified calendar", scopes=FULL, tag="calendars"),

    # availability: merged events, free/busy and conflicts (event writes go through it too).
    _r("GET", f"{V1}/calendars/{{slug}}/events", "availability", "Query merged events from all sources in a unified calendar",
       tag="events"),
    _r("POST", f"{V1}/calendars/{{slug}}/events", "availability",
       "Create an event on a connected calendar (for AI agents/MCP)", scopes=EVENTS, tag="events"),
    _r("DELETE", f"{V1}/calendars/{{slug}}/events", "availability", "Delete an event from a connected calendar",
       scopes=EVENTS, tag="events"),
    _r("GET", f"{V1}/calendars/{{slug}}/availability", "availability", "Query free/busy availability for a unified calendar",
       tag="availability"),
    _r("GET", f"{V1}/calendars/{{slug}}/conflicts", "availability", "Detect overlapping events across different sources",
       tag="availability"),
    _r("POST", f"{V1}/availability/find", "availability", "Find times when several calendars are free",
       tag="availability"),

    # booking: booking pages, bookings, polls, the public page and the embed script.
    _r("POST", f"{V1}/booking-pages", "booking", "Create a booking page attached to a unified calendar", scopes=FULL,
       tag="booking-pages"),
    _r("GET", f"{V1}/booking-pages", "booking", "List all booking pages", tag="booking-pages"),
    # With `handle`, anyone reads the page's public part (title, description, duration, timezone,
    # questions): what a booking form needs.
    _r("GET", f"{V1}/booking-pages/{{slug}}", "booking",
       "Get booking page configuration (with handle: its public part, no auth)", auth=ANYONE, tag="booking-pages"),
    _r("PATCH", f"{V1}/booking-pages/{{slug}}", "booking", "Update a booking page", scopes=FULL, tag="booking-pages"),
    _r("DELETE", f"{V1}/booking-pages/{{slug}}", "booking", "Delete a booking page", scopes=FULL, tag="booking-pages"),
    # The public booking endpoints: a key sent there is held to its scope, and only book and full
    # keys book (docs/api-guide.md: read and write keys get 403 there).
    _r("GET", f"{V1}/booking-pages/{{slug}}/slots", "booking", "Get available booking slots (public)",
       auth=ANYONE, scopes=BOOK, tag="booking-pages"),
    _r("POST", f"{V1}/booking-pages/{{slug}}/book", "booking", "Create a booking (public, visitor submits)",
       auth=PUBLIC_OR_KEY, scopes=BOOK, tag="bookings"),
    _r("POST", f"{V1}/booking-pages/{{slug}}/holds", "booking",
       "Hold a slot for the page's hold_minutes (public, or a book/full key)", auth=PUBLIC_OR_KEY, scopes=BOOK,
       tag="bookings"),
    _r("DELETE", f"{V1}/booking-pages/{{slug}}/holds/{{id}}", "booking", "Release a hold (public, or a book/full key)",
       auth=PUBLIC_OR_KEY, scopes=BOOK, tag="bookings"),
    _r("GET", f"{V1}/bookings", "booking", "List bookings for the authenticated user", tag="bookings"),
    _r("GET", f"{V1}/bookings/{{id}}", "booking", "Get booking details", tag="bookings"),
    _r("POST", f"{V1}/bookings/{{id}}/cancel", "booking",
       "Cancel a booking (HMAC signature for visitors, auth for owner)", auth=ANYONE, scopes=BOOK, tag="bookings"),
    _r("POST", f"{V1}/bookings/{{id}}/reschedule", "booking",
       "Move a booking to another offered slot (HMAC signature of reschedule_url for visitors, auth for owner)",
       auth=ANYONE, scopes=BOOK, tag="bookings"),
    # The signed link of a verification mail (pages with require_email_verification): the link alone
    # authorizes, so no credential is looked at (and no session's CSRF check refuses the page's form).
    _r("POST", f"{V1}/bookings/{{id}}/verify", "booking",
       "Confirm a booking awaiting the visitor's e-mail verification (HMAC signature of the mailed link)",
       auth=PUBLIC_ONLY, scopes=NO_KEYS, tag="bookings"),
    _r("GET", f"{V1}/bookings/{{id}}/verify", "booking",
       "The page a verification link opens: it asks before confirming (HTML)", auth=PUBLIC_ONLY, scopes=NO_KEYS,
       tag="bookings", doc={"html": True}),
    _r("POST", f"{V1}/polls", "booking", "Create a scheduling poll", scopes=BOOK, tag="polls"),
    _r("GET", f"{V1}/polls", "booking", "List all polls", tag="polls"),
    _r("GET", f"{V1}/polls/{{id}}", "booking", "Get a poll (public with the poll's token, or authenticated)",
       auth=ANYONE, scopes=READ, tag="polls"),
    _r("POST", f"{V1}/polls/{{id}}/votes", "booking", "Vote on a poll (public with the poll's token, or authenticated)",
       auth=ANYONE, scopes=BOOK, tag="polls"),
    _r("GET", f"{V1}/polls/{{id}}/overlap", "booking", "Get participant overlap", tag="polls"),
    _r("POST", f"{V1}/polls/{{id}}/decide", "booking", "Finalize poll with chosen time", scopes=BOOK, tag="polls"),
    _r("GET", "/embed.js", "booking", "The embed script (inline iframe or popup button)", auth=PUBLIC_ONLY,
       scopes=NO_KEYS, tag="embed"),
    # What the booking pages load (they carry no inline script): static, cached for a year, so not
    # counted against a visitor's per-address budget; only fingerprinted names reach booking.
    _r("GET", "/assets/booking/{name}", "booking", "Scripts and styles of the public booking pages",
       auth=PUBLIC_ONLY, scopes=NO_KEYS, tag="embed", rate_limited=False, constraints={"name": _PAGE_ASSET}),
    # A poll's voting page (its share link, vote_page_url): three segments, so never a /{handle}/{slug}.
    _r("GET", "/polls/{id}/vote", "booking", "A poll's public voting page (HTML, with the poll's token)",
       auth=PUBLIC_ONLY, scopes=NO_KEYS, tag="polls"),
    _r("GET", "/{handle}/{slug}", "booking", "The public booking page (HTML)", auth=PUBLIC_ONLY, scopes=NO_KEYS,
       tag="embed", constraints={"handle": _HANDLE, "slug": _SLUG}),

    # billing: the dashboard user's plan and subscription (session only), and Mollie's notices.
    _r("GET", f"{V1}/billing", "billing", "Get current subscription status", auth=SESSION_ONLY),
    _r("POST", f"{V1}/billing/subscribe", "billing", "Initiate Mollie first payment for subscription", auth=SESSION_ONLY),
    _r("POST", f"{V1}/billing/cancel", "billing", "Cancel active subscription", auth=SESSION_ONLY),
    _r("POST", f"{V1}/billing/mollie/webhook", "billing", "Mollie payment notice (form field id)", auth=PUBLIC_ONLY,
       scopes=NO_KEYS),

    # webhooks: subscriptions and deliveries (full scope).
    _r("POST", f"{V1}/webhooks", "webhooks", "Create a webhook subscription", scopes=FULL),
    _r("GET", f"{V1}/webhooks", "webhooks", "List webhook subscriptions", scopes=FULL),
    _r("GET", f"{V1}/webhooks/{{id}}", "webhooks", "Get a webhook subscription", scopes=FULL),
    _r("PATCH", f"{V1}/webhooks/{{id}}", "webhooks", "Update a webhook subscription", scopes=FULL),
    _r("DELETE", f"{V1}/webhooks/{{id}}", "webhooks", "Delete a webhook subscription", scopes=FULL),
    _r("POST", f"{V1}/webhooks/{{id}}/rotate-secret", "webhooks", "Rotate the signing secret", scopes=FULL),
    _r("POST", f"{V1}/webhooks/{{id}}/test", "webhooks", "Send a webhook.test delivery now", scopes=FULL),
    _r("GET", f"{V1}/webhooks/{{id}}/deliveries", "webhooks", "List delivery attempts", scopes=FULL),
    _r("POST", f"{V1}/webhooks/{{id}}/deliveries/{{delivery_id}}/retry", "webhooks", "Retry a delivery now", scopes=FULL),
    _r("POST", f"{V1}/webhooks/{{id}}/replay", "webhooks", "Deliver every matching event since an instant again",
       scopes=FULL),
)


class _Node:
    __slots__ = ("literals", "param", "routes")

    def __init__(self) -> None:
        self.literals: dict[str, _Node] = {}
        self.param: _Node | None = None
        self.routes: list[tuple[Route, tuple[tuple[int, str], ...]]] = []


@dataclass(frozen=True, slots=True)
class Match:
    route: Route | None
    params: dict[str, str]
    allowed: tuple[str, ...] = ()  # when route is None and the path exists: the methods it has


NO_MATCH = Match(None, {})


class RouteTable:
    """Matches a request path against the rows: literal segments win over parameters, and a
    path that exists with other methods is told apart (405) from one that does not (404)."""

    def __init__(self, routes: Iterable[Route] = ROUTES) -> None:
        self.routes = tuple(routes)
        self._root = _Node()
        seen: set[tuple[str, tuple[str, ...]]] = set()
        for route in self.routes:
            shape = tuple("{}" if _PARAM.match(s) else s for s in route.segments)
            if (route.method, shape) in seen:
                raise ValueError(f"two rows for {route.method} {route.path}")
            seen.add((route.method, shape))
            node = self._root
            for seg in route.segments:
                if _PARAM.match(seg):
                    node.param = node.param or _Node()
                    node = node.param
                else:
                    node = node.literals.setdefault(seg, _Node())
            positions = tuple((i, m.group(1)) for i, s in enumerate(route.segments) if (m := _PARAM.match(s)))
            node.routes.append((route, positions))

    def _leaves(self, node: _Node, segs: list[str], i: int) -> Iterable[_Node]:
        if i == len(segs):
            if node.routes:
                yield node
            return
        child = node.literals.get(segs[i])
        if child is not None:
            yield from self._leaves(child, segs, i + 1)
        if node.param is not None:
            yield from self._leaves(node.param, segs, i + 1)

    def match(self, method: str, path: str) -> Match:
        """The row for `method` `path` (a decoded path), with its parameters."""
        if len(path) > 2048 or not path.startswith("/"):
            return NO_MATCH
        trimmed = path[1:-1] if path.endswith("/") and len(path) > 1 else path[1:]
        segs = trimmed.split("/")
        for seg in segs:
            if seg in ("", ".", "..") or "\x00" in seg:
                return NO_MATCH
        want = "GET" if method == "HEAD" else method
        allowed: list[str] = []
        for leaf in self._leaves(self._root, segs, 0):
            for route, positions in leaf.routes:
                params = _params(route, positions, segs)
                if params is None:
                    continue
                if route.method == want:
                    return Match(route, params)
                allowed.append(route.method)
        if allowed:
            return Match(None, {}, tuple(dict.fromkeys(allowed)))
        return NO_MATCH


def _params(route: Route, positions: tuple[tuple[int, str], ...], segs: list[str]) -> dict[str, str] | None:
    params = {name: segs[i] for i, name in positions}
    for name, pattern in route.constraints:
        if not pattern.match(params.get(name, "")):
            return None
    if route.path == "/{handle}/{slug}" and params["handle"] in RESERVED_HANDLES:
        return None
    return params
