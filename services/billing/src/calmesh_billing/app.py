"""The billing service: wiring and lifespan.

Owns plans and subscriptions (an event-sourced aggregate per user, `domain.py`), talks to Mollie
(`mollie.py`), counts usage from other contexts' events (`consumers.py`), and ends paid periods
and grace periods that have run out (the sweeper below).
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
from litestar import Litestar

from calmesh_common.consumer import DurableConsumer
from calmesh_common.logging import get_logger
from calmesh_common.metrics import ConsumerRef
from calmesh_common.service import ServiceDeps, create_service_app, run_service
from calmesh_common.settings import Settings

from .api import BillingController
from .consumers import usage_consumers
from .handlers import Billing
from .mollie import MollieClient

NAME = "billing"
SCHEMA = "billing"

log = get_logger(__name__)


async def stop_consumer(consumer: DurableConsumer) -> None:
    sub = getattr(consumer, "_sub", None)  # DurableConsumer has no close() of its own
    if sub is not None:
        try:
            await sub.unsubscribe()
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("billing_unsubscribe_failed", consumer=consumer.spec.name, error=repr(exc))


async def sweep_forever(billing: Billing, interval: float) -> None:
    while True:
        try:
            ended = await billing.sweep()
            if ended:
                log.info("billing_sweep", ended=ended)
        except (OSError, ConnectionError) as exc:
            log.warning("billing_sweep_failed", error=repr(exc))
        except Exception as exc:  # noqa: BLE001 - the sweeper must outlive a bad row; it is logged
            log.error("billing_sweep_failed", error=repr(exc), exc_info=exc)
        await asyncio.sleep(interval)


def create_app(settings: Settings, *, schema: str = SCHEMA) -> Litestar:
    consumers: list[DurableConsumer] = []
    tasks: list[asyncio.Task[None]] = []

    async def start(deps: ServiceDeps) -> None:
        assert deps.pool is not None and deps.http is not None and deps.js is not None
        mollie = MollieClient(deps.http, settings.mollie_api_base, settings.mollie_api_key)
        billing = Billing(deps.pool, deps.store, schema, mollie, settings)
        deps.extras["billing"] = billing
        tasks.append(
            asyncio.create_task(sweep_forever(billing, settings.billing_sweep_interval_seconds), name="billing-sweep")
        )
        # The usage consumers are run here rather than by the service kit, so that shutdown can
        # unsubscribe them: a pull subscription whose fetch was cancelled holds up nc.drain() 30 s.
        for spec, handler in usage_consumers(schema):
            consumer = DurableConsumer(deps.pool, deps.js, spec, handler)
            await consumer.subscribe()
            consumers.append(consumer)
            tasks.append(asyncio.create_task(consumer.run(), name=f"billing-{spec.name}"))
            deps.consumers.append(ConsumerRef(spec.stream, spec.name))
        # Run here, not by the kit: /readyz checks them through "loops".
        deps.extras.setdefault("loops", []).extend(tasks)
        if not settings.mollie_api_key:
            log.warning("billing_without_mollie", detail="CALMESH_MOLLIE_API_KEY is empty: subscribe answers 502")

    async def stop(_deps: ServiceDeps) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for consumer in consumers:
            await stop_consumer(consumer)
        tasks.clear()
        consumers.clear()

    return create_service_app(
        settings,
        name=NAME,
        schema=schema,
        route_handlers=[BillingController],
        on_startup=[start],
        on_shutdown=[stop],
        title="CalMesh billing",
        description="Plans and subscriptions (Mollie): GET /billing, subscribe, cancel, Mollie's webhook.",
    )


def main() -> None:
    run_service(NAME, create_app)


if __name__ == "__main__":
    main()
