"""Prometheus metrics: HTTP requests, the queue, the workers, attempts and outcomes.

Labels take values from small fixed sets (route patterns, status codes, SMTP
code classes, outcomes), never ids or addresses, so cardinality stays bounded.
Each app has its own registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..delivery.dispatcher import Observer
from ..ledger import Closing

if TYPE_CHECKING:
    from .app import TrimailApp

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

#: Attempt durations in seconds: from a loopback relay (ms) to a stalled provider (30 s timeout).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def code_class(smtp_code: int | None) -> str:
    """``2xx``, ``4xx``, ``5xx`` or ``none`` (no reply: connection or TLS failure)."""
    return f"{smtp_code // 100}xx" if smtp_code else "none"


class Metrics(Observer):
    """The metrics of one app; the dispatcher reports to it as its :class:`Observer`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "trimail_http_requests", "HTTP requests answered.", ["route", "status"], registry=r
        )
        self.jobs = Counter(
            "trimail_jobs_finished", "Jobs by final outcome.", ["outcome"], registry=r
        )
        self.attempts = Counter(
            "trimail_delivery_attempts",
            "Delivery attempts by result and SMTP reply code class.",
            ["result", "code_class"],
            registry=r,
        )
        self.attempt_seconds = Histogram(
            "trimail_delivery_attempt_duration_seconds",
            "Duration of delivery attempts.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "trimail_retries_scheduled", "Retries scheduled after transient failures.", registry=r
        )
        self._gauges = {
            name: Gauge(f"trimail_{name}", help_text, registry=r)
            for name, help_text in {
                "queue_depth": "Jobs queued, not yet attempted (the store's count).",
                "jobs_sending": "Jobs in an attempt, on any instance (the store's count).",
                "jobs_retrying": "Jobs waiting for a retry (the store's count).",
                "jobs_outstanding": "Jobs not yet final (the store's count).",
                "queue_bytes": "Bytes of messages not yet final (the store's count).",
                "queue_capacity": "Most jobs not yet final (TRIMAIL_QUEUE_SIZE).",
                "workers": "Worker tasks of this process.",
                "workers_busy": "Workers of this process in the middle of an attempt.",
                "smtp_connections": "SMTP connections of this process open now, in use or idle.",
                "smtp_concurrency_limit": "Attempts this process may run at once: workers, or "
                "fewer while the provider pushes back.",
                "store_up": "1 while the store answers, 0 when it does not.",
            }.items()
        }

    def watch(self, app: TrimailApp) -> None:
        """Read the gauges from the app's maintenance counts and dispatcher at each scrape."""
        maintenance = app.maintenance
        readers = {
            "queue_depth": lambda: maintenance.stats.queued,
            "jobs_sending": lambda: maintenance.stats.sending,
            "jobs_retrying": lambda: maintenance.stats.retrying,
            "jobs_outstanding": lambda: maintenance.stats.outstanding,
            "queue_bytes": lambda: maintenance.stats.bytes,
            "queue_capacity": lambda: app.settings.effective_queue_size,
            "workers": lambda: app.dispatcher.workers if app.dispatcher else 0,
            "workers_busy": lambda: app.dispatcher.busy if app.dispatcher else 0,
            "smtp_connections": lambda: app.dispatcher.connections if app.dispatcher else 0,
            "smtp_concurrency_limit": lambda: app.dispatcher.concurrency if app.dispatcher else 0,
            "store_up": lambda: 0 if maintenance.error else 1,
        }
        for name, read in readers.items():
            self._gauges[name].set_function(read)

    def request(self, route: str, status: int) -> None:
        self.requests.labels(route, str(status)).inc()

    def attempted(self, kind: str, smtp_code: int | None, duration: float) -> None:
        self.attempts.labels(kind, code_class(smtp_code)).inc()
        self.attempt_seconds.observe(duration)

    def retry_scheduled(self) -> None:
        self.retries.inc()

    def finished(self, closing: Closing) -> None:
        self.jobs.labels(closing.value).inc()

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
