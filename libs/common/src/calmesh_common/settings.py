"""Settings: one frozen object read from the environment, once, at start-up.

Every variable is documented in `.env.example` at the repository root. Nothing here connects to
anything; `Settings.from_env()` only reads and validates.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec

from .guarded import parse_endpoint

#: The services that answer HTTP, with the default port each listens on behind the gateway.
SERVICE_NAMES: tuple[str, ...] = (
    "connections",
    "sync",
    "availability",
    "booking",
    "billing",
    "webhooks",
)


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from exc


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from exc


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}")


def _floats(env: Mapping[str, str], name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise SettingsError(f"{name} must be comma-separated numbers, got {raw!r}") from exc


def _public_is_https(env: Mapping[str, str], http_port: int) -> bool:
    return env.get("CALMESH_PUBLIC_BASE_URL", f"http://127.0.0.1:{http_port}").strip().lower().startswith("https://")


def _networks(env: Mapping[str, str], name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Comma-separated addresses or CIDR networks, each checked (a typo must not trust nobody silently)."""
    parts = _list(env, name, default)
    for part in parts:
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise SettingsError(f"{name} must list IP addresses or CIDR networks (10.0.0.0/8, ::1), got {part!r}") from None
    return parts


def _endpoints(
    env: Mapping[str, str], name: str, default: tuple[tuple[str, int], ...] = ()
) -> tuple[tuple[str, int], ...]:
    """Comma-separated ``address:port`` pairs (IP literals, ``[::1]:5232`` for IPv6), each checked."""
    endpoints = []
    for part in _list(env, name):
        try:
            endpoints.append(parse_endpoint(part))
        except ValueError:
            raise SettingsError(f"{name} must list address:port pairs (127.0.0.1:5232, [::1]:5232), got {part!r}") from None
    return tuple(endpoints) or default


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    raw = env.get(name, "")
    return tuple(part.strip() for part in raw.split(",") if part.strip()) or default


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name, default)


#: How a variable's text becomes a setting, by the setting's type.
_READERS: dict[object, Callable[[Mapping[str, str], str, Any], object]] = {
    str: _text,
    int: _int,
    float: _float,
    bool: _bool,
    tuple[float, ...]: _floats,
    tuple[str, ...]: _list,
}
#: Settings read by a reader of their own (lists whose every entry is checked).
_FIELD_READERS: dict[str, Callable[[Mapping[str, str], str, Any], object]] = {
    "trusted_proxies": _networks,
    "allow_private_endpoints": _endpoints,
}
#: Settings whose variable is not ``CALMESH_<NAME>``.
_ENV_NAMES = {"database_url": "DATABASE_URL", "nats_url": "NATS_URL", "service_name": "CALMESH_SERVICE"}
#: Settings read in lower case, and URLs read without a trailing slash.
_LOWERED = ("log_level", "smtp_security", "push_notifications")
_NO_TRAILING_SLASH = ("public_base_url", "dashboard_api_url", "mollie_api_base", "google_api_url", "microsoft_graph_url")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a CalMesh process needs to know about its environment."""

    # Where state lives.
    database_url: str = ""
    nats_url: str = "nats://127.0.0.1:4222"
    data_dir: str = ".calmesh"

    # This process.
    service_name: str = "calmesh"
    host: str = "127.0.0.1"
    port: int = 8080
    http_port: int = 8080
    public_base_url: str = "http://127.0.0.1:8080"
    log_level: str = "info"
    log_json: bool = True
    db_pool_min: int = 1
    db_pool_max: int = 10

    # Trust between the gateway and the services.
    internal_secret: str = ""
    service_urls: Mapping[str, str] = msgspec.field(default_factory=dict)

    # Gateway: accounts, sessions, keys, limits.
    session_secret: str = ""
    session_ttl_seconds: int = 14 * 24 * 3600
    #: The session and CSRF cookies carry `Secure`; default: whether the public base URL is https.
    cookie_secure: bool = False
    #: Addresses or CIDR networks of the reverse proxies (ingress, load balancer) whose
    #: X-Forwarded-For / X-Forwarded-Proto are believed. Empty: no proxy headers are read at all,
    #: the client address is the TCP peer's.
    trusted_proxies: tuple[str, ...] = ()
    max_body_bytes: int = 1_048_576
    rate_limit_per_minute: int = 600
    rate_limit_burst: int = 120
    public_rate_limit_per_minute: int = 300
    #: Failed sign-ins: per account and per client address, `login_failures_burst` failures are
    #: allowed at once, then one per `60 / login_failures_per_minute` seconds (429 + Retry-After).
    login_failures_per_minute: int = 5
    login_failures_burst: int = 10
    login_address_failures_per_minute: int = 30
    login_address_failures_burst: int = 60
    #: Unknown or malformed API keys from one client address: a burst, then this many a minute;
    #: past it a 429 before the key is even looked at.
    bad_key_failures_per_minute: int = 30
    bad_key_failures_burst: int = 30
    health_timeout_seconds: float = 2.0
    forward_timeout_seconds: float = 30.0
    #: Where the dashboard (/app) calls the public API; empty: this gateway itself on loopback.
    dashboard_api_url: str = ""

    # Secrets at rest (connections credentials, webhook secrets): comma-separated Fernet keys,
    # newest first; every key decrypts, the first encrypts.
    encryption_keys: tuple[str, ...] = ()

    # Sync workers.
    sync_workers: int = 2
    allow_private_networks: bool = False
    #: Exact (address, port) pairs a user-given URL may reach although they are not public
    #: (``CALMESH_ALLOW_PRIVATE_ENDPOINTS``; `calmesh-up --demo` names its own loopback servers).
    allow_private_endpoints: tuple[tuple[str, int], ...] = ()

    #: Replicas of every JetStream stream, applied by calmesh-migrate (3 on a 3-node cluster).
    stream_replicas: int = 1

    # Observability.
    otel_console: bool = False
    #: A port of its own for /metrics (Prometheus); 0: /metrics on the service's port.
    metrics_port: int = 0
    #: One structured log line per HTTP request (event "http_request").
    access_log: bool = True

    # Webhooks dispatcher (services/webhooks).
    #: The schema the webhooks service owns (durable consumer names derive from it).
    webhooks_schema: str = "webhooks"
    #: Seconds to wait after each failed attempt before the next; the first attempt goes at once.
    #: One attempt more than there are entries; after the last failure the delivery is failed.
    webhook_retry_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    #: Each retry delay is spread by up to this fraction either way.
    webhook_retry_jitter: float = 0.1
    #: Longest wait honoured from a Retry-After header (429, 503).
    webhook_max_retry_after_seconds: float = 86400.0
    webhook_timeout_seconds: float = 15.0
    #: A subscription failing without a single success for this long is disabled.
    webhook_disable_after_seconds: float = 5 * 86400.0
    #: How long a rotated-out secret keeps signing beside the new one.
    webhook_secret_overlap_seconds: float = 86400.0
    #: Deliveries in flight at once, per dispatcher process and per subscription.
    webhook_concurrency: int = 256
    webhook_concurrency_per_subscription: int = 4
    #: Safety-net poll of due deliveries (new ones wake the dispatcher at once).
    webhook_poll_interval_seconds: float = 1.0

    # Billing (services/billing): Mollie and the plans.
    mollie_api_base: str = "https://api.mollie.com/v2"
    mollie_api_key: str = ""
    #: Where Mollie posts its notices; empty: {public_base_url}/api/v1/billing/mollie/webhook.
    mollie_webhook_url: str = ""
    #: The monthly price of pro, as Mollie wants it ("9.00") and its currency.
    billing_pro_price: str = "9.00"
    billing_currency: str = "EUR"
    #: How long an account stays pro (past_due) after a failed recurring payment.
    billing_grace_period_seconds: float = 7 * 86400.0
    #: How often billing looks for grace periods and canceled periods that have run out.
    billing_sweep_interval_seconds: float = 60.0

    # Plan limits (calmesh_common.plans).
    plan_free_connections: int = 3
    plan_free_booking_pages: int = 2
    plan_free_api_requests_per_day: int = 10_000
    plan_pro_connections: int = 50
    plan_pro_booking_pages: int = 100
    plan_pro_api_requests_per_day: int = 1_000_000

    # Availability (services/availability).
    #: Longest a cached unified calendar is trusted; connections' events invalidate it sooner.
    calendar_cache_ttl_seconds: float = 60.0
    #: The most busy rows one conflicts query reads, and the most pairs of events it compares;
    #: past either the answer is 422 `range_too_dense` (ask for a shorter range).
    conflicts_max_rows: int = 20_000
    conflicts_max_checks: int = 2_000_000
    #: Threads that run the CPU-bound part of conflicts queries off the event loop (per process).
    availability_cpu_workers: int = 2
    #: Keep each calendar's busy timeline in memory, checked against the projection's versions on
    #: every read (services/availability/timeline.py); off: every read queries its window.
    availability_timelines: bool = True

    # Booking (services/booking): mails and visitors' cancel links.
    #: SMTP server for booking mails; empty: mails are written as .eml files to `mail_dir`.
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_username: str = ""
    smtp_password: str = ""
    #: "starttls" (default), "ssl" (implicit TLS, usually port 465) or "none".
    smtp_security: str = "starttls"
    mail_from: str = "CalMesh <bookings@calmesh.localhost>"
    #: Where mails go without SMTP; empty: {data_dir}/mail.
    mail_dir: str = ""
    #: Signs visitors' cancel links; empty: derived from the session secret.
    booking_link_secret: str = ""
    #: How long a cancel link works after booking (at least until the meeting has ended).
    cancel_link_ttl_seconds: int = 90 * 86400
    #: When set, every hold lasts this many seconds instead of its page's hold_minutes (tests and
    #: demos of expiry; leave 0 in production).
    hold_seconds_override: int = 0
    #: A booking still pending after this many seconds (its process died between checking the slot
    #: and confirming it) is settled by the reaper: confirmed if its time reached the projection.
    booking_pending_timeout_seconds: int = 30
    #: Booking mails to visitors' addresses (confirmations, verifications, reschedules,
    #: cancellations): at most this many per booking page in any hour, and per recipient address in
    #: any 24 hours; past either the mail is suppressed (logged and counted), never the booking.
    #: 0 turns a limit off.
    mail_per_page_per_hour: int = 100
    mail_per_recipient_per_day: int = 5
    #: How long a booking of a page with `require_email_verification` holds its slot while the
    #: visitor's verification link works.
    booking_verification_seconds: int = 900

    # Connections and sync (services/connections, services/sync). Provider endpoints are settings
    # so that tests point them at local fakes; a provider whose client id/secret are empty is off.
    google_client_id: str = ""
    google_client_secret: str = ""
    google_auth_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    google_token_url: str = "https://oauth2.googleapis.com/token"
    google_revoke_url: str = "https://oauth2.googleapis.com/revoke"
    google_api_url: str = "https://www.googleapis.com/calendar/v3"
    google_scopes: str = "openid email https://www.googleapis.com/auth/calendar"
    microsoft_client_id: str = ""
    microsoft_client_secret: str = ""
    microsoft_auth_url: str = "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"
    microsoft_token_url: str = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    microsoft_graph_url: str = "https://graph.microsoft.com/v1.0"
    microsoft_scopes: str = "offline_access openid email User.Read Calendars.ReadWrite"
    icloud_caldav_url: str = "https://caldav.icloud.com/"
    #: How long an OAuth `state` stays usable (single use) after POST /connections/{provider}.
    oauth_state_ttl_seconds: int = 900
    #: Origins (scheme://host[:port]) besides the public base URL's that an OAuth start's
    #: `redirect_uri` may point at (e.g. a separately hosted front end).
    oauth_redirect_origins: tuple[str, ...] = ()
    #: Largest iCal body fetched, and largest CalDAV response, in bytes.
    ical_max_bytes: int = 10 * 1024 * 1024
    caldav_max_bytes: int = 50 * 1024 * 1024
    #: Time allowed for one fetch of a user-given URL (iCal, CalDAV), in seconds.
    fetch_timeout_seconds: float = 30.0
    #: The synced window: this many days back and ahead of now; re-anchored every N days.
    sync_window_back_days: int = 90
    sync_window_ahead_days: int = 400
    sync_window_reanchor_days: int = 7
    #: Most event instances one calendar may expand to in the window (runaway RRULEs stop here).
    sync_max_instances: int = 200_000
    #: Longest time one calendar's recurrence expansion may take, in seconds.
    sync_expand_timeout_seconds: float = 120.0
    #: Scheduled sync interval per provider, in seconds, spread by +/- sync_jitter (a fraction).
    sync_interval_ical_seconds: float = 1800.0
    sync_interval_caldav_seconds: float = 900.0
    sync_interval_google_seconds: float = 900.0
    sync_interval_microsoft_seconds: float = 900.0
    sync_jitter: float = 0.1
    #: How often the scheduler looks for due connections, in seconds.
    sync_scheduler_tick_seconds: float = 5.0
    #: Syncs one worker runs at once; ack wait and deliveries of the sync-job consumer.
    sync_concurrency: int = 4
    sync_job_ack_wait_seconds: float = 30.0
    sync_job_max_deliver: int = 20
    #: A provider's Retry-After up to this many seconds is waited out inside the sync; longer
    #: ones end the sync and the job comes back after it.
    sync_retry_after_max_seconds: float = 30.0
    #: This worker's name (the supervisor sets it: sync-0, sync-1, ...).
    worker_id: str = ""
    #: Push notifications (Google watch channels, Graph subscriptions): auto = on when the public
    #: base URL is https; on; off. Channels are renewed this long before they expire.
    push_notifications: str = "auto"
    push_renew_before_seconds: float = 6 * 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read settings from `env` (default `os.environ`); keyword overrides win."""
        env = os.environ if env is None else env
        defaults = {f.name: f.default for f in msgspec.structs.fields(cls) if f.default is not msgspec.NODEFAULT}
        http_port = _int(env, "CALMESH_HTTP_PORT", defaults["http_port"])
        # The defaults that follow the HTTP port.
        defaults.update(
            port=http_port,
            public_base_url=f"http://127.0.0.1:{http_port}",
            cookie_secure=_public_is_https(env, http_port),
        )
        values: dict[str, object] = {
            f.name: (_FIELD_READERS.get(f.name) or _READERS[f.type])(
                env, _ENV_NAMES.get(f.name, f"CALMESH_{f.name.upper()}"), defaults[f.name]
            )
            for f in msgspec.structs.fields(cls)
            if f.name != "service_urls"
        }
        for name in _LOWERED:
            values[name] = str(values[name]).lower()
        for name in _NO_TRAILING_SLASH:
            values[name] = str(values[name]).rstrip("/")
        values["service_urls"] = {
            name: env[f"CALMESH_{name.upper()}_URL"]
            for name in SERVICE_NAMES
            if env.get(f"CALMESH_{name.upper()}_URL")
        }
        values.update(overrides)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse values that cannot work, with a message that names the variable."""
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError("CALMESH_LOG_LEVEL must be one of debug, info, warning, error")
        if self.max_body_bytes < 1024:
            raise SettingsError("CALMESH_MAX_BODY_BYTES must be at least 1024")
        if self.rate_limit_per_minute < 1:
            raise SettingsError("CALMESH_RATE_LIMIT_PER_MINUTE must be at least 1 request a minute")
        if self.public_rate_limit_per_minute < 1:
            raise SettingsError("CALMESH_PUBLIC_RATE_LIMIT_PER_MINUTE must be at least 1 request a minute")
        for name, value in (("CALMESH_LOGIN_FAILURES_PER_MINUTE", self.login_failures_per_minute),
                            ("CALMESH_LOGIN_FAILURES_BURST", self.login_failures_burst),
                            ("CALMESH_LOGIN_ADDRESS_FAILURES_PER_MINUTE", self.login_address_failures_per_minute),
                            ("CALMESH_LOGIN_ADDRESS_FAILURES_BURST", self.login_address_failures_burst),
                            ("CALMESH_BAD_KEY_FAILURES_PER_MINUTE", self.bad_key_failures_per_minute),
                            ("CALMESH_BAD_KEY_FAILURES_BURST", self.bad_key_failures_burst)):
            if value < 1:
                raise SettingsError(f"{name} must be at least 1")
        if not 1 <= self.stream_replicas <= 5:
            raise SettingsError(f"CALMESH_STREAM_REPLICAS must be 1 to 5 (JetStream's limit), got {self.stream_replicas}")
        for name, port in (("CALMESH_HTTP_PORT", self.http_port), ("CALMESH_PORT", self.port),
                           ("CALMESH_METRICS_PORT", self.metrics_port)):
            if not 0 <= port <= 65535:
                raise SettingsError(f"{name} must be a TCP port (0 to 65535), got {port}")
        if self.db_pool_min < 0 or self.db_pool_max < max(1, self.db_pool_min):
            raise SettingsError("CALMESH_DB_POOL_MAX must be at least 1 and not below CALMESH_DB_POOL_MIN")
        if any(delay < 0 for delay in self.webhook_retry_schedule):
            raise SettingsError("CALMESH_WEBHOOK_RETRY_SCHEDULE must hold no negative delay")
        if not 0 <= self.webhook_retry_jitter < 1:
            raise SettingsError("CALMESH_WEBHOOK_RETRY_JITTER must be at least 0 and below 1")
        if self.webhook_concurrency < 1 or self.webhook_concurrency_per_subscription < 1:
            raise SettingsError("CALMESH_WEBHOOK_CONCURRENCY and ..._PER_SUBSCRIPTION must be at least 1")
        if self.webhook_timeout_seconds <= 0:
            raise SettingsError("CALMESH_WEBHOOK_TIMEOUT_SECONDS must be above 0")
        if self.smtp_security not in ("starttls", "ssl", "none"):
            raise SettingsError("CALMESH_SMTP_SECURITY must be one of starttls, ssl, none")
        if self.cancel_link_ttl_seconds < 60:
            raise SettingsError("CALMESH_CANCEL_LINK_TTL_SECONDS must be at least 60")
        if self.mail_per_page_per_hour < 0 or self.mail_per_recipient_per_day < 0:
            raise SettingsError("CALMESH_MAIL_PER_PAGE_PER_HOUR and CALMESH_MAIL_PER_RECIPIENT_PER_DAY must not be negative")
        if self.booking_verification_seconds < 1:
            raise SettingsError("CALMESH_BOOKING_VERIFICATION_SECONDS must be at least 1")
        if self.conflicts_max_rows < 1 or self.conflicts_max_checks < 1 or self.availability_cpu_workers < 1:
            raise SettingsError("CALMESH_CONFLICTS_MAX_* and CALMESH_AVAILABILITY_CPU_WORKERS must be at least 1")
        if self.sync_window_back_days < 0 or self.sync_window_ahead_days < 1 or self.sync_window_reanchor_days < 1:
            raise SettingsError("CALMESH_SYNC_WINDOW_* must be positive (back may be 0)")
        if self.sync_max_instances < 1 or self.ical_max_bytes < 1024 or self.caldav_max_bytes < 1024:
            raise SettingsError("CALMESH_SYNC_MAX_INSTANCES must be >= 1 and the byte caps >= 1024")
        if not 0 <= self.sync_jitter < 1:
            raise SettingsError("CALMESH_SYNC_JITTER must be at least 0 and below 1")
        if self.sync_concurrency < 1:
            raise SettingsError("CALMESH_SYNC_CONCURRENCY must be at least 1")
        if self.push_notifications not in ("auto", "on", "off"):
            raise SettingsError("CALMESH_PUSH_NOTIFICATIONS must be auto, on or off")
        for origin in self.oauth_redirect_origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
                    or parts.query or parts.fragment or parts.username is not None:
                raise SettingsError(
                    f"CALMESH_OAUTH_REDIRECT_ORIGINS must list origins like https://app.example.com, got {origin!r}")

    def require(self, *names: str) -> None:
        """Fail at start-up, naming the variables, when a process needs settings that are empty."""
        env_names = {
            "database_url": "DATABASE_URL",
            "internal_secret": "CALMESH_INTERNAL_SECRET",
            "session_secret": "CALMESH_SESSION_SECRET",
            "encryption_keys": "CALMESH_ENCRYPTION_KEYS",
        }
        missing = [env_names.get(n, n) for n in names if not getattr(self, n)]
        if missing:
            raise SettingsError(f"{', '.join(missing)} must be set for {self.service_name}")

    def service_url(self, name: str) -> str:
        """The internal base URL of service `name` (set by the supervisor or compose)."""
        try:
            return self.service_urls[name].rstrip("/")
        except KeyError:
            raise SettingsError(f"CALMESH_{name.upper()}_URL must be set") from None
