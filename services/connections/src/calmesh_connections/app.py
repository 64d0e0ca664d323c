"""The connections service: connections (encrypted credentials, OAuth), unified calendars and their
sources, the sync schedule and push channels; the connection status follows the sync events."""

from __future__ import annotations

import asyncio
from typing import Any

from calmesh_common.consumer import ConsumerSpec, Handler
from calmesh_common.eventstore import EventStore
from calmesh_common.idempotency import IdempotentApp, Keys
from calmesh_common.service import SECRET_HEADER, USER_HEADER, ServiceDeps, create_service_app, run_service
from calmesh_common.settings import Settings

from . import scheduler
from .api import ROUTES as PUBLIC_ROUTES
from .consumers import SPEC as SYNC_STATUS_SPEC
from .consumers import sync_status_handler
from .core import Context
from .crypto import Vault
from .internal import ROUTES as INTERNAL_ROUTES

NAME = "connections"
SCHEMA = "connections"


def _consumers(settings: Settings) -> list[tuple[ConsumerSpec, Handler]]:
    consumers: list[tuple[ConsumerSpec, Handler]] = [(SYNC_STATUS_SPEC, sync_status_handler(settings, EventStore(SCHEMA, context=NAME)))]
    try:
        from calmesh_common.plans import plan_consumer
    except ImportError:  # pragma: no cover
        return consumers
    consumers.append(plan_consumer(SCHEMA, consumer_name=NAME))
    return consumers


def create_app(settings: Settings, *, run_scheduler: bool = True) -> IdempotentApp:
    vault = Vault.from_settings(settings)

    async def start(deps: ServiceDeps) -> None:
        assert deps.pool is not None and deps.js is not None and deps.http is not None
        from calmesh_providers.http import guarded_client

        ctx = Context(settings=settings, vault=vault, pool=deps.pool, store=deps.store, js=deps.js, http=deps.http)
        deps.extras["ctx"] = ctx
        deps.extras["guarded"] = guarded_client(settings)
        if run_scheduler:
            deps.tasks.append(asyncio.create_task(scheduler.run(ctx), name="connections-scheduler"))

    async def stop(deps: ServiceDeps) -> None:
        guarded = deps.extras.get("guarded")
        if guarded is not None:
            await guarded.aclose()

    app = create_service_app(
        settings,
        name=NAME,
        schema=SCHEMA,
        route_handlers=[*PUBLIC_ROUTES, *INTERNAL_ROUTES],
        consumers=_consumers(settings),
        on_startup=[start],
        on_shutdown=[stop],
        title="CalMesh connections",
        description="Calendar connections (Google, Microsoft, iCloud, CalDAV, iCal) and unified calendars.",
    )
    # Every creating POST of the public API honours Idempotency-Key, scoped by the user.
    return IdempotentApp(app, Keys(SCHEMA), lambda: app.state.deps.pool, internal_secret=settings.internal_secret,
                         secret_header=SECRET_HEADER, user_header=USER_HEADER)


def main() -> None:
    def factory(settings: Settings) -> Any:  # an ASGI app: the Litestar app behind the idempotency wrapper
        settings.require("encryption_keys")
        return create_app(settings)

    run_service(NAME, factory)


if __name__ == "__main__":
    main()
