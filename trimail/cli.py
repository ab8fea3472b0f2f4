"""``trimail serve``: flags and ``TRIMAIL_*`` variables into :class:`Settings`, then run.

Every setting has a flag (``--smtp-host`` for ``TRIMAIL_SMTP_HOST``); a flag wins
over the variable. SIGTERM or SIGINT starts a graceful stop: new requests get
``503 shutting_down`` while the queue drains for up to the grace period; a
second signal cuts the drain short. The exit status is 0 after a signal.
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from .app import SHUTDOWN_MARGIN, TrimailApp, create_app
from .config import Settings, is_loopback, load_settings
from .errors import ConfigurationError
from .logs import configure_logging, flush_logging

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger("trimail.cli")

#: Listen backlog: Hypercorn's default of 100 overflows under bursts of new
#: connections on a busy instance; the kernel caps it at somaxconn anyway.
LISTEN_BACKLOG = 2048
#: Seconds Hypercorn gives open connections to finish once the drain is over.
GRACEFUL_HTTP_TIMEOUT = 3.0
DEV_OUTBOX = Path("outbox")
BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trimail", description="Accept email requests over HTTP, deliver them over SMTP."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the service. Each flag overrides its TRIMAIL_* variable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument(
        "--dev",
        action="store_true",
        help="also run a local SMTP sink and deliver into it (no provider needed)",
    )
    serve.add_argument(
        "--outbox", type=Path, default=DEV_OUTBOX, help="with --dev: where mails are written"
    )
    for name, field in Settings.model_fields.items():
        serve.add_argument(
            _flag(name),
            dest=name,
            metavar=name.upper(),
            default=None,
            help=f"{field.description} [TRIMAIL_{name.upper()}]",
        )
    return parser


def hypercorn_config(settings: Settings) -> HypercornConfig:
    """Hypercorn settings sized from ours: lifespan shutdown must outlast the drain."""
    config = HypercornConfig()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None  # one log line per job is enough; access logs cost I/O per request
    config.errorlog = logging.getLogger("trimail.server")
    config.backlog = LISTEN_BACKLOG
    config.graceful_timeout = GRACEFUL_HTTP_TIMEOUT
    config.shutdown_timeout = settings.shutdown_grace + 2 * SHUTDOWN_MARGIN
    return config


async def serve(settings: Settings, app: TrimailApp | None = None) -> None:
    """Serve until SIGTERM or SIGINT, drain while still answering, then return."""
    app = app or create_app(settings, setup_logging=False)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

        async def drain_on_signal() -> None:
            async for signum in signals:
                log.info("received %s: finishing accepted jobs", signal.Signals(signum).name)
                break
            async with trio.open_nursery() as nursery:

                async def hurry_on_second_signal() -> None:
                    async for signum in signals:
                        log.warning("received %s again: stopping now", signal.Signals(signum).name)
                        app.dispatcher.stop_now()

                nursery.start_soon(hurry_on_second_signal)
                await app.dispatcher.shutdown()
                nursery.cancel_scope.cancel()

        await hypercorn_serve(app, hypercorn_config(settings), shutdown_trigger=drain_on_signal)
    log.info("stopped")


def _settings_from(args: argparse.Namespace, extra: dict[str, Any]) -> Settings:
    overrides = {name: getattr(args, name) for name in Settings.model_fields}
    overrides.update(extra)
    return load_settings(**overrides)


def check_bind_is_safe(settings: Settings) -> None:
    """Refuse to listen beyond loopback without API keys: that would be an open relay."""
    if not settings.api_keys and not is_loopback(settings.host):
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
    try:
        if dev_sink is None:
            trio.run(serve, settings)
        else:
            with dev_sink:
                settings = settings.model_copy(
                    update={"smtp_host": dev_sink.host, "smtp_port": dev_sink.port}
                )
                trio.run(serve, settings)
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
    return 0


def _first_leaf(group: BaseExceptionGroup[OSError]) -> OSError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trimail`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve_command(args)
    raise AssertionError(f"unknown command {args.command}")  # argparse refuses it first


if __name__ == "__main__":
    sys.exit(main())
