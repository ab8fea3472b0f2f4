"""The one typed configuration object, read from ``TRIMAIL_*`` variables and flags.

Unknown ``TRIMAIL_*`` variables are refused, not ignored: a misspelt
``TRIMAIL_SMTP_HOSTNAME`` must stop the service, not send mail to localhost.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigurationError
from .store import redact, store_kind

ENV_PREFIX = "TRIMAIL_"

#: Variables that the client side (``examples/``, scripts) reads; the service ignores them.
CLIENT_ENV_VARS = frozenset({"TRIMAIL_URL", "TRIMAIL_API_KEY"})

MiB = 1024 * 1024
UNIX_PREFIX = "unix:"
#: Default admission limits by store: memory holds what fits in RAM; a durable store
#: absorbs a long provider outage (a day at 10 mails/s is under a million).
MEMORY_QUEUE_SIZE = 10_000
MEMORY_QUEUE_BYTES = 256 * MiB
DURABLE_QUEUE_SIZE = 1_000_000
DURABLE_QUEUE_BYTES = 4 * 1024 * MiB
#: Most SMTP connections at once. Throughput is connections / provider latency (Little's
#: law): one process accepts and delivers up to about 500 mails/s on a 2-core machine
#: (README, Performance), which a provider answering in 0.5 s (the slow end of typical)
#: sustains with 256 connections. Connections open only as the queue needs them, and
#: fewer when the provider pushes back (trimail.delivery.concurrency).
DEFAULT_WORKERS = 256


#: The sender in dev mode (``trimail serve --dev``) when TRIMAIL_DEFAULT_FROM is unset.
DEV_SENDER = "trimail (dev) <trimail@localhost>"
#: Settings that dev mode replaces with its local sink: set, they are ignored (with a warning).
DEV_REPLACED = ("smtp_host", "smtp_port", "smtp_security", "smtp_username", "smtp_password")


class SMTPSecurity(str, Enum):
    """How the connection to the SMTP server is protected."""

    AUTO = "auto"  # STARTTLS when the server offers it
    STARTTLS = "starttls"  # STARTTLS or fail
    TLS = "tls"  # implicit TLS from the first byte (usually port 465)
    NONE = "none"  # plain text, never upgraded


class Role(str, Enum):
    """What one trimail process does."""

    ALL = "all"  # accept and deliver
    API = "api"  # accept and answer status; deliver nothing
    DELIVERY = "delivery"  # deliver; serve only /healthz, /readyz and /metrics


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_seconds(value: Any) -> Any:
    """``30``, ``"30"``, ``"30s"``, ``"5m"``, ``"24h"``, ``"7d"`` as seconds; others unchanged."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.lower())
        if match is None:
            raise ValueError("must be a number of seconds, or a number with s, m, h or d")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


#: Seconds, written as a number or with a unit suffix (``24h``).
Seconds = Annotated[float, BeforeValidator(parse_seconds)]


class LogFormat(str, Enum):
    TEXT = "text"
    JSON = "json"


class Settings(BaseSettings):
    """Everything trimail can be told; each field is ``TRIMAIL_<NAME>`` and ``--<name>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, use_enum_values=False
    )

    host: str = Field(
        "127.0.0.1",
        description="Address the HTTP server binds to, or unix:PATH for a Unix socket "
        "(which needs API keys).",
    )
    port: int = Field(8080, ge=0, le=65535, description="Port the HTTP server binds to.")
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="Comma-separated API keys; when set, every request needs "
        "`Authorization: Bearer <key>`. Without keys trimail binds loopback only.",
    )
    metrics_key: SecretStr | None = Field(
        None,
        description="A key for /metrics alone (Authorization: Bearer), for a scraper that "
        "must not send mail; any API key works too.",
    )
    default_from: str | None = Field(
        None, description='Sender used when a request has no "from" ("Name <addr>" or "addr").'
    )
    max_recipients: int = Field(50, ge=1, description="Most addresses in to+cc+bcc together.")
    max_request_bytes: int = Field(
        10 * MiB, ge=1024, description="Largest request body accepted, in bytes (else 413)."
    )
    max_inflight_bytes: int = Field(
        64 * MiB,
        ge=1024,
        description="Most bytes of request bodies held at once, across all connections "
        "(beyond: 503 server_busy).",
    )
    request_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a request body may take to arrive (else 408), and that a "
        "connection may stay silent mid-request.",
    )
    store: str = Field(
        "memory",
        description="Where jobs live: memory | sqlite:///ABSOLUTE/PATH.db | "
        "postgresql://user:pass@host:port/db.",
    )
    role: Role = Field(
        Role.ALL,
        description="all | api (accept and answer status, send nothing) | delivery (send, and "
        "serve only health and metrics); api and delivery need a durable store.",
    )
    workers: int = Field(
        DEFAULT_WORKERS,
        ge=1,
        le=4096,
        description="Most SMTP connections (and attempts) at once; opened as the queue needs "
        "them, fewer while the provider pushes back.",
    )
    queue_size: int | None = Field(
        None,
        ge=1,
        description="Most jobs not yet final (queued, sending, retrying), else 503; default "
        "10000 with the memory store, 1000000 with a durable one.",
    )
    queue_bytes: int | None = Field(
        None,
        ge=1024,
        description="Most bytes of messages not yet final, else 503; default 256 MiB with the "
        "memory store, 4 GiB with a durable one.",
    )
    lease_seconds: float = Field(
        900.0,
        gt=0,
        description="Seconds a claimed job is held for its attempt; if its process dies, any "
        "instance retries it after this long.",
    )
    smtp_host: str = Field("localhost", description="SMTP server to deliver through.")
    smtp_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="SMTP port; default 465 for security=tls, 587 for starttls, 25 otherwise.",
    )
    smtp_username: str | None = Field(None, description="SMTP AUTH user name.")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password.")
    smtp_security: SMTPSecurity = Field(
        SMTPSecurity.AUTO, description="auto (STARTTLS when offered) | starttls | tls | none."
    )
    smtp_timeout: Seconds = Field(
        30.0,
        gt=0,
        description="Seconds the connection and greeting, and each SMTP command, may take.",
    )
    smtp_data_timeout: Seconds = Field(
        600.0,
        gt=0,
        description="Seconds to wait for the reply to the end of a message (RFC 5321: 10 "
        "minutes); after it, the attempt is retried, as the provider may have the message.",
    )
    smtp_idle_timeout: Seconds = Field(
        30.0, gt=0, description="Seconds an unused SMTP connection stays open."
    )
    smtp_check: bool = Field(
        True,
        description="Check the provider at start (connect, TLS, AUTH, NOOP); the verdict "
        "is logged and trimail starts either way.",
    )
    smtp_ca_file: Path | None = Field(
        None, description="Extra CA bundle (PEM) to trust for the SMTP server's certificate."
    )
    retry_base_delay: float = Field(1.0, gt=0, description="First retry backoff, in seconds.")
    retry_max_delay: float = Field(300.0, gt=0, description="Longest retry backoff, in seconds.")
    retry_window: Seconds = Field(
        86_400.0,
        gt=0,
        description="Give up when the next attempt would start later than this after "
        "acceptance (s, m, h or d suffix).",
    )
    max_attempts: int | None = Field(
        None, ge=1, description="Most delivery attempts per job (default: no limit but the window)."
    )
    shutdown_grace: float = Field(
        30.0, ge=0, description="Seconds to finish queued and retrying jobs on shutdown."
    )
    idempotency_ttl: Seconds = Field(
        86_400.0, gt=0, description="Seconds an Idempotency-Key and its answer are remembered."
    )
    idempotency_max_keys: int = Field(
        100_000, ge=1, description="Most Idempotency-Keys remembered; the oldest go first."
    )
    status_ttl: Seconds = Field(
        86_400.0, gt=0, description="Seconds a finished job's status stays readable."
    )
    status_max_jobs: int = Field(
        100_000, ge=1, description="Most finished jobs whose status is kept; the oldest go first."
    )
    log_format: LogFormat = Field(LogFormat.TEXT, description="text | json.")
    log_level: str = Field("INFO", description="DEBUG | INFO | WARNING | ERROR.")
    access_log: bool = Field(
        True, description="One line per HTTP request on the trimail.access logger."
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return level

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        store_kind(value)  # raises ValueError with the accepted forms
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.retry_max_delay < self.retry_base_delay:
            raise ValueError("retry_max_delay must be at least retry_base_delay")
        if self.role is not Role.ALL and not self.durable_store:
            raise ValueError(
                f"role {self.role.value} needs a durable store shared with the other role "
                "(TRIMAIL_STORE=sqlite:///... or postgresql://...)"
            )
        return self

    @property
    def durable_store(self) -> bool:
        return store_kind(self.store) != "memory"

    @property
    def effective_queue_size(self) -> int:
        if self.queue_size is not None:
            return self.queue_size
        return DURABLE_QUEUE_SIZE if self.durable_store else MEMORY_QUEUE_SIZE

    @property
    def effective_queue_bytes(self) -> int:
        if self.queue_bytes is not None:
            return self.queue_bytes
        return DURABLE_QUEUE_BYTES if self.durable_store else MEMORY_QUEUE_BYTES

    @property
    def redacted_store(self) -> str:
        """The store's URL without its password, for logs."""
        return redact(self.store)

    @property
    def unix_socket(self) -> str | None:
        """The socket path when ``host`` is ``unix:PATH``."""
        return self.host[len(UNIX_PREFIX) :] if self.host.startswith(UNIX_PREFIX) else None

    @property
    def effective_smtp_port(self) -> int:
        if self.smtp_port is not None:
            return self.smtp_port
        return {SMTPSecurity.TLS: 465, SMTPSecurity.STARTTLS: 587}.get(self.smtp_security, 25)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() in {"localhost", "localhost."}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from ``TRIMAIL_*`` variables, with ``overrides`` winning.

    Raises :class:`ConfigurationError` naming every unknown variable or invalid value.
    """
    environ = os.environ if environ is None else environ
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    unknown = sorted(
        key
        for key in environ
        if key.upper().startswith(ENV_PREFIX)
        and key.upper() not in fields
        and key.upper() not in CLIENT_ENV_VARS
    )
    if unknown:
        raise ConfigurationError(
            f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    values: dict[str, Any] = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.upper() in fields
    }
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        # Values are passed explicitly so that `environ` (not os.environ) is the only source.
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(map(str, err['loc'])).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {problems}") from exc
