"""Calling the connections and sync services of the session `stack` directly, as the gateway would
(internal secret + identity headers)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx


def internal_secret(stack: Any) -> str:
    for child in stack.children:
        secret = child.env.get("CALMESH_INTERNAL_SECRET")
        if secret:
            return str(secret)
    raise RuntimeError("the stack has no internal secret")


def as_user(stack: Any, user_id: str | None = None, *, tz: str = "Europe/Amsterdam", service: str = "connections") -> httpx.Client:
    user_id = user_id or f"usr_{uuid.uuid4().hex[:20]}"
    return httpx.Client(
        base_url=stack.service_urls[service],
        headers={
            "x-calmesh-internal-secret": internal_secret(stack),
            "x-calmesh-user-id": user_id,
            "x-calmesh-scope": "full",
            "x-calmesh-auth": "key",
            "x-calmesh-user-timezone": tz,
        },
        timeout=30,
    )


def internal(stack: Any, service: str) -> httpx.Client:
    return httpx.Client(base_url=stack.service_urls[service], headers={"x-calmesh-internal-secret": internal_secret(stack)}, timeout=30)


def wait_connection(client: httpx.Client, connection_id: str, *, statuses: tuple[str, ...] = ("active", "error", "revoked"),
                    synced_after: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """Poll GET /connections/:id until its status is one of `statuses` with no sync running (and,
    when given, its last_synced_at moved past `synced_after`, or an error shows)."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = client.get(f"/api/v1/connections/{connection_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in statuses and body.get("progress") is None:  # (an active one re-syncing: not yet)
            if synced_after is None or body["status"] != "active" or (body["last_synced_at"] or "") > synced_after:
                return body
        time.sleep(0.1)
    raise AssertionError(f"connection {connection_id} did not reach {statuses}: {body}")
