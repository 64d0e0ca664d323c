"""A JSON API client with a bearer token (Google Calendar, Microsoft Graph): one retry with a fresh
token on 401, Retry-After honoured on 429 and 5xx (waited out inline when short), and every failure
mapped to the provider exceptions."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from calmesh_common.retryafter import parse_retry_after

from . import AuthError, NotFoundError, PreconditionFailed, ProviderError, SyncTokenExpired, TransientError

#: Called with force=True after a 401, to get a refreshed token.
TokenProvider = Callable[[bool], Awaitable[str]]


class ApiClient:
    """Base of GoogleClient and GraphClient."""

    provider = "provider"

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        token: TokenProvider,
        *,
        max_inline_wait: float = 30.0,
        attempts: int = 4,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.max_inline_wait = max_inline_wait
        self.attempts = attempts
        #: Requests sent (for tests and benchmarks that count them).
        self.requests = 0

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}{path}"

    def is_sync_token_error(self, response: httpx.Response, body: Any) -> bool:
        return response.status_code == 410

    def is_rate_limit(self, response: httpx.Response, body: Any) -> bool:
        return response.status_code == 429

    def error_text(self, body: Any) -> str:
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, dict):
                return str(error.get("message") or error.get("code") or "")[:200]
            if isinstance(error, str):
                return error[:200]
        return ""

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        ok_statuses: tuple[int, ...] = (),
    ) -> tuple[int, Any]:
        """Send one API call; returns (status, decoded JSON or None)."""
        forced = False
        for attempt in range(1, self.attempts + 1):
            token = await self.token(forced)
            all_headers = {"Authorization": f"Bearer {token}", "Accept": "application/json", **(headers or {})}
            self.requests += 1
            try:
                response = await self.http.request(method, self.url(path), params=params, json=json, headers=all_headers)
            except httpx.HTTPError as exc:
                if attempt < self.attempts:
                    await asyncio.sleep(min(8.0, 0.5 * 2**attempt) * (0.5 + random.random()))
                    continue
                raise TransientError(f"{self.provider} could not be reached: {type(exc).__name__}") from None
            try:
                body = response.json() if response.content else None
            except ValueError:
                body = None
            status = response.status_code
            if status < 300 or status in ok_statuses:
                return status, body
            if status == 401:
                if not forced:
                    forced = True
                    continue
                raise AuthError(f"{self.provider} refused the access token ({self.error_text(body) or 'HTTP 401'})")
            if self.is_sync_token_error(response, body):
                raise SyncTokenExpired(f"{self.provider}: the sync token is no longer valid")
            if self.is_rate_limit(response, body) or status >= 500:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                wait = retry_after if retry_after is not None else min(8.0, 0.5 * 2**attempt)
                if attempt < self.attempts and wait <= self.max_inline_wait:
                    await asyncio.sleep(wait)
                    continue
                raise TransientError(f"{self.provider} answered {status}; retrying later", retry_after)
            if status == 404 or status == 410:
                raise NotFoundError(f"{self.provider}: not found")
            if status == 412:
                raise PreconditionFailed(f"{self.provider}: the event changed meanwhile")
            if status == 403:
                raise AuthError(f"{self.provider} refused access ({self.error_text(body) or 'HTTP 403'})")
            raise ProviderError(f"{self.provider} answered {status}: {self.error_text(body)}")
        raise TransientError(f"{self.provider} kept failing; retrying later")
