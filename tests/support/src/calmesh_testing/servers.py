"""ASGI apps served on loopback inside the test's event loop (uvicorn, no signal handlers).

`Served(app)` when a test starts and stops the server itself (`await Served(app).start()`, then
`await served.stop()`), `async with serve(app) as url:` when a block owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn

from calmesh_common.devstack.embedded import free_port

__all__ = ["Served", "free_port", "serve"]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test runner owns the signals


class Served:
    """`app` under uvicorn on 127.0.0.1:`port` (a free one when not given) in the running loop."""

    def __init__(self, app: Any, port: int | None = None, *, lifespan: str = "on") -> None:
        self.port = port or free_port()
        self.server = _Server(uvicorn.Config(
            app, host="127.0.0.1", port=self.port, lifespan=lifespan, log_level="warning", access_log=False,
            loop="asyncio", timeout_graceful_shutdown=3,
        ))
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Served:
        """Start serving; returns when the server listens (or raises what stopped it)."""
        self.task = asyncio.create_task(self.server.serve())
        for _ in range(800):
            if self.server.started:
                return self
            if self.task.done():
                self.task.result()
                raise RuntimeError("the test server stopped during start-up")
            await asyncio.sleep(0.025)
        raise RuntimeError("the test server did not start")

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 15)


@contextlib.asynccontextmanager
async def serve(app: Any, port: int | None = None, *, lifespan: str = "on") -> AsyncIterator[str]:
    """Run `app` on 127.0.0.1:`port` until the block ends; yields its base URL."""
    served = await Served(app, port, lifespan=lifespan).start()
    try:
        yield served.url
    finally:
        await served.stop()
