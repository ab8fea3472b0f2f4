"""Settings: environment variables, overrides and refusals."""

from __future__ import annotations

import pytest

from trimail.config import SMTPSecurity, is_loopback, load_settings
from trimail.errors import ConfigurationError


def test_defaults() -> None:
    """The documented defaults hold with an empty environment."""
    settings = load_settings({})
    assert (settings.workers, settings.max_attempts) == (256, None)
    assert (settings.store, settings.role.value, settings.lease_seconds) == ("memory", "all", 900)
    assert (settings.effective_queue_size, settings.effective_queue_bytes) == (10_000, 256 << 20)
    assert (settings.retry_base_delay, settings.retry_max_delay) == (1.0, 300.0)
    assert settings.retry_window == 86_400.0
    assert settings.smtp_timeout == 30.0
    assert settings.shutdown_grace == 30.0
    assert settings.max_recipients == 50
    assert settings.max_request_bytes == 10 * 1024 * 1024
    assert settings.smtp_security is SMTPSecurity.AUTO


def test_environment_and_overrides() -> None:
    """TRIMAIL_* variables are read and explicit overrides win."""
    settings = load_settings({"TRIMAIL_WORKERS": "3", "TRIMAIL_SMTP_HOST": "mx"}, workers=5)
    assert (settings.workers, settings.smtp_host) == (5, "mx")


def test_api_keys_are_comma_separated() -> None:
    """TRIMAIL_API_KEYS splits on commas and ignores blanks."""
    settings = load_settings({"TRIMAIL_API_KEYS": "key-alpha, key-beta,,"})
    assert [k.get_secret_value() for k in settings.api_keys] == ["key-alpha", "key-beta"]
    assert "key-alpha" not in repr(settings)


def test_unknown_variable_is_refused() -> None:
    """A misspelt TRIMAIL_ variable stops the service instead of being ignored."""
    with pytest.raises(ConfigurationError, match="TRIMAIL_SMTP_HOSTNAME"):
        load_settings({"TRIMAIL_SMTP_HOSTNAME": "mx.example.com"})


def test_client_variables_are_not_unknown() -> None:
    """TRIMAIL_URL and TRIMAIL_API_KEY belong to clients and are tolerated."""
    load_settings({"TRIMAIL_URL": "http://x", "TRIMAIL_API_KEY": "k"})


def test_invalid_value_names_the_variable() -> None:
    """A bad value is reported with the variable's name."""
    with pytest.raises(ConfigurationError, match="TRIMAIL_WORKERS"):
        load_settings({"TRIMAIL_WORKERS": "many"})


@pytest.mark.parametrize(
    ("security", "port"), [("tls", 465), ("starttls", 587), ("auto", 25), ("none", 25)]
)
def test_smtp_port_follows_security(security: str, port: int) -> None:
    """Without an explicit port, the security mode picks the usual one."""
    assert load_settings({"TRIMAIL_SMTP_SECURITY": security}).effective_smtp_port == port


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    """Only names and addresses of this machine count as loopback."""
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("90", 90), ("90s", 90), ("5m", 300), ("24h", 86_400), ("2d", 172_800), ("1.5h", 5400)],
)
def test_durations_take_a_unit(written: str, seconds: float) -> None:
    """TRIMAIL_RETRY_WINDOW and the TTLs are seconds, or a number with s, m, h or d."""
    assert load_settings({"TRIMAIL_RETRY_WINDOW": written}).retry_window == seconds


def test_a_bad_duration_names_the_setting() -> None:
    """'a day' is not a duration: the error names the variable and the forms it takes."""
    with pytest.raises(ConfigurationError, match=r"TRIMAIL_RETRY_WINDOW.*s, m, h or d"):
        load_settings({"TRIMAIL_RETRY_WINDOW": "a day"})


@pytest.mark.parametrize(
    "store", ["redis://localhost", "sqlite:///", "sqlite://host/spool.db", "spool.db", ""]
)
def test_an_unknown_store_is_refused(store: str) -> None:
    """TRIMAIL_STORE is memory, sqlite:///ABSOLUTE/PATH or a PostgreSQL URL; else an error."""
    with pytest.raises(ConfigurationError, match="TRIMAIL_STORE"):
        load_settings({"TRIMAIL_STORE": store})


def test_durable_stores_have_larger_default_limits() -> None:
    """A durable store absorbs a long outage: a million jobs and 4 GiB by default."""
    settings = load_settings({"TRIMAIL_STORE": "sqlite:///var/lib/trimail/spool.db"})
    assert (settings.effective_queue_size, settings.effective_queue_bytes) == (10**6, 4 << 30)


@pytest.mark.parametrize("role", ["api", "delivery"])
def test_split_roles_need_a_durable_store(role: str) -> None:
    """api and delivery share work through the store: with memory they would share nothing."""
    with pytest.raises(ConfigurationError, match="durable store"):
        load_settings({"TRIMAIL_ROLE": role})
    load_settings({"TRIMAIL_ROLE": role, "TRIMAIL_STORE": "postgresql://u:p@db/trimail"})


def test_the_store_password_is_redacted() -> None:
    """The store URL as logged hides its password."""
    settings = load_settings({"TRIMAIL_STORE": "postgresql://mailer:s3cret@db:5432/trimail"})
    assert settings.redacted_store == "postgresql://mailer:***@db:5432/trimail"
