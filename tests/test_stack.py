"""`calmesh-up`, the one-machine supervisor: it starts the platform on embedded PostgreSQL and NATS,
stops every process it started on SIGTERM, and a restart on the same data directory finds the data.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import nats
import psutil
import pytest
from nats.js.api import StorageType, StreamConfig

from calmesh_common.devstack.embedded import free_port

CALMESH_UP = Path(sys.executable).parent / "calmesh-up"
PROBE_STREAM = "STACK_PROBE"
#: About 15 s on an idle 2-core machine; several times that while other test runs share it.
START_TIMEOUT = 240


class Platform:
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


def cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:  # it ended meanwhile
        return []


def using(data_dir: Path) -> list[psutil.Process]:
    """Running processes whose command line names the data directory (postgres -D, nats-server -sd)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if str(data_dir) in " ".join(p.info["cmdline"] or ()) and alive(p):
            found.append(p)
    return found


@pytest.fixture
def platform() -> Iterator[Platform]:
    with tempfile.TemporaryDirectory(prefix="stacktest-") as tmp:
        p = Platform(Path(tmp) / "data", free_port())
        try:
            yield p
        finally:
            # Whatever the test's outcome, leave nothing running.
            if p.process is not None and p.process.poll() is None:
                p.process.send_signal(signal.SIGTERM)
                try:
                    p.process.wait(60)
                except subprocess.TimeoutExpired:
                    p.process.kill()
            for leftover in using(p.data_dir):
                leftover.kill()


async def write_probe(platform: Platform, value: str) -> None:
    conn = await asyncpg.connect(platform.database_url)
    try:
        await conn.execute("CREATE TABLE public.stack_probe (value text NOT NULL)")
        await conn.execute("INSERT INTO public.stack_probe VALUES ($1)", value)
    finally:
        await conn.close()
    nc = await nats.connect(platform.nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=PROBE_STREAM, subjects=["stackprobe.>"], storage=StorageType.FILE))
        await js.publish("stackprobe.value", value.encode())
    finally:
        await nc.close()


async def read_probe(platform: Platform) -> tuple[list[str], bytes]:
    conn = await asyncpg.connect(platform.database_url)
    try:
        rows = [r["value"] for r in await conn.fetch("SELECT value FROM public.stack_probe")]
    finally:
        await conn.close()
    nc = await nats.connect(platform.nats_url)
    try:
        message = await nc.jetstream().get_last_msg(PROBE_STREAM, "stackprobe.value")
    finally:
        await nc.close()
    return rows, message.data or b""


async def assert_nats_refuses_strangers(platform: Platform) -> None:
    """Every service runs (the gateway is healthy), so each connected with the token; a local client
    without it is refused."""
    anonymous = platform.nats_url.replace(f"{platform.nats_token}@", "")
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(anonymous, allow_reconnect=False, connect_timeout=3)


def assert_stopped_cleanly(platform: Platform, started: list[psutil.Process]) -> None:
    returncode = platform.stop()
    assert returncode == 0, platform.tail()
    deadline = time.monotonic() + 5
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = [(p.pid, p.cmdline()) for p in started if alive(p)]
    assert orphans == [], f"left running after SIGTERM: {orphans}"
    assert using(platform.data_dir) == []
    assert not (platform.data_dir / "postgres" / "postmaster.pid").exists()


def test_calmesh_up_stops_every_process_on_sigterm_and_keeps_its_data(platform: Platform, unique: str) -> None:
    platform.start()
    started = platform.processes()
    # The gateway, the five services and a sync worker, nats-server and PostgreSQL.
    services = sorted(Path(arg).name for p in started for arg in p.cmdline()[:2] if Path(arg).name.startswith("calmesh-"))
    assert services == [
        "calmesh-availability", "calmesh-billing", "calmesh-booking", "calmesh-connections",
        "calmesh-gateway", "calmesh-sync", "calmesh-webhooks",
    ]
    names = {p.name() for p in started}
    assert "nats-server" in names and "postgres" in names
    asyncio.run(write_probe(platform, f"kept-{unique}"))
    asyncio.run(assert_nats_refuses_strangers(platform))
    secrets = (platform.data_dir / "secrets.env").read_text()
    token = platform.nats_token

    assert_stopped_cleanly(platform, started)

    platform.start()
    restarted = platform.processes()
    assert not {p.pid for p in restarted} & {p.pid for p in started}
    assert asyncio.run(read_probe(platform)) == ([f"kept-{unique}"], f"kept-{unique}".encode())
    assert (platform.data_dir / "secrets.env").read_text() == secrets  # sessions and keys stay valid
    assert platform.nats_token == token
    assert token not in platform.log.read_text(errors="replace")  # no log line of any service shows it
    assert_stopped_cleanly(platform, restarted)


def health(platform: Platform) -> tuple[int, dict[str, object]]:
    try:
        r = httpx.get(f"http://127.0.0.1:{platform.port}/api/health", timeout=5)
        return r.status_code, r.json()
    except (httpx.HTTPError, ValueError):
        return 0, {}


def wait_healthy(platform: Platform, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health(platform)[0] == 200:
            return
        time.sleep(0.25)
    raise AssertionError(f"not healthy again within {timeout} s: {health(platform)}\n{platform.tail()}")


def named(platform: Platform, name: str) -> psutil.Process:
    """The running nats-server or postmaster of this platform."""
    [found] = [p for p in platform.processes() if p.name() == name and alive(p)
               and (name != "postgres" or p.ppid() == platform.process.pid)]  # type: ignore[union-attr]
    return found


def test_calmesh_up_restarts_a_dead_nats_server_and_postgres(platform: Platform) -> None:
    platform.start()
    for name in ("nats-server", "postgres"):
        victim = named(platform, name)
        victim.kill()
        victim.wait(10)
        # Health says what is down meanwhile (or the gateway is already back on its feet).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, body = health(platform)
            if status == 503:
                assert body["down"], body
                break
            time.sleep(0.1)
        wait_healthy(platform)
        again = named(platform, name)
        assert again.pid != victim.pid
    log = platform.log.read_text(errors="replace")
    assert "nats exited" in log and "postgres exited" in log and "restarting" in log


def test_a_nats_server_that_dies_while_the_services_start_is_started_again(platform: Platform) -> None:
    offset = platform.launch()
    deadline = time.monotonic() + 60
    victim = None
    while victim is None and time.monotonic() < deadline:
        assert platform.process is not None and platform.process.poll() is None, platform.tail()
        children = psutil.Process(platform.process.pid).children()
        found = [p for p in children if p.name() == "nats-server" and alive(p)]
        # Once a service runs, the migrations are done and the services are starting.
        starting = any(p.name().startswith("calmesh-gateway") or "calmesh-gateway" in " ".join(cmdline(p))
                       for p in children if alive(p))
        victim = found[0] if found and starting else None
        time.sleep(0.05)
    assert victim is not None, f"no nats-server within 60 s\n{platform.tail()}"
    assert health(platform)[0] != 200  # the services are still starting
    victim.kill()
    platform.wait_up(offset)  # calmesh-up does not give up: it starts nats again and comes up
    assert named(platform, "nats-server").pid != victim.pid
    assert "nats exited" in platform.log.read_text(errors="replace")


def test_a_killed_calmesh_up_strands_nothing(platform: Platform) -> None:
    platform.start()
    started = platform.processes()
    assert {p.name() for p in started} >= {"nats-server", "postgres"}
    # Every process the supervisor starts, nats-server and the postmaster included, is in its
    # process group (the postmaster's own children make sessions of their own, as PostgreSQL
    # does, and end with the postmaster).
    group = os.getpgid(platform.process.pid)  # type: ignore[union-attr]
    direct = psutil.Process(platform.process.pid).children()  # type: ignore[union-attr]
    assert {p.name() for p in direct} >= {"nats-server", "postgres"}
    assert [(p.name(), os.getpgid(p.pid)) for p in direct if os.getpgid(p.pid) != group] == []
    platform.process.kill()  # type: ignore[union-attr]
    platform.process.wait()  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(p.pid, p.name()) for p in started if alive(p)] == []
    assert using(platform.data_dir) == []
