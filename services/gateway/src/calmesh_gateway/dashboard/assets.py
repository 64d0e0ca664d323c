"""The dashboard's scripts and styles, served by CalMesh itself under content-hashed names.

A name carries the first 12 hex digits of its content's SHA-256 (`app.3f9c0a1b2c4d.js`), so a
browser may keep it for a year: a changed file is a new name. Only the current names are served.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

STATIC = Path(__file__).parent / "static"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".svg": "image/svg+xml"}


@dataclass(frozen=True, slots=True)
class Asset:
    logical: str  # "app.js"
    name: str  # "app.3f9c0a1b2c4d.js"
    body: bytes
    content_type: str


@cache
def assets() -> dict[str, Asset]:
    """Every static file by its fingerprinted name (read once)."""
    found: dict[str, Asset] = {}
    for path in sorted(STATIC.iterdir()):
        if path.suffix not in _TYPES:
            continue
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:12]
        name = f"{path.stem}.{digest}{path.suffix}"
        found[name] = Asset(path.name, name, body, _TYPES[path.suffix])
    return found


@cache
def asset_url(logical: str) -> str:
    """The URL of a static file by its plain name, for templates."""
    for asset in assets().values():
        if asset.logical == logical:
            return f"/app/assets/{asset.name}"
    raise KeyError(logical)
