"""A local HTTP receiver for webhook deliveries (and anything else a test wants answered): an ASGI
app that records every request and answers what the test planned for its path; `verify` checks a
delivery's Standard Webhooks signature with the reference library."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from standardwebhooks import Webhook

from .asgi import lifespan, read_body


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An ASGI app recording every POST; `plans[path]` says what to answer, in turn."""

    received: list[Received] = field(default_factory=list)
    plans: dict[str, list[Any]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def on(self, path: str, *answers: Any) -> str:
        """Answers for `path`, in turn (the last repeats): a status, (status, headers),
        (status, headers, body), or an awaitable-returning callable for answers that wait."""
        self.plans[path] = list(answers)
        return path

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        path = scope["path"]
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.received.append(Received(path, headers, body, time.time()))
        self.arrived.set()
        plan = self.plans.get(path, [200])
        answer = plan.pop(0) if len(plan) > 1 else plan[0]
        if callable(answer):
            answer = await answer()
        if isinstance(answer, int):
            answer = (answer, {})
        status, extra, content = answer if len(answer) == 3 else (*answer, b"ok")
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in extra.items()],
        })
        await send({"type": "http.response.body", "body": content})

    @property
    def bodies(self) -> list[Any]:
        """The JSON body of every request that brought one, in arrival order."""
        return [msgspec.json.decode(r.body) for r in self.received if r.body]

    @property
    def deliveries(self) -> list[tuple[str, Any]]:
        """(webhook-id, JSON body) of every request that brought a body, in arrival order."""
        return [(r.headers.get("webhook-id", ""), msgspec.json.decode(r.body)) for r in self.received if r.body]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received so far: {[(r.path, r.headers.get('webhook-id')) for r in self.received]}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), 0.05)
            except TimeoutError:
                pass


def verify(secret: str, r: Received) -> dict[str, Any]:
    """Verify a delivery with the reference `standardwebhooks` library; returns the parsed body."""
    return Webhook(secret).verify(r.body, r.headers)  # type: ignore[no-any-return]
