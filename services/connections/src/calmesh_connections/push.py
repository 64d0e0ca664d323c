"""Push notifications: Google watch channels and Microsoft Graph subscriptions.

A notice names a channel (Google: ``X-Goog-Channel-ID`` with its token; Graph: the subscription id
with its ``clientState``); a notice whose secret matches becomes an incremental sync job of that
connection. Channels are renewed before they expire (by the scheduler's leader); the schedule
stays the safety net for a notice that never comes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from litestar import Request, Response

from calmesh_common.ids import new_id
from calmesh_common.logging import get_logger
from calmesh_common.problems import Problem
from calmesh_common.service import ServiceDeps
from calmesh_common.timefmt import parse_instant
from calmesh_providers import ProviderError
from calmesh_providers.google import GoogleClient
from calmesh_providers.graph import GraphClient

from . import store
from .core import Context, calendars_of, publish_job, token_provider

log = get_logger(__name__)

GOOGLE_TTL = timedelta(days=7)
GRAPH_TTL = timedelta(minutes=4200)  # Graph allows 4230 minutes for events


def enabled(ctx: Context) -> bool:
    mode = ctx.settings.push_notifications
    return mode == "on" or (mode == "auto" and ctx.settings.public_base_url.startswith("https://"))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _matches(secret: str | None, digest: str) -> bool:
    return bool(secret) and hmac.compare_digest(_digest(secret or ""), digest)


def notification_url(ctx: Context, provider: str) -> str:
    return f"{ctx.settings.public_base_url}/api/v1/connections/{provider}/notifications"


def schedule_setup(ctx: Context, deps: ServiceDeps, connection_id: str) -> None:
    """Open channels for a newly authorized connection, in the background."""
    if not enabled(ctx):
        return
    task = asyncio.create_task(setup_channels(ctx, connection_id), name=f"push-setup-{connection_id}")
    deps.tasks.append(task)
    task.add_done_callback(lambda t: deps.tasks.remove(t) if t in deps.tasks else None)


async def setup_channels(ctx: Context, connection_id: str) -> int:
    """A channel for every calendar of the connection that has none; returns how many opened."""
    row = await store.get_connection(ctx.pool, connection_id)
    if row is None or row["provider"] not in ("google", "microsoft"):
        return 0
    have = {c["calendar_ref"] for c in await store.channels_of(ctx.pool, connection_id)}
    opened = 0
    for calendar in calendars_of(row):
        if calendar["ref"] in have:
            continue
        try:
            await open_channel(ctx, row, calendar["ref"])
            opened += 1
        except ProviderError as exc:
            log.warning("push_channel_failed", connection_id=connection_id, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - push is an optimisation; the schedule remains
            log.warning("push_channel_failed", connection_id=connection_id, error=repr(exc))
    return opened


async def open_channel(ctx: Context, row: Any, calendar_ref: str) -> None:
    secret = secrets.token_urlsafe(24)
    now = datetime.now(UTC)
    if row["provider"] == "google":
        google = GoogleClient(ctx.http, ctx.settings.google_api_url, token_provider(ctx, row["id"]))
        channel_id = str(uuid.uuid4())
        answer = await google.watch(calendar_ref, channel_id, notification_url(ctx, "google"), secret, int(GOOGLE_TTL.total_seconds()))
        expiration = answer.get("expiration")
        expires = datetime.fromtimestamp(int(expiration) / 1000, UTC) if expiration else now + GOOGLE_TTL
        resource_id = answer.get("resourceId")
    else:
        graph = GraphClient(ctx.http, ctx.settings.microsoft_graph_url, token_provider(ctx, row["id"]))
        answer = await graph.subscribe(
            f"me/calendars/{calendar_ref}/events", notification_url(ctx, "microsoft"), secret, now + GRAPH_TTL
        )
        channel_id = answer["id"]
        resource_id = answer.get("resource")
        expires_text = answer.get("expirationDateTime")
        expires = parse_instant(expires_text, default_tz=UTC) if expires_text else now + GRAPH_TTL
    await store.insert_channel(
        ctx.pool, channel_row_id=new_id("push"), connection_id=row["id"], provider=row["provider"],
        calendar_ref=calendar_ref, channel_id=channel_id, resource_id=resource_id, secret_hash=_digest(secret), expires_at=expires,
    )


async def renew_expiring(ctx: Context) -> int:
    """Renew the channels that expire within CALMESH_PUSH_RENEW_BEFORE_SECONDS."""
    if not enabled(ctx):
        return 0
    soon = datetime.now(UTC) + timedelta(seconds=ctx.settings.push_renew_before_seconds)
    renewed = 0
    for channel in await store.expiring_channels(ctx.pool, soon):
        row = await store.get_connection(ctx.pool, channel["connection_id"])
        if row is None or row["status"] == "revoked":
            await store.delete_channel(ctx.pool, channel["id"])
            continue
        try:
            if channel["provider"] == "microsoft":
                graph = GraphClient(ctx.http, ctx.settings.microsoft_graph_url, token_provider(ctx, row["id"]))
                answer = await graph.renew(channel["channel_id"], datetime.now(UTC) + GRAPH_TTL)
                text = answer.get("expirationDateTime")
                expires = parse_instant(text, default_tz=UTC) if text else datetime.now(UTC) + GRAPH_TTL
                await store.set_channel_expiry(ctx.pool, channel["id"], expires)
            else:
                # Google channels cannot be extended: open a new one, then stop the old one.
                await open_channel(ctx, row, channel["calendar_ref"])
                await store.delete_channel(ctx.pool, channel["id"])
                google = GoogleClient(ctx.http, ctx.settings.google_api_url, token_provider(ctx, row["id"]))
                if channel["resource_id"]:
                    await google.stop_channel(channel["channel_id"], channel["resource_id"])
            renewed += 1
        except Exception as exc:  # noqa: BLE001 - try again on the next round
            log.warning("push_renew_failed", channel=channel["id"], error=repr(exc))
    return renewed


async def stop_channels(ctx: Context, row: Any, channels: list[Any], credentials: dict[str, Any]) -> None:
    """After a connection was deleted: stop its channels and revoke a Google grant (best effort)."""
    token = credentials.get("access_token")
    if not isinstance(token, str) or not token:
        return

    async def fixed(_force: bool) -> str:
        return token

    for channel in channels:
        try:
            if channel["provider"] == "google" and channel["resource_id"]:
                await GoogleClient(ctx.http, ctx.settings.google_api_url, fixed, attempts=1).stop_channel(channel["channel_id"], channel["resource_id"])
            elif channel["provider"] == "microsoft":
                await GraphClient(ctx.http, ctx.settings.microsoft_graph_url, fixed, attempts=1).unsubscribe(channel["channel_id"])
        except Exception as exc:  # noqa: BLE001 - best effort
            log.info("push_stop_failed", channel=channel["id"], error=repr(exc))
    if row["provider"] == "google" and ctx.settings.google_revoke_url:
        try:
            await ctx.http.post(ctx.settings.google_revoke_url, data={"token": credentials.get("refresh_token") or token}, timeout=5)
        except Exception as exc:  # noqa: BLE001 - best effort
            log.info("google_revoke_failed", error=repr(exc))


# --- incoming notices ----------------------------------------------------------------------


async def google_notification(ctx: Context, request: Request[Any, Any, Any]) -> Response[bytes]:
    channel_id = request.headers.get("x-goog-channel-id", "")
    token = request.headers.get("x-goog-channel-token")
    state = request.headers.get("x-goog-resource-state", "")
    channel = await store.channel_by_channel_id(ctx.pool, channel_id) if channel_id else None
    if channel is None or channel["provider"] != "google" or not _matches(token, channel["secret_hash"]):
        raise Problem(404, "not_found", "No such channel.")
    if state != "sync":  # "sync" only confirms the channel
        row = await store.get_connection(ctx.pool, channel["connection_id"])
        if row is not None and row["status"] != "revoked":
            await publish_job(ctx, row["id"], row["user_id"], "push", calendar_ref=channel["calendar_ref"])
    return Response(b"", status_code=200)


class _GraphNotice(msgspec.Struct, kw_only=True):
    subscriptionId: str = ""  # noqa: N815 - Graph's field name
    clientState: str | None = None  # noqa: N815
    changeType: str | None = None  # noqa: N815
    lifecycleEvent: str | None = None  # noqa: N815


class _GraphNotices(msgspec.Struct, kw_only=True):
    value: list[_GraphNotice] = msgspec.field(default_factory=list)


async def graph_notification(ctx: Context, request: Request[Any, Any, Any]) -> Response[Any]:
    token = request.query_params.get("validationToken")
    if token is not None:
        # The subscription handshake: echo the token as text/plain within ten seconds.
        return Response(token, media_type="text/plain", status_code=200)
    try:
        notices = msgspec.json.decode(await request.body(), type=_GraphNotices)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise Problem(400, "validation_error", "Not a Microsoft Graph notification.") from None
    queued: set[str] = set()
    for notice in notices.value:
        channel = await store.channel_by_channel_id(ctx.pool, notice.subscriptionId)
        if channel is None or channel["provider"] != "microsoft" or not _matches(notice.clientState, channel["secret_hash"]):
            continue  # a forged or stale notice changes nothing
        if notice.lifecycleEvent or channel["connection_id"] in queued:
            continue
        row = await store.get_connection(ctx.pool, channel["connection_id"])
        if row is not None and row["status"] != "revoked":
            await publish_job(ctx, row["id"], row["user_id"], "push", calendar_ref=channel["calendar_ref"])
            queued.add(row["id"])
    return Response(b"", status_code=202)
