"""User-given URLs cannot reach inside: loopback, RFC 1918, the cloud metadata address, an
IPv4-mapped IPv6 address, decimal-encoded IPs, a redirect to an internal host, file://; a 50 MB
body and an RRULE that would expand without end are refused too. Each ends with a clear
`last_error`, and the worker goes on.

What each part proves:
- the address rules are tested through the real path (API -> job -> in-process worker -> guarded
  fetch) with CALMESH_ALLOW_PRIVATE_NETWORKS off;
- the redirect and the 50 MB body need a server outside: the feed sync runs with a GuardedClient
  whose transport is a test transport answering for a public IP literal (no DNS, nothing leaves
  the machine), private networks still refused — so the redirect check and the size cap are the
  real code, only the far end is simulated;
- the endless RRULE and an over-size feed also run through a worker that may reach loopback (to
  serve the feeds) with a small size cap, and that same worker then syncs a good feed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from calmesh_common.eventstore import EventStore
from calmesh_common.guarded import GuardedClient
from calmesh_providers import ICAL_CALENDAR_REF, SourceError, calendar_id_for
from calmesh_sync.connections_api import ConnectionDetails, ProviderCalendar
from calmesh_sync.engine import SyncDeps, sync_connection
from calmesh_sync.worker import _classify
from calmesh_testing.backends import private_nats
from calmesh_testing.feeds import ICAL_FEEDS, FeedServer
from calmesh_testing.platform import Platform, private_platform, running
from calmesh_testing.servers import serve
from calmesh_testing.wait import wait_for

FEEDS = ICAL_FEEDS


@dataclass
class Env:
    platform: Platform
    db: asyncpg.Pool
    feeds: FeedServer
    base: str


@pytest.fixture(scope="module")
async def env(database_url: str) -> AsyncIterator[Env]:
    feeds = FeedServer()
    with private_nats() as nats_url:
        async with private_platform(database_url, nats_url) as platform, serve(feeds) as base:
            pool = await asyncpg.create_pool(platform.database_url, min_size=1, max_size=4)
            try:
                yield Env(platform, pool, feeds, base)
            finally:
                await pool.close()


async def settle(api: httpx.AsyncClient, cid: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        body = (await api.get(f"/api/v1/connections/{cid}")).json()
        return body if body["status"] in ("active", "error", "revoked") else None

    return await wait_for(done, 30, what=f"{cid} to settle")


async def test_internal_addresses_are_refused(env: Env) -> None:
    port = env.base.rsplit(":", 1)[1]
    env.feeds.put("/feed.ics", (FEEDS / "simple.ics").read_text())
    targets = {
        f"http://127.0.0.1:{port}/feed.ics": "127.0.0.1 is a loopback address",
        f"http://localhost:{port}/feed.ics": "is a loopback address",
        "http://10.20.30.40/feed.ics": "10.20.30.40 is a private address",
        "http://192.168.1.1/feed.ics": "is a private address",
        "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is a cloud metadata address",
        f"http://[::ffff:127.0.0.1]:{port}/feed.ics": "loopback address (inside IPv6",
        f"http://2130706433:{port}/feed.ics": "127.0.0.1 is a loopback address",
        f"webcal://127.1:{port}/feed.ics": "127.0.0.1 is a loopback address",
    }
    async with running(env.platform, CALMESH_ALLOW_PRIVATE_NETWORKS="0", CALMESH_PLAN_FREE_CONNECTIONS="100"):
        async with env.platform.client("usr_ssrf") as api:
            r = await api.post("/api/v1/connections/ical", json={"url": "file:///etc/passwd"})
            assert r.status_code == 422 and r.json()["code"] == "invalid_url"
            # A CalDAV server is reached at creation: refused there, with the reason.
            r = await api.post("/api/v1/connections/caldav", json={"url": f"http://127.0.0.1:{port}/", "username": "u", "password": "p"})
            assert r.status_code == 422 and "loopback" in r.json()["detail"]
            made = {}
            for url in targets:
                r = await api.post("/api/v1/connections/ical", json={"url": url})
                assert r.status_code == 201, (url, r.text)
                made[url] = r.json()["id"]
            for url, reason in targets.items():
                body = await settle(api, made[url])
                assert body["status"] == "error", (url, body)
                assert reason in body["last_error"] and "refused" in body["last_error"], (url, body["last_error"])
        assert not env.feeds.requests_to("/feed.ics")  # nothing got through
        async with httpx.AsyncClient() as probe:
            assert (await probe.get(f"{env.platform.sync_url}/health")).status_code == 200  # the worker lives


def _deps(env: Env, transport: httpx.AsyncBaseTransport) -> SyncDeps:
    settings = env.platform.settings("sync", CALMESH_ALLOW_PRIVATE_NETWORKS="0")
    return SyncDeps(
        settings=settings, pool=env.db, store=EventStore("sync"),
        guarded=GuardedClient(allow_private_networks=False, max_bytes=settings.ical_max_bytes, timeout=10, transport=transport),
        http=httpx.AsyncClient(), connections=None,  # type: ignore[arg-type]
    )


def _feed_connection(url: str) -> ConnectionDetails:
    cid = f"conn_ssrf{abs(hash(url)) % 10**8}"
    return ConnectionDetails(
        id=cid, user_id="usr_ssrf", provider="ical", status="active", credentials={"url": url},
        calendars=[ProviderCalendar(id=calendar_id_for(cid, ICAL_CALENDAR_REF), name="feed", read_only=True, ref=ICAL_CALENDAR_REF)],
    )


async def test_a_redirect_to_an_internal_host_is_refused(env: Env) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.headers["host"] == "93.184.216.34":
            return httpx.Response(302, headers={"location": "http://169.254.169.254/latest/meta-data/iam/"})
        return httpx.Response(200, text="should never be asked")

    deps = _deps(env, httpx.MockTransport(handler))
    with pytest.raises(SourceError) as caught:
        await sync_connection(deps, _feed_connection("http://93.184.216.34/calendar.ics"), "sync_redirect")
    kind, message, _ = _classify(caught.value)
    assert kind == "source" and "169.254.169.254 is a cloud metadata address" in message
    assert len(seen) == 1  # the redirect target was never contacted


@pytest.mark.parametrize("declared", [True, False])
async def test_a_50_mb_body_is_cut_at_the_cap(env: Env, declared: bool) -> None:
    produced = 0

    async def body() -> Any:
        nonlocal produced
        chunk = b"A" * 1_048_576
        for _ in range(50):
            produced += len(chunk)
            yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-length": str(50 * 1_048_576)} if declared else {}
        return httpx.Response(200, headers=headers, content=body())

    deps = _deps(env, httpx.MockTransport(handler))
    with pytest.raises(SourceError, match="larger than the 10,485,760 byte limit") as caught:
        await sync_connection(deps, _feed_connection("http://93.184.216.34/huge.ics"), f"sync_huge_{declared}")
    assert "CALMESH_ICAL_MAX_BYTES" in str(caught.value)
    assert produced <= 12 * 1_048_576  # stopped reading at the cap, not after 50 MB


async def test_endless_rules_and_big_bodies_leave_the_worker_fine(env: Env) -> None:
    env.feeds.put("/endless.ics", (FEEDS / "endless.ics").read_bytes())
    env.feeds.put("/minutely.ics", (FEEDS / "minutely.ics").read_bytes())
    env.feeds.put("/big.ics", b"X" * 300_000)
    env.feeds.put("/good.ics", (FEEDS / "simple.ics").read_bytes())
    async with running(env.platform, CALMESH_ALLOW_PRIVATE_NETWORKS="1", CALMESH_ICAL_MAX_BYTES="200000",
                       CALMESH_SYNC_MAX_INSTANCES="20000", CALMESH_PLAN_FREE_CONNECTIONS="100"):
        async with env.platform.client("usr_ssrf2") as api:
            ids = {}
            for path in ("/endless.ics", "/minutely.ics", "/big.ics"):
                ids[path] = (await api.post("/api/v1/connections/ical", json={"url": env.base + path})).json()["id"]
            endless = await settle(api, ids["/endless.ics"])
            assert endless["status"] == "error" and "steps to expand" in endless["last_error"]
            minutely = await settle(api, ids["/minutely.ics"])
            if datetime.now(UTC).year < 2028:  # the feed starts in November 2026 and never ends
                assert minutely["status"] == "error" and "more than 20,000 event instances" in minutely["last_error"]
                assert "CALMESH_SYNC_MAX_INSTANCES" in minutely["last_error"]
            big = await settle(api, ids["/big.ics"])
            assert big["status"] == "error" and "larger than the 200,000 byte limit" in big["last_error"]
            # Nothing was half-written, and the same worker syncs the next feed.
            for cid in ids.values():
                assert await env.db.fetchval("SELECT count(*) FROM sync.event_instances WHERE connection_id = $1", cid) == 0
            good = (await api.post("/api/v1/connections/ical", json={"url": env.base + "/good.ics"})).json()["id"]
            assert (await settle(api, good))["status"] == "active"


