"""Billing through the gateway of the platform (the session `stack`): the billing routes are for
sessions only, and Mollie's notice reaches billing without credentials (a platform without a Mollie
account answers it 503, so Mollie calls again). The subscription lifecycle against a fake of Mollie,
in-process: services/billing/tests/test_billing_lifecycle.py."""

from __future__ import annotations

import uuid
from typing import Any

import httpx


async def test_through_the_gateway_billing_is_for_sessions_and_mollie_reaches_it_without_auth(stack: Any) -> None:
    suffix = uuid.uuid4().hex[:10]
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as gw:
        r = await gw.post("/api/v1/auth/signup", json={"email": f"bill-{suffix}@example.com",
                                                       "password": "a long enough passphrase", "handle": f"bill-{suffix}"})
        assert r.status_code == 201, r.text
        r = await gw.get("/api/v1/billing")
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["plan"], body["status"], body["current_period_end"]) == ("free", "none", None)
        assert body["limits"] == {"connections": 3, "booking_pages": 2, "api_requests_per_day": 10_000}
        k = await gw.post("/api/v1/api-keys", json={"name": "k", "scope": "full"},
                          headers={"X-CSRF-Token": gw.cookies["calmesh_csrf"]})
        assert k.status_code == 201, k.text
        gw.cookies.clear()
        r = await gw.get("/api/v1/billing", headers={"Authorization": f"Bearer {k.json()['key']}"})
        assert r.status_code == 403 and r.json()["code"] == "insufficient_scope", r.text  # session only

        # Mollie's notice needs no credentials; the platform under test has no Mollie account, so
        # billing cannot ask Mollie and answers 503: Mollie calls again later, nothing changed.
        r = await gw.post("/api/v1/billing/mollie/webhook", data={"id": "tr_e2eforged"})
        assert r.status_code == 503 and r.json()["code"] == "payment_provider_unavailable", r.text
