"""Streams on a real 3-node JetStream cluster: `calmesh-migrate` declares them with
CALMESH_STREAM_REPLICAS replicas, and the platform's outbox relay and durable consumers go on
working when one of the three servers dies and when it comes back.

The cluster is three `nats-server` processes on loopback joined by cluster routes
(`calmesh_testing.nats_cluster`), as the StatefulSet of deploy/k8s runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from nats.js import JetStreamContext

from calmesh_common.consumer import ConsumerSpec, DurableConsumer
from calmesh_common.devstack.migrate import migrate_all
from calmesh_common.events import Envelope
from calmesh_common.eventstore import EventStore
from calmesh_common.migrations import apply_migrations, common_migrations
from calmesh_common.relay import OutboxRelay
from calmesh_common.service import connect_nats
from calmesh_common.streams import STREAMS, stream_name
from calmesh_testing.nats_cluster import NatsCluster
from calmesh_testing.wait import wait_for

from .conftest import ThingRecorded

#: The context whose real stream (CALMESH_GATEWAY) carries this test's events.
CONTEXT = "gateway"


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with tempfile.TemporaryDirectory(prefix="calmesh-test-nats-cluster-") as tmp:
        c = NatsCluster(Path(tmp), size=3)
        try:
            c.start()
            yield c
        finally:
            c.stop()


async def stream_replicas(js: JetStreamContext, name: str) -> tuple[int, str, list[tuple[str, bool]]]:
    """(configured replicas, leader, [(peer, current)]) of stream `name`."""
    info = await js.stream_info(name)
    cluster = info.cluster
    assert cluster is not None, f"{name}: no cluster information (not clustered?)"
    peers = [(p.name, bool(p.current)) for p in (cluster.replicas or [])]
    return info.config.num_replicas or 1, cluster.leader or "", peers


async def test_migrate_creates_and_updates_every_stream_with_the_replica_count(cluster: NatsCluster, migrated: str) -> None:
    nc = await connect_nats(cluster.urls[0], "test-migrate")
    js = nc.jetstream()
    try:
        # First run as `make up` would: one replica each. Then the cluster's setting: migrate
        # updates every existing stream to three replicas, each placed on a different server.
        await migrate_all(migrated, cluster.urls[0], stream_replicas=1)
        for spec in STREAMS:
            replicas, _, peers = await stream_replicas(js, spec.name)
            assert (replicas, peers) == (1, []), spec.name
        await migrate_all(migrated, cluster.urls[0], stream_replicas=3)
        for spec in STREAMS:
            async def three_current(name: str = spec.name) -> bool:
                replicas, leader, peers = await stream_replicas(js, name)
                return replicas == 3 and bool(leader) and len(peers) == 2 and all(c for _, c in peers)

            await wait_for(three_current, timeout=20, what=f"{spec.name} at R3 with current peers")
            _, leader, peers = await stream_replicas(js, spec.name)
            assert len({leader, *(p for p, _ in peers)}) == 3, "one copy on each server"
    finally:
        await nc.close()


def test_calmesh_migrate_reads_the_replica_setting(cluster: NatsCluster, migrated: str) -> None:
    """The console script the migrate Job runs applies CALMESH_STREAM_REPLICAS (and refuses nonsense)."""
    script = str(Path(sys.executable).parent / "calmesh-migrate")
    env = {**os.environ, "DATABASE_URL": migrated, "NATS_URL": cluster.urls[1]}
    bad = subprocess.run([script], env={**env, "CALMESH_STREAM_REPLICAS": "7"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "CALMESH_STREAM_REPLICAS must be a whole number from 1 to 5" in bad.stderr
    assert "Traceback" not in bad.stderr
    good = subprocess.run([script], env={**env, "CALMESH_STREAM_REPLICAS": "3"}, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr

    async def check() -> None:
        nc = await connect_nats(cluster.urls[2], "test-migrate-check")
        try:
            for spec in STREAMS:
                replicas, _, _ = await stream_replicas(nc.jetstream(), spec.name)
                assert replicas == 3, spec.name
        finally:
            await nc.close()

    asyncio.run(check())


class Applied:
    """A consumer handler recording each event it applied in a table of its schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema

    async def __call__(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        await conn.execute(f"INSERT INTO {self.schema}.applied (event_id) VALUES ($1)", envelope.id)


@contextlib.asynccontextmanager
async def running(*coroutines) -> AsyncIterator[None]:  # type: ignore[no-untyped-def]
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=10)


async def test_relay_and_consumer_survive_a_server_dying_and_coming_back(cluster: NatsCluster, migrated: str, unique: str) -> None:
    await migrate_all(migrated, cluster.urls[0], stream_replicas=3)
    stream = stream_name(CONTEXT)
    probe = await connect_nats(cluster.urls[0], "test-probe")
    js_probe = probe.jetstream()
    schema = f"lt_{unique}"
    pool = await asyncpg.create_pool(migrated, min_size=1, max_size=6)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn, schema, common_migrations())
            await conn.execute(f"CREATE TABLE {schema}.applied (event_id text NOT NULL)")
        # The service's connection starts on the stream leader: killing it makes the client move
        # to another server and the stream elect a new leader, both at once.
        await wait_for(lambda: _has_leader(js_probe, stream), timeout=20, what="a stream leader")
        _, leader, _ = await stream_replicas(js_probe, stream)
        victim = cluster.node(leader)
        nc = await connect_nats(cluster.nodes[victim].url, f"test-service-{unique}")
        js = nc.jetstream()
        store = EventStore(schema, context=CONTEXT)
        relay = OutboxRelay(pool, js, schema, poll_interval=0.2, publish_timeout=3.0)
        spec = ConsumerSpec(name=f"libtest-cluster-{unique}", stream=stream,
                            filter_subjects=(f"calmesh.{CONTEXT}.libtest.>",), schema=schema, ack_wait=2.0,
                            backoff=(0.2,), max_deliver=50, batch=16)
        consumer = DurableConsumer(pool, js, spec, Applied(schema))
        await consumer.subscribe()
        subject_count = 0

        async def append(count: int) -> list[str]:
            nonlocal subject_count
            ids = []
            async with pool.acquire() as conn:
                for _ in range(count):
                    async with conn.transaction():
                        [env] = await store.append(conn, f"thing-{unique}", None, [ThingRecorded(n=subject_count)])
                    ids.append(env.id)
                    subject_count += 1
            return ids

        async def applied_ids() -> list[str]:
            return [r["event_id"] for r in await pool.fetch(f"SELECT event_id FROM {schema}.applied")]

        async def all_applied(expected: list[str]) -> bool:
            return sorted(await applied_ids()) == sorted(expected)

        async with running(relay.run(), consumer.run()):
            expected = await append(10)
            await wait_for(lambda: all_applied(expected), timeout=20, what="events applied on the healthy cluster")

            cluster.kill(victim)
            expected += await append(10)
            await wait_for(lambda: all_applied(expected), timeout=60, what="events applied with a server down")
            unpublished = await pool.fetchval(f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL")
            assert unpublished == 0

            cluster.start(victim)

            async def caught_up() -> bool:
                try:
                    _, leader_now, peers = await stream_replicas(js_probe, stream)
                except Exception:  # noqa: BLE001 - the probe may be reconnecting too
                    return False
                return bool(leader_now) and len(peers) == 2 and all(current for _, current in peers)

            await wait_for(caught_up, timeout=60, what="the restarted server caught up with the stream")
            expected += await append(10)
            await wait_for(lambda: all_applied(expected), timeout=60, what="events applied after the server came back")

        # Exactly once, end to end: every event once on the stream (Nats-Msg-Id dedup across the
        # failover) and applied once by the consumer.
        assert len(await applied_ids()) == len(set(expected)) == 30
        ids_on_stream = []
        info = await js_probe.stream_info(stream)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                raw = await js_probe.get_msg(stream, seq)
            except Exception:  # noqa: BLE001 - a sequence of another test's subject may be gone
                continue
            if raw.subject.startswith(f"calmesh.{CONTEXT}.libtest.") and raw.headers:
                msg_id = raw.headers.get("Nats-Msg-Id", "")
                if msg_id in set(expected):
                    ids_on_stream.append(msg_id)
        assert sorted(ids_on_stream) == sorted(expected)
        await nc.close()
    finally:
        with contextlib.suppress(Exception):
            await js_probe.delete_consumer(stream, f"libtest-cluster-{unique}")
        await probe.close()
        async with pool.acquire() as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await pool.close()


async def _has_leader(js: JetStreamContext, stream: str) -> bool:
    try:
        _, leader, _ = await stream_replicas(js, stream)
    except Exception:  # noqa: BLE001 - electing
        return False
    return bool(leader)
