"""``calmesh-sync rebuild-projection [--check]``: rebuild ``sync.event_instances`` from the
JetStream stream CALMESH_SYNC alone.

The projection events (``source_events.*``, ``source_calendar.purged``,
``connection_events.purged``) are replayed in stream order into a scratch table with the same
write functions a sync uses. ``--check`` compares the result with the live table and changes
nothing; without it, the live table is replaced in one transaction that holds the table's lock
(writers wait), after the sync outbox has been published in full.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

import asyncpg
import nats
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from calmesh_common.events import decode_envelope, subject_for
from calmesh_common.events.sync import PROJECTION_EVENT_TYPES
from calmesh_common.settings import Settings
from calmesh_common.streams import stream_name

from . import store
from .projection import apply_event, decode_projection_event
from .store import SCRATCH

@dataclass
class RebuildReport:
    events: int
    live_rows: int
    rebuilt_rows: int
    missing: int  # live rows the rebuild lacks
    extra: int  # rebuilt rows the live table lacks (or that differ)
    replaced: bool

    @property
    def identical(self) -> bool:
        return self.missing == 0 and self.extra == 0 and self.live_rows == self.rebuilt_rows


async def wait_outbox_drained(conn: asyncpg.Connection, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await store.unpublished_outbox(conn):
        if loop.time() > deadline:
            raise RuntimeError("the sync outbox did not drain; is a sync service (its outbox relay) running?")
        await asyncio.sleep(0.1)


async def replay(js: JetStreamContext, conn: asyncpg.Connection) -> int:
    """Replay every projection event of the stream into the scratch table; returns how many."""
    stream = stream_name("sync")
    subjects = [subject_for(t, "sync") for t in PROJECTION_EVENT_TYPES]
    info = await js.stream_info(stream)
    last = info.state.last_seq
    if last == 0:
        return 0
    sub = await js.pull_subscribe(
        subjects[0],
        stream=stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            filter_subjects=subjects,
            inactive_threshold=60.0,
        ),
    )
    applied = 0
    try:
        while True:
            try:
                msgs = await sub.fetch(500, timeout=2.0)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            done = False
            for msg in msgs:
                envelope = decode_envelope(msg.data)
                event = decode_projection_event(envelope)
                if event is not None and await apply_event(conn, event, table=SCRATCH):
                    applied += 1
                if msg.metadata.sequence.stream >= last or msg.metadata.num_pending == 0:
                    done = True
            if done:
                break
    finally:
        await sub.unsubscribe()
    return applied


async def rebuild_projection(settings: Settings, *, check: bool) -> RebuildReport:
    conn = await asyncpg.connect(settings.database_url)
    nc = await nats.connect(settings.nats_url)
    try:
        js = nc.jetstream()
        async with conn.transaction():
            if not check:
                await store.lock_projection(conn)  # writers wait until the swap is done; reads go on
            await wait_outbox_drained(conn)
            await store.create_scratch(conn)
            events = await replay(js, conn)
            live, rebuilt, missing, extra = await store.compare_scratch(conn)
            if not check:
                await store.replace_with_scratch(conn)
            await store.drop_scratch(conn)
        return RebuildReport(events, live, rebuilt, missing, extra, replaced=not check)
    finally:
        await nc.drain()
        await conn.close()


def main(argv: list[str]) -> None:
    check = "--check" in argv
    settings = Settings.from_env(service_name="sync")
    settings.require("database_url")
    report = asyncio.run(rebuild_projection(settings, check=check))
    verb = "would give" if check else "gave"
    print(
        f"replayed {report.events} projection events; the rebuild {verb} {report.rebuilt_rows} rows "
        f"(live: {report.live_rows}; live rows missing from it: {report.missing}; new or different: {report.extra})"
    )
    if check and not report.identical:
        sys.exit(1)
