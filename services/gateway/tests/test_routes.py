"""The route table is the one place that says who may call what. These tests walk it against the
API guide's endpoint table (docs/api-guide.md, "Endpoints"), so that no endpoint is ever served
without a declared scope or left out of the guide, and check the scope rules users rely on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from calmesh_gateway.routes import (
    ALL_SCOPES,
    GATEWAY,
    KEY,
    PUBLIC,
    ROUTES,
    SERVICES,
    SESSION,
    RouteTable,
)

REPO = Path(__file__).resolve().parents[3]
GUIDE = REPO / "docs" / "api-guide.md"


def guide_endpoints() -> dict[tuple[str, str], tuple[frozenset[str], frozenset[str], str]]:
    """(method, path) -> (who, scopes, service) of each row of the API guide's endpoint table."""
    text = GUIDE.read_text()
    table = text[text.index("## Endpoints") :]
    table = table[: table.index("\n## ")]
    found: dict[tuple[str, str], tuple[frozenset[str], frozenset[str], str]] = {}
    for line in table.splitlines():
        row = re.match(r"\| (GET|POST|PUT|PATCH|DELETE) \| `([^`]+)` \| ([^|]+) \| ([^|]+) \| ([a-z]+) \|", line)
        if not row:
            continue
        method, path, who, scopes, service = row.groups()
        key = (method, path)
        assert key not in found, f"{method} {path} stands twice in the guide"
        names = frozenset(s.strip() for s in scopes.split(",") if s.strip() != "—")
        found[key] = (frozenset(w.strip() for w in who.split(",")), names, service)
    return found


def test_the_guide_lists_every_endpoint_the_product_promises() -> None:
    """The endpoints of the public product reference and of the contract, each with the
    credentials it takes, are all in the guide's table (the 97 rows of today; a row may be added,
    none of these may go)."""
    guide = guide_endpoints()
    for method, path, who in [
        ("POST", "/api/v1/auth/signup", {PUBLIC}),
        ("GET", "/api/v1/me", {SESSION, KEY}),
        ("POST", "/api/v1/connections/google", {SESSION, KEY}),
        ("GET", "/api/v1/calendars/{slug}/availability", {SESSION, KEY}),
        ("POST", "/api/v1/booking-pages/{slug}/book", {PUBLIC, KEY}),
        ("POST", "/api/v1/polls/{id}/votes", {PUBLIC, SESSION, KEY}),
        ("GET", "/api/v1/billing", {SESSION}),
        ("POST", "/api/v1/billing/mollie/webhook", {PUBLIC}),
        ("GET", "/{handle}/{slug}", {PUBLIC}),
        ("GET", "/embed.js", {PUBLIC}),
    ]:
        assert (method, path) in guide, f"{method} {path} is missing from the guide"
        assert guide[(method, path)][0] == who, (method, path, guide[(method, path)])
    assert len(guide) >= 97


def test_the_route_table_serves_exactly_the_guides_endpoints_with_their_auth_and_scopes() -> None:
    guide = guide_endpoints()
    served = {(r.method, r.path): (r.auth, r.scopes, r.service) for r in ROUTES}
    missing = sorted(set(guide) - set(served))
    undocumented = sorted(set(served) - set(guide))
    assert not missing, f"endpoints of the guide without a row in the route table: {missing}"
    assert not undocumented, f"rows of the route table the guide does not list: {undocumented}"
    differ = {k: (guide[k], served[k]) for k in guide if guide[k] != served[k]}
    assert not differ, f"rows whose auth, scopes or service differ from the guide: {differ}"


def test_session_only_endpoints_never_open_to_narrow_keys() -> None:
    """Billing is for the signed-in owner; where an endpoint is for sessions in the product, keys
    may reach it only as `full` keys, never as narrower ones."""
    for route in ROUTES:
        if KEY in route.auth and route.tag in {"api-keys", "webhooks", "billing"}:
            assert route.scopes == {"full"}, route
        if route.tag == "billing" and PUBLIC not in route.auth:
            assert route.auth == {SESSION}, route


def test_no_row_is_served_without_declared_auth_and_scopes() -> None:
    for route in ROUTES:
        assert route.auth, route
        assert route.auth <= {PUBLIC, SESSION, KEY}, route
        assert route.scopes <= set(ALL_SCOPES), route
        if KEY in route.auth:
            assert route.scopes, f"{route.method} {route.path} accepts keys but names no scope"
            assert "full" in route.scopes, f"full may do everything, but not {route.method} {route.path}"
        if PUBLIC not in route.auth and KEY not in route.auth:
            assert not route.scopes
        assert route.service == GATEWAY or route.service in SERVICES, route
        assert route.summary


def test_every_row_is_matched_by_its_own_path() -> None:
    table = RouteTable()
    for route in ROUTES:
        concrete = re.sub(r"\{[^}]+\}", "abc-123", route.path)
        if route.path == "/{handle}/{slug}":
            concrete = "/alice/intro-call"
        if route.path == "/assets/booking/{name}":
            concrete = "/assets/booking/booking-page.0123456789abcdef.js"
        match = table.match(route.method, concrete)
        assert match.route is route, (route, match)


def test_the_booking_pages_assets_are_public_and_only_fingerprinted_names_reach_booking() -> None:
    table = RouteTable()
    for name in ("booking-page.0123456789abcdef.js", "booking.fedcba9876543210.css"):
        match = table.match("GET", f"/assets/booking/{name}")
        assert match.route is not None and match.route.service == "booking" and match.route.public, name
        assert not match.route.scopes  # a key sent along is refused, as on the page itself
    for name in ("booking-page.js", "x.0123456789abcdef.html", "..%2Fsecrets.0123456789abcdef.js", "a" * 41 + ".0123456789abcdef.js"):
        assert table.match("GET", f"/assets/booking/{name}").route is None, name


@pytest.mark.parametrize(
    ("method", "path", "scope", "allowed"),
    [
        # book cannot create events directly, and write cannot book.
        ("POST", "/api/v1/calendars/work/events", "book", False),
        ("POST", "/api/v1/calendars/work/events", "write", True),
        ("DELETE", "/api/v1/calendars/work/events", "book", False),
        ("POST", "/api/v1/booking-pages/intro/book", "write", False),
        ("POST", "/api/v1/booking-pages/intro/book", "read", False),
        ("POST", "/api/v1/booking-pages/intro/book", "book", True),
        # A key sent to the public booking endpoints is held to its scope: read and write get 403.
        ("GET", "/api/v1/booking-pages/intro/slots", "read", False),
        ("GET", "/api/v1/booking-pages/intro/slots", "write", False),
        ("GET", "/api/v1/booking-pages/intro/slots", "book", True),
        ("POST", "/api/v1/bookings/bk_1/cancel", "write", False),
        ("POST", "/api/v1/bookings/bk_1/cancel", "book", True),
        # A verification link needs no key and takes none: the signed link alone authorizes.
        ("POST", "/api/v1/bookings/bk_1/verify", "full", False),
        ("POST", "/api/v1/polls", "write", False),
        ("POST", "/api/v1/polls", "book", True),
        ("POST", "/api/v1/polls/poll_1/votes", "read", False),
        ("POST", "/api/v1/polls/poll_1/decide", "book", True),
        # read reads everything it lists.
        ("GET", "/api/v1/calendars/work/availability", "read", True),
        ("GET", "/api/v1/calendars/work/conflicts", "read", True),
        ("POST", "/api/v1/availability/find", "read", True),  # a POST that only reads
        ("GET", "/api/v1/polls/poll_1/overlap", "read", True),
        ("GET", "/api/v1/booking-pages", "read", True),
        ("GET", "/api/v1/me", "read", True),
        # Only full manages connections, calendars, booking pages, webhooks and keys.
        ("POST", "/api/v1/connections/ical", "write", False),
        ("POST", "/api/v1/calendars", "book", False),
        ("PATCH", "/api/v1/booking-pages/intro", "book", False),
        ("GET", "/api/v1/webhooks", "read", False),
        ("GET", "/api/v1/webhooks", "full", True),
        ("POST", "/api/v1/api-keys", "write", False),
        ("POST", "/api/v1/api-keys", "full", True),
        # Billing is for the dashboard session only.
        ("GET", "/api/v1/billing", "full", False),
    ],
)
def test_scope_rules(method: str, path: str, scope: str, allowed: bool) -> None:
    match = RouteTable().match(method, path)
    assert match.route is not None
    assert match.route.allows_key_scope(scope) is allowed


def test_required_scope_names_the_narrowest_scope() -> None:
    table = RouteTable()
    assert table.match("POST", "/api/v1/calendars/w/events").route.required_scope == "write"  # type: ignore[union-attr]
    assert table.match("POST", "/api/v1/polls").route.required_scope == "book"  # type: ignore[union-attr]
    assert table.match("POST", "/api/v1/webhooks").route.required_scope == "full"  # type: ignore[union-attr]
    assert table.match("GET", "/api/v1/calendars").route.required_scope == "read"  # type: ignore[union-attr]
    assert table.match("GET", "/api/v1/billing").route.required_scope == "session"  # type: ignore[union-attr]


def test_unknown_paths_and_methods_are_told_apart() -> None:
    table = RouteTable()
    assert table.match("GET", "/api/v1/nothing-here").route is None
    assert table.match("GET", "/api/v1/nothing-here").allowed == ()
    wrong_method = table.match("PUT", "/api/v1/calendars/work")
    assert wrong_method.route is None and set(wrong_method.allowed) == {"GET", "PATCH", "DELETE"}


@pytest.mark.parametrize("path", [
    "/api/v1/calendars/../webhooks", "/api/v1/calendars/./x", "/api/v1//calendars", "/api/v1/calendars/a/../../webhooks",
    "/api/v1", "/api/health/x", "/schema/x/y", "relative",
])
def test_odd_paths_match_nothing(path: str) -> None:
    assert RouteTable().match("GET", path).route is None


def test_literal_segments_win_over_parameters() -> None:
    table = RouteTable()
    google = table.match("POST", "/api/v1/connections/google")
    assert google.route is not None and google.route.path == "/api/v1/connections/google"
    as_id = table.match("GET", "/api/v1/connections/google")
    assert as_id.route is not None and as_id.route.path == "/api/v1/connections/{id}"
    assert as_id.params == {"id": "google"}
    page = table.match("GET", "/alice/intro")
    assert page.route is not None and page.route.service == "booking"
    # Reserved first segments and bad handles are never the public booking page.
    assert table.match("GET", "/api/v2").route is None
    assert table.match("GET", "/Alice/intro").route is None


def test_a_polls_voting_page_is_public_and_does_not_take_a_booking_pages_place() -> None:
    table = RouteTable()
    vote = table.match("GET", "/polls/poll_abc123/vote")
    assert vote.route is not None and vote.route.path == "/polls/{id}/vote" and vote.route.service == "booking"
    assert vote.route.public and not vote.route.scopes and vote.params == {"id": "poll_abc123"}
    page = table.match("GET", "/polls/intro")  # two segments stay a booking page (handle "polls")
    assert page.route is not None and page.route.path == "/{handle}/{slug}"
    assert table.match("POST", "/polls/poll_abc123/vote").route is None


def test_the_oauth_start_page_is_a_browser_route_and_only_binding_cookies_reach_the_service() -> None:
    from calmesh_gateway.front import _forwarded_cookies

    table = RouteTable()
    start = table.match("GET", "/api/v1/connections/google/authorize").route
    callback = table.match("GET", "/api/v1/connections/microsoft/callback").route
    assert start is not None and start.service == "connections" and start.auth == {PUBLIC, SESSION}
    assert not start.allows_key_scope("full")  # a browser page: no API key opens it
    assert callback is not None and callback.auth == {PUBLIC}
    header = b"calmesh_session=s3ss10n; calmesh_csrf=c; calmesh_oauth_ab12=v1; __Host-calmesh_oauth_cd34=v2; other=x"
    for route in (start, callback):
        assert _forwarded_cookies(route, header) == [(b"cookie", b"calmesh_oauth_ab12=v1; __Host-calmesh_oauth_cd34=v2")]
    # Every other row passes no cookie on.
    assert all(not r.cookies for r in ROUTES if r not in (start, callback))
