"""The NATS of `make up` (calmesh-up) accepts only clients with its data directory's token.

Started here exactly as calmesh-up starts it (`start_embedded_nats`): a local process that does not
know the token can neither read booking events nor publish forged ones.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import nats
import psutil
import pytest

from calmesh_common.devstack.embedded import EmbeddedNats, load_or_create_nats_token
from calmesh_common.devstack.supervisor import start_embedded_nats


@pytest.fixture
def stack_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = start_embedded_nats(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def connect_once(url: str) -> nats.NATS:
    # No reconnect loop: a refused CONNECT is an error at once rather than retried forever.
    return await nats.connect(url, allow_reconnect=False, connect_timeout=3)


async def test_a_client_without_the_token_is_refused_and_one_with_it_reads_and_writes(
    stack_nats: EmbeddedNats, tmp_path: Path,
) -> None:
    token = (tmp_path / "nats.token").read_text().strip()
    assert len(token) >= 40 and stack_nats.url == f"nats://{token}@127.0.0.1:{stack_nats.port}"

    for stranger in (f"nats://127.0.0.1:{stack_nats.port}", f"nats://not-{token}@127.0.0.1:{stack_nats.port}"):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await connect_once(stranger)

    nc = await connect_once(stack_nats.url)
    try:
        sub = await nc.subscribe("calmesh.booking.probe")
        await nc.publish("calmesh.booking.probe", b"visitor")
        assert (await sub.next_msg(timeout=3)).data == b"visitor"
        assert (await nc.jetstream().account_info()).streams >= 0  # JetStream answers too
    finally:
        await nc.close()


async def test_the_token_is_private_to_its_owner_and_not_on_the_command_line(
    stack_nats: EmbeddedNats, tmp_path: Path,
) -> None:
    token = (tmp_path / "nats.token").read_text().strip()
    assert mode(tmp_path / "nats.token") == 0o600
    assert mode(stack_nats.config_file) == 0o600
    assert stack_nats.process is not None
    cmdline = " ".join(psutil.Process(stack_nats.process.pid).cmdline())
    assert "nats-server" in cmdline and token not in cmdline  # /proc/<pid>/cmdline is world-readable
    assert token not in (tmp_path / "nats.log").read_text()


async def test_a_restart_on_the_same_data_directory_keeps_the_token(tmp_path: Path) -> None:
    first = start_embedded_nats(tmp_path)
    first.stop()
    second = start_embedded_nats(tmp_path)
    try:
        assert second.token == first.token and second.port == first.port
        nc = await connect_once(second.url)  # a service's NATS_URL of the last run still works
        await nc.close()
    finally:
        second.stop()
    other = tmp_path / "other"
    assert load_or_create_nats_token(other / "nats.token") != first.token  # one token per data directory


def test_a_token_file_readable_by_others_is_narrowed_to_0600(tmp_path: Path) -> None:
    path = tmp_path / "nats.token"
    path.write_text("an-old-token\n")
    path.chmod(0o644)
    assert load_or_create_nats_token(path) == "an-old-token"
    assert mode(path) == 0o600


def test_a_new_token_file_is_never_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "data" / "nats.token"
    token = load_or_create_nats_token(path)
    assert mode(path) == 0o600 and path.read_text() == token + "\n"
    assert load_or_create_nats_token(path) == token  # reused, not remade
