"""The sync schedule: every connection is synced every interval of its provider (spread by the
jitter), and push channels are renewed before they expire. One scheduler is active at a time
across all replicas: the one holding a PostgreSQL advisory lock on its own connection (the lock
goes with a dead process's connection, and another replica takes over)."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from calmesh_common.logging import get_logger

from . import push, store
from .core import Context, publish_job
from .domain import next_sync_at

log = get_logger(__name__)

LEADER_KEY = "calmesh-connections-scheduler"


async def tick(ctx: Context) -> int:
    """Queue a job for every due connection; returns how many."""
    queued = 0
    async with ctx.pool.acquire() as conn, conn.transaction():
        due = await store.due_connections(conn, 500)
        for row in due:
            try:
                await publish_job(ctx, row["id"], row["user_id"], "schedule")
            except Exception as exc:  # noqa: BLE001 - NATS away: the row stays due
                log.warning("schedule_publish_failed", connection_id=row["id"], error=repr(exc))
                continue
            await store.update_connection(conn, row["id"], next_sync_at=next_sync_at(ctx.settings, row["provider"]))
            queued += 1
        await store.prune_states(conn)
    return queued


async def run(ctx: Context) -> None:
    """Become the leader when possible, then tick every CALMESH_SYNC_SCHEDULER_TICK_SECONDS."""
    interval = ctx.settings.sync_scheduler_tick_seconds
    while True:
        leader: asyncpg.Connection | None = None
        try:
            leader = await ctx.pool.acquire()
            if not await store.try_lead(leader, LEADER_KEY):
                await ctx.pool.release(leader)
                leader = None
                await asyncio.sleep(interval)
                continue
            while True:
                await store.still_connected(leader)  # still connected, still the leader
                await tick(ctx)
                await push.renew_expiring(ctx)
                await asyncio.sleep(interval)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - database trouble: step down and try again
            log.warning("scheduler_error", error=repr(exc))
            await asyncio.sleep(interval)
        finally:
            if leader is not None:
                with contextlib.suppress(Exception):
                    await store.step_down(leader, LEADER_KEY)
                with contextlib.suppress(Exception):
                    await ctx.pool.release(leader)
