"""The gateway against an attacker on the network (issue 10 items 3 and 7, issue 14 item 5), through
the whole platform (the `stack` fixture) and extra gateway processes started here.

Per-address limits are shared by every gateway on the database, so each test that spends an
address's allowance sends from an address of its own: any 127.x.y.z reaches the loopback listener.
"""

from __future__ import annotations

import copy
import itertools
import random
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from calmesh_common.devstack.embedded import free_port
from calmesh_common.devstack.supervisor import Stack
from calmesh_common.requestguard import MAX_JSON_DEPTH
from calmesh_gateway.keys import generate_key
from calmesh_gateway.routes import ROUTES

_addresses = itertools.count(random.randrange(2, 200) * 256)


def own_address() -> str:
    """A loopback source address no other test uses in this run."""
    n = next(_addresses)
    return f"127.{100 + (n >> 16) % 100}.{(n >> 8) % 256}.{n % 254 + 1}"


def client(base: str, address: str | None = None, **kw: Any) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address or own_address())
    return httpx.Client(base_url=base, transport=transport, timeout=30, **kw)


def start_gateway(stack: Stack, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """Another gateway process on the stack's database, NATS and services, with `env` changed."""
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


class Account:
    """A signed-up user with its cookie client and CSRF token."""

    def __init__(self, base: str) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.email = f"sec-{suffix}@example.com"
        self.password = "a long enough passphrase"
        self.client = client(base)
        r = self.client.post("/api/v1/auth/signup", json={"email": self.email, "password": self.password,
                                                          "handle": f"sec-{suffix}", "timezone": "UTC"})
        assert r.status_code == 201, r.text
        self.csrf = self.client.cookies["calmesh_csrf"]

    def key(self, scope: str = "full") -> str:
        r = self.client.post("/api/v1/api-keys", json={"name": "k", "scope": scope},
                             headers={"X-CSRF-Token": self.csrf})
        assert r.status_code == 201, r.text
        return str(r.json()["key"])


def slots_path() -> str:
    return "/api/v1/booking-pages/intro/slots?handle=nobody&start=2026-12-01&end=2026-12-02"


# 10.3: client addresses -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def strict_gateways(stack: Stack) -> Iterator[tuple[str, str]]:
    """Two gateways with a public limit of 4 a minute: one trusting no proxy (the default), one
    trusting loopback as its proxy."""
    plain, plain_url = start_gateway(stack, CALMESH_PUBLIC_RATE_LIMIT_PER_MINUTE="4")
    proxied, proxied_url = start_gateway(stack, CALMESH_PUBLIC_RATE_LIMIT_PER_MINUTE="4",
                                         CALMESH_TRUSTED_PROXIES="127.0.0.0/8")
    yield plain_url, proxied_url
    stop(plain)
    stop(proxied)


def test_rotating_x_forwarded_for_does_not_escape_the_per_address_limit(strict_gateways: tuple[str, str]) -> None:
    plain, _ = strict_gateways
    address = own_address()
    with client(plain, address) as c:
        answers = [c.get(slots_path(), headers={"X-Forwarded-For": f"203.0.113.{i}", "X-Real-IP": f"203.0.113.{i}",
                                                "Forwarded": f"for=203.0.113.{i}"}) for i in range(1, 9)]
    statuses = [r.status_code for r in answers]
    assert statuses[0] != 429 and statuses.count(429) >= 4, statuses
    refused = answers[-1]
    assert refused.status_code == 429 and refused.headers["content-type"].startswith("application/problem+json")
    assert int(refused.headers["retry-after"]) >= 1


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_clients(strict_gateways: tuple[str, str]) -> None:
    _, proxied = strict_gateways
    with client(proxied) as proxy:
        # The proxy's own address is not what is counted: each forwarded client has its bucket.
        first = [proxy.get(slots_path(), headers={"X-Forwarded-For": f"192.0.2.{i}"}).status_code
                 for i in range(1, 9)]
        assert 429 not in first, first
        one = [proxy.get(slots_path(), headers={"X-Forwarded-For": "192.0.2.200"}).status_code for _ in range(6)]
        assert one.count(429) >= 2, one


# 10.3: sign-in and key throttles ---------------------------------------------------------------

def test_many_wrong_passwords_then_the_right_one_is_refused_not_signed_in(stack: Stack) -> None:
    gw = stack.gateway_url
    account = Account(gw)
    with client(gw) as attacker:
        answers = [attacker.post("/api/v1/auth/login", json={"email": account.email, "password": f"guess {i}"})
                   for i in range(380)]
        statuses = [r.status_code for r in answers]
        # A burst of 10 failures is checked; then the account's bucket refuses (and, past 300 a
        # minute, the address's public limit too).
        assert statuses[0] == 401 and statuses.count(401) <= 12 and statuses.count(429) >= 360, statuses[:20]
        assert answers[20].json()["code"] == "too_many_failed_attempts"
        r = attacker.post("/api/v1/auth/login", json={"email": account.email, "password": account.password})
    assert r.status_code == 429, r.text
    # The account's bucket holds from any address: the guesser cannot just move, and the right
    # password is refused too until the backoff has passed.
    with client(gw) as elsewhere:
        r = elsewhere.post("/api/v1/auth/login", json={"email": account.email, "password": account.password})
    assert r.status_code == 429 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "too_many_failed_attempts" and int(r.headers["retry-after"]) >= 1


def test_an_address_guessing_across_accounts_is_throttled_and_good_sign_ins_do_not_count(stack: Stack) -> None:
    gw = stack.gateway_url
    account = Account(gw)
    with client(gw) as c:
        # Signing in right, many times, spends nothing.
        for _ in range(15):
            assert c.post("/api/v1/auth/login", json={"email": account.email,
                                                       "password": account.password}).status_code == 200
        started = time.monotonic()
        statuses = [c.post("/api/v1/auth/login", json={"email": f"nobody-{i}@example.com",
                                                        "password": "guess"}).status_code for i in range(90)]
        elapsed = time.monotonic() - started
    # The address may fail 60 times at once, then 30 a minute (the defaults): on a machine slow
    # enough to refill the allowance as fast as it is spent, fewer guesses are refused, never none
    # of those past what the limit allows.
    allowed = 60 + 30 * elapsed / 60
    assert statuses[:10] == [401] * 10, statuses
    assert statuses.count(401) <= allowed + 1, (elapsed, statuses)
    assert 429 in statuses or allowed >= 89, (elapsed, statuses)


def test_random_api_keys_from_one_address_get_429_before_they_are_checked(stack: Stack) -> None:
    gw = stack.gateway_url
    started = time.monotonic()
    with client(gw) as c:
        statuses = [c.get("/api/v1/calendars", headers={"Authorization": f"Bearer {generate_key().key}"}).status_code
                    for _ in range(100)]
        assert statuses[0] == 401 and statuses.count(429) >= 60, statuses
        refused = c.get("/api/v1/calendars", headers={"Authorization": "Bearer cm_live_short"})
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_failed_attempts"
    assert int(refused.headers["retry-after"]) >= 1
    assert time.monotonic() - started < 30
    # Someone else, with a good key, is not affected.
    account = Account(gw)
    assert client(gw).get("/api/v1/calendars", headers={"Authorization": f"Bearer {account.key('read')}"}).status_code == 200


# 14.5: limits across replicas -------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_replicas(stack: Stack) -> Iterator[tuple[str, str]]:
    env = {"CALMESH_RATE_LIMIT_PER_MINUTE": "6", "CALMESH_RATE_LIMIT_BURST": "24",
           "CALMESH_PUBLIC_RATE_LIMIT_PER_MINUTE": "10"}
    a, a_url = start_gateway(stack, **env)
    b, b_url = start_gateway(stack, **env)
    yield a_url, b_url
    stop(a)
    stop(b)


def test_two_replicas_together_allow_one_keys_limit_not_twice_it(stack: Stack, two_replicas: tuple[str, str]) -> None:
    key = Account(stack.gateway_url).key("read")
    a, b = (client(url, headers={"Authorization": f"Bearer {key}"}) for url in two_replicas)
    answers = [(a if i % 2 else b).get("/api/v1/me") for i in range(60)]
    allowed = sum(1 for r in answers if r.status_code == 200)
    # Burst 24, refilling 0.1 a second; a replica leases at most 24 // 8 = 3 tokens at a time.
    assert 24 - 2 * 3 <= allowed <= 24 + 2, [r.status_code for r in answers]
    for r in answers:
        assert r.headers["ratelimit-limit"] == "24"
        assert 0 <= int(r.headers["ratelimit-remaining"]) <= 24 and int(r.headers["ratelimit-reset"]) >= 0
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["ratelimit-remaining"] == "0" and int(refused.headers["retry-after"]) >= 1


def test_two_replicas_together_allow_one_addresss_public_limit(two_replicas: tuple[str, str]) -> None:
    address = own_address()
    a, b = (client(url, address) for url in two_replicas)
    statuses = [(a if i % 2 else b).get(slots_path()).status_code for i in range(30)]
    allowed = 30 - statuses.count(429)
    assert 10 - 2 <= allowed <= 10 + 1, statuses


# 10.7: NUL characters and deep JSON on every operation --------------------------------------------

@pytest.fixture(scope="module")
def roomy_gateway(stack: Stack) -> Iterator[str]:
    """A gateway with limits too high to meet, so that each request below reaches its check."""
    process, url = start_gateway(stack, CALMESH_RATE_LIMIT_PER_MINUTE="1000000", CALMESH_RATE_LIMIT_BURST="100000",
                                 CALMESH_PUBLIC_RATE_LIMIT_PER_MINUTE="1000000")
    yield url
    stop(process)


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = doc["components"]["schemas"][name]
    return schema


def sample(schema: dict[str, Any], doc: dict[str, Any], depth: int = 0) -> Any:
    """A plausible instance of `schema`, every property filled in."""
    schema = _resolve(schema, doc)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            options = [s for s in schema[key] if _resolve(s, doc).get("type") != "null"]
            return sample(options[0], doc, depth) if options else None
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        if depth > 4:
            return {}
        return {name: sample(sub, doc, depth + 1) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [sample(schema.get("items") or {"type": "string"}, doc, depth + 1)]
    if kind == "integer":
        return int(schema.get("minimum", 30))
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return False
    fmt = schema.get("format")
    return {"date-time": "2026-12-01T10:00:00Z", "date": "2026-12-01", "email": "visitor@example.com",
            "uri": "https://example.com/feed.ics", "time": "09:00"}.get(fmt, "text")


def string_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from string_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from string_paths(v, (*path, i))


def with_nul(value: Any, path: tuple[Any, ...]) -> Any:
    changed = copy.deepcopy(value)
    target = changed
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = target[path[-1]] + "\x00"
    return changed


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield method.upper(), path, op


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x-test-nothing", path)


def test_a_nul_in_any_field_or_query_parameter_of_any_operation_is_a_4xx(stack: Stack, roomy_gateway: str) -> None:
    doc = httpx.get(f"{roomy_gateway}/schema/openapi.json").json()
    account = Account(roomy_gateway)
    headers = {"X-CSRF-Token": account.csrf}
    sent = 0
    failures = []
    for method, path, op in operations(doc):
        url = concrete(path)
        query = {p["name"]: "x" for p in op.get("parameters", []) if p.get("in") == "query"}
        cases: list[tuple[str, str, dict[str, str], Any]] = [
            (f"query {name}", url, {**query, name: "x\x00"}, None) for name in query]
        for name in re.findall(r"\{([^}]+)\}", path):
            cases.append((f"path {name}", concrete(path.replace("{" + name + "}", "a%00b")), query, None))
        body_schema = ((op.get("requestBody") or {}).get("content") or {}).get("application/json", {}).get("schema")
        if body_schema is not None and method != "GET":
            body = sample(body_schema, doc)
            for where in string_paths(body):
                cases.append((f"body {'.'.join(map(str, where))}", url, query, with_nul(body, where)))
        for label, target, params, body in cases:
            r = account.client.request(method, target, params=params, headers=headers, json=body)
            sent += 1
            if not 400 <= r.status_code < 500 or r.status_code == 429:
                failures.append((method, path, label, r.status_code, r.text[:200]))
    assert sent > 100, sent
    assert not failures, failures


def test_json_nested_too_deep_is_a_400_on_every_operation_with_a_body(stack: Stack, roomy_gateway: str) -> None:
    doc = httpx.get(f"{roomy_gateway}/schema/openapi.json").json()
    account = Account(roomy_gateway)
    anonymous = client(roomy_gateway)
    deep = b'{"a":' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    answered = []
    for method, path, op in operations(doc):
        if method in ("GET", "DELETE") or "requestBody" not in op:
            continue  # an operation that reads no body decodes nothing (sign-out, sync now, …)
        headers = {"content-type": "application/json", "X-CSRF-Token": account.csrf}
        r = account.client.request(method, concrete(path), content=deep, headers=headers)
        if r.status_code in (401, 403):  # not a session's endpoint (public only): as a visitor
            r = anonymous.request(method, concrete(path), content=deep, headers=headers)
        if r.status_code == 404 and r.json()["code"] == "route_not_found":
            continue  # the placeholder is no valid path parameter here (a handle, a provider)
        assert r.status_code == 400, (method, path, r.status_code, r.text[:300])
        assert r.json()["code"] == "json_too_deep" and r.headers["content-type"].startswith("application/problem+json")
        answered.append((method, path))
    assert len(answered) >= 20, answered
    owners = {route.service for route in ROUTES if (route.method, route.path) in answered}
    assert owners >= {"gateway", "connections", "availability", "booking", "billing", "webhooks"}, owners
    assert MAX_JSON_DEPTH < 5_000


# 10.8: the documentation page -------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_schema_references_no_foreign_origin_and_sends_a_csp(stack: Stack) -> None:
    r = httpx.get(f"{stack.gateway_url}/schema")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "http" not in csp
    references = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert references and all(ref.startswith("/") and not ref.startswith("//") for ref in references), references
    for ref in references:
        asset = httpx.get(f"{stack.gateway_url}{ref}")
        assert asset.status_code == 200, ref
        assert asset.headers["content-type"].split(";")[0] in ("text/css", "text/javascript", "application/json"), ref
    assert httpx.get(f"{stack.gateway_url}/schema/assets/nothing.js").status_code == 404


def test_booking_pages_reference_no_foreign_script_and_their_assets_come_immutable(stack: Stack) -> None:
    """Through the gateway: booking's pages link only /assets/booking/ files of this origin under a
    CSP with script-src 'self' that still allows framing (embeds); each asset is routed to booking
    and answers with a year-long immutable cache; a name that is no fingerprint never leaves the
    gateway."""
    from calmesh_booking.assets import ASSETS

    r = httpx.get(f"{stack.gateway_url}/nobody{uuid.uuid4().hex[:8]}/intro")  # booking's "not found" page
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors *" in csp
    assert "http" not in csp and "unsafe-inline" not in csp
    references = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert references and all(ref.startswith("/assets/booking/") for ref in references), references
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text) and "<style" not in r.text
    for ref in {*references, *(a.url for a in ASSETS.by_source.values())}:
        asset = httpx.get(f"{stack.gateway_url}{ref}")
        assert asset.status_code == 200, ref
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable", ref
        assert asset.headers["content-type"].split(";")[0] in ("text/css", "text/javascript"), ref
    stray = httpx.get(f"{stack.gateway_url}/assets/booking/booking-page.js")
    assert stray.status_code == 404 and stray.json()["code"] == "route_not_found"


async def test_schema_renders_in_a_browser_from_calmesh_alone(stack: Stack) -> None:
    from playwright.async_api import async_playwright

    origin = stack.gateway_url
    requested: list[str] = []
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.on("request", lambda req: requested.append(req.url))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            await page.goto(f"{origin}/schema")
            # Swagger UI has read the merged document: the title and an operation of it are shown.
            await page.get_by_text("CalMesh", exact=False).first.wait_for(timeout=30_000)
            await page.get_by_text("/api/v1/auth/signup").first.wait_for(timeout=30_000)
        finally:
            await browser.close()
    foreign = [url for url in requested if not url.startswith(origin) and not url.startswith("data:")]
    assert not foreign, foreign
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems
