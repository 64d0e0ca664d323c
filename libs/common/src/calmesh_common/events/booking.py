"""Events published by the booking context (none yet)."""

from __future__ import annotations
