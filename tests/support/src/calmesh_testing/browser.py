"""Browser tests: Debian's Chromium driven by Playwright (Playwright's own browser download cannot
work here), and where screenshots go."""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
#: Without these Chromium waits on the closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def artifacts(name: str) -> Path:
    """The folder for a suite's screenshots: $CALMESH_TEST_ARTIFACTS (test-artifacts)/<name>."""
    path = Path(os.environ.get("CALMESH_TEST_ARTIFACTS", "test-artifacts")) / name
    path.mkdir(parents=True, exist_ok=True)
    return path
