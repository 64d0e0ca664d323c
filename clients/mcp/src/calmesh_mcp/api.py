"""A thin async client of the CalMesh REST API, as the MCP tools use it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_API_URL = "https://calmesh.xyz/api/v1"
KEY_PATTERN = re.compile(r"^cm_live_[A-Za-z0-9_-]{20,}$")


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


class ApiError(Exception):
    """The API answered with a problem (RFC 9457) or could not be reached."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(problem.get("detail") or problem.get("title") or f"HTTP {status}")

    @property
    def code(self) -> str:
        return str(self.problem.get("code") or "")


class CalMeshAPI:
    """Calls the REST API with the user's key. One instance per server process."""

    def __init__(self, config: Config, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            base_url=config.api_url + "/",
            headers={
                "Authorization": f"Bearer {config.api_key}",
                "User-Agent": "calmesh-mcp/0.1",
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(30.0),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """Send one request; returns the decoded JSON body (None for 204), raises ApiError."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        for k, v in clean.items():
            if isinstance(v, bool):
                clean[k] = "true" if v else "false"
        try:
            response = await self._client.request(method, path.lstrip("/"), params=clean, json=json)
        except httpx.HTTPError as exc:
            raise ApiError(
                0,
                {
                    "title": "CalMesh API unreachable",
                    "detail": f"Could not reach {self.config.api_url}: {type(exc).__name__}. "
                    "Check CALMESH_API_URL and your network.",
                    "code": "api_unreachable",
                },
            ) from exc
        if response.status_code == 204 or not response.content:
            if response.is_success:
                return None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success:
            return body
        problem = body if isinstance(body, dict) else {"title": response.reason_phrase, "detail": response.text[:500]}
        problem.setdefault("status", response.status_code)
        if "retry-after" in response.headers:
            problem.setdefault("retry_after", response.headers["retry-after"])
        raise ApiError(response.status_code, problem)
