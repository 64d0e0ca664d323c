"""The auth cache: keys answered from memory, kept current by the gateway's own events, a cache
miss asked of the database once, and no revocation lost to a reload racing an event."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from calmesh_common.events import encode_envelope, make_envelope
from calmesh_common.events.gateway import ApiKeyCreated, ApiKeyRevoked, SessionEnded
from calmesh_gateway.authcache import AuthCache
from calmesh_gateway.keys import generate_key
from calmesh_gateway.store import KeyRow, SessionRow


def key_row(key_hash: str, *, key_id: str = "key_1", revoked: bool = False, scope: str = "read") -> KeyRow:
    return KeyRow(id=key_id, user_id="usr_1", scope=scope, key_hash=key_hash, expires_at=None, revoked=revoked,
                  handle="alice", timezone="UTC", plan="free")


class FakeStore:
    def __init__(self, rows: list[KeyRow]) -> None:
        self.rows = {r.key_hash: r for r in rows}
        self.lookups = 0
        self.session_lookups = 0
        self.sessions: dict[str, SessionRow] = {}
        self.touched: dict[str, datetime] = {}
        self.load_gate: asyncio.Event | None = None

    async def all_keys(self) -> list[KeyRow]:
        snapshot = list(self.rows.values())
        if self.load_gate is not None:
            await self.load_gate.wait()
        return snapshot

    async def key_by_hash(self, key_hash: str) -> KeyRow | None:
        self.lookups += 1
        return self.rows.get(key_hash)

    async def session_by_hash(self, token_hash: str) -> SessionRow | None:
        self.session_lookups += 1
        return self.sessions.get(token_hash)

    async def touch_keys(self, used: dict[str, datetime]) -> None:
        self.touched.update(used)


@dataclass
class Msg:
    data: bytes


def message(event: Any) -> Msg:
    return Msg(encode_envelope(make_envelope(event, stream_id="s", version=1)))


async def test_keys_loaded_at_start_are_answered_without_the_database() -> None:
    new = generate_key()
    store = FakeStore([key_row(new.key_hash)])
    cache = AuthCache(store, "secret")  # type: ignore[arg-type]
    assert await cache.reload() == 1
    ident = cache.cached_key(new.key_hash)
    assert ident is not None and ident.scope == "read" and not ident.revoked
    assert ("x-calmesh-user-id", "usr_1") in ident.headers and ("x-calmesh-internal-secret", "secret") in ident.headers
    assert store.lookups == 0


async def test_a_revocation_event_takes_effect_at_once() -> None:
    new = generate_key()
    cache = AuthCache(FakeStore([key_row(new.key_hash)]), "secret")  # type: ignore[arg-type]
    await cache.reload()
    await cache.on_message(message(ApiKeyRevoked(key_id="key_1", user_id="usr_1", key_hash=new.key_hash)))
    assert cache.cached_key(new.key_hash).revoked  # type: ignore[union-attr]


async def test_a_revocation_of_a_key_this_replica_never_saw_is_remembered() -> None:
    new = generate_key()
    store = FakeStore([])
    cache = AuthCache(store, "secret")  # type: ignore[arg-type]
    await cache.reload()
    await cache.on_message(message(ApiKeyRevoked(key_id="key_9", user_id="usr_1", key_hash=new.key_hash)))
    store.rows[new.key_hash] = key_row(new.key_hash, key_id="key_9")  # a stale database answer
    ident = await cache.lookup_key(new.key_hash)
    assert ident is not None and ident.revoked


async def test_a_miss_asks_the_database_once_and_a_negative_answer_is_brief() -> None:
    known, unknown = generate_key(), generate_key()
    store = FakeStore([])
    now = [1000.0]
    cache = AuthCache(store, "secret", clock=lambda: now[0])  # type: ignore[arg-type]
    await cache.reload()
    store.rows[known.key_hash] = key_row(known.key_hash)  # created on another replica
    for _ in range(3):
        assert (await cache.lookup_key(known.key_hash)) is not None
    assert store.lookups == 1
    for _ in range(3):
        assert await cache.lookup_key(unknown.key_hash) is None
    assert store.lookups == 2
    now[0] += 60
    assert await cache.lookup_key(unknown.key_hash) is None
    assert store.lookups == 3


async def test_a_created_event_clears_a_negative_answer() -> None:
    new = generate_key()
    store = FakeStore([])
    cache = AuthCache(store, "secret")  # type: ignore[arg-type]
    await cache.reload()
    assert await cache.lookup_key(new.key_hash) is None
    store.rows[new.key_hash] = key_row(new.key_hash)
    await cache.on_message(message(ApiKeyCreated(key_id="key_1", user_id="usr_1", name="k", scope="read", prefix="p",
                                                 key_hash=new.key_hash)))
    assert await cache.lookup_key(new.key_hash) is not None


async def test_an_event_heard_during_a_reload_is_not_lost() -> None:
    new = generate_key()
    store = FakeStore([key_row(new.key_hash)])
    store.load_gate = asyncio.Event()
    cache = AuthCache(store, "secret")  # type: ignore[arg-type]
    loading = asyncio.create_task(cache.reload())
    await asyncio.sleep(0)
    # The snapshot was read before the revocation committed; the event arrives mid-load.
    await cache.on_message(message(ApiKeyRevoked(key_id="key_1", user_id="usr_1", key_hash=new.key_hash)))
    store.load_gate.set()
    await loading
    assert cache.cached_key(new.key_hash).revoked  # type: ignore[union-attr]


async def test_sessions_are_cached_and_dropped_by_a_session_ended_event() -> None:
    store = FakeStore([])
    cache = AuthCache(store, "secret")  # type: ignore[arg-type]
    store.sessions["h1"] = SessionRow(id="ses_1", user_id="usr_1", expires_at=datetime(2100, 1, 1, tzinfo=UTC),
                                      handle="alice", timezone="UTC", plan="free")
    assert (await cache.session("h1")).scope == "full"  # type: ignore[union-attr]
    assert (await cache.session("h1")) is not None
    assert store.session_lookups == 1
    del store.sessions["h1"]  # ended on another replica...
    await cache.on_message(message(SessionEnded(user_id="usr_1", session_hash="h1")))  # ...which says so
    assert await cache.session("h1") is None


async def test_unknown_messages_are_ignored() -> None:
    cache = AuthCache(FakeStore([]), "secret")  # type: ignore[arg-type]
    await cache.on_message(Msg(b"not json"))
    await cache.on_message(Msg(b'{"id":"x","stream_id":"s","version":1,"occurred_at":"2026-01-01T00:00:00Z",'
                               b'"type":"something.new.v1","event":{"type":"something.new.v1"}}'))
    assert cache.events_applied == 0


async def test_last_used_is_written_in_batches() -> None:
    store = FakeStore([])
    cache = AuthCache(store, "secret")  # type: ignore[arg-type]
    for _ in range(100):
        cache.mark_used("key_1")
    cache.mark_used("key_2")
    assert cache.pending_last_used("key_1") is not None
    assert await cache.flush_last_used() == 2
    assert set(store.touched) == {"key_1", "key_2"}
    assert await cache.flush_last_used() == 0


async def test_a_plan_change_updates_every_cached_identity_of_the_user_and_older_ones_lose() -> None:
    from calmesh_common.events.billing import PlanChanged

    mine, other = generate_key(), generate_key()
    store = FakeStore([key_row(mine.key_hash), KeyRow(id="key_2", user_id="usr_2", scope="read", key_hash=other.key_hash,
                                                      expires_at=None, revoked=False, handle="bob", timezone="UTC",
                                                      plan="free")])
    cache = AuthCache(store, "secret")  # type: ignore[arg-type]
    await cache.reload()

    def plan_event(plan: str, version: int) -> Msg:
        event = PlanChanged(user_id="usr_1", plan=plan, status="active", current_period_end=None,
                            previous_plan="free", at=datetime.now(UTC))
        return Msg(encode_envelope(make_envelope(event, stream_id="billing-usr_1", version=version)))

    await cache.on_message(plan_event("pro", 2))
    ident = cache.cached_key(mine.key_hash)
    assert ident is not None and ident.plan == "pro" and ("x-calmesh-user-plan", "pro") in ident.headers
    assert cache.cached_key(other.key_hash).plan == "free"  # type: ignore[union-attr]
    await cache.on_message(plan_event("free", 1))  # an older snapshot arriving late
    assert cache.cached_key(mine.key_hash).plan == "pro"  # type: ignore[union-attr]
