"""``Idempotency-Key`` on the creating POSTs of the connections service (api.md conventions): a
repeat with the same key and body gets the first response again (with ``Idempotent-Replayed:
true``), a repeat with another body gets 422 ``idempotency_key_reused``, and one that arrives while
the first is still running gets 409 ``idempotency_in_progress``.

It wraps the whole ASGI app, so every POST of the public API is covered the same way. A refusal
about the request itself (4xx but 404, 409, 429) is the key's answer like a success; a 5xx, 404, 409
or 429 may turn out otherwise on a retry, so the key is released.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgspec
from litestar import Litestar

from calmesh_common.problems import PROBLEM_JSON, Problem, problem_bytes
from calmesh_common.service import SECRET_HEADER, USER_HEADER

from . import store

HEADER = "idempotency-key"


def _fingerprint(path: str, body: bytes) -> str:
    try:
        canonical = msgspec.json.encode(msgspec.json.decode(body), order="sorted") if body.strip() else b""
    except msgspec.DecodeError:
        canonical = body
    return hashlib.sha256(path.encode() + b"\x00" + canonical).hexdigest()


class IdempotentApp:
    """The connections app behind an Idempotency-Key check (attributes pass through to it)."""

    def __init__(self, app: Litestar, internal_secret: str) -> None:
        self.app = app
        self._secret = internal_secret.encode()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/api/v1/"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get(HEADER)
        user_id = headers.get(USER_HEADER)
        trusted = self._secret and hmac.compare_digest(headers.get(SECRET_HEADER, "").encode(), self._secret)
        if not key or not user_id or not trusted:
            await self.app(scope, receive, send)  # the app itself refuses what it must
            return
        rid = [(b"x-request-id", headers["x-request-id"].encode())] if headers.get("x-request-id") else []
        if len(key) > 255:
            await _answer(send, 400, PROBLEM_JSON, problem_bytes(Problem(400, "validation_error", "Idempotency-Key: 1 to 255 characters.")))
            return
        body = bytearray()
        while True:
            message = await receive()
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        pool = self.app.state.deps.pool
        request_hash = _fingerprint(scope["path"], bytes(body))
        held = await store.claim_idempotency_key(pool, user_id, key, request_hash)
        if held is not None:
            if held["request_hash"] != request_hash:
                problem = Problem(422, "idempotency_key_reused", "This Idempotency-Key was used with another request.")
                await _answer(send, 422, PROBLEM_JSON, problem_bytes(problem), rid)
            elif held["status_code"] is None:
                problem = Problem(409, "idempotency_in_progress", "A request with this Idempotency-Key is still being processed.",
                                  headers={"Retry-After": "1"})
                await _answer(send, 409, PROBLEM_JSON, problem_bytes(problem), [(b"retry-after", b"1"), *rid])
            else:
                await _answer(send, held["status_code"], held["content_type"] or "application/json", bytes(held["response"] or b""),
                              [(b"idempotent-replayed", b"true"), *rid])
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        status = 500
        content_type = "application/json"
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                for k, v in message.get("headers", []):
                    if k.lower() == b"content-type":
                        content_type = v.decode("latin-1")
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay, capture)
        except BaseException:
            await store.release_idempotency_key(pool, user_id, key)
            raise
        if status >= 500 or status in (404, 409, 429):
            await store.release_idempotency_key(pool, user_id, key)
        else:
            await store.complete_idempotency_key(pool, user_id, key, status, content_type, b"".join(chunks))


async def _answer(send: Any, status: int, content_type: str, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
