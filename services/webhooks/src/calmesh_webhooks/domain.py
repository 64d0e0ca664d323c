"""The dispatcher's rules, free of I/O: what an answer means and when to try again."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime
from ipaddress import ip_address
from urllib.parse import urlsplit

from calmesh_common.addresses import address_refusal
from calmesh_common.retryafter import parse_retry_after

#: Answers after which the receiver tells us when to come back.
RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to."""

    succeeded: bool
    gone: bool = False  # 410: the subscriber asked us to stop
    retry_after: float | None = None  # seconds, from Retry-After on 429/503


def classify(status: int | None, retry_after_header: str | None = None, *, now: datetime | None = None) -> Outcome:
    """Only a 2xx succeeds; 410 disables; 429 and 503 may say when to retry. `status` None is a
    transport failure (refused, timed out, too large, redirect)."""
    if status is not None and 200 <= status < 300:
        return Outcome(True)
    if status == 410:
        return Outcome(False, gone=True)
    if status in RETRY_AFTER_STATUSES and retry_after_header:
        # Not capped here: `retry_delay` caps it at CALMESH_WEBHOOK_MAX_RETRY_AFTER_SECONDS.
        return Outcome(False, retry_after=parse_retry_after(retry_after_header, now=now, cap=math.inf))
    return Outcome(False)


def retry_delay(
    attempts_made: int,
    schedule: tuple[float, ...],
    *,
    jitter: float,
    retry_after: float | None = None,
    max_retry_after: float = 86400.0,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt after `attempts_made` attempts all failed, or None when the
    schedule is spent. A Retry-After (capped at `max_retry_after`) replaces the scheduled delay
    when longer; the scheduled delay is spread by ±`jitter`."""
    if attempts_made > len(schedule):
        return None
    base = schedule[attempts_made - 1]
    spread = (rng or random).uniform(-jitter, jitter) * base if jitter else 0.0
    delay = max(0.0, base + spread)
    if retry_after is not None:
        delay = max(delay, min(retry_after, max_retry_after))
    return delay


def url_problem(url: object, *, allow_private_networks: bool) -> str | None:
    """Why `url` cannot be a webhook endpoint, or None. Only absolute http(s) URLs with a host;
    a literal private address is refused at once (names are checked at every delivery)."""
    if not isinstance(url, str) or not url.strip():
        return "must be an absolute http or https URL"
    if len(url) > 2048:
        return "must be at most 2048 characters"
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an absolute http or https URL"
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "has an invalid port"
    if not host:
        return "must name a host"
    if parts.username or parts.password:
        return "must not carry credentials"
    if not allow_private_networks:
        try:
            ip_address(host)
        except ValueError:
            return None
        reason = address_refusal(host)
        if reason:
            return f"is not reachable from the public internet ({reason})"
    return None
