"""Google and Microsoft end to end against local fakes (tests/fakes/: OAuth server, Google Calendar
v3, Microsoft Graph): the OAuth flow with PKCE and a single-use state, token refresh and
revocation, full then incremental sync (paging, sync tokens, deletions, 410), Retry-After, push
notifications, and event writes. The connections and sync services run in this process on a
private database and NATS (tests/fakes/platform.py)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fakes.google import GoogleFake  # noqa: E402
from fakes.graph import GraphFake  # noqa: E402
from fakes.oauth import OAuthFake  # noqa: E402
from fakes.platform import Platform, private_nats, private_platform, running, wait_for  # noqa: E402
from fakes.servers import serve  # noqa: E402


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


async def authorize(env: Env, api: httpx.AsyncClient, provider: str, **body: Any) -> dict[str, Any]:
    """POST /connections/{provider}, follow the authorization URL at the fake, come back through the
    public callback; returns the connection as the callback left it."""
    r = await api.post(f"/api/v1/connections/{provider}", json=body or None)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["status"] == "pending" and created["authorization_url"]
    query = parse_qs(urlsplit(created["authorization_url"]).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["redirect_uri"] == [f"{env.platform.connections_url}/api/v1/connections/{provider}/callback"]
    async with httpx.AsyncClient(timeout=10) as browser:
        at_provider = await browser.get(created["authorization_url"])
        assert at_provider.status_code == 302
        callback = at_provider.headers["location"]
        back = await browser.get(callback, headers=env.platform.internal())  # public: no user headers
    return {"created": created, "callback": callback, "response": back}


async def wait_synced(env: Env, api: httpx.AsyncClient, cid: str, after: int = 0, timeout: float = 20) -> dict[str, Any]:
    """Wait until the connection has more finished syncs than `after` and is not syncing."""
    async def done() -> dict[str, Any] | None:
        count = await env.db.fetchval("SELECT count(*) FROM sync.sync_runs WHERE connection_id = $1 AND outcome IS NOT NULL", cid)
        if count <= after:
            return None
        body = (await api.get(f"/api/v1/connections/{cid}")).json()
        return body if body["status"] != "syncing" and body["status"] != "pending" else None

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
        flow = await authorize(env, api, "google", redirect_uri="https://app.example/done?x=1")
        back = flow["response"]
        assert back.status_code == 302
        target = urlsplit(back.headers["location"])
        assert target.netloc == "app.example" and parse_qs(target.query)["status"] == ["connected"]
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
        r = await api.post("/api/v1/connections/google", json={})
        url = r.json()["authorization_url"]
        async with httpx.AsyncClient() as browser:
            callback = (await browser.get(url)).headers["location"]
            other = await browser.get(callback, headers=env.platform.headers("usr_someone_else"))
        assert other.status_code == 400 and "another user" in other.json()["detail"]


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
