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


HIGHEST = RetryPolicy(uniform=lambda low, high: high)


def test_next_attempt_is_now_plus_the_backoff() -> None:
    """After attempt n the next one is due backoff(n) seconds later."""
    assert HIGHEST.next_attempt(1, Verdict.TRANSIENT, created_at=0, now=100) == 101
    assert HIGHEST.next_attempt(4, Verdict.TRANSIENT, created_at=0, now=100) == 108


def test_permanent_failures_are_never_retried() -> None:
    """A permanent failure ends the job whatever the window says."""
    assert HIGHEST.next_attempt(1, Verdict.PERMANENT, created_at=0, now=0) is None


def test_the_window_bounds_the_retries() -> None:
    """A retry that would start later than window seconds after acceptance is not made."""
    policy = RetryPolicy(max_delay=300, window=3600, uniform=lambda low, high: high)
    assert policy.next_attempt(20, Verdict.TRANSIENT, created_at=0, now=3300) == 3600
    assert policy.next_attempt(20, Verdict.TRANSIENT, created_at=0, now=3301) is None


def test_max_attempts_bounds_the_retries_when_set() -> None:
    """With max_attempts=3, the third failure is the last; without it only the window counts."""
    policy = RetryPolicy(max_attempts=3)
    assert policy.next_attempt(2, Verdict.TRANSIENT, created_at=0, now=0) is not None
    assert policy.next_attempt(3, Verdict.TRANSIENT, created_at=0, now=0) is None
    assert RetryPolicy().next_attempt(1000, Verdict.TRANSIENT, created_at=0, now=0) is not None


def test_the_default_window_outlasts_a_day_long_outage() -> None:
    """With the defaults a job failing for 23 hours is still retried (Postfix keeps 5 days)."""
    assert RetryPolicy().next_attempt(500, Verdict.TRANSIENT, created_at=0, now=23 * 3600)
