"""The connections service's internal API, as the sync workers use it: a connection with its
decrypted credentials, and valid OAuth access tokens (docs/contracts.md)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import httpx
import msgspec

from calmesh_common.idempotency import HEADER as IDEMPOTENCY_HEADER
from calmesh_common.idempotency import in_progress_answer
from calmesh_common.service import SECRET_HEADER
from calmesh_providers import AuthError, NotFoundError, RevokedError, TransientError


class ProviderCalendar(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    color: str | None = None
    read_only: bool = False
    ref: str = ""


class ConnectionDetails(msgspec.Struct, frozen=True, kw_only=True):
    """What GET /internal/connections/{id} answers."""

    id: str
    user_id: str
    provider: str
    display_name: str = ""
    status: str = "pending"
    error_kind: str | None = None
    user_timezone: str = "UTC"
    #: Non-secret settings: url, username.
    settings: dict[str, str] = msgspec.field(default_factory=dict)
    #: Decrypted secrets of CalDAV/iCloud connections (password); OAuth ones use access tokens.
    credentials: dict[str, str] = msgspec.field(default_factory=dict)
    calendars: list[ProviderCalendar] = msgspec.field(default_factory=list)


class AccessToken(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    expires_at: datetime | None = None


_details = msgspec.json.Decoder(ConnectionDetails)
_token = msgspec.json.Decoder(AccessToken)


class ConnectionsAPI:
    def __init__(self, http: httpx.AsyncClient, base_url: str, internal_secret: str) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.headers = {SECRET_HEADER: internal_secret}

    async def _send(self, method: str, path: str, json: Any = None, key: str | None = None) -> httpx.Response:
        """The request, tried up to four times (with `key` as its Idempotency-Key each time)."""
        last: Exception | None = None
        headers = {**self.headers, IDEMPOTENCY_HEADER: key} if key else self.headers
        for attempt in range(4):
            try:
                response = await self.http.request(method, f"{self.base_url}{path}", json=json, headers=headers)
            except httpx.HTTPError as exc:
                last = exc
                await asyncio.sleep(0.3 * 2**attempt)
                continue
            if response.status_code >= 500 or _in_progress(response):
                # 409 idempotency_in_progress: the first try is still being answered; ask again.
                last = TransientError(f"the connections service answered {response.status_code}")
                await asyncio.sleep(0.3 * 2**attempt)
                continue
            return response
        raise TransientError(f"the connections service could not be reached: {last!r}")

    async def connection(self, connection_id: str) -> ConnectionDetails:
        response = await self._send("GET", f"/internal/connections/{connection_id}")
        if response.status_code == 404:
            raise NotFoundError("the connection no longer exists")
        if response.status_code != 200:
            raise TransientError(f"the connections service answered {response.status_code}")
        return _details.decode(response.content)

    async def access_token(self, connection_id: str, *, force_refresh: bool = False) -> str:
        # One key for this call's tries: a retry whose first answer was lost refreshes nothing twice.
        response = await self._send(
            "POST", f"/internal/connections/{connection_id}/access-token", json={"force_refresh": force_refresh},
            key=f"access-token:{connection_id}:{uuid.uuid4().hex}",
        )
        if response.status_code == 200:
            return _token.decode(response.content).access_token
        if response.status_code == 404:
            raise NotFoundError("the connection no longer exists")
        detail = ""
        try:
            body = response.json()
            detail = body.get("detail") or ""
            code = body.get("code")
        except ValueError:
            code = None
        if response.status_code == 401 and code == "revoked":
            raise RevokedError(detail or "the provider revoked access; reconnect the calendar")
        if response.status_code in (401, 403, 409):
            raise AuthError(detail or "the provider refused the credentials; reconnect the calendar")
        raise TransientError(f"the access token could not be had ({response.status_code}): {detail}")


def _in_progress(response: httpx.Response) -> bool:
    return response.status_code == 409 and in_progress_answer(response.content)
