"""Settings: one frozen object read from the environment, once, at start-up.

Every variable is documented in `.env.example` at the repository root. Nothing here connects to
anything; `Settings.from_env()` only reads and validates.

The struct is the one description of every setting: its default, and in its type what is allowed
(`msgspec.Meta` bounds, `Literal` choices). `from_env` turns the variables' text into values by
each field's type (comma-separated lists, yes/no words, a few checked kinds of text) and lets
`msgspec.convert` decode and check the lot; a refused value stops start-up with a message naming
the variable and what it may hold.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlsplit

import msgspec
from msgspec import inspect as mi

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


#: Settings whose variable is not ``CALMESH_<NAME>``.
_ENV_NAMES = {"database_url": "DATABASE_URL", "nats_url": "NATS_URL", "service_name": "CALMESH_SERVICE"}


def env_name(field: str) -> str:
    """The environment variable of setting `field`."""
    return _ENV_NAMES.get(field, f"CALMESH_{field.upper()}")


def _read(read: Callable[[str], object], allowed: str) -> msgspec.Meta:
    """A kind of text the environment gives: `read` turns it into the value (ValueError: refused)."""
    return msgspec.Meta(extra={"read": read, "allowed": allowed})


def _network(text: str) -> str:
    ipaddress.ip_network(text, strict=False)
    return text


def _origin(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username is not None:
        raise ValueError(text)
    return text


Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
NotNegative = Annotated[int, msgspec.Meta(ge=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0, lt=1)]
ByteCap = Annotated[int, msgspec.Meta(ge=1024)]
#: A base URL; read without surrounding space or a trailing slash.
Url = Annotated[str, _read(lambda text: text.strip().rstrip("/"), "a URL")]
Network = Annotated[str, _read(_network, "an IP address or CIDR network (10.0.0.0/8, ::1)")]
Endpoint = Annotated[tuple[str, int], _read(parse_endpoint, "an address:port pair (127.0.0.1:5232, [::1]:5232)")]
Origin = Annotated[str, _read(_origin, "an origin like https://app.example.com")]

_BOOL_WORDS = {"yes": "true", "on": "true", "no": "false", "off": "false"}


def _is_text(t: mi.Type) -> bool:
    """Text settings keep an empty variable as empty; any other setting takes its default."""
    return isinstance(t.type if isinstance(t, mi.Metadata) else t, mi.StrType)


def _value(name: str, t: mi.Type, text: str, whole: mi.Type | None = None) -> object:
    """The value of variable text `text` for a setting of type `t` (an entry of a `whole` list),
    before msgspec checks it."""
    if isinstance(t, mi.Metadata):
        try:
            return t.extra["read"](text)  # type: ignore[index]
        except ValueError:
            raise _refused(name, whole or t, text) from None
    if isinstance(t, mi.VarTupleType):
        return [_value(name, t.item_type, part.strip(), t) for part in text.split(",") if part.strip()]
    if isinstance(t, mi.BoolType):
        return _BOOL_WORDS.get(text.strip().lower(), text.strip())
    if isinstance(t, mi.LiteralType):
        return text.strip().lower()
    return text if isinstance(t, mi.StrType) else text.strip()


def _bounds(t: mi.IntType | mi.FloatType) -> str:
    if t.ge is not None and t.le is not None:
        return f" from {t.ge} to {t.le}"
    said = [f"{word} {bound}" for word, bound in (("at least", t.ge), ("above", t.gt), ("at most", t.le),
                                                  ("below", t.lt)) if bound is not None]
    return f" {' and '.join(said)}" if said else ""


def _allowed(t: mi.Type) -> str:
    """What a setting of type `t` may hold, in words."""
    if isinstance(t, mi.Metadata):
        return str((t.extra or {}).get("allowed", _allowed(t.type)))
    if isinstance(t, mi.IntType):
        return "a whole number" + _bounds(t)
    if isinstance(t, mi.FloatType):
        return "a number" + _bounds(t)
    if isinstance(t, mi.BoolType):
        return "1/0, true/false, yes/no or on/off"
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(map(str, t.values))
    if isinstance(t, mi.VarTupleType):
        return f"a comma-separated list, each {_allowed(t.item_type)}"
    return "text"


def _refused(name: str, t: mi.Type, value: object) -> SettingsError:
    return SettingsError(f"{env_name(name)} must be {_allowed(t)}, got {value!r}")


def _translate(exc: msgspec.ValidationError, values: Mapping[str, Any], types: Mapping[str, mi.Type]) -> SettingsError:
    """msgspec's "... - at `$.field[i]`" as the variable, what it may hold and the value refused."""
    found = re.search(r" - at `\$\.(\w+)(?:\[(\d+)\])?`$", str(exc))
    if found is None or found[1] not in types:
        return SettingsError(str(exc))
    name, index = found[1], found[2]
    value = values[name]
    if index is not None:
        value = list(value)[int(index)]
    return _refused(name, types[name], value)


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything a CalMesh process needs to know about its environment."""

    # Where state lives.
    database_url: str = ""
    nats_url: str = "nats://127.0.0.1:4222"
    data_dir: str = ".calmesh"

    # This process.
    service_name: str = "calmesh"
    host: str = "127.0.0.1"
    port: Port = 8080
    http_port: Port = 8080
    public_base_url: Url = "http://127.0.0.1:8080"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = True
    db_pool_min: NotNegative = 1
    db_pool_max: Positive = 10

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
    trusted_proxies: tuple[Network, ...] = ()
    max_body_bytes: ByteCap = 1_048_576
    rate_limit_per_minute: Positive = 600
    rate_limit_burst: int = 120
    public_rate_limit_per_minute: Positive = 300
    #: Failed sign-ins: per account and per client address, `login_failures_burst` failures are
    #: allowed at once, then one per `60 / login_failures_per_minute` seconds (429 + Retry-After).
    login_failures_per_minute: Positive = 5
    login_failures_burst: Positive = 10
    login_address_failures_per_minute: Positive = 30
    login_address_failures_burst: Positive = 60
    #: Unknown or malformed API keys from one client address: a burst, then this many a minute;
    #: past it a 429 before the key is even looked at.
    bad_key_failures_per_minute: Positive = 30
    bad_key_failures_burst: Positive = 30
    health_timeout_seconds: float = 2.0
    forward_timeout_seconds: float = 30.0
    #: Where the dashboard (/app) calls the public API; empty: this gateway itself on loopback.
    dashboard_api_url: Url = ""

    # Secrets at rest (connections credentials, webhook secrets): comma-separated Fernet keys,
    # newest first; every key decrypts, the first encrypts.
    encryption_keys: tuple[str, ...] = ()

    # Sync workers.
    sync_workers: int = 2
    allow_private_networks: bool = False
    #: Exact (address, port) pairs a user-given URL may reach although they are not public
    #: (``CALMESH_ALLOW_PRIVATE_ENDPOINTS``; `calmesh-up --demo` names its own loopback servers).
    allow_private_endpoints: tuple[Endpoint, ...] = ()

    #: Replicas of every JetStream stream, applied by calmesh-migrate (3 on a 3-node cluster).
    stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1

    # Observability.
    otel_console: bool = False
    #: A port of its own for /metrics (Prometheus); 0: /metrics on the service's port.
    metrics_port: Port = 0
    #: One structured log line per HTTP request (event "http_request").
    access_log: bool = True

    # Webhooks dispatcher (services/webhooks).
    #: The schema the webhooks service owns (durable consumer names derive from it).
    webhooks_schema: str = "webhooks"
    #: Seconds to wait after each failed attempt before the next; the first attempt goes at once.
    #: One attempt more than there are entries; after the last failure the delivery is failed.
    webhook_retry_schedule: tuple[Annotated[float, msgspec.Meta(ge=0)], ...] = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    #: Each retry delay is spread by up to this fraction either way.
    webhook_retry_jitter: Fraction = 0.1
    #: Longest wait honoured from a Retry-After header (429, 503).
    webhook_max_retry_after_seconds: float = 86400.0
    webhook_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    #: A subscription failing without a single success for this long is disabled.
    webhook_disable_after_seconds: float = 5 * 86400.0
    #: How long a rotated-out secret keeps signing beside the new one.
    webhook_secret_overlap_seconds: float = 86400.0
    #: Deliveries in flight at once, per dispatcher process and per subscription.
    webhook_concurrency: Positive = 256
    webhook_concurrency_per_subscription: Positive = 4
    #: Safety-net poll of due deliveries (new ones wake the dispatcher at once).
    webhook_poll_interval_seconds: float = 1.0

    # Billing (services/billing): Mollie and the plans.
    mollie_api_base: Url = "https://api.mollie.com/v2"
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
    conflicts_max_rows: Positive = 20_000
    conflicts_max_checks: Positive = 2_000_000
    #: Threads that run the CPU-bound part of conflicts queries off the event loop (per process).
    availability_cpu_workers: Positive = 2
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
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    mail_from: str = "CalMesh <bookings@calmesh.localhost>"
    #: Where mails go without SMTP; empty: {data_dir}/mail.
    mail_dir: str = ""
    #: Signs visitors' cancel links; empty: derived from the session secret.
    booking_link_secret: str = ""
    #: How long a cancel link works after booking (at least until the meeting has ended).
    cancel_link_ttl_seconds: Annotated[int, msgspec.Meta(ge=60)] = 90 * 86400
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
    mail_per_page_per_hour: NotNegative = 100
    mail_per_recipient_per_day: NotNegative = 5
    #: How long a booking of a page with `require_email_verification` holds its slot while the
    #: visitor's verification link works.
    booking_verification_seconds: Positive = 900

    # Connections and sync (services/connections, services/sync). Provider endpoints are settings
    # so that tests point them at local fakes; a provider whose client id/secret are empty is off.
    google_client_id: str = ""
    google_client_secret: str = ""
    google_auth_url: str = "https://accounts.google.com/o/oauth2/v2/auth"
    google_token_url: str = "https://oauth2.googleapis.com/token"
    google_revoke_url: str = "https://oauth2.googleapis.com/revoke"
    google_api_url: Url = "https://www.googleapis.com/calendar/v3"
    google_scopes: str = "openid email https://www.googleapis.com/auth/calendar"
    microsoft_client_id: str = ""
    microsoft_client_secret: str = ""
    microsoft_auth_url: str = "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"
    microsoft_token_url: str = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    microsoft_graph_url: Url = "https://graph.microsoft.com/v1.0"
    microsoft_scopes: str = "offline_access openid email User.Read Calendars.ReadWrite"
    icloud_caldav_url: str = "https://caldav.icloud.com/"
    #: How long an OAuth `state` stays usable (single use) after POST /connections/{provider}.
    oauth_state_ttl_seconds: int = 900
    #: Origins (scheme://host[:port]) besides the public base URL's that an OAuth start's
    #: `redirect_uri` may point at (e.g. a separately hosted front end).
    oauth_redirect_origins: tuple[Origin, ...] = ()
    #: Largest iCal body fetched, and largest CalDAV response, in bytes.
    ical_max_bytes: ByteCap = 10 * 1024 * 1024
    caldav_max_bytes: ByteCap = 50 * 1024 * 1024
    #: Time allowed for one fetch of a user-given URL (iCal, CalDAV), in seconds.
    fetch_timeout_seconds: float = 30.0
    #: The synced window: this many days back and ahead of now; re-anchored every N days.
    sync_window_back_days: NotNegative = 90
    sync_window_ahead_days: Positive = 400
    sync_window_reanchor_days: Positive = 7
    #: Most event instances one calendar may expand to in the window (runaway RRULEs stop here).
    sync_max_instances: Positive = 200_000
    #: Longest time one calendar's recurrence expansion may take, in seconds.
    sync_expand_timeout_seconds: float = 120.0
    #: Scheduled sync interval per provider, in seconds, spread by +/- sync_jitter (a fraction).
    sync_interval_ical_seconds: float = 1800.0
    sync_interval_caldav_seconds: float = 900.0
    sync_interval_google_seconds: float = 900.0
    sync_interval_microsoft_seconds: float = 900.0
    sync_jitter: Fraction = 0.1
    #: How often the scheduler looks for due connections, in seconds.
    sync_scheduler_tick_seconds: float = 5.0
    #: Syncs one worker runs at once; ack wait and deliveries of the sync-job consumer.
    sync_concurrency: Positive = 4
    sync_job_ack_wait_seconds: float = 30.0
    sync_job_max_deliver: int = 20
    #: A provider's Retry-After up to this many seconds is waited out inside the sync; longer
    #: ones end the sync and the job comes back after it.
    sync_retry_after_max_seconds: float = 30.0
    #: This worker's name (the supervisor sets it: sync-0, sync-1, ...).
    worker_id: str = ""
    #: Push notifications (Google watch channels, Graph subscriptions): auto = on when the public
    #: base URL is https; on; off. Channels are renewed this long before they expire.
    push_notifications: Literal["auto", "on", "off"] = "auto"
    push_renew_before_seconds: float = 6 * 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read settings from `env` (default `os.environ`); keyword overrides win."""
        env = os.environ if env is None else env
        types = {f.name: f.type for f in cast(mi.StructType, mi.type_info(cls)).fields}
        values: dict[str, Any] = {}
        for name, t in types.items():
            text = env.get(env_name(name))
            if text is not None and (text.strip() or _is_text(t)):
                values[name] = _value(name, t, text)
            if values.get(name) == []:  # a list of nothing: the default
                del values[name]
        values["service_urls"] = {
            name: env[f"CALMESH_{name.upper()}_URL"] for name in SERVICE_NAMES if env.get(f"CALMESH_{name.upper()}_URL")
        }
        values.update(overrides)
        try:
            settings = msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise _translate(exc, values, types) from None
        # The defaults that follow other settings: the port and public URL the HTTP port's, the
        # cookies' Secure whether the public URL is https.
        if "port" not in values:
            settings = msgspec.structs.replace(settings, port=settings.http_port)
        if "public_base_url" not in values:
            settings = msgspec.structs.replace(settings, public_base_url=f"http://127.0.0.1:{settings.http_port}")
        if "cookie_secure" not in values:
            settings = msgspec.structs.replace(
                settings, cookie_secure=settings.public_base_url.lower().startswith("https://"))
        if settings.db_pool_max < settings.db_pool_min:
            raise SettingsError(f"CALMESH_DB_POOL_MAX must not be below CALMESH_DB_POOL_MIN ({settings.db_pool_min}),"
                                f" got {settings.db_pool_max}")
        return settings

    def require(self, *names: str) -> None:
        """Fail at start-up, naming the variables, when a process needs settings that are empty."""
        missing = [env_name(n) for n in names if not getattr(self, n)]
        if missing:
            raise SettingsError(f"{', '.join(missing)} must be set for {self.service_name}")

    def service_url(self, name: str) -> str:
        """The internal base URL of service `name` (set by the supervisor or compose)."""
        try:
            return self.service_urls[name].rstrip("/")
        except KeyError:
            raise SettingsError(f"CALMESH_{name.upper()}_URL must be set") from None
