"""Serving the app with Hypercorn's trio worker, and the graceful stop on signals.

SIGTERM or SIGINT starts the drain while the HTTP side keeps answering (new
requests get ``503 shutting_down``); Hypercorn stops listening only once the
dispatcher has finished. A second signal ends the grace period at once. If
delivery stops by itself (a bug), the server stops the same way and
:func:`serve` returns a non-zero exit status.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from ..config import Settings
from ..store import open_store
from .app import EXIT_DELIVERY_FAILED, SHUTDOWN_MARGIN, TrimailApp, create_app, store_limits

log = logging.getLogger(__name__)

#: Listen backlog: Hypercorn's default of 100 overflows under bursts of new
#: connections on a busy instance; the kernel caps it at somaxconn anyway.
LISTEN_BACKLOG = 2048
#: Seconds Hypercorn gives open connections to finish once the drain is over.
GRACEFUL_HTTP_TIMEOUT = 3.0
#: Seconds Hypercorn's read timeout waits beyond TRIMAIL_REQUEST_TIMEOUT (see hypercorn_config).
READ_TIMEOUT_MARGIN = 5.0


def hypercorn_config(settings: Settings) -> HypercornConfig:
    """Hypercorn settings sized from ours: lifespan shutdown must outlast the drain."""
    config = HypercornConfig()
    if settings.unix_socket is not None:
        config.bind = [f"unix:{settings.unix_socket}"]
    else:
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        config.bind = [f"{host}:{settings.port}"]
    config.accesslog = None  # one log line per job is enough; access logs cost I/O per request
    config.errorlog = log
    config.backlog = LISTEN_BACKLOG
    config.graceful_timeout = GRACEFUL_HTTP_TIMEOUT
    # A connection silent this long is closed; later than the app's own body timeout,
    # so that a slow body still gets its 408 answer before the connection goes.
    config.read_timeout = math.ceil(settings.request_timeout + READ_TIMEOUT_MARGIN)
    config.shutdown_timeout = settings.shutdown_grace + 2 * SHUTDOWN_MARGIN
    return config


async def serve(settings: Settings, app: TrimailApp | None = None, *, dev: bool = False) -> int:
    """Serve until SIGTERM or SIGINT, drain while still answering; return the exit status.

    The status is 0, or :data:`~trimail.http.app.EXIT_DELIVERY_FAILED` when the server
    stopped because delivery had stopped by itself.
    """
    if app is None:  # open the store first: an unreachable one stops trimail before it listens
        store = await open_store(settings.store, store_limits(settings))
        app = create_app(settings, store=store, setup_logging=False, dev=dev)
    app.exit_on_failure = False  # stopped here, gracefully, instead
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

        async def first_signal() -> None:
            async for signum in signals:
                log.info("received %s: finishing %d accepted job(s) within %g s; send it again "
                         "to stop at once", signal.Signals(signum).name, len(app.ledger.open),
                         settings.shutdown_grace)  # fmt: skip
                return

        async def drain_on_signal() -> None:
            async with trio.open_nursery() as watch:  # whichever comes first ends the watch

                async def then_stop(wait: Callable[[], Awaitable[object]]) -> None:
                    await wait()
                    watch.cancel_scope.cancel()

                watch.start_soon(then_stop, first_signal)
                watch.start_soon(then_stop, app.delivery_failed.wait)
            async with trio.open_nursery() as nursery:

                async def hurry_on_second_signal() -> None:
                    async for signum in signals:
                        log.warning("received %s again: stopping now", signal.Signals(signum).name)
                        if app.dispatcher is not None:
                            app.dispatcher.stop_now()

                nursery.start_soon(hurry_on_second_signal)
                await app.drain()
                nursery.cancel_scope.cancel()

        await hypercorn_serve(app, hypercorn_config(settings), shutdown_trigger=drain_on_signal)
    if app.delivery_failed.is_set():
        log.error("stopped because delivery had stopped (exit status %d): %s",
                  EXIT_DELIVERY_FAILED, app.ledger.tally())  # fmt: skip
        return EXIT_DELIVERY_FAILED
    log.info("stopped: %s", app.ledger.tally())
    return 0
