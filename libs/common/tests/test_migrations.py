"""Numbered SQL migrations: applied once, in order, safely from several processes at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from calmesh_common.migrations import (
    Migration,
    _read_dir,
    apply_migrations,
    common_migrations,
    package_migrations,
    shared_sql,
)

COUNTER = [
    Migration("0001_counter", "CREATE TABLE {schema}.counter (n integer NOT NULL); INSERT INTO counter VALUES (0);"),
    Migration("0002_bump", "UPDATE {schema}.counter SET n = n + 1;"),
]


@pytest.fixture
async def schema(pool: asyncpg.Pool, unique: str):
    name = f"mig_{unique}"
    yield name
    await pool.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


async def tables(conn: asyncpg.Connection, schema: str) -> set[str]:
    rows = await conn.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema)
    return {r["table_name"] for r in rows}


async def test_the_common_migrations_create_the_event_store_once(pool, schema) -> None:
    async with pool.acquire() as conn:
        applied = await apply_migrations(conn, schema, common_migrations())
        assert applied == ["common/0001_eventstore"]
        assert {"events", "outbox", "processed_messages", "schema_migrations"} <= await tables(conn, schema)
        assert await apply_migrations(conn, schema, common_migrations()) == []


async def test_each_migration_runs_once_and_in_order(pool, schema) -> None:
    async with pool.acquire() as conn:
        assert await apply_migrations(conn, schema, COUNTER[:1]) == ["0001_counter"]
        assert await apply_migrations(conn, schema, COUNTER) == ["0002_bump"]
        assert await apply_migrations(conn, schema, COUNTER) == []
        assert await conn.fetchval(f"SELECT n FROM {schema}.counter") == 1
        names = await conn.fetch(f"SELECT name FROM {schema}.schema_migrations ORDER BY applied_at, name")
        assert [r["name"] for r in names] == ["0001_counter", "0002_bump"]


async def test_concurrent_runners_apply_each_migration_once(database_url, schema) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(apply_migrations(c, schema, COUNTER) for c in conns))
        assert sorted(results, key=len) == [[], [], [], ["0001_counter", "0002_bump"]]
        assert await conns[0].fetchval(f"SELECT n FROM {schema}.counter") == 1
    finally:
        for c in conns:
            await c.close()


async def test_a_failing_migration_leaves_nothing_behind_and_is_retried(pool, schema) -> None:
    broken = [COUNTER[0], Migration("0002_broken", "ALTER TABLE {schema}.counter ADD COLUMN m int; SELECT 1/0;")]
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await apply_migrations(conn, schema, broken)
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'counter'", schema
        )
        assert [r["column_name"] for r in columns] == ["n"]  # 0001 stayed, 0002 rolled back whole
        assert await apply_migrations(conn, schema, COUNTER) == ["0002_bump"]


async def test_a_bad_schema_name_is_refused(pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(ValueError, match="schema"):
            await apply_migrations(conn, "public; DROP TABLE x", COUNTER)


@pytest.mark.parametrize("bad", ["1_init.sql", "0001-init.sql", "0001_Init.sql", "0001_.sql", "init.sql"])
def test_badly_named_migration_files_are_refused(tmp_path: Path, bad: str) -> None:
    (tmp_path / "0001_init.sql").write_text("SELECT 1;")
    (tmp_path / bad).write_text("SELECT 1;")
    with pytest.raises(ValueError, match="NNNN_description"):
        _read_dir(tmp_path)


def test_two_files_with_one_number_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_init.sql").write_text("SELECT 1;")
    (tmp_path / "0002_calendars.sql").write_text("SELECT 1;")
    (tmp_path / "0002_bookings.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="0002"):
        _read_dir(tmp_path)


def test_files_are_read_in_number_order_and_other_files_ignored(tmp_path: Path) -> None:
    for name in ("0010_ten.sql", "0002_two.sql", "0001_one.sql"):
        (tmp_path / name).write_text(f"-- {name}")
    (tmp_path / "README.md").write_text("not a migration")
    assert [m.name for m in _read_dir(tmp_path, prefix="svc/")] == ["svc/0001_one", "svc/0002_two", "svc/0010_ten"]


def test_a_package_without_migrations_gets_the_common_ones() -> None:
    assert [m.name for m in package_migrations("calmesh_common.events")] == ["common/0001_eventstore"]


# --- shared migrations ------------------------------------------------------------------------------


def test_an_include_line_reads_the_shared_migration_in_its_place(tmp_path: Path) -> None:
    (tmp_path / "0001_init.sql").write_text("CREATE TABLE {schema}.a (id int);\n")
    (tmp_path / "0002_user_plans.sql").write_text("-- the plans table\n\\include user_plans\n")
    first, second = _read_dir(tmp_path, prefix="svc/")
    assert (first.name, second.name) == ("svc/0001_init", "svc/0002_user_plans")
    assert "CREATE TABLE {schema}.user_plans" in second.sql
    assert not [line for line in second.sql.splitlines() if line.startswith("\\include")]
    assert second.sql.startswith("-- the plans table\n")


@pytest.mark.parametrize("line", ["\\include no_such_table", "\\include ../0001_eventstore", "\\include"])
def test_an_include_of_no_shared_migration_is_refused_naming_the_file(tmp_path: Path, line: str) -> None:
    (tmp_path / "0001_init.sql").write_text(line + "\n")
    with pytest.raises(ValueError, match="0001_init.sql.*no shared migration"):
        _read_dir(tmp_path)


def test_every_plan_enforcing_service_takes_the_one_user_plans_table() -> None:
    for package in ("calmesh_booking", "calmesh_connections", "calmesh_gateway"):
        by_name = {m.name: m.sql for m in package_migrations(package)}
        assert shared_sql("user_plans") in by_name["0002_user_plans"], package


async def test_a_database_that_applied_the_old_copy_does_not_apply_it_again(pool, schema) -> None:
    """Before the shared file, each service's 0002_user_plans.sql held the whole table: a database
    migrated then moves on to today's migrations without trying to create it twice."""
    old_copy = Migration("0002_user_plans", shared_sql("user_plans"))
    today = package_migrations("calmesh_gateway")
    async with pool.acquire() as conn:
        before = [m for m in today if m.name in ("common/0001_eventstore", "0001_init")] + [old_copy]
        await apply_migrations(conn, schema, before)
        applied = await apply_migrations(conn, schema, today)
        assert "0002_user_plans" not in applied and applied  # the later ones, not the table again
        assert "user_plans" in await tables(conn, schema)
        fresh = f"{schema}_new"
        try:
            assert "0002_user_plans" in await apply_migrations(conn, fresh, today)
            assert "user_plans" in await tables(conn, fresh)
        finally:
            await conn.execute(f"DROP SCHEMA IF EXISTS {fresh} CASCADE")
