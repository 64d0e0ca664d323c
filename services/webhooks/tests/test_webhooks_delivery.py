"""Webhook deliveries: a domain event committed by a producer (event store + outbox +
relay + JetStream) reaches a local receiver, signed per Standard Webhooks v1 and verified with the
reference `standardwebhooks` library; retries, 410, rotation, replay, test sends, manual retry, no
head-of-line blocking, and a dispatcher killed with SIGKILL mid-delivery.

The webhooks service runs in-process (uvicorn on a free port) on a schema of its own, so these tests
do not disturb the platform's `webhooks` schema; the kill test runs it as a real process. Through the
gateway with the platform's own producers: tests/test_webhooks_gateway_e2e.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import nats
import pytest
from cryptography.fernet import Fernet

from calmesh_common.devstack.embedded import free_port
from calmesh_common.events import decode_envelope
from calmesh_common.events.billing import PlanChanged
from calmesh_common.eventstore import EventStore
from calmesh_common.migrations import apply_migrations, common_migrations, package_migrations
from calmesh_common.relay import OutboxRelay
from calmesh_common.settings import Settings
from calmesh_testing.receiver import Received, Receiver, verify
from calmesh_testing.servers import Served
from calmesh_webhooks.app import create_app

SECRET = "test-internal-secret"
FERNET_KEY = Fernet.generate_key().decode()


# --- a producer of domain events -------------------------------------------------------------------


@dataclass
class Producer:
    """Commits billing's plan.changed events the way billing does: event store + outbox in one
    transaction, published by the outbox relay."""

    pool: asyncpg.Pool
    store: EventStore

    async def plan_changed(self, user_id: str, plan: str = "pro") -> str:
        async with self.pool.acquire() as conn, conn.transaction():
            stream = f"billing-{user_id}"
            [env] = await self.store.append(
                conn,
                stream,
                None,
                [PlanChanged(user_id=user_id, plan=plan, status="active",
                             current_period_end=datetime(2026, 12, 25, tzinfo=UTC), previous_plan="free",
                             at=datetime.now(UTC))],
                user_id=user_id,
            )
        return env.id


def _settings(database_url: str, nats_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        database_url=database_url,
        nats_url=nats_url,
        internal_secret=SECRET,
        encryption_keys=(FERNET_KEY,),
        allow_private_networks=True,
        webhook_retry_schedule=(0.2, 0.2, 0.2, 0.2, 0.2),
        webhook_retry_jitter=0.0,
        webhook_poll_interval_seconds=0.05,
        webhook_timeout_seconds=2.0,
        webhook_concurrency_per_subscription=2,
        log_level="warning",
    )
    values.update(overrides)
    return Settings(**values)


@dataclass
class Harness:
    api: httpx.AsyncClient
    receiver: Receiver
    receiver_url: str
    producer: Producer
    schema: str
    pool: asyncpg.Pool
    app: Any

    def headers(self, user_id: str) -> dict[str, str]:
        return {
            "x-calmesh-internal-secret": SECRET,
            "x-calmesh-user-id": user_id,
            "x-calmesh-auth": "key",
            "x-calmesh-scope": "full",
        }

    async def subscribe(self, user_id: str, path: str, event_types: list[str] | None = None) -> dict[str, Any]:
        r = await self.api.post(
            "/api/v1/webhooks",
            json={"url": self.receiver_url + path, "event_types": event_types or ["subscription.updated"]},
            headers=self.headers(user_id),
        )
        assert r.status_code == 201, r.text
        return r.json()

    async def deliveries(self, user_id: str, webhook_id: str) -> list[dict[str, Any]]:
        r = await self.api.get(f"/api/v1/webhooks/{webhook_id}/deliveries", headers=self.headers(user_id))
        assert r.status_code == 200, r.text
        return r.json()["data"]

    async def settled(self, user_id: str, webhook_id: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until `count` attempt rows exist and none is in flight."""
        deadline = time.monotonic() + timeout
        while True:
            rows = await self.deliveries(user_id, webhook_id)
            if len(rows) >= count and all(r["status"] != "pending" for r in rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"deliveries did not settle: {rows}")
            await asyncio.sleep(0.05)


async def migrate_schema(database_url: str, schema: str, package: str | None) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn, schema, package_migrations(package) if package else common_migrations())
    finally:
        await conn.close()


@pytest.fixture
async def harness(migrated: str, nats_server_url: str, unique: str) -> AsyncIterator[Harness]:
    schema = f"wh_{unique}"
    source = f"src_{unique}"
    await migrate_schema(migrated, schema, "calmesh_webhooks")
    await migrate_schema(migrated, source, None)
    receiver = Receiver()
    received = await Served(receiver).start()
    app = create_app(_settings(migrated, nats_server_url), schema=schema)
    service = await Served(app).start()
    pool = await asyncpg.create_pool(migrated, min_size=1, max_size=4)
    nc = await nats.connect(nats_server_url)
    relay = OutboxRelay(pool, nc.jetstream(), source, poll_interval=0.2)
    relay_task = asyncio.create_task(relay.run())
    api = httpx.AsyncClient(base_url=service.url, timeout=20)
    try:
        yield Harness(api, receiver, received.url, Producer(pool, EventStore(source, context="billing")), schema, pool, app)
    finally:
        await api.aclose()
        relay_task.cancel()
        await asyncio.gather(relay_task, return_exceptions=True)
        await service.stop()
        await received.stop()
        await nc.close()
        await pool.close()


def user() -> str:
    return f"usr_{uuid.uuid4().hex[:20]}"


# --- the tests -----------------------------------------------------------------------------------


async def test_failing_receiver_gets_the_event_until_it_succeeds_then_never_again(harness: Harness) -> None:
    owner = user()
    path = harness.receiver.on("/flaky", 500, 502, 500, 200)
    hook = await harness.subscribe(owner, path)
    assert hook["secret"].startswith("whsec_") and hook["status"] == "active"

    event_id = await harness.producer.plan_changed(owner)
    await harness.receiver.wait_for(lambda: len(harness.receiver.at(path)) >= 4)
    rows = await harness.settled(owner, hook["id"], 4)
    await asyncio.sleep(1.0)  # well past two more retry delays: nothing else may come

    got = harness.receiver.at(path)
    assert len(got) == 4
    assert {r.headers["webhook-id"] for r in got} == {event_id}
    for r in got:
        body = verify(hook["secret"], r)
        assert body["type"] == "subscription.updated"
        assert body["data"]["plan"] == "pro" and body["data"]["current_period_end"] == "2026-12-25T00:00:00Z"
        assert body["timestamp"].endswith("Z")
    # One row per attempt, newest first; next_attempt_at null once one succeeded.
    assert [r["attempt"] for r in rows] == [4, 3, 2, 1]
    assert [r["status"] for r in rows] == ["succeeded", "failed", "failed", "failed"]
    assert [r["response_status"] for r in rows] == [200, 500, 502, 500]
    assert all(r["next_attempt_at"] is None and r["event_id"] == event_id for r in rows)
    assert all(r["event_type"] == "subscription.updated" and r["duration_ms"] is not None for r in rows)


async def test_a_receiver_answering_410_disables_the_subscription_and_its_owner_is_told(harness: Harness) -> None:
    owner = user()
    path = harness.receiver.on("/gone", 410)
    hook = await harness.subscribe(owner, path)
    await harness.producer.plan_changed(owner)
    await harness.receiver.wait_for(lambda: len(harness.receiver.at(path)) == 1)
    await harness.settled(owner, hook["id"], 1)

    r = await harness.api.get(f"/api/v1/webhooks/{hook['id']}", headers=harness.headers(owner))
    assert r.json()["status"] == "disabled" and r.json()["disabled_reason"] == "gone"
    async with harness.pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT envelope FROM {harness.schema}.events WHERE stream_id = $1 AND type = 'webhook.disabled.v1'", hook["id"])
    assert len(rows) == 1
    notice = msgspec.json.decode(bytes(decode_envelope(rows[0]["envelope"]).event))
    assert notice["reason"] == "gone" and notice["user_id"] == owner

    await harness.producer.plan_changed(owner, "free")
    await asyncio.sleep(1.0)
    assert len(harness.receiver.at(path)) == 1  # no more deliveries, no retry


async def test_retry_after_is_honoured_and_five_days_of_failure_disable(harness: Harness) -> None:
    owner = user()
    path = harness.receiver.on("/busy", (429, {"retry-after": "1"}), 200)
    hook = await harness.subscribe(owner, path)
    await harness.producer.plan_changed(owner)
    await harness.receiver.wait_for(lambda: len(harness.receiver.at(path)) == 2)
    first, second = harness.receiver.at(path)
    assert second.at - first.at >= 1.0  # not the 0.2 s of the schedule

    # A subscription that has failed without a success for more than 5 days is disabled at its
    # next failure, and its owner told.
    failing = harness.receiver.on("/down", 500)
    hook = await harness.subscribe(owner, failing)
    async with harness.pool.acquire() as conn:
        await conn.execute(f"UPDATE {harness.schema}.subscriptions SET failing_since = now() - interval '5 days 1 minute'"
                           " WHERE id = $1", hook["id"])
    await harness.producer.plan_changed(owner, "free")
    await harness.receiver.wait_for(lambda: len(harness.receiver.at(failing)) == 1)
    await harness.settled(owner, hook["id"], 1)
    r = await harness.api.get(f"/api/v1/webhooks/{hook['id']}", headers=harness.headers(owner))
    assert r.json()["status"] == "disabled" and r.json()["disabled_reason"] == "failing"
    async with harness.pool.acquire() as conn:
        [row] = await conn.fetch(f"SELECT envelope FROM {harness.schema}.events WHERE stream_id = $1"
                                 " AND type = 'webhook.disabled.v1'", hook["id"])
    assert msgspec.json.decode(bytes(decode_envelope(row["envelope"]).event))["reason"] == "failing"
    await asyncio.sleep(0.6)
    assert len(harness.receiver.at(failing)) == 1  # its retries stop too


async def test_after_rotation_both_secrets_sign_and_both_verify(harness: Harness) -> None:
    owner = user()
    path = harness.receiver.on("/rotated", 200)
    hook = await harness.subscribe(owner, path)
    r = await harness.api.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret", headers=harness.headers(owner))
    assert r.status_code == 200
    new_secret = r.json()["secret"]
    assert new_secret.startswith("whsec_") and new_secret != hook["secret"]

    await harness.producer.plan_changed(owner)
    await harness.receiver.wait_for(lambda: len(harness.receiver.at(path)) == 1)
    [got] = harness.receiver.at(path)
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert verify(new_secret, got)["type"] == "subscription.updated"
    assert verify(hook["secret"], got)["type"] == "subscription.updated"
    # Each signature alone verifies with exactly its own secret.
    first, second = got.headers["webhook-signature"].split(" ")
    verify(new_secret, Received(got.path, {**got.headers, "webhook-signature": first}, got.body, got.at))
    verify(hook["secret"], Received(got.path, {**got.headers, "webhook-signature": second}, got.body, got.at))


async def test_replay_delivers_the_events_since_an_instant_again_with_the_same_ids(harness: Harness) -> None:
    owner = user()
    path = harness.receiver.on("/replayed", 200)
    hook = await harness.subscribe(owner, path)
    before = datetime.now(UTC) - timedelta(seconds=1)
    first = await harness.producer.plan_changed(owner, "pro")
    second = await harness.producer.plan_changed(owner, "free")
    await harness.receiver.wait_for(lambda: len(harness.receiver.at(path)) == 2)

    r = await harness.api.post(
        f"/api/v1/webhooks/{hook['id']}/replay", json={"since": before.isoformat()}, headers=harness.headers(owner)
    )
    assert r.status_code == 202, r.text
    await harness.receiver.wait_for(lambda: len(harness.receiver.at(path)) == 4)
    ids = [x.headers["webhook-id"] for x in harness.receiver.at(path)]
    assert sorted(ids) == sorted([first, second, first, second])
    for x in harness.receiver.at(path):
        verify(hook["secret"], x)
    # Another user's events in the same stream are never replayed to this subscription.
    assert all(msgspec.json.decode(x.body)["type"] == "subscription.updated" for x in harness.receiver.at(path))


async def test_test_send_goes_now_and_a_delivery_can_be_retried_by_hand(harness: Harness) -> None:
    owner = user()
    path = harness.receiver.on("/manual", 200)
    hook = await harness.subscribe(owner, path)
    r = await harness.api.post(f"/api/v1/webhooks/{hook['id']}/test", headers=harness.headers(owner))
    assert r.status_code == 200, r.text
    attempt = r.json()
    assert attempt["event_type"] == "webhook.test" and attempt["status"] == "succeeded" and attempt["attempt"] == 1
    [got] = harness.receiver.at(path)
    assert verify(hook["secret"], got)["type"] == "webhook.test"

    r = await harness.api.post(
        f"/api/v1/webhooks/{hook['id']}/deliveries/{attempt['id']}/retry", headers=harness.headers(owner)
    )
    assert r.status_code == 202, r.text
    await harness.receiver.wait_for(lambda: len(harness.receiver.at(path)) == 2)
    assert {x.headers["webhook-id"] for x in harness.receiver.at(path)} == {attempt["event_id"]}
    rows = await harness.settled(owner, hook["id"], 2)
    assert [x["attempt"] for x in rows] == [2, 1]


async def test_a_slow_subscriber_never_delays_another(harness: Harness) -> None:
    slow_owner, fast_owner = user(), user()
    release = asyncio.Event()

    async def hang() -> int:
        await release.wait()
        return 200

    slow = harness.receiver.on("/slow", hang)
    fast = harness.receiver.on("/fast", 200)
    await harness.subscribe(slow_owner, slow)
    await harness.subscribe(fast_owner, fast)
    try:
        for _ in range(6):  # more than the slow subscription may have in flight
            await harness.producer.plan_changed(slow_owner)
        await harness.receiver.wait_for(lambda: len(harness.receiver.at(slow)) >= 2)
        started = time.monotonic()
        for _ in range(3):
            await harness.producer.plan_changed(fast_owner)
        await harness.receiver.wait_for(lambda: len(harness.receiver.at(fast)) == 3, timeout=5)
        assert time.monotonic() - started < 1.5
        assert len(harness.receiver.at(slow)) == 2  # bounded: at most 2 in flight for it
    finally:
        release.set()


async def test_a_redirect_is_a_failure_and_is_never_followed(harness: Harness) -> None:
    owner = user()
    target = harness.receiver.on("/target", 200)
    path = harness.receiver.on("/moved", (307, {"location": harness.receiver_url + target}))
    hook = await harness.subscribe(owner, path)
    await harness.producer.plan_changed(owner)
    await harness.receiver.wait_for(lambda: len(harness.receiver.at(path)) >= 1)
    rows = await harness.settled(owner, hook["id"], 1)
    first = rows[-1]
    assert first["status"] == "failed" and first["response_status"] is None and "redirect" in first["error"]
    assert first["next_attempt_at"] is not None
    assert harness.receiver.at(target) == []


async def test_the_api_validates_and_hides_other_users_webhooks(harness: Harness) -> None:
    owner, stranger = user(), user()
    hook = await harness.subscribe(owner, "/x")
    h = harness.headers(stranger)
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/rotate-secret"),
                           ("POST", "/test"), ("GET", "/deliveries")):
        r = await harness.api.request(method, f"/api/v1/webhooks/{hook['id']}{suffix}", headers=h,
                                      json={} if method == "PATCH" else None)
        assert r.status_code == 404, (method, suffix, r.text)
    listed = (await harness.api.get("/api/v1/webhooks", headers=h)).json()
    assert listed == {"data": [], "next_cursor": None}

    bad = [
        ({"url": "ftp://example.com/x", "event_types": ["*"]}, 422),
        ({"url": "https://example.com/x", "event_types": ["booking.exploded"]}, 422),
        ({"url": "https://example.com/x", "event_types": []}, 422),
        ({"url": "https://example.com/x", "event_types": ["*"], "colour": "red"}, 400),
        ({"event_types": ["*"]}, 400),
    ]
    for body, status in bad:
        r = await harness.api.post("/api/v1/webhooks", json=body, headers=h)
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")

    # Idempotency-Key: a repeat gets the first answer (secret included), another body is refused.
    body = {"url": harness.receiver_url + "/idem", "event_types": ["*"]}
    key = {"Idempotency-Key": uuid.uuid4().hex, **harness.headers(owner)}
    first = await harness.api.post("/api/v1/webhooks", json=body, headers=key)
    again = await harness.api.post("/api/v1/webhooks", json=body, headers=key)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    other = await harness.api.post("/api/v1/webhooks", json={**body, "description": "x"}, headers=key)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    listed = (await harness.api.get("/api/v1/webhooks", headers=harness.headers(owner))).json()["data"]
    assert [w["url"] for w in listed].count(body["url"]) == 1

    r = await harness.api.patch(f"/api/v1/webhooks/{hook['id']}", json={"status": "disabled", "event_types": ["*"]},
                                headers=harness.headers(owner))
    assert r.status_code == 200 and r.json()["status"] == "disabled" and r.json()["event_types"] == ["*"]
    assert "secret" not in r.json()
    r = await harness.api.delete(f"/api/v1/webhooks/{hook['id']}", headers=harness.headers(owner))
    assert r.status_code == 204
    assert (await harness.api.get(f"/api/v1/webhooks/{hook['id']}", headers=harness.headers(owner))).status_code == 404


# --- a dispatcher killed mid-delivery ------------------------------------------------------------------


def _start_dispatcher(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "calmesh-webhooks")],
        env={**env, "CALMESH_PORT": str(port)},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    return process, f"http://127.0.0.1:{port}"


async def _healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"the dispatcher exited: {log.read_text()[-2000:]}")
            try:
                if (await client.get(url + "/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"the dispatcher did not start: {log.read_text()[-2000:]}")


async def test_a_dispatcher_killed_mid_delivery_loses_nothing_and_repeats_only_with_the_same_id(
    migrated: str, nats_server_url: str, unique: str, tmp_path: Path
) -> None:
    schema, source = f"wh_{unique}", f"src_{unique}"
    await migrate_schema(migrated, schema, "calmesh_webhooks")
    await migrate_schema(migrated, source, None)
    receiver = Receiver()
    never = asyncio.Event()

    async def hang() -> int:
        await never.wait()
        return 200

    path = receiver.on("/crash", hang, hang, hang, 200)
    received = await Served(receiver).start()
    env = {
        **os.environ,
        "DATABASE_URL": migrated,
        "NATS_URL": nats_server_url,
        "CALMESH_SERVICE": "webhooks",
        "CALMESH_INTERNAL_SECRET": SECRET,
        "CALMESH_ENCRYPTION_KEYS": FERNET_KEY,
        "CALMESH_ALLOW_PRIVATE_NETWORKS": "1",
        "CALMESH_WEBHOOKS_SCHEMA": schema,
        "CALMESH_WEBHOOK_TIMEOUT_SECONDS": "1",  # a lease of 3 s
        "CALMESH_WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.2",
        "CALMESH_WEBHOOK_RETRY_JITTER": "0",
        "CALMESH_WEBHOOK_POLL_INTERVAL_SECONDS": "0.1",
        "CALMESH_WEBHOOK_CONCURRENCY_PER_SUBSCRIPTION": "3",
        "CALMESH_LOG_LEVEL": "warning",
        "CALMESH_DB_POOL_MAX": "4",
    }
    log = tmp_path / "dispatcher.log"
    pool = await asyncpg.create_pool(migrated, min_size=1, max_size=3)
    nc = await nats.connect(nats_server_url)
    relay_task = asyncio.create_task(OutboxRelay(pool, nc.jetstream(), source, poll_interval=0.2).run())
    producer = Producer(pool, EventStore(source, context="billing"))
    first, url = _start_dispatcher(env, log)
    second = None
    try:
        await _healthy(url, first, log)
        owner = user()
        headers = {"x-calmesh-internal-secret": SECRET, "x-calmesh-user-id": owner, "x-calmesh-scope": "full"}
        async with httpx.AsyncClient(base_url=url) as api:
            r = await api.post("/api/v1/webhooks", headers=headers,
                               json={"url": received.url + path, "event_types": ["*"]})
            assert r.status_code == 201, r.text
            hook = r.json()
        event_ids = [await producer.plan_changed(owner, plan) for plan in ["pro", "free"] * 5]

        async def queued() -> int:
            async with pool.acquire() as conn:
                return int(await conn.fetchval(f"SELECT count(*) FROM {schema}.deliveries"))

        await receiver.wait_for(lambda: len(receiver.at(path)) >= 3)
        deadline = time.monotonic() + 10
        while await queued() < len(event_ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # Three deliveries are in flight, their receiver has not answered: kill outright.
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        in_flight = {r.headers["webhook-id"] for r in receiver.at(path)}
        assert len(in_flight) == 3

        second, url2 = _start_dispatcher(env, log)
        await _healthy(url2, second, log)
        await receiver.wait_for(lambda: len(receiver.at(path)) >= len(event_ids) + 3, timeout=20)
        async with pool.acquire() as conn:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                states = await conn.fetch(f"SELECT event_id, status FROM {schema}.deliveries")
                if all(s["status"] == "succeeded" for s in states):
                    break
                await asyncio.sleep(0.1)
            attempts = await conn.fetch(
                f"SELECT event_id, attempt, status, error FROM {schema}.attempts ORDER BY event_id, attempt"
            )
        # Nothing lost: every event delivered and settled once, as exactly one delivery.
        assert sorted(s["event_id"] for s in states) == sorted(event_ids)
        assert all(s["status"] == "succeeded" for s in states)
        # Duplicates only with the same webhook-id: the three interrupted ones, sent again.
        got = [r.headers["webhook-id"] for r in receiver.at(path)]
        assert set(got) == set(event_ids)
        repeated = {i for i in got if got.count(i) > 1}
        assert repeated == in_flight and all(got.count(i) == 2 for i in repeated)
        for r in receiver.at(path):
            verify(hook["secret"], r)
        interrupted = [a for a in attempts if a["status"] == "failed"]
        assert {a["event_id"] for a in interrupted} == in_flight
        assert all(a["attempt"] == 1 and a["error"].startswith("interrupted") for a in interrupted)
    finally:
        never.set()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
        relay_task.cancel()
        await asyncio.gather(relay_task, return_exceptions=True)
        await received.stop()
        await nc.close()
        await pool.close()
