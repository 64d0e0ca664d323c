"""Fixtures of the browser tests (tests/test_browser_*.py); helpers are in browser_support.py."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# --import-mode=importlib adds no test directory to sys.path: the helpers (browser_support, fakes)
# are imported from here.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

if TYPE_CHECKING:
    from playwright.async_api import Browser


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium under Playwright (its own browser download cannot work here), one a module."""
    from playwright.async_api import async_playwright

    from browser_support import CHROMIUM, CHROMIUM_ARGS

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()
