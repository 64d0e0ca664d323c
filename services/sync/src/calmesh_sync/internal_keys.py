"""The Idempotency-Keys of sync's internal writes (docs/contracts.md, "Idempotency-Key"): the
event writes (writes.py) and the reservations (reservations.py), on calmesh_common.idempotency,
scoped ``internal:<user id>`` in this service's own schema.

An event write calls the provider, so its key is claimed and answered in transactions of their own
with none open while the provider is asked (`keyed_write`, `keyed_delete`). A reservation only
writes the projection: its claim, its rows and its answer go in one transaction (`in_transaction`),
one commit where three were."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import asyncpg
import msgspec
from litestar import Request, Response

from calmesh_common.idempotency import HEADER, Answer, Keys, canonical_json, problem_answer, request_hash, response
from calmesh_common.problems import Problem
from calmesh_common.service import ServiceDeps

from .engine import SyncDeps


class ForUser(Protocol):
    user_id: str


Body = TypeVar("Body", bound=ForUser)

#: A write's callers give up after 30 s (booking, availability): a claim still in flight after that
#: belongs to a sync process that died mid-write, and the caller's redelivery takes it over (a
#: booking's event is found again by its UID) instead of meeting 409 for the kit's two minutes.
STALE_AFTER = timedelta(seconds=30)
KEYS = Keys("sync", stale_after=STALE_AFTER)


def fingerprint_of(request: Request[Any, Any, Any], body: bytes) -> str:
    """What a repeat of the request must match to get the first answer."""
    return request_hash(request.method, request.url.path, request.url.query, canonical_json(body))


def scope_of(user_id: str) -> str:
    return f"internal:{user_id}"


def keyed(request: Request[Any, Any, Any], user_id: str, body: bytes,
          sync: SyncDeps, work: Callable[[], Awaitable[Answer]]) -> Awaitable[Answer]:
    """Run the write `work` under the request's Idempotency-Key (if any): a repeat with the same
    request gets the first answer and writes nothing again; no transaction is open during `work`."""
    return KEYS.run(sync.pool, scope_of(user_id), request.headers.get(HEADER), fingerprint_of(request, body), work)


async def in_transaction(request: Request[Any, Any, Any], user_id: str, body: bytes, conn: asyncpg.Connection,
                         work: Callable[[asyncpg.Connection], Awaitable[Answer]]) -> Answer:
    """Claim the request's Idempotency-Key (if any), do `work` and keep its answer in ONE
    transaction on `conn`, for a write that makes no call outside the database. A Problem that
    `work` raises is its answer (kept for a repeat, as `keyed` keeps it), with what `work` wrote
    rolled back to a savepoint; any other error rolls the claim back with the rest."""

    async def answered(tx: asyncpg.Connection) -> Answer:
        try:
            async with tx.transaction():
                return await work(tx)
        except Problem as problem:
            return problem_answer(problem)

    return await KEYS.run_in(conn, scope_of(user_id), request.headers.get(HEADER), fingerprint_of(request, body),
                             answered)


async def keyed_write(request: Request[Any, Any, Any], deps: ServiceDeps, decoder: msgspec.json.Decoder[Body],
                      work: Callable[[SyncDeps, Body], Awaitable[Answer]]) -> Response[bytes]:
    """A write with a JSON body for a user: decoded (400 when it is not valid), then `work` keyed."""
    raw = await request.body()
    body = decoded(raw, decoder)
    sync: SyncDeps = deps.extras["sync"]
    return response(await keyed(request, body.user_id, raw, sync, lambda: work(sync, body)))


def decoded(raw: bytes, decoder: msgspec.json.Decoder[Body]) -> Body:
    """A write's JSON body; 400 when it is not valid."""
    try:
        return decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Problem(400, "validation_error", f"The request is not valid: {exc}") from None


async def keyed_delete(request: Request[Any, Any, Any], deps: ServiceDeps, user_id: str,
                       effect: Callable[[SyncDeps], Awaitable[None]]) -> Response[None]:
    """A delete for a user, keyed: a repeat with the key is a no-op answering the first result."""
    sync: SyncDeps = deps.extras["sync"]

    async def work() -> Answer:
        await effect(sync)
        return Answer(204, b"")

    return response(await keyed(request, user_id, b"", sync, work))  # type: ignore[return-value]
