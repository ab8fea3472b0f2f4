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
import json
import logging
import mimetypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from .config import Settings, is_loopback, load_settings
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
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the service. Each flag overrides its TRIMAIL_* variable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve_parser.add_argument(
        "--dev",
        action="store_true",
        help="also run a local SMTP sink and deliver into it (no provider needed)",
    )
    serve_parser.add_argument(
        "--outbox", type=Path, default=DEV_OUTBOX, help="with --dev: where mails are written"
    )
    for name, field in Settings.model_fields.items():
        serve_parser.add_argument(
            _flag(name),
            dest=name,
            metavar=name.upper(),
            default=None,
            help=f"{field.description} [TRIMAIL_{name.upper()}]",
        )

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
    send.add_argument("--text", help="plain-text body ('-' reads standard input)")
    send.add_argument("--html", help="HTML body")
    send.add_argument("--attach", action="append", type=Path, help="file to attach (repeatable)")
    send.add_argument("--idempotency-key", help="makes a repeated command send only once")
    send.add_argument("--url", default=None, help="trimail's URL [TRIMAIL_URL]")

    tool = commands.add_parser(
        "tool", help="print the agent tool definitions (JSON) for send_email and email_status"
    )
    tool.add_argument("--format", choices=["openai", "anthropic"], default="openai")
    return parser


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
    from .http.server import serve  # the server stack, only when serving

    try:
        if dev_sink is None:
            return trio.run(serve, settings)
        with dev_sink:
            settings = settings.model_copy(
                update={"smtp_host": dev_sink.host, "smtp_port": dev_sink.port}
            )
            return trio.run(serve, settings)
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


def _first_leaf(group: BaseExceptionGroup[OSError]) -> OSError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _attachment(path: Path) -> dict[str, str]:
    guessed, _ = mimetypes.guess_type(path.name)
    return {
        "filename": path.name,
        "content": base64.b64encode(path.read_bytes()).decode(),
        "content_type": guessed or "application/octet-stream",
    }


def send_command(args: argparse.Namespace) -> int:
    from .client import DEFAULT_URL, Client

    text = sys.stdin.read() if args.text == "-" else args.text
    message: dict[str, Any] = {
        "from": args.from_,
        "to": args.to,
        "cc": args.cc,
        "bcc": args.bcc,
        "reply_to": args.reply_to,
        "subject": args.subject,
        "text": text,
        "html": args.html,
        "attachments": [_attachment(path) for path in args.attach or []] or None,
    }
    url = args.url or os.environ.get("TRIMAIL_URL", DEFAULT_URL)
    try:
        with Client(url, os.environ.get("TRIMAIL_API_KEY")) as client:
            job = client.send(
                {k: v for k, v in message.items() if v is not None},
                idempotency_key=args.idempotency_key,
            )
    except HTTPError as exc:
        error = {"code": exc.code, "message": exc.message, "status": exc.status}
        if exc.details is not None:
            error["details"] = exc.details
        print(json.dumps({"error": error}))
        return EXIT_UNAVAILABLE if isinstance(exc, Unavailable) else EXIT_REFUSED
    except ConnectionFailed as exc:
        print(json.dumps({"error": {"code": "connection_failed", "message": str(exc)}}))
        return EXIT_UNAVAILABLE
    print(json.dumps(job.model_dump()))
    return 0


def tool_command(args: argparse.Namespace) -> int:
    from .agent import anthropic_tools, openai_tools

    tools = openai_tools() if args.format == "openai" else anthropic_tools()
    print(json.dumps(tools, indent=2, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trimail`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    commands = {"serve": serve_command, "send": send_command, "tool": tool_command}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
