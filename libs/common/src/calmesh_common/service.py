"""The service kit: how every CalMesh service is wired.

`create_service_app` builds a litestar app with
- the internal-trust middleware: every request but ``/health`` must carry the internal secret that
  only the gateway knows; the caller's identity arrives in ``X-Calmesh-*`` headers and is read by
  the `caller` dependency;
- request ids and OpenTelemetry spans continued from the gateway's ``traceparent``;
- problem+json for every error;
- one lifespan that owns the asyncpg pool, the NATS connection, the outbox relay, the consumers and
  an httpx client, and drains NATS on shutdown;
- ``/health`` checking the database and NATS.
"""

from __future__ import annotations

import asyncio
import hmac
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
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from opentelemetry import context as otel_context
from opentelemetry import trace

from .consumer import ConsumerSpec, DurableConsumer, Handler
from .eventstore import EventStore
from .logging import get_logger, protect_client_loggers, setup_logging
from .problems import PROBLEM_JSON, Problem, problem_bytes, problem_handler
from .relay import OutboxRelay
from .settings import Settings
from .tracing import extract_context, setup_tracing, traceparent_of, tracer

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
    return state.deps  # type: ignore[no-any-return]


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


def _plain_problem(status: int, code: str, detail: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = problem_bytes(Problem(status, code, detail))
    return body, [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode())]


class InternalTrustMiddleware:
    """Refuses anything that does not carry the internal secret (but ``/health``); binds the
    request id and continues the trace the gateway started."""

    def __init__(self, app: ASGIApp, secret: str, service: str, open_paths: Sequence[str] = ("/health",)) -> None:
        self.app = app
        self.secret = secret.encode()
        self.service = service
        self.open_paths = tuple(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        if not path.startswith(self.open_paths):
            given = headers.get(SECRET_HEADER, "").encode()
            if not self.secret or not hmac.compare_digest(given, self.secret):
                body, hdrs = _plain_problem(401, "unauthorized", "This service only answers the gateway.")
                await send({"type": "http.response.start", "status": 401, "headers": hdrs})
                await send({"type": "http.response.body", "body": body})
                return
        request_id = headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        token = otel_context.attach(extract_context(headers))
        try:
            with tracer().start_as_current_span(f"{self.service} {scope['method']} {path}", kind=trace.SpanKind.SERVER) as span:
                traceparent = traceparent_of(span)

                async def send_with_ids(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        extra = [(b"x-request-id", request_id.encode())]
                        if traceparent:
                            extra.append((b"traceparent", traceparent.encode()))
                        message["headers"] = list(message.get("headers", [])) + extra
                    await send(message)

                await self.app(scope, receive, send_with_ids)
        finally:
            otel_context.detach(token)
            structlog.contextvars.unbind_contextvars("request_id")


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


@get("/health", include_in_schema=False)
async def health(request: Request[Any, Any, State]) -> Response[dict[str, Any]]:
    deps: ServiceDeps = request.app.state.deps
    checks = {"database": await _check_database(deps), "nats": _check_nats(deps)}
    for name, check in deps.extras.get("health_checks", {}).items():
        checks[name] = await check(deps)
    ok = all(v == "ok" for v in checks.values())
    return Response(
        {"status": "ok" if ok else "down", "service": deps.settings.service_name, "checks": checks},
        status_code=200 if ok else 503,
    )


async def connect_nats(url: str, name: str) -> NATS:
    """Connect with reconnects forever: a NATS restart must not kill a service."""
    return await nats.connect(
        url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5,
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
    open_paths: Sequence[str] = ("/health",),
    title: str | None = None,
    description: str = "",
) -> Litestar:
    """A litestar app for service `name`, owning schema `schema`."""
    deps = ServiceDeps(settings=settings, store=EventStore(schema, context=name))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.deps = deps
        deps.pool = await create_pool(settings, schema)
        deps.nc = await connect_nats(settings.nats_url, f"calmesh-{name}")
        deps.js = deps.nc.jetstream()
        deps.http = httpx.AsyncClient(timeout=httpx.Timeout(15.0))
        relay = OutboxRelay(deps.pool, deps.js, schema)
        deps.tasks.append(asyncio.create_task(relay.run(), name=f"{name}-relay"))
        for spec, handler in consumers:
            consumer = DurableConsumer(deps.pool, deps.js, spec, handler)
            await consumer.subscribe()
            deps.tasks.append(asyncio.create_task(consumer.run(), name=f"{name}-{spec.name}"))
        for hook in on_startup:
            await hook(deps)
        log.info("service_started", service=name, port=settings.port)
        try:
            yield
        finally:
            for hook in on_shutdown:
                await hook(deps)
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
        return InternalTrustMiddleware(app, settings.internal_secret, name, open_paths)

    app = Litestar(
        route_handlers=[health, *route_handlers],
        lifespan=[lifespan],
        dependencies=provided,
        middleware=[trust],
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
        access_log=False,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    """A JSON response encoded once with msgspec (for hand-built bodies)."""
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json", headers=headers)
