"""Internal routes (docs/contracts.md): never forwarded by the gateway, each needs the internal
secret. The routes only; the work is `handlers/internal.py`'s."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter

from calmesh_common.idempotency import HEADER, request_hash, response
from calmesh_common.service import ServiceDeps, json_response

from .core import ctx_of
from .handlers import internal
from .schemas import AccessTokenRequest, InternalCalendar


class InternalController(Controller):
    path = "/internal"
    include_in_schema = False

    @get("/calendars/{slug:str}")
    async def calendar(self, slug: str, deps: ServiceDeps, user_id: str = Parameter(query="user_id")) -> InternalCalendar:
        return await internal.calendar(ctx_of(deps), user_id, slug)

    @get("/connections/{connection_id:str}")
    async def connection(self, connection_id: str, deps: ServiceDeps) -> Response[bytes]:
        """The connection with its decrypted credentials (CalDAV, iCloud, iCal), for sync workers."""
        return json_response(await internal.connection(ctx_of(deps), connection_id))

    @post("/connections/{connection_id:str}/access-token", status_code=200)
    async def token(self, connection_id: str, request: Request[Any, Any, Any], deps: ServiceDeps,
                    data: AccessTokenRequest | None = None) -> Response[bytes]:
        """A valid access token (refreshed when due or forced). With an Idempotency-Key a repeat (a
        retry whose answer was lost) gets the first answer: a forced refresh happens once."""
        force = bool(data and data.force_refresh)
        answer = await internal.token(ctx_of(deps), connection_id, force=force, key=request.headers.get(HEADER),
                                      fingerprint=request_hash(request.url.path, str(force)))
        return response(answer)


ROUTES = [InternalController]
