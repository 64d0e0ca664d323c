"""Events published by the sync context (none yet)."""

from __future__ import annotations
