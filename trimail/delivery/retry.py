"""Retry policy as data, and the pure functions that apply it; nothing here sleeps.

``backoff(attempt)`` is *full jitter*: a uniform draw from
``[0, min(max_delay, base_delay * 2 ** (attempt - 1))]`` seconds, where
``attempt`` is the number of the attempt that just failed (1 for the first).

A job is retried while the next attempt would start within ``window`` seconds
of its acceptance (24 hours by default: a provider outage of up to a day loses
nothing), and, if ``max_attempts`` is set, while it has had fewer attempts.
Which failures are transient is decided where they are understood, in
:mod:`trimail.delivery.failures`; the policy only counts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from ..errors import DeliveryError, TransientDeliveryError
from .failures import code_is_transient


class Verdict(str, Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a job is retried.

    ``uniform(low, high)`` draws the jitter; tests pass a deterministic one.
    """

    base_delay: float = 1.0
    max_delay: float = 300.0
    window: float = 86_400.0
    max_attempts: int | None = None
    uniform: Callable[[float, float], float] = field(default=random.uniform, compare=False)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (full jitter)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** min(attempt - 1, 64))
        return self.uniform(0.0, ceiling)

    def next_attempt(
        self, attempt: int, verdict: Verdict, created_at: float, now: float
    ) -> float | None:
        """When to try again after attempt number ``attempt`` failed this way; None: give up.

        Times are Unix seconds; ``created_at`` is when the job was accepted.
        """
        if verdict is Verdict.PERMANENT:
            return None
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return None
        due = now + self.backoff(attempt)
        return due if due <= created_at + self.window else None


def classify_code(code: int) -> Verdict:
    """A reply code's verdict: 4xx is transient, anything else permanent."""
    return Verdict.TRANSIENT if code_is_transient(code) else Verdict.PERMANENT


def classify(error: DeliveryError) -> Verdict:
    """A failed attempt's verdict, as the transport judged it."""
    return Verdict.TRANSIENT if isinstance(error, TransientDeliveryError) else Verdict.PERMANENT
