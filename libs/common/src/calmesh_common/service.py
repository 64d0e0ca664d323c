"""The service kit: how every CalMesh service is wired.

`create_service_app` builds a litestar app with
- the internal-trust middleware: every request but ``/health`` must carry the internal secret that
  only the gateway knows; the caller's identity arrives in ``X-Calmesh-*`` headers and is read by
  the `caller` dependency;
- request ids and OpenTelemetry spans continued from the gateway's ``traceparent``;
- problem+json for every error, and a 400 for NUL characters and JSON nested too deep
  (calmesh_common.requestguard) before anything is decoded;
- one lifespan that owns the asyncpg pool, the NATS connection, the outbox relay, the consumers and
  an httpx client (which passes the trace context on every internal call), and drains NATS on
  shutdown;
- ``/health`` checking the database and NATS; for orchestrators ``/livez`` (the process answers:
  no I/O) and ``/readyz`` (database, NATS, and every consumer and background loop still attached);
- ``/metrics`` in the Prometheus format (`calmesh_common.metrics`), on the service's port or on a
  port of its own (CALMESH_METRICS_PORT), and one structured access-log line per request.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import msgspec
import nats
import structlog
import uvicorn
from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from opentelemetry import context as otel_context
from opentelemetry import trace

from .consumer import ConsumerSpec, DurableConsumer, Handler
from .eventstore import EventStore
from .logging import get_logger, outage, protect_client_loggers, setup_logging
from .metrics import METRICS_MEDIA_TYPE, ConsumerRef, Metrics, MetricsSampler
from .problem_handler import problem_handler
from .problems import PROBLEM_JSON, Problem, problem_bytes
from .relay import OutboxRelay
from .requestguard import RequestGuardMiddleware
from .settings import Settings
from .tracing import extract_context, inject_headers, setup_tracing, traceparent_of, tracer

log = get_logger(__name__)

SECRET_HEADER = "x-calmesh-internal-secret"
USER_HEADER = "x-calmesh-user-id"
SCOPE_HEADER = "x-calmesh-scope"
AUTH_HEADER = "x-calmesh-auth"
KEY_HEADER = "x-calmesh-key-id"
HANDLE_HEADER = "x-calmesh-user-handle"
TZ_HEADER = "x-calmesh-user-timezone"
PLAN_HEADER = "x-calmesh-user-plan"
REQUEST_ID_HEADER = "x-request-id"

SCOPES = ("read", "write", "book", "full")

#: Paths every service answers without the internal secret: health for orchestrators and metrics.
PROBE_PATHS = ("/health", "/livez", "/readyz", "/metrics")


@dataclass(frozen=True)
class Caller:
    """Who is asking, as the gateway established it."""

    user_id: str
    auth: str  # "session" | "key"
    scope: str  # "full" for a session; the key's scope otherwise
    key_id: str | None = None
    handle: str | None = None
    timezone: str | None = None
    plan: str = "free"


def caller_from_headers(headers: Any) -> Caller | None:
    user_id = headers.get(USER_HEADER)
    if not user_id:
        return None
    return Caller(
        user_id=user_id,
        auth=headers.get(AUTH_HEADER, "key"),
        scope=headers.get(SCOPE_HEADER, "read"),
        key_id=headers.get(KEY_HEADER) or None,
        handle=headers.get(HANDLE_HEADER) or None,
        timezone=headers.get(TZ_HEADER) or None,
        plan=headers.get(PLAN_HEADER) or "free",
    )


def _provide_deps(state: State) -> ServiceDeps:
    deps: ServiceDeps = state.deps
    return deps


async def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    caller = caller_from_headers(request.headers)
    if caller is None:
        raise Problem(401, "unauthorized", "Authentication is required.")
    return caller


async def provide_optional_caller(request: Request[Any, Any, Any]) -> Caller | None:
    return caller_from_headers(request.headers)


@dataclass
class ServiceDeps:
    """What a service's handlers use, created by the lifespan and kept on ``app.state.deps``."""

    settings: Settings
    store: EventStore
    pool: asyncpg.Pool | None = None
    nc: NATS | None = None
    js: JetStreamContext | None = None
    http: httpx.AsyncClient | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    metrics: Metrics | None = None
    #: Durable consumers whose backlog /metrics reports (a start-up hook may add its own).
    consumers: list[ConsumerRef] = field(default_factory=list)
    #: Closed at shutdown after the on_shutdown hooks, the last added first: a start-up hook adds
    #: the close of what it opens as it opens it.
    closing: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)


def _plain_problem(status: int, code: str, detail: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = problem_bytes(Problem(status, code, detail))
    return body, [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]


class InternalTrustMiddleware:
    """Refuses anything that does not carry the internal secret (but the probe paths); binds the
    request id, continues the trace the gateway started, counts the request in the metrics and
    writes one access-log line for it."""

    def __init__(self, app: ASGIApp, secret: str, service: str, open_paths: Sequence[str] = ("/health",),
                 metrics: Metrics | None = None, access_log: bool = True) -> None:
        self.app = app
        self.secret = secret.encode()
        self.service = service
        self.open_paths = tuple(open_paths)
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        method = scope["method"]
        if not path.startswith(self.open_paths):
            given = headers.get(SECRET_HEADER, "").encode()
            if not self.secret or not hmac.compare_digest(given, self.secret):
                body, hdrs = _plain_problem(401, "unauthorized", "This service only answers the gateway.")
                await send({"type": "http.response.start", "status": 401, "headers": hdrs})
                await send({"type": "http.response.body", "body": body, "more_body": False})
                self._done(scope, method, path, 401, started, None)
                return
        request_id = headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        token = otel_context.attach(extract_context(headers))
        status = 500
        try:
            with tracer().start_as_current_span(f"{self.service} {method} {path}", kind=trace.SpanKind.SERVER) as span:
                traceparent = traceparent_of(span)

                async def send_with_ids(message: Message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]
                        extra = [(b"x-request-id", request_id.encode())]
                        if traceparent:
                            extra.append((b"traceparent", traceparent.encode()))
                        message["headers"] = list(message.get("headers", [])) + extra
                    await send(message)

                await self.app(scope, receive, send_with_ids)
                template = scope.get("path_template")
                if template:
                    span.update_name(f"{self.service} {method} {template}")
                span.set_attribute("http.response.status_code", status)
        finally:
            self._done(scope, method, path, status, started, request_id)
            otel_context.detach(token)
            structlog.contextvars.unbind_contextvars("request_id")

    def _done(self, scope: Scope, method: str, path: str, status: int, started: float, request_id: str | None) -> None:
        seconds = time.perf_counter() - started
        # The route template (litestar sets it once routed) keeps the label set small.
        route = scope.get("path_template") or "unmatched"
        if self.metrics is not None:
            self.metrics.observe_request(route, method, status, seconds)
        if self.access_log and path not in PROBE_PATHS:
            log.info("http_request", method=method, route=route, path=path, status=status,
                     duration_ms=round(seconds * 1000, 3), **({"request_id": request_id} if request_id else {}))


async def _check_database(deps: ServiceDeps) -> str:
    if deps.pool is None:
        return "not configured"
    try:
        async with asyncio.timeout(deps.settings.health_timeout_seconds):
            async with deps.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        return "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is a health check
        return f"down: {type(exc).__name__}"


def _check_nats(deps: ServiceDeps) -> str:
    if deps.nc is None:
        return "not configured"
    return "ok" if deps.nc.is_connected else "down: disconnected"


async def _checks(deps: ServiceDeps) -> dict[str, str]:
    checks = {"database": await _check_database(deps), "nats": _check_nats(deps)}
    for name, check in deps.extras.get("health_checks", {}).items():
        checks[name] = await check(deps)
    return checks


def _check_loops(deps: ServiceDeps) -> str:
    """Every consumer and background loop of the service is still running (one that ended, by a
    crash or otherwise, means this replica no longer does its share)."""
    if not deps.extras.get("started"):
        return "down: starting"
    ended = [t.get_name() for t in (*deps.tasks, *deps.extras.get("loops", ())) if t.done()]
    return "ok" if not ended else f"down: {', '.join(sorted(ended))} stopped"


@get("/health", include_in_schema=False)
async def health(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    deps: ServiceDeps = request.app.state.deps
    checks = await _checks(deps)
    ok = all(v == "ok" for v in checks.values())
    return Response(
        {"status": "ok" if ok else "down", "service": deps.settings.service_name, "checks": checks},
        status_code=200 if ok else 503,
    )


@get("/livez", include_in_schema=False)
async def livez() -> Response[bytes]:
    """Liveness: the event loop answers. No I/O, so a slow database never gets a pod restarted."""
    return Response(b'{"status":"ok"}', media_type="application/json")


@get("/readyz", include_in_schema=False)
async def readyz(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    """Readiness: the database and NATS answer and every consumer is attached."""
    deps: ServiceDeps = request.app.state.deps
    checks = await _checks(deps)
    checks["consumers"] = _check_loops(deps)
    ok = all(v == "ok" for v in checks.values())
    return Response(
        {"status": "ok" if ok else "down", "service": deps.settings.service_name, "checks": checks},
        status_code=200 if ok else 503,
    )


@get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request[Any, Any, State]) -> Response[bytes]:
    deps: ServiceDeps = request.app.state.deps
    if deps.metrics is None or deps.settings.metrics_port:
        raise Problem(404, "not_found", "Metrics are served on the metrics port (CALMESH_METRICS_PORT).")
    return Response(deps.metrics.render(), media_type=METRICS_MEDIA_TYPE)  # litestar adds the charset


def internal_http_client(timeout: float = 15.0) -> httpx.AsyncClient:
    """The service's pooled httpx client. A call to another service (it carries the internal
    secret) also carries the current trace context, so the callee's spans join the trace."""

    async def add_trace_context(request: httpx.Request) -> None:
        if SECRET_HEADER in request.headers and "traceparent" not in request.headers:
            request.headers.update(inject_headers({}))

    return httpx.AsyncClient(timeout=httpx.Timeout(timeout), event_hooks={"request": [add_trace_context]})


async def connect_nats(url: str, name: str) -> NATS:
    """Connect with reconnects forever: a NATS restart must not kill a service. While NATS is away
    the service logs one line, then one a minute, and one when it is back (nats-py's default error
    callback logs a traceback on every reconnect attempt, twice a second)."""
    away = outage("nats")

    async def on_error(exc: Exception) -> None:
        away.failed(exc)

    async def on_disconnected() -> None:
        away.failed("disconnected")

    async def on_reconnected() -> None:
        away.recovered()

    return await nats.connect(
        url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5,
        error_cb=on_error, disconnected_cb=on_disconnected, reconnected_cb=on_reconnected,
    )


async def create_pool(settings: Settings, schema: str) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        server_settings={"search_path": f"{schema},public", "application_name": f"calmesh-{settings.service_name}"},
    )


StartupHook = Callable[[ServiceDeps], Awaitable[None]]


def create_service_app(
    settings: Settings,
    *,
    name: str,
    schema: str,
    route_handlers: Sequence[Any] = (),
    consumers: Sequence[tuple[ConsumerSpec, Handler]] = (),
    on_startup: Sequence[StartupHook] = (),
    on_shutdown: Sequence[StartupHook] = (),
    dependencies: dict[str, Provide] | None = None,
    open_paths: Sequence[str] = PROBE_PATHS,
    title: str | None = None,
    description: str = "",
) -> Litestar:
    """A litestar app for service `name`, owning schema `schema`."""
    deps = ServiceDeps(settings=settings, store=EventStore(schema, context=name), metrics=Metrics(name))
    open_paths = tuple(dict.fromkeys((*PROBE_PATHS, *open_paths)))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.deps = deps
        deps.pool = await create_pool(settings, schema)
        deps.nc = await connect_nats(settings.nats_url, f"calmesh-{name}")
        deps.js = deps.nc.jetstream()
        deps.http = internal_http_client(15.0)
        relay = OutboxRelay(deps.pool, deps.js, schema)
        deps.tasks.append(asyncio.create_task(relay.run(), name=f"{name}-relay"))
        for spec, handler in consumers:
            consumer = DurableConsumer(deps.pool, deps.js, spec, handler)
            await consumer.subscribe()
            deps.tasks.append(asyncio.create_task(consumer.run(), name=f"{name}-{spec.name}"))
            deps.consumers.append(ConsumerRef(spec.stream, spec.name))
        for hook in on_startup:
            await hook(deps)
        assert deps.metrics is not None
        sampler = MetricsSampler(deps.metrics, deps.js, deps.pool, schema, deps.consumers)
        deps.tasks.append(asyncio.create_task(sampler.run(), name=f"{name}-metrics"))
        stop_metrics = deps.metrics.serve(settings.host, settings.metrics_port) if settings.metrics_port else None
        deps.extras["started"] = True
        log.info("service_started", service=name, port=settings.port)
        try:
            yield
        finally:
            deps.extras["started"] = False
            if stop_metrics is not None:
                stop_metrics()
            for hook in on_shutdown:
                await hook(deps)
            while deps.closing:
                await deps.closing.pop()()
            for task in deps.tasks:
                task.cancel()
            await asyncio.gather(*deps.tasks, return_exceptions=True)
            deps.tasks.clear()
            await deps.http.aclose()
            if deps.nc.is_connected:
                await deps.nc.drain()
            await deps.pool.close()

    provided = {
        "deps": Provide(_provide_deps, sync_to_thread=False),
        "caller": Provide(provide_caller),
        "optional_caller": Provide(provide_optional_caller),
        **(dependencies or {}),
    }

    def trust(app: ASGIApp) -> ASGIApp:
        return InternalTrustMiddleware(app, settings.internal_secret, name, open_paths, deps.metrics,
                                       access_log=settings.access_log)

    def guard(app: ASGIApp) -> ASGIApp:
        # NUL characters and JSON nested too deep: a 400 before litestar decodes the request.
        return RequestGuardMiddleware(app, settings.max_body_bytes)

    app = Litestar(
        route_handlers=[health, livez, readyz, metrics_endpoint, *route_handlers],
        lifespan=[lifespan],
        dependencies=provided,
        middleware=[trust, guard],
        exception_handlers={Exception: problem_handler},
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title=title or f"CalMesh {name}",
            version="1.0.0",
            description=description,
            path="/schema",
            render_plugins=[ScalarRenderPlugin()],
        ),
        debug=False,
    )
    # Building the app re-configures the root logger (litestar's default logging config): keep
    # request URLs, which may carry secrets, out of the logs after that too.
    protect_client_loggers()
    return app


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's proxy-header options for every CalMesh process.

    uvicorn believes ``X-Forwarded-For`` from 127.0.0.1 by default, so anyone on the host (or any
    client, when a local proxy passes the header on) could pick the address the per-address limits
    count. CalMesh reads proxy headers only from the proxies named in ``CALMESH_TRUSTED_PROXIES``.
    """
    if not settings.trusted_proxies:
        return {"proxy_headers": False, "forwarded_allow_ips": ""}
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(settings.trusted_proxies)}


def run_service(name: str, factory: Callable[[Settings], Litestar], argv: Sequence[str] | None = None) -> None:
    """Console entry point of a service: read settings, set up logs and traces, serve."""
    settings = Settings.from_env(service_name=name)
    setup_logging(name, settings.log_level, settings.log_json)
    setup_tracing(name, console=settings.otel_console)
    settings.require("database_url", "internal_secret")
    app = factory(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,  # the service kit writes its own structured access line
        log_config=None,  # uvicorn's loggers go through setup_logging's JSON handler
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
        **proxy_options(settings),
    )


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    """A JSON response encoded once with msgspec (for hand-built bodies)."""
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json", headers=headers)
