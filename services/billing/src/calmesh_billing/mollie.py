"""A small client of the Mollie REST API v2 (payments, customers, subscriptions), on httpx.

Only what billing uses. Every call carries the API key as a Bearer token; creating calls carry an
``Idempotency-Key`` so that a retried request (a crash between Mollie's answer and our commit)
does not create a second payment or subscription.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


class MollieError(Exception):
    """Mollie could not be reached or refused the request (the caller may retry later)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MollieNotFound(MollieError):
    """Mollie has no such object (a forged or foreign id)."""


@dataclass(frozen=True)
class Payment:
    id: str
    status: str
    sequence_type: str
    customer_id: str | None
    subscription_id: str | None
    metadata: dict[str, Any]
    checkout_url: str | None
    paid_at: str | None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Payment:
        links = doc.get("_links") or {}
        checkout = links.get("checkout") or {}
        metadata = doc.get("metadata")
        return cls(
            id=str(doc["id"]),
            status=str(doc.get("status", "")),
            sequence_type=str(doc.get("sequenceType", "oneoff")),
            customer_id=doc.get("customerId"),
            subscription_id=doc.get("subscriptionId"),
            metadata=metadata if isinstance(metadata, dict) else {},
            checkout_url=checkout.get("href"),
            paid_at=doc.get("paidAt"),
        )


class MollieClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key

    async def _call(
        self, method: str, path: str, *, json: dict[str, Any] | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        if not self.api_key:
            raise MollieError("CALMESH_MOLLIE_API_KEY is not set")
        headers = {"Authorization": f"Bearer {self.api_key}", "Accept": "application/hal+json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        try:
            response = await self.http.request(method, f"{self.base_url}{path}", json=json, headers=headers)
        except httpx.HTTPError as exc:
            raise MollieError(f"Mollie could not be reached: {type(exc).__name__}") from exc
        if response.status_code == 404:
            raise MollieNotFound(f"Mollie has no {path}", 404)
        if response.status_code >= 400:
            detail = ""
            try:
                detail = str(response.json().get("detail", ""))
            except ValueError:
                pass
            raise MollieError(f"Mollie answered {response.status_code} to {method} {path}: {detail}", response.status_code)
        if response.status_code == 204 or not response.content:
            return {}
        doc = response.json()
        if not isinstance(doc, dict):
            raise MollieError(f"Mollie answered {method} {path} with something unexpected")
        return doc

    async def create_customer(self, *, name: str, metadata: dict[str, Any], idempotency_key: str) -> str:
        doc = await self._call("POST", "/customers", json={"name": name, "metadata": metadata},
                               idempotency_key=idempotency_key)
        return str(doc["id"])

    async def create_first_payment(
        self,
        *,
        customer_id: str,
        amount: str,
        currency: str,
        description: str,
        redirect_url: str,
        webhook_url: str,
        metadata: dict[str, Any],
        idempotency_key: str,
    ) -> Payment:
        doc = await self._call(
            "POST",
            "/payments",
            json={
                "amount": {"currency": currency, "value": amount},
                "description": description,
                "redirectUrl": redirect_url,
                "webhookUrl": webhook_url,
                "customerId": customer_id,
                "sequenceType": "first",
                "metadata": metadata,
            },
            idempotency_key=idempotency_key,
        )
        return Payment.from_json(doc)

    async def get_payment(self, payment_id: str) -> Payment:
        return Payment.from_json(await self._call("GET", f"/payments/{payment_id}"))

    async def list_subscriptions(self, customer_id: str) -> list[dict[str, Any]]:
        doc = await self._call("GET", f"/customers/{customer_id}/subscriptions?limit=250")
        found = (doc.get("_embedded") or {}).get("subscriptions") or []
        return [s for s in found if isinstance(s, dict)]

    async def create_subscription(
        self,
        *,
        customer_id: str,
        amount: str,
        currency: str,
        interval: str,
        start_date: str,
        description: str,
        webhook_url: str,
        metadata: dict[str, Any],
        idempotency_key: str,
    ) -> str:
        doc = await self._call(
            "POST",
            f"/customers/{customer_id}/subscriptions",
            json={
                "amount": {"currency": currency, "value": amount},
                "interval": interval,
                "startDate": start_date,
                "description": description,
                "webhookUrl": webhook_url,
                "metadata": metadata,
            },
            idempotency_key=idempotency_key,
        )
        return str(doc["id"])

    async def cancel_subscription(self, customer_id: str, subscription_id: str) -> None:
        """Cancel; one that is canceled already (Mollie: 404 or 422) counts as done."""
        try:
            await self._call("DELETE", f"/customers/{customer_id}/subscriptions/{subscription_id}")
        except MollieNotFound:
            return
        except MollieError as exc:
            if exc.status == 422:
                return
            raise
