"""`calmesh-migrate`: apply every service's migrations to its own schema and declare the streams.

Usage: ``calmesh-migrate`` with ``DATABASE_URL`` and ``NATS_URL`` set (``make up`` runs it for you);
``CALMESH_STREAM_REPLICAS`` (default 1) is the replica count every stream is created or updated with.
"""

from __future__ import annotations

import asyncio
import os
import sys

import nats

from ..migrations import migrate_package
from ..settings import Settings, SettingsError
from ..streams import ensure_streams

#: Every service: (name, its package, its schema). The gateway and the six services behind it.
SERVICES: tuple[tuple[str, str, str], ...] = (
    ("gateway", "calmesh_gateway", "gateway"),
    ("connections", "calmesh_connections", "connections"),
    ("sync", "calmesh_sync", "sync"),
    ("availability", "calmesh_availability", "availability"),
    ("booking", "calmesh_booking", "booking"),
    ("billing", "calmesh_billing", "billing"),
    ("webhooks", "calmesh_webhooks", "webhooks"),
)


async def migrate_all(database_url: str, nats_url: str | None, *, stream_replicas: int = 1) -> dict[str, list[str]]:
    """Apply all migrations (and create or update the JetStream streams, with `stream_replicas`
    replicas each, when `nats_url` is given)."""
    applied = {}
    for name, package, schema in SERVICES:
        applied[name] = await migrate_package(database_url, package, schema)
    if nats_url:
        nc = await nats.connect(nats_url, connect_timeout=5)
        try:
            await ensure_streams(nc.jetstream(), replicas=stream_replicas)
        finally:
            await nc.drain()
    return applied


def main() -> None:
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        print("calmesh-migrate: DATABASE_URL must be set", file=sys.stderr)
        raise SystemExit(2)
    try:
        replicas = Settings.from_env(service_name="migrate").stream_replicas
    except SettingsError as exc:
        print(f"calmesh-migrate: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    applied = asyncio.run(migrate_all(database_url, os.environ.get("NATS_URL"), stream_replicas=replicas))
    for name, names in applied.items():
        print(f"{name}: {len(names)} migration(s) applied" + (f" ({', '.join(names)})" if names else ""))


if __name__ == "__main__":
    main()
