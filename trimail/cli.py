"""The ``trimail`` command: ``serve`` the service, ``send`` a mail, print the agent ``tool``.

``trimail serve``: every setting has a flag (``--smtp-host`` for
``TRIMAIL_SMTP_HOST``) and a flag wins over the variable.

``trimail send``: talks to ``TRIMAIL_URL`` (default ``http://127.0.0.1:8080``)
with ``TRIMAIL_API_KEY``; prints one line of JSON and exits 0 when the mail
was queued, 1 when trimail refused it (4xx), 3 when trimail could not take it
(unreachable, or 503 after the client's retries); 2 is a usage error.
"""

from __future__ import annotations

import argparse
import base64
import errno
import functools
import json
import logging
import mimetypes
import os
import sys
from collections.abc import Sequence
from enum import Enum
from importlib.metadata import version
from pathlib import Path
from typing import Any

import trio

from .config import DEV_REPLACED, Settings, is_loopback, load_settings
from .errors import ConfigurationError, ConnectionFailed, HTTPError, Unavailable
from .logs import configure_logging, flush_logging

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger(__name__)

DEV_OUTBOX = Path("outbox")
BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})
EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trimail", description="Accept email requests over HTTP, deliver them over SMTP."
    )
    parser.add_argument("--version", action="version", version=f"trimail {version('trimail')}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the service. Each flag overrides its TRIMAIL_* variable.",
    )
    serve_parser.add_argument(
        "--dev",
        action="store_true",
        help="also run a local SMTP sink and deliver into it (no provider needed)",
    )
    serve_parser.add_argument(
        "--outbox",
        type=Path,
        default=DEV_OUTBOX,
        help=f"with --dev: where mails are written (default: {DEV_OUTBOX})",
    )
    _add_settings_flags(serve_parser)

    check = commands.add_parser(
        "check",
        help="check the SMTP provider with the configured settings",
        description="Connect to the configured SMTP provider as a delivery would (TLS, "
        "STARTTLS, AUTH), say NOOP and QUIT, and print a one-line verdict. Exit 0 when "
        "it passed, 1 when it failed, 2 when the settings are invalid.",
    )
    _add_settings_flags(check)

    send = commands.add_parser(
        "send",
        help="send one mail through a running trimail",
        description="Queue one mail at TRIMAIL_URL (with TRIMAIL_API_KEY) and print the "
        "result as one line of JSON.",
    )
    send.add_argument("--to", action="append", required=True, help="recipient (repeatable)")
    send.add_argument("--cc", action="append", help="copy recipient (repeatable)")
    send.add_argument("--bcc", action="append", help="hidden recipient (repeatable)")
    send.add_argument("--reply-to", action="append", help="reply address (repeatable)")
    send.add_argument("--from", dest="from_", help="sender (default: the server's)")
    send.add_argument("--subject", required=True)
    send.add_argument("--text", help="plain-text body ('@FILE' reads a file, '-' or '@-' stdin)")
    send.add_argument("--html", help="HTML body ('@FILE' reads a file, '@-' stdin)")
    send.add_argument("--attach", action="append", type=Path, help="file to attach (repeatable)")
    send.add_argument("--idempotency-key", help="makes a repeated command send only once")
    _add_wait_flags(send, "then wait until the mail is sent or failed, and print its status")
    send.add_argument("--url", default=None, help="trimail's URL [TRIMAIL_URL]")

    status = commands.add_parser(
        "status",
        help="print a job's status",
        description="Print the status of a job at TRIMAIL_URL (with TRIMAIL_API_KEY) as one "
        "line of JSON.",
    )
    status.add_argument("job_id", metavar="ID")
    _add_wait_flags(status, "wait until the job is sent or failed")
    status.add_argument("--url", default=None, help="trimail's URL [TRIMAIL_URL]")

    tool = commands.add_parser(
        "tool", help="print the agent tool definitions (JSON) for send_email and email_status"
    )
    tool.add_argument("--format", choices=["openai", "anthropic"], default="openai")
    return parser


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        parser.add_argument(
            _flag(name),
            dest=name,
            metavar=name.upper(),
            default=None,
            help=f"{field.description} [TRIMAIL_{name.upper()}; default: "
            f"{_DERIVED_DEFAULTS.get(name) or _shown_default(field.default)}]",
        )


#: Settings whose default is worked out from others.
_DERIVED_DEFAULTS = {
    "smtp_port": "by security: 465 tls, 587 starttls, else 25",
    "queue_size": "by store: 10000 memory, 1000000 durable",
    "queue_bytes": "by store: 256 MiB memory, 4 GiB durable",
    "max_attempts": "no limit but the retry window",
}


def _shown_default(value: Any) -> str:
    """A setting's default as an operator would write it."""
    if value is None or value == ():
        return "none" if value is None else "none set"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _add_wait_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--wait", action="store_true", help=what)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="with --wait: the most seconds to wait (default: 60)")  # fmt: skip


def _settings_from(args: argparse.Namespace, extra: dict[str, Any]) -> Settings:
    overrides = {name: getattr(args, name) for name in Settings.model_fields}
    overrides.update(extra)
    return load_settings(**overrides)


def check_bind_is_safe(settings: Settings) -> None:
    """Refuse to listen beyond loopback without API keys: that would be an open relay.

    A Unix socket counts as beyond: who connects to it cannot be known.
    """
    if settings.api_keys:
        return
    if settings.unix_socket is not None:
        raise ConfigurationError(
            f"refusing to listen on the Unix socket {settings.unix_socket} without API keys: "
            "whoever can reach it (a reverse proxy, any local user) could send mail. "
            "Set TRIMAIL_API_KEYS (or --api-keys)."
        )
    if not is_loopback(settings.host):
        raise ConfigurationError(
            f"refusing to listen on {settings.host} without API keys: anyone who can reach "
            "it could send mail. Set TRIMAIL_API_KEYS (or --api-keys), or bind 127.0.0.1."
        )


def serve_command(args: argparse.Namespace) -> int:
    dev_sink = None
    extra: dict[str, Any] = {}
    if args.dev:
        try:
            from .devsink import DevSink
        except ImportError:
            print(
                "trimail: error: --dev needs aiosmtpd: pip install 'trimail[devsink]'",
                file=sys.stderr,
            )
            return 2
        dev_sink = DevSink(args.outbox)
        extra = {"smtp_security": "none", "smtp_username": None, "smtp_password": None}
    try:
        settings = _settings_from(args, extra)
        check_bind_is_safe(settings)
    except ConfigurationError as exc:
        print(f"trimail: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    if dev_sink is not None:
        _warn_replaced_by_dev(args)
    from .http.server import serve  # the server stack, only when serving

    try:
        if dev_sink is None:
            return trio.run(serve, settings)
        with dev_sink:
            settings = settings.model_copy(
                update={"smtp_host": dev_sink.host, "smtp_port": dev_sink.port}
            )
            return trio.run(functools.partial(serve, settings, dev=True))
    except ConfigurationError as exc:  # the store could not be opened
        log.error("%s", exc)
        return 2
    except BaseExceptionGroup as group:  # Hypercorn binds inside its nurseries
        bind_error, rest = group.split(
            lambda exc: isinstance(exc, OSError) and exc.errno in BIND_ERRNOS
        )
        if bind_error is None or rest is not None:
            raise
        reason = _first_leaf(bind_error)
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, reason.strerror)
        return 1
    finally:
        flush_logging()


def _warn_replaced_by_dev(args: argparse.Namespace) -> None:
    """Say which provider settings dev mode ignores: mail goes to the local sink."""
    ignored = [
        f"TRIMAIL_{name.upper()}" if getattr(args, name) is None else _flag(name)
        for name in DEV_REPLACED
        if getattr(args, name) is not None or os.environ.get(f"TRIMAIL_{name.upper()}")
    ]
    if ignored:
        log.warning("--dev delivers to its local sink: %s %s ignored", ", ".join(ignored),
                    "is" if len(ignored) == 1 else "are")  # fmt: skip


def _first_leaf(group: BaseExceptionGroup[OSError]) -> OSError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


class UsageError(Exception):
    """A command line that cannot be carried out (exit 2, one line of JSON)."""


def _attachment(path: Path) -> dict[str, str]:
    guessed, _ = mimetypes.guess_type(path.name)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the attachment {str(path)!r}: {exc.strerror}") from None
    return {
        "filename": path.name,
        "content": base64.b64encode(content).decode(),
        "content_type": guessed or "application/octet-stream",
    }


def _body_arg(value: str | None) -> str | None:
    """``--text``/``--html``: literal text, ``@FILE`` for a file's, ``-`` or ``@-`` for stdin."""
    if value in ("-", "@-"):
        return sys.stdin.read()
    if value is not None and value.startswith("@"):
        try:
            return Path(value[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageError(f"cannot read {value[1:]!r}: {reason}") from None
    return value


def _print_error(code: str, message: str, **more: Any) -> None:
    print(json.dumps({"error": {"code": code, "message": message, **more}}))


def _client(args: argparse.Namespace) -> Any:
    from .client import DEFAULT_URL, Client

    url = args.url or os.environ.get("TRIMAIL_URL", DEFAULT_URL)
    return Client(url, os.environ.get("TRIMAIL_API_KEY"))


def _talk(args: argparse.Namespace, work: Any) -> int:
    """Run ``work(client)``, which prints its result and returns the exit status; print
    errors as one line of JSON: 1 refused, 2 usage, 3 unreachable or unavailable."""
    try:
        with _client(args) as client:
            return int(work(client))
    except UsageError as exc:
        _print_error("usage", str(exc))
        return EXIT_USAGE
    except HTTPError as exc:
        more = {"status": exc.status}
        if exc.details is not None:
            more["details"] = exc.details
        _print_error(exc.code, exc.message, **more)
        return EXIT_UNAVAILABLE if isinstance(exc, Unavailable) else EXIT_REFUSED
    except ConnectionFailed as exc:
        _print_error("connection_failed", str(exc))
        return EXIT_UNAVAILABLE
    except TimeoutError as exc:
        _print_error("timeout", str(exc))
        return EXIT_UNAVAILABLE


def _finished(client: Any, job_id: str, args: argparse.Namespace) -> int:
    """Print the job's status (waited for with --wait); 0 unless --wait saw it fail."""
    job = client.wait(job_id, args.timeout) if args.wait else client.status(job_id)
    print(json.dumps(job.model_dump(exclude_none=True)))
    return EXIT_REFUSED if args.wait and job.status != "sent" else 0


def send_command(args: argparse.Namespace) -> int:
    def work(client: Any) -> int:
        message: dict[str, Any] = {
            "from": args.from_,
            "to": args.to,
            "cc": args.cc,
            "bcc": args.bcc,
            "reply_to": args.reply_to,
            "subject": args.subject,
            "text": _body_arg(args.text),
            "html": _body_arg(args.html),
            "attachments": [_attachment(path) for path in args.attach or []] or None,
        }
        job = client.send(
            {k: v for k, v in message.items() if v is not None},
            idempotency_key=args.idempotency_key,
        )
        if args.wait:
            return _finished(client, job.id, args)
        print(json.dumps(job.model_dump()))
        return 0

    return _talk(args, work)


def status_command(args: argparse.Namespace) -> int:
    return _talk(args, lambda client: _finished(client, args.job_id, args))


def check_command(args: argparse.Namespace) -> int:
    """``trimail check``: the provider check of the start, alone, with its verdict."""
    try:
        settings = _settings_from(args, {})
    except ConfigurationError as exc:
        print(f"trimail: error: {exc}", file=sys.stderr)
        return 2
    from .delivery.provider import check_provider
    from .errors import DeliveryError
    from .http.app import smtp_transport_factory

    try:
        verdict = check_provider(smtp_transport_factory(settings)())
    except DeliveryError as error:
        print(f"failed: {error.reason}")
        return 1
    print(f"ok: {verdict}")
    return 0


def tool_command(args: argparse.Namespace) -> int:
    from .agent import anthropic_tools, openai_tools

    tools = openai_tools() if args.format == "openai" else anthropic_tools()
    print(json.dumps(tools, indent=2, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trimail`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    commands = {
        "serve": serve_command,
        "send": send_command,
        "status": status_command,
        "check": check_command,
        "tool": tool_command,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
