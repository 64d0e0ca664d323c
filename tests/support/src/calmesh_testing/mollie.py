"""A local fake of Mollie's REST API v2: customers, payments, mandates and subscriptions.

Faithful to what billing relies on, as Mollie documents it:

- every call needs ``Authorization: Bearer test_…`` (else 401); errors are
  ``application/hal+json`` problem documents ``{status, title, detail, _links}``; an unknown id is
  404; creating calls honour ``Idempotency-Key`` (the same key answers the first response again);
- payments are created ``open`` with a checkout link (``_links.checkout.href``), and move once to
  a final status: ``paid``, ``failed``, ``canceled`` or ``expired`` (``pending`` and
  ``authorized`` are in-between states); a paid ``first`` payment gives the customer a ``valid``
  mandate;
- a subscription needs a valid mandate (else 422), starts ``active`` and is ``canceled`` by DELETE
  (a second DELETE is 422); its payments are ``recurring`` with ``subscriptionId``;
- Mollie never sends state in a notice: it POSTs ``id=<payment id>`` (form-encoded) to the
  payment's ``webhookUrl`` (a subscription's payments use the subscription's) and the receiver
  must fetch the payment.

Test controls: `complete_checkout` (the customer pays, or not), `charge` (Mollie collects a
subscription's monthly payment), `notify` (Mollie calls again). `calls` records every API call.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from .asgi import lifespan, read_body

FINAL = {"paid", "failed", "canceled", "expired"}
MOVES = {
    "open": {"pending", "authorized", "paid", "failed", "canceled", "expired"},
    "pending": {"paid", "failed", "canceled", "expired"},
    "authorized": {"paid", "canceled", "expired", "failed"},
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(5)}"


class MollieProblem(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


@dataclass
class FakeMollie:
    api_key: str = "test_calmeshfakekey0000000000000000"
    base_url: str = ""  # set once served: http://127.0.0.1:PORT
    #: Extra headers on webhook calls (tests that post straight to a service add the gateway's
    #: internal secret, as the gateway would when forwarding Mollie's call).
    webhook_headers: dict[str, str] = field(default_factory=dict)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    mandates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    _idempotent: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)

    # --- the HTTP API ------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        self.calls.append((method, path))
        status, doc = self._handle(method, path, headers, body)
        payload = httpx.Response(status, json=doc).content if doc is not None else b""
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/hal+json")]})
        await send({"type": "http.response.body", "body": payload})

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any] | None]:
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, self._problem(MollieProblem(401, "Unauthorized Request", "Missing authentication, or failed to authenticate"))
        key = headers.get("idempotency-key")
        remembered = f"{method} {path} {key}" if key and method in ("POST", "PATCH", "DELETE") else None
        if remembered in self._idempotent:
            return self._idempotent[remembered]
        try:
            data = httpx.Response(200, content=body).json() if body else {}
            status, doc = self._route(method, path.removeprefix("/v2").rstrip("/") or "/", data)
        except MollieProblem as exc:
            status, doc = exc.status, self._problem(exc)
        if remembered is not None and status < 500:
            self._idempotent[remembered] = (status, doc or {})
        return status, doc

    def _problem(self, exc: MollieProblem) -> dict[str, Any]:
        return {"status": exc.status, "title": exc.title, "detail": exc.detail,
                "_links": {"documentation": {"href": "https://docs.mollie.com/overview/handling-errors",
                                             "type": "text/html"}}}

    def _route(self, method: str, path: str, data: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        parts = path.strip("/").split("/")
        match method, parts:
            case "POST", ["customers"]:
                return 201, self._create_customer(data)
            case "GET", ["customers", cid]:
                return 200, self._customer(cid)
            case "POST", ["payments"]:
                return 201, self._create_payment(data)
            case "GET", ["payments", pid]:
                if pid not in self.payments:
                    raise MollieProblem(404, "Not Found", f"No payment exists with token {pid}.")
                return 200, self.payments[pid]
            case "GET", ["customers", cid, "mandates"]:
                self._customer(cid)
                found = self.mandates.get(cid, [])
                return 200, {"count": len(found), "_embedded": {"mandates": found}, "_links": {}}
            case "POST", ["customers", cid, "subscriptions"]:
                return 201, self._create_subscription(cid, data)
            case "GET", ["customers", cid, "subscriptions"]:
                self._customer(cid)
                found = [s for s in self.subscriptions.values() if s["customerId"] == cid]
                return 200, {"count": len(found), "_embedded": {"subscriptions": found}, "_links": {}}
            case "GET", ["customers", cid, "subscriptions", sid]:
                return 200, self._subscription(cid, sid)
            case "DELETE", ["customers", cid, "subscriptions", sid]:
                sub = self._subscription(cid, sid)
                if sub["status"] == "canceled":
                    raise MollieProblem(422, "Unprocessable Entity", "The subscription has been canceled")
                sub.update(status="canceled", canceledAt=_now())
                return 200, sub
        raise MollieProblem(404, "Not Found", f"The resource {path} does not exist.")

    def _customer(self, cid: str) -> dict[str, Any]:
        if cid not in self.customers:
            raise MollieProblem(404, "Not Found", f"No customer exists with token {cid}.")
        return self.customers[cid]

    def _subscription(self, cid: str, sid: str) -> dict[str, Any]:
        self._customer(cid)
        sub = self.subscriptions.get(sid)
        if sub is None or sub["customerId"] != cid:
            raise MollieProblem(404, "Not Found", f"No subscription exists with token {sid}.")
        return sub

    def _create_customer(self, data: dict[str, Any]) -> dict[str, Any]:
        cid = _id("cst")
        self.customers[cid] = {
            "resource": "customer", "id": cid, "mode": "test", "name": data.get("name"),
            "email": data.get("email"), "locale": data.get("locale"), "metadata": data.get("metadata"),
            "createdAt": _now(), "_links": {"self": {"href": f"{self.base_url}/v2/customers/{cid}"}},
        }
        return self.customers[cid]

    @staticmethod
    def _amount(data: dict[str, Any]) -> dict[str, str]:
        amount = data.get("amount")
        if not isinstance(amount, dict) or not amount.get("currency") or not amount.get("value"):
            raise MollieProblem(422, "Unprocessable Entity", "The amount is required")
        return {"currency": str(amount["currency"]), "value": str(amount["value"])}

    def _create_payment(self, data: dict[str, Any]) -> dict[str, Any]:
        amount = self._amount(data)
        for required in ("description", "redirectUrl"):
            if not data.get(required):
                raise MollieProblem(422, "Unprocessable Entity", f"The {required} is required")
        sequence = data.get("sequenceType", "oneoff")
        customer_id = data.get("customerId")
        if sequence == "first" and not customer_id:
            raise MollieProblem(422, "Unprocessable Entity", "A first payment needs a customerId")
        if customer_id:
            self._customer(customer_id)
        pid = _id("tr")
        self.payments[pid] = self._payment(pid, amount, str(data["description"]), sequence, customer_id,
                                          data.get("webhookUrl"), data.get("redirectUrl"), data.get("metadata"))
        return self.payments[pid]

    def _payment(self, pid: str, amount: dict[str, str], description: str, sequence: str, customer_id: str | None,
                 webhook_url: str | None, redirect_url: str | None, metadata: Any,
                 subscription_id: str | None = None, mandate_id: str | None = None) -> dict[str, Any]:
        links = {"self": {"href": f"{self.base_url}/v2/payments/{pid}", "type": "application/hal+json"}}
        if sequence != "recurring":
            links["checkout"] = {"href": f"{self.base_url}/checkout/select-method/{pid}", "type": "text/html"}
        return {
            "resource": "payment", "id": pid, "mode": "test", "createdAt": _now(), "status": "open",
            "isCancelable": True, "expiresAt": (datetime.now(UTC) + timedelta(minutes=15)).isoformat(),
            "amount": amount, "description": description, "method": None, "metadata": metadata,
            "profileId": "pfl_fake", "sequenceType": sequence, "redirectUrl": redirect_url,
            "webhookUrl": webhook_url, "customerId": customer_id, "mandateId": mandate_id,
            "subscriptionId": subscription_id, "_links": links,
        }

    def _create_subscription(self, cid: str, data: dict[str, Any]) -> dict[str, Any]:
        self._customer(cid)
        amount = self._amount(data)
        if not data.get("interval") or not data.get("description"):
            raise MollieProblem(422, "Unprocessable Entity", "The interval and the description are required")
        if not any(m["status"] == "valid" for m in self.mandates.get(cid, [])):
            raise MollieProblem(422, "Unprocessable Entity", "The customer has no valid mandates")
        if any(s["customerId"] == cid and s["description"] == data["description"] and s["status"] == "active"
               for s in self.subscriptions.values()):
            raise MollieProblem(422, "Unprocessable Entity", "The description of a subscription must be unique")
        sid = _id("sub")
        start = data.get("startDate") or datetime.now(UTC).date().isoformat()
        self.subscriptions[sid] = {
            "resource": "subscription", "id": sid, "mode": "test", "createdAt": _now(), "status": "active",
            "amount": amount, "times": data.get("times"), "timesRemaining": data.get("times"),
            "interval": data["interval"], "startDate": start, "nextPaymentDate": start,
            "description": data["description"], "method": None,
            "mandateId": self.mandates[cid][-1]["id"], "webhookUrl": data.get("webhookUrl"),
            "metadata": data.get("metadata"), "customerId": cid,
            "_links": {"self": {"href": f"{self.base_url}/v2/customers/{cid}/subscriptions/{sid}"}},
        }
        return self.subscriptions[sid]

    # --- what happens outside the API: the customer pays, Mollie collects, Mollie calls -------------

    def _move(self, pid: str, status: str) -> dict[str, Any]:
        payment = self.payments[pid]
        if status not in MOVES.get(payment["status"], set()):
            raise ValueError(f"a payment cannot go from {payment['status']} to {status}")
        payment["status"] = status
        payment["isCancelable"] = status not in FINAL
        payment[{"paid": "paidAt", "failed": "failedAt", "canceled": "canceledAt", "expired": "expiredAt"}
                .get(status, "updatedAt")] = _now()
        if status in FINAL:
            payment["_links"].pop("checkout", None)  # nothing left to pay
        if status == "paid" and payment["sequenceType"] == "first":
            cid = payment["customerId"]
            mandate = {"resource": "mandate", "id": _id("mdt"), "mode": "test", "status": "valid",
                       "method": "directdebit", "details": {"consumerName": "T. Test",
                                                            "consumerAccount": "NL55INGB0000000000"},
                       "mandateReference": None, "signatureDate": datetime.now(UTC).date().isoformat(),
                       "createdAt": _now()}
            self.mandates.setdefault(cid, []).append(mandate)
            payment["mandateId"] = mandate["id"]
        return payment

    async def notify(self, pid: str) -> int:
        """Mollie calls the payment's webhook with its id; returns the receiver's status."""
        payment = self.payments[pid]
        url = payment["webhookUrl"]
        if payment["subscriptionId"]:
            url = self.subscriptions[payment["subscriptionId"]]["webhookUrl"] or url
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(url, data={"id": pid}, headers=self.webhook_headers)
        return response.status_code

    async def complete_checkout(self, pid: str, status: str = "paid") -> int:
        """The customer finishes (or abandons) the checkout: the payment becomes `status` and
        Mollie notifies. Returns the webhook receiver's status."""
        self._move(pid, status)
        return await self.notify(pid)

    async def charge(self, sid: str, status: str = "paid") -> tuple[str, int]:
        """Mollie collects a subscription's monthly payment, which ends `status`; Mollie notifies.
        Returns the payment id and the receiver's status."""
        sub = self.subscriptions[sid]
        if sub["status"] != "active":
            raise ValueError(f"subscription {sid} is {sub['status']}: Mollie collects nothing")
        pid = _id("tr")
        self.payments[pid] = self._payment(pid, dict(sub["amount"]), sub["description"], "recurring",
                                          sub["customerId"], sub["webhookUrl"], None, sub["metadata"],
                                          subscription_id=sid, mandate_id=sub["mandateId"])
        self._move(pid, "pending")
        self._move(pid, status)
        return pid, await self.notify(pid)

    def active_subscriptions(self, cid: str) -> list[dict[str, Any]]:
        return [s for s in self.subscriptions.values() if s["customerId"] == cid and s["status"] == "active"]
