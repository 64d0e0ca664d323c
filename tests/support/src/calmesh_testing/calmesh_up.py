"""`calmesh-up` as a test drives it: one supervisor process on a data directory and a port, and
what it runs (the services, nats-server, the embedded PostgreSQL) as psutil processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

CALMESH_UP = Path(sys.executable).parent / "calmesh-up"
#: About 15 s on an idle 2-core machine; several times that while other test runs share it.
START_TIMEOUT = 240


class CalmeshUp:
    """One `calmesh-up` process on a data directory and a port."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log = data_dir.parent / "calmesh-up.log"
        self.process: subprocess.Popen[bytes] | None = None
        #: More environment for calmesh-up and its children.
        self.extra_env: dict[str, str] = {}

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres:@/postgres?host={self.data_dir / 'postgres'}"

    @property
    def nats_token(self) -> str:
        return (self.data_dir / "nats.token").read_text().strip()

    @property
    def nats_url(self) -> str:
        """What calmesh-up gives its services: the port of this run, the data directory's token."""
        return f"nats://{self.nats_token}@127.0.0.1:{(self.data_dir / 'nats.port').read_text().strip()}"

    def start(self, timeout: float = START_TIMEOUT + 10) -> None:
        """Run calmesh-up and wait until it is up."""
        self.wait_up(self.launch(), timeout)

    def launch(self) -> int:
        """Run calmesh-up without waiting; returns where its log of this run begins."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CALMESH_", "DATABASE_URL", "NATS_URL"))}
        env.update(
            CALMESH_DATA_DIR=str(self.data_dir),
            CALMESH_HTTP_PORT=str(self.port),
            CALMESH_SYNC_WORKERS="1",
            CALMESH_START_TIMEOUT_SECONDS=str(START_TIMEOUT),
            CALMESH_LOG_LEVEL="warning",
            CALMESH_DB_POOL_MAX="3",
        )
        env.update(self.extra_env)
        offset = self.log.stat().st_size if self.log.exists() else 0  # a second start appends
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([str(CALMESH_UP)], env=env, stdout=log, stderr=subprocess.STDOUT)
        return offset

    def wait_up(self, offset: int, timeout: float = START_TIMEOUT + 10) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"calmesh-up exited with {self.process.returncode}:\n{self.tail()}"
            try:
                # Up means what calmesh-up says: healthy, and its banner printed (it supervises from then on).
                if (httpx.get(f"http://127.0.0.1:{self.port}/api/health", timeout=2).status_code == 200
                        and b"CalMesh is up" in self.log.read_bytes()[offset:]):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"no healthy gateway within {timeout} s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def processes(self) -> list[psutil.Process]:
        """Everything this platform runs: the supervisor's children (services, nats-server) and
        the embedded PostgreSQL, which runs detached (its postmaster and that one's children)."""
        assert self.process is not None
        supervisor = psutil.Process(self.process.pid)
        found = {p.pid: p for p in supervisor.children(recursive=True)}
        postmaster_pid = int((self.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(postmaster_pid)
        found[postmaster_pid] = postmaster
        found.update({p.pid: p for p in postmaster.children(recursive=True)})
        return list(found.values())

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def using(data_dir: Path) -> list[psutil.Process]:
    """Running processes whose command line names the data directory (postgres -D, nats-server -sd)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if str(data_dir) in " ".join(p.info["cmdline"] or ()) and alive(p):
            found.append(p)
    return found
