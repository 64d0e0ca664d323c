"""Internal routes (docs/contracts.md): never forwarded by the gateway, each needs the internal
secret."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter

from calmesh_common.idempotency import HEADER, Answer, Keys, json_answer, request_hash, response
from calmesh_common.problems import Problem
from calmesh_common.service import ServiceDeps, json_response
from calmesh_common.timefmt import rfc3339_or_none

from . import store
from .core import access_token, calendar_view, calendars_of, ctx_of
from .schemas import AccessTokenRequest, InternalCalendar, InternalConnectionState


class InternalController(Controller):
    path = "/internal"
    include_in_schema = False

    @get("/calendars/{slug:str}")
    async def calendar(self, slug: str, deps: ServiceDeps, user_id: str = Parameter(query="user_id")) -> InternalCalendar:
        ctx = ctx_of(deps)
        row = await store.get_calendar(ctx.pool, user_id, slug)
        if row is None:
            raise Problem(404, "not_found", "No such calendar.")
        out, _ = await calendar_view(ctx.pool, row)
        conns = await store.connections_of(ctx.pool, user_id, sorted({s.connection_id for s in out.sources}))
        states = [InternalConnectionState(id=c["id"], status=c["status"], last_synced_at=rfc3339_or_none(c["last_synced_at"]))
                  for c in conns.values()]
        return InternalCalendar(slug=out.slug, name=out.name, timezone=out.timezone, user_id=user_id, sources=out.sources,
                                connections=states)

    @get("/connections/{connection_id:str}")
    async def connection(self, connection_id: str, deps: ServiceDeps) -> Response[bytes]:
        """The connection with its decrypted credentials (CalDAV, iCloud, iCal), for sync workers."""
        ctx = ctx_of(deps)
        row = await store.get_connection(ctx.pool, connection_id)
        if row is None:
            raise Problem(404, "not_found", "No such connection.")
        credentials: dict[str, Any] = {}
        if row["provider"] in ("caldav", "icloud", "ical"):
            credentials = ctx.vault.open(row["credentials"])
        body = {
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
        return json_response(body)

    @post("/connections/{connection_id:str}/access-token", status_code=200)
    async def token(self, connection_id: str, request: Request[Any, Any, Any], deps: ServiceDeps,
                    data: AccessTokenRequest | None = None) -> Response[bytes]:
        """A valid access token (refreshed when due or forced). With an Idempotency-Key a repeat (a
        retry whose answer was lost) gets the first answer: a forced refresh happens once."""
        ctx = ctx_of(deps)
        force = bool(data and data.force_refresh)

        async def work() -> Answer:
            token, expires = await access_token(ctx, connection_id, force_refresh=force)
            return json_answer(200, {"access_token": token, "expires_at": rfc3339_or_none(expires)})

        # The kept answer holds the token: it is sealed like the credentials.
        keys = Keys("connections", seal=lambda body: ctx.vault.seal_text(body.decode()),
                    unseal=lambda sealed: ctx.vault.open_text(sealed).encode())
        answer = await keys.run(ctx.pool, f"internal:{connection_id}", request.headers.get(HEADER),
                                request_hash(request.url.path, str(force)), work)
        return response(answer)


ROUTES = [InternalController]
