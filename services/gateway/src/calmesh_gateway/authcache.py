"""Who is calling, answered from memory on the hot path.

Every API key's hash (revoked ones too, so that a revoked key is told apart from an unknown one) is
loaded at start-up and kept current by the gateway's own events, which the outbox relay publishes
on ``calmesh.gateway.>``: every replica hears a revocation within milliseconds. A hash not in the
cache is looked up in the database once (a negative answer is remembered only briefly). Sessions
are cached for a short while and dropped when a ``session.ended`` event arrives. When the NATS
connection comes back after a break, everything is reloaded, so no missed event matters.

``last_used_at`` is collected here and written in batches by a background task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from calmesh_common.events import decode_envelope, decode_event
from calmesh_common.events.billing import PlanChanged
from calmesh_common.events.gateway import ApiKeyCreated, ApiKeyRevoked, SessionEnded, UserSignedUp
from calmesh_common.logging import get_logger
from calmesh_common.service import (
    AUTH_HEADER,
    HANDLE_HEADER,
    KEY_HEADER,
    PLAN_HEADER,
    SCOPE_HEADER,
    SECRET_HEADER,
    TZ_HEADER,
    USER_HEADER,
)

from .schemas import Scope
from .store import GatewayStore, KeyRow, SessionRow

log = get_logger(__name__)

NEGATIVE_TTL = 5.0
NEGATIVE_MAX = 10_000
SESSION_TTL = 60.0
SESSION_MAX = 50_000


@dataclass(slots=True)
class Identity:
    """The caller as established by the gateway, with the internal headers that say so."""

    user_id: str
    auth: str  # "session" | "key"
    scope: Scope  # the key's scope; "full" for a session
    key_id: str | None
    handle: str
    timezone: str
    plan: str
    headers: list[tuple[str, str]]  # the internal headers forwarded with the request
    session_hash: str | None = None
    expires_at: float | None = None  # epoch seconds
    revoked: bool = False


def identity_headers(secret: str, *, user_id: str, auth: str, scope: str, key_id: str | None, handle: str,
                     timezone: str, plan: str) -> list[tuple[str, str]]:
    headers = [
        (SECRET_HEADER, secret),
        (USER_HEADER, user_id),
        (AUTH_HEADER, auth),
        (SCOPE_HEADER, scope),
        (HANDLE_HEADER, handle),
        (TZ_HEADER, timezone),
        (PLAN_HEADER, plan),
    ]
    if key_id:
        headers.append((KEY_HEADER, key_id))
    return headers


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


class AuthCache:
    def __init__(self, store: GatewayStore, internal_secret: str, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.secret = internal_secret
        self.clock = clock
        self.keys: dict[str, Identity] = {}
        self._negative: dict[str, float] = {}
        self._sessions: dict[str, tuple[Identity, float]] = {}
        self._used: dict[str, float] = {}
        self._loading = False
        self._pending: list[Any] = []
        self.events_applied = 0
        self._plan_versions: dict[str, int] = {}

    # Keys ------------------------------------------------------------------------------------

    def _key_identity(self, row: KeyRow) -> Identity:
        return Identity(
            user_id=row.user_id, auth="key", scope=row.scope, key_id=row.id, handle=row.handle,
            timezone=row.timezone, plan=row.plan,
            headers=identity_headers(self.secret, user_id=row.user_id, auth="key", scope=row.scope, key_id=row.id,
                                     handle=row.handle, timezone=row.timezone, plan=row.plan),
            expires_at=_epoch(row.expires_at), revoked=row.revoked,
        )

    async def reload(self) -> int:
        """Replace the key cache with the database's view; events heard meanwhile are re-applied."""
        self._loading = True
        self._pending = []
        try:
            rows = await self.store.all_keys()
            self.keys = {r.key_hash: self._key_identity(r) for r in rows}
            self._negative.clear()
            self._sessions.clear()
        finally:
            self._loading = False
            pending, self._pending = self._pending, []
            for event in pending:
                self._apply(event)
        log.info("auth_cache_loaded", keys=len(self.keys))
        return len(self.keys)

    def cached_key(self, key_hash: str) -> Identity | None:
        """The hot path: a dict lookup, no I/O."""
        return self.keys.get(key_hash)

    async def lookup_key(self, key_hash: str) -> Identity | None:
        """A cache miss: ask the database once; remember a negative answer briefly."""
        ident = self.keys.get(key_hash)
        if ident is not None:
            return ident
        now = self.clock()
        until = self._negative.get(key_hash)
        if until is not None and until > now:
            return None
        row = await self.store.key_by_hash(key_hash)
        if row is None:
            if len(self._negative) >= NEGATIVE_MAX:
                self._negative = {k: t for k, t in self._negative.items() if t > now}
                if len(self._negative) >= NEGATIVE_MAX:
                    self._negative.clear()
            self._negative[key_hash] = now + NEGATIVE_TTL
            return None
        # An event may have arrived while we waited (a revocation): it wins.
        existing = self.keys.get(key_hash)
        if existing is not None:
            return existing
        ident = self._key_identity(row)
        self.keys[key_hash] = ident
        return ident

    def add_key(self, row: KeyRow) -> None:
        self.keys[row.key_hash] = self._key_identity(row)
        self._negative.pop(row.key_hash, None)

    def revoke_key(self, key_hash: str) -> None:
        ident = self.keys.get(key_hash)
        if ident is not None:
            ident.revoked = True

    def mark_used(self, key_id: str) -> None:
        self._used[key_id] = self.clock()

    def pending_last_used(self, key_id: str) -> datetime | None:
        at = self._used.get(key_id)
        return datetime.fromtimestamp(at, UTC) if at is not None else None

    async def flush_last_used(self) -> int:
        if not self._used:
            return 0
        batch, self._used = self._used, {}
        try:
            await self.store.touch_keys({k: datetime.fromtimestamp(v, UTC) for k, v in batch.items()})
        except Exception:
            # Keep what could not be written for the next round (newer uses win).
            for k, v in batch.items():
                self._used[k] = max(v, self._used.get(k, 0.0))
            raise
        return len(batch)

    # Sessions --------------------------------------------------------------------------------

    async def session(self, token_hash: str) -> Identity | None:
        now = self.clock()
        cached = self._sessions.get(token_hash)
        if cached is not None:
            ident, until = cached
            if until > now and (ident.expires_at is None or ident.expires_at > now):
                return ident
            del self._sessions[token_hash]
        row = await self.store.session_by_hash(token_hash)
        if row is None:
            return None
        ident = self._session_identity(row, token_hash)
        if len(self._sessions) >= SESSION_MAX:
            self._sessions.clear()
        self._sessions[token_hash] = (ident, now + SESSION_TTL)
        return ident

    def _session_identity(self, row: SessionRow, token_hash: str) -> Identity:
        return Identity(
            user_id=row.user_id, auth="session", scope="full", key_id=None, handle=row.handle,
            timezone=row.timezone, plan=row.plan,
            headers=identity_headers(self.secret, user_id=row.user_id, auth="session", scope="full", key_id=None,
                                     handle=row.handle, timezone=row.timezone, plan=row.plan),
            session_hash=token_hash, expires_at=_epoch(row.expires_at),
        )

    def forget_session(self, token_hash: str) -> None:
        self._sessions.pop(token_hash, None)

    # Events ----------------------------------------------------------------------------------

    async def on_message(self, msg: Any) -> None:
        """NATS callback for ``calmesh.gateway.>`` and billing's ``plan.changed``."""
        try:
            envelope = decode_envelope(msg.data)
            event = decode_event(envelope)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not ours to understand (a newer event type): nothing to update
        if isinstance(event, PlanChanged):
            # Billing's per-user stream is ordered by version: an older snapshot never wins.
            if self._plan_versions.get(event.user_id, 0) >= envelope.version:
                return
            self._plan_versions[event.user_id] = envelope.version
        if self._loading:
            self._pending.append(event)
        self._apply(event)

    def set_plan(self, user_id: str, plan: str) -> int:
        """Every cached identity of `user_id` now says `plan`; returns how many changed."""
        changed = 0
        for ident in [*self.keys.values(), *(i for i, _ in self._sessions.values())]:
            if ident.user_id == user_id and ident.plan != plan and ident.headers:
                ident.plan = plan
                ident.headers = identity_headers(self.secret, user_id=ident.user_id, auth=ident.auth,
                                                 scope=ident.scope, key_id=ident.key_id, handle=ident.handle,
                                                 timezone=ident.timezone, plan=plan)
                changed += 1
        return changed

    def _apply(self, event: Any) -> None:
        self.events_applied += 1
        if isinstance(event, ApiKeyRevoked):
            ident = self.keys.get(event.key_hash)
            if ident is not None:
                ident.revoked = True
            else:
                # Not known yet: remember the revocation so a later lookup cannot resurrect it.
                self._negative.pop(event.key_hash, None)
                self.keys[event.key_hash] = Identity(
                    user_id=event.user_id, auth="key", scope="read", key_id=event.key_id, handle="",
                    timezone="UTC", plan="free", headers=[], revoked=True,
                )
        elif isinstance(event, ApiKeyCreated):
            if event.key_hash in self.keys:
                return
            self._negative.pop(event.key_hash, None)
            # The owner's profile is loaded with the key on its first use (lookup_key).
        elif isinstance(event, SessionEnded):
            self._sessions.pop(event.session_hash, None)
        elif isinstance(event, PlanChanged):
            self.set_plan(event.user_id, event.plan)
        elif isinstance(event, UserSignedUp):
            pass


async def periodic(interval: float, job: Callable[[], Awaitable[Any]], name: str) -> None:
    """Run `job` every `interval` seconds until cancelled; a failure is logged and retried."""
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a background job must not die of a passing failure
            log.warning("background_job_failed", job=name, error=repr(exc))
