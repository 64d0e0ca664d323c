"""Secrets at rest: MultiFernet over ``CALMESH_ENCRYPTION_KEYS`` (newest first). Every key
decrypts, the first encrypts, so a key is rotated by prepending a new one; `reencrypt` moves a
value to the newest key."""

from __future__ import annotations

from typing import Any

import msgspec
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from calmesh_common.settings import Settings, SettingsError


class Vault:
    def __init__(self, keys: tuple[str, ...] | list[str]) -> None:
        if not keys:
            raise SettingsError("CALMESH_ENCRYPTION_KEYS must hold at least one Fernet key")
        try:
            self._fernet = MultiFernet([Fernet(k.encode() if isinstance(k, str) else k) for k in keys])
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"CALMESH_ENCRYPTION_KEYS holds a key that is not a Fernet key: {exc}") from None

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        return cls(settings.encryption_keys)

    def seal(self, value: dict[str, Any]) -> bytes:
        return self._fernet.encrypt(msgspec.json.encode(value))

    def open(self, token: bytes | None) -> dict[str, Any]:
        if not token:
            return {}
        try:
            opened: dict[str, Any] = msgspec.json.decode(self._fernet.decrypt(bytes(token)))
            return opened
        except InvalidToken:
            raise SettingsError("stored credentials cannot be decrypted with CALMESH_ENCRYPTION_KEYS") from None

    def seal_text(self, value: str) -> bytes:
        return self._fernet.encrypt(value.encode())

    def open_text(self, token: bytes) -> str:
        return self._fernet.decrypt(bytes(token)).decode()

    def reencrypt(self, token: bytes) -> bytes:
        return self._fernet.rotate(bytes(token))
