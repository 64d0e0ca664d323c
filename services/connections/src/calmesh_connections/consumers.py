"""A connection's status follows its syncs: a durable consumer of the sync context's run events
(``sync.started``, ``sync.progressed``, ``sync.completed``, ``sync.failed``)."""

from __future__ import annotations

from typing import Any

import asyncpg

from calmesh_common.consumer import ConsumerSpec, Handler
from calmesh_common.events import Envelope, decode_event
from calmesh_common.events.connections import (
    ConnectionCalendarsChanged,
    ConnectionErrored,
    ConnectionRevoked,
    ConnectionSynced,
)
from calmesh_common.events.sync import SyncCompleted, SyncFailed, SyncProgressed, SyncStarted
from calmesh_common.eventstore import EventStore
from calmesh_common.settings import Settings
from calmesh_common.streams import stream_name
from calmesh_common.timefmt import rfc3339_or_none

from . import store
from .core import calendars_of, conn_calendars
from .domain import next_sync_at

SPEC = ConsumerSpec(
    name="connections-sync-status",
    stream=stream_name("sync"),
    filter_subjects=("calmesh.sync.sync.>",),
    schema="connections",
)


def _calendars_changed(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> bool:
    def key(cals: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((c["id"], c.get("name"), c.get("color"), bool(c.get("read_only")), c.get("ref")) for c in cals)

    return key(old) != key(new)


def sync_status_handler(settings: Settings, events: EventStore) -> Handler:
    async def handle(conn: asyncpg.Connection, envelope: Envelope) -> None:
        event = decode_event(envelope)
        if not isinstance(event, SyncStarted | SyncProgressed | SyncCompleted | SyncFailed):
            return
        row = await store.get_connection(conn, event.connection_id, for_update=True)
        if row is None:
            return  # deleted meanwhile
        if isinstance(event, SyncStarted):
            # A connection that synced and is current stays active while a re-sync runs (its
            # answers stay complete; `progress` shows the run): syncing is the first sync, or the
            # one after an error.
            status = row["status"] if row["status"] in ("revoked", "active") else "syncing"
            await store.update_connection(conn, row["id"], status=status, sync={
                "sync_id": event.sync_id, "started_at": rfc3339_or_none(event.started_at),
                "calendars_done": 0, "calendars_total": event.calendars_total, "events_changed": 0,
            })
        elif isinstance(event, SyncProgressed):
            sync = store.as_dict(row["sync"]) or {}
            if sync.get("sync_id") == event.sync_id:
                sync.update(calendars_done=event.calendars_done, calendars_total=event.calendars_total, events_changed=event.events_changed)
                await store.update_connection(conn, row["id"], sync=sync)
        elif isinstance(event, SyncCompleted):
            values: dict[str, Any] = {
                "status": "revoked" if row["status"] == "revoked" else "active",
                "error_kind": None,
                "last_error": event.warning,
                "last_synced_at": event.finished_at,
                "sync": None,
                "next_sync_at": next_sync_at(settings, row["provider"], event.finished_at),
            }
            emitted: list[Any] = [ConnectionSynced(
                connection_id=row["id"], user_id=row["user_id"], sync_id=event.sync_id, synced_at=event.finished_at,
                created=event.created, updated=event.updated, deleted=event.deleted, not_modified=event.not_modified,
            )]
            if event.calendars is not None:
                new = [{"id": c.id, "name": c.name, "color": c.color, "read_only": c.read_only, "ref": c.ref} for c in event.calendars]
                if _calendars_changed(calendars_of(row), new):
                    values["calendars"] = new
                    emitted.append(ConnectionCalendarsChanged(connection_id=row["id"], user_id=row["user_id"], calendars=conn_calendars(new)))
            await store.update_connection(conn, row["id"], **values)
            await events.append(conn, f"connection:{row['id']}", None, emitted, user_id=row["user_id"])
        else:
            assert isinstance(event, SyncFailed)
            revoked = event.kind == "revoked"
            await store.update_connection(
                conn, row["id"],
                status="revoked" if revoked or row["status"] == "revoked" else "error",
                error_kind=event.kind, last_error=event.error, sync=None,
            )
            emitted = []
            if revoked and row["status"] != "revoked":
                emitted.append(ConnectionRevoked(connection_id=row["id"], user_id=row["user_id"], provider=row["provider"], at=event.failed_at))
            elif not revoked:
                emitted.append(ConnectionErrored(connection_id=row["id"], user_id=row["user_id"], error=event.error, kind=event.kind, at=event.failed_at))
            if emitted:
                await events.append(conn, f"connection:{row['id']}", None, emitted, user_id=row["user_id"])

    return handle


__all__ = ["SPEC", "sync_status_handler"]
