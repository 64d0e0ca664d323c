"""The availability service: wiring and lifespan.

Stateless and horizontally scalable: it reads the merged-events projection (``sync.event_instances``)
and keeps only a cache of calendars in memory, kept current by the connections context's events.
Its own schema holds nothing but Idempotency-Keys of event-creating POSTs.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import uvicorn
from litestar import Litestar

from calmesh_common.logging import setup_logging
from calmesh_common.service import SECRET_HEADER, ServiceDeps, create_service_app, proxy_options
from calmesh_common.settings import Settings
from calmesh_common.tracing import setup_tracing

from .api import CalendarRoutes
from .calendars import CalendarDirectory, http_fetcher
from .find_api import FindRoutes
from .timeline import Timelines

NAME = "availability"
SCHEMA = "availability"

DESCRIPTION = ("Merged events, free/busy and conflicts of unified calendars, and find-a-time across several, read "
               "from the projection.")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release hook of the read pool: its queries change no session state (no SET, LISTEN, advisory
    lock or cursor), so the default reset round trip on every release is skipped. An open
    transaction is still rolled back by asyncpg itself before this runs."""


async def _start_read_pool(deps: ServiceDeps) -> None:
    """The pool of projection reads: read-only at the server, no reset query per release (the hot
    path then costs one round trip, not two)."""
    settings = deps.settings
    deps.extras["read_pool"] = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        reset=_keep_session,
        server_settings={"application_name": "calmesh-availability-read", "default_transaction_read_only": "on"},
    )


async def _stop_read_pool(deps: ServiceDeps) -> None:
    pool: asyncpg.Pool | None = deps.extras.pop("read_pool", None)
    if pool is not None:
        await pool.close()


async def _start_cpu_pool(deps: ServiceDeps) -> None:
    """A bounded pool of threads for the CPU-bound part of answers (the conflicts sweep): never on
    the event loop, and never more of them at once than the setting allows."""
    deps.extras["cpu"] = ThreadPoolExecutor(max_workers=deps.settings.availability_cpu_workers,
                                            thread_name_prefix="availability-cpu")


async def _stop_cpu_pool(deps: ServiceDeps) -> None:
    pool: ThreadPoolExecutor | None = deps.extras.pop("cpu", None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


async def _start_timelines(deps: ServiceDeps) -> None:
    """Busy timelines of calendars in memory, checked against the projection on every read
    (timeline.py); off with CALMESH_AVAILABILITY_TIMELINES=0."""
    if deps.settings.availability_timelines:
        deps.extras["timelines"] = Timelines()


async def _start_directory(deps: ServiceDeps) -> None:
    assert deps.http is not None and deps.nc is not None
    settings = deps.settings
    fetch = http_fetcher(deps.http, settings.service_url("connections"), settings.internal_secret, SECRET_HEADER)
    directory = CalendarDirectory(fetch, ttl_seconds=settings.calendar_cache_ttl_seconds)
    await directory.subscribe(deps.nc)
    deps.extras["calendars"] = directory


async def _stop_directory(deps: ServiceDeps) -> None:
    directory: CalendarDirectory | None = deps.extras.pop("calendars", None)
    if directory is not None:
        await directory.close()


def create_app(settings: Settings) -> Litestar:
    return create_service_app(
        settings,
        name=NAME,
        schema=SCHEMA,
        route_handlers=[CalendarRoutes, FindRoutes],
        on_startup=[_start_read_pool, _start_cpu_pool, _start_timelines, _start_directory],
        on_shutdown=[_stop_directory, _stop_cpu_pool, _stop_read_pool],
        title="CalMesh availability",
        description=DESCRIPTION,
    )


def listening_socket(host: str, port: int) -> socket.socket:
    """The service's socket, bound with SO_REUSEPORT: more replicas started on the same host and port
    share its connections (the kernel spreads them), so scaling out on one machine needs no proxy."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def main() -> None:
    """``calmesh-availability``: like every service's entry point (calmesh_common.service.run_service),
    but on a port that several replicas may share."""
    settings = Settings.from_env(service_name=NAME)
    setup_logging(NAME, settings.log_level, settings.log_json)
    setup_tracing(NAME, console=settings.otel_console)
    settings.require("database_url", "internal_secret")
    sock = listening_socket(settings.host, settings.port)
    config = uvicorn.Config(
        create_app(settings),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
        **proxy_options(settings),
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
