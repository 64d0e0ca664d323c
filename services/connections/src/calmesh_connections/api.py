"""The public API of the connections service (docs/api-guide.md: Connections, Unified calendars): the
routes only. The gateway has authenticated the caller and enforced the route's scope; the handlers
(`handlers/`) hold every resource to its owner (another user's is a 404). The browser pages of the
OAuth flow are rendered here (HTML for a browser, JSON otherwise)."""

from __future__ import annotations

import html
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.params import Parameter
from litestar.response import Redirect

from calmesh_common.problems import PROBLEM_JSON, Problem, problem_bytes
from calmesh_common.service import Caller, ServiceDeps, json_response

from . import push
from .core import connection_out, ctx_of
from .handlers import authorization, calendars, connections
from .schemas import (
    CalDAVCreate,
    CalendarCreate,
    CalendarOut,
    CalendarPage,
    CalendarUpdate,
    ConnectionOut,
    ConnectionPage,
    ICalCreate,
    ICloudCreate,
    OAuthStart,
    SourceRef,
    SourcesReorder,
    SyncAccepted,
)

Limit = Annotated[int, Parameter(ge=1, le=200, description="Page size, 1..200")]
Cursor = Annotated[str | None, Parameter(description="Opaque cursor from next_cursor")]


class ConnectionsController(Controller):
    path = "/api/v1/connections"
    tags = ["connections"]

    @get("", summary="List all calendar connections for the authenticated user")
    async def list_connections(self, caller: Caller, deps: ServiceDeps, limit: Limit = 50, cursor: Cursor = None) -> ConnectionPage:
        return await connections.list_page(ctx_of(deps), caller, limit, cursor)

    @get("/{connection_id:str}", summary="Get connection details and status")
    async def get_connection(self, connection_id: str, caller: Caller, deps: ServiceDeps) -> ConnectionOut:
        return await connections.get(ctx_of(deps), caller, connection_id)

    # --- OAuth providers ---------------------------------------------------------------------

    @post("/google", summary="Initiate Google Calendar OAuth flow", status_code=201)
    async def start_google(self, caller: Caller, deps: ServiceDeps, data: OAuthStart | None = None) -> ConnectionOut:
        return await connections.start_oauth(ctx_of(deps), "google", data, caller)

    @post("/microsoft", summary="Initiate Microsoft Outlook/365 OAuth flow", status_code=201)
    async def start_microsoft(self, caller: Caller, deps: ServiceDeps, data: OAuthStart | None = None) -> ConnectionOut:
        return await connections.start_oauth(ctx_of(deps), "microsoft", data, caller)

    # --- credential providers ----------------------------------------------------------------

    @post("/icloud", summary="Connect Apple iCloud Calendar via CalDAV", status_code=201)
    async def create_icloud(self, data: ICloudCreate, caller: Caller, deps: ServiceDeps) -> ConnectionOut:
        return await connections.create_icloud(ctx_of(deps), deps.extras["guarded"], data, caller)

    @post("/caldav", summary="Connect any CalDAV server", status_code=201)
    async def create_caldav(self, data: CalDAVCreate, caller: Caller, deps: ServiceDeps) -> ConnectionOut:
        return await connections.create_caldav(ctx_of(deps), deps.extras["guarded"], data, caller)

    @post("/ical", summary="Subscribe to an iCal (.ics / webcal://) URL", status_code=201)
    async def create_ical(self, data: ICalCreate, caller: Caller, deps: ServiceDeps) -> ConnectionOut:
        return await connections.create_ical(ctx_of(deps), data, caller)

    # --- lifecycle ---------------------------------------------------------------------------

    @post("/{connection_id:str}/sync", summary="Trigger a manual sync for a connection", status_code=202)
    async def sync_now(self, connection_id: str, caller: Caller, deps: ServiceDeps) -> SyncAccepted:
        return await connections.sync_now(ctx_of(deps), connection_id, caller)

    @delete("/{connection_id:str}", summary="Disconnect a calendar (deletes connection and cached events)", status_code=204)
    async def remove(self, connection_id: str, caller: Caller, deps: ServiceDeps) -> None:
        await connections.remove(ctx_of(deps), connection_id, caller)

    # --- the browser's side of the OAuth flow -----------------------------------------------

    @get("/{provider:str}/authorize", summary="Open the provider's consent screen (binds this browser to the flow)",
         include_in_schema=True)
    async def authorize(
        self,
        request: Request[Any, Any, Any],
        provider: str,
        deps: ServiceDeps,
        optional_caller: Caller | None,
        oauth_state: Annotated[str | None, Parameter(query="state")] = None,
    ) -> Response[Any]:
        """The `authorization_url` of a pending connection. Only the signed-in user who created it
        may open it: this browser gets a short-lived HttpOnly cookie tied to the state, and is sent
        on to the provider. A link opened by anyone else binds nothing."""
        outcome = await authorization.authorize(ctx_of(deps), provider, oauth_state, optional_caller)
        if isinstance(outcome, authorization.Refused):
            return _browser_problem(request, outcome.problem)
        return Redirect(outcome.url, status_code=302, headers={"Set-Cookie": outcome.cookie, **_NO_STORE})

    # --- public callbacks --------------------------------------------------------------------

    @get("/{provider:str}/callback", summary="OAuth 2 redirect target (Google, Microsoft)", include_in_schema=True)
    async def callback(
        self,
        request: Request[Any, Any, Any],
        provider: str,
        deps: ServiceDeps,
        optional_caller: Caller | None,
        code: str | None = None,
        oauth_state: Annotated[str | None, Parameter(query="state")] = None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> Response[Any]:
        outcome = await authorization.callback(
            ctx_of(deps), deps, provider, optional_caller, request.cookies,
            code=code, oauth_state=oauth_state, error=error, error_description=error_description,
        )
        if isinstance(outcome, authorization.Refused):
            return _browser_problem(request, outcome.problem, clear_cookie=outcome.clear_cookie)
        return _callback_answer(request, outcome.return_to, outcome.row, outcome.failure, outcome.clear_cookie)

    @post("/google/notifications", summary="Google Calendar push notifications", status_code=200)
    async def google_notification(self, request: Request[Any, Any, Any], deps: ServiceDeps) -> Response[bytes]:
        return await push.google_notification(ctx_of(deps), request)

    @post("/microsoft/notifications", summary="Microsoft Graph change notifications", status_code=202)
    async def microsoft_notification(self, request: Request[Any, Any, Any], deps: ServiceDeps) -> Response[Any]:
        return await push.graph_notification(ctx_of(deps), request)


#: The start and callback answers carry the state and the code in their URLs: never cached, never
#: sent on as a Referer.
_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def _wants_html(request: Request[Any, Any, Any]) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _browser_problem(request: Request[Any, Any, Any], problem: Problem, *, clear_cookie: str | None = None) -> Response[Any]:
    """A problem on a page a browser navigates to: an HTML page for a browser, problem+json otherwise."""
    headers = {**_NO_STORE, **({"Set-Cookie": clear_cookie} if clear_cookie else {})}
    if _wants_html(request):
        title = "The calendar could not be connected"
        page = (f"<!doctype html><meta charset=utf-8><title>{title}</title><h1>{title}</h1>"
                f"<p>{html.escape(problem.detail)}</p>")
        return Response(page, media_type="text/html", status_code=problem.status, headers=headers)
    body = problem_bytes(problem)
    return Response(body, media_type=PROBLEM_JSON, status_code=problem.status, headers=headers)


def _callback_answer(request: Request[Any, Any, Any], return_to: str | None, row: Any, failure: str | None,
                     clear_cookie: str) -> Response[Any]:
    headers = {**_NO_STORE, "Set-Cookie": clear_cookie}
    if return_to:
        params = {"connection_id": row["id"], "status": "error" if failure else "connected"}
        if failure:
            params["error"] = failure
        separator = "&" if urlsplit(return_to).query else "?"
        return Redirect(f"{return_to}{separator}{urlencode(params)}", status_code=302, headers=headers)
    if _wants_html(request):
        title = "Calendar connected" if failure is None else "The calendar could not be connected"
        text = "You can close this window." if failure is None else html.escape(failure)
        page = f"<!doctype html><meta charset=utf-8><title>{title}</title><h1>{title}</h1><p>{text}</p>"
        return Response(page, media_type="text/html", status_code=200 if failure is None else 400, headers=headers)
    body = msgspec.to_builtins(connection_out(row))
    return json_response(body, status=200 if failure is None else 400, headers=headers)


# --- unified calendars -----------------------------------------------------------------------


class CalendarsController(Controller):
    path = "/api/v1/calendars"
    tags = ["calendars"]

    @post("", summary="Create a unified calendar", status_code=201)
    async def create(self, data: CalendarCreate, caller: Caller, deps: ServiceDeps) -> CalendarOut:
        return await calendars.create(ctx_of(deps), data, caller)

    @get("", summary="List all unified calendars")
    async def list_calendars(self, caller: Caller, deps: ServiceDeps, limit: Limit = 50, cursor: Cursor = None) -> CalendarPage:
        return await calendars.list_page(ctx_of(deps), caller, limit, cursor)

    @get("/{slug:str}", summary="Get unified calendar details")
    async def get_calendar(self, slug: str, caller: Caller, deps: ServiceDeps) -> CalendarOut:
        return await calendars.get(ctx_of(deps), caller, slug)

    @patch("/{slug:str}", summary="Update a unified calendar")
    async def update(self, slug: str, data: CalendarUpdate, caller: Caller, deps: ServiceDeps) -> CalendarOut:
        return await calendars.update(ctx_of(deps), slug, data, caller)

    @delete("/{slug:str}", summary="Delete a unified calendar", status_code=204)
    async def remove(self, slug: str, caller: Caller, deps: ServiceDeps) -> None:
        await calendars.delete(ctx_of(deps), slug, caller)

    @post("/{slug:str}/sources", summary="Add a connection to a unified calendar", status_code=201)
    async def add_source(self, slug: str, data: SourceRef, caller: Caller, deps: ServiceDeps) -> Response[bytes]:
        # One source is answered as itself; a whole connection's calendars as a list.
        return json_response(await calendars.add_source(ctx_of(deps), slug, data, caller), status=201)

    @put("/{slug:str}/sources/reorder", summary="Reorder sources within a unified calendar", status_code=200)
    async def reorder(self, slug: str, data: SourcesReorder, caller: Caller, deps: ServiceDeps) -> CalendarOut:
        return await calendars.reorder(ctx_of(deps), slug, data, caller)

    @delete("/{slug:str}/sources/{source_id:str}", summary="Remove a source from a unified calendar", status_code=204)
    async def remove_source(self, slug: str, source_id: str, caller: Caller, deps: ServiceDeps) -> None:
        """The last writable source of a calendar that a booking page uses cannot be removed: 409
        `last_writable_source`, naming the pages (their bookings could never reach a provider). Add
        another writable source, or move or delete the pages, first."""
        await calendars.remove_source(ctx_of(deps), slug, source_id, caller)


ROUTES = [ConnectionsController, CalendarsController]
