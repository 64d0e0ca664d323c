"""Opaque, prefixed identifiers (`usr_`, `key_`, `conn_`, `src_`, `evt_`, `bp_`, `bk_`, `hold_`,
`poll_`, `opt_`, `wh_`), random or derived."""

from __future__ import annotations

import base64
import hashlib
import secrets


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def new_id(prefix: str) -> str:
    """A fresh random id: `prefix_` + 26 base32 characters (130 bits)."""
    return f"{prefix}_{_b32(secrets.token_bytes(17))[:26]}"


def derived_id(prefix: str, *parts: str) -> str:
    """A stable id derived from `parts` (the same parts always give the same id)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return f"{prefix}_{_b32(digest[:16])}"


def event_id_for(connection_id: str, calendar_id: str, uid: str, recurrence_id: str = "") -> str:
    """The `evt_` id of an event instance in the merged-events projection."""
    return derived_id("evt", connection_id, calendar_id, uid, recurrence_id)


def booking_uid(booking_id: str) -> str:
    """The iCalendar UID of the provider event written for a booking (or the projection row of a
    hold): derived from its id, so every retry of the write names the same event."""
    return f"{booking_id}@calmesh.xyz"
