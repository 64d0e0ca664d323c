"""Command handlers of the booking context (being split into one module per resource)."""

from .bookings import *  # noqa: F403
