"""The MCP server's configuration and its client of the CalMesh REST API."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

DEFAULT_API_URL = "https://calmesh.xyz/api/v1"
KEY_PATTERN = re.compile(r"^cm_live_[A-Za-z0-9_-]{20,}$")
USER_AGENT = "calmesh-mcp/0.2"


class ConfigError(Exception):
    """The server cannot start with this configuration; the message says what to set."""


@dataclass(frozen=True)
class Config:
    api_key: str
    api_url: str = DEFAULT_API_URL

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Config:
        key = env.get("CALMESH_API_KEY", "").strip()
        if not key:
            raise ConfigError(
                "CALMESH_API_KEY is not set. Create an API key in your CalMesh dashboard (or POST /api/v1/api-keys) "
                "and set CALMESH_API_KEY=cm_live_… in the MCP server's environment."
            )
        if not KEY_PATTERN.match(key):
            raise ConfigError(
                "CALMESH_API_KEY does not look like a CalMesh API key: keys start with cm_live_ followed by at least "
                "20 letters, digits, '-' or '_'. Copy the whole key shown when it was created."
            )
        url = (env.get("CALMESH_API_URL") or DEFAULT_API_URL).strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"CALMESH_API_URL must be an http(s) URL, got {url!r}")
        return cls(api_key=key, api_url=url)


def api_client(config: Config, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """An HTTP client of the API that sends the user's key with every request."""
    return httpx.AsyncClient(
        base_url=config.api_url + "/",
        headers={"Authorization": f"Bearer {config.api_key}", "User-Agent": USER_AGENT, "Accept": "application/json"},
        timeout=httpx.Timeout(30.0),
        transport=transport,
    )
