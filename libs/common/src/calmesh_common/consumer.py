"""A durable JetStream pull consumer whose effects happen exactly once.

For each message the handler runs inside a database transaction that also inserts a tracking row
``(consumer, event_id)`` into the service's ``processed_messages``; a message whose row exists was
applied already (the consumer died between commit and ack) and is only acked. Then:

- ``ack`` after commit;
- ``nak(delay)`` for a passing failure, with a growing delay;
- ``term`` for a poison message (`PoisonMessage`, an undecodable envelope, or too many
  deliveries), which is also published to the dead-letter subject ``calmesh.dlq.<consumer>``
  with the reason in the ``Calmesh-Dead-Letter-Reason`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import context as otel_context

from .events import Envelope, decode_envelope
from .logging import get_logger, is_database_outage, outage
from .relay import _stop_if_cancelled
from .streams import DEAD_LETTER_PREFIX
from .tracing import extract_context, tracer

log = get_logger(__name__)

Handler = Callable[[asyncpg.Connection, Envelope], Awaitable[None]]


class _DatabaseAway(Exception):
    """The handler failed because the database is away (raised from the database's error)."""


class PoisonMessage(Exception):
    """The message can never be applied; it goes to the dead-letter subject with this reason."""


@dataclass
class ConsumerSpec:
    """What a durable consumer reads and how it retries."""

    name: str
    stream: str
    filter_subjects: tuple[str, ...]
    schema: str
    max_deliver: int = 8
    ack_wait: float = 30.0
    batch: int = 64
    backoff: tuple[float, ...] = (0.5, 2.0, 5.0, 15.0, 60.0)
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL
    extra: dict[str, object] = field(default_factory=dict)
    #: False for handlers that call other services: the handler gets a connection outside any
    #: transaction (it opens short ones itself, and makes no HTTP call while one is open), and the
    #: tracking row is written after it succeeded. Its effects must then be idempotent (a crash
    #: between effect and tracking row repeats the handler), e.g. through Idempotency-Keys.
    transactional: bool = True


class DurableConsumer:
    """Runs `handler` for every message of a durable pull consumer, exactly once per event."""

    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext, spec: ConsumerSpec, handler: Handler) -> None:
        self.pool = pool
        self.js = js
        self.spec = spec
        self.handler = handler
        self._sub: JetStreamContext.PullSubscription | None = None
        # Test hook: called after the effect committed and before the ack.
        self.after_commit: Callable[[Envelope], Awaitable[None]] | None = None

    async def subscribe(self) -> None:
        spec = self.spec
        config = ConsumerConfig(
            durable_name=spec.name,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=spec.ack_wait,
            max_deliver=spec.max_deliver + 1,  # the last delivery is the one that dead-letters
            deliver_policy=spec.deliver_policy,
            filter_subjects=list(spec.filter_subjects) if len(spec.filter_subjects) > 1 else None,
            filter_subject=spec.filter_subjects[0] if len(spec.filter_subjects) == 1 else None,
        )
        await self._update_ack_wait(config)
        self._sub = await self.js.pull_subscribe(
            spec.filter_subjects[0] if len(spec.filter_subjects) == 1 else "",
            durable=spec.name,
            stream=spec.stream,
            config=config,
        )

    async def _update_ack_wait(self, config: ConsumerConfig) -> None:
        """A durable consumer made by an older release keeps its config: bring its ack_wait to
        the spec's (an editable field), so a shorter one takes effect on upgrade."""
        try:
            info = await self.js.consumer_info(self.spec.stream, self.spec.name)
        except nats.js.errors.NotFoundError:
            return
        except nats.errors.Error:
            return
        if info.config.ack_wait is not None and abs(info.config.ack_wait - self.spec.ack_wait) < 0.001:
            return
        try:
            await self.js.add_consumer(self.spec.stream, config)
        except nats.errors.Error as exc:
            log.warning("consumer_config_not_updated", consumer=self.spec.name, error=repr(exc))

    async def run(self) -> None:
        """Fetch and handle until cancelled."""
        if self._sub is None:
            await self.subscribe()
        assert self._sub is not None
        try:
            while True:
                _stop_if_cancelled()
                try:
                    msgs = await self._sub.fetch(self.spec.batch, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except nats.js.errors.FetchTimeoutError:
                    outage("nats").recovered()
                    continue
                except nats.errors.Error as exc:
                    # A cluster electing a new stream leader, or the connection moving to another
                    # server: the consumer outlives it and fetches again shortly (one log line
                    # for the outage, not one per attempt).
                    _stop_if_cancelled()
                    outage("nats").failed(exc)
                    await asyncio.sleep(0.5)
                    continue
                outage("nats").recovered()
                for msg in msgs:
                    await self.handle(msg)
        finally:
            # Drop the inbox: the answer to a fetch cut short would otherwise wait in it unread,
            # and `nc.drain()` at shutdown waits for it until its 30 s timeout.
            sub, self._sub = self._sub, None
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def handle(self, msg: Msg) -> str:
        """Apply one message; returns what was done: applied, duplicate, retry or dead-lettered."""
        try:
            envelope = decode_envelope(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._dead_letter(msg, f"undecodable envelope: {exc}")
            return "dead-lettered"
        token = otel_context.attach(extract_context(msg.headers))
        try:
            with tracer().start_as_current_span(f"consume {self.spec.name}") as span:
                span.set_attribute("calmesh.event_type", envelope.type)
                while True:
                    try:
                        outcome = await self._apply_alive(msg, envelope)
                    except _DatabaseAway as away:
                        outage("database").failed(away.__cause__)
                        with contextlib.suppress(nats.errors.Error):
                            await msg.in_progress()  # keep it: no redelivery elsewhere meanwhile
                        await asyncio.sleep(1.0)
                        continue
                    outage("database").recovered()
                    return outcome
        finally:
            otel_context.detach(token)

    async def _apply_alive(self, msg: Msg, envelope: Envelope) -> str:
        """`_apply`, telling JetStream the message is in progress every third of `ack_wait`
        while the handler runs: a short ack_wait then only bounds how long a message waits after
        its consumer died (a crashed process's messages come back after ack_wait, not later),
        however long a live handler takes."""
        beat = self.spec.ack_wait / 3

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(beat)
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()

        task = asyncio.create_task(heartbeat())
        try:
            return await self._apply(msg, envelope)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _apply(self, msg: Msg, envelope: Envelope) -> str:
        spec = self.spec
        try:
            if not spec.transactional:
                return await self._apply_outside_transaction(msg, envelope)
            async with self.pool.acquire() as conn, conn.transaction():
                inserted = await conn.fetchval(
                    f"INSERT INTO {spec.schema}.processed_messages (consumer, event_id) VALUES ($1, $2)"
                    " ON CONFLICT DO NOTHING RETURNING 1",
                    spec.name,
                    envelope.id,
                )
                if inserted is None:
                    outcome = "duplicate"
                else:
                    await self.handler(conn, envelope)
                    outcome = "applied"
        except PoisonMessage as exc:
            await self._dead_letter(msg, str(exc))
            return "dead-lettered"
        except Exception as exc:  # noqa: BLE001 - a handler failure is retried, then dead-lettered
            if is_database_outage(exc):
                # The database is away: not the message's fault. The caller holds the message
                # (in progress) and tries again, so an outage burns no deliveries.
                raise _DatabaseAway(exc) from exc
            delivered = msg.metadata.num_delivered
            if delivered >= spec.max_deliver:
                await self._dead_letter(msg, f"failed {delivered} times, last: {exc!r}")
                return "dead-lettered"
            delay = spec.backoff[min(delivered - 1, len(spec.backoff) - 1)]
            log.warning("consumer_retry", consumer=spec.name, event_id=envelope.id, attempt=delivered, error=repr(exc))
            await msg.nak(delay=delay)
            return "retry"
        if self.after_commit is not None:
            await self.after_commit(envelope)
        await msg.ack()
        return outcome

    async def _apply_outside_transaction(self, msg: Msg, envelope: Envelope) -> str:
        spec = self.spec
        async with self.pool.acquire() as conn:
            seen = await conn.fetchval(
                f"SELECT 1 FROM {spec.schema}.processed_messages WHERE consumer = $1 AND event_id = $2",
                spec.name, envelope.id,
            )
            if seen:
                outcome = "duplicate"
            else:
                await self.handler(conn, envelope)
                await conn.execute(
                    f"INSERT INTO {spec.schema}.processed_messages (consumer, event_id) VALUES ($1, $2)"
                    " ON CONFLICT DO NOTHING",
                    spec.name, envelope.id,
                )
                outcome = "applied"
        if self.after_commit is not None:
            await self.after_commit(envelope)
        await msg.ack()
        return outcome

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        headers = dict(msg.headers or {})
        headers.pop("Nats-Msg-Id", None)
        headers["Calmesh-Dead-Letter-Reason"] = reason[:1000]
        headers["Calmesh-Original-Subject"] = msg.subject
        await self.js.publish(f"{DEAD_LETTER_PREFIX}.{self.spec.name}", msg.data, headers=headers)
        log.error("consumer_dead_letter", consumer=self.spec.name, subject=msg.subject, reason=reason[:200])
        await msg.term()
