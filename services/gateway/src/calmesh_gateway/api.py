"""The gateway's own endpoints (litestar): signup, login, logout, /me, API keys, health, OpenAPI.

The front (front.py) has already authenticated the caller, checked scope and CSRF and rate-limited;
it hands over a `RequestContext` in ``scope["calmesh"]``.
"""

from __future__ import annotations

import asyncio
import re
import zoneinfo
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import Cookie

from calmesh_common.cursors import AwareDatetime, decode_cursor, encode_cursor
from calmesh_common.logging import get_logger
from calmesh_common.problems import PROBLEM_JSON, FieldError, Problem, problem_bytes
from calmesh_common.requestguard import check_body
from calmesh_common.retryafter import retry_after
from calmesh_common.timefmt import rfc3339, rfc3339_or_none

from . import schemas
from .authcache import Identity
from .front import RequestContext, request_context
from .keys import generate_key, random_id
from .limits import SharedLimiter, client_address
from .openapi import DOCS_CSP, docs_asset, docs_page
from .routes import RESERVED_HANDLES
from .security import CSRF_COOKIE, SESSION_COOKIE, csrf_token, new_session_token, session_hash
from .store import EmailTaken, HandleTaken, KeyRow, UserRow

log = get_logger(__name__)

T = TypeVar("T")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


def _ctx(request: Request[Any, Any, Any]) -> RequestContext:
    return request_context(request.scope)


def _state(request: Request[Any, Any, Any]) -> Any:
    return request.app.state.gw


def _identity(request: Request[Any, Any, Any]) -> Identity:
    identity = _ctx(request).identity
    if identity is None:  # the route table makes this unreachable; refuse rather than guess
        raise Problem(401, "unauthorized", "Authentication is required.")
    return identity


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def valid_timezone(name: str) -> bool:
    return name in _zones() or name == "UTC"


def decode_json(body: bytes, content_type: str | None, kind: type[T]) -> T:
    """Decode a JSON body into `kind`, turning every failure into a 400 that says what is wrong."""
    if content_type and "json" not in content_type.split(";", 1)[0].lower():
        raise Problem(415, "unsupported_media_type", "Send the body as application/json.")
    if not body.strip():
        raise Problem(400, "malformed_json", "The request body must be a JSON object.")
    check_body(body, "application/json")  # NUL characters, nesting too deep: 400, not a 500
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        found = _AT_PATH.search(message)
        field = found.group(1) if found else "body"
        text = message[: found.start()] if found else message
        unknown = re.match(r"Object contains unknown field `([^`]*)`", text)
        missing = re.match(r"Object missing required field `([^`]*)`", text)
        if unknown:
            field, text = (f"{field}.{unknown.group(1)}" if found else unknown.group(1)), "unknown field"
        elif missing:
            field, text = (f"{field}.{missing.group(1)}" if found else missing.group(1)), "required"
        raise Problem(400, "validation_error", f"{field}: {text}", errors=[FieldError(field or "body", text)]) from None
    except msgspec.DecodeError as exc:
        raise Problem(400, "malformed_json", f"The request body is not valid JSON: {exc}.") from None


def _invalid(field: str, message: str) -> Problem:
    return Problem(400, "validation_error", f"{field}: {message}", errors=[FieldError(field, message)])


def _json(data: Any, status: int = 200, cookies: list[Cookie] | None = None) -> Response[bytes]:
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json", cookies=cookies)


def _user_body(user: UserRow) -> schemas.User:
    return schemas.User(id=user.id, email=user.email, handle=user.handle, name=user.name, timezone=user.timezone,
                        plan=user.plan, created_at=rfc3339(user.created_at))


def _session_cookies(settings: Any, token: str) -> list[Cookie]:
    ttl = settings.session_ttl_seconds
    return [
        Cookie(key=SESSION_COOKIE, value=token, max_age=ttl, path="/", httponly=True, samesite="lax",
               secure=settings.cookie_secure),
        Cookie(key=CSRF_COOKIE, value=csrf_token(settings.session_secret, token), max_age=ttl, path="/",
               httponly=False, samesite="lax", secure=settings.cookie_secure),
    ]


def _cleared_cookies(settings: Any) -> list[Cookie]:
    return [
        Cookie(key=SESSION_COOKIE, value="", max_age=0, path="/", httponly=True, samesite="lax",
               secure=settings.cookie_secure),
        Cookie(key=CSRF_COOKIE, value="", max_age=0, path="/", httponly=False, samesite="lax",
               secure=settings.cookie_secure),
    ]


async def _new_session(state: Any, user_id: str) -> tuple[str, str, str, datetime]:
    token = new_session_token()
    expires = datetime.now(UTC) + timedelta(seconds=state.settings.session_ttl_seconds)
    return random_id("ses_"), token, session_hash(state.settings.session_secret, token), expires


# Accounts ------------------------------------------------------------------------------------

@post("/api/v1/auth/signup", status_code=201)
async def signup(request: Request[Any, Any, Any]) -> Response[bytes]:
    state = _state(request)
    data = decode_json(await request.body(), request.headers.get("content-type"), schemas.SignupRequest)
    email = data.email.strip()
    if not _EMAIL.match(email):
        raise _invalid("email", "is not an email address")
    if data.handle in RESERVED_HANDLES:
        raise _invalid("handle", "is reserved; choose another")
    timezone = data.timezone or "UTC"
    if not valid_timezone(timezone):
        raise _invalid("timezone", "is not an IANA time zone name (e.g. Europe/Amsterdam)")
    taken = await state.store.email_or_handle_taken(email, data.handle)
    if taken == "email":
        raise Problem(409, "email_taken", "An account with this email exists already.")
    if taken == "handle":
        raise Problem(409, "handle_taken", "This handle is taken; choose another.")
    password_hash = await state.passwords.hash(data.password)
    session_id, token, token_hash, expires = await _new_session(state, "")
    user = UserRow(id=random_id("usr_"), email=email, handle=data.handle, name=(data.name or "").strip(),
                   timezone=timezone, plan="free", created_at=datetime.now(UTC), password_hash=password_hash)
    try:
        created = await state.store.create_user_with_session(user, session_id, token_hash, expires)
    except EmailTaken:
        raise Problem(409, "email_taken", "An account with this email exists already.") from None
    except HandleTaken:
        raise Problem(409, "handle_taken", "This handle is taken; choose another.") from None
    return _json(_user_body(created), 201, _session_cookies(state.settings, token))


@post("/api/v1/auth/login", status_code=200)
async def login(request: Request[Any, Any, Any]) -> Response[bytes]:
    state = _state(request)
    data = decode_json(await request.body(), request.headers.get("content-type"), schemas.LoginRequest)
    email = data.email.strip()
    # Every attempt spends a token of the account's and of the address's bucket before the
    # password is checked (parallel guesses cannot slip past); a sign-in that succeeds gives them
    # back, so only failures count. With a bucket empty: 429 whatever the password.
    buckets = [(state.login_by_address, client_address(request.scope)), (state.login_by_account, email.lower())]
    spent: list[tuple[SharedLimiter, str]] = []
    for limiter, name in buckets:
        wait = await limiter.take(name)
        if wait:
            for earlier, earlier_name in spent:
                await earlier.refund(earlier_name)
            raise Problem(429, "too_many_failed_attempts",
                          "Too many failed sign-ins for this account or from this address; retry later.",
                          headers=retry_after(wait))
        spent.append((limiter, name))
    user = await state.store.user_by_email(email)
    ok = await state.passwords.verify(user.password_hash if user else None, data.password)
    if user is None or not ok:
        raise Problem(401, "invalid_credentials", "The email or the password is not right.")
    for limiter, name in spent:
        await limiter.refund(name)
    session_id, token, token_hash, expires = await _new_session(state, user.id)
    await state.store.create_session(session_id, user.id, token_hash, expires)
    return _json(_user_body(user), 200, _session_cookies(state.settings, token))


@post("/api/v1/auth/logout", status_code=204)
async def logout(request: Request[Any, Any, Any]) -> Response[None]:
    state = _state(request)
    identity = _ctx(request).identity
    if identity is not None and identity.session_hash:
        state.cache.forget_session(identity.session_hash)
        await state.store.end_session(identity.session_hash)
        state.cache.forget_session(identity.session_hash)
    return Response(None, status_code=204, cookies=_cleared_cookies(state.settings))


@get("/api/v1/me")
async def me(request: Request[Any, Any, Any]) -> Response[bytes]:
    identity = _identity(request)
    user = await _state(request).store.user_by_id(identity.user_id)
    if user is None:
        raise Problem(404, "not_found", "No such user.")
    body = _user_body(user)
    # Clients (the MCP server among them) learn here what the credential they hold may do.
    body.auth = schemas.Auth(type="key" if identity.auth == "key" else "session", scope=identity.scope,
                             key_id=identity.key_id)
    return _json(body)


# API keys ------------------------------------------------------------------------------------

def _limit(raw: str | None) -> int:
    if raw is None:
        return 50
    try:
        limit = int(raw)
    except ValueError:
        raise _invalid("limit", "must be a whole number from 1 to 200") from None
    if not 1 <= limit <= 200:
        raise _invalid("limit", "must be a whole number from 1 to 200")
    return limit


@post("/api/v1/api-keys", status_code=201)
async def create_api_key(request: Request[Any, Any, Any]) -> Response[bytes]:
    state = _state(request)
    identity = _identity(request)
    data = decode_json(await request.body(), request.headers.get("content-type"), schemas.ApiKeyCreate)
    expires_at = data.expires_at
    if expires_at is not None:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= datetime.now(UTC):
            raise Problem(422, "invalid_expires_at", "expires_at must lie in the future.",
                          errors=[FieldError("expires_at", "must lie in the future")])
    new = generate_key()
    key_id = random_id("key_")
    row = await state.store.create_key(key_id=key_id, user_id=identity.user_id, name=data.name, scope=data.scope,
                                       prefix=new.prefix, key_hash=new.key_hash, expires_at=expires_at)
    state.cache.add_key(KeyRow(id=key_id, user_id=identity.user_id, scope=data.scope, key_hash=new.key_hash,
                               expires_at=expires_at, revoked=False, handle=identity.handle,
                               timezone=identity.timezone, plan=identity.plan))
    return _json(schemas.ApiKeyCreated(
        id=key_id, name=row["name"], scope=row["scope"], prefix=row["prefix"], key=new.key,
        created_at=rfc3339(row["created_at"]), expires_at=rfc3339_or_none(row["expires_at"]),
    ), 201)


@get("/api/v1/api-keys")
async def list_api_keys(request: Request[Any, Any, Any]) -> Response[bytes]:
    state = _state(request)
    identity = _identity(request)
    limit = _limit(request.query_params.get("limit"))
    cursor = request.query_params.get("cursor")
    after = decode_cursor(cursor, tuple[AwareDatetime, str]) if cursor else None
    rows = await state.store.list_keys(identity.user_id, limit + 1, after)
    page, more = rows[:limit], len(rows) > limit
    data = []
    for r in page:
        last_used = r["last_used_at"]
        pending = state.cache.pending_last_used(r["id"])
        if pending is not None and (last_used is None or pending > last_used):
            last_used = pending
        data.append(schemas.ApiKey(id=r["id"], name=r["name"], scope=r["scope"], prefix=r["prefix"],
                                   created_at=rfc3339(r["created_at"]), last_used_at=rfc3339_or_none(last_used),
                                   expires_at=rfc3339_or_none(r["expires_at"])))
    next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["id"]) if more and page else None
    return _json(schemas.ApiKeyList(data=data, next_cursor=next_cursor))


@delete("/api/v1/api-keys/{key_id:str}", status_code=204)
async def revoke_api_key(request: Request[Any, Any, Any], key_id: str) -> None:
    state = _state(request)
    identity = _identity(request)
    key_hash = await state.store.revoke_key(identity.user_id, key_id)
    if key_hash is None:
        raise Problem(404, "not_found", "No such API key.")
    state.cache.revoke_key(key_hash)


# Health and documentation --------------------------------------------------------------------

async def _check_database(state: Any, timeout: float) -> str:
    try:
        async with asyncio.timeout(timeout):
            await state.store.ping()
        return "ok"
    except TimeoutError:
        return "down: timeout"
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a health check
        # The answer is public: the cause goes to the log, not into the body.
        log.warning("health_check_failed", check="database", error=repr(exc))
        return "down"


async def _check_service(state: Any, url: str, timeout: float) -> str:
    try:
        status, body = await state.forwarder.get_json_status(f"{url.rstrip('/')}/health", {}, timeout)
        if status == 200:
            return "ok"
        return f"down: {_what_is_down(body) or f'HTTP {status}'}"
    except TimeoutError:
        return "down: timeout"
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a health check
        log.warning("health_check_failed", check=url, error=repr(exc))
        return "down: unreachable"


def _what_is_down(body: bytes) -> str:
    """From a service's /health answer, the checks that failed: ``database, nats``."""
    try:
        checks = msgspec.json.decode(body).get("checks") or {}
        return ", ".join(sorted(name for name, value in checks.items() if value != "ok"))
    except (msgspec.DecodeError, AttributeError, TypeError):
        return ""


@get("/api/health")
async def health(request: Request[Any, Any, Any]) -> Response[bytes]:
    state = _state(request)
    timeout = state.settings.health_timeout_seconds
    services = sorted(state.settings.service_urls.items())
    results = await asyncio.gather(
        _check_database(state, timeout),
        *(_check_service(state, url, timeout) for _, url in services),
    )
    checks = {"database": results[0],
              "nats": "ok" if state.nc is not None and state.nc.is_connected else "down: disconnected"}
    checks.update({name: result for (name, _), result in zip(services, results[1:], strict=True)})
    down = [name for name, value in checks.items() if value != "ok"]
    if not down:
        return _json({"status": "ok", "checks": checks})
    problem = Problem(503, "service_unavailable", f"Down: {', '.join(down)}.", checks=checks, down=down)
    return Response(problem_bytes(problem), status_code=503, media_type=PROBLEM_JSON, headers=retry_after(5))


@get("/schema/openapi.json")
async def openapi_document(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(await _state(request).openapi.document(), media_type="application/json")


@get("/schema")
async def openapi_page(request: Request[Any, Any, Any]) -> Response[str]:
    return Response(docs_page(), media_type="text/html",
                    headers={"Content-Security-Policy": DOCS_CSP, "X-Content-Type-Options": "nosniff"})


@get("/schema/assets/{name:str}")
async def openapi_asset(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    asset = docs_asset(name)
    if asset is None:
        raise Problem(404, "not_found", "No such documentation asset.")
    body, content_type = asset
    return Response(body, media_type=content_type,
                    headers={"Content-Security-Policy": DOCS_CSP, "X-Content-Type-Options": "nosniff",
                             "Cache-Control": "public, max-age=3600"})


ROUTE_HANDLERS = [signup, login, logout, me, create_api_key, list_api_keys, revoke_api_key, health,
                  openapi_document, openapi_page, openapi_asset]
