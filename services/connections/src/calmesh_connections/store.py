"""asyncpg access to the connections schema: the only module here that writes SQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import msgspec

#: A row as asyncpg answers it (asyncpg ships no types: to the checker, any value).
Record: TypeAlias = asyncpg.Record

_CONNECTION_COLUMNS = frozenset({
    "display_name", "status", "error_kind", "last_error", "last_synced_at", "settings", "credentials",
    "token_expires_at", "calendars", "user_timezone", "sync", "next_sync_at",
})
_JSON_COLUMNS = frozenset({"settings", "calendars", "sync"})


def _json(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


def as_dict(value: Any) -> Any:
    """A jsonb column as Python (asyncpg gives text without a codec)."""
    if value is None:
        return None
    if isinstance(value, str | bytes):
        return msgspec.json.decode(value)
    return value


# --- connections -----------------------------------------------------------------------------


async def insert_connection(conn: asyncpg.Connection, **values: Any) -> Record:
    columns = list(values)
    params = [(_json(v) if k in _JSON_COLUMNS else v) for k, v in values.items()]
    placeholders = ", ".join(f"${i}::jsonb" if k in _JSON_COLUMNS else f"${i}" for i, k in enumerate(columns, start=1))
    return await conn.fetchrow(
        f"INSERT INTO connections.connections ({', '.join(columns)}) VALUES ({placeholders}) RETURNING *", *params
    )


async def get_connection(
    conn: asyncpg.Connection | asyncpg.Pool, connection_id: str, *, user_id: str | None = None, for_update: bool = False
) -> Record | None:
    sql = "SELECT * FROM connections.connections WHERE id = $1"
    args: list[Any] = [connection_id]
    if user_id is not None:
        sql += " AND user_id = $2"
        args.append(user_id)
    if for_update:
        sql += " FOR UPDATE"
    return await conn.fetchrow(sql, *args)


async def _user_page(
    conn: asyncpg.Connection | asyncpg.Pool, table: str, user_id: str, after: tuple[datetime, str] | None, limit: int
) -> list[Record]:
    """One page of the user's rows of `table` (a name of this module's, never input), in creation order."""
    rows: list[Record]
    if after is None:
        rows = await conn.fetch(
            f"SELECT * FROM connections.{table} WHERE user_id = $1 ORDER BY created_at, id LIMIT $2", user_id, limit
        )
        return rows
    rows = await conn.fetch(
        f"SELECT * FROM connections.{table} WHERE user_id = $1 AND (created_at, id) > ($2, $3)"
        " ORDER BY created_at, id LIMIT $4",
        user_id, after[0], after[1], limit,
    )
    return rows


async def list_connections(
    conn: asyncpg.Connection | asyncpg.Pool, user_id: str, after: tuple[datetime, str] | None, limit: int
) -> list[Record]:
    return await _user_page(conn, "connections", user_id, after, limit)


async def connections_of(conn: asyncpg.Connection | asyncpg.Pool, user_id: str, ids: Sequence[str]) -> dict[str, Record]:
    rows = await conn.fetch(
        "SELECT * FROM connections.connections WHERE user_id = $1 AND id = ANY($2::text[])", user_id, list(ids)
    )
    return {r["id"]: r for r in rows}


async def count_connections(conn: asyncpg.Connection, user_id: str) -> int:
    """How many connections the user has (the plan limit counts them)."""
    return int(await conn.fetchval("SELECT count(*) FROM connections.connections WHERE user_id = $1", user_id))


async def update_connection(conn: asyncpg.Connection, connection_id: str, **values: Any) -> Record | None:
    unknown = set(values) - _CONNECTION_COLUMNS
    if unknown:
        raise ValueError(f"not connection columns: {sorted(unknown)}")
    sets = []
    params: list[Any] = [connection_id]
    for key, value in values.items():
        params.append(_json(value) if key in _JSON_COLUMNS else value)
        sets.append(f"{key} = ${len(params)}" + ("::jsonb" if key in _JSON_COLUMNS else ""))
    sets.append("updated_at = now()")
    return await conn.fetchrow(
        f"UPDATE connections.connections SET {', '.join(sets)} WHERE id = $1 RETURNING *", *params
    )


async def delete_connection(conn: asyncpg.Connection, connection_id: str) -> None:
    await conn.execute("DELETE FROM connections.oauth_states WHERE connection_id = $1", connection_id)
    await conn.execute("DELETE FROM connections.connections WHERE id = $1", connection_id)


async def due_connections(conn: asyncpg.Connection, limit: int) -> list[Record]:
    rows: list[Record] = await conn.fetch(
        "SELECT id, user_id, provider FROM connections.connections"
        " WHERE next_sync_at IS NOT NULL AND next_sync_at <= now()"
        " AND status NOT IN ('pending', 'revoked') AND coalesce(error_kind, '') NOT IN ('auth', 'revoked')"
        " ORDER BY next_sync_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    return rows


# --- OAuth states ----------------------------------------------------------------------------


async def insert_state(
    conn: asyncpg.Connection, *, state_hash: str, connection_id: str, user_id: str, provider: str,
    code_verifier: bytes, return_to: str | None, expires_at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO connections.oauth_states (state_hash, connection_id, user_id, provider, code_verifier, return_to, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        state_hash, connection_id, user_id, provider, code_verifier, return_to, expires_at,
    )


async def prune_states(conn: asyncpg.Connection) -> None:
    """Drop authorization requests that were used or ran out a day ago: they are of no more use."""
    await conn.execute("DELETE FROM connections.oauth_states WHERE expires_at < now() - interval '1 day'")


async def take_state(conn: asyncpg.Connection, state_hash: str) -> Record | None:
    return await conn.fetchrow("SELECT * FROM connections.oauth_states WHERE state_hash = $1 FOR UPDATE", state_hash)


async def use_state(conn: asyncpg.Connection, state_hash: str) -> None:
    await conn.execute("UPDATE connections.oauth_states SET used_at = now() WHERE state_hash = $1", state_hash)


async def bind_state(conn: asyncpg.Connection, state_hash: str, browser_hash: str) -> None:
    """Tie the flow to the browser that opened its start URL (the digest of its cookie)."""
    await conn.execute("UPDATE connections.oauth_states SET browser_hash = $2 WHERE state_hash = $1", state_hash, browser_hash)


# --- unified calendars -----------------------------------------------------------------------


async def insert_calendar(conn: asyncpg.Connection, *, calendar_id: str, user_id: str, slug: str, name: str, timezone: str) -> Record:
    return await conn.fetchrow(
        "INSERT INTO connections.calendars (id, user_id, slug, name, timezone) VALUES ($1, $2, $3, $4, $5) RETURNING *",
        calendar_id, user_id, slug, name, timezone,
    )


async def get_calendar(
    conn: asyncpg.Connection | asyncpg.Pool, user_id: str, slug: str, *, for_update: bool = False
) -> Record | None:
    return await conn.fetchrow(
        "SELECT * FROM connections.calendars WHERE user_id = $1 AND slug = $2" + (" FOR UPDATE" if for_update else ""),
        user_id, slug,
    )


async def list_calendars(
    conn: asyncpg.Connection | asyncpg.Pool, user_id: str, after: tuple[datetime, str] | None, limit: int
) -> list[Record]:
    return await _user_page(conn, "calendars", user_id, after, limit)


async def update_calendar(conn: asyncpg.Connection, calendar_id: str, *, slug: str, name: str, timezone: str) -> Record:
    return await conn.fetchrow(
        "UPDATE connections.calendars SET slug = $2, name = $3, timezone = $4, updated_at = now() WHERE id = $1 RETURNING *",
        calendar_id, slug, name, timezone,
    )


async def touch_calendar(conn: asyncpg.Connection, calendar_id: str) -> Record:
    return await conn.fetchrow(
        "UPDATE connections.calendars SET updated_at = now() WHERE id = $1 RETURNING *", calendar_id
    )


async def delete_calendar(conn: asyncpg.Connection, calendar_id: str) -> None:
    await conn.execute("DELETE FROM connections.calendars WHERE id = $1", calendar_id)


async def sources_of(conn: asyncpg.Connection | asyncpg.Pool, calendar_ids: Sequence[str]) -> dict[str, list[Record]]:
    rows = await conn.fetch(
        "SELECT * FROM connections.calendar_sources WHERE calendar_id = ANY($1::text[]) ORDER BY sort_order, created_at, id",
        list(calendar_ids),
    )
    out: dict[str, list[Record]] = {cid: [] for cid in calendar_ids}
    for row in rows:
        out[row["calendar_id"]].append(row)
    return out


async def insert_source(
    conn: asyncpg.Connection, *, source_id: str, calendar_id: str, connection_id: str, provider_calendar_id: str, name: str, sort_order: int
) -> Record | None:
    return await conn.fetchrow(
        "INSERT INTO connections.calendar_sources (id, calendar_id, connection_id, provider_calendar_id, name, sort_order)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (calendar_id, connection_id, provider_calendar_id) DO NOTHING RETURNING *",
        source_id, calendar_id, connection_id, provider_calendar_id, name, sort_order,
    )


async def delete_source(conn: asyncpg.Connection, source_id: str) -> None:
    await conn.execute("DELETE FROM connections.calendar_sources WHERE id = $1", source_id)


async def set_sort_orders(conn: asyncpg.Connection, ordered_ids: Sequence[str]) -> None:
    await conn.execute(
        "UPDATE connections.calendar_sources s SET sort_order = o.ord - 1"
        " FROM unnest($1::text[]) WITH ORDINALITY AS o(id, ord) WHERE s.id = o.id",
        list(ordered_ids),
    )


async def calendars_with_connection(conn: asyncpg.Connection, connection_id: str) -> list[Record]:
    rows: list[Record] = await conn.fetch(
        "SELECT c.* FROM connections.calendars c WHERE c.id IN"
        " (SELECT s.calendar_id FROM connections.calendar_sources s WHERE s.connection_id = $1) ORDER BY c.id FOR UPDATE",
        connection_id,
    )
    return rows


# --- push channels ---------------------------------------------------------------------------


async def insert_channel(
    conn: asyncpg.Connection | asyncpg.Pool, *, channel_row_id: str, connection_id: str, provider: str, calendar_ref: str,
    channel_id: str, resource_id: str | None, secret_hash: str, expires_at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO connections.push_channels (id, connection_id, provider, calendar_ref, channel_id, resource_id, secret_hash, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        channel_row_id, connection_id, provider, calendar_ref, channel_id, resource_id, secret_hash, expires_at,
    )


async def channel_by_channel_id(conn: asyncpg.Connection | asyncpg.Pool, channel_id: str) -> Record | None:
    return await conn.fetchrow("SELECT * FROM connections.push_channels WHERE channel_id = $1", channel_id)


async def channels_of(conn: asyncpg.Connection | asyncpg.Pool, connection_id: str) -> list[Record]:
    rows: list[Record] = await conn.fetch("SELECT * FROM connections.push_channels WHERE connection_id = $1", connection_id)
    return rows


async def expiring_channels(conn: asyncpg.Connection | asyncpg.Pool, before: datetime) -> list[Record]:
    rows: list[Record] = await conn.fetch("SELECT * FROM connections.push_channels WHERE expires_at <= $1 ORDER BY expires_at LIMIT 200", before)
    return rows


async def delete_channels_of(conn: asyncpg.Connection, connection_id: str) -> None:
    await conn.execute("DELETE FROM connections.push_channels WHERE connection_id = $1", connection_id)


async def delete_channel(conn: asyncpg.Connection | asyncpg.Pool, row_id: str) -> None:
    await conn.execute("DELETE FROM connections.push_channels WHERE id = $1", row_id)


async def set_channel_expiry(conn: asyncpg.Connection | asyncpg.Pool, row_id: str, expires_at: datetime) -> None:
    await conn.execute("UPDATE connections.push_channels SET expires_at = $2 WHERE id = $1", row_id, expires_at)


# --- the scheduler's leadership ------------------------------------------------------------


async def try_lead(conn: asyncpg.Connection, key: str) -> bool:
    """Take the session advisory lock `key` on `conn` if no other session holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key))


async def still_connected(conn: asyncpg.Connection) -> None:
    """Answer when `conn` (and so the lock it holds) is still there; raise when it is gone."""
    await conn.fetchval("SELECT 1")


async def step_down(conn: asyncpg.Connection, key: str) -> None:
    """Give the advisory lock `key` back."""
    await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)
