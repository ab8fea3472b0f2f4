"""The concurrency limit learnt from the provider's pushback (pure)."""

from __future__ import annotations

from trimail.delivery.concurrency import ConcurrencyLimit


def test_starts_at_the_maximum() -> None:
    """Until the provider pushes back, every configured connection may be used."""
    assert ConcurrencyLimit(256).allowed == 256


def test_pushback_lowers_the_limit_to_the_connections_open() -> None:
    """Turned away with 12 open: the provider takes 12; a second pushback at 12 changes nothing."""
    limit = ConcurrencyLimit(100)
    assert limit.pushed_back(12, now=0.0)
    assert limit.allowed == 12
    assert not limit.pushed_back(12, now=0.1)
    assert limit.allowed == 12


def test_no_rise_during_the_hold_then_one_per_round() -> None:
    """After the hold, about `limit` deliveries (one round) add one connection."""
    limit = ConcurrencyLimit(100, hold=10.0)
    limit.pushed_back(10, now=0.0)
    for _ in range(50):
        limit.delivered(now=5.0)
    assert limit.allowed == 10
    for expected in (11, 12):
        deliveries = 0
        while limit.allowed < expected:
            limit.delivered(now=11.0)
            deliveries += 1
        assert expected - 1 <= deliveries <= expected


def test_with_nothing_open_it_probes_with_one_then_doubles_back() -> None:
    """Pushback with no connection open (an outage): one at a time, then slow start back."""
    limit = ConcurrencyLimit(64, hold=10.0)
    assert limit.pushed_back(0, now=0.0)
    assert limit.allowed == 1
    rounds = 0
    while limit.allowed < 64:
        for _ in range(limit.allowed):  # one round: every allowed attempt delivers
            limit.delivered(now=1.0)
        rounds += 1
    assert rounds == 6  # 1, 2, 4, ... 64: no hold, since nothing was learnt about a limit


def test_never_above_the_maximum_nor_below_one() -> None:
    """The limit stays within 1 and the maximum, whatever happens."""
    limit = ConcurrencyLimit(3, hold=0.0)
    for _ in range(100):
        limit.delivered(now=1.0)
    assert limit.allowed == 3
    limit.pushed_back(0, now=2.0)
    assert limit.allowed == 1
