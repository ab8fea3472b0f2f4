"""``create_app()``: wires settings, the dispatcher and the routes into a Quart-Trio app.

``hypercorn --worker-class trio 'trimail.http:create_app()'`` serves it with the
settings read from ``TRIMAIL_*`` variables; ``trimail serve`` does the same and
adds signal handling that keeps answering ``503 shutting_down`` during the drain.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, cast

import trio
from quart_trio import QuartTrio

from ..config import Settings, load_settings
from ..delivery.dispatcher import Dispatcher
from ..delivery.retry import RetryPolicy
from ..delivery.transport import SMTPTransport, Transport, make_tls_context
from ..logs import configure_logging, flush_logging
from ..models import json_values_limit
from ..store.expiring import ExpiringStore
from .access import Access
from .gate import ASGIApp, ByteBudget, Gate
from .idempotency import IdempotencyKeys
from .metrics import Metrics
from .openapi import build_openapi, dump, render_html
from .routes import JobIdConverter, api

log = logging.getLogger(__name__)

#: Seconds beyond the shutdown grace that quart-trio's and Hypercorn's shutdown
#: deadlines allow, so that cutting connections and logging what was not
#: delivered always fits inside them (a few ms in practice; 5 s is headroom).
SHUTDOWN_MARGIN = 5.0


#: Exit status when delivery stopped after an internal error (EX_SOFTWARE).
EXIT_DELIVERY_FAILED = 70


class TrimailApp(QuartTrio):
    """The Quart-Trio app, with the settings and the dispatcher it serves.

    ``delivery_failed`` is set when the dispatcher ended by itself (a bug): the
    instance must not keep accepting mail it cannot deliver. :func:`trimail.
    server.serve` then stops the server; hosted by plain Hypercorn, the process
    exits at once with :data:`EXIT_DELIVERY_FAILED` unless ``exit_on_failure``
    was turned off.
    """

    settings: Settings
    dispatcher: Dispatcher
    metrics: Metrics
    idempotency: IdempotencyKeys
    validation_context: dict[str, Any]
    json_values_limit: int
    openapi_json: bytes
    docs_html: str
    delivery_failed: trio.Event
    exit_on_failure: bool


def smtp_transport_factory(settings: Settings) -> Callable[[], Transport]:
    """One :class:`SMTPTransport` per call, all sharing one TLS context."""
    tls_context = make_tls_context(settings.smtp_ca_file)
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None

    def factory() -> Transport:
        return SMTPTransport(
            settings.smtp_host,
            settings.effective_smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=password,
            timeout=settings.smtp_timeout,
            tls_context=tls_context,
        )

    return factory


def create_app(
    settings: Settings | None = None,
    *,
    transport_factory: Callable[[], Transport] | None = None,
    setup_logging: bool = True,
) -> TrimailApp:
    """Build the app; the dispatcher starts when it starts serving and drains when it stops.

    ``settings`` default to the ``TRIMAIL_*`` environment; ``transport_factory``
    to SMTP as configured (tests pass :class:`trimail.testing.MemoryTransport`).
    """
    settings = settings or load_settings()
    if setup_logging:
        configure_logging(settings.log_format, settings.log_level)
    app = TrimailApp(__name__)
    app.settings = settings
    app.delivery_failed = trio.Event()
    app.exit_on_failure = True
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["BODY_TIMEOUT"] = settings.request_timeout  # a slow drip ends in a 408
    # quart-trio puts this deadline on the nursery that runs the dispatcher, and
    # starts it before after_serving runs: it must outlast the drain.
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = settings.shutdown_grace + SHUTDOWN_MARGIN
    app.validation_context = {
        "default_from": settings.default_from,
        "max_recipients": settings.max_recipients,
    }
    app.json_values_limit = json_values_limit(settings.max_recipients)
    app.metrics = Metrics()
    access = Access.from_secrets(
        (key.get_secret_value() for key in settings.api_keys),
        settings.metrics_key.get_secret_value() if settings.metrics_key else None,
    )
    app.asgi_app = Gate(  # type: ignore[method-assign,assignment]
        cast(ASGIApp, app.asgi_app),
        access,
        settings.max_request_bytes,
        ByteBudget(settings.max_inflight_bytes),
        app.metrics.request,
    )
    app.dispatcher = Dispatcher(
        transport_factory or smtp_transport_factory(settings),
        workers=settings.workers,
        queue_size=settings.queue_size,
        retry=RetryPolicy(
            base_delay=settings.retry_base_delay,
            max_delay=settings.retry_max_delay,
            max_attempts=settings.max_attempts,
        ),
        grace=settings.shutdown_grace,
        observer=app.metrics,
        history=ExpiringStore(settings.status_ttl, settings.status_max_jobs),
    )
    app.metrics.watch(app.dispatcher)
    app.idempotency = IdempotencyKeys(settings.idempotency_ttl, settings.idempotency_max_keys)
    document = build_openapi(version("trimail"))
    app.openapi_json = dump(document)
    app.docs_html = render_html(document)
    app.url_map.converters["job_id"] = JobIdConverter
    app.register_blueprint(api)

    @app.before_serving
    async def start_dispatcher() -> None:
        if not settings.api_keys:
            log.warning(
                "no TRIMAIL_API_KEYS configured: only direct connections to a loopback address "
                "are served (not a Unix socket, not through a proxy)"
            )
        await app.nursery.start(_deliver, app)
        log.info(
            "delivering through %s:%d (security %s) with %d worker(s), queue of %d",
            settings.smtp_host,
            settings.effective_smtp_port,
            settings.smtp_security.value,
            settings.workers,
            settings.queue_size,
        )

    @app.after_serving
    async def drain_dispatcher() -> None:
        await app.dispatcher.shutdown()

    return app


async def _deliver(app: TrimailApp, *, task_status: trio.TaskStatus[None]) -> None:
    """Run the dispatcher; if it ends by itself, say why and stop the instance (see TrimailApp)."""
    try:
        await app.dispatcher.run(task_status=task_status)
    except Exception:
        log.critical("delivery stopped after an internal error; trimail stops", exc_info=True)
        app.delivery_failed.set()
        if app.exit_on_failure:
            flush_logging()
            os._exit(EXIT_DELIVERY_FAILED)
