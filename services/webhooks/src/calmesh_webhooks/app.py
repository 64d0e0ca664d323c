"""The webhooks service: the API and the dispatcher in one process, scaled on its own.

Any number of these processes share the work through PostgreSQL leases and the durable JetStream
consumers; each serves the webhooks API too.
"""

from __future__ import annotations

import logging

from litestar import Litestar

from calmesh_common.metrics import ConsumerRef
from calmesh_common.service import ServiceDeps, create_service_app, run_service
from calmesh_common.settings import Settings

from .api import WebhooksController
from .dispatcher import USER_AGENT, Dispatcher
from .mapping import AWAITING_PRODUCER, EVENT_MAP
from .signing import SecretBox
from .transport import AiohttpGuardedClient

NAME = "webhooks"


def create_app(settings: Settings, *, schema: str | None = None) -> Litestar:
    """The webhooks app owning `schema` (default ``settings.webhooks_schema``)."""
    schema = schema or settings.webhooks_schema

    async def start_dispatcher(deps: ServiceDeps) -> None:
        assert deps.pool is not None and deps.js is not None
        # httpx logs every request at INFO; a dispatcher sends hundreds a second.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        secrets = SecretBox(settings.encryption_keys)
        client = AiohttpGuardedClient(
            allow_private_networks=settings.allow_private_networks,
            timeout=settings.webhook_timeout_seconds,
            user_agent=USER_AGENT,
            max_connections=settings.webhook_concurrency,
        )
        deps.closing.append(client.aclose)
        dispatcher = Dispatcher(
            deps.pool, deps.js, settings, schema=schema, secrets=secrets, client=client, event_store=deps.store,
            metrics=deps.metrics,
        )
        deps.closing.append(dispatcher.stop)
        deps.extras.update(schema=schema, secrets=secrets, guarded=client, dispatcher=dispatcher)
        await dispatcher.start()
        # The dispatcher runs its own consumers and loops: /metrics samples their backlog and
        # /readyz checks that they still run.
        deps.consumers.extend(ConsumerRef(c.spec.stream, c.spec.name) for c in dispatcher.consumers)
        deps.extras.setdefault("loops", []).extend(dispatcher._tasks)

    mapped = ", ".join(sorted({t for m in EVENT_MAP.values() for t in m.public_types}))
    return create_service_app(
        settings,
        name=NAME,
        schema=schema,
        route_handlers=[WebhooksController],
        on_startup=[start_dispatcher],
        title="CalMesh webhooks",
        description=(
            "Webhook subscriptions and Standard Webhooks v1 deliveries. "
            f"Delivered now: {mapped}. Awaiting their producers: {', '.join(AWAITING_PRODUCER)}."
        ),
    )


def main() -> None:
    run_service(NAME, create_app)


if __name__ == "__main__":
    main()
