"""Waiting for what another process or task does: one poll loop for every test."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def wait_for(check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1, *,
                   what: str = "condition") -> Any:
    """Call `check` (plain or async) every `interval` seconds until it returns something truthy,
    and return that; fail after `timeout` seconds, naming `what` and the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {result!r:.300})")
        await asyncio.sleep(interval)
