"""The gateway's own request decoding and cookies, without a server."""

from __future__ import annotations

import pytest

from calmesh_common.problems import Problem
from calmesh_common.settings import Settings
from calmesh_common.timefmt import rfc3339, rfc3339_or_none
from calmesh_gateway.api import _cleared_cookies, _session_cookies, decode_json, valid_timezone
from calmesh_gateway.schemas import ApiKeyCreate, SignupRequest


@pytest.mark.parametrize(("body", "code", "field"), [
    (b"{", "malformed_json", None),
    (b"", "malformed_json", None),
    (b"   ", "malformed_json", None),
    (b'"text"', "validation_error", "body"),
    (b'{"name": "k", "scope": "admin"}', "validation_error", "scope"),
    (b'{"name": "k", "scope": "read", "owner": "usr_x"}', "validation_error", "owner"),
    (b'{"scope": "read"}', "validation_error", "name"),
    (b'{"name": 7, "scope": "read"}', "validation_error", "name"),
    (b'{"name": "k", "scope": "read", "expires_at": "soon"}', "validation_error", "expires_at"),
])
def test_bad_bodies_are_400s_naming_the_field(body: bytes, code: str, field: str | None) -> None:
    with pytest.raises(Problem) as caught:
        decode_json(body, "application/json", ApiKeyCreate)
    problem = caught.value
    assert problem.status == 400 and problem.code == code
    if field is not None:
        assert problem.errors is not None and problem.errors[0].field == field


def test_a_non_json_content_type_is_a_415() -> None:
    with pytest.raises(Problem) as caught:
        decode_json(b"{}", "text/plain", SignupRequest)
    assert caught.value.status == 415


def test_a_good_body_decodes() -> None:
    data = decode_json(b'{"email":"a@b.co","password":"12345678","handle":"abc"}', "application/json; charset=utf-8",
                       SignupRequest)
    assert data.handle == "abc" and data.timezone is None


@pytest.mark.parametrize("secure", [True, False])
def test_session_cookie_is_httponly_lax_and_secure_when_configured(secure: bool) -> None:
    settings = Settings.from_env({}, session_secret="s", cookie_secure=secure)
    session, csrf = (c.to_header(header="") for c in _session_cookies(settings, "token-value-123456789012345"))
    assert session.startswith("calmesh_session=token-value") and "HttpOnly" in session
    assert "SameSite=lax" in session or "samesite=lax" in session.lower()
    assert ("Secure" in session) is secure and ("Secure" in csrf) is secure
    assert csrf.startswith("calmesh_csrf=") and "HttpOnly" not in csrf
    cleared = [c.to_header(header="") for c in _cleared_cookies(settings)]
    assert all("Max-Age=0" in c for c in cleared)


def test_instants_are_utc_whole_seconds_and_zones_are_iana() -> None:
    from datetime import datetime, timedelta, timezone

    assert rfc3339(datetime(2026, 3, 15, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))) == "2026-03-15T09:00:00Z"
    assert rfc3339_or_none(None) is None
    assert valid_timezone("Europe/Amsterdam") and valid_timezone("UTC")
    assert not valid_timezone("Mars/Olympus") and not valid_timezone("../../etc/passwd")
