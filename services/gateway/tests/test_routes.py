"""The route table is the one place that says who may call what. These tests walk it against the
contract (api.md) and the public reference, so that no endpoint is ever served without a declared
scope, and check the scope rules users rely on."""

from __future__ import annotations

import os
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
    Route,
    RouteTable,
)

REPO = Path(__file__).resolve().parents[3]


def _spec_dir() -> Path:
    candidates = [Path(os.environ["CALMESH_SPEC_DIR"])] if os.environ.get("CALMESH_SPEC_DIR") else []
    candidates += [REPO.parent / "shared" / "spec", REPO / "shared" / "spec", Path("/work/shared/spec")]
    for c in candidates:
        if (c / "api.md").exists():
            return c
    raise AssertionError(f"api.md not found in {candidates}; set CALMESH_SPEC_DIR")


def _norm(path: str) -> str:
    path = re.split(r"[?\[]", path)[0].rstrip(".,;")
    if not path.startswith("/api/") and path not in ("/embed.js",) and not path.startswith("/{handle}"):
        path = "/api/v1" + path
    path = re.sub(r":[A-Za-z_]+", "{}", path)
    return re.sub(r"\{[^}/]*\}", "{}", path)


def _shape(route: Route) -> str:
    return re.sub(r"\{[^}/]*\}", "{}", route.path)


TABLE = {(r.method, _shape(r)): r for r in ROUTES}


def api_md_endpoints() -> set[tuple[str, str]]:
    text = (_spec_dir() / "api.md").read_text()
    found: set[tuple[str, str]] = set()
    for methods, path in re.findall(r"`((?:GET|POST|PUT|PATCH|DELETE)(?:\|(?:GET|POST|PUT|PATCH|DELETE))*) (/[^\s`]*)", text):
        for method in methods.split("|"):
            found.add((method, _norm(path)))
    # The public page and the embed script are named without a method: both are GETs.
    assert "/{handle}/{slug}" in text and "/embed.js" in text
    found |= {("GET", "/{}/{}"), ("GET", "/embed.js")}
    return found


_VERB = [
    (r"^(Create|Initiate|Connect|Trigger|Add)", "POST"),
    (r"^Reorder", "PUT"),
    (r"^(List|Get|Query|Check|Detect|Health)", "GET"),
    (r"^Update", "PATCH"),
    (r"^(Delete|Revoke|Disconnect|Remove)", "DELETE"),
    (r"^Cancel", "POST"),
]


_VERBS = "|".join(["Create", "Initiate", "Connect", "Trigger", "Add", "Reorder", "List", "Get", "Query", "Check",
                   "Detect", "Health", "Update", "Delete", "Revoke", "Disconnect", "Remove", "Cancel"])


def reference_endpoints() -> list[tuple[str, str, str]]:
    """(method, path, auth) of each endpoint of the reference's list. The list gives no methods:
    they follow from the wording ("Create …" is a POST, "Update …" a PATCH, and so on)."""
    text = (_spec_dir() / "calmesh-reference.txt").read_text()
    listing = text[text.index("38 endpoints") : text.index("Embed a CalMesh")].splitlines()[1:]
    entries: list[list[str]] = []
    for line in listing:
        auth = re.match(r"auth: (session/key|session)", line)
        if auth:
            entries[-1][2] = auth.group(1)
            line = line[auth.end():]
        found = re.match(rf"(/api/\S+?)(?=(?:{_VERBS})\b)(.*)$", line)
        if found:
            entries.append([found.group(1), found.group(2), ""])
    out = []
    for path, desc, auth in entries:
        method = next(m for pattern, m in _VERB if re.match(pattern, desc))
        out.append((method, _norm(path), auth))
    return out


def test_the_reference_lists_38_endpoints_and_all_are_parsed() -> None:
    assert len(reference_endpoints()) == 38


def test_every_endpoint_of_api_md_has_a_row() -> None:
    missing = sorted(e for e in api_md_endpoints() if e not in TABLE)
    assert not missing, f"endpoints of api.md without a row in the route table: {missing}"


def test_every_endpoint_of_the_reference_has_a_row_that_honours_its_auth() -> None:
    for method, path, auth in reference_endpoints():
        route = TABLE.get((method, path))
        assert route is not None, f"{method} {path} of the reference has no row"
        if auth == "session/key":
            assert {SESSION, KEY} <= route.auth, route
        elif auth == "session":
            assert SESSION in route.auth, route
            # Session-only in the reference; api.md opens API keys and the full-scope capabilities
            # (connections, calendars and sources) to full keys, never to narrower ones.
            assert route.scopes <= {"full"}, route
        else:
            assert PUBLIC in route.auth, route


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
