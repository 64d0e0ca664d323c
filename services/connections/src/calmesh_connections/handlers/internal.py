"""What the other services ask of connections over the internal API: a unified calendar with its
connections' states (availability, booking), a connection with its credentials and a valid access
token (the sync workers)."""

from __future__ import annotations

from typing import Any

from calmesh_common.idempotency import Answer, Keys, json_answer
from calmesh_common.problems import Problem
from calmesh_common.timefmt import rfc3339_or_none

from .. import store
from ..core import Context, access_token, calendar_view, calendars_of
from ..schemas import InternalCalendar, InternalConnectionState

#: The providers whose credentials the sync workers are given (OAuth ones ask for an access token).
CREDENTIALED = ("caldav", "icloud", "ical")


async def calendar(ctx: Context, user_id: str, slug: str) -> InternalCalendar:
    row = await store.get_calendar(ctx.pool, user_id, slug)
    if row is None:
        raise Problem(404, "not_found", "No such calendar.")
    out, _ = await calendar_view(ctx.pool, row)
    conns = await store.connections_of(ctx.pool, user_id, sorted({s.connection_id for s in out.sources}))
    states = [InternalConnectionState(id=c["id"], status=c["status"], last_synced_at=rfc3339_or_none(c["last_synced_at"]))
              for c in conns.values()]
    return InternalCalendar(slug=out.slug, name=out.name, timezone=out.timezone, user_id=user_id, sources=out.sources,
                            connections=states)


async def connection(ctx: Context, connection_id: str) -> dict[str, Any]:
    """The connection with its decrypted credentials (CalDAV, iCloud, iCal), as plain data."""
    row = await store.get_connection(ctx.pool, connection_id)
    if row is None:
        raise Problem(404, "not_found", "No such connection.")
    credentials: dict[str, Any] = {}
    if row["provider"] in CREDENTIALED:
        credentials = ctx.vault.open(row["credentials"])
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "provider": row["provider"],
        "display_name": row["display_name"],
        "status": row["status"],
        "error_kind": row["error_kind"],
        "last_synced_at": rfc3339_or_none(row["last_synced_at"]),
        "user_timezone": row["user_timezone"],
        "settings": store.as_dict(row["settings"]) or {},
        "credentials": credentials,
        "calendars": calendars_of(row),
    }


async def token(ctx: Context, connection_id: str, *, force: bool, key: str | None, fingerprint: str) -> Answer:
    """A valid access token (refreshed when due or forced). With an Idempotency-Key `key` a repeat
    (a retry whose answer was lost) gets the first answer: a forced refresh happens once."""

    async def work() -> Answer:
        value, expires = await access_token(ctx, connection_id, force_refresh=force)
        return json_answer(200, {"access_token": value, "expires_at": rfc3339_or_none(expires)})

    # The kept answer holds the token: it is sealed like the credentials.
    keys = Keys("connections", seal=lambda body: ctx.vault.seal_text(body.decode()),
                unseal=lambda sealed: ctx.vault.open_text(sealed).encode())
    return await keys.run(ctx.pool, f"internal:{connection_id}", key, fingerprint, work)
