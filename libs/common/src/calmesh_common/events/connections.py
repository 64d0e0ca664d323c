"""Events published by the connections context (none yet)."""

from __future__ import annotations
