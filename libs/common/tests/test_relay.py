"""The outbox relay: every committed event reaches JetStream once, in order, whatever dies when."""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import nats
import pytest

from calmesh_common.events import decode_envelope
from calmesh_common.relay import OutboxRelay

from .conftest import ThingRecorded


async def append_things(pool: asyncpg.Pool, lane, stream_id: str, count: int, per_txn: int = 1) -> list[str]:
    """Append `count` events to `stream_id`, `per_txn` per transaction; returns their ids in order."""
    store = lane.store()
    ids: list[str] = []
    async with pool.acquire() as conn:
        for start in range(0, count, per_txn):
            async with conn.transaction():
                envs = await store.append(
                    conn, stream_id, None, [ThingRecorded(n=n) for n in range(start, min(count, start + per_txn))]
                )
            ids += [e.id for e in envs]
    return ids


async def unpublished(pool: asyncpg.Pool, lane) -> int:
    return await pool.fetchval(f"SELECT count(*) FROM {lane.schema}.outbox WHERE published_at IS NULL")


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay):
    task = asyncio.create_task(relay.run())
    try:
        yield task
    finally:
        await stop(task)


async def stop(task: asyncio.Task) -> None:
    """Cancel `task` and insist that it ends (a service's shutdown waits for its relay)."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=3)
    if task not in done:
        task.cancel()  # a second request, so that the failure below does not hang the teardown
        await asyncio.wait({task}, timeout=3)
        raise AssertionError("the relay did not stop when cancelled")
    with contextlib.suppress(asyncio.CancelledError):
        task.result()


async def test_events_committed_while_no_relay_runs_are_published_once_by_the_next(pool, js, lane, read_stream, wait_for) -> None:
    ids = await append_things(pool, lane, "cal-1", 12, per_txn=4)
    # The relay that should have published them died: nothing is on the stream yet.
    assert await read_stream(lane.stream) == []
    relay = OutboxRelay(pool, js, lane.schema, poll_interval=0.1)
    async with running(relay):
        await wait_for(lambda: _count_is(read_stream, lane.stream, 12), what="12 messages on the stream")
        await asyncio.sleep(0.3)  # a few more relay rounds: nothing is published again
    stored = await read_stream(lane.stream)
    assert [m.msg_id for m in stored] == ids
    assert all(m.subject == lane.subject for m in stored)
    assert [decode_envelope(m.data).id for m in stored] == ids
    assert all(m.headers["Calmesh-Event-Type"] == "libtest.thing_recorded.v1" for m in stored)
    assert await unpublished(pool, lane) == 0


async def _count_is(read_stream, stream: str, n: int) -> bool:
    return len(await read_stream(stream)) >= n


class DiedBeforeMarking(Exception):
    pass


async def test_a_relay_dying_after_publishing_and_before_marking_causes_no_duplicate(pool, js, lane, read_stream) -> None:
    ids = await append_things(pool, lane, "cal-1", 10, per_txn=5)

    async def die(batch: list[str]) -> None:
        raise DiedBeforeMarking(batch)

    with pytest.raises(DiedBeforeMarking):
        await OutboxRelay(pool, js, lane.schema, before_mark=die).publish_pending()
    assert [m.msg_id for m in await read_stream(lane.stream)] == ids
    assert await unpublished(pool, lane) == 10  # the marks were rolled back with the dying relay

    # The restarted relay publishes the whole batch again; JetStream drops every duplicate.
    assert await OutboxRelay(pool, js, lane.schema).publish_pending() == 10
    assert await unpublished(pool, lane) == 0
    stored = await read_stream(lane.stream)
    assert [m.msg_id for m in stored] == ids
    assert len({m.msg_id for m in stored}) == len(stored) == 10


async def test_a_relay_cancelled_mid_batch_leaves_its_rows_for_the_next(pool, js, lane, read_stream, wait_for) -> None:
    ids = await append_things(pool, lane, "cal-1", 6)
    published = asyncio.Event()

    async def hang(batch: list[str]) -> None:
        published.set()
        await asyncio.Event().wait()  # the process is killed here

    async with running(OutboxRelay(pool, js, lane.schema, before_mark=hang)):
        await asyncio.wait_for(published.wait(), 5)
    assert await unpublished(pool, lane) == 6

    async with running(OutboxRelay(pool, js, lane.schema, poll_interval=0.1)):
        await wait_for(lambda: _is_zero(unpublished(pool, lane)), what="every row marked")
    assert [m.msg_id for m in await read_stream(lane.stream)] == ids


async def _is_zero(awaitable) -> bool:
    return await awaitable == 0


async def test_order_is_kept_across_batches_and_streams(pool, js, lane, read_stream) -> None:
    ids = []
    ids += await append_things(pool, lane, "cal-1", 7, per_txn=3)
    ids += await append_things(pool, lane, "cal-2", 5, per_txn=5)
    ids += await append_things(pool, lane, "cal-1", 4, per_txn=1)
    relay = OutboxRelay(pool, js, lane.schema, batch_size=5)
    assert [await relay.publish_pending() for _ in range(5)] == [5, 5, 5, 1, 0]
    stored = await read_stream(lane.stream)
    assert [m.msg_id for m in stored] == ids
    versions = [(e.stream_id, e.version) for e in (decode_envelope(m.data) for m in stored)]
    assert [v for s, v in versions if s == "cal-1"] == list(range(1, 12))
    assert [v for s, v in versions if s == "cal-2"] == list(range(1, 6))


async def test_while_one_relay_publishes_another_on_the_same_schema_waits(pool, js, lane, read_stream) -> None:
    await append_things(pool, lane, "cal-1", 3)
    in_batch = asyncio.Event()
    release = asyncio.Event()

    async def pause(batch: list[str]) -> None:
        in_batch.set()
        await release.wait()

    first = asyncio.create_task(OutboxRelay(pool, js, lane.schema, before_mark=pause).publish_pending())
    await asyncio.wait_for(in_batch.wait(), 5)
    # The first relay has published and not yet marked: a second one must not publish the same rows.
    assert await OutboxRelay(pool, js, lane.schema).publish_pending() == 0
    release.set()
    assert await first == 3
    assert await unpublished(pool, lane) == 0


async def test_two_relays_running_together_publish_each_event_once_in_order(
    pool, nats_server_url, lane, read_stream, wait_for
) -> None:
    """Two replicas, each with its own NATS connection, while a writer keeps appending."""
    conns = [await nats.connect(nats_server_url) for _ in range(2)]
    try:
        relays = [OutboxRelay(pool, c.jetstream(), lane.schema, batch_size=4, poll_interval=0.05) for c in conns]
        async with running(relays[0]), running(relays[1]):
            ids = []
            for round_ in range(8):
                ids += await append_things(pool, lane, f"cal-{round_ % 3}", 5, per_txn=(round_ % 3) + 1)
            await wait_for(lambda: _is_zero(unpublished(pool, lane)), what="every row marked")
    finally:
        for c in conns:
            await c.close()
    stored = await read_stream(lane.stream)
    assert [m.msg_id for m in stored] == ids  # no duplicate, no gap, the order of the appends


async def test_an_append_wakes_the_relay_at_once(pool, js, nc, lane) -> None:
    """The relay sleeps for a minute between polls; the NOTIFY of the append wakes it."""
    sub = await nc.subscribe(lane.subject)
    relay = OutboxRelay(pool, js, lane.schema, poll_interval=60)
    async with running(relay):
        await asyncio.sleep(0.3)  # the relay found nothing to do and is waiting
        started = time.monotonic()
        [event_id] = await append_things(pool, lane, "cal-1", 1)
        msg = await sub.next_msg(timeout=5)
        elapsed = time.monotonic() - started
    await sub.unsubscribe()
    assert msg.headers["Nats-Msg-Id"] == event_id
    # Without the notice the relay would sleep out its 60 s poll interval; the bound is loose
    # only for a loaded machine (it takes a few milliseconds here).
    assert elapsed < 1.0, f"the event took {elapsed:.3f} s to reach the stream"


async def test_a_relay_cancelled_just_as_its_batch_is_acknowledged_stops(pool, js, nc, lane) -> None:
    """Shutdown cancels the relay at any moment, also the one where JetStream's acknowledgements
    arrive: it must stop, not swallow the cancellation and run on."""
    sub = await nc.subscribe(lane.subject)
    try:
        for _ in range(3):
            task = asyncio.create_task(OutboxRelay(pool, js, lane.schema, poll_interval=60).run())
            await append_things(pool, lane, "cal-1", 1)
            await sub.next_msg(timeout=5)  # published: its acknowledgement is arriving right now
            await stop(task)
    finally:
        await sub.unsubscribe()
