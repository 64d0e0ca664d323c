"""A numbered-SQL migration runner: each service applies its own files to its own schema.

Files are named ``NNNN_description.sql`` and applied in order, each in its own transaction, once.
The common event-store tables (this package's ``migrations/``) come first, under the name
``common/NNNN_…``. The runner holds an advisory lock per schema so two processes starting at once
do not race. ``{schema}`` in a file is replaced by the schema's name.

What several services keep in their own schema in one shape (the ``user_plans`` table of
`calmesh_common.plans`, the ``idempotency_keys`` table of `calmesh_common.idempotency`) is written once, in this package's ``migrations/shared/NAME.sql``. A service
takes it with a migration file of its own, numbered in its own order, holding the line
``\\include NAME``: the runner reads the shared file in its place. A migration is known by its file
name (``schema_migrations`` records names, not contents), so a database that applied the table from
a full copy under the same name does not apply it again.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg


_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_INCLUDE = re.compile(r"^\\include\s+(\S*)\s*$", re.MULTILINE)
_SHARED_NAME = re.compile(r"^[a-z0-9_]+$")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


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
        found.append(Migration(prefix + file.stem, _with_shared(file.read_text(encoding="utf-8"), file)))
    return found


def shared_sql(name: str) -> str:
    """The shared migration ``migrations/shared/NAME.sql`` of this package (see the module doc)."""
    path = Path(str(resources.files("calmesh_common") / "migrations" / "shared")) / f"{name}.sql"
    if not _SHARED_NAME.match(name) or not path.is_file():
        raise ValueError(f"no shared migration {name!r} (calmesh_common/migrations/shared/)")
    return path.read_text(encoding="utf-8")


def _with_shared(sql: str, file: Path) -> str:
    """`sql` with each ``\\include NAME`` line replaced by the shared migration NAME."""
    try:
        return _INCLUDE.sub(lambda m: shared_sql(m.group(1)), sql)
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}") from None


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
                await conn.execute(migration.sql.replace("{schema}", schema))
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
