"""The gateway's front door: a raw ASGI app in front of litestar.

Every request is matched against the route table; nothing outside it is served. The front sets the
request id and the W3C trace context, authenticates (API key from memory, or session cookie),
enforces the row's scopes and CSRF, rate-limits, and then either forwards the request to the owning
service with aiohttp (the hot path, no framework in between) or hands it to the litestar app that
serves the gateway's own endpoints, with the established identity in ``scope["calmesh"]``.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from calmesh_common.logging import get_logger, is_database_outage, outage
from calmesh_common.metrics import METRICS_CONTENT_TYPE, Metrics
from calmesh_common.plans import daily_quota_exceeded
from calmesh_common.problems import PROBLEM_JSON, Problem, problem_bytes
from calmesh_common.requestguard import check_body, check_target
from calmesh_common.retryafter import retry_after
from calmesh_common.settings import Settings
from calmesh_common.tracing import extract_context, spans_exported, tracer

from .authcache import AuthCache, Identity
from .forward import RETRY_AFTER_SECONDS, Forwarder
from .keys import MalformedKey, check_key_format, hash_key
from .limits import SharedLimiter, client_address
from .quota import DailyQuota
from .routes import GATEWAY, KEY, SESSION, Route, RouteTable
from .security import SESSION_COOKIE, csrf_ok, looks_like_session_token, parse_cookies, session_hash

log = get_logger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
#: Request headers that never reach a service (the gateway sets its own or they are hop-by-hop).
_DROP_REQUEST = frozenset({
    b"host", b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"proxy-authorization", b"proxy-connection", b"content-length", b"expect",
})


@dataclass(slots=True)
class RequestContext:
    """What the gateway's own handlers learn from the front."""

    route: Route
    params: dict[str, str]
    request_id: str
    identity: Identity | None
    session_token: str | None = None


def request_context(scope: Mapping[str, Any]) -> RequestContext:
    """What the front put in a gateway request's ``scope["calmesh"]``."""
    context: RequestContext = scope["calmesh"]
    return context


class Unauthorized(Problem):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(401, code, detail, headers={"WWW-Authenticate": 'Bearer realm="calmesh"'})


class GatewayFront:
    def __init__(self, settings: Settings, inner: Any, cache: AuthCache, forwarder_ref: Any,
                 table: RouteTable | None = None, quota: DailyQuota | None = None) -> None:
        self.settings = settings
        self.inner = inner
        self.cache = cache
        self._forwarder_ref = forwarder_ref  # a callable returning the Forwarder made by the lifespan
        self.table = table or RouteTable()
        self.max_body = settings.max_body_bytes
        # Buckets shared by every replica (limits.py); the lifespan gives them the store.
        self.key_limiter = SharedLimiter("key", settings.rate_limit_per_minute, settings.rate_limit_burst)
        # A public caller may spend a minute's allowance at once, then `per_minute` a minute.
        self.public_limiter = SharedLimiter("addr", settings.public_rate_limit_per_minute,
                                            settings.public_rate_limit_per_minute)
        # Unknown, malformed, revoked or expired API keys per client address: once spent, a 429
        # comes before any key is hashed or looked up.
        self.bad_key_limiter = SharedLimiter("badkey", settings.bad_key_failures_per_minute,
                                             settings.bad_key_failures_burst)
        self.quota = quota or DailyQuota(settings)
        self.session_secret = settings.session_secret
        self.tracer = tracer("calmesh.gateway")
        # Spans are recorded when something exports them; otherwise the gateway still takes part
        # in the trace (a span id of its own, passed on to the service) at a fraction of the cost.
        self.record_spans = settings.otel_console or spans_exported()
        #: Requests by route template and their latency (set by create_app; /metrics).
        self.metrics: Metrics | None = None
        self.access_log = settings.access_log
        #: Readiness check for /readyz (set by create_app): returns (ready, checks).
        self.readiness: Any = None
        self.state: Any = None  # app.py's GatewayState, for tests and the benchmark
        # Hot-path memos, bounded: (method, path) -> match; Authorization value -> key hash.
        self._matches: dict[tuple[str, str], Any] = {}
        self._key_hashes: dict[bytes, str] = {}

    # ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"] in _PROBE_PATHS:
                await self._probe(scope, send)
                return
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self.inner(scope, receive, send)
        else:  # websockets: none of our endpoints speaks them
            await send({"type": "websocket.close", "code": 1008})

    async def _probe(self, scope: dict[str, Any], send: Any) -> None:
        """/livez, /readyz for the orchestrator, /metrics for Prometheus: outside the route table,
        unauthenticated and cheap. /readyz says only ready or not (no detail to the public); the
        aggregate with every service is /api/health. /metrics is served here to loopback callers
        only (the gateway's port is public); in a cluster it has a port of its own."""
        path = scope["path"]
        status, body, ctype = 200, b'{"status":"ok"}', b"application/json"
        if path == "/readyz":
            ready = self.readiness is not None and await self.readiness()
            if not ready:
                status, body = 503, b'{"status":"down"}'
        elif path == "/metrics":
            local = client_address(scope) in ("127.0.0.1", "::1")
            if self.metrics is None or self.settings.metrics_port or not local:
                problem = Problem(404, "route_not_found", f"There is no endpoint at {path}.")
                await _send_problem(send, problem, [])
                return
            status, body, ctype = 200, self.metrics.render(), METRICS_CONTENT_TYPE.encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()),
                                (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body})

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        authz = cookie = rid = tp = tstate = csrf = clen = None
        passthrough: list[tuple[bytes, bytes]] = []
        for k, v in scope["headers"]:
            if k == b"authorization":
                authz = v
            elif k == b"cookie":
                cookie = v if cookie is None else cookie + b"; " + v
            elif k == b"x-request-id":
                rid = v
            elif k == b"traceparent":
                tp = v
            elif k == b"tracestate":
                tstate = v
            elif k == b"x-csrf-token":
                csrf = v
            elif k == b"content-length":
                clen = v
            elif k in _DROP_REQUEST or k.startswith(b"x-calmesh-") or k.startswith(b"x-forwarded-"):
                continue
            else:
                passthrough.append((k, v))

        request_id = rid.decode("latin-1") if rid is not None else ""
        if not _REQUEST_ID.match(request_id):
            request_id = os.urandom(16).hex()
        span = self._start_span(method, tp)
        ctx = span.get_span_context()
        traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
        ids = [(b"x-request-id", request_id.encode()), (b"traceparent", traceparent.encode())]
        status = 500
        route_label = "unmatched"
        try:
            path: str = scope["path"]
            match = self._matches.get((method, path))
            if match is None:
                match = self.table.match(method, path)
                if len(self._matches) >= _MEMO_MAX:
                    self._matches.clear()
                self._matches[(method, path)] = match
            route = match.route
            if route is None:
                if match.allowed:
                    allow = ", ".join(match.allowed)
                    raise Problem(405, "method_not_allowed", f"{method} is not allowed here; use {allow}.",
                                  headers={"Allow": allow})
                raise Problem(404, "route_not_found", f"There is no endpoint at {path}.")
            route_label = route.path
            span.update_name(f"{method} {route.path}")
            if clen is not None:
                try:
                    length = int(clen)
                except ValueError:
                    raise Problem(400, "bad_request", "Content-Length is not a number.") from None
                if length > self.max_body:
                    raise _too_large(self.max_body)
            # NUL characters in the path or the query: a 400 here, never a database error behind.
            check_target(path, scope.get("query_string", b""))

            identity: Identity | None = None
            session_token: str | None = None
            if route.auth != _PUBLIC_ONLY:
                if authz is not None:
                    identity = await self._checked_key_identity(scope, authz)
                    if not route.allows_key_scope(identity.scope):
                        raise _insufficient(route, identity)
                elif cookie is not None and SESSION in route.auth:
                    session_token = parse_cookies(cookie.decode("latin-1")).get(SESSION_COOKIE)
                    if session_token:
                        identity = await self._session_identity(session_token)
                        if identity is None:
                            session_token = None
                            if not route.public:
                                raise Unauthorized("invalid_session",
                                                   "The session has ended or expired, or the cookie is not valid: sign in again.")
                        elif not csrf_ok(self.session_secret, method, session_token,
                                         csrf.decode("latin-1") if csrf is not None else None):
                            raise Problem(403, "csrf_failed",
                                          "Send the value of the calmesh_csrf cookie in the X-CSRF-Token header.")
                if identity is None and not route.public:
                    if SESSION in route.auth and KEY not in route.auth:
                        raise Unauthorized("unauthorized", "Sign in: this endpoint needs a dashboard session.")
                    raise Unauthorized("unauthorized",
                                       "Authentication is required: send Authorization: Bearer cm_live_… or sign in.")

            if route.rate_limited:
                if identity is not None:
                    limiter = self.key_limiter
                    bucket = identity.key_id if identity.key_id is not None else "u:" + identity.user_id
                else:
                    limiter, bucket = self.public_limiter, client_address(scope)
                wait = limiter.hit(bucket)
                if wait is None:  # this replica's lease is spent: a batch from the shared bucket
                    wait = await limiter.acquire(bucket)
                ids = ids + limiter.headers(bucket)
                if wait:
                    raise Problem(429, "rate_limited", "Too many requests; slow down and retry after a moment.",
                                  headers=retry_after(wait))
            if identity is not None and identity.key_id is not None:
                # API requests (those made with a key) count against the plan's daily quota.
                wait = self.quota.hit(identity.user_id, identity.plan)
                if wait:
                    raise daily_quota_exceeded(identity.plan, self.quota.allowed(identity.plan), int(wait) + 1)
                self.cache.mark_used(identity.key_id)

            if route.service == GATEWAY:
                scope["calmesh"] = RequestContext(route, match.params, request_id, identity, session_token)
                status = await self._inner(scope, receive, send, ids)
            else:
                if route.cookies and cookie is not None:
                    passthrough = [*passthrough, *_forwarded_cookies(route, cookie)]
                status = await self._forward(scope, receive, send, route, identity, passthrough, clen,
                                             request_id, traceparent, tstate, ids)
        except _ClientGone:
            status = 499
        except Problem as problem:
            status = problem.status
            await _send_problem(send, problem, ids)
        except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into an opaque 500
            if is_database_outage(exc):
                # The gateway's database is restarting: a 503 the client may retry, one log line.
                outage("database").failed(exc)
                status = 503
                await _send_problem(send, Problem(503, "service_unavailable", "CalMesh is restarting a component; "
                                                  "try again shortly.", headers=retry_after(RETRY_AFTER_SECONDS)), ids)
            else:
                log.error("gateway_error", path=scope.get("path"), error=repr(exc), exc_info=exc)
                status = 500
                await _send_problem(send, Problem(500, "internal_error", "Something went wrong on our side; it has been logged."), ids)
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
            seconds = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.observe_request(route_label, method, status, seconds)
            if self.access_log:
                log.info("http_request", method=method, route=route_label, path=scope["path"], status=status,
                         duration_ms=round(seconds * 1000, 3), request_id=request_id,
                         trace_id=f"{ctx.trace_id:032x}")

    def _start_span(self, method: str, tp: bytes | None) -> trace.Span:
        if self.record_spans:
            parent = extract_context({"traceparent": tp.decode("latin-1")}) if tp is not None else None
            return self.tracer.start_span(f"gateway {method}", context=parent, kind=SpanKind.SERVER)
        parent_ctx = _parse_traceparent(tp) if tp is not None else None
        if parent_ctx is not None:
            trace_id, flags = parent_ctx
        else:
            trace_id, flags = random.getrandbits(128) or 1, TraceFlags.SAMPLED
        return NonRecordingSpan(SpanContext(trace_id, random.getrandbits(64) or 1, is_remote=False,
                                            trace_flags=TraceFlags(flags)))

    # Authentication --------------------------------------------------------------------------

    async def _checked_key_identity(self, scope: dict[str, Any], authz: bytes) -> Identity:
        """`_key_identity`, behind a per-address limit on failed attempts: an address that has sent
        too many bad keys gets a 429 before its next key is hashed or looked up."""
        address = client_address(scope)
        wait = self.bad_key_limiter.denied(address)
        if wait:
            raise _too_many_bad_keys(wait)
        try:
            return await self._key_identity(authz)
        except Unauthorized:
            if await self.bad_key_limiter.take(address):
                raise _too_many_bad_keys(self.bad_key_limiter.denied(address) or 1.0) from None
            raise

    async def _key_identity(self, authz: bytes) -> Identity:
        key_hash = self._key_hashes.get(authz)
        if key_hash is None:
            key_hash = self._parse_authorization(authz)
            if len(self._key_hashes) >= _MEMO_MAX:
                self._key_hashes.clear()
            self._key_hashes[authz] = key_hash
        # The key is found by its SHA-256 in a hash table: nothing about the key leaks by timing.
        identity = self.cache.cached_key(key_hash) or await self.cache.lookup_key(key_hash)
        if identity is None:
            raise Unauthorized("invalid_api_key", "This API key is not known: check that it was copied whole.")
        if identity.revoked:
            raise Unauthorized("api_key_revoked", "This API key has been revoked.")
        if identity.expires_at is not None and identity.expires_at <= time.time():
            raise Unauthorized("api_key_expired", "This API key has expired.")
        return identity

    @staticmethod
    def _parse_authorization(authz: bytes) -> str:
        """The hash of the well-formed key in an Authorization header, else a 401 saying why."""
        scheme, _, value = authz.decode("latin-1").strip().partition(" ")
        key = value.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("invalid_authorization",
                               "The Authorization header must be 'Bearer cm_live_…' (an API key).")
        try:
            check_key_format(key)
        except MalformedKey as exc:
            raise Unauthorized("invalid_api_key", str(exc)) from None
        return hash_key(key)

    async def _session_identity(self, token: str) -> Identity | None:
        if not looks_like_session_token(token):
            return None
        return await self.cache.session(session_hash(self.session_secret, token))

    # Dispatch --------------------------------------------------------------------------------

    async def _inner(self, scope: dict[str, Any], receive: Any, send: Any, ids: list[tuple[bytes, bytes]]) -> int:
        status = 500

        async def send_with_ids(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *ids]
            await send(message)

        # The gateway's own handlers log with the request id (forwarded requests log nothing here).
        structlog.contextvars.bind_contextvars(request_id=ids[0][1].decode())
        try:
            await self.inner(scope, receive, send_with_ids)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
        return status

    async def _forward(self, scope: dict[str, Any], receive: Any, send: Any, route: Route, identity: Identity | None,
                       passthrough: list[tuple[bytes, bytes]], clen: bytes | None, request_id: str, traceparent: str, tstate: bytes | None,
                       ids: list[tuple[bytes, bytes]]) -> int:
        body = b""
        if clen != b"0" and scope["method"] not in ("GET", "HEAD"):
            body = await _read_body(receive, self.max_body)
            if body:
                check_body(body, next((v for k, v in passthrough if k == b"content-type"), None))
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in passthrough]
        if identity is not None:
            headers += identity.headers
        else:
            headers.append(("x-calmesh-internal-secret", self.settings.internal_secret))
        headers.append(("x-request-id", request_id))
        headers.append(("traceparent", traceparent))
        if tstate is not None:
            headers.append(("tracestate", tstate.decode("latin-1")))
        client = scope.get("client")
        if client:
            headers.append(("x-forwarded-for", client[0]))
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        forwarder: Forwarder = self._forwarder_ref()
        status, out, payload = await forwarder.forward(route.service, scope["method"], path, query, headers, body)
        out.append((b"content-length", str(len(payload)).encode()))
        out.append(_VIA)  # RFC 9110: a forwarded message says so; it also tells the service's answers apart
        out.extend(ids)
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": payload})
        return status


_PUBLIC_ONLY = frozenset({"public"})
_PROBE_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


def _forwarded_cookies(route: Route, cookie: bytes) -> list[tuple[bytes, bytes]]:
    """The request's cookies that `route` passes on to its service (by name prefix), as one Cookie
    header; never the session cookie or any other."""
    kept = [f"{name}={value}" for name, value in parse_cookies(cookie.decode("latin-1")).items()
            if name.startswith(route.cookies)]
    return [(b"cookie", "; ".join(kept).encode("latin-1"))] if kept else []


_TRACEPARENT = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def _parse_traceparent(value: bytes) -> tuple[int, int] | None:
    """(trace id, flags) of a valid W3C traceparent, else None (a new trace is started)."""
    m = _TRACEPARENT.match(value.strip())
    if m is None or m.group(1) == b"ff":
        return None
    trace_id = int(m.group(2), 16)
    if trace_id == 0 or int(m.group(3), 16) == 0:
        return None
    return trace_id, int(m.group(4), 16)
_MEMO_MAX = 4096
_VIA = (b"via", b"1.1 calmesh-gateway")


def _too_large(limit: int) -> Problem:
    return Problem(413, "payload_too_large", f"The request body is larger than {limit} bytes.")


def _too_many_bad_keys(wait: float) -> Problem:
    return Problem(429, "too_many_failed_attempts",
                   "Too many requests with unknown or invalid API keys from this address; retry later.",
                   headers=retry_after(wait))


def _insufficient(route: Route, identity: Identity) -> Problem:
    required = route.required_scope
    if required == "session":
        detail = "This endpoint is for the signed-in dashboard user; an API key cannot call it."
    else:
        detail = f"This API key has scope '{identity.scope}'; this endpoint needs '{required}'."
    return Problem(403, "insufficient_scope", detail, required_scope=required)


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


class _ClientGone(Exception):
    pass


async def _send_problem(send: Any, problem: Problem, ids: list[tuple[bytes, bytes]]) -> None:
    body = problem_bytes(problem)
    headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in problem.headers.items()]
    headers += ids
    try:
        await send({"type": "http.response.start", "status": problem.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except Exception:  # noqa: BLE001 - the client has gone or a response had started: nothing to tell
        pass


__all__ = ["GatewayFront", "RequestContext"]
