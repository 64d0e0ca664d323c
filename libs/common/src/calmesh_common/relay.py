"""The outbox relay: publishes a service's committed events to JetStream, in order, once.

Each message carries ``Nats-Msg-Id`` = event id, so a relay that dies after publishing and before
marking its rows republishes them on restart and JetStream drops the duplicates. Rows are published
in batches with ``publish_async`` and marked published in the same transaction that holds a
per-schema advisory lock, so several replicas of a service never publish out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import asyncpg
import msgspec
from nats.js import JetStreamContext

from .logging import get_logger, is_database_outage, is_nats_outage, outage

log = get_logger(__name__)


def _stop_if_cancelled() -> None:
    """Raise CancelledError when the current task was asked to stop but a library swallowed it
    (asyncio.wait_for on Python 3.11 does when its awaitable finishes at the same moment)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@dataclass(eq=False)
class OutboxRelay:
    """Publishes `schema`.outbox to JetStream; `run()` until cancelled."""

    pool: asyncpg.Pool
    js: JetStreamContext
    schema: str
    _: KW_ONLY
    batch_size: int = 500
    poll_interval: float = 1.0
    publish_timeout: float = 10.0
    #: A test hook: runs after the batch is published and before its rows are marked.
    before_mark: Callable[[list[str]], Awaitable[None]] | None = None
    _lock_key: int = field(init=False, repr=False)
    _wake: asyncio.Event = field(init=False, repr=False, default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._lock_key = zlib.crc32(f"calmesh-relay:{self.schema}".encode())

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publish one batch of unpublished rows; returns how many were published."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._lock_key):
                return 0
            rows = await conn.fetch(
                f"SELECT position, event_id::text AS event_id, subject, payload, headers"
                f" FROM {self.schema}.outbox WHERE published_at IS NULL ORDER BY position LIMIT $1",
                self.batch_size,
            )
            if not rows:
                return 0
            futures = []
            for row in rows:
                headers = msgspec.json.decode(row["headers"]) if isinstance(row["headers"], str) else dict(row["headers"])
                headers["Nats-Msg-Id"] = row["event_id"]
                futures.append(await self.js.publish_async(row["subject"], bytes(row["payload"]), headers=headers))
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
            # arrives just as the acknowledgements do, and the relay would never stop.
            async with asyncio.timeout(self.publish_timeout):
                await asyncio.gather(*futures)
            ids = [r["event_id"] for r in rows]
            if self.before_mark is not None:
                await self.before_mark(ids)
            await conn.execute(
                f"UPDATE {self.schema}.outbox SET published_at = now() WHERE position = ANY($1::bigint[])",
                [r["position"] for r in rows],
            )
            return len(rows)

    async def _listen(self, listener: Any, channel: str) -> Any:
        """The LISTEN connection, (re)opened when it is gone (a database restart closes it);
        None while the database is away (the relay polls meanwhile)."""
        if listener is not None and not listener.is_closed():
            return listener
        if listener is not None:
            with contextlib.suppress(Exception):
                await self.pool.release(listener)
        try:
            listener = await self.pool.acquire()
            await listener.add_listener(channel, self._on_notify)
        except Exception as exc:  # noqa: BLE001 - the database is away: poll until it is back
            self._report(exc)
            return None
        return listener

    def _report(self, exc: BaseException) -> None:
        """One line per outage (the database, NATS), not one per try."""
        if is_database_outage(exc):
            outage("database").failed(exc)
        elif is_nats_outage(exc) or isinstance(exc, TimeoutError | asyncio.TimeoutError):
            outage("nats").failed(exc)
        else:
            outage(f"outbox_relay_{self.schema}").failed(exc)

    async def run(self) -> None:
        """Publish whenever the outbox is notified, and every `poll_interval` as a safety net.
        It rides out database and NATS restarts: it resumes with the first row not yet marked."""
        channel = f"{self.schema}_outbox"
        listener: Any = None
        try:
            while True:
                _stop_if_cancelled()
                listener = await self._listen(listener, channel)
                # Cleared before publishing, so a notice that comes in meanwhile is not lost.
                self._wake.clear()
                try:
                    while await self.publish_pending() == self.batch_size:
                        pass
                    if listener is not None:
                        outage("database").recovered()
                except Exception as exc:  # noqa: BLE001 - any failure is retried after a pause
                    # A passing failure (NATS down, database restart): reported once, tried again.
                    self._report(exc)
                    await asyncio.sleep(self.poll_interval)
                try:
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            if listener is not None:
                try:
                    if not listener.is_closed():
                        await listener.remove_listener(channel, self._on_notify)
                finally:
                    await self.pool.release(listener)
