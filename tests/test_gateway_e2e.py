"""The gateway end to end, through the whole platform running as processes (the `stack` fixture),
plus gateway processes started here: a second replica, and one whose services are an echo server
(to see exactly what is forwarded), a slow server and a dead port."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from calmesh_common.devstack.embedded import free_port
from calmesh_common.devstack.supervisor import Stack
from calmesh_gateway.routes import KEY, PUBLIC, ROUTES, SESSION, Route

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
GATEWAY_REFUSALS = {"insufficient_scope", "unauthorized", "invalid_session", "csrf_failed", "route_not_found",
                    "rate_limited", "invalid_api_key", "api_key_revoked", "api_key_expired", "invalid_authorization",
                    "service_unavailable", "gateway_timeout", "bad_gateway"}


# Helpers ------------------------------------------------------------------------------------------

class Account:
    """A signed-up user: a cookie-carrying client, its CSRF token and its profile."""

    def __init__(self, base: str, suffix: str | None = None) -> None:
        self.suffix = suffix or uuid.uuid4().hex[:10]
        self.email = f"user-{self.suffix}@example.com"
        self.password = "a long enough passphrase"
        self.handle = f"user-{self.suffix}"
        self.client = httpx.Client(base_url=base, timeout=15)
        r = self.client.post("/api/v1/auth/signup", json={
            "email": self.email, "password": self.password, "handle": self.handle, "name": "Test User",
            "timezone": "Europe/Amsterdam"})
        assert r.status_code == 201, r.text
        self.signup_response = r
        self.user = r.json()
        self.csrf = self.client.cookies["calmesh_csrf"]

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.post(path, headers={"X-CSRF-Token": self.csrf}, **kw)

    def delete(self, path: str) -> httpx.Response:
        return self.client.delete(path, headers={"X-CSRF-Token": self.csrf})

    def key(self, scope: str, **extra: Any) -> dict[str, Any]:
        r = self.post("/api/v1/api-keys", json={"name": f"{scope} key", "scope": scope, **extra})
        assert r.status_code == 201, r.text
        return r.json()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def code(r: httpx.Response) -> str | None:
    if r.headers.get("content-type", "").startswith(("application/problem+json", "application/json")):
        try:
            body = r.json()
        except ValueError:
            return None
        return body.get("code") if isinstance(body, dict) else None
    return None


def concrete(route: Route) -> str:
    if route.path == "/{handle}/{slug}":
        return "/nobody-here/no-page"
    if route.path == "/assets/booking/{name}":
        return "/assets/booking/x-test-nothing.0000000000000000.js"  # only fingerprinted names are routed
    return re.sub(r"\{[^}]+\}", "x-test-nothing", route.path)


class Echo:
    """A stand-in service: answers every request with what it received; `/slow` paths hang."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        echo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = {"method": self.command, "path": self.path, "headers": [[k.lower(), v] for k, v in self.headers.items()],
                        "body": body.decode("utf-8", "replace")}
                if self.path != "/health":
                    echo.requests.append(seen)
                if "slow" in self.path:
                    time.sleep(3)
                payload = json.dumps(seen).encode()
                # `/unavailable` paths: a service that is up but whose database is away.
                self.send_response(503 if "unavailable" in self.path else 200 if self.command != "POST" else 201)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.send_header("x-echo", "yes")
                self.send_header("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_gateway(stack: Stack, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """Another gateway process beside the stack's, on a free port, with `env` changed."""
    base_env = dict(next(c for c in stack.children if c.name == "gateway").env)
    port = free_port()
    base_env.update({"CALMESH_PORT": str(port), **env})
    process = subprocess.Popen([str(Path(sys.executable).parent / "calmesh-gateway")], env=base_env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}")
        try:
            httpx.get(f"{url}/api/health", timeout=5)
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the extra gateway did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def gw(stack: Stack) -> str:
    return stack.gateway_url


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    e = Echo()
    yield e
    e.close()


@pytest.fixture(scope="module")
def odd_gateway(stack: Stack, echo: Echo) -> Iterator[str]:
    """A gateway whose webhooks service is the echo server and whose billing service is a dead
    port, with a 1 s forwarding timeout and small rate limits."""
    process, url = start_gateway(
        stack,
        CALMESH_WEBHOOKS_URL=echo.url,
        CALMESH_BILLING_URL=f"http://127.0.0.1:{free_port()}",
        CALMESH_FORWARD_TIMEOUT_SECONDS="1",
        CALMESH_HEALTH_TIMEOUT_SECONDS="1",
        CALMESH_RATE_LIMIT_PER_MINUTE="60",
        CALMESH_RATE_LIMIT_BURST="5",
        CALMESH_PUBLIC_RATE_LIMIT_PER_MINUTE="4",
        CALMESH_PLAN_PRO_API_REQUESTS_PER_DAY="3",
    )
    yield url
    stop(process)


@pytest.fixture(scope="module")
def replica(stack: Stack) -> Iterator[str]:
    """A second gateway replica, configured like the stack's."""
    process, url = start_gateway(stack)
    yield url
    stop(process)


# Accounts -----------------------------------------------------------------------------------------

def test_signup_returns_the_user_and_sets_session_and_csrf_cookies(gw: str) -> None:
    account = Account(gw)
    user = account.user
    assert set(user) == {"id", "email", "handle", "name", "timezone", "plan", "created_at"}
    assert user["id"].startswith("usr_") and user["plan"] == "free" and user["timezone"] == "Europe/Amsterdam"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", user["created_at"])
    cookies = {c.split("=", 1)[0]: c for c in account.signup_response.headers.get_list("set-cookie")}
    session, csrf = cookies["calmesh_session"], cookies["calmesh_csrf"]
    assert "HttpOnly" in session and "samesite=lax" in session.lower() and "Path=/" in session
    assert "HttpOnly" not in csrf and "samesite=lax" in csrf.lower()
    me = account.client.get("/api/v1/me")
    assert me.status_code == 200 and "password" not in me.text
    assert me.json() == {**user, "auth": {"type": "session", "scope": "full", "key_id": None}}


def test_me_tells_a_key_holder_the_scope_of_the_key(gw: str) -> None:
    account = Account(gw)
    created = account.key("book")
    me = httpx.get(f"{gw}/api/v1/me", headers=bearer(created["key"])).json()
    assert me["id"] == account.user["id"]
    assert me["auth"] == {"type": "key", "scope": "book", "key_id": created["id"]}


def test_signup_refuses_taken_emails_whatever_their_case_and_taken_handles(gw: str) -> None:
    first = Account(gw)
    r = httpx.post(f"{gw}/api/v1/auth/signup", json={"email": first.email.upper(), "password": "another passphrase",
                                                     "handle": f"x{first.suffix}"})
    assert r.status_code == 409 and r.json()["code"] == "email_taken"
    r = httpx.post(f"{gw}/api/v1/auth/signup", json={"email": f"other-{first.suffix}@example.com",
                                                     "password": "another passphrase", "handle": first.handle})
    assert r.status_code == 409 and r.json()["code"] == "handle_taken"


@pytest.mark.parametrize(("body", "content_type", "status", "problem"), [
    (b'{"email": "a@example.com", "password": "long enough", ', "application/json", 400, "malformed_json"),
    (b"", "application/json", 400, "malformed_json"),
    (b"[1, 2]", "application/json", 400, "validation_error"),
    (b'{"email": 5, "password": "long enough", "handle": "abc"}', "application/json", 400, "validation_error"),
    (b'{"email": "a@example.com", "password": "long enough", "handle": "abc", "admin": true}', "application/json", 400,
     "validation_error"),
    (b'{"email": "a@example.com", "password": "long enough"}', "application/json", 400, "validation_error"),
    (b'{"email": "a@example.com", "password": "short", "handle": "abc-def"}', "application/json", 400, "validation_error"),
    (b'{"email": "a@example.com", "password": "long enough", "handle": "Not Valid"}', "application/json", 400,
     "validation_error"),
    (b'{"email": "not-an-email", "password": "long enough", "handle": "abc-def"}', "application/json", 400,
     "validation_error"),
    (b'{"email": "a@example.com", "password": "long enough", "handle": "abc-def", "timezone": "Mars/Olympus"}',
     "application/json", 400, "validation_error"),
    (b'{"email": "a@example.com", "password": "long enough", "handle": "api"}', "application/json", 400,
     "validation_error"),
    (b"email=a@example.com", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
])
def test_bad_signup_input_is_a_clear_problem_and_nothing_is_stored(gw: str, body: bytes, content_type: str,
                                                                    status: int, problem: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    body = body.replace(b"a@example.com", f"bad-{suffix}@example.com".encode()).replace(b"abc-def", f"h-{suffix}".encode())
    r = httpx.post(f"{gw}/api/v1/auth/signup", content=body, headers={"content-type": content_type})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == problem and r.json()["status"] == status and r.json()["detail"]
    assert "Traceback" not in r.text
    if problem == "validation_error":
        assert r.json()["errors"][0]["field"]
    # Nothing was stored: the same email and handle can still sign up.
    ok = httpx.post(f"{gw}/api/v1/auth/signup", json={"email": f"bad-{suffix}@example.com",
                                                      "password": "long enough", "handle": f"h-{suffix}"})
    assert ok.status_code == 201, ok.text


def test_login_and_logout(gw: str) -> None:
    account = Account(gw)
    wrong_password = httpx.post(f"{gw}/api/v1/auth/login", json={"email": account.email, "password": "not the one"})
    unknown_email = httpx.post(f"{gw}/api/v1/auth/login", json={"email": f"nobody-{account.suffix}@example.com",
                                                                "password": account.password})
    assert wrong_password.status_code == unknown_email.status_code == 401
    # The answer does not say which of the two was wrong.
    assert wrong_password.json()["detail"] == unknown_email.json()["detail"]
    assert wrong_password.json()["code"] == unknown_email.json()["code"] == "invalid_credentials"

    client = httpx.Client(base_url=gw)
    r = client.post("/api/v1/auth/login", json={"email": account.email.upper(), "password": account.password})
    assert r.status_code == 200 and r.json()["id"] == account.user["id"]
    assert client.get("/api/v1/me").json()["handle"] == account.handle
    csrf = client.cookies["calmesh_csrf"]
    session = client.cookies["calmesh_session"]

    refused = client.post("/api/v1/auth/logout")
    assert refused.status_code == 403 and refused.json()["code"] == "csrf_failed"
    out = client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 204
    assert any("calmesh_session=" in c and "Max-Age=0" in c for c in out.headers.get_list("set-cookie"))
    # The old cookie no longer works, on the next request.
    stale = httpx.get(f"{gw}/api/v1/me", cookies={"calmesh_session": session})
    assert stale.status_code == 401 and stale.json()["code"] == "invalid_session"
    # The other session (from signup) is untouched; logging out with no session is harmless.
    assert account.client.get("/api/v1/me").status_code == 200
    assert httpx.post(f"{gw}/api/v1/auth/logout").status_code == 204


def test_login_bad_input(gw: str) -> None:
    r = httpx.post(f"{gw}/api/v1/auth/login", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "malformed_json"
    r = httpx.post(f"{gw}/api/v1/auth/login", json={"email": "a@example.com"})
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "password"


def test_cookie_authenticated_writes_need_the_csrf_token_and_key_requests_do_not(gw: str) -> None:
    account = Account(gw)
    no_token = account.client.post("/api/v1/api-keys", json={"name": "k", "scope": "read"})
    assert no_token.status_code == 403 and no_token.json()["code"] == "csrf_failed"
    wrong = account.client.post("/api/v1/api-keys", json={"name": "k", "scope": "read"},
                                headers={"X-CSRF-Token": account.csrf[:-2] + "xx"})
    assert wrong.status_code == 403 and wrong.json()["code"] == "csrf_failed"
    # Another user's CSRF token does not do either.
    other = Account(gw)
    foreign = account.client.post("/api/v1/api-keys", json={"name": "k", "scope": "read"},
                                  headers={"X-CSRF-Token": other.csrf})
    assert foreign.status_code == 403
    assert account.client.get("/api/v1/api-keys").status_code == 200  # reads need no token
    full = account.key("full")
    by_key = httpx.post(f"{gw}/api/v1/api-keys", json={"name": "k2", "scope": "read"}, headers=bearer(full["key"]))
    assert by_key.status_code == 201


def test_bad_cookies_are_a_401_not_a_500(gw: str) -> None:
    for cookie in ["calmesh_session=garbage", "calmesh_session=" + "A" * 43, "calmesh_session=\"quoted value\";;;=", "a=1; calmesh_session=%00%ff",
                   "calmesh_session"]:
        r = httpx.get(f"{gw}/api/v1/me", headers={"cookie": cookie})
        assert r.status_code == 401, (cookie, r.text)
        assert r.json()["code"] in {"invalid_session", "unauthorized"}


# API keys -----------------------------------------------------------------------------------------

def test_api_key_is_shown_once_listed_by_prefix_and_records_its_use(gw: str) -> None:
    account = Account(gw)
    created = account.key("read")
    assert set(created) == {"id", "name", "scope", "prefix", "key", "created_at", "expires_at"}
    assert created["key"].startswith("cm_live_") and created["key"].startswith(created["prefix"])
    assert created["id"].startswith("key_") and created["scope"] == "read" and created["expires_at"] is None
    listed = account.client.get("/api/v1/api-keys").json()
    assert listed["next_cursor"] is None
    [row] = [k for k in listed["data"] if k["id"] == created["id"]]
    assert set(row) == {"id", "name", "scope", "prefix", "created_at", "last_used_at", "expires_at"}
    assert row["prefix"] == created["prefix"] and row["last_used_at"] is None
    assert created["key"] not in json.dumps(listed)

    assert httpx.get(f"{gw}/api/v1/me", headers=bearer(created["key"])).json()["id"] == account.user["id"]
    [row] = [k for k in account.client.get("/api/v1/api-keys").json()["data"] if k["id"] == created["id"]]
    assert row["last_used_at"] is not None


def test_api_keys_list_pages_with_a_cursor(gw: str) -> None:
    account = Account(gw)
    ids = [account.key("read")["id"] for _ in range(3)]
    first = account.client.get("/api/v1/api-keys", params={"limit": 2}).json()
    assert len(first["data"]) == 2 and first["next_cursor"]
    second = account.client.get("/api/v1/api-keys", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [k["id"] for k in first["data"] + second["data"]] == ids and second["next_cursor"] is None
    assert account.client.get("/api/v1/api-keys", params={"limit": 0}).status_code == 400
    assert account.client.get("/api/v1/api-keys", params={"cursor": "%%%"}).json()["code"] == "invalid_cursor"


def test_api_key_input_is_validated(gw: str) -> None:
    account = Account(gw)
    for body, status in [({"name": "k", "scope": "admin"}, 400), ({"name": "", "scope": "read"}, 400),
                         ({"name": "k", "scope": "read", "extra": 1}, 400), ({"scope": "read"}, 400),
                         ({"name": "k", "scope": "read", "expires_at": "yesterday"}, 400),
                         ({"name": "k", "scope": "read", "expires_at": "2020-01-01T00:00:00Z"}, 422)]:
        r = account.post("/api/v1/api-keys", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"] == "application/problem+json"


def test_a_revoked_key_is_refused_on_the_next_request(gw: str) -> None:
    account = Account(gw)
    key = account.key("read")
    assert httpx.get(f"{gw}/api/v1/me", headers=bearer(key["key"])).status_code == 200
    assert account.delete(f"/api/v1/api-keys/{key['id']}").status_code == 204
    r = httpx.get(f"{gw}/api/v1/me", headers=bearer(key["key"]))
    assert r.status_code == 401 and r.json()["code"] == "api_key_revoked"
    assert key["id"] not in account.client.get("/api/v1/api-keys").text
    # Revoking again is harmless.
    assert account.delete(f"/api/v1/api-keys/{key['id']}").status_code == 204


def test_an_expired_key_is_refused(gw: str) -> None:
    account = Account(gw)
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    key = account.key("read", expires_at=soon)
    assert key["expires_at"] is not None
    assert httpx.get(f"{gw}/api/v1/me", headers=bearer(key["key"])).status_code == 200
    time.sleep(2.2)
    r = httpx.get(f"{gw}/api/v1/me", headers=bearer(key["key"]))
    assert r.status_code == 401 and r.json()["code"] == "api_key_expired"


def test_another_users_key_is_not_found_and_stays_valid(gw: str) -> None:
    owner, other = Account(gw), Account(gw)
    key = owner.key("read")
    r = other.delete(f"/api/v1/api-keys/{key['id']}")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    other_full = other.key("full")
    r = httpx.delete(f"{gw}/api/v1/api-keys/{key['id']}", headers=bearer(other_full["key"]))
    assert r.status_code == 404
    assert key["id"] not in other.client.get("/api/v1/api-keys").text
    assert httpx.get(f"{gw}/api/v1/me", headers=bearer(key["key"])).status_code == 200


def test_keys_manage_keys_only_with_full_scope(gw: str) -> None:
    account = Account(gw)
    for scope in ("read", "write", "book"):
        key = account.key(scope)
        r = httpx.get(f"{gw}/api/v1/api-keys", headers=bearer(key["key"]))
        assert r.status_code == 403 and r.json()["required_scope"] == "full"
    full = account.key("full")
    assert httpx.get(f"{gw}/api/v1/api-keys", headers=bearer(full["key"])).status_code == 200


def test_bad_and_truncated_keys_and_other_authorization_schemes(gw: str) -> None:
    account = Account(gw)
    key = account.key("read")["key"]
    cases = {
        key[:-1]: "invalid_api_key",
        key[:30]: "invalid_api_key",
        key[:20] + ("a" if key[20] != "a" else "b") + key[21:]: "invalid_api_key",
        "cm_live_" + "x" * 42: "invalid_api_key",
        "sk_live_abcdef": "invalid_api_key",
    }
    for value, expected in cases.items():
        r = httpx.get(f"{gw}/api/v1/me", headers=bearer(value))
        assert r.status_code == 401 and r.json()["code"] == expected, (value, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
    for header in [f"Basic {key}", f"Token {key}", "Bearer", "Bearer  x", key, "bearer", "Bearer a b"]:
        r = httpx.get(f"{gw}/api/v1/me", headers={"Authorization": header})
        assert r.status_code == 401 and r.json()["code"] in {"invalid_authorization", "invalid_api_key"}, header
    # A well-formed key that was never issued is unknown, not malformed.
    from calmesh_gateway.keys import generate_key

    r = httpx.get(f"{gw}/api/v1/me", headers=bearer(generate_key().key))
    assert r.status_code == 401 and r.json()["code"] == "invalid_api_key" and "not known" in r.json()["detail"]
    assert httpx.get(f"{gw}/api/v1/me").json()["code"] == "unauthorized"


# Scopes -------------------------------------------------------------------------------------------

def _expected(route: Route, credential: str) -> str:
    """'allowed', 'forbidden' (403 insufficient_scope) or 'unauthorized' (401)."""
    if credential == "none":
        return "allowed" if PUBLIC in route.auth else "unauthorized"
    if credential == "session":
        return "allowed" if SESSION in route.auth or PUBLIC in route.auth else "unauthorized"
    if route.auth == frozenset({PUBLIC}):
        return "allowed"  # credentials are not looked at on public-only endpoints
    return "allowed" if KEY in route.auth and credential in route.scopes else "forbidden"


async def test_the_scope_matrix_over_every_row_of_the_route_table(gw: str) -> None:
    account = Account(gw)
    keys = {scope: account.key(scope)["key"] for scope in ("read", "write", "book", "full")}
    skip = {("POST", "/api/v1/auth/logout")}  # would end the session the matrix uses; tested above
    cases = [(route, credential) for route in ROUTES if (route.method, route.path) not in skip
             for credential in ("none", "session", "read", "write", "book", "full")]
    slots = asyncio.Semaphore(8)

    async def check(route: Route, credential: str) -> str | None:
        headers: dict[str, str] = {}
        client = plain
        if credential == "session":
            client = signed_in
            headers["X-CSRF-Token"] = account.csrf
        elif credential != "none":
            headers.update(bearer(keys[credential]))
        body: dict[str, Any] = {"json": {}} if route.method in ("POST", "PUT", "PATCH") else {}
        if route.path == "/api/v1/auth/signup":
            body = {"json": {"email": "x", "password": "y"}}  # refused as input, never stored
        async with slots:
            r = await client.request(route.method, concrete(route), headers=headers, **body)
        expected = _expected(route, credential)
        got_code = code(r)
        if expected == "forbidden":
            ok = r.status_code == 403 and got_code == "insufficient_scope" and r.json()["required_scope"] == route.required_scope
        elif expected == "unauthorized":
            ok = r.status_code == 401
        elif route.service != "gateway":
            # The owning service answered (whatever it said): the gateway let the request through.
            ok = r.headers.get("via") == "1.1 calmesh-gateway"
        else:
            ok = got_code not in GATEWAY_REFUSALS
        if ok:
            return None
        return f"{credential:8s} {route.method} {route.path}: expected {expected}, got {r.status_code} {r.text[:150]}"

    session_cookie = {"calmesh_session": account.client.cookies["calmesh_session"]}
    async with httpx.AsyncClient(base_url=gw, timeout=30) as plain, \
            httpx.AsyncClient(base_url=gw, timeout=30, cookies=session_cookie) as signed_in:
        results = await asyncio.gather(*(check(route, credential) for route, credential in cases))
    failures = [f for f in results if f]
    assert len(cases) > 300
    assert not failures, "\n".join(failures)


def test_forwarded_routes_reach_the_owning_service(gw: str) -> None:
    """A route whose service has no handler yet answers the service's own 404, which proves the
    gateway let it through (the gateway's own 404 for unknown paths is `route_not_found`)."""
    account = Account(gw)
    key = account.key("full")["key"]
    r = httpx.get(f"{gw}/api/v1/webhooks/wh_does_not_exist/deliveries", headers=bearer(key))
    assert r.status_code != 403 and code(r) != "route_not_found"
    assert r.headers["via"] == "1.1 calmesh-gateway"
    unknown = httpx.get(f"{gw}/api/v1/no-such-thing", headers=bearer(key))
    assert unknown.status_code == 404 and unknown.json()["code"] == "route_not_found"
    assert "via" not in unknown.headers
    assert unknown.headers["content-type"] == "application/problem+json"
    wrong_method = httpx.put(f"{gw}/api/v1/connections", headers=bearer(key))
    assert wrong_method.status_code == 405 and "GET" in wrong_method.headers["allow"]
    assert httpx.get(f"{gw}/whatever/else/here").status_code == 404


# Forwarding, through the echo service ------------------------------------------------------------

def test_forwarding_carries_method_path_query_body_and_the_callers_identity(stack: Stack, odd_gateway: str,
                                                                             echo: Echo) -> None:
    account = Account(stack.gateway_url)
    key = account.key("full")
    r = httpx.post(
        f"{odd_gateway}/api/v1/webhooks/wh_1/replay?since=2026-01-01T00:00:00Z&x=%20y",
        headers={**bearer(key["key"]), "X-Request-Id": "req-abc-123", "Idempotency-Key": "idem-1",
                 "X-Calmesh-User-Id": "usr_forged", "X-Calmesh-Internal-Secret": "guess", "X-Calmesh-Scope": "full",
                 "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        json={"since": "2026-01-01T00:00:00Z"},
    )
    assert r.status_code == 201, r.text
    seen = r.json()
    headers: dict[str, list[str]] = {}
    for k, v in seen["headers"]:
        headers.setdefault(k, []).append(v)
    assert seen["method"] == "POST"
    assert seen["path"] == "/api/v1/webhooks/wh_1/replay?since=2026-01-01T00:00:00Z&x=%20y"
    assert json.loads(seen["body"]) == {"since": "2026-01-01T00:00:00Z"}
    assert headers["x-calmesh-user-id"] == [account.user["id"]]
    assert headers["x-calmesh-scope"] == ["full"] and headers["x-calmesh-auth"] == ["key"]
    assert headers["x-calmesh-key-id"] == [key["id"]]
    assert headers["x-calmesh-user-handle"] == [account.handle]
    assert headers["x-calmesh-user-timezone"] == ["Europe/Amsterdam"] and headers["x-calmesh-user-plan"] == ["free"]
    secret = next(c for c in stack.children if c.name == "gateway").env["CALMESH_INTERNAL_SECRET"]
    assert headers["x-calmesh-internal-secret"] == [secret]
    assert headers["idempotency-key"] == ["idem-1"] and headers["x-request-id"] == ["req-abc-123"]
    assert "authorization" not in headers and "cookie" not in headers
    # The trace is continued: same trace id, a new span of the gateway's.
    [forwarded_tp] = headers["traceparent"]
    assert forwarded_tp.split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert forwarded_tp.split("-")[2] != "b7ad6b7169203331"
    # The response: the service's status, type, body and headers, the gateway's ids.
    assert r.headers["content-type"] == "application/json" and r.headers["x-echo"] == "yes"
    assert r.headers["x-request-id"] == "req-abc-123"
    assert r.headers["traceparent"] == forwarded_tp
    assert len(r.headers.get_list("traceparent")) == 1


def test_session_identity_is_forwarded_and_anonymous_public_calls_carry_none(stack: Stack, odd_gateway: str,
                                                                              echo: Echo) -> None:
    account = Account(stack.gateway_url)
    client = httpx.Client(base_url=odd_gateway, cookies=account.client.cookies)
    r = client.get("/api/v1/webhooks")
    assert r.status_code == 200, r.text
    headers = dict(r.json()["headers"])
    assert headers["x-calmesh-user-id"] == account.user["id"]
    assert headers["x-calmesh-auth"] == "session" and headers["x-calmesh-scope"] == "full"
    assert "x-calmesh-key-id" not in headers


def test_a_service_that_is_down_is_a_503_naming_it_and_a_slow_one_a_504(stack: Stack, odd_gateway: str) -> None:
    account = Account(stack.gateway_url)
    client = httpx.Client(base_url=odd_gateway, cookies=account.client.cookies, timeout=15)
    down = client.get("/api/v1/billing")
    assert down.status_code == 503 and down.json()["code"] == "service_unavailable"
    assert down.json()["service"] == "billing" and "billing" in down.json()["detail"]
    assert int(down.headers["retry-after"]) > 0  # the client knows when to try again
    key = account.key("full")["key"]
    started = time.monotonic()
    slow = httpx.get(f"{odd_gateway}/api/v1/webhooks/slow", headers=bearer(key), timeout=15)
    assert slow.status_code == 504 and slow.json()["code"] == "gateway_timeout"
    assert time.monotonic() - started < 2.5
    assert int(slow.headers["retry-after"]) > 0
    # A service's own 503 (its database away) reaches the client with a Retry-After too.
    unavailable = httpx.get(f"{odd_gateway}/api/v1/webhooks/unavailable", headers=bearer(key), timeout=15)
    assert unavailable.status_code == 503 and int(unavailable.headers["retry-after"]) > 0


def test_health_is_503_naming_what_is_down(odd_gateway: str) -> None:
    r = httpx.get(f"{odd_gateway}/api/health", timeout=10)
    assert r.status_code == 503
    body = r.json()
    assert body["checks"]["billing"].startswith("down")
    assert body["checks"]["database"] == "ok" and body["checks"]["nats"] == "ok" and body["checks"]["webhooks"] == "ok"
    assert "billing" in body["detail"] and body["down"] == ["billing"]


def test_health_checks_every_service(gw: str) -> None:
    r = httpx.get(f"{gw}/api/health", timeout=10)
    assert r.status_code == 200
    checks = r.json()["checks"]
    assert r.json()["status"] == "ok"
    assert {"database", "nats", "connections", "availability", "booking", "billing", "webhooks"} <= set(checks)
    assert set(checks.values()) == {"ok"}


# Rate limits, bodies, ids -------------------------------------------------------------------------

def test_per_key_rate_limit_is_a_429_with_retry_after(stack: Stack, odd_gateway: str) -> None:
    account = Account(stack.gateway_url)
    key = account.key("read")["key"]
    statuses = [httpx.get(f"{odd_gateway}/api/v1/me", headers=bearer(key)) for _ in range(8)]
    limited = [r for r in statuses if r.status_code == 429]
    assert [r.status_code for r in statuses[:5]] == [200] * 5 and limited
    assert limited[0].json()["code"] == "rate_limited" and int(limited[0].headers["retry-after"]) >= 1
    # Another key of the same user has its own bucket.
    other = account.key("read")["key"]
    assert httpx.get(f"{odd_gateway}/api/v1/me", headers=bearer(other)).status_code == 200


def test_public_endpoints_are_rate_limited_per_client_address(odd_gateway: str) -> None:
    statuses = [httpx.get(f"{odd_gateway}/api/v1/booking-pages/intro/slots",
                          params={"handle": "nobody", "start": "2026-12-01", "end": "2026-12-02"}).status_code
                for _ in range(6)]
    assert 429 in statuses and statuses[0] != 429
    r = httpx.get(f"{odd_gateway}/api/v1/booking-pages/intro/slots")
    assert r.status_code == 429 and r.headers["retry-after"].isdigit()


def test_oversized_bodies_are_a_413(gw: str) -> None:
    account = Account(gw)
    key = account.key("full")["key"]
    big = b"{" + b" " * 1_100_000 + b"}"
    r = httpx.post(f"{gw}/api/v1/webhooks", content=big, headers={**bearer(key), "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    r = httpx.post(f"{gw}/api/v1/auth/signup", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 100_000

    r = httpx.post(f"{gw}/api/v1/webhooks", content=chunks(), headers={**bearer(key), "content-type": "application/json"})
    assert r.status_code == 413


def test_every_response_has_a_request_id_and_a_traceparent(gw: str) -> None:
    for method, path, headers in [("GET", "/api/health", {}), ("GET", "/api/v1/me", {}),
                                  ("GET", "/api/v1/nope", {}), ("GET", "/schema/openapi.json", {}),
                                  ("GET", "/api/v1/calendars", {"Authorization": "Basic x"})]:
        r = httpx.request(method, f"{gw}{path}", headers=headers)
        assert re.match(r"^[0-9a-f]{32}$", r.headers["x-request-id"]), path
        assert TRACEPARENT.match(r.headers["traceparent"]), path
    r = httpx.get(f"{gw}/api/health", headers={"X-Request-Id": "my-own-id-42",
                                               "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    assert r.headers["x-request-id"] == "my-own-id-42"
    assert r.headers["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"


# Replicas -----------------------------------------------------------------------------------------

def test_revocation_reaches_a_second_gateway_within_a_second(gw: str, replica: str) -> None:
    account = Account(gw)
    key = account.key("read")
    # Created on the first gateway, used on the second: a cache miss there, answered once from the database.
    assert httpx.get(f"{replica}/api/v1/me", headers=bearer(key["key"])).status_code == 200
    assert account.delete(f"/api/v1/api-keys/{key['id']}").status_code == 204
    revoked_at = time.monotonic()
    while True:
        r = httpx.get(f"{replica}/api/v1/me", headers=bearer(key["key"]))
        elapsed = time.monotonic() - revoked_at
        if r.status_code == 401:
            assert r.json()["code"] == "api_key_revoked"
            break
        assert r.status_code == 200
        assert elapsed < 1.0, "the second gateway still accepted the revoked key after a second"
        time.sleep(0.02)
    assert elapsed < 1.0


def test_logout_reaches_a_second_gateway(gw: str, replica: str) -> None:
    account = Account(gw)
    cookies = {"calmesh_session": account.client.cookies["calmesh_session"]}
    assert httpx.get(f"{replica}/api/v1/me", cookies=cookies).status_code == 200  # now cached there
    assert account.post("/api/v1/auth/logout").status_code == 204
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if httpx.get(f"{replica}/api/v1/me", cookies=cookies).status_code == 401:
            break
        time.sleep(0.02)
    assert httpx.get(f"{replica}/api/v1/me", cookies=cookies).status_code == 401


# OpenAPI ------------------------------------------------------------------------------------------

def test_the_openapi_document_covers_every_route_with_its_scopes_and_security(gw: str) -> None:
    r = httpx.get(f"{gw}/schema/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    assert {"apiKey", "sessionCookie"} <= set(doc["components"]["securitySchemes"])
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["summary"] == route.summary
        assert op["x-calmesh-scopes"] == sorted(route.scopes)
        schemes = {name for requirement in op["security"] for name in requirement}
        assert ("apiKey" in schemes) == (KEY in route.auth), route
        assert ("sessionCookie" in schemes) == (SESSION in route.auth), route
        assert ({} in op["security"]) == (PUBLIC in route.auth), route
    signup = doc["paths"]["/api/v1/auth/signup"]["post"]
    ref = signup["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert {"email", "password", "handle"} <= set(doc["components"]["schemas"][ref]["properties"])
    page = httpx.get(f"{gw}/schema")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/schema/openapi.json" in page.text


# Plans --------------------------------------------------------------------------------------------

async def test_a_plan_change_from_billing_reaches_me_and_the_forwarded_identity(
    stack: Stack, odd_gateway: str, echo: Echo, nc: Any,
) -> None:
    account = Account(stack.gateway_url)
    key = account.key("full")["key"]
    assert account.client.get("/api/v1/me").json()["plan"] == "free"
    # The key is now cached by the second gateway with the free plan.
    before = await asyncio.to_thread(httpx.get, f"{odd_gateway}/api/v1/webhooks", headers=bearer(key))
    assert dict(before.json()["headers"])["x-calmesh-user-plan"] == "free"

    await upgrade_to_pro(nc, account)
    after = await asyncio.to_thread(httpx.get, f"{odd_gateway}/api/v1/webhooks", headers=bearer(key))
    assert dict(after.json()["headers"])["x-calmesh-user-plan"] == "pro"


async def upgrade_to_pro(nc: Any, account: Account) -> None:
    """Publish billing's plan.changed for `account`, as billing does, and wait until /me says pro."""
    from calmesh_common.events import encode_envelope, make_envelope
    from calmesh_common.events.billing import PlanChanged
    from calmesh_common.plans import PLAN_CHANGED_SUBJECT

    event = PlanChanged(user_id=account.user["id"], plan="pro", status="active",
                        current_period_end=datetime.now(UTC) + timedelta(days=30), previous_plan="free",
                        at=datetime.now(UTC))
    envelope = make_envelope(event, stream_id=f"billing-{account.user['id']}", version=3, user_id=account.user["id"])
    await nc.jetstream().publish(PLAN_CHANGED_SUBJECT, encode_envelope(envelope), headers={"Nats-Msg-Id": envelope.id})
    deadline = time.monotonic() + 5
    plan = "free"
    while time.monotonic() < deadline and plan != "pro":
        await asyncio.sleep(0.1)
        plan = (await asyncio.to_thread(account.client.get, "/api/v1/me")).json()["plan"]
    assert plan == "pro"


async def test_past_the_plans_daily_requests_a_429_until_midnight(stack: Stack, odd_gateway: str, nc: Any) -> None:
    account = Account(stack.gateway_url)
    key = account.key("read")["key"]
    await upgrade_to_pro(nc, account)  # the second gateway allows pro 3 requests a day
    await asyncio.sleep(0.3)  # the cache of the second gateway hears it on its own subscription
    statuses = []
    for _ in range(4):
        r = await asyncio.to_thread(httpx.get, f"{odd_gateway}/api/v1/me", headers=bearer(key))
        statuses.append(r.status_code)
    assert statuses == [200, 200, 200, 429]
    assert r.json()["code"] == "daily_quota_exceeded" and r.json()["plan"] == "pro"
    until_midnight = 86400 - (time.time() % 86400)
    assert abs(int(r.headers["retry-after"]) - until_midnight) < 60
