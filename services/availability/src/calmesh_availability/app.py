"""The availability service: wiring and lifespan.

Stateless and horizontally scalable: it reads the merged-events projection (``sync.event_instances``)
and keeps only a cache of calendars in memory, kept current by the connections context's events.
Its own schema holds nothing but Idempotency-Keys of event-creating POSTs.
"""

from __future__ import annotations

from litestar import Litestar

from calmesh_common.service import SECRET_HEADER, ServiceDeps, create_service_app, run_service
from calmesh_common.settings import Settings

from .api import CalendarRoutes
from .calendars import CalendarDirectory, http_fetcher

NAME = "availability"
SCHEMA = "availability"

DESCRIPTION = "Merged events, free/busy and conflicts of unified calendars, read from the projection."


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
        route_handlers=[CalendarRoutes],
        on_startup=[_start_directory],
        on_shutdown=[_stop_directory],
        title="CalMesh availability",
        description=DESCRIPTION,
    )


def main() -> None:
    run_service(NAME, create_app)


if __name__ == "__main__":
    main()
