"""Events published by the webhooks context (none yet)."""

from __future__ import annotations
