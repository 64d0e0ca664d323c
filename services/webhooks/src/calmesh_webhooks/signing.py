"""Standard Webhooks v1 secrets and signatures, and the secrets' encryption at rest.

A secret is ``whsec_`` + base64 of 32 random bytes; the HMAC key is the decoded part after the
prefix. ``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one per
valid secret, separated by spaces (two during the overlap after a rotation).
"""

from __future__ import annotations

import base64
import hmac
import secrets
from collections.abc import Sequence
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh ``whsec_`` secret (shown to the user once)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret: the base64-decoded part after the prefix."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    return base64.b64decode(secret[len(SECRET_PREFIX):])


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<signature>`` for `body` sent as message `msg_id` at `timestamp` (Unix seconds)."""
    mac = hmac.digest(key, f"{msg_id}.{timestamp}.".encode() + body, "sha256")
    return "v1," + base64.b64encode(mac).decode()


def signature_header(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: a signature per key, space-separated."""
    return " ".join(sign(k, msg_id, timestamp, body) for k in keys)


class SecretBox:
    """Encrypts webhook secrets at rest with MultiFernet over the configured keys (first
    encrypts, all decrypt) and caches decrypted HMAC keys for the dispatcher's hot path."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("CALMESH_ENCRYPTION_KEYS must hold at least one Fernet key")
        self._fernet = MultiFernet([Fernet(k.encode() if isinstance(k, str) else k) for k in keys])
        self._key_of = lru_cache(maxsize=8192)(self._decrypt_key)

    def encrypt(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken as exc:
            raise ValueError("a webhook secret cannot be decrypted with CALMESH_ENCRYPTION_KEYS") from exc

    def _decrypt_key(self, token: bytes) -> bytes:
        return secret_key(self.decrypt(token))

    def key(self, token: bytes) -> bytes:
        """The HMAC key inside an encrypted secret (cached)."""
        return self._key_of(bytes(token))
