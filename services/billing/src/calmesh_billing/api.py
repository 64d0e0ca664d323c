"""The billing API of the API guide (docs/api-guide.md) (session; the gateway enforces) and Mollie's webhook (public)."""

from __future__ import annotations

import hashlib

import msgspec
from litestar import Controller, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body

from calmesh_common.idempotency import REPLAYED_HEADER, Answer, KeyHeader, Keys, json_answer, response
from calmesh_common.logging import get_logger
from calmesh_common.plans import limits_for
from calmesh_common.problems import FieldError, Problem
from calmesh_common.service import Caller, ServiceDeps
from calmesh_common.timefmt import rfc3339_or_none

from . import store
from .consumers import COUNTERS
from .domain import BillingError
from .handlers import Billing
from .mollie import MollieError

log = get_logger(__name__)


class Subscribe(msgspec.Struct, forbid_unknown_fields=True):
    plan: str
    redirect_url: str


class Checkout(msgspec.Struct):
    checkout_url: str


class Limits(msgspec.Struct):
    connections: int
    booking_pages: int
    api_requests_per_day: int


class BillingStatus(msgspec.Struct):
    plan: str
    status: str
    current_period_end: str | None
    limits: Limits
    #: Counted from the events of the owning contexts; api_requests_today is null: the gateway
    #: meters requests and publishes no count yet.
    usage: dict[str, int | None]


class MollieNotice(msgspec.Struct):
    id: str = ""


def _billing(deps: ServiceDeps) -> Billing:
    billing: Billing = deps.extras["billing"]
    return billing


def _problem(exc: BillingError) -> Problem:
    return Problem(exc.status, exc.code, str(exc))


async def _status(deps: ServiceDeps, user_id: str) -> BillingStatus:
    billing = _billing(deps)
    async with billing.pool.acquire() as conn:
        state = await store.load(conn, billing.events, user_id)
        counted = await store.usage(conn, billing.schema, user_id)
    limits = limits_for(state.plan, deps.settings)
    usage: dict[str, int | None] = {name: counted.get(name, 0) for name in COUNTERS}
    usage["api_requests_today"] = None
    return BillingStatus(
        plan=state.plan,
        status=state.status,
        current_period_end=rfc3339_or_none(state.current_period_end),
        limits=Limits(limits.connections, limits.booking_pages, limits.api_requests_per_day),
        usage=usage,
    )


#: How long a repeat of a checkout in flight waits for its answer (Mollie answers within seconds).
CHECKOUT_WAIT_SECONDS = 10.0


class BillingController(Controller):
    path = "/api/v1/billing"
    tags = ["billing"]

    @get("/", summary="The plan, its status, limits and usage")
    async def show(self, deps: ServiceDeps, caller: Caller) -> BillingStatus:
        return await _status(deps, caller.user_id)

    @post("/subscribe", status_code=201, summary="Start a Mollie checkout for pro (a first payment)")
    async def subscribe(
        self,
        data: Subscribe,
        deps: ServiceDeps,
        caller: Caller,
        idempotency_key: KeyHeader = None,
    ) -> Response[Checkout]:
        if not data.redirect_url.startswith(("https://", "http://")):
            raise Problem(422, "invalid_redirect_url", "redirect_url must be an absolute http or https URL.",
                          errors=[FieldError("redirect_url", "must be an absolute http or https URL")])
        billing = _billing(deps)
        request_hash = hashlib.sha256(msgspec.json.encode(data)).hexdigest()

        async def checkout() -> Answer:
            # Mollie is called with no transaction open; its own keys derive from ours.
            try:
                url = await billing.subscribe(caller.user_id, data.plan, data.redirect_url, caller.handle,
                                              idempotency_key=idempotency_key)
            except BillingError as exc:
                raise _problem(exc) from None
            except MollieError as exc:
                raise Problem(502, "payment_provider_unavailable", f"The payment provider failed: {exc}") from None
            return json_answer(201, Checkout(url))

        # A double-clicked checkout waits for the first one's answer rather than a 409.
        keys = Keys(billing.schema, wait=CHECKOUT_WAIT_SECONDS)
        answer = await keys.run(billing.pool, caller.user_id, idempotency_key, request_hash, checkout)
        if answer.status != 201:  # a refusal kept for the key, replayed
            return response(answer)  # type: ignore[return-value]
        return Response(msgspec.json.decode(answer.body, type=Checkout), status_code=201,
                        headers={REPLAYED_HEADER: "true"} if answer.replayed else None)

    @post("/cancel", status_code=200, summary="Cancel: pro lasts until current_period_end")
    async def cancel(self, deps: ServiceDeps, caller: Caller) -> BillingStatus:
        try:
            await _billing(deps).cancel(caller.user_id)
        except BillingError as exc:
            raise _problem(exc) from None
        except MollieError as exc:
            raise Problem(502, "payment_provider_unavailable", f"The payment provider failed: {exc}") from None
        return await _status(deps, caller.user_id)

    @post("/mollie/webhook", status_code=200, summary="Mollie's payment notice (form field id; no auth)")
    async def mollie_webhook(
        self,
        deps: ServiceDeps,
        data: MollieNotice = Body(media_type=RequestEncodingType.URL_ENCODED),
    ) -> Response[bytes]:
        try:
            outcome = await _billing(deps).on_notice(data.id.strip())
        except MollieError as exc:
            # Mollie retries a notice that did not get a 2xx: exactly what a passing failure needs.
            raise Problem(503, "payment_provider_unavailable", f"Mollie could not be asked: {exc}") from None
        # The same empty 200 whatever came of it: a forger learns nothing.
        log.info("mollie_notice", outcome=outcome)
        return Response(b"", status_code=200)
