"""The webhooks API of the API guide (docs/api-guide.md) (full scope; the gateway enforces it, this service ownership)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Response, delete, get, patch, post
from litestar.params import Parameter

from calmesh_common.cursors import AwareDatetime, decode_cursor, encode_cursor
from calmesh_common.events import new_event_id
from calmesh_common.events.webhooks import (
    WebhookCreated,
    WebhookDeleted,
    WebhookReplayRequested,
    WebhookSecretRotated,
    WebhookUpdated,
)
from calmesh_common.rows import same_named
from calmesh_common.idempotency import REPLAYED_HEADER, Answer, KeyHeader, Keys, json_answer
from calmesh_common.problems import FieldError, Problem, not_found
from calmesh_common.service import Caller, ServiceDeps
from calmesh_common.timefmt import rfc3339, rfc3339_or_none

from . import store
from .mapping import PUBLIC_EVENT_TYPES, TEST_EVENT_TYPE, message_body
from .domain import url_problem
from .signing import new_secret

# --- request and response structs ----------------------------------------------------------------


class WebhookCreate(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    event_types: list[str]
    description: str = ""


class WebhookUpdate(msgspec.Struct, forbid_unknown_fields=True):
    url: str | None = None
    event_types: list[str] | None = None
    description: str | None = None
    status: str | None = None


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    since: datetime


class Webhook(msgspec.Struct):
    id: str
    url: str
    event_types: list[str]
    description: str
    status: str
    disabled_reason: str | None
    created_at: str
    updated_at: str


class WebhookWithSecret(msgspec.Struct):
    id: str
    url: str
    event_types: list[str]
    description: str
    status: str
    secret: str
    created_at: str


class WebhookList(msgspec.Struct):
    data: list[Webhook]
    next_cursor: str | None


class Secret(msgspec.Struct):
    secret: str


class Delivery(msgspec.Struct):
    id: str
    event_id: str
    event_type: str
    attempt: int
    status: str
    response_status: int | None
    duration_ms: int | None
    next_attempt_at: str | None
    created_at: str
    error: str | None = None


class DeliveryList(msgspec.Struct):
    data: list[Delivery]
    next_cursor: str | None


class RetryAccepted(msgspec.Struct):
    id: str
    event_id: str
    status: str


class ReplayAccepted(msgspec.Struct):
    id: str
    webhook_id: str
    since: str
    status: str


# --- helpers -------------------------------------------------------------------------------------


def _schema(deps: ServiceDeps) -> str:
    return str(deps.extras["schema"])


def _pool(deps: ServiceDeps) -> asyncpg.Pool:
    """The service's pool: the lifespan opens it before any request is served."""
    assert deps.pool is not None
    return deps.pool


def _webhook(row: Any) -> Webhook:
    return Webhook(
        id=row["id"],
        url=row["url"],
        event_types=list(row["event_types"]),
        description=row["description"],
        status=row["status"],
        disabled_reason=row["disabled_reason"],
        created_at=rfc3339(row["created_at"]),
        updated_at=rfc3339(row["updated_at"]),
    )


def _delivery(row: Any) -> Delivery:
    return Delivery(
        **same_named(row, "id", "event_id", "event_type", "attempt", "status", "response_status", "duration_ms", "error"),
        next_attempt_at=rfc3339_or_none(row["next_attempt_at"]),
        created_at=rfc3339(row["created_at"]),
    )


def _check_url(url: str, deps: ServiceDeps) -> str:
    reason = url_problem(url, allow_private_networks=deps.settings.allow_private_networks)
    if reason:
        raise Problem(422, "invalid_url", f"url {reason}.", errors=[FieldError("url", reason)])
    return url.strip()


def _check_event_types(event_types: list[str]) -> list[str]:
    if not event_types:
        raise Problem(
            422, "invalid_event_types", "event_types must name at least one event type, or be [\"*\"].",
            errors=[FieldError("event_types", "must not be empty")],
        )
    unknown = [t for t in event_types if t != "*" and t not in PUBLIC_EVENT_TYPES]
    if unknown:
        raise Problem(
            422,
            "invalid_event_types",
            f"Unknown event types: {', '.join(unknown)}. Known: {', '.join(PUBLIC_EVENT_TYPES)}, or \"*\".",
            errors=[FieldError("event_types", f"unknown event type {t!r}") for t in unknown],
        )
    if "*" in event_types:
        return ["*"]
    return list(dict.fromkeys(event_types))


def _limit(limit: int) -> int:
    if not 1 <= limit <= 200:
        raise Problem(400, "validation_error", "limit must be between 1 and 200.",
                      errors=[FieldError("limit", "must be between 1 and 200")])
    return limit


#: A delivery list's cursor: the sequence number of the last attempt shown.
_Seq = Annotated[int, msgspec.Meta(ge=0)]


async def _owned(deps: ServiceDeps, conn: Any, webhook_id: str, caller: Caller, *, for_update: bool = False) -> Any:
    row = await store.get_subscription(conn, _schema(deps), webhook_id, caller.user_id, for_update=for_update)
    if row is None:
        raise not_found("webhook")
    return row


# --- the controller ------------------------------------------------------------------------------


class WebhooksController(Controller):
    path = "/api/v1/webhooks"
    tags = ["webhooks"]

    @post("/", status_code=201, summary="Create a webhook subscription (the secret is shown once)")
    async def create(
        self,
        data: WebhookCreate,
        deps: ServiceDeps,
        caller: Caller,
        idempotency_key: KeyHeader = None,
    ) -> Response[WebhookWithSecret]:
        url = _check_url(data.url, deps)
        event_types = _check_event_types(data.event_types)
        box = deps.extras["secrets"]
        schema = _schema(deps)
        request_hash = hashlib.sha256(msgspec.json.encode(data)).hexdigest()

        async def create(conn: Any) -> Answer:
            secret = new_secret()
            row = await store.insert_subscription(
                conn, schema, user_id=caller.user_id, url=url, event_types=event_types,
                description=data.description, secret=box.encrypt(secret),
            )
            await deps.store.append(
                conn, row["id"], 0,
                [WebhookCreated(webhook_id=row["id"], user_id=caller.user_id, url=url, event_types=event_types,
                                description=data.description)],
                user_id=caller.user_id,
            )
            return json_answer(201, WebhookWithSecret(
                id=row["id"], url=url, event_types=event_types, description=row["description"], status="active",
                secret=secret, created_at=rfc3339(row["created_at"]),
            ))

        # The first answer holds the signing secret: it is kept encrypted like the secret itself.
        keys = Keys(schema, seal=lambda body: box.encrypt(body.decode()), unseal=lambda sealed: box.decrypt(sealed).encode())
        async with _pool(deps).acquire() as conn:
            answer = await keys.run_in(conn, caller.user_id, idempotency_key, request_hash, create)
        return Response(msgspec.json.decode(answer.body, type=WebhookWithSecret), status_code=201,
                        headers={REPLAYED_HEADER: "true"} if answer.replayed else None)

    @get("/", summary="List webhook subscriptions")
    async def list_webhooks(
        self, deps: ServiceDeps, caller: Caller, limit: int = 50, cursor: str | None = None
    ) -> WebhookList:
        limit = _limit(limit)
        after = decode_cursor(cursor, tuple[AwareDatetime, str]) if cursor else None
        async with _pool(deps).acquire() as conn:
            rows = await store.list_subscriptions(conn, _schema(deps), caller.user_id, after=after, limit=limit + 1)
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            last = page[-1]
            next_cursor = encode_cursor(last["created_at"], last["id"])
        return WebhookList([_webhook(r) for r in page], next_cursor)

    @get("/{webhook_id:str}", summary="Get a webhook subscription")
    async def get_webhook(self, webhook_id: str, deps: ServiceDeps, caller: Caller) -> Webhook:
        async with _pool(deps).acquire() as conn:
            return _webhook(await _owned(deps, conn, webhook_id, caller))

    @patch("/{webhook_id:str}", summary="Change url, event_types, description or status (active|disabled)")
    async def update(self, webhook_id: str, data: WebhookUpdate, deps: ServiceDeps, caller: Caller) -> Webhook:
        changes: dict[str, Any] = {}
        if data.url is not None:
            changes["url"] = _check_url(data.url, deps)
        if data.event_types is not None:
            changes["event_types"] = _check_event_types(data.event_types)
        if data.description is not None:
            changes["description"] = data.description
        if data.status is not None:
            if data.status not in ("active", "disabled"):
                raise Problem(422, "invalid_status", "status must be active or disabled.",
                              errors=[FieldError("status", "must be active or disabled")])
            changes["status"] = data.status
        async with _pool(deps).acquire() as conn, conn.transaction():
            await _owned(deps, conn, webhook_id, caller, for_update=True)
            if not changes:
                return _webhook(await _owned(deps, conn, webhook_id, caller))
            row = await store.update_subscription(conn, _schema(deps), webhook_id, changes)
            await deps.store.append(
                conn, webhook_id, None,
                [WebhookUpdated(webhook_id=webhook_id, user_id=caller.user_id, url=row["url"],
                                event_types=list(row["event_types"]), status=row["status"],
                                description=row["description"], changed=sorted(changes))],
                user_id=caller.user_id,
            )
            if changes.get("status") == "active":
                await conn.execute(f"NOTIFY {store.wake_channel(_schema(deps))}")
        return _webhook(row)

    @delete("/{webhook_id:str}", status_code=204, summary="Delete a webhook subscription and its deliveries")
    async def remove(self, webhook_id: str, deps: ServiceDeps, caller: Caller) -> None:
        async with _pool(deps).acquire() as conn, conn.transaction():
            await _owned(deps, conn, webhook_id, caller, for_update=True)
            await store.delete_subscription(conn, _schema(deps), webhook_id)
            await deps.store.append(
                conn, webhook_id, None, [WebhookDeleted(webhook_id=webhook_id, user_id=caller.user_id)],
                user_id=caller.user_id,
            )

    @post("/{webhook_id:str}/rotate-secret", status_code=200,
          summary="New secret; the old one keeps signing beside it for 24 hours")
    async def rotate(self, webhook_id: str, deps: ServiceDeps, caller: Caller) -> Secret:
        secret = new_secret()
        box = deps.extras["secrets"]
        async with _pool(deps).acquire() as conn, conn.transaction():
            await _owned(deps, conn, webhook_id, caller, for_update=True)
            until = await store.rotate_secret(
                conn, _schema(deps), webhook_id, box.encrypt(secret), deps.settings.webhook_secret_overlap_seconds
            )
            await deps.store.append(
                conn, webhook_id, None,
                [WebhookSecretRotated(webhook_id=webhook_id, user_id=caller.user_id, previous_valid_until=until)],
                user_id=caller.user_id,
            )
        return Secret(secret)

    @post("/{webhook_id:str}/test", status_code=200,
          summary="Send a webhook.test delivery now; answers with its first attempt")
    async def send_test(self, webhook_id: str, deps: ServiceDeps, caller: Caller) -> Delivery:
        schema = _schema(deps)
        event_id = new_event_id()
        now = datetime.now(UTC)
        body = message_body(TEST_EVENT_TYPE, now, {
            "webhook_id": webhook_id,
            "message": "This is a test delivery from CalMesh.",
        })
        async with _pool(deps).acquire() as conn, conn.transaction():
            await _owned(deps, conn, webhook_id, caller)
            [delivery_id] = await store.enqueue_for_subscription(
                conn, schema, webhook_id, [(event_id, caller.user_id, TEST_EVENT_TYPE, now, body)], due=False
            )
        finished = await deps.extras["dispatcher"].send_now(delivery_id)
        if finished is None:
            raise Problem(409, "delivery_in_progress", "The test delivery is already being sent.")
        async with _pool(deps).acquire() as conn:
            row = await store.get_attempt(conn, schema, webhook_id, finished.attempt_id)
        return _delivery(row)

    @get("/{webhook_id:str}/deliveries", summary="Delivery attempts, one row per attempt, newest first")
    async def deliveries(
        self,
        webhook_id: str,
        deps: ServiceDeps,
        caller: Caller,
        limit: int = 50,
        cursor: str | None = None,
        status: str | None = Parameter(default=None, description="pending | succeeded | failed"),
        event_id: str | None = None,
    ) -> DeliveryList:
        limit = _limit(limit)
        before = decode_cursor(cursor, tuple[_Seq])[0] if cursor else None
        if status is not None and status not in ("pending", "succeeded", "failed"):
            raise Problem(400, "validation_error", "status must be pending, succeeded or failed.")
        async with _pool(deps).acquire() as conn:
            await _owned(deps, conn, webhook_id, caller)
            rows = await store.list_attempts(
                conn, _schema(deps), webhook_id, before_seq=before, limit=limit + 1, status=status, event_id=event_id
            )
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1]["seq"]) if len(rows) > limit else None
        return DeliveryList([_delivery(r) for r in page], next_cursor)

    @post("/{webhook_id:str}/deliveries/{delivery_id:str}/retry", status_code=202,
          summary="Send that delivery's event again now (counts as its next attempt)")
    async def retry(self, webhook_id: str, delivery_id: str, deps: ServiceDeps, caller: Caller) -> RetryAccepted:
        schema = _schema(deps)
        async with _pool(deps).acquire() as conn, conn.transaction():
            hook = await _owned(deps, conn, webhook_id, caller)
            attempt = await store.get_attempt(conn, schema, webhook_id, delivery_id)
            if attempt is None:
                raise not_found("delivery")
            if hook["status"] != "active":
                raise Problem(409, "webhook_disabled", "The webhook is disabled; enable it (PATCH status) first.")
            if await store.reschedule_now(conn, schema, attempt["delivery_id"]) is None:
                raise Problem(409, "delivery_in_progress", "That delivery is being sent right now.")
        return RetryAccepted(id=delivery_id, event_id=attempt["event_id"], status="pending")

    @post("/{webhook_id:str}/replay", status_code=202,
          summary="Deliver again every matching event since an instant (read from the event streams)")
    async def replay(self, webhook_id: str, data: ReplayRequest, deps: ServiceDeps, caller: Caller) -> ReplayAccepted:
        since = data.since if data.since.tzinfo else data.since.replace(tzinfo=UTC)
        if since > datetime.now(UTC):
            raise Problem(422, "invalid_since", "since must not be in the future.",
                          errors=[FieldError("since", "must not be in the future")])
        async with _pool(deps).acquire() as conn, conn.transaction():
            await _owned(deps, conn, webhook_id, caller)
            row = await store.insert_replay(conn, _schema(deps), webhook_id, since)
            await deps.store.append(
                conn, webhook_id, None,
                [WebhookReplayRequested(webhook_id=webhook_id, user_id=caller.user_id, replay_id=row["id"], since=since)],
                user_id=caller.user_id,
            )
        return ReplayAccepted(id=row["id"], webhook_id=webhook_id, since=rfc3339(since), status="pending")
