"""Sessions, CSRF tokens and password hashing.

A session token lives only in the client's HttpOnly cookie; the database and the caches keep an
HMAC of it under the session secret. The CSRF token is derived from the session token (another
HMAC), so only the holder of the session can know it; it travels in a cookie that scripts can read
and must come back in ``X-CSRF-Token`` on every cookie-authenticated POST, PUT, PATCH or DELETE.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

SESSION_COOKIE = "calmesh_session"
CSRF_COOKIE = "calmesh_csrf"
CSRF_HEADER = "x-csrf-token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_TOKEN_BYTES = 32


def new_session_token() -> str:
    return secrets.token_urlsafe(_TOKEN_BYTES)


def _mac(secret: str, purpose: str, value: str) -> bytes:
    return hmac.new(secret.encode(), f"{purpose}:{value}".encode(), hashlib.sha256).digest()


def session_hash(secret: str, token: str) -> str:
    """What is stored for a session token."""
    return _mac(secret, "session", token).hex()


def csrf_token(secret: str, session_token: str) -> str:
    """The CSRF token that belongs to a session."""
    return base64.urlsafe_b64encode(_mac(secret, "csrf", session_token)).rstrip(b"=").decode()


def csrf_ok(secret: str, method: str, session_token: str, header_value: str | None) -> bool:
    """Whether a cookie-authenticated request may proceed: safe methods always, unsafe ones only
    with the session's CSRF token in X-CSRF-Token."""
    if method not in UNSAFE_METHODS:
        return True
    if not header_value:
        return False
    return hmac.compare_digest(header_value.encode(), csrf_token(secret, session_token).encode())


def looks_like_session_token(value: str) -> bool:
    """A cheap sanity check before hashing: url-safe base64 of the expected length."""
    return 20 <= len(value) <= 100 and all(c.isalnum() or c in "-_" for c in value)


def parse_cookies(header: str) -> dict[str, str]:
    """Cookies from a Cookie header; malformed pairs are skipped, never an error."""
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


class Passwords:
    """argon2id hashing, off the event loop, a few at a time (each takes ~64 MiB and tens of ms)."""

    def __init__(self, hasher: PasswordHasher | None = None, concurrency: int = 4) -> None:
        self.hasher = hasher or PasswordHasher()
        self._slots = asyncio.Semaphore(concurrency)
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """Check `password`; with no stored hash (no such user) a dummy check takes the same time."""
        if stored_hash is None:
            if self._dummy is None:
                self._dummy = await self.hash(secrets.token_urlsafe(16))
            stored_hash = self._dummy
            await self._verify(stored_hash, password)
            return False
        return await self._verify(stored_hash, password)

    async def _verify(self, stored_hash: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self.hasher.verify(stored_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        async with self._slots:
            return await asyncio.to_thread(check)
