"""The dispatcher: domain events in, signed deliveries out, retries, replay.

Three loops share one process (and any number of processes share the work):

- **intake** — a durable JetStream consumer per context stream (`DurableConsumer`: exactly once,
  tracking row in the same transaction) turns each mapped domain event into a message (its signed
  body, built once) and one pending delivery per matching subscription, then NOTIFYs;
- **delivery** — leases due deliveries from PostgreSQL (``locked_until``), at most
  ``webhook_concurrency`` in flight and ``webhook_concurrency_per_subscription`` per subscription,
  so a slow or dead subscriber never delays another; posts each through the `GuardedClient`; writes
  the outcome (one attempt row each) and schedules the retry. A dispatcher killed mid-delivery
  leaves a lease that runs out: the next dispatcher sends again with the same webhook-id;
- **replay** — reads the domain streams from an instant with an ephemeral consumer and queues the
  matching events again for one subscription.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from calmesh_common.consumer import ConsumerSpec
from calmesh_common.events import Envelope, decode_envelope, decode_event
from calmesh_common.events.webhooks import WebhookDisabled
from calmesh_common.eventstore import EventStore
from calmesh_common.guarded import FetchError, GuardedClient
from calmesh_common.logging import get_logger
from calmesh_common.metrics import Metrics
from calmesh_common.settings import Settings
from calmesh_common.streams import stream_name

from . import store
from .consumers import BatchConsumer
from .mapping import EVENT_MAP, Mapping, message_body, subjects_by_context
from .domain import classify, retry_delay
from .signing import SecretBox, signature_header

log = get_logger(__name__)

USER_AGENT = "CalMesh-Webhooks/1.0 (+https://calmesh.xyz)"
RESPONSE_LIMIT = 1024 * 1024
#: Under a backlog, how long to let slots free up before the next claim.
CLAIM_COALESCE_SECONDS = 0.01


class Dispatcher:
    """Intake, delivery and replay for one schema. `start()` in the lifespan, `stop()` at the end."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        settings: Settings,
        *,
        schema: str,
        secrets: SecretBox,
        client: GuardedClient,
        event_store: EventStore,
        event_map: dict[str, Mapping] | None = None,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        #: Delivery attempts are counted here (the process's /metrics).
        self.metrics = metrics
        self.js = js
        self.settings = settings
        self.schema = schema
        self.secrets = secrets
        self.client = client
        self.events = event_store
        self.event_map = event_map if event_map is not None else EVENT_MAP
        self.rng = rng or random.Random()
        self.lease_seconds = settings.webhook_timeout_seconds * 2 + 1
        self.consumers: list[BatchConsumer] = []
        #: Claims and outcomes are written without waiting for the disk (synchronous_commit off):
        #: one lost in a database crash only means a delivery sent again with the same webhook-id.
        #: Intake (whose commit precedes the JetStream ack) and replays use the durable `pool`.
        self.fast_pool: asyncpg.Pool | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._inflight: Counter[str] = Counter()
        self._inflight_tasks: dict[int, asyncio.Task[None]] = {}
        self._results: asyncio.Queue[store.Finished] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._replay_wake = asyncio.Event()
        self._saturated = False
        self._next_due: float | None = None
        self._listener: asyncpg.Connection | None = None
        self._waiters: dict[int, asyncio.Future[store.Finished]] = {}

    # --- life cycle -----------------------------------------------------------------------------

    def consumer_name(self, context: str) -> str:
        return f"{self.schema}-{context}"

    async def start(self) -> None:
        """Listen for wake-ups, bind the durable consumers, start the loops."""
        self.fast_pool = await asyncpg.create_pool(
            self.settings.database_url,
            min_size=1,
            max_size=4,
            server_settings={"synchronous_commit": "off", "application_name": "calmesh-webhooks-delivery"},
        )
        self._listener = await self.pool.acquire()
        await self._listener.add_listener(store.wake_channel(self.schema), self._on_notify)
        for context, subjects in subjects_by_context(self.event_map).items():
            spec = ConsumerSpec(
                name=self.consumer_name(context),
                stream=stream_name(context),
                filter_subjects=subjects,
                schema=self.schema,
                batch=128,
            )
            await self._align_consumer(spec)
            consumer = BatchConsumer(self.pool, self.js, spec, self.intake)
            await consumer.subscribe()
            self.consumers.append(consumer)
            self._tasks.append(asyncio.create_task(consumer.run(), name=f"webhooks-intake-{context}"))
        self._tasks.append(asyncio.create_task(self._delivery_loop(), name="webhooks-delivery"))
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="webhooks-results"))
        self._tasks.append(asyncio.create_task(self._replay_loop(), name="webhooks-replay"))

    async def stop(self) -> None:
        """Stop taking work; give in-flight deliveries a moment, write what finished, release the
        leases of the rest (they are sent again, with the same webhook-id)."""
        loops, self._tasks = self._tasks, []
        for task in loops:
            if task.get_name() != "webhooks-results":
                task.cancel()
        await asyncio.gather(*(t for t in loops if t.get_name() != "webhooks-results"), return_exceptions=True)
        # A pull subscription whose fetch was cancelled keeps undelivered status messages, and the
        # lifespan's nc.drain() would wait 30 s for them: unsubscribe first (DurableConsumer has no
        # close() of its own).
        for consumer in self.consumers:
            sub = getattr(consumer, "_sub", None)
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except (nats.errors.Error, nats.js.errors.Error) as exc:
                    log.warning("webhooks_unsubscribe_failed", consumer=consumer.spec.name, error=repr(exc))
        pending = list(self._inflight_tasks.values())
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        unfinished = [d for d, t in self._inflight_tasks.items() if not t.done()]
        for task in self._inflight_tasks.values():
            task.cancel()
        await asyncio.gather(*self._inflight_tasks.values(), return_exceptions=True)
        await self._flush_now()
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        try:
            async with self.pool.acquire() as conn:
                await store.release(conn, self.schema, unfinished)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("webhooks_release_failed", error=repr(exc))
        if self._listener is not None:
            try:
                await self._listener.remove_listener(store.wake_channel(self.schema), self._on_notify)
            finally:
                await self.pool.release(self._listener)
                self._listener = None
        if self.fast_pool is not None:
            await self.fast_pool.close()
            self.fast_pool = None

    async def _align_consumer(self, spec: ConsumerSpec) -> None:
        """Update an existing durable consumer whose filter no longer matches the mapping table."""
        try:
            info = await self.js.consumer_info(spec.stream, spec.name)
        except nats.js.errors.NotFoundError:
            return
        have = set(info.config.filter_subjects or ([info.config.filter_subject] if info.config.filter_subject else []))
        if have == set(spec.filter_subjects):
            return
        config = info.config
        config.filter_subject = spec.filter_subjects[0] if len(spec.filter_subjects) == 1 else None
        config.filter_subjects = list(spec.filter_subjects) if len(spec.filter_subjects) > 1 else None
        await self.js.add_consumer(spec.stream, config)
        log.info("webhooks_consumer_filter_updated", consumer=spec.name, subjects=list(spec.filter_subjects))

    def _delivery_pool(self) -> asyncpg.Pool:
        return self.fast_pool or self.pool

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()
        self._replay_wake.set()

    # --- intake ---------------------------------------------------------------------------------

    async def intake(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        """The consumer handler: queue a mapped domain event for its owner's subscriptions."""
        mapping = self.event_map.get(envelope.type)
        if mapping is None or not envelope.user_id:
            return
        items = [
            (p.id, p.type, message_body(p.type, envelope.occurred_at, p.data))
            for p in mapping.explode(decode_event(envelope), envelope)
        ]
        await store.enqueue_event(
            conn, self.schema, user_id=envelope.user_id, occurred_at=envelope.occurred_at, items=items
        )

    # --- delivery -------------------------------------------------------------------------------

    async def _delivery_loop(self) -> None:
        settings = self.settings
        while True:
            self._wake.clear()
            free = settings.webhook_concurrency - len(self._inflight_tasks)
            if free > 0:
                try:
                    async with self._delivery_pool().acquire() as conn:
                        claimed = await store.claim_due(
                            conn,
                            self.schema,
                            limit=min(free, 500),
                            per_subscription=settings.webhook_concurrency_per_subscription,
                            busy={k: v for k, v in self._inflight.items() if v},
                            lease_seconds=self.lease_seconds,
                        )
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("webhooks_claim_failed", error=repr(exc))
                    await asyncio.sleep(settings.webhook_poll_interval_seconds)
                    continue
                for item in claimed:
                    self._launch(item)
                # More may be due than we took (global or per-subscription cap): look again as
                # soon as a slot frees.
                self._saturated = len(claimed) == min(free, 500) or any(
                    self._inflight[c.subscription_id] >= settings.webhook_concurrency_per_subscription
                    for c in claimed
                )
                if len(claimed) == min(free, 500) and free > len(claimed):
                    continue
            else:
                self._saturated = True
            timeout = settings.webhook_poll_interval_seconds
            if self._next_due is not None:
                timeout = max(0.0, min(timeout, self._next_due - time.monotonic()))
                if self._next_due <= time.monotonic():
                    self._next_due = None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            if self._saturated:
                # Slots free one at a time as answers arrive: gather a few before claiming again,
                # as a claim's cost in the database grows with the number of due deliveries.
                await asyncio.sleep(CLAIM_COALESCE_SECONDS)

    def _launch(self, item: store.Claimed) -> None:
        self._inflight[item.subscription_id] += 1
        task = asyncio.create_task(self._deliver(item), name=f"webhooks-deliver-{item.delivery_id}")
        self._inflight_tasks[item.delivery_id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._inflight[item.subscription_id] -= 1
            if self._inflight[item.subscription_id] <= 0:
                del self._inflight[item.subscription_id]
            self._inflight_tasks.pop(item.delivery_id, None)
            if self._saturated:
                self._wake.set()

        task.add_done_callback(done)

    def signing_keys(self, item: store.Claimed, now: float) -> list[bytes]:
        keys = [self.secrets.key(item.secret)]
        if item.previous_secret is not None and item.previous_secret_until is not None:
            if item.previous_secret_until.timestamp() > now:
                keys.append(self.secrets.key(item.previous_secret))
        return keys

    async def _deliver(self, item: store.Claimed) -> None:
        """Send one attempt and queue its outcome."""
        started = time.perf_counter()
        status: int | None = None
        retry_after: str | None = None
        error: str | None = None
        try:
            now = time.time()
            timestamp = int(now)
            headers = {
                "content-type": "application/json",
                "webhook-id": item.event_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature_header(
                    self.signing_keys(item, now), item.event_id, timestamp, item.body
                ),
            }
            result = await self.client.fetch(
                item.url, method="POST", headers=headers, content=item.body, max_bytes=RESPONSE_LIMIT
            )
            status = result.status
            retry_after = result.headers.get("retry-after")
            if not 200 <= status < 300:
                error = f"the endpoint answered {status}"
        except FetchError as exc:
            error = str(exc)
            if error.startswith("more than"):  # the base client's words for a redirect
                error = "the endpoint answered with a redirect; redirects are not followed"
        except Exception as exc:  # noqa: BLE001 - recorded as a failed attempt and retried, never lost
            log.error("webhooks_attempt_error", delivery_id=item.delivery_id, error=repr(exc))
            error = f"internal error: {type(exc).__name__}"
        duration_ms = int((time.perf_counter() - started) * 1000)
        outcome = classify(status, retry_after)
        delay: float | None = None
        if outcome.succeeded or outcome.gone:
            final = True
        else:
            delay = retry_delay(
                item.attempt,
                self.settings.webhook_retry_schedule,
                jitter=self.settings.webhook_retry_jitter,
                retry_after=outcome.retry_after,
                max_retry_after=self.settings.webhook_max_retry_after_seconds,
                rng=self.rng,
            )
            final = delay is None
        if error and outcome.gone:
            error = "the endpoint answered 410 Gone: the subscription is disabled"
        if self.metrics is not None:
            label = "succeeded" if outcome.succeeded else "gone" if outcome.gone else "failed" if final else "retrying"
            self.metrics.webhook_attempted(label, time.perf_counter() - started)
        finished = store.Finished(
            delivery_id=item.delivery_id,
            attempt_id=item.attempt_id,
            subscription_id=item.subscription_id,
            succeeded=outcome.succeeded,
            final=final,
            response_status=status,
            duration_ms=duration_ms,
            error=error[:500] if error else None,
            next_delay=delay,
            gone=outcome.gone,
        )
        self._results.put_nowait(finished)

    async def _flush_loop(self) -> None:
        while True:
            first = await self._results.get()
            batch = [first]
            while len(batch) < 1000 and not self._results.empty():
                batch.append(self._results.get_nowait())
            while True:
                try:
                    await self._write(batch)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - kept and written again; leases cover a short outage
                    log.warning("webhooks_result_write_failed", error=repr(exc), count=len(batch))
                    await asyncio.sleep(1.0)

    async def _flush_now(self) -> None:
        batch: list[store.Finished] = []
        while not self._results.empty():
            batch.append(self._results.get_nowait())
        if batch:
            try:
                await self._write(batch)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("webhooks_result_write_failed", error=repr(exc), count=len(batch))

    async def _write(self, batch: list[store.Finished]) -> None:
        failing = list({r.subscription_id for r in batch if not r.succeeded})
        gone = list({r.subscription_id for r in batch if r.gone})
        async with self._delivery_pool().acquire() as conn, conn.transaction():
            await store.record_results(conn, self.schema, batch)
            disabled = []
            if failing:
                disabled = await store.disable_subscriptions(
                    conn,
                    self.schema,
                    gone=gone,
                    failing_for_seconds=self.settings.webhook_disable_after_seconds,
                    candidates=failing,
                )
            if disabled:
                # The owner's notice is an event: that commit waits for the disk.
                await conn.execute("SET LOCAL synchronous_commit TO on")
            for row in disabled:
                reason = row["disabled_reason"]
                detail = (
                    "The endpoint answered 410 Gone."
                    if reason == "gone"
                    else "Every delivery has failed for "
                    f"{self.settings.webhook_disable_after_seconds / 86400:g} days."
                )
                await self.events.append(
                    conn,
                    row["id"],
                    None,
                    [
                        WebhookDisabled(
                            webhook_id=row["id"],
                            user_id=row["user_id"],
                            url=row["url"],
                            reason=reason,
                            detail=detail,
                            failing_since=row["failing_since"],
                        )
                    ],
                    user_id=row["user_id"],
                )
                log.warning("webhook_disabled", webhook_id=row["id"], reason=reason)
        # Retries are due in the database now: make the delivery loop look when the first is.
        delays = [r.next_delay for r in batch if not r.final and r.next_delay is not None]
        if delays:
            due = time.monotonic() + min(delays)
            self._next_due = due if self._next_due is None else min(self._next_due, due)
            self._wake.set()
        for r in batch:
            waiter = self._waiters.pop(r.delivery_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(r)

    async def send_now(self, delivery_id: int) -> store.Finished | None:
        """Claim one pending delivery at once, send it, and return its written outcome
        (POST /webhooks/{id}/test). None when another dispatcher holds it."""
        async with self._delivery_pool().acquire() as conn:
            item = await store.claim_one(conn, self.schema, delivery_id, self.lease_seconds)
        if item is None:
            return None
        waiter: asyncio.Future[store.Finished] = asyncio.get_running_loop().create_future()
        self._waiters[delivery_id] = waiter
        self._inflight[item.subscription_id] += 1
        try:
            await self._deliver(item)
            return await asyncio.wait_for(waiter, self.settings.webhook_timeout_seconds + 10)
        finally:
            self._waiters.pop(delivery_id, None)
            self._inflight[item.subscription_id] -= 1
            if self._inflight[item.subscription_id] <= 0:
                del self._inflight[item.subscription_id]

    # --- replay ---------------------------------------------------------------------------------

    async def _replay_loop(self) -> None:
        while True:
            self._replay_wake.clear()
            try:
                async with self.pool.acquire() as conn:
                    replay = await store.claim_replay(conn, self.schema, 60.0)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("webhooks_replay_claim_failed", error=repr(exc))
                replay = None
            if replay is not None:
                await self._run_replay(replay)
                continue
            try:
                await asyncio.wait_for(self._replay_wake.wait(), max(self.settings.webhook_poll_interval_seconds, 1.0))
            except TimeoutError:
                pass

    async def _run_replay(self, replay: asyncpg.Record) -> None:
        replay_id = replay["id"]
        enqueued = 0
        try:
            async with self.pool.acquire() as conn:
                sub = await store.subscription_for_replay(conn, self.schema, replay["subscription_id"])
            if sub is not None:
                enqueued = await self.replay(sub["id"], sub["user_id"], list(sub["event_types"]), replay["since"], replay_id)
            async with self.pool.acquire() as conn:
                await store.finish_replay(conn, self.schema, replay_id, enqueued=enqueued)
            log.info("webhooks_replay_done", replay_id=replay_id, enqueued=enqueued)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded on the replay row, which is fit to retry
            log.error("webhooks_replay_failed", replay_id=replay_id, error=repr(exc))
            async with self.pool.acquire() as conn:
                await store.finish_replay(conn, self.schema, replay_id, enqueued=enqueued, error=repr(exc)[:500])

    async def replay(
        self, subscription_id: str, user_id: str, event_types: list[str], since: datetime, replay_id: str | None = None
    ) -> int:
        """Read every mapped stream from `since` with an ephemeral consumer and queue the events of
        `user_id` that the subscription wants, again, with their original ids. Returns how many."""
        wanted = set(event_types)
        enqueued = 0
        for context, subjects in subjects_by_context(self.event_map).items():
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=since.astimezone(UTC),
                ack_policy=AckPolicy.NONE,
                filter_subjects=list(subjects),
                inactive_threshold=60.0,
                mem_storage=True,
                num_replicas=1,
            )
            sub = await self.js.pull_subscribe("", stream=stream_name(context), config=config)
            consumer = config.name
            try:
                pending = (await sub.consumer_info()).num_pending
                while pending:
                    try:
                        msgs = await sub.fetch(256, timeout=2.0)
                    except (TimeoutError, nats.errors.TimeoutError, nats.js.errors.FetchTimeoutError):
                        break
                    rows: list[tuple[str, str | None, str, datetime, bytes]] = []
                    for msg in msgs:
                        try:
                            envelope = decode_envelope(msg.data)
                        except (msgspec.DecodeError, msgspec.ValidationError):
                            continue
                        mapping = self.event_map.get(envelope.type)
                        if mapping is None or envelope.user_id != user_id or envelope.occurred_at < since:
                            continue
                        if "*" not in wanted and not wanted.intersection(mapping.public_types):
                            continue
                        for public in mapping.explode(decode_event(envelope), envelope):
                            if "*" in wanted or public.type in wanted:
                                body = message_body(public.type, envelope.occurred_at, public.data)
                                rows.append((public.id, envelope.user_id, public.type, envelope.occurred_at, body))
                    if rows:
                        async with self.pool.acquire() as conn, conn.transaction():
                            await store.enqueue_for_subscription(conn, self.schema, subscription_id, rows)
                            enqueued += len(rows)
                            if replay_id:
                                await store.extend_replay(conn, self.schema, replay_id, 60.0, enqueued)
                    pending = msgs[-1].metadata.num_pending if msgs else 0
            finally:
                try:
                    await sub.unsubscribe()
                    if consumer:
                        await self.js.delete_consumer(stream_name(context), consumer)
                except (nats.errors.Error, nats.js.errors.Error):
                    pass  # ephemeral: it goes away by itself after inactive_threshold
        return enqueued
