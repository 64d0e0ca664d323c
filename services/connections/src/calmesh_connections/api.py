"""The public API of the connections service (docs/api-guide.md: Connections, Unified calendars). The
gateway has authenticated the caller and enforced the route's scope; here every resource is held
to its owner (another user's is a 404)."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import httpx
import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post, put
from litestar.params import Parameter
from litestar.response import Redirect

from calmesh_common.cursors import AwareDatetime, decode_cursor, encode_cursor
from calmesh_common.events.connections import (
    CalendarCreated,
    CalendarDeleted,
    CalendarSource,
    CalendarSourceAdded,
    CalendarSourceRemoved,
    CalendarSourcesReordered,
    CalendarUpdated,
    ConnectionAuthorized,
    ConnectionCalendar,
    ConnectionCreated,
    ConnectionErrored,
    ConnectionRemoved,
    ConnectionSyncRequested,
)
from calmesh_common.ids import new_id
from calmesh_common.logging import get_logger
from calmesh_common.problems import PROBLEM_JSON, FieldError, Problem, problem_bytes
from calmesh_common.retryafter import retry_after
from calmesh_common.service import SECRET_HEADER, Caller, ServiceDeps, json_response
from calmesh_common.settings import SettingsError
from calmesh_common.tracing import inject_headers
from calmesh_providers import ProviderError
from calmesh_providers.google import GoogleClient
from calmesh_providers.graph import GraphClient

from . import discovery, oauth, push, store
from .core import (
    OAUTH,
    Context,
    append,
    calendar_view,
    calendars_of,
    connection_out,
    ctx_of,
    next_sync_at,
    publish_job,
    source_views,
)
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
    SourceOut,
    SourceRef,
    SourcesReorder,
    SyncAccepted,
    check_slug,
    check_timezone,
    user_timezone,
)

log = get_logger(__name__)

Limit = Annotated[int, Parameter(ge=1, le=200, description="Page size, 1..200")]
Cursor = Annotated[str | None, Parameter(description="Opaque cursor from next_cursor")]


def _conn_calendars(calendars: list[dict[str, Any]]) -> list[ConnectionCalendar]:
    return [ConnectionCalendar(id=c["id"], name=c.get("name") or "", color=c.get("color"), read_only=bool(c.get("read_only"))) for c in calendars]


async def _calendar(conn: Any, caller: Caller, slug: str, *, for_update: bool = False) -> Any:
    """The caller's calendar `slug`; 404 when they have none of that slug."""
    row = await store.get_calendar(conn, caller.user_id, slug, for_update=for_update)
    if row is None:
        raise Problem(404, "not_found", "No such calendar.")
    return row


async def _page_of(
    list_rows: Callable[[Any, str, tuple[datetime, str] | None, int], Awaitable[list[Any]]],
    ctx: Context, caller: Caller, cursor: str | None, limit: int,
) -> tuple[list[Any], str | None]:
    """A page of the caller's rows from the store's `list_rows`, and the cursor to the next page
    when there is more (one row more than the page is asked for, to know)."""
    after = decode_cursor(cursor, tuple[AwareDatetime, str]) if cursor else None
    rows = await list_rows(ctx.pool, caller.user_id, after, limit + 1)
    page = rows[:limit]
    return page, (encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None)


async def _enforce_plan(conn: Any, ctx: Context, caller: Caller) -> None:
    """Plan limit on connections (402 plan_limit_reached), when the plans module is present."""
    try:
        from calmesh_common.plans import enforce_limit
    except ImportError:  # pragma: no cover - older common lib
        return
    await enforce_limit(
        conn,
        schema="connections",
        user_id=caller.user_id,
        limit="connections",
        settings=ctx.settings,
        used=lambda c: c.fetchval("SELECT count(*) FROM connections.connections WHERE user_id = $1", caller.user_id),
    )


class ConnectionsController(Controller):
    path = "/api/v1/connections"
    tags = ["connections"]

    @get("", summary="List all calendar connections for the authenticated user")
    async def list_connections(self, caller: Caller, deps: ServiceDeps, limit: Limit = 50, cursor: Cursor = None) -> ConnectionPage:
        rows, next_cursor = await _page_of(store.list_connections, ctx_of(deps), caller, cursor, limit)
        return ConnectionPage(data=[connection_out(r) for r in rows], next_cursor=next_cursor)

    @get("/{connection_id:str}", summary="Get connection details and status")
    async def get_connection(self, connection_id: str, caller: Caller, deps: ServiceDeps) -> ConnectionOut:
        row = await store.get_connection(ctx_of(deps).pool, connection_id, user_id=caller.user_id)
        if row is None:
            raise Problem(404, "not_found", "No such connection.")
        return connection_out(row)

    # --- OAuth providers ---------------------------------------------------------------------

    async def _start_oauth(self, provider: str, data: OAuthStart | None, caller: Caller, deps: ServiceDeps) -> ConnectionOut:
        ctx = ctx_of(deps)
        config = oauth.provider_config(ctx.settings, provider)
        oauth.require_configured(config)
        return_to = None
        if data is not None and data.redirect_uri:
            return_to = oauth.check_return_to(ctx.settings, data.redirect_uri)
        connection_id = new_id("conn")
        state, digest = oauth.new_state()
        verifier, _challenge = oauth.new_verifier()  # the start URL sends the challenge
        now = datetime.now(UTC)
        display = "Google Calendar" if provider == "google" else "Microsoft Outlook"
        async with ctx.pool.acquire() as conn, conn.transaction():
            await _enforce_plan(conn, ctx, caller)
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

    @post("/google", summary="Initiate Google Calendar OAuth flow", status_code=201)
    async def start_google(self, caller: Caller, deps: ServiceDeps, data: OAuthStart | None = None) -> ConnectionOut:
        return await self._start_oauth("google", data, caller, deps)

    @post("/microsoft", summary="Initiate Microsoft Outlook/365 OAuth flow", status_code=201)
    async def start_microsoft(self, caller: Caller, deps: ServiceDeps, data: OAuthStart | None = None) -> ConnectionOut:
        return await self._start_oauth("microsoft", data, caller, deps)

    # --- credential providers ----------------------------------------------------------------

    async def _create_credentialed(
        self,
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
            await _enforce_plan(conn, ctx, caller)
            row = await store.insert_connection(
                conn, id=connection_id, user_id=caller.user_id, provider=provider, display_name=display_name,
                status="pending", settings=settings, credentials=ctx.vault.seal(secrets), calendars=calendars,
                user_timezone=user_timezone(caller.timezone), next_sync_at=next_sync_at(ctx.settings, provider),
            )
            await append(ctx, conn, f"connection:{connection_id}", [ConnectionCreated(
                connection_id=connection_id, user_id=caller.user_id, provider=provider, display_name=display_name,
                status="pending", calendars=_conn_calendars(calendars), created_at=row["created_at"],
            )], caller.user_id)
        await _request_sync(ctx, row, "created")
        return connection_out(row)

    @post("/icloud", summary="Connect Apple iCloud Calendar via CalDAV", status_code=201)
    async def create_icloud(self, data: ICloudCreate, caller: Caller, deps: ServiceDeps) -> ConnectionOut:
        return await self._create_caldav(
            deps, caller, provider="icloud", url=ctx_of(deps).settings.icloud_caldav_url,
            username=data.username, password=data.app_password, display_name=data.username,
        )

    @post("/caldav", summary="Connect any CalDAV server", status_code=201)
    async def create_caldav(self, data: CalDAVCreate, caller: Caller, deps: ServiceDeps) -> ConnectionOut:
        url = discovery.check_url(data.url)
        host = urlsplit(url).hostname or url
        return await self._create_caldav(
            deps, caller, provider="caldav", url=url, username=data.username, password=data.password,
            display_name=f"{data.username}@{host}" if data.username else host,
        )

    async def _create_caldav(
        self, deps: ServiceDeps, caller: Caller, *, provider: str, url: str, username: str, password: str,
        display_name: str,
    ) -> ConnectionOut:
        """A CalDAV connection (iCloud is one): its calendars discovered with the credentials first."""
        connection_id = new_id("conn")
        calendars = await discovery.caldav_calendars(deps.extras["guarded"], connection_id, url, username, password)
        return await self._create_credentialed(
            ctx_of(deps), caller, connection_id=connection_id, provider=provider, display_name=display_name,
            settings={"url": url, "username": username}, secrets={"password": password}, calendars=calendars,
        )

    @post("/ical", summary="Subscribe to an iCal (.ics / webcal://) URL", status_code=201)
    async def create_ical(self, data: ICalCreate, caller: Caller, deps: ServiceDeps) -> ConnectionOut:
        ctx = ctx_of(deps)
        url = discovery.check_url(data.url)
        connection_id = new_id("conn")
        host = urlsplit(url).hostname or "iCal feed"
        # A feed URL often holds a secret token in its path: it is kept encrypted, like a password.
        return await self._create_credentialed(
            ctx, caller, connection_id=connection_id, provider="ical", display_name=host,
            settings={"host": host}, secrets={"url": url}, calendars=discovery.ical_calendars(connection_id, url),
        )

    # --- lifecycle ---------------------------------------------------------------------------

    @post("/{connection_id:str}/sync", summary="Trigger a manual sync for a connection", status_code=202)
    async def sync_now(self, connection_id: str, caller: Caller, deps: ServiceDeps) -> SyncAccepted:
        ctx = ctx_of(deps)
        async with ctx.pool.acquire() as conn, conn.transaction():
            row = await store.get_connection(conn, connection_id, user_id=caller.user_id, for_update=True)
            if row is None:
                raise Problem(404, "not_found", "No such connection.")
            if row["status"] == "revoked":
                raise Problem(409, "connection_revoked", "Access to this calendar was revoked; connect it again.")
            if row["status"] == "pending" and row["provider"] in OAUTH:
                raise Problem(409, "not_authorized", "This connection has not completed its authorization yet.")
            if caller.timezone and user_timezone(caller.timezone) != row["user_timezone"]:
                await store.update_connection(conn, connection_id, user_timezone=user_timezone(caller.timezone))
        sync_id = await _request_sync(ctx, row, "manual")
        return SyncAccepted(sync_id=sync_id)

    @delete("/{connection_id:str}", summary="Disconnect a calendar (deletes connection and cached events)", status_code=204)
    async def remove(self, connection_id: str, caller: Caller, deps: ServiceDeps) -> None:
        ctx = ctx_of(deps)
        now = datetime.now(UTC)
        async with ctx.pool.acquire() as conn, conn.transaction():
            row = await store.get_connection(conn, connection_id, user_id=caller.user_id, for_update=True)
            if row is None:
                raise Problem(404, "not_found", "No such connection.")
            # Its sources leave every unified calendar, each change published with the calendar.
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
                    CalendarSourceRemoved(calendar=full, source=_source_event(gone_views[s["id"]]), reason="connection_removed")
                    for s in gone
                ], caller.user_id)
            channels = await store.channels_of(conn, connection_id)
            await conn.execute("DELETE FROM connections.push_channels WHERE connection_id = $1", connection_id)
            credentials = ctx.vault.open(row["credentials"]) if row["provider"] in OAUTH else {}
            await store.delete_connection(conn, connection_id)
            await append(ctx, conn, f"connection:{connection_id}", [ConnectionRemoved(
                connection_id=connection_id, user_id=caller.user_id, provider=row["provider"], at=now,
            )], caller.user_id)
        # Best effort, after the commit: stop push channels and give the grant back.
        await push.stop_channels(ctx, row, channels, credentials)

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
        ctx = ctx_of(deps)
        if provider not in OAUTH:
            raise Problem(404, "not_found", "No such OAuth provider.")
        if not oauth_state:
            return _browser_problem(request, Problem(400, "invalid_state", "The state parameter is missing."))
        config = oauth.provider_config(ctx.settings, provider)
        oauth.require_configured(config)
        digest = oauth.state_digest(oauth_state)
        now = datetime.now(UTC)
        async with ctx.pool.acquire() as conn, conn.transaction():
            saved = await store.take_state(conn, digest)
            problem = _state_problem(saved, provider, now)
            if problem is None and (optional_caller is None or optional_caller.auth != "session"):
                problem = Problem(
                    401, "sign_in_required",
                    "Sign in to CalMesh in this browser, as the account that started this connection, then open this "
                    "link again.",
                )
            elif problem is None and optional_caller is not None and optional_caller.user_id != saved["user_id"]:
                problem = Problem(
                    403, "oauth_wrong_account",
                    "This link was made for another CalMesh account: nothing was connected. If someone sent it to you, "
                    "do not continue.",
                )
            if problem is not None:
                return _browser_problem(request, problem)
            value, browser_hash = oauth.new_binding()
            await store.bind_state(conn, digest, browser_hash)
            verifier = ctx.vault.open_text(saved["code_verifier"])
        url = oauth.authorization_url(
            config, provider, redirect_uri=oauth.callback_url(ctx.settings, provider), state=oauth_state,
            challenge=oauth.challenge_for(verifier),
        )
        max_age = int((saved["expires_at"] - now).total_seconds())
        return Redirect(url, status_code=302, headers={
            "Set-Cookie": oauth.binding_cookie(ctx.settings, digest, value, max_age),
            **_NO_STORE,
        })

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
        ctx = ctx_of(deps)
        if provider not in OAUTH:
            raise Problem(404, "not_found", "No such OAuth provider.")
        if not oauth_state:
            raise Problem(400, "invalid_state", "The state parameter is missing.")
        config = oauth.provider_config(ctx.settings, provider)
        digest = oauth.state_digest(oauth_state)
        cookie_name = oauth.binding_cookie_name(ctx.settings, digest)
        async with ctx.pool.acquire() as conn, conn.transaction():
            saved = await store.take_state(conn, digest)
            problem = _state_problem(saved, provider, datetime.now(UTC))
            if problem is not None:
                raise problem
            # Single use, whatever happens next: a refused answer cannot be replayed elsewhere.
            await store.use_state(conn, digest)
            if optional_caller is not None and optional_caller.user_id != saved["user_id"]:
                problem = Problem(400, "invalid_state", "This authorization request belongs to another user.")
            elif not oauth.binding_matches(saved["browser_hash"], request.cookies.get(cookie_name)):
                # Consent given in a browser that did not start this flow (a link someone sent):
                # nothing is completed, and the pending connection stays unattached.
                log.warning("oauth_callback_unbound_browser", connection_id=saved["connection_id"], provider=provider)
                problem = Problem(
                    403, "oauth_browser_mismatch",
                    "This authorization came back to a browser that did not start it, so nothing was connected. "
                    "If you meant to connect a calendar, start again from CalMesh in this browser.",
                )
            verifier = ctx.vault.open_text(saved["code_verifier"])
        if problem is not None:
            return _browser_problem(request, problem, clear_cookie=oauth.binding_cookie(ctx.settings, digest, "", 0))
        clear = oauth.binding_cookie(ctx.settings, digest, "", 0)
        connection_id = saved["connection_id"]
        return_to = saved["return_to"]
        user_id = saved["user_id"]
        row = await store.get_connection(ctx.pool, connection_id, user_id=user_id)
        if row is None:
            raise Problem(400, "invalid_state", "The connection of this authorization request was deleted.")
        failure = None
        if error:
            failure = f"authorization was not granted at {config.name}: {error_description or error}"
        elif not code:
            failure = "the provider sent no authorization code"
        tokens = None
        if failure is None:
            try:
                tokens = await oauth.exchange_code(
                    ctx.http, config, code=code or "", redirect_uri=oauth.callback_url(ctx.settings, provider), verifier=verifier
                )
            except (oauth.GrantRevoked, oauth.TokenEndpointError) as exc:
                failure = f"the authorization code could not be exchanged: {exc}"
        if failure is not None or tokens is None:
            async with ctx.pool.acquire() as conn, conn.transaction():
                row = await store.update_connection(conn, connection_id, status="error", error_kind="auth", last_error=failure)
                await append(ctx, conn, f"connection:{connection_id}", [ConnectionErrored(
                    connection_id=connection_id, user_id=user_id, error=failure or "", kind="auth", at=datetime.now(UTC),
                )], user_id)
            return _callback_answer(request, return_to, row, failure, clear)
        # Find the calendars with the new token (a failure here is left to the first sync).
        async def token(_force: bool) -> str:
            return tokens.access_token  # type: ignore[union-attr]

        calendars: list[dict[str, Any]] = []
        account = None
        try:
            if provider == "google":
                calendars, account = await discovery.google_calendars(GoogleClient(ctx.http, ctx.settings.google_api_url, token), connection_id)
            else:
                calendars, account = await discovery.graph_calendars(GraphClient(ctx.http, ctx.settings.microsoft_graph_url, token), connection_id)
        except ProviderError as exc:
            log.warning("oauth_calendar_list_failed", connection_id=connection_id, error=str(exc))
        display = account or row["display_name"]
        async with ctx.pool.acquire() as conn, conn.transaction():
            row = await store.update_connection(
                conn, connection_id, status="syncing", error_kind=None, last_error=None, display_name=display,
                credentials=ctx.vault.seal(tokens.as_credentials()), token_expires_at=tokens.expires_at,
                calendars=calendars, next_sync_at=next_sync_at(ctx.settings, provider),
            )
            await append(ctx, conn, f"connection:{connection_id}", [ConnectionAuthorized(
                connection_id=connection_id, user_id=user_id, provider=provider, display_name=display,
                calendars=_conn_calendars(calendars),
            )], user_id)
        await _request_sync(ctx, row, "created")
        push.schedule_setup(ctx, deps, connection_id)
        return _callback_answer(request, return_to, row, None, clear)

    @post("/google/notifications", summary="Google Calendar push notifications", status_code=200)
    async def google_notification(self, request: Request[Any, Any, Any], deps: ServiceDeps) -> Response[bytes]:
        return await push.google_notification(ctx_of(deps), request)

    @post("/microsoft/notifications", summary="Microsoft Graph change notifications", status_code=202)
    async def microsoft_notification(self, request: Request[Any, Any, Any], deps: ServiceDeps) -> Response[Any]:
        return await push.graph_notification(ctx_of(deps), request)


async def _request_sync(ctx: Context, row: Any, reason: str) -> str:
    sync_id = await publish_job(ctx, row["id"], row["user_id"], reason)
    async with ctx.pool.acquire() as conn, conn.transaction():
        await append(ctx, conn, f"connection:{row['id']}", [ConnectionSyncRequested(
            connection_id=row["id"], user_id=row["user_id"], sync_id=sync_id, reason=reason,
        )], row["user_id"])
    return sync_id


#: The start and callback answers carry the state and the code in their URLs: never cached, never
#: sent on as a Referer.
_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def _state_problem(saved: Any, provider: str, now: datetime) -> Problem | None:
    """Why a stored state cannot be used (unknown, another provider's, used, expired), else None."""
    if saved is None or saved["provider"] != provider:
        return Problem(400, "invalid_state", "This authorization request is unknown; start again.")
    if saved["used_at"] is not None:
        return Problem(400, "invalid_state", "This authorization request was used already; start again.")
    if saved["expires_at"] < now:
        return Problem(400, "invalid_state", "This authorization request expired; start again.")
    return None


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


def _source_event(view: SourceOut) -> CalendarSource:
    return CalendarSource(
        id=view.id, connection_id=view.connection_id, calendar_id=view.calendar_id, name=view.name,
        sort_order=view.sort_order, read_only=view.read_only,
    )


# --- unified calendars -----------------------------------------------------------------------


class CalendarsController(Controller):
    path = "/api/v1/calendars"
    tags = ["calendars"]

    @post("", summary="Create a unified calendar", status_code=201)
    async def create(self, data: CalendarCreate, caller: Caller, deps: ServiceDeps) -> CalendarOut:
        ctx = ctx_of(deps)
        slug = check_slug(data.slug)
        tz = check_timezone(data.timezone) if data.timezone else user_timezone(caller.timezone)
        calendar_id = new_id("ucal")
        async with ctx.pool.acquire() as conn, conn.transaction():
            if await store.get_calendar(conn, caller.user_id, slug) is not None:
                raise Problem(409, "slug_taken", f"You already have a calendar with the slug {slug!r}.")
            try:
                row = await store.insert_calendar(conn, calendar_id=calendar_id, user_id=caller.user_id, slug=slug, name=data.name, timezone=tz)
            except Exception as exc:  # noqa: BLE001 - a racing create of the same slug
                if type(exc).__name__ == "UniqueViolationError":
                    raise Problem(409, "slug_taken", f"You already have a calendar with the slug {slug!r}.") from None
                raise
            await _add_sources(conn, caller.user_id, calendar_id, data.sources, start_order=0)
            out, full = await calendar_view(conn, row)
            await append(ctx, conn, f"calendar:{calendar_id}", [CalendarCreated(calendar=full)], caller.user_id)
        return out

    @get("", summary="List all unified calendars")
    async def list_calendars(self, caller: Caller, deps: ServiceDeps, limit: Limit = 50, cursor: Cursor = None) -> CalendarPage:
        ctx = ctx_of(deps)
        rows, next_cursor = await _page_of(store.list_calendars, ctx, caller, cursor, limit)
        sources = await store.sources_of(ctx.pool, [r["id"] for r in rows])
        conns = await store.connections_of(ctx.pool, caller.user_id, list({s["connection_id"] for ss in sources.values() for s in ss}))
        data = [_calendar_from(r, source_views(sources[r["id"]], conns)) for r in rows]
        return CalendarPage(data=data, next_cursor=next_cursor)

    @get("/{slug:str}", summary="Get unified calendar details")
    async def get_calendar(self, slug: str, caller: Caller, deps: ServiceDeps) -> CalendarOut:
        ctx = ctx_of(deps)
        row = await _calendar(ctx.pool, caller, slug)
        out, _ = await calendar_view(ctx.pool, row)
        return out

    @patch("/{slug:str}", summary="Update a unified calendar")
    async def update(self, slug: str, data: CalendarUpdate, caller: Caller, deps: ServiceDeps) -> CalendarOut:
        ctx = ctx_of(deps)
        async with ctx.pool.acquire() as conn, conn.transaction():
            row = await _calendar(conn, caller, slug, for_update=True)
            new_slug = check_slug(data.slug) if data.slug is not None else row["slug"]
            new_tz = check_timezone(data.timezone) if data.timezone is not None else row["timezone"]
            new_name = data.name if data.name is not None else row["name"]
            if new_slug != row["slug"] and await store.get_calendar(conn, caller.user_id, new_slug) is not None:
                raise Problem(409, "slug_taken", f"You already have a calendar with the slug {new_slug!r}.")
            row = await store.update_calendar(conn, row["id"], slug=new_slug, name=new_name, timezone=new_tz)
            out, full = await calendar_view(conn, row)
            await append(ctx, conn, f"calendar:{row['id']}", [CalendarUpdated(
                calendar=full, previous_slug=slug if new_slug != slug else None,
            )], caller.user_id)
        return out

    @delete("/{slug:str}", summary="Delete a unified calendar", status_code=204)
    async def remove(self, slug: str, caller: Caller, deps: ServiceDeps) -> None:
        ctx = ctx_of(deps)
        async with ctx.pool.acquire() as conn, conn.transaction():
            row = await _calendar(conn, caller, slug, for_update=True)
            _, full = await calendar_view(conn, row)
            await store.delete_calendar(conn, row["id"])
            await append(ctx, conn, f"calendar:{row['id']}", [CalendarDeleted(calendar=full)], caller.user_id)

    @post("/{slug:str}/sources", summary="Add a connection to a unified calendar", status_code=201)
    async def add_source(self, slug: str, data: SourceRef, caller: Caller, deps: ServiceDeps) -> Response[bytes]:
        ctx = ctx_of(deps)
        async with ctx.pool.acquire() as conn, conn.transaction():
            row = await _calendar(conn, caller, slug, for_update=True)
            existing = (await store.sources_of(conn, [row["id"]]))[row["id"]]
            added = await _add_sources(conn, caller.user_id, row["id"], [data], start_order=len(existing))
            if not added:
                raise Problem(409, "source_exists", "That calendar is a source of this unified calendar already.")
            row = await store.touch_calendar(conn, row["id"])
            out, full = await calendar_view(conn, row)
            new = [v for v in out.sources if v.id in added]
            await append(ctx, conn, f"calendar:{row['id']}", [
                CalendarSourceAdded(calendar=full, source=_source_event(v)) for v in new
            ], caller.user_id)
        # One source is answered as itself; a whole connection's calendars as a list.
        body: Any = msgspec.to_builtins(new[0]) if len(new) == 1 else {"data": msgspec.to_builtins(new), "next_cursor": None}
        return json_response(body, status=201)

    @put("/{slug:str}/sources/reorder", summary="Reorder sources within a unified calendar", status_code=200)
    async def reorder(self, slug: str, data: SourcesReorder, caller: Caller, deps: ServiceDeps) -> CalendarOut:
        ctx = ctx_of(deps)
        async with ctx.pool.acquire() as conn, conn.transaction():
            row = await _calendar(conn, caller, slug, for_update=True)
            current = [s["id"] for s in (await store.sources_of(conn, [row["id"]]))[row["id"]]]
            wanted = list(data.source_ids)
            if len(set(wanted)) != len(wanted):
                raise Problem(422, "invalid_order", "source_ids: an id is listed twice.", errors=[FieldError("source_ids", "duplicate")])
            unknown = [s for s in wanted if s not in current]
            if unknown:
                raise Problem(422, "invalid_order", f"source_ids: not sources of this calendar: {', '.join(unknown)}",
                              errors=[FieldError("source_ids", "unknown source")])
            # Sources left out keep their relative order, after the listed ones.
            order = wanted + [s for s in current if s not in wanted]
            await store.set_sort_orders(conn, order)
            row = await store.touch_calendar(conn, row["id"])
            out, full = await calendar_view(conn, row)
            await append(ctx, conn, f"calendar:{row['id']}", [CalendarSourcesReordered(calendar=full)], caller.user_id)
        return out

    @delete("/{slug:str}/sources/{source_id:str}", summary="Remove a source from a unified calendar", status_code=204)
    async def remove_source(self, slug: str, source_id: str, caller: Caller, deps: ServiceDeps) -> None:
        """The last writable source of a calendar that a booking page uses cannot be removed: 409
        `last_writable_source`, naming the pages (their bookings could never reach a provider). Add
        another writable source, or move or delete the pages, first."""
        ctx = ctx_of(deps)
        checked = False
        for _ in range(3):
            if not checked and await _leaves_no_writable(ctx, caller.user_id, slug, source_id):
                # Asked with no transaction open (booking's answer may take a moment).
                pages = await _pages_on(ctx, caller.user_id, slug)
                if pages:
                    raise _last_writable(slug, pages)
                checked = True
            async with ctx.pool.acquire() as conn, conn.transaction():
                row = await _calendar(conn, caller, slug, for_update=True)
                sources = (await store.sources_of(conn, [row["id"]]))[row["id"]]
                target = next((s for s in sources if s["id"] == source_id), None)
                if target is None:
                    raise Problem(404, "not_found", "No such source in this calendar.")
                everyone = await store.connections_of(conn, caller.user_id, list({s["connection_id"] for s in sources}))
                views = source_views(sources, everyone)
                if not checked and _no_writable_left(views, source_id):
                    continue  # it became the last writable one meanwhile: ask booking first
                view = next(v for v in views if v.id == source_id)
                await _remove_source(ctx, conn, caller, row, sources, source_id, view)
                return
        raise Problem(409, "conflict", "The calendar's sources keep changing; try again.", headers=retry_after(1))


async def _remove_source(ctx: Context, conn: Any, caller: Caller, row: Any, sources: list[Any], source_id: str,
                     view: SourceOut) -> None:
    await store.delete_source(conn, source_id)
    await store.set_sort_orders(conn, [s["id"] for s in sources if s["id"] != source_id])
    row = await store.touch_calendar(conn, row["id"])
    _, full = await calendar_view(conn, row)
    await append(ctx, conn, f"calendar:{row['id']}", [CalendarSourceRemoved(calendar=full, source=_source_event(view))], caller.user_id)


def _no_writable_left(views: list[SourceOut], removed: str) -> bool:
    """Removing `removed` takes the calendar's last writable source away."""
    writable = [v.id for v in views if not v.read_only]
    return writable == [removed]


async def _leaves_no_writable(ctx: Context, user_id: str, slug: str, source_id: str) -> bool:
    async with ctx.pool.acquire() as conn:
        row = await store.get_calendar(conn, user_id, slug)
        if row is None:
            return False
        sources = (await store.sources_of(conn, [row["id"]]))[row["id"]]
        everyone = await store.connections_of(conn, user_id, list({s["connection_id"] for s in sources}))
        return _no_writable_left(source_views(sources, everyone), source_id)


async def _pages_on(ctx: Context, user_id: str, slug: str) -> list[str]:
    """The slugs of the user's booking pages on calendar `slug`, from booking's internal API
    (`GET /internal/pages`); 503 when booking cannot be asked (nothing is removed then)."""
    try:
        base = ctx.settings.service_url("booking")
    except SettingsError:
        return []  # no booking service in this deployment: no pages
    try:
        response = await ctx.http.get(f"{base}/internal/pages", params={"user_id": user_id, "calendar_slug": slug},
                                      headers=inject_headers({SECRET_HEADER: ctx.settings.internal_secret}), timeout=5.0)
    except httpx.HTTPError:
        response = None
    if response is None or response.status_code != 200:
        raise Problem(503, "service_unavailable", "Cannot tell whether a booking page uses this calendar; try again.",
                      headers=retry_after(5))
    return [str(p["slug"]) for p in response.json().get("data", [])]


def _last_writable(slug: str, pages: list[str]) -> Problem:
    names = ", ".join(pages[:10]) + (" …" if len(pages) > 10 else "")
    return Problem(409, "last_writable_source",
                   f"This is the last writable source of calendar {slug!r}, and booking pages use it ({names}); "
                   "their bookings could not be written anywhere. Add another writable source, or move or delete "
                   "those pages, first.")


def _calendar_from(row: Any, views: list[SourceOut]) -> CalendarOut:
    from .core import calendar_out

    return calendar_out(row, views)


async def _add_sources(conn: Any, user_id: str, calendar_id: str, refs: list[SourceRef], *, start_order: int) -> list[str]:
    """Insert the sources named by `refs` (a connection's every calendar when calendar_id is left
    out); returns the new source ids. 422 for a connection or calendar the user does not have."""
    if not refs:
        return []
    conns = await store.connections_of(conn, user_id, [r.connection_id for r in refs])
    order = start_order
    added: list[str] = []
    for index, ref in enumerate(refs):
        connection = conns.get(ref.connection_id)
        field = f"sources[{index}]" if len(refs) > 1 or start_order == 0 else "connection_id"
        if connection is None:
            raise Problem(422, "unknown_connection", f"{field}: no connection {ref.connection_id!r}.",
                          errors=[FieldError(f"{field}.connection_id", "unknown connection")])
        calendars = calendars_of(connection)
        if ref.calendar_id is not None:
            chosen = [c for c in calendars if c["id"] == ref.calendar_id]
            if not chosen:
                raise Problem(422, "unknown_calendar", f"{field}: connection {ref.connection_id!r} has no calendar {ref.calendar_id!r}.",
                              errors=[FieldError(f"{field}.calendar_id", "unknown calendar")])
        else:
            chosen = calendars
            if not chosen:
                raise Problem(409, "connection_not_ready",
                              f"{field}: connection {ref.connection_id!r} has no calendars yet (it has not completed its authorization or first sync); try again shortly.")
        for cal in chosen:
            inserted = await store.insert_source(
                conn, source_id=new_id("src"), calendar_id=calendar_id, connection_id=ref.connection_id,
                provider_calendar_id=cal["id"], name=cal.get("name") or "", sort_order=order,
            )
            if inserted is not None:
                added.append(inserted["id"])
                order += 1
    return added


ROUTES = [ConnectionsController, CalendarsController]
