"""The connections API as the gateway calls it (identity headers + internal secret): input
checks, ownership, pagination, unified calendars and their sources (with the events published for
every change), the internal calendar lookup, connection removal, secrets at rest and key rotation,
the plan limit. In-process services on a private database and NATS; an iCal feed server and a
Radicale (for a writable source) on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import msgspec
import nats
import pytest
from cryptography.fernet import Fernet

from calmesh_testing.backends import private_nats
from calmesh_testing.feeds import ICAL_FEEDS, FeedServer
from calmesh_testing.platform import Platform, private_platform, running
from calmesh_testing.radicale import Radicale, radicale
from calmesh_testing.servers import serve
from calmesh_testing.wait import wait_for

FEED = (ICAL_FEEDS / "simple.ics").read_text()


@dataclass
class Env:
    platform: Platform
    feeds: FeedServer
    feed_url: str
    radicale: Radicale
    db: asyncpg.Pool
    nats_url: str
    counter: int = 0

    def user(self) -> httpx.AsyncClient:
        self.counter += 1
        return self.platform.client(f"usr_api{self.counter}_{id(self) % 100000}")


@pytest.fixture(scope="module")
def dav() -> Iterator[Radicale]:
    with radicale() as server:
        server.make_calendar("main", "Main")
        yield server


@pytest.fixture(scope="module")
async def env(database_url: str, dav: Radicale) -> AsyncIterator[Env]:
    feeds = FeedServer()
    feeds.put("/simple.ics", FEED)
    with private_nats() as nats_url:
        async with private_platform(database_url, nats_url) as platform, serve(feeds) as feed_base:
            async with running(platform, CALMESH_ALLOW_PRIVATE_NETWORKS="1", CALMESH_ICLOUD_CALDAV_URL=dav.url + "/"):
                pool = await asyncpg.create_pool(platform.database_url, min_size=1, max_size=4)
                try:
                    yield Env(platform, feeds, f"{feed_base}/simple.ics", dav, pool, nats_url)
                finally:
                    await pool.close()


async def ical(env: Env, api: httpx.AsyncClient) -> dict[str, Any]:
    r = await api.post("/api/v1/connections/ical", json={"url": env.feed_url})
    assert r.status_code == 201, r.text
    return r.json()


async def caldav(env: Env, api: httpx.AsyncClient) -> dict[str, Any]:
    r = await api.post("/api/v1/connections/caldav", json={"url": env.radicale.url, "username": env.radicale.username,
                                                          "password": env.radicale.password})
    assert r.status_code == 201, r.text
    return r.json()


def problem(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert {"type", "title", "status", "detail", "code"} <= set(body)
    if code:
        assert body["code"] == code, body
    return body


async def test_bad_input_is_a_clear_4xx(env: Env) -> None:
    async with env.user() as api:
        problem(await api.post("/api/v1/connections/ical", json={"url": env.feed_url, "extra": 1}), 400)
        problem(await api.post("/api/v1/connections/ical", json={"url": 42}), 400)
        problem(await api.post("/api/v1/connections/ical", json={}), 400)
        problem(await api.post("/api/v1/connections/ical", content=b"{not json", headers={"content-type": "application/json"}), 400)
        body = problem(await api.post("/api/v1/connections/ical", json={"url": "file:///etc/passwd"}), 422, "invalid_url")
        assert "only http, https and webcal" in body["detail"]
        problem(await api.post("/api/v1/connections/caldav", json={"url": env.radicale.url, "username": "x"}), 400)
        r = await api.post("/api/v1/connections/ical", json={"url": env.feed_url.replace("http://", "webcal://")})
        assert r.status_code == 201  # webcal:// is accepted (read as https://)
        problem(await api.get("/api/v1/connections", params={"limit": 0}), 400)
        problem(await api.get("/api/v1/connections", params={"cursor": "garbage!"}), 400, "invalid_cursor")
        problem(await api.post("/api/v1/calendars", json={"slug": "Bad Slug", "name": "x"}), 422, "invalid_slug")
        problem(await api.post("/api/v1/calendars", json={"slug": "ok", "name": "x", "timezone": "Mars/Olympus"}), 422, "invalid_timezone")
        problem(await api.post("/api/v1/calendars", json={"slug": "ok", "name": "x", "sources": [{"connection_id": "conn_nope"}]}), 422,
                "unknown_connection")


async def test_connections_are_private_and_paged(env: Env) -> None:
    async with env.user() as alice, env.user() as bob:
        made = [await ical(env, alice) for _ in range(3)]
        page = (await alice.get("/api/v1/connections", params={"limit": 2})).json()
        assert [c["id"] for c in page["data"]] == [m["id"] for m in made[:2]] and page["next_cursor"]
        rest = (await alice.get("/api/v1/connections", params={"limit": 2, "cursor": page["next_cursor"]})).json()
        assert [c["id"] for c in rest["data"]] == [made[2]["id"]] and rest["next_cursor"] is None
        assert (await bob.get("/api/v1/connections")).json() == {"data": [], "next_cursor": None}
        cid = made[0]["id"]
        problem(await bob.get(f"/api/v1/connections/{cid}"), 404, "not_found")
        problem(await bob.delete(f"/api/v1/connections/{cid}"), 404, "not_found")
        problem(await bob.post(f"/api/v1/connections/{cid}/sync"), 404, "not_found")
        one = (await alice.get(f"/api/v1/connections/{cid}")).json()
        assert set(one) >= {"id", "provider", "display_name", "status", "last_synced_at", "last_error", "calendars"}
        assert one["provider"] == "ical" and one["calendars"][0]["read_only"] is True
        # The feed URL may hold a secret token: never shown.
        assert "simple.ics" not in (await alice.get(f"/api/v1/connections/{cid}")).text


async def test_unified_calendars_sources_order_and_events(env: Env) -> None:
    nc = await nats.connect(env.nats_url)
    seen: list[dict[str, Any]] = []

    async def on(msg: Any) -> None:
        envelope = msgspec.json.decode(msg.data)
        if envelope["type"].startswith("calendar."):
            seen.append(envelope)

    sub = await nc.subscribe("calmesh.connections.>", cb=on)
    try:
        async with env.user() as api, env.user() as other:
            feed = await ical(env, api)
            dav = await caldav(env, api)
            r = await api.post("/api/v1/calendars", json={
                "slug": "work", "name": "Work", "timezone": "Europe/Amsterdam",
                "sources": [{"connection_id": feed["id"]}, {"connection_id": dav["id"], "calendar_id": dav["calendars"][0]["id"]}],
            })
            assert r.status_code == 201, r.text
            cal = r.json()
            assert [s["connection_id"] for s in cal["sources"]] == [feed["id"], dav["id"]]
            assert [s["sort_order"] for s in cal["sources"]] == [0, 1]
            assert [s["read_only"] for s in cal["sources"]] == [True, False]
            assert cal["default_source_id"] == cal["sources"][1]["id"]  # the first writable one
            problem(await api.post("/api/v1/calendars", json={"slug": "work", "name": "Again"}), 409, "slug_taken")
            assert (await other.post("/api/v1/calendars", json={"slug": "work", "name": "Theirs"})).status_code == 201  # per user
            problem(await other.get("/api/v1/calendars/nope"), 404)

            # Reorder: the CalDAV source first.
            ids = [s["id"] for s in cal["sources"]]
            r = await api.put("/api/v1/calendars/work/sources/reorder", json={"source_ids": [ids[1], ids[0]]})
            assert r.status_code == 200, r.text
            assert [s["id"] for s in r.json()["sources"]] == [ids[1], ids[0]]
            problem(await api.put("/api/v1/calendars/work/sources/reorder", json={"source_ids": ["src_x"]}), 422, "invalid_order")

            # Rename, move to another zone.
            r = await api.patch("/api/v1/calendars/work", json={"slug": "job", "name": "Job", "timezone": "America/New_York"})
            assert r.status_code == 200 and r.json()["slug"] == "job" and r.json()["timezone"] == "America/New_York"
            problem(await api.get("/api/v1/calendars/work"), 404)
            problem(await api.patch("/api/v1/calendars/job", json={"timezone": "Nowhere/Land"}), 422, "invalid_timezone")

            # The internal lookup for availability.
            internal = httpx.AsyncClient(base_url=env.platform.connections_url, headers=env.platform.internal())
            async with internal:
                doc = (await internal.get("/internal/calendars/job", params={"user_id": api.headers["x-calmesh-user-id"]})).json()
                assert doc["slug"] == "job" and doc["timezone"] == "America/New_York" and doc["user_id"] == api.headers["x-calmesh-user-id"]
                assert [(s["connection_id"], s["read_only"]) for s in doc["sources"]] == [(dav["id"], False), (feed["id"], True)]
                assert (await internal.get("/internal/calendars/job", params={"user_id": "usr_else"})).status_code == 404

            # Remove a source, add it back (calendar_id left out: every calendar of the connection).
            assert (await api.delete(f"/api/v1/calendars/job/sources/{ids[0]}")).status_code == 204
            problem(await api.delete(f"/api/v1/calendars/job/sources/{ids[0]}"), 404)
            r = await api.post("/api/v1/calendars/job/sources", json={"connection_id": feed["id"]})
            assert r.status_code == 201 and r.json()["connection_id"] == feed["id"] and r.json()["sort_order"] == 1
            problem(await api.post("/api/v1/calendars/job/sources", json={"connection_id": feed["id"]}), 409, "source_exists")
            assert len((await api.get("/api/v1/calendars")).json()["data"]) == 1

            # Deleting a connection takes its sources out of every calendar.
            assert (await api.post("/api/v1/calendars", json={"slug": "second", "name": "Second",
                                                             "sources": [{"connection_id": dav["id"]}]})).status_code == 201
            assert (await api.delete(f"/api/v1/connections/{dav['id']}")).status_code == 204
            problem(await api.get(f"/api/v1/connections/{dav['id']}"), 404)
            assert (await api.get("/api/v1/calendars/second")).json()["sources"] == []
            job = (await api.get("/api/v1/calendars/job")).json()
            assert [s["connection_id"] for s in job["sources"]] == [feed["id"]] and job["default_source_id"] is None

            assert (await api.delete("/api/v1/calendars/second")).status_code == 204
            problem(await api.get("/api/v1/calendars/second"), 404)

        # Every change was published, with the whole calendar in it.
        await wait_for(lambda: any(e["type"] == "calendar.deleted.v1" for e in seen), 10, what="calendar events on NATS")
        types = [e["type"] for e in seen if e["user_id"] == api.headers["x-calmesh-user-id"]]
        for wanted in ("calendar.created.v1", "calendar.sources_reordered.v1", "calendar.updated.v1", "calendar.source_removed.v1",
                       "calendar.source_added.v1", "calendar.deleted.v1"):
            assert wanted in types, (wanted, types)
        updated = next(e for e in seen if e["type"] == "calendar.updated.v1")
        assert updated["event"]["calendar"]["slug"] == "job" and updated["event"]["previous_slug"] == "work"
        assert len(updated["event"]["calendar"]["sources"]) == 2
        removed = [e for e in seen if e["type"] == "calendar.source_removed.v1" and e["event"].get("reason") == "connection_removed"]
        assert {e["event"]["calendar"]["slug"] for e in removed} == {"job", "second"}
    finally:
        await sub.unsubscribe()
        await nc.close()


async def test_icloud_is_caldav_at_the_configured_server(env: Env) -> None:
    async with env.user() as api:
        problem(await api.post("/api/v1/connections/icloud", json={"username": env.radicale.username, "app_password": "wrong"}),
                422, "invalid_credentials")
        r = await api.post("/api/v1/connections/icloud", json={"username": env.radicale.username, "app_password": env.radicale.password})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["provider"] == "icloud" and body["display_name"] == env.radicale.username
        assert [c["name"] for c in body["calendars"]] == ["Main"] and env.radicale.password not in r.text
        done = await wait_for(lambda: api.get(f"/api/v1/connections/{body['id']}"), 1)
        assert done.status_code == 200
        await wait_for(lambda: env.db.fetchval("SELECT outcome = 'completed' FROM sync.sync_runs WHERE connection_id = $1", body["id"]), 20,
                       what="the iCloud sync")


async def test_deleting_a_connection_removes_its_cached_events(env: Env) -> None:
    async with env.user() as api:
        feed = await ical(env, api)
        await wait_for(lambda: env.db.fetchval("SELECT count(*) FROM sync.event_instances WHERE connection_id = $1", feed["id"]), 20,
                       what="the first sync")
        assert (await api.delete(f"/api/v1/connections/{feed['id']}")).status_code == 204
        await wait_for(
            lambda: env.db.fetchval("SELECT count(*) = 0 FROM sync.event_instances WHERE connection_id = $1", feed["id"]), 10,
            what="the rows to go",
        )
        purged = await env.db.fetchval("SELECT count(*) FROM sync.events WHERE type = 'connection_events.purged.v1' AND stream_id = $1",
                                       f"connection:{feed['id']}")
        assert purged == 1


async def test_secrets_are_encrypted_and_keys_rotate(env: Env, database_url: str) -> None:
    async with env.user() as api:
        dav = await caldav(env, api)
        assert env.radicale.password not in (await api.get(f"/api/v1/connections/{dav['id']}")).text
    raw = await env.db.fetchrow("SELECT credentials, settings::text AS settings FROM connections.connections WHERE id = $1", dav["id"])
    assert env.radicale.password.encode() not in bytes(raw["credentials"]) and env.radicale.password not in raw["settings"]
    old_key = env.platform.encryption_keys
    assert Fernet(old_key.encode()).decrypt(bytes(raw["credentials"]))  # sealed with the configured key
    # A new key in front: old secrets still open, new ones are sealed with the new key.
    new_key = Fernet.generate_key().decode()
    env.platform.encryption_keys = f"{new_key},{old_key}"
    try:
        async with running(env.platform, sync=False, CALMESH_ALLOW_PRIVATE_NETWORKS="1"):
            async with httpx.AsyncClient(base_url=env.platform.connections_url, headers=env.platform.internal()) as internal:
                r = await internal.get(f"/internal/connections/{dav['id']}")
                assert r.status_code == 200 and r.json()["credentials"]["password"] == env.radicale.password
            async with env.user() as api:
                second = await caldav(env, api)
                sealed = await env.db.fetchval("SELECT credentials FROM connections.connections WHERE id = $1", second["id"])
                assert Fernet(new_key.encode()).decrypt(bytes(sealed))
                assert (await api.delete(f"/api/v1/connections/{second['id']}")).status_code == 204
    finally:
        env.platform.encryption_keys = old_key


async def test_idempotency_key_on_creating_posts(env: Env) -> None:
    async with env.user() as api:
        key = {"Idempotency-Key": "create-feed-1"}
        first = await api.post("/api/v1/connections/ical", json={"url": env.feed_url}, headers=key)
        again = await api.post("/api/v1/connections/ical", json={"url": env.feed_url}, headers=key)
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json() and again.headers.get("idempotent-replayed") == "true"
        assert len((await api.get("/api/v1/connections")).json()["data"]) == 1
        other = await api.post("/api/v1/connections/ical", json={"url": env.feed_url + "?v=2"}, headers=key)
        problem(other, 422, "idempotency_key_reused")
        # A refusal about the body is the key's answer too; the same key on a calendar works apart.
        bad = {"Idempotency-Key": "calendar-1"}
        problem(await api.post("/api/v1/calendars", json={"slug": "Bad Slug", "name": "x"}, headers=bad), 422, "invalid_slug")
        problem(await api.post("/api/v1/calendars", json={"slug": "Bad Slug", "name": "x"}, headers=bad), 422, "invalid_slug")
        made = await api.post("/api/v1/calendars", json={"slug": "idem", "name": "x"}, headers={"Idempotency-Key": "calendar-2"})
        assert made.status_code == 201
        assert (await api.post("/api/v1/calendars", json={"slug": "idem", "name": "x"},
                               headers={"Idempotency-Key": "calendar-2"})).json() == made.json()


async def test_plan_limit_on_connections(env: Env) -> None:
    async with env.user() as api:
        for _ in range(3):
            await ical(env, api)
        body = problem(await api.post("/api/v1/connections/ical", json={"url": env.feed_url}), 402, "plan_limit_reached")
        assert "connections" in body["detail"]
    await asyncio.sleep(0)
