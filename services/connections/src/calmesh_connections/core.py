"""What the connections handlers share: the context object, paging, rendering, sync jobs, access tokens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
from nats.js import JetStreamContext

from calmesh_common.cursors import AwareDatetime, decode_cursor, encode_cursor
from calmesh_common.events import Event
from calmesh_common.events.connections import (
    CalendarSource,
    ConnectionCalendar,
    ConnectionCredentialsRefreshed,
    ConnectionRevoked,
    SyncJob,
    UnifiedCalendar,
    sync_job_subject,
)
from calmesh_common.eventstore import EventStore
from calmesh_common.ids import new_id
from calmesh_common.logging import get_logger
from calmesh_common.problems import Problem
from calmesh_common.retryafter import retry_after
from calmesh_common.service import ServiceDeps
from calmesh_common.settings import Settings
from calmesh_common.timefmt import rfc3339, rfc3339_or_none
from calmesh_common.tracing import inject_headers
from calmesh_providers.api import TokenProvider

from . import oauth, store
from .crypto import Vault
from .domain import OAUTH
from .schemas import CalendarOut, ConnectionCalendarOut, ConnectionOut, SourceOut, SyncProgress

log = get_logger(__name__)


@dataclass
class Context:
    settings: Settings
    vault: Vault
    pool: asyncpg.Pool
    store: EventStore
    js: JetStreamContext
    http: httpx.AsyncClient


def ctx_of(deps: ServiceDeps) -> Context:
    ctx: Context = deps.extras["ctx"]
    return ctx


async def append(ctx: Context, conn: asyncpg.Connection, stream_id: str, events: list[Event], user_id: str) -> None:
    await ctx.store.append(conn, stream_id, None, events, user_id=user_id)


async def page_of(
    list_rows: Callable[[Any, str, tuple[datetime, str] | None, int], Awaitable[list[Any]]],
    ctx: Context, user_id: str, cursor: str | None, limit: int,
) -> tuple[list[Any], str | None]:
    """A page of the user's rows from the store's `list_rows`, and the cursor to the next page
    when there is more (one row more than the page is asked for, to know)."""
    after = decode_cursor(cursor, tuple[AwareDatetime, str]) if cursor else None
    rows = await list_rows(ctx.pool, user_id, after, limit + 1)
    page = rows[:limit]
    return page, (encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None)


# --- rendering -------------------------------------------------------------------------------


def calendars_of(row: Any) -> list[dict[str, Any]]:
    return list(store.as_dict(row["calendars"]) or [])


def conn_calendars(calendars: list[dict[str, Any]]) -> list[ConnectionCalendar]:
    """A connection's calendars as its events carry them."""
    return [ConnectionCalendar(id=c["id"], name=c.get("name") or "", color=c.get("color"), read_only=bool(c.get("read_only")))
            for c in calendars]


def connection_out(row: Any, *, authorization_url: str | None = None) -> ConnectionOut:
    sync = store.as_dict(row["sync"])
    progress = None
    if sync and row["status"] in ("syncing", "active"):
        started = sync.get("started_at")
        progress = SyncProgress(
            sync_id=sync.get("sync_id", ""),
            started_at=datetime.fromisoformat(started) if isinstance(started, str) else None,
            calendars_done=int(sync.get("calendars_done") or 0),
            calendars_total=int(sync.get("calendars_total") or 0),
            events_changed=int(sync.get("events_changed") or 0),
        )
    return ConnectionOut(
        id=row["id"],
        provider=row["provider"],
        display_name=row["display_name"],
        status=row["status"],
        last_synced_at=rfc3339_or_none(row["last_synced_at"]),
        last_error=row["last_error"],
        calendars=[
            ConnectionCalendarOut(id=c["id"], name=c.get("name") or "", color=c.get("color"), read_only=bool(c.get("read_only")))
            for c in calendars_of(row)
        ],
        progress=progress,
        created_at=rfc3339(row["created_at"]),
        authorization_url=authorization_url,
    )


def source_views(sources: list[Any], connections: dict[str, Any]) -> list[SourceOut]:
    """Sources in order, with the provider calendar's current name and read-only flag."""
    out = []
    for s in sources:
        conn = connections.get(s["connection_id"])
        cal = None
        if conn is not None:
            cal = next((c for c in calendars_of(conn) if c["id"] == s["provider_calendar_id"]), None)
        read_only = bool(cal.get("read_only")) if cal else (conn is not None and conn["provider"] == "ical")
        if conn is not None and conn["provider"] == "ical":
            read_only = True
        out.append(
            SourceOut(
                id=s["id"],
                connection_id=s["connection_id"],
                calendar_id=s["provider_calendar_id"],
                name=(cal.get("name") if cal else None) or s["name"],
                sort_order=s["sort_order"],
                read_only=read_only,
            )
        )
    return out


def calendar_out(row: Any, sources: list[SourceOut]) -> CalendarOut:
    default = next((s.id for s in sources if not s.read_only), None)
    return CalendarOut(
        slug=row["slug"],
        name=row["name"],
        timezone=row["timezone"],
        sources=sources,
        default_source_id=default,
        created_at=rfc3339(row["created_at"]),
        updated_at=rfc3339(row["updated_at"]),
    )


async def calendar_view(conn: asyncpg.Connection | asyncpg.Pool, row: Any) -> tuple[CalendarOut, UnifiedCalendar]:
    """The API view and the event payload of one unified calendar, as it is now."""
    sources = (await store.sources_of(conn, [row["id"]]))[row["id"]]
    conns = await store.connections_of(conn, row["user_id"], [s["connection_id"] for s in sources])
    views = source_views(sources, conns)
    full = UnifiedCalendar(
        id=row["id"],
        user_id=row["user_id"],
        slug=row["slug"],
        name=row["name"],
        timezone=row["timezone"],
        sources=[
            CalendarSource(id=v.id, connection_id=v.connection_id, calendar_id=v.calendar_id, name=v.name, sort_order=v.sort_order, read_only=v.read_only)
            for v in views
        ],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
    return calendar_out(row, views), full


# --- sync jobs -------------------------------------------------------------------------------


_job_encoder = msgspec.json.Encoder()


async def publish_job(ctx: Context, connection_id: str, user_id: str, reason: str, *, calendar_ref: str | None = None) -> str:
    """Put a sync job on the work queue; returns its sync id."""
    sync_id = new_id("sync")
    job = SyncJob(
        sync_id=sync_id, connection_id=connection_id, user_id=user_id, reason=reason,
        requested_at=datetime.now(UTC), calendar_ref=calendar_ref,
    )
    # The job carries the trace of the request (or scheduler tick) that asked for it.
    headers = inject_headers({"Nats-Msg-Id": sync_id})
    await ctx.js.publish(sync_job_subject(connection_id), _job_encoder.encode(job), headers=headers)
    return sync_id


# --- OAuth access tokens ---------------------------------------------------------------------


async def access_token(ctx: Context, connection_id: str, *, force_refresh: bool = False) -> tuple[str, datetime | None]:
    """A valid access token for an OAuth connection, refreshed first when it expires within five
    minutes (or when forced). Raises Problem 401 ``revoked`` when the grant is gone."""
    revoked_now: tuple[str, str] | None = None
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await store.get_connection(conn, connection_id, for_update=True)
        if row is None:
            raise Problem(404, "not_found", "No such connection.")
        if row["provider"] not in OAUTH:
            raise Problem(409, "not_oauth", "This connection does not use OAuth tokens.")
        if row["status"] == "revoked":
            raise Problem(401, "revoked", row["last_error"] or "Access was revoked; reconnect the calendar.")
        creds = ctx.vault.open(row["credentials"])
        token = creds.get("access_token")
        if not token:
            raise Problem(409, "not_authorized", "The connection has not completed its authorization yet.")
        expires = row["token_expires_at"]
        now = datetime.now(UTC)
        if not force_refresh and (expires is None or expires > now + timedelta(minutes=5)):
            return token, expires
        refresh_token = creds.get("refresh_token")
        if not refresh_token:
            if expires is not None and expires > now and not force_refresh:
                return token, expires
            raise Problem(401, "revoked", "The provider gave no refresh token; reconnect the calendar.")
        config = oauth.provider_config(ctx.settings, row["provider"])
        try:
            tokens = await oauth.refresh(ctx.http, config, refresh_token)
        except oauth.GrantRevoked as exc:
            message = f"{config.name} no longer grants access ({exc}); reconnect the calendar"
            await store.update_connection(
                conn, connection_id, status="revoked", error_kind="revoked", last_error=message, sync=None, next_sync_at=None
            )
            await append(
                ctx, conn, f"connection:{connection_id}",
                [ConnectionRevoked(connection_id=connection_id, user_id=row["user_id"], provider=row["provider"], at=now)],
                row["user_id"],
            )
            revoked_now = ("revoked", message)
        except oauth.TokenEndpointError as exc:
            raise Problem(503, "provider_unavailable", str(exc), headers=retry_after(10)) from None
        else:
            await store.update_connection(
                conn, connection_id,
                credentials=ctx.vault.seal(tokens.as_credentials(refresh_token)),
                token_expires_at=tokens.expires_at,
            )
            await append(
                ctx, conn, f"connection:{connection_id}",
                [ConnectionCredentialsRefreshed(connection_id=connection_id, user_id=row["user_id"], expires_at=tokens.expires_at)],
                row["user_id"],
            )
            return tokens.access_token, tokens.expires_at
    # Committed: the revocation stands even though this call fails.
    assert revoked_now is not None
    raise Problem(401, revoked_now[0], revoked_now[1])


def token_provider(ctx: Context, connection_id: str) -> TokenProvider:
    """For the provider clients: a function (force) -> access token."""

    async def provide(force: bool) -> str:
        token, _ = await access_token(ctx, connection_id, force_refresh=force)
        return token

    return provide
