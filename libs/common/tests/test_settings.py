"""Settings: read once from the environment, with defaults, and errors that name the variable."""

from __future__ import annotations

import pytest

from calmesh_common.settings import SERVICE_NAMES, Settings, SettingsError


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    s = Settings.from_env({})
    assert s.database_url == ""
    assert s.nats_url == "nats://127.0.0.1:4222"
    assert (s.host, s.port, s.http_port) == ("127.0.0.1", 8080, 8080)
    assert s.public_base_url == "http://127.0.0.1:8080"
    assert (s.log_level, s.log_json) == ("info", True)
    assert (s.db_pool_min, s.db_pool_max) == (1, 10)
    assert s.service_urls == {}
    assert s.encryption_keys == ()
    assert s.max_body_bytes == 1_048_576
    assert s.health_timeout_seconds == 2.0


def test_values_are_parsed_from_their_variables() -> None:
    s = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://calmesh@db/calmesh",
            "NATS_URL": "nats://nats:4222",
            "CALMESH_SERVICE": "booking",
            "CALMESH_HOST": "0.0.0.0",
            "CALMESH_HTTP_PORT": "9000",
            "CALMESH_PUBLIC_BASE_URL": "https://cal.example.com/",
            "CALMESH_LOG_LEVEL": "DEBUG",
            "CALMESH_LOG_JSON": "off",
            "CALMESH_DB_POOL_MAX": "3",
            "CALMESH_COOKIE_SECURE": "yes",
            "CALMESH_HEALTH_TIMEOUT_SECONDS": "0.5",
            "CALMESH_ENCRYPTION_KEYS": " new-key , old-key ,",
            "CALMESH_BOOKING_URL": "http://booking:8000",
            "CALMESH_SYNC_URL": "http://sync:8000/",
            "CALMESH_BILLING_URL": "",
        }
    )
    assert s.database_url == "postgresql://calmesh@db/calmesh"
    assert s.nats_url == "nats://nats:4222"
    assert s.service_name == "booking"
    assert s.host == "0.0.0.0"
    # Without CALMESH_PORT a process listens on the public port.
    assert (s.http_port, s.port) == (9000, 9000)
    assert s.public_base_url == "https://cal.example.com"
    assert (s.log_level, s.log_json, s.cookie_secure) == ("debug", False, True)
    assert s.db_pool_max == 3
    assert s.health_timeout_seconds == 0.5
    assert s.encryption_keys == ("new-key", "old-key")
    assert s.service_urls == {"booking": "http://booking:8000", "sync": "http://sync:8000/"}
    assert s.service_url("sync") == "http://sync:8000"
    assert Settings.from_env({"CALMESH_HTTP_PORT": "9000", "CALMESH_PORT": "8001"}).port == 8001
    assert Settings.from_env({"CALMESH_HTTP_PORT": "9000"}).public_base_url == "http://127.0.0.1:9000"


def test_keyword_overrides_win_over_the_environment() -> None:
    s = Settings.from_env({"CALMESH_SERVICE": "x", "CALMESH_PORT": "1"}, service_name="gateway", port=2)
    assert (s.service_name, s.port) == ("gateway", 2)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CALMESH_PORT", "eighty"),
        ("CALMESH_HTTP_PORT", "80.5"),
        ("CALMESH_DB_POOL_MAX", "many"),
        ("CALMESH_HEALTH_TIMEOUT_SECONDS", "soon"),
        ("CALMESH_LOG_JSON", "maybe"),
        ("CALMESH_COOKIE_SECURE", "2"),
        ("CALMESH_LOG_LEVEL", "verbose"),
        ("CALMESH_MAX_BODY_BYTES", "10"),
        ("CALMESH_RATE_LIMIT_PER_MINUTE", "0"),
        ("CALMESH_PUBLIC_RATE_LIMIT_PER_MINUTE", "-5"),
        ("CALMESH_DB_POOL_MAX", "0"),
        ("CALMESH_PORT", "70000"),
        ("CALMESH_HTTP_PORT", "-1"),
    ],
)
def test_a_bad_value_is_refused_with_the_variables_name(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


def test_a_value_that_could_not_be_parsed_is_quoted_in_the_error() -> None:
    with pytest.raises(SettingsError, match="'eighty'"):
        Settings.from_env({"CALMESH_PORT": "eighty"})


def test_required_settings_are_named_when_missing() -> None:
    s = Settings.from_env({"CALMESH_SERVICE": "billing", "DATABASE_URL": "postgresql://db/x"})
    s.require("database_url")
    with pytest.raises(SettingsError) as caught:
        s.require("database_url", "internal_secret", "encryption_keys")
    message = str(caught.value)
    assert "CALMESH_INTERNAL_SECRET" in message and "CALMESH_ENCRYPTION_KEYS" in message
    assert "DATABASE_URL" not in message and "billing" in message
    with pytest.raises(SettingsError, match="CALMESH_CONNECTIONS_URL"):
        s.service_url("connections")


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_the_session_cookie_is_secure_by_default_exactly_when_the_public_url_is_https() -> None:
    assert Settings.from_env({"CALMESH_PUBLIC_BASE_URL": "https://cal.example.com"}).cookie_secure is True
    assert Settings.from_env({"CALMESH_PUBLIC_BASE_URL": "http://127.0.0.1:8080"}).cookie_secure is False
    assert Settings.from_env({}).cookie_secure is False
    # An explicit setting wins either way.
    assert Settings.from_env({"CALMESH_PUBLIC_BASE_URL": "https://cal.example.com",
                              "CALMESH_COOKIE_SECURE": "0"}).cookie_secure is False
    assert Settings.from_env({"CALMESH_COOKIE_SECURE": "1"}).cookie_secure is True


def test_proxy_headers_are_read_only_from_the_trusted_proxies() -> None:
    from calmesh_common.service import proxy_options

    # By default no proxy is trusted, not even one on loopback (uvicorn's own default).
    assert proxy_options(Settings.from_env({})) == {"proxy_headers": False, "forwarded_allow_ips": ""}
    s = Settings.from_env({"CALMESH_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8,192.168.1.7"})
    assert s.trusted_proxies == ("10.0.0.0/8", "fd00::/8", "192.168.1.7")
    assert proxy_options(s) == {"proxy_headers": True, "forwarded_allow_ips": "10.0.0.0/8,fd00::/8,192.168.1.7"}
    with pytest.raises(SettingsError, match="CALMESH_TRUSTED_PROXIES"):
        Settings.from_env({"CALMESH_TRUSTED_PROXIES": "ingress.local"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CALMESH_PORT": "eighty"}, "CALMESH_PORT must be a whole number from 0 to 65535, got 'eighty'"),
        ({"CALMESH_MAX_BODY_BYTES": "10"}, "CALMESH_MAX_BODY_BYTES must be a whole number at least 1024, got '10'"),
        ({"CALMESH_STREAM_REPLICAS": "7"}, "CALMESH_STREAM_REPLICAS must be a whole number from 1 to 5, got '7'"),
        ({"CALMESH_SYNC_JITTER": "1"}, "CALMESH_SYNC_JITTER must be a number at least 0 and below 1, got '1'"),
        ({"CALMESH_WEBHOOK_TIMEOUT_SECONDS": "0"}, "CALMESH_WEBHOOK_TIMEOUT_SECONDS must be a number above 0, got '0'"),
        ({"CALMESH_LOG_JSON": "maybe"}, "CALMESH_LOG_JSON must be 1/0, true/false, yes/no or on/off, got 'maybe'"),
        ({"CALMESH_SMTP_SECURITY": "tls"}, "CALMESH_SMTP_SECURITY must be one of none, ssl, starttls, got 'tls'"),
        # A list names the entry refused.
        ({"CALMESH_WEBHOOK_RETRY_SCHEDULE": "5, -1, 60"},
         "CALMESH_WEBHOOK_RETRY_SCHEDULE must be a comma-separated list, each a number at least 0, got '-1'"),
        ({"CALMESH_WEBHOOK_RETRY_SCHEDULE": "5,soon"},
         "CALMESH_WEBHOOK_RETRY_SCHEDULE must be a comma-separated list, each a number at least 0, got 'soon'"),
        ({"CALMESH_TRUSTED_PROXIES": "10.0.0.0/8, ingress.local"},
         "CALMESH_TRUSTED_PROXIES must be a comma-separated list, each an IP address or CIDR network"
         " (10.0.0.0/8, ::1), got 'ingress.local'"),
        ({"CALMESH_DB_POOL_MIN": "5", "CALMESH_DB_POOL_MAX": "3"},
         "CALMESH_DB_POOL_MAX must not be below CALMESH_DB_POOL_MIN (5), got 3"),
    ],
)
def test_a_refusal_says_what_the_variable_may_hold_and_quotes_the_value(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == message


def test_keyword_overrides_are_checked_like_the_environment() -> None:
    with pytest.raises(SettingsError, match="CALMESH_SYNC_CONCURRENCY must be a whole number at least 1, got 0"):
        Settings.from_env({}, sync_concurrency=0)
    with pytest.raises(SettingsError, match="unknown field `no_such_setting`"):
        Settings.from_env({}, no_such_setting=1)


def test_an_empty_or_blank_variable_means_the_default_except_for_text() -> None:
    s = Settings.from_env({"CALMESH_DB_POOL_MAX": " ", "CALMESH_LOG_JSON": "", "CALMESH_LOG_LEVEL": "",
                           "CALMESH_TRUSTED_PROXIES": " , ", "CALMESH_WEBHOOK_RETRY_SCHEDULE": "",
                           "CALMESH_MAIL_FROM": "", "CALMESH_HTTP_PORT": " 9000 "})
    assert (s.db_pool_max, s.log_json, s.log_level, s.trusted_proxies) == (10, True, "info", ())
    assert s.webhook_retry_schedule == Settings().webhook_retry_schedule
    assert s.mail_from == ""  # text is taken as given
    assert (s.http_port, s.port, s.public_base_url) == (9000, 9000, "http://127.0.0.1:9000")


def test_every_setting_is_in_env_example_with_its_default() -> None:
    """.env.example names every variable; a value written there reads as the struct's default."""
    import re
    from pathlib import Path

    import msgspec

    from calmesh_common.settings import env_name

    example = Path(__file__).parents[3] / ".env.example"
    written = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", example.read_text(), re.M))
    for field in msgspec.structs.fields(Settings):
        if field.name == "service_urls":  # one CALMESH_<SERVICE>_URL each
            assert all(f"CALMESH_{name.upper()}_URL" in written for name in SERVICE_NAMES)
            continue
        variable = env_name(field.name)
        assert variable in written, variable
        if written[variable]:
            assert getattr(Settings.from_env({variable: written[variable]}), field.name) == field.default, variable
