"""The sync service: sync workers plus the internal event-write routes.

Each process (the supervisor starts CALMESH_SYNC_WORKERS of them) pulls sync jobs from the shared
work queue, answers ``POST /internal/events`` and ``DELETE /internal/events/{id}``, purges the
events of removed connections (a durable consumer of ``connection.removed``), and relays its
outbox. ``calmesh-sync rebuild-projection [--check]`` rebuilds the projection from the stream.
"""

from __future__ import annotations

import sys
import warnings

import asyncpg
from litestar import Litestar

from calmesh_common.consumer import ConsumerSpec
from calmesh_common.events.connections import SYNC_JOBS_STREAM
from calmesh_common.metrics import ConsumerRef
from calmesh_common.events import Envelope, decode_event
from calmesh_common.events.connections import ConnectionRemoved
from calmesh_common.events.sync import ConnectionEventsPurged
from calmesh_common.eventstore import EventStore
from calmesh_common.logging import get_logger
from calmesh_common.service import ServiceDeps, create_service_app, run_service
from calmesh_common.settings import Settings
from calmesh_common.streams import stream_name
from calmesh_providers.http import guarded_client

from .connections_api import ConnectionsAPI
from .engine import SyncDeps
from .store import forget_connection, mark_connection_removed, purge_connection
from .worker import CONSUMER_NAME, SyncWorker
from .reservations import ROUTES as RESERVATION_ROUTES
from .writes import ROUTES

NAME = "sync"
SCHEMA = "sync"

log = get_logger(__name__)


def connection_removed_handler(store: EventStore):  # type: ignore[no-untyped-def]
    """Purge a removed connection's rows (and remember it, so a running sync writes no more)."""

    async def handle(conn: asyncpg.Connection, envelope: Envelope) -> None:
        event = decode_event(envelope)
        if not isinstance(event, ConnectionRemoved):
            return
        inserted = await mark_connection_removed(conn, event.connection_id, event.user_id)
        await purge_connection(conn, event.connection_id)
        await forget_connection(conn, event.connection_id)
        if inserted:
            await store.append(
                conn,
                f"connection:{event.connection_id}",
                None,
                [ConnectionEventsPurged(user_id=event.user_id, connection_id=event.connection_id)],
                user_id=event.user_id,
            )

    return handle


def create_app(settings: Settings, *, run_worker: bool = True) -> Litestar:
    quiet_parsers()
    store = EventStore(SCHEMA, context=NAME)

    async def start(deps: ServiceDeps) -> None:
        assert deps.pool is not None and deps.http is not None and deps.js is not None
        guarded = guarded_client(settings)
        sync = SyncDeps(
            settings=settings,
            pool=deps.pool,
            store=deps.store,
            guarded=guarded,
            http=deps.http,
            connections=ConnectionsAPI(deps.http, settings.service_url("connections"), settings.internal_secret),
            worker_id=settings.worker_id or settings.service_name,
            metrics=deps.metrics,
        )
        deps.extras["sync"] = sync
        deps.closing.append(guarded.aclose)
        if run_worker:
            import asyncio

            worker = SyncWorker(sync, deps.js)
            await worker.subscribe()
            deps.consumers.append(ConsumerRef(SYNC_JOBS_STREAM, CONSUMER_NAME))
            deps.extras["worker"] = worker
            deps.closing.append(worker.close)
            deps.tasks.append(asyncio.create_task(worker.run(), name="sync-worker"))

    removed = ConsumerSpec(
        name="sync-connection-removed",
        stream=stream_name("connections"),
        filter_subjects=("calmesh.connections.connection.removed",),
        schema=SCHEMA,
    )
    return create_service_app(
        settings,
        name=NAME,
        schema=SCHEMA,
        route_handlers=[*ROUTES, *RESERVATION_ROUTES],
        consumers=[(removed, connection_removed_handler(store))],
        on_startup=[start],
        title="CalMesh sync (internal)",
    )


def quiet_parsers() -> None:
    """icalendar warns about every odd TZID it guesses: one line per event is noise in our logs."""
    warnings.filterwarnings("ignore", module="icalendar")
    warnings.filterwarnings("ignore", module="recurring_ical_events")


def main() -> None:
    argv = sys.argv[1:]
    quiet_parsers()
    if argv and argv[0] == "rebuild-projection":
        from .rebuild import main as rebuild_main

        rebuild_main(argv[1:])
        return
    if argv and argv[0] not in ("serve",):
        print("usage: calmesh-sync [serve | rebuild-projection [--check]]", file=sys.stderr)
        raise SystemExit(2)
    run_service(NAME, create_app)


if __name__ == "__main__":
    main()
