"""A numbered-SQL migration runner: each service applies its own files to its own schema.

Files are named ``NNNN_description.sql`` and applied in order, each in its own transaction, once.
The common event-store tables (this package's ``migrations/``) come first, under the name
``common/NNNN_…``. The runner holds an advisory lock per schema so two processes starting at once
do not race. ``{schema}`` in a file is replaced by the schema's name, and ``{idempotency_keys_table}``
(a line of its own) by the Idempotency-Key kit's table (`calmesh_common.idempotency.TABLE_SQL`), so that every service
creates that one shape without a copy of it.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from .idempotency import TABLE_SQL as IDEMPOTENCY_KEYS_TABLE_SQL

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: The placeholder of the Idempotency-Key kit's table: a line of its own.
_KIT_TABLE = re.compile(r"^\{idempotency_keys_table\}$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str


def _read_dir(path: Path, prefix: str = "") -> list[Migration]:
    found = []
    numbers: dict[str, str] = {}
    for file in sorted(path.iterdir()):
        if file.suffix != ".sql":
            continue
        match = _NAME.match(file.name)
        if not match:
            raise ValueError(f"migration file {file} is not named NNNN_description.sql")
        # Two files with one number (two branches merged) would apply in an accidental order.
        if (other := numbers.setdefault(match.group(1), file.name)) != file.name:
            raise ValueError(f"migration files {other} and {file.name} in {path} share the number {match.group(1)}")
        found.append(Migration(prefix + file.stem, file.read_text(encoding="utf-8")))
    return found


def common_migrations() -> list[Migration]:
    """The event store, outbox and tracking tables every service has."""
    root = resources.files("calmesh_common") / "migrations"
    return _read_dir(Path(str(root)), prefix="common/")


def package_migrations(package: str) -> list[Migration]:
    """The migrations shipped in `package`'s ``migrations/`` folder, after the common ones."""
    root = Path(str(resources.files(package) / "migrations"))
    own = _read_dir(root) if root.is_dir() else []
    return common_migrations() + own


async def apply_migrations(conn: asyncpg.Connection, schema: str, migrations: list[Migration]) -> list[str]:
    """Create `schema` if needed and apply what has not been applied; returns the names applied."""
    if not _SCHEMA.match(schema):
        raise ValueError(f"bad schema name {schema!r}")
    lock_key = zlib.crc32(f"calmesh-migrate:{schema}".encode())
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch(f"SELECT name FROM {schema}.schema_migrations")}
        for migration in migrations:
            if migration.name in done:
                continue
            async with conn.transaction():
                await conn.execute(f"SET LOCAL search_path TO {schema}, public")
                sql = _KIT_TABLE.sub(lambda _: IDEMPOTENCY_KEYS_TABLE_SQL, migration.sql)
                await conn.execute(sql.replace("{schema}", schema))
                await conn.execute(
                    f"INSERT INTO {schema}.schema_migrations (name) VALUES ($1)", migration.name
                )
            applied_now.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
    return applied_now


async def migrate_package(database_url: str, package: str, schema: str) -> list[str]:
    """Connect, apply `package`'s migrations to `schema`, disconnect."""
    conn = await asyncpg.connect(database_url)
    try:
        return await apply_migrations(conn, schema, package_migrations(package))
    finally:
        await conn.close()
