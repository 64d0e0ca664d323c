"""A private little platform for the connections and sync tests: its own database (on the session's
PostgreSQL server) and its own NATS server, so its sync-job work queue and its outbox relays are not
shared with the session's `stack`; the connections and sync services run in this process (uvicorn
in the test's event loop) with settings the test chooses (fake providers, caps, intervals)."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from cryptography.fernet import Fernet

from calmesh_common.devstack.migrate import migrate_all
from calmesh_common.settings import Settings

from .servers import free_port, serve


def database_in(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def create_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return database_in(server_url, name)


@dataclass
class Platform:
    database_url: str
    nats_url: str
    internal_secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    encryption_keys: str = field(default_factory=lambda: Fernet.generate_key().decode())
    connections_url: str = ""
    sync_url: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def base_env(self, **extra: str) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "NATS_URL": self.nats_url,
            "CALMESH_INTERNAL_SECRET": self.internal_secret,
            "CALMESH_ENCRYPTION_KEYS": self.encryption_keys,
            "CALMESH_CONNECTIONS_URL": self.connections_url,
            "CALMESH_SYNC_URL": self.sync_url,
            "CALMESH_LOG_LEVEL": "warning",
            "CALMESH_DB_POOL_MAX": "6",
            **self.env,
            **extra,
        }

    def settings(self, service: str, **extra: str) -> Settings:
        return Settings.from_env(env=self.base_env(CALMESH_SERVICE=service, **extra), service_name=service)

    def headers(self, user_id: str, *, tz: str = "Europe/Amsterdam", scope: str = "full", auth: str = "key") -> dict[str, str]:
        return {
            "x-calmesh-internal-secret": self.internal_secret,
            "x-calmesh-user-id": user_id,
            "x-calmesh-scope": scope,
            "x-calmesh-auth": auth,
            "x-calmesh-user-timezone": tz,
        }

    def internal(self) -> dict[str, str]:
        return {"x-calmesh-internal-secret": self.internal_secret}

    def client(self, user_id: str | None = None, **kw: Any) -> httpx.AsyncClient:
        headers = self.headers(user_id, **kw) if user_id else self.internal()
        return httpx.AsyncClient(base_url=self.connections_url, headers=headers, timeout=30)

    def spawn_sync_worker(self, worker_id: str, port: int | None = None, **extra: str) -> subprocess.Popen[bytes]:
        """A sync worker as its own process (for kill tests)."""
        port = port or free_port()
        env = {
            **{k: v for k, v in __import__("os").environ.items()},
            **self.base_env(CALMESH_SERVICE="sync", CALMESH_PORT=str(port), CALMESH_WORKER_ID=worker_id, **extra),
        }
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "calmesh-sync")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )


@contextlib.asynccontextmanager
async def private_platform(server_url: str, nats_url: str) -> AsyncIterator[Platform]:
    """A fresh database, migrated, on the session PostgreSQL; NATS given by the caller."""
    name = f"calmesh_priv_{uuid.uuid4().hex[:10]}"
    url = await create_database(server_url, name)
    await migrate_all(url, nats_url)
    try:
        yield Platform(database_url=url, nats_url=nats_url)
    finally:
        # Leave the session's PostgreSQL as it was (best effort: a straggling connection may hold on).
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(server_url)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()


@contextlib.asynccontextmanager
async def running(platform: Platform, *, sync: bool = True, connections: bool = True, scheduler: bool = False,
                  sync_worker: bool = True, **extra: str) -> AsyncIterator[Platform]:
    """Serve connections (and a sync worker) in this process until the block ends."""
    from calmesh_connections.app import create_app as connections_app
    from calmesh_sync.app import create_app as sync_app

    cport, sport = free_port(), free_port()
    saved = (platform.connections_url, platform.sync_url)
    platform.connections_url = f"http://127.0.0.1:{cport}"
    platform.sync_url = f"http://127.0.0.1:{sport}"
    # Provider callbacks come straight to this connections service (no gateway in between).
    extra.setdefault("CALMESH_PUBLIC_BASE_URL", platform.connections_url)
    async with contextlib.AsyncExitStack() as stack:
        if connections:
            app = connections_app(platform.settings("connections", CALMESH_PORT=str(cport), **extra), run_scheduler=scheduler)
            await stack.enter_async_context(serve(app, cport))
        if sync:
            app = sync_app(platform.settings("sync", CALMESH_PORT=str(sport), CALMESH_WORKER_ID="inproc", **extra), run_worker=sync_worker)
            await stack.enter_async_context(serve(app, sport))
        try:
            yield platform
        finally:
            platform.connections_url, platform.sync_url = saved if saved[0] else (platform.connections_url, platform.sync_url)

