"""The durable consumer: effects happen exactly once; failures are retried, poison is dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest
from nats.js import JetStreamContext

from calmesh_common.consumer import ConsumerSpec, DurableConsumer, PoisonMessage
from calmesh_common.events import Envelope, encode_envelope, make_envelope
from calmesh_common.streams import DEAD_LETTER_PREFIX, DEAD_LETTER_STREAM

from .conftest import ThingRecorded

pytestmark = pytest.mark.usefixtures("calmesh_streams")


class Effects:
    """A handler that records each event it applied in a table of the lane's schema."""

    def __init__(self, schema: str, fail: int = 0, poison: bool = False, always_fail: bool = False) -> None:
        self.schema = schema
        self.calls = 0
        self.fail = fail
        self.poison = poison
        self.always_fail = always_fail

    async def __call__(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        self.calls += 1
        await conn.execute(f"INSERT INTO {self.schema}.effects (event_id) VALUES ($1)", envelope.id)
        if self.poison:
            raise PoisonMessage(f"calendar of {envelope.stream_id} does not exist")
        if self.always_fail or self.calls <= self.fail:
            raise ConnectionError("provider unreachable")


@pytest.fixture
async def effects_table(pool, lane) -> str:
    await pool.execute(f"CREATE TABLE {lane.schema}.effects (event_id text NOT NULL)")
    return lane.schema


def spec_for(lane, unique: str, **overrides) -> ConsumerSpec:
    values = dict(
        name=f"libtest_{unique}",
        stream=lane.stream,
        filter_subjects=(f"calmesh.{lane.context}.>",),
        schema=lane.schema,
        ack_wait=1.0,
        backoff=(0.05,),
        max_deliver=3,
        batch=8,
    )
    values.update(overrides)
    return ConsumerSpec(**values)


async def publish_thing(js: JetStreamContext, lane, n: int = 1) -> Envelope:
    envelope = make_envelope(ThingRecorded(n=n), stream_id=f"thing-{n}", version=1)
    await js.publish(lane.subject, encode_envelope(envelope), headers={"Nats-Msg-Id": envelope.id})
    return envelope


async def applied(pool, schema: str) -> list[str]:
    return [r["event_id"] for r in await pool.fetch(f"SELECT event_id FROM {schema}.effects")]


async def tracked(pool, schema: str, consumer: str) -> list[str]:
    rows = await pool.fetch(f"SELECT event_id FROM {schema}.processed_messages WHERE consumer = $1", consumer)
    return [r["event_id"] for r in rows]


async def settled(js: JetStreamContext, lane, name: str) -> bool:
    """Everything delivered to the consumer was acked or terminated, and nothing waits."""
    info = await js.consumer_info(lane.stream, name)
    return info.num_pending == 0 and info.num_ack_pending == 0


@contextlib.asynccontextmanager
async def running(consumer: DurableConsumer):
    await consumer.subscribe()
    task = asyncio.create_task(consumer.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        assert task.done(), "the consumer did not stop when cancelled"


class DiedAfterCommit(Exception):
    pass


async def test_a_consumer_dying_between_commit_and_ack_does_not_apply_twice(
    pool, js, lane, unique, effects_table, wait_for
) -> None:
    spec = spec_for(lane, unique)
    handler = Effects(lane.schema)
    dying = DurableConsumer(pool, js, spec, handler)

    async def die(envelope: Envelope) -> None:
        raise DiedAfterCommit(envelope.id)

    dying.after_commit = die
    envelope = await publish_thing(js, lane)
    async with running(dying) as task:
        await asyncio.wait({task}, timeout=5)
        assert isinstance(task.exception(), DiedAfterCommit)
    assert await applied(pool, lane.schema) == [envelope.id]  # committed, never acked

    # A new process with the same durable: JetStream redelivers after ack_wait; it only acks.
    restarted = DurableConsumer(pool, js, spec, handler)
    async with running(restarted):
        await wait_for(lambda: settled(js, lane, spec.name), what="the redelivery acked")
    info = await js.consumer_info(lane.stream, spec.name)
    assert info.delivered.consumer_seq == 2  # delivered, then redelivered
    assert handler.calls == 1
    assert await applied(pool, lane.schema) == [envelope.id]
    assert await tracked(pool, lane.schema, spec.name) == [envelope.id]


async def test_a_consumer_cancelled_between_commit_and_ack_does_not_apply_twice(
    pool, js, lane, unique, effects_table, wait_for
) -> None:
    spec = spec_for(lane, unique)
    handler = Effects(lane.schema)
    committed = asyncio.Event()

    async def hang(envelope: Envelope) -> None:
        committed.set()
        await asyncio.Event().wait()  # the process is killed here

    killed = DurableConsumer(pool, js, spec, handler)
    killed.after_commit = hang
    envelopes = [await publish_thing(js, lane, n) for n in (1, 2)]
    async with running(killed):
        await asyncio.wait_for(committed.wait(), 5)

    restarted = DurableConsumer(pool, js, spec, handler)
    async with running(restarted):
        await wait_for(lambda: settled(js, lane, spec.name), what="both messages acked")
    assert sorted(await applied(pool, lane.schema)) == sorted(e.id for e in envelopes)
    assert handler.calls == 2
    info = await js.consumer_info(lane.stream, spec.name)
    assert info.delivered.consumer_seq > 2  # what the killed process held came again


async def test_a_passing_failure_is_retried_then_applied_once(pool, js, lane, unique, effects_table, wait_for) -> None:
    spec = spec_for(lane, unique, max_deliver=5)
    handler = Effects(lane.schema, fail=2)
    envelope = await publish_thing(js, lane)
    async with running(DurableConsumer(pool, js, spec, handler)):
        await wait_for(lambda: _equals(applied(pool, lane.schema), [envelope.id]), what="the effect applied")
        await wait_for(lambda: settled(js, lane, spec.name), what="the message acked")
    assert handler.calls == 3  # two failures rolled back (effect and tracking row), one success
    assert await applied(pool, lane.schema) == [envelope.id]
    assert await tracked(pool, lane.schema, spec.name) == [envelope.id]


async def _equals(awaitable, expected) -> bool:
    return await awaitable == expected


async def dead_letters(nc, consumer: str):
    return await nc.subscribe(f"{DEAD_LETTER_PREFIX}.{consumer}")


async def assert_not_redelivered(js, lane, spec, handler, calls: int) -> None:
    """After longer than ack_wait and every back-off, the message was not delivered again."""
    await asyncio.sleep(spec.ack_wait + 0.5)
    assert handler.calls == calls
    info = await js.consumer_info(lane.stream, spec.name)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_a_poison_message_is_dead_lettered_with_its_reason_and_not_redelivered(
    pool, js, nc, lane, unique, effects_table
) -> None:
    spec = spec_for(lane, unique)
    handler = Effects(lane.schema, poison=True)
    dlq = await dead_letters(nc, spec.name)
    envelope = await publish_thing(js, lane, 7)
    async with running(DurableConsumer(pool, js, spec, handler)):
        letter = await dlq.next_msg(timeout=5)
        await assert_not_redelivered(js, lane, spec, handler, calls=1)
    assert letter.headers["Calmesh-Dead-Letter-Reason"] == "calendar of thing-7 does not exist"
    assert letter.headers["Calmesh-Original-Subject"] == lane.subject
    assert letter.data == encode_envelope(envelope)
    assert await applied(pool, lane.schema) == []  # the handler's writes were rolled back
    stored = await js.get_last_msg(DEAD_LETTER_STREAM, f"{DEAD_LETTER_PREFIX}.{spec.name}")
    assert stored.data == letter.data  # kept on the dead-letter stream


async def test_an_undecodable_payload_is_dead_lettered_without_calling_the_handler(
    pool, js, nc, lane, unique, effects_table
) -> None:
    spec = spec_for(lane, unique)
    handler = Effects(lane.schema)
    dlq = await dead_letters(nc, spec.name)
    await js.publish(lane.subject, b"{not an envelope")
    await js.publish(lane.subject, b'{"id": "x"}')  # valid JSON, not an envelope
    async with running(DurableConsumer(pool, js, spec, handler)):
        letters = [await dlq.next_msg(timeout=5) for _ in range(2)]
        await assert_not_redelivered(js, lane, spec, handler, calls=0)
    assert [m.data for m in letters] == [b"{not an envelope", b'{"id": "x"}']
    assert all(m.headers["Calmesh-Dead-Letter-Reason"].startswith("undecodable envelope") for m in letters)


async def test_too_many_failed_deliveries_dead_letter_the_message(pool, js, nc, lane, unique, effects_table) -> None:
    spec = spec_for(lane, unique, max_deliver=3)
    handler = Effects(lane.schema, always_fail=True)
    dlq = await dead_letters(nc, spec.name)
    await publish_thing(js, lane)
    async with running(DurableConsumer(pool, js, spec, handler)):
        letter = await dlq.next_msg(timeout=10)
        await assert_not_redelivered(js, lane, spec, handler, calls=3)
    reason = letter.headers["Calmesh-Dead-Letter-Reason"]
    assert reason.startswith("failed 3 times") and "provider unreachable" in reason
    assert await applied(pool, lane.schema) == []
