"""The sync worker: one durable pull consumer on the work-queue stream CALMESH_SYNC_JOBS, shared by
every worker process.

- A job is acked only after its sync committed (or failed for good); a worker killed mid-sync
  leaves its job unacked, and JetStream hands it to another worker after the ack wait. Running
  syncs send ``in_progress`` heartbeats so a long one is not handed out meanwhile.
- A connection is never synced by two workers at once: each sync holds a PostgreSQL advisory
  lock on the connection (session-level, on its own connection, so a killed worker's lock goes
  with its database connection). A job that finds the lock taken comes back a little later.
- Jobs coalesce: a job requested before a sync of that connection that has since started and
  finished is acked without syncing again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

from calmesh_common.events.connections import SYNC_JOB_SUBJECT_PREFIX, SYNC_JOBS_STREAM, SyncJob
from calmesh_common.events.sync import SyncCompleted, SyncFailed, SyncProgressed, SyncStarted
from calmesh_common.logging import get_logger
from calmesh_common.tracing import extract_context, tracer

from . import store
from .engine import ConnectionGone, SyncDeps, sync_connection
from calmesh_providers import AuthError, ExpansionLimitError, NotFoundError, ProviderError, RevokedError, SourceError, TransientError

log = get_logger(__name__)

CONSUMER_NAME = "sync-workers"
_job_decoder = msgspec.json.Decoder(SyncJob)


class JobOutcome:
    DONE = "done"
    SKIPPED = "skipped"
    BUSY = "busy"
    RETRY = "retry"
    FAILED = "failed"


async def append_lifecycle(deps: SyncDeps, stream_id: str, user_id: str, event: object) -> None:
    async with deps.pool.acquire() as conn, conn.transaction():
        await deps.store.append(conn, stream_id, None, [event], user_id=user_id)  # type: ignore[list-item]


def _classify(exc: BaseException) -> tuple[str, str, float | None]:
    """(kind, message, retry_after) of a failed sync."""
    if isinstance(exc, RevokedError):
        return "revoked", str(exc) or "the provider revoked access; reconnect the calendar", None
    if isinstance(exc, AuthError):
        return "auth", str(exc) or "the provider refused the credentials", None
    if isinstance(exc, ExpansionLimitError | SourceError):
        return "source", str(exc), None
    if isinstance(exc, TransientError):
        return "transient", str(exc), exc.retry_after
    if isinstance(exc, ProviderError):
        return "source", str(exc), None
    return "transient", "an internal error interrupted the sync; it will be retried", None


async def run_job(
    deps: SyncDeps,
    job: SyncJob,
    *,
    delivery: int = 1,
    heartbeat_msg: Msg | None = None,
) -> tuple[str, float | None]:
    """Run one sync job under the connection's lock; returns (outcome, retry delay)."""
    lock_conn: asyncpg.Connection = await deps.pool.acquire()
    heartbeat_task: asyncio.Task[None] | None = None
    try:
        got = await store.try_job_lock(lock_conn, job.connection_id)
        if not got:
            return JobOutcome.BUSY, 1.0 + random.random()
        try:
            if heartbeat_msg is not None:
                heartbeat_task = asyncio.create_task(_heartbeats(heartbeat_msg, deps.settings.sync_job_ack_wait_seconds))
            return await _run_locked(deps, job, delivery, lock_conn)
        finally:
            await store.release_job_lock(lock_conn, job.connection_id)
    finally:
        if heartbeat_task is not None:
            heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await heartbeat_task
        await deps.pool.release(lock_conn)


def job_slots(concurrency: int, pool_max: int) -> int:
    """How many jobs may run at once without starving the pool: each job holds one connection for
    its lock and takes a second for its writes, and the outbox relay keeps one. More jobs than the
    pool can carry would each hold a connection and wait for another for ever."""
    fits = max(1, (pool_max - 1) // 2)
    if concurrency > fits:
        log.warning("sync.concurrency_limited_by_pool", concurrency=concurrency, pool_max=pool_max, jobs=fits)
    return min(concurrency, fits)


async def _heartbeats(msg: Msg, ack_wait: float) -> None:
    while True:
        await asyncio.sleep(max(0.5, ack_wait / 3))
        with contextlib.suppress(Exception):
            await msg.in_progress()


async def _run_locked(deps: SyncDeps, job: SyncJob, delivery: int, conn: asyncpg.Connection) -> tuple[str, float | None]:
    if await store.connection_removed(conn, job.connection_id):
        return JobOutcome.SKIPPED, None
    if await store.finished_later(conn, job.connection_id, job.sync_id, job.requested_at):
        return JobOutcome.SKIPPED, None
    try:
        details = await deps.connections.connection(job.connection_id)
    except NotFoundError:
        return JobOutcome.SKIPPED, None
    except TransientError:
        return JobOutcome.RETRY, 5.0
    if details.status == "revoked" or (details.error_kind in ("auth", "revoked") and job.reason != "manual"):
        # An auth failure waits for the user (a manual sync, a new authorization).
        return JobOutcome.SKIPPED, None
    if details.status == "pending" and details.provider in ("google", "microsoft"):
        return JobOutcome.SKIPPED, None

    started = deps.now()
    run_id = await store.start_run(
        conn, sync_id=job.sync_id, connection_id=job.connection_id, worker_id=deps.worker_id, reason=job.reason,
        requested_at=job.requested_at, started_at=started,
    )
    stream = f"sync:{job.sync_id}"
    await append_lifecycle(
        deps, stream, details.user_id,
        SyncStarted(
            sync_id=job.sync_id, connection_id=job.connection_id, user_id=details.user_id, reason=job.reason,
            worker_id=deps.worker_id, started_at=started, calendars_total=len(details.calendars),
        ),
    )
    last_progress = 0.0

    async def progress(done: int, total: int, changed: int) -> None:
        nonlocal last_progress
        loop = asyncio.get_running_loop()
        if total > 1 and done < total and loop.time() - last_progress > 1.0:
            last_progress = loop.time()
            await append_lifecycle(
                deps, stream, details.user_id,
                SyncProgressed(
                    sync_id=job.sync_id, connection_id=job.connection_id, user_id=details.user_id,
                    calendars_done=done, calendars_total=total, events_changed=changed,
                ),
            )

    async def beat() -> None:
        return None

    clock = time.monotonic()
    try:
        result = await sync_connection(
            deps, details, job.sync_id, heartbeat=beat, progress=progress,
            only_ref=None if job.reason != "push" else job.calendar_ref,
            rediscover=job.reason != "push",
        )
    except ConnectionGone:
        await store.finish_run(conn, run_id, "removed", None)
        return JobOutcome.SKIPPED, None
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is reported on the connection
        kind, message, retry_after = _classify(exc)
        if deps.metrics is not None:
            deps.metrics.sync_finished(details.provider, "failed", time.monotonic() - clock, error_kind=kind)
        if kind == "transient" and not isinstance(exc, ProviderError):
            log.error("sync_crashed", connection_id=job.connection_id, sync_id=job.sync_id, error=repr(exc), exc_info=exc)
        else:
            log.info("sync_failed", connection_id=job.connection_id, sync_id=job.sync_id, kind=kind, error=message)
        retry = None
        if kind == "transient" and delivery < deps.settings.sync_job_max_deliver:
            retry = retry_after if retry_after is not None else min(300.0, 2.0 * 2 ** min(delivery, 7)) * (0.8 + 0.4 * random.random())
        await append_lifecycle(
            deps, stream, details.user_id,
            SyncFailed(
                sync_id=job.sync_id, connection_id=job.connection_id, user_id=details.user_id, failed_at=deps.now(),
                error=message, kind=kind,
                retry_at=deps.now() + timedelta(seconds=retry) if retry is not None else None,
            ),
        )
        await store.finish_run(conn, run_id, "failed", message)
        return (JobOutcome.RETRY, retry) if retry is not None else (JobOutcome.FAILED, None)
    await append_lifecycle(
        deps, stream, details.user_id,
        SyncCompleted(
            sync_id=job.sync_id, connection_id=job.connection_id, user_id=details.user_id, finished_at=deps.now(),
            created=result.created, updated=result.updated, deleted=result.deleted, not_modified=result.not_modified,
            calendars=result.calendars, warning=result.warning,
        ),
    )
    await store.finish_run(conn, run_id, "completed", None)
    if deps.metrics is not None:
        deps.metrics.sync_finished(details.provider, "completed", time.monotonic() - clock)
    return JobOutcome.DONE, None


class SyncWorker:
    """Pulls sync jobs and runs up to `sync_concurrency` of them at once."""

    def __init__(self, deps: SyncDeps, js: JetStreamContext) -> None:
        self.deps = deps
        self.js = js
        self._sub: JetStreamContext.PullSubscription | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False

    async def close(self) -> None:
        """Stop fetching and drop the subscription (a cancelled single-message fetch would
        otherwise keep ``nc.drain()`` waiting)."""
        self._closing = True
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def subscribe(self) -> None:
        settings = self.deps.settings
        config = ConsumerConfig(
            durable_name=CONSUMER_NAME,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.sync_job_ack_wait_seconds,
            max_deliver=settings.sync_job_max_deliver + 1,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=f"{SYNC_JOB_SUBJECT_PREFIX}.>",
            max_ack_pending=10_000,
        )
        self._sub = await self.js.pull_subscribe(
            f"{SYNC_JOB_SUBJECT_PREFIX}.>", durable=CONSUMER_NAME, stream=SYNC_JOBS_STREAM, config=config
        )

    async def run(self) -> None:
        if self._sub is None:
            await self.subscribe()
        assert self._sub is not None
        slots = asyncio.Semaphore(job_slots(self.deps.settings.sync_concurrency, self.deps.settings.db_pool_max))
        try:
            while not self._closing:
                await slots.acquire()
                try:
                    msgs = await self._sub.fetch(1, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError, nats.js.errors.FetchTimeoutError):
                    slots.release()
                    if _cancelling():
                        raise asyncio.CancelledError from None
                    continue
                except Exception as exc:  # noqa: BLE001 - NATS reconnecting: try again shortly
                    slots.release()
                    if _cancelling() or self._closing:  # nats-py turns a cancelled fetch into one of its errors
                        break
                    log.warning("sync_fetch_failed", error=repr(exc))
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self._handle(msg, slots))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
        finally:
            for task in list(self._running):
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _handle(self, msg: Msg, slots: asyncio.Semaphore) -> None:
        try:
            try:
                job = _job_decoder.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error("sync_job_undecodable", error=str(exc)[:200])
                await msg.term()
                return
            delivery = msg.metadata.num_delivered or 1
            # One span per job, continuing the trace of whoever asked for the sync (the job's
            # headers): the provider calls and queries of the sync are its children.
            token = otel_context.attach(extract_context(msg.headers))
            try:
                with tracer().start_as_current_span("sync job", kind=SpanKind.CONSUMER) as span:
                    span.set_attribute("calmesh.connection_id", job.connection_id)
                    span.set_attribute("calmesh.sync_reason", job.reason)
                    outcome, delay = await run_job(self.deps, job, delivery=delivery, heartbeat_msg=msg)
                    span.set_attribute("calmesh.sync_outcome", outcome)
            except Exception as exc:  # noqa: BLE001 - database or NATS trouble: retry the job
                log.error("sync_job_failed", connection_id=job.connection_id, error=repr(exc), exc_info=exc)
                await msg.nak(delay=min(60.0, 2.0 * delivery))
                return
            finally:
                otel_context.detach(token)
            if outcome == JobOutcome.BUSY:
                # Another worker is syncing this connection: come back after it, a bit later each
                # time (the running sync may not have seen what this job asks for).
                await msg.nak(delay=min(30.0, (delay or 1.0) * 1.6 ** min(delivery, 8)))
            elif outcome == JobOutcome.RETRY:
                await msg.nak(delay=delay)
            else:
                await msg.ack()
        finally:
            slots.release()


def _cancelling() -> bool:
    task = asyncio.current_task()
    return bool(task is not None and task.cancelling())


def job_for(connection_id: str, user_id: str, reason: str, sync_id: str) -> SyncJob:
    return SyncJob(sync_id=sync_id, connection_id=connection_id, user_id=user_id, reason=reason, requested_at=datetime.now(UTC))
