"""Connections: create one (OAuth, CalDAV, iCloud, iCal), sync it now, remove it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from calmesh_common.events.connections import (
    CalendarSourceRemoved,
    ConnectionCreated,
    ConnectionRemoved,
    ConnectionSyncRequested,
)
from calmesh_common.guarded import GuardedClient
from calmesh_common.ids import new_id
from calmesh_common.plans import enforce_limit
from calmesh_common.problems import Problem
from calmesh_common.service import Caller

from .. import discovery, oauth, push, store
from ..core import Context, append, calendar_view, conn_calendars, connection_out, page_of, publish_job, source_views
from ..domain import OAUTH, OAUTH_DISPLAY_NAMES, next_sync_at, sync_refusal
from ..schemas import CalDAVCreate, ConnectionOut, ConnectionPage, ICalCreate, ICloudCreate, OAuthStart, SyncAccepted, user_timezone
from .calendars import source_event


async def enforce_plan(conn: Any, ctx: Context, caller: Caller) -> None:
    """Plan limit on connections (402 plan_limit_reached)."""
    await enforce_limit(
        conn, schema="connections", user_id=caller.user_id, limit="connections", settings=ctx.settings,
        used=lambda c: store.count_connections(c, caller.user_id),
    )


async def list_page(ctx: Context, caller: Caller, limit: int, cursor: str | None) -> ConnectionPage:
    rows, next_cursor = await page_of(store.list_connections, ctx, caller.user_id, cursor, limit)
    return ConnectionPage(data=[connection_out(r) for r in rows], next_cursor=next_cursor)


async def get(ctx: Context, caller: Caller, connection_id: str) -> ConnectionOut:
    row = await store.get_connection(ctx.pool, connection_id, user_id=caller.user_id)
    if row is None:
        raise Problem(404, "not_found", "No such connection.")
    return connection_out(row)


async def request_sync(ctx: Context, row: Any, reason: str) -> str:
    """Queue a sync job for the connection `row` and record that it was asked for; its sync id."""
    sync_id = await publish_job(ctx, row["id"], row["user_id"], reason)
    async with ctx.pool.acquire() as conn, conn.transaction():
        await append(ctx, conn, f"connection:{row['id']}", [ConnectionSyncRequested(
            connection_id=row["id"], user_id=row["user_id"], sync_id=sync_id, reason=reason,
        )], row["user_id"])
    return sync_id


async def start_oauth(ctx: Context, provider: str, data: OAuthStart | None, caller: Caller) -> ConnectionOut:
    """A pending OAuth connection and its single-use state; answers it with its start page."""
    config = oauth.provider_config(ctx.settings, provider)
    oauth.require_configured(config)
    return_to = None
    if data is not None and data.redirect_uri:
        return_to = oauth.check_return_to(ctx.settings, data.redirect_uri)
    connection_id = new_id("conn")
    state, digest = oauth.new_state()
    verifier, _challenge = oauth.new_verifier()  # the start URL sends the challenge
    now = datetime.now(UTC)
    display = OAUTH_DISPLAY_NAMES[provider]
    async with ctx.pool.acquire() as conn, conn.transaction():
        await enforce_plan(conn, ctx, caller)
        row = await store.insert_connection(
            conn, id=connection_id, user_id=caller.user_id, provider=provider, display_name=display, status="pending",
            settings={}, calendars=[], user_timezone=user_timezone(caller.timezone),
        )
        await store.insert_state(
            conn, state_hash=digest, connection_id=connection_id, user_id=caller.user_id, provider=provider,
            code_verifier=ctx.vault.seal_text(verifier), return_to=return_to,
            expires_at=now + timedelta(seconds=ctx.settings.oauth_state_ttl_seconds),
        )
        await append(ctx, conn, f"connection:{connection_id}", [ConnectionCreated(
            connection_id=connection_id, user_id=caller.user_id, provider=provider, display_name=display,
            status="pending", calendars=[], created_at=row["created_at"],
        )], caller.user_id)
    return connection_out(row, authorization_url=oauth.start_url(ctx.settings, provider, state))


async def _create_credentialed(
    ctx: Context,
    caller: Caller,
    *,
    connection_id: str,
    provider: str,
    display_name: str,
    settings: dict[str, Any],
    secrets: dict[str, Any],
    calendars: list[dict[str, Any]],
) -> ConnectionOut:
    async with ctx.pool.acquire() as conn, conn.transaction():
        await enforce_plan(conn, ctx, caller)
        row = await store.insert_connection(
            conn, id=connection_id, user_id=caller.user_id, provider=provider, display_name=display_name,
            status="pending", settings=settings, credentials=ctx.vault.seal(secrets), calendars=calendars,
            user_timezone=user_timezone(caller.timezone), next_sync_at=next_sync_at(ctx.settings, provider),
        )
        await append(ctx, conn, f"connection:{connection_id}", [ConnectionCreated(
            connection_id=connection_id, user_id=caller.user_id, provider=provider, display_name=display_name,
            status="pending", calendars=conn_calendars(calendars), created_at=row["created_at"],
        )], caller.user_id)
    await request_sync(ctx, row, "created")
    return connection_out(row)


async def _create_caldav(
    ctx: Context, guarded: GuardedClient, caller: Caller, *, provider: str, url: str, username: str, password: str,
    display_name: str,
) -> ConnectionOut:
    """A CalDAV connection (iCloud is one): its calendars discovered with the credentials first."""
    connection_id = new_id("conn")
    calendars = await discovery.caldav_calendars(guarded, connection_id, url, username, password)
    return await _create_credentialed(
        ctx, caller, connection_id=connection_id, provider=provider, display_name=display_name,
        settings={"url": url, "username": username}, secrets={"password": password}, calendars=calendars,
    )


async def create_icloud(ctx: Context, guarded: GuardedClient, data: ICloudCreate, caller: Caller) -> ConnectionOut:
    return await _create_caldav(
        ctx, guarded, caller, provider="icloud", url=ctx.settings.icloud_caldav_url,
        username=data.username, password=data.app_password, display_name=data.username,
    )


async def create_caldav(ctx: Context, guarded: GuardedClient, data: CalDAVCreate, caller: Caller) -> ConnectionOut:
    url = discovery.check_url(data.url)
    host = urlsplit(url).hostname or url
    return await _create_caldav(
        ctx, guarded, caller, provider="caldav", url=url, username=data.username, password=data.password,
        display_name=f"{data.username}@{host}" if data.username else host,
    )


async def create_ical(ctx: Context, data: ICalCreate, caller: Caller) -> ConnectionOut:
    url = discovery.check_url(data.url)
    connection_id = new_id("conn")
    host = urlsplit(url).hostname or "iCal feed"
    # A feed URL often holds a secret token in its path: it is kept encrypted, like a password.
    return await _create_credentialed(
        ctx, caller, connection_id=connection_id, provider="ical", display_name=host,
        settings={"host": host}, secrets={"url": url}, calendars=discovery.ical_calendars(connection_id, url),
    )


async def sync_now(ctx: Context, connection_id: str, caller: Caller) -> SyncAccepted:
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await store.get_connection(conn, connection_id, user_id=caller.user_id, for_update=True)
        if row is None:
            raise Problem(404, "not_found", "No such connection.")
        refusal = sync_refusal(row["status"], row["provider"])
        if refusal is not None:
            raise refusal
        if caller.timezone and user_timezone(caller.timezone) != row["user_timezone"]:
            await store.update_connection(conn, connection_id, user_timezone=user_timezone(caller.timezone))
    return SyncAccepted(sync_id=await request_sync(ctx, row, "manual"))


async def remove(ctx: Context, connection_id: str, caller: Caller) -> None:
    """The connection goes, its sources leave every unified calendar (each change published with the
    calendar); then, best effort, its push channels are stopped and a grant given back."""
    now = datetime.now(UTC)
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await store.get_connection(conn, connection_id, user_id=caller.user_id, for_update=True)
        if row is None:
            raise Problem(404, "not_found", "No such connection.")
        for cal in await store.calendars_with_connection(conn, connection_id):
            sources = (await store.sources_of(conn, [cal["id"]]))[cal["id"]]
            gone = [s for s in sources if s["connection_id"] == connection_id]
            conns = await store.connections_of(conn, caller.user_id, [s["connection_id"] for s in sources])
            gone_views = {v.id: v for v in source_views(gone, conns)}
            for s in gone:
                await store.delete_source(conn, s["id"])
            await store.set_sort_orders(conn, [s["id"] for s in sources if s["connection_id"] != connection_id])
            cal = await store.touch_calendar(conn, cal["id"])
            _, full = await calendar_view(conn, cal)
            await append(ctx, conn, f"calendar:{cal['id']}", [
                CalendarSourceRemoved(calendar=full, source=source_event(gone_views[s["id"]]), reason="connection_removed")
                for s in gone
            ], caller.user_id)
        channels = await store.channels_of(conn, connection_id)
        await store.delete_channels_of(conn, connection_id)
        credentials = ctx.vault.open(row["credentials"]) if row["provider"] in OAUTH else {}
        await store.delete_connection(conn, connection_id)
        await append(ctx, conn, f"connection:{connection_id}", [ConnectionRemoved(
            connection_id=connection_id, user_id=caller.user_id, provider=row["provider"], at=now,
        )], caller.user_id)
    # Best effort, after the commit: stop push channels and give the grant back.
    await push.stop_channels(ctx, row, channels, credentials)
