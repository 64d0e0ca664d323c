"""CSRF: cookie-authenticated writes need the session's token; cookies are parsed leniently."""

from __future__ import annotations

import pytest

from calmesh_gateway.security import csrf_ok, csrf_token, looks_like_session_token, new_session_token, parse_cookies, session_hash

SECRET = "test-session-secret"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_writes_need_the_sessions_csrf_token(method: str) -> None:
    token = new_session_token()
    good = csrf_token(SECRET, token)
    assert csrf_ok(SECRET, method, token, good)
    assert not csrf_ok(SECRET, method, token, None)
    assert not csrf_ok(SECRET, method, token, "")
    assert not csrf_ok(SECRET, method, token, good[:-1])
    # Another session's token does not do.
    assert not csrf_ok(SECRET, method, token, csrf_token(SECRET, new_session_token()))


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_reads_need_no_csrf_token(method: str) -> None:
    assert csrf_ok(SECRET, method, new_session_token(), None)


def test_the_csrf_token_depends_on_the_secret_and_is_not_the_session_token() -> None:
    token = new_session_token()
    assert csrf_token(SECRET, token) != csrf_token("other", token)
    assert csrf_token(SECRET, token) != token
    assert session_hash(SECRET, token) != token and len(session_hash(SECRET, token)) == 64


def test_malformed_cookie_headers_do_not_break_parsing() -> None:
    assert parse_cookies("a=1; b; =x; calmesh_session=abc; ;c=\"q\"") == {"a": "1", "calmesh_session": "abc", "c": "q"}
    assert parse_cookies("") == {}
    assert parse_cookies(";;;") == {}


def test_session_token_sanity_check() -> None:
    assert looks_like_session_token(new_session_token())
    assert not looks_like_session_token("short")
    assert not looks_like_session_token("x" * 30 + "'; DROP TABLE")
