"""Prometheus metrics: HTTP requests, the queue, the workers, attempts and outcomes.

Labels take values from small fixed sets (route patterns, status codes, SMTP
code classes, outcomes), never ids or addresses, so cardinality stays bounded.
Each app has its own registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..delivery.dispatcher import Dispatcher, Observer
from ..jobs import Outcome

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
                "queue_depth": "Jobs waiting in the queue.",
                "queue_capacity": "Jobs the queue can hold.",
                "workers": "Worker tasks.",
                "workers_busy": "Workers in the middle of an attempt.",
                "jobs_outstanding": "Accepted jobs without a final outcome.",
                "jobs_retrying": "Jobs waiting for a retry.",
            }.items()
        }

    def watch(self, dispatcher: Dispatcher) -> None:
        """Read the queue and worker gauges from ``dispatcher`` at each scrape."""
        readers = {
            "queue_depth": lambda: dispatcher.depth,
            "queue_capacity": lambda: dispatcher.capacity,
            "workers": lambda: dispatcher.workers,
            "workers_busy": lambda: dispatcher.busy,
            "jobs_outstanding": lambda: dispatcher.outstanding,
            "jobs_retrying": lambda: dispatcher.retrying,
        }
        for name, read in readers.items():
            self._gauges[name].set_function(read)

    def request(self, route: str, status: int) -> None:
        self.requests.labels(route, str(status)).inc()

    def attempted(self, result: str, smtp_code: int | None, duration: float) -> None:
        self.attempts.labels(result, code_class(smtp_code)).inc()
        self.attempt_seconds.observe(duration)

    def retry_scheduled(self) -> None:
        self.retries.inc()

    def finished(self, outcome: Outcome) -> None:
        self.jobs.labels(outcome.value).inc()

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
