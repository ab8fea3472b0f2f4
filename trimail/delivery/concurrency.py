"""How many attempts may run at once: learnt from the provider, as Postfix's feedback does.

The limit starts at the most connections allowed (``TRIMAIL_WORKERS``):
trimail sends through one provider its operator chose, not to strangers
(Postfix starts each destination at 5 because it does). Then:

- *Pushback* (a connection turned away: see ``DeliveryError.pushback``) while
  trimail holds other open connections to the provider says the provider takes
  no more than those: the limit drops to their number, that number is
  remembered as the level known to work, and the limit does not rise for
  ``hold`` seconds. Idle connections count: the provider counts them too.
- Pushback with no connection open (the provider is down, or full for
  everyone) teaches nothing about its limit: trimail probes with one
  connection at a time until an attempt gets through.
- Each delivered attempt (after the hold) raises the limit: by one while it is
  below the level known to work (slow start: it doubles every round of
  attempts, so an outage's probing ends within a few rounds), and by ``1 /
  limit`` above it (one connection more per round: additive increase), up to
  the maximum. A provider whose limit is 50 then sees one connection turned
  away every ``hold`` seconds or so, not a storm.

Pure: the caller passes the time and the count of open connections.
"""

from __future__ import annotations

import math

#: Seconds after a pushback before the limit may rise again. A guess: long enough for the
#: provider's count of our connections to settle, short enough to win a freed slot back
#: within a minute.
HOLD = 10.0


class ConcurrencyLimit:
    """The number of attempts the dispatcher may run at once; see the module docstring."""

    def __init__(self, maximum: int, hold: float = HOLD) -> None:
        self.maximum = maximum
        self.hold = hold
        self._limit = float(maximum)
        self._known_good = float(maximum)
        self._hold_until = -math.inf

    @property
    def allowed(self) -> int:
        """Attempts that may run at once now (at least 1)."""
        return int(self._limit)

    def pushed_back(self, open_connections: int, now: float) -> bool:
        """A connection was turned away while ``open_connections`` others were open.

        Returns whether that lowered the limit (the caller logs it).
        """
        if open_connections >= 1:
            self._known_good = float(open_connections)
            self._hold_until = now + self.hold
        lowered = max(1, open_connections) < self._limit
        self._limit = min(self._limit, float(max(1, open_connections)))
        return lowered

    def delivered(self, now: float) -> bool:
        """An attempt was delivered; True when that brought the limit back to its maximum."""
        if now < self._hold_until or self._limit >= self.maximum:
            return False
        step = 1.0 if self._limit < self._known_good else 1 / self._limit
        self._limit = min(float(self.maximum), self._limit + step)
        return self._limit >= self.maximum
