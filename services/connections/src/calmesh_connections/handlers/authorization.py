"""The browser's side of the OAuth flow: the start page (`authorize`) binds the browser of the user
who started a connection and sends it to the provider; the `callback` completes the connection
only for that browser. The handlers answer what happened; the routes render it for a browser."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from calmesh_common.events.connections import ConnectionAuthorized, ConnectionErrored
from calmesh_common.logging import get_logger
from calmesh_common.problems import Problem
from calmesh_common.service import Caller, ServiceDeps
from calmesh_providers import ProviderError
from calmesh_providers.google import GoogleClient
from calmesh_providers.graph import GraphClient

from .. import discovery, oauth, push, store
from ..core import Context, append, conn_calendars
from ..domain import OAUTH, authorize_problem, callback_failure, next_sync_at, state_problem
from .connections import request_sync

log = get_logger(__name__)


@dataclass(frozen=True)
class Refused:
    """The browser is shown `problem` (and its binding cookie cleared when `clear_cookie` is set)."""

    problem: Problem
    clear_cookie: str | None = None


@dataclass(frozen=True)
class ToProvider:
    """The browser is bound by `cookie` and sent on to the provider's consent screen at `url`."""

    url: str
    cookie: str


@dataclass(frozen=True)
class Completed:
    """The callback's end: the connection `row`, connected or failed (`failure`), answered to
    `return_to` when the flow was started with one; the binding cookie is cleared."""

    row: Any
    return_to: str | None
    failure: str | None
    clear_cookie: str


def _oauth_provider(provider: str) -> None:
    if provider not in OAUTH:
        raise Problem(404, "not_found", "No such OAuth provider.")


async def authorize(ctx: Context, provider: str, oauth_state: str | None, caller: Caller | None) -> Refused | ToProvider:
    """Only the signed-in user who created the pending connection may open its start page: this
    browser gets a short-lived cookie tied to the state. A link opened by anyone else binds nothing."""
    _oauth_provider(provider)
    if not oauth_state:
        return Refused(Problem(400, "invalid_state", "The state parameter is missing."))
    config = oauth.provider_config(ctx.settings, provider)
    oauth.require_configured(config)
    digest = oauth.state_digest(oauth_state)
    now = datetime.now(UTC)
    async with ctx.pool.acquire() as conn, conn.transaction():
        saved = await store.take_state(conn, digest)
        problem = authorize_problem(saved, provider, now, caller.auth if caller else None, caller.user_id if caller else None)
        if problem is not None:
            return Refused(problem)
        assert saved is not None  # a missing state is a problem above
        value, browser_hash = oauth.new_binding()
        await store.bind_state(conn, digest, browser_hash)
        verifier = ctx.vault.open_text(saved["code_verifier"])
    url = oauth.authorization_url(
        config, provider, redirect_uri=oauth.callback_url(ctx.settings, provider), state=oauth_state,
        challenge=oauth.challenge_for(verifier),
    )
    max_age = int((saved["expires_at"] - now).total_seconds())
    return ToProvider(url, oauth.binding_cookie(ctx.settings, digest, value, max_age))


async def callback(
    ctx: Context, deps: ServiceDeps, provider: str, caller: Caller | None, cookies: Mapping[str, str], *,
    code: str | None, oauth_state: str | None, error: str | None, error_description: str | None,
) -> Refused | Completed:
    """The provider's answer: the state is spent whatever happens; in the browser that started the
    flow the code is exchanged, the calendars listed and the first sync queued."""
    _oauth_provider(provider)
    if not oauth_state:
        raise Problem(400, "invalid_state", "The state parameter is missing.")
    config = oauth.provider_config(ctx.settings, provider)
    digest = oauth.state_digest(oauth_state)
    cookie_name = oauth.binding_cookie_name(ctx.settings, digest)
    async with ctx.pool.acquire() as conn, conn.transaction():
        saved = await store.take_state(conn, digest)
        problem = state_problem(saved, provider, datetime.now(UTC))
        if problem is not None:
            raise problem
        assert saved is not None  # a missing state is a problem above
        # Single use, whatever happens next: a refused answer cannot be replayed elsewhere.
        await store.use_state(conn, digest)
        if caller is not None and caller.user_id != saved["user_id"]:
            problem = Problem(400, "invalid_state", "This authorization request belongs to another user.")
        elif not oauth.binding_matches(saved["browser_hash"], cookies.get(cookie_name)):
            # Consent given in a browser that did not start this flow (a link someone sent):
            # nothing is completed, and the pending connection stays unattached.
            log.warning("oauth_callback_unbound_browser", connection_id=saved["connection_id"], provider=provider)
            problem = Problem(
                403, "oauth_browser_mismatch",
                "This authorization came back to a browser that did not start it, so nothing was connected. "
                "If you meant to connect a calendar, start again from CalMesh in this browser.",
            )
        verifier = ctx.vault.open_text(saved["code_verifier"])
    clear = oauth.binding_cookie(ctx.settings, digest, "", 0)
    if problem is not None:
        return Refused(problem, clear)
    connection_id = saved["connection_id"]
    return_to = saved["return_to"]
    user_id = saved["user_id"]
    row = await store.get_connection(ctx.pool, connection_id, user_id=user_id)
    if row is None:
        raise Problem(400, "invalid_state", "The connection of this authorization request was deleted.")
    failure = callback_failure(config.name, code, error, error_description)
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
        return Completed(row, return_to, failure, clear)
    access_token = tokens.access_token

    # Find the calendars with the new token (a failure here is left to the first sync).
    async def token(_force: bool) -> str:
        return access_token

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
            calendars=conn_calendars(calendars),
        )], user_id)
    await request_sync(ctx, row, "created")
    push.schedule_setup(ctx, deps, connection_id)
    return Completed(row, return_to, None, clear)
