r"""The one Idempotency-Key kit: every service's keys, public and internal, in one table shape and
with one semantics (docs/contracts.md, "Idempotency-Key").

- The same key with the same request replays the first answer (status, content type and body, with
  ``Idempotent-Replayed: true``).
- The same key with another request is 422 ``idempotency_key_reused``.
- The same key while its first request is still being answered is 409 ``idempotency_in_progress``
  with ``Retry-After: 1``; a claim whose request died (in flight longer than `STALE_AFTER`) is taken
  over by a repeat of the same request.
- Keys are scoped (a user, a page, a poll, an internal caller's subject): two scopes never collide.
- A key is kept for `TTL` (24 hours), then forgotten: the key may be used afresh.
- Which answers a key keeps: successes and refusals about the request itself. A 5xx, 404, 409 or
  429 may turn out otherwise on a retry, so such an answer releases the key (`keeps`).

Each service holds the table in its own schema, in the one shape of the shared migration
``calmesh_common/migrations/shared/idempotency_keys.sql``, taken by a migration of its own with the
line ``\include idempotency_keys`` (`calmesh_common.migrations`). Two ways to use it, one table:

- `Keys.run`: claim in a short transaction of its own, do the work with **no** transaction open (a
  provider or service call), then keep or release. For writes that call out.
- `Keys.run_in`: claim, work and answer in one transaction on the caller's connection; a
  concurrent twin waits on the key's row and then replays. For writes that are one transaction.
- `claim` / `complete` / `release` directly, for a write whose answer comes in a later
  transaction (booking's two-transaction booking).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Response
from litestar.params import Parameter

from .problems import PROBLEM_JSON, Problem, problem_bytes
from .retryafter import retry_after

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
#: A handler's parameter for the header: ``idempotency_key: KeyHeader = None``.
KeyHeader = Annotated[
    str | None, Parameter(header=HEADER, description="A repeat with the same key and body gets the first answer"),
]
#: How long a key's first answer is kept.
TTL = timedelta(hours=24)
#: A claim still in flight after this long belongs to a request that died: a repeat takes it over.
STALE_AFTER = timedelta(minutes=2)
MAX_KEY_LENGTH = 255

@dataclass(frozen=True, slots=True)
class Answer:
    """An answer to a request: what a key keeps and replays."""

    status: int
    body: bytes
    content_type: str = "application/json"
    replayed: bool = False


def check_key(key: str | None) -> str | None:
    """The key, or 400 ``validation_error`` when it is not 1 to 255 characters."""
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise Problem(400, "validation_error", f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters.")
    return key


def canonical_json(body: bytes) -> bytes:
    """A JSON body with sorted keys and no white space (a non-JSON body as it is), so that two
    spellings of one request have one fingerprint."""
    if not body.strip():
        return b""
    try:
        return msgspec.json.encode(msgspec.json.decode(body), order="sorted")
    except msgspec.DecodeError:
        return body


def request_hash(*parts: str | bytes) -> str:
    """The fingerprint of a request from its parts (method, path, canonical body …)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\x1f")
    return digest.hexdigest()


def keeps(status: int) -> bool:
    """Whether an answer with `status` is the key's answer (else the key is released)."""
    return status < 500 and status not in (404, 409, 429)


def reused() -> Problem:
    return Problem(422, "idempotency_key_reused", f"This {HEADER} was used with another request; use a new key.")


def in_progress() -> Problem:
    return Problem(409, "idempotency_in_progress",
                   f"The first request with this {HEADER} is still being answered; retry in a moment.",
                   headers=retry_after(1))


def in_progress_answer(body: bytes) -> bool:
    """Whether a 409's body is the kit's `in_progress` (a caller's cue to ask again in a moment)."""
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return False
    return isinstance(doc, dict) and doc.get("code") == "idempotency_in_progress"


def problem_answer(problem: Problem) -> Answer:
    return Answer(problem.status, problem_bytes(problem), PROBLEM_JSON)


def json_answer(status: int, data: Any) -> Answer:
    return Answer(status, msgspec.json.encode(data))


def response(answer: Answer) -> Response[bytes]:
    """The answer as a litestar response (``Idempotent-Replayed: true`` on a replay)."""
    headers = {REPLAYED_HEADER: "true"} if answer.replayed else None
    body = answer.body if answer.status != 204 else b""
    return Response(body, status_code=answer.status, media_type=answer.content_type, headers=headers)


class Keys:
    """The Idempotency-Keys of one schema. `seal`/`unseal` encrypt a kept body (an answer holding a
    secret: a webhook's signing secret, an access token). With `wait`, `run` lets a repeat that
    finds the first request in flight wait that many seconds for its answer before the 409 (a
    double-clicked checkout gets the one checkout)."""

    def __init__(self, schema: str, *, ttl: timedelta = TTL, stale_after: timedelta = STALE_AFTER,
                 seal: Callable[[bytes], bytes] | None = None, unseal: Callable[[bytes], bytes] | None = None,
                 wait: float = 0.0) -> None:
        self.table = f"{schema}.idempotency_keys"
        self.ttl = ttl
        self.stale_after = stale_after
        self.wait = wait
        self._seal = seal or (lambda body: body)
        self._unseal = unseal or (lambda body: body)

    async def claim(self, conn: asyncpg.Connection, scope: str, key: str, req_hash: str) -> Answer | None:
        """Claim `key` for this request (None), or return its first answer (replayed). Raises 422
        for another request, 409 while the first is in flight. Inside the caller's transaction a
        concurrent twin waits here until that transaction ends, then sees its answer."""
        check_key(key)
        async with conn.transaction():
            await conn.execute(
                f"DELETE FROM {self.table} WHERE scope = $1 AND created_at < now() - $2::interval", scope, self.ttl
            )
            claimed = await conn.fetchval(
                f"INSERT INTO {self.table} AS k (scope, key, request_hash) VALUES ($1, $2, $3)"
                " ON CONFLICT (scope, key) DO UPDATE SET created_at = now()"
                " WHERE k.status_code IS NULL AND k.request_hash = EXCLUDED.request_hash"
                " AND k.created_at < now() - $4::interval RETURNING 1",
                scope, key, req_hash, self.stale_after,
            )
            if claimed:
                return None
            row = await conn.fetchrow(
                f"SELECT request_hash, status_code, content_type, body FROM {self.table} WHERE scope = $1 AND key = $2",
                scope, key,
            )
        if row is None:  # released between the insert and the select: this request may go
            return await self.claim(conn, scope, key, req_hash)
        if not hmac.compare_digest(row["request_hash"], req_hash):
            raise reused()
        if row["status_code"] is None:
            raise in_progress()
        body = self._unseal(bytes(row["body"])) if row["body"] is not None else b""
        return Answer(row["status_code"], body, row["content_type"] or "application/json", replayed=True)

    async def complete(self, conn: asyncpg.Connection | asyncpg.Pool, scope: str, key: str, answer: Answer) -> None:
        """Keep `answer` as the key's first answer."""
        await conn.execute(
            f"UPDATE {self.table} SET status_code = $3, content_type = $4, body = $5, completed_at = now()"
            " WHERE scope = $1 AND key = $2",
            scope, key, answer.status, answer.content_type, self._seal(answer.body),
        )

    async def release(self, conn: asyncpg.Connection | asyncpg.Pool, scope: str, key: str) -> None:
        """Forget a claim still in flight (its request failed in a way worth retrying)."""
        await conn.execute(
            f"DELETE FROM {self.table} WHERE scope = $1 AND key = $2 AND status_code IS NULL", scope, key
        )

    async def expire(self, conn: asyncpg.Connection | asyncpg.Pool, now: datetime | None = None) -> int:
        """Drop every key older than the TTL; returns how many."""
        if now is None:
            status = await conn.execute(f"DELETE FROM {self.table} WHERE created_at < now() - $1::interval", self.ttl)
        else:
            status = await conn.execute(f"DELETE FROM {self.table} WHERE created_at < $1", now - self.ttl)
        return int(status.split()[-1])

    async def settle(self, conn: asyncpg.Connection | asyncpg.Pool, scope: str, key: str, answer: Answer) -> None:
        """Keep `answer` when it is the key's answer (`keeps`), else release the key."""
        if keeps(answer.status):
            await self.complete(conn, scope, key, answer)
        else:
            await self.release(conn, scope, key)

    async def run(self, pool: asyncpg.Pool, scope: str, key: str | None, req_hash: str,
                  work: Callable[[], Awaitable[Answer]]) -> Answer:
        """Claim, do `work` with no transaction open, keep its answer (or release the key). A
        Problem raised by `work` is answered like any other answer."""
        key = check_key(key)
        if key is None:
            return await work()
        deadline = time.monotonic() + self.wait
        while True:
            try:
                async with pool.acquire() as conn:
                    first = await self.claim(conn, scope, key, req_hash)
                break
            except Problem as problem:
                if problem.status != 409 or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.05)
        if first is not None:
            return first
        try:
            answer = await work()
        except Problem as problem:
            await self.settle(pool, scope, key, problem_answer(problem))
            raise
        except BaseException:
            await self.release(pool, scope, key)
            raise
        await self.settle(pool, scope, key, answer)
        return answer

    async def run_in(self, conn: asyncpg.Connection, scope: str, key: str | None, req_hash: str,
                     work: Callable[[asyncpg.Connection], Awaitable[Answer]]) -> Answer:
        """Claim, do `work` and keep its answer in one transaction on `conn`. A Problem raised by
        `work` rolls everything back, the claim with it."""
        check_key(key)
        async with conn.transaction():
            if key is not None:
                first = await self.claim(conn, scope, key, req_hash)
                if first is not None:
                    return first
            answer = await work(conn)
            if key is not None:
                await self.settle(conn, scope, key, answer)
            return answer


class IdempotentApp:
    """An ASGI app behind the kit: every POST under `prefix` from the gateway (the internal secret
    and the caller's user id present) honours ``Idempotency-Key``, scoped by the user. Attributes
    pass through to the wrapped app."""

    def __init__(self, app: Any, keys: Keys, pool: Callable[[], asyncpg.Pool], *, internal_secret: str,
                 secret_header: str, user_header: str, prefix: str = "/api/v1/") -> None:
        self.app = app
        self.keys = keys
        self._pool = pool
        self._secret = internal_secret.encode()
        self._secret_header = secret_header.lower()
        self._user_header = user_header.lower()
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith(self._prefix):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get(HEADER.lower())
        user_id = headers.get(self._user_header)
        trusted = self._secret and hmac.compare_digest(headers.get(self._secret_header, "").encode(), self._secret)
        if not key or not user_id or not trusted:
            await self.app(scope, receive, send)  # the app itself refuses what it must
            return
        extra = [(b"x-request-id", headers["x-request-id"].encode())] if headers.get("x-request-id") else []
        body = bytearray()
        while True:
            message = await receive()
            body.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        status, content_type, chunks = 500, "application/json", []

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

        async def work() -> Answer:
            await self.app(scope, replay, capture)
            return Answer(status, b"".join(chunks), content_type)

        try:
            fingerprint = hashlib.sha256(scope["path"].encode() + b"\x00" + canonical_json(bytes(body))).hexdigest()
            answer = await self.keys.run(self._pool(), user_id, key, fingerprint, work)
        except Problem as problem:  # refused by the kit itself (400, 409, 422): nothing was sent
            answer = problem_answer(problem)
            extra += [(k.lower().encode(), v.encode()) for k, v in problem.headers.items()]
        else:
            if not answer.replayed:
                return  # the app answered already
            extra.append((REPLAYED_HEADER.lower().encode(), b"true"))
        out = [(b"content-type", answer.content_type.encode()), (b"content-length", str(len(answer.body)).encode()), *extra]
        await send({"type": "http.response.start", "status": answer.status, "headers": out})
        await send({"type": "http.response.body", "body": answer.body})
