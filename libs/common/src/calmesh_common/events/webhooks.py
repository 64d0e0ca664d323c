"""Events published by the webhooks context: the life of webhook subscriptions.

Subjects are ``calmesh.webhooks.<name>`` on the stream ``CALMESH_WEBHOOKS``; the stream id is the
webhook id. Secrets never appear in an event. Deliveries themselves are operational state of the
dispatcher (its ``deliveries`` and ``attempts`` tables), not events.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from . import Event


class _WebhookEvent(Event, tag=False, frozen=True):
    """The fields every webhook event starts with (no tag of its own: not an event by itself)."""

    context: ClassVar[str] = "webhooks"
    webhook_id: str
    user_id: str


class WebhookCreated(_WebhookEvent, tag="webhook.created.v1", frozen=True):
    url: str
    event_types: list[str]
    description: str = ""


class WebhookUpdated(_WebhookEvent, tag="webhook.updated.v1", frozen=True):
    url: str
    event_types: list[str]
    status: str
    description: str = ""
    #: The names of the fields that changed.
    changed: list[str] = []


class WebhookDeleted(_WebhookEvent, tag="webhook.deleted.v1", frozen=True):
    """The owner deleted the subscription."""


class WebhookSecretRotated(_WebhookEvent, tag="webhook.secret_rotated.v1", frozen=True):
    #: Until when the previous secret keeps signing beside the new one.
    previous_valid_until: datetime


class WebhookDisabled(_WebhookEvent, tag="webhook.disabled.v1", frozen=True):
    """The dispatcher disabled a subscription: its endpoint answered 410 Gone (`reason` ``gone``)
    or it failed without a success since `failing_since` (``failing``).

    This is the owner's notice: a mail or notification service does not exist yet; when it does,
    it consumes this event."""

    url: str
    reason: str
    detail: str
    failing_since: datetime | None = None


class WebhookReplayRequested(_WebhookEvent, tag="webhook.replay_requested.v1", frozen=True):
    replay_id: str
    since: datetime
