"""The dashboard's way to the public API: HTTP, with the visitor's own session cookie.

The dashboard never reads the gateway's tables or calls a service directly: what a page shows is
what `GET /api/v1/...` answers to this user, so it can show nothing the user could not fetch with
curl. Only safe methods are sent from here; changes go from the browser to the API (with CSRF).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from ..security import SESSION_COOKIE


class SignedOut(Exception):
    """The API answered 401: the session has ended (the page sends the visitor to sign in)."""


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    """The API answered a problem the page shows instead of its content."""

    status: int
    detail: str


class DashboardApi:
    """One pooled client for every page; each call carries the caller's session cookie."""

    def __init__(self, base_url: str, timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        # httpx logs every request at INFO; a page's API calls are not news (the gateway logs them).
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, follow_redirects=False,
                                      trust_env=False)

    async def close(self) -> None:
        await self.http.aclose()

    async def get(self, session_token: str, path: str, params: dict[str, Any] | None = None,
                  request_id: str | None = None) -> Any:
        """GET `path` (under /api/v1) as the session's user; the decoded JSON body."""
        headers = {"Cookie": f"{SESSION_COOKIE}={session_token}", "Accept": "application/json"}
        if request_id:
            headers["X-Request-Id"] = request_id
        r = await self.http.get(f"/api/v1{path}", params=params, headers=headers)
        if r.status_code == 401:
            raise SignedOut()
        if r.status_code >= 400:
            try:
                detail = str(r.json().get("detail") or r.reason_phrase)
            except ValueError:
                detail = r.reason_phrase
            raise ApiError(r.status_code, detail)
        return r.json()
