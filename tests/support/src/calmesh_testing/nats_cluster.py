"""A real JetStream cluster on loopback for tests: N `nats-server` processes joined by cluster routes.

Each node has its own client port, route port, monitoring port and store directory; `kill(i)`
ends a node at once (SIGKILL, as a crashed pod) and `start(i)` brings it back on the same ports
and store, as a StatefulSet would.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from calmesh_common.devstack.embedded import _bin, free_port, stop_process


@dataclass
class ClusterNode:
    name: str
    port: int
    route_port: int
    monitor_port: int
    store_dir: Path
    config: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class NatsCluster:
    """`size` JetStream servers in one cluster named `name`, storing under `root`."""

    root: Path
    size: int = 3
    name: str = "calmesh-test"
    nodes: list[ClusterNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for index in range(self.size):
            name = f"n{index}"
            self.nodes.append(ClusterNode(name, free_port(), free_port(), free_port(),
                                          self.root / name / "js", self.root / f"{name}.conf"))
        routes = ", ".join(f"nats-route://127.0.0.1:{n.route_port}" for n in self.nodes)
        for node in self.nodes:
            node.config.write_text(
                f"server_name: {node.name}\n"
                f"listen: 127.0.0.1:{node.port}\n"
                f"http: 127.0.0.1:{node.monitor_port}\n"
                f"jetstream {{ store_dir: \"{node.store_dir}\" }}\n"
                f"cluster {{ name: {self.name}, listen: 127.0.0.1:{node.route_port}, routes: [{routes}] }}\n"
            )

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, server_name: str) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.name == server_name)

    def start(self, index: int | None = None, timeout: float = 30.0) -> None:
        """Start one node (or all), then wait until each started one reports JetStream healthy."""
        chosen = range(self.size) if index is None else [index]
        for i in chosen:
            node = self.nodes[i]
            log = open(self.root / f"{node.name}.log", "ab")  # noqa: SIM115 - the process owns it
            node.process = subprocess.Popen([_bin("nats-server"), "-c", str(node.config)], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        for i in chosen:
            self._wait_healthy(self.nodes[i], deadline)

    def _wait_healthy(self, node: ClusterNode, deadline: float) -> None:
        url = f"http://127.0.0.1:{node.monitor_port}/healthz"
        while True:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"nats-server {node.name} exited with {node.process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - loopback
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {node.name} not healthy in time (see {self.root}/{node.name}.log)")
            time.sleep(0.1)

    def kill(self, index: int) -> None:
        """End node `index` at once, as a crash would."""
        process = self.nodes[index].process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def stop(self) -> None:
        for node in self.nodes:
            if node.running:
                stop_process(node.process)
