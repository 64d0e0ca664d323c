"""Opaque list cursors (docs/api-guide.md: ``next_cursor`` / ``?cursor=``), one format for every service.

A cursor is the keyset position after which the next page starts — say ``(created_at, id)`` of the
last row — as JSON, base64url without padding. Clients must treat it as opaque; it is not signed,
because it grants nothing: every list query still filters by the caller, so a forged cursor only
moves where the caller's own list resumes. Datetimes keep their microseconds (so a keyset on a
``timestamptz`` neither skips nor repeats rows) and come back aware.

`decode_cursor` checks the shape (``tuple[AwareDatetime, str]`` …) with msgspec and raises the 400
problem a bad cursor gets: code ``invalid_cursor`` unless the service documents another.

Pure: no I/O, safe to import from a ``domain`` module.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, TypeVar

import msgspec

from .problems import FieldError, Problem

__all__ = ["AwareDatetime", "bad_cursor", "decode_cursor", "encode_cursor"]

T = TypeVar("T")

#: A datetime in a cursor's shape that must carry its offset (as `encode_cursor` writes it).
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]

_encoder = msgspec.json.Encoder()


def encode_cursor(*position: Any) -> str:
    """The opaque cursor of `position` (JSON-encodable values: str, int, datetime, lists …)."""
    return base64.urlsafe_b64encode(_encoder.encode(list(position))).rstrip(b"=").decode()


def bad_cursor(code: str = "invalid_cursor", detail: str = "not a cursor this API gave out") -> Problem:
    """The 400 of a cursor this API did not give out (or gave out for another query)."""
    return Problem(400, code, f"cursor: {detail}.", errors=[FieldError("cursor", detail)])


def decode_cursor(cursor: str, shape: type[T], *, code: str = "invalid_cursor") -> T:
    """The position in `cursor`, checked against `shape` (e.g. ``tuple[AwareDatetime, str]``);
    `bad_cursor(code)` for anything that is not such a cursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=shape)
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise bad_cursor(code) from None
