"""The scripts and styles of the public pages, served by booking under fingerprinted names.

Each file of ``static/`` is served at ``/assets/booking/<stem>.<sha256 prefix>.<ext>`` (for example
``/assets/booking/booking-page.3f9a0c1d2b4e5f60.js``): the name changes whenever the content does,
so a browser may keep an asset for a year (``immutable``) and a new release is never hidden behind
an old copy. The pages link these files instead of carrying inline ``<script>``/``<style>``, which
lets their Content-Security-Policy allow scripts and styles from the page's own origin only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files

ASSET_PATH = "/assets/booking"
#: What the gateway routes to booking: a fingerprinted name, nothing else.
ASSET_NAME = re.compile(r"^[a-z0-9-]{1,40}\.[0-9a-f]{16}\.(?:js|css)$")
IMMUTABLE = "public, max-age=31536000, immutable"
_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class Asset:
    source: str
    name: str
    body: bytes
    content_type: str

    @property
    def url(self) -> str:
        return f"{ASSET_PATH}/{self.name}"


def fingerprinted(source: str, body: bytes) -> str:
    """``booking-page.js`` -> ``booking-page.<first 16 hex digits of sha256(body)>.js``."""
    stem, _, ext = source.rpartition(".")
    return f"{stem}.{hashlib.sha256(body).hexdigest()[:16]}.{ext}"


class Assets:
    """A set of static files by source name and by fingerprinted name."""

    def __init__(self, sources: Mapping[str, bytes]) -> None:
        self.by_source: dict[str, Asset] = {}
        for source, body in sources.items():
            ext = source.rpartition(".")[2]
            self.by_source[source] = Asset(source, fingerprinted(source, body), body, _TYPES[ext])
        self.by_name = {a.name: a for a in self.by_source.values()}

    def url(self, source: str) -> str:
        return self.by_source[source].url

    def get(self, name: str) -> Asset | None:
        return self.by_name.get(name)


def load_assets() -> Assets:
    """The files of the package's ``static/`` directory (read once, at import)."""
    root = files("calmesh_booking") / "static"
    return Assets({f.name: f.read_bytes() for f in root.iterdir() if f.name.rpartition(".")[2] in _TYPES})


ASSETS = load_assets()
