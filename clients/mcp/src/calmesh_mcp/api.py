"""A thin async client of the CalMesh REST API, as the MCP tools use it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_API_URL = "https://calmesh.xyz/api/v1"
KEY_PATTERN = re.compile(r"^cm_live_[A-Za-z0-9_-]{20,}$")


#: What each id or slug argument of a tool must look like. A value that does not match never reaches
#: a URL: ``"../webhooks/wh_…"`` as a connection id is refused, not sent.
_ID = r"[A-Za-z0-9]{1,64}"
ARGUMENT_PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "connection_id": (re.compile(rf"^conn_{_ID}$"), "a connection id (conn_…)"),
    "booking_id": (re.compile(rf"^bk_{_ID}$"), "a booking id (bk_…)"),
    "poll_id": (re.compile(rf"^poll_{_ID}$"), "a poll id (poll_…)"),
    "option_id": (re.compile(rf"^opt_{_ID}$"), "a poll option id (opt_…)"),
    "source_id": (re.compile(rf"^src_{_ID}$"), "a source id (src_…)"),
    "event_id": (re.compile(rf"^evt_{_ID}$"), "an event id (evt_…)"),
    "calendar_slug": (re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"), "a calendar slug (a-z, 0-9, -)"),
    "booking_page_slug": (re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"), "a booking page slug (a-z, 0-9, -)"),
    "handle": (re.compile(r"^[a-z0-9-]{3,40}$"), "a handle (3 to 40 of a-z, 0-9, -)"),
}


def argument_errors(arguments: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(argument, message) for each id or slug argument that is not shaped like one."""
    errors = []
    for name, value in arguments.items():
        rule = ARGUMENT_PATTERNS.get(name)
        if rule is None or value is None:
            continue
        pattern, what = rule
        if not isinstance(value, str) or not pattern.match(value):
            errors.append((name, f"must be {what}"))
    return errors


def api_path(segments: Sequence[str]) -> str:
    """The relative URL of an API path given as segments, each one percent-quoted (no '/' survives)."""
    parts = []
    for segment in segments:
        if not isinstance(segment, str) or segment in ("", ".", ".."):
            raise ValueError(f"not a path segment: {segment!r}")
        parts.append(quote(segment, safe=""))
    return "/".join(parts)


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
        path: Sequence[str],
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """Send one request to the API path made of `path`'s segments (each quoted here, the one place
        a tool's arguments become a URL); returns the decoded JSON body (None for 204), raises ApiError."""
        url = api_path(path)
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        for k, v in clean.items():
            if isinstance(v, bool):
                clean[k] = "true" if v else "false"
        try:
            response = await self._client.request(method, url, params=clean, json=json)
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
