"""The Idempotency-Key kit against real PostgreSQL: replay, 422 for another request, 409 while in
flight, per-scope keys, expiry, and every service's table in the kit's one shape."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest

from calmesh_common.idempotency import Answer, Keys, canonical_json, json_answer, request_hash
from calmesh_common.migrations import apply_migrations, package_migrations, shared_sql
from calmesh_common.problems import Problem

SERVICES = {
    "calmesh_availability": "availability", "calmesh_billing": "billing", "calmesh_booking": "booking",
    "calmesh_connections": "connections", "calmesh_sync": "sync", "calmesh_webhooks": "webhooks",
}


@pytest.fixture
async def keys(pool: asyncpg.Pool, unique: str):
    schema = f"idem_{unique}"
    await pool.execute(f"CREATE SCHEMA {schema}")
    await pool.execute(shared_sql("idempotency_keys").replace("{schema}", schema))
    yield Keys(schema)
    await pool.execute(f"DROP SCHEMA {schema} CASCADE")


def test_the_request_fingerprint_ignores_key_order_and_spacing_of_a_json_body() -> None:
    assert request_hash("/x", canonical_json(b'{"a": 1, "b": 2}')) == request_hash("/x", canonical_json(b'{"b":2,"a":1}'))
    assert request_hash("/x", canonical_json(b'{"a": 1}')) != request_hash("/x", canonical_json(b'{"a": 2}'))
    assert request_hash("/x", b"") != request_hash("/y", b"")


def counting(answer: Answer):
    calls = []

    async def work(*_: object) -> Answer:
        calls.append(1)
        return answer

    return work, calls


async def test_a_repeat_with_the_same_request_replays_the_first_answer_and_does_nothing(pool, keys) -> None:
    work, calls = counting(json_answer(201, {"id": "evt_1"}))
    first = await keys.run(pool, "usr_a", "k1", request_hash("POST", "/x", b'{"a":1}'), work)
    again = await keys.run(pool, "usr_a", "k1", request_hash("POST", "/x", b'{"a":1}'), work)
    assert (first.status, first.replayed) == (201, False)
    assert (again.status, again.body, again.content_type, again.replayed) == (201, b'{"id":"evt_1"}', "application/json", True)
    assert calls == [1]


async def test_the_same_key_with_another_request_is_422_idempotency_key_reused(pool, keys) -> None:
    work, calls = counting(json_answer(201, {}))
    await keys.run(pool, "usr_a", "k1", request_hash(b'{"a":1}'), work)
    with pytest.raises(Problem) as refused:
        await keys.run(pool, "usr_a", "k1", request_hash(b'{"a":2}'), work)
    assert (refused.value.status, refused.value.code) == (422, "idempotency_key_reused")
    assert calls == [1]


async def test_a_repeat_while_the_first_is_in_flight_is_409_with_retry_after(pool, keys) -> None:
    started, finish = asyncio.Event(), asyncio.Event()

    async def slow() -> Answer:
        started.set()
        await finish.wait()
        return json_answer(201, {"n": 1})

    first = asyncio.create_task(keys.run(pool, "usr_a", "k1", "h", slow))
    await started.wait()
    work, calls = counting(json_answer(201, {"n": 2}))
    with pytest.raises(Problem) as refused:
        await keys.run(pool, "usr_a", "k1", "h", work)
    assert (refused.value.status, refused.value.code) == (409, "idempotency_in_progress")
    assert refused.value.headers["Retry-After"] == "1"
    finish.set()
    assert (await first).body == b'{"n":1}'
    assert (await keys.run(pool, "usr_a", "k1", "h", work)).body == b'{"n":1}'
    assert calls == []


async def test_with_wait_a_repeat_in_flight_gets_the_first_answer_instead_of_409(pool, keys) -> None:
    patient = Keys(keys.table.split(".")[0], wait=5.0)

    started = asyncio.Event()

    async def slow() -> Answer:
        started.set()
        await asyncio.sleep(0.3)
        return json_answer(201, {"n": 1})

    work, calls = counting(json_answer(201, {"n": 2}))
    running = asyncio.create_task(patient.run(pool, "usr_a", "k1", "h", slow))
    await started.wait()
    second = await patient.run(pool, "usr_a", "k1", "h", work)
    first = await running
    assert (first.body, second.body, second.replayed, calls) == (b'{"n":1}', b'{"n":1}', True, [])


async def test_keys_are_per_scope_two_users_never_collide(pool, keys) -> None:
    a = await keys.run(pool, "usr_a", "same", "ha", counting(json_answer(201, {"who": "a"}))[0])
    b = await keys.run(pool, "usr_b", "same", "hb", counting(json_answer(201, {"who": "b"}))[0])
    assert (a.body, b.body, b.replayed) == (b'{"who":"a"}', b'{"who":"b"}', False)


async def test_a_retryable_failure_releases_the_key_and_a_stable_refusal_keeps_it(pool, keys) -> None:
    async def down() -> Answer:
        raise Problem(503, "provider_unavailable", "down", headers={"Retry-After": "5"})

    with pytest.raises(Problem):
        await keys.run(pool, "usr_a", "k1", "h", down)
    work, calls = counting(json_answer(201, {"ok": True}))
    assert (await keys.run(pool, "usr_a", "k1", "h", work)).status == 201  # the retry does the work
    assert calls == [1]

    async def refused() -> Answer:
        raise Problem(422, "read_only_source", "read-only")

    with pytest.raises(Problem):
        await keys.run(pool, "usr_a", "k2", "h", refused)
    replay = await keys.run(pool, "usr_a", "k2", "h", work)  # a refusal about the request is its answer
    assert (replay.status, replay.content_type, replay.replayed) == (422, "application/problem+json", True)
    assert b"read_only_source" in replay.body and calls == [1]


async def test_a_claim_whose_request_died_is_taken_over_after_stale_after(pool, keys) -> None:
    async with pool.acquire() as conn:
        assert await keys.claim(conn, "usr_a", "k1", "h") is None  # claimed, never answered
    quick = Keys(keys.table.split(".")[0], stale_after=timedelta(0))
    work, calls = counting(json_answer(201, {}))
    assert (await quick.run(pool, "usr_a", "k1", "h", work)).replayed is False
    assert calls == [1]


async def test_a_key_is_forgotten_after_the_ttl(pool, keys) -> None:
    await keys.run(pool, "usr_a", "k1", "h", counting(json_answer(201, {"n": 1}))[0])
    await pool.execute(f"UPDATE {keys.table} SET created_at = now() - interval '25 hours'")
    fresh = await keys.run(pool, "usr_a", "k1", "other", counting(json_answer(201, {"n": 2}))[0])
    assert (fresh.body, fresh.replayed) == (b'{"n":2}', False)


async def test_in_one_transaction_a_concurrent_twin_waits_and_replays(pool, keys) -> None:
    """`run_in`: the second request's claim waits on the first's row, then sees its answer."""
    calls = []

    async def work(conn: asyncpg.Connection) -> Answer:
        calls.append(1)
        await asyncio.sleep(0.3)
        return json_answer(201, {"n": len(calls)})

    async def one() -> Answer:
        async with pool.acquire() as conn:
            return await keys.run_in(conn, "usr_a", "k1", "h", work)

    first, second = await asyncio.gather(one(), one())
    assert calls == [1]
    assert {first.replayed, second.replayed} == {False, True} and first.body == second.body


async def test_a_sealed_answer_is_kept_encrypted_and_replayed_in_clear(pool, keys) -> None:
    sealed = Keys(keys.table.split(".")[0], seal=lambda b: b[::-1], unseal=lambda b: b[::-1])
    await sealed.run(pool, "usr_a", "k1", "h", counting(Answer(200, b"secret-token"))[0])
    assert bytes(await pool.fetchval(f"SELECT body FROM {keys.table}")) == b"nekot-terces"
    assert (await sealed.run(pool, "usr_a", "k1", "h", counting(Answer(200, b"x"))[0])).body == b"secret-token"


async def test_every_service_keeps_its_keys_in_the_one_shape(pool, unique) -> None:
    """Each service's migrations end in the kit's table (columns, types, key) in its own schema."""
    async with pool.acquire() as conn:
        await conn.execute(f"CREATE SCHEMA ref_{unique}")
        await conn.execute(shared_sql("idempotency_keys").replace("{schema}", f"ref_{unique}"))
        shape = """SELECT column_name, data_type, is_nullable, ordinal_position FROM information_schema.columns
                   WHERE table_schema = $1 AND table_name = 'idempotency_keys' ORDER BY ordinal_position"""
        expected = [tuple(r) for r in await conn.fetch(shape, f"ref_{unique}")]
        try:
            for package, name in SERVICES.items():
                schema = f"{name}_{unique}"
                await apply_migrations(conn, schema, package_migrations(package))
                try:
                    assert [tuple(r) for r in await conn.fetch(shape, schema)] == expected, package
                finally:
                    await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await conn.execute(f"DROP SCHEMA ref_{unique} CASCADE")


#: A key kept in each service's shape before the kit (user usr_a, key k1, request hash h, a 201).
OLD_ROWS = {
    "calmesh_availability": "INSERT INTO {s}.idempotency_keys (user_id, key, request_hash, status_code, response)"
                            " VALUES ('usr_a', 'k1', 'h', 201, '{{\"id\":1}}')",
    "calmesh_billing": "INSERT INTO {s}.idempotency_keys (user_id, key, request_hash, body)"
                       " VALUES ('usr_a', 'k1', 'h', '{{\"id\":1}}')",
    "calmesh_booking": "INSERT INTO {s}.idempotency_keys (scope, key, request_hash, status_code, body)"
                       " VALUES ('usr_a', 'k1', 'h', 201, '{{\"id\":1}}')",
    "calmesh_connections": "INSERT INTO {s}.idempotency_keys (user_id, key, request_hash, status_code, content_type, response)"
                           " VALUES ('usr_a', 'k1', 'h', 201, 'application/json', '{{\"id\":1}}')",
    "calmesh_webhooks": "INSERT INTO {s}.idempotency_keys (user_id, key, request_hash, body)"
                        " VALUES ('usr_a', 'k1', 'h', '{{\"id\":1}}')",
}


@pytest.mark.parametrize("package", sorted(OLD_ROWS))
async def test_the_migration_keeps_the_answers_kept_before_the_kit(pool, unique, package) -> None:
    """A retry that spans the upgrade still gets its first answer (same key, same request)."""
    schema = f"{SERVICES[package]}_old_{unique}"
    migrations = package_migrations(package)
    last_old = next(i for i, m in enumerate(migrations) if m.name.endswith("_common_idempotency"))
    async with pool.acquire() as conn:
        try:
            await apply_migrations(conn, schema, migrations[:last_old])
            await conn.execute(OLD_ROWS[package].format(s=schema))
            assert await apply_migrations(conn, schema, migrations) == [migrations[last_old].name]
            work, calls = counting(json_answer(201, {"id": 2}))
            again = await Keys(schema).run(pool, "usr_a", "k1", "h", work)
            assert (again.status, again.body, again.replayed, calls) == (201, b'{"id":1}', True, [])
        finally:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
