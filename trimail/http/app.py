"""``create_app()``: wires settings, the store, delivery and the routes into a Quart-Trio app.

``hypercorn --worker-class trio 'trimail.http:create_app()'`` serves it with the
settings read from ``TRIMAIL_*`` variables; ``trimail serve`` does the same and
adds signal handling that keeps answering ``503 shutting_down`` during the drain.

Startup (``before_serving``) opens the store unless one was given, starts the
maintenance task and, unless the role is ``api``, the dispatcher, each with
``nursery.start``. Shutdown (``after_serving``) stops accepting, drains the
dispatcher within the grace, closes the jobs still open here in the ledger,
stops maintenance and closes the store.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, cast

import trio
from quart_trio import QuartTrio

from ..config import DEV_SENDER, Role, Settings, load_settings
from ..delivery.dispatcher import Dispatcher
from ..delivery.provider import check_at_start
from ..delivery.retry import RetryPolicy
from ..delivery.transport import SMTPTransport, Transport, make_tls_context
from ..intake import Intake
from ..ledger import Ledger, settle
from ..logs import configure_logging, flush_logging
from ..maintenance import Maintenance
from ..models import json_values_limit
from ..store import JobStore, Limits, open_store
from .access import Access
from .gate import ASGIApp, ByteBudget, Gate
from .metrics import Metrics
from .openapi import build_openapi, dump, render_html
from .routes import JobIdConverter, jobs, operations
from .sending import ROUTES, SendEndpoint

log = logging.getLogger(__name__)

#: Seconds beyond the shutdown grace that quart-trio's and Hypercorn's shutdown
#: deadlines allow, so that cutting connections and logging what was not
#: delivered always fits inside them (a few ms in practice; 5 s is headroom).
SHUTDOWN_MARGIN = 5.0
#: Exit status when delivery stopped after an internal error (EX_SOFTWARE).
EXIT_DELIVERY_FAILED = 70


class TrimailApp(QuartTrio):
    """The Quart-Trio app, with what it serves: the store, the intake, the dispatcher.

    ``store``, ``intake`` and ``maintenance`` exist once the app is serving;
    ``dispatcher`` too, unless the role is ``api``. ``delivery_failed`` is set
    when the dispatcher ended by itself (a bug): the instance must not keep
    accepting mail it cannot deliver. :func:`trimail.http.server.serve` then
    stops the server; under plain Hypercorn the process exits at once with
    :data:`EXIT_DELIVERY_FAILED` unless ``exit_on_failure`` was turned off.
    """

    settings: Settings
    clock: Callable[[], float]
    ledger: Ledger
    store: JobStore | None
    intake: Intake
    dispatcher: Dispatcher | None
    maintenance: Maintenance
    metrics: Metrics
    validation_context: dict[str, Any]
    json_values_limit: int
    openapi_json: bytes
    docs_html: str
    delivery_failed: trio.Event
    exit_on_failure: bool

    async def drain(self) -> None:
        """Stop accepting, then let delivery finish within the grace (see Dispatcher.shutdown).

        Safe to call more than once. Requests keep being answered meanwhile
        (``503 shutting_down`` for new mail, replays and status as usual).
        """
        self.intake.accepting = False
        if self.dispatcher is not None:
            await self.dispatcher.shutdown()


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
            data_timeout=settings.smtp_data_timeout,
            tls_context=tls_context,
        )

    return factory


def store_limits(settings: Settings) -> Limits:
    return Limits(
        max_jobs=settings.effective_queue_size,
        max_bytes=settings.effective_queue_bytes,
        status_ttl=settings.status_ttl,
        status_max_jobs=settings.status_max_jobs,
        idempotency_ttl=settings.idempotency_ttl,
        idempotency_max_keys=settings.idempotency_max_keys,
    )


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        base_delay=settings.retry_base_delay,
        max_delay=settings.retry_max_delay,
        window=settings.retry_window,
        max_attempts=settings.max_attempts,
    )


def create_app(
    settings: Settings | None = None,
    *,
    transport_factory: Callable[[], Transport] | None = None,
    store: JobStore | None = None,
    setup_logging: bool = True,
    clock: Callable[[], float] = time.time,
    dev: bool = False,
) -> TrimailApp:
    """Build the app; the store and delivery start when it starts serving, and stop with it.

    ``settings`` default to the ``TRIMAIL_*`` environment; ``transport_factory``
    to SMTP as configured (tests pass :class:`trimail.testing.MemoryTransport`);
    ``store`` to the one ``settings.store`` names, opened at startup. ``dev``
    (``trimail serve --dev``) sends from :data:`~trimail.config.DEV_SENDER` when no
    default sender is configured, and accepts one-label domains such as ``localhost``.
    """
    settings = settings or load_settings()
    if setup_logging:
        configure_logging(settings.log_format, settings.log_level)
    app = TrimailApp(__name__)
    app.settings = settings
    app.clock = clock
    app.ledger = Ledger()
    app.store = store
    app.dispatcher = None
    app.delivery_failed = trio.Event()
    app.exit_on_failure = True
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["BODY_TIMEOUT"] = settings.request_timeout  # a slow drip ends in a 408
    # quart-trio puts this deadline on the nursery that runs the dispatcher, and
    # starts it before after_serving runs: it must outlast the drain.
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = settings.shutdown_grace + SHUTDOWN_MARGIN
    app.validation_context = {
        "default_from": settings.default_from or (DEV_SENDER if dev else None),
        "max_recipients": settings.max_recipients,
        "local_domains": dev,
    }
    app.json_values_limit = json_values_limit(settings.max_recipients)
    app.metrics = Metrics()
    access = Access.from_secrets(
        (key.get_secret_value() for key in settings.api_keys),
        settings.metrics_key.get_secret_value() if settings.metrics_key else None,
    )
    sends_mail = settings.role is not Role.DELIVERY
    app.asgi_app = Gate(  # type: ignore[method-assign,assignment]
        cast(ASGIApp, app.asgi_app),
        access,
        settings.max_request_bytes,
        ByteBudget(settings.max_inflight_bytes),
        app.metrics.request,
        endpoints=dict.fromkeys(ROUTES, SendEndpoint(app)) if sends_mail else {},
        request_log=settings.access_log,
    )
    document = build_openapi(version("trimail"))
    app.openapi_json = dump(document)
    app.docs_html = render_html(document)
    app.url_map.converters["job_id"] = JobIdConverter
    if settings.role is not Role.DELIVERY:
        app.register_blueprint(jobs)
    app.register_blueprint(operations)
    maintenance_scope = trio.CancelScope()

    @app.before_serving
    async def start() -> None:
        if not settings.api_keys and settings.role is not Role.DELIVERY:
            log.warning(
                "no TRIMAIL_API_KEYS configured: only direct connections to a loopback address "
                "are served (not a Unix socket, not through a proxy)"
            )
        if app.store is None:
            app.store = await open_store(settings.store, store_limits(settings))
        app.intake = Intake(app.store, app.ledger, grace=settings.shutdown_grace, clock=clock)
        app.maintenance = Maintenance(app.store, app.ledger, clock)
        app.metrics.watch(app)
        await app.nursery.start(_keep_house, app.maintenance, maintenance_scope)
        if settings.role is not Role.API:
            transports = transport_factory or smtp_transport_factory(settings)
            app.dispatcher = Dispatcher(
                app.store,
                transports,
                ledger=app.ledger,
                workers=settings.workers,
                idle_timeout=settings.smtp_idle_timeout,
                retry=retry_policy(settings),
                lease_seconds=settings.lease_seconds,
                grace=settings.shutdown_grace,
                observer=app.metrics,
                clock=clock,
            )
            app.intake.on_accept = app.dispatcher.wake
            await app.nursery.start(_deliver, app, app.dispatcher)
            if settings.smtp_check:  # in the background: a slow provider must not delay start
                app.nursery.start_soon(check_at_start, transports(), app.dispatcher.provider)
        app.intake.accepting = settings.role is not Role.DELIVERY
        log.info(
            "trimail %s (role %s, store %s) delivering through %s:%d (security %s) over up to "
            "%d connection(s); at most %d job(s) and %d bytes not yet final",
            version("trimail"),
            settings.role.value,
            settings.redacted_store,
            settings.smtp_host,
            settings.effective_smtp_port,
            settings.smtp_security.value,
            settings.workers,
            settings.effective_queue_size,
            settings.effective_queue_bytes,
        )

    @app.after_serving
    async def stop() -> None:
        await app.drain()
        if app.dispatcher is None and app.store is not None:
            await settle(app.store, app.ledger, clock(), set())
        maintenance_scope.cancel()
        if app.store is not None:
            await app.store.aclose()

    return app


async def _keep_house(
    maintenance: Maintenance, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]
) -> None:
    with scope:
        await maintenance.run(task_status=task_status)


async def _deliver(
    app: TrimailApp, dispatcher: Dispatcher, *, task_status: trio.TaskStatus[None]
) -> None:
    """Run the dispatcher; if it ends by itself, say why and stop the instance (see TrimailApp)."""
    try:
        await dispatcher.run(task_status=task_status)
    except Exception:
        log.critical("delivery stopped after an internal error; trimail stops", exc_info=True)
        app.intake.accepting = False
        app.delivery_failed.set()
        if app.exit_on_failure:
            flush_logging()
            os._exit(EXIT_DELIVERY_FAILED)
