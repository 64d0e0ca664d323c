"""API keys: ``cm_live_`` + 36 random base62 characters (≈ 214 bits) + a 6-character CRC-32 checksum.

The checksum lets the gateway tell a mistyped or truncated key from an unknown or revoked one
without touching the database. Keys are stored only as their SHA-256; the first characters after
``cm_live_`` are kept as a prefix to recognise a key by in listings. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib
from dataclasses import dataclass

KEY_PREFIX = "cm_live_"
BODY_LENGTH = 36
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(KEY_PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 8

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ALPHABET_SET = frozenset(ALPHABET)


class MalformedKey(ValueError):
    """The string is not a well-formed CalMesh key (wrong prefix, length, characters or checksum)."""


def _base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        chars.append(ALPHABET[rem])
    return "".join(reversed(chars))


def checksum(text: str) -> str:
    """The 6-character base62 CRC-32 of `text` (the key without its checksum)."""
    return _base62(zlib.crc32(text.encode("ascii")), CHECKSUM_LENGTH)


def random_id(prefix: str, length: int = 20) -> str:
    """An opaque id with a type prefix: ``usr_…``, ``key_…``, ``ses_…``."""
    return prefix + "".join(secrets.choice(ALPHABET) for _ in range(length))


@dataclass(frozen=True)
class NewKey:
    key: str
    prefix: str
    key_hash: str


def generate_key() -> NewKey:
    """A fresh key, its display prefix and its hash. The key itself is shown once, never stored."""
    body = KEY_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    key = body + checksum(body)
    return NewKey(key=key, prefix=key[:DISPLAY_PREFIX_LENGTH], key_hash=hash_key(key))


def hash_key(key: str) -> str:
    """What the database and the caches hold for a key (keys are random, so a fast hash is enough)."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def check_key_format(key: str) -> None:
    """Raise MalformedKey, saying what is wrong, unless `key` is a well-formed key."""
    if not key.startswith(KEY_PREFIX):
        raise MalformedKey("This is not a CalMesh API key: keys start with cm_live_.")
    if len(key) < KEY_LENGTH:
        raise MalformedKey("This API key is too short: it was probably cut off when copied.")
    if len(key) > KEY_LENGTH:
        raise MalformedKey("This API key is too long: check that nothing was pasted after it.")
    if not _ALPHABET_SET.issuperset(key[len(KEY_PREFIX):]):
        raise MalformedKey("This API key contains characters that no CalMesh key has.")
    body, given = key[: -CHECKSUM_LENGTH], key[-CHECKSUM_LENGTH:]
    if not secrets.compare_digest(checksum(body), given):
        raise MalformedKey("This API key's checksum does not match: it was mistyped or altered.")
