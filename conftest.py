"""Session-wide servers for every test in the repository (see calmesh_testing.backends)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest

from calmesh_common.devstack.embedded import free_port
from calmesh_common.devstack.migrate import migrate_all
from calmesh_common.devstack.supervisor import Stack
from calmesh_testing.backends import nats_url as _nats_url
from calmesh_testing.backends import postgres_url as _postgres_url

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with _postgres_url() as url:
        yield url


@pytest.fixture(scope="session")
def nats_server_url() -> Iterator[str]:
    with _nats_url() as url:
        yield url


@pytest.fixture(scope="session")
def migrated(database_url: str, nats_server_url: str) -> str:
    """Every service's schema migrated and every stream declared."""
    asyncio.run(migrate_all(database_url, nats_server_url))
    return database_url


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database_url, min_size=1, max_size=5)
    yield p
    await p.close()


@pytest.fixture
async def nc(nats_server_url: str) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(nats_server_url)
    yield client
    await client.close()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for names (schemas, handles, emails) in a shared database."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def stack(migrated: str, nats_server_url: str) -> Iterator[Stack]:
    """The whole platform, every service as its own process, on free ports."""
    with tempfile.TemporaryDirectory(prefix="calmesh-test-stack-") as tmp:
        s = Stack(
            data_dir=Path(tmp),
            http_port=free_port(),
            sync_workers=2,
            database_url=migrated,
            nats_url=nats_server_url,
            fixed_ports=False,
            quiet=os.environ.get("CALMESH_TEST_STACK_LOGS") != "1",
            restart=False,
            extra_env={
                "CALMESH_LOG_LEVEL": "warning",
                "CALMESH_DB_POOL_MAX": "5",
                "CALMESH_ALLOW_PRIVATE_NETWORKS": "1",
            },
        )
        try:
            # A busy shared machine may need longer: CALMESH_TEST_STACK_START_TIMEOUT (seconds).
            s.start(timeout=float(os.environ.get("CALMESH_TEST_STACK_START_TIMEOUT", "120")))
            yield s
        finally:
            s.stop()
