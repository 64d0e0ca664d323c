"""Google and Microsoft end to end against local fakes (calmesh_testing: OAuth server, Google Calendar
v3, Microsoft Graph): the OAuth flow with PKCE and a single-use state, token refresh and
revocation, full then incremental sync (paging, sync tokens, deletions, 410), Retry-After, push
notifications, and event writes. The connections and sync services run in this process on a
private database and NATS (calmesh_testing.platform)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

from calmesh_testing.backends import private_nats
from calmesh_testing.google import GoogleFake
from calmesh_testing.graph import GraphFake
from calmesh_testing.oauth import OAuthFake
from calmesh_testing.platform import Platform, private_platform, running
from calmesh_testing.servers import free_port, serve
from calmesh_testing.wait import wait_for


@dataclass
class Env:
    platform: Platform
    oauth: OAuthFake
    google: GoogleFake
    graph: GraphFake
    db: asyncpg.Pool
    settings: dict[str, str]

    def user(self, name: str) -> httpx.AsyncClient:
        return self.platform.client(f"usr_{name}_{int(time.time() * 1000) % 10**9}")

    def fresh_accounts(self) -> None:
        """Each test is a new account at the fakes (the fakes are shared by the module)."""
        self.google.calendars.clear()
        self.google.channels.clear()
        self.graph.calendars.clear()
        self.graph.subscriptions.clear()


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    oauth = OAuthFake()
    google = GoogleFake(oauth)
    graph = GraphFake(oauth)
    with private_nats() as nats_url:
        async with private_platform(database_url, nats_url) as platform:
            async with serve(oauth.app()) as oauth_url, serve(google.app()) as google_url, serve(graph.app()) as graph_url:
                graph.base_url = graph_url
                settings = {
                    "CALMESH_GOOGLE_CLIENT_ID": oauth.client_id, "CALMESH_GOOGLE_CLIENT_SECRET": oauth.client_secret,
                    "CALMESH_GOOGLE_AUTH_URL": f"{oauth_url}/authorize", "CALMESH_GOOGLE_TOKEN_URL": f"{oauth_url}/token",
                    "CALMESH_GOOGLE_REVOKE_URL": f"{oauth_url}/revoke", "CALMESH_GOOGLE_API_URL": google_url,
                    "CALMESH_MICROSOFT_CLIENT_ID": oauth.client_id, "CALMESH_MICROSOFT_CLIENT_SECRET": oauth.client_secret,
                    "CALMESH_MICROSOFT_AUTH_URL": f"{oauth_url}/authorize", "CALMESH_MICROSOFT_TOKEN_URL": f"{oauth_url}/token",
                    "CALMESH_MICROSOFT_GRAPH_URL": graph_url,
                    "CALMESH_PUSH_NOTIFICATIONS": "on",
                    "CALMESH_SYNC_RETRY_AFTER_MAX_SECONDS": "5",
                }
                async with running(platform, **settings):
                    google.notify_headers = graph.notify_headers = platform.internal()
                    pool = await asyncpg.create_pool(platform.database_url, min_size=1, max_size=4)
                    try:
                        yield Env(platform, oauth, google, graph, pool, settings)
                    finally:
                        await pool.close()


def signed_in(env: Env, api: httpx.AsyncClient) -> dict[str, str]:
    """What the gateway sends for a browser signed in (session cookie) as `api`'s user."""
    return env.platform.headers(api.headers["x-calmesh-user-id"], auth="session", scope="full")


async def start(env: Env, api: httpx.AsyncClient, provider: str, **body: Any) -> dict[str, Any]:
    """POST /connections/{provider}: a pending connection and its authorization_url on CalMesh."""
    r = await api.post(f"/api/v1/connections/{provider}", json=body or None)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["status"] == "pending" and created["authorization_url"]
    start_url = urlsplit(created["authorization_url"])
    assert f"{start_url.scheme}://{start_url.netloc}" == env.platform.connections_url  # the public origin
    assert start_url.path == f"/api/v1/connections/{provider}/authorize"
    return created


async def open_start_url(env: Env, browser: httpx.AsyncClient, created: dict[str, Any], headers: dict[str, str]) -> str:
    """The browser opens the authorization_url (signed in as `headers` say): it gets the binding
    cookie and is sent on to the provider; returns the provider URL."""
    r = await browser.get(created["authorization_url"], headers=headers)
    assert r.status_code == 302, r.text
    assert r.headers["cache-control"] == "no-store"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("calmesh_oauth_") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    location = r.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    provider = urlsplit(created["authorization_url"]).path.split("/")[4]
    assert query["redirect_uri"] == [f"{env.platform.connections_url}/api/v1/connections/{provider}/callback"]
    return location


async def consent(env: Env, browser: httpx.AsyncClient, provider_url: str) -> tuple[str, httpx.Response]:
    """At the provider: the user consents and the browser comes back through the public callback."""
    at_provider = await browser.get(provider_url)
    assert at_provider.status_code == 302
    callback = at_provider.headers["location"]
    back = await browser.get(callback, headers=env.platform.internal())  # public: no user headers
    return callback, back


async def authorize(env: Env, api: httpx.AsyncClient, provider: str, **body: Any) -> dict[str, Any]:
    """POST /connections/{provider}, open the authorization URL in the user's browser, consent at
    the fake, come back through the public callback; returns the connection as the callback left it."""
    created = await start(env, api, provider, **body)
    async with httpx.AsyncClient(timeout=10) as browser:
        provider_url = await open_start_url(env, browser, created, signed_in(env, api))
        callback, back = await consent(env, browser, provider_url)
    return {"created": created, "callback": callback, "response": back}


async def wait_synced(env: Env, api: httpx.AsyncClient, cid: str, after: int = 0, timeout: float = 20) -> dict[str, Any]:
    """Wait until the connection has more finished syncs than `after` and is not syncing."""
    async def done() -> dict[str, Any] | None:
        count = await env.db.fetchval("SELECT count(*) FROM sync.sync_runs WHERE connection_id = $1 AND outcome IS NOT NULL", cid)
        if count <= after:
            return None
        body = (await api.get(f"/api/v1/connections/{cid}")).json()
        return body if body["status"] not in ("syncing", "pending") and body["progress"] is None else None

    return await wait_for(done, timeout, what=f"a sync of {cid}")


async def runs(env: Env, cid: str) -> int:
    return int(await env.db.fetchval("SELECT count(*) FROM sync.sync_runs WHERE connection_id = $1 AND outcome IS NOT NULL", cid))


async def rows(env: Env, cid: str) -> list[asyncpg.Record]:
    return await env.db.fetch("SELECT * FROM sync.event_instances WHERE connection_id = $1 ORDER BY start_at, uid", cid)


def hour(days: int, h: int) -> datetime:
    base = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return base + timedelta(days=days, hours=h)


# --- Google ------------------------------------------------------------------------------------


async def test_google_oauth_full_then_incremental_sync(env: Env) -> None:
    env.fresh_accounts()
    g = env.google
    g.calendar("ada@example.com", "Ada", primary=True)
    g.calendar("team#shared@group.calendar.google.com", "Team", access_role="reader")
    for n in range(4):
        g.add("ada@example.com", f"Meeting {n}", hour(n + 1, 9), hour(n + 1, 10))
    series = g.add_series("ada@example.com", "Daily stand-up", hour(1, 8), 3, timedelta(days=1), timedelta(minutes=15))
    g.add_all_day("ada@example.com", "Holiday", (hour(6, 0)).date().isoformat(), (hour(7, 0)).date().isoformat())
    g.add("team#shared@group.calendar.google.com", "Team lunch", hour(2, 12), hour(2, 13))
    async with env.user("g1") as api:
        flow = await authorize(env, api, "google", redirect_uri=f"{env.platform.connections_url}/app/connections?x=1")
        back = flow["response"]
        assert back.status_code == 302
        target = urlsplit(back.headers["location"])
        assert f"http://{target.netloc}" == env.platform.connections_url and target.path == "/app/connections"
        assert parse_qs(target.query)["status"] == ["connected"] and parse_qs(target.query)["x"] == ["1"]
        cid = parse_qs(target.query)["connection_id"][0]
        # The state is single use.
        async with httpx.AsyncClient() as browser:
            again = await browser.get(flow["callback"], headers=env.platform.internal())
        assert again.status_code == 400 and again.json()["code"] == "invalid_state"

        body = await wait_synced(env, api, cid)
        assert body["status"] == "active", body
        assert body["display_name"] == "ada@example.com"
        assert sorted((c["name"], c["read_only"]) for c in body["calendars"]) == [("Ada", False), ("Team", True)]
        got = await rows(env, cid)
        assert len(got) == 4 + 3 + 1 + 1
        stand_ups = [r for r in got if r["title"] == "Daily stand-up"]
        assert {r["uid"] for r in stand_ups} == {series[0]["iCalUID"]} and len({r["recurrence_id"] for r in stand_ups}) == 3
        assert all(r["recurring_event_id"] == stand_ups[0]["recurring_event_id"] for r in stand_ups)
        holiday = next(r for r in got if r["title"] == "Holiday")
        assert holiday["all_day"] and (holiday["end_date"] - holiday["start_date"]).days == 1
        # Paging was followed (pages of three) and the stored token is a sync token.
        full_lists = [r for r in g.requests if "/events?" in r and ("ada%40example.com" in r or "ada@example.com" in r) and "timeMin" in r]
        assert len(full_lists) >= 3
        # Secrets are encrypted at rest and never shown.
        stored = await env.db.fetchrow("SELECT credentials, settings FROM connections.connections WHERE id = $1", cid)
        for token in env.oauth.access_tokens:
            assert token.encode() not in bytes(stored["credentials"]) and token not in (await api.get(f"/api/v1/connections/{cid}")).text

        # Incremental: a changed event, a cancelled instance, a new event.
        before = len(g.requests)
        meeting0 = next(e for e in g.calendars["ada@example.com"].events.values() if e.get("summary") == "Meeting 0")
        g.update("ada@example.com", meeting0["id"], summary="Meeting 0 (moved)", start={"dateTime": hour(1, 11).strftime("%Y-%m-%dT%H:%M:%SZ")},
                 end={"dateTime": hour(1, 12).strftime("%Y-%m-%dT%H:%M:%SZ")})
        g.cancel("ada@example.com", series[1]["id"])
        g.add("ada@example.com", "New one", hour(9, 15), hour(9, 16))
        n = await runs(env, cid)
        assert (await api.post(f"/api/v1/connections/{cid}/sync")).status_code == 202
        await wait_synced(env, api, cid, n)
        incremental = [r for r in g.requests[before:] if "/events?" in r and ("ada%40example.com" in r or "ada@example.com" in r)]
        assert incremental and all("syncToken" in r and "timeMin" not in r for r in incremental)
        after = await rows(env, cid)
        titles = sorted(r["title"] for r in after)
        assert "Meeting 0 (moved)" in titles and "Meeting 0" not in titles and "New one" in titles
        assert len([r for r in after if r["title"] == "Daily stand-up"]) == 2
        moved = next(r for r in after if r["title"] == "Meeting 0 (moved)")
        assert moved["start_at"] == hour(1, 11)

        # 410 Gone: the calendar is synced again from scratch; what vanished unseen is wiped.
        hidden = next(e for e in g.calendars["ada@example.com"].events.values() if e.get("summary") == "Meeting 3")
        del g.calendars["ada@example.com"].events[hidden["id"]]
        del g.calendars["ada@example.com"].seq[hidden["id"]]
        g.invalidate_sync_tokens()
        n = await runs(env, cid)
        before = len(g.requests)
        await api.post(f"/api/v1/connections/{cid}/sync")
        body = await wait_synced(env, api, cid, n)
        assert body["status"] == "active"
        assert "Meeting 3" not in {r["title"] for r in await rows(env, cid)}
        after410 = [r for r in g.requests[before:] if "/events?" in r and ("ada%40example.com" in r or "ada@example.com" in r)]
        assert "syncToken" in after410[0] and any("timeMin" in r for r in after410[1:])


async def test_google_retry_after_refresh_and_revocation(env: Env) -> None:
    env.fresh_accounts()
    g = env.google
    g.calendar("bob@example.com", "Bob", primary=True)
    g.add("bob@example.com", "One", hour(1, 9), hour(1, 10))
    env.oauth.expires_in = 120  # under five minutes: every token request refreshes first
    try:
        async with env.user("g2") as api:
            flow = await authorize(env, api, "google")
            assert flow["response"].status_code == 200 and flow["response"].json()["status"] in ("syncing", "active")
            cid = flow["response"].json()["id"]
            await wait_synced(env, api, cid)
            refreshes = env.oauth.refreshes()
            assert refreshes >= 1  # the token was refreshed before it expired

            # 429 with Retry-After: waited out, then the sync goes on.
            g.add("bob@example.com", "Two", hour(2, 9), hour(2, 10))
            g.fail_next(429, {"Retry-After": "1"})
            n = await runs(env, cid)
            started = time.monotonic()
            await api.post(f"/api/v1/connections/{cid}/sync")
            body = await wait_synced(env, api, cid, n)
            assert body["status"] == "active" and time.monotonic() - started >= 1.0
            assert "Two" in {r["title"] for r in await rows(env, cid)}

            # The user revokes the app at Google: the refresh gets invalid_grant -> revoked.
            env.oauth.revoke_all()
            n = await runs(env, cid)
            await api.post(f"/api/v1/connections/{cid}/sync")
            body = await wait_synced(env, api, cid, n)
            assert body["status"] == "revoked", body
            assert "reconnect" in body["last_error"]
            r = await api.post(f"/api/v1/connections/{cid}/sync")
            assert r.status_code == 409 and r.json()["code"] == "connection_revoked"
            token = await env.platform.client().post(f"/internal/connections/{cid}/access-token", json={})
            assert token.status_code == 401 and token.json()["code"] == "revoked"
            # Its events stay until the user removes the connection.
            assert await rows(env, cid)
    finally:
        env.oauth.expires_in = 3600


async def test_a_long_retry_after_ends_the_sync_and_the_job_comes_back_after_it(env: Env) -> None:
    env.fresh_accounts()
    g = env.google
    g.calendar("fay@example.com", "Fay", primary=True)
    async with env.user("g7") as api:
        cid = (await authorize(env, api, "google"))["response"].json()["id"]
        await wait_synced(env, api, cid)
        g.add("fay@example.com", "After the wait", hour(2, 9), hour(2, 10))
        g.fail_next(503, {"Retry-After": "7"})  # longer than CALMESH_SYNC_RETRY_AFTER_MAX_SECONDS (5)
        n = await runs(env, cid)
        started = time.monotonic()
        await api.post(f"/api/v1/connections/{cid}/sync")
        failed = await wait_synced(env, api, cid, n)
        assert failed["status"] == "error" and "503" in failed["last_error"]
        retry_at = await env.db.fetchval(
            "SELECT envelope FROM sync.events WHERE type = 'sync.failed.v1' AND stream_id LIKE 'sync:%' ORDER BY position DESC LIMIT 1")
        assert b'"retry_at"' in bytes(retry_at) and b'"kind":"transient"' in bytes(retry_at)
        # The same job comes back after the Retry-After, and this time it goes through.
        body = await wait_synced(env, api, cid, n + 1, timeout=30)
        assert body["status"] == "active" and body["last_error"] is None
        assert time.monotonic() - started >= 7
        assert "After the wait" in {r["title"] for r in await rows(env, cid)}


async def test_google_auth_failure_waits_for_the_user(env: Env) -> None:
    env.fresh_accounts()
    g = env.google
    g.calendar("carol@example.com", "Carol", primary=True)
    async with env.user("g3") as api:
        cid = (await authorize(env, api, "google"))["response"].json()["id"]
        await wait_synced(env, api, cid)
        g.fail_next(401, times=2)  # refused even with a fresh token
        n = await runs(env, cid)
        await api.post(f"/api/v1/connections/{cid}/sync")
        body = await wait_synced(env, api, cid, n)
        assert body["status"] == "error" and "refused" in body["last_error"]
        kind = await env.db.fetchval("SELECT error_kind FROM connections.connections WHERE id = $1", cid)
        assert kind == "auth"
        # Not scheduled while it waits for the user; a manual sync is the user acting.
        due = await env.db.fetch(
            "SELECT id FROM connections.connections WHERE id = $1 AND coalesce(error_kind, '') NOT IN ('auth', 'revoked')", cid
        )
        assert due == []
        n = await runs(env, cid)
        await api.post(f"/api/v1/connections/{cid}/sync")
        assert (await wait_synced(env, api, cid, n))["status"] == "active"


async def test_google_push_notice_triggers_a_sync_and_a_forged_one_does_not(env: Env) -> None:
    env.fresh_accounts()
    g = env.google
    g.calendar("dan@example.com", "Dan", primary=True)
    async with env.user("g4") as api:
        cid = (await authorize(env, api, "google"))["response"].json()["id"]
        await wait_synced(env, api, cid)
        await wait_for(lambda: any(c["calendar"] == "dan@example.com" for c in g.channels.values()), 10, what="a watch channel")
        g.add("dan@example.com", "Pushed", hour(3, 9), hour(3, 10))
        n = await runs(env, cid)
        assert await g.notify("dan@example.com") == [200]
        await wait_synced(env, api, cid, n)
        assert "Pushed" in {r["title"] for r in await rows(env, cid)}
        channel = next(c for c in g.channels.values() if c["calendar"] == "dan@example.com")
        async with httpx.AsyncClient(base_url=env.platform.connections_url, headers=env.platform.internal()) as anyone:
            forged = await anyone.post("/api/v1/connections/google/notifications", headers={
                "X-Goog-Channel-ID": channel["id"], "X-Goog-Channel-Token": "guess", "X-Goog-Resource-State": "exists"})
        assert forged.status_code == 404


async def test_google_event_writes(env: Env) -> None:
    env.fresh_accounts()
    g = env.google
    g.calendar("erin@example.com", "Erin", primary=True)
    async with env.user("g5") as api:
        user_id = api.headers["x-calmesh-user-id"]
        cid = (await authorize(env, api, "google"))["response"].json()["id"]
        body = await wait_synced(env, api, cid)
        calendar_id = body["calendars"][0]["id"]
    async with httpx.AsyncClient(base_url=env.platform.sync_url, headers=env.platform.internal()) as sync:
        r = await sync.post("/internal/events", json={
            "user_id": user_id, "connection_id": cid, "calendar_id": calendar_id, "title": "Booked",
            "start": hour(4, 14).strftime("%Y-%m-%dT%H:%M:%SZ"), "end": hour(4, 15).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "attendees": ["guest@example.com"],
        })
        assert r.status_code == 201, r.text
        event = r.json()
        at_google = [e for e in g.calendars["erin@example.com"].events.values() if e.get("summary") == "Booked"]
        assert len(at_google) == 1 and at_google[0]["attendees"] == [{"email": "guest@example.com"}]
        assert event["id"] in {r["event_id"] for r in await rows(env, cid)}
        assert (await sync.delete(f"/internal/events/{event['id']}", params={"user_id": user_id})).status_code == 204
        assert at_google[0]["id"] in g.calendars["erin@example.com"].events
        assert g.calendars["erin@example.com"].events[at_google[0]["id"]]["status"] == "cancelled"
        assert event["id"] not in {r["event_id"] for r in await rows(env, cid)}


async def test_oauth_denied_and_state_checks(env: Env) -> None:
    async with env.user("g6") as api:
        env.oauth.deny_next = True
        flow = await authorize(env, api, "google")
        assert flow["response"].status_code == 400
        body = flow["response"].json()
        assert body["status"] == "error" and "not granted" in body["last_error"]
        # A made-up state, and a state presented by another signed-in user.
        async with httpx.AsyncClient(base_url=env.platform.connections_url) as anyone:
            r = await anyone.get("/api/v1/connections/google/callback", params={"code": "x", "state": "made-up"}, headers=env.platform.internal())
            assert r.status_code == 400 and r.json()["code"] == "invalid_state"
        created = await start(env, api, "google")
        async with httpx.AsyncClient() as browser:
            provider_url = await open_start_url(env, browser, created, signed_in(env, api))
            callback = (await browser.get(provider_url)).headers["location"]
            other = await browser.get(callback, headers=env.platform.headers("usr_someone_else"))
        assert other.status_code == 400 and "another user" in other.json()["detail"]


async def test_a_victims_consent_through_an_attackers_link_attaches_nothing(env: Env) -> None:
    """issue 10, item 1: the attacker starts a Google connection and gets the victim to consent.
    Neither the provider URL nor the authorization_url itself completes anything for him."""
    env.fresh_accounts()
    env.google.calendar("victim@example.com", "Victim", primary=True)
    env.google.add("victim@example.com", "Private appointment", hour(1, 9), hour(1, 10))
    async with env.user("attacker") as attacker, env.user("victim") as victim:
        created = await start(env, attacker, "google")
        cid = created["id"]
        exchanges = sum(1 for e in env.oauth.log if e.get("grant_type") == "authorization_code")

        # 1. The authorization_url sent to the victim: her browser is refused, signed in or not,
        #    and is neither bound nor sent to the provider.
        async with httpx.AsyncClient() as victims_browser:
            as_victim = await victims_browser.get(created["authorization_url"], headers=signed_in(env, victim))
            assert as_victim.status_code == 403 and as_victim.json()["code"] == "oauth_wrong_account"
            assert "set-cookie" not in as_victim.headers and "location" not in as_victim.headers
            anonymous = await victims_browser.get(created["authorization_url"], headers={**env.platform.internal(),
                                                                                        "accept": "text/html"})
            assert anonymous.status_code == 401 and anonymous.headers["content-type"].startswith("text/html")
            assert "Sign in" in anonymous.text and "set-cookie" not in anonymous.headers
            # An API key is no browser session either.
            with_key = await victims_browser.get(created["authorization_url"], headers=env.platform.headers(
                attacker.headers["x-calmesh-user-id"], auth="key"))
            assert with_key.status_code == 401 and "set-cookie" not in with_key.headers

        # 2. The provider URL the attacker's own browser was sent on to, forwarded to the victim:
        #    she consents, and the callback in her browser (no binding cookie) completes nothing.
        async with httpx.AsyncClient() as attackers_browser, httpx.AsyncClient() as victims_browser:
            provider_url = await open_start_url(env, attackers_browser, created, signed_in(env, attacker))
            callback, back = await consent(env, victims_browser, provider_url)
            assert back.status_code == 403 and back.json()["code"] == "oauth_browser_mismatch"
            # Replaying the victim's callback in the attacker's bound browser: the state is spent.
            replay = await attackers_browser.get(callback, headers=env.platform.internal())
            assert replay.status_code == 400 and replay.json()["code"] == "invalid_state"
        assert sum(1 for e in env.oauth.log if e.get("grant_type") == "authorization_code") == exchanges  # no code exchanged

        # The attacker's connection stays pending and unattached: no token, no calendar, no event.
        body = (await attacker.get(f"/api/v1/connections/{cid}")).json()
        assert body["status"] == "pending" and body["calendars"] == [] and body["display_name"] == "Google Calendar"
        stored = await env.db.fetchrow("SELECT credentials, calendars FROM connections.connections WHERE id = $1", cid)
        assert stored["credentials"] is None
        assert await rows(env, cid) == []

        # The victim's own flow, in her own browser, still works.
        flow = await authorize(env, victim, "google")
        assert flow["response"].status_code == 200 and flow["response"].json()["display_name"] == "victim@example.com"


async def test_through_the_gateway_only_the_browser_that_started_the_flow_completes_it(env: Env) -> None:
    """The same attack end to end through the public gateway, with real sessions and cookie jars:
    the gateway routes the start page, and passes the binding cookie (and no other) on."""
    from calmesh_gateway.app import create_app as gateway_app

    env.fresh_accounts()
    env.google.calendar("victim2@example.com", "Victim", primary=True)
    gw_port = free_port()
    public = f"http://127.0.0.1:{gw_port}"
    settings = {**env.settings, "CALMESH_PUSH_NOTIFICATIONS": "off", "CALMESH_PUBLIC_BASE_URL": public}
    async with running(env.platform, sync=False, **settings) as platform:
        gateway = gateway_app(platform.settings(
            "gateway", CALMESH_PORT=str(gw_port), CALMESH_SESSION_SECRET="gateway-test-session-secret",
            CALMESH_CONNECTIONS_URL=platform.connections_url, **settings))
        async with serve(gateway, gw_port), httpx.AsyncClient(base_url=public, timeout=30) as attacker, \
                httpx.AsyncClient(base_url=public, timeout=30) as victim:
            for who, client in (("atk", attacker), ("vic", victim)):
                suffix = f"{who}{int(time.time() * 1000) % 10**9}"
                r = await client.post("/api/v1/auth/signup", json={
                    "email": f"{suffix}@example.com", "password": "a long enough passphrase", "handle": f"h-{suffix}"})
                assert r.status_code == 201, r.text
            csrf = {"X-CSRF-Token": attacker.cookies["calmesh_csrf"]}
            r = await attacker.post("/api/v1/connections/google", json={}, headers=csrf)
            assert r.status_code == 201, r.text
            created = r.json()
            assert created["authorization_url"].startswith(f"{public}/api/v1/connections/google/authorize?state=")

            # The victim opens the attacker's authorization_url: refused, nothing set.
            refused = await victim.get(created["authorization_url"])
            assert refused.status_code == 403 and refused.json()["code"] == "oauth_wrong_account"
            assert "set-cookie" not in refused.headers
            # The attacker opens it, and forwards the provider URL to the victim, who consents.
            bound = await attacker.get(created["authorization_url"])
            assert bound.status_code == 302 and bound.headers["set-cookie"].startswith("calmesh_oauth_")
            at_provider = await victim.get(bound.headers["location"])
            back = await victim.get(at_provider.headers["location"])
            assert back.status_code == 403 and back.json()["code"] == "oauth_browser_mismatch"
            pending = (await attacker.get(f"/api/v1/connections/{created['id']}")).json()
            assert pending["status"] == "pending" and pending["calendars"] == []

            # The normal flow, in one browser: the gateway carries the binding cookie to the callback.
            r = await attacker.post("/api/v1/connections/google", json={"redirect_uri": "/app/connections"}, headers=csrf)
            mine = r.json()
            bound = await attacker.get(mine["authorization_url"])
            at_provider = await attacker.get(bound.headers["location"])
            back = await attacker.get(at_provider.headers["location"])
            assert back.status_code == 302, back.text
            assert back.headers["location"] == f"{public}/app/connections?connection_id={mine['id']}&status=connected"
            assert "Max-Age=0" in back.headers["set-cookie"]  # the binding cookie is cleared
            done = (await attacker.get(f"/api/v1/connections/{mine['id']}")).json()
            assert done["status"] in ("syncing", "active") and done["display_name"] == "victim2@example.com"

            # A foreign redirect_uri through the gateway: 422 naming the field.
            r = await attacker.post("/api/v1/connections/google", json={"redirect_uri": "https://evil.example/"}, headers=csrf)
            assert r.status_code == 422 and r.json()["errors"][0]["field"] == "redirect_uri"


async def test_redirect_uri_must_be_on_the_public_origin(env: Env) -> None:
    async with env.user("redir") as api:
        public = env.platform.connections_url
        for foreign in ("https://evil.example/collect", "//evil.example/collect", f"{public}@evil.example/x",
                        "http://127.0.0.1:1/elsewhere", "javascript:alert(1)", f"{public.replace('http:', 'https:')}/app",
                        f"http://user:pw@{public[7:]}/app"):
            r = await api.post("/api/v1/connections/google", json={"redirect_uri": foreign})
            assert r.status_code == 422, (foreign, r.text)
            problem = r.json()
            assert problem["code"] == "invalid_redirect_uri"
            assert [e["field"] for e in problem["errors"]] == ["redirect_uri"], problem
        # Nothing was created for the refused starts.
        listed = (await api.get("/api/v1/connections")).json()["data"]
        assert listed == []
        # A path is read on the public origin.
        flow = await authorize(env, api, "google", redirect_uri="/app/connections")
        assert flow["response"].status_code == 302
        assert flow["response"].headers["location"].startswith(f"{public}/app/connections?connection_id=")


def test_the_redirect_allow_list_setting() -> None:
    from calmesh_common.problems import Problem
    from calmesh_common.settings import Settings, SettingsError
    from calmesh_connections.oauth import check_return_to

    settings = Settings.from_env({"CALMESH_PUBLIC_BASE_URL": "https://calmesh.example",
                                  "CALMESH_OAUTH_REDIRECT_ORIGINS": "https://app.example.org, http://localhost:5173"})
    assert check_return_to(settings, "https://calmesh.example/app/x") == "https://calmesh.example/app/x"
    assert check_return_to(settings, "https://app.example.org/done?y=2#frag") == "https://app.example.org/done?y=2"
    assert check_return_to(settings, "http://localhost:5173/cb") == "http://localhost:5173/cb"
    for refused in ("https://app.example.org.evil.example/", "http://app.example.org/", "http://localhost:5174/",
                    "https://calmesh.example:8443/"):
        with pytest.raises(Problem) as caught:
            check_return_to(settings, refused)
        assert caught.value.status == 422 and caught.value.code == "invalid_redirect_uri"
    with pytest.raises(SettingsError, match="CALMESH_OAUTH_REDIRECT_ORIGINS"):
        Settings.from_env({"CALMESH_OAUTH_REDIRECT_ORIGINS": "https://app.example.org/path"})


# --- Microsoft ---------------------------------------------------------------------------------


async def test_microsoft_oauth_delta_sync_and_subscription(env: Env) -> None:
    env.fresh_accounts()
    m = env.graph
    m.calendar("cal-main", "Calendar")
    m.calendar("cal-shared", "Shared", can_edit=False)
    singles = [m.add("cal-main", f"Call {n}", hour(n + 1, 13), hour(n + 1, 14)) for n in range(3)]
    occurrences = m.add_series("cal-main", "Weekly 1:1", hour(2, 10), 3, timedelta(days=7), timedelta(minutes=30))
    m.add("cal-shared", "Shared thing", hour(5, 9), hour(5, 10), showAs="free")
    async with env.user("m1") as api:
        flow = await authorize(env, api, "microsoft")
        assert flow["response"].status_code == 200
        cid = flow["response"].json()["id"]
        body = await wait_synced(env, api, cid)
        assert body["status"] == "active" and body["display_name"] == m.mail
        got = await rows(env, cid)
        assert len(got) == 3 + 3 + 1
        weekly = [r for r in got if r["title"] == "Weekly 1:1"]
        master_uid = next(iter(m.masters.values()))["iCalUId"]
        assert {r["uid"] for r in weekly} == {master_uid} and len({r["recurrence_id"] for r in weekly}) == 3
        assert next(r for r in got if r["title"] == "Shared thing")["transparency"] == "free"
        assert any("skiptoken" in r for r in m.requests)  # paging followed

        # Subscriptions were made (the validationToken handshake answered).
        await wait_for(lambda: {s["calendar"] for s in m.subscriptions.values()} >= {"cal-main", "cal-shared"}, 10, what="subscriptions")

        # Incremental through the delta link: an update, a removal, an exception, a new one.
        m.update("cal-main", singles[0]["id"], subject="Call 0 (renamed)")
        m.remove("cal-main", singles[1]["id"])
        m.update("cal-main", occurrences[1]["id"], isCancelled=True)
        m.add("cal-main", "Fresh", hour(8, 8), hour(8, 9))
        before = len(m.requests)
        n = await runs(env, cid)
        assert await m.notify("cal-main") == [202]  # the notice itself queues the sync
        await wait_synced(env, api, cid, n)
        assert any("deltatoken" in r for r in m.requests[before:])
        after = {r["title"]: r for r in await rows(env, cid)}
        assert "Call 0 (renamed)" in after and "Call 1" not in after and "Fresh" in after
        assert sorted(r["status"] for r in await rows(env, cid) if r["title"] == "Weekly 1:1") == ["cancelled", "confirmed", "confirmed"]

        # A notice with the wrong clientState changes nothing.
        n = await runs(env, cid)
        assert await m.notify("cal-main", client_state="forged") == [202]
        await asyncio.sleep(1.0)
        assert await runs(env, cid) == n

        # 410 SyncStateNotFound: a full round again; a removal it never reported is wiped.
        vanished = singles[2]["id"]
        m.calendars["cal-main"].events.pop(vanished)
        m.calendars["cal-main"].seq.pop(vanished)
        m.invalidate_delta_tokens()
        await api.post(f"/api/v1/connections/{cid}/sync")
        await wait_synced(env, api, cid, n)
        assert "Call 2" not in {r["title"] for r in await rows(env, cid)}

        # Writes through the sync service.
        user_id = api.headers["x-calmesh-user-id"]
        main_id = next(c["id"] for c in body["calendars"] if c["name"] == "Calendar")
        shared_id = next(c["id"] for c in body["calendars"] if c["name"] == "Shared")
    async with httpx.AsyncClient(base_url=env.platform.sync_url, headers=env.platform.internal()) as sync:
        r = await sync.post("/internal/events", json={
            "user_id": user_id, "connection_id": cid, "calendar_id": main_id, "title": "From CalMesh",
            "start": hour(10, 9).strftime("%Y-%m-%dT%H:%M:%SZ"), "end": hour(10, 10).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "description": "hello", "location": "Teams",
        })
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["title"] == "From CalMesh" and created["location"] == "Teams"
        assert any(e["subject"] == "From CalMesh" for e in m.calendars["cal-main"].events.values())
        ro = await sync.post("/internal/events", json={
            "user_id": user_id, "connection_id": cid, "calendar_id": shared_id, "title": "Nope",
            "start": hour(10, 9).strftime("%Y-%m-%dT%H:%M:%SZ"), "end": hour(10, 10).strftime("%Y-%m-%dT%H:%M:%SZ"),
        })
        assert ro.status_code == 422 and ro.json()["code"] == "read_only_source"
        assert (await sync.delete(f"/internal/events/{created['id']}", params={"user_id": user_id})).status_code == 204
        assert not any(e["subject"] == "From CalMesh" for e in m.calendars["cal-main"].events.values())


async def test_push_channels_are_renewed_before_they_expire(env: Env) -> None:
    env.fresh_accounts()
    env.google.calendar("gus@example.com", "Gus", primary=True)
    env.graph.calendar("cal-gus", "Gus")
    async with env.user("r1") as api:
        gid = (await authorize(env, api, "google"))["response"].json()["id"]
        mid = (await authorize(env, api, "microsoft"))["response"].json()["id"]
        await wait_synced(env, api, gid)
        await wait_synced(env, api, mid)
    await wait_for(lambda: env.google.channels and env.graph.subscriptions, 10, what="channels")
    old_google = set(env.google.channels)
    sub_id, sub = next(iter(env.graph.subscriptions.items()))
    old_expiry = sub["expirationDateTime"]
    # A scheduler that thinks every channel expires soon (within 30 days) renews them all.
    async with running(env.platform, sync=False, scheduler=True, CALMESH_SYNC_SCHEDULER_TICK_SECONDS="0.3",
                       CALMESH_PUSH_RENEW_BEFORE_SECONDS=str(30 * 86400), CALMESH_PUSH_NOTIFICATIONS="on",
                       CALMESH_PUBLIC_BASE_URL=env.platform.connections_url,
                       **{k: v for k, v in env.settings.items() if k not in ("CALMESH_PUSH_NOTIFICATIONS",)}):
        await wait_for(lambda: env.graph.subscriptions.get(sub_id, {}).get("expirationDateTime") != old_expiry, 15, what="a renewed subscription")
        await wait_for(lambda: any(c not in old_google for c in env.google.channels) and not (old_google & set(env.google.channels)), 15,
                       what="a new Google channel in place of the old")
    assert any(r.startswith("POST /channels/stop") for r in env.google.requests)


async def test_provider_not_configured_names_the_settings(database_url: str) -> None:
    with private_nats() as nats_url:
        async with private_platform(database_url, nats_url) as platform, running(platform, sync=False):
            async with platform.client("usr_nocfg") as api:
                for provider, prefix in (("google", "CALMESH_GOOGLE"), ("microsoft", "CALMESH_MICROSOFT")):
                    r = await api.post(f"/api/v1/connections/{provider}", json={})
                    assert r.status_code == 422, r.text
                    problem = r.json()
                    assert problem["code"] == "provider_not_configured"
                    assert f"{prefix}_CLIENT_ID" in problem["detail"] and f"{prefix}_CLIENT_SECRET" in problem["detail"]


async def test_a_forced_token_refresh_repeated_with_one_idempotency_key_refreshes_once(env: Env) -> None:
    """POST /internal/connections/{id}/access-token honours Idempotency-Key: sync's retry of a
    forced refresh whose answer was lost gets the first token, and the provider sees one refresh.
    The kept answer holds the token, so it is stored sealed, never in clear."""
    env.fresh_accounts()
    env.google.calendar("ivy@example.com", "Ivy", primary=True)
    async with env.user("g_idem") as api:
        flow = await authorize(env, api, "google")
        cid = flow["response"].json()["id"]
        await wait_synced(env, api, cid)
    async with env.platform.client() as internal:
        path = f"/internal/connections/{cid}/access-token"
        before = env.oauth.refreshes()
        first = await internal.post(path, json={"force_refresh": True}, headers={"Idempotency-Key": "refresh-1"})
        again = await internal.post(path, json={"force_refresh": True}, headers={"Idempotency-Key": "refresh-1"})
        assert first.status_code == again.status_code == 200, (first.text, again.text)
        assert again.json() == first.json() and again.headers.get("idempotent-replayed") == "true"
        assert env.oauth.refreshes() == before + 1
        # Another key is another refresh; the same key for a plain read is another request (422).
        fresh = await internal.post(path, json={"force_refresh": True}, headers={"Idempotency-Key": "refresh-2"})
        assert fresh.status_code == 200 and fresh.json()["access_token"] != first.json()["access_token"]
        assert env.oauth.refreshes() == before + 2
        reused = await internal.post(path, json={}, headers={"Idempotency-Key": "refresh-1"})
        assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"
        kept = await env.db.fetchval("SELECT body FROM connections.idempotency_keys WHERE scope = $1 AND key = 'refresh-1'",
                                     f"internal:{cid}")
        assert kept and first.json()["access_token"].encode() not in bytes(kept)
