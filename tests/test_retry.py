"""The retry policy (pure functions)."""

from __future__ import annotations

from trimail.delivery.retry import RetryPolicy, Verdict


def test_backoff_is_full_jitter_up_to_the_exponential_ceiling() -> None:
    """attempt n waits uniform(0, min(max, base * 2**(n-1)))."""
    highest = RetryPolicy(base_delay=1.0, max_delay=300.0, uniform=lambda low, high: high)
    ceilings = [highest.backoff(n) for n in range(1, 12)]
    assert ceilings == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert RetryPolicy(uniform=lambda low, high: low).backoff(3) == 0.0


def test_backoff_survives_huge_attempt_numbers() -> None:
    """The exponent is clamped, so a large attempt number cannot overflow."""
    assert RetryPolicy(max_delay=5.0, uniform=lambda low, high: high).backoff(10_000) == 5.0


def test_should_retry_stops_at_max_attempts_and_on_permanent() -> None:
    """Transient failures are retried until max_attempts; permanent ones never."""
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(1, Verdict.TRANSIENT)
    assert policy.should_retry(2, Verdict.TRANSIENT)
    assert not policy.should_retry(3, Verdict.TRANSIENT)
    assert not policy.should_retry(1, Verdict.PERMANENT)
