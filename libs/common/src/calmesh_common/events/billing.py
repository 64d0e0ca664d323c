"""Events published by the billing context (none yet)."""

from __future__ import annotations
